//! Sequence tracking: which events of which peer this node has applied, and what it missed.
//!
//! Pure state, no I/O. Each origin numbers its events 1, 2, 3, … per incarnation. The tracker
//! keeps, per origin, the newest incarnation seen and the highest sequence applied, and judges
//! every delivery. A link's hello says where the link starts (the last sequence sent before it
//! existed), which is how a node notices events it missed while it had no link.
//!
//! Gaps are reported, not waited for: a missed event may be gone for good (the origin crashed, or
//! it fell out of the origin's replay ring, see `replay`), so the caller makes up for it at once
//! (it flushes what no change log covers) and applies the later event anyway. Events a broken link
//! lost are not gaps: the link's successor replays them, starting where the tracker left off.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::ops::RangeInclusive;

/// What to do with one delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Delivery {
    /// The next event in sequence, or a link starting where the last one ended: apply it.
    Apply,
    /// Already applied (a replay, or a late frame on an old link): ignore it.
    Duplicate,
    /// Events `missed` never arrived: make up for them, then apply this one.
    Gap { missed: RangeInclusive<u64> },
    /// The origin restarted: whatever its previous incarnation sent last may be lost, and which
    /// keys it touched is unknown. Make up for that, then apply this one.
    Restarted,
    /// From an incarnation older than one already seen: that process is gone; ignore it.
    Retired,
}

#[derive(Clone, Copy, Debug)]
struct Track {
    incarnation: u64,
    applied: u64,
}

/// Per-origin sequence positions.
///
/// Call [`SequenceTracker::hello`] when a link from an origin opens, then
/// [`SequenceTracker::event`] for each event it carries, in arrival order.
#[derive(Debug)]
pub(crate) struct SequenceTracker<N> {
    origins: BTreeMap<N, Track>,
}

impl<N> Default for SequenceTracker<N> {
    fn default() -> Self {
        Self {
            origins: BTreeMap::new(),
        }
    }
}

impl<N: Ord + Clone> SequenceTracker<N> {
    /// A link from `origin` opened; it will carry events after `seq`.
    ///
    /// Events up to `seq` not yet applied were sent while this node had no link; they are
    /// reported as missed. A first contact with `seq > 0` counts as well: the node may have cached
    /// keys those events changed.
    pub(crate) fn hello(&mut self, origin: &N, incarnation: u64, seq: u64) -> Delivery {
        self.deliver(origin, incarnation, seq, true)
    }

    /// An event `seq` from `origin` arrived.
    pub(crate) fn event(&mut self, origin: &N, incarnation: u64, seq: u64) -> Delivery {
        self.deliver(origin, incarnation, seq, false)
    }

    /// Drops what is known of `origin` (it was forgotten): its next link counts as a first
    /// contact.
    pub(crate) fn forget(&mut self, origin: &N) {
        self.origins.remove(origin);
    }

    /// The incarnation of `origin` last met and the highest sequence applied from it.
    pub(crate) fn applied(&self, origin: &N) -> Option<(u64, u64)> {
        self.origins.get(origin).map(|t| (t.incarnation, t.applied))
    }

    fn deliver(&mut self, origin: &N, incarnation: u64, seq: u64, is_hello: bool) -> Delivery {
        // A hello names the last event already sent, an event names itself; either way the
        // events before `first_new` are the ones that should have arrived already.
        let first_new = if is_hello { seq.saturating_add(1) } else { seq };
        let track = match self.origins.entry(origin.clone()) {
            Entry::Vacant(vacant) => {
                vacant.insert(Track {
                    incarnation,
                    applied: seq,
                });
                return missed(1, first_new);
            }
            Entry::Occupied(occupied) => occupied.into_mut(),
        };
        if incarnation < track.incarnation {
            return Delivery::Retired;
        }
        if incarnation > track.incarnation {
            *track = Track {
                incarnation,
                applied: seq,
            };
            return Delivery::Restarted;
        }
        if seq <= track.applied {
            return if is_hello {
                Delivery::Apply
            } else {
                Delivery::Duplicate
            };
        }
        let expected = track.applied.saturating_add(1);
        track.applied = seq;
        missed(expected, first_new)
    }
}

/// `Gap` for the events from `first` up to, not including, `next`; `Apply` if there are none.
fn missed(first: u64, next: u64) -> Delivery {
    if first < next {
        Delivery::Gap {
            missed: first..=next - 1,
        }
    } else {
        Delivery::Apply
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn in_order_events_apply() {
        let mut t = SequenceTracker::default();
        assert_eq!(t.hello(&"a", 1, 0), Delivery::Apply);
        for seq in 1..=5 {
            assert_eq!(t.event(&"a", 1, seq), Delivery::Apply);
        }
        assert_eq!(t.applied(&"a"), Some((1, 5)));
    }

    #[test]
    fn duplicates_are_ignored() {
        let mut t = SequenceTracker::default();
        t.hello(&"a", 1, 0);
        t.event(&"a", 1, 1);
        t.event(&"a", 1, 2);
        assert_eq!(t.event(&"a", 1, 1), Delivery::Duplicate);
        assert_eq!(t.event(&"a", 1, 2), Delivery::Duplicate);
        assert_eq!(t.applied(&"a"), Some((1, 2)));
    }

    #[test]
    fn a_skipped_event_is_a_gap() {
        let mut t = SequenceTracker::default();
        t.hello(&"a", 1, 0);
        t.event(&"a", 1, 1);
        assert_eq!(t.event(&"a", 1, 4), Delivery::Gap { missed: 2..=3 });
        assert_eq!(t.event(&"a", 1, 5), Delivery::Apply);
    }

    #[test]
    fn a_reconnect_reports_what_was_sent_meanwhile() {
        let mut t = SequenceTracker::default();
        t.hello(&"a", 1, 0);
        t.event(&"a", 1, 1);
        assert_eq!(t.hello(&"a", 1, 1), Delivery::Apply, "nothing missed");
        assert_eq!(t.hello(&"a", 1, 7), Delivery::Gap { missed: 2..=7 });
        assert_eq!(t.event(&"a", 1, 8), Delivery::Apply);
    }

    #[test]
    fn first_contact_after_events_is_a_gap() {
        let mut t = SequenceTracker::default();
        assert_eq!(t.hello(&"a", 1, 3), Delivery::Gap { missed: 1..=3 });
        assert_eq!(t.event(&"a", 1, 4), Delivery::Apply);
        let mut t = SequenceTracker::default();
        assert_eq!(t.event(&"b", 1, 2), Delivery::Gap { missed: 1..=1 });
    }

    #[test]
    fn a_new_incarnation_restarts_the_sequence_and_retires_the_old() {
        let mut t = SequenceTracker::default();
        t.hello(&"a", 1, 0);
        t.event(&"a", 1, 1);
        t.event(&"a", 1, 2);
        assert_eq!(t.hello(&"a", 2, 0), Delivery::Restarted);
        assert_eq!(t.event(&"a", 2, 1), Delivery::Apply);
        assert_eq!(t.event(&"a", 1, 3), Delivery::Retired);
        assert_eq!(t.applied(&"a"), Some((2, 1)));
    }

    proptest! {
        /// However events are duplicated, reordered or dropped, every event is either applied
        /// exactly once or covered by a reported gap, and nothing is applied twice.
        #[test]
        fn every_event_is_applied_once_or_reported_missing(
            deliveries in proptest::collection::vec(1_u64..40, 0..120),
            hello_at in 0_u64..5,
        ) {
            let mut t = SequenceTracker::default();
            let mut applied = BTreeSet::new();
            let mut covered = BTreeSet::new();
            let first = t.hello(&"a", 1, hello_at);
            if let Delivery::Gap { missed } = first {
                covered.extend(missed);
            }
            for &seq in &deliveries {
                match t.event(&"a", 1, seq) {
                    Delivery::Duplicate | Delivery::Retired => continue,
                    Delivery::Apply => {}
                    Delivery::Gap { missed } => covered.extend(missed),
                    Delivery::Restarted => unreachable!("one incarnation"),
                }
                prop_assert!(applied.insert(seq), "{} applied twice", seq);
            }
            let (_, last) = t.applied(&"a").unwrap();
            for seq in 1..=last {
                prop_assert!(applied.contains(&seq) || covered.contains(&seq), "{seq} lost");
            }
        }
    }

    /// `forget` drops the origin's track: its next link is a first contact again, and the
    /// tracker does not grow with every name ever met.
    #[test]
    fn a_forgotten_origin_is_met_again_as_a_first_contact() {
        let mut t = SequenceTracker::default();
        t.hello(&"a", 1, 0);
        for seq in 1..=3 {
            t.event(&"a", 1, seq);
        }
        t.forget(&"a");
        assert_eq!(t.applied(&"a"), None);
        assert_eq!(t.hello(&"a", 1, 3), Delivery::Gap { missed: 1..=3 });
    }
}
