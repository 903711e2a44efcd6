//! `cohort check`: real `cohort serve` processes, real faults, every operation recorded and
//! judged against the database's version history.
//!
//! The nodes share one SQLite file and reach each other only through the fault proxy. Clients
//! read and rename users over HTTP on random nodes while the scheduler kills, pauses,
//! partitions, slows and drops, and writes rows with plain SQL through no node. Each read is then
//! checked: it must show a version at least as new as every update that returned more than the
//! bound before the read started (bounded mode), or before it started at all (strong mode).
//!
//! Operations are judged as they complete and written to the history file at once, so the
//! checker's memory does not grow with the length of the run, and the verdict comes as soon as
//! the workload ends.

mod dbproxy;
mod faults;
mod http;
mod memory;
mod nodes;
mod proxy;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde_json::json;

use crate::history::{Judge, Late, Read, Update};
use crate::serve::{self, Consistency, parse_duration};
use crate::users_db::UsersDb;
use dbproxy::DbProxy;
use faults::{Action, FaultKind, Planned};
use nodes::{Node, NodeSpec};
use proxy::Proxy;

/// The name plain-SQL writers give users.
const PLAIN_SQL_NAME: &str = "set by plain SQL";

/// Rows beyond the clients' keys that an outside writer changes while a node is paused: a backlog
/// of change-log rows the node must work through when it resumes, before it may serve again.
const BACKLOG_ROWS: u64 = 50_000;

/// How long a client waits for one answer. Reads sent to a paused node in its last second are
/// answered, and judged, once it resumes; the others give up, so the workload goes on.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);

/// How long after an operation completes the judge waits for those that completed before it:
/// clients record an answer under one lock right after it comes, so this only covers a thread
/// descheduled in between.
const JUDGE_WINDOW: Duration = Duration::from_secs(1);

/// How long after it started a read may reach the judge and still be judged: far beyond
/// [`REQUEST_TIMEOUT`]. Lags longer than this are reported as lower bounds.
const JUDGE_HORIZON: Duration = Duration::from_secs(30);

/// The late reads the report shows, the longest lags beyond the bound.
const WORST: usize = 5;

/// SQLite's page cache on each database connection (its default `cache_size`, 2,000 KiB).
const SQLITE_PAGE_CACHE: u64 = 2_000 << 10;

/// What a node's users may take in its cache, each, at most (a small row, a key, bookkeeping).
const CACHED_USER: u64 = 1 << 10;

/// Options of `cohort check`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Nodes to start.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(2..=9))]
    nodes: u16,
    /// How long the workload runs, e.g. `30s`.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    duration: Duration,
    /// Faults to inject, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "kill,pause,partition,drop,slow,external"
    )]
    faults: Vec<FaultKind>,
    /// What the nodes promise: bounded staleness, or reads linearizable with respect to
    /// completed updates.
    #[arg(long, value_enum, default_value_t = Consistency::Bounded)]
    mode: Consistency,
    /// Seed of the faults and the workload.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    clients: u16,
    /// The database: `sqlite://path` or `postgres://…` [default: a new SQLite file in a
    /// temporary directory]. The users table is created and seeded if missing.
    #[arg(long)]
    db: Option<String>,
    /// Where to write the history, one JSON line per operation.
    #[arg(long)]
    out: Option<PathBuf>,
    /// The staleness bound the nodes are started with.
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    max_staleness: Duration,
    /// Users the clients read and rename (a small set, so operations collide).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    keys: u64,
    /// Start node n0 with its leases ignored, and aim every pause at it (as a frozen machine):
    /// the checker must then find stale reads.
    #[arg(long, hide = true)]
    break_node: bool,
}

/// Who performed an operation.
#[derive(Clone, Copy, Debug)]
enum Actor {
    /// A client, through node `n{node}`.
    Client {
        client: u16,
        node: usize,
    },
    Sql,
}

/// One recorded operation.
#[derive(Clone, Copy, Debug)]
struct Op {
    actor: Actor,
    key: u64,
    version: u64,
    /// For reads: whether the node's cache answered.
    from_cache: Option<bool>,
    started: Instant,
    ended: Instant,
}

/// Who made an update, or performed a read, as the judge hands them back to the report.
#[derive(Clone, Copy, Debug)]
enum By {
    /// A client's PUT through node `n{node}`.
    Put { node: usize },
    /// Plain SQL, through no node.
    Sql,
    /// A read on node `n{node}`; as an update, the first read that returned the version.
    Read { node: usize, cache: bool },
}

/// What the nodes running at the end say their mesh did.
#[derive(Clone, Copy, Debug, Default)]
struct Mesh {
    applied: u64,
    gaps: u64,
}

/// What a run recorded: operations are counted, written to the history file and handed to the
/// judge as they complete, then forgotten.
struct Recorded {
    judge: Judge<By>,
    /// What an update through a node promises: the bound (bounded mode) or at once (strong).
    bound: Duration,
    /// What a plain-SQL update, which no node hears of before it commits, and a version a read
    /// returned promise.
    max_staleness: Duration,
    counts: Counts,
    faults: BTreeMap<&'static str, u64>,
    /// The late reads with the longest lags beyond the bound, longest first.
    worst: Vec<Late<By>>,
    history: Option<HistoryFile>,
}

/// Operations by kind.
#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    reads: u64,
    from_cache: u64,
    updates: u64,
    by_sql: u64,
    failed: u64,
}

impl Recorded {
    fn new(bound: Duration, max_staleness: Duration, history: Option<HistoryFile>) -> Self {
        Self {
            judge: Judge::new(JUDGE_WINDOW, JUDGE_HORIZON),
            bound,
            max_staleness,
            counts: Counts::default(),
            faults: BTreeMap::new(),
            worst: Vec::new(),
            history,
        }
    }

    /// A read that returned: the read, and the version it returned, known to have committed.
    fn read(&mut self, op: Op) {
        // Only clients read.
        let Actor::Client { node, .. } = op.actor else {
            return;
        };
        let cache = op.from_cache == Some(true);
        self.counts.reads += 1;
        self.counts.from_cache += u64::from(cache);
        if let Some(history) = &mut self.history {
            history.write("read", &op);
        }
        let by = By::Read { node, cache };
        self.judge.handle_update(Update {
            key: op.key,
            version: op.version,
            returned: op.ended,
            promise: self.max_staleness,
            by,
        });
        self.judge.handle_read(Read {
            key: op.key,
            version: op.version,
            started: op.started,
            ended: op.ended,
            by,
        });
    }

    /// An update that returned.
    fn update(&mut self, op: Op) {
        self.counts.updates += 1;
        if let Some(history) = &mut self.history {
            history.write("update", &op);
        }
        let (promise, by) = match op.actor {
            Actor::Client { node, .. } => (self.bound, By::Put { node }),
            Actor::Sql => {
                self.counts.by_sql += 1;
                (self.max_staleness, By::Sql)
            }
        };
        self.judge.handle_update(Update {
            key: op.key,
            version: op.version,
            returned: op.ended,
            promise,
            by,
        });
    }

    /// Judges the reads whose window has passed.
    fn tick(&mut self, now: Instant) {
        self.judge.handle_timeout(now);
        self.collect_late();
    }

    /// The workload is over: judges every read left, closes the history file.
    fn finish(&mut self, problems: &mut Vec<String>) {
        self.judge.finish();
        self.collect_late();
        if let Some(problem) = self.history.as_mut().and_then(HistoryFile::finish) {
            problems.push(problem);
        }
    }

    fn collect_late(&mut self) {
        while let Some(late) = self.judge.poll_late() {
            if !late.beyond {
                continue;
            }
            let at = self.worst.partition_point(|w| w.lag >= late.lag);
            if at < WORST {
                self.worst.insert(at, late);
                self.worst.truncate(WORST);
            }
        }
    }
}

/// The history file, one JSON line per operation, written as operations complete.
struct HistoryFile {
    path: PathBuf,
    file: BufWriter<File>,
    /// Times are written from here.
    origin: Instant,
    /// The first write that failed; nothing is written after it.
    error: Option<std::io::Error>,
}

impl HistoryFile {
    /// Creates `history.jsonl` in `dir`, creating `dir` if missing.
    fn create(dir: &Path, origin: Instant) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let path = dir.join("history.jsonl");
        let file =
            File::create(&path).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(Self {
            path,
            file: BufWriter::new(file),
            origin,
            error: None,
        })
    }

    fn write(&mut self, kind: &str, op: &Op) {
        if self.error.is_some() {
            return;
        }
        let us = |at: Instant| at.saturating_duration_since(self.origin).as_micros() as u64;
        let (client, node) = match op.actor {
            Actor::Client { client, node } => (Some(client), Some(format!("n{node}"))),
            Actor::Sql => (None, None),
        };
        let line = json!({
            "kind": kind,
            "client": client,
            "node": node,
            "key": op.key,
            "version": op.version,
            "source": op.from_cache.map(|c| if c { "cache" } else { "db" }),
            "start_us": us(op.started),
            "end_us": us(op.ended),
        });
        if let Err(e) = writeln!(self.file, "{line}") {
            self.error = Some(e);
        }
    }

    /// Flushes the file; a problem for the report if any write failed.
    fn finish(&mut self) -> Option<String> {
        let flushed = self.file.flush();
        let error = self.error.take().or(flushed.err())?;
        Some(format!("cannot write {}: {error}", self.path.display()))
    }
}

/// The running nodes, by index; `None` while one is killed.
type Cluster = Arc<Mutex<Vec<Option<Node>>>>;

/// Runs a check; `Ok(true)` when it passed.
pub(crate) async fn run(args: Args) -> anyhow::Result<bool> {
    let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
    let url = match &args.db {
        None => format!("sqlite://{}", dir.path().join("check.db").display()),
        Some(url) => url.clone(),
    };
    let db = UsersDb::connect(&url, 4).await?;
    db.ensure_users(args.keys + BACKLOG_ROWS).await?;
    let (db_proxy, nodes_db) = if args.faults.contains(&FaultKind::DbPause) {
        let UsersDb::Postgres { url, .. } = &db else {
            anyhow::bail!("the dbpause fault needs --db postgres://…");
        };
        let (target, _) = dbproxy::route_through(url, ([127, 0, 0, 1], 0).into())?;
        let db_proxy = DbProxy::start(dbproxy::resolve(&target).await?).await?;
        let (_, routed) = dbproxy::route_through(url, db_proxy.addr())?;
        (Some(db_proxy), routed)
    } else {
        (None, db.url())
    };

    // The nodes run as a real deployment would: their links keyed and encrypted.
    let key_file = dir.path().join("cluster.keys");
    std::fs::write(
        &key_file,
        format!("{}\n", cohort::ClusterKey::generate().to_hex()),
    )
    .context("cannot write the cluster key file")?;

    let n = usize::from(args.nodes);
    let names: Vec<String> = (0..n).map(|i| format!("n{i}")).collect();
    let proxy = Proxy::start(names, args.seed).await?;
    let spec = NodeSpec {
        key_file,
        db: nodes_db,
        max_staleness: args.max_staleness,
        users: args.keys,
        advertised: (0..n).map(|i| proxy.addr(i)).collect(),
        mode: args.mode,
        broken: if args.break_node { vec![0] } else { vec![] },
    };
    let cluster: Cluster = Arc::new(Mutex::new((0..n).map(|_| None).collect()));
    for i in 0..n {
        let node = Node::start(&spec, i).await?;
        proxy.set_target(i, node.listen);
        cluster.lock()[i] = Some(node);
    }
    wait_until_serving(&cluster).await?;

    let mut plan = faults::plan(
        &args.faults,
        n,
        args.duration,
        args.max_staleness,
        args.seed,
    );
    if args.break_node {
        for fault in &mut plan {
            if let Action::Pause { node, machine } = &mut fault.action {
                (*node, *machine) = (0, true);
            }
        }
    }
    let progress = ProgressBar::new(args.duration.as_secs()).with_style(
        ProgressStyle::with_template("{spinner} {pos}/{len} s {wide_bar} {msg}")
            .context("progress template")?,
    );
    let origin = Instant::now();
    let deadline = origin + args.duration;
    let history = match &args.out {
        Some(dir) => Some(HistoryFile::create(dir, origin)?),
        None => None,
    };
    let bound = match args.mode {
        Consistency::Bounded => args.max_staleness,
        Consistency::Strong => Duration::ZERO,
    };
    let recorded = Arc::new(Mutex::new(Recorded::new(
        bound,
        args.max_staleness,
        history,
    )));
    let mut clients = Vec::new();
    for client in 0..args.clients {
        let (cluster, recorded) = (Arc::clone(&cluster), Arc::clone(&recorded));
        let seed = args.seed ^ ((u64::from(client) + 1) << 40);
        let keys = args.keys;
        clients.push(tokio::spawn(async move {
            run_client(client, cluster, recorded, keys, seed, deadline).await
        }));
    }
    let schedule = run_faults(FaultRun {
        plan: &plan,
        spec: &spec,
        proxy: &proxy,
        cluster: &cluster,
        recorded: &recorded,
        db: &db,
        db_proxy: db_proxy.as_ref(),
        origin,
        seed: args.seed,
        progress: &progress,
    });
    let mut memory: Vec<memory::Samples> = (0..n).map(|_| memory::Samples::default()).collect();
    let ticker = async {
        let mut sampled = origin;
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
            progress.set_position(origin.elapsed().as_secs());
            if sampled.elapsed() >= Duration::from_secs(1) {
                sampled = Instant::now();
                let pids: Vec<Option<u32>> = cluster
                    .lock()
                    .iter()
                    .map(|node| node.as_ref().and_then(Node::pid))
                    .collect();
                for (samples, pid) in memory.iter_mut().zip(pids) {
                    if let Some(pid) = pid {
                        samples.sample(pid, origin.elapsed());
                    }
                }
            }
            let mut r = recorded.lock();
            r.tick(Instant::now());
            progress.set_message(format!(
                "{} ops, {} faults",
                r.counts.reads + r.counts.updates,
                r.faults.values().sum::<u64>()
            ));
        }
    };
    let (scheduled, ()) = tokio::join!(schedule, ticker);
    for client in clients {
        client.await.context("a client panicked")?;
    }
    let workload_ended = Instant::now();
    progress.finish_and_clear();
    let mut problems = Vec::new();
    recorded.lock().finish(&mut problems);
    if let Err(e) = scheduled {
        problems.push(format!("fault injection failed: {e:#}"));
    }
    proxy.heal();
    let https: Vec<_> = cluster.lock().iter().flatten().map(|n| n.http).collect();
    let mut mesh = Mesh::default();
    for http in https {
        if let Ok(state) = http::request(http, "GET", "/cluster", None, REQUEST_TIMEOUT).await {
            mesh.applied += state["events"]["applied"].as_u64().unwrap_or(0);
            mesh.gaps += state["events"]["gaps"].as_u64().unwrap_or(0);
        }
    }
    if mesh.applied == 0 {
        problems.push("the mesh carried no event: are the nodes linked?".to_owned());
    }
    let nodes: Vec<Node> = cluster.lock().drain(..).flatten().collect();
    for mut node in nodes {
        if let Some(status) = node.exited() {
            problems.push(format!("{} exited on its own ({status})", node.name));
            continue;
        }
        if let Err(e) = node.stop().await {
            problems.push(format!("{e:#}"));
        }
    }

    let bounded = bounded_buffers(args.keys);
    for (i, samples) in memory.iter().enumerate() {
        if let Some(summary) = samples.summary() {
            println!("memory      n{i}: {summary}");
            if let Some(growing) = summary.still_growing(bounded) {
                problems.push(format!("n{i}: {growing}"));
            }
        }
    }
    if let Some(peak) = memory::own_peak() {
        println!(
            "memory      checker: peak {:.1} MB",
            peak as f64 / (1 << 20) as f64
        );
    }
    let recorded = recorded.lock();
    let passed = report(&args, &recorded, mesh, origin, workload_ended, &problems);
    Ok(passed)
}

/// What a node's bounded buffers may take in all, for judging whether its memory still grows:
/// its replay buffer, SQLite's page cache on each of its database connections (counted on
/// Postgres too), and the users the clients read, in its cache.
fn bounded_buffers(keys: u64) -> u64 {
    cohort::DEFAULT_REPLAY_BUFFER as u64
        + u64::from(serve::DB_CONNECTIONS) * SQLITE_PAGE_CACHE
        + keys * CACHED_USER
}

/// Waits until every node serves from its cache: linked, confirmed, its log tailed.
async fn wait_until_serving(cluster: &Cluster) -> anyhow::Result<()> {
    let https: Vec<_> = cluster.lock().iter().flatten().map(|n| n.http).collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    for http in https {
        loop {
            let health = http::request(http, "GET", "/healthz", None, REQUEST_TIMEOUT).await;
            if health.is_ok_and(|h| h["serving"] == true) {
                break;
            }
            if Instant::now() > deadline {
                let state = http::request(http, "GET", "/cluster", None, REQUEST_TIMEOUT).await?;
                anyhow::bail!("the node at {http} never served: {state}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(())
}

/// One client: random reads (80%) and renames (20%) on random nodes until the deadline.
async fn run_client(
    client: u16,
    cluster: Cluster,
    recorded: Arc<Mutex<Recorded>>,
    keys: u64,
    seed: u64,
    deadline: Instant,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut renames = 0_u64;
    while Instant::now() < deadline {
        let node = rng.random_range(0..cluster.lock().len());
        let target = cluster.lock()[node].as_ref().map(|n| n.http);
        let Some(http) = target else {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        };
        let key = rng.random_range(1..=keys);
        let path = format!("/users/{key}");
        let read = rng.random_bool(0.8);
        let started = Instant::now();
        let answer = if read {
            http::request(http, "GET", &path, None, REQUEST_TIMEOUT).await
        } else {
            renames += 1;
            let body = json!({ "name": format!("c{client}-{renames}") });
            http::request(http, "PUT", &path, Some(&body), REQUEST_TIMEOUT).await
        };
        let ended = Instant::now();
        let mut recorded = recorded.lock();
        let answer = answer.ok();
        let Some(version) = answer.as_ref().and_then(|a| a["version"].as_u64()) else {
            recorded.counts.failed += 1;
            continue;
        };
        let op = Op {
            actor: Actor::Client { client, node },
            key,
            version,
            from_cache: read.then(|| answer.is_some_and(|a| a["source"] == "cache")),
            started,
            ended,
        };
        if read {
            recorded.read(op);
        } else {
            recorded.update(op);
        }
    }
}

/// What the fault scheduler works with.
struct FaultRun<'a> {
    plan: &'a [Planned],
    spec: &'a NodeSpec,
    proxy: &'a Proxy,
    cluster: &'a Cluster,
    recorded: &'a Mutex<Recorded>,
    db: &'a UsersDb,
    /// Between the nodes and a Postgres server, for `dbpause`.
    db_proxy: Option<&'a DbProxy>,
    origin: Instant,
    seed: u64,
    progress: &'a ProgressBar,
}

/// Injects the planned faults at their times, one after another.
async fn run_faults(run: FaultRun<'_>) -> anyhow::Result<()> {
    let mut rng = StdRng::seed_from_u64(run.seed.rotate_left(17));
    for fault in run.plan {
        tokio::time::sleep_until((run.origin + fault.at).into()).await;
        *run.recorded
            .lock()
            .faults
            .entry(fault.kind.name())
            .or_default() += 1;
        run.progress.suspend(|| {
            println!(
                "{:>7.2}s {} {:?} for {:?}",
                fault.at.as_secs_f64(),
                fault.kind.name(),
                fault.action,
                fault.lasts
            )
        });
        match &fault.action {
            Action::Kill { node } => {
                let killed = run.cluster.lock()[*node].take();
                if let Some(killed) = killed {
                    killed.kill().await?;
                }
                tokio::time::sleep(fault.lasts).await;
                let node_proc = Node::start(run.spec, *node).await?;
                run.proxy.set_target(*node, node_proc.listen);
                run.cluster.lock()[*node] = Some(node_proc);
            }
            Action::Pause { node, machine } => {
                if *machine {
                    run.proxy.partition(&[*node]);
                }
                signal(run.cluster, *node, "-STOP").await?;
                let resume = async {
                    tokio::time::sleep(fault.lasts).await;
                    signal(run.cluster, *node, "-CONT").await
                };
                // Concurrently: the paused node may hold SQLite's write lock until it resumes.
                let (written, resumed) =
                    tokio::join!(write_backlog(run.db, run.spec.users, run.recorded), resume);
                resumed?;
                written?;
                run.proxy.heal();
            }
            Action::DbPause => {
                let db_proxy = run.db_proxy.context("dbpause needs the database proxy")?;
                db_proxy.pause();
                let resume = async {
                    tokio::time::sleep_until((run.origin + fault.at + fault.lasts).into()).await;
                    db_proxy.resume();
                };
                // The data changes while the nodes cannot see the database. Concurrently: a
                // node's transaction caught by the pause may hold row locks until it resumes.
                let (written, ()) = tokio::join!(
                    rename_every_key(run.db, run.spec.users, run.recorded),
                    resume
                );
                written?;
            }
            Action::Partition { side } => {
                run.proxy.partition(side);
                tokio::time::sleep(fault.lasts).await;
                run.proxy.heal();
            }
            Action::Drop { share } => {
                run.proxy.drop_messages(*share);
                tokio::time::sleep(fault.lasts).await;
                run.proxy.heal();
            }
            Action::Slow { delay } => {
                run.proxy.delay(*delay);
                tokio::time::sleep(fault.lasts).await;
                run.proxy.heal();
            }
            Action::External { writes } => {
                for _ in 0..*writes {
                    let key = rng.random_range(1..=run.spec.users);
                    rename_by_sql(run.db, key, run.recorded).await?;
                }
            }
        }
    }
    Ok(())
}

/// Changes every backlog row, then every key the clients use, with plain SQL; records the latter.
async fn write_backlog(db: &UsersDb, keys: u64, recorded: &Mutex<Recorded>) -> anyhow::Result<()> {
    db.bump_after(i64::try_from(keys)?)
        .await
        .context("an outside write failed")?;
    rename_every_key(db, keys, recorded).await
}

/// Renames every key the clients use with plain SQL, one statement each (a statement that
/// locked many rows could deadlock with the nodes' writes); records the updates.
async fn rename_every_key(
    db: &UsersDb,
    keys: u64,
    recorded: &Mutex<Recorded>,
) -> anyhow::Result<()> {
    for key in 1..=keys {
        rename_by_sql(db, key, recorded).await?;
    }
    Ok(())
}

/// Renames `key` with plain SQL, through no node; records the update.
async fn rename_by_sql(db: &UsersDb, key: u64, recorded: &Mutex<Recorded>) -> anyhow::Result<()> {
    let started = Instant::now();
    let (_, _, version) = db
        .rename(i64::try_from(key)?, PLAIN_SQL_NAME)
        .await
        .context("an outside write failed")?;
    recorded.lock().update(Op {
        actor: Actor::Sql,
        key,
        version: version.unsigned_abs(),
        from_cache: None,
        started,
        ended: Instant::now(),
    });
    Ok(())
}

/// Sends `signal` to node `node`, if it is running.
async fn signal(cluster: &Cluster, node: usize, signal: &str) -> anyhow::Result<()> {
    let pid = cluster.lock()[node].as_ref().and_then(Node::pid);
    match pid {
        Some(pid) => nodes::signal(pid, signal).await,
        None => Ok(()),
    }
}

/// Prints the report and the final line; returns whether the check passed. In bounded mode
/// every update is promised within the bound; in strong mode an update through a node is
/// promised at once, one by plain SQL (which no node hears of before it commits) within the bound.
fn report(
    args: &Args,
    recorded: &Recorded,
    mesh: Mesh,
    origin: Instant,
    workload_ended: Instant,
    problems: &[String],
) -> bool {
    let bound = recorded.bound;
    let verdict = recorded.judge.verdict();
    let counts = recorded.counts;
    let ops = counts.reads + counts.updates;
    let secs = args.duration.as_secs_f64().max(0.001);
    let faults: u64 = recorded.faults.values().sum();
    let kinds: Vec<String> = recorded
        .faults
        .iter()
        .map(|(kind, count)| format!("{kind} {count}"))
        .collect();
    println!(
        "operations  {ops} ({:.0}/s): reads {} ({} from cache, {} from the database), \
         updates {} ({} by plain SQL), {} failed or timed out",
        ops as f64 / secs,
        counts.reads,
        counts.from_cache,
        counts.reads - counts.from_cache,
        counts.updates,
        counts.by_sql,
        counts.failed,
    );
    println!(
        "faults      {}",
        if kinds.is_empty() {
            "none".to_owned()
        } else {
            kinds.join(", ")
        }
    );
    println!(
        "mesh        {} events applied on the nodes running at the end, {} gaps",
        mesh.applied, mesh.gaps
    );
    println!(
        "staleness   reads behind a returned update: {} within the bound, {} beyond; max {}{} ms \
         (bound {} ms)",
        verdict.stale_within_bound,
        verdict.stale_beyond_bound,
        if verdict.max_staleness_at_least {
            "at least "
        } else {
            ""
        },
        verdict.max_staleness.as_millis(),
        bound.as_millis(),
    );
    let at = |i: Instant| i.saturating_duration_since(origin).as_secs_f64();
    for late in &recorded.worst {
        let (read, missed) = (&late.read, &late.missed);
        let (node, cache) = match read.by {
            By::Read { node, cache } => (node, cache),
            By::Put { node } => (node, false),
            By::Sql => (usize::MAX, false),
        };
        let by = match missed.by {
            By::Put { node } => format!("PUT on n{node}"),
            By::Sql => "plain SQL".to_owned(),
            By::Read { node, .. } => format!("a read on n{node} that returned it"),
        };
        println!(
            "worst       key {}: read on n{node} started {:.3}s, saw v{} ({}); v{} had returned \
             {:.3}s by {by}: {}{} ms late",
            read.key,
            at(read.started),
            read.version,
            if cache { "cache" } else { "db" },
            missed.version,
            at(missed.returned),
            if late.at_least { "at least " } else { "" },
            late.lag.as_millis(),
        );
    }
    let mut problems = problems.to_vec();
    if verdict.too_old > 0 {
        problems.push(format!(
            "{} reads reached the judge more than {} s after they started, and were not judged",
            verdict.too_old,
            JUDGE_HORIZON.as_secs()
        ));
    }
    if verdict.recorded_late > 0 {
        problems.push(format!(
            "{} updates were recorded more than {} s after they returned, after reads they bear \
             on were judged",
            verdict.recorded_late,
            JUDGE_WINDOW.as_secs()
        ));
    }
    for problem in &problems {
        println!("problem     {problem}");
    }
    println!(
        "verdict     {} reads judged, {:.2} s after the workload ended",
        verdict.judged,
        workload_ended.elapsed().as_secs_f64()
    );
    let passed = verdict.stale_beyond_bound == 0
        && problems.is_empty()
        && counts.reads > 0
        && counts.updates > 0;
    println!(
        "check: ops={ops} faults={faults} stale_beyond_bound={} max_staleness_ms={} bound_ms={} \
         result={}",
        verdict.stale_beyond_bound,
        verdict.max_staleness.as_millis(),
        bound.as_millis(),
        if passed { "PASS" } else { "FAIL" }
    );
    passed
}
