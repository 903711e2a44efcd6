//! Cluster keys: keyed links authenticate and encrypt; nodes and connections without the key
//! get nothing in and nothing out; keys rotate without losing an event.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;

use cohort::ClusterKey;
use tokio::net::TcpListener;

use super::*;

/// Starts a node named `name` holding `keys`, seeded with `seed`.
async fn keyed(name: &str, keys: &[ClusterKey], seed: Option<&Cluster>) -> Cluster {
    let mut builder = Cluster::builder();
    builder.node_name(name).cluster_keys(keys.iter().cloned());
    if let Some(seed) = seed {
        builder.seeds([seed.local_addr().to_string()]);
    }
    builder.start().await.unwrap()
}

/// Waits until `node` counts `failures` failed authentications.
async fn auth_failures(node: &Cluster, failures: u64) {
    wait::until(&mut node.subscribe(), || {
        node.stats().auth_failures >= failures
    })
    .await
    .unwrap_or_else(|missed| panic!("{} counted {:?} ({missed})", node.node_id(), node.stats()));
}

/// A node with another key, a node with none, and a raw connection speaking plaintext all fail
/// against a keyed pair: none joins, none injects a change, and every attempt is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_and_connections_without_the_key_get_nothing_in_or_out() {
    let key = ClusterKey::generate();
    let a = keyed("a", std::slice::from_ref(&key), None).await;
    let b = keyed("b", std::slice::from_ref(&key), Some(&a)).await;
    wait_linked(&a, 1).await;
    wait_linked(&b, 1).await;
    let db = Db::with(&[(1, "ada")]);
    let (on_a, on_b) = (users(&a, Mode::Replicate), users(&b, Mode::Replicate));
    load(&on_a, &db, 1).await;
    load(&on_b, &db, 1).await;

    let wrong = keyed("mallory", &[ClusterKey::generate()], Some(&a)).await;
    let wrong_cache = users(&wrong, Mode::Replicate);
    auth_failures(&a, 1).await;
    auth_failures(&wrong, 1).await;
    let none = join("eve", &a).await;
    wait::until(&mut none.subscribe(), || a.stats().frames_rejected > 0)
        .await
        .expect("the keyless node's attempt is counted");

    // A plaintext hello and a replicate event on a raw connection: refused at the preamble.
    let raw = raw_exchange(&a, &preamble(PROTOCOL)).await;
    assert_eq!(raw.len(), 7, "the node sent its preamble, then closed");
    assert_eq!(raw[6], 1, "the preamble says the node's links are keyed");

    // Fenced (it confirms no peer) or not, nothing it writes may reach the keyed pair.
    let _ = wrong_cache
        .update(&1, |_| async {
            Ok::<_, Infallible>(("PWNED".to_owned(), 99))
        })
        .await;
    let _ = wrong_cache.invalidate(&1).await;
    for node in [&a, &b] {
        assert!(
            node.members().iter().all(|m| m
                .node
                .as_ref()
                .is_none_or(|n| n.as_str() != "mallory" && n.as_str() != "eve")),
            "{:?}",
            node.members()
        );
    }
    assert!(
        wrong.members().iter().all(|m| !m.connected),
        "{:?}",
        wrong.members()
    );
    assert!(
        none.members().iter().all(|m| !m.connected),
        "{:?}",
        none.members()
    );
    for cache in [&on_a, &on_b] {
        assert_eq!(
            cache.get(&1),
            Some(("ada".to_owned(), 1)),
            "cache unchanged"
        );
    }
    // The keyed pair still carries changes.
    let mut a_events = a.subscribe();
    let event = write(&on_b, &db, 1, "grace").await;
    applied(&mut a_events, &event).await;
    assert_eq!(on_a.get(&1), Some(("grace".to_owned(), 2)));
}

/// Forwards every connection `listener` accepts to `to`; returns a copy of the bytes sent toward
/// it.
fn tap(listener: TcpListener, to: SocketAddr) -> Arc<Mutex<Vec<u8>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let copy = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let copy = Arc::clone(&copy);
            tokio::spawn(async move {
                let Ok(outbound) = TcpStream::connect(to).await else {
                    return;
                };
                let (mut from_out, mut to_out) = outbound.into_split();
                let (mut from_in, mut to_in) = inbound.split();
                let upstream = async {
                    let mut buf = vec![0; 64 << 10];
                    loop {
                        match from_in.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                copy.lock().extend_from_slice(&buf[..n]);
                                if to_out.write_all(&buf[..n]).await.is_err() {
                                    break;
                                }
                            }
                        }
                    }
                };
                let downstream = tokio::io::copy(&mut from_out, &mut to_in);
                let _ = tokio::join!(upstream, downstream);
            });
        }
    });
    seen
}

/// Replicates a value from b to a through a tap in front of a; returns what crossed it.
async fn replicated_through_a_tap(keys: &[ClusterKey], secret: &str) -> Vec<u8> {
    // a advertises the tap, so everything b sends a crosses it.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tapped = listener.local_addr().unwrap();
    let mut builder = Cluster::builder();
    builder
        .node_name("a")
        .advertise(tapped)
        .cluster_keys(keys.iter().cloned());
    let a = builder.start().await.unwrap();
    let seen = tap(listener, a.bound_addr());
    let mut builder = Cluster::builder();
    builder
        .node_name("b")
        .cluster_keys(keys.iter().cloned())
        .seeds([tapped.to_string()]);
    let b = builder.start().await.unwrap();
    wait_linked(&b, 1).await;
    wait_linked(&a, 1).await;
    let (on_a, on_b) = (users(&a, Mode::Replicate), users(&b, Mode::Replicate));
    let db = Db::with(&[(1, "ada")]);
    load(&on_a, &db, 1).await;
    let mut a_events = a.subscribe();
    let event = write(&on_b, &db, 1, secret).await;
    applied(&mut a_events, &event).await;
    assert_eq!(on_a.get(&1).map(|(name, _)| name), Some(secret.to_owned()));
    seen.lock().clone()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Between keyed nodes a replicated value never crosses the network in the clear; the same tap
/// between keyless nodes does see it, so the tap would have caught it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bytes_between_keyed_nodes_never_show_a_replicated_value() {
    let secret = "the-secret-replicated-value-4f1c";
    let plain = replicated_through_a_tap(&[], secret).await;
    assert!(
        contains(&plain, secret.as_bytes()),
        "the tap sees plaintext links"
    );
    let keyed = replicated_through_a_tap(&[ClusterKey::generate()], secret).await;
    assert!(
        keyed.len() > 100,
        "the tap saw the keyed link: {} bytes",
        keyed.len()
    );
    assert!(
        !contains(&keyed, secret.as_bytes()),
        "a replicated value crossed in the clear"
    );
    assert!(!contains(&keyed, b"users"), "not even the cache's name");
}

/// Three nodes rotate from one key to another in three rolling steps (add, make primary,
/// remove) while a writer updates through every node: every event reaches every other node, none
/// is counted missing, and links come back after each step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_key_rotation_loses_no_event() {
    let (old, new) = (ClusterKey::generate(), ClusterKey::generate());
    let a = keyed("a", std::slice::from_ref(&old), None).await;
    let b = keyed("b", std::slice::from_ref(&old), Some(&a)).await;
    let c = keyed("c", std::slice::from_ref(&old), Some(&a)).await;
    let nodes = [a, b, c];
    for node in &nodes {
        wait_linked(node, 2).await;
    }
    let caches: Vec<_> = nodes.iter().map(|n| users(n, Mode::Invalidate)).collect();
    let mut streams: Vec<_> = nodes.iter().map(Cluster::subscribe).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (caches, stop) = (caches.clone(), Arc::clone(&stop));
        tokio::spawn(async move {
            let mut sent = Vec::new();
            let mut i = 0_u64;
            while !stop.load(Ordering::SeqCst) {
                let cache = &caches[i as usize % caches.len()];
                sent.push((
                    i as usize % caches.len(),
                    cache.invalidate(&(i % 50)).await.unwrap(),
                ));
                i += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            sent
        })
    };
    let steps = [
        vec![old.clone(), new.clone()],
        vec![new.clone(), old.clone()],
        vec![new.clone()],
    ];
    for keys in steps {
        for node in &nodes {
            node.set_cluster_keys(keys.clone()).unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for node in &nodes {
            wait_linked(node, 2).await;
        }
    }
    stop.store(true, Ordering::SeqCst);
    let sent = writer.await.unwrap();
    assert!(sent.len() > 50, "{} events", sent.len());
    for (i, events) in streams.iter_mut().enumerate() {
        let mut missing: HashSet<EventId> = sent
            .iter()
            .filter(|(from, _)| *from != i)
            .map(|(_, event)| event.clone())
            .collect();
        if !missing.is_empty() {
            wait::event(events, |e| {
                if let ClusterEvent::Applied { event, .. } = e {
                    missing.remove(&event);
                }
                missing.is_empty().then_some(())
            })
            .await
            .unwrap_or_else(|missed| panic!("node {i} never applied {missing:?}: {missed}"));
        }
    }
    // Only the new key opens the cluster now.
    let stale = keyed("stale", std::slice::from_ref(&old), Some(&nodes[0])).await;
    auth_failures(&stale, 1).await;
    let fresh = keyed("fresh", std::slice::from_ref(&new), Some(&nodes[0])).await;
    wait_linked(&fresh, 3).await;
    assert!(
        stale.members().iter().all(|m| !m.connected),
        "{:?}",
        stale.members()
    );
    for node in &nodes {
        let stats = node.stats();
        assert_eq!(stats.gaps, 0, "{stats:?}");
        assert!(
            stats.connects >= 2 * 4,
            "links re-established after each step: {stats:?}"
        );
    }
}

/// Redis's protected mode: without keys, a node that others could reach refuses to start, with
/// a message saying what to do; keys, or an explicit `insecure`, let it start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_reachable_from_elsewhere_needs_keys_or_insecure() {
    let everywhere: SocketAddr = "0.0.0.0:0".parse().unwrap();
    let refused = Cluster::builder().listen(everywhere).start().await;
    let error = refused.err().expect("refused without keys").to_string();
    assert!(
        error.contains("without cluster keys") && error.contains("--insecure"),
        "{error}"
    );
    Cluster::builder()
        .listen(everywhere)
        .insecure(true)
        .start()
        .await
        .unwrap();
    Cluster::builder()
        .listen(everywhere)
        .cluster_keys([ClusterKey::generate()])
        .start()
        .await
        .unwrap();
}
