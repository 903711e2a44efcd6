//! Batch loads and change hooks across three nodes.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use cohort::{ChangeEvent, Changed, Changes, Mode, Origin};
use cohort_testkit::wait;
use parking_lot::Mutex;
use tokio::sync::Notify;

use super::{Db, User, applied, load, mesh, users, write};

impl Db {
    /// The rows of `ids` that exist, one read counted per row asked.
    fn read_many(&self, ids: &[u64]) -> Vec<(u64, User)> {
        self.reads.fetch_add(ids.len(), Ordering::SeqCst);
        let rows = self.rows.lock();
        ids.iter()
            .filter_map(|id| Some((*id, rows.get(id)?.clone())))
            .collect()
    }
}

/// A batch loader that read every row before a peer's update of one of them, and finishes
/// after that update was applied: every value is returned, the overtaken one alone is not
/// stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_overtaken_by_an_update_of_one_key_stores_the_others() {
    let nodes = mesh(3).await;
    let db = Db::with(&[(1, "ada"), (2, "bob"), (3, "cy")]);
    let (a, b) = (
        users(&nodes[0], Mode::Invalidate),
        users(&nodes[1], Mode::Invalidate),
    );
    let _c = users(&nodes[2], Mode::Invalidate);
    let (read_done, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));

    let loading = {
        let (a, db, read_done, release) =
            (a.clone(), db.clone(), read_done.clone(), release.clone());
        tokio::spawn(async move {
            a.get_or_load_many(&[1, 2, 3], |ids| {
                let (db, read_done, release) = (db.clone(), read_done.clone(), release.clone());
                async move {
                    let rows = db.read_many(&ids);
                    read_done.notify_one();
                    release.notified().await;
                    Ok::<_, Infallible>(rows)
                }
            })
            .await
            .unwrap()
        })
    };
    read_done.notified().await;
    let mut a_events = nodes[0].subscribe();
    let event = write(&b, &db, 2, "bea").await;
    applied(&mut a_events, &event).await;
    release.notify_one();

    let found = loading.await.unwrap();
    assert_eq!(found.len(), 3);
    assert_eq!(found[&2].0, "bob", "the caller gets what the loader read");
    assert_eq!(a.get(&1).unwrap().0, "ada");
    assert_eq!(a.get(&3).unwrap().0, "cy");
    assert_eq!(a.get(&2), None, "the overtaken value was not stored");
    assert_eq!(a.stats().fills_rejected, 1);
    assert_eq!(a.stats().loads, 1, "one loader call for the batch");
    assert_eq!(load(&a, &db, 2).await.0, "bea");
}

/// Two overlapping batches and a single load on one node: every key is read once, by whoever
/// claimed it first; a key without a row is absent and not stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_batches_load_each_key_once() {
    let nodes = mesh(3).await;
    let rows: Vec<(u64, String)> = (1..=15).map(|id| (id, format!("user {id}"))).collect();
    let db = Db::with(
        &rows
            .iter()
            .map(|(id, name)| (*id, name.as_str()))
            .collect::<Vec<_>>(),
    );
    let a = users(&nodes[0], Mode::Invalidate);
    let calls: Arc<Mutex<Vec<Vec<u64>>>> = Arc::default();
    let release = Arc::new(Notify::new());

    let batch = |keys: Vec<u64>| {
        let (a, db, calls, release) = (a.clone(), db.clone(), calls.clone(), release.clone());
        let entered = Arc::new(Notify::new());
        let task = {
            let entered = entered.clone();
            tokio::spawn(async move {
                a.get_or_load_many(&keys, |mut ids| {
                    let (db, calls, entered, release) =
                        (db.clone(), calls.clone(), entered.clone(), release.clone());
                    async move {
                        ids.sort_unstable();
                        calls.lock().push(ids.clone());
                        entered.notify_one();
                        release.notified().await;
                        Ok::<_, Infallible>(
                            db.read_many(&ids).into_iter().collect::<HashMap<_, _>>(),
                        )
                    }
                })
                .await
                .unwrap()
            })
        };
        (task, entered)
    };
    let (first, first_entered) = batch((1..=10).chain([99]).collect());
    first_entered.notified().await;
    let (second, second_entered) = batch((5..=15).collect());
    second_entered.notified().await;
    // A single load of a key the first batch holds parks on it instead of loading.
    let misses = a.stats().misses;
    let single = {
        let (a, db) = (a.clone(), db.clone());
        tokio::spawn(async move { load(&a, &db, 7).await })
    };
    while a.stats().misses == misses {
        tokio::task::yield_now().await;
    }
    release.notify_waiters();
    // Each loader waits on its own `notified()`: wake any that was not yet waiting.
    let first = loop {
        if first.is_finished() {
            break first.await.unwrap();
        }
        release.notify_waiters();
        tokio::task::yield_now().await;
    };
    let second = second.await.unwrap();

    assert_eq!(
        *calls.lock(),
        vec![
            (1..=10).chain([99]).collect::<Vec<_>>(),
            (11..=15).collect()
        ],
        "the second batch loads only the keys nobody was loading"
    );
    assert_eq!(single.await.unwrap().0, "user 7");
    assert_eq!(
        db.reads(),
        16,
        "15 rows and the missing one, each read once"
    );
    assert_eq!(first.len(), 10, "the missing row is absent");
    assert!(!first.contains_key(&99));
    assert_eq!(second.len(), 11);
    assert_eq!(second[&5].0, "user 5", "a key loaded by the first batch");
    assert_eq!(a.get_many(&(1..=15).collect::<Vec<_>>()).len(), 15);
    assert_eq!(a.get(&99), None, "nothing stored for a missing row");
    assert_eq!(a.stats().loads, 2);
}

/// Reads `changes` until it has seen `marker` from each of `origins`, returning every event.
async fn until_markers(
    changes: &mut Changes<u64>,
    marker: u64,
    origins: &[Origin],
) -> Vec<ChangeEvent<u64>> {
    let mut events = Vec::new();
    let mut seen = 0;
    while seen < origins.len() {
        let event = wait::within(changes.recv())
            .await
            .expect("a change arrives")
            .expect("the cache lives")
            .expect("the subscriber keeps up");
        if event.change == Changed::Key(marker) {
            seen += 1;
        }
        events.push(event);
    }
    events
}

/// Every node's hook sees every change once, in order per origin: its own calls as local, the
/// others' as coming from their node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_see_every_change_once_in_order_per_origin() {
    let nodes = mesh(3).await;
    let db = Db::with(&(0..=100).map(|id| (id, "x")).collect::<Vec<_>>());
    let caches: Vec<_> = nodes.iter().map(|n| users(n, Mode::Invalidate)).collect();
    let mut changes: Vec<_> = caches.iter().map(|c| c.changes()).collect();
    let marker = 100;

    // Node i changes keys 10 i + 1 ..= 10 i + 10, alternating updates and invalidations, then
    // the marker key.
    let runs = caches.iter().enumerate().map(|(i, cache)| {
        let (cache, db) = (cache.clone(), db.clone());
        tokio::spawn(async move {
            for key in (10 * i as u64 + 1)..=(10 * i as u64 + 10) {
                if key % 2 == 0 {
                    write(&cache, &db, key, "y").await;
                } else {
                    cache.invalidate(&key).await.unwrap();
                }
            }
            cache.invalidate(&marker).await.unwrap();
        })
    });
    for run in runs.collect::<Vec<_>>() {
        run.await.unwrap();
    }

    let names: Vec<_> = nodes.iter().map(|n| n.node_id().clone()).collect();
    for (me, changes) in changes.iter_mut().enumerate() {
        let origin_of = |i: usize| {
            if i == me {
                Origin::Local
            } else {
                Origin::Peer(names[i].clone())
            }
        };
        let origins: Vec<_> = (0..3).map(origin_of).collect();
        let events = until_markers(changes, marker, &origins).await;
        for (i, origin) in origins.iter().enumerate() {
            let keys: Vec<u64> = events
                .iter()
                .filter(|e| &e.origin == origin)
                .map(|e| match e.change {
                    Changed::Key(key) => key,
                    ref other => panic!("unexpected change {other:?}"),
                })
                .collect();
            let expected: Vec<u64> = ((10 * i as u64 + 1)..=(10 * i as u64 + 10))
                .chain([marker])
                .collect();
            assert_eq!(
                keys, expected,
                "node {me}: changes from node {i}, once each, in order"
            );
        }
        assert_eq!(events.len(), 33, "node {me}: nothing else");
    }
}
