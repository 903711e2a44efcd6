//! Where the change log is kept: the interface every log (SQLite, Postgres, or one of the
//! application's own) implements for the tailer.

use std::time::Duration;

use super::ChangeLogError;
use super::tail::{LogBatch, LogPosition};
use crate::transport::BoxFuture;

/// A table whose changes invalidate a cache: rows map to keys through its key column, and, when
/// the application names one, its version column tells how new each change is.
#[derive(Clone, Debug)]
pub struct WatchedTable {
    pub(crate) cache: std::sync::Arc<str>,
    pub(crate) table: String,
    pub(crate) key_column: String,
    pub(crate) version_column: Option<String>,
}

impl WatchedTable {
    /// The cache whose keys the table's rows are.
    pub fn cache(&self) -> &str {
        &self.cache
    }

    /// The table's name, a plain SQL identifier.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The column holding each row's key, a plain SQL identifier.
    pub fn key_column(&self) -> &str {
        &self.key_column
    }

    /// The column holding each row's version (see
    /// [`CacheBuilder::version_column`](crate::CacheBuilder::version_column)), if named. A log
    /// records it in [`LogRow::version`](crate::LogRow::version) for an update that raised it
    /// and kept the key; a log that cannot may leave every row's version `None`, which
    /// invalidates as if no column were named.
    pub fn version_column(&self) -> Option<&str> {
        self.version_column.as_deref()
    }

    /// Table and column names go into SQL as identifiers: only plain ones are accepted.
    pub(crate) fn validate(&self) -> Result<(), String> {
        let names = [("table", &self.table), ("key column", &self.key_column)]
            .into_iter()
            .chain(self.version_column.iter().map(|c| ("version column", c)));
        for (what, name) in names {
            let mut chars = name.chars();
            let plain = chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !plain || name.len() > 63 {
                return Err(format!("{what} {name:?} is not a plain SQL identifier"));
            }
        }
        Ok(())
    }
}

/// A change log the node tails: rows of (cache, key, version) written in the same transaction
/// as every change of a watched table, readable in [`LogPosition`] order. cohort ships SQLite and Postgres
/// logs (`ChangeLog::sqlite`, `ChangeLog::postgres`, with the features of those names); implement
/// this for another database, or for a simulated one, and pass it to
/// [`ChangeLog::custom`](crate::ChangeLog::custom).
///
/// The staleness bound rests on two properties: every committed change of a watched table is
/// logged, and a read from a position returns every row after it that will ever exist there,
/// except rows of transactions at or above the batch's horizon.
///
/// ```
/// use std::time::Duration;
/// use cohort::{BoxFuture, ChangeLogError, LogBackend, LogBatch, LogPosition, WatchedTable};
///
/// /// A log nothing is ever written to.
/// struct Empty;
///
/// impl LogBackend for Empty {
///     fn install<'a>(&'a self, _: &'a WatchedTable) -> BoxFuture<'a, Result<(), ChangeLogError>> {
///         Box::pin(async { Ok(()) })
///     }
///     fn head(&self) -> BoxFuture<'_, Result<LogPosition, ChangeLogError>> {
///         Box::pin(async { Ok(LogPosition::default()) })
///     }
///     fn read(&self, _: LogPosition, _: u32) -> BoxFuture<'_, Result<LogBatch, ChangeLogError>> {
///         Box::pin(async { Ok(LogBatch::default()) })
///     }
///     fn prune(&self, _: Duration) -> BoxFuture<'_, Result<u64, ChangeLogError>> {
///         Box::pin(async { Ok(0) })
///     }
/// }
///
/// let log = cohort::ChangeLog::custom(Empty);
/// ```
pub trait LogBackend: Send + Sync + 'static {
    /// Makes sure every change of `watch`'s table is logged from now on (creating the log and
    /// triggers as needed), with the row's new version when `watch` names a
    /// [version column](WatchedTable::version_column). Called again after a failure; must be
    /// idempotent.
    fn install<'a>(&'a self, watch: &'a WatchedTable) -> BoxFuture<'a, Result<(), ChangeLogError>>;

    /// A position no row of a later commit can precede: where a starting node begins tailing.
    fn head(&self) -> BoxFuture<'_, Result<LogPosition, ChangeLogError>>;

    /// Rows after `after`, in order, at most `limit` of them.
    fn read(
        &self,
        after: LogPosition,
        limit: u32,
    ) -> BoxFuture<'_, Result<LogBatch, ChangeLogError>>;

    /// Deletes rows older than `retention`; returns how many.
    fn prune(&self, retention: Duration) -> BoxFuture<'_, Result<u64, ChangeLogError>>;

    /// Appends a row with these `cache` and `key` columns (and no version), committed when the
    /// future resolves: how cohort records a [clear](crate::Cache::clear) or a
    /// [tag invalidation](crate::Cache::invalidate_tag), which no trigger sees, for nodes that
    /// miss it on the mesh. The row must be read back like a trigger's. By default it fails with
    /// [`ChangeLogError::Unsupported`]: those calls then report that their change reached only
    /// the nodes the mesh reached.
    fn append<'a>(
        &'a self,
        cache: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<(), ChangeLogError>> {
        let _ = (cache, key);
        Box::pin(async { Err(ChangeLogError::Unsupported) })
    }

    /// Calls `wake` whenever the log may have new rows, for logs that can tell (Postgres
    /// `NOTIFY`); runs until dropped. By default it returns at once and the node polls every Δ/4.
    fn listen<'a>(
        &'a self,
        node: &'a str,
        wake: &'a (dyn Fn() + Send + Sync),
    ) -> BoxFuture<'a, ()> {
        let _ = (node, wake);
        Box::pin(async {})
    }
}
