//! Gap repair: the ring of a node's latest events, and where a reconnecting peer resumes.
//!
//! Pure state, no I/O. A link that breaks loses whatever was queued on it or in flight; the
//! events the origin published while the link was down never went anywhere. When the link comes
//! back, the receiver says how far it got ([`resume_point`]) and the origin replays the rest from
//! its [`ReplayRing`] before any newer event, so the stream the receiver sees has no hole. Only
//! what fell out of the ring is reported as a gap, and made up for by flushing.

use std::collections::VecDeque;

use bytes::Bytes;

/// A node's most recent encoded event frames, bounded by what they take in memory.
///
/// The frames are kept back to back in one buffer, with their lengths in another, so that the
/// bound is the real cost: a frame of a few dozen bytes held as an allocation of its own, with its
/// bookkeeping, would cost several times its length. Of the ring's size, seven eighths hold frames
/// and one eighth their lengths (frames of 28 bytes or more fill the first share first); both
/// buffers grow by doubling up to their share, never past it.
#[derive(Debug)]
pub(crate) struct ReplayRing {
    /// The held frames, oldest first, back to back.
    data: VecDeque<u8>,
    /// Their lengths, oldest first.
    lens: VecDeque<u32>,
    /// The sequence number of the oldest held frame.
    first: u64,
    /// The most bytes of frames held.
    data_limit: usize,
    /// The most frames held.
    lens_limit: usize,
}

impl ReplayRing {
    /// A ring taking at most `capacity` bytes; zero keeps nothing.
    pub(crate) fn new(capacity: usize) -> Self {
        let index = capacity / 8;
        Self {
            data: VecDeque::new(),
            lens: VecDeque::new(),
            first: 1,
            data_limit: capacity - index,
            lens_limit: index / std::mem::size_of::<u32>(),
        }
    }

    /// Keeps event `seq` (one more than the last pushed), dropping the oldest ones to make room.
    /// A frame larger than the ring's share for frames empties it and is not kept.
    pub(crate) fn push(&mut self, seq: u64, frame: &[u8]) {
        debug_assert_eq!(seq, self.first + self.lens.len() as u64);
        while !self.lens.is_empty()
            && (self.data.len() + frame.len() > self.data_limit
                || self.lens.len() >= self.lens_limit)
        {
            self.pop();
        }
        let len = match u32::try_from(frame.len()) {
            Ok(len) if frame.len() <= self.data_limit && self.lens_limit > 0 => len,
            _ => {
                self.first = seq + 1;
                return;
            }
        };
        if self.lens.is_empty() {
            self.first = seq;
        }
        grow(&mut self.data, frame.len(), self.data_limit);
        grow(&mut self.lens, 1, self.lens_limit);
        self.data.extend(frame);
        self.lens.push_back(len);
    }

    fn pop(&mut self) {
        if let Some(len) = self.lens.pop_front() {
            self.data.drain(..len as usize);
            self.first += 1;
        }
    }

    /// The lowest sequence number the ring can replay, when the latest published is `latest`:
    /// `latest + 1` when it holds nothing.
    pub(crate) fn replay_from(&self, latest: u64) -> u64 {
        if self.lens.is_empty() {
            latest + 1
        } else {
            self.first
        }
    }

    /// The frames of events after `after` up to `upto`, oldest first. Events no longer held are
    /// skipped: the receiver sees the hole and reports it.
    pub(crate) fn range(&self, after: u64, upto: u64) -> Vec<Bytes> {
        let mut frames = Vec::new();
        let mut offset = 0;
        for (seq, &len) in (self.first..).zip(&self.lens) {
            if seq > upto {
                break;
            }
            let len = len as usize;
            if seq > after {
                frames.push(self.data.range(offset..offset + len).copied().collect());
            }
            offset += len;
        }
        frames
    }
}

/// Makes room for `more` items in `buffer`: doubling, as a `VecDeque` does, but never past
/// `limit` (callers make sure `len + more` fits it).
fn grow<T>(buffer: &mut VecDeque<T>, more: usize, limit: usize) {
    if buffer.capacity() - buffer.len() < more {
        let target = (buffer.len() + more).max(buffer.capacity() * 2).min(limit);
        buffer.reserve_exact(target - buffer.len());
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

    fn frame(seq: u64) -> [u8; 8] {
        seq.to_be_bytes()
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
            ring.push(seq, &frame(seq));
        }
        assert_eq!(ring.replay_from(10), 1);
        assert_eq!(seqs(&ring.range(3, 6)), [4, 5, 6]);
        assert_eq!(seqs(&ring.range(8, 20)), [9, 10]);
        assert!(ring.range(10, 10).is_empty());
    }

    #[test]
    fn drops_the_oldest_over_capacity() {
        // 128 bytes: 16 for lengths (4 frames), 112 for the frames themselves.
        let mut ring = ReplayRing::new(128);
        for seq in 1..=10 {
            ring.push(seq, &frame(seq));
        }
        assert_eq!(ring.replay_from(10), 7);
        assert_eq!(seqs(&ring.range(0, 10)), [7, 8, 9, 10]);
        assert_eq!(seqs(&ring.range(8, 10)), [9, 10]);
    }

    #[test]
    fn an_empty_ring_replays_nothing() {
        let mut ring = ReplayRing::new(0);
        ring.push(1, &frame(1));
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
                ring.push(seq, &frame(seq));
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

#[cfg(test)]
mod bounds {
    use super::*;

    /// Frames fill their share, lengths theirs; neither buffer grows past it.
    #[test]
    fn the_buffers_stay_within_the_ring_size() {
        let mut ring = ReplayRing::new(16 << 10);
        for seq in 1..=10_000 {
            ring.push(seq, &[7; 33]);
            assert!(ring.data.capacity() <= ring.data_limit);
            assert!(ring.lens.capacity() <= ring.lens_limit);
        }
        let held = ring.lens.len() as u64;
        assert_eq!(ring.replay_from(10_000), 10_001 - held);
        assert!(held > 400, "{held} frames of 33 bytes in 14 KiB");
        let big = vec![1; 16 << 10];
        ring.push(10_001, &big);
        assert_eq!(
            ring.replay_from(10_001),
            10_002,
            "too big to keep: nothing held"
        );
        ring.push(10_002, &[1; 10]);
        assert_eq!(ring.range(10_001, 10_002).len(), 1);
    }

    /// Frames that fill the frames' share exactly are all kept.
    #[test]
    fn frames_filling_the_share_exactly_are_all_kept() {
        // 128 bytes: 112 for frames, 16 for 4 lengths; four frames of 28 bytes fill both.
        let mut ring = ReplayRing::new(128);
        for seq in 1..=4 {
            ring.push(seq, &[seq as u8; 28]);
        }
        assert_eq!(ring.replay_from(4), 1);
        assert_eq!(ring.range(0, 4).len(), 4);
    }

    /// A ring whose lengths' share holds no length keeps no frame.
    #[test]
    fn a_ring_with_no_room_for_a_length_keeps_nothing() {
        // 16 bytes: 14 for frames, 2 for lengths (less than one u32).
        let mut ring = ReplayRing::new(16);
        ring.push(1, &[1; 8]);
        assert_eq!(ring.replay_from(1), 2);
        assert!(ring.range(0, 1).is_empty());
    }
}
#[cfg(test)]
mod growth {
    use super::*;

    /// The buffers grow by doubling as frames come: a ring that holds little takes little, and
    /// filling it reallocates a logarithmic number of times, not once per frame.
    #[test]
    fn the_buffers_grow_by_doubling() {
        let mut ring = ReplayRing::new(16 << 10);
        let mut reallocations = 0;
        let mut capacity = 0;
        for seq in 1..=1_000 {
            ring.push(seq, &[7; 33]);
            assert!(
                ring.data.capacity() <= 2 * ring.data.len(),
                "{} bytes reserved for {} held",
                ring.data.capacity(),
                ring.data.len()
            );
            if ring.data.capacity() != capacity {
                capacity = ring.data.capacity();
                reallocations += 1;
            }
        }
        assert!(reallocations <= 12, "{reallocations} reallocations");
    }
}
