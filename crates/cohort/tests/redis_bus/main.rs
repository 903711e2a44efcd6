//! Nodes linked over Redis pub/sub (`RedisBus`) on a real `redis-server` started by each test:
//! discovery through the bus, propagation, and links reset by a lost subscription repaired from
//! the senders' replay rings.

#[path = "../common/alone.rs"]
mod alone;
#[path = "../common/cluster.rs"]
mod cluster;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use cohort::{Cache, Cluster, EventId, Mode, RedisBus};
use cohort_testkit::{Redis, wait};
use parking_lot::Mutex;
use tokio::time::Instant;

use alone::alone;
use cluster::{applied, wait_linked};

type User = (String, u64);

async fn redis() -> Redis {
    tokio::task::spawn_blocking(Redis::start)
        .await
        .unwrap()
        .expect("a throwaway redis-server (from the redis-server package)")
}

/// Starts `n` nodes on the bus and waits until each links to every other.
async fn bus(redis: &Redis, n: usize) -> Vec<Cluster> {
    let mut nodes = Vec::new();
    for i in 0..n {
        let node = Cluster::builder()
            .node_name(format!("n{i}"))
            .network(RedisBus::new(&redis.url()).unwrap())
            .seeds(["redis"])
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

fn users(node: &Cluster) -> Cache<u64, User> {
    node.cache::<u64, User>("users")
        .mode(Mode::Invalidate)
        .build()
        .unwrap()
}

/// A stand-in source of truth.
#[derive(Clone, Default)]
struct Db(Arc<Mutex<HashMap<u64, User>>>);

impl Db {
    async fn load(&self, cache: &Cache<u64, User>, id: u64) -> User {
        let db = self.clone();
        cache
            .get_or_load(&id, |id| async move {
                Ok::<_, Infallible>(db.0.lock().entry(id).or_insert(("first".into(), 1)).clone())
            })
            .await
            .unwrap()
    }

    async fn rename(&self, cache: &Cache<u64, User>, id: u64, name: &str) -> EventId {
        let (db, name) = (self.clone(), name.to_owned());
        cache
            .update(&id, |id| async move {
                let mut rows = db.0.lock();
                let row = rows.entry(id).or_insert(("first".into(), 1));
                *row = (name, row.1 + 1);
                Ok::<_, Infallible>(row.clone())
            })
            .await
            .unwrap()
            .event
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_find_each_other_on_the_bus_and_an_update_reaches_every_one() {
    let redis = redis().await;
    let nodes = bus(&redis, 3).await;
    let caches: Vec<_> = nodes.iter().map(users).collect();
    let db = Db::default();
    for cache in &caches {
        db.load(cache, 1).await;
        assert!(cache.get(&1).is_some());
    }
    let mut events: Vec<_> = nodes.iter().map(Cluster::subscribe).collect();
    let event = db.rename(&caches[1], 1, "grace").await;
    for i in [0, 2] {
        applied(&mut events[i], &event).await;
        assert_eq!(caches[i].get(&1), None, "n{i} dropped its copy");
        assert_eq!(db.load(&caches[i], 1).await, ("grace".to_owned(), 2));
    }
}

/// Invalidation to applied on the other node, over the bus and over TCP, measured alike (printed,
/// not asserted: figures belong to `cohort bench`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn propagation_over_the_bus_and_over_tcp() {
    let redis = redis().await;
    let over_bus = bus(&redis, 2).await;
    let tcp_a = Cluster::builder().start().await.unwrap();
    let tcp_b = Cluster::builder()
        .seeds([tcp_a.local_addr().to_string()])
        .start()
        .await
        .unwrap();
    for node in [&tcp_a, &tcp_b] {
        wait_linked(node, 1).await;
    }
    for (name, a, b) in [
        ("redis bus", &over_bus[0], &over_bus[1]),
        ("tcp mesh", &tcp_a, &tcp_b),
    ] {
        let writer = users(a);
        let mut events = b.subscribe();
        let _reader = users(b);
        let mut delays = Vec::new();
        for key in 0..200 {
            let sent = Instant::now();
            let event = writer.invalidate(&key).await.unwrap();
            applied(&mut events, &event).await;
            delays.push(sent.elapsed());
        }
        delays.sort();
        eprintln!(
            "{name}: invalidate -> applied p50 {:?} p99 {:?}",
            delays[100], delays[198]
        );
    }
}

/// Killing every subscriber connection on the server loses whatever was published meanwhile:
/// the nodes reset their links, resubscribe and reconnect, and the senders replay what was lost,
/// so no invalidation is missed and nothing is flushed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_subscription_loses_no_event() {
    let redis = redis().await;
    let nodes = bus(&redis, 2).await;
    let (a, b) = (users(&nodes[0]), users(&nodes[1]));
    let db = Db::default();
    for key in 0..100 {
        db.load(&a, key).await;
    }
    let mut a_events = nodes[0].subscribe();

    let client = redis::Client::open(redis.url()).unwrap();
    let mut admin = client.get_multiplexed_async_connection().await.unwrap();
    let killed: u64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(killed, 2, "both nodes' subscriptions");
    let mut last = None;
    for key in 0..100 {
        last = Some(db.rename(&b, key, "renamed").await);
    }
    applied(&mut a_events, &last.unwrap()).await;

    for key in 0..100 {
        assert_eq!(a.get(&key), None, "key {key} still cached on a");
    }
    let stats = nodes[0].stats();
    assert_eq!((stats.gaps, a.stats().flushes), (0, 0), "{stats:?}");
    eprintln!(
        "events replayed after the lost subscription: {}",
        stats.events_replayed
    );
}

/// Anything else published on a node's channel (garbage, an unknown link's bytes) is ignored, and
/// the node's links carry on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_messages_on_a_node_channel_are_ignored() {
    let redis = redis().await;
    let nodes = bus(&redis, 2).await;
    let client = redis::Client::open(redis.url()).unwrap();
    let mut intruder = client.get_multiplexed_async_connection().await.unwrap();
    let channel = format!("cohort:node:{}", nodes[0].local_addr());
    for payload in [
        &b"not a message"[..],
        &[0_u8; 3],
        &[1, 0, 0, 0, 255, 255, 255],
    ] {
        let reached: u64 = redis::cmd("PUBLISH")
            .arg(&channel)
            .arg(payload)
            .query_async(&mut intruder)
            .await
            .unwrap();
        assert_eq!(reached, 1, "the node listens on {channel}");
    }
    let (a, b) = (users(&nodes[0]), users(&nodes[1]));
    let db = Db::default();
    db.load(&a, 1).await;
    let mut a_events = nodes[0].subscribe();
    let event = db.rename(&b, 1, "after the noise").await;
    applied(&mut a_events, &event).await;
    assert_eq!(a.get(&1), None);
    assert_eq!(nodes[0].stats().gaps, 0);
}

/// The addresses in the bus's registry.
async fn registered(connection: &mut redis::aio::MultiplexedConnection) -> Vec<String> {
    redis::cmd("ZRANGE")
        .arg("cohort:registry")
        .arg(0)
        .arg(-1)
        .query_async(connection)
        .await
        .unwrap()
}

/// A node that died stays in the bus's registry only until its registration lapses: a node
/// starting later neither dials it nor counts it, and the stale entry is deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lapsed_registration_is_not_resolved() {
    let redis = redis().await;
    let client = redis::Client::open(redis.url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let two_minutes_ago = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        - 120_000;
    let _: u64 = redis::cmd("ZADD")
        .arg("cohort:registry")
        .arg(two_minutes_ago)
        .arg("127.0.0.1:9")
        .query_async(&mut connection)
        .await
        .unwrap();
    let nodes = bus(&redis, 2).await;
    for node in &nodes {
        let members = node.members();
        assert_eq!(members.len(), 1, "{members:?}");
        assert!(members[0].node.is_some(), "{members:?}");
    }
    let registered = registered(&mut connection).await;
    assert_eq!(registered.len(), 2, "{registered:?}");
    assert!(!registered.contains(&"127.0.0.1:9".to_owned()));
}

/// Shutting down waits for the bus too: once `shutdown` returns, the node's leave has been
/// published (its peer stops waiting for it) and its registration is gone, so a node starting
/// now does not dial it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_shuts_down_leaves_the_bus_and_its_registry() {
    let redis = redis().await;
    let client = redis::Client::open(redis.url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let nodes = bus(&redis, 2).await;
    let mut events = nodes[0].subscribe();
    let leaving = nodes[1].local_addr().to_string();
    nodes[1].shutdown().await;
    let registered = registered(&mut connection).await;
    assert_eq!(
        registered,
        [nodes[0].local_addr().to_string()],
        "{leaving} left"
    );
    wait::event(&mut events, |event| match event {
        cohort::ClusterEvent::PeerLeft { node } if node.as_str() == "n1" => Some(()),
        _ => None,
    })
    .await
    .expect("n0 heard n1 leave");
}

/// A node on the bus holding `keys`, in `namespace`, in replicate mode.
async fn keyed_on_bus(
    redis: &Redis,
    namespace: &str,
    name: &str,
    keys: &[cohort::ClusterKey],
) -> (Cluster, Cache<u64, User>) {
    let mut builder = Cluster::builder();
    builder
        .node_name(name)
        .network(RedisBus::new(&redis.url()).unwrap().namespace(namespace))
        .cluster_keys(keys.iter().cloned())
        .seeds(["redis"]);
    let node = builder.start().await.unwrap();
    let cache = node
        .cache::<u64, User>("users")
        .mode(Mode::Replicate)
        .version(|(_, version)| *version)
        .build()
        .unwrap();
    (node, cache)
}

/// Everything published on the bus from now on, in every namespace.
async fn capture(redis: &Redis) -> Arc<Mutex<Vec<u8>>> {
    let client = redis::Client::open(redis.url()).unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub.psubscribe("*:node:*").await.unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let copy = Arc::clone(&seen);
    tokio::spawn(async move {
        let mut messages = pubsub.into_on_message();
        while let Some(message) = futures_util::StreamExt::next(&mut messages).await {
            copy.lock().extend_from_slice(message.get_payload_bytes());
        }
    });
    seen
}

/// Waits until the capture has everything published so far: Redis relays a subscriber's
/// messages in the order it handled their publishes, so a marker published now comes last.
async fn captured(redis: &Redis, seen: &Mutex<Vec<u8>>, marker: &str) -> Vec<u8> {
    let client = redis::Client::open(redis.url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let _: u64 = redis::cmd("PUBLISH")
        .arg("capture:node:marker")
        .arg(marker)
        .query_async(&mut connection)
        .await
        .unwrap();
    wait::poll(async || {
        let bytes = seen.lock();
        bytes
            .windows(marker.len())
            .any(|w| w == marker.as_bytes())
            .then(|| bytes.clone())
    })
    .await
    .expect("the capture received the marker")
}

/// Replicates `secret` from b to a on the bus in `namespace`; returns the two nodes.
async fn replicate_on_bus(
    redis: &Redis,
    namespace: &str,
    keys: &[cohort::ClusterKey],
    secret: &str,
) -> (Cluster, Cluster) {
    let (a, on_a) = keyed_on_bus(redis, namespace, "a", keys).await;
    let (b, on_b) = keyed_on_bus(redis, namespace, "b", keys).await;
    for node in [&a, &b] {
        wait_linked(node, 1).await;
    }
    let db = Db::default();
    db.load(&on_a, 1).await;
    let mut a_events = a.subscribe();
    let event = db.rename(&on_b, 1, secret).await;
    applied(&mut a_events, &event).await;
    assert_eq!(on_a.get(&1).map(|(name, _)| name), Some(secret.to_owned()));
    (a, b)
}

/// Keys work on the bus as on TCP: what keyed nodes publish never shows a replicated value (it
/// does between keyless nodes, so the capture would have seen it), and a node with another key
/// neither links nor changes anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_links_over_the_bus_show_nothing_and_refuse_other_keys() {
    let redis = redis().await;
    let seen = capture(&redis).await;
    let secret = "a-replicated-secret-on-the-bus-7d2e";
    replicate_on_bus(&redis, "plain", &[], secret).await;
    let plain = captured(&redis, &seen, "marker-one").await;
    seen.lock().clear();
    assert!(
        plain.windows(secret.len()).any(|w| w == secret.as_bytes()),
        "the capture sees keyless links"
    );

    let key = cohort::ClusterKey::generate();
    let (a, _b) = replicate_on_bus(&redis, "keyed", std::slice::from_ref(&key), secret).await;
    let keyed = captured(&redis, &seen, "marker-two").await;
    assert!(keyed.len() > 100, "{} bytes captured", keyed.len());
    assert!(!keyed.windows(secret.len()).any(|w| w == secret.as_bytes()));
    assert!(!keyed.windows(5).any(|w| w == b"users"));

    let (mallory, _) = keyed_on_bus(
        &redis,
        "keyed",
        "mallory",
        &[cohort::ClusterKey::generate()],
    )
    .await;
    wait::until(&mut a.subscribe(), || a.stats().auth_failures > 0)
        .await
        .expect("the wrong key's attempt is counted");
    assert!(mallory.members().iter().all(|m| !m.connected));
    assert!(
        a.members()
            .iter()
            .all(|m| m.node.as_ref().is_none_or(|n| n.as_str() != "mallory"))
    );
}

/// A bus message, mirrored: postcard encodes the variant's index, and `Open` is the first.
#[derive(serde::Serialize)]
enum BusMessage {
    Open {
        from: std::net::SocketAddr,
        link: u64,
    },
}

/// 10,000 link openings published on a node's channel by something that never follows up: the
/// node takes in at most its inbound limit and drops the rest at once (those it takes in end as
/// soon as its answer reaches no subscriber), its memory grows by a bounded amount, and its real
/// link carries on.
#[test]
fn ten_thousand_bogus_links_on_the_bus_leave_the_node_serving() {
    alone(
        "ten_thousand_bogus_links_on_the_bus_leave_the_node_serving",
        bogus_links(),
    );
}

async fn bogus_links() {
    let redis = redis().await;
    // No bogus link times out during the test: every one over the limit is a refusal.
    let mut nodes = Vec::new();
    for name in ["a", "b"] {
        let node = Cluster::builder()
            .node_name(name)
            .network(RedisBus::new(&redis.url()).unwrap())
            .seeds(["redis"])
            .handshake_timeout(Duration::from_secs(60))
            .start()
            .await
            .unwrap();
        nodes.push(node);
    }
    for node in &nodes {
        wait_linked(node, 1).await;
    }
    let (a, b) = (users(&nodes[0]), users(&nodes[1]));
    let client = redis::Client::open(redis.url()).unwrap();
    let mut intruder = client.get_multiplexed_async_connection().await.unwrap();
    let channel = format!("cohort:node:{}", nodes[0].local_addr());
    let resident = || {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
        statm
            .split_whitespace()
            .nth(1)
            .unwrap()
            .parse::<u64>()
            .unwrap()
            * 4096
    };
    let before = resident();
    let mut pipe = redis::pipe();
    for link in 0..10_000_u64 {
        let open = BusMessage::Open {
            from: std::net::SocketAddr::from(([10, 9, 8, 7], 4242)),
            link,
        };
        pipe.cmd("PUBLISH")
            .arg(&channel)
            .arg(postcard::to_stdvec(&open).unwrap())
            .ignore();
    }
    let () = pipe.query_async(&mut intruder).await.unwrap();

    // The bus hands openings to the node's listener through a queue the listener drains at its
    // own pace: the refusals are awaited, not assumed done once a later message arrived.
    let mut a_events = nodes[0].subscribe();
    wait::until(&mut a_events, || nodes[0].stats().links_refused > 0)
        .await
        .expect("the inbound limit turned some away");
    let db = Db::default();
    db.load(&a, 1).await;
    let event = db.rename(&b, 1, "still linked").await;
    applied(&mut a_events, &event).await;
    assert_eq!(a.get(&1), None);

    let grown = resident().saturating_sub(before);
    eprintln!(
        "10,000 bogus bus links: resident memory +{} KiB, {:?}",
        grown / 1024,
        nodes[0].stats()
    );
    assert!(grown < 64 << 20, "grew by {grown} bytes");
}
