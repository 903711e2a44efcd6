//! The local bounded store: one node's copy of one cache.
//!
//! [`Store`] wraps `quick_cache` (S3-FIFO eviction, bounded by entry count or by weight) and adds
//! what cohort needs on top: a per-entry expiry for caches with a time to live, kept inside the
//! stored value because quick_cache has none. A cache without one stores the bare value: the
//! expiry would make every entry 8 bytes larger, and on a hit bound by memory latency a larger
//! entry costs as much as the lease check (measured: 1.2× the bare hit). Versions are never
//! stored: the application's version function reads them from the value when a replica arrives.
//!
//! Stale-fill protection rests on quick_cache's placeholders. A load or a write first takes a
//! [`Slot`] (a placeholder) for its key; any [`Store::remove`] of that key, any plain insert and
//! any [`Store::clear`] detaches it, and [`Slot::fill`] then stores nothing. Every invalidation a
//! node applies is therefore a `remove`, never a `retain`, which quick_cache does not let touch
//! placeholders.
//!
//! A store built [with tags](Store::with_tags) also keeps a tag index (`tags`), so that
//! [`Store::invalidate_tag`] finds the keys, and refuses fills whose value carries a tag
//! invalidated while they loaded.

mod tags;

use std::hash::Hash;
use std::num::NonZeroU64;
use std::sync::Arc;
use std::time::Duration;

use quick_cache::sync::{
    Cache as QuickCache, DefaultLifecycle, EntryAction, EntryResult, PlaceholderGuard,
};
use quick_cache::{DefaultHashBuilder, Weighter};

use crate::clock::{Clock, Millis};
pub(crate) use tags::TagFn;
use tags::Tags;

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

/// What a table holds for one key: the value, and whatever decides whether it is still live.
trait Held<V>: Clone {
    fn new(value: V, expires_at: Millis) -> Self;
    fn value(&self) -> &V;
    fn into_value(self) -> V;
    fn is_live(&self, clock: &Clock) -> bool;
}

/// A value that lives until it is removed or evicted.
#[derive(Clone)]
struct Lasting<V>(V);

impl<V: Clone> Held<V> for Lasting<V> {
    fn new(value: V, _: Millis) -> Self {
        Self(value)
    }

    fn value(&self) -> &V {
        &self.0
    }

    #[inline(always)]
    fn into_value(self) -> V {
        self.0
    }

    #[inline(always)]
    fn is_live(&self, _: &Clock) -> bool {
        true
    }
}

/// A value that stops being served at a deadline.
#[derive(Clone)]
struct Expiring<V> {
    value: V,
    expires_at: Millis,
}

impl<V: Clone> Held<V> for Expiring<V> {
    fn new(value: V, expires_at: Millis) -> Self {
        Self { value, expires_at }
    }

    fn value(&self) -> &V {
        &self.value
    }

    #[inline(always)]
    fn into_value(self) -> V {
        self.value
    }

    #[inline(always)]
    fn is_live(&self, clock: &Clock) -> bool {
        clock.now() < self.expires_at
    }
}

struct HeldWeighter<K, V>(Option<WeighFn<K, V>>);

impl<K, V> Clone for HeldWeighter<K, V> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<K, V, H: Held<V>> Weighter<K, H> for HeldWeighter<K, V> {
    fn weight(&self, key: &K, held: &H) -> u64 {
        self.0.as_ref().map_or(1, |weigh| weigh(key, held.value()))
    }
}

type Table<K, V, H> =
    QuickCache<K, H, HeldWeighter<K, V>, DefaultHashBuilder, DefaultLifecycle<K, H>>;

type Guard<'a, K, V, H> =
    PlaceholderGuard<'a, K, H, HeldWeighter<K, V>, DefaultHashBuilder, DefaultLifecycle<K, H>>;

/// The table of a cache without a time to live, or of one with.
enum Tables<K, V> {
    Lasting(Table<K, V, Lasting<V>>),
    Expiring(Table<K, V, Expiring<V>>),
}

/// Runs `$body` on whichever table the store has, with `$wrap` (if named) the [`Claim`] variant
/// for it.
macro_rules! with_table {
    ($store:expr, |$table:ident| $body:expr) => {
        match &$store.tables {
            Tables::Lasting($table) => $body,
            Tables::Expiring($table) => $body,
        }
    };
    ($store:expr, |$table:ident, $wrap:ident| $body:expr) => {
        match &$store.tables {
            Tables::Lasting($table) => {
                let $wrap = Claim::Lasting;
                $body
            }
            Tables::Expiring($table) => {
                let $wrap = Claim::Expiring;
                $body
            }
        }
    };
}

/// One node's bounded copy of one cache.
pub(crate) struct Store<K, V> {
    tables: Tables<K, V>,
    clock: Clock,
    ttl: Option<Duration>,
    tags: Option<Tags<K, V>>,
}

/// A claim on a key that is being loaded or written; see [`Store::load_slot`].
pub(crate) struct Slot<'a, K, V> {
    claim: Claim<'a, K, V>,
    store: &'a Store<K, V>,
    /// In a store with tags: the key, to index its value, and the tag epoch when the slot was
    /// taken, before the load or write touched the source.
    tagged: Option<(K, u64)>,
}

enum Claim<'a, K, V> {
    Lasting(Guard<'a, K, V, Lasting<V>>),
    Expiring(Guard<'a, K, V, Expiring<V>>),
}

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
    /// A store bounded by `bound` whose entries, with a `ttl`, stop being served that long after
    /// they were stored.
    pub(crate) fn new(bound: Bound<K, V>, clock: Clock, ttl: Option<Duration>) -> Self {
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
        fn table<K: Eq + Hash + Clone, V: Clone, H: Held<V>>(
            estimated: usize,
            max_weight: u64,
            weigh: Option<WeighFn<K, V>>,
        ) -> Table<K, V, H> {
            QuickCache::with(
                estimated,
                max_weight,
                HeldWeighter(weigh),
                DefaultHashBuilder::default(),
                DefaultLifecycle::default(),
            )
        }
        let tables = match ttl {
            None => Tables::Lasting(table(estimated, max_weight, weigh)),
            Some(_) => Tables::Expiring(table(estimated, max_weight, weigh)),
        };
        Self {
            tables,
            clock,
            ttl,
            tags: None,
        }
    }

    /// The same store, indexing each stored value under the tags `of` reads from it.
    pub(crate) fn with_tags(mut self, of: TagFn<V>) -> Self {
        self.tags = Some(Tags::new(of));
        self
    }

    /// The live value of `key`, if held. Allocation-free unless cloning `V` allocates.
    #[inline(always)]
    pub(crate) fn get(&self, key: &K) -> Option<V> {
        with_table!(self, |table| {
            let held = table.get(key)?;
            held.is_live(&self.clock).then(|| held.into_value())
        })
    }

    /// A live value of `key`, or a slot to fill. If another task is loading `key`, waits for it
    /// (single flight) and returns its value when it stored one.
    pub(crate) async fn load_slot(&self, key: &K) -> Lookup<'_, K, V> {
        let clock = &self.clock;
        with_table!(self, |table, wrap| {
            match table
                .entry_async(key, |_, held| {
                    if held.is_live(clock) {
                        EntryAction::Retain(held.value().clone())
                    } else {
                        EntryAction::ReplaceWithGuard
                    }
                })
                .await
            {
                EntryResult::Retained(value) => Lookup::Hit(value),
                EntryResult::Vacant(guard) | EntryResult::Replaced(guard, _) => {
                    Lookup::Miss(self.slot(key, wrap(guard)))
                }
                // Only the blocking `entry` with a timeout returns these.
                EntryResult::Removed(..) | EntryResult::Timeout => {
                    unreachable!("entry_async retains, replaces or hands out a guard")
                }
            }
        })
    }

    /// [`load_slot`](Self::load_slot) without the wait: `None` while another task holds the
    /// key's slot (its load is in flight), so a batch can claim the keys nobody is loading, load
    /// them, and only then wait for the others, never holding a slot while it waits.
    pub(crate) fn try_load_slot(&self, key: &K) -> Option<Lookup<'_, K, V>> {
        let clock = &self.clock;
        with_table!(self, |table, wrap| {
            match table.entry(key, Some(Duration::ZERO), |_, held| {
                if held.is_live(clock) {
                    EntryAction::Retain(held.value().clone())
                } else {
                    EntryAction::ReplaceWithGuard
                }
            }) {
                EntryResult::Retained(value) => Some(Lookup::Hit(value)),
                EntryResult::Vacant(guard) | EntryResult::Replaced(guard, _) => {
                    Some(Lookup::Miss(self.slot(key, wrap(guard))))
                }
                EntryResult::Timeout => None,
                EntryResult::Removed(..) => unreachable!("the callback retains or replaces"),
            }
        })
    }

    /// A slot for a write of `key` that is about to run: drops the held value and cancels any
    /// load or write of `key` in flight, whose fill would predate this write.
    pub(crate) fn write_slot(&self, key: &K) -> Slot<'_, K, V> {
        with_table!(self, |table, wrap| loop {
            match table.entry(key, Some(Duration::ZERO), |_, _| {
                EntryAction::<()>::ReplaceWithGuard
            }) {
                EntryResult::Vacant(guard) | EntryResult::Replaced(guard, _) => {
                    return self.slot(key, wrap(guard));
                }
                // Someone else holds a slot: detach it so its fill fails, then claim the key.
                EntryResult::Timeout => {
                    table.remove(key);
                }
                EntryResult::Retained(()) | EntryResult::Removed(..) => {
                    unreachable!("the callback always replaces")
                }
            }
        })
    }

    fn slot<'a>(&'a self, key: &K, claim: Claim<'a, K, V>) -> Slot<'a, K, V> {
        Slot {
            claim,
            store: self,
            tagged: self.tags.as_ref().map(|tags| (key.clone(), tags.ticket())),
        }
    }

    /// Drops `key` and cancels any load or write of it in flight.
    pub(crate) fn remove(&self, key: &K) {
        with_table!(self, |table| {
            table.remove(key);
        });
    }

    /// Offers a value replicated from a peer. Only a held, older version (as `version_of` reads
    /// it from the held value) is replaced: storing a value for an absent key could resurrect an
    /// old version that raced with an eviction.
    pub(crate) fn apply_replica(
        &self,
        key: &K,
        value: V,
        version: u64,
        version_of: impl Fn(&V) -> u64,
    ) -> ReplicaOutcome {
        // A replaced value is indexed under its tags in the same critical section as a fill.
        let tagged = self
            .tags
            .as_ref()
            .map(|tags| (tags.tags_of(&value), tags.lock()));
        let mut offered = Some(value);
        let expires_at = self.expiry();
        let outcome = with_table!(self, |table| {
            match table.entry(key, Some(Duration::ZERO), |_, held| {
                if version_of(held.value()) < version {
                    if let Some(value) = offered.take() {
                        *held = Held::new(value, expires_at);
                    }
                    EntryAction::Retain(ReplicaOutcome::Replaced)
                } else {
                    EntryAction::Retain(ReplicaOutcome::KeptNewer)
                }
            }) {
                EntryResult::Retained(outcome) => outcome,
                // The guard is dropped unfilled: the key stays absent.
                EntryResult::Vacant(_) => ReplicaOutcome::Absent,
                EntryResult::Timeout => {
                    table.remove(key);
                    ReplicaOutcome::Cancelled
                }
                EntryResult::Removed(..) | EntryResult::Replaced(..) => {
                    unreachable!("the callback always retains")
                }
            }
        });
        if let (Some((tags, mut index)), ReplicaOutcome::Replaced) = (tagged, &outcome) {
            index.insert(key, tags);
        }
        outcome
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
            self.remove(key);
            return LoggedOutcome::Dropped;
        }
        with_table!(self, |table| {
            match table.entry(key, Some(Duration::ZERO), |_, held| {
                if survives_logged(version_of(held.value()), logged) {
                    EntryAction::Retain(())
                } else {
                    EntryAction::Remove
                }
            }) {
                EntryResult::Retained(()) => LoggedOutcome::Kept,
                // The guard of a vacant key is dropped unfilled: the key stays absent.
                EntryResult::Removed(..) | EntryResult::Vacant(_) => LoggedOutcome::Dropped,
                EntryResult::Timeout => {
                    table.remove(key);
                    LoggedOutcome::Dropped
                }
                EntryResult::Replaced(..) => unreachable!("the callback retains or removes"),
            }
        })
    }

    /// Drops everything and cancels every load and write in flight.
    pub(crate) fn clear(&self) {
        let index = self.tags.as_ref().map(Tags::lock);
        with_table!(self, |table| table.clear());
        if let Some(mut index) = index {
            index.clear();
        }
    }

    /// Drops every key whose value carries `tag`, and cancels every load or write in flight
    /// whose value will carry it. Returns how many keys were indexed under it; a store without
    /// tags holds none.
    pub(crate) fn invalidate_tag(&self, tag: &str) -> usize {
        let Some(tags) = &self.tags else {
            return 0;
        };
        let mut index = tags.lock();
        let keys = tags.invalidate(&mut index, tag);
        for key in &keys {
            self.remove(key);
        }
        keys.len()
    }

    pub(crate) fn len(&self) -> usize {
        with_table!(self, |table| table.len())
    }

    pub(crate) fn clock(&self) -> &Clock {
        &self.clock
    }

    /// When an entry stored now stops being served; `Millis::MAX` without a time to live.
    fn expiry(&self) -> Millis {
        self.ttl.map_or(Millis::MAX, |ttl| self.clock.deadline(ttl))
    }

    /// Checks the store's invariants; panics on a violation.
    #[cfg(any(test, fuzzing))]
    pub(crate) fn validate(&self) {
        let (weight, capacity) = with_table!(self, |table| (table.weight(), table.capacity()));
        assert!(
            weight <= capacity,
            "weight {weight} over capacity {capacity}"
        );
    }
}

impl<K, V> Slot<'_, K, V>
where
    K: Eq + Hash + Clone,
    V: Clone,
{
    /// Stores `value` unless the key was removed, inserted or cleared since the slot was taken,
    /// or (in a store with tags) the value carries a tag invalidated since. Returns whether it
    /// was stored.
    pub(crate) fn fill(self, value: V) -> bool {
        let store = self.store;
        let expires_at = store.expiry();
        let insert = |claim, value| match claim {
            Claim::Lasting(guard) => guard.insert(Held::new(value, expires_at)).is_ok(),
            Claim::Expiring(guard) => guard.insert(Held::new(value, expires_at)).is_ok(),
        };
        let (Some(tags), Some((key, ticket))) = (&store.tags, self.tagged) else {
            return insert(self.claim, value);
        };
        let value_tags = tags.tags_of(&value);
        let mut index = tags.lock();
        if !index.admits(ticket, tags.epoch(), &value_tags) {
            return false;
        }
        if !insert(self.claim, value) {
            return false;
        }
        index.insert(&key, value_tags);
        if index.wants_sweep() {
            index.sweep(|key| {
                with_table!(store, |table| table
                    .peek(key)
                    .map(|held| tags.tags_of(held.value())))
            });
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::Duration;

    use super::*;

    fn store(capacity: u64) -> Store<u64, String> {
        Store::new(
            Bound::Entries(NonZeroU64::new(capacity).unwrap()),
            Clock::manual(1_000),
            None,
        )
    }

    fn entry(value: &str) -> String {
        value.to_owned()
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
        let store: Store<u64, String> = Store::new(
            Bound::Entries(NonZeroU64::new(10).unwrap()),
            Clock::manual(1_000),
            Some(Duration::from_millis(50)),
        );
        assert!(miss(&store, 1).await.fill(entry("one")));
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
            store.apply_replica(&1, "v5".into(), 5, |held: &String| version_of(held)),
            ReplicaOutcome::Absent
        );
        assert_eq!(store.get(&1), None, "an absent key stays absent");

        assert!(miss(&store, 1).await.fill(entry("v3")));
        assert_eq!(
            store.apply_replica(&1, "v5".into(), 5, |held: &String| version_of(held)),
            ReplicaOutcome::Replaced
        );
        assert_eq!(
            store.apply_replica(&1, "v4".into(), 4, |held: &String| version_of(held)),
            ReplicaOutcome::KeptNewer
        );
        assert_eq!(
            store.apply_replica(&1, "v5 again".into(), 5, |held: &String| version_of(held)),
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
            store.apply_replica(&1, "v9".into(), 9, |held: &String| version_of(held)),
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

    /// A store whose values name their tags after a colon: "value:red,blue".
    fn tagged_store(capacity: u64) -> Store<u64, String> {
        store(capacity).with_tags(Arc::new(|value: &String| {
            value
                .split_once(':')
                .map(|(_, tags)| tags.split(',').map(str::to_owned).collect())
                .unwrap_or_default()
        }))
    }

    fn carries(value: &str, tag: &str) -> bool {
        value
            .split_once(':')
            .is_some_and(|(_, tags)| tags.split(',').any(|t| t == tag))
    }

    #[tokio::test]
    async fn a_tag_invalidation_drops_exactly_the_entries_carrying_it() {
        let store = tagged_store(10);
        assert!(miss(&store, 1).await.fill(entry("one:red,blue")));
        assert!(miss(&store, 2).await.fill(entry("two:blue")));
        assert!(miss(&store, 3).await.fill(entry("three:green")));
        assert!(miss(&store, 4).await.fill(entry("four")));
        assert_eq!(store.invalidate_tag("blue"), 2);
        assert_eq!((store.get(&1), store.get(&2)), (None, None));
        assert_eq!(store.get(&3).as_deref(), Some("three:green"));
        assert_eq!(store.get(&4).as_deref(), Some("four"));
        assert_eq!(store.invalidate_tag("blue"), 0);
    }

    #[tokio::test]
    async fn a_tag_invalidation_during_a_load_refuses_only_a_value_carrying_the_tag() {
        let store = tagged_store(10);
        let red = miss(&store, 1).await;
        let green = miss(&store, 2).await;
        store.invalidate_tag("red");
        assert!(!red.fill(entry("one:blue,red")));
        assert!(green.fill(entry("two:green")));
        assert_eq!(store.get(&1), None);
        assert_eq!(store.get(&2).as_deref(), Some("two:green"));
        // A load that starts after the invalidation stores the tagged value.
        assert!(miss(&store, 1).await.fill(entry("one:red")));
    }

    #[tokio::test]
    async fn a_load_older_than_every_remembered_tag_invalidation_is_refused() {
        let store = tagged_store(10);
        let old = miss(&store, 1).await;
        for n in 0..=tags::REMEMBERED {
            store.invalidate_tag(&format!("other {n}"));
        }
        // Which tags the forgotten invalidations named is unknown: the fill cannot be trusted.
        assert!(!old.fill(entry("one:red")));
        assert!(miss(&store, 1).await.fill(entry("one:red")));
    }

    #[tokio::test]
    async fn a_replaced_value_is_indexed_under_its_new_tags() {
        let store = tagged_store(10);
        assert!(miss(&store, 1).await.fill(entry("v1:red")));
        assert_eq!(
            store.apply_replica(&1, entry("v2:blue"), 2, |held| version_of(held)),
            ReplicaOutcome::Replaced
        );
        store.invalidate_tag("blue");
        assert_eq!(store.get(&1), None);
    }

    #[tokio::test]
    async fn the_tag_index_sheds_pairs_whose_values_are_gone() {
        let store = tagged_store(64);
        for round in 0..100_u64 {
            for key in 0..64 {
                let value = format!("{round}:tag {round},every");
                if let Lookup::Miss(slot) = store.load_slot(&key).await {
                    assert!(slot.fill(value));
                }
            }
            store.clear();
            let pairs = store.tags.as_ref().unwrap().lock().pairs();
            assert_eq!(pairs, 0, "a clear empties the index");
        }
        for key in 0..10_000_u64 {
            store.remove(&key.saturating_sub(1));
            assert!(miss(&store, key).await.fill(format!("{key}:tag {key}")));
        }
        // Every removed key's pair is gone once a sweep ran: the index stays near the store's
        // size, not the number of fills.
        let pairs = store.tags.as_ref().unwrap().lock().pairs();
        assert!(pairs <= 2 * 1024 + 64, "{pairs} pairs for 1 held entry");
    }

    proptest::proptest! {
        /// Whatever the interleaving of loads, fills and tag invalidations: a fill whose load
        /// overlapped an invalidation of one of its tags is refused, one that overlapped none
        /// lands, and after an invalidation no held value carries the tag. (A fill that
        /// overlapped only other tags' invalidations may be refused: the index is a superset.)
        #[test]
        fn no_value_carrying_an_invalidated_tag_outlives_the_invalidation(
            ops in proptest::collection::vec((0..3_u8, 0..4_u64, proptest::collection::vec(0..3_u8, 0..3)), 1..80),
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            rt.block_on(async {
                let store = tagged_store(16);
                let tag = |t: u8| format!("t{t}");
                let mut pending = HashMap::new();
                for (op, key, tags) in ops {
                    match op {
                        0 => {
                            if let Some(Lookup::Miss(slot)) = store.try_load_slot(&key) {
                                pending.insert(key, (slot, Vec::<String>::new()));
                            }
                        }
                        1 => {
                            let Some((slot, invalidated)) = pending.remove(&key) else {
                                continue;
                            };
                            let tags: Vec<String> = tags.iter().map(|t| tag(*t)).collect();
                            let value = format!("{key}:{}", tags.join(","));
                            let stored = slot.fill(value);
                            if tags.iter().any(|t| invalidated.contains(t)) {
                                proptest::prop_assert!(!stored);
                            } else if invalidated.is_empty() {
                                proptest::prop_assert!(stored);
                            }
                        }
                        _ => {
                            let t = tag(tags.first().copied().unwrap_or(0));
                            store.invalidate_tag(&t);
                            for (_, invalidated) in pending.values_mut() {
                                invalidated.push(t.clone());
                            }
                            for held in 0..4 {
                                if let Some(value) = store.get(&held) {
                                    proptest::prop_assert!(!carries(&value, &t), "{value} outlived {t}");
                                }
                            }
                        }
                    }
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
            None,
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
