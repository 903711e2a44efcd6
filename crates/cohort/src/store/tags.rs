//! Tags: a store-wide index from each tag to the keys whose values carry it, and the stale-fill
//! guard for tag invalidations.
//!
//! Only stores built with a tag function have one ([`Store::with_tags`](super::Store::with_tags)),
//! so other caches pay nothing: no bytes per entry and no work on a hit. The index is a superset:
//! a key stays in it after its value was removed, evicted or replaced by one without the tag,
//! since invalidating a key that no longer carries the tag only costs a miss. Hooking quick_cache's
//! `Lifecycle` would catch evictions only, not removals or replacements, so stale pairs are swept
//! instead, once the index has doubled since the last sweep: amortized O(1) per fill.
//!
//! A load in flight has no key in the index yet, and its value is unknown until it lands. So each
//! [`Slot`](super::Slot) takes a ticket, the tag epoch when it was taken (before its load reads the
//! source); every tag invalidation bumps the epoch and is remembered; a fill whose value carries a
//! tag invalidated after its ticket is refused. The check, the store and the indexing happen under
//! the index's lock, which every tag invalidation takes too, so an invalidation sees either the
//! filled key in the index or the fill sees the invalidation.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Mutex, MutexGuard};

/// Reads the tags a value carries.
pub(crate) type TagFn<V> = Arc<dyn Fn(&V) -> Vec<String> + Send + Sync>;

/// Tag invalidations remembered for loads in flight; a load older than all of them is refused
/// whatever its tags (it has run longer than this many tag invalidations, which is rare).
pub(super) const REMEMBERED: usize = 1024;

/// Pairs below which the index is never swept.
const MIN_SWEEP: usize = 1024;

/// One store's tag index; see the module docs.
pub(crate) struct Tags<K, V> {
    of: TagFn<V>,
    /// Tag invalidations so far; read without the lock when a slot is taken.
    epoch: AtomicU64,
    state: Mutex<Index<K>>,
}

pub(crate) struct Index<K> {
    by_tag: HashMap<String, HashSet<K>>,
    /// (tag, key) pairs in `by_tag`.
    pairs: usize,
    /// Sweep once `pairs` passes this.
    sweep_at: usize,
    /// The latest tag invalidations, with the epoch each one started.
    recent: VecDeque<(u64, String)>,
}

impl<K: Eq + Hash + Clone, V> Tags<K, V> {
    pub(crate) fn new(of: TagFn<V>) -> Self {
        Self {
            of,
            epoch: AtomicU64::new(0),
            state: Mutex::new(Index {
                by_tag: HashMap::new(),
                pairs: 0,
                sweep_at: MIN_SWEEP,
                recent: VecDeque::new(),
            }),
        }
    }

    /// The ticket of a slot taken now.
    pub(crate) fn ticket(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    pub(crate) fn tags_of(&self, value: &V) -> Vec<String> {
        (self.of)(value)
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Index<K>> {
        self.state.lock()
    }

    /// Starts invalidating `tag`, under `index`'s lock: later fills of loads that started before
    /// are refused if their value carries it. Returns the keys to remove.
    pub(crate) fn invalidate(&self, index: &mut Index<K>, tag: &str) -> Vec<K> {
        let epoch = self.epoch.fetch_add(1, Ordering::AcqRel) + 1;
        if index.recent.len() == REMEMBERED {
            index.recent.pop_front();
        }
        index.recent.push_back((epoch, tag.to_owned()));
        let keys: Vec<K> = index
            .by_tag
            .remove(tag)
            .map(|keys| keys.into_iter().collect())
            .unwrap_or_default();
        index.pairs -= keys.len();
        keys
    }
}

impl<K: Eq + Hash + Clone> Index<K> {
    /// Whether a value carrying `tags`, loaded under `ticket`, may still be stored.
    pub(crate) fn admits(&self, ticket: u64, epoch: u64, tags: &[String]) -> bool {
        if epoch == ticket {
            return true;
        }
        match self.recent.front() {
            // Invalidations after the ticket were forgotten: which tags they named is unknown.
            Some(&(oldest, _)) if oldest > ticket + 1 => false,
            _ => !self
                .recent
                .iter()
                .any(|(at, tag)| *at > ticket && tags.contains(tag)),
        }
    }

    /// Records that `key`'s stored value carries `tags`.
    pub(crate) fn insert(&mut self, key: &K, tags: Vec<String>) {
        for tag in tags {
            if self.by_tag.entry(tag).or_default().insert(key.clone()) {
                self.pairs += 1;
            }
        }
    }

    /// Forgets every pair.
    pub(crate) fn clear(&mut self) {
        self.by_tag.clear();
        self.pairs = 0;
    }

    /// Whether enough pairs were added since the last sweep to make one worth its cost.
    pub(crate) fn wants_sweep(&self) -> bool {
        self.pairs > self.sweep_at
    }

    /// Keeps only the pairs whose key's stored value (as `tags_of_stored` reads it) still
    /// carries the tag.
    pub(crate) fn sweep(&mut self, tags_of_stored: impl Fn(&K) -> Option<Vec<String>>) {
        let mut current: HashMap<K, Option<Vec<String>>> = HashMap::new();
        self.by_tag.retain(|tag, keys| {
            keys.retain(|key| {
                current
                    .entry(key.clone())
                    .or_insert_with(|| tags_of_stored(key))
                    .as_ref()
                    .is_some_and(|tags| tags.contains(tag))
            });
            !keys.is_empty()
        });
        self.pairs = self.by_tag.values().map(HashSet::len).sum();
        self.sweep_at = (self.pairs * 2).max(MIN_SWEEP);
    }

    #[cfg(test)]
    pub(crate) fn pairs(&self) -> usize {
        self.pairs
    }
}

impl<K, V> Tags<K, V> {
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }
}
