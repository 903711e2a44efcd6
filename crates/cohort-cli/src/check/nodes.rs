//! The checked nodes: `cohort serve` processes started from this same binary, killed, paused,
//! resumed and restarted on command.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use parking_lot::Mutex;
use rustix::process::{Pid, Signal, kill_process};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};

use crate::serve::Consistency;

/// The running nodes, by index; `None` while one is killed.
pub(crate) type Cluster = Arc<Mutex<Vec<Option<Node>>>>;

/// How to start every node.
#[derive(Clone, Debug)]
pub(crate) struct NodeSpec {
    /// The cluster key file every node reads.
    pub(crate) key_file: PathBuf,
    /// The database's URL.
    pub(crate) db: String,
    pub(crate) max_staleness: Duration,
    pub(crate) users: u64,
    /// Every node's advertised (proxy) address, by index.
    pub(crate) advertised: Vec<SocketAddr>,
    /// What the nodes' caches promise.
    pub(crate) mode: Consistency,
    /// Indexes of nodes started with their leases ignored (to show the checker catches it).
    pub(crate) broken: Vec<usize>,
}

/// One running node process.
pub(crate) struct Node {
    pub(crate) name: String,
    pub(crate) http: SocketAddr,
    pub(crate) listen: SocketAddr,
    child: Child,
    /// Held open: the process may print more.
    _stdout: BufReader<ChildStdout>,
}

impl Node {
    /// Starts node `index` and waits until it says it is ready.
    pub(crate) async fn start(spec: &NodeSpec, index: usize) -> anyhow::Result<Self> {
        let name = format!("n{index}");
        let seeds: Vec<String> = spec.advertised.iter().map(ToString::to_string).collect();
        let exe = std::env::current_exe().context("cannot find the cohort binary")?;
        let mut command = Command::new(exe);
        command
            .args(["serve", "--name", &name])
            .args(["--http", "127.0.0.1:0", "--listen", "127.0.0.1:0"])
            .args(["--advertise", &spec.advertised[index].to_string()])
            .args(["--seeds", &seeds.join(",")])
            .args(["--db", &spec.db])
            .arg("--cluster-key-file")
            .arg(&spec.key_file)
            .args([
                "--max-staleness",
                &format!("{}ms", spec.max_staleness.as_millis()),
            ])
            .args(["--users", &spec.users.to_string()])
            .args(["--mode", spec.mode.name()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        if spec.broken.contains(&index) {
            command.arg("--unsafe-ignore-leases");
        }
        let mut child = command.spawn().context("cannot start cohort serve")?;
        let mut stdout = BufReader::new(child.stdout.take().context("no stdout")?);
        let mut line = String::new();
        tokio::time::timeout(Duration::from_secs(20), stdout.read_line(&mut line))
            .await
            .with_context(|| format!("{name} did not start within 20 s"))??;
        if !line.trim_end().ends_with("ready") {
            bail!("{name} did not start: {line:?}");
        }
        let field = |key: &str| -> anyhow::Result<SocketAddr> {
            line.split_whitespace()
                .find_map(|f| f.strip_prefix(key))
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("no {key} in {line:?}"))
        };
        Ok(Self {
            http: field("http=")?,
            listen: field("listen=")?,
            name,
            child,
            _stdout: stdout,
        })
    }

    /// The process id, while the process runs.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Kills the process and reaps it.
    pub(crate) async fn kill(mut self) -> anyhow::Result<()> {
        self.child.start_kill()?;
        self.child.wait().await?;
        Ok(())
    }

    /// Asks the process to leave and waits for it to exit; an exit other than a clean one is an
    /// error.
    pub(crate) async fn stop(mut self) -> anyhow::Result<()> {
        let pid = self.pid().context("the process has exited")?;
        signal(pid, Signal::CONT)?;
        signal(pid, Signal::TERM)?;
        let status = tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .with_context(|| format!("{} did not exit within 10 s of SIGTERM", self.name))??;
        anyhow::ensure!(status.success(), "{} exited with {status}", self.name);
        Ok(())
    }

    /// Whether the process ended on its own; `Some` describes how.
    pub(crate) fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            Ok(None) => None,
            Err(e) => Some(e.to_string()),
        }
    }
}

/// Sends `signal` to process `pid`.
pub(crate) fn signal(pid: u32, signal: Signal) -> anyhow::Result<()> {
    let target = i32::try_from(pid)
        .ok()
        .and_then(Pid::from_raw)
        .with_context(|| format!("{pid} is not a process id"))?;
    kill_process(target, signal).with_context(|| format!("cannot send {signal:?} to {pid}"))
}
