//! The change log in Postgres: a `cohort_changes` table filled by triggers on the watched tables,
//! tailed in transaction order below the oldest running transaction, with `NOTIFY` as a wake-up.
//!
//! # Why not a sequence cursor
//!
//! Postgres hands out sequence numbers when rows are inserted, not when they commit. Transaction
//! A inserts row 41 and stays open; transaction B inserts row 42 and commits; a tailer reads up to
//! 42 and moves its cursor there; A commits, and row 41 is never read: a change lost for good.
//! Each row therefore records its writing transaction (`xid xid8 DEFAULT pg_current_xact_id()`),
//! rows are read in `(xid, seq)` order, and the cursor only moves over rows of transactions below
//! `pg_snapshot_xmin(pg_current_snapshot())`, the oldest transaction still running when the read's
//! snapshot was taken: none of those can add a row, so nothing can appear behind the cursor. Rows
//! of younger transactions that have already committed are applied at once (the bound must not
//! wait for the oldest open transaction) and remembered until the cursor passes them; see
//! [`tail`](super::tail).
//!
//! Logical replication (pgoutput) would deliver changes in commit order too, but needs a
//! replication slot per node, the replication privilege, and a slot left behind by a dead node
//! holds WAL on the server until someone drops it; reading a table needs none of that.
//!
//! # Wake-ups
//!
//! The trigger also calls `pg_notify('cohort_changes', '')` (one notification per transaction:
//! Postgres folds identical ones), and each node listens on a connection of its own and polls as
//! soon as one arrives, so a change travels through the log in milliseconds. Notifications are
//! only a wake-up: the lease still rests on complete polls every Δ/4, so a lost notification or a
//! lost listening connection (reconnected with backoff) costs speed, never freshness.
//!
//! Installation runs in one transaction under an advisory lock, so nodes starting together do not
//! race on `CREATE TABLE IF NOT EXISTS`. It needs Postgres 14 or later (`xid8` functions,
//! `CREATE OR REPLACE TRIGGER`).

use std::time::Duration;

use sqlx::postgres::{PgListener, PgPool};
use sqlx::{Executor as _, Postgres, Row as _, Transaction};

use super::tail::{Batch, Position, Row};
use super::{ChangeLogError, Watch};
use crate::transport::backoff::Backoff;

/// The channel the triggers notify.
pub(crate) const CHANNEL: &str = "cohort_changes";

/// Taken (per transaction) while installing, so concurrent installs run one after another.
const INSTALL_LOCK: i64 = 0x636f_686f_7274; // "cohort"

/// The log's tables and the trigger function; installing them is idempotent.
pub(crate) const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS cohort_changes (
    seq   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    xid   xid8 NOT NULL DEFAULT pg_current_xact_id(),
    cache text NOT NULL,
    key   text NOT NULL,
    at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS cohort_changes_order ON cohort_changes (xid, seq);
CREATE INDEX IF NOT EXISTS cohort_changes_at ON cohort_changes (at);
CREATE TABLE IF NOT EXISTS cohort_log_meta (
    id          int PRIMARY KEY CHECK (id = 1),
    pruned_xid  xid8 NOT NULL,
    pruned_seq  bigint NOT NULL
);
INSERT INTO cohort_log_meta VALUES (1, '0', 0) ON CONFLICT (id) DO NOTHING;
CREATE OR REPLACE FUNCTION cohort_log_change() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    old_key text;
    new_key text;
BEGIN
    -- TG_ARGV: the cache's name, then the key column's name.
    IF TG_OP <> 'INSERT' THEN old_key := to_jsonb(OLD) ->> TG_ARGV[1]; END IF;
    IF TG_OP <> 'DELETE' THEN new_key := to_jsonb(NEW) ->> TG_ARGV[1]; END IF;
    IF old_key IS NOT NULL THEN
        INSERT INTO cohort_changes (cache, key) VALUES (TG_ARGV[0], old_key);
    END IF;
    IF new_key IS DISTINCT FROM old_key AND new_key IS NOT NULL THEN
        INSERT INTO cohort_changes (cache, key) VALUES (TG_ARGV[0], new_key);
    END IF;
    PERFORM pg_notify('cohort_changes', '');
    RETURN NULL;
END
$$;
"#;

/// A change log kept in a Postgres database.
#[derive(Clone, Debug)]
pub(crate) struct PostgresLog {
    pool: PgPool,
}

impl PostgresLog {
    pub(crate) fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Creates the log's tables if missing and (re)creates the trigger of `watch`, in one
    /// transaction, so a concurrent writer either is logged or committed before.
    pub(crate) async fn install(&self, watch: &Watch) -> Result<(), ChangeLogError> {
        let mut tx = self.schema().await?;
        tx.execute(sqlx::AssertSqlSafe(trigger_sql(watch))).await?;
        tx.commit().await?;
        Ok(())
    }

    /// A transaction that holds the install lock and has created the log's tables if missing.
    async fn schema(&self) -> Result<Transaction<'static, Postgres>, ChangeLogError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(INSTALL_LOCK)
            .execute(&mut *tx)
            .await?;
        tx.execute(SCHEMA).await?;
        Ok(tx)
    }

    /// A position no row committed from now on can precede: the oldest running transaction.
    pub(crate) async fn head(&self) -> Result<Position, ChangeLogError> {
        self.schema().await?.commit().await?;
        let horizon: i64 =
            sqlx::query_scalar("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
                .fetch_one(&self.pool)
                .await?;
        Ok(Position {
            txn: horizon.unsigned_abs(),
            seq: 0,
        })
    }

    /// Up to `limit` rows after `after`, with the prune watermark and the horizon, from one
    /// statement and so one snapshot.
    pub(crate) async fn read(&self, after: Position, limit: u32) -> Result<Batch, ChangeLogError> {
        let rows = sqlx::query(
            "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint, \
                    m.pruned_xid::text::bigint, m.pruned_seq, \
                    c.xid::text::bigint, c.seq, c.cache, c.key \
             FROM cohort_log_meta m \
             LEFT JOIN LATERAL ( \
                 SELECT xid, seq, cache, key FROM cohort_changes \
                 WHERE (xid, seq) > ($1::text::xid8, $2) \
                 ORDER BY xid, seq LIMIT $3 \
             ) c ON true \
             WHERE m.id = 1 \
             ORDER BY c.xid, c.seq",
        )
        .bind(after.txn.to_string())
        .bind(signed(after.seq))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        let mut batch = Batch {
            complete: true,
            ..Batch::default()
        };
        for row in &rows {
            batch.horizon = row.try_get::<i64, _>(0)?.unsigned_abs();
            batch.pruned_through = Position {
                txn: row.try_get::<i64, _>(1)?.unsigned_abs(),
                seq: row.try_get::<i64, _>(2)?.unsigned_abs(),
            };
            if let Some(txn) = row.try_get::<Option<i64>, _>(3)? {
                batch.rows.push(Row {
                    at: Position {
                        txn: txn.unsigned_abs(),
                        seq: row.try_get::<i64, _>(4)?.unsigned_abs(),
                    },
                    cache: row.try_get(5)?,
                    key: row.try_get(6)?,
                });
            }
        }
        batch.complete = batch.rows.len() < limit as usize;
        Ok(batch)
    }

    /// Deletes final rows older than `retention_ms` by the database's clock and advances the
    /// watermark over them, in one statement. Returns how many rows it deleted.
    pub(crate) async fn prune(&self, retention_ms: i64) -> Result<u64, ChangeLogError> {
        let deleted: i64 = sqlx::query_scalar(
            "WITH gone AS ( \
                 DELETE FROM cohort_changes \
                 WHERE at < now() - make_interval(secs => $1) \
                   AND xid < pg_snapshot_xmin(pg_current_snapshot()) \
                 RETURNING xid, seq), \
             last AS (SELECT xid, seq FROM gone ORDER BY xid DESC, seq DESC LIMIT 1), \
             moved AS ( \
                 UPDATE cohort_log_meta m SET pruned_xid = last.xid, pruned_seq = last.seq \
                 FROM last WHERE m.id = 1 AND (m.pruned_xid, m.pruned_seq) < (last.xid, last.seq) \
                 RETURNING 1) \
             SELECT count(*) FROM gone",
        )
        .bind(retention_ms as f64 / 1_000.0)
        .fetch_one(&self.pool)
        .await?;
        Ok(deleted.unsigned_abs())
    }

    /// Listens for the triggers' notifications and calls `wake` for each, and after every
    /// (re)connection, since notifications sent meanwhile are lost. Runs until the task is
    /// dropped; a failed connection is retried with backoff.
    pub(crate) async fn listen(&self, node: &str, wake: impl Fn()) {
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
        let mut failing = false;
        let mut listener: Option<PgListener> = None;
        loop {
            let outcome = match listener.as_mut() {
                Some(listener) => listener.try_recv().await.map(|n| n.is_some()),
                None => match PgListener::connect_with(&self.pool).await {
                    Ok(mut new) => match new.listen(CHANNEL).await {
                        Ok(()) => {
                            listener = Some(new);
                            // Changes made before the LISTEN took effect sent no wake-up.
                            Ok(false)
                        }
                        Err(error) => Err(error),
                    },
                    Err(error) => Err(error),
                },
            };
            match outcome {
                Ok(_) => {
                    if std::mem::take(&mut failing) {
                        tracing::info!(node, "listening for change-log notifications again");
                    }
                    backoff.reset();
                    wake();
                }
                Err(error) => {
                    if !std::mem::replace(&mut failing, true) {
                        tracing::warn!(node, %error, "lost the change-log notifications; polling every Δ/4 until they return");
                    }
                    listener = None;
                    let delay = backoff.next_delay(&mut rand::rng());
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
}

/// Drops and recreates the trigger that logs `watch`'s table into the change log.
fn trigger_sql(watch: &Watch) -> String {
    let (table, column) = (&watch.table, &watch.key_column);
    format!(
        "CREATE OR REPLACE TRIGGER \"cohort_{name}\" AFTER INSERT OR UPDATE OR DELETE ON \"{table}\" \
         FOR EACH ROW EXECUTE FUNCTION cohort_log_change({cache}, '{column}')",
        name = trigger_name(&watch.cache),
        cache = quote_literal(&watch.cache),
    )
}

/// A name for the trigger of `cache` that fits Postgres's 63-byte identifiers whatever the
/// cache's name: FNV-1a of it, in hex.
fn trigger_name(cache: &str) -> String {
    let hash = cache.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{hash:016x}")
}

fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

fn signed(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
