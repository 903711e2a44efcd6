//! Propagation and throughput over loopback TCP, nodes in this process.
//!
//! Propagation: the time from `invalidate` returning on one node to the event being applied on
//! each other node (the `Applied` event's timestamp), for 2 and 5 nodes. Throughput: four nodes
//! invalidate as fast as they can and a fifth counts what it applies per second.

use std::time::{Duration, Instant};

use anyhow::Context;
use cohort::{Cache, Cluster, ClusterEvent};
use tokio::sync::broadcast;

use super::{Figure, median};

/// Nodes of a benchmark, each with a peer-only cache.
pub(super) type Nodes = Vec<(Cluster, Cache<u64, u64>)>;

/// Starts `n` nodes over TCP, seeded with the first, all linked.
async fn cluster(n: usize) -> anyhow::Result<Nodes> {
    let first = Cluster::builder().node_name("b0").start().await?;
    let seed = first.local_addr().to_string();
    let mut nodes = vec![first];
    for i in 1..n {
        nodes.push(
            Cluster::builder()
                .node_name(format!("b{i}"))
                .seeds([seed.clone()])
                .start()
                .await?,
        );
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

async fn linked(nodes: Vec<Cluster>) -> anyhow::Result<Nodes> {
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
        let nodes = cluster(n).await?;
        let mut micros = latencies(&nodes, samples).await?;
        let p50 = median(&mut micros);
        let p99 = micros[micros.len() * 99 / 100];
        let max = micros.last().copied().unwrap_or(0.0);
        figures.push(Figure::plain(
            format!("propagation_{n}_nodes_p50"),
            p50,
            "us",
        ));
        figures.push(Figure::plain(
            format!("propagation_{n}_nodes_p99"),
            p99,
            "us",
        ));
        figures.push(Figure::plain(
            format!("propagation_{n}_nodes_max"),
            max,
            "us",
        ));
        for (node, _) in &nodes {
            node.shutdown().await;
        }
    }
    figures.push(throughput(if quick { 2 } else { 5 }).await?);
    Ok(figures)
}

/// Microseconds from `invalidate` returning on the first node to the event applied on each of
/// the others, one event in flight at a time, sorted.
pub(super) async fn latencies(nodes: &Nodes, samples: usize) -> anyhow::Result<Vec<f64>> {
    let mut receivers: Vec<broadcast::Receiver<ClusterEvent>> =
        nodes[1..].iter().map(|(c, _)| c.subscribe()).collect();
    let mut micros = Vec::with_capacity(samples * receivers.len());
    for key in 0..samples as u64 {
        let event = nodes[0].1.invalidate(&key).await?;
        let returned = tokio::time::Instant::now();
        for receiver in &mut receivers {
            let at = applied_at(receiver, &event).await?;
            micros.push(at.saturating_duration_since(returned).as_secs_f64() * 1e6);
        }
        // Latency, not queueing.
        tokio::task::yield_now().await;
    }
    micros.sort_by(f64::total_cmp);
    Ok(micros)
}

async fn applied_at(
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

/// Four writers invalidate flat out for `seconds`; returns what the fifth node applied per second.
async fn throughput(seconds: u64) -> anyhow::Result<Figure> {
    let nodes = cluster(5).await?;
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
