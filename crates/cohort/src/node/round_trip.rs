//! Ping round trips per member, at the resolution of the instants the shell reads.
//!
//! The state machine runs on the coarse clock (a few milliseconds a step), too coarse for a round
//! trip on a LAN. So the state only names its pings ([`Output::Pinged`](super::state::Output::Pinged))
//! and the shell times them here, with instants it reads as it queues a ping and as a pong
//! arrives. Pure: times are passed in. The latest round trip is what
//! [`Member::round_trip`](crate::Member::round_trip) shows; each one also goes to the metrics
//! facade, with the `metrics` feature.
//!
//! A pong is queued behind its sender's events on the same link, and the ping behind this node's:
//! a round trip is how long this node's events queued before the ping took to reach the member,
//! plus the member's answer.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use crate::id::NodeId;

/// Pings remembered per member, awaiting their pong; older ones are forgotten (their pongs, if
/// they come, are not timed). As many as the state itself remembers.
const OUTSTANDING: usize = 16;

#[derive(Debug, Default)]
struct Timing {
    /// (nonce, sent at) of pings not yet answered, oldest first.
    sent: VecDeque<(u64, Instant)>,
    /// The latest round trip measured.
    last: Option<Duration>,
}

/// The latest round trip to each member.
///
/// Call [`pinged`](Self::pinged) when a ping is queued, [`ponged`](Self::ponged) when its pong
/// arrives, [`forget`](Self::forget) when the member leaves or is forgotten; read
/// [`last`](Self::last).
#[derive(Debug, Default)]
pub(crate) struct RoundTrips {
    members: BTreeMap<NodeId, Timing>,
}

impl RoundTrips {
    /// Ping `nonce` to `member` was queued at `at`.
    pub(crate) fn pinged(&mut self, member: NodeId, nonce: u64, at: Instant) {
        let timing = self.members.entry(member).or_default();
        if timing.sent.len() == OUTSTANDING {
            timing.sent.pop_front();
        }
        timing.sent.push_back((nonce, at));
    }

    /// A pong from `member` answering `nonce` arrived at `at`: the round trip, if that ping was
    /// sent to `member` and not answered yet. Older pings go unanswered for good: pongs come
    /// back in the order of their pings, on one link.
    pub(crate) fn ponged(&mut self, member: &NodeId, nonce: u64, at: Instant) -> Option<Duration> {
        let timing = self.members.get_mut(member)?;
        let index = timing.sent.iter().position(|&(n, _)| n == nonce)?;
        let (_, sent) = timing.sent[index];
        timing.sent.drain(..=index);
        let took = at.saturating_duration_since(sent);
        timing.last = Some(took);
        Some(took)
    }

    /// `member` left or was forgotten.
    pub(crate) fn forget(&mut self, member: &NodeId) {
        self.members.remove(member);
    }

    /// The latest round trip to `member`; `None` before its first pong.
    pub(crate) fn last(&self, member: &NodeId) -> Option<Duration> {
        self.members.get(member).and_then(|timing| timing.last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(origin: Instant, us: u64) -> Instant {
        origin + Duration::from_micros(us)
    }

    #[test]
    fn a_pong_times_its_own_ping() {
        let (t, b) = (Instant::now(), NodeId::from("b"));
        let mut trips = RoundTrips::default();
        assert_eq!(trips.last(&b), None);
        let c = NodeId::from("c");
        trips.pinged(b.clone(), 1, at(t, 0));
        trips.pinged(b.clone(), 2, at(t, 1_000));
        trips.pinged(c.clone(), 3, at(t, 1_000));
        assert_eq!(
            trips.ponged(&c, 2, at(t, 1_100)),
            None,
            "c echoing b's nonce"
        );
        assert_eq!(
            trips.ponged(&b, 2, at(t, 1_250)),
            Some(Duration::from_micros(250))
        );
        assert_eq!(trips.last(&b), Some(Duration::from_micros(250)));
        assert_eq!(trips.ponged(&b, 2, at(t, 1_300)), None, "answered already");
        assert_eq!(
            trips.ponged(&b, 1, at(t, 5_000)),
            None,
            "a ping older than one answered is not timed"
        );
        assert_eq!(trips.ponged(&b, 99, at(t, 5_000)), None);
        assert_eq!(trips.last(&b), Some(Duration::from_micros(250)));
        assert_eq!(trips.last(&c), None);
    }

    #[test]
    fn what_is_kept_is_bounded_and_forgotten_with_the_member() {
        let (t, b) = (Instant::now(), NodeId::from("b"));
        let mut trips = RoundTrips::default();
        for nonce in 0..100 {
            trips.pinged(b.clone(), nonce, at(t, nonce));
        }
        assert_eq!(trips.members[&b].sent.len(), OUTSTANDING);
        trips.ponged(&b, 0, at(t, 500));
        assert_eq!(trips.last(&b), None, "a ping dropped from the window");
        trips.ponged(&b, 99, at(t, 599));
        assert_eq!(trips.last(&b), Some(Duration::from_micros(500)));
        trips.forget(&b);
        assert!(trips.members.is_empty());
    }
}
