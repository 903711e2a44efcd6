//! Gap repair: the ring of a node's latest events, and where a reconnecting peer resumes.
//!
//! Pure state, no I/O. A link that breaks loses whatever was queued on it or in flight; the
//! events the origin published while the link was down never went anywhere. When the link comes
//! back, the receiver says how far it got ([`resume_point`]) and the origin replays the rest from
//! its [`ReplayRing`] before any newer event, so the stream the receiver sees has no hole. Only
//! what fell out of the ring is reported as a gap, and made up for by flushing.

use std::collections::VecDeque;

use bytes::Bytes;

/// A node's most recent encoded event frames, bounded by their total size.
#[derive(Debug)]
pub(crate) struct ReplayRing {
    events: VecDeque<(u64, Bytes)>,
    bytes: usize,
    capacity: usize,
}

impl ReplayRing {
    /// A ring keeping at most `capacity` bytes of frames; zero keeps none.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            events: VecDeque::new(),
            bytes: 0,
            capacity,
        }
    }

    /// Keeps event `seq` (one more than the last pushed), dropping the oldest ones over capacity.
    pub(crate) fn push(&mut self, seq: u64, frame: Bytes) {
        debug_assert!(self.events.back().is_none_or(|&(last, _)| last + 1 == seq));
        self.bytes += frame.len();
        self.events.push_back((seq, frame));
        while self.bytes > self.capacity {
            let Some((_, dropped)) = self.events.pop_front() else {
                break;
            };
            self.bytes -= dropped.len();
        }
    }

    /// The lowest sequence number the ring can replay, when the latest published is `latest`:
    /// `latest + 1` when it holds nothing.
    pub(crate) fn replay_from(&self, latest: u64) -> u64 {
        self.events.front().map_or(latest + 1, |&(seq, _)| seq)
    }

    /// The frames of events after `after` up to `upto`, oldest first. Events no longer held are
    /// skipped: the receiver sees the hole and reports it.
    pub(crate) fn range(&self, after: u64, upto: u64) -> Vec<Bytes> {
        let Some(&(oldest, _)) = self.events.front() else {
            return Vec::new();
        };
        let skip = usize::try_from((after + 1).saturating_sub(oldest)).unwrap_or(usize::MAX);
        self.events
            .iter()
            .skip(skip)
            .take_while(|&&(seq, _)| seq <= upto)
            .map(|(_, frame)| frame.clone())
            .collect()
    }
}

/// Where a reconnecting origin's stream should resume for this receiver: the sequence number
/// after which the origin replays.
///
/// `applied` is what the receiver applied of the origin's current incarnation (zero for a new
/// origin or a new incarnation), `latest` the origin's last event before the link, and
/// `replay_from` the oldest event its ring still holds. Events below `replay_from` that the
/// receiver lacks are lost; resuming after them lets the sequence tracker report exactly them.
pub(crate) fn resume_point(applied: u64, latest: u64, replay_from: u64) -> u64 {
    applied.max(replay_from.saturating_sub(1)).min(latest)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn frame(seq: u64) -> Bytes {
        Bytes::from(seq.to_be_bytes().to_vec())
    }

    fn seqs(frames: &[Bytes]) -> Vec<u64> {
        frames
            .iter()
            .map(|f| u64::from_be_bytes(f[..].try_into().unwrap()))
            .collect()
    }

    #[test]
    fn replays_the_requested_range() {
        let mut ring = ReplayRing::new(1024);
        for seq in 1..=10 {
            ring.push(seq, frame(seq));
        }
        assert_eq!(ring.replay_from(10), 1);
        assert_eq!(seqs(&ring.range(3, 6)), [4, 5, 6]);
        assert_eq!(seqs(&ring.range(8, 20)), [9, 10]);
        assert!(ring.range(10, 10).is_empty());
    }

    #[test]
    fn drops_the_oldest_over_capacity() {
        let mut ring = ReplayRing::new(8 * 4);
        for seq in 1..=10 {
            ring.push(seq, frame(seq));
        }
        assert_eq!(ring.replay_from(10), 7);
        assert_eq!(seqs(&ring.range(0, 10)), [7, 8, 9, 10]);
        assert_eq!(seqs(&ring.range(8, 10)), [9, 10]);
    }

    #[test]
    fn an_empty_ring_replays_nothing() {
        let mut ring = ReplayRing::new(0);
        ring.push(1, frame(1));
        assert_eq!(ring.replay_from(1), 2);
        assert!(ring.range(0, 1).is_empty());
    }

    #[test]
    fn resume_point_cases() {
        assert_eq!(resume_point(4, 10, 1), 4, "replay 5..=10");
        assert_eq!(resume_point(4, 10, 8), 7, "5..=7 are lost");
        assert_eq!(resume_point(12, 10, 1), 10, "ahead through an older link");
        assert_eq!(resume_point(0, 0, 1), 0, "nothing published");
        assert_eq!(resume_point(0, 10, 11), 10, "ring empty: all lost");
    }

    proptest! {
        /// Whatever the capacity and however far behind the receiver is, resuming at the resume
        /// point and replaying the ring gives exactly the events after it, in order, up to the
        /// latest: the receiver either gets an event or the tracker reports it missing.
        #[test]
        fn resume_and_replay_leave_no_silent_hole(
            published in 0_u64..200,
            capacity in 0_usize..800,
            applied in 0_u64..220,
        ) {
            let mut ring = ReplayRing::new(capacity);
            for seq in 1..=published {
                ring.push(seq, frame(seq));
            }
            let resume = resume_point(applied, published, ring.replay_from(published));
            let replayed = seqs(&ring.range(resume, published));
            let expected: Vec<u64> = (resume + 1..=published).collect();
            prop_assert_eq!(replayed, expected);
            prop_assert!(resume <= published);
            prop_assert!(resume >= applied.min(published));
        }
    }
}
