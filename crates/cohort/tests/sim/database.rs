//! A simulated database: one version per key, and a change log written by a trigger in the
//! writer's transaction, committed out of order as Postgres does (a row's position is taken when
//! its transaction starts, it becomes visible when the transaction commits). Each node reaches
//! it through a [`DbLink`] the simulation can pause, as a stalled connection or a paused server
//! would.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use cohort::{BoxFuture, ChangeLogError, LogBackend, LogBatch, LogPosition, LogRow, WatchedTable};
use parking_lot::Mutex;
use tokio::sync::watch;

/// How long a query or a transaction takes.
const LATENCY: Duration = Duration::from_millis(1);

/// The database every node and client shares.
#[derive(Clone, Default)]
pub(crate) struct Database(Arc<Mutex<Tables>>);

#[derive(Default)]
struct Tables {
    versions: HashMap<u64, u64>,
    /// The cache whose table has a trigger, once a node installed it.
    watched_by: Option<String>,
    /// Change-log rows by position: committed, and when (simulated time).
    log: BTreeMap<LogPosition, Entry>,
    next_txn: u64,
    next_seq: u64,
    open: BTreeSet<u64>,
    pruned_through: LogPosition,
}

struct Entry {
    key: u64,
    committed_at: Option<Duration>,
}

impl Tables {
    /// Every transaction below it has ended.
    fn horizon(&self) -> u64 {
        self.open.first().copied().unwrap_or(self.next_txn)
    }
}

impl Database {
    /// The committed version of `key` (0 before its first write).
    pub(crate) fn read(&self, key: u64) -> u64 {
        self.0.lock().versions.get(&key).copied().unwrap_or(0)
    }

    /// Writes `key` in a transaction (logged once a trigger is installed) and returns the version
    /// it committed. The transaction stays open for a while, so tailers see it in flight.
    pub(crate) async fn write(&self, key: u64) -> u64 {
        let txn = {
            let mut tables = self.0.lock();
            let txn = tables.next_txn;
            tables.next_txn += 1;
            tables.open.insert(txn);
            if tables.watched_by.is_some() {
                tables.next_seq += 1;
                let at = LogPosition {
                    txn,
                    seq: tables.next_seq,
                };
                tables.log.insert(
                    at,
                    Entry {
                        key,
                        committed_at: None,
                    },
                );
            }
            txn
        };
        tokio::time::sleep(LATENCY).await;
        let mut tables = self.0.lock();
        let version = tables.versions.entry(key).or_insert(0);
        *version += 1;
        let version = *version;
        tables.open.remove(&txn);
        let now = turmoil::sim_elapsed().unwrap_or_default();
        for (_, entry) in tables
            .log
            .range_mut(LogPosition { txn, seq: 0 }..=LogPosition { txn, seq: u64::MAX })
        {
            entry.committed_at = Some(now);
        }
        version
    }

    /// A node's connection, open.
    pub(crate) fn link(&self) -> DbLink {
        DbLink {
            db: self.clone(),
            open: Arc::new(watch::channel(true).0),
        }
    }
}

/// A node's connection to the database: its change-log queries wait while it is paused.
#[derive(Clone)]
pub(crate) struct DbLink {
    db: Database,
    open: Arc<watch::Sender<bool>>,
}

impl DbLink {
    /// Holds every query (those under way answer only once it resumes) or lets them through.
    pub(crate) fn set_paused(&self, paused: bool) {
        self.open.send_replace(!paused);
    }

    /// The committed version of `key`, read over this connection.
    pub(crate) async fn read(&self, key: u64) -> u64 {
        self.query(|tables| tables.versions.get(&key).copied().unwrap_or(0))
            .await
    }

    /// Runs `query` as the server would: after the connection lets it through, taking a while,
    /// its answer held back too while paused.
    async fn query<T>(&self, query: impl FnOnce(&mut Tables) -> T) -> T {
        let mut open = self.open.subscribe();
        let _ = open.wait_for(|open| *open).await;
        let answer = query(&mut self.db.0.lock());
        tokio::time::sleep(LATENCY).await;
        let _ = open.wait_for(|open| *open).await;
        answer
    }
}

impl LogBackend for DbLink {
    fn install<'a>(&'a self, watch: &'a WatchedTable) -> BoxFuture<'a, Result<(), ChangeLogError>> {
        Box::pin(async move {
            let cache = watch.cache().to_owned();
            self.query(|tables| tables.watched_by = Some(cache)).await;
            Ok(())
        })
    }

    fn head(&self) -> BoxFuture<'_, Result<LogPosition, ChangeLogError>> {
        Box::pin(async move {
            Ok(self
                .query(|tables| LogPosition {
                    txn: tables.horizon(),
                    seq: 0,
                })
                .await)
        })
    }

    fn read(
        &self,
        after: LogPosition,
        limit: u32,
    ) -> BoxFuture<'_, Result<LogBatch, ChangeLogError>> {
        Box::pin(async move {
            Ok(self
                .query(|tables| {
                    let cache = tables.watched_by.clone().unwrap_or_default();
                    let rows: Vec<LogRow> = tables
                        .log
                        .range(after..)
                        .filter(|(at, entry)| **at > after && entry.committed_at.is_some())
                        .take(limit as usize)
                        .map(|(at, entry)| LogRow {
                            at: *at,
                            cache: cache.clone(),
                            key: entry.key.to_string(),
                            version: None,
                        })
                        .collect();
                    LogBatch {
                        complete: rows.len() < limit as usize,
                        rows,
                        pruned_through: tables.pruned_through,
                        horizon: tables.horizon(),
                    }
                })
                .await)
        })
    }

    fn prune(&self, retention: Duration) -> BoxFuture<'_, Result<u64, ChangeLogError>> {
        Box::pin(async move {
            Ok(self
                .query(|tables| {
                    let now = turmoil::sim_elapsed().unwrap_or_default();
                    let horizon = tables.horizon();
                    let old: Vec<LogPosition> = tables
                        .log
                        .iter()
                        .filter(|(at, entry)| {
                            at.txn < horizon
                                && entry
                                    .committed_at
                                    .is_some_and(|committed| committed + retention < now)
                        })
                        .map(|(at, _)| *at)
                        .collect();
                    for at in &old {
                        tables.log.remove(at);
                    }
                    if let Some(&last) = old.last() {
                        tables.pruned_through = tables.pruned_through.max(last);
                    }
                    old.len() as u64
                })
                .await)
        })
    }
}
