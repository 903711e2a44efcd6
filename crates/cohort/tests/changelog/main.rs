//! The change log on a real SQLite file shared by several nodes: the bound without the mesh,
//! outside writers, a paused node, pruning, unreadable rows.
//!
//! Waits are on events (a poll completing, a change applied). Where a test is about time passing
//! (a pause outliving the lease or the retention), it lets that time pass on purpose.

#[path = "../common/log_polls.rs"]
mod log_polls;
#[path = "../common/versioned.rs"]
mod versioned;

mod cache_ops;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cohort::{Cache, ChangeLog, Cluster, ClusterEvent, ReadyError, Source, UpdateError};
use cohort_testkit::wait;
use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode};
use tokio::sync::broadcast;
use tokio::time::Instant;

const BOUND: Duration = Duration::from_millis(300);

type User = (String, i64);

/// A database file with a users table of ids 1..=10.
async fn database(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("app.db");
    let pool = pool(&path).await;
    sqlx::query(
        "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL, version INTEGER NOT NULL)",
    )
    .execute(&pool)
    .await
    .unwrap();
    for id in 1..=10 {
        sqlx::query("INSERT INTO users VALUES (?, ?, 1)")
            .bind(id)
            .bind(format!("user {id}"))
            .execute(&pool)
            .await
            .unwrap();
    }
    pool.close().await;
    path
}

async fn pool(path: &Path) -> SqlitePool {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(10));
    SqlitePool::connect_with(options).await.unwrap()
}

/// One application server: a node tailing the log, its users cache and its own pool.
struct Server {
    cluster: Cluster,
    users: Cache<u64, User>,
    db: SqlitePool,
}

impl Server {
    /// A node with no peers: changes reach it through the change log alone.
    async fn start(path: &Path, retention: Duration) -> Self {
        let db = pool(path).await;
        let cluster = Cluster::builder()
            .max_staleness(BOUND)
            .log_retention(retention)
            .change_log(ChangeLog::sqlite(db.clone()))
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
                sqlx::query_as::<_, User>("SELECT name, version FROM users WHERE id = ?")
                    .bind(id as i64)
                    .fetch_one(&db)
                    .await
            })
            .await
            .unwrap();
        (fetched.value, fetched.source)
    }

    async fn rename(&self, id: u64, name: &str) -> User {
        let (db, name) = (self.db.clone(), name.to_owned());
        self.users
            .update(&id, |id| async move {
                sqlx::query_as::<_, User>(
                    "UPDATE users SET name = ?, version = version + 1 WHERE id = ? RETURNING name, version",
                )
                .bind(name)
                .bind(id as i64)
                .fetch_one(&db)
                .await
            })
            .await
            .unwrap()
            .value
    }

    async fn next_poll(&self, events: &mut broadcast::Receiver<ClusterEvent>) {
        log_polls::poll_after(events, Instant::now()).await;
    }
}

/// Caches user 1 and checks the next read is a hit.
async fn warm(server: &Server) {
    server.read(1).await;
    assert_eq!(server.read(1).await.1, Source::Cache);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_mesh_an_update_reaches_the_other_node_through_the_log_within_the_bound() {
    let dir = tempfile::tempdir().unwrap();
    let path = database(dir.path()).await;
    let a = Server::start(&path, Duration::from_secs(600)).await;
    let b = Server::start(&path, Duration::from_secs(600)).await;
    assert!(
        a.cluster.members().is_empty() && b.cluster.members().is_empty(),
        "no mesh"
    );
    warm(&b).await;

    let mut b_events = b.cluster.subscribe();
    let written = a.rename(1, "grace").await;
    let returned = Instant::now();
    log_polls::poll_after(&mut b_events, returned).await;
    let seen = returned.elapsed();

    assert_eq!(b.users.get(&1), None, "the log invalidated b's copy");
    assert_eq!(b.read(1).await, (written, Source::Loaded));
    assert!(seen < BOUND, "seen after {seen:?}, bound {BOUND:?}");
    eprintln!("log path: update returned -> applied on the peer in {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_sql_update_reaches_every_node_within_the_bound() {
    let dir = tempfile::tempdir().unwrap();
    let path = database(dir.path()).await;
    let mut servers = Vec::new();
    for _ in 0..3 {
        let server = Server::start(&path, Duration::from_secs(600)).await;
        warm(&server).await;
        servers.push(server);
    }
    let mut events: Vec<_> = servers.iter().map(|s| s.cluster.subscribe()).collect();

    let outsider = pool(&path).await;
    sqlx::query("UPDATE users SET name = 'renamed by hand', version = version + 1 WHERE id = 1")
        .execute(&outsider)
        .await
        .unwrap();
    let committed = Instant::now();

    for (server, events) in servers.iter().zip(&mut events) {
        log_polls::poll_after(events, committed).await;
        let seen = committed.elapsed();
        assert!(seen < BOUND, "seen after {seen:?}");
        assert_eq!(server.read(1).await.0, ("renamed by hand".to_owned(), 2));
    }
    assert!(servers.iter().all(|s| s.users.stats().logged_applied >= 1));
}

/// A runtime for one node with a single worker, so that one blocked task ([`Frozen`]) freezes it.
fn node_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

/// A runtime whose single worker is blocked, as SIGSTOP freezes a process: none of its tasks run
/// until [`Frozen::thaw`].
struct Frozen {
    release: std::sync::mpsc::Sender<()>,
    thawed: std::sync::mpsc::Receiver<Instant>,
}

impl Frozen {
    /// Returns once the runtime is frozen.
    fn new(runtime: &tokio::runtime::Runtime) -> Self {
        let (frozen_tx, frozen) = std::sync::mpsc::channel();
        let (release, release_rx) = std::sync::mpsc::channel();
        let (thawed_tx, thawed) = std::sync::mpsc::channel();
        runtime.spawn(async move {
            frozen_tx.send(()).unwrap();
            release_rx.recv().unwrap();
            thawed_tx.send(Instant::now()).unwrap();
        });
        frozen.recv().unwrap();
        Self { release, thawed }
    }

    /// Lets the runtime go; returns the instant it resumed, before which none of its tasks ran.
    fn thaw(self) -> Instant {
        self.release.send(()).unwrap();
        self.thawed.recv().unwrap()
    }
}

/// A node whose runtime is frozen (as a paused process is) stops serving from its cache as soon as
/// its lease runs out, without any of its tasks running, and serves fresh values after.
#[test]
fn a_paused_node_bypasses_its_cache_until_it_has_caught_up() {
    let outside = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = outside.block_on(database(dir.path()));
    let node_runtime = node_runtime();
    let server = Arc::new(node_runtime.block_on(Server::start(&path, Duration::from_secs(600))));
    node_runtime.block_on(warm(&server));
    let mut events = server.cluster.subscribe();

    let frozen = Frozen::new(&node_runtime);

    let outsider = outside.block_on(pool(&path));
    outside
        .block_on(
            sqlx::query("UPDATE users SET name = 'changed during the pause', version = version + 1 WHERE id = 1")
                .execute(&outsider),
        )
        .unwrap();
    // Let the lease run out while the node is frozen.
    std::thread::sleep(BOUND + Duration::from_millis(20));
    assert!(!server.users.is_serving());
    assert_eq!(
        server.users.get(&1),
        None,
        "a frozen node with a lapsed lease serves nothing"
    );
    assert!(server.users.stats().bypasses >= 1);

    // Once the node runs again it polls, applies the change and serves again.
    let thawed = frozen.thaw();
    node_runtime.block_on(log_polls::poll_after(&mut events, thawed));
    let (user, _) = node_runtime.block_on(server.read(1));
    assert_eq!(user.0, "changed during the pause");
    assert!(server.users.is_serving());
}

/// A node that was away longer than the retention finds its position pruned, flushes and then
/// serves correct values.
#[test]
fn a_node_held_back_past_the_retention_flushes() {
    let outside = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = outside.block_on(database(dir.path()));
    let retention = BOUND * 4;
    let writer = outside.block_on(Server::start(&path, retention));

    let node_runtime = node_runtime();
    let held = node_runtime.block_on(Server::start(&path, retention));
    node_runtime.block_on(warm(&held));
    let mut events = held.cluster.subscribe();

    let frozen = Frozen::new(&node_runtime);
    outside.block_on(async {
        writer.rename(1, "renamed while held").await;
        // The writer's own tailer prunes rows older than the retention; wait until it has pruned
        // the rename's rows, which the held node never read.
        let mut writer_events = writer.cluster.subscribe();
        loop {
            let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM cohort_changes")
                .fetch_one(&writer.db)
                .await
                .unwrap();
            if count == 0 {
                break;
            }
            writer.next_poll(&mut writer_events).await;
        }
    });

    let thawed = frozen.thaw();
    node_runtime.block_on(log_polls::poll_after(&mut events, thawed));
    let status = held.cluster.change_log_status().unwrap();
    assert_eq!(status.pruned_flushes, 1, "{status:?}");
    assert_eq!(held.users.get(&1), None, "flushed");
    assert_eq!(
        node_runtime.block_on(held.read(1)).0.0,
        "renamed while held"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_row_whose_key_does_not_parse_flushes_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let path = database(dir.path()).await;
    let server = Server::start(&path, Duration::from_secs(600)).await;
    warm(&server).await;
    let mut events = server.cluster.subscribe();
    sqlx::query("INSERT INTO cohort_changes (cache, key) VALUES ('users', 'not a number')")
        .execute(&server.db)
        .await
        .unwrap();
    let inserted = Instant::now();
    log_polls::poll_after(&mut events, inserted).await;
    let stats = server.users.stats();
    assert_eq!((stats.logged_unparsable, stats.flushes), (1, 1));
    assert_eq!(server.users.get(&1), None);
    assert_eq!(server.read(1).await.0.0, "user 1");
}

#[tokio::test]
async fn a_database_that_is_down_keeps_the_cache_bypassed_without_failing_reads() {
    let dir = tempfile::tempdir().unwrap();
    let path = database(dir.path()).await;
    let db = pool(&path).await;
    let cluster = Cluster::builder()
        .max_staleness(BOUND)
        .change_log(ChangeLog::sqlite(db.clone()))
        .start()
        .await
        .unwrap();
    db.close().await;
    let users = cluster
        .cache::<u64, User>("users")
        .watch_table("users", "id")
        .build()
        .unwrap();
    wait::event(&mut cluster.subscribe(), |e| {
        matches!(e, ClusterEvent::LogUnavailable { .. }).then_some(())
    })
    .await
    .expect("the node reports the database as unavailable");
    let status = cluster.change_log_status().unwrap();
    assert!(
        status.errors >= 1 && status.last_error.is_some(),
        "{status:?}"
    );
    assert!(!status.serving);
    let fetched = users
        .fetch(&1, |_| async {
            Ok::<_, ()>(("from elsewhere".to_owned(), 1))
        })
        .await
        .unwrap();
    assert_eq!(fetched.source, Source::Bypassed);
    assert_eq!(users.get(&1), None, "nothing stored while bypassing");
    let error = users.ready(BOUND).await.unwrap_err();
    assert!(matches!(error, ReadyError::NotInstalled { .. }), "{error}");
    assert!(error.to_string().contains("not installed"), "{error}");
}

#[tokio::test]
async fn watching_needs_a_change_log_and_plain_identifiers() {
    let plain = Cluster::builder().start().await.unwrap();
    let err = plain
        .cache::<u64, User>("users")
        .watch_table("users", "id")
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("no change log"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let path = database(dir.path()).await;
    let logged = Cluster::builder()
        .change_log(ChangeLog::sqlite(pool(&path).await))
        .start()
        .await
        .unwrap();
    for (table, column) in [
        ("users; DROP TABLE users", "id"),
        ("users", "id\""),
        ("", "id"),
    ] {
        let err = logged
            .cache::<u64, User>("users")
            .watch_table(table, column)
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("identifier"), "{err}");
    }
    assert!(
        Cluster::builder()
            .max_staleness(BOUND)
            .log_retention(BOUND)
            .start()
            .await
            .is_err()
    );
}

/// A read that waits for another read's load of the same key can wait past the lease (the
/// database stalls, the node is frozen): what it finds after the wait is not served unless the
/// lease holds then. Here the first load's value fills the cache while the frozen node cannot
/// tell whether it changed since (nothing voids the fill); the waiting read must load afresh
/// rather than return it.
#[test]
fn a_read_that_waited_past_the_lease_for_a_concurrent_load_does_not_serve_its_value() {
    let outside = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = outside.block_on(database(dir.path()));
    let node_runtime = node_runtime();
    let server = Arc::new(node_runtime.block_on(Server::start(&path, Duration::from_secs(600))));
    let users = server.users.clone();

    let misses = users.stats().misses;
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let first = outside.spawn({
        let users = users.clone();
        async move {
            users
                .fetch(&2, |_| async move {
                    released.await.unwrap();
                    Ok::<_, ()>(("read before the change".to_owned(), 1))
                })
                .await
        }
    });
    spin_until("the first read is loading", || users.stats().loads > 0);
    let waiter = outside.spawn({
        let users = users.clone();
        async move {
            users
                .fetch(&2, |_| async { Ok::<_, ()>(("read afresh".to_owned(), 2)) })
                .await
        }
    });
    spin_until("the second read missed too", || {
        users.stats().misses == misses + 2
    });

    let frozen = Frozen::new(&node_runtime);
    // Let the lease run out while the node is frozen.
    std::thread::sleep(BOUND + Duration::from_millis(20));
    assert!(!users.is_serving());
    release.send(()).unwrap();
    let first = outside.block_on(first).unwrap().unwrap();
    assert_eq!(first.source, Source::Loaded);
    let waited = outside.block_on(waiter).unwrap().unwrap();
    assert_eq!(waited.value, ("read afresh".to_owned(), 2));
    assert_eq!(waited.source, Source::Bypassed);
    frozen.thaw();
}

/// Waits, without yielding to any runtime, until `done` holds; fails after 10 s.
fn spin_until(what: &str, done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        std::thread::yield_now();
    }
}

/// A strong writer whose peer stops answering (frozen) waits for its acknowledgement up to the
/// bound, and by then its own confirmation of that peer has lapsed: the others may have retired
/// it and stopped waiting for its intents, so it must not write. The update is fenced and the
/// database untouched.
#[test]
fn a_strong_writer_that_lost_its_peer_is_fenced_before_writing() {
    let outside = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = outside.block_on(database(dir.path()));
    let strong = |seed: Option<std::net::SocketAddr>| {
        let path = path.clone();
        async move {
            let db = pool(&path).await;
            let mut builder = Cluster::builder();
            builder
                .max_staleness(BOUND)
                .change_log(ChangeLog::sqlite(db.clone()));
            if let Some(seed) = seed {
                builder.seeds([seed.to_string()]);
            }
            let cluster = builder.start().await.unwrap();
            let users = cluster
                .cache::<u64, User>("users")
                .watch_table("users", "id")
                .mode(cohort::Mode::Strong)
                .build()
                .unwrap();
            (cluster, users, db)
        }
    };
    let (writer, users, db) = outside.block_on(strong(None));
    let peer_runtime = node_runtime();
    let (peer, _peer_users, _) = peer_runtime.block_on(strong(Some(writer.local_addr())));
    outside.block_on(async {
        let linked = async {
            writer.wait_for_peers(1).await;
            peer.wait_for_peers(1).await;
        };
        wait::within(linked).await.expect("linked");
        spin_until("the writer serves", || users.is_serving());
    });

    let frozen = Frozen::new(&peer_runtime);
    let wrote = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ran = Arc::clone(&wrote);
    let result = outside.block_on(users.update(&1, |id| async move {
        ran.store(true, std::sync::atomic::Ordering::SeqCst);
        sqlx::query_as::<_, User>(
            "UPDATE users SET name = 'fenced', version = version + 1 WHERE id = ? RETURNING name, version",
        )
        .bind(id as i64)
        .fetch_one(&db)
        .await
    }));
    assert!(
        matches!(result, Err(UpdateError::Fenced)),
        "the update went through: {:?}",
        result.map(|r| r.value)
    );
    assert!(
        !wrote.load(std::sync::atomic::Ordering::SeqCst),
        "the write did not run"
    );
    frozen.thaw();
}

/// The triggers log every key a row change touches: a deleted row's, and both the old and the
/// new key of a row whose key column changed. A cached copy of each is dropped within the bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_rows_and_changed_keys_are_logged_and_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let path = database(dir.path()).await;
    let server = Server::start(&path, Duration::from_secs(600)).await;
    for id in [1, 2] {
        server.read(id).await;
        assert_eq!(server.read(id).await.1, Source::Cache);
    }
    let outsider = pool(&path).await;
    let mut events = server.cluster.subscribe();
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
        sqlx::query_scalar("SELECT key FROM cohort_changes ORDER BY seq DESC LIMIT 3")
            .fetch_all(&outsider)
            .await
            .unwrap();
    assert_eq!(logged, ["20", "2", "1"], "new key, old key, deleted key");
    log_polls::poll_after(&mut events, changed).await;
    assert_eq!(server.users.get(&1), None, "the deleted row's copy");
    assert_eq!(server.users.get(&2), None, "the moved row's old key");
}

/// The users table of a database file, for the version column's scenarios.
struct Sqlite {
    path: std::path::PathBuf,
    outsider: SqlitePool,
}

impl Sqlite {
    async fn new(dir: &Path) -> Self {
        let path = database(dir).await;
        let outsider = pool(&path).await;
        Self { path, outsider }
    }
}

impl versioned::Database for Sqlite {
    type Pool = SqlitePool;
    type Stall = sqlx::pool::PoolConnection<sqlx::Sqlite>;

    /// One connection: the node's polls wait while a test holds it.
    async fn pool(&self) -> SqlitePool {
        let options = SqliteConnectOptions::new()
            .filename(&self.path)
            .busy_timeout(Duration::from_secs(10));
        sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .unwrap()
    }

    async fn stall_polls(&self, pool: &SqlitePool) -> Self::Stall {
        pool.acquire().await.unwrap()
    }

    async fn resume_polls(stall: Self::Stall) {
        drop(stall);
    }

    fn change_log(pool: &SqlitePool) -> ChangeLog {
        ChangeLog::sqlite(pool.clone())
    }

    async fn load(pool: SqlitePool, id: u64) -> Result<User, sqlx::Error> {
        sqlx::query_as("SELECT name, version FROM users WHERE id = ?")
            .bind(id as i64)
            .fetch_one(&pool)
            .await
    }

    async fn rename(pool: SqlitePool, id: u64, name: String) -> Result<User, sqlx::Error> {
        sqlx::query_as(
            "UPDATE users SET name = ?, version = version + 1 WHERE id = ? RETURNING name, version",
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
    let dir = tempfile::tempdir().unwrap();
    versioned::a_writers_own_change_keeps_its_copies(&Sqlite::new(dir.path()).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outside_changes_drop_every_versioned_copy() {
    let dir = tempfile::tempdir().unwrap();
    versioned::outside_changes_drop_every_copy(&Sqlite::new(dir.path()).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_racing_a_versioned_change_stores_nothing_older() {
    let dir = tempfile::tempdir().unwrap();
    versioned::a_load_racing_a_logged_change_stores_nothing_older(&Sqlite::new(dir.path()).await)
        .await;
}
