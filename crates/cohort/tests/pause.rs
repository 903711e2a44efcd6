//! A node whose whole process is stopped (`SIGSTOP`, as a debugger, a frozen cgroup or an
//! overloaded host does) must not wake up serving on a lease that ran out while it was stopped:
//! the hit path's clock has to count the time the process did not run.
//!
//! The node runs in a second OS process (this test binary, started again in the child role),
//! so that stopping it stops every thread it has, the tailer's included.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cohort::{
    BoxFuture, ChangeLog, ChangeLogError, LogBackend, LogBatch, LogPosition, TimeSource,
    WatchedTable,
};
use rustix::process::{Pid, Signal, kill_process};

const BOUND: Duration = Duration::from_secs(2);
/// Set in the child, to the clock it runs on: `system` or `suspend-aware`.
const CHILD: &str = "COHORT_PAUSE_CHILD";

/// An empty change log that fails every read once `down` is set, as a database that stopped
/// answering: the node's lease then runs out Δ after its last complete poll started.
struct Log {
    down: Arc<AtomicBool>,
}

impl LogBackend for Log {
    fn install<'a>(&'a self, _: &'a WatchedTable) -> BoxFuture<'a, Result<(), ChangeLogError>> {
        Box::pin(async { Ok(()) })
    }

    fn head(&self) -> BoxFuture<'_, Result<LogPosition, ChangeLogError>> {
        Box::pin(async { Ok(LogPosition::default()) })
    }

    fn read(&self, _: LogPosition, _: u32) -> BoxFuture<'_, Result<LogBatch, ChangeLogError>> {
        let down = self.down.load(Ordering::SeqCst);
        Box::pin(async move {
            if down {
                Err(ChangeLogError::Backend(
                    "the database stopped answering".into(),
                ))
            } else {
                Ok(LogBatch::default())
            }
        })
    }

    fn prune(&self, _: Duration) -> BoxFuture<'_, Result<u64, ChangeLogError>> {
        Box::pin(async { Ok(0) })
    }
}

/// The child: one node with a cache watching a table, one cached key. Commands on stdin, one a
/// line: `down` makes the log fail; `read` answers `hit` or `miss` for the key.
fn child(clock: &str) {
    let time_source = match clock {
        "system" => TimeSource::System,
        "suspend-aware" => TimeSource::SuspendAware,
        other => panic!("unknown clock {other:?}"),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let down = Arc::new(AtomicBool::new(false));
        let cluster = cohort::Cluster::builder()
            .max_staleness(BOUND)
            .time_source(time_source)
            .change_log(ChangeLog::custom(Log {
                down: Arc::clone(&down),
            }))
            .start()
            .await
            .unwrap();
        let cache = cluster
            .cache::<u64, String>("users")
            .watch_table("users", "id")
            .build()
            .unwrap();
        let mut events = cluster.subscribe();
        while !cache.is_serving() {
            let _ = events.recv().await;
        }
        cache
            .get_or_load(&1, |_| async { Ok::<_, ()>("one".to_owned()) })
            .await
            .unwrap();
        assert!(
            cache.get(&1).is_some(),
            "the value is cached while the lease holds"
        );
        println!("ready");
        for command in std::io::stdin().lock().lines() {
            match command.unwrap().as_str() {
                "down" => {
                    down.store(true, Ordering::SeqCst);
                    println!("down");
                }
                "read" => println!(
                    "{}",
                    if cache.get(&1).is_some() {
                        "hit"
                    } else {
                        "miss"
                    }
                ),
                other => panic!("unknown command {other:?}"),
            }
        }
    });
}

struct Node {
    process: Child,
    commands: ChildStdin,
    answers: BufReader<ChildStdout>,
}

impl Node {
    /// Starts the child of `test` (this binary, running that test alone) on `clock`.
    fn start(test: &str, clock: &str) -> Self {
        let mut process = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", test, "--nocapture", "--test-threads=1"])
            .env(CHILD, clock)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let commands = process.stdin.take().unwrap();
        let mut node = Self {
            answers: BufReader::new(process.stdout.take().unwrap()),
            process,
            commands,
        };
        node.expect("ready");
        node
    }

    /// The child's next answer (the test harness prints lines of its own around them).
    fn answer(&mut self) -> String {
        loop {
            let mut line = String::new();
            assert_ne!(
                self.answers.read_line(&mut line).unwrap(),
                0,
                "the child exited"
            );
            // The harness's "test <name> ... " precedes the first answer on its line.
            let last = line.split_whitespace().last().unwrap_or_default();
            if ["ready", "down", "hit", "miss"].contains(&last) {
                return last.to_owned();
            }
        }
    }

    fn expect(&mut self, answer: &str) {
        assert_eq!(self.answer(), answer);
    }

    fn ask(&mut self, command: &str) -> String {
        writeln!(self.commands, "{command}").unwrap();
        self.answer()
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(i32::try_from(self.process.id()).unwrap()).unwrap()
    }

    /// Stops the whole process for `pause`, then lets it run again.
    fn stop_for(&self, pause: Duration) {
        kill_process(self.pid(), Signal::STOP).unwrap();
        std::thread::sleep(pause);
        kill_process(self.pid(), Signal::CONT).unwrap();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// Runs the scenario on `clock`: the child role when this process is the child.
fn stopped_past_the_lease(test: &str, clock: &str) {
    if let Some(clock) = std::env::var_os(CHILD) {
        return child(clock.to_str().unwrap());
    }
    let mut node = Node::start(test, clock);
    // The database stops answering: the lease now runs at most Δ more, at least Δ·3/4 (a poll
    // starts every Δ/4).
    assert_eq!(node.ask("down"), "down");
    // A short stop leaves most of the lease: the node still serves, so the test below does not
    // pass merely because the cache never serves.
    node.stop_for(Duration::from_millis(100));
    assert_eq!(
        node.ask("read"),
        "hit",
        "a 100 ms stop ended a lease of over a second"
    );
    // A stop longer than Δ: no thread ran, no poll failed, nothing noticed; only the clock can
    // tell that the lease is over, on the first read after waking.
    node.stop_for(BOUND + Duration::from_millis(500));
    assert_eq!(
        node.ask("read"),
        "miss",
        "served on a lease that ran out while stopped"
    );
}

#[test]
fn a_process_stopped_past_its_lease_wakes_up_not_serving() {
    stopped_past_the_lease(
        "a_process_stopped_past_its_lease_wakes_up_not_serving",
        "system",
    );
}

#[test]
fn on_the_suspend_aware_clock_too() {
    stopped_past_the_lease("on_the_suspend_aware_clock_too", "suspend-aware");
}
