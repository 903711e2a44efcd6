//! Runs one simulation: nodes as turmoil hosts, concurrent clients reading and writing through
//! them against the [database](crate::database), and a conductor that injects the scheduled
//! faults, watches for their effects and, at the end, hands the history to the checker.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use cohort::{
    BoxFuture, Cache, ChangeLog, Cluster, ClusterKey, ClusterStats, Member, Mode, TimeSource,
    UpdateError,
};
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tokio::sync::{Notify, watch};

use crate::database::{self, Database, DbLink};
use crate::history::{self, Op};
use crate::net::{SimNet, Wire};

const PORT: u16 = 7000;
pub(crate) const BOUND: Duration = Duration::from_millis(500);
const NODES: [&str; 5] = ["n0", "n1", "n2", "n3", "n4"];
/// A key no client writes: reading it through a node tells whether the node serves from memory.
const QUIET_KEY: u64 = 100;
/// Clients running at once, on overlapping keys.
const CLIENTS: u64 = 4;
const KEY_HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

/// What is simulated: how many nodes, and what their caches promise.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Setup {
    pub(crate) nodes: usize,
    pub(crate) mode: Mode,
    /// Caches watch the database's change log, and some writers bypass cohort.
    pub(crate) log: bool,
    /// Links are authenticated and encrypted with a cluster key.
    pub(crate) keyed: bool,
    /// A node started with its leases ignored: it serves whatever it holds, to show that the
    /// checker catches the staleness that follows.
    pub(crate) broken: Option<&'static str>,
    /// Clients also read in batches and change many keys at once, telling the caches with
    /// `invalidate_many`, `invalidate_tag` and `clear`.
    pub(crate) bulk: bool,
}

impl Setup {
    fn names(&self) -> &'static [&'static str] {
        &NODES[..self.nodes]
    }

    /// How many keys the clients use, the lower ones the hotter. With bulk changes, more keys
    /// and a slower pace: a copy a bulk change failed to drop must outlive the bound before
    /// another write of its key drops it, for the checker to see it.
    fn keys(&self) -> u64 {
        if self.bulk { 64 } else { 16 }
    }

    /// The most a client waits between two operations.
    fn pause(&self) -> Duration {
        Duration::from_millis(if self.bulk { 40 } else { 10 })
    }

    /// How late a read may be after an update through cohort completed.
    fn promise(&self) -> Duration {
        match self.mode {
            Mode::Strong => Duration::ZERO,
            _ => BOUND,
        }
    }
}

/// Three peer-only nodes in the default mode.
pub(crate) const THREE: Setup = Setup {
    nodes: 3,
    mode: Mode::Invalidate,
    log: false,
    keyed: false,
    broken: None,
    bulk: false,
};

/// A fault; nodes are indexes into the setup's names.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Fault {
    /// Two nodes cannot reach each other.
    Partition(usize, usize),
    /// What the first node sends the second is lost; the other way works.
    OneWay(usize, usize),
    /// One node is cut off from every other.
    Isolate(usize),
    /// The nodes whose bit is set in the mask cannot reach the others.
    Split(u8),
    /// Messages between two nodes are held back, then delivered late.
    Hold(usize, usize),
    /// A node crashes and restarts as a new incarnation.
    Crash(usize),
    /// Every connection of a node breaks at once; what was queued or in flight on them is lost.
    Reset(usize),
    /// A node loses a share of what it writes to its connections.
    Loss(usize),
    /// A node shuts down gracefully, then starts again as a new incarnation.
    Leave(usize),
    /// A node crashes and starts again under its name on another host (a new address), seeded
    /// with the nodes' current addresses: a Kubernetes pod evicted and rescheduled.
    Move(usize),
    /// As [`Fault::Move`], after a graceful shutdown: a rolling deploy.
    LeaveAndMove(usize),
    /// A node's database connection stalls: its change-log queries answer only afterwards.
    DbPause(usize),
}

impl Fault {
    /// The same fault with every node index taken modulo `nodes`, and a split that leaves both
    /// sides non-empty.
    pub(crate) fn within(self, nodes: usize) -> Self {
        let one = |a: usize| a % nodes;
        let two = |a: usize, b: usize| {
            let (a, b) = (a % nodes, b % nodes);
            (a, if a == b { (b + 1) % nodes } else { b })
        };
        match self {
            Self::Partition(a, b) => {
                let (a, b) = two(a, b);
                Self::Partition(a, b)
            }
            Self::OneWay(a, b) => {
                let (a, b) = two(a, b);
                Self::OneWay(a, b)
            }
            Self::Hold(a, b) => {
                let (a, b) = two(a, b);
                Self::Hold(a, b)
            }
            Self::Split(mask) => {
                let all = (1u8 << nodes) - 1;
                let mask = mask & all;
                Self::Split(if mask == 0 || mask == all { 1 } else { mask })
            }
            Self::Isolate(a) => Self::Isolate(one(a)),
            Self::Crash(a) => Self::Crash(one(a)),
            Self::Reset(a) => Self::Reset(one(a)),
            Self::Loss(a) => Self::Loss(one(a)),
            Self::Leave(a) => Self::Leave(one(a)),
            Self::Move(a) => Self::Move(one(a)),
            Self::LeaveAndMove(a) => Self::LeaveAndMove(one(a)),
            Self::DbPause(a) => Self::DbPause(one(a)),
        }
    }

    /// Pairs of nodes whose traffic the fault cuts (both ways unless one-way).
    fn cuts(self, nodes: usize) -> Vec<(usize, usize)> {
        match self {
            Self::Partition(a, b) | Self::OneWay(a, b) => vec![(a, b)],
            Self::Isolate(a) => (0..nodes).filter(|&b| b != a).map(|b| (a, b)).collect(),
            Self::Split(mask) => {
                let side = |n: usize| mask & (1 << n) != 0;
                (0..nodes)
                    .flat_map(|a| (0..nodes).map(move |b| (a, b)))
                    .filter(|&(a, b)| a < b && side(a) != side(b))
                    .collect()
            }
            _ => Vec::new(),
        }
    }

    /// Whether `sign` shows this fault took effect.
    fn shown_by(self, sign: &Sign) -> bool {
        let network = matches!(
            sign.what,
            Seen::NotServing | Seen::PeerNotLive | Seen::Reconnected
        );
        match self {
            Self::Partition(..)
            | Self::OneWay(..)
            | Self::Isolate(_)
            | Self::Split(_)
            | Self::Hold(..) => network,
            Self::Reset(_) => sign.what == Seen::Reconnected,
            Self::Loss(a) => sign.what == Seen::Lost && sign.node == a,
            Self::Crash(a) | Self::Leave(a) | Self::Move(a) | Self::LeaveAndMove(a) => {
                sign.what == Seen::Restarted && sign.node == a
            }
            Self::DbPause(a) => sign.what == Seen::NotServing && sign.node == a,
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Scheduled {
    pub(crate) fault: Fault,
    pub(crate) at: Duration,
    pub(crate) lasts: Duration,
}

pub(crate) fn at(ms: u64, lasts_ms: u64, fault: Fault) -> Scheduled {
    Scheduled {
        fault,
        at: Duration::from_millis(ms),
        lasts: Duration::from_millis(lasts_ms),
    }
}

/// Something the conductor saw a node show, when (since the start of the workload).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Sign {
    at: Duration,
    node: usize,
    what: Seen,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Seen {
    /// Its cache would not serve from memory.
    NotServing,
    /// It listed a peer as not live.
    PeerNotLive,
    /// It established a link again.
    Reconnected,
    /// It missed peer events for good.
    Gap,
    /// It ran as a new process.
    Restarted,
    /// Its wire dropped a write.
    Lost,
}

/// What one simulation did.
pub(crate) struct Run {
    pub(crate) history: Vec<Op>,
    /// The mesh counters of the nodes running at the end, summed.
    pub(crate) mesh: ClusterStats,
    /// Cache flushes on those nodes, summed.
    pub(crate) flushes: u64,
    /// How long after the last fault ended every node served a read from its cache again.
    pub(crate) serving_again_after: Option<Duration>,
    /// The members each node running at the end lists.
    pub(crate) members: Vec<Vec<Member>>,
    /// Reads answered by a key's owner on another node (partitioned mode), on those nodes.
    pub(crate) remote_hits: u64,
}

/// The nodes running at the end of the workload, as read inside the simulation (their clocks are
/// the simulation's).
struct End {
    mesh: ClusterStats,
    flushes: u64,
    members: Vec<Vec<Member>>,
    remote_hits: u64,
}

impl End {
    fn of(shared: &Shared) -> Self {
        let mut end = Self {
            mesh: ClusterStats::default(),
            flushes: 0,
            members: Vec::new(),
            remote_hits: 0,
        };
        for (cluster, cache) in shared.nodes.lock().iter().flatten() {
            let stats = cluster.stats();
            end.mesh.gaps += stats.gaps;
            end.mesh.events_replayed += stats.events_replayed;
            end.mesh.connects += stats.connects;
            end.flushes += cache.stats().flushes;
            end.remote_hits += cache.stats().remote_hits;
            end.members.push(cluster.members());
        }
        end
    }
}

/// The running nodes, by index, as the clients reach them.
type Nodes = Arc<Mutex<Vec<Option<(Cluster, Cache<u64, u64>)>>>>;

/// The turmoil host each node runs on now: a node restarted at a new address runs on a new host.
type Hosts = Arc<Mutex<Vec<String>>>;

/// What a turmoil host runs: node `index`, seeded with every node's current host.
#[derive(Clone)]
struct HostPlan {
    index: usize,
    /// The turmoil host's own name.
    on: String,
    setup: Setup,
    hosts: Hosts,
    /// For a spare host, what tells it to start its node. It is registered with the others at
    /// the beginning, since a host added mid-simulation gets a clock of its own.
    start: Option<Arc<Notify>>,
    rng_seed: u64,
    nodes: Nodes,
    wire: Arc<Wire>,
    db: DbLink,
}

fn host(plan: HostPlan) -> impl Fn() -> BoxFuture<'static, turmoil::Result> {
    move || {
        let plan = plan.clone();
        Box::pin(async move {
            if let Some(start) = &plan.start {
                start.notified().await;
            }
            let setup = plan.setup;
            let name = setup.names()[plan.index];
            let seeds = plan.hosts.lock().clone();
            let mut builder = Cluster::builder();
            builder
                .node_name(name)
                .listen(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), PORT))
                .advertise(SocketAddr::new(turmoil::lookup(plan.on.as_str()), PORT))
                .max_staleness(BOUND)
                .forget_after(BOUND * 8)
                .network(SimNet(plan.wire.clone()))
                .time_source(TimeSource::Custom(history::now))
                .rng_seed(plan.rng_seed)
                // Simulated time grows with every restart, as the system clock would.
                .incarnation(u64::try_from(history::now().as_micros()).unwrap_or(u64::MAX) + 1)
                .unsafe_ignore_leases(setup.broken == Some(name));
            // Every node gets the whole seed list, as the README advises: a node that knows of
            // none is a cluster of one.
            builder.seeds(
                seeds
                    .iter()
                    .map(|seed| SocketAddr::new(turmoil::lookup(seed.as_str()), PORT).to_string()),
            );
            if setup.keyed {
                builder.cluster_keys([KEY_HEX.parse::<ClusterKey>().expect("a valid key")]);
            }
            if setup.log {
                builder
                    .change_log(ChangeLog::custom(plan.db.clone()))
                    .log_retention(BOUND * 8);
            }
            let cluster = builder.start().await?;
            let mut cache = cluster.cache::<u64, u64>("kv");
            cache.mode(setup.mode).version(|version| *version);
            if setup.bulk {
                cache.tags(|version| [database::group_tag(database::group(*version))]);
            }
            if setup.mode == Mode::Partitioned {
                // The owner loads through its own database connection: a stalled one makes it
                // miss the owner timeout, and the askers load for themselves.
                let db = plan.db.clone();
                cache
                    .loader(move |key| {
                        let db = db.clone();
                        async move { Ok::<_, Infallible>(db.read(key).await) }
                    })
                    .hot_copies(64 << 10);
            }
            if setup.log {
                cache.watch_table("kv", "id");
            }
            let cache = cache.build()?;
            plan.nodes.lock()[plan.index] = Some((cluster, cache));
            std::future::pending::<()>().await;
            Ok(())
        })
    }
}

/// A node to take down now and start again after `down_for`, on a new host if `moves`.
struct Restart {
    node: usize,
    down_for: Duration,
    moves: bool,
}

/// What the clients and the conductor share.
#[derive(Clone)]
struct Shared {
    setup: Setup,
    seed: u64,
    run_for: Duration,
    nodes: Nodes,
    hosts: Hosts,
    db: Database,
    links: Vec<DbLink>,
    wires: Vec<Arc<Wire>>,
    history: Arc<Mutex<Vec<Op>>>,
    restarts: Arc<Mutex<Vec<Restart>>>,
    /// When the workload started (simulated time), once every node serves.
    started: watch::Sender<Option<Duration>>,
}

impl Shared {
    fn node(&self, index: usize) -> Option<(Cluster, Cache<u64, u64>)> {
        self.nodes.lock()[index].clone()
    }

    fn name(&self, index: usize) -> &'static str {
        self.setup.names()[index]
    }

    fn record(&self, op: Op) {
        self.history.lock().push(op);
    }
}

/// Which of the scheduled faults must show an effect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Effects {
    /// Every one: a scenario written for its faults.
    Each,
    /// At least one: a random schedule, whose faults may mask each other (a node crashed while
    /// it was to lose frames).
    Any,
}

/// Runs one simulation and returns what it did, or the checker's complaint, or the name of a
/// fault that had no visible effect.
pub(crate) fn simulate(
    setup: Setup,
    seed: u64,
    schedule: Vec<Scheduled>,
    run_for: Duration,
) -> Result<Run, String> {
    simulate_expecting(setup, seed, schedule, run_for, Effects::Each)
}

/// [`simulate`], with a choice of which faults must show an effect.
pub(crate) fn simulate_expecting(
    setup: Setup,
    seed: u64,
    schedule: Vec<Scheduled>,
    run_for: Duration,
    effects: Effects,
) -> Result<Run, String> {
    log_to_test_output();
    // Long enough for the last fault's effects to show.
    let settle = BOUND * 5;
    let run_for = schedule
        .iter()
        .map(|f| f.at + f.lasts + settle)
        .fold(run_for, Duration::max);
    let mut sim = turmoil::Builder::new()
        .simulation_duration(run_for + Duration::from_secs(30))
        .rng_seed(seed)
        .build();
    let names = setup.names();
    let db = Database::default();
    let shared = Shared {
        setup,
        seed,
        run_for,
        nodes: Arc::new(Mutex::new(vec![None; names.len()])),
        hosts: Arc::new(Mutex::new(names.iter().map(|n| n.to_string()).collect())),
        links: names.iter().map(|_| db.link()).collect(),
        db,
        wires: (0..names.len() as u64)
            .map(|i| Wire::new(seed ^ (i + 1) << 32))
            .collect(),
        history: Arc::default(),
        restarts: Arc::default(),
        started: watch::channel(None).0,
    };
    let plan = |index: usize, on: String, start, rng_seed| HostPlan {
        index,
        on,
        setup,
        hosts: shared.hosts.clone(),
        start,
        rng_seed,
        nodes: shared.nodes.clone(),
        wire: shared.wires[index].clone(),
        db: shared.links[index].clone(),
    };
    for (i, name) in names.iter().enumerate() {
        sim.host(
            *name,
            host(plan(i, name.to_string(), None, seed.wrapping_add(i as u64))),
        );
    }
    // A spare host for every move, per node, in the order the moves come.
    let mut spares: Vec<VecDeque<(String, Arc<Notify>)>> = vec![VecDeque::new(); names.len()];
    for (k, scheduled) in schedule.iter().enumerate() {
        if let Fault::Move(i) | Fault::LeaveAndMove(i) = scheduled.fault {
            let (spare, start) = (format!("{}-{k}", names[i]), Arc::new(Notify::new()));
            let rng_seed = seed.wrapping_add(1_000 + k as u64);
            sim.host(
                spare.as_str(),
                host(plan(i, spare.clone(), Some(start.clone()), rng_seed)),
            );
            spares[i].push_back((spare, start));
        }
    }
    let serving_again_after: Arc<Mutex<Option<Duration>>> = Arc::default();
    let signs: Arc<Mutex<Vec<Sign>>> = Arc::default();
    let end_state: Arc<Mutex<Option<End>>> = Arc::default();
    for client in 0..CLIENTS {
        let shared = shared.clone();
        sim.client(format!("client{client}"), async move {
            work(&shared, client).await;
            Ok(())
        });
    }
    {
        let (shared, schedule, serving_again_after, signs, end_state) = (
            shared.clone(),
            schedule.clone(),
            serving_again_after.clone(),
            signs.clone(),
            end_state.clone(),
        );
        sim.client("conductor", async move {
            conduct(&shared, schedule, &serving_again_after, &signs).await;
            *end_state.lock() = Some(End::of(&shared));
            Ok(())
        });
    }
    // Crashes and restarts are the simulation's to do, between steps.
    let mut down: Vec<(Duration, Restart)> = Vec::new();
    loop {
        let done = sim
            .step()
            .map_err(|e| format!("seed {seed}: simulation failed: {e}"))?;
        if done {
            break;
        }
        for restart in shared.restarts.lock().drain(..) {
            shared.nodes.lock()[restart.node] = None;
            sim.crash(shared.hosts.lock()[restart.node].as_str());
            down.push((sim.elapsed() + restart.down_for, restart));
        }
        let now = sim.elapsed();
        for (_, restart) in down.extract_if(.., |(until, _)| *until <= now) {
            let i = restart.node;
            if !restart.moves {
                sim.bounce(shared.hosts.lock()[i].as_str());
                continue;
            }
            let (spare, start) = spares[i]
                .pop_front()
                .expect("a spare host was registered for every move");
            shared.hosts.lock()[i] = spare;
            start.notify_one();
        }
    }
    let history = std::mem::take(&mut *shared.history.lock());
    history::check(&history).map_err(|e| format!("seed {seed}: {e}"))?;
    let signs = signs.lock();
    let shown = |scheduled: &Scheduled| {
        let window = scheduled.at..=scheduled.at + scheduled.lasts + BOUND * 4;
        signs
            .iter()
            .any(|sign| window.contains(&sign.at) && scheduled.fault.shown_by(sign))
    };
    let unseen: Vec<&Scheduled> = schedule.iter().filter(|s| !shown(s)).collect();
    let fails = match effects {
        Effects::Each => !unseen.is_empty(),
        Effects::Any => unseen.len() == schedule.len(),
    };
    if fails {
        return Err(format!("seed {seed}: {unseen:?} had no visible effect"));
    }
    let End {
        mesh,
        flushes,
        members,
        remote_hits,
    } = end_state
        .lock()
        .take()
        .expect("the conductor ran to the end");
    let serving_again_after = *serving_again_after.lock();
    Ok(Run {
        history,
        mesh,
        flushes,
        serving_again_after,
        members,
        remote_hits,
    })
}

/// With `RUST_LOG` set, the nodes' logs go to the test's output, stamped with simulated time.
fn log_to_test_output() {
    struct SimulatedTime;
    impl tracing_subscriber::fmt::time::FormatTime for SimulatedTime {
        fn format_time(
            &self,
            w: &mut tracing_subscriber::fmt::format::Writer<'_>,
        ) -> std::fmt::Result {
            write!(w, "{:>12?}", turmoil::sim_elapsed().unwrap_or_default())
        }
    }
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_timer(SimulatedTime)
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// One client: random reads and writes of overlapping keys through random nodes, its loads
/// slow enough to race the changes of the others.
async fn work(shared: &Shared, client: u64) {
    let mut started = shared.started.subscribe();
    let Ok(start) = started
        .wait_for(Option::is_some)
        .await
        .map(|s| s.unwrap_or_default())
    else {
        return;
    };
    let mut rng = StdRng::seed_from_u64(shared.seed.wrapping_mul(31).wrapping_add(client));
    let names = shared.setup.names();
    while history::now() < start + shared.run_for {
        let index = rng.random_range(0..names.len());
        let pause =
            Duration::from_millis(rng.random_range(1..shared.setup.pause().as_millis() as u64));
        let keys = shared.setup.keys();
        let Some((_, cache)) = shared.node(index) else {
            tokio::time::sleep(pause).await;
            continue;
        };
        let key = rng.random_range(0..keys).min(rng.random_range(0..keys));
        let load_takes = Duration::from_millis(rng.random_range(0..4));
        match Step::draw(&shared.setup, &mut rng) {
            Step::Read => {
                read(shared, index, &cache, key, load_takes).await;
            }
            Step::ReadFresh => read_fresh(shared, index, &cache, key, load_takes).await,
            Step::ReadMany => {
                let keys: Vec<u64> = (0..rng.random_range(2..6))
                    .map(|_| rng.random_range(0..keys))
                    .collect();
                read_many(shared, index, &cache, &keys, load_takes).await;
            }
            // Writers that bypass cohort are seen through the change log alone.
            Step::SqlWrite => {
                let version = shared.db.write(key).await;
                shared.record(Op::Update {
                    node: "sql",
                    key,
                    version,
                    completed: history::now(),
                    promise: BOUND,
                });
            }
            Step::Update => {
                let db = shared.db.clone();
                let result = cache
                    .update(&key, |key| async move {
                        Ok::<_, Infallible>(db.write(key).await)
                    })
                    .await;
                match result {
                    Ok(receipt) => shared.record(Op::Update {
                        node: shared.name(index),
                        key,
                        version: receipt.value,
                        completed: history::now(),
                        promise: shared.setup.promise(),
                    }),
                    Err(UpdateError::Fenced) => {}
                    Err(e) => panic!("update failed: {e}"),
                }
            }
            Step::ChangeGroup => {
                change_group(shared, index, &cache, rng.random_range(0..database::GROUPS)).await;
            }
            step @ (Step::ChangeMany | Step::Clear) => {
                let keys: Vec<u64> = (0..rng.random_range(1..5))
                    .map(|_| rng.random_range(0..keys))
                    .collect();
                change_many(shared, index, &cache, &keys, step == Step::Clear).await;
            }
        }
        tokio::time::sleep(pause).await;
    }
}

/// What a client does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Read,
    ReadFresh,
    ReadMany,
    SqlWrite,
    Update,
    ChangeGroup,
    ChangeMany,
    Clear,
}

impl Step {
    /// The next step for `setup`. With bulk changes most steps are batch reads, and few writes
    /// are single updates, group changes or clears (each drops many copies): a copy that a
    /// bulk change failed to drop must outlive the bound before another write drops it, for the
    /// checker to see it.
    fn draw(setup: &Setup, rng: &mut StdRng) -> Self {
        if !setup.bulk {
            return match rng.random_range(0..10) {
                0..6 => Self::Read,
                6 if setup.log => Self::SqlWrite,
                _ => Self::Update,
            };
        }
        match rng.random_range(0..200) {
            0..5 => Self::ReadFresh,
            5..60 => Self::Read,
            60..65 if setup.log => Self::SqlWrite,
            60..80 => Self::Update,
            80..150 => Self::ReadMany,
            150..155 => Self::ChangeGroup,
            155..199 => Self::ChangeMany,
            _ => Self::Clear,
        }
    }
}

/// Reads `key` through `cache` (a load taking `load_takes`), recording the read; says where the
/// value came from. With bulk changes, reads fall back on the held value when the load fails
/// (the node's database connection is paused), as the application's fail-safe reads would.
async fn read(
    shared: &Shared,
    index: usize,
    cache: &Cache<u64, u64>,
    key: u64,
    load_takes: Duration,
) -> cohort::Source {
    let started = history::now();
    let db = shared.db.clone();
    let link = shared.links[index].clone();
    let load = |key| async move {
        if link.is_paused() {
            return Err(DatabaseDown);
        }
        let version = db.read(key);
        tokio::time::sleep(load_takes).await;
        Ok(version)
    };
    let fetched = if shared.setup.bulk {
        cache.fetch_or_stale(&key, load, STALE_FOR).await
    } else {
        cache.fetch(&key, load).await
    };
    let Ok(fetched) = fetched else {
        return cohort::Source::Bypassed;
    };
    shared.record(Op::Read {
        node: shared.name(index),
        key,
        version: fetched.value,
        started,
        ended: history::now(),
        age: match fetched.source {
            cohort::Source::Stale { age } => Some(age),
            _ => None,
        },
    });
    fetched.source
}

/// Reads `key` from the database through `cache.fetch_fresh` (a load taking `load_takes`),
/// which stores what it read under the race rules, recording the read.
async fn read_fresh(
    shared: &Shared,
    index: usize,
    cache: &Cache<u64, u64>,
    key: u64,
    load_takes: Duration,
) {
    let started = history::now();
    let db = shared.db.clone();
    let fetched = cache
        .fetch_fresh(&key, |key| async move {
            let version = db.read(key);
            tokio::time::sleep(load_takes).await;
            Ok::<_, Infallible>(version)
        })
        .await
        .unwrap_or_else(|e: Infallible| match e {});
    shared.record(Op::Read {
        node: shared.name(index),
        key,
        version: fetched.value,
        started,
        ended: history::now(),
        age: None,
    });
}

/// The longest a fail-safe read may fall back on a held value.
const STALE_FOR: Duration = BOUND.saturating_mul(4);

/// A load through a paused database connection.
#[derive(Debug)]
struct DatabaseDown;

/// Reads `keys` through `cache` in one batch (a load taking `load_takes`), recording a read of
/// each.
async fn read_many(
    shared: &Shared,
    index: usize,
    cache: &Cache<u64, u64>,
    keys: &[u64],
    load_takes: Duration,
) {
    let started = history::now();
    let db = shared.db.clone();
    let found = cache
        .get_or_load_many(keys, |missing| {
            let db = db.clone();
            async move {
                let versions = db.read_many(&missing);
                tokio::time::sleep(load_takes).await;
                Ok::<_, Infallible>(missing.into_iter().zip(versions))
            }
        })
        .await
        .unwrap_or_else(|e: Infallible| match e {});
    let ended = history::now();
    for key in keys {
        shared.record(Op::Read {
            node: shared.name(index),
            key: *key,
            version: found[key],
            started,
            ended,
            age: None,
        });
    }
}

/// How long a client waits for a clear or a tag invalidation to be logged (it waits on the
/// node's database connection) before it gives up on learning the outcome, as an application
/// with a request timeout would: a write given up on is not an update, until a read sees it.
const GIVE_UP_AFTER: Duration = Duration::from_millis(200);

/// Changes every key of `group` in a way no trigger sees, then invalidates the group's tag
/// through `cache`; records the writes as updates once the invalidation returned with its
/// promise (not fenced, nor given up on). Their promise is the bound in every mode: a tag
/// invalidation is not a strong write.
async fn change_group(shared: &Shared, index: usize, cache: &Cache<u64, u64>, group: u64) {
    let keys: Vec<u64> = (0..shared.setup.keys())
        .filter(|key| database::group(*key) == group)
        .collect();
    let versions = shared.db.write_unlogged(&keys).await;
    let told = tokio::time::timeout(
        GIVE_UP_AFTER,
        cache.invalidate_tag(&database::group_tag(group)),
    )
    .await;
    record_told(shared, index, &keys, &versions, matches!(told, Ok(Ok(_))));
}

/// Changes `keys` and tells the caches with one `invalidate_many`, or with a `clear`. The
/// writes of a peer-only cluster go unseen by any trigger; with a change log they are logged
/// (an `invalidate_many` is not: a node cut off from the mesh learns of logged writes only).
async fn change_many(
    shared: &Shared,
    index: usize,
    cache: &Cache<u64, u64>,
    keys: &[u64],
    clear: bool,
) {
    let logged = shared.setup.log && !clear;
    let versions = if logged {
        let mut versions = Vec::new();
        for key in keys {
            versions.push(shared.db.write(*key).await);
        }
        versions
    } else {
        shared.db.write_unlogged(keys).await
    };
    let told = if clear {
        let cleared = tokio::time::timeout(GIVE_UP_AFTER, cache.clear()).await;
        matches!(cleared, Ok(Ok(_)))
    } else {
        cache.invalidate_many(keys).await.is_ok()
    };
    if logged {
        if told {
            record_writes(shared, index, keys, &versions);
        }
    } else {
        record_told(shared, index, keys, &versions, told);
    }
}

/// Records versions that no trigger saw: owed by reads only from when the caches were told with
/// the promise (`told`, now), and as updates then; never, if the telling failed (the
/// application was told so), even once a read has seen them.
fn record_told(shared: &Shared, index: usize, keys: &[u64], versions: &[u64], told: bool) {
    let at = told.then(history::now);
    for (key, version) in keys.iter().zip(versions) {
        shared.record(Op::Untriggered {
            key: *key,
            version: *version,
            told: at,
        });
    }
    if told {
        record_writes(shared, index, keys, versions);
    }
}

fn record_writes(shared: &Shared, index: usize, keys: &[u64], versions: &[u64]) {
    let completed = history::now();
    for (key, version) in keys.iter().zip(versions) {
        shared.record(Op::Update {
            node: shared.name(index),
            key: *key,
            version: *version,
            completed,
            promise: BOUND,
        });
    }
}

/// Starts the workload once every node serves, injects and heals the faults on schedule,
/// records the signs of their effects, and notes when every node serves from memory again after
/// the last.
async fn conduct(
    shared: &Shared,
    schedule: Vec<Scheduled>,
    serving_again_after: &Mutex<Option<Duration>>,
    signs: &Mutex<Vec<Sign>>,
) {
    let names = shared.setup.names();
    let tick = Duration::from_millis(5);
    loop {
        let ready =
            (0..names.len()).all(|i| shared.node(i).is_some_and(|(_, cache)| cache.is_serving()));
        if ready {
            break;
        }
        tokio::time::sleep(tick).await;
    }
    let start = history::now();
    shared.started.send_replace(Some(start));
    let last_fault_ends = schedule.iter().map(|f| f.at + f.lasts).max();
    let mut pending = schedule;
    let mut active: Vec<(Duration, Fault)> = Vec::new();
    let mut seen: Vec<Option<(u64, ClusterStats)>> = vec![None; names.len()];
    let mut dropped = vec![0; names.len()];
    let mut hit_again = vec![false; names.len()];
    while history::now() < start + shared.run_for {
        let now = history::now() - start;
        for fault in pending.extract_if(.., |f| f.at <= now) {
            if let Fault::Leave(a) | Fault::LeaveAndMove(a) = fault.fault {
                let leaving = shared.nodes.lock()[a].take();
                if let Some((cluster, _)) = leaving {
                    cluster.shutdown().await;
                }
            }
            begin(shared, fault.fault, fault.lasts);
            active.push((now + fault.lasts, fault.fault));
        }
        for (_, fault) in active.extract_if(.., |(until, _)| *until <= now) {
            end(shared, fault);
        }
        watch_signs(shared, now, &mut seen, signs);
        for (node, (wire, dropped)) in shared.wires.iter().zip(&mut dropped).enumerate() {
            if wire.dropped() > *dropped {
                *dropped = wire.dropped();
                signs.lock().push(Sign {
                    at: now,
                    node,
                    what: Seen::Lost,
                });
            }
        }
        if let Some(ended) = last_fault_ends
            && now >= ended
            && serving_again_after.lock().is_none()
            && every_node_hits(shared, &mut hit_again).await
        {
            *serving_again_after.lock() = Some(now - ended);
        }
        tokio::time::sleep(tick).await;
    }
}

/// Notes what each node shows now that it did not before.
fn watch_signs(
    shared: &Shared,
    at: Duration,
    seen: &mut [Option<(u64, ClusterStats)>],
    signs: &Mutex<Vec<Sign>>,
) {
    let mut signs = signs.lock();
    for (node, before) in seen.iter_mut().enumerate() {
        let Some((cluster, cache)) = shared.node(node) else {
            continue;
        };
        let mut sign = |what| signs.push(Sign { at, node, what });
        if !cache.is_serving() {
            sign(Seen::NotServing);
        }
        if cluster.members().iter().any(|m| !m.live) {
            sign(Seen::PeerNotLive);
        }
        let stats = cluster.stats();
        let incarnation = cluster.incarnation();
        match before {
            Some((was, _)) if *was != incarnation => sign(Seen::Restarted),
            Some((_, old)) => {
                if stats.connects > old.connects {
                    sign(Seen::Reconnected);
                }
                if stats.gaps > old.gaps {
                    sign(Seen::Gap);
                }
            }
            None => {}
        }
        *before = Some((incarnation, stats));
    }
}

/// Reads a key through every node that has not served one from memory yet since `hit` was
/// cleared, and says whether every node now has.
async fn every_node_hits(shared: &Shared, hit: &mut [bool]) -> bool {
    for (index, hit) in hit.iter_mut().enumerate() {
        if let Some((_, cache)) = shared.node(index)
            && !*hit
        {
            *hit = read(shared, index, &cache, QUIET_KEY, Duration::ZERO).await
                == cohort::Source::Cache;
        }
    }
    hit.iter().all(|hit| *hit)
}

fn begin(shared: &Shared, fault: Fault, lasts: Duration) {
    let hosts = shared.hosts.lock();
    let restart = |node, moves| {
        shared.restarts.lock().push(Restart {
            node,
            down_for: lasts,
            moves,
        })
    };
    match fault {
        Fault::OneWay(a, b) => {
            turmoil::partition_oneway(hosts[a].as_str(), hosts[b].as_str());
        }
        Fault::Partition(..) | Fault::Isolate(_) | Fault::Split(_) => {
            for (a, b) in fault.cuts(hosts.len()) {
                turmoil::partition(hosts[a].as_str(), hosts[b].as_str());
            }
        }
        Fault::Hold(a, b) => turmoil::hold(hosts[a].as_str(), hosts[b].as_str()),
        // A node that left is restarted the way a crashed one is.
        Fault::Crash(a) | Fault::Leave(a) => restart(a, false),
        Fault::Move(a) | Fault::LeaveAndMove(a) => restart(a, true),
        Fault::Reset(a) => shared.wires[a].reset(),
        Fault::Loss(a) => shared.wires[a].set_lossy(true),
        Fault::DbPause(a) => shared.links[a].set_paused(true),
    }
}

fn end(shared: &Shared, fault: Fault) {
    let hosts = shared.hosts.lock();
    match fault {
        Fault::OneWay(a, b) => turmoil::repair_oneway(hosts[a].as_str(), hosts[b].as_str()),
        Fault::Partition(..) | Fault::Isolate(_) | Fault::Split(_) => {
            for (a, b) in fault.cuts(hosts.len()) {
                turmoil::repair(hosts[a].as_str(), hosts[b].as_str());
            }
        }
        Fault::Hold(a, b) => turmoil::release(hosts[a].as_str(), hosts[b].as_str()),
        Fault::Loss(a) => shared.wires[a].set_lossy(false),
        Fault::DbPause(a) => shared.links[a].set_paused(false),
        Fault::Crash(_)
        | Fault::Reset(_)
        | Fault::Leave(_)
        | Fault::Move(_)
        | Fault::LeaveAndMove(_) => {}
    }
}
