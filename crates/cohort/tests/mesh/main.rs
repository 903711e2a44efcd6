//! Nodes on real loopback TCP: propagation, modes, single flight, stale fills, bad input, discovery.
//!
//! Waiting is always on an event (a peer link coming up, an event applied), never on a sleep.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cohort::{Cache, Cluster, ClusterEvent, EventId, Mode};
use cohort_testkit::wait;
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use cluster::{applied, wait_linked};

#[path = "../common/alone.rs"]
mod alone;
#[path = "../common/cluster.rs"]
mod cluster;

mod batch;
mod bulk;
mod fresh;
mod keys;
mod limits;
mod members;
mod partitioned;

/// A stand-in for the source of truth: rows of (name, version) by id, counting reads.
#[derive(Clone, Default)]
struct Db {
    rows: Arc<Mutex<HashMap<u64, User>>>,
    reads: Arc<AtomicUsize>,
}

type User = (String, u64);

impl Db {
    fn with(rows: &[(u64, &str)]) -> Self {
        let db = Self::default();
        for &(id, name) in rows {
            db.rows.lock().insert(id, (name.to_owned(), 1));
        }
        db
    }

    fn read(&self, id: u64) -> User {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.rows.lock()[&id].clone()
    }

    fn write(&self, id: u64, name: &str) -> User {
        let mut rows = self.rows.lock();
        let row = rows.get_mut(&id).expect("row exists");
        *row = (name.to_owned(), row.1 + 1);
        row.clone()
    }

    fn reads(&self) -> usize {
        self.reads.load(Ordering::SeqCst)
    }
}

/// Starts `n` nodes, each seeded with the first, and waits until every one links to every other.
async fn mesh(n: usize) -> Vec<Cluster> {
    let first = Cluster::builder().node_name("n0").start().await.unwrap();
    let seed = first.local_addr().to_string();
    let mut nodes = vec![first];
    for i in 1..n {
        let node = Cluster::builder()
            .node_name(format!("n{i}"))
            .seeds([seed.clone()])
            .start()
            .await
            .unwrap();
        nodes.push(node);
    }
    for node in &nodes {
        wait_linked(node, n - 1).await;
    }
    nodes
}

/// Starts a node named `name` with `seed` as its only seed.
async fn join(name: &str, seed: &Cluster) -> Cluster {
    Cluster::builder()
        .node_name(name)
        .seeds([seed.local_addr().to_string()])
        .start()
        .await
        .unwrap()
}

fn users(node: &Cluster, mode: Mode) -> Cache<u64, User> {
    let mut builder = node.cache::<u64, User>("users");
    builder.mode(mode).version(|(_, version)| *version);
    builder.build().unwrap()
}

async fn load(cache: &Cache<u64, User>, db: &Db, id: u64) -> User {
    let db = db.clone();
    cache
        .get_or_load(&id, |id| async move { Ok::<_, Infallible>(db.read(id)) })
        .await
        .unwrap()
}

async fn write(cache: &Cache<u64, User>, db: &Db, id: u64, name: &str) -> EventId {
    let (db, name) = (db.clone(), name.to_owned());
    cache
        .update(
            &id,
            |id| async move { Ok::<_, Infallible>(db.write(id, &name)) },
        )
        .await
        .unwrap()
        .event
}

/// The seed essay: a user is cached on server a, renamed through server b, and server a must not
/// keep showing the old name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_through_b_is_seen_on_a() {
    let nodes = mesh(2).await;
    let db = Db::with(&[(1, "ada")]);
    let (a, b) = (
        users(&nodes[0], Mode::Invalidate),
        users(&nodes[1], Mode::Invalidate),
    );

    assert_eq!(load(&a, &db, 1).await.0, "ada");
    assert_eq!(a.get(&1).unwrap().0, "ada", "cached on a");

    let mut a_events = nodes[0].subscribe();
    let event = write(&b, &db, 1, "grace").await;
    assert_eq!(b.get(&1).unwrap().0, "grace", "read-your-writes on b");
    applied(&mut a_events, &event).await;

    assert_eq!(a.get(&1), None, "a dropped its copy");
    assert_eq!(load(&a, &db, 1).await.0, "grace");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidate_mode_drops_and_the_next_read_loads_once() {
    let nodes = mesh(2).await;
    let db = Db::with(&[(1, "ada")]);
    let (a, b) = (
        users(&nodes[0], Mode::Invalidate),
        users(&nodes[1], Mode::Invalidate),
    );
    load(&a, &db, 1).await;
    let reads = db.reads();

    let mut a_events = nodes[0].subscribe();
    let event = write(&b, &db, 1, "grace").await;
    applied(&mut a_events, &event).await;

    assert_eq!(a.get(&1), None);
    for _ in 0..3 {
        assert_eq!(load(&a, &db, 1).await, ("grace".to_owned(), 2));
    }
    assert_eq!(db.reads(), reads + 1, "one load after the invalidation");
    assert_eq!(a.stats().invalidations_applied, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicate_mode_carries_the_value() {
    let nodes = mesh(2).await;
    let db = Db::with(&[(1, "ada")]);
    let (a, b) = (
        users(&nodes[0], Mode::Replicate),
        users(&nodes[1], Mode::Replicate),
    );
    load(&a, &db, 1).await;
    let reads = db.reads();

    let mut a_events = nodes[0].subscribe();
    let event = write(&b, &db, 1, "grace").await;
    applied(&mut a_events, &event).await;

    assert_eq!(
        a.get(&1),
        Some(("grace".to_owned(), 2)),
        "a holds the new value"
    );
    assert_eq!(db.reads(), reads, "without reading the source");
    assert_eq!(a.stats().replicas_applied, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_loads_of_one_key_run_the_loader_once() {
    let nodes = mesh(1).await;
    let cache = users(&nodes[0], Mode::Invalidate);
    let db = Db::with(&[(1, "ada")]);
    let gate = Arc::new(Notify::new());

    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let (cache, db, gate) = (cache.clone(), db.clone(), Arc::clone(&gate));
            tokio::spawn(async move {
                cache
                    .get_or_load(&1, |id| async move {
                        gate.notified().await;
                        Ok::<_, Infallible>(db.read(id))
                    })
                    .await
                    .unwrap()
            })
        })
        .collect();
    // Every caller has missed (and so is loading or parked on the one load) before the load ends.
    while cache.stats().misses < 100 {
        tokio::task::yield_now().await;
    }
    gate.notify_one();
    for task in tasks {
        assert_eq!(task.await.unwrap().0, "ada");
    }
    assert_eq!(db.reads(), 1);
    assert_eq!(cache.stats().loads, 1);
}

/// A load that read the source before a peer's update and finishes after its invalidation
/// arrived is returned to its caller but not stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_overtaken_by_a_peer_update_is_not_stored() {
    for mode in [Mode::Invalidate, Mode::Replicate] {
        let nodes = mesh(2).await;
        let db = Db::with(&[(1, "ada")]);
        let (a, b) = (users(&nodes[0], mode), users(&nodes[1], mode));
        let (read_done, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));

        let loading = {
            let (a, db, read_done, release) =
                (a.clone(), db.clone(), read_done.clone(), release.clone());
            tokio::spawn(async move {
                a.get_or_load(&1, |id| async move {
                    let old = db.read(id);
                    read_done.notify_one();
                    release.notified().await;
                    Ok::<_, Infallible>(old)
                })
                .await
                .unwrap()
            })
        };
        read_done.notified().await;
        let mut a_events = nodes[0].subscribe();
        let event = write(&b, &db, 1, "grace").await;
        applied(&mut a_events, &event).await;
        release.notify_one();

        assert_eq!(
            loading.await.unwrap().0,
            "ada",
            "the caller gets what it read"
        );
        assert_eq!(a.get(&1), None, "{mode:?}: the stale value was not stored");
        assert_eq!(a.stats().fills_rejected, 1);
        assert_eq!(load(&a, &db, 1).await.0, "grace");
    }
}

/// A write whose key changed elsewhere while it ran leaves the key empty rather than set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_overtaken_by_a_peer_update_is_not_set_locally() {
    for mode in [Mode::Invalidate, Mode::Replicate] {
        let nodes = mesh(2).await;
        let db = Db::with(&[(1, "ada")]);
        let (a, b) = (users(&nodes[0], mode), users(&nodes[1], mode));
        let (writing, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));

        let slow_write = {
            let (a, db, writing, release) =
                (a.clone(), db.clone(), writing.clone(), release.clone());
            tokio::spawn(async move {
                a.update(&1, |id| async move {
                    writing.notify_one();
                    release.notified().await;
                    Ok::<_, Infallible>(db.write(id, "from a"))
                })
                .await
                .unwrap()
            })
        };
        writing.notified().await;
        let mut a_events = nodes[0].subscribe();
        let event = write(&b, &db, 1, "from b").await;
        applied(&mut a_events, &event).await;
        release.notify_one();

        assert_eq!(slow_write.await.unwrap().value.0, "from a");
        assert_eq!(
            a.get(&1),
            None,
            "{mode:?}: a dropped its own write instead of setting it"
        );
    }
}

/// Replicated values of one key from two nodes settle on the higher version, whatever the order
/// in which they arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_keep_the_higher_version_in_any_order() {
    let nodes = mesh(3).await;
    let caches: Vec<_> = nodes.iter().map(|n| users(n, Mode::Replicate)).collect();
    let (a, b, c) = (&caches[0], &caches[1], &caches[2]);
    let fixed = |name: &str, version: u64| {
        let value = (name.to_owned(), version);
        move |_| async move { Ok::<_, Infallible>(value) }
    };
    for (first, second) in [(a, b), (b, a)] {
        c.get_or_load(&1, fixed("original", 1)).await.unwrap();
        let mut c_events = nodes[2].subscribe();
        let newer = first.update(&1, fixed("newer", 3)).await.unwrap().event;
        applied(&mut c_events, &newer).await;
        let older = second.update(&1, fixed("older", 2)).await.unwrap().event;
        applied(&mut c_events, &older).await;
        assert_eq!(c.get(&1), Some(("newer".to_owned(), 3)));
        c.invalidate(&1).await.unwrap();
    }
    // The same two updates in the other order.
    c.get_or_load(&1, fixed("original", 1)).await.unwrap();
    let mut c_events = nodes[2].subscribe();
    let older = b.update(&1, fixed("older", 2)).await.unwrap().event;
    applied(&mut c_events, &older).await;
    let newer = a.update(&1, fixed("newer", 3)).await.unwrap().event;
    applied(&mut c_events, &newer).await;
    assert_eq!(c.get(&1), Some(("newer".to_owned(), 3)));
}

/// A node given one seed reaches the nodes that seed knows and receives their events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_learns_the_whole_cluster_from_one_seed() {
    let a = Cluster::builder().node_name("a").start().await.unwrap();
    let b = join("b", &a).await;
    wait_linked(&b, 1).await;
    let c = join("c", &b).await;
    for node in [&a, &b, &c] {
        wait_linked(node, 2).await;
    }
    let db = Db::with(&[(1, "ada")]);
    let (on_a, on_c) = (users(&a, Mode::Invalidate), users(&c, Mode::Invalidate));
    load(&on_a, &db, 1).await;
    let mut a_events = a.subscribe();
    let event = write(&on_c, &db, 1, "grace").await;
    applied(&mut a_events, &event).await;
    assert_eq!(load(&on_a, &db, 1).await.0, "grace");
}

/// Sends `bytes` on a raw connection to `node` and returns everything the node sent back before
/// closing the connection.
async fn raw_exchange(node: &Cluster, bytes: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(node.local_addr()).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut reply = Vec::new();
    wait::within(stream.read_to_end(&mut reply))
        .await
        .expect("the node closed the connection")
        .ok();
    reply
}

/// The protocol version this build speaks.
const PROTOCOL: u16 = 5;

/// A plain (keyless) link's preamble.
fn preamble(version: u16) -> Vec<u8> {
    let mut bytes = b"COHO".to_vec();
    bytes.extend(version.to_be_bytes());
    bytes.push(0);
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_closes_only_its_own_link() {
    let nodes = mesh(2).await;
    let db = Db::with(&[(1, "ada")]);
    let (a, b) = (
        users(&nodes[0], Mode::Invalidate),
        users(&nodes[1], Mode::Invalidate),
    );

    let garbage = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
    let wrong_version = preamble(99);
    let oversized = [preamble(PROTOCOL), u32::MAX.to_be_bytes().to_vec()].concat();
    let malformed = [
        preamble(PROTOCOL),
        8_u32.to_be_bytes().to_vec(),
        vec![0xff; 8],
    ]
    .concat();
    let no_hello = [preamble(PROTOCOL), 1_u32.to_be_bytes().to_vec(), vec![1]].concat();
    for (i, input) in [garbage, wrong_version, oversized, malformed, no_hello]
        .iter()
        .enumerate()
    {
        let reply = raw_exchange(&nodes[0], input).await;
        assert_eq!(
            reply,
            preamble(PROTOCOL),
            "input {i}: the node sent its preamble, then closed"
        );
        assert_eq!(
            nodes[0].stats().frames_rejected,
            i as u64 + 1,
            "input {i} counted"
        );
    }

    load(&a, &db, 1).await;
    let mut a_events = nodes[0].subscribe();
    let event = write(&b, &db, 1, "grace").await;
    applied(&mut a_events, &event).await;
    assert_eq!(
        load(&a, &db, 1).await.0,
        "grace",
        "the real peer's link still works"
    );
}

#[tokio::test]
async fn bad_configuration_is_refused() {
    assert!(
        Cluster::builder()
            .max_staleness(Duration::ZERO)
            .start()
            .await
            .is_err()
    );
    assert!(
        Cluster::builder()
            .max_frame_bytes(10)
            .start()
            .await
            .is_err()
    );
    assert!(Cluster::builder().seeds(["no port"]).start().await.is_err());
    let taken = Cluster::builder().start().await.unwrap();
    let err = Cluster::builder()
        .listen(taken.local_addr())
        .start()
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("cannot listen"), "{err}");

    assert!(
        taken
            .cache::<u64, User>("users")
            .mode(Mode::Replicate)
            .build()
            .is_err()
    );
    assert!(
        taken
            .cache::<u64, User>("users")
            .capacity(0)
            .build()
            .is_err()
    );
    let loader = |id: u64| async move { Ok::<_, Infallible>((format!("user {id}"), 1)) };
    let refusal = |builder: &mut cohort::CacheBuilder<u64, User>| {
        builder.build().expect_err("refused").to_string()
    };
    let no_loader = refusal(taken.cache("users").mode(Mode::Partitioned));
    assert!(no_loader.contains("needs a loader"), "{no_loader}");
    let not_partitioned = refusal(taken.cache("users").loader(loader));
    assert!(
        not_partitioned.contains("Mode::Partitioned only"),
        "{not_partitioned}"
    );
    let too_patient = refusal(
        taken
            .cache("users")
            .mode(Mode::Partitioned)
            .loader(loader)
            .owner_timeout(Duration::from_secs(60)),
    );
    assert!(too_patient.contains("owner_timeout"), "{too_patient}");
    taken.cache::<u64, User>("users").build().unwrap();
    assert!(
        taken.cache::<u64, User>("users").build().is_err(),
        "duplicate name"
    );
}

/// The peer-only tier with a peer that goes silent without closing its connections (a frozen
/// process): the others stop serving within the bound and refuse writes, then, being two of
/// three, stop waiting for it once it has been silent for twice the bound; the frozen node serves
/// nothing when it wakes.
#[test]
fn a_frozen_peer_stops_everyone_serving_until_it_is_retired() {
    // The check below runs between the bound and twice the bound after the freeze: a bound of a
    // second leaves it most of a second of slack on a loaded machine.
    const BOUND: Duration = Duration::from_secs(1);
    let here = tokio::runtime::Runtime::new().unwrap();
    let there = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let start = |runtime: &tokio::runtime::Runtime, name: &str, seeds: Vec<String>| {
        runtime
            .block_on(
                Cluster::builder()
                    .node_name(name)
                    .max_staleness(BOUND)
                    .seeds(seeds)
                    .start(),
            )
            .unwrap()
    };
    let a = start(&here, "a", vec![]);
    let b = start(&there, "b", vec![a.local_addr().to_string()]);
    let c = start(&here, "c", vec![a.local_addr().to_string()]);
    let (on_a, on_b) = (users(&a, Mode::Invalidate), users(&b, Mode::Invalidate));
    let on_c = users(&c, Mode::Invalidate);
    here.block_on(wait_linked(&a, 2));
    there.block_on(wait_linked(&b, 2));
    here.block_on(wait_linked(&c, 2));
    let db = Db::with(&[(1, "ada")]);
    here.block_on(load(&on_a, &db, 1));
    there.block_on(load(&on_b, &db, 1));
    assert!(on_a.get(&1).is_some() && on_b.get(&1).is_some());

    // Freeze b's runtime: its sockets stay open, it answers nothing.
    let (frozen_tx, frozen) = std::sync::mpsc::channel();
    let (release, released) = std::sync::mpsc::channel::<()>();
    there.spawn(async move {
        frozen_tx.send(()).unwrap();
        released.recv().unwrap();
    });
    frozen.recv().unwrap();
    let (mut a_events, mut c_events) = (a.subscribe(), c.subscribe());
    let frozen_at = std::time::Instant::now();

    // Past the bound (but before b counts as silent), a neither serves nor writes.
    std::thread::sleep(BOUND + Duration::from_millis(50));
    assert!(
        frozen_at.elapsed() < BOUND * 2,
        "checked before b can be retired"
    );
    assert_eq!(on_a.get(&1), None, "a cannot vouch for b's events");
    let fenced =
        here.block_on(on_a.update(&1, |_| async { Ok::<_, Infallible>(("x".to_owned(), 9)) }));
    assert!(
        matches!(fenced, Err(cohort::UpdateError::Fenced)),
        "{fenced:?}"
    );
    assert_eq!(db.rows.lock()[&1].0, "ada", "the fenced write did not run");
    // Changes told after writing elsewhere are applied here and sent, but without the promise.
    for told in [
        here.block_on(on_a.invalidate_many(&[1])).map(|_| ()),
        here.block_on(on_a.clear()).map(|_| ()),
    ] {
        assert!(matches!(told, Err(cohort::BulkError::Fenced)), "{told:?}");
    }
    // The frozen node's own lease ran out too: it serves nothing from its cache.
    assert_eq!(on_b.get(&1), None);

    // Once b has been silent for twice the bound, a stops waiting for it and serves again.
    here.block_on(async {
        wait::event(&mut a_events, |e| {
            matches!(e, ClusterEvent::PeerSilent { .. }).then_some(())
        })
        .await
        .expect("b is retired");
    });
    eprintln!(
        "b frozen -> a retires it after {:?} (bound {BOUND:?})",
        frozen_at.elapsed()
    );
    // b's own lease (from a's last answer, at most one ping before the freeze) ended before.
    assert!(
        frozen_at.elapsed() > BOUND,
        "retired only after b's lease must have ended"
    );
    assert!(on_a.is_serving());
    here.block_on(on_a.clear())
        .expect("confirmed again: a clear with its promise");
    assert_eq!(here.block_on(load(&on_a, &db, 1)).0, "ada");
    let live = |node: &Cluster| node.members().iter().filter(|m| m.live).count();
    assert_eq!(live(&a), 1, "only c");
    here.block_on(async {
        wait::event(&mut c_events, |e| {
            matches!(e, ClusterEvent::PeerSilent { .. }).then_some(())
        })
        .await
        .expect("c retires b too");
    });
    assert!(on_c.is_serving(), "{:?}", c.members());

    // b wakes up, is heard from again and must be confirmed before anyone serves it.
    release.send(()).unwrap();
    here.block_on(wait_linked(&a, 2));
    there.block_on(wait_linked(&b, 2));
    assert_eq!(live(&a), 2);
    assert!(on_b.is_serving());
}

/// A node that shuts down says so: the others stop waiting for it at once, with no stretch of
/// reads sent to the source while they would otherwise wait out its silence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_shuts_down_leaves_at_once() {
    let nodes = mesh(3).await;
    let caches: Vec<_> = nodes.iter().map(|n| users(n, Mode::Invalidate)).collect();
    let mut a_events = nodes[0].subscribe();
    nodes[2].shutdown().await;
    wait::event(&mut a_events, |e| {
        matches!(e, ClusterEvent::PeerLeft { .. }).then_some(())
    })
    .await
    .expect("a hears that n2 left");
    assert!(
        caches[0].is_serving(),
        "a does not wait for a node that left"
    );
    assert_eq!(nodes[0].members().len(), 1, "{:?}", nodes[0].members());
    let db = Db::with(&[(1, "ada")]);
    let mut a_events = nodes[0].subscribe();
    let event = write(&caches[1], &db, 1, "grace").await;
    applied(&mut a_events, &event).await;
}

/// A resolver whose answer the test changes, standing for a DNS name (a headless service) whose
/// records follow the nodes that come and go.
#[derive(Clone, Default)]
struct Dns(Arc<Mutex<Vec<std::net::SocketAddr>>>);

impl cohort::Network for Dns {
    fn bind(
        &self,
        addr: std::net::SocketAddr,
    ) -> cohort::BoxFuture<'_, std::io::Result<Box<dyn cohort::Listener>>> {
        cohort::Tcp.bind(addr)
    }

    fn connect(
        &self,
        addr: std::net::SocketAddr,
    ) -> cohort::BoxFuture<'_, std::io::Result<cohort::BoxConnection>> {
        cohort::Tcp.connect(addr)
    }

    fn resolve<'a>(
        &'a self,
        seed: &'a str,
    ) -> cohort::BoxFuture<'a, std::io::Result<Vec<std::net::SocketAddr>>> {
        assert_eq!(seed, "cohort.service.test:7000");
        let addrs = self.0.lock().clone();
        Box::pin(async move { Ok(addrs) })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seed_name_is_resolved_again_and_new_nodes_are_joined() {
    let dns = Dns::default();
    let a = Cluster::builder()
        .node_name("a")
        .network(dns.clone())
        .seeds(["cohort.service.test:7000"])
        .seed_refresh(Duration::from_millis(50))
        .start()
        .await
        .unwrap();
    assert!(a.members().is_empty(), "the name resolves to nothing yet");
    let b = Cluster::builder().node_name("b").start().await.unwrap();
    dns.0.lock().push(b.local_addr());
    wait_linked(&a, 1).await;
    wait_linked(&b, 1).await;
    assert_eq!(a.members()[0].node.as_ref().map(|n| n.as_str()), Some("b"));
}

/// What a burst that overflows a's link to b did, as b saw it.
struct Burst {
    /// Sequence numbers of a's events b applied, in order of application.
    applied: Vec<u64>,
    gaps: u64,
    flushes: u64,
    replayed: u64,
    overflowed: u64,
}

/// Publishes `events` invalidations on `a` without yielding, so its link to `b` (queue of 8
/// frames) overflows and is closed; waits until `b` has a's last event through a new link, or
/// knows it missed it.
async fn overflow_link(replay_buffer: usize, events: u64) -> Burst {
    let a = Cluster::builder()
        .node_name("a")
        .link_queue(8)
        .replay_buffer(replay_buffer)
        .start()
        .await
        .unwrap();
    let b = join("b", &a).await;
    wait_linked(&a, 1).await;
    wait_linked(&b, 1).await;
    let on_a = users(&a, Mode::Invalidate);
    let on_b = users(&b, Mode::Invalidate);
    let mut b_events = b.subscribe();
    for key in 0..events {
        on_a.invalidate(&key).await.unwrap();
    }
    let last = a.stats().events_sent;
    let mut applied_seqs = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match b_events.recv().await {
                Ok(ClusterEvent::Applied { event, .. }) => {
                    applied_seqs.push(event.seq);
                    if event.seq == last {
                        return;
                    }
                }
                Ok(ClusterEvent::Gap { missed, .. }) if missed.contains(&last) => return,
                Ok(_) => {}
                Err(e) => panic!("event stream failed: {e}"),
            }
        }
    })
    .await
    .expect("b gets a's last event or reports it missed");
    Burst {
        applied: applied_seqs,
        gaps: b.stats().gaps,
        flushes: on_b.stats().flushes,
        replayed: a.stats().events_replayed,
        overflowed: a.stats().links_overflowed,
    }
}

/// A link that breaks loses what was queued on it; the new link starts with a replay of exactly
/// what the peer lacks, so it gets every event once, in order, and flushes nothing.
#[tokio::test(flavor = "current_thread")]
async fn a_broken_link_is_repaired_from_the_replay_buffer() {
    let burst = overflow_link(cohort::DEFAULT_REPLAY_BUFFER, 2_000).await;
    assert!(burst.overflowed >= 1, "the burst must break the link");
    assert!(burst.replayed > 0, "the new link replays");
    assert_eq!(burst.applied, (1..=2_000).collect::<Vec<_>>());
    assert_eq!((burst.gaps, burst.flushes), (0, 0));
}

/// Without a replay buffer the same break is a gap: counted, and the cache flushed.
#[tokio::test(flavor = "current_thread")]
async fn events_gone_from_the_replay_buffer_are_a_gap_and_flush() {
    let burst = overflow_link(0, 2_000).await;
    assert!(burst.overflowed >= 1, "the burst must break the link");
    assert_eq!(burst.replayed, 0);
    assert!(burst.applied.len() < 2_000, "some events were lost");
    assert!(
        burst.gaps >= 1 && burst.flushes >= 1,
        "{} {}",
        burst.gaps,
        burst.flushes
    );
}

/// A strong update: before its write runs, every peer has dropped the key and stores no load of
/// it; once it returns, no node serves the old value, without waiting for anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strong_update_leaves_no_node_serving_the_old_value_when_it_returns() {
    let nodes = mesh(3).await;
    let db = Db::with(&[(1, "ada")]);
    let caches: Vec<_> = nodes.iter().map(|n| users(n, Mode::Strong)).collect();
    for cache in &caches {
        assert_eq!(load(cache, &db, 1).await.0, "ada");
        assert!(cache.get(&1).is_some());
    }
    let (writing, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let update = {
        let (b, db, writing, release) = (
            caches[1].clone(),
            db.clone(),
            writing.clone(),
            release.clone(),
        );
        tokio::spawn(async move {
            b.update(&1, |id| async move {
                writing.notify_one();
                release.notified().await;
                Ok::<_, Infallible>(db.write(id, "grace"))
            })
            .await
            .unwrap()
        })
    };
    writing.notified().await;
    for cache in [&caches[0], &caches[2]] {
        assert_eq!(cache.get(&1), None, "dropped before the write ran");
        assert_eq!(
            load(cache, &db, 1).await.0,
            "ada",
            "the source is not written yet"
        );
        assert_eq!(cache.get(&1), None, "and that load was not stored");
    }
    release.notify_one();
    update.await.unwrap();
    for cache in &caches {
        assert_ne!(cache.get(&1).map(|u| u.0), Some("ada".to_owned()));
        assert_eq!(load(cache, &db, 1).await.0, "grace");
    }
}

/// A write that fails may still have committed: the key is dropped here and on every peer all
/// the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_write_still_invalidates_everywhere() {
    let nodes = mesh(2).await;
    let db = Db::with(&[(1, "ada")]);
    let (a, b) = (
        users(&nodes[0], Mode::Replicate),
        users(&nodes[1], Mode::Replicate),
    );
    load(&a, &db, 1).await;
    load(&b, &db, 1).await;
    let mut a_events = nodes[0].subscribe();
    let failed = b
        .update(&1, |_| async {
            Err::<User, _>("the commit's answer was lost")
        })
        .await;
    assert!(matches!(failed, Err(cohort::UpdateError::Write(_))));
    assert_eq!(b.get(&1), None, "the writer dropped its copy");
    let event = wait::event(&mut a_events, |e| match e {
        ClusterEvent::Applied { event, .. } => Some(event),
        _ => None,
    })
    .await
    .expect("the invalidation reached a");
    assert_eq!(event.origin.as_str(), "n1");
    assert_eq!(a.get(&1), None, "the peer dropped its copy");
}

/// A writer never waits for a peer that stopped reading (frozen, as a paused process is): every
/// one of 100,000 invalidations returns at once, the link to the frozen peer overflows and is
/// closed, and once the peer runs again it gets every event through a new link.
#[test]
fn a_writer_never_blocks_on_a_frozen_peer() {
    let here = tokio::runtime::Runtime::new().unwrap();
    let there = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let a = here
        .block_on(Cluster::builder().node_name("a").link_queue(64).start())
        .unwrap();
    let b = there.block_on(join("b", &a));
    here.block_on(wait_linked(&a, 1));
    there.block_on(wait_linked(&b, 1));
    let on_a = users(&a, Mode::Invalidate);
    let _on_b = users(&b, Mode::Invalidate);
    let mut b_events = b.subscribe();

    let (frozen_tx, frozen) = std::sync::mpsc::channel();
    let (release, released) = std::sync::mpsc::channel::<()>();
    there.spawn(async move {
        frozen_tx.send(()).unwrap();
        released.recv().unwrap();
    });
    frozen.recv().unwrap();

    for key in 0..100_000_u64 {
        futures_util::FutureExt::now_or_never(on_a.invalidate(&key))
            .expect("an invalidation never waits for a peer")
            .unwrap();
    }
    assert!(a.stats().links_overflowed >= 1, "{:?}", a.stats());

    release.send(()).unwrap();
    // 100,000 events outrun the event stream's buffer: count them in b's counters, re-checked
    // on every event or lag.
    there.block_on(async {
        tokio::time::timeout(Duration::from_secs(30), async {
            while b.stats().events_applied < 100_000 {
                let _ = b_events.recv().await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("b never caught up: {:?}", b.stats()));
    });
    assert_eq!(b.stats().gaps, 0, "replayed, not lost: {:?}", b.stats());
}

/// A peer that crashes and comes back at once as a new process may have sent events that are
/// now lost: when the new process links in, the caches only the mesh keeps fresh are flushed
/// (before the old one could even be retired for its silence).
#[test]
fn a_peer_restarted_as_a_new_process_flushes_peer_only_caches() {
    let here = tokio::runtime::Runtime::new().unwrap();
    let a = here
        .block_on(Cluster::builder().node_name("a").start())
        .unwrap();
    let on_a = users(&a, Mode::Invalidate);
    let db = Db::with(&[(1, "ada")]);
    let there = tokio::runtime::Runtime::new().unwrap();
    let b = there.block_on(join("b", &a));
    here.block_on(wait_linked(&a, 1));
    there.block_on(wait_linked(&b, 1));
    here.block_on(load(&on_a, &db, 1));
    assert!(on_a.get(&1).is_some());

    // A crash: b's tasks stop and its sockets close without a word.
    drop(there);
    drop(b);
    let crashed = std::time::Instant::now();
    let b = here.block_on(join("b", &a));
    here.block_on(wait_linked(&b, 1));
    here.block_on(wait_linked(&a, 1));
    assert!(
        crashed.elapsed() < a.max_staleness() * 2,
        "back before b could be retired for its silence"
    );
    assert_eq!(a.stats().gaps, 1, "the restart counts as events lost");
    assert!(on_a.stats().flushes >= 1);
    assert_eq!(
        on_a.get(&1),
        None,
        "the copy cached before the crash is gone"
    );
}
