//! The change log in SQLite: a `cohort_changes` table filled by triggers on the watched tables.
//!
//! SQLite lets one writer commit at a time, and `AUTOINCREMENT` assigns sequence numbers inside
//! the writing transaction, so sequence order is commit order: a reader that has seen row `n` has
//! seen every row committed before it, and a cursor on `seq` never skips a row. `AUTOINCREMENT`
//! (not a plain rowid) also guarantees that a number is never reused after pruning deletes the
//! newest rows. A trigger on deletion records the highest number pruned in `cohort_log_meta`, read
//! in the same snapshot as the rows, so a node can tell that rows it never read are gone.
//!
//! The tailer never holds SQLite's single write lock across an await: pruning is one statement
//! (the trigger runs inside it), executed whole by the connection's worker thread. A node that is
//! frozen (SIGSTOP, a stalled runtime) at any point of its polling therefore never blocks the
//! application's writers.

use sqlx::sqlite::SqlitePool;
use sqlx::{Row as _, SqliteConnection};

use super::tail::{Batch, Position, Row};
use super::{ChangeLogError, Watch};

/// The log's tables; installing them is idempotent. Times are Unix milliseconds computed with
/// `julianday`, which every SQLite has (`unixepoch('subsec')` needs 3.42), since the triggers run
/// inside whatever SQLite library each writer of the database links.
const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS cohort_changes (\
        seq INTEGER PRIMARY KEY AUTOINCREMENT, \
        cache TEXT NOT NULL, \
        key TEXT NOT NULL, \
        at_ms INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)))",
    "CREATE INDEX IF NOT EXISTS cohort_changes_at_ms ON cohort_changes (at_ms)",
    "CREATE TABLE IF NOT EXISTS cohort_log_meta (\
        id INTEGER PRIMARY KEY CHECK (id = 1), \
        pruned_through INTEGER NOT NULL)",
    "INSERT OR IGNORE INTO cohort_log_meta (id, pruned_through) VALUES (1, 0)",
    "CREATE TRIGGER IF NOT EXISTS cohort_changes_pruned AFTER DELETE ON cohort_changes BEGIN \
        UPDATE cohort_log_meta SET pruned_through = MAX(pruned_through, OLD.seq) WHERE id = 1; END",
];

/// A change log kept in a SQLite database.
#[derive(Clone, Debug)]
pub(crate) struct SqliteLog {
    pool: SqlitePool,
}

impl SqliteLog {
    pub(crate) fn new(pool: SqlitePool) -> Self {
        Self { pool }
    }

    /// Creates the log's tables if missing and (re)creates the triggers of `watch`, in one
    /// transaction, so a concurrent writer either is logged or committed before.
    pub(crate) async fn install(&self, watch: &Watch) -> Result<(), ChangeLogError> {
        // IMMEDIATE takes the write lock up front, waiting for it under the busy timeout; a
        // deferred transaction would fail at once when upgrading past a concurrent writer.
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        for statement in SCHEMA {
            sqlx::query(*statement).execute(&mut *tx).await?;
        }
        for statement in trigger_sql(watch) {
            sqlx::query(sqlx::AssertSqlSafe(statement))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The last sequence number the log has handed out (0 for none).
    pub(crate) async fn head(&self) -> Result<Position, ChangeLogError> {
        let mut conn = self.pool.acquire().await?;
        for statement in SCHEMA {
            sqlx::query(*statement).execute(&mut *conn).await?;
        }
        let head: i64 = sqlx::query_scalar(
            "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'cohort_changes'), 0)",
        )
        .fetch_one(&mut *conn)
        .await?;
        Ok(Position::in_commit_order(head.unsigned_abs()))
    }

    /// Up to `limit` rows after `cursor`, with the prune watermark, from one snapshot.
    pub(crate) async fn read(&self, after: Position, limit: u32) -> Result<Batch, ChangeLogError> {
        let mut tx = self.pool.begin().await?;
        let batch = read_in(&mut tx, after.seq, limit).await?;
        tx.commit().await?;
        Ok(batch)
    }

    /// Deletes rows older than `retention_ms` by the database's clock and advances the watermark.
    /// Returns how many rows it deleted.
    pub(crate) async fn prune(&self, retention_ms: i64) -> Result<u64, ChangeLogError> {
        let deleted = sqlx::query(
            "DELETE FROM cohort_changes \
             WHERE at_ms < CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) - ?",
        )
        .bind(retention_ms)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(deleted)
    }
}

async fn read_in(
    conn: &mut SqliteConnection,
    cursor: u64,
    limit: u32,
) -> Result<Batch, ChangeLogError> {
    let pruned: i64 = sqlx::query_scalar("SELECT pruned_through FROM cohort_log_meta WHERE id = 1")
        .fetch_one(&mut *conn)
        .await?;
    let rows = sqlx::query(
        "SELECT seq, cache, key FROM cohort_changes WHERE seq > ? ORDER BY seq LIMIT ?",
    )
    .bind(i64::try_from(cursor).unwrap_or(i64::MAX))
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    let rows = rows
        .iter()
        .map(|row| {
            Ok(Row {
                at: Position::in_commit_order(row.try_get::<i64, _>(0)?.unsigned_abs()),
                cache: row.try_get(1)?,
                key: row.try_get(2)?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    Ok(Batch {
        complete: rows.len() < limit as usize,
        rows,
        pruned_through: Position::in_commit_order(pruned.unsigned_abs()),
        horizon: u64::MAX,
    })
}

/// Drops and recreates the three triggers that log `watch`'s table into the change log.
fn trigger_sql(watch: &Watch) -> Vec<String> {
    let cache = watch.cache.replace('\'', "''");
    let (table, column) = (&watch.table, &watch.key_column);
    let name = |event: &str| format!("\"cohort_{}_{table}_{event}\"", hex(&watch.cache));
    let log = |row: &str| {
        format!(
            "INSERT INTO cohort_changes (cache, key) VALUES ('{cache}', CAST({row}.\"{column}\" AS TEXT));"
        )
    };
    let mut statements = Vec::new();
    for (event, body) in [
        ("ins", log("NEW")),
        (
            "upd",
            format!(
                "{} INSERT INTO cohort_changes (cache, key) SELECT '{cache}', CAST(NEW.\"{column}\" AS TEXT) \
                 WHERE NEW.\"{column}\" IS NOT OLD.\"{column}\";",
                log("OLD")
            ),
        ),
        ("del", log("OLD")),
    ] {
        let when = match event {
            "ins" => "INSERT",
            "upd" => "UPDATE",
            _ => "DELETE",
        };
        statements.push(format!("DROP TRIGGER IF EXISTS {}", name(event)));
        statements.push(format!(
            "CREATE TRIGGER {} AFTER {when} ON \"{table}\" BEGIN {body} END",
            name(event)
        ));
    }
    statements
}

/// Cache names may hold any character; trigger names get them as hex.
fn hex(text: &str) -> String {
    text.bytes().map(|b| format!("{b:02x}")).collect()
}
