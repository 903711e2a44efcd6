//! Injecting the planned faults at their times, and the plain-SQL writes some of them make.

use std::time::Instant;

use anyhow::Context;
use indicatif::ProgressBar;
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use rustix::process::Signal;

use super::dbproxy::DbProxy;
use super::faults::{Action, Planned};
use super::nodes::{self, Cluster, Node, NodeSpec};
use super::proxy::Proxy;
use super::record::{Actor, Op, Recorded};
use crate::users_db::UsersDb;

/// The name plain-SQL writers give users.
const PLAIN_SQL_NAME: &str = "set by plain SQL";

/// What the fault scheduler works with.
pub(crate) struct FaultRun<'a> {
    pub(crate) plan: &'a [Planned],
    pub(crate) spec: &'a NodeSpec,
    pub(crate) proxy: &'a Proxy,
    pub(crate) cluster: &'a Cluster,
    pub(crate) recorded: &'a Mutex<Recorded>,
    /// The database, reached directly: the outside writer's.
    pub(crate) db: &'a UsersDb,
    /// Between the nodes and a Postgres server, for `dbpause`.
    pub(crate) db_proxy: Option<&'a DbProxy>,
    /// The start of the workload, which the plan's times count from.
    pub(crate) origin: Instant,
    pub(crate) seed: u64,
    pub(crate) progress: &'a ProgressBar,
}

/// Injects the planned faults at their times, one after another.
pub(crate) async fn run_faults(run: FaultRun<'_>) -> anyhow::Result<()> {
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
        let injected = Instant::now();
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
                signal(run.cluster, *node, Signal::STOP)?;
                let resume = async {
                    tokio::time::sleep(fault.lasts).await;
                    signal(run.cluster, *node, Signal::CONT)
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
        run.recorded
            .lock()
            .fault_window(fault, injected, Instant::now());
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
    let version = db
        .rename(i64::try_from(key)?, PLAIN_SQL_NAME)
        .await
        .context("an outside write failed")?
        .shown_version();
    recorded.lock().update(Op {
        actor: Actor::Sql,
        key,
        version: version.unsigned_abs(),
        source: None,
        started,
        ended: Instant::now(),
        age: None,
    });
    Ok(())
}

/// Sends `signal` to node `node`, if it is running.
fn signal(cluster: &Cluster, node: usize, signal: Signal) -> anyhow::Result<()> {
    let pid = cluster.lock()[node].as_ref().and_then(Node::pid);
    match pid {
        Some(pid) => nodes::signal(pid, signal),
        None => Ok(()),
    }
}
