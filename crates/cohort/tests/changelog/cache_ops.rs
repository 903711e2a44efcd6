//! Clears and tag invalidations through the change log alone, and waiting for a cache to serve.

use std::time::Duration;

use cohort::{BulkError, Cache, Changed, Origin, ReadyError, Source};
use cohort_testkit::wait;
use tokio::time::Instant;

use super::{BOUND, Server, User, database, log_polls};

/// A second cache of the users table on `server`'s node, tagged by the parity of the user's
/// number: "user 3" is odd.
fn by_parity(server: &Server) -> Cache<u64, User> {
    server
        .cluster
        .cache::<u64, User>("by parity")
        .watch_table("users", "id")
        .tags(|(name, _): &User| {
            let odd = name
                .bytes()
                .last()
                .is_some_and(|digit| (digit - b'0') % 2 == 1);
            [if odd { "odd" } else { "even" }]
        })
        .build()
        .unwrap()
}

async fn load(cache: &Cache<u64, User>, server: &Server, id: u64) -> Source {
    let db = server.db.clone();
    cache
        .fetch(&id, |id| async move {
            sqlx::query_as::<_, User>("SELECT name, version FROM users WHERE id = ?")
                .bind(id as i64)
                .fetch_one(&db)
                .await
        })
        .await
        .unwrap()
        .source
}

/// Two nodes with no mesh between them: a tag invalidation and a clear through one reach the
/// other through rows cohort appends to the log, within the bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_mesh_a_tag_invalidation_and_a_clear_travel_through_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = database(dir.path()).await;
    let a = Server::start(&path, Duration::from_secs(600)).await;
    let b = Server::start(&path, Duration::from_secs(600)).await;
    let (on_a, on_b) = (by_parity(&a), by_parity(&b));
    for cache in [&on_a, &on_b] {
        cache.ready(wait::PATIENCE).await.unwrap();
    }
    for id in 1..=4 {
        load(&on_b, &b, id).await;
        assert_eq!(load(&on_b, &b, id).await, Source::Cache);
    }
    let mut b_events = b.cluster.subscribe();
    let mut b_changes = on_b.changes();

    on_a.invalidate_tag("odd").await.unwrap();
    let returned = Instant::now();
    log_polls::poll_after(&mut b_events, returned).await;
    assert!(returned.elapsed() < BOUND, "{:?}", returned.elapsed());
    assert_eq!((on_b.get(&1), on_b.get(&3)), (None, None));
    assert!(on_b.get(&2).is_some() && on_b.get(&4).is_some());
    assert!(
        b.users.stats().logged_applied == 0,
        "the other cache of the table is untouched"
    );

    on_a.clear().await.unwrap();
    let returned = Instant::now();
    log_polls::poll_after(&mut b_events, returned).await;
    assert!(returned.elapsed() < BOUND, "{:?}", returned.elapsed());
    assert_eq!(on_b.get_many(&[1, 2, 3, 4]).len(), 0);
    assert_eq!(on_b.stats().logged_applied, 2);
    for expected in [Changed::Tag("odd".to_owned()), Changed::Clear] {
        let event = b_changes.recv().await.unwrap().unwrap();
        assert_eq!((event.change, event.origin), (expected, Origin::ChangeLog));
    }
}

/// With its database gone, a clear still empties the cache here (and goes to every peer) but
/// says the log did not record it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clear_the_log_cannot_record_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = database(dir.path()).await;
    let server = Server::start(&path, Duration::from_secs(600)).await;
    load(&server.users, &server, 1).await;
    server.db.close().await;
    let error = server.users.clear().await.unwrap_err();
    assert!(matches!(error, BulkError::Log(_)), "{error}");
    assert!(error.to_string().contains("did not record"), "{error}");
    assert_eq!(server.users.get(&1), None, "cleared here all the same");
    let error = server.users.invalidate_tag("any").await.unwrap_err();
    assert!(matches!(error, BulkError::Log(_)), "{error}");
}

/// `ready` returns once the cache serves, so the first loads after it are stored; it names a
/// missing table when the cache cannot serve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_waits_for_the_first_poll_and_says_why_it_cannot() {
    let dir = tempfile::tempdir().unwrap();
    let path = database(dir.path()).await;
    let server = Server::start(&path, Duration::from_secs(600)).await;
    let fresh = by_parity(&server);
    fresh.ready(wait::PATIENCE).await.unwrap();
    assert!(fresh.is_serving());
    assert_eq!(load(&fresh, &server, 1).await, Source::Loaded);
    assert!(fresh.get(&1).is_some(), "the first load is stored");

    let missing = server
        .cluster
        .cache::<u64, User>("missing")
        .watch_table("no_such_table", "id")
        .build()
        .unwrap();
    let error = missing.ready(BOUND).await.unwrap_err();
    assert!(
        matches!(error, ReadyError::NotInstalled { last_error: Some(ref e), .. } if e.contains("no_such_table")),
        "{error}"
    );
}
