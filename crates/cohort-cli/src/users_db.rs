//! The users database of the demo and the example service: a SQLite file several nodes (and
//! processes) share.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

/// Opens the file, creating it if missing, in WAL mode with a busy timeout so that several
/// processes can share it.
pub(crate) async fn open(path: &Path, max_connections: u32) -> anyhow::Result<SqlitePool> {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(10));
    SqlitePoolOptions::new()
        .max_connections(max_connections)
        .connect_with(options)
        .await
        .with_context(|| format!("cannot open the database {}", path.display()))
}

/// Creates the users table if missing and users 1..=`count` that do not exist yet, named
/// `user-<id>` at version 1.
pub(crate) async fn ensure_users(db: &SqlitePool, count: u64) -> anyhow::Result<()> {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS users \
         (id INTEGER PRIMARY KEY, name TEXT NOT NULL, version INTEGER NOT NULL)",
    )
    .execute(db)
    .await
    .context("cannot create the users table")?;
    sqlx::query(
        "INSERT OR IGNORE INTO users (id, name, version) \
         WITH RECURSIVE ids(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM ids WHERE x < ?) \
         SELECT x, 'user-' || x, 1 FROM ids",
    )
    .bind(i64::try_from(count)?)
    .execute(db)
    .await
    .context("cannot seed the users table")?;
    Ok(())
}
