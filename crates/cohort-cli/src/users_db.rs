//! The users database of the demo, `cohort serve` and `cohort check`: a SQLite file several
//! nodes (and processes) share, or a Postgres database.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use cohort::ChangeLog;
use sqlx::SqlitePool;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

/// How long opening and writing wait for other processes' locks on the file.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Taken (per transaction) while creating and seeding the users table in Postgres.
const USERS_LOCK: i64 = 0x0075_7365_7273; // "users"

/// Teams in a new database, 0..TEAMS; user `id` joins team `id % TEAMS`.
pub(crate) const TEAMS: i64 = 4;

/// Opens the file, creating it if missing, in WAL mode with a busy timeout so that several
/// processes can share it.
pub(crate) async fn open(path: &Path, max_connections: u32) -> anyhow::Result<SqlitePool> {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(BUSY_TIMEOUT);
    let deadline = Instant::now() + BUSY_TIMEOUT;
    let mut delay = Duration::from_millis(1);
    loop {
        let opened = SqlitePoolOptions::new()
            .max_connections(max_connections)
            .connect_with(options.clone())
            .await;
        match opened {
            // Switching a new file to WAL reads its header in a read transaction, then upgrades
            // it to a write transaction to rewrite it. SQLite does not call the busy handler for
            // that upgrade (two upgraders waiting for each other would deadlock), so a process
            // that does it while another is switching the file fails at once with SQLITE_BUSY.
            // Retried, it finds the file in WAL and writes nothing.
            Err(error) if is_busy(&error) && Instant::now() < deadline => {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_millis(100));
            }
            opened => {
                return opened
                    .with_context(|| format!("cannot open the database {}", path.display()));
            }
        }
    }
}

/// Whether `error` is SQLite's SQLITE_BUSY, with any extended code (kept above the low byte).
fn is_busy(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .and_then(|error| error.code())
        .and_then(|code| code.parse::<i32>().ok())
        .is_some_and(|code| code & 0xff == 5)
}

/// Creates the users and teams tables if missing, teams 0..[`TEAMS`] and users 1..=`count` that
/// do not exist yet, named `team-<id>` and `user-<id>` at version 1.
pub(crate) async fn ensure_users(db: &SqlitePool, count: u64) -> anyhow::Result<()> {
    // One transaction that takes the write lock up front (waiting under the busy timeout): of
    // processes starting together on a new file, the first creates and seeds the table and the
    // others find it done.
    let mut tx = db
        .begin_with("BEGIN IMMEDIATE")
        .await
        .context("cannot create the users table")?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS users (id INTEGER PRIMARY KEY, name TEXT NOT NULL, \
         version INTEGER NOT NULL, team INTEGER NOT NULL DEFAULT 0)",
    )
    .execute(&mut *tx)
    .await
    .context("cannot create the users table")?;
    // A file made before users had teams: its users join team 0, unchanged otherwise (their
    // version is what the change log compares, so moving them would need a bump).
    let has_team: bool = sqlx::query_scalar(
        "SELECT count(*) > 0 FROM pragma_table_info('users') WHERE name = 'team'",
    )
    .fetch_one(&mut *tx)
    .await
    .context("cannot read the users table's columns")?;
    if !has_team {
        sqlx::query("ALTER TABLE users ADD COLUMN team INTEGER NOT NULL DEFAULT 0")
            .execute(&mut *tx)
            .await
            .context("cannot add the team column")?;
    }
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS teams \
         (id INTEGER PRIMARY KEY, name TEXT NOT NULL, version INTEGER NOT NULL)",
    )
    .execute(&mut *tx)
    .await
    .context("cannot create the teams table")?;
    sqlx::query(
        "INSERT OR IGNORE INTO teams (id, name, version) \
         WITH RECURSIVE ids(x) AS (SELECT 0 UNION ALL SELECT x + 1 FROM ids WHERE x < ?) \
         SELECT x, 'team-' || x, 1 FROM ids",
    )
    .bind(TEAMS - 1)
    .execute(&mut *tx)
    .await
    .context("cannot seed the teams table")?;
    sqlx::query(
        "INSERT OR IGNORE INTO users (id, name, version, team) \
         WITH RECURSIVE ids(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM ids WHERE x < ?) \
         SELECT x, 'user-' || x, 1, x % ? FROM ids",
    )
    .bind(i64::try_from(count)?)
    .bind(TEAMS)
    .execute(&mut *tx)
    .await
    .context("cannot seed the users table")?;
    tx.commit().await.context("cannot seed the users table")?;
    Ok(())
}

/// Creates the Postgres users table if missing and users 1..=`count` that do not exist yet.
async fn ensure_users_in_postgres(db: &PgPool, count: i64) -> anyhow::Result<()> {
    // A node restarting under load finds everything in place and writes nothing: seeding would
    // wait for every row that an application transaction holds.
    let exists: bool = sqlx::query_scalar(
        "SELECT to_regclass('users') IS NOT NULL AND to_regclass('teams') IS NOT NULL \
         AND EXISTS (SELECT 1 FROM information_schema.columns \
                     WHERE table_name = 'users' AND column_name = 'team' \
                     AND table_schema = current_schema())",
    )
    .fetch_one(db)
    .await
    .context("cannot look for the users table")?;
    if exists {
        let seeded: i64 =
            sqlx::query_scalar("SELECT count(*) FROM users WHERE id BETWEEN 1 AND $1")
                .bind(count)
                .fetch_one(db)
                .await
                .context("cannot count the users")?;
        if seeded == count {
            return Ok(());
        }
    }
    let mut tx = db.begin().await.context("cannot create the users table")?;
    // Two sessions running CREATE TABLE IF NOT EXISTS at once can both find the table missing,
    // and one then fails on the catalogs' unique indexes: nodes starting together take turns.
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(USERS_LOCK)
        .execute(&mut *tx)
        .await
        .context("cannot create the users table")?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS users (id bigint PRIMARY KEY, name text NOT NULL, \
         version bigint NOT NULL, team bigint NOT NULL DEFAULT 0)",
    )
    .execute(&mut *tx)
    .await
    .context("cannot create the users table")?;
    // A database made before users had teams: its users join team 0 (see `ensure_users`).
    sqlx::query("ALTER TABLE users ADD COLUMN IF NOT EXISTS team bigint NOT NULL DEFAULT 0")
        .execute(&mut *tx)
        .await
        .context("cannot add the team column")?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS teams \
         (id bigint PRIMARY KEY, name text NOT NULL, version bigint NOT NULL)",
    )
    .execute(&mut *tx)
    .await
    .context("cannot create the teams table")?;
    sqlx::query(
        "INSERT INTO teams (id, name, version) \
         SELECT x, 'team-' || x, 1 FROM generate_series(0, $1 - 1) x \
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(TEAMS)
    .execute(&mut *tx)
    .await
    .context("cannot seed the teams table")?;
    sqlx::query(
        "INSERT INTO users (id, name, version, team) \
         SELECT x, 'user-' || x, 1, x % $2 FROM generate_series(1, $1) x \
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(count)
    .bind(TEAMS)
    .execute(&mut *tx)
    .await
    .context("cannot seed the users table")?;
    tx.commit().await.context("cannot seed the users table")?;
    Ok(())
}

/// A user as stored, with its team as the join found it (none if the row names no team).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct UserRow {
    pub(crate) id: i64,
    pub(crate) name: String,
    /// The users row's version column: what the change log compares.
    pub(crate) version: i64,
    pub(crate) team: i64,
    pub(crate) team_name: Option<String>,
    pub(crate) team_version: Option<i64>,
}

type Joined = (i64, String, i64, i64, Option<String>, Option<i64>);

impl From<Joined> for UserRow {
    fn from((id, name, version, team, team_name, team_version): Joined) -> Self {
        Self {
            id,
            name,
            version,
            team,
            team_name,
            team_version,
        }
    }
}

impl UserRow {
    /// The version of what a read shows: the user's row and its team's, so that it grows with
    /// a change of either (both columns only increase).
    pub(crate) fn shown_version(&self) -> i64 {
        self.version + self.team_version.unwrap_or(0)
    }
}

/// A user's version after a change of its team, as [`UserRow::shown_version`] counts it.
pub(crate) type Bumped = (i64, i64);

/// Users with their teams, in one statement (one snapshot); a macro, so that `concat!` makes
/// each query a literal.
macro_rules! select_users {
    ($filter:literal) => {
        concat!(
            "SELECT u.id, u.name, u.version, u.team, t.name, t.version \
             FROM users u LEFT JOIN teams t ON t.id = u.team WHERE ",
            $filter
        )
    };
}

/// The users database of `cohort serve` and `cohort check`: a SQLite file or a Postgres
/// database, named by a `--db` URL.
#[derive(Clone, Debug)]
pub(crate) enum UsersDb {
    Sqlite { pool: SqlitePool, path: PathBuf },
    Postgres { pool: PgPool, url: String },
}

/// Runs the same sqlx expression on whichever pool the database has; SQLite accepts Postgres's
/// `$1` placeholders, so one SQL text serves both where the dialects agree.
macro_rules! on_pool {
    ($db:expr, |$pool:ident| $body:expr) => {
        match $db {
            UsersDb::Sqlite { pool: $pool, .. } => $body,
            UsersDb::Postgres { pool: $pool, .. } => $body,
        }
    };
}

impl UsersDb {
    /// Connects to `url`: `sqlite://path` (created if missing) or `postgres://…`.
    pub(crate) async fn connect(url: &str, max_connections: u32) -> anyhow::Result<Self> {
        match parse_url(url)? {
            Url::Sqlite(path) => Ok(Self::Sqlite {
                pool: open(&path, max_connections).await?,
                path,
            }),
            Url::Postgres => {
                let pool = PgPoolOptions::new()
                    .max_connections(max_connections)
                    .acquire_timeout(Duration::from_secs(5))
                    .connect(url)
                    .await
                    .with_context(|| format!("cannot connect to {}", redact(url)))?;
                Ok(Self::Postgres {
                    pool,
                    url: url.to_owned(),
                })
            }
        }
    }

    /// The URL to hand to another process.
    pub(crate) fn url(&self) -> String {
        match self {
            Self::Sqlite { path, .. } => format!("sqlite://{}", path.display()),
            Self::Postgres { url, .. } => url.clone(),
        }
    }

    /// The URL without its password, for printing.
    pub(crate) fn display(&self) -> String {
        redact(&self.url())
    }

    pub(crate) fn change_log(&self) -> ChangeLog {
        match self {
            Self::Sqlite { pool, .. } => ChangeLog::sqlite(pool.clone()),
            Self::Postgres { pool, .. } => ChangeLog::postgres(pool.clone()),
        }
    }

    /// Creates the users table if missing and users 1..=`count` that do not exist yet, named
    /// `user-<id>` at version 1.
    pub(crate) async fn ensure_users(&self, count: u64) -> anyhow::Result<()> {
        let count = i64::try_from(count)?;
        match self {
            Self::Sqlite { pool, .. } => ensure_users(pool, count.unsigned_abs()).await,
            Self::Postgres { pool, .. } => ensure_users_in_postgres(pool, count).await,
        }
    }

    pub(crate) async fn user(&self, id: i64) -> Result<UserRow, sqlx::Error> {
        on_pool!(self, |pool| sqlx::query_as::<_, Joined>(select_users!(
            "u.id = $1"
        ))
        .bind(id)
        .fetch_one(pool)
        .await
        .map(UserRow::from))
    }

    /// The users of `ids` that exist, in one statement, in no particular order.
    pub(crate) async fn users(&self, ids: &[i64]) -> Result<Vec<UserRow>, sqlx::Error> {
        // One SQL text whatever the number of ids, so that the prepared statement is reused.
        let rows = match self {
            Self::Sqlite { pool, .. } => {
                let list = serde_json::to_string(ids).map_err(|e| sqlx::Error::Encode(e.into()))?;
                sqlx::query_as::<_, Joined>(select_users!(
                    "u.id IN (SELECT value FROM json_each($1))"
                ))
                .bind(list)
                .fetch_all(pool)
                .await?
            }
            Self::Postgres { pool, .. } => {
                sqlx::query_as::<_, Joined>(select_users!("u.id = ANY($1)"))
                    .bind(ids)
                    .fetch_all(pool)
                    .await?
            }
        };
        Ok(rows.into_iter().map(UserRow::from).collect())
    }

    /// Renames user `id` and bumps its version; returns the row with its team as of the write.
    pub(crate) async fn rename(&self, id: i64, name: &str) -> Result<UserRow, sqlx::Error> {
        on_pool!(self, |pool| {
            // The UPDATE takes the row's write lock first: a team change that commits before
            // this one is read below, one after it reads this row's new version (see
            // `rename_team`).
            let mut tx = pool.begin().await?;
            let updated =
                sqlx::query("UPDATE users SET name = $1, version = version + 1 WHERE id = $2")
                    .bind(name)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
            if updated.rows_affected() == 0 {
                return Err(sqlx::Error::RowNotFound);
            }
            let row = sqlx::query_as::<_, Joined>(select_users!("u.id = $1"))
                .bind(id)
                .fetch_one(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(UserRow::from(row))
        })
    }

    /// Renames team `team` and bumps its version; returns the new versions of its users (of
    /// those in `only`, if given), read in the same transaction.
    pub(crate) async fn rename_team(
        &self,
        team: i64,
        name: &str,
        only: Option<&[i64]>,
    ) -> Result<Vec<Bumped>, sqlx::Error> {
        self.bump_teams(Some((team, name)), only).await
    }

    /// Bumps every team's version, a change of every user no change-log row records; returns
    /// the users' new versions (of those in `only`, if given), read in the same transaction.
    pub(crate) async fn bump_all_teams(
        &self,
        only: Option<&[i64]>,
    ) -> Result<Vec<Bumped>, sqlx::Error> {
        self.bump_teams(None, only).await
    }

    /// Renames one team, or bumps them all, then reads the affected users' versions.
    async fn bump_teams(
        &self,
        rename: Option<(i64, &str)>,
        only: Option<&[i64]>,
    ) -> Result<Vec<Bumped>, sqlx::Error> {
        let team = rename.map(|(team, _)| team);
        let only = only
            .map(serde_json::to_string)
            .transpose()
            .map_err(|e| sqlx::Error::Encode(e.into()))?;
        let select = match self {
            // Writes to the file are serialized: the UPDATE waits for every other writer, and
            // the SELECT then reads the latest rows.
            Self::Sqlite { .. } => {
                "SELECT u.id, u.version + COALESCE(t.version, 0) \
                 FROM users u LEFT JOIN teams t ON t.id = u.team \
                 WHERE ($1 IS NULL OR u.team = $1) \
                 AND ($2 IS NULL OR u.id IN (SELECT value FROM json_each($2))) \
                 ORDER BY u.id"
            }
            // Locking the users' rows waits for renames of them in flight and reads their
            // versions once committed; a rename that starts later reads the team's new
            // version. Either way the versions answered are those of one order of writes.
            Self::Postgres { .. } => {
                "SELECT u.id, u.version + COALESCE(t.version, 0) \
                 FROM users u LEFT JOIN teams t ON t.id = u.team \
                 WHERE ($1::bigint IS NULL OR u.team = $1) \
                 AND ($2::text IS NULL \
                      OR u.id IN (SELECT jsonb_array_elements_text($2::jsonb)::bigint)) \
                 ORDER BY u.id FOR UPDATE OF u"
            }
        };
        on_pool!(self, |pool| {
            let mut tx = pool.begin().await?;
            let updated = match rename {
                Some((team, name)) => {
                    sqlx::query("UPDATE teams SET name = $1, version = version + 1 WHERE id = $2")
                        .bind(name)
                        .bind(team)
                        .execute(&mut *tx)
                        .await?
                }
                None => {
                    sqlx::query("UPDATE teams SET version = version + 1")
                        .execute(&mut *tx)
                        .await?
                }
            };
            if rename.is_some() && updated.rows_affected() == 0 {
                return Err(sqlx::Error::RowNotFound);
            }
            let users = sqlx::query_as::<_, Bumped>(select)
                .bind(team)
                .bind(only)
                .fetch_all(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(users)
        })
    }

    /// Bumps the version of every user after `id`, in one statement.
    pub(crate) async fn bump_after(&self, id: i64) -> Result<(), sqlx::Error> {
        on_pool!(self, |pool| sqlx::query(
            "UPDATE users SET version = version + 1 WHERE id > $1"
        )
        .bind(id)
        .execute(pool)
        .await
        .map(drop))
    }
}

enum Url {
    Sqlite(PathBuf),
    Postgres,
}

fn parse_url(url: &str) -> anyhow::Result<Url> {
    if let Some(path) = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
    {
        anyhow::ensure!(!path.is_empty(), "--db {url:?} names no file");
        return Ok(Url::Sqlite(PathBuf::from(path)));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(Url::Postgres);
    }
    bail!("--db {url:?}: expected sqlite://path or postgres://…")
}

/// `url` with the password, if any, replaced by `***`.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.split_once('@') {
        Some((userinfo, host)) if userinfo.contains(':') => {
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}")
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_urls() {
        assert!(
            matches!(parse_url("sqlite://a/b.db").unwrap(), Url::Sqlite(p) if p == Path::new("a/b.db"))
        );
        assert!(
            matches!(parse_url("sqlite:x.db").unwrap(), Url::Sqlite(p) if p == Path::new("x.db"))
        );
        assert!(parse_url("sqlite://").is_err());
        assert!(matches!(
            parse_url("postgres://localhost/db").unwrap(),
            Url::Postgres
        ));
        assert!(matches!(
            parse_url("postgresql://u@h/db").unwrap(),
            Url::Postgres
        ));
        assert!(parse_url("mysql://x").is_err());
    }

    /// Pools (each as another process would) opening one new file at once, 300 times: all open
    /// it. Switching the file to WAL made about one open in 400 fail with "database is locked".
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_new_file_opened_by_many_at_once_opens_for_all() {
        for _ in 0..300 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("users.db");
            let opens: Vec<_> = (0..5)
                .map(|_| {
                    let path = path.clone();
                    tokio::spawn(async move { open(&path, 1).await })
                })
                .collect();
            for opened in opens {
                let pool = opened.await.unwrap().unwrap();
                let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
                    .fetch_one(&pool)
                    .await
                    .unwrap();
                assert_eq!(mode, "wal");
            }
        }
    }

    #[test]
    fn passwords_are_not_printed() {
        assert_eq!(
            redact("postgres://app:secret@db:5432/app"),
            "postgres://app:***@db:5432/app"
        );
        assert_eq!(redact("postgres://app@db/app"), "postgres://app@db/app");
        assert_eq!(redact("sqlite://x.db"), "sqlite://x.db");
    }
}
