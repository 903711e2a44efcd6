//! `cohort demo` as a user runs it: a real process, its output parsed like a script would.

use std::collections::HashMap;
use std::process::Command;

fn cohort(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cohort"))
        .args(args)
        .output()
        .expect("the cohort binary runs")
}

/// The `key=value` fields of the last line of `stdout`, which must start with `prefix`.
fn last_line_fields(stdout: &[u8], prefix: &str) -> HashMap<String, String> {
    let stdout = String::from_utf8_lossy(stdout);
    let last = stdout.lines().last().unwrap_or_default();
    let rest = last
        .strip_prefix(prefix)
        .unwrap_or_else(|| panic!("last line {last:?} does not start with {prefix:?}"));
    rest.split_whitespace()
        .map(|field| {
            let (k, v) = field.split_once('=').expect("key=value");
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

#[test]
fn demo_passes_and_reports_in_the_promised_format() {
    let out = cohort(&[
        "demo", "--nodes", "3", "--keys", "200", "--ops", "6000", "--seed", "3",
    ]);
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fields = last_line_fields(&out.stdout, "demo: ");
    let keys: Vec<_> = [
        "nodes",
        "reads",
        "updates",
        "hit_ratio",
        "propagation_p50_us",
        "propagation_p99_us",
        "stale_beyond_bound",
        "result",
    ]
    .into_iter()
    .collect();
    for key in &keys {
        assert!(fields.contains_key(*key), "missing {key} in {fields:?}");
    }
    assert_eq!(fields.len(), keys.len(), "{fields:?}");
    assert_eq!(fields["nodes"], "3");
    let reads: u64 = fields["reads"].parse().unwrap();
    let updates: u64 = fields["updates"].parse().unwrap();
    assert_eq!(reads + updates, 6000);
    assert!(updates > 0, "the workload updates");
    let hit_ratio: f64 = fields["hit_ratio"].parse().unwrap();
    assert!(hit_ratio > 0.0 && hit_ratio < 1.0, "{hit_ratio}");
    let p50: u64 = fields["propagation_p50_us"].parse().unwrap();
    let p99: u64 = fields["propagation_p99_us"].parse().unwrap();
    assert!(p50 <= p99, "{p50} > {p99}");
    assert_eq!(fields["stale_beyond_bound"], "0");
    assert_eq!(fields["result"], "PASS");
}

/// Partitioned mode: the same line, then its own two figures; owners on other nodes answer a
/// share of the reads, and the cluster loads far fewer rows than it reads.
#[test]
fn the_partitioned_demo_passes_and_appends_its_figures() {
    let out = cohort(&[
        "demo",
        "--nodes",
        "3",
        "--keys",
        "200",
        "--ops",
        "6000",
        "--seed",
        "3",
        "--mode",
        "partitioned",
    ]);
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    assert!(
        last.contains(" result=PASS loads_per_1000_reads="),
        "the figures come after the result: {last}"
    );
    let fields = last_line_fields(&out.stdout, "demo: ");
    assert_eq!(fields.len(), 10, "{fields:?}");
    assert_eq!(fields["stale_beyond_bound"], "0");
    let share: f64 = fields["remote_hit_share"].parse().unwrap();
    // Two thirds of the keys are owned elsewhere, less what hot copies answer.
    assert!(share > 0.05 && share < 0.8, "{share}");
    let loads: f64 = fields["loads_per_1000_reads"].parse().unwrap();
    assert!(loads > 0.0 && loads < 500.0, "{loads}");
}

#[test]
fn bad_flags_get_one_clear_error_and_a_failure_status() {
    for args in [
        &["demo", "--nodes", "0"][..],
        &["demo", "--update-percent", "101"],
        &["demo", "--ops", "many"],
        &["demo", "--mode", "sharded"],
    ] {
        let out = cohort(args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("error: invalid value"),
            "{args:?}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}
