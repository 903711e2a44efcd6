//! How cost grows with the cluster: 5, 10, 25 and 50 nodes in one process over loopback TCP,
//! each size in a child process of its own (`--scale-probe N`), so that its memory figure starts
//! from a clean heap and no size inherits another's sockets or threads.
//!
//! Every node runs the defaults a user gets (Δ = 500 ms: a ping to every peer every Δ/4, a SWIM
//! probe every Δ/2) and tails a SQLite change log: one database file, one pool of one connection
//! per node, as separate processes sharing the file would. The nodes form a full mesh: each one
//! dials every other, so N nodes hold N × (N − 1) links.
//!
//! Each probe measures, after the mesh has linked and settled:
//! - memory per idle node: the growth of the resident set from before the first node started to
//!   after the last one linked and the mesh settled, divided by N (each node's SQLite connection
//!   included);
//! - an idle window of [`WINDOW`]: bytes the nodes wrote to their sockets (counted by a
//!   [`Network`] wrapping [`Tcp`]: frames with their length prefixes, not TCP/IP headers) and
//!   system calls the process made (every thread, counted by the kernel's `raw_syscalls`
//!   tracepoint through `perf stat`; skipped with the reason where perf cannot count) and CPU time
//!   the process took, per node per second: the heartbeats and SWIM, the cost of merely being in
//!   the cluster; and the change-log polls the database served, per second in all (each poll one
//!   read transaction of two `SELECT`s);
//! - an update window of [`WINDOW`]: node 0 invalidates keys one at a time, each after the last
//!   one reached every peer; propagation is the time from `invalidate` returning to the last
//!   peer applying it (p50 and p99), and bytes and system calls per update per node are the
//!   window's counts less the idle window's for as long, divided by updates and by N (skipped
//!   where that difference is not positive: the background's variation swamped it). The system
//!   calls include the benchmark's own waiting for the peers' events.
//!
//! All N nodes share this machine's cores, so the process carries the whole cluster's background,
//! which grows as N²; on separate machines each node carries its own share. The per-node figures
//! are what one server of such a cluster pays; the propagation figures are the shared box's, and
//! stop being a node's once the background saturates it.
//!
//! Each row of more than 5 nodes is reported with its ratio to the 5-node row: how that cost grew.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use anyhow::Context;
use cohort::{BoxConnection, BoxFuture, ChangeLog, Cluster, Listener, Network, Tcp};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use super::Figure;
use super::memory::resident_bytes;
use super::propagation::{Nodes, applied_at, linked};
use crate::latency::Latencies;

/// Cluster sizes measured.
const SIZES: [usize; 4] = [5, 10, 25, 50];

/// Length of the idle window and of the update window.
const WINDOW: Duration = Duration::from_secs(5);

/// How long the mesh runs between linking and the first window: SWIM's first rounds and the
/// first pings to every peer settle.
const SETTLE: Duration = Duration::from_secs(2);

/// How long `perf` is given to attach before a window starts, and after it ends.
const ATTACH: Duration = Duration::from_millis(300);

/// What one probe measured, as the child prints it for the parent.
#[derive(Debug, Serialize, Deserialize)]
struct Probe {
    nodes: usize,
    propagation_p50_us: f64,
    propagation_p99_us: f64,
    updates: u64,
    /// `None` where the updates' share was lost in the background's.
    bytes_per_update_per_node: Option<f64>,
    idle_bytes_per_node_per_s: f64,
    /// Share of one core, in percent.
    idle_cpu_per_node: f64,
    /// `Err` holds why system calls could not be counted.
    syscalls: Result<Syscalls, String>,
    changelog_polls_per_s: f64,
    memory_per_node: f64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Syscalls {
    /// `None` where the updates' share was lost in the background's.
    per_update_per_node: Option<f64>,
    idle_per_node_per_s: f64,
}

pub(super) async fn measure() -> anyhow::Result<Vec<Figure>> {
    let mut figures = Vec::new();
    let mut first: Option<Vec<Figure>> = None;
    for n in SIZES {
        let rows = rows(&run_probe(n).await?);
        let rows = match &first {
            Some(base) => rows.into_iter().zip(base).map(against).collect(),
            None => {
                first = Some(rows.clone());
                rows
            }
        };
        figures.extend(rows);
    }
    Ok(figures)
}

/// A row against the same row of the smallest cluster, when both were measured.
fn against((row, base): (Figure, &Figure)) -> Figure {
    match (&row.skipped, &base.skipped) {
        (None, None) => row.against(base),
        _ => row,
    }
}

fn rows(probe: &Probe) -> Vec<Figure> {
    let name = |what: &str| format!("scale_{}_nodes_{what}", probe.nodes);
    let per_update = |what: &str, value: Option<f64>, unit| match value {
        Some(value) => Figure::plain(name(what), value, unit),
        None => Figure::skipped(name(what), "within the background's variation".to_owned()),
    };
    let (syscalls_per_update, idle) = match &probe.syscalls {
        Ok(s) => (
            per_update("syscalls_per_update", s.per_update_per_node, "sys/upd/node"),
            Figure::plain(name("idle_syscalls"), s.idle_per_node_per_s, "sys/s/node"),
        ),
        Err(reason) => (
            Figure::skipped(name("syscalls_per_update"), reason.clone()),
            Figure::skipped(name("idle_syscalls"), reason.clone()),
        ),
    };
    vec![
        Figure::plain(name("propagation_p50"), probe.propagation_p50_us, "us"),
        Figure::plain(name("propagation_p99"), probe.propagation_p99_us, "us"),
        per_update(
            "bytes_per_update",
            probe.bytes_per_update_per_node,
            "B/upd/node",
        ),
        syscalls_per_update,
        Figure::plain(
            name("idle_bytes"),
            probe.idle_bytes_per_node_per_s,
            "B/s/node",
        ),
        idle,
        Figure::plain(name("idle_cpu"), probe.idle_cpu_per_node, "%core/node"),
        Figure::plain(
            name("changelog_polls"),
            probe.changelog_polls_per_s,
            "polls/s",
        ),
        Figure::plain(name("memory"), probe.memory_per_node, "B/node"),
    ]
}

/// Runs `cohort bench --scale-probe n` and reads what it printed.
async fn run_probe(n: usize) -> anyhow::Result<Probe> {
    let exe = std::env::current_exe().context("cannot find the cohort binary")?;
    let output = tokio::process::Command::new(exe)
        .args(["bench", "--scale-probe", &n.to_string()])
        .output()
        .await
        .context("cannot run the scale probe")?;
    anyhow::ensure!(
        output.status.success(),
        "the scale probe of {n} nodes failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).context("the scale probe printed no figures")
}

/// Measures `n` nodes in this process and prints the [`Probe`] as JSON.
pub(super) async fn probe(n: usize) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let probe = measure_nodes(n, &dir.path().join("scale.db"), WINDOW).await?;
    println!("{}", serde_json::to_string(&probe)?);
    Ok(())
}

/// Starts `n` nodes over the SQLite file at `db` and measures them (see the module's docs), each
/// window `window` long.
async fn measure_nodes(n: usize, db: &Path, window: Duration) -> anyhow::Result<Probe> {
    anyhow::ensure!(n >= 2, "a mesh needs two nodes");
    raise_fd_limit();
    // The file is created and switched to WAL once, before the nodes race to open it.
    drop(crate::users_db::open(db, 1).await?);
    let written = Arc::new(AtomicU64::new(0));
    let before = resident_bytes();
    let nodes = start(n, db, &written).await?;
    tokio::time::sleep(SETTLE).await;
    let memory_per_node = resident_bytes().saturating_sub(before) as f64 / n as f64;

    let polls = || -> u64 {
        nodes
            .iter()
            .filter_map(|(node, _)| node.change_log_status())
            .map(|status| status.polls)
            .sum()
    };
    let idle_syscalls = SyscallCount::start(window);
    tokio::time::sleep(ATTACH).await;
    let (bytes0, polls0, cpu0) = (written.load(Ordering::Relaxed), polls(), cpu_time());
    let start = Instant::now();
    tokio::time::sleep(window).await;
    let idle_secs = start.elapsed().as_secs_f64();
    let idle_cpu = (cpu_time() - cpu0).as_secs_f64() / idle_secs;
    let idle_bytes = (written.load(Ordering::Relaxed) - bytes0) as f64 / idle_secs;
    let changelog_polls_per_s = (polls() - polls0) as f64 / idle_secs;
    let idle_syscalls = idle_syscalls.finish().await;

    let busy_syscalls = SyscallCount::start(window);
    tokio::time::sleep(ATTACH).await;
    let bytes0 = written.load(Ordering::Relaxed);
    let (delays, updates, busy_secs) = to_all_peers(&nodes, window).await?;
    let busy_bytes = (written.load(Ordering::Relaxed) - bytes0) as f64;
    let busy_syscalls = busy_syscalls.finish().await;

    // What the updates added to the window: its count less the idle rate for as long. Where
    // that is not positive, the background's variation swamped the updates' share.
    let per_update_per_node = |busy: f64, idle_per_s: f64, busy_secs: f64| {
        let added = busy - idle_per_s * busy_secs;
        (added > 0.0).then(|| added / updates as f64 / n as f64)
    };
    let syscalls = match (idle_syscalls, busy_syscalls) {
        (Ok((idle, idle_span)), Ok((busy, busy_span))) => Ok(Syscalls {
            per_update_per_node: per_update_per_node(
                busy as f64,
                idle as f64 / idle_span,
                busy_span,
            ),
            idle_per_node_per_s: idle as f64 / idle_span / n as f64,
        }),
        (Err(e), _) | (_, Err(e)) => Err(e),
    };
    for (node, _) in &nodes {
        node.shutdown().await;
    }
    Ok(Probe {
        nodes: n,
        propagation_p50_us: delays.quantile(0.5).as_secs_f64() * 1e6,
        propagation_p99_us: delays.quantile(0.99).as_secs_f64() * 1e6,
        updates,
        bytes_per_update_per_node: per_update_per_node(busy_bytes, idle_bytes, busy_secs),
        idle_bytes_per_node_per_s: idle_bytes / n as f64,
        idle_cpu_per_node: idle_cpu * 100.0 / n as f64,
        syscalls,
        changelog_polls_per_s,
        memory_per_node,
    })
}

/// Starts `n` nodes seeded with the first, each tailing the change log in `db` through a pool of
/// its own, their socket writes counted in `written`; returns once all are linked.
async fn start(n: usize, db: &Path, written: &Arc<AtomicU64>) -> anyhow::Result<Nodes> {
    let mut nodes = Vec::new();
    let mut seed = None;
    for i in 0..n {
        let pool = crate::users_db::open(db, 1).await?;
        let node = Cluster::builder()
            .node_name(format!("s{i}"))
            .network(Counted {
                written: written.clone(),
            })
            .change_log(ChangeLog::sqlite(pool))
            .seeds(seed.clone())
            .start()
            .await?;
        seed.get_or_insert_with(|| node.local_addr().to_string());
        nodes.push(node);
    }
    linked(nodes).await
}

/// Invalidates keys on the first node, one at a time, for `window`; returns the delays from
/// `invalidate` returning to the last other node applying the event, how many updates ran and
/// for how long, in seconds.
async fn to_all_peers(nodes: &Nodes, window: Duration) -> anyhow::Result<(Latencies, u64, f64)> {
    let mut receivers: Vec<_> = nodes[1..].iter().map(|(c, _)| c.subscribe()).collect();
    let mut delays = Latencies::default();
    let start = Instant::now();
    let mut updates = 0;
    while start.elapsed() < window {
        let event = nodes[0].1.invalidate(&updates).await?;
        let returned = Instant::now();
        let mut last = returned;
        for receiver in &mut receivers {
            last = last.max(applied_at(receiver, &event).await?);
        }
        delays.record(last - returned);
        updates += 1;
        // Latency, not queueing.
        tokio::task::yield_now().await;
    }
    Ok((delays, updates, start.elapsed().as_secs_f64()))
}

/// CPU time of every thread of this process so far.
fn cpu_time() -> Duration {
    let time = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(time.tv_sec.unsigned_abs(), time.tv_nsec as u32)
}

/// A mesh of 50 nodes holds 2,450 links, two descriptors each in one process: lift the soft limit
/// on open files to the hard one. Where that fails, starting the nodes reports the shortage.
fn raise_fd_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    limit.current = limit.maximum;
    if let Err(e) = setrlimit(Resource::Nofile, limit) {
        tracing::warn!(%e, "cannot raise the limit on open files");
    }
}

/// This process's system calls over a span, counted by `perf stat` on the kernel's
/// `raw_syscalls:sys_enter` tracepoint: every call of every thread, whatever it is.
struct SyscallCount {
    perf: Result<tokio::process::Child, String>,
    span: Duration,
}

impl SyscallCount {
    /// Starts counting for `window` plus an [`ATTACH`] before it and after it.
    fn start(window: Duration) -> Self {
        let span = window + ATTACH * 2;
        let perf = tokio::process::Command::new("perf")
            .args(["stat", "-x,", "-e", "raw_syscalls:sys_enter", "-p"])
            .arg(std::process::id().to_string())
            .args(["--", "sleep"])
            .arg(format!("{:.3}", span.as_secs_f64()))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot run perf: {e}"));
        Self { perf, span }
    }

    /// The count and the span it covers, in seconds.
    async fn finish(self) -> Result<(u64, f64), String> {
        let output = self
            .perf?
            .wait_with_output()
            .await
            .map_err(|e| format!("perf failed: {e}"))?;
        let text = String::from_utf8_lossy(&output.stderr);
        text.lines()
            .find(|line| line.contains("raw_syscalls:sys_enter"))
            .and_then(|line| line.split(',').next()?.parse().ok())
            .map(|count| (count, self.span.as_secs_f64()))
            .ok_or_else(|| format!("perf counted no system calls: {}", text.trim()))
    }
}

/// TCP as [`Tcp`] makes it, every byte written to a socket counted.
struct Counted {
    written: Arc<AtomicU64>,
}

impl Network for Counted {
    fn bind(&self, addr: SocketAddr) -> BoxFuture<'_, io::Result<Box<dyn Listener>>> {
        Box::pin(async move {
            let inner = Tcp.bind(addr).await?;
            Ok(Box::new(CountedListener {
                inner,
                written: self.written.clone(),
            }) as Box<dyn Listener>)
        })
    }

    fn connect(&self, addr: SocketAddr) -> BoxFuture<'_, io::Result<BoxConnection>> {
        Box::pin(async move {
            let inner = Tcp.connect(addr).await?;
            Ok(Box::new(CountedConnection {
                inner,
                written: self.written.clone(),
            }) as BoxConnection)
        })
    }
}

struct CountedListener {
    inner: Box<dyn Listener>,
    written: Arc<AtomicU64>,
}

impl Listener for CountedListener {
    fn accept(&self) -> BoxFuture<'_, io::Result<(BoxConnection, SocketAddr)>> {
        Box::pin(async move {
            let (inner, from) = self.inner.accept().await?;
            let counted = CountedConnection {
                inner,
                written: self.written.clone(),
            };
            Ok((Box::new(counted) as BoxConnection, from))
        })
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

struct CountedConnection {
    inner: BoxConnection,
    written: Arc<AtomicU64>,
}

impl CountedConnection {
    fn count(&self, written: Poll<io::Result<usize>>) -> Poll<io::Result<usize>> {
        if let Poll::Ready(Ok(n)) = &written {
            self.written.fetch_add(*n as u64, Ordering::Relaxed);
        }
        written
    }
}

impl AsyncRead for CountedConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for CountedConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.count(written)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.count(written)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn three_nodes_give_a_figure_for_every_row() {
        let dir = tempfile::tempdir().unwrap();
        let probe = measure_nodes(3, &dir.path().join("scale.db"), Duration::from_millis(500))
            .await
            .unwrap();
        assert!(probe.updates > 0, "{probe:?}");
        assert!(probe.propagation_p50_us > 0.0, "{probe:?}");
        assert!(
            probe.propagation_p99_us >= probe.propagation_p50_us,
            "{probe:?}"
        );
        // Every update writes an event to each peer; idle, the pings and SWIM write.
        assert!(probe.bytes_per_update_per_node > Some(0.0), "{probe:?}");
        assert!(probe.idle_bytes_per_node_per_s > 0.0, "{probe:?}");
        assert!(probe.idle_cpu_per_node > 0.0, "{probe:?}");
        assert!(probe.changelog_polls_per_s > 0.0, "{probe:?}");
        assert!(probe.memory_per_node > 0.0, "{probe:?}");
        // Counted only where perf may count; then every figure is a number.
        if let Ok(syscalls) = &probe.syscalls {
            assert!(
                syscalls.per_update_per_node.is_none_or(f64::is_finite),
                "{probe:?}"
            );
            assert!(syscalls.idle_per_node_per_s > 0.0, "{probe:?}");
        }
        let rows = rows(&probe);
        assert_eq!(rows.len(), 9);
        assert!(
            rows.iter()
                .all(|f| f.skipped.is_some() || f.value.is_finite()),
            "{rows:?}"
        );
    }
}
