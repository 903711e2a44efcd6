//! A simulated database: one version per key, and a change log written by a trigger in the
//! writer's transaction, committed out of order as Postgres does (a row's position is taken when
//! its transaction starts, it becomes visible when the transaction commits). Each node reaches
//! it through a [`DbLink`] the simulation can pause, as a stalled connection or a paused server
//! would.
//!
//! A version names its key's group (`version % STRIDE % GROUPS`), so a cache can tag a value
//! with its group from the value alone, as an application tags a user with its team.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use cohort::{BoxFuture, ChangeLogError, LogBackend, LogBatch, LogPosition, LogRow, WatchedTable};
use parking_lot::Mutex;
use tokio::sync::watch;

/// How long a query or a transaction takes.
const LATENCY: Duration = Duration::from_millis(1);

/// Versions of a key step by this much, from the key itself: more than any key.
const STRIDE: u64 = 128;

/// Groups of keys, for tag invalidations.
pub(crate) const GROUPS: u64 = 4;

/// The group of the key whose version is `version`.
pub(crate) fn group(version: u64) -> u64 {
    version % STRIDE % GROUPS
}

/// The tag of the values of group `group`'s keys.
pub(crate) fn group_tag(group: u64) -> String {
    format!("group {group}")
}

/// The database every node and client shares.
#[derive(Clone, Default)]
pub(crate) struct Database(Arc<Mutex<Tables>>);

#[derive(Default)]
struct Tables {
    /// Writes so far, by key.
    writes: HashMap<u64, u64>,
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
    /// `None` for a trigger's row (of the watched table's cache); a row the cache appended
    /// itself names it.
    cache: Option<String>,
    key: String,
    committed_at: Option<Duration>,
}

impl Tables {
    /// Every transaction below it has ended.
    fn horizon(&self) -> u64 {
        self.open.first().copied().unwrap_or(self.next_txn)
    }

    fn version(&self, key: u64) -> u64 {
        self.writes.get(&key).copied().unwrap_or(0) * STRIDE + key
    }

    /// Opens a transaction.
    fn begin(&mut self) -> u64 {
        let txn = self.next_txn;
        self.next_txn += 1;
        self.open.insert(txn);
        txn
    }

    /// Adds a row at the next position in `txn`, visible once it commits.
    fn log(&mut self, txn: u64, cache: Option<String>, key: String) {
        self.next_seq += 1;
        let at = LogPosition {
            txn,
            seq: self.next_seq,
        };
        self.log.insert(
            at,
            Entry {
                cache,
                key,
                committed_at: None,
            },
        );
    }

    /// Writes `keys` in `txn` and commits it: its log rows become visible. Returns the versions.
    fn commit(&mut self, txn: u64, keys: &[u64]) -> Vec<u64> {
        for key in keys {
            *self.writes.entry(*key).or_insert(0) += 1;
        }
        self.open.remove(&txn);
        let now = turmoil::sim_elapsed().unwrap_or_default();
        for (_, entry) in self
            .log
            .range_mut(LogPosition { txn, seq: 0 }..=LogPosition { txn, seq: u64::MAX })
        {
            entry.committed_at = Some(now);
        }
        keys.iter().map(|key| self.version(*key)).collect()
    }
}

impl Database {
    /// The committed version of `key`.
    pub(crate) fn read(&self, key: u64) -> u64 {
        self.0.lock().version(key)
    }

    /// The committed versions of `keys`, read at once.
    pub(crate) fn read_many(&self, keys: &[u64]) -> Vec<u64> {
        let tables = self.0.lock();
        keys.iter().map(|key| tables.version(*key)).collect()
    }

    /// Writes `key` in a transaction (logged once a trigger is installed) and returns the version
    /// it committed. The transaction stays open for a while, so tailers see it in flight.
    pub(crate) async fn write(&self, key: u64) -> u64 {
        let txn = {
            let mut tables = self.0.lock();
            let txn = tables.begin();
            if tables.watched_by.is_some() {
                tables.log(txn, None, key.to_string());
            }
            txn
        };
        tokio::time::sleep(LATENCY).await;
        self.0.lock().commit(txn, &[key])[0]
    }

    /// Writes `keys` in one transaction that no trigger sees (as a change to a table joined
    /// into the cached values would be): the writer must tell the caches itself. Returns the
    /// versions it committed.
    pub(crate) async fn write_unlogged(&self, keys: &[u64]) -> Vec<u64> {
        let txn = self.0.lock().begin();
        tokio::time::sleep(LATENCY).await;
        self.0.lock().commit(txn, keys)
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

    pub(crate) fn is_paused(&self) -> bool {
        !*self.open.borrow()
    }

    /// The committed version of `key`, read over this connection.
    pub(crate) async fn read(&self, key: u64) -> u64 {
        self.query(|tables| tables.version(key)).await
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

    fn append<'a>(
        &'a self,
        cache: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<(), ChangeLogError>> {
        Box::pin(async move {
            self.query(|tables| {
                let txn = tables.begin();
                tables.log(txn, Some(cache.to_owned()), key.to_owned());
                tables.commit(txn, &[]);
            })
            .await;
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
                    let watched = tables.watched_by.clone().unwrap_or_default();
                    let rows: Vec<LogRow> = tables
                        .log
                        .range(after..)
                        .filter(|(at, entry)| **at > after && entry.committed_at.is_some())
                        .take(limit as usize)
                        .map(|(at, entry)| LogRow {
                            at: *at,
                            cache: entry.cache.clone().unwrap_or_else(|| watched.clone()),
                            key: entry.key.clone(),
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
