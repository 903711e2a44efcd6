//! Running a check: the database, the key file, the proxy and the nodes set up; clients, fault
//! injection and memory sampling run side by side; then the nodes stopped and the report made.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use parking_lot::Mutex;

use super::clients::{OpKind, REQUEST_TIMEOUT, run_client};
use super::dbproxy::{self, DbProxy};
use super::faults::{self, Action, FaultKind};
use super::html::{self, Gathered, Outcome};
use super::inject::{FaultRun, run_faults};
use super::memory;
use super::nodes::{Cluster, Node, NodeSpec};
use super::proxy::Proxy;
use super::record::{HistoryFile, Recorded};
use super::report::{Mesh, report};
use super::{Args, http};
use crate::api::{ClusterState, Health};
use crate::serve::Consistency;
use crate::users_db::UsersDb;

/// Rows beyond the clients' keys that an outside writer changes while a node is paused: a backlog
/// of change-log rows the node must work through when it resumes, before it may serve again.
const BACKLOG_ROWS: u64 = 50_000;

/// The most users team renames and clears may list, as `cohort serve` takes them.
const MAX_BULK_KEYS: u64 = 1_000;

/// Runs a check; `Ok(true)` when it passed.
pub(crate) async fn run(args: Args) -> anyhow::Result<bool> {
    if args.keys > MAX_BULK_KEYS
        && args
            .ops
            .iter()
            .any(|op| matches!(op, OpKind::Tags | OpKind::Clears))
    {
        anyhow::bail!(
            "--ops tags and clears list every user in their requests: use --keys {MAX_BULK_KEYS} or fewer"
        );
    }
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
        Consistency::Bounded | Consistency::Partitioned => args.max_staleness,
        Consistency::Strong => Duration::ZERO,
    };
    let recorded = Arc::new(Mutex::new(Recorded::new(
        bound,
        args.max_staleness,
        history,
    )));
    if args.report.is_some() {
        recorded.lock().gathered = Some(Gathered::new(origin, n, args.duration, bound));
    }
    let ops: Arc<[OpKind]> = args.ops.iter().copied().collect();
    let mut clients = Vec::new();
    for client in 0..args.clients {
        let (cluster, recorded) = (Arc::clone(&cluster), Arc::clone(&recorded));
        let seed = args.seed ^ ((u64::from(client) + 1) << 40);
        let workload = (args.keys, Arc::clone(&ops));
        clients.push(tokio::spawn(async move {
            run_client(client, cluster, recorded, workload, seed, deadline).await
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
        if let Ok(state) = http::get::<ClusterState>(http, "/cluster", REQUEST_TIMEOUT).await {
            mesh.applied += state.events.applied;
            mesh.gaps += state.events.gaps;
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

    let bounded = memory::bounded_buffers(args.keys);
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
    if let (Some(path), Some(gathered)) = (&args.report, &recorded.gathered) {
        let outcome = Outcome {
            passed,
            verdict: recorded.judge.verdict(),
            counts: recorded.counts,
            problems: &problems,
            nodes: n,
            duration: args.duration,
            faults: args.faults.iter().map(|kind| kind.name()).collect(),
            mode: clap::ValueEnum::to_possible_value(&args.mode)
                .map_or_else(String::new, |mode| mode.get_name().to_owned()),
            seed: args.seed,
            bound,
            max_staleness: args.max_staleness,
            clients: args.clients,
            keys: args.keys,
        };
        html::write(path, gathered, &outcome)?;
    }
    Ok(passed)
}

/// Waits until every node serves from its cache: linked, confirmed, its log tailed.
async fn wait_until_serving(cluster: &Cluster) -> anyhow::Result<()> {
    let https: Vec<_> = cluster.lock().iter().flatten().map(|n| n.http).collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    for http in https {
        loop {
            let health = http::get::<Health>(http, "/healthz", REQUEST_TIMEOUT).await;
            if health.is_ok_and(|h| h.serving) {
                break;
            }
            if Instant::now() > deadline {
                let state: ClusterState = http::get(http, "/cluster", REQUEST_TIMEOUT).await?;
                let state = serde_json::to_string(&state)?;
                anyhow::bail!("the node at {http} never served: {state}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(())
}
