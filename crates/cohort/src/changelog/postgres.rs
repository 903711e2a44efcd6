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
//! # Versions
//!
//! A watch with a version column passes its name to the trigger as a third argument; an update
//! that kept the key and raised the column (read through `to_jsonb`, so any integer type works
//! and a value that is not a non-negative integer never fails the application's write) logs the
//! new version, every other change NULL. A log created by an older cohort gains the nullable
//! `version` column when a node installs; triggers of watches without a version column keep
//! their two arguments.
//!
//! # Wake-ups
//!
//! The trigger also calls `pg_notify('cohort_changes', '')` (one notification per transaction:
//! Postgres folds identical ones), and each node listens on a connection of its own and polls as
//! soon as one arrives, so a change travels through the log in milliseconds. Notifications are
//! only a wake-up: the lease still rests on complete polls every Δ/4, so a lost notification or a
//! lost listening connection (reconnected with backoff) costs speed, never freshness.
//!
//! # Installation
//!
//! Every node installs the log when it starts, and nodes start while the application writes.
//! Each piece (the tables, the function, one trigger per watched table) is first compared with
//! the catalogs, and only a piece that is missing or differs from this version's is (re)created,
//! so a restart of a current node takes no lock the application's writes could wait for. A piece
//! that must be created runs in a short transaction of its own, after the install advisory lock
//! (nodes starting together on a fresh database would race on `CREATE TABLE IF NOT EXISTS`) and a
//! second look at the catalogs. The trigger's transaction locks the watched table before
//! anything else and touches nothing of the log: an application write locks the watched table,
//! then the log from its trigger, and DDL that held the log while it waited for the table (as
//! `CREATE INDEX IF NOT EXISTS` does even when the index exists) would make a deadlock that
//! Postgres breaks by failing the application's write. DDL waits for a lock at most
//! [`LOCK_TIMEOUT`] (application writes queue behind it meanwhile), then gives up and retries
//! later. It needs Postgres 14 or later (`xid8` functions, `CREATE OR REPLACE TRIGGER`).

use std::time::Duration;

use sqlx::postgres::{PgConnection, PgListener, PgPool};
use sqlx::{Acquire as _, Executor as _, Row as _};

use super::tail::{LogBatch, LogPosition, LogRow};
use super::{
    ChangeLogError, LogBackend, PRUNE_BATCH, WatchedTable, prune_in_batches, retention_ms,
};
use crate::transport::BoxFuture;
use crate::transport::backoff::Backoff;

/// The channel the triggers notify.
pub(crate) const CHANNEL: &str = "cohort_changes";

/// Taken (per transaction) while installing, so concurrent installs run one after another.
const INSTALL_LOCK: i64 = 0x636f_686f_7274; // "cohort"

/// How long installation DDL waits for a table lock. Writes to the table queue behind the waiting
/// DDL, so this bounds how long they stall; it is also well under Postgres's default
/// `deadlock_timeout` (1 s), so DDL caught in a wait queue gives up before any deadlock check
/// could fail an application transaction instead.
const LOCK_TIMEOUT: Duration = Duration::from_millis(100);

/// Attempts of one piece of DDL whose lock wait timed out, before the install reports the
/// failure (the tailer tries again at its next poll).
const LOCK_ATTEMPTS: u32 = 8;

/// The log's tables; creating them is idempotent.
const TABLES: &str = r#"
CREATE TABLE IF NOT EXISTS cohort_changes (
    seq   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    xid   xid8 NOT NULL DEFAULT pg_current_xact_id(),
    cache text NOT NULL,
    key   text NOT NULL,
    version bigint,
    at    timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE cohort_changes ADD COLUMN IF NOT EXISTS version bigint;
CREATE INDEX IF NOT EXISTS cohort_changes_order ON cohort_changes (xid, seq);
CREATE INDEX IF NOT EXISTS cohort_changes_at ON cohort_changes (at);
CREATE TABLE IF NOT EXISTS cohort_log_meta (
    id          int PRIMARY KEY CHECK (id = 1),
    pruned_xid  xid8 NOT NULL,
    pruned_seq  bigint NOT NULL
);
INSERT INTO cohort_log_meta VALUES (1, '0', 0) ON CONFLICT (id) DO NOTHING;
"#;

/// Whether the tables, columns and indexes of [`TABLES`] exist. (`cohort_log_meta`'s row is
/// checked apart, since the table may not exist.)
const TABLES_EXIST: &str = "\
SELECT EXISTS (SELECT FROM pg_class WHERE oid = to_regclass('cohort_changes') AND relkind = 'r') \
   AND EXISTS (SELECT FROM pg_attribute WHERE attrelid = to_regclass('cohort_changes') \
        AND attname = 'version' AND NOT attisdropped) \
   AND EXISTS (SELECT FROM pg_class WHERE oid = to_regclass('cohort_log_meta') AND relkind = 'r') \
   AND (SELECT count(*) FROM pg_index WHERE indrelid = to_regclass('cohort_changes') \
        AND indexrelid IN (to_regclass('cohort_changes_order'), to_regclass('cohort_changes_at'))) = 2";

/// The trigger function's body, as `pg_proc.prosrc` keeps it: compared before replacing.
const FUNCTION_BODY: &str = r#"
DECLARE
    old_row jsonb;
    new_row jsonb;
    old_key text;
    new_key text;
    old_version bigint;
    new_version bigint;
BEGIN
    -- TG_ARGV: the cache's name, the key column's name, then the version column's name if the
    -- cache named one.
    IF TG_OP <> 'INSERT' THEN old_row := to_jsonb(OLD); old_key := old_row ->> TG_ARGV[1]; END IF;
    IF TG_OP <> 'DELETE' THEN new_row := to_jsonb(NEW); new_key := new_row ->> TG_ARGV[1]; END IF;
    -- Only an update that kept the key and raised the version logs it. CASE evaluates in order,
    -- so the cast never sees text that is not a non-negative integer.
    IF TG_OP = 'UPDATE' AND TG_NARGS > 2 AND new_key IS NOT DISTINCT FROM old_key THEN
        old_version := CASE WHEN old_row ->> TG_ARGV[2] ~ '^[0-9]{1,18}$'
                            THEN (old_row ->> TG_ARGV[2])::bigint END;
        new_version := CASE WHEN new_row ->> TG_ARGV[2] ~ '^[0-9]{1,18}$'
                            THEN (new_row ->> TG_ARGV[2])::bigint END;
        IF old_version IS NULL OR new_version <= old_version THEN new_version := NULL; END IF;
    END IF;
    IF old_key IS NOT NULL THEN
        INSERT INTO cohort_changes (cache, key, version) VALUES (TG_ARGV[0], old_key, new_version);
    END IF;
    IF new_key IS DISTINCT FROM old_key AND new_key IS NOT NULL THEN
        INSERT INTO cohort_changes (cache, key) VALUES (TG_ARGV[0], new_key);
    END IF;
    PERFORM pg_notify('cohort_changes', '');
    RETURN NULL;
END
"#;

/// `pg_trigger.tgtype` of [`trigger_sql`]'s trigger: ROW (1) | INSERT (4) | DELETE (8) |
/// UPDATE (16); no BEFORE (2) or INSTEAD (64) bit, so AFTER.
const TRIGGER_TYPE: i16 = 1 | 4 | 8 | 16;

/// One piece of the installation, compared and created on its own.
#[derive(Clone, Copy, Debug)]
enum Piece<'a> {
    Tables,
    Function,
    Trigger(&'a WatchedTable),
}

impl Piece<'_> {
    /// Whether the catalogs already hold this piece as this version creates it.
    async fn is_current(self, conn: &mut PgConnection) -> Result<bool, sqlx::Error> {
        match self {
            Self::Tables => {
                let exist: bool = sqlx::query_scalar(TABLES_EXIST)
                    .fetch_one(&mut *conn)
                    .await?;
                Ok(exist
                    && sqlx::query_scalar(
                        "SELECT EXISTS (SELECT FROM cohort_log_meta WHERE id = 1)",
                    )
                    .fetch_one(&mut *conn)
                    .await?)
            }
            Self::Function => {
                let body: Option<String> = sqlx::query_scalar(
                    "SELECT prosrc FROM pg_proc WHERE oid = to_regprocedure('cohort_log_change()')",
                )
                .fetch_optional(&mut *conn)
                .await?;
                Ok(body.as_deref() == Some(FUNCTION_BODY))
            }
            Self::Trigger(watch) => {
                sqlx::query_scalar(
                    "SELECT EXISTS (SELECT FROM pg_trigger \
                     WHERE tgrelid = to_regclass($1) AND tgname = $2 AND NOT tgisinternal \
                       AND tgfoid = to_regprocedure('cohort_log_change()') \
                       AND tgtype = $3 AND tgenabled = 'O' AND tgnargs = $5 AND tgargs = $4 \
                       AND cardinality(tgattr::int2[]) = 0 AND tgqual IS NULL \
                       AND tgconstraint = 0 AND tgoldtable IS NULL AND tgnewtable IS NULL)",
                )
                .bind(format!("\"{}\"", watch.table))
                .bind(format!("cohort_{}", trigger_name(&watch.cache)))
                .bind(TRIGGER_TYPE)
                .bind(trigger_args(watch))
                .bind(if watch.version_column.is_some() {
                    3_i16
                } else {
                    2
                })
                .fetch_one(&mut *conn)
                .await
            }
        }
    }

    /// (Re)creates this piece in `conn`'s transaction.
    async fn create(self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        match self {
            Self::Tables => conn.execute(TABLES).await.map(drop),
            Self::Function => conn
                .execute(sqlx::AssertSqlSafe(format!(
                    "CREATE OR REPLACE FUNCTION cohort_log_change() RETURNS trigger \
                     LANGUAGE plpgsql AS $cohort${FUNCTION_BODY}$cohort$"
                )))
                .await
                .map(drop),
            Self::Trigger(watch) => {
                // The watched table first, as the application's writes lock it: see the module
                // docs.
                conn.execute(sqlx::AssertSqlSafe(format!(
                    "LOCK TABLE \"{}\" IN SHARE ROW EXCLUSIVE MODE",
                    watch.table
                )))
                .await?;
                conn.execute(sqlx::AssertSqlSafe(trigger_sql(watch)))
                    .await
                    .map(drop)
            }
        }
    }
}

/// A change log kept in a Postgres database.
#[derive(Clone, Debug)]
pub(crate) struct PostgresLog {
    pool: PgPool,
}

impl PostgresLog {
    pub(crate) fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Creates the log's tables and function if missing or outdated and (re)creates the trigger
    /// of `watch` if missing or different; a concurrent writer either is logged or committed
    /// before the trigger.
    pub(crate) async fn install(&self, watch: &WatchedTable) -> Result<(), ChangeLogError> {
        if let Some(column) = &watch.version_column {
            let kind: Option<String> = sqlx::query_scalar(
                "SELECT format_type(atttypid, NULL) FROM pg_attribute \
                 WHERE attrelid = to_regclass($1) AND attname = $2 AND attnum > 0 \
                   AND NOT attisdropped",
            )
            .bind(format!("\"{}\"", watch.table))
            .bind(column)
            .fetch_optional(&self.pool)
            .await?;
            let problem = match kind.as_deref() {
                None => Some("does not exist".to_owned()),
                Some("smallint" | "integer" | "bigint" | "numeric") => None,
                Some(kind) => Some(format!("is of type {kind}, not an integer type")),
            };
            if let Some(problem) = problem {
                return Err(ChangeLogError::VersionColumn {
                    table: watch.table.clone(),
                    column: column.clone(),
                    problem,
                });
            }
        }
        for piece in [Piece::Tables, Piece::Function, Piece::Trigger(watch)] {
            self.ensure(piece).await?;
        }
        Ok(())
    }

    /// Creates `piece` unless the catalogs show it current, retrying when a lock wait times out.
    async fn ensure(&self, piece: Piece<'_>) -> Result<(), ChangeLogError> {
        let mut conn = self.pool.acquire().await?;
        if piece.is_current(&mut conn).await? {
            return Ok(());
        }
        let mut backoff = Backoff::new(LOCK_TIMEOUT, 8 * LOCK_TIMEOUT);
        let mut attempts = 1;
        loop {
            match create(&mut conn, piece).await {
                Err(error) if lock_timed_out(&error) && attempts < LOCK_ATTEMPTS => {
                    attempts += 1;
                    tracing::debug!(?piece, %error, "installing the change log waits for a lock");
                    let delay = backoff.next_delay(&mut rand::rng());
                    tokio::time::sleep(delay).await;
                }
                outcome => return Ok(outcome?),
            }
        }
    }

    /// A position no row committed from now on can precede: the oldest running transaction.
    pub(crate) async fn head(&self) -> Result<LogPosition, ChangeLogError> {
        self.ensure(Piece::Tables).await?;
        let horizon: i64 =
            sqlx::query_scalar("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
                .fetch_one(&self.pool)
                .await?;
        Ok(LogPosition {
            txn: horizon.unsigned_abs(),
            seq: 0,
        })
    }

    /// Up to `limit` rows after `after`, with the prune watermark and the horizon, from one
    /// statement and so one snapshot.
    pub(crate) async fn read(
        &self,
        after: LogPosition,
        limit: u32,
    ) -> Result<LogBatch, ChangeLogError> {
        let rows = sqlx::query(
            "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint, \
                    m.pruned_xid::text::bigint, m.pruned_seq, \
                    c.xid::text::bigint, c.seq, c.cache, c.key, \
                    CASE WHEN c.version >= 0 THEN c.version END \
             FROM cohort_log_meta m \
             LEFT JOIN LATERAL ( \
                 SELECT xid, seq, cache, key, version FROM cohort_changes \
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
        let mut batch = LogBatch {
            complete: true,
            ..LogBatch::default()
        };
        for row in &rows {
            batch.horizon = row.try_get::<i64, _>(0)?.unsigned_abs();
            batch.pruned_through = LogPosition {
                txn: row.try_get::<i64, _>(1)?.unsigned_abs(),
                seq: row.try_get::<i64, _>(2)?.unsigned_abs(),
            };
            if let Some(txn) = row.try_get::<Option<i64>, _>(3)? {
                batch.rows.push(LogRow {
                    at: LogPosition {
                        txn: txn.unsigned_abs(),
                        seq: row.try_get::<i64, _>(4)?.unsigned_abs(),
                    },
                    cache: row.try_get(5)?,
                    key: row.try_get(6)?,
                    version: row.try_get::<Option<i64>, _>(7)?.map(i64::unsigned_abs),
                });
            }
        }
        batch.complete = batch.rows.len() < limit as usize;
        Ok(batch)
    }

    /// Deletes final rows older than `retention_ms` by the database's clock, oldest first, and
    /// advances the watermark over them, [`PRUNE_BATCH`] rows per statement. Returns how many
    /// rows it deleted.
    pub(crate) async fn prune(&self, retention_ms: i64) -> Result<u64, ChangeLogError> {
        prune_in_batches(|| self.prune_batch(retention_ms)).await
    }

    async fn prune_batch(&self, retention_ms: i64) -> Result<u64, ChangeLogError> {
        let deleted: i64 = sqlx::query_scalar(
            "WITH gone AS ( \
                 DELETE FROM cohort_changes WHERE (xid, seq) IN ( \
                     SELECT xid, seq FROM cohort_changes \
                     WHERE at < now() - make_interval(secs => $1) \
                       AND xid < pg_snapshot_xmin(pg_current_snapshot()) \
                     ORDER BY xid, seq LIMIT $2) \
                 RETURNING xid, seq), \
             last AS (SELECT xid, seq FROM gone ORDER BY xid DESC, seq DESC LIMIT 1), \
             moved AS ( \
                 UPDATE cohort_log_meta m SET pruned_xid = last.xid, pruned_seq = last.seq \
                 FROM last WHERE m.id = 1 AND (m.pruned_xid, m.pruned_seq) < (last.xid, last.seq) \
                 RETURNING 1) \
             SELECT count(*) FROM gone",
        )
        .bind(retention_ms as f64 / 1_000.0)
        .bind(PRUNE_BATCH as i64)
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

impl LogBackend for PostgresLog {
    fn install<'a>(&'a self, watch: &'a WatchedTable) -> BoxFuture<'a, Result<(), ChangeLogError>> {
        Box::pin(PostgresLog::install(self, watch))
    }

    fn head(&self) -> BoxFuture<'_, Result<LogPosition, ChangeLogError>> {
        Box::pin(PostgresLog::head(self))
    }

    fn read(
        &self,
        after: LogPosition,
        limit: u32,
    ) -> BoxFuture<'_, Result<LogBatch, ChangeLogError>> {
        Box::pin(PostgresLog::read(self, after, limit))
    }

    fn prune(&self, retention: Duration) -> BoxFuture<'_, Result<u64, ChangeLogError>> {
        Box::pin(PostgresLog::prune(self, retention_ms(retention)))
    }

    fn append<'a>(
        &'a self,
        cache: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<(), ChangeLogError>> {
        Box::pin(async move {
            // One statement, so one transaction: the row and the wake-up commit together.
            sqlx::query(
                "WITH logged AS (INSERT INTO cohort_changes (cache, key) VALUES ($1, $2)) \
                 SELECT pg_notify('cohort_changes', '')",
            )
            .bind(cache)
            .bind(key)
            .execute(&self.pool)
            .await?;
            Ok(())
        })
    }

    fn listen<'a>(
        &'a self,
        node: &'a str,
        wake: &'a (dyn Fn() + Send + Sync),
    ) -> BoxFuture<'a, ()> {
        Box::pin(PostgresLog::listen(self, node, wake))
    }
}

/// In one transaction under the install lock: creates `piece` unless another node did meanwhile.
async fn create(conn: &mut PgConnection, piece: Piece<'_>) -> Result<(), sqlx::Error> {
    let mut tx = conn.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(INSTALL_LOCK)
        .execute(&mut *tx)
        .await?;
    if !piece.is_current(&mut tx).await? {
        tx.execute(sqlx::AssertSqlSafe(format!(
            "SET LOCAL lock_timeout = {}",
            LOCK_TIMEOUT.as_millis()
        )))
        .await?;
        piece.create(&mut tx).await?;
    }
    tx.commit().await
}

/// Whether `error` is a lock wait that ran past `lock_timeout` (SQLSTATE 55P03).
fn lock_timed_out(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .and_then(|error| error.code())
        .is_some_and(|code| code == "55P03")
}

/// Creates or replaces the trigger that logs `watch`'s table into the change log.
fn trigger_sql(watch: &WatchedTable) -> String {
    let (table, column) = (&watch.table, &watch.key_column);
    let version = watch
        .version_column
        .as_ref()
        .map(|version| format!(", '{version}'"))
        .unwrap_or_default();
    format!(
        "CREATE OR REPLACE TRIGGER \"cohort_{name}\" AFTER INSERT OR UPDATE OR DELETE ON \"{table}\" \
         FOR EACH ROW EXECUTE FUNCTION cohort_log_change({cache}, '{column}'{version})",
        name = trigger_name(&watch.cache),
        cache = quote_literal(&watch.cache),
    )
}

/// `pg_trigger.tgargs` of `watch`'s trigger: each argument followed by a NUL.
fn trigger_args(watch: &WatchedTable) -> Vec<u8> {
    [watch.cache.as_bytes(), watch.key_column.as_bytes()]
        .into_iter()
        .chain(watch.version_column.as_deref().map(str::as_bytes))
        .flat_map(|arg| [arg, b"\0"])
        .collect::<Vec<_>>()
        .concat()
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
