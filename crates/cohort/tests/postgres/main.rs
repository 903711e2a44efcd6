//! The change log on a real Postgres server, started by each test (`initdb` and `pg_ctl` from the
//! machine; a test that cannot start it fails): outside writers seen by every node within the
//! bound, the commit-order race the horizon exists for, a lost `LISTEN` connection, and nodes
//! restarting under a stream of application writes.
//!
//! The nodes have no mesh between them: changes reach them through the log alone.

#[path = "../common/cluster.rs"]
mod cluster;
#[path = "../common/log_polls.rs"]
mod log_polls;
#[path = "../common/versioned.rs"]
mod versioned;

mod fail_safe;

use std::time::Duration;

use cohort::{Cache, ChangeLog, Cluster, ClusterEvent, Source};
use cohort_testkit::{Postgres, wait};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio::sync::broadcast;
use tokio::time::Instant;

const BOUND: Duration = Duration::from_millis(400);

type User = (String, i64);

/// A Postgres server with a users table of ids 1..=10.
async fn database() -> (Postgres, PgPool) {
    let server = tokio::task::spawn_blocking(Postgres::start)
        .await
        .unwrap()
        .expect("a throwaway Postgres server (initdb and pg_ctl from the postgresql package)");
    let pool = pool(&server).await;
    sqlx::query(
        "CREATE TABLE users (id bigint PRIMARY KEY, name text NOT NULL, version bigint NOT NULL)",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("INSERT INTO users SELECT i, 'user ' || i, 1 FROM generate_series(1, 10) i")
        .execute(&pool)
        .await
        .unwrap();
    (server, pool)
}

async fn pool(server: &Postgres) -> PgPool {
    PgPoolOptions::new()
        .max_connections(4)
        .connect(&server.url())
        .await
        .unwrap()
}

/// One application server: a node tailing the log, its users cache and its own pool.
struct Node {
    cluster: Cluster,
    users: Cache<u64, User>,
    db: PgPool,
}

impl Node {
    async fn start(server: &Postgres) -> Self {
        Self::with_bound(server, BOUND).await
    }

    async fn with_bound(server: &Postgres, bound: Duration) -> Self {
        let db = pool(server).await;
        let cluster = Cluster::builder()
            .max_staleness(bound)
            .change_log(ChangeLog::postgres(db.clone()))
            .start()
            .await
            .unwrap();
        let users = cluster
            .cache::<u64, User>("users")
            .watch_table("users", "id")
            .build()
            .unwrap();
        users.ready(wait::PATIENCE).await.unwrap();
        Self { cluster, users, db }
    }

    async fn read(&self, id: u64) -> (User, Source) {
        let db = self.db.clone();
        let fetched = self
            .users
            .fetch(&id, |id| async move {
                sqlx::query_as::<_, User>("SELECT name, version FROM users WHERE id = $1")
                    .bind(id as i64)
                    .fetch_one(&db)
                    .await
            })
            .await
            .unwrap();
        (fetched.value, fetched.source)
    }

    /// Caches user `id` and checks the next read is a hit.
    async fn warm(&self, id: u64) -> User {
        let (user, _) = self.read(id).await;
        assert_eq!(self.read(id).await.1, Source::Cache);
        user
    }
}

async fn rename(db: &PgPool, id: i64, name: &str) {
    sqlx::query("UPDATE users SET name = $1, version = version + 1 WHERE id = $2")
        .bind(name)
        .bind(id)
        .execute(db)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_sql_update_reaches_every_node_within_the_bound() {
    let (server, outsider) = database().await;
    let mut nodes = Vec::new();
    for _ in 0..3 {
        let node = Node::start(&server).await;
        node.warm(1).await;
        nodes.push(node);
    }
    let mut events: Vec<_> = nodes.iter().map(|n| n.cluster.subscribe()).collect();

    rename(&outsider, 1, "renamed by hand").await;
    let committed = Instant::now();

    for (node, events) in nodes.iter().zip(&mut events) {
        log_polls::poll_after(events, committed).await;
        let seen = committed.elapsed();
        assert!(seen < BOUND, "seen after {seen:?}, bound {BOUND:?}");
        assert_eq!(node.users.get(&1), None, "the log invalidated the copy");
        assert_eq!(node.read(1).await.0, ("renamed by hand".to_owned(), 2));
        let status = node.cluster.change_log_status().expect("a change log");
        assert_eq!(status.errors, 0, "{:?}", status.last_error);
    }
}

/// Commit to invalidation through the log: a `NOTIFY` wakes the tailers, so this takes a few
/// milliseconds rather than the Δ/4 poll interval. With a bound of 20 s (polls 5 s apart), every
/// one of 100 plain-SQL updates must arrive within 2.5 s: without wake-ups, all but the first
/// would wait for the next poll. Prints p50/p99.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_carry_a_change_through_the_log_faster_than_the_poll_interval() {
    let bound = Duration::from_secs(20);
    let (server, outsider) = database().await;
    let node = Node::with_bound(&server, bound).await;
    let mut events = node.cluster.subscribe();
    let mut delays = Vec::new();
    for round in 0..100 {
        node.warm(2).await;
        rename(&outsider, 2, &format!("round {round}")).await;
        let committed = Instant::now();
        tokio::time::timeout(bound / 8, async {
            while node.users.get(&2).is_some() {
                match events.recv().await {
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => panic!("node stopped"),
                }
            }
        })
        .await
        .expect("a wake-up brought the change before the next poll");
        delays.push(committed.elapsed());
    }
    delays.sort();
    let (p50, p99) = (delays[49], delays[98]);
    eprintln!("log path with NOTIFY: commit -> invalidated p50 {p50:?} p99 {p99:?}");
}

/// Transaction A updates user 1 and stays open; transaction B updates user 2 and commits, so
/// B's log row has the higher sequence number but commits first. A node reading the log in
/// sequence order would move past A's row before it is visible and never see it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_committed_after_a_later_one_is_not_lost() {
    let (server, outsider) = database().await;
    let node = Node::start(&server).await;
    let mut events = node.cluster.subscribe();

    let mut a = outsider.begin().await.unwrap();
    sqlx::query("UPDATE users SET name = 'by A', version = version + 1 WHERE id = 1")
        .execute(&mut *a)
        .await
        .unwrap();
    rename(&outsider, 2, "by B").await;
    let b_committed = Instant::now();
    log_polls::poll_after(&mut events, b_committed).await;
    assert_eq!(node.read(2).await.0, ("by B".to_owned(), 2));

    // A is still open: the node caches user 1 as it was, and several polls pass.
    assert_eq!(node.warm(1).await, ("user 1".to_owned(), 1));
    for _ in 0..3 {
        log_polls::poll_after(&mut events, Instant::now()).await;
    }
    assert_eq!(node.read(1).await.1, Source::Cache);

    a.commit().await.unwrap();
    let a_committed = Instant::now();
    log_polls::poll_after(&mut events, a_committed).await;
    assert!(a_committed.elapsed() < BOUND);
    assert_eq!(node.users.get(&1), None, "A's change reached the node");
    assert_eq!(node.read(1).await.0, ("by A".to_owned(), 2));
}

/// The backend of the node's `LISTEN` connection is terminated. Polling keeps the bound while the
/// listener reconnects (with backoff), and it does reconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminated_listen_connection_loses_nothing_and_comes_back() {
    let (server, outsider) = database().await;
    let node = Node::start(&server).await;
    let mut events = node.cluster.subscribe();
    let listener_pid = listening_backend(&outsider, None).await;
    node.warm(3).await;

    let terminated: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(listener_pid)
        .fetch_one(&outsider)
        .await
        .unwrap();
    assert!(terminated);
    rename(&outsider, 3, "while deaf").await;
    let committed = Instant::now();
    log_polls::poll_after(&mut events, committed).await;
    assert!(
        committed.elapsed() < BOUND,
        "seen after {:?}",
        committed.elapsed()
    );
    assert_eq!(node.users.get(&3), None);
    assert_eq!(node.read(3).await.0, ("while deaf".to_owned(), 2));

    let again = listening_backend(&outsider, Some(listener_pid)).await;
    assert_ne!(again, listener_pid);
    assert!(node.users.is_serving());
}

/// The backend that is listening on the log's channel (other than `not`), waited for.
async fn listening_backend(db: &PgPool, not: Option<i32>) -> i32 {
    wait::poll(async || {
        sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity WHERE query ILIKE 'LISTEN%cohort_changes%' \
             AND pid <> $1 LIMIT 1",
        )
        .bind(not.unwrap_or(0))
        .fetch_optional(db)
        .await
        .unwrap()
    })
    .await
    .expect("a connection is listening")
}

/// Rows older than the retention are deleted and the watermark moves over them; a node that had
/// read them does not flush.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_rows_are_pruned_behind_a_watermark() {
    let (server, outsider) = database().await;
    let db = pool(&server).await;
    let cluster = Cluster::builder()
        .max_staleness(Duration::from_millis(100))
        .log_retention(Duration::from_millis(400))
        .change_log(ChangeLog::postgres(db))
        .start()
        .await
        .unwrap();
    let _users = cluster
        .cache::<u64, User>("users")
        .watch_table("users", "id")
        .build()
        .unwrap();
    wait::event(&mut cluster.subscribe(), |e| {
        matches!(e, ClusterEvent::LogPolled { .. }).then_some(())
    })
    .await
    .expect("the node polled the change log");
    for id in 1..=5 {
        rename(&outsider, id, "to be pruned").await;
    }
    let logged: i64 = sqlx::query_scalar("SELECT count(*) FROM cohort_changes")
        .fetch_one(&outsider)
        .await
        .unwrap();
    assert_eq!(logged, 5);

    let pruned_seq = wait::poll(async || {
        let (left, pruned_seq): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM cohort_changes), pruned_seq FROM cohort_log_meta",
        )
        .fetch_one(&outsider)
        .await
        .unwrap();
        (left == 0).then_some(pruned_seq)
    })
    .await
    .expect("the rows were pruned");
    assert_eq!(pruned_seq, 5, "the watermark is the last row deleted");
    let status = cluster.change_log_status().unwrap();
    assert_eq!(
        status.pruned_flushes, 0,
        "the node had read every pruned row"
    );
    assert_eq!(status.errors, 0, "{:?}", status.last_error);
}

/// Nodes start and stop 30 times while 4 connections run plain-SQL transactions that update the
/// watched table, two rows per transaction (so each holds the table and the log across its
/// trigger's insert), as an application does: installing the trigger must never make one of them
/// fail (it used to, with `deadlock detected`). Every fifth start finds the function and trigger
/// of an older version in place and must replace them under that load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_restarting_under_application_writes_never_fail_one() {
    const WRITERS: i64 = 4;
    let (server, outsider) = database().await;
    let node = Node::start(&server).await;
    node.cluster.shutdown().await;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut writers = Vec::new();
    for writer in 0..WRITERS {
        let db = pool(&server).await;
        let mut stopped = stopped.clone();
        writers.push(tokio::spawn(async move {
            // Each writer owns its two rows: the writers never wait for one another.
            let (first, second) = (2 * writer + 1, 2 * writer + 2);
            let mut committed = 0_u64;
            while !*stopped.borrow_and_update() {
                let mut tx = db.begin().await?;
                for id in [first, second] {
                    sqlx::query("UPDATE users SET version = version + 1 WHERE id = $1")
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                committed += 1;
            }
            Ok::<_, sqlx::Error>(committed)
        }));
    }

    let started = Instant::now();
    for restart in 0..30 {
        if restart % 5 == 4 {
            install_an_older_version(&outsider).await;
        }
        let node = Node::start(&server).await;
        node.cluster.shutdown().await;
    }
    let restarts = started.elapsed();
    stop.send(true).unwrap();
    let mut committed = 0;
    for writer in writers {
        committed += writer.await.unwrap().expect("no application write failed");
    }
    eprintln!("30 restarts in {restarts:?} while {committed} two-row transactions committed");
    assert!(committed > 0);
    let (args, body): (Vec<u8>, String) = sqlx::query_as(
        "SELECT t.tgargs, p.prosrc FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid \
         WHERE t.tgrelid = 'users'::regclass AND NOT t.tgisinternal",
    )
    .fetch_one(&outsider)
    .await
    .unwrap();
    assert_eq!(args, b"users\0id\0", "the older trigger was replaced");
    assert!(
        !body.starts_with("-- older"),
        "the older function was replaced"
    );

    // What is current is left alone: no row of the catalogs is rewritten.
    let catalogs = || {
        sqlx::query_as::<_, (String, String)>(
            "SELECT t.xmin::text, p.xmin::text FROM pg_trigger t JOIN pg_proc p \
             ON p.oid = t.tgfoid WHERE t.tgrelid = 'users'::regclass AND NOT t.tgisinternal",
        )
        .fetch_one(&outsider)
    };
    let before = catalogs().await.unwrap();
    let node = Node::start(&server).await;
    node.cluster.shutdown().await;
    assert_eq!(catalogs().await.unwrap(), before);
}

/// Replaces the log's function and the users trigger with ones that differ from what a node
/// installs, as a node of an older version would have left them; each statement locks one
/// object, so this cannot deadlock with the writers.
async fn install_an_older_version(db: &PgPool) {
    let (name, body): (String, String) = sqlx::query_as(
        "SELECT t.tgname::text, p.prosrc FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid \
         WHERE t.tgrelid = 'users'::regclass AND NOT t.tgisinternal",
    )
    .fetch_one(db)
    .await
    .unwrap();
    let function = format!(
        "CREATE OR REPLACE FUNCTION cohort_log_change() RETURNS trigger LANGUAGE plpgsql \
         AS $body$-- older\n{body}$body$"
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(function))
        .execute(db)
        .await
        .unwrap();
    let trigger = format!(
        "CREATE OR REPLACE TRIGGER \"{name}\" AFTER INSERT OR UPDATE OR DELETE ON users \
         FOR EACH ROW EXECUTE FUNCTION cohort_log_change('users', 'id', 'older')"
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(trigger))
        .execute(db)
        .await
        .unwrap();
}

/// The trigger logs every key a row change touches: a deleted row's, and both the old and the
/// new key of a row whose key column changed; a cached copy of each is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_rows_and_changed_keys_are_logged_and_dropped() {
    let (server, outsider) = database().await;
    let node = Node::start(&server).await;
    node.warm(1).await;
    node.warm(2).await;
    let mut events = node.cluster.subscribe();
    sqlx::query("DELETE FROM users WHERE id = 1")
        .execute(&outsider)
        .await
        .unwrap();
    sqlx::query("UPDATE users SET id = 20 WHERE id = 2")
        .execute(&outsider)
        .await
        .unwrap();
    let changed = Instant::now();
    let logged: Vec<String> =
        sqlx::query_scalar("SELECT key FROM cohort_changes ORDER BY xid DESC, seq DESC LIMIT 3")
            .fetch_all(&outsider)
            .await
            .unwrap();
    assert_eq!(logged, ["20", "2", "1"], "new key, old key, deleted key");
    log_polls::poll_after(&mut events, changed).await;
    assert_eq!(node.users.get(&1), None, "the deleted row's copy");
    assert_eq!(node.users.get(&2), None, "the moved row's old key");
}

/// A Postgres server with the users table, for the version column's scenarios.
struct Pg {
    server: Postgres,
    outsider: PgPool,
}

impl Pg {
    async fn new() -> Self {
        let (server, outsider) = database().await;
        Self { server, outsider }
    }
}

impl versioned::Database for Pg {
    type Pool = PgPool;
    type Stall = sqlx::Transaction<'static, sqlx::Postgres>;

    /// Every poll reads the watermark: a transaction that locks it stalls them all.
    async fn stall_polls(&self, _: &PgPool) -> Self::Stall {
        let mut tx = self.outsider.begin().await.unwrap();
        sqlx::query("LOCK TABLE cohort_log_meta IN ACCESS EXCLUSIVE MODE")
            .execute(&mut *tx)
            .await
            .unwrap();
        tx
    }

    async fn resume_polls(stall: Self::Stall) {
        stall.rollback().await.unwrap();
    }

    async fn pool(&self) -> PgPool {
        pool(&self.server).await
    }

    fn change_log(pool: &PgPool) -> ChangeLog {
        ChangeLog::postgres(pool.clone())
    }

    async fn load(pool: PgPool, id: u64) -> Result<User, sqlx::Error> {
        sqlx::query_as("SELECT name, version FROM users WHERE id = $1")
            .bind(id as i64)
            .fetch_one(&pool)
            .await
    }

    async fn rename(pool: PgPool, id: u64, name: String) -> Result<User, sqlx::Error> {
        sqlx::query_as(
            "UPDATE users SET name = $1, version = version + 1 WHERE id = $2 RETURNING name, version",
        )
        .bind(name)
        .bind(id as i64)
        .fetch_one(&pool)
        .await
    }

    async fn execute(&self, statement: &'static str) {
        sqlx::query(statement)
            .execute(&self.outsider)
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writers_own_versioned_change_keeps_its_copies() {
    versioned::a_writers_own_change_keeps_its_copies(&Pg::new().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outside_changes_drop_every_versioned_copy() {
    versioned::outside_changes_drop_every_copy(&Pg::new().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_racing_a_versioned_change_stores_nothing_older() {
    versioned::a_load_racing_a_logged_change_stores_nothing_older(&Pg::new().await).await;
}

/// Only an update that keeps the key and raises an integer version logs it; a version column
/// that is missing or not an integer type fails the install and installs nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trigger_logs_versions_only_for_raising_updates() {
    let (_server, db) = database().await;
    sqlx::query("ALTER TABLE users ADD COLUMN stamp text")
        .execute(&db)
        .await
        .unwrap();
    let cluster = Cluster::builder()
        .max_staleness(BOUND)
        .change_log(ChangeLog::postgres(db.clone()))
        .start()
        .await
        .unwrap();
    let refused: Vec<_> = [("missing", "nope"), ("text", "stamp")]
        .into_iter()
        .map(|(cache, column)| {
            cluster
                .cache::<u64, User>(cache)
                .version(|(_, version)| version.unsigned_abs())
                .watch_table("users", "id")
                .version_column(column)
                .build()
                .unwrap()
        })
        .collect();
    let users = cluster
        .cache::<u64, User>("users")
        .version(|(_, version)| version.unsigned_abs())
        .watch_table("users", "id")
        .version_column("version")
        .build()
        .unwrap();
    users.ready(wait::PATIENCE).await.unwrap();
    for cache in &refused {
        let error = cache.ready(BOUND).await.unwrap_err();
        assert!(
            matches!(error, cohort::ReadyError::NotInstalled { .. }),
            "{error}"
        );
        assert!(error.to_string().contains("version column"), "{error}");
    }
    let triggers: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'users'::regclass AND NOT tgisinternal",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert!(triggers <= 1, "only the users cache's trigger: {triggers}");

    for statement in [
        "UPDATE users SET name = 'b', version = 2 WHERE id = 1",
        "UPDATE users SET name = 'c' WHERE id = 1",
        "UPDATE users SET version = 1 WHERE id = 1",
        "UPDATE users SET version = -5 WHERE id = 1",
        "UPDATE users SET version = 3 WHERE id = 1",
        "UPDATE users SET id = 20, version = 4 WHERE id = 1",
        "INSERT INTO users VALUES (30, 'new', 1)",
        "DELETE FROM users WHERE id = 20",
    ] {
        sqlx::query(statement).execute(&db).await.unwrap();
    }
    let logged: Vec<(String, Option<i64>)> = sqlx::query_as(
        "SELECT key, version FROM cohort_changes WHERE cache = 'users' ORDER BY seq",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    let row = |key: &str, version| (key.to_owned(), version);
    assert_eq!(
        logged,
        [
            row("1", Some(2)), // raised
            row("1", None),    // not raised
            row("1", None),    // lowered
            row("1", None),    // negative
            row("1", None),    // from a negative one
            row("1", None),    // the key changed: the old one
            row("20", None),   // and the new one
            row("30", None),   // insert
            row("20", None),   // delete
        ]
    );
    cluster.shutdown().await;
}

/// A log an older cohort created, without the version column, gains it and keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_log_gains_the_version_column() {
    let (server, db) = database().await;
    // The log's tables as cohort created them before rows carried versions.
    sqlx::raw_sql(
        "CREATE TABLE cohort_changes ( \
             seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, \
             xid xid8 NOT NULL DEFAULT pg_current_xact_id(), \
             cache text NOT NULL, key text NOT NULL, at timestamptz NOT NULL DEFAULT now()); \
         CREATE INDEX cohort_changes_order ON cohort_changes (xid, seq); \
         CREATE INDEX cohort_changes_at ON cohort_changes (at); \
         CREATE TABLE cohort_log_meta (id int PRIMARY KEY CHECK (id = 1), \
             pruned_xid xid8 NOT NULL, pruned_seq bigint NOT NULL); \
         INSERT INTO cohort_log_meta VALUES (1, '0', 0); \
         INSERT INTO cohort_changes (cache, key) VALUES ('users', '9');",
    )
    .execute(&db)
    .await
    .unwrap();
    let has_column = async |db: &PgPool| {
        sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS (SELECT FROM information_schema.columns \
             WHERE table_name = 'cohort_changes' AND column_name = 'version')",
        )
        .fetch_one(db)
        .await
        .unwrap()
    };
    assert!(!has_column(&db).await);
    let pg = Pg {
        server,
        outsider: db,
    };
    versioned::a_writers_own_change_keeps_its_copies(&pg).await;
    assert!(has_column(&pg.outsider).await);
}
