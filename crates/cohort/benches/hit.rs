//! The cost of a cache hit: cohort's `Cache::get` against a bare quick_cache `get` on the same
//! keys and values (1 KiB `Arc<[u8]>`), one thread and two.
//!
//! A third contender, `cohort_leased`, is a cache that watches a table through the change log, so
//! every hit also checks the poll lease: its difference from `cohort` is the lease check's cost.
//!
//! `cargo bench -p cohort --bench hit`; compare the lines of each group.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

const KEYS: u64 = 100_000;
const HOT_KEYS: u64 = 1_000;
const SEQUENCE: usize = 1 << 16;

type Value = Arc<[u8]>;

fn value() -> Value {
    vec![7_u8; 1024].into()
}

/// A fixed pseudo-random sequence of keys below `n`, shared by both contenders.
fn keys(n: u64) -> Vec<u64> {
    let mut rng = StdRng::seed_from_u64(42);
    (0..SEQUENCE).map(|_| rng.random_range(0..n)).collect()
}

/// Runs `get` over the key sequence on two threads, `iters` lookups in all, and returns the wall
/// time: criterion then reports the aggregate cost per lookup.
fn two_threads<F>(iters: u64, keys: &[u64], get: F) -> Duration
where
    F: Fn(&u64) -> bool + Sync,
{
    let per_thread = usize::try_from(iters.div_ceil(2)).unwrap_or(usize::MAX);
    let start = Instant::now();
    std::thread::scope(|scope| {
        for offset in [0, keys.len() / 2] {
            let get = &get;
            scope.spawn(move || {
                for key in keys.iter().cycle().skip(offset).take(per_thread) {
                    black_box(get(key));
                }
            });
        }
    });
    start.elapsed()
}

fn hit(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let cluster = runtime
        .block_on(cohort::Cluster::builder().start())
        .unwrap();
    let cohort_cache = cluster
        .cache::<u64, Value>("bench")
        .capacity(KEYS * 2)
        .build()
        .unwrap();
    let leased = runtime.block_on(leased_cache());
    let bare = quick_cache::sync::Cache::<u64, Value>::new(KEYS as usize * 2);
    // Both caches hold the same allocation per key, so a hit touches the same reference counts.
    runtime.block_on(async {
        for key in 0..KEYS {
            let v = value();
            bare.insert(key, v.clone());
            let copy = v.clone();
            leased
                .get_or_load(&key, |_| async move { Ok::<_, ()>(copy) })
                .await
                .unwrap();
            cohort_cache
                .get_or_load(&key, |_| async move { Ok::<_, ()>(v) })
                .await
                .unwrap();
        }
    });

    for (label, n) in [("100k_keys", KEYS), ("1k_hot_keys", HOT_KEYS)] {
        let keys = keys(n);
        let mut group = c.benchmark_group(format!("hit/{label}/1_thread"));
        group.throughput(Throughput::Elements(1));
        group.bench_function("quick_cache", |b| {
            let mut next = keys.iter().cycle();
            b.iter(|| bare.get(next.next().unwrap()).is_some())
        });
        group.bench_function("cohort", |b| {
            let mut next = keys.iter().cycle();
            b.iter(|| cohort_cache.get(next.next().unwrap()).is_some())
        });
        group.bench_function("cohort_leased", |b| {
            let mut next = keys.iter().cycle();
            b.iter(|| leased.get(next.next().unwrap()).is_some())
        });
        group.finish();

        let mut group = c.benchmark_group(format!("hit/{label}/2_threads"));
        group.throughput(Throughput::Elements(1));
        group.bench_function("quick_cache", |b| {
            b.iter_custom(|iters| two_threads(iters, &keys, |k| bare.get(k).is_some()))
        });
        group.bench_function("cohort", |b| {
            b.iter_custom(|iters| two_threads(iters, &keys, |k| cohort_cache.get(k).is_some()))
        });
        group.bench_function("cohort_leased", |b| {
            b.iter_custom(|iters| two_threads(iters, &keys, |k| leased.get(k).is_some()))
        });
        group.finish();
    }
    assert_eq!(
        cohort_cache.stats().misses,
        0,
        "every measured read was a hit"
    );
    assert_eq!(leased.stats().misses, 0, "the lease held throughout");
    drop(runtime);
}

/// A cache watching a table of an in-memory SQLite database, with a bound long enough that the
/// lease holds for the whole run once the first poll is in (the tailer cannot run while the
/// benchmark holds the thread, so it must).
async fn leased_cache() -> cohort::Cache<u64, Value> {
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect("sqlite::memory:")
        .await
        .unwrap();
    sqlx::query("CREATE TABLE items (id INTEGER PRIMARY KEY)")
        .execute(&pool)
        .await
        .unwrap();
    let cluster = cohort::Cluster::builder()
        .max_staleness(Duration::from_secs(3_600))
        .log_retention(Duration::from_secs(4 * 3_600))
        .change_log(cohort::ChangeLog::sqlite(pool))
        .start()
        .await
        .unwrap();
    let cache = cluster
        .cache::<u64, Value>("items")
        .capacity(KEYS * 2)
        .watch_table("items", "id")
        .build()
        .unwrap();
    let mut events = cluster.subscribe();
    while !cache.is_serving() {
        let _ = events.recv().await;
    }
    cache
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = hit
}
criterion_main!(benches);
