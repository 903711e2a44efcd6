//! `cohort serve` as separate OS processes sharing one SQLite file: the fast path across
//! processes, a SIGKILLed peer, a SIGSTOPped node, bad flags, and many processes started at the
//! same instant on a new SQLite file or an empty Postgres database.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cohort_testkit::wait;
use serde_json::Value;
use sqlx::{Connection as _, Executor as _};

const BOUND: Duration = Duration::from_millis(400);

/// Rounds of the tests that start processes together.
const ROUNDS: usize = 10;

/// A running `cohort serve` process.
struct Server {
    process: Process,
    http: SocketAddr,
    listen: SocketAddr,
}

/// A child process, killed when dropped (a failed test leaves none behind).
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Server {
    fn start(name: &str, db: &Path, seeds: &[&Server]) -> Self {
        Self::start_with(name, db, seeds, &[])
    }

    /// Starts `cohort serve` with `extra` flags; it listens on fresh ports.
    fn start_with(name: &str, db: &Path, seeds: &[&Server], extra: &[&str]) -> Self {
        Self::start_on(name, &format!("sqlite://{}", db.display()), seeds, extra)
    }

    /// Starts `cohort serve` on the database at `url` with `extra` flags, on fresh ports.
    fn start_on(name: &str, url: &str, seeds: &[&Server], extra: &[&str]) -> Self {
        let seeds: Vec<String> = seeds.iter().map(|s| s.listen.to_string()).collect();
        let child = Command::new(env!("CARGO_BIN_EXE_cohort"))
            .args(serve_args(name, url))
            .args(["--seeds", &seeds.join(",")])
            .args(extra)
            .stdout(Stdio::piped())
            .spawn()
            .expect("cohort serve starts");
        Self::ready(Process(child))
    }

    /// `count` processes on `db`, started at the same instant: each waits in a shell for a line
    /// on its standard input, and they all get theirs at once. Returns them once all serve.
    fn start_together(count: usize, db: &str) -> Vec<Self> {
        let mut gated: Vec<Process> = (0..count)
            .map(|i| {
                let child = Command::new("sh")
                    .args(["-c", r#"read -r _ && exec "$0" "$@""#])
                    .arg(env!("CARGO_BIN_EXE_cohort"))
                    .args(serve_args(&format!("n{i}"), db))
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .spawn()
                    .expect("sh starts");
                Process(child)
            })
            .collect();
        for process in &mut gated {
            process.0.stdin.take().unwrap().write_all(b"go\n").unwrap();
        }
        gated.into_iter().map(Self::ready).collect()
    }

    /// Waits until `process` says where it listens, then until it serves from its cache.
    fn ready(mut process: Process) -> Self {
        let mut line = String::new();
        BufReader::new(process.0.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(
            line.ends_with("ready\n"),
            "unexpected first line {line:?} (the process's errors are above)"
        );
        let field = |key: &str| -> SocketAddr {
            line.split_whitespace()
                .find_map(|f| f.strip_prefix(key))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no {key} in {line:?}"))
        };
        let server = Self {
            http: field("http="),
            listen: field("listen="),
            process,
        };
        server.wait_until("serving from its cache", |s| {
            s.get("/healthz").1["serving"] == true
        });
        server
    }

    /// SIGTERM, and a clean exit.
    fn stop(mut self) {
        self.signal("-TERM");
        let status = self.process.0.wait().unwrap();
        assert!(status.success(), "{status}");
    }

    /// Polls the process until `condition` holds; it answers over HTTP, so there is no event to
    /// wait on from outside.
    fn wait_until(&self, what: &str, condition: impl Fn(&Self) -> bool) {
        wait::poll_blocking(|| condition(self).then_some(()))
            .unwrap_or_else(|missed| panic!("never {what}: {missed}"));
    }

    fn get(&self, path: &str) -> (u16, Value) {
        request(self.http, "GET", path, None)
    }

    fn user(&self, id: u64) -> (String, &'static str) {
        let (status, body) = self.get(&format!("/users/{id}"));
        assert_eq!(status, 200, "{body}");
        let source = match body["source"].as_str() {
            Some("cache") => "cache",
            Some("db") => "db",
            Some("owner") => "owner",
            Some("owner_skipped") => "owner_skipped",
            other => panic!("bad source {other:?}"),
        };
        (body["name"].as_str().unwrap().to_owned(), source)
    }

    fn rename(&self, id: u64, name: &str) -> u64 {
        let body = serde_json::json!({ "name": name }).to_string();
        let (status, reply) = request(self.http, "PUT", &format!("/users/{id}"), Some(&body));
        assert_eq!(status, 200, "{reply}");
        reply["version"].as_u64().unwrap()
    }

    /// Waits until this node links to `peers` peers.
    fn wait_linked(&self, peers: usize) {
        self.wait_until("linked", |s| {
            let (_, cluster) = s.get("/cluster");
            let members = cluster["members"].as_array().cloned().unwrap_or_default();
            members.iter().filter(|m| m["state"] == "connected").count() >= peers
        });
    }

    /// The members this node's `/cluster` lists.
    fn members(&self) -> Vec<Value> {
        let (_, cluster) = self.get("/cluster");
        cluster["members"].as_array().cloned().unwrap_or_default()
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.process.0.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

/// The arguments of `cohort serve` for a node named `name` on `db`, on free ports.
fn serve_args(name: &str, db: &str) -> Vec<String> {
    [
        "serve",
        "--name",
        name,
        "--http",
        "127.0.0.1:0",
        "--listen",
        "127.0.0.1:0",
        "--db",
        db,
        "--max-staleness",
        &format!("{}ms", BOUND.as_millis()),
    ]
    .map(str::to_owned)
    .to_vec()
}

/// One HTTP/1.1 request on a fresh connection; returns the status and the JSON body.
fn request(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
    let (status, body) = request_text(addr, method, path, body);
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// One HTTP/1.1 request on a fresh connection; returns the status and the body as text.
fn request_text(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let body = body.unwrap_or("");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response[9..12].parse().unwrap();
    let (_, body) = response.split_once("\r\n\r\n").unwrap();
    (status, body.to_owned())
}

/// Caches user `id` on `server` and checks the next read is a hit.
fn warm(server: &Server, id: u64) {
    server.user(id);
    assert_eq!(server.user(id).1, "cache");
}

/// Reads user `id` from `server` until it has `name`; returns how long after `since` that was.
/// Every read that started more than the bound after `since` must already see it.
fn fresh_after(server: &Server, id: u64, name: &str, since: Instant) -> Duration {
    fresh_within_bound(since, || server.user(id), |(seen, _)| seen == name).0
}

/// Reads with `read` until what it read is `fresh`, failing if a read that started more than
/// the bound after `since` is not: how long after `since` the fresh read started, and what it
/// read.
fn fresh_within_bound<T: std::fmt::Debug>(
    since: Instant,
    mut read: impl FnMut() -> T,
    fresh: impl Fn(&T) -> bool,
) -> (Duration, T) {
    loop {
        let started = since.elapsed();
        let seen = read();
        if fresh(&seen) {
            return (started, seen);
        }
        assert!(
            started <= BOUND,
            "stale {seen:?} {started:?} after the change"
        );
    }
}

#[test]
fn three_processes_on_one_sqlite_file() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("users.db");
    let a = Server::start("a", &db, &[]);
    let b = Server::start("b", &db, &[&a]);
    let c = Server::start("c", &db, &[&a]);
    for server in [&a, &b, &c] {
        server.wait_linked(2);
    }
    warm(&b, 1);
    warm(&c, 1);
    let applied = |s: &Server| s.get("/cluster").1["events"]["applied"].as_u64().unwrap();
    let before = (applied(&b), applied(&c));

    let version = a.rename(1, "grace");
    let written = Instant::now();
    // Both watched at once, each against the PUT's return.
    let (on_b, on_c) = std::thread::scope(|scope| {
        let on_c = scope.spawn(|| fresh_after(&c, 1, "grace", written));
        (fresh_after(&b, 1, "grace", written), on_c.join().unwrap())
    });
    eprintln!(
        "after the PUT on a returned, the first GET that saw it started {on_b:?} later on b, {on_c:?} on c"
    );
    // The mesh, not a poll of the log, carried it: each applied a's event.
    assert!(
        applied(&b) > before.0 && applied(&c) > before.1,
        "events applied: {before:?} -> ({}, {})",
        applied(&b),
        applied(&c)
    );
    // The row's second version, plus its team's first.
    assert_eq!(version, 3);

    c.signal("-KILL");
    warm(&b, 2);
    a.rename(2, "after the kill");
    let written = Instant::now();
    fresh_after(&b, 2, "after the kill", written);
    assert_eq!(a.user(2).0, "after the kill");
    let (_, health) = b.get("/healthz");
    assert_eq!(health["status"], "ok");
}

/// Partitioned mode across processes: the nodes that do not own a user read it from its owner
/// (`"source": "owner"`), a user read again becomes a hot copy (`"cache"`), and a rename through
/// any node is seen on every node within the bound.
#[test]
fn partitioned_processes_ask_the_owner_and_see_renames_within_the_bound() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("users.db");
    let flags = ["--mode", "partitioned"];
    let a = Server::start_with("a", &db, &[], &flags);
    let b = Server::start_with("b", &db, &[&a], &flags);
    let c = Server::start_with("c", &db, &[&a], &flags);
    let servers = [&a, &b, &c];
    for server in servers {
        server.wait_linked(2);
    }
    let mut sources = std::collections::BTreeMap::<&str, usize>::new();
    for id in 1..=30 {
        for server in servers {
            *sources.entry(server.user(id).1).or_default() += 1;
        }
    }
    // Each user has one owner: the other two nodes' reads are its answers (bar an owner that did
    // not answer in time, which reads the database itself).
    let owner = sources.get("owner").copied().unwrap_or(0);
    assert!(owner >= 40, "sources of 90 reads: {sources:?}");

    // Read a second time, a user is kept as a hot copy on the nodes that do not own it.
    for server in servers {
        server.wait_until("reading user 1 from memory", |s| s.user(1).1 == "cache");
    }
    let version = b.rename(1, "ada");
    let written = Instant::now();
    for server in servers {
        fresh_after(server, 1, "ada", written);
    }
    assert_eq!(
        version, 3,
        "the row's second version, plus its team's first"
    );
    // And a user nobody has read yet.
    c.rename(31, "alan");
    let written = Instant::now();
    for server in servers {
        fresh_after(server, 31, "alan", written);
    }
}

/// SIGTERM: the process tells every peer it is leaving and exits cleanly; the others drop it
/// from their member lists at once (a node that merely went silent stays listed, not live).
#[test]
fn a_terminated_process_leaves_the_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("users.db");
    let a = Server::start("a", &db, &[]);
    let b = Server::start("b", &db, &[&a]);
    let mut c = Server::start("c", &db, &[&a]);
    for server in [&a, &b, &c] {
        server.wait_linked(2);
    }
    c.signal("-TERM");
    let members = |s: &Server| {
        s.get("/cluster").1["members"]
            .as_array()
            .map_or(0, Vec::len)
    };
    for server in [&a, &b] {
        server.wait_until("rid of c", |s| members(s) == 1);
    }
    let status = wait::poll_blocking(|| c.process.0.try_wait().unwrap()).expect("c exited");
    assert!(status.success(), "{status}");
}

/// A writer that never goes through cohort, with its own (older) SQLite library: the `sqlite3`
/// shell that `.ci/run` installs. Its commits fire the triggers and reach every node via the log.
#[test]
fn an_outside_writer_with_the_sqlite3_shell_is_seen_within_the_bound() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("users.db");
    let a = Server::start("a", &db, &[]);
    let b = Server::start("b", &db, &[&a]);
    warm(&a, 3);
    warm(&b, 3);
    let status = Command::new("sqlite3")
        .arg(&db)
        .arg("UPDATE users SET name = 'set by the shell', version = version + 1 WHERE id = 3")
        .status()
        .expect("the sqlite3 shell is installed (.ci/run installs it)");
    assert!(status.success());
    let written = Instant::now();
    for server in [&a, &b] {
        let seen = fresh_after(server, 3, "set by the shell", written);
        eprintln!("outside write seen after {seen:?}");
    }
}

#[test]
fn a_stopped_process_serves_nothing_stale_when_it_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("users.db");
    // No seeds: the two nodes share only the database, so only the change log can tell b.
    let a = Server::start("a", &db, &[]);
    let b = Server::start("b", &db, &[]);
    warm(&b, 1);

    b.signal("-STOP");
    a.rename(1, "renamed while b was stopped");
    // Stay stopped past the lease.
    std::thread::sleep(BOUND + Duration::from_millis(100));
    b.signal("-CONT");

    let (name, source) = b.user(1);
    assert_eq!(name, "renamed while b was stopped", "served from {source}");
    let (status, metrics) = request_text(b.http, "GET", "/metrics", None);
    assert_eq!(status, 200);
    assert!(
        metrics.contains("# TYPE cohort_cache_hits_total counter")
            && metrics.contains("cohort_events_applied_total{node=\"b\"}"),
        "Prometheus text: {metrics}"
    );
}

#[test]
fn bad_flags_and_an_unusable_database_fail_with_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let not_a_dir = dir.path().join("missing").join("users.db");
    let unusable = format!("sqlite://{}", not_a_dir.display());
    let ports = ["--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"];
    let cases: [(Vec<&str>, &str); 5] = [
        (
            [&ports[..], &["--max-staleness", "fast"]].concat(),
            "invalid value",
        ),
        (
            [&ports[..], &["--db", "mysql://x"]].concat(),
            "expected sqlite://path",
        ),
        (
            [&ports[..], &["--db", &unusable]].concat(),
            "cannot open the database",
        ),
        (
            vec!["--listen", "127.0.0.1:0", "--http", "not an address"],
            "invalid value",
        ),
        (
            [&ports[..], &["--hot-copies-bytes", "1024"]].concat(),
            "--hot-copies-bytes is for --mode partitioned only",
        ),
    ];
    for (args, expected) in cases {
        let out = Command::new(env!("CARGO_BIN_EXE_cohort"))
            .arg("serve")
            .args(&args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }

    let db = dir.path().join("users.db");
    let running = Server::start("a", &db, &[]);
    let out = Command::new(env!("CARGO_BIN_EXE_cohort"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--http",
            &running.http.to_string(),
        ])
        .arg("--db")
        .arg(format!("sqlite://{}", db.display()))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("cannot serve HTTP"), "{stderr}");
}

/// What a Kubernetes pod does on every eviction: SIGKILLed, then started again under the same name
/// at a new address. Each of three nodes in turn; afterwards every node lists exactly the three
/// current processes (no dead address, live or not), and a repeated read on every node is a
/// cache hit again, in strong mode (whose majority rule counted dead addresses before) and in
/// bounded mode.
fn rolling_crash_restart_at_new_addresses(mode: &str) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("users.db");
    let flags = ["--mode", mode];
    let mut servers = vec![Server::start_with("a", &db, &[], &flags)];
    for name in ["b", "c"] {
        let seeds: Vec<&Server> = servers.iter().collect();
        let server = Server::start_with(name, &db, &seeds, &flags);
        servers.push(server);
    }
    for server in &servers {
        server.wait_linked(2);
    }
    for i in 0..servers.len() {
        servers[i].signal("-KILL");
        let name = ["a", "b", "c"][i];
        let others: Vec<&Server> = servers
            .iter()
            .enumerate()
            .filter(|&(j, _)| j != i)
            .map(|(_, s)| s)
            .collect();
        let restarted = Server::start_with(name, &db, &others, &flags);
        servers[i] = restarted;
    }
    let rolled = Instant::now();
    let current: Vec<String> = servers.iter().map(|s| s.listen.to_string()).collect();
    for (i, server) in servers.iter().enumerate() {
        let id = 10 + i as u64;
        server.wait_until("serving from its cache again", |s| {
            s.user(id);
            s.user(id).1 == "cache"
        });
    }
    eprintln!(
        "{mode}: every node answered from its cache {:?} after the roll",
        rolled.elapsed()
    );
    for server in &servers {
        server.wait_until("listing exactly the current processes", |s| {
            let members = s.members();
            let mut addrs: Vec<String> = members
                .iter()
                .map(|m| m["addr"].as_str().unwrap_or_default().to_owned())
                .collect();
            addrs.sort();
            let mut expected: Vec<String> = current
                .iter()
                .filter(|a| **a != s.listen.to_string())
                .cloned()
                .collect();
            expected.sort();
            addrs == expected && members.iter().all(|m| m["live"] == true)
        });
        for member in server.members() {
            assert!(
                current.contains(&member["addr"].as_str().unwrap().to_owned()),
                "a dead address is listed: {member}"
            );
            assert_eq!(member["swim"], "alive", "{member}");
        }
    }
}

#[test]
fn a_rolling_crash_restart_at_new_addresses_in_strong_mode() {
    rolling_crash_restart_at_new_addresses("strong");
}

#[test]
fn a_rolling_crash_restart_at_new_addresses_in_bounded_mode() {
    rolling_crash_restart_at_new_addresses("bounded");
}

/// Redis's protected mode: a node listening beyond loopback without a cluster key refuses to
/// start and says how to fix it; with a key file it starts.
#[test]
fn listening_beyond_loopback_needs_a_cluster_key() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("users.db").display());
    let serve = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_cohort"))
            .args(["serve", "--listen", "0.0.0.0:0", "--http", "127.0.0.1:0"])
            .args(["--db", &db])
            .args(extra)
            .env_remove("COHORT_CLUSTER_KEY_FILE")
            .env_remove("COHORT_INSECURE")
            .output()
            .unwrap()
    };
    let out = serve(&[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("without cluster keys") && stderr.contains("cohort keygen"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");

    let keygen = Command::new(env!("CARGO_BIN_EXE_cohort"))
        .arg("keygen")
        .output()
        .unwrap();
    assert!(keygen.status.success());
    let key = String::from_utf8(keygen.stdout).unwrap();
    assert_eq!(key.trim().len(), 64, "{key:?}");
    let key_file = dir.path().join("cluster.keys");
    std::fs::write(&key_file, &key).unwrap();
    let db_path = dir.path().join("users.db");
    let keyed = Server::start_with(
        "a",
        &db_path,
        &[],
        &["--cluster-key-file", key_file.to_str().unwrap()],
    );
    assert_eq!(keyed.get("/healthz").0, 200);
}

/// A key rotated on running processes by rewriting their key file and sending SIGHUP, in the
/// three rolling steps: the nodes stay linked, and afterwards a node with only the new key joins
/// them while one with only the old key cannot.
#[test]
fn a_key_rotated_with_sighup_keeps_the_processes_linked() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("users.db");
    let keygen = || {
        let out = Command::new(env!("CARGO_BIN_EXE_cohort"))
            .arg("keygen")
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let (old, new) = (keygen(), keygen());
    let files: Vec<_> = ["a", "b"]
        .iter()
        .map(|name| dir.path().join(format!("{name}.keys")))
        .collect();
    let write_keys = |keys: &[&str]| {
        for file in &files {
            std::fs::write(file, keys.join("\n")).unwrap();
        }
    };
    write_keys(&[&old]);
    let flag = |i: usize| {
        [
            "--cluster-key-file".to_owned(),
            files[i].display().to_string(),
        ]
    };
    let a_flags = flag(0);
    let b_flags = flag(1);
    let a = Server::start_with("a", &db, &[], &[&a_flags[0], &a_flags[1]]);
    let b = Server::start_with("b", &db, &[&a], &[&b_flags[0], &b_flags[1]]);
    a.wait_linked(1);
    b.wait_linked(1);
    for keys in [vec![&old, &new], vec![&new, &old], vec![&new]] {
        write_keys(&keys.iter().map(|k| k.as_str()).collect::<Vec<_>>());
        for server in [&a, &b] {
            server.signal("-HUP");
        }
        for server in [&a, &b] {
            server.wait_linked(1);
        }
    }
    let only = |name: &str, key: &str| {
        let file = dir.path().join(format!("{name}.keys"));
        std::fs::write(&file, key).unwrap();
        let flags = ["--cluster-key-file".to_owned(), file.display().to_string()];
        Server::start_with(name, &db, &[&a], &[&flags[0], &flags[1]])
    };
    let fresh = only("fresh", &new);
    fresh.wait_linked(2);
    let stale = only("stale", &old);
    a.wait_until("counting the old key's handshake as failed", |s| {
        s.get("/cluster").1["events"]["auth_failures"]
            .as_u64()
            .is_some_and(|n| n > 0)
    });
    assert!(
        stale.members().iter().all(|m| m["state"] != "connected"),
        "{:?}",
        stale.members()
    );
}

/// What a client sends is checked before it reaches the database: ids outside `i64`, names too
/// long or empty, bodies over 4 KiB; a client that sends its headers and then nothing is cut off.
#[test]
fn bad_requests_are_refused_and_slow_clients_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start("a", &dir.path().join("users.db"), &[]);
    for id in ["9223372036854775808", "-1", "abc"] {
        let (status, body) = server.get(&format!("/users/{id}"));
        assert_eq!(status, 400, "{id}: {body}");
    }
    let put = |body: &str| request(server.http, "PUT", "/users/1", Some(body));
    let long = serde_json::json!({ "name": "x".repeat(257) }).to_string();
    assert_eq!(put(&long).0, 400);
    assert_eq!(put(r#"{"name":""}"#).0, 400);
    let huge = serde_json::json!({ "name": "x".repeat(5000) }).to_string();
    assert_eq!(put(&huge).0, 413);
    assert_eq!(put(r#"{"name":"fine"}"#).0, 200);

    let mut slow = TcpStream::connect(server.http).unwrap();
    write!(slow, "GET /users/1 HTTP/1.1\r\nHost: x\r\n").unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut rest = Vec::new();
    let closed = slow.read_to_end(&mut rest);
    assert!(
        closed.is_ok()
            || closed
                .as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "the server cut the connection off: {closed:?}"
    );
}

/// Five processes started at the same instant on a SQLite file that does not exist yet, 10
/// rounds: every one comes up. Switching a new file to WAL made one of them fail now and then
/// with "database is locked" (about one round in 300 here; the unit test of `users_db::open`
/// catches it reliably).
#[test]
fn five_processes_started_at_once_on_a_new_sqlite_file_all_come_up() {
    let started = Instant::now();
    for _ in 0..ROUNDS {
        let dir = tempfile::tempdir().unwrap();
        let db = format!("sqlite://{}", dir.path().join("users.db").display());
        for server in Server::start_together(5, &db) {
            server.stop();
        }
    }
    eprintln!("{ROUNDS} rounds in {:?}", started.elapsed());
}

/// The same on Postgres, a new database for each round: `CREATE TABLE IF NOT EXISTS` run by
/// two sessions at once fails in one of them, so the users table's creation takes turns.
#[test]
fn five_processes_started_at_once_on_an_empty_postgres_database_all_come_up() {
    let postgres = cohort_testkit::Postgres::start()
        .expect("a throwaway Postgres server (initdb and pg_ctl from the postgresql package)");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    for round in 0..ROUNDS {
        runtime.block_on(async {
            let mut conn = sqlx::PgConnection::connect(&postgres.url()).await.unwrap();
            conn.execute(sqlx::AssertSqlSafe(format!(
                "CREATE DATABASE round_{round}"
            )))
            .await
            .unwrap();
        });
        let db = format!(
            "postgres://postgres@127.0.0.1:{}/round_{round}",
            postgres.port()
        );
        for server in Server::start_together(5, &db) {
            server.stop();
        }
    }
    eprintln!("{ROUNDS} rounds in {:?}", started.elapsed());
}

/// `/readyz` answers 200 only once a node joined and serves; a node whose seeds nobody answers
/// has not joined. Flags also come from a TOML file (`--config`): here the seed list.
#[test]
fn readiness_and_flags_from_a_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("users.db");
    let a = Server::start("a", &db, &[]);
    let (status, ready) = a.get("/readyz");
    assert_eq!(
        (status, &ready["joined"], &ready["serving"]),
        (200, &Value::Bool(true), &Value::Bool(true))
    );

    let nobody = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let unanswered = nobody.local_addr().unwrap().to_string();
    drop(nobody);
    let lonely = Server::start_with("lonely", &db, &[], &["--seeds", &unanswered]);
    let (status, ready) = lonely.get("/readyz");
    assert_eq!(
        (status, &ready["ready"], &ready["joined"]),
        (503, &Value::Bool(false), &Value::Bool(false))
    );

    let config = dir.path().join("b.toml");
    std::fs::write(&config, format!("seeds = [\"{}\"]\n", a.listen)).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_cohort"))
        .args(serve_args("b", &format!("sqlite://{}", db.display())))
        .args(["--config", config.to_str().unwrap()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("cohort serve starts");
    let b = Server::ready(Process(child));
    b.wait_linked(1);
    b.wait_until("ready", |s| s.get("/readyz").0 == 200);
}

impl Server {
    /// `GET /users?ids=…`: the users answered, as (id, source) pairs, and their bodies.
    fn batch(&self, ids: &str) -> Vec<Value> {
        let (status, body) = self.get(&format!("/users?ids={ids}"));
        assert_eq!(status, 200, "{body}");
        body.as_array().cloned().unwrap()
    }

    /// The users cache's loader calls so far, from `/metrics`.
    fn loads(&self) -> u64 {
        self.counter("cohort_cache_loads_total")
    }

    /// The users cache's counter `name` in `/metrics`.
    fn counter(&self, name: &str) -> u64 {
        let (status, metrics) = request_text(self.http, "GET", "/metrics", None);
        assert_eq!(status, 200);
        metrics
            .lines()
            .find(|line| {
                line.strip_prefix(name).is_some_and(|l| l.starts_with('{'))
                    && line.contains("cache=\"users\"")
            })
            .and_then(|line| line.split_whitespace().last()?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {metrics}"))
    }
}

fn ids_and_sources(users: &[Value]) -> Vec<(u64, &str)> {
    users
        .iter()
        .map(|u| (u["id"].as_u64().unwrap(), u["source"].as_str().unwrap()))
        .collect()
}

/// A batch answers in the order asked (repeats too, missing users left out), its hits from the
/// cache and all its misses with one loader call; asked again, all from the cache.
#[test]
fn a_batch_answers_hits_from_the_cache_and_loads_the_misses_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start("a", &dir.path().join("users.db"), &[]);
    warm(&server, 1);
    warm(&server, 2);
    let before = server.loads();
    let hits = server.counter("cohort_cache_hits_total");
    let users = server.batch("2,1,3,4,2,99999");
    assert_eq!(
        ids_and_sources(&users),
        [
            (2, "cache"),
            (1, "cache"),
            (3, "db"),
            (4, "db"),
            (2, "cache")
        ]
    );
    assert_eq!(server.loads(), before + 1, "one query for users 3 and 4");
    assert_eq!(
        server.counter("cohort_cache_hits_total"),
        hits + 2,
        "a hit per user held, listed twice or not"
    );
    // The fields of `GET /users/{id}`: the version counts the row's and its team's.
    assert_eq!(users[2]["name"], "user-3");
    assert_eq!(users[2]["team"], "team-3");
    assert_eq!(users[2]["version"], 2);
    let mut single = server.get("/users/3").1;
    assert_eq!(single["source"], "cache", "the batch stored what it loaded");
    single["source"] = "db".into();
    assert_eq!(users[2], single);

    let again = server.batch("4,3,2,1");
    assert!(again.iter().all(|u| u["source"] == "cache"), "{again:?}");
    assert_eq!(server.loads(), before + 1);
}

/// A batch read on one node after a rename through another sees the new name within the
/// bound, whether the user was cached there or not.
#[test]
fn a_batch_sees_a_rename_through_another_node() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("users.db");
    let a = Server::start("a", &db, &[]);
    let b = Server::start("b", &db, &[&a]);
    a.wait_linked(1);
    b.wait_linked(1);
    b.batch("1,2,3");
    assert!(b.batch("1,2,3").iter().all(|u| u["source"] == "cache"));
    let version = a.rename(2, "grace");
    let written = Instant::now();
    let (_, users) = fresh_within_bound(
        written,
        || b.batch("1,2,3,4"),
        |users| users[1]["name"] == "grace",
    );
    assert_eq!(users[1]["version"], version);
    assert_eq!(users[0]["name"], "user-1");
}

/// Batches that list no id, a bad id or too many, and team renames of bad teams or names, are
/// refused with a message.
#[test]
fn bad_batches_and_team_renames_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start("a", &dir.path().join("users.db"), &[]);
    let too_many: Vec<String> = (1..=1_001).map(|id| id.to_string()).collect();
    let too_many = too_many.join(",");
    for (query, says) in [
        ("", "list the users"),
        ("?ids=", "is not a user id"),
        ("?ids=1,,2", "is not a user id"),
        ("?ids=1,abc", "is not a user id"),
        ("?ids=-1", "is not a user id"),
        ("?ids=9223372036854775808", "is not a user id"),
        (
            &format!("?ids={too_many}"),
            "1001 ids listed, over the 1000",
        ),
    ] {
        let (status, body) = server.get(&format!("/users{query}"));
        assert_eq!(status, 400, "{query}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains(says),
            "{query}: {body}"
        );
    }
    let most: Vec<String> = (1..=1_000).map(|id| id.to_string()).collect();
    assert_eq!(server.batch(&most.join(",")).len(), 1_000);

    let put = |path: &str, body: &str| request(server.http, "PUT", path, Some(body));
    assert_eq!(put("/teams/abc", r#"{"name":"x"}"#).0, 400);
    assert_eq!(put("/teams/1", r#"{"name":""}"#).0, 400);
    assert_eq!(put("/teams/1?ids=x", r#"{"name":"x"}"#).0, 400);
    assert_eq!(put("/teams/1", r#"{"nom":"x"}"#).0, 422);
    let (status, body) = put("/teams/99", r#"{"name":"x"}"#);
    assert_eq!(
        (status, &body["error"]),
        (404, &Value::from("no such team"))
    );
    let (status, _) = request(server.http, "POST", "/users/clear?ids=1,y", None);
    assert_eq!(status, 400);
}

/// A team renamed through one node (a table no change log watches): its users' copies on every
/// node are dropped by the tag invalidation, and every node shows the new name within the
/// bound; a clear through another node bumps every user and reaches every node the same way.
#[test]
fn a_team_renamed_through_one_node_is_seen_on_every_node() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("users.db");
    let a = Server::start("a", &db, &[]);
    let b = Server::start("b", &db, &[&a]);
    let c = Server::start("c", &db, &[&a]);
    let servers = [&a, &b, &c];
    for server in servers {
        server.wait_linked(2);
        warm(server, 1);
        warm(server, 2);
        assert_eq!(server.get("/users/1").1["team"], "team-1");
    }
    let body = serde_json::json!({ "name": "blue" }).to_string();
    let (status, renamed) = request(a.http, "PUT", "/teams/1?ids=1,2,5", Some(&body));
    let written = Instant::now();
    assert_eq!(status, 200, "{renamed}");
    // Users 1 and 5 are on team 1, user 2 is not: row version 1, team version 2.
    assert_eq!(
        renamed,
        serde_json::json!({ "team": 1, "users": [{ "id": 1, "version": 3 }, { "id": 5, "version": 3 }] })
    );
    for server in servers {
        fresh_within_bound(
            written,
            || server.get("/users/1").1,
            |user| user["team"] == "blue",
        );
        assert_eq!(server.get("/users/1").1["version"], 3);
        // Another team's user kept its copy.
        assert_eq!(server.user(2).1, "cache");
    }

    let (status, cleared) = request(b.http, "POST", "/users/clear?ids=1,2", None);
    let written = Instant::now();
    assert_eq!(status, 200, "{cleared}");
    assert_eq!(
        cleared,
        serde_json::json!({ "users": [{ "id": 1, "version": 4 }, { "id": 2, "version": 3 }] })
    );
    for server in servers {
        fresh_within_bound(written, || server.get("/users/2").1, |u| u["version"] == 3);
        fresh_within_bound(written, || server.get("/users/1").1, |u| u["version"] == 4);
    }
}

/// On Postgres, from a users table made before users had teams: the old users join team 0, new
/// ones are seeded into teams; a batch loads its misses in one query; a team rename and a clear
/// through one node reach the other within the bound.
#[test]
fn on_postgres_batches_team_renames_and_clears_from_an_old_schema() {
    let postgres = cohort_testkit::Postgres::start()
        .expect("a throwaway Postgres server (initdb and pg_ctl from the postgresql package)");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut conn = sqlx::PgConnection::connect(&postgres.url()).await.unwrap();
        conn.execute(
            "CREATE TABLE users (id bigint PRIMARY KEY, name text NOT NULL, version bigint NOT NULL); \
             INSERT INTO users SELECT x, 'old-' || x, 1 FROM generate_series(1, 5) x",
        )
        .await
        .unwrap();
    });
    let url = postgres.url();
    let a = Server::start_on("a", &url, &[], &["--users", "20"]);
    let b = Server::start_on("b", &url, &[&a], &["--users", "20"]);
    a.wait_linked(1);
    b.wait_linked(1);
    let (_, old) = a.get("/users/1");
    assert_eq!(
        (&old["name"], &old["team"], &old["version"]),
        (&"old-1".into(), &"team-0".into(), &2.into())
    );

    let before = b.loads();
    let users = b.batch("10,1,11,99");
    assert_eq!(ids_and_sources(&users), [(10, "db"), (1, "db"), (11, "db")]);
    assert_eq!(users[0]["team"], "team-2");
    assert_eq!(b.loads(), before + 1);
    assert!(b.batch("1,10,11").iter().all(|u| u["source"] == "cache"));

    let body = serde_json::json!({ "name": "green" }).to_string();
    let (status, renamed) = request(a.http, "PUT", "/teams/2?ids=10,11", Some(&body));
    let written = Instant::now();
    assert_eq!(status, 200, "{renamed}");
    assert_eq!(
        renamed,
        serde_json::json!({ "team": 2, "users": [{ "id": 10, "version": 3 }] })
    );
    let (_, users) = fresh_within_bound(
        written,
        || b.batch("10,11"),
        |users| users[0]["team"] == "green",
    );
    assert_eq!(users[0]["version"], 3);

    let (status, cleared) = request(b.http, "POST", "/users/clear?ids=1,11", None);
    let written = Instant::now();
    assert_eq!(status, 200, "{cleared}");
    assert_eq!(
        cleared,
        serde_json::json!({ "users": [{ "id": 1, "version": 3 }, { "id": 11, "version": 3 }] })
    );
    fresh_within_bound(written, || a.get("/users/1").1, |user| user["version"] == 3);
}

/// `?max_stale=`: while the database answers, a plain read; once it fails (its tables renamed
/// away: the change log's polls fail, the node stops serving from memory, loads fail), the value
/// held, younger than asked, labelled `"stale"` with its age; older than asked, or without
/// `max_stale`, the failure.
#[test]
fn a_failsafe_read_serves_the_held_value_while_the_database_fails() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("users.db");
    let server = Server::start("a", &path, &[]);
    warm(&server, 1);
    let (status, body) = server.get("/users/1?max_stale=10s");
    assert_eq!((status, &body["source"]), (200, &Value::from("cache")));
    let (status, body) = server.get("/users/1?max_stale=soon");
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("max_stale"),
        "{body}"
    );

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let rename = |from: &str, to: &str| {
        runtime.block_on(async {
            let url = format!("sqlite://{}", path.display());
            let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
            for table in ["users", "cohort_changes"] {
                conn.execute(sqlx::AssertSqlSafe(format!(
                    "ALTER TABLE {table}{from} RENAME TO {table}{to}"
                )))
                .await
                .unwrap();
            }
        });
    };
    rename("", "_away");
    server.wait_until("serving user 1 stale", |s| {
        s.get("/users/1?max_stale=10s").1["source"] == "stale"
    });
    let (_, stale) = server.get("/users/1?max_stale=10s");
    assert_eq!(stale["name"], "user-1");
    let age = stale["age_ms"].as_u64().unwrap();
    assert!(age < 10_000, "{stale}");
    let (status, _) = server.get("/users/1");
    assert_eq!(status, 503, "no fail-safe asked for");
    let (status, _) = server.get("/users/1?max_stale=1ms");
    assert_eq!(status, 503, "older than asked");

    rename("_away", "");
    server.wait_until("reading the database again", |s| {
        let (status, user) = s.get("/users/1?max_stale=10s");
        status == 200 && user["source"] != "stale" && user.get("age_ms").is_none()
    });
}

/// A SQLite file made before users had teams: the node adds the column (its users join team 0,
/// their versions unchanged) and the teams, and seeds new users into teams.
#[test]
fn an_old_sqlite_file_without_teams_gets_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("users.db");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let url = format!("sqlite://{}?mode=rwc", path.display());
        let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
        conn.execute(
            "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL, version INTEGER NOT NULL); \
             INSERT INTO users VALUES (1, 'old-1', 7), (2, 'old-2', 1)",
        )
        .await
        .unwrap();
    });
    let server = Server::start_with("a", &path, &[], &["--users", "10"]);
    let (_, old) = server.get("/users/1");
    assert_eq!(
        (&old["name"], &old["team"], &old["version"]),
        (&"old-1".into(), &"team-0".into(), &8.into())
    );
    let (_, new) = server.get("/users/7");
    assert_eq!(
        (&new["team"], &new["version"]),
        (&"team-3".into(), &2.into())
    );
    server.stop();
    // Started again on the migrated file, it changes nothing.
    let server = Server::start_with("a", &path, &[], &["--users", "10"]);
    assert_eq!(server.get("/users/1").1["version"], 8);
}
