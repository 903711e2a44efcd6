//! Authoritative reads (`fetch_fresh`) across three nodes.

use std::convert::Infallible;
use std::sync::Arc;

use cohort::{Mode, Source};
use cohort_testkit::wait;
use tokio::sync::Notify;

use super::{Db, applied, load, mesh, users, write};

/// `fetch_fresh` reads the source whatever the cache holds and stores what it read; a read of
/// the key meanwhile waits for it instead of loading; an update through another node that lands
/// while it reads leaves its value returned but not stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_fresh_reads_the_source_and_stores_unless_overtaken() {
    let nodes = mesh(3).await;
    let db = Db::with(&[(1, "ada")]);
    let caches: Vec<_> = nodes.iter().map(|n| users(n, Mode::Invalidate)).collect();
    for cache in &caches {
        cache.ready(wait::PATIENCE).await.unwrap();
    }
    let a = &caches[0];
    load(a, &db, 1).await;
    // A change the cache was not told of: only an authoritative read sees it.
    db.write(1, "ada lovelace");
    assert_eq!(a.get(&1).unwrap().0, "ada");
    let fresh = {
        let db = db.clone();
        a.fetch_fresh(&1, |id| async move { Ok::<_, Infallible>(db.read(id)) })
            .await
            .unwrap()
    };
    assert_eq!(
        (fresh.value.0.as_str(), fresh.source),
        ("ada lovelace", Source::Loaded)
    );
    assert_eq!(a.get(&1).unwrap().0, "ada lovelace", "stored");

    let (read, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let overtaken = {
        let (a, db, read, release) = (a.clone(), db.clone(), read.clone(), release.clone());
        tokio::spawn(async move {
            a.fetch_fresh(&1, |id| async move {
                let row = db.read(id);
                read.notify_one();
                release.notified().await;
                Ok::<_, Infallible>(row)
            })
            .await
            .unwrap()
        })
    };
    read.notified().await;
    assert_eq!(
        a.get(&1),
        None,
        "the held copy is dropped before the source is read"
    );
    let waiting = {
        let (a, db) = (a.clone(), db.clone());
        tokio::spawn(async move { load(&a, &db, 1).await })
    };
    let mut a_events = nodes[0].subscribe();
    let event = write(&caches[1], &db, 1, "grace").await;
    applied(&mut a_events, &event).await;
    let reads = db.reads();
    release.notify_one();

    let overtaken = overtaken.await.unwrap();
    assert_eq!(
        overtaken.value.0, "ada lovelace",
        "the caller gets what it read"
    );
    assert_eq!(a.stats().fills_rejected, 1, "but it is not stored");
    // The waiting read overlapped the update: it may return either value (it loads afresh, and
    // stores, only if it came to the key after the update voided the slot).
    let waited = waiting.await.unwrap();
    assert!(
        waited.0 == "ada lovelace" || waited.0 == "grace",
        "{waited:?}"
    );
    assert!(db.reads() <= reads + 1);
    assert_eq!(
        load(a, &db, 1).await.0,
        "grace",
        "only the newer value is ever held"
    );
}
