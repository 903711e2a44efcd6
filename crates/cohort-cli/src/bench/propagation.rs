//! Propagation and throughput over loopback TCP, nodes in this process.
//!
//! Propagation: the time from `invalidate` returning on one node to the event being applied on
//! each other node (the `Applied` event's timestamp), for 2 and 5 nodes. Throughput: four nodes
//! invalidate as fast as they can and a fifth counts what it applies per second. Both again with
//! cluster keys (links authenticated and encrypted), against plaintext links in the same run:
//! propagation in alternating rounds between a keyed and a plain pair.

use std::time::{Duration, Instant};

use anyhow::Context;
use cohort::{Cache, Cluster, ClusterEvent, ClusterKey};
use tokio::sync::broadcast;

use super::Figure;
use crate::latency::Latencies;

/// Nodes of a benchmark, each with a peer-only cache.
pub(super) type Nodes = Vec<(Cluster, Cache<u64, u64>)>;

/// Starts `n` nodes over TCP holding `keys` (plaintext links for none), seeded with the first,
/// all linked.
async fn cluster(n: usize, keys: &[ClusterKey]) -> anyhow::Result<Nodes> {
    let start = |name: String, seed: Option<String>| {
        let mut builder = Cluster::builder();
        builder.node_name(name).cluster_keys(keys.iter().cloned());
        builder.seeds(seed);
        async move { builder.start().await }
    };
    let first = start("b0".to_owned(), None).await?;
    let seed = first.local_addr().to_string();
    let mut nodes = vec![first];
    for i in 1..n {
        nodes.push(start(format!("b{i}"), Some(seed.clone())).await?);
    }
    linked(nodes).await
}

/// Starts `n` nodes linked over Redis pub/sub through the server at `url`.
pub(super) async fn cluster_on_redis(n: usize, url: &str) -> anyhow::Result<Nodes> {
    let mut nodes = Vec::new();
    for i in 0..n {
        nodes.push(
            Cluster::builder()
                .node_name(format!("r{i}"))
                .network(cohort::RedisBus::new(url)?.namespace("bench"))
                .seeds(["redis"])
                .start()
                .await?,
        );
    }
    linked(nodes).await
}

pub(super) async fn linked(nodes: Vec<Cluster>) -> anyhow::Result<Nodes> {
    let n = nodes.len();
    let mut out = Vec::new();
    for node in nodes {
        tokio::time::timeout(Duration::from_secs(10), node.wait_for_peers(n - 1))
            .await
            .context("the benchmark nodes never linked")?;
        let cache = node.cache::<u64, u64>("bench").build()?;
        out.push((node, cache));
    }
    Ok(out)
}

pub(super) async fn measure(quick: bool) -> anyhow::Result<Vec<Figure>> {
    let samples = if quick { 2_000 } else { 20_000 };
    let mut figures = Vec::new();
    for n in [2, 5] {
        let nodes = cluster(n, &[]).await?;
        let delays = latencies(&nodes, samples).await?;
        figures.extend([
            Figure::micros(format!("propagation_{n}_nodes_p50"), delays.quantile(0.5)),
            Figure::micros(format!("propagation_{n}_nodes_p99"), delays.quantile(0.99)),
            Figure::micros(format!("propagation_{n}_nodes_max"), delays.max()),
        ]);
        for (node, _) in &nodes {
            node.shutdown().await;
        }
    }
    figures.extend(keyed_against_plain(samples).await?);
    let seconds = if quick { 2 } else { 5 };
    let plain = throughput(seconds, &[]).await?;
    let keyed = throughput(seconds, &[ClusterKey::generate()])
        .await?
        .renamed("invalidations_applied_per_node_keyed")
        .against(&plain);
    figures.extend([plain, keyed]);
    Ok(figures)
}

/// Propagation over two keyed nodes against two plaintext ones, in alternating rounds.
async fn keyed_against_plain(samples: usize) -> anyhow::Result<Vec<Figure>> {
    const ROUNDS: usize = 10;
    let plain_nodes = cluster(2, &[]).await?;
    let keyed_nodes = cluster(2, &[ClusterKey::generate()]).await?;
    let (mut plain, mut keyed) = (Latencies::default(), Latencies::default());
    for _ in 0..ROUNDS {
        plain.add(&latencies(&plain_nodes, samples / ROUNDS).await?);
        keyed.add(&latencies(&keyed_nodes, samples / ROUNDS).await?);
    }
    for (node, _) in plain_nodes.iter().chain(&keyed_nodes) {
        node.shutdown().await;
    }
    let plain_p50 = Figure::micros("propagation_2_nodes_plain_p50", plain.quantile(0.5));
    let plain_p99 = Figure::micros("propagation_2_nodes_plain_p99", plain.quantile(0.99));
    let keyed_p50 =
        Figure::micros("propagation_2_nodes_keyed_p50", keyed.quantile(0.5)).against(&plain_p50);
    let keyed_p99 =
        Figure::micros("propagation_2_nodes_keyed_p99", keyed.quantile(0.99)).against(&plain_p99);
    Ok(vec![plain_p50, keyed_p50, plain_p99, keyed_p99])
}

/// The delays from `invalidate` returning on the first node to the event applied on each of the
/// others, one event in flight at a time.
pub(super) async fn latencies(nodes: &Nodes, samples: usize) -> anyhow::Result<Latencies> {
    let mut receivers: Vec<broadcast::Receiver<ClusterEvent>> =
        nodes[1..].iter().map(|(c, _)| c.subscribe()).collect();
    let mut delays = Latencies::default();
    for key in 0..samples as u64 {
        let event = nodes[0].1.invalidate(&key).await?;
        let returned = tokio::time::Instant::now();
        for receiver in &mut receivers {
            let at = applied_at(receiver, &event).await?;
            delays.record(at.saturating_duration_since(returned));
        }
        // Latency, not queueing.
        tokio::task::yield_now().await;
    }
    Ok(delays)
}

pub(super) async fn applied_at(
    events: &mut broadcast::Receiver<ClusterEvent>,
    event: &cohort::EventId,
) -> anyhow::Result<tokio::time::Instant> {
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match events.recv().await {
                Ok(ClusterEvent::Applied { event: e, at }) if &e == event => return Ok(at),
                Ok(_) => {}
                Err(e) => anyhow::bail!("the event stream failed: {e}"),
            }
        }
    })
    .await
    .context("an event was never applied")?
}

/// Four writers invalidate flat out for `seconds` on nodes holding `keys`; returns what the fifth
/// node applied per second.
async fn throughput(seconds: u64, keys: &[ClusterKey]) -> anyhow::Result<Figure> {
    let nodes = cluster(5, keys).await?;
    let receiver = nodes[0].0.clone();
    let start_applied = receiver.stats().events_applied;
    let start = Instant::now();
    let deadline = start + Duration::from_secs(seconds);
    let mut writers = Vec::new();
    for (w, (_, cache)) in nodes[1..].iter().enumerate() {
        let cache = cache.clone();
        writers.push(tokio::spawn(async move {
            let mut key = w as u64;
            while Instant::now() < deadline {
                for _ in 0..256 {
                    let _ = cache.invalidate(&key).await;
                    key += 4;
                }
                tokio::task::yield_now().await;
            }
        }));
    }
    for writer in writers {
        writer.await?;
    }
    let applied = receiver.stats().events_applied - start_applied;
    let rate = applied as f64 / start.elapsed().as_secs_f64();
    for (node, _) in &nodes {
        node.shutdown().await;
    }
    Ok(Figure::plain(
        "invalidations_applied_per_node",
        rate,
        "events/s",
    ))
}
