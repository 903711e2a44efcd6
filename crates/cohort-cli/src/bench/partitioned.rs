//! Partitioned mode against what it replaces, on three nodes in this process over loopback TCP:
//!
//! - database loads: Zipf(0.99) reads of 2.5 C keys on random nodes, each holding C entries,
//!   replicated (every node caches what it reads, `Mode::Invalidate`) against partitioned (each
//!   key cached by its owner only), each warmed up by the same workload before it is measured;
//!   the loaders count the loads themselves;
//! - a remote hit (a read on a node that does not own the key, answered by the owner holding it,
//!   no hot copies) against a Redis GET of the same 1 KiB value, per-read quantiles, taking turns
//!   in rounds;
//! - a hot-copy hit against a local hit of a replicated cache on the same node, timed as `hit`
//!   times hits.

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use cohort::{Cache, Cluster, Mode, Source};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::Figure;
use super::hit::{SEQUENCE, THREADS, take_turns};
use super::redis::{Conn, Reply};
use crate::latency::Latencies;
use crate::workload::Zipf;

type Value = Arc<str>;

/// Bytes of every value: the size of the Redis GET figures' values.
const VALUE_BYTES: usize = 1024;

const NODES: usize = 3;

/// Concurrent clients of the load workload.
const CLIENTS: u64 = 8;

/// Rounds the remote hits and the Redis GETs take turns in.
const ROUNDS: usize = 10;

/// Keys a node asks their owner for, in the remote-hit figures; the Redis GETs read as many.
const REMOTE_KEYS: usize = 1_000;

/// Keys of the hot-copy figures, of which the node reading holds a third (its own) and copies
/// the rest.
const HOT_KEYS: u64 = 30_000;

/// The hot copies' budget: room for every key of the figure (about 1 KiB each on the wire).
const HOT_BYTES: u64 = 64 << 20;

pub(super) async fn measure(quick: bool) -> anyhow::Result<Vec<Figure>> {
    let nodes = cluster().await?;
    let value: Value = "x".repeat(VALUE_BYTES).into();
    let mut figures = loads(&nodes, &value, quick).await?;
    figures.extend(remote_hits(&nodes, &value, quick).await?);
    figures.extend(hot_copy_hits(&nodes, &value, quick).await?);
    for node in &nodes {
        node.shutdown().await;
    }
    Ok(figures)
}

/// Three nodes over loopback TCP, all linked.
async fn cluster() -> anyhow::Result<Vec<Cluster>> {
    let first = Cluster::builder().node_name("p0").start().await?;
    let seed = first.local_addr().to_string();
    let mut nodes = vec![first];
    for i in 1..NODES {
        let node = Cluster::builder()
            .node_name(format!("p{i}"))
            .seeds([seed.clone()])
            .start()
            .await?;
        nodes.push(node);
    }
    for node in &nodes {
        tokio::time::timeout(Duration::from_secs(10), node.wait_for_peers(NODES - 1))
            .await
            .context("the benchmark nodes never linked")?;
    }
    Ok(nodes)
}

/// A loader standing in for the database: it counts its calls in `loads`, and returns a copy of
/// `value` of its own, as a database read would (values shared between keys would make a hit's
/// reference count one cache line for every key).
fn counting(
    loads: &Arc<AtomicU64>,
    value: &Value,
) -> impl Fn(u64) -> Ready<Result<Value, Infallible>> + Clone + Send + Sync + 'static {
    let (loads, value) = (Arc::clone(loads), value.clone());
    move |_| {
        loads.fetch_add(1, Ordering::Relaxed);
        ready(Ok(Value::from(&*value)))
    }
}

/// Cache `name` on every node, in `mode`, holding `capacity` entries; a partitioned one loads
/// with `load` as the owner and keeps `hot_bytes` of hot copies.
fn caches(
    nodes: &[Cluster],
    name: &str,
    mode: Mode,
    capacity: u64,
    hot_bytes: u64,
    load: &(impl Fn(u64) -> Ready<Result<Value, Infallible>> + Clone + Send + Sync + 'static),
) -> anyhow::Result<Vec<Cache<u64, Value>>> {
    let mut caches = Vec::new();
    for node in nodes {
        let mut builder = node.cache::<u64, Value>(name);
        builder.capacity(capacity).mode(mode);
        if mode == Mode::Partitioned {
            builder.loader(load.clone()).hot_copies(hot_bytes);
        }
        caches.push(builder.build()?);
    }
    Ok(caches)
}

/// Database loads per 1,000 reads and the cluster's hit ratio, replicated against partitioned.
async fn loads(nodes: &[Cluster], value: &Value, quick: bool) -> anyhow::Result<Vec<Figure>> {
    let capacity: u64 = if quick { 2_000 } else { 20_000 };
    let keys = capacity * 5 / 2;
    // Warm-up: until the replicated caches' contents settle, and the partitioned owners have
    // seen most of the key space once.
    let (warmup, measured) = if quick {
        (200_000, 200_000)
    } else {
        (1_000_000, 1_000_000)
    };
    let zipf = Arc::new(Zipf::new(keys, 0.99));
    let mut per_1000 = Vec::new();
    for (name, mode) in [
        ("loads_replicated", Mode::Invalidate),
        ("loads_partitioned", Mode::Partitioned),
    ] {
        let loads = Arc::new(AtomicU64::new(0));
        let load = counting(&loads, value);
        let caches = caches(nodes, name, mode, capacity, 0, &load)?;
        read_zipf(&caches, &zipf, warmup, 1, &load).await?;
        let before = loads.load(Ordering::Relaxed);
        read_zipf(&caches, &zipf, measured, 2, &load).await?;
        let loaded = loads.load(Ordering::Relaxed) - before;
        per_1000.push(loaded as f64 * 1_000.0 / measured as f64);
    }
    let unit = "loads/1k reads";
    let replicated = Figure::plain("loads_per_1000_reads_replicated", per_1000[0], unit);
    let partitioned =
        Figure::plain("loads_per_1000_reads_partitioned", per_1000[1], unit).against(&replicated);
    // A read that caused no load was answered from some node's memory.
    let hit_percent = |per_1000: f64| 100.0 - per_1000 / 10.0;
    let replicated_hits = Figure::plain(
        "cluster_hit_ratio_replicated",
        hit_percent(per_1000[0]),
        "% of reads",
    );
    let partitioned_hits = Figure::plain(
        "cluster_hit_ratio_partitioned",
        hit_percent(per_1000[1]),
        "% of reads",
    )
    .against(&replicated_hits);
    Ok(vec![
        replicated,
        partitioned,
        replicated_hits,
        partitioned_hits,
    ])
}

/// `reads` Zipf-distributed reads from [`CLIENTS`] clients, each on a random node; `seed` picks
/// the sequence. A miss loads with `load`.
async fn read_zipf(
    caches: &[Cache<u64, Value>],
    zipf: &Arc<Zipf>,
    reads: u64,
    seed: u64,
    load: &(impl Fn(u64) -> Ready<Result<Value, Infallible>> + Clone + Send + Sync + 'static),
) -> anyhow::Result<()> {
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let (caches, zipf, load) = (caches.to_vec(), Arc::clone(zipf), load.clone());
            tokio::spawn(async move {
                let mut rng = StdRng::seed_from_u64(seed * 1_000 + client);
                for _ in 0..reads / CLIENTS {
                    let cache = &caches[rng.random_range(0..caches.len())];
                    let key = zipf.sample(&mut rng);
                    let Ok(_) = cache.fetch(&key, &load).await;
                }
            })
        })
        .collect();
    for client in clients {
        client.await.context("a client panicked")?;
    }
    Ok(())
}

/// A remote hit's p50 and p99 against a Redis GET's: node p0 reads keys that p1 owns and holds.
async fn remote_hits(nodes: &[Cluster], value: &Value, quick: bool) -> anyhow::Result<Vec<Figure>> {
    let loads = Arc::new(AtomicU64::new(0));
    let load = counting(&loads, value);
    let caches = caches(nodes, "remote", Mode::Partitioned, 100_000, 0, &load)?;
    let owner = Some(nodes[1].node_id().clone());
    let keys: Vec<u64> = (0..100 * REMOTE_KEYS as u64)
        .filter(|key| caches[0].owner(key) == owner && caches[1].owner(key) == owner)
        .take(REMOTE_KEYS)
        .collect();
    anyhow::ensure!(
        keys.len() == REMOTE_KEYS,
        "p1 owns {} of the keys",
        keys.len()
    );
    for key in &keys {
        let Ok(fetched) = caches[1].fetch(key, &load).await;
        anyhow::ensure!(
            fetched.source == Source::Loaded,
            "the owner found key {key} in {:?}",
            fetched.source
        );
    }

    let samples = if quick { 5_000 } else { 50_000 };
    let mut redis = Redis::start(value).await.map_err(|e| format!("{e:#}"));
    let loaded = loads.load(Ordering::Relaxed);
    let (mut remote, mut gets) = (Latencies::default(), Latencies::default());
    for round in 0..ROUNDS {
        for i in 0..samples / ROUNDS {
            let key = keys[(round * samples / ROUNDS + i) % keys.len()];
            let started = Instant::now();
            let Ok(fetched) = caches[0].fetch(&key, &load).await;
            remote.record(started.elapsed());
            anyhow::ensure!(
                fetched.source == Source::Owner,
                "a read of key {key} on a node that does not own it came from {:?}, not its owner",
                fetched.source
            );
        }
        let failed = match &mut redis {
            Ok(server) => server.time_gets(samples / ROUNDS, &mut gets).await.err(),
            Err(_) => None,
        };
        // As in `redis`: a Redis that fails skips its figures, with the reason, not the bench.
        if let Some(e) = failed {
            redis = Err(format!("{e:#}"));
        }
    }
    anyhow::ensure!(
        loads.load(Ordering::Relaxed) == loaded,
        "the owner loaded keys it should have held"
    );
    let remote_p50 = Figure::micros("remote_hit_p50", remote.quantile(0.5));
    let remote_p99 = Figure::micros("remote_hit_p99", remote.quantile(0.99));
    Ok(match redis {
        Ok(_) => {
            let get_p50 = Figure::micros("redis_get_p50", gets.quantile(0.5));
            let get_p99 = Figure::micros("redis_get_p99", gets.quantile(0.99));
            vec![
                get_p50.clone(),
                remote_p50.against(&get_p50),
                get_p99.clone(),
                remote_p99.against(&get_p99),
            ]
        }
        Err(reason) => vec![
            Figure::skipped("redis_get_p50", reason.clone()),
            remote_p50,
            Figure::skipped("redis_get_p99", reason),
            remote_p99,
        ],
    })
}

/// A throwaway Redis holding [`REMOTE_KEYS`] keys of the benchmark's value, and a connection.
struct Redis {
    conn: Conn,
    _server: cohort_testkit::Redis,
}

impl Redis {
    async fn start(value: &Value) -> anyhow::Result<Self> {
        let server = tokio::task::spawn_blocking(cohort_testkit::Redis::start).await??;
        let mut conn = Conn::open(server.addr()).await?;
        for key in 0..REMOTE_KEYS {
            conn.call(&[b"SET", format!("k{key}").as_bytes(), value.as_bytes()])
                .await?;
        }
        Ok(Self {
            conn,
            _server: server,
        })
    }

    /// Times `count` GETs, one at a time, into `latencies`.
    async fn time_gets(&mut self, count: usize, latencies: &mut Latencies) -> anyhow::Result<()> {
        for i in 0..count {
            let key = format!("k{}", i % REMOTE_KEYS);
            let started = Instant::now();
            let reply = self.conn.call(&[b"GET", key.as_bytes()]).await?;
            latencies.record(started.elapsed());
            let Reply::Bulk(Some(got)) = reply else {
                bail!("GET returned no value");
            };
            anyhow::ensure!(got.len() == VALUE_BYTES, "GET returned {} bytes", got.len());
        }
        Ok(())
    }
}

/// A hit on a hot copy against a local hit of a replicated cache, on node p0: the same keys
/// (owned by the other nodes) in the same Zipf(0.99) order, the same threads.
async fn hot_copy_hits(
    nodes: &[Cluster],
    value: &Value,
    quick: bool,
) -> anyhow::Result<Vec<Figure>> {
    let loads = Arc::new(AtomicU64::new(0));
    let load = counting(&loads, value);
    let hot = caches(nodes, "hot", Mode::Partitioned, HOT_KEYS, HOT_BYTES, &load)?;
    let local = caches(&nodes[..1], "local", Mode::Invalidate, HOT_KEYS, 0, &load)?;
    let (hot, local) = (hot[0].clone(), local[0].clone());
    let me = Some(nodes[0].node_id().clone());
    let keys: Vec<u64> = (1..=HOT_KEYS).filter(|key| hot.owner(key) != me).collect();
    for key in &keys {
        // A hot copy is kept on its key's second read.
        for _ in 0..2 {
            let Ok(_) = hot.fetch(key, &load).await;
        }
        let Ok(_) = local.fetch(key, &load).await;
    }
    let copied = keys.iter().filter(|key| hot.get(key).is_some()).count();
    anyhow::ensure!(
        copied == keys.len(),
        "only {copied} of {} keys read twice have a hot copy",
        keys.len()
    );
    let zipf = Zipf::new(keys.len() as u64, 0.99);
    let mut rng = StdRng::seed_from_u64(42);
    let sequence: Vec<u64> = (0..SEQUENCE)
        .map(|_| keys[zipf.sample(&mut rng) as usize - 1])
        .collect();
    let misses = (hot.stats().misses, local.stats().misses);
    let (hot_cache, local_cache) = (hot.clone(), local.clone());
    let figures = tokio::task::spawn_blocking(move || {
        let mut figures = Vec::new();
        for threads in THREADS {
            let rounds = take_turns(
                2,
                |which, key| match which {
                    0 => local_cache.get(key).is_some(),
                    _ => hot_cache.get(key).is_some(),
                },
                &sequence,
                threads,
                quick,
            );
            let local = rounds.figure(format!("hit_replicated_{threads}t"), 0);
            let hot = rounds.figure_against(format!("hit_hot_copy_{threads}t"), 1, 0, &local);
            figures.extend([local, hot]);
        }
        figures
    })
    .await?;
    anyhow::ensure!(
        (hot.stats().misses, local.stats().misses) == misses,
        "a measured read missed (a lapsed lease, an evicted copy)"
    );
    Ok(figures)
}
