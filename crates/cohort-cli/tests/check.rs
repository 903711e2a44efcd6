//! `cohort check` end to end: real node processes, real faults, and a checker that is known to
//! catch staleness because a deliberately broken node makes it fail.

use std::process::Command;

/// Runs `cohort check` with `args`; returns whether it exited successfully and its last line.
fn check(args: &[&str]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_cohort"))
        .arg("check")
        .args(args)
        .output()
        .expect("cohort check runs");
    let stdout = String::from_utf8(output.stdout).unwrap();
    let last = stdout.lines().last().unwrap_or_default().to_owned();
    eprintln!("{stdout}{}", String::from_utf8_lossy(&output.stderr));
    (output.status.success(), last)
}

/// The value of `key=` in the final line.
fn field(line: &str, key: &str) -> u64 {
    line.split_whitespace()
        .find_map(|f| f.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {line:?}"))
}

#[test]
fn every_fault_kind_and_nothing_stale_beyond_the_bound() {
    let (passed, last) = check(&[
        "--nodes",
        "3",
        "--duration",
        "12s",
        "--faults",
        "kill,pause,partition,drop,slow,external",
        "--seed",
        "7",
    ]);
    assert!(last.starts_with("check: ops="), "{last}");
    assert!(last.ends_with("result=PASS"), "{last}");
    assert!(passed);
    assert!(field(&last, "ops") > 1_000);
    assert!(field(&last, "faults") >= 6);
    assert_eq!(field(&last, "stale_beyond_bound"), 0);
    assert_eq!(field(&last, "bound_ms"), 500);
}

/// Every operation kind: batch reads judged user by user, team renames and clears (tag
/// invalidations and cache clears on every node) held to the bound, under every fault kind.
#[test]
fn batches_team_renames_and_clears_and_nothing_stale_beyond_the_bound() {
    let (passed, last) = check(&[
        "--duration",
        "10s",
        "--faults",
        "kill,pause,partition,drop,slow,external",
        "--ops",
        "reads,updates,batches,tags,clears",
        "--seed",
        "5",
    ]);
    assert!(last.ends_with("result=PASS"), "{last}");
    assert!(passed);
    assert!(field(&last, "ops") > 500);
    assert_eq!(field(&last, "stale_beyond_bound"), 0);
}

/// Strong mode: once an update through a node returns, no read anywhere misses it (plain-SQL
/// writes, which no node hears of before they commit, stay judged against the bound).
#[test]
fn strong_mode_reads_miss_no_completed_update() {
    let (passed, last) = check(&[
        "--duration",
        "10s",
        "--faults",
        "kill,pause,partition,drop,slow,external",
        "--mode",
        "strong",
        "--seed",
        "3",
    ]);
    assert!(last.ends_with("result=PASS"), "{last}");
    assert!(passed);
    assert_eq!(field(&last, "stale_beyond_bound"), 0);
    assert_eq!(field(&last, "bound_ms"), 0);
}

/// Partitioned mode: each user cached by its owner and read from it by the other nodes, under
/// every fault kind, promises the bound.
#[test]
fn partitioned_mode_and_nothing_stale_beyond_the_bound() {
    let (passed, last) = check(&[
        "--duration",
        "10s",
        "--faults",
        "kill,pause,partition,drop,slow,external",
        "--mode",
        "partitioned",
        "--seed",
        "11",
    ]);
    assert!(last.ends_with("result=PASS"), "{last}");
    assert!(passed);
    assert_eq!(field(&last, "stale_beyond_bound"), 0);
    assert_eq!(field(&last, "bound_ms"), 500);
}

/// A node that ignores its leases serves what it holds after a pause, before it has caught up
/// with the backlog written meanwhile: the checker must see those reads and fail.
#[test]
fn a_node_that_ignores_its_leases_is_caught() {
    let (passed, last) = check(&[
        "--duration",
        "8s",
        "--faults",
        "pause",
        "--seed",
        "1",
        "--break-node",
    ]);
    assert!(last.ends_with("result=FAIL"), "{last}");
    assert!(!passed, "a failed check exits with an error status");
    assert!(field(&last, "stale_beyond_bound") > 0);
    assert!(field(&last, "max_staleness_ms") > 500);
}

/// Runs `cohort check` with `args`, expecting it to refuse them; returns its stderr.
fn refused(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_cohort"))
        .arg("check")
        .args(args)
        .output()
        .unwrap();
    assert!(!output.status.success());
    String::from_utf8(output.stderr).unwrap()
}

#[test]
fn bad_arguments_are_refused_with_a_clear_error() {
    let stderr = refused(&["--faults", "meteor"]);
    assert!(stderr.contains("meteor"), "{stderr}");
    let stderr = refused(&["--duration", "2s", "--faults", "dbpause"]);
    assert!(
        stderr.contains("the dbpause fault needs --db postgres://"),
        "{stderr}"
    );
    let stderr = refused(&["--ops", "reads,naps"]);
    assert!(stderr.contains("naps"), "{stderr}");
    let stderr = refused(&["--ops", "tags", "--keys", "1001"]);
    assert!(stderr.contains("use --keys 1000 or fewer"), "{stderr}");
}

/// The same check on a Postgres server started for the test: every fault kind, including the
/// database frozen for the nodes while plain SQL changes every key, and every operation kind
/// (a fail-safe read served stale while the database is frozen is judged by the age it
/// declares).
#[test]
fn on_postgres_every_fault_kind_and_nothing_stale_beyond_the_bound() {
    let postgres = cohort_testkit::Postgres::start()
        .expect("a throwaway Postgres server (initdb and pg_ctl from the postgresql package)");
    let url = postgres.url();
    let (passed, last) = check(&[
        "--db",
        &url,
        "--duration",
        "16s",
        "--faults",
        "kill,pause,partition,drop,slow,external,dbpause",
        "--ops",
        "reads,updates,failsafe,batches,tags,clears",
        "--seed",
        "7",
    ]);
    assert!(last.ends_with("result=PASS"), "{last}");
    assert!(passed);
    assert!(field(&last, "ops") > 1_000);
    assert!(field(&last, "faults") >= 7);
    assert_eq!(field(&last, "stale_beyond_bound"), 0);
}

/// The strong check's negative control: the same broken node, judged at bound 0.
#[test]
fn in_strong_mode_a_node_that_ignores_its_leases_is_caught() {
    let (passed, last) = check(&[
        "--duration",
        "8s",
        "--faults",
        "pause",
        "--mode",
        "strong",
        "--seed",
        "1",
        "--break-node",
    ]);
    assert!(last.ends_with("result=FAIL"), "{last}");
    assert!(!passed);
    assert_eq!(field(&last, "bound_ms"), 0);
    assert!(field(&last, "stale_beyond_bound") > 0);
}

/// The partitioned check's negative control: the broken node serves what it owns, to its
/// clients and to the nodes asking it, without its lease.
#[test]
fn in_partitioned_mode_a_node_that_ignores_its_leases_is_caught() {
    let (passed, last) = check(&[
        "--duration",
        "8s",
        "--faults",
        "pause",
        "--mode",
        "partitioned",
        "--seed",
        "1",
        "--break-node",
    ]);
    assert!(last.ends_with("result=FAIL"), "{last}");
    assert!(!passed);
    assert!(field(&last, "stale_beyond_bound") > 0);
}

/// The Postgres check's negative control: while the database is frozen for the nodes and plain
/// SQL changes every key, a node ignoring its leases serves what it holds, and is caught.
#[test]
fn on_postgres_a_node_that_ignores_its_leases_through_a_frozen_database_is_caught() {
    let postgres = cohort_testkit::Postgres::start()
        .expect("a throwaway Postgres server (initdb and pg_ctl from the postgresql package)");
    let url = postgres.url();
    let (passed, last) = check(&[
        "--db",
        &url,
        "--duration",
        "8s",
        "--faults",
        "dbpause",
        "--seed",
        "1",
        "--break-node",
    ]);
    assert!(last.ends_with("result=FAIL"), "{last}");
    assert!(!passed);
    assert!(field(&last, "stale_beyond_bound") > 0);
}
