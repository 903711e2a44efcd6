//! Running a test in a process of its own, for measurements that count the whole process.

use std::future::Future;

/// Set in the child process a measurement of resident memory runs in.
const ALONE: &str = "COHORT_MEASURED_ALONE";

/// Runs `test`, the test named `name`, in a process of its own: resident memory counts every
/// thread of a process, and the other tests of this binary run alongside it.
pub(crate) fn alone(name: &str, test: impl Future<Output = ()>) {
    if std::env::var_os(ALONE).is_some() {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
            .block_on(test);
        return;
    }
    let child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--nocapture"])
        .env(ALONE, "1")
        .output()
        .expect("the test binary runs");
    eprint!("{}", String::from_utf8_lossy(&child.stderr));
    let stdout = String::from_utf8_lossy(&child.stdout);
    assert!(child.status.success(), "{stdout}");
    assert!(stdout.contains("1 passed"), "the test ran: {stdout}");
}
