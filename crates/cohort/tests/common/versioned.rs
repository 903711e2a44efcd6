//! A cache that names its table's version column, on a real database: shared by the tests of
//! each (SQLite, Postgres). A writer's own change coming back through the change log keeps the
//! copies that already have it, on the writer and on a peer; every other change (an outside
//! update, one that does not raise the version, a delete) drops every copy; a load racing a
//! logged change never stores what it read before it.
//!
//! Waits are on events: a peer's replica applied, a poll that started after the change.

use std::future::Future;
use std::time::Duration;

use cohort::{Cache, ChangeLog, Cluster, Mode, Source};
use cohort_testkit::wait;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::log_polls;

/// A users row: name and version.
pub(crate) type User = (String, i64);

const BOUND: Duration = Duration::from_millis(400);

/// What the scenarios need of a database with a `users (id, name, version)` table holding id 1
/// at version 1.
pub(crate) trait Database {
    /// One node's pool.
    type Pool: Clone + Send + Sync + 'static;
    /// Holds back the change-log polls of the node with `pool` (at least) until dropped.
    type Stall;
    /// Stalls the polls of the node with `pool`.
    fn stall_polls(&self, pool: &Self::Pool) -> impl Future<Output = Self::Stall>;
    /// Lets the polls run again.
    fn resume_polls(stall: Self::Stall) -> impl Future<Output = ()>;
    /// A new pool on the database.
    fn pool(&self) -> impl Future<Output = Self::Pool>;
    /// The change log in it.
    fn change_log(pool: &Self::Pool) -> ChangeLog;
    /// Reads user `id`.
    fn load(pool: Self::Pool, id: u64) -> impl Future<Output = Result<User, sqlx::Error>> + Send;
    /// Renames user `id` and raises its version, returning the new row.
    fn rename(
        pool: Self::Pool,
        id: u64,
        name: String,
    ) -> impl Future<Output = Result<User, sqlx::Error>> + Send;
    /// Runs `statement` as a writer that is no node.
    fn execute(&self, statement: &'static str) -> impl Future<Output = ()>;
}

/// One application server: a node, its users cache (Replicate mode, versioned), a second cache
/// on the same table that names no version column, and its own pool.
pub(crate) struct Node<D: Database> {
    pub(crate) cluster: Cluster,
    pub(crate) users: Cache<u64, User>,
    pub(crate) plain: Cache<u64, User>,
    pool: D::Pool,
}

impl<D: Database> Node<D> {
    /// A node linked to `seed`'s, if given.
    pub(crate) async fn start(db: &D, seed: Option<&Cluster>) -> Self {
        let pool = db.pool().await;
        let mut builder = Cluster::builder();
        builder
            .max_staleness(BOUND)
            .change_log(D::change_log(&pool));
        if let Some(seed) = seed {
            builder.seeds([seed.local_addr().to_string()]);
        }
        let cluster = builder.start().await.unwrap();
        let users = cluster
            .cache::<u64, User>("users")
            .mode(Mode::Replicate)
            .version(|(_, version)| version.unsigned_abs())
            .watch_table("users", "id")
            .version_column("version")
            .build()
            .unwrap();
        let plain = cluster
            .cache::<u64, User>("plain")
            .watch_table("users", "id")
            .build()
            .unwrap();
        let node = Self {
            cluster,
            users,
            plain,
            pool,
        };
        for cache in [&node.users, &node.plain] {
            cache.ready(wait::PATIENCE).await.unwrap();
        }
        node
    }

    /// Waits for a complete poll that started after `after`.
    pub(crate) async fn polled_after(&self, after: Instant) {
        log_polls::poll_after(&mut self.cluster.subscribe(), after).await;
        let status = self.cluster.change_log_status().expect("a change log");
        assert_eq!(status.errors, 0, "{:?}", status.last_error);
    }

    async fn read(&self, cache: &Cache<u64, User>, id: u64) -> (User, Source) {
        let fetched = cache
            .fetch(&id, |id| D::load(self.pool.clone(), id))
            .await
            .unwrap();
        (fetched.value, fetched.source)
    }

    /// Caches user `id` in both caches and checks the next reads are hits.
    async fn warm(&self, id: u64) {
        for cache in [&self.users, &self.plain] {
            self.read(cache, id).await;
            assert_eq!(self.read(cache, id).await.1, Source::Cache);
        }
    }

    async fn rename(&self, id: u64, name: &str) -> cohort::Receipt<User> {
        let (pool, name) = (self.pool.clone(), name.to_owned());
        self.users
            .update(&id, |id| D::rename(pool, id, name))
            .await
            .unwrap()
    }
}

/// Two linked nodes, user 1 cached in both caches of both.
async fn pair<D: Database>(db: &D) -> (Node<D>, Node<D>) {
    let a = Node::start(db, None).await;
    let b = Node::start(db, Some(&a.cluster)).await;
    for node in [&a, &b] {
        tokio::time::timeout(Duration::from_secs(10), node.cluster.wait_for_peers(1))
            .await
            .expect("the nodes link");
        node.warm(1).await;
    }
    (a, b)
}

/// A writer's own update, logged with the version it wrote, keeps the new copy on the writer
/// and on the peer it replicated to; the cache on the same table that names no version column
/// drops its copy.
pub(crate) async fn a_writers_own_change_keeps_its_copies<D: Database>(db: &D) {
    let (a, b) = pair(db).await;
    let mut b_events = b.cluster.subscribe();
    let applied_before = [&a, &b].map(|node| node.users.stats().logged_applied);
    // The change's row must reach b after the replica for b to hold what the row says, and a
    // notification can be faster than the mesh: b's polls wait for the replica.
    let stall = db.stall_polls(&b.pool).await;
    let receipt = a.rename(1, "grace").await;
    assert_eq!(receipt.value, ("grace".to_owned(), 2));
    cohort_testkit::wait::event(&mut b_events, |e| {
        matches!(e, cohort::ClusterEvent::Applied { event: ref applied, .. } if *applied == receipt.event)
            .then_some(())
    })
    .await
    .expect("the replica reached b");
    D::resume_polls(stall).await;
    let written = Instant::now();
    for (node, applied) in [&a, &b].into_iter().zip(applied_before) {
        node.polled_after(written).await;
        assert!(
            node.users.stats().logged_applied > applied,
            "the change's row was applied"
        );
        assert_eq!(
            node.users.get(&1),
            Some(receipt.value.clone()),
            "kept on {}",
            node.cluster.node_id()
        );
        assert_eq!(node.plain.get(&1), None, "no version column: dropped");
    }
}

/// Changes no node holds the result of drop every copy: an outside update that raises the
/// version, one that does not, and a delete.
pub(crate) async fn outside_changes_drop_every_copy<D: Database>(db: &D) {
    let (a, b) = pair(db).await;
    for (statement, after) in [
        (
            "UPDATE users SET name = 'by hand', version = version + 1 WHERE id = 1",
            Some(("by hand".to_owned(), 2)),
        ),
        (
            "UPDATE users SET name = 'version forgotten' WHERE id = 1",
            Some(("version forgotten".to_owned(), 2)),
        ),
        ("DELETE FROM users WHERE id = 1", None),
    ] {
        db.execute(statement).await;
        let committed = Instant::now();
        for node in [&a, &b] {
            node.polled_after(committed).await;
            assert_eq!(node.users.get(&1), None, "after {statement}");
            assert_eq!(node.plain.get(&1), None, "after {statement}");
            if let Some(after) = &after {
                assert_eq!(&node.read(&node.users, 1).await.0, after);
                node.warm(1).await;
            }
        }
    }
}

/// A load that read version 1, then a logged change to version 2 applied while it is in
/// flight: the load's caller gets what it read, but the cache does not store it, and the next
/// read loads version 2.
pub(crate) async fn a_load_racing_a_logged_change_stores_nothing_older<D: Database>(db: &D) {
    let node = Node::start(db, None).await;
    let (read_tx, read_rx) = oneshot::channel();
    let (finish_tx, finish_rx) = oneshot::channel::<()>();
    let pool = node.pool.clone();
    let load = node.users.fetch(&1, |id| async move {
        let user = D::load(pool, id).await;
        read_tx.send(()).unwrap();
        finish_rx.await.unwrap();
        user
    });
    let change = async {
        read_rx.await.unwrap();
        db.execute("UPDATE users SET name = 'changed', version = version + 1 WHERE id = 1")
            .await;
        node.polled_after(Instant::now()).await;
        finish_tx.send(()).unwrap();
    };
    let (fetched, ()) = tokio::join!(load, change);
    let fetched = fetched.unwrap();
    assert_eq!(
        (fetched.value, fetched.source),
        (("user 1".to_owned(), 1), Source::Loaded)
    );
    assert_eq!(node.users.get(&1), None, "the older value was not stored");
    assert!(node.users.stats().fills_rejected >= 1);
    assert_eq!(
        node.read(&node.users, 1).await,
        (("changed".to_owned(), 2), Source::Loaded)
    );
    assert_eq!(node.read(&node.users, 1).await.1, Source::Cache);
}
