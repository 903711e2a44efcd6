//! The database's change log: the authoritative path of every change.
//!
//! Triggers on each watched table write (cache, key, version) into a `cohort_changes` table in the same
//! transaction as the data, so the log records every committed change, whoever made it: a node
//! through [`Cache::update`](crate::Cache::update), or any other writer of the database. Every
//! node tails the log (every Δ/4, and right after its own writes) and applies each row as an
//! invalidation, so the staleness bound holds when the peer mesh is broken or slow. A row that
//! carries the row's new version (the cache named a
//! [version column](crate::CacheBuilder::version_column)) spares a copy at least that new: the
//! writer's own, which would otherwise cost it and its peers a miss for every write.
//!
//! The [poll lease](crate::lease) ties serving to tailing: a cache that watches tables serves values only
//! while its node's last complete poll started within Δ; otherwise reads go to the source and are
//! not stored. The [tail](tail) state decides what each batch of rows asks of the node; `backend` is what
//! a log offers the tailer ([`LogBackend`]), implemented with SQL in `sqlite` and `postgres` (or by
//! the application, [`ChangeLog::custom`]); `driver` is the task. Postgres also wakes the
//! tailers with `NOTIFY` as soon as a change commits.
//!
//! Any node prunes rows older than the retention period (default 10 minutes). A node whose cursor
//! fell behind the pruning (it was paused or cut off that long) flushes its caches.

mod backend;
pub(crate) mod driver;
pub(crate) mod ops;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;
pub(crate) mod tail;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::clock::Clock;
use crate::lease::Lease;
pub use backend::{LogBackend, WatchedTable};
pub use tail::{LogBatch, LogPosition, LogRow};

/// Default for [`ClusterBuilder::log_retention`](crate::ClusterBuilder::log_retention).
pub const DEFAULT_LOG_RETENTION: Duration = Duration::from_secs(600);

/// Rows read per query while catching up.
pub(crate) const BATCH_ROWS: u32 = 10_000;

/// Where a node's change log lives; pass it to
/// [`ClusterBuilder::change_log`](crate::ClusterBuilder::change_log).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let pool = sqlx::SqlitePool::connect("sqlite::memory:").await?;
/// let cluster = cohort::Cluster::builder()
///     .change_log(cohort::ChangeLog::sqlite(pool))
///     .start()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ChangeLog {
    backend: Arc<dyn LogBackend>,
}

impl fmt::Debug for ChangeLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChangeLog").finish_non_exhaustive()
    }
}

impl ChangeLog {
    /// A change log kept by `backend`: another database, or a simulated one in tests.
    ///
    /// See [`LogBackend`] for an example.
    pub fn custom(backend: impl LogBackend) -> Self {
        Self {
            backend: Arc::new(backend),
        }
    }

    /// A change log in the SQLite database behind `pool`: the database the application's data is
    /// in, so that triggers log changes in the data's own transactions. Use WAL mode and a busy
    /// timeout when several processes share the file. Switching a new file to WAL needs a lock
    /// that SQLite does not wait for, so where processes may create the file at once, retry
    /// opening it on `SQLITE_BUSY` (as `cohort serve` does).
    #[cfg(feature = "sqlite")]
    pub fn sqlite(pool: sqlx::SqlitePool) -> Self {
        Self {
            backend: Arc::new(sqlite::SqliteLog::new(pool)),
        }
    }

    /// A change log in the Postgres database behind `pool` (Postgres 14 or later), the database
    /// the application's data is in. The node keeps one of the pool's connections for `LISTEN`,
    /// so give the pool at least two.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let pool = sqlx::PgPool::connect("postgres://app@localhost/app").await?;
    /// let cluster = cohort::Cluster::builder()
    ///     .change_log(cohort::ChangeLog::postgres(pool))
    ///     .start()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "postgres")]
    pub fn postgres(pool: sqlx::PgPool) -> Self {
        Self {
            backend: Arc::new(postgres::PostgresLog::new(pool)),
        }
    }
}

/// A failed change-log operation. The node keeps running; its leases lapse until a poll succeeds.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChangeLogError {
    /// The database refused or could not be reached.
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// A watched table's [version column](crate::CacheBuilder::version_column) is missing or
    /// cannot hold integers. Nothing was installed for the table; its cache does not serve (it
    /// reads the source) and installing is retried at every poll, so fixing the table or the
    /// configuration recovers.
    #[error("table {table:?}: version column {column:?} {problem}")]
    VersionColumn {
        /// The watched table.
        table: String,
        /// The version column named for it.
        column: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The log cannot record a clear or a tag invalidation: a [custom](ChangeLog::custom) log
    /// that does not implement [`LogBackend::append`]. Nothing was written.
    #[error("this change log cannot record clears or tag invalidations")]
    Unsupported,
    /// A [custom](ChangeLog::custom) log failed.
    #[error("change log: {0}")]
    Backend(Box<dyn std::error::Error + Send + Sync>),
}

/// Rows one pruning statement deletes: a whole retention's worth at once (a busy log holds
/// hundreds of thousands) would hold the write lock that long and leave every connection thread
/// that ran it with as much allocator memory for good.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
const PRUNE_BATCH: u64 = 1_000;

/// Runs `batch` until it deletes less than [`PRUNE_BATCH`] rows; returns how many it deleted.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
async fn prune_in_batches<F, Fut>(batch: F) -> Result<u64, ChangeLogError>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<u64, ChangeLogError>>,
{
    let mut deleted = 0;
    loop {
        let rows = batch().await?;
        deleted += rows;
        if rows < PRUNE_BATCH {
            return Ok(deleted);
        }
    }
}

/// `retention` in whole milliseconds, as the SQL backends take it.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
fn retention_ms(retention: Duration) -> i64 {
    i64::try_from(retention.as_millis()).unwrap_or(i64::MAX)
}

/// One cache's watches, waiting to be installed, and the lease they unlock.
struct Registration {
    watches: Vec<WatchedTable>,
    lease: Arc<Lease>,
}

/// How a node's tailing of the change log stands; from
/// [`Cluster::change_log_status`](crate::Cluster::change_log_status).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LogStatus {
    /// Whether the node's lease holds: its last complete poll started within Δ.
    pub serving: bool,
    /// How much longer the lease holds without another complete poll.
    pub lease_remaining: Option<Duration>,
    /// How long ago the last complete poll started; `None` before the first.
    pub last_poll_age: Option<Duration>,
    /// Rows the last complete poll had to apply: how far behind the log the node was.
    pub behind_rows: u64,
    /// The last sequence number applied.
    pub cursor: u64,
    /// Complete polls so far.
    pub polls: u64,
    /// Failed polls (and failed installs and prunes) so far.
    pub errors: u64,
    /// The most recent failure, if the last attempt failed.
    pub last_error: Option<String>,
    /// Times the node flushed its caches because rows it had not read were pruned.
    pub pruned_flushes: u64,
}

#[derive(Default)]
struct Progress {
    last_poll: Option<Instant>,
    behind_rows: u64,
    cursor: u64,
    polls: u64,
    errors: u64,
    last_error: Option<String>,
    pruned_flushes: u64,
}

/// A node's change-log state, shared by its tailer task and its caches.
pub(crate) struct LogRuntime {
    backend: Arc<dyn LogBackend>,
    bound: Duration,
    retention: Duration,
    clock: Clock,
    /// Renewed by every complete poll; reported in the status.
    node_lease: Lease,
    pending: Mutex<Vec<Registration>>,
    installed: Mutex<Vec<Arc<Lease>>>,
    kick: Notify,
    progress: Mutex<Progress>,
}

impl LogRuntime {
    pub(crate) fn new(log: ChangeLog, clock: Clock, bound: Duration, retention: Duration) -> Self {
        Self {
            backend: log.backend,
            bound,
            retention,
            clock,
            node_lease: Lease::default(),
            pending: Mutex::new(Vec::new()),
            installed: Mutex::new(Vec::new()),
            kick: Notify::new(),
            progress: Mutex::new(Progress::default()),
        }
    }

    /// Queues a cache's watches for installation; once they are installed, every complete poll
    /// renews `lease`.
    pub(crate) fn register(&self, watches: Vec<WatchedTable>, lease: Arc<Lease>) {
        self.pending.lock().push(Registration { watches, lease });
        self.kick();
    }

    /// Whether the watches whose polls renew `lease` are installed.
    pub(crate) fn is_installed(&self, lease: &Arc<Lease>) -> bool {
        self.installed
            .lock()
            .iter()
            .any(|held| Arc::ptr_eq(held, lease))
    }

    /// Records `op` on `cache` in the log; committed when this returns `Ok`.
    pub(crate) async fn append(
        &self,
        cache: &str,
        op: ops::CacheOp<'_>,
    ) -> Result<(), ChangeLogError> {
        let (cache, key) = op.columns(cache);
        self.backend.append(&cache, &key).await
    }

    /// Asks for a poll now rather than at the next tick.
    pub(crate) fn kick(&self) {
        self.kick.notify_one();
    }

    pub(crate) fn status(&self) -> LogStatus {
        let progress = self.progress.lock();
        LogStatus {
            serving: self.node_lease.is_valid(&self.clock),
            lease_remaining: self.node_lease.remaining(&self.clock),
            last_poll_age: progress.last_poll.map(|at| at.elapsed()),
            behind_rows: progress.behind_rows,
            cursor: progress.cursor,
            polls: progress.polls,
            errors: progress.errors,
            last_error: progress.last_error.clone(),
            pruned_flushes: progress.pruned_flushes,
        }
    }
}
