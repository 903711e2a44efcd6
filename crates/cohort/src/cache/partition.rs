//! A partitioned cache's own parts: the loader its node runs as a key's owner, the hot copies
//! of keys owned elsewhere, and what decides whether an owner's answer may be kept.
//!
//! The cross-node stale-fill rule: an answer is the owner's value when the owner read it, and
//! the owner may lag up to the bound behind a change this node already applied. So an answer is
//! kept as a hot copy only if this node applied no change to the key since it asked (the hot
//! store's slot is voided) nor within twice the bound before ([`RecentChanges`]). The answer is
//! still returned to its caller: it is within the bound, as the owner serves only under its
//! lease.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use crate::clock::{Clock, Millis, millis};
use crate::store::Store;

/// Default for [`CacheBuilder::owner_timeout`](crate::CacheBuilder::owner_timeout).
pub const DEFAULT_OWNER_TIMEOUT: Duration = Duration::from_millis(100);

/// The loader a partitioned cache runs for peers asking it, as a key's owner.
pub(crate) type LoadFn<K, V> =
    Arc<dyn Fn(K) -> Pin<Box<dyn Future<Output = Result<V, String>> + Send>> + Send + Sync>;

/// What a partitioned cache keeps besides its store (the keys it owns).
pub(crate) struct Partition<K, V> {
    pub(crate) load: LoadFn<K, V>,
    /// Copies of hot keys owned elsewhere, bounded in bytes; `None` when the application asked
    /// for none.
    pub(crate) hot: Option<Store<K, V>>,
    pub(crate) recent: RecentChanges,
    /// Admission to the hot copies: a key's second request within a window.
    admission: Mutex<Doorkeeper>,
    pub(crate) owner_timeout: Duration,
}

impl<K, V> Partition<K, V> {
    pub(crate) fn new(
        load: LoadFn<K, V>,
        hot: Option<Store<K, V>>,
        bound: Duration,
        owner_timeout: Duration,
    ) -> Self {
        Self {
            load,
            hot,
            // Twice the bound: an owner answering under its lease has every change older than
            // one bound; the second covers the coarse clock and the asking itself.
            recent: RecentChanges::new(bound.saturating_mul(2)),
            admission: Mutex::new(Doorkeeper::default()),
            owner_timeout,
        }
    }

    /// Whether an answer for the key hashed as `hash` may become a hot copy: the key was asked
    /// for before, recently (one-off reads do not churn the hot copies).
    pub(crate) fn admit(&self, hash: u64) -> bool {
        self.admission.lock().admit(hash)
    }
}

/// Bits per generation of a [`Sketch`]: 8 KiB.
const SKETCH_BITS: usize = 1 << 16;
const GENERATIONS: usize = 3;

/// An approximate set of 64-bit hashes, in generations: a hash inserted is found until the
/// second rotation after its generation's; others may be found too (false positives), never the
/// reverse.
#[derive(Debug)]
pub(crate) struct Sketch {
    generations: [Box<[u64]>; GENERATIONS],
    current: usize,
}

impl Default for Sketch {
    fn default() -> Self {
        Self {
            generations: std::array::from_fn(|_| vec![0; SKETCH_BITS / 64].into_boxed_slice()),
            current: 0,
        }
    }
}

impl Sketch {
    /// The two bits of a hash: its low and its high half.
    fn bits(hash: u64) -> [usize; 2] {
        let low = (hash as u32) as usize;
        let high = (hash >> 32) as usize;
        [low % SKETCH_BITS, high % SKETCH_BITS]
    }

    pub(crate) fn insert(&mut self, hash: u64) {
        let generation = &mut self.generations[self.current];
        for bit in Self::bits(hash) {
            generation[bit / 64] |= 1 << (bit % 64);
        }
    }

    pub(crate) fn contains(&self, hash: u64) -> bool {
        let bits = Self::bits(hash);
        self.generations.iter().any(|generation| {
            bits.iter()
                .all(|&bit| generation[bit / 64] & (1 << (bit % 64)) != 0)
        })
    }

    /// Makes the oldest generation, emptied, the current one.
    pub(crate) fn rotate(&mut self) {
        self.current = (self.current + 1) % GENERATIONS;
        self.generations[self.current].fill(0);
    }

    /// Makes every hash found, until two rotations from now.
    pub(crate) fn saturate(&mut self) {
        self.generations[self.current].fill(u64::MAX);
    }
}

/// The keys (by hash) this node saw change within at least a given window, on the coarse clock.
pub(crate) struct RecentChanges {
    sketch: Mutex<(Sketch, Millis)>,
    /// A generation's span: half the window, so that two full ones cover it.
    span: Millis,
}

impl RecentChanges {
    pub(crate) fn new(window: Duration) -> Self {
        Self {
            sketch: Mutex::new((Sketch::default(), 0)),
            span: (millis(window) / 2).max(1),
        }
    }

    /// The sketch, its generations rotated up to `now`.
    fn at(&self, clock: &Clock) -> parking_lot::MutexGuard<'_, (Sketch, Millis)> {
        let mut held = self.sketch.lock();
        let epoch = clock.now() / self.span;
        let behind = epoch.saturating_sub(held.1).min(GENERATIONS as u64);
        for _ in 0..behind {
            held.0.rotate();
        }
        held.1 = held.1.max(epoch);
        held
    }

    /// The key hashed as `hash` changed now.
    pub(crate) fn record(&self, hash: u64, clock: &Clock) {
        self.at(clock).0.insert(hash);
    }

    /// Any key may have changed now (the node missed events).
    pub(crate) fn record_all(&self, clock: &Clock) {
        self.at(clock).0.saturate();
    }

    /// Whether the key hashed as `hash` may have changed within the window.
    pub(crate) fn contains(&self, hash: u64, clock: &Clock) -> bool {
        self.at(clock).0.contains(hash)
    }
}

/// Admits a key on its second sighting within a window of recent sightings (TinyLFU's
/// doorkeeper).
#[derive(Debug, Default)]
struct Doorkeeper {
    seen: Sketch,
    since_rotation: usize,
}

impl Doorkeeper {
    /// Sightings per generation: few enough that false positives stay rare.
    const GENERATION: usize = SKETCH_BITS / 8;

    fn admit(&mut self, hash: u64) -> bool {
        if self.seen.contains(hash) {
            return true;
        }
        self.seen.insert(hash);
        self.since_rotation += 1;
        if self.since_rotation >= Self::GENERATION {
            self.seen.rotate();
            self.since_rotation = 0;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn a_change_is_remembered_for_the_whole_window_and_then_forgotten() {
        let clock = Clock::manual(1_000_000);
        let recent = RecentChanges::new(Duration::from_secs(2));
        recent.record(42, &clock);
        for _ in 0..20 {
            assert!(recent.contains(42, &clock));
            clock.advance(Duration::from_millis(100));
        }
        clock.advance(Duration::from_secs(1));
        assert!(!recent.contains(42, &clock));
    }

    #[test]
    fn a_missed_event_makes_every_key_recent() {
        let clock = Clock::manual(0);
        let recent = RecentChanges::new(Duration::from_secs(2));
        recent.record_all(&clock);
        clock.advance(Duration::from_millis(1_999));
        assert!(recent.contains(7, &clock) && recent.contains(u64::MAX, &clock));
    }

    #[test]
    fn a_key_is_admitted_on_its_second_request() {
        let mut door = Doorkeeper::default();
        assert!(!door.admit(9));
        assert!(door.admit(9));
    }

    proptest! {
        /// No false negatives: every hash inserted is found until two rotations have passed.
        #[test]
        fn an_inserted_hash_is_found_until_two_rotations_later(
            hashes in proptest::collection::vec(any::<u64>(), 1..2_000),
        ) {
            let mut sketch = Sketch::default();
            for &hash in &hashes {
                sketch.insert(hash);
            }
            sketch.rotate();
            sketch.rotate();
            for &hash in &hashes {
                prop_assert!(sketch.contains(hash));
            }
            sketch.rotate();
            let found = hashes.iter().filter(|&&h| sketch.contains(h)).count();
            prop_assert_eq!(found, 0);
        }
    }
}
