//! Deterministic simulations of peer-only clusters (no change log) on turmoil's network and clock.
//!
//! Three nodes run as turmoil hosts; a client drives reads and updates through them against an
//! in-memory source of truth, while faults are injected: partitions, held (delayed) messages,
//! connection resets (whatever was queued or in flight is lost), crashes and restarts, graceful
//! leaves. Every operation is recorded and a history checker asserts the promise of
//! the peer-only tier: no read returns a version older than one whose update completed more than
//! the bound before the read started. Every run is replayed from its seed; a failure prints it.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use cohort::{
    BoxConnection, BoxFuture, Cache, Cluster, ClusterStats, Listener, Network, TimeSource,
    UpdateError,
};
use futures_util::task::AtomicWaker;
use parking_lot::Mutex;
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

const PORT: u16 = 7000;
const BOUND: Duration = Duration::from_millis(500);
const NODES: [&str; 3] = ["n0", "n1", "n2"];
const KEYS: u64 = 4;

/// turmoil's simulated TCP, with a switch that resets every connection of the host.
struct SimNet(Arc<ResetSwitch>);

/// Breaks a host's connections on demand, as a reset (RST) from the network would.
#[derive(Default)]
struct ResetSwitch {
    generation: AtomicU64,
    wakers: Mutex<Vec<std::sync::Weak<AtomicWaker>>>,
}

impl ResetSwitch {
    fn reset(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        let mut wakers = self.wakers.lock();
        for waker in wakers.drain(..).filter_map(|w| w.upgrade()) {
            waker.wake();
        }
    }

    fn wrap(self: &Arc<Self>, stream: turmoil::net::TcpStream) -> BoxConnection {
        let waker = Arc::new(AtomicWaker::new());
        self.wakers.lock().push(Arc::downgrade(&waker));
        Box::new(Resettable {
            stream,
            switch: Arc::clone(self),
            born: self.generation.load(Ordering::SeqCst),
            waker,
        })
    }
}

/// A connection that fails with `ConnectionReset` once its host's switch is flipped.
struct Resettable {
    stream: turmoil::net::TcpStream,
    switch: Arc<ResetSwitch>,
    born: u64,
    waker: Arc<AtomicWaker>,
}

impl Resettable {
    fn check(&self, cx: &Context<'_>) -> io::Result<()> {
        self.waker.register(cx.waker());
        if self.switch.generation.load(Ordering::SeqCst) == self.born {
            Ok(())
        } else {
            Err(io::ErrorKind::ConnectionReset.into())
        }
    }
}

impl AsyncRead for Resettable {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Resettable {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.check(cx)?;
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

struct SimListener(turmoil::net::TcpListener, Arc<ResetSwitch>);

impl Network for SimNet {
    fn bind(&self, addr: SocketAddr) -> BoxFuture<'_, io::Result<Box<dyn Listener>>> {
        Box::pin(async move {
            let listener = turmoil::net::TcpListener::bind(addr).await?;
            Ok(Box::new(SimListener(listener, Arc::clone(&self.0))) as Box<dyn Listener>)
        })
    }

    fn connect(&self, addr: SocketAddr) -> BoxFuture<'_, io::Result<BoxConnection>> {
        Box::pin(async move {
            let stream = turmoil::net::TcpStream::connect(addr).await?;
            Ok(self.0.wrap(stream))
        })
    }
}

impl Listener for SimListener {
    fn accept(&self) -> BoxFuture<'_, io::Result<(BoxConnection, SocketAddr)>> {
        Box::pin(async move {
            let (stream, from) = self.0.accept().await?;
            Ok((self.1.wrap(stream), from))
        })
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

/// The source of truth: a version per key.
#[derive(Clone, Default)]
struct Source(Arc<Mutex<HashMap<u64, u64>>>);

impl Source {
    fn read(&self, key: u64) -> u64 {
        self.0.lock().get(&key).copied().unwrap_or(0)
    }

    fn write(&self, key: u64) -> u64 {
        let mut rows = self.0.lock();
        let version = rows.entry(key).or_insert(0);
        *version += 1;
        *version
    }
}

/// The running nodes, by name, as the client reaches them.
type Nodes = Arc<Mutex<HashMap<&'static str, (Cluster, Cache<u64, u64>)>>>;

#[derive(Debug)]
enum Op {
    Read {
        node: &'static str,
        key: u64,
        version: u64,
        started: Instant,
    },
    Update {
        node: &'static str,
        key: u64,
        version: u64,
        completed: Instant,
    },
}

impl Op {
    /// When the operation counts: a read's start, an update's completion.
    fn at(&self) -> Instant {
        match *self {
            Op::Read { started, .. } => started,
            Op::Update { completed, .. } => completed,
        }
    }
}

fn host(
    name: &'static str,
    seed: u64,
    nodes: Nodes,
    switch: Arc<ResetSwitch>,
) -> impl Fn() -> BoxFuture<'static, turmoil::Result> {
    move || {
        let (nodes, switch) = (nodes.clone(), switch.clone());
        Box::pin(async move {
            let mut builder = Cluster::builder();
            builder
                .node_name(name)
                .listen(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), PORT))
                .advertise(SocketAddr::new(turmoil::lookup(name), PORT))
                .max_staleness(BOUND)
                .network(SimNet(switch))
                .time_source(TimeSource::Tokio)
                .rng_seed(seed);
            // Every node gets the whole seed list, as the README advises: a node that knows of
            // none is a cluster of one.
            builder
                .seeds(NODES.map(|seed| SocketAddr::new(turmoil::lookup(seed), PORT).to_string()));
            let cluster = builder.start().await?;
            let cache = cluster.cache::<u64, u64>("kv").build()?;
            nodes.lock().insert(name, (cluster, cache));
            std::future::pending::<()>().await;
            Ok(())
        })
    }
}

/// A fault and when (simulated time since the start of the workload) it starts and ends.
#[derive(Clone, Debug)]
enum Fault {
    /// Two nodes cannot reach each other.
    Partition(usize, usize),
    /// One node is cut off from both others.
    Isolate(usize),
    /// Messages between two nodes are held back, then delivered late.
    Hold(usize, usize),
    /// A node crashes and restarts as a new incarnation.
    Crash(usize),
    /// Every connection of a node breaks at once; what was queued or in flight on them is lost.
    Reset(usize),
    /// A node shuts down gracefully, then starts again as a new incarnation.
    Leave(usize),
}

#[derive(Clone, Debug)]
struct Scheduled {
    fault: Fault,
    at: Duration,
    lasts: Duration,
}

/// What one simulation did.
struct Run {
    history: Vec<Op>,
    /// The mesh counters of the nodes running at the end, summed.
    mesh: ClusterStats,
    /// Cache flushes on those nodes, summed.
    flushes: u64,
}

/// Runs one simulation and returns what it did, or the checker's complaint.
fn simulate(seed: u64, schedule: Vec<Scheduled>, run_for: Duration) -> Result<Run, String> {
    let mut sim = turmoil::Builder::new()
        .simulation_duration(run_for + Duration::from_secs(30))
        .rng_seed(seed)
        .build();
    let nodes: Nodes = Arc::default();
    let switches: Vec<Arc<ResetSwitch>> = NODES.iter().map(|_| Arc::default()).collect();
    for (i, name) in NODES.iter().enumerate() {
        sim.host(
            *name,
            host(
                name,
                seed.wrapping_add(i as u64),
                nodes.clone(),
                switches[i].clone(),
            ),
        );
    }
    let history = Arc::new(Mutex::new(Vec::new()));
    let crashes: Arc<Mutex<Vec<(Duration, Duration, usize)>>> = Arc::default();
    {
        let (nodes, history, crashes) = (nodes.clone(), history.clone(), crashes.clone());
        sim.client("client", async move {
            // Everyone linked and confirmed before the workload starts.
            loop {
                let ready = {
                    let nodes = nodes.lock();
                    nodes.len() == NODES.len()
                        && nodes.values().all(|(_, cache)| cache.is_serving())
                };
                if ready {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let source = Source::default();
            let mut rng = StdRng::seed_from_u64(seed);
            let start = Instant::now();
            let mut pending: Vec<Scheduled> = schedule;
            let mut active: Vec<(Instant, Fault)> = Vec::new();
            while start.elapsed() < run_for {
                let now = start.elapsed();
                for fault in pending.extract_if(.., |f| f.at <= now) {
                    if let Fault::Leave(a) = fault.fault {
                        let leaving = nodes.lock().remove(NODES[a]);
                        if let Some((cluster, _)) = leaving {
                            cluster.shutdown().await;
                        }
                    }
                    begin(&fault.fault, &crashes, &switches, now, fault.lasts);
                    active.push((Instant::now() + fault.lasts, fault.fault));
                }
                for (_, fault) in active.extract_if(.., |(until, _)| *until <= Instant::now()) {
                    end(&fault);
                }
                let name = NODES[rng.random_range(0..NODES.len())];
                let Some((_, cache)) = nodes.lock().get(name).cloned() else {
                    continue;
                };
                let key = rng.random_range(0..KEYS);
                if rng.random_bool(0.7) {
                    let started = Instant::now();
                    let source = source.clone();
                    let version = cache
                        .get_or_load(&key, |key| async move {
                            tokio::time::sleep(Duration::from_millis(1)).await;
                            Ok::<_, Infallible>(source.read(key))
                        })
                        .await
                        .unwrap();
                    history.lock().push(Op::Read {
                        node: name,
                        key,
                        version,
                        started,
                    });
                } else {
                    let source = source.clone();
                    let result = cache
                        .update(&key, |key| async move {
                            tokio::time::sleep(Duration::from_millis(1)).await;
                            Ok::<_, Infallible>(source.write(key))
                        })
                        .await;
                    match result {
                        Ok(receipt) => history.lock().push(Op::Update {
                            node: name,
                            key,
                            version: receipt.value,
                            completed: Instant::now(),
                        }),
                        Err(UpdateError::Fenced) => {}
                        Err(e) => panic!("update failed: {e}"),
                    }
                }
                tokio::time::sleep(Duration::from_millis(rng.random_range(1..20))).await;
            }
            Ok(())
        });
    }
    // Crashes and restarts are the simulation's to do, between steps.
    let mut crashed: Vec<(Duration, usize)> = Vec::new();
    let mut workload_start = None;
    loop {
        let done = sim
            .step()
            .map_err(|e| format!("seed {seed}: simulation failed: {e}"))?;
        if done {
            break;
        }
        let ready = nodes.lock().len() == NODES.len();
        if workload_start.is_none() && ready {
            workload_start = Some(sim.elapsed());
        }
        for (at, lasts, node) in crashes.lock().drain(..) {
            let _ = at;
            nodes.lock().remove(NODES[node]);
            sim.crash(NODES[node]);
            crashed.push((sim.elapsed() + lasts, node));
        }
        let now = sim.elapsed();
        for (_, node) in crashed.extract_if(.., |(until, _)| *until <= now) {
            sim.bounce(NODES[node]);
        }
    }
    let history = std::mem::take(&mut *history.lock());
    check(&history).map_err(|e| format!("seed {seed}: {e}"))?;
    let mut mesh = ClusterStats::default();
    let mut flushes = 0;
    for (cluster, cache) in nodes.lock().values() {
        let stats = cluster.stats();
        mesh.gaps += stats.gaps;
        mesh.events_replayed += stats.events_replayed;
        mesh.connects += stats.connects;
        flushes += cache.stats().flushes;
    }
    Ok(Run {
        history,
        mesh,
        flushes,
    })
}

fn begin(
    fault: &Fault,
    crashes: &Mutex<Vec<(Duration, Duration, usize)>>,
    switches: &[Arc<ResetSwitch>],
    now: Duration,
    lasts: Duration,
) {
    match *fault {
        Fault::Partition(a, b) => turmoil::partition(NODES[a], NODES[b]),
        Fault::Isolate(a) => {
            for b in (0..NODES.len()).filter(|&b| b != a) {
                turmoil::partition(NODES[a], NODES[b]);
            }
        }
        Fault::Hold(a, b) => turmoil::hold(NODES[a], NODES[b]),
        // A node that left is restarted the way a crashed one is.
        Fault::Crash(a) | Fault::Leave(a) => crashes.lock().push((now, lasts, a)),
        Fault::Reset(a) => switches[a].reset(),
    }
}

fn end(fault: &Fault) {
    match *fault {
        Fault::Partition(a, b) => turmoil::repair(NODES[a], NODES[b]),
        Fault::Isolate(a) => {
            for b in (0..NODES.len()).filter(|&b| b != a) {
                turmoil::repair(NODES[a], NODES[b]);
            }
        }
        Fault::Hold(a, b) => turmoil::release(NODES[a], NODES[b]),
        Fault::Crash(_) | Fault::Reset(_) | Fault::Leave(_) => {}
    }
}

/// No read may return a version older than one whose update completed more than the bound before
/// the read started.
fn check(history: &[Op]) -> Result<(), String> {
    for op in history {
        let Op::Read {
            key,
            version,
            started,
            ..
        } = *op
        else {
            continue;
        };
        let owed = history
            .iter()
            .filter_map(|op| match *op {
                Op::Update {
                    key: k,
                    version: v,
                    completed,
                    ..
                } if k == key && completed + BOUND < started => Some(v),
                _ => None,
            })
            .max()
            .unwrap_or(0);
        if version < owed {
            let origin = history.first().map_or(started, Op::at);
            for op in history {
                match *op {
                    Op::Read {
                        node,
                        key: k,
                        version,
                        started,
                    } if k == key => eprintln!("{:>8?} read   {node} v{version}", started - origin),
                    Op::Update {
                        node,
                        key: k,
                        version,
                        completed,
                    } if k == key => {
                        eprintln!("{:>8?} update {node} v{version}", completed - origin)
                    }
                    _ => {}
                }
            }
            return Err(format!(
                "a read of key {key} started at {started:?} returned version {version}, but version {owed} had completed more than {BOUND:?} before"
            ));
        }
    }
    Ok(())
}

fn reads_and_updates(history: &[Op]) -> (usize, usize) {
    let reads = history
        .iter()
        .filter(|op| matches!(op, Op::Read { .. }))
        .count();
    (reads, history.len() - reads)
}

fn at(ms: u64, lasts_ms: u64, fault: Fault) -> Scheduled {
    Scheduled {
        fault,
        at: Duration::from_millis(ms),
        lasts: Duration::from_millis(lasts_ms),
    }
}

#[test]
fn no_faults() {
    let run = simulate(1, vec![], Duration::from_secs(5)).unwrap();
    let (reads, updates) = reads_and_updates(&run.history);
    assert!(
        reads > 100 && updates > 50,
        "{reads} reads, {updates} updates"
    );
}

#[test]
fn one_node_partitioned_then_healed() {
    simulate(
        2,
        vec![at(1_000, 3_000, Fault::Isolate(1))],
        Duration::from_secs(8),
    )
    .unwrap();
}

#[test]
fn a_link_cut_between_two_nodes_for_less_than_twice_the_bound() {
    simulate(
        3,
        vec![at(1_000, 900, Fault::Partition(0, 2))],
        Duration::from_secs(6),
    )
    .unwrap();
}

/// Two nodes that cannot reach each other but both reach the third: SWIM's indirect probes
/// keep each up in the other's view, so neither retires the other (and misses its writes); both
/// stop serving and writing until the link heals.
#[test]
fn a_link_cut_for_long_between_two_nodes_that_both_reach_the_third() {
    simulate(
        8,
        vec![
            at(1_000, 3_000, Fault::Partition(0, 1)),
            at(5_000, 2_000, Fault::Hold(1, 2)),
        ],
        Duration::from_secs(9),
    )
    .unwrap();
}

#[test]
fn messages_held_back_and_delivered_late() {
    simulate(
        4,
        vec![
            at(1_000, 800, Fault::Hold(0, 1)),
            at(3_000, 300, Fault::Hold(2, 0)),
        ],
        Duration::from_secs(6),
    )
    .unwrap();
}

/// Resets lose the frames queued on the broken links; the new links replay them, so nothing is
/// flushed and no read is stale.
#[test]
fn connections_reset_under_load_are_repaired() {
    let run = simulate(
        6,
        vec![
            at(1_000, 0, Fault::Reset(0)),
            at(1_500, 0, Fault::Reset(1)),
            at(1_510, 0, Fault::Reset(2)),
            at(3_000, 0, Fault::Reset(0)),
        ],
        Duration::from_secs(5),
    )
    .unwrap();
    assert!(run.mesh.events_replayed > 0, "{:?}", run.mesh);
    assert_eq!((run.mesh.gaps, run.flushes), (0, 0), "{:?}", run.mesh);
}

#[test]
fn a_graceful_leave_and_return() {
    simulate(
        7,
        vec![at(1_000, 1_000, Fault::Leave(1))],
        Duration::from_secs(5),
    )
    .unwrap();
}

#[test]
fn a_crash_and_restart_with_a_new_incarnation() {
    simulate(
        5,
        vec![at(1_000, 1_500, Fault::Crash(2))],
        Duration::from_secs(8),
    )
    .unwrap();
}

/// The faults the peer-only tier promises to survive (README): a node cut off from the rest, a
/// link broken or slow between two nodes, for any time; crashes and restarts, graceful leaves,
/// connection resets.
fn fault() -> impl Strategy<Value = (Fault, u64)> {
    let pair = (0..3_usize, 0..3_usize).prop_filter("two nodes", |(a, b)| a != b);
    let any = 50_u64..3_000;
    prop_oneof![
        (pair.clone(), any.clone()).prop_map(|((a, b), ms)| (Fault::Partition(a, b), ms)),
        (pair, any.clone()).prop_map(|((a, b), ms)| (Fault::Hold(a, b), ms)),
        (0..3_usize, any.clone()).prop_map(|(a, ms)| (Fault::Isolate(a), ms)),
        (0..3_usize, any.clone()).prop_map(|(a, ms)| (Fault::Crash(a), ms)),
        (0..3_usize, any).prop_map(|(a, ms)| (Fault::Leave(a), ms)),
        (0..3_usize).prop_map(|a| (Fault::Reset(a), 0)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 200,
        failure_persistence: None,
        rng_seed: proptest::test_runner::RngSeed::Fixed(7),
        ..ProptestConfig::default()
    })]

    /// 200 random fault schedules (a fixed list: the generator's seed is fixed), each run from its
    /// own simulation seed.
    #[test]
    fn random_fault_schedules(
        seed in 0_u64..1_000_000,
        faults in proptest::collection::vec((fault(), 200_u64..4_000), 0..4),
    ) {
        let schedule = faults.into_iter().map(|((fault, lasts_ms), at_ms)| at(at_ms, lasts_ms, fault)).collect();
        if let Err(e) = simulate(seed, schedule, Duration::from_secs(6)) {
            return Err(TestCaseError::fail(e));
        }
    }
}
