//! The change log in SQLite: a `cohort_changes` table filled by triggers on the watched tables.
//!
//! SQLite lets one writer commit at a time, and `AUTOINCREMENT` assigns sequence numbers inside
//! the writing transaction, so sequence order is commit order: a reader that has seen row `n` has
//! seen every row committed before it, and a cursor on `seq` never skips a row. `AUTOINCREMENT`
//! (not a plain rowid) also guarantees that a number is never reused after pruning deletes the
//! newest rows. A trigger on deletion records the highest number pruned in `cohort_log_meta`, read
//! in the same snapshot as the rows, so a node can tell that rows it never read are gone.
//!
//! A watch with a version column logs the row's new version beside the key when an update
//! raised it and kept the key; every other change logs NULL. Logs made by an older cohort lack
//! the `version` column: installing adds it (before any trigger that writes it), and the
//! triggers of watches without a version column stay what they were, so they are not rewritten.
//!
//! Installing is a no-op when the log's objects exist and each trigger's stored SQL is the one
//! this version creates: nodes restart without taking the write lock or changing the schema
//! (which would make every connection of every writer re-read it). Otherwise the missing or
//! different objects are (re)created in one `BEGIN IMMEDIATE` transaction, which waits for the
//! write lock under the busy timeout and looks again once it holds it, so nodes starting together
//! on a fresh file create everything once; a writer concurrent with it either is logged or
//! committed before.
//!
//! Polling never holds SQLite's single write lock across an await: pruning is one statement
//! (the trigger runs inside it), executed whole by the connection's worker thread. A node that is
//! frozen (SIGSTOP, a stalled runtime) at any point of its polling therefore never blocks the
//! application's writers.

use std::time::Duration;

use sqlx::sqlite::SqlitePool;
use sqlx::{Row as _, SqliteConnection};

use super::tail::{LogBatch, LogPosition, LogRow};
use super::{
    ChangeLogError, LogBackend, PRUNE_BATCH, WatchedTable, prune_in_batches, retention_ms,
};
use crate::transport::BoxFuture;

/// The log's tables; installing them is idempotent. Times are Unix milliseconds computed with
/// `julianday`, which every SQLite has (`unixepoch('subsec')` needs 3.42), since the triggers run
/// inside whatever SQLite library each writer of the database links.
const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS cohort_changes (\
        seq INTEGER PRIMARY KEY AUTOINCREMENT, \
        cache TEXT NOT NULL, \
        key TEXT NOT NULL, \
        version INTEGER, \
        at_ms INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)))",
    "CREATE INDEX IF NOT EXISTS cohort_changes_at_ms ON cohort_changes (at_ms)",
    "CREATE TABLE IF NOT EXISTS cohort_log_meta (\
        id INTEGER PRIMARY KEY CHECK (id = 1), \
        pruned_through INTEGER NOT NULL)",
    "INSERT OR IGNORE INTO cohort_log_meta (id, pruned_through) VALUES (1, 0)",
    "CREATE TRIGGER IF NOT EXISTS cohort_changes_pruned AFTER DELETE ON cohort_changes BEGIN \
        UPDATE cohort_log_meta SET pruned_through = MAX(pruned_through, OLD.seq) WHERE id = 1; END",
];

/// How many of [`SCHEMA`]'s objects exist (4 when all do).
const SCHEMA_OBJECTS: &str = "SELECT count(*) FROM sqlite_master WHERE (type, name) IN (VALUES \
    ('table', 'cohort_changes'), ('index', 'cohort_changes_at_ms'), \
    ('table', 'cohort_log_meta'), ('trigger', 'cohort_changes_pruned'))";

/// A change log kept in a SQLite database.
#[derive(Clone, Debug)]
pub(crate) struct SqliteLog {
    pool: SqlitePool,
}

impl SqliteLog {
    pub(crate) fn new(pool: SqlitePool) -> Self {
        Self { pool }
    }

    /// Creates the log's tables if missing and (re)creates the triggers of `watch` that are missing
    /// or differ from this version's.
    pub(crate) async fn install(&self, watch: &WatchedTable) -> Result<(), ChangeLogError> {
        if let Some(column) = &watch.version_column {
            // A trigger naming a column the table lacks would fail every write of the table.
            let declared: Option<String> =
                sqlx::query_scalar("SELECT type FROM pragma_table_info(?) WHERE name = ?")
                    .bind(&watch.table)
                    .bind(column)
                    .fetch_optional(&self.pool)
                    .await?;
            let problem = match declared {
                None => Some("does not exist".to_owned()),
                Some(declared) => holds_no_integers(&declared)
                    .then(|| format!("is declared {declared:?}, which stores no integers")),
            };
            if let Some(problem) = problem {
                return Err(ChangeLogError::VersionColumn {
                    table: watch.table.clone(),
                    column: column.clone(),
                    problem,
                });
            }
        }
        self.ensure(&triggers(watch)).await
    }

    /// The last sequence number the log has handed out (0 for none).
    pub(crate) async fn head(&self) -> Result<LogPosition, ChangeLogError> {
        self.ensure(&[]).await?;
        let head: i64 = sqlx::query_scalar(
            "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'cohort_changes'), 0)",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(LogPosition::in_commit_order(head.unsigned_abs()))
    }

    /// Creates the log's tables and `triggers` unless they are current, in one transaction.
    async fn ensure(&self, triggers: &[Trigger]) -> Result<(), ChangeLogError> {
        {
            let mut conn = self.pool.acquire().await?;
            if schema_exists(&mut conn).await? && outdated(&mut conn, triggers).await?.is_empty() {
                return Ok(());
            }
        }
        // IMMEDIATE takes the write lock up front, waiting for it under the busy timeout; a
        // deferred transaction would fail at once when upgrading past a concurrent writer.
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        // Another node may have installed everything while this one waited for the lock.
        if !schema_exists(&mut tx).await? {
            for statement in SCHEMA {
                sqlx::query(*statement).execute(&mut *tx).await?;
            }
            // A log an older version created, before rows carried versions.
            if !has_version_column(&mut tx).await? {
                sqlx::query("ALTER TABLE cohort_changes ADD COLUMN version INTEGER")
                    .execute(&mut *tx)
                    .await?;
            }
        }
        for trigger in outdated(&mut tx, triggers).await? {
            let drop = format!("DROP TRIGGER IF EXISTS \"{}\"", trigger.name);
            for statement in [drop, trigger.sql.clone()] {
                sqlx::query(sqlx::AssertSqlSafe(statement))
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// Up to `limit` rows after `cursor`, with the prune watermark, from one snapshot.
    pub(crate) async fn read(
        &self,
        after: LogPosition,
        limit: u32,
    ) -> Result<LogBatch, ChangeLogError> {
        let mut tx = self.pool.begin().await?;
        let batch = read_in(&mut tx, after.seq, limit).await?;
        tx.commit().await?;
        Ok(batch)
    }

    /// Deletes rows older than `retention_ms` by the database's clock, oldest first, and advances
    /// the watermark, [`PRUNE_BATCH`] rows per statement. Returns how many rows it deleted.
    pub(crate) async fn prune(&self, retention_ms: i64) -> Result<u64, ChangeLogError> {
        prune_in_batches(|| async {
            let deleted = sqlx::query(
                "DELETE FROM cohort_changes WHERE seq IN ( \
                     SELECT seq FROM cohort_changes \
                     WHERE at_ms < CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) - ? \
                     ORDER BY seq LIMIT ?)",
            )
            .bind(retention_ms)
            .bind(PRUNE_BATCH as i64)
            .execute(&self.pool)
            .await?
            .rows_affected();
            Ok(deleted)
        })
        .await
    }
}

impl LogBackend for SqliteLog {
    fn install<'a>(&'a self, watch: &'a WatchedTable) -> BoxFuture<'a, Result<(), ChangeLogError>> {
        Box::pin(SqliteLog::install(self, watch))
    }

    fn head(&self) -> BoxFuture<'_, Result<LogPosition, ChangeLogError>> {
        Box::pin(SqliteLog::head(self))
    }

    fn read(
        &self,
        after: LogPosition,
        limit: u32,
    ) -> BoxFuture<'_, Result<LogBatch, ChangeLogError>> {
        Box::pin(SqliteLog::read(self, after, limit))
    }

    fn prune(&self, retention: Duration) -> BoxFuture<'_, Result<u64, ChangeLogError>> {
        Box::pin(SqliteLog::prune(self, retention_ms(retention)))
    }

    fn append<'a>(
        &'a self,
        cache: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<(), ChangeLogError>> {
        Box::pin(async move {
            sqlx::query("INSERT INTO cohort_changes (cache, key) VALUES (?, ?)")
                .bind(cache)
                .bind(key)
                .execute(&self.pool)
                .await?;
            Ok(())
        })
    }
}

async fn read_in(
    conn: &mut SqliteConnection,
    cursor: u64,
    limit: u32,
) -> Result<LogBatch, ChangeLogError> {
    let pruned: i64 = sqlx::query_scalar("SELECT pruned_through FROM cohort_log_meta WHERE id = 1")
        .fetch_one(&mut *conn)
        .await?;
    // Only the triggers write the log, but a version that is not a non-negative integer must
    // not fail the read: it invalidates.
    let rows = sqlx::query(
        "SELECT seq, cache, key, \
                CASE WHEN typeof(version) = 'integer' AND version >= 0 THEN version END \
         FROM cohort_changes WHERE seq > ? ORDER BY seq LIMIT ?",
    )
    .bind(i64::try_from(cursor).unwrap_or(i64::MAX))
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    let rows = rows
        .iter()
        .map(|row| {
            Ok(LogRow {
                at: LogPosition::in_commit_order(row.try_get::<i64, _>(0)?.unsigned_abs()),
                cache: row.try_get(1)?,
                key: row.try_get(2)?,
                version: row.try_get::<Option<i64>, _>(3)?.map(i64::unsigned_abs),
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    Ok(LogBatch {
        complete: rows.len() < limit as usize,
        rows,
        pruned_through: LogPosition::in_commit_order(pruned.unsigned_abs()),
        horizon: u64::MAX,
    })
}

/// Whether [`SCHEMA`]'s objects, the log's `version` column and the watermark's row exist.
async fn schema_exists(conn: &mut SqliteConnection) -> Result<bool, sqlx::Error> {
    let objects: i64 = sqlx::query_scalar(SCHEMA_OBJECTS)
        .fetch_one(&mut *conn)
        .await?;
    Ok(objects == 4
        && has_version_column(conn).await?
        && sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM cohort_log_meta WHERE id = 1)")
            .fetch_one(&mut *conn)
            .await?)
}

/// Whether `cohort_changes` has the `version` column (logs of older versions lack it).
async fn has_version_column(conn: &mut SqliteConnection) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pragma_table_info('cohort_changes') WHERE name = 'version')",
    )
    .fetch_one(&mut *conn)
    .await
}

/// Whether a column declared `declared` has TEXT or REAL affinity, which turns integers into
/// text or floating point (SQLite's rules, in their order: "Determination Of Column Affinity").
/// INTEGER, NUMERIC and undeclared (BLOB) columns keep integers as integers.
fn holds_no_integers(declared: &str) -> bool {
    let declared = declared.to_ascii_uppercase();
    let has = |part: &str| declared.contains(part);
    if has("INT") {
        return false;
    }
    if has("CHAR") || has("CLOB") || has("TEXT") {
        return true;
    }
    !has("BLOB") && (has("REAL") || has("FLOA") || has("DOUB"))
}

/// The triggers of `triggers` that are missing or whose stored SQL differs.
async fn outdated<'a>(
    conn: &mut SqliteConnection,
    triggers: &'a [Trigger],
) -> Result<Vec<&'a Trigger>, sqlx::Error> {
    let mut outdated = Vec::new();
    for trigger in triggers {
        let stored: Option<String> =
            sqlx::query_scalar("SELECT sql FROM sqlite_master WHERE type = 'trigger' AND name = ?")
                .bind(&trigger.name)
                .fetch_optional(&mut *conn)
                .await?;
        if stored.as_deref() != Some(trigger.sql.as_str()) {
            outdated.push(trigger);
        }
    }
    Ok(outdated)
}

/// A trigger that logs a watched table: its name and the statement that creates it, which is
/// also the text SQLite keeps for it in `sqlite_master.sql`.
struct Trigger {
    name: String,
    sql: String,
}

/// The three triggers that log `watch`'s table into the change log. An update that kept the key
/// and raised an integer version column logs the new version; CASE evaluates in order, so the
/// comparison only ever sees two integers.
fn triggers(watch: &WatchedTable) -> Vec<Trigger> {
    let cache = watch.cache.replace('\'', "''");
    let (table, column) = (&watch.table, &watch.key_column);
    let log = |row: &str| {
        format!(
            "INSERT INTO cohort_changes (cache, key) VALUES ('{cache}', CAST({row}.\"{column}\" AS TEXT));"
        )
    };
    let updated = match &watch.version_column {
        None => log("OLD"),
        Some(version) => format!(
            "INSERT INTO cohort_changes (cache, key, version) VALUES ('{cache}', \
             CAST(OLD.\"{column}\" AS TEXT), \
             CASE WHEN NEW.\"{column}\" IS OLD.\"{column}\" \
                   AND typeof(OLD.\"{version}\") = 'integer' \
                   AND typeof(NEW.\"{version}\") = 'integer' \
                   AND OLD.\"{version}\" >= 0 AND NEW.\"{version}\" > OLD.\"{version}\" \
             THEN NEW.\"{version}\" END);"
        ),
    };
    [
        ("ins", "INSERT", log("NEW")),
        (
            "upd",
            "UPDATE",
            format!(
                "{updated} INSERT INTO cohort_changes (cache, key) SELECT '{cache}', CAST(NEW.\"{column}\" AS TEXT) \
                 WHERE NEW.\"{column}\" IS NOT OLD.\"{column}\";",
            ),
        ),
        ("del", "DELETE", log("OLD")),
    ]
    .into_iter()
    .map(|(event, when, body)| {
        let name = format!("cohort_{}_{table}_{event}", hex(&watch.cache));
        let sql = format!("CREATE TRIGGER \"{name}\" AFTER {when} ON \"{table}\" BEGIN {body} END");
        Trigger { name, sql }
    })
    .collect()
}

/// Cache names may hold any character; trigger names get them as hex.
fn hex(text: &str) -> String {
    text.bytes().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use sqlx::sqlite::SqlitePoolOptions;

    use super::*;

    /// A log in a fresh in-memory database with a users table; one connection, so one database.
    async fn log() -> (SqliteLog, WatchedTable) {
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect("sqlite::memory:")
            .await
            .unwrap();
        sqlx::query("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
            .execute(&pool)
            .await
            .unwrap();
        let watch = WatchedTable {
            cache: "users".into(),
            table: "users".to_owned(),
            key_column: "id".to_owned(),
            version_column: None,
        };
        (SqliteLog::new(pool), watch)
    }

    /// Bumped by every schema change.
    async fn schema_version(log: &SqliteLog) -> i64 {
        sqlx::query_scalar("PRAGMA schema_version")
            .fetch_one(&log.pool)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn installing_what_is_installed_changes_nothing() {
        let (log, watch) = log().await;
        log.head().await.unwrap();
        log.install(&watch).await.unwrap();
        let installed = schema_version(&log).await;
        log.head().await.unwrap();
        log.install(&watch).await.unwrap();
        assert_eq!(schema_version(&log).await, installed);

        sqlx::query("INSERT INTO users VALUES (7, 'a')")
            .execute(&log.pool)
            .await
            .unwrap();
        let logged: Vec<String> = sqlx::query_scalar("SELECT key FROM cohort_changes")
            .fetch_all(&log.pool)
            .await
            .unwrap();
        assert_eq!(logged, ["7"]);
    }

    /// More rows than one statement deletes: all go, oldest first, and the watermark ends at the
    /// last.
    #[tokio::test]
    async fn pruning_goes_batch_by_batch_to_the_end() {
        let (log, watch) = log().await;
        log.install(&watch).await.unwrap();
        let rows = PRUNE_BATCH * 2 + 17;
        sqlx::query(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) \
             INSERT INTO users SELECT i, 'x' FROM n",
        )
        .bind(rows as i64)
        .execute(&log.pool)
        .await
        .unwrap();
        assert_eq!(log.prune(60_000).await.unwrap(), 0, "nothing is old yet");
        assert_eq!(log.prune(-60_000).await.unwrap(), rows);
        let batch = log.read(LogPosition::default(), 10).await.unwrap();
        assert!(batch.rows.is_empty());
        assert_eq!(batch.pruned_through, LogPosition::in_commit_order(rows));
    }

    #[tokio::test]
    async fn a_trigger_that_differs_is_replaced() {
        let (log, watch) = log().await;
        log.install(&watch).await.unwrap();
        let [insert, ..] = &triggers(&watch)[..] else {
            panic!("three triggers")
        };
        // As an older version might have left it: logs nothing.
        for statement in [
            format!("DROP TRIGGER \"{}\"", insert.name),
            format!(
                "CREATE TRIGGER \"{}\" AFTER INSERT ON users BEGIN SELECT 1; END",
                insert.name
            ),
        ] {
            sqlx::query(sqlx::AssertSqlSafe(statement))
                .execute(&log.pool)
                .await
                .unwrap();
        }
        log.install(&watch).await.unwrap();
        let mut conn = log.pool.acquire().await.unwrap();
        assert!(
            outdated(&mut conn, &triggers(&watch))
                .await
                .unwrap()
                .is_empty()
        );
        sqlx::query("INSERT INTO users VALUES (8, 'b')")
            .execute(&mut *conn)
            .await
            .unwrap();
        let logged: i64 = sqlx::query_scalar("SELECT count(*) FROM cohort_changes")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        assert_eq!(logged, 1);
    }

    /// A log over a users table with a version column, watched with it.
    async fn versioned_log() -> (SqliteLog, WatchedTable) {
        let (log, mut watch) = log().await;
        sqlx::query("ALTER TABLE users ADD COLUMN version INTEGER")
            .execute(&log.pool)
            .await
            .unwrap();
        watch.version_column = Some("version".to_owned());
        (log, watch)
    }

    /// Every row of the log after `after`, as (key, version).
    async fn logged(log: &SqliteLog, after: u64) -> Vec<(String, Option<u64>)> {
        let batch = log
            .read(LogPosition::in_commit_order(after), 100)
            .await
            .unwrap();
        batch.rows.into_iter().map(|r| (r.key, r.version)).collect()
    }

    async fn run(log: &SqliteLog, statement: &'static str) {
        sqlx::query(statement).execute(&log.pool).await.unwrap();
    }

    /// Only an update that kept the key and raised an integer version logs it: an outside
    /// writer that forgets to raise it, or lowers it, still invalidates.
    #[tokio::test]
    async fn only_an_update_that_raises_the_version_logs_it() {
        let (log, watch) = versioned_log().await;
        log.install(&watch).await.unwrap();
        run(&log, "INSERT INTO users VALUES (1, 'a', 1)").await;
        run(
            &log,
            "UPDATE users SET name = 'b', version = 2 WHERE id = 1",
        )
        .await;
        run(&log, "UPDATE users SET name = 'c' WHERE id = 1").await;
        run(&log, "UPDATE users SET version = 1 WHERE id = 1").await;
        run(&log, "UPDATE users SET version = 'x' WHERE id = 1").await;
        run(&log, "UPDATE users SET version = 3 WHERE id = 1").await;
        run(&log, "UPDATE users SET version = -1 WHERE id = 1").await;
        run(&log, "UPDATE users SET version = 5 WHERE id = 1").await;
        run(&log, "UPDATE users SET id = 2, version = 6 WHERE id = 1").await;
        run(&log, "DELETE FROM users WHERE id = 2").await;
        let key = |key: &str, version| (key.to_owned(), version);
        assert_eq!(
            logged(&log, 0).await,
            [
                key("1", None),    // insert
                key("1", Some(2)), // raised
                key("1", None),    // not raised
                key("1", None),    // lowered
                key("1", None),    // not an integer
                key("1", None),    // from text
                key("1", None),    // negative
                key("1", None),    // from a negative one
                key("1", None),    // the key changed: the old one
                key("2", None),    // and the new one
                key("2", None),    // delete
            ]
        );
    }

    /// Two caches on one table, one naming the version column: each logs its own rows.
    #[tokio::test]
    async fn a_cache_without_the_version_column_logs_none() {
        let (log, versioned) = versioned_log().await;
        let plain = WatchedTable {
            cache: "names".into(),
            version_column: None,
            ..versioned.clone()
        };
        log.install(&versioned).await.unwrap();
        log.install(&plain).await.unwrap();
        run(&log, "INSERT INTO users VALUES (1, 'a', 1)").await;
        let head = log.head().await.unwrap().seq;
        run(&log, "UPDATE users SET version = 2 WHERE id = 1").await;
        let batch = log
            .read(LogPosition::in_commit_order(head), 10)
            .await
            .unwrap();
        let mut rows: Vec<_> = batch.rows.iter().map(|r| (&*r.cache, r.version)).collect();
        rows.sort();
        assert_eq!(rows, [("names", None), ("users", Some(2))]);
    }

    /// A log an older cohort created has no version column: installing adds it, its rows stay
    /// readable (without versions) and new rows carry versions.
    #[tokio::test]
    async fn an_older_log_gains_the_version_column() {
        let (log, watch) = versioned_log().await;
        for statement in SCHEMA {
            let older = statement.replace("version INTEGER, ", "");
            sqlx::query(sqlx::AssertSqlSafe(older))
                .execute(&log.pool)
                .await
                .unwrap();
        }
        run(
            &log,
            "INSERT INTO cohort_changes (cache, key) VALUES ('users', '9')",
        )
        .await;
        let mut conn = log.pool.acquire().await.unwrap();
        assert!(!has_version_column(&mut conn).await.unwrap());
        drop(conn);

        log.install(&watch).await.unwrap();
        run(&log, "INSERT INTO users VALUES (1, 'a', 1)").await;
        run(&log, "UPDATE users SET version = 2 WHERE id = 1").await;
        assert_eq!(
            logged(&log, 0).await,
            [
                ("9".to_owned(), None),
                ("1".to_owned(), None),
                ("1".to_owned(), Some(2))
            ]
        );
        let installed = schema_version(&log).await;
        log.install(&watch).await.unwrap();
        assert_eq!(schema_version(&log).await, installed, "added once");
    }

    /// A missing column would fail every write of the table from the trigger; a text one would
    /// never log a version. Both are refused, and nothing is installed.
    #[tokio::test]
    async fn a_version_column_that_is_missing_or_not_an_integer_is_refused() {
        let (log, mut watch) = versioned_log().await;
        run(&log, "ALTER TABLE users ADD COLUMN stamp TEXT").await;
        for (column, problem) in [("nope", "does not exist"), ("stamp", "stores no integers")] {
            watch.version_column = Some(column.to_owned());
            let error = log.install(&watch).await.unwrap_err();
            assert!(
                matches!(&error, ChangeLogError::VersionColumn { column: c, .. } if c == column),
                "{error}"
            );
            assert!(error.to_string().contains(problem), "{error}");
        }
        run(&log, "INSERT INTO users (id, name) VALUES (1, 'a')").await;
        let triggers: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'users'",
        )
        .fetch_one(&log.pool)
        .await
        .unwrap();
        assert_eq!(triggers, 0);
    }

    #[test]
    fn declared_types_that_store_no_integers() {
        for declared in ["TEXT", "varchar(10)", "CLOB", "REAL", "double", "float"] {
            assert!(holds_no_integers(declared), "{declared}");
        }
        for declared in [
            "INTEGER",
            "bigint",
            "",
            "NUMERIC",
            "BLOB",
            "DECIMAL(10)",
            "POINT INT",
        ] {
            assert!(!holds_no_integers(declared), "{declared}");
        }
    }
}
