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
