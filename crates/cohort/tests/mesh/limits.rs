//! What a peer, keyed or not, can make a node hold is bounded: idle connections, oversized
//! replicated values, oversized keys.

use tokio::net::TcpStream;

use super::alone::alone;
use super::*;

/// The process's resident memory, from /proc/self/statm.
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// 10,000 connections opened to a node and left idle: the node closes those over its inbound
/// limit at once and the rest when their handshake times out, its memory grows by a bounded
/// amount, and it keeps carrying a real peer's changes and accepting new links.
#[test]
fn ten_thousand_idle_connections_leave_the_node_serving() {
    alone(
        "limits::ten_thousand_idle_connections_leave_the_node_serving",
        idle_connections(),
    );
}

async fn idle_connections() {
    let a = Cluster::builder()
        .node_name("a")
        .max_inbound_links(256)
        .start()
        .await
        .unwrap();
    let b = join("b", &a).await;
    wait_linked(&a, 1).await;
    wait_linked(&b, 1).await;
    let (on_a, on_b) = (users(&a, Mode::Invalidate), users(&b, Mode::Invalidate));
    let db = Db::with(&[(1, "ada")]);

    let before = resident_bytes();
    let started = std::time::Instant::now();
    let mut idle = Vec::with_capacity(10_000);
    for _ in 0..10_000 {
        idle.push(TcpStream::connect(a.local_addr()).await.unwrap());
    }
    // A slot frees when its handshake times out: on a loaded machine the loop may outlast it.
    let timeouts = started.elapsed().as_secs() / cohort::DEFAULT_HANDSHAKE_TIMEOUT.as_secs();
    let admitted = 256 * (timeouts + 1);
    let grown = resident_bytes().saturating_sub(before);
    eprintln!(
        "10,000 idle connections: resident memory +{} KiB",
        grown / 1024
    );
    assert!(grown < 64 << 20, "grew by {grown} bytes");
    assert!(
        a.stats().links_refused >= 10_000 - admitted,
        "{:?}",
        a.stats()
    );

    load(&on_a, &db, 1).await;
    let mut a_events = a.subscribe();
    let event = write(&on_b, &db, 1, "grace").await;
    applied(&mut a_events, &event).await;
    assert_eq!(load(&on_a, &db, 1).await.0, "grace");

    // Once the idle ones time out (the handshake timeout, 5 s), a new peer links in.
    let c = join("c", &a).await;
    wait_linked(&c, 2).await;
    drop(idle);
}

/// A replicated value too large for a frame goes as an invalidation: the peer drops its copy,
/// the link stays up, and later changes still replicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replicated_value_too_large_for_a_frame_is_sent_as_an_invalidation() {
    const MAX_FRAME: usize = 64 << 10;
    let start = |name: &str, seed: Option<&Cluster>| {
        let mut builder = Cluster::builder();
        builder.node_name(name).max_frame_bytes(MAX_FRAME);
        if let Some(seed) = seed {
            builder.seeds([seed.local_addr().to_string()]);
        }
        async move { builder.start().await.unwrap() }
    };
    let a = start("a", None).await;
    let b = start("b", Some(&a)).await;
    wait_linked(&a, 1).await;
    wait_linked(&b, 1).await;
    let (on_a, on_b) = (users(&a, Mode::Replicate), users(&b, Mode::Replicate));
    let db = Db::with(&[(1, "ada")]);
    load(&on_a, &db, 1).await;

    let mut a_events = a.subscribe();
    let huge = "x".repeat(MAX_FRAME * 2);
    let event = write(&on_b, &db, 1, &huge).await;
    applied(&mut a_events, &event).await;
    assert_eq!(on_a.get(&1), None, "a dropped its copy");
    assert_eq!(b.stats().replicas_downgraded, 1);

    load(&on_a, &db, 1).await;
    let event = write(&on_b, &db, 1, "small").await;
    applied(&mut a_events, &event).await;
    assert_eq!(on_a.get(&1).map(|(name, _)| name), Some("small".to_owned()));
    assert_eq!(a.stats().frames_rejected, 0, "{:?}", a.stats());
}

/// A key whose encoding would not fit a frame is refused before anything happens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_too_large_for_a_frame_is_refused() {
    let node = Cluster::builder()
        .node_name("a")
        .max_frame_bytes(64 << 10)
        .start()
        .await
        .unwrap();
    let cache = node.cache::<String, String>("big").build().unwrap();
    let wrote = Arc::new(AtomicUsize::new(0));
    let key = "k".repeat(40 << 10);
    let counted = Arc::clone(&wrote);
    let result = cache
        .update(&key, |_| async move {
            counted.fetch_add(1, Ordering::SeqCst);
            Ok::<_, Infallible>("v".to_owned())
        })
        .await;
    let Err(error) = result else {
        panic!("a key over the frame limit was accepted")
    };
    let error = error.to_string();
    assert!(error.contains("over the"), "{error}");
    assert_eq!(wrote.load(Ordering::SeqCst), 0, "the write did not run");
    assert!(cache.invalidate(&key).await.is_err());
    assert_eq!(node.stats().events_sent, 0);
}
