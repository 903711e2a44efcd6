//! Partitioned mode over real TCP: one owner per key, one load per key for the whole cluster,
//! owners asked over the mesh, hot copies, and the cross-node stale-fill rule.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use cohort::{Cache, Cluster, Fetched, Mode, NodeId, Source};
use tokio::sync::Notify;

use super::{Db, User, applied, mesh, wait_linked};

/// The partitioned "users" cache of `node`, whose owner loads from `db`; `hot` bytes of hot
/// copies.
fn users(node: &Cluster, db: &Db, hot: u64) -> Cache<u64, User> {
    let db = db.clone();
    let mut builder = node.cache::<u64, User>("users");
    builder.mode(Mode::Partitioned).loader(move |id| {
        let db = db.clone();
        async move { Ok::<_, Infallible>(db.read(id)) }
    });
    if hot > 0 {
        builder.hot_copies(hot);
    }
    builder.build().unwrap()
}

async fn read(cache: &Cache<u64, User>, db: &Db, id: u64) -> Fetched<User> {
    let db = db.clone();
    cache
        .fetch(&id, |id| async move { Ok::<_, Infallible>(db.read(id)) })
        .await
        .unwrap()
}

/// The index of the node owning `id`, after checking that every node agrees on it.
fn owner_index(nodes: &[Cluster], caches: &[Cache<u64, User>], id: u64) -> usize {
    let owners: Vec<NodeId> = caches.iter().map(|c| c.owner(&id).unwrap()).collect();
    assert!(owners.iter().all(|o| o == &owners[0]), "{owners:?}");
    nodes
        .iter()
        .position(|n| n.node_id() == &owners[0])
        .expect("the owner is a member")
}

fn rows(n: u64) -> Db {
    let names: Vec<(u64, String)> = (0..n).map(|id| (id, format!("user {id}"))).collect();
    let borrowed: Vec<(u64, &str)> = names.iter().map(|(id, n)| (*id, n.as_str())).collect();
    Db::with(&borrowed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_key_is_loaded_once_for_the_whole_cluster_and_held_once() {
    let nodes = mesh(3).await;
    let db = rows(60);
    let caches: Vec<_> = nodes.iter().map(|n| users(n, &db, 0)).collect();

    for id in 0..60 {
        let owner = owner_index(&nodes, &caches, id);
        for (i, cache) in caches.iter().enumerate() {
            let fetched = read(cache, &db, id).await;
            assert_eq!(fetched.value.0, format!("user {id}"));
            // Node 0 reads first: as the owner it loads; otherwise its ask makes the owner load,
            // and the owner later finds its own copy.
            let expected = match (i == owner, i == 0) {
                (true, true) => Source::Loaded,
                (true, false) => Source::Cache,
                (false, _) => Source::Owner,
            };
            assert_eq!(fetched.source, expected, "key {id} read on node {i}");
        }
    }
    assert_eq!(db.reads(), 60, "one load per key for the whole cluster");
    let held: usize = caches.iter().map(|c| c.stats().entries).sum();
    assert_eq!(held, 60, "each key held once in the cluster");
    let owned: Vec<usize> = caches.iter().map(|c| c.stats().entries).collect();
    assert!(owned.iter().all(|&n| n >= 8), "keys spread: {owned:?}");
    let remote: u64 = caches.iter().map(|c| c.stats().remote_hits).sum();
    assert_eq!(remote, 120);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reads_on_every_node_share_one_load() {
    // A long bound, so that the owner timeout (at most the bound) outlasts the held load.
    let nodes = slow_bound_mesh(3).await;
    let db = rows(1);
    let gate = Arc::new(Notify::new());
    // The owner's load waits for the gate, so that every read is in flight at once.
    let caches: Vec<_> = nodes
        .iter()
        .map(|node| {
            let (db, gate) = (db.clone(), Arc::clone(&gate));
            node.cache::<u64, User>("users")
                .mode(Mode::Partitioned)
                .owner_timeout(Duration::from_secs(5))
                .loader(move |id| {
                    let (db, gate) = (db.clone(), Arc::clone(&gate));
                    async move {
                        gate.notified().await;
                        Ok::<_, Infallible>(db.read(id))
                    }
                })
                .build()
                .unwrap()
        })
        .collect();
    let owner = owner_index(&nodes, &caches, 0);
    let mut reads = Vec::new();
    for (i, cache) in caches.iter().enumerate() {
        if i == owner {
            continue;
        }
        for _ in 0..8 {
            let cache = cache.clone();
            reads.push(tokio::spawn(async move {
                cache
                    .fetch(&0, |_| async { unreachable!("the owner answers") })
                    .await
                    .map_err(|e: Infallible| e)
            }));
        }
    }
    let mut events = nodes[owner].subscribe();
    cohort_testkit::wait::until(&mut events, || caches[owner].stats().loads == 1)
        .await
        .expect("the owner started its one load");
    gate.notify_one();
    for read in reads {
        let fetched = read.await.unwrap().unwrap();
        assert_eq!(fetched.source, Source::Owner);
        assert_eq!(fetched.value.0, "user 0");
    }
    assert_eq!(db.reads(), 1);
    assert_eq!(caches[owner].stats().served, 16);
}

/// A node's own write travels ahead of its next ask on the same link: the owner has dropped the
/// old value before it answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writers_next_read_sees_its_own_write() {
    let nodes = mesh(3).await;
    let db = rows(40);
    let caches: Vec<_> = nodes.iter().map(|n| users(n, &db, 1 << 20)).collect();
    for id in 0..40 {
        let owner = owner_index(&nodes, &caches, id);
        let writer = (owner + 1) % 3;
        // Warm the owner and the writer's hot copy (the second read admits it).
        for _ in 0..3 {
            read(&caches[writer], &db, id).await;
        }
        for round in 0..5 {
            let name = format!("user {id}, round {round}");
            let receipt = caches[writer]
                .update(&id, |id| {
                    let db = db.clone();
                    let name = name.clone();
                    async move { Ok::<_, Infallible>(db.write(id, &name)) }
                })
                .await
                .unwrap();
            let fetched = read(&caches[writer], &db, id).await;
            assert_eq!(fetched.value, receipt.value, "key {id} round {round}");
            assert_eq!(fetched.source, Source::Owner);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_key_is_copied_and_every_change_removes_the_copy() {
    let nodes = mesh(3).await;
    let db = rows(1);
    let caches: Vec<_> = nodes.iter().map(|n| users(n, &db, 1 << 20)).collect();
    let owner = owner_index(&nodes, &caches, 0);
    let (reader, writer) = ((owner + 1) % 3, (owner + 2) % 3);
    let mut sources = Vec::new();
    for _ in 0..3 {
        sources.push(read(&caches[reader], &db, 0).await.source);
    }
    // The first answer is not kept (one read is not hot), the second is.
    assert_eq!(sources, [Source::Owner, Source::Owner, Source::Cache]);
    assert_eq!(caches[reader].get(&0).unwrap().0, "user 0");

    let mut events = nodes[reader].subscribe();
    let event = caches[writer].invalidate(&0).await.unwrap();
    applied(&mut events, &event).await;
    assert_eq!(caches[reader].get(&0), None, "the change removed the copy");
}

/// An answer may be as old as the owner's lag: one for a key this node saw change lately is
/// returned but not kept, or it could outlive the change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_for_a_key_changed_lately_is_not_kept() {
    let nodes = slow_bound_mesh(3).await;
    let db = rows(1);
    let caches: Vec<_> = nodes.iter().map(|n| users(n, &db, 1 << 20)).collect();
    let owner = owner_index(&nodes, &caches, 0);
    let reader = (owner + 1) % 3;
    read(&caches[reader], &db, 0).await;
    caches[reader].invalidate(&0).await.unwrap();
    for _ in 0..4 {
        assert_eq!(read(&caches[reader], &db, 0).await.source, Source::Owner);
    }
    assert_eq!(caches[reader].get(&0), None);
}

/// An owner whose answer does not come within the owner timeout is skipped: the reader loads
/// the key itself, and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_that_does_not_answer_in_time_is_skipped() {
    let nodes = mesh(2).await;
    let db = rows(1);
    let stuck = Arc::new(Notify::new());
    let caches: Vec<_> = nodes
        .iter()
        .map(|node| {
            let stuck = Arc::clone(&stuck);
            node.cache::<u64, User>("users")
                .mode(Mode::Partitioned)
                .owner_timeout(Duration::from_millis(50))
                .loader(move |_| {
                    let stuck = Arc::clone(&stuck);
                    async move {
                        stuck.notified().await;
                        Ok::<_, Infallible>(("never".to_owned(), 0))
                    }
                })
                .build()
                .unwrap()
        })
        .collect();
    let owner = owner_index(&nodes, &caches, 0);
    let reader = 1 - owner;
    let fetched = read(&caches[reader], &db, 0).await;
    assert_eq!(fetched.source, Source::OwnerSkipped);
    assert_eq!(fetched.value.0, "user 0");
    assert_eq!(caches[reader].stats().owner_skipped, 1);
}

/// When the owner goes away, its keys move to the others (and only its keys).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_that_leaves_hands_its_keys_to_the_others() {
    let nodes = mesh(3).await;
    let db = rows(60);
    let caches: Vec<_> = nodes.iter().map(|n| users(n, &db, 0)).collect();
    let before: Vec<usize> = (0..60).map(|id| owner_index(&nodes, &caches, id)).collect();
    let gone = nodes[2].node_id().clone();
    let mut events: Vec<_> = nodes[..2].iter().map(Cluster::subscribe).collect();
    nodes[2].shutdown().await;
    for (i, events) in events.iter_mut().enumerate() {
        cohort_testkit::wait::until(events, || {
            (0..60).all(|id| caches[i].owner(&id).as_ref() != Some(&gone))
        })
        .await
        .expect("the survivors noticed the leave");
    }
    for id in 0..60 {
        let after = owner_index(&nodes[..2], &caches[..2], id);
        let was = before[id as usize];
        if was != 2 {
            assert_eq!(after, was, "key {id} moved though its owner stayed");
        }
        let fetched = read(&caches[1 - after], &db, id).await;
        assert_eq!(fetched.source, Source::Owner, "key {id}");
    }
}

/// Nodes whose bound is long, so that "lately" spans a whole test.
async fn slow_bound_mesh(n: usize) -> Vec<Cluster> {
    let bound = Duration::from_secs(10);
    let first = Cluster::builder()
        .node_name("s0")
        .max_staleness(bound)
        .start()
        .await
        .unwrap();
    let seed = first.local_addr().to_string();
    let mut nodes = vec![first];
    for i in 1..n {
        nodes.push(
            Cluster::builder()
                .node_name(format!("s{i}"))
                .max_staleness(bound)
                .seeds([seed.clone()])
                .start()
                .await
                .unwrap(),
        );
    }
    for node in &nodes {
        wait_linked(node, n - 1).await;
    }
    nodes
}

/// With a version, an update carries its value: the owner holding the key takes it in place of
/// its older copy, and no node loads the key again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_the_replicate_flavour_the_owner_takes_the_writers_value() {
    let nodes = mesh(3).await;
    let db = rows(1);
    let caches: Vec<_> = nodes
        .iter()
        .map(|node| {
            let db = db.clone();
            node.cache::<u64, User>("users")
                .mode(Mode::Partitioned)
                .version(|(_, version)| *version)
                .loader(move |id| {
                    let db = db.clone();
                    async move { Ok::<_, Infallible>(db.read(id)) }
                })
                .build()
                .unwrap()
        })
        .collect();
    let owner = owner_index(&nodes, &caches, 0);
    let (writer, reader) = ((owner + 1) % 3, (owner + 2) % 3);
    read(&caches[reader], &db, 0).await;
    assert_eq!(db.reads(), 1);

    let mut events = nodes[owner].subscribe();
    let receipt = caches[writer]
        .update(&0, |id| {
            let db = db.clone();
            async move { Ok::<_, Infallible>(db.write(id, "renamed")) }
        })
        .await
        .unwrap();
    applied(&mut events, &receipt.event).await;
    assert_eq!(caches[owner].get(&0), Some(receipt.value.clone()));
    let fetched = read(&caches[reader], &db, 0).await;
    assert_eq!(
        (fetched.value, fetched.source),
        (receipt.value, Source::Owner)
    );
    assert_eq!(db.reads(), 1, "nobody loaded the key again");
}
