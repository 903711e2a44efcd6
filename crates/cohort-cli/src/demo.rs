//! `cohort demo`: several nodes in one process over one SQLite file, a mixed workload, a verdict.
//!
//! Every node is a full cohort node on its own loopback port with its own database pool, as
//! separate servers would be, tailing the database's change log. Clients send reads
//! (Zipf-distributed keys) and updates to random nodes; every operation is recorded and the
//! history is judged against the staleness bound (in strong mode, an update is promised at once).
//!
//! In partitioned mode each user is cached by its owner only, and the other nodes ask it: the
//! report adds the database loads per 1,000 reads and the share of reads an owner on another
//! node answered.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use cohort::{Cache, ChangeLog, Cluster, ClusterEvent, EventId};
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};
use sqlx::sqlite::SqlitePool;
use tokio::sync::{broadcast, watch};

use crate::latency::Latencies;
use crate::serve::{Consistency, DEFAULT_HOT_COPIES_BYTES};
use crate::users_db;
use crate::workload::Zipf;
use cohort_testkit::history::{self, Read, Update};

/// Options of `cohort demo`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Nodes to start.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=32))]
    nodes: u16,
    /// Users in the database (the key space).
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    keys: u64,
    /// Operations to run in all.
    #[arg(long, default_value_t = 200_000)]
    ops: u64,
    /// Seed of the workload's randomness.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=1024))]
    clients: u16,
    /// Share of operations that are updates, in percent.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u8).range(0..=100))]
    update_percent: u8,
    /// The promised staleness bound, in milliseconds.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..))]
    max_staleness_ms: u64,
    /// What the nodes' caches promise, and where they keep users (as `cohort serve --mode`).
    #[arg(long, value_enum, default_value_t = Consistency::Bounded)]
    mode: Consistency,
    /// Run the nodes without the change log: the mesh alone carries changes (as for a source
    /// cohort cannot watch), to compare what tailing the log costs.
    #[arg(long)]
    no_change_log: bool,
}

/// A row of the users table, as cached.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct User {
    name: String,
    version: u64,
}

/// One node of the demo: a cohort node, its cache of users and its own database pool.
struct Node {
    cluster: Cluster,
    users: Cache<u64, Arc<User>>,
    db: SqlitePool,
}

/// What one client did.
#[derive(Default)]
struct ClientLog {
    reads: Vec<Read<()>>,
    updates: Vec<Update<()>>,
    /// When each update's `update` call returned, by the event that carried it.
    returned: Vec<(EventId, Instant)>,
    /// Updates refused by the fence of strong mode, unwritten.
    fenced: u64,
}

/// Runs the demo; returns whether it passed.
pub(crate) async fn run(args: Args) -> anyhow::Result<bool> {
    let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
    let path = dir.path().join("demo.db");
    let bound = Duration::from_millis(args.max_staleness_ms);
    let seeder = users_db::open(&path, 1).await?;
    users_db::ensure_users(&seeder, args.keys).await?;
    seeder.close().await;
    let nodes =
        Arc::new(start_nodes(&path, args.nodes, bound, args.mode, !args.no_change_log).await?);

    let collectors = collect_applied(&nodes);
    let progress = ProgressBar::new(args.ops).with_style(
        ProgressStyle::with_template("{spinner} {pos}/{len} ops {wide_bar} {per_sec} eta {eta}")
            .context("progress template")?,
    );
    let zipf = Arc::new(Zipf::new(args.keys, 0.99));
    let per_client = args.ops / u64::from(args.clients);
    let extra = args.ops % u64::from(args.clients);
    let started = Instant::now();
    let clients: Vec<_> = (0..u64::from(args.clients))
        .map(|c| {
            let ops = per_client + u64::from(c < extra);
            let (nodes, zipf, progress) = (Arc::clone(&nodes), Arc::clone(&zipf), progress.clone());
            let rng = StdRng::seed_from_u64(args.seed.wrapping_mul(1_000_003).wrapping_add(c));
            tokio::spawn(client(nodes, zipf, rng, ops, args.update_percent, progress))
        })
        .collect();
    let mut log = ClientLog::default();
    for client in clients {
        let part = client.await.context("a client panicked")??;
        log.reads.extend(part.reads);
        log.updates.extend(part.updates);
        log.returned.extend(part.returned);
        log.fenced += part.fenced;
    }
    let elapsed = started.elapsed();
    progress.finish_and_clear();

    let propagation = propagation(&nodes, &log, collectors).await;
    // A strong update is promised to every read that starts after it returned.
    let promise = match args.mode {
        Consistency::Strong => Duration::ZERO,
        Consistency::Bounded | Consistency::Partitioned => bound,
    };
    let updates = log.updates.iter().map(|u| Update { promise, ..*u });
    let (_, verdict) = history::judge(updates, log.reads.iter().copied());
    print_report(
        &nodes,
        &log,
        &propagation,
        &verdict,
        promise,
        elapsed,
        args.mode,
    );
    let totals = Totals::of(&nodes, log.reads.len());
    println!(
        "database loads: {} for {} reads, {:.1} per 1,000 reads",
        totals.loads,
        totals.reads,
        totals.loads_per_1000_reads()
    );
    if args.mode == Consistency::Partitioned {
        println!(
            "answered by an owner on another node: {} reads, a share of {:.3}",
            totals.remote_hits,
            totals.remote_hit_share()
        );
    }

    let mut pass = verdict.stale_beyond_bound == 0 && propagation.missing == 0;
    // Partitioned mode that never asked an owner did not partition anything: not a pass.
    if args.mode == Consistency::Partitioned && nodes.len() > 1 && totals.remote_hits == 0 {
        println!("problem: no read was answered by an owner on another node");
        pass = false;
    }
    // The fields partitioned mode adds go last: scripts that read the line's first fields
    // read the same ones in every mode.
    let partitioned = if args.mode == Consistency::Partitioned {
        format!(
            " loads_per_1000_reads={:.1} remote_hit_share={:.3}",
            totals.loads_per_1000_reads(),
            totals.remote_hit_share()
        )
    } else {
        String::new()
    };
    println!(
        "demo: nodes={} reads={} updates={} hit_ratio={:.3} propagation_p50_us={} propagation_p99_us={} stale_beyond_bound={} result={}{partitioned}",
        nodes.len(),
        log.reads.len(),
        log.updates.len(),
        totals.hit_ratio(),
        propagation.micros(0.50),
        propagation.micros(0.99),
        verdict.stale_beyond_bound,
        if pass { "PASS" } else { "FAIL" },
    );
    for node in nodes.iter() {
        node.cluster.shutdown().await;
    }
    Ok(pass)
}

/// The users caches' counters, summed over the nodes.
struct Totals {
    reads: usize,
    hits: u64,
    misses: u64,
    /// Database reads by the caches: misses loaded here, and loads by owners for other nodes.
    loads: u64,
    /// Reads an owner on another node answered.
    remote_hits: u64,
}

impl Totals {
    fn of(nodes: &[Node], reads: usize) -> Self {
        let mut totals = Self {
            reads,
            hits: 0,
            misses: 0,
            loads: 0,
            remote_hits: 0,
        };
        for node in nodes {
            let s = node.users.stats();
            totals.hits += s.hits;
            totals.misses += s.misses;
            totals.loads += s.loads;
            totals.remote_hits += s.remote_hits;
        }
        totals
    }

    /// Reads a node answered from its own memory (an owner's answer is a miss there).
    fn hit_ratio(&self) -> f64 {
        ratio(self.hits, self.hits + self.misses)
    }

    fn loads_per_1000_reads(&self) -> f64 {
        1_000.0 * ratio(self.loads, self.reads as u64)
    }

    fn remote_hit_share(&self) -> f64 {
        ratio(self.remote_hits, self.reads as u64)
    }
}

/// `part / whole`, zero for an empty whole.
fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

async fn start_nodes(
    path: &std::path::Path,
    count: u16,
    bound: Duration,
    mode: Consistency,
    change_log: bool,
) -> anyhow::Result<Vec<Node>> {
    let mut nodes = Vec::new();
    for i in 0..count {
        let db = users_db::open(path, 4).await?;
        let mut builder = Cluster::builder();
        builder.node_name(format!("node-{i}")).max_staleness(bound);
        if change_log {
            builder.change_log(ChangeLog::sqlite(db.clone()));
        }
        if let Some(first) = nodes.first() {
            let first: &Node = first;
            builder.seeds([first.cluster.local_addr().to_string()]);
        }
        let cluster = builder.start().await.context("cannot start a node")?;
        let mut users = cluster.cache::<u64, Arc<User>>("users");
        users
            .capacity(1_000_000)
            .mode(mode.mode())
            // Updates (in partitioned mode) carry the new row to its owner, which keeps the
            // higher version; the change log's row of a node's own update spares the copies
            // that already have it.
            .version(|user| user.version);
        if change_log {
            users.watch_table("users", "id").version_column("version");
        }
        if mode == Consistency::Partitioned {
            let owner_db = db.clone();
            users
                // What this node loads for the others as the owner: the clients' read.
                .loader(move |key| {
                    let db = owner_db.clone();
                    async move { read_user(&db, key).await }
                })
                .hot_copies(DEFAULT_HOT_COPIES_BYTES);
        }
        let users = users.build()?;
        nodes.push(Node { cluster, users, db });
    }
    let peers = nodes.len() - 1;
    for node in &nodes {
        let mut events = node.cluster.subscribe();
        let linked = || {
            node.cluster
                .members()
                .iter()
                .filter(|m| m.connected)
                .count()
                >= peers
        };
        tokio::time::timeout(Duration::from_secs(10), async {
            while !linked() {
                let _ = events.recv().await;
            }
        })
        .await
        .with_context(|| format!("{} did not reach its peers", node.cluster.node_id()))?;
        // Until then reads load and store nothing: the workload would start on cold caches.
        node.users
            .ready(Duration::from_secs(10))
            .await
            .with_context(|| format!("{}'s cache never served", node.cluster.node_id()))?;
    }
    Ok(nodes)
}

async fn client(
    nodes: Arc<Vec<Node>>,
    zipf: Arc<Zipf>,
    mut rng: StdRng,
    ops: u64,
    update_percent: u8,
    progress: ProgressBar,
) -> anyhow::Result<ClientLog> {
    let mut log = ClientLog::default();
    for _ in 0..ops {
        let node = &nodes[rng.random_range(0..nodes.len())];
        let key = zipf.sample(&mut rng);
        if rng.random_range(0..100) < update_percent {
            let name = format!("user-{key}-{}", rng.random::<u32>());
            let db = node.db.clone();
            let written = node
                .users
                .update(&key, |key| async move { write_user(&db, key, &name).await })
                .await;
            let receipt = match written {
                Ok(receipt) => receipt,
                // Strong mode: the node had not confirmed its peers within the bound, so the
                // write did not run (the library's fence); the application would retry later.
                Err(cohort::UpdateError::Fenced) => {
                    log.fenced += 1;
                    progress.inc(1);
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let returned = Instant::now();
            log.updates.push(Update {
                key,
                version: receipt.value.version,
                returned,
                // Set by the judgment, which knows the bound.
                promise: Duration::ZERO,
                by: (),
            });
            log.returned.push((receipt.event, returned));
        } else {
            let started = Instant::now();
            let db = node.db.clone();
            let user = node
                .users
                .get_or_load(&key, |key| async move { read_user(&db, key).await })
                .await?;
            log.reads.push(Read {
                key,
                version: user.version,
                started,
                ended: Instant::now(),
                by: (),
                age: None,
            });
        }
        progress.inc(1);
    }
    Ok(log)
}

/// A `(name, version)` row of the users table.
type UserRow = (String, i64);

fn user((name, version): UserRow) -> Arc<User> {
    Arc::new(User {
        name,
        version: version.unsigned_abs(),
    })
}

async fn read_user(db: &SqlitePool, id: u64) -> Result<Arc<User>, sqlx::Error> {
    sqlx::query_as::<_, UserRow>("SELECT name, version FROM users WHERE id = ?")
        .bind(id as i64)
        .fetch_one(db)
        .await
        .map(user)
}

async fn write_user(db: &SqlitePool, id: u64, name: &str) -> Result<Arc<User>, sqlx::Error> {
    sqlx::query_as::<_, UserRow>(
        "UPDATE users SET name = ?, version = version + 1 WHERE id = ? RETURNING name, version",
    )
    .bind(name)
    .bind(id as i64)
    .fetch_one(db)
    .await
    .map(user)
}

type AppliedLog = Vec<(EventId, tokio::time::Instant)>;

/// Tasks recording, per node, when each peer event was applied there.
struct Collectors {
    tasks: Vec<tokio::task::JoinHandle<AppliedLog>>,
    /// How many events each node has recorded so far.
    seen: Vec<watch::Receiver<usize>>,
    stop: watch::Sender<bool>,
}

fn collect_applied(nodes: &[Node]) -> Collectors {
    let stop = watch::channel(false).0;
    let (tasks, seen) = nodes
        .iter()
        .map(|node| {
            let mut events = node.cluster.subscribe();
            let mut stopped = stop.subscribe();
            let (count, seen) = watch::channel(0);
            let task = tokio::spawn(async move {
                let mut applied = Vec::new();
                loop {
                    let event = tokio::select! {
                        event = events.recv() => event,
                        _ = stopped.wait_for(|stop| *stop) => return applied,
                    };
                    match event {
                        Ok(ClusterEvent::Applied { event, at }) => {
                            applied.push((event, at));
                            count.send_replace(applied.len());
                        }
                        Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                        Err(broadcast::error::RecvError::Closed) => return applied,
                    }
                }
            });
            (task, seen)
        })
        .unzip();
    Collectors { tasks, seen, stop }
}

/// Propagation delays, from `update` returning on the writer to the event being applied on each
/// peer.
struct Propagation {
    delays: Latencies,
    /// Peer deliveries that never happened within the wait.
    missing: usize,
}

impl Propagation {
    /// The delay at `quantile`, in whole microseconds.
    fn micros(&self, quantile: f64) -> u128 {
        self.delays.quantile(quantile).as_micros()
    }
}

async fn propagation(nodes: &[Node], log: &ClientLog, mut collectors: Collectors) -> Propagation {
    let by_origin = log
        .returned
        .iter()
        .fold(HashMap::<_, usize>::new(), |mut m, (e, _)| {
            *m.entry(e.origin.clone()).or_default() += 1;
            m
        });
    let mut missing = 0;
    for (node, seen) in nodes.iter().zip(&mut collectors.seen) {
        let expected =
            log.returned.len() - by_origin.get(node.cluster.node_id()).copied().unwrap_or(0);
        let arrived =
            tokio::time::timeout(Duration::from_secs(5), seen.wait_for(|n| *n >= expected))
                .await
                .is_ok();
        if !arrived {
            missing += expected.saturating_sub(*seen.borrow());
        }
    }
    let returned: HashMap<_, _> = log.returned.iter().cloned().collect();
    let mut delays = Latencies::default();
    collectors.stop.send_replace(true);
    for collector in collectors.tasks {
        if let Ok(applied) = collector.await {
            for (event, at) in &applied {
                if let Some(returned) = returned.get(event) {
                    delays.record(at.into_std().saturating_duration_since(*returned));
                }
            }
        }
    }
    Propagation { delays, missing }
}

fn print_report(
    nodes: &[Node],
    log: &ClientLog,
    propagation: &Propagation,
    verdict: &history::Verdict,
    bound: Duration,
    elapsed: Duration,
    mode: Consistency,
) {
    let partitioned = mode == Consistency::Partitioned;
    let mut header = format!(
        "{:<8} {:>9} {:>8} {:>7} {:>9} {:>8} {:>10} {:>10} {:>9}",
        "node",
        "hits",
        "misses",
        "loads",
        "rejected",
        "updates",
        "from peers",
        "from log",
        "bypasses"
    );
    if partitioned {
        header += &format!(" {:>9} {:>8} {:>8}", "by owner", "skipped", "served");
    }
    println!("{header}");
    for node in nodes {
        let s = node.users.stats();
        let mut row = format!(
            "{:<8} {:>9} {:>8} {:>7} {:>9} {:>8} {:>10} {:>10} {:>9}",
            node.cluster.node_id().as_str(),
            s.hits,
            s.misses,
            s.loads,
            s.fills_rejected,
            s.updates,
            s.invalidations_applied + s.replicas_applied,
            s.logged_applied,
            s.bypasses,
        );
        if partitioned {
            row += &format!(
                " {:>9} {:>8} {:>8}",
                s.remote_hits, s.owner_skipped, s.served
            );
        }
        println!("{row}");
    }
    let ops = log.reads.len() + log.updates.len();
    println!(
        "ops: {ops} in {:.2}s ({:.0} ops/s){}",
        elapsed.as_secs_f64(),
        ops as f64 / elapsed.as_secs_f64(),
        if log.fenced > 0 {
            format!(
                ", and {} updates refused by the fence (not written)",
                log.fenced
            )
        } else {
            String::new()
        }
    );
    println!(
        "propagation (update returned on the writer -> applied on a peer): {} deliveries, p50 {} us, p99 {} us, max {} us, missing {}",
        propagation.delays.len(),
        propagation.micros(0.50),
        propagation.micros(0.99),
        propagation.delays.max().as_micros(),
        propagation.missing,
    );
    println!(
        "staleness (bound {} ms): {} reads behind a returned update within the bound, {} beyond it, worst lag {} us",
        bound.as_millis(),
        verdict.stale_within_bound,
        verdict.stale_beyond_bound,
        verdict.max_staleness.as_micros(),
    );
}
