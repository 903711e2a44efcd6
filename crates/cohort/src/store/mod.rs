//! The local bounded store: one node's copy of one cache.
//!
//! [`Store`] wraps `quick_cache` (S3-FIFO eviction, bounded by entry count or by weight) and adds
//! what cohort needs on top: a per-entry expiry, kept inside the stored value because quick_cache
//! has none. Versions are not stored: the application's version function reads them from the
//! value when a replica arrives, which keeps every entry of every cache 8 bytes smaller.
//!
//! Stale-fill protection rests on quick_cache's placeholders. A load or a write first takes a
//! [`Slot`] (a placeholder) for its key; any [`Store::remove`] of that key, any plain insert and
//! any [`Store::clear`] detaches it, and [`Slot::fill`] then stores nothing. Every invalidation a
//! node applies is therefore a `remove`, never a `retain`, which quick_cache does not let touch
//! placeholders.

use std::hash::Hash;
use std::num::NonZeroU64;
use std::sync::Arc;

use quick_cache::sync::{
    Cache as QuickCache, DefaultLifecycle, EntryAction, EntryResult, PlaceholderGuard,
};
use quick_cache::{DefaultHashBuilder, Weighter};

use crate::clock::{Clock, Millis};

/// The application's measure of an entry, for caches bounded by weight.
pub(crate) type WeighFn<K, V> = Arc<dyn Fn(&K, &V) -> u64 + Send + Sync>;

/// How much a [`Store`] may hold.
pub(crate) enum Bound<K, V> {
    /// At most this many entries.
    Entries(NonZeroU64),
    /// Entries whose weights add up to at most `max`; `estimated_entries` sizes the table.
    Weight {
        max: NonZeroU64,
        estimated_entries: usize,
        weigh: WeighFn<K, V>,
    },
}

/// One stored value with the metadata cohort keeps beside it.
#[derive(Clone)]
pub(crate) struct Entry<V> {
    pub(crate) value: V,
    /// When the entry stops being served; [`NEVER`] if it has no expiry.
    pub(crate) expires_at: Millis,
}

/// `expires_at` of an entry that never expires.
pub(crate) const NEVER: Millis = Millis::MAX;

impl<V> Entry<V> {
    #[inline]
    fn is_live(&self, clock: &Clock) -> bool {
        self.expires_at == NEVER || clock.now() < self.expires_at
    }
}

#[derive(Clone)]
pub(crate) struct EntryWeighter<K, V>(Option<WeighFn<K, V>>);

impl<K, V> Weighter<K, Entry<V>> for EntryWeighter<K, V> {
    fn weight(&self, key: &K, entry: &Entry<V>) -> u64 {
        self.0.as_ref().map_or(1, |weigh| weigh(key, &entry.value))
    }
}

type Inner<K, V> =
    QuickCache<K, Entry<V>, EntryWeighter<K, V>, DefaultHashBuilder, DefaultLifecycle<K, Entry<V>>>;

/// One node's bounded copy of one cache.
pub(crate) struct Store<K, V> {
    inner: Inner<K, V>,
    clock: Clock,
}

/// A claim on a key that is being loaded or written; see [`Store::load_slot`].
pub(crate) struct Slot<'a, K, V>(Guard<'a, K, V>);

type Guard<'a, K, V> = PlaceholderGuard<
    'a,
    K,
    Entry<V>,
    EntryWeighter<K, V>,
    DefaultHashBuilder,
    DefaultLifecycle<K, Entry<V>>,
>;

/// What [`Store::load_slot`] found.
pub(crate) enum Lookup<'a, K, V> {
    /// A live value, stored or just filled by a concurrent loader of the same key.
    Hit(V),
    /// Nothing usable: the caller loads the value and offers it to the slot.
    Miss(Slot<'a, K, V>),
}

/// What [`Store::apply_replica`] did with a value replicated from a peer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ReplicaOutcome {
    /// The key held an older version, now replaced.
    Replaced,
    /// The key held this version or a newer one; kept.
    KeptNewer,
    /// The key was not held; nothing stored (a later read loads it from the source).
    Absent,
    /// A load or write of the key was in flight; it was cancelled and the key left empty.
    Cancelled,
}

/// What [`Store::apply_logged`] did with a change-log row.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum LoggedOutcome {
    /// The key held a copy at least as new as the change; kept.
    Kept,
    /// Whatever the key held, and any load or write of it in flight, is gone.
    Dropped,
}

/// Whether a copy at version `held` survives a change-log row that says the change left the row
/// at version `logged`: only when both are known and the copy already has the change (versions
/// grow with every write of a key, so a copy at least that new was read or written after it).
/// An unknown side (no version column, a delete, a cache without versions) drops the copy.
pub(crate) fn survives_logged(held: Option<u64>, logged: Option<u64>) -> bool {
    matches!((held, logged), (Some(held), Some(logged)) if held >= logged)
}

impl<K, V> Store<K, V>
where
    K: Eq + Hash + Clone,
    V: Clone,
{
    pub(crate) fn new(bound: Bound<K, V>, clock: Clock) -> Self {
        let (estimated, max_weight, weigh) = match bound {
            Bound::Entries(n) => (
                usize::try_from(n.get()).unwrap_or(usize::MAX),
                n.get(),
                None,
            ),
            Bound::Weight {
                max,
                estimated_entries,
                weigh,
            } => (estimated_entries, max.get(), Some(weigh)),
        };
        let inner = QuickCache::with(
            estimated,
            max_weight,
            EntryWeighter(weigh),
            DefaultHashBuilder::default(),
            Default::default(),
        );
        Self { inner, clock }
    }

    /// The live value of `key`, if held. Allocation-free unless cloning `V` allocates.
    #[inline]
    pub(crate) fn get(&self, key: &K) -> Option<V> {
        let entry = self.inner.get(key)?;
        entry.is_live(&self.clock).then_some(entry.value)
    }

    /// A live value of `key`, or a slot to fill. If another task is loading `key`, waits for it
    /// (single flight) and returns its value when it stored one.
    pub(crate) async fn load_slot(&self, key: &K) -> Lookup<'_, K, V> {
        let clock = &self.clock;
        match self
            .inner
            .entry_async(key, |_, entry| {
                if entry.is_live(clock) {
                    EntryAction::Retain(entry.value.clone())
                } else {
                    EntryAction::ReplaceWithGuard
                }
            })
            .await
        {
            EntryResult::Retained(value) => Lookup::Hit(value),
            EntryResult::Vacant(guard) | EntryResult::Replaced(guard, _) => {
                Lookup::Miss(Slot(guard))
            }
            // Only the blocking `entry` with a timeout returns these.
            EntryResult::Removed(..) | EntryResult::Timeout => {
                unreachable!("entry_async retains, replaces or hands out a guard")
            }
        }
    }

    /// A slot for a write of `key` that is about to run: drops the held value and cancels any
    /// load or write of `key` in flight, whose fill would predate this write.
    pub(crate) fn write_slot(&self, key: &K) -> Slot<'_, K, V> {
        loop {
            match self
                .inner
                .entry(key, Some(std::time::Duration::ZERO), |_, _| {
                    EntryAction::<()>::ReplaceWithGuard
                }) {
                EntryResult::Vacant(guard) | EntryResult::Replaced(guard, _) => return Slot(guard),
                // Someone else holds a slot: detach it so its fill fails, then claim the key.
                EntryResult::Timeout => {
                    self.inner.remove(key);
                }
                EntryResult::Retained(()) | EntryResult::Removed(..) => {
                    unreachable!("the callback always replaces")
                }
            }
        }
    }

    /// Drops `key` and cancels any load or write of it in flight.
    pub(crate) fn remove(&self, key: &K) {
        self.inner.remove(key);
    }

    /// Offers a value replicated from a peer. Only a held, older version (as `version_of` reads
    /// it from the held value) is replaced: storing a value for an absent key could resurrect an
    /// old version that raced with an eviction.
    pub(crate) fn apply_replica(
        &self,
        key: &K,
        value: V,
        version: u64,
        expires_at: Millis,
        version_of: impl Fn(&V) -> u64,
    ) -> ReplicaOutcome {
        let mut offered = Some(value);
        match self.inner.entry(
            key,
            Some(std::time::Duration::ZERO),
            |_: &K, held: &mut Entry<V>| {
                if version_of(&held.value) < version {
                    if let Some(value) = offered.take() {
                        *held = Entry { value, expires_at };
                    }
                    EntryAction::Retain(ReplicaOutcome::Replaced)
                } else {
                    EntryAction::Retain(ReplicaOutcome::KeptNewer)
                }
            },
        ) {
            EntryResult::Retained(outcome) => outcome,
            // The guard is dropped unfilled: the key stays absent.
            EntryResult::Vacant(_) => ReplicaOutcome::Absent,
            EntryResult::Timeout => {
                self.inner.remove(key);
                ReplicaOutcome::Cancelled
            }
            EntryResult::Removed(..) | EntryResult::Replaced(..) => {
                unreachable!("the callback always retains")
            }
        }
    }

    /// Applies a change-log row for `key` that left the row at version `logged` (if known): a
    /// held copy that [survives](survives_logged) it, as `version_of` reads the copy's version,
    /// is kept; anything else is dropped. A load or write of `key` in flight is cancelled either
    /// way: it may have read the source before the change, and its value is not known yet.
    pub(crate) fn apply_logged(
        &self,
        key: &K,
        logged: Option<u64>,
        version_of: impl Fn(&V) -> Option<u64>,
    ) -> LoggedOutcome {
        if logged.is_none() {
            self.inner.remove(key);
            return LoggedOutcome::Dropped;
        }
        match self.inner.entry(
            key,
            Some(std::time::Duration::ZERO),
            |_: &K, held: &mut Entry<V>| {
                if survives_logged(version_of(&held.value), logged) {
                    EntryAction::Retain(())
                } else {
                    EntryAction::Remove
                }
            },
        ) {
            EntryResult::Retained(()) => LoggedOutcome::Kept,
            // The guard of a vacant key is dropped unfilled: the key stays absent.
            EntryResult::Removed(..) | EntryResult::Vacant(_) => LoggedOutcome::Dropped,
            EntryResult::Timeout => {
                self.inner.remove(key);
                LoggedOutcome::Dropped
            }
            EntryResult::Replaced(..) => unreachable!("the callback retains or removes"),
        }
    }

    /// Drops everything and cancels every load and write in flight.
    pub(crate) fn clear(&self) {
        self.inner.clear();
    }

    pub(crate) fn len(&self) -> usize {
        self.inner.len()
    }

    pub(crate) fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Checks the store's invariants; panics on a violation.
    #[cfg(any(test, fuzzing))]
    pub(crate) fn validate(&self) {
        assert!(
            self.inner.weight() <= self.inner.capacity(),
            "weight {} over capacity {}",
            self.inner.weight(),
            self.inner.capacity()
        );
    }
}

impl<K, V> Slot<'_, K, V>
where
    K: Eq + Hash + Clone,
    V: Clone,
{
    /// Stores `entry` unless the key was removed, inserted or cleared since the slot was taken.
    /// Returns whether it was stored.
    pub(crate) fn fill(self, entry: Entry<V>) -> bool {
        self.0.insert(entry).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn store(capacity: u64) -> Store<u64, String> {
        Store::new(
            Bound::Entries(NonZeroU64::new(capacity).unwrap()),
            Clock::manual(1_000),
        )
    }

    fn entry(value: &str) -> Entry<String> {
        Entry {
            value: value.to_owned(),
            expires_at: NEVER,
        }
    }

    /// Test values carry their version after a `v`: "v5", "v5 again".
    fn version_of(value: &str) -> u64 {
        value[1..]
            .split(' ')
            .next()
            .and_then(|digits| digits.parse().ok())
            .unwrap_or(0)
    }

    async fn miss(store: &Store<u64, String>, key: u64) -> Slot<'_, u64, String> {
        match store.load_slot(&key).await {
            Lookup::Miss(slot) => slot,
            Lookup::Hit(v) => panic!("expected a miss, found {v}"),
        }
    }

    #[tokio::test]
    async fn fill_then_hit() {
        let store = store(10);
        assert_eq!(store.get(&1), None);
        assert!(miss(&store, 1).await.fill(entry("one")));
        assert_eq!(store.get(&1).as_deref(), Some("one"));
        assert!(matches!(store.load_slot(&1).await, Lookup::Hit(v) if v == "one"));
        store.validate();
    }

    #[tokio::test]
    async fn expired_entries_are_misses_and_reloadable() {
        let store = store(10);
        let expires_at = store.clock().deadline(Duration::from_millis(50));
        assert!(miss(&store, 1).await.fill(Entry {
            expires_at,
            ..entry("one")
        }));
        store.clock().advance(Duration::from_millis(49));
        assert_eq!(store.get(&1).as_deref(), Some("one"));
        store.clock().advance(Duration::from_millis(1));
        assert_eq!(store.get(&1), None);
        assert!(miss(&store, 1).await.fill(entry("fresh")));
        assert_eq!(store.get(&1).as_deref(), Some("fresh"));
    }

    #[tokio::test]
    async fn remove_during_load_rejects_the_fill() {
        let store = store(10);
        let slot = miss(&store, 1).await;
        store.remove(&1);
        assert!(!slot.fill(entry("stale")));
        assert_eq!(store.get(&1), None);
    }

    #[tokio::test]
    async fn clear_during_load_rejects_the_fill() {
        let store = store(10);
        let slot = miss(&store, 1).await;
        store.clear();
        assert!(!slot.fill(entry("stale")));
        assert_eq!(store.get(&1), None);
    }

    #[tokio::test]
    async fn write_slot_cancels_a_load_in_flight() {
        let store = store(10);
        let load = miss(&store, 1).await;
        let write = store.write_slot(&1);
        assert!(!load.fill(entry("read before the write")));
        assert!(write.fill(entry("written")));
        assert_eq!(store.get(&1).as_deref(), Some("written"));
    }

    #[tokio::test]
    async fn replicas_replace_only_older_held_versions() {
        let store = store(10);
        assert_eq!(
            store.apply_replica(&1, "v5".into(), 5, NEVER, |held: &String| version_of(held)),
            ReplicaOutcome::Absent
        );
        assert_eq!(store.get(&1), None, "an absent key stays absent");

        assert!(miss(&store, 1).await.fill(entry("v3")));
        assert_eq!(
            store.apply_replica(&1, "v5".into(), 5, NEVER, |held: &String| version_of(held)),
            ReplicaOutcome::Replaced
        );
        assert_eq!(
            store.apply_replica(&1, "v4".into(), 4, NEVER, |held: &String| version_of(held)),
            ReplicaOutcome::KeptNewer
        );
        assert_eq!(
            store.apply_replica(&1, "v5 again".into(), 5, NEVER, |held: &String| version_of(
                held
            )),
            ReplicaOutcome::KeptNewer
        );
        assert_eq!(store.get(&1).as_deref(), Some("v5"));
        store.validate();
    }

    #[tokio::test]
    async fn replica_during_load_cancels_it() {
        let store = store(10);
        let slot = miss(&store, 1).await;
        assert_eq!(
            store.apply_replica(&1, "v9".into(), 9, NEVER, |held: &String| version_of(held)),
            ReplicaOutcome::Cancelled
        );
        assert!(!slot.fill(entry("v8")));
        assert_eq!(store.get(&1), None);
    }

    #[tokio::test]
    async fn logged_changes_keep_only_copies_at_least_as_new() {
        let store = store(10);
        let version = |held: &String| Some(version_of(held));
        assert!(miss(&store, 1).await.fill(entry("v5")));
        for logged in [Some(4), Some(5)] {
            assert_eq!(store.apply_logged(&1, logged, version), LoggedOutcome::Kept);
            assert_eq!(store.get(&1).as_deref(), Some("v5"));
        }
        assert_eq!(
            store.apply_logged(&1, Some(6), version),
            LoggedOutcome::Dropped
        );
        assert_eq!(store.get(&1), None);

        assert!(miss(&store, 1).await.fill(entry("v7")));
        assert_eq!(
            store.apply_logged(&1, None, version),
            LoggedOutcome::Dropped
        );
        assert_eq!(store.get(&1), None, "an unknown version drops the copy");

        assert!(miss(&store, 1).await.fill(entry("v7")));
        assert_eq!(
            store.apply_logged(&1, Some(1), |_: &String| None),
            LoggedOutcome::Dropped,
            "a copy of unknown version is dropped"
        );
        assert_eq!(
            store.apply_logged(&2, Some(1), version),
            LoggedOutcome::Dropped
        );
        assert_eq!(store.get(&2), None, "an absent key stays absent");
        store.validate();
    }

    /// A load in flight may have read the row before the change: its fill is refused, whatever
    /// the version, while a load that starts after the row was applied stores its value.
    #[tokio::test]
    async fn a_logged_change_cancels_a_load_in_flight() {
        let store = store(10);
        let version = |held: &String| Some(version_of(held));
        let slot = miss(&store, 1).await;
        assert_eq!(
            store.apply_logged(&1, Some(3), version),
            LoggedOutcome::Dropped
        );
        assert!(!slot.fill(entry("v2")));
        assert_eq!(store.get(&1), None);
        assert!(miss(&store, 1).await.fill(entry("v3")));
        assert_eq!(store.get(&1).as_deref(), Some("v3"));
    }

    proptest::proptest! {
        /// A copy survives exactly when its version is known and at least the logged one.
        #[test]
        fn a_copy_survives_only_a_change_it_already_has(
            held in proptest::option::of(0..20_u64),
            logged in proptest::option::of(0..20_u64),
        ) {
            let survives = survives_logged(held, logged);
            proptest::prop_assert_eq!(
                survives,
                held.is_some() && logged.is_some() && held >= logged
            );
        }

        /// Against a store, whatever the sequence of fills and logged changes: a logged change
        /// leaves the held copy exactly when it survives it, and never leaves an older one.
        #[test]
        fn a_logged_change_keeps_exactly_the_copies_that_survive_it(
            ops in proptest::collection::vec(
                (proptest::bool::ANY, 0..10_u64, proptest::option::of(0..10_u64)),
                1..60,
            ),
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            rt.block_on(async {
                let store = store(10);
                let version = |held: &String| Some(version_of(held));
                for (fill, v, logged) in ops {
                    if fill {
                        if let Lookup::Miss(slot) = store.load_slot(&1).await {
                            slot.fill(entry(&format!("v{v}")));
                        }
                        continue;
                    }
                    let before = store.get(&1).map(|held| version_of(&held));
                    let outcome = store.apply_logged(&1, logged, version);
                    let after = store.get(&1).map(|held| version_of(&held));
                    let survives = survives_logged(before, logged);
                    proptest::prop_assert_eq!(outcome == LoggedOutcome::Kept, survives);
                    proptest::prop_assert_eq!(after, if survives { before } else { None });
                }
                Ok(())
            })?;
        }
    }

    #[tokio::test]
    async fn entry_bound_holds() {
        let store = store(100);
        for key in 0..1_000 {
            assert!(miss(&store, key).await.fill(entry("x")));
        }
        assert!(store.len() <= 100, "{} entries", store.len());
        store.validate();
    }

    #[tokio::test]
    async fn weight_bound_holds() {
        let store: Store<u64, String> = Store::new(
            Bound::Weight {
                max: NonZeroU64::new(1_000).unwrap(),
                estimated_entries: 100,
                weigh: Arc::new(|_, v: &String| v.len() as u64),
            },
            Clock::manual(0),
        );
        for key in 0..100 {
            assert!(miss(&store, key).await.fill(entry(&"x".repeat(100))));
        }
        assert!(store.len() <= 10, "{} entries of weight 100", store.len());
    }

    #[tokio::test]
    async fn len_counts_the_held_entries() {
        let store = store(10);
        assert_eq!(store.len(), 0);
        for key in 0..3 {
            assert!(miss(&store, key).await.fill(entry("x")));
        }
        assert_eq!(store.len(), 3);
        store.remove(&0);
        assert_eq!(store.len(), 2);
    }
}
