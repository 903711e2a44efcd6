//! A hit allocates nothing: `Cache::get` on a held key, with values behind an `Arc`.
//!
//! A binary of its own, because the allocation counter replaces the global allocator.

use std::sync::Arc;

use cohort::Cluster;

#[tokio::test]
async fn a_hit_allocates_nothing() {
    let cluster = Cluster::builder().start().await.unwrap();
    let cache = cluster
        .cache::<u64, Arc<str>>("users")
        .ttl(std::time::Duration::from_secs(60))
        .build()
        .unwrap();
    for key in 0..100 {
        cache
            .get_or_load(&key, |key| async move {
                Ok::<_, ()>(Arc::from(format!("user {key}")))
            })
            .await
            .unwrap();
    }
    // Warm the thread's counter stripe, which is assigned on a thread's first count.
    assert!(cache.get(&0).is_some());

    let counted = allocation_counter::measure(|| {
        for key in 0..100 {
            assert!(cache.get(&key).is_some());
        }
    });
    assert_eq!(counted.count_total, 0, "{counted:?}");

    let misses = allocation_counter::measure(|| assert!(cache.get(&1_000).is_none()));
    assert_eq!(
        misses.count_total, 0,
        "a miss allocates nothing either: {misses:?}"
    );
}

/// The replay buffer holds what it is configured to hold, counting what its frames really cost
/// (allocations, bookkeeping), not only their lengths: 200,000 small events published with no
/// peer leave at most `replay_buffer` bytes more allocated than before.
#[tokio::test]
async fn the_replay_buffer_holds_no_more_than_its_size() {
    const BUFFER: usize = 1 << 20;
    let cluster = Cluster::builder()
        .replay_buffer(BUFFER)
        .start()
        .await
        .unwrap();
    let cache = cluster.cache::<u64, u64>("users").build().unwrap();
    let publish = |from: u64| {
        for key in from..from + 100_000 {
            futures_util::FutureExt::now_or_never(cache.invalidate(&key))
                .expect("an invalidation with no peers does not wait")
                .unwrap();
        }
    };
    publish(0);
    let held = allocation_counter::measure(|| publish(100_000));
    let before_and_after = held.bytes_current;
    eprintln!("{held:?}");
    // The ring was full before: what it dropped makes room for what it took.
    assert!(
        before_and_after.unsigned_abs() < (BUFFER / 10) as u64,
        "steady: {held:?}"
    );
    let fresh = Cluster::builder()
        .replay_buffer(BUFFER)
        .start()
        .await
        .unwrap();
    let fresh_cache = fresh.cache::<u64, u64>("users").build().unwrap();
    let filled = allocation_counter::measure(|| {
        for key in 0..200_000_u64 {
            futures_util::FutureExt::now_or_never(fresh_cache.invalidate(&key))
                .expect("an invalidation with no peers does not wait")
                .unwrap();
        }
    });
    eprintln!("{filled:?}");
    assert!(
        filled.bytes_current <= BUFFER as i64,
        "the ring holds {} bytes for a {BUFFER}-byte buffer",
        filled.bytes_current
    );
}
