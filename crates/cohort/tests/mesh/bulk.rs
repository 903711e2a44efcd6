//! Changes to many entries at once across three nodes: `invalidate_many`, `clear` and tags,
//! each racing a load on another node, and what the change hooks see of them.

use std::convert::Infallible;
use std::sync::Arc;

use cohort::{Cache, Changed, Cluster, Mode, Origin};
use cohort_testkit::wait;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::{Db, User, applied, load, mesh};

/// Users tagged with their team, the part of the name before the colon: "red:ada".
fn tagged_users(node: &Cluster) -> Cache<u64, User> {
    node.cache::<u64, User>("users")
        .mode(Mode::Invalidate)
        .tags(|(name, _): &User| name.split_once(':').map(|(team, _)| team.to_owned()))
        .build()
        .unwrap()
}

/// A load of `id` on `cache` that has read the source and waits for `release` to return.
struct HeldLoad {
    task: JoinHandle<User>,
    release: Arc<Notify>,
}

impl HeldLoad {
    async fn start(cache: &Cache<u64, User>, db: &Db, id: u64) -> Self {
        let (read, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        let task = {
            let (cache, db, read, release) =
                (cache.clone(), db.clone(), read.clone(), release.clone());
            tokio::spawn(async move {
                cache
                    .get_or_load(&id, |id| async move {
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
        Self { task, release }
    }

    async fn finish(self) -> User {
        self.release.notify_one();
        self.task.await.unwrap()
    }
}

/// One `invalidate_many` drops its keys on every node as one event, and a load of one of them
/// racing it on another node returns but stores nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidate_many_drops_its_keys_everywhere_in_one_event() {
    let nodes = mesh(3).await;
    let db = Db::with(&[(1, "ada"), (2, "bob"), (3, "cy"), (4, "dee")]);
    let caches: Vec<_> = nodes.iter().map(tagged_users).collect();
    for cache in &caches[..2] {
        for id in 1..=3 {
            load(cache, &db, id).await;
        }
    }
    let racing = HeldLoad::start(&caches[2], &db, 1).await;
    let sent = nodes[1].stats().events_sent;
    let mut events: Vec<_> = nodes.iter().map(Cluster::subscribe).collect();

    let event = caches[1]
        .invalidate_many(&[1, 2, 4])
        .await
        .unwrap()
        .expect("an event for a list that is not empty");
    assert_eq!(nodes[1].stats().events_sent, sent + 1, "one event");
    for i in [0, 2] {
        applied(&mut events[i], &event).await;
    }
    assert_eq!(racing.finish().await.0, "ada", "the racing load returns");
    for cache in &caches {
        assert_eq!(
            (cache.get(&1), cache.get(&2), cache.get(&4)),
            (None, None, None)
        );
    }
    assert_eq!(caches[0].get(&3).unwrap().0, "cy", "other keys stay");
    assert_eq!(caches[2].stats().fills_rejected, 1);
    assert_eq!(caches[1].invalidate_many(&[]).await.unwrap(), None);
}

/// A list too long for one frame goes as several events, in order, and every key is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_longer_than_a_frame_goes_as_several_events() {
    let start = |name: &str, seed: Option<&Cluster>| {
        let mut builder = Cluster::builder();
        builder.node_name(name).max_frame_bytes(64 << 10);
        if let Some(seed) = seed {
            builder.seeds([seed.local_addr().to_string()]);
        }
        async move { builder.start().await.unwrap() }
    };
    let a = start("a", None).await;
    let b = start("b", Some(&a)).await;
    super::wait_linked(&a, 1).await;
    super::wait_linked(&b, 1).await;
    let ids: Vec<u64> = (0..20_000).collect();
    let (users_a, users_b) = (tagged_users(&a), tagged_users(&b));
    let filled = users_a
        .get_or_load_many(&ids, |ids| async move {
            Ok::<_, Infallible>(ids.into_iter().map(|id| (id, ("x".to_owned(), 1))))
        })
        .await
        .unwrap();
    assert_eq!(users_a.get_many(&ids).len(), filled.len());
    let sent = b.stats().events_sent;
    let mut events = a.subscribe();
    let last = users_b.invalidate_many(&ids).await.unwrap().unwrap();
    let events_sent = b.stats().events_sent - sent;
    assert!(events_sent > 1, "one frame cannot hold 20,000 keys");
    applied(&mut events, &last).await;
    assert_eq!(users_a.get_many(&ids).len(), 0, "{events_sent} events");
}

/// A clear through one node empties every node's cache, and a load racing it on another node
/// returns but stores nothing; reads afterwards load afresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clear_empties_every_node_and_voids_a_racing_load() {
    let nodes = mesh(3).await;
    let db = Db::with(&[(1, "ada"), (2, "bob"), (3, "cy")]);
    let caches: Vec<_> = nodes.iter().map(tagged_users).collect();
    for cache in &caches {
        for id in 2..=3 {
            load(cache, &db, id).await;
        }
    }
    let racing = HeldLoad::start(&caches[2], &db, 1).await;
    let mut events: Vec<_> = nodes.iter().map(Cluster::subscribe).collect();

    let event = caches[0].clear().await.unwrap();
    for i in [1, 2] {
        applied(&mut events[i], &event).await;
    }
    racing.finish().await;
    for cache in &caches {
        assert_eq!(cache.get_many(&[1, 2, 3]).len(), 0);
    }
    assert_eq!(caches[2].stats().fills_rejected, 1);
    let reads = db.reads();
    assert_eq!(load(&caches[1], &db, 2).await.0, "bob");
    assert_eq!(db.reads(), reads + 1, "loaded afresh");
    assert_eq!(caches[1].get(&2).unwrap().0, "bob", "and stored again");
}

/// A tag invalidation drops exactly the entries carrying the tag on every node, and a load
/// racing it returns but stores nothing if its value carries the tag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_invalidation_drops_the_tagged_entries_everywhere() {
    let nodes = mesh(3).await;
    let db = Db::with(&[
        (1, "red:ada"),
        (2, "red:bob"),
        (3, "blue:cy"),
        (4, "dee"),
        (5, "red:eve"),
        (6, "blue:fay"),
    ]);
    let caches: Vec<_> = nodes.iter().map(tagged_users).collect();
    for cache in &caches {
        for id in 1..=4 {
            load(cache, &db, id).await;
        }
    }
    let red = HeldLoad::start(&caches[2], &db, 5).await;
    let blue = HeldLoad::start(&caches[1], &db, 6).await;
    let mut events: Vec<_> = nodes.iter().map(Cluster::subscribe).collect();

    let event = caches[0].invalidate_tag("red").await.unwrap();
    for i in [1, 2] {
        applied(&mut events[i], &event).await;
    }
    assert_eq!(red.finish().await.0, "red:eve");
    assert_eq!(blue.finish().await.0, "blue:fay");
    for cache in &caches {
        assert_eq!(
            (cache.get(&1), cache.get(&2), cache.get(&5)),
            (None, None, None)
        );
        assert_eq!(cache.get(&3).unwrap().0, "blue:cy");
        assert_eq!(cache.get(&4).unwrap().0, "dee");
    }
    assert_eq!(
        caches[2].stats().fills_rejected,
        1,
        "the red load is voided"
    );
    assert_eq!(
        caches[1].get(&6).unwrap().0,
        "blue:fay",
        "a load of another tag is stored"
    );
    // A user moved to the red team after the invalidation is cached under its new tag.
    assert_eq!(load(&caches[0], &db, 5).await.0, "red:eve");
    assert_eq!(caches[0].get(&5).unwrap().0, "red:eve");
}

/// Every node's hook sees each bulk change once, with its origin: its own as local, the
/// others' as coming from their node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_see_bulk_changes_with_their_origin() {
    let nodes = mesh(3).await;
    let caches: Vec<_> = nodes.iter().map(tagged_users).collect();
    let mut changes: Vec<_> = caches.iter().map(Cache::changes).collect();
    let mut events: Vec<_> = nodes.iter().map(Cluster::subscribe).collect();

    caches[1].invalidate_many(&[7, 8]).await.unwrap();
    caches[1].invalidate_tag("red").await.unwrap();
    let last = caches[1].clear().await.unwrap();
    for i in [0, 2] {
        applied(&mut events[i], &last).await;
    }
    let expected = [
        Changed::Key(7),
        Changed::Key(8),
        Changed::Tag("red".to_owned()),
        Changed::Clear,
    ];
    for (me, changes) in changes.iter_mut().enumerate() {
        let origin = if me == 1 {
            Origin::Local
        } else {
            Origin::Peer(nodes[1].node_id().clone())
        };
        for change in &expected {
            let event = wait::within(changes.recv())
                .await
                .expect("a change arrives")
                .expect("the cache lives")
                .expect("the subscriber keeps up");
            assert_eq!(
                (&event.change, &event.origin),
                (change, &origin),
                "node {me}"
            );
        }
    }
}
