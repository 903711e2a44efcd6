//! Peer confirmations: whether this node has applied every event of every live member, recently.
//!
//! Pure state, no I/O; time comes in as coarse-clock milliseconds. This node pings each member it
//! links to; the member answers with a pong carrying its incarnation and the sequence number of
//! its latest event, queued behind its events on the same link. If this node has applied that
//! sequence when the pong arrives, it has applied everything the member originated before the
//! ping was sent: the member is confirmed as of the ping's send time. (If the events went missing,
//! the node saw a gap and flushed, which is as good.)
//!
//! Caches with no change log serve only while every live member's confirmation is younger than
//! the bound, and `update` writes only then (fencing). A member stops counting as live once it has
//! been silent (no pong, no ping) for [`Confirmations::new`]'s `dead_after` *and* SWIM no longer
//! holds it up (see `membership`): a member this node cannot hear but others still reach is
//! waited for, not written off. It counts again at its next contact or when SWIM sees it again,
//! unconfirmed until its next pong.
//!
//! Retiring silent members is only sound on the majority side of a partition: a node cut off
//! from everyone would otherwise retire them all and serve alone while they write. So a node is
//! confirmed only while it and its live members are a strict majority of every member it has
//! known (itself included). A member that never comes back keeps counting: with three nodes one
//! may crash for good, with two neither may.
//!
//! Retiring is itself a decision only the majority side may take, and hearing a majority is not
//! proof enough: two nodes that lost each other while both still reach a third (a link between
//! them cut, or not yet remade after a partition healed) would each retire the other, then each
//! serve with the third as its majority while the other writes unseen. So a member is retired
//! only on testimony: every pong lists the members its sender heard from within twice the bound,
//! and a node retires a silent member only while it and the members that confirmed it within the
//! bound *and* did not list that member are a strict majority. A third node that hears both of
//! two estranged nodes testifies against neither, and both wait for the link; two nodes that each
//! retire the other would need testimony from a common member that heard neither, within the
//! bound of confirmations it gave both, which cannot be. A retirement holds only while that
//! testimony does: once a member that confirmed this node within the bound hears a retired member
//! again and the silent testimony is no longer a majority, the retired member is waited for again
//! (a partition that healed while this node was cut off from the rest must not leave it serving
//! without a member the others hear).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::clock::Millis;

/// Pings awaiting a pong, per member; older ones are forgotten.
const OUTSTANDING: usize = 16;

#[derive(Debug)]
struct Member<N> {
    /// (nonce, sent at) of pings not yet answered, oldest first.
    outstanding: VecDeque<(u64, Millis)>,
    /// Send time of the newest confirmed ping.
    confirmed: Option<Millis>,
    last_contact: Millis,
    live: bool,
    /// SWIM holds it up (reached directly or through other members).
    swim_up: bool,
    /// The members it had heard from lately, by its newest confirming pong; `None` if that pong
    /// testified nothing.
    hears: Option<Vec<N>>,
}

impl<N> Member<N> {
    fn revive(&mut self) {
        if !self.live {
            self.live = true;
            self.confirmed = None;
        }
    }
}

/// What [`Confirmations::pong`] concluded.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum PongVerdict {
    /// The member is confirmed as of the ping's send time.
    Confirmed,
    /// This node has not applied the member's events up to the pong's sequence (they are still in
    /// flight or from an incarnation it has not met yet).
    Behind,
    /// Not an answer to a ping this node is waiting for.
    Unknown,
}

/// Per-member confirmations.
///
/// Call [`contact`](Self::contact) on any sign of life from a member (a link's hello, a ping),
/// [`ping`](Self::ping) for each ping sent, [`pong`](Self::pong) for each pong received,
/// [`expire`](Self::expire) periodically; read [`confirmed_since`](Self::confirmed_since).
#[derive(Debug)]
pub(crate) struct Confirmations<N> {
    members: BTreeMap<N, Member<N>>,
    /// Peers this node knows to exist, contacted or not (its seeds, addresses it was told of).
    known_peers: usize,
    next_nonce: u64,
    /// How recent a confirmation must be for the member to count towards a majority that may
    /// retire others: the bound.
    bound: Millis,
    dead_after: Millis,
}

impl<N: Ord + Clone> Confirmations<N> {
    /// Confirmations for a node whose bound is `bound`: members silent for twice the bound (and
    /// not held up by SWIM) may be retired.
    pub(crate) fn new(bound: Millis) -> Self {
        Self {
            members: BTreeMap::new(),
            known_peers: 0,
            next_nonce: 0,
            bound,
            dead_after: bound.saturating_mul(2),
        }
    }

    /// The member table counts `peers` other nodes (members and unresolved seeds), whether this
    /// node has reached them yet or not: a node given seeds is never a cluster of one, even
    /// before (or without) contact.
    pub(crate) fn set_known_peers(&mut self, peers: usize) {
        self.known_peers = peers;
    }

    /// `member` showed signs of life. A member not live so far becomes live, unconfirmed.
    pub(crate) fn contact(&mut self, member: &N, now: Millis) {
        let entry = self.entry(member, now);
        entry.last_contact = entry.last_contact.max(now);
        entry.revive();
    }

    /// SWIM holds exactly the members `up` up. Those become live (unconfirmed if they were not);
    /// the others may be retired once silent.
    pub(crate) fn swim_up(&mut self, up: &BTreeSet<N>, now: Millis) {
        for member in up {
            self.entry(member, now).revive();
        }
        for (name, m) in &mut self.members {
            m.swim_up = up.contains(name);
        }
    }

    fn entry(&mut self, member: &N, now: Millis) -> &mut Member<N> {
        self.members.entry(member.clone()).or_insert(Member {
            outstanding: VecDeque::new(),
            confirmed: None,
            last_contact: now,
            live: false,
            swim_up: false,
            hears: None,
        })
    }

    /// `member` left the cluster, or was forgotten: it no longer counts, live or known.
    pub(crate) fn leave(&mut self, member: &N) {
        self.members.remove(member);
    }

    /// A ping to `member` is sent now; returns its nonce.
    pub(crate) fn ping(&mut self, member: &N, now: Millis) -> u64 {
        self.next_nonce += 1;
        let nonce = self.next_nonce;
        if let Some(m) = self.members.get_mut(member) {
            if m.outstanding.len() == OUTSTANDING {
                m.outstanding.pop_front();
            }
            m.outstanding.push_back((nonce, now));
        }
        nonce
    }

    /// A pong from `member` answering `nonce` says its latest event is `peer_seq` and that it
    /// heard lately from the members `heard`; this node has applied up to `applied` of it.
    pub(crate) fn pong(
        &mut self,
        member: &N,
        nonce: u64,
        peer_seq: u64,
        applied: Option<u64>,
        heard: Option<Vec<N>>,
        now: Millis,
    ) -> PongVerdict {
        let Some(m) = self.members.get_mut(member) else {
            return PongVerdict::Unknown;
        };
        let Some(index) = m.outstanding.iter().position(|&(n, _)| n == nonce) else {
            return PongVerdict::Unknown;
        };
        let (_, sent) = m.outstanding[index];
        m.last_contact = m.last_contact.max(now);
        if applied.is_none_or(|applied| applied < peer_seq) {
            return PongVerdict::Behind;
        }
        // Older pings are answered by this one too.
        m.outstanding.drain(..=index);
        m.live = true;
        if m.confirmed.is_none_or(|c| c <= sent) {
            m.confirmed = Some(sent);
            m.hears = heard;
        }
        self.revive_heard(now);
        PongVerdict::Confirmed
    }

    /// Members silent for longer than `dead_after` that SWIM does not hold up stop counting as
    /// live, each only on a majority's [testimony](Self::testified_silent); returns them.
    pub(crate) fn expire(&mut self, now: Millis) -> Vec<N> {
        self.revive_heard(now);
        let dead: Vec<N> = self
            .members
            .iter()
            .filter(|(_, m)| {
                m.live && !m.swim_up && now.saturating_sub(m.last_contact) > self.dead_after
            })
            .map(|(name, _)| name.clone())
            .filter(|name| self.testified_silent(name, now))
            .collect();
        for name in &dead {
            if let Some(m) = self.members.get_mut(name) {
                m.live = false;
                m.confirmed = None;
                m.outstanding.clear();
                m.hears = None;
            }
        }
        dead
    }

    /// Retired members that a member which confirmed this node within the bound hears again,
    /// and that are no longer [testified silent](Self::testified_silent), count again
    /// (unconfirmed).
    fn revive_heard(&mut self, now: Millis) {
        let heard_again: Vec<N> = self
            .members
            .iter()
            .filter(|(_, m)| !m.live)
            .map(|(name, _)| name)
            .filter(|name| {
                self.fresh(now).any(|(witness, m)| {
                    witness != *name && m.hears.as_ref().is_some_and(|h| h.contains(name))
                }) && !self.testified_silent(name, now)
            })
            .cloned()
            .collect();
        for name in heard_again {
            if let Some(m) = self.members.get_mut(&name) {
                m.revive();
            }
        }
    }

    /// Whether this node and the members that confirmed it within the bound and, in that
    /// confirmation, did not list `silent` among those they heard, are a strict majority of every
    /// member it counts.
    pub(crate) fn testified_silent(&self, silent: &N, now: Millis) -> bool {
        let witnesses = self
            .fresh(now)
            .filter(|(name, m)| {
                *name != silent && m.hears.as_ref().is_some_and(|h| !h.contains(silent))
            })
            .count();
        (witnesses + 1) * 2 > self.counted()
    }

    /// Live members that confirmed within the bound.
    fn fresh(&self, now: Millis) -> impl Iterator<Item = (&N, &Member<N>)> {
        self.members.iter().filter(move |(_, m)| {
            m.live
                && m.confirmed
                    .is_some_and(|at| now.saturating_sub(at) <= self.bound)
        })
    }

    /// Every member this node counts, itself included.
    fn counted(&self) -> usize {
        self.members.len().max(self.known_peers) + 1
    }

    /// Whether this node and its live members are a strict majority of every member it counts
    /// (itself included).
    pub(crate) fn has_majority(&self) -> bool {
        (self.live().count() + 1) * 2 > self.counted()
    }

    /// Whether this node and the members it confirmed within the bound are a strict majority of
    /// every member it counts: the proof of being on the majority side that retiring and
    /// forgetting members need.
    pub(crate) fn has_fresh_majority(&self, now: Millis) -> bool {
        (self.fresh(now).count() + 1) * 2 > self.counted()
    }

    /// Since when every live member is confirmed: the oldest of their confirmations. `None` while
    /// some live member is unconfirmed or the live members and this node are no majority of all
    /// known; `Some(Millis::MAX)` for a node that has never known another (nothing to confirm).
    pub(crate) fn confirmed_since(&self) -> Option<Millis> {
        if !self.has_majority() {
            return None;
        }
        self.members
            .values()
            .filter(|m| m.live)
            .try_fold(Millis::MAX, |oldest, m| m.confirmed.map(|c| oldest.min(c)))
    }

    /// When the newest confirmed ping to `member` was sent: this node had applied every event it
    /// originated before then. `None` while unconfirmed (since it last became live).
    pub(crate) fn confirmed(&self, member: &N) -> Option<Millis> {
        self.members.get(member).and_then(|m| m.confirmed)
    }

    /// The members that count now.
    pub(crate) fn live(&self) -> impl Iterator<Item = &N> {
        self.members.iter().filter(|(_, m)| m.live).map(|(n, _)| n)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const BOUND: Millis = 500;

    #[test]
    fn a_lone_node_is_always_confirmed() {
        let c: Confirmations<&str> = Confirmations::new(BOUND);
        assert_eq!(c.confirmed_since(), Some(Millis::MAX));
    }

    #[test]
    fn a_new_member_is_unconfirmed_until_its_pong() {
        let mut c = Confirmations::new(BOUND);
        c.contact(&"b", 100);
        assert_eq!(c.confirmed_since(), None);
        let nonce = c.ping(&"b", 110);
        assert_eq!(
            c.pong(&"b", nonce, 5, Some(5), Some(vec!["b", "c"]), 120),
            PongVerdict::Confirmed
        );
        assert_eq!(c.confirmed_since(), Some(110), "as of the ping's send time");
    }

    #[test]
    fn a_pong_ahead_of_the_applied_events_does_not_confirm() {
        let mut c = Confirmations::new(BOUND);
        c.contact(&"b", 0);
        let nonce = c.ping(&"b", 10);
        assert_eq!(
            c.pong(&"b", nonce, 7, Some(6), Some(vec!["b", "c"]), 20),
            PongVerdict::Behind
        );
        assert_eq!(
            c.pong(&"b", nonce, 7, None, Some(vec!["b", "c"]), 20),
            PongVerdict::Behind
        );
        assert_eq!(c.confirmed_since(), None);
        assert_eq!(
            c.pong(&"b", nonce, 7, Some(7), Some(vec!["b", "c"]), 25),
            PongVerdict::Confirmed
        );
    }

    #[test]
    fn unknown_and_repeated_pongs_change_nothing() {
        let mut c = Confirmations::new(BOUND);
        c.contact(&"b", 0);
        assert_eq!(
            c.pong(&"b", 99, 0, Some(0), Some(vec!["b", "c"]), 5),
            PongVerdict::Unknown
        );
        assert_eq!(
            c.pong(&"x", 1, 0, Some(0), Some(vec!["b", "c"]), 5),
            PongVerdict::Unknown
        );
        let first = c.ping(&"b", 10);
        let second = c.ping(&"b", 20);
        assert_eq!(
            c.pong(&"b", second, 0, Some(0), Some(vec!["b", "c"]), 25),
            PongVerdict::Confirmed
        );
        assert_eq!(
            c.pong(&"b", first, 0, Some(0), Some(vec!["b", "c"]), 26),
            PongVerdict::Unknown,
            "answered by the newer one"
        );
        assert_eq!(c.confirmed_since(), Some(20));
    }

    #[test]
    fn the_oldest_confirmation_of_all_live_members_counts() {
        let mut c = Confirmations::new(BOUND);
        for member in ["b", "c"] {
            c.contact(&member, 0);
        }
        let b = c.ping(&"b", 100);
        let cc = c.ping(&"c", 200);
        c.pong(&"b", b, 0, Some(0), Some(vec!["b", "c"]), 210);
        assert_eq!(c.confirmed_since(), None, "c still unconfirmed");
        c.pong(&"c", cc, 0, Some(0), Some(vec!["b", "c"]), 210);
        assert_eq!(c.confirmed_since(), Some(100));
    }

    #[test]
    fn a_silent_member_stops_counting_and_comes_back_unconfirmed() {
        let mut c = Confirmations::new(BOUND);
        for member in ["b", "c"] {
            c.contact(&member, 0);
            let nonce = c.ping(&member, 0);
            c.pong(&member, nonce, 0, Some(0), Some(vec!["b", "c"]), 10);
        }
        let nonce = c.ping(&"c", 900);
        c.pong(&"c", nonce, 0, Some(0), Some(vec![]), 910);
        assert!(c.expire(1_010).is_empty(), "silent for exactly dead_after");
        assert_eq!(c.expire(1_011), vec!["b"]);
        assert_eq!(
            c.confirmed_since(),
            Some(900),
            "c and this node are two of three"
        );
        assert_eq!(c.live().count(), 1);
        c.contact(&"b", 2_000);
        assert_eq!(c.confirmed_since(), None, "b is back, unconfirmed");
    }

    #[test]
    fn a_silent_member_swim_holds_up_is_waited_for_not_retired() {
        let mut c = Confirmations::new(BOUND);
        for member in ["b", "c"] {
            c.contact(&member, 0);
        }
        c.swim_up(&BTreeSet::from(["b", "c"]), 0);
        assert!(
            c.expire(5_000).is_empty(),
            "b and c are reached through others"
        );
        assert_eq!(c.confirmed_since(), None, "and still awaited");
        c.swim_up(&BTreeSet::from(["c"]), 5_000);
        let nonce = c.ping(&"c", 4_900);
        c.pong(&"c", nonce, 0, Some(0), Some(vec![]), 4_910);
        assert_eq!(c.expire(5_001), vec!["b"], "down by SWIM and silent");
        c.swim_up(&BTreeSet::from(["b", "c"]), 6_000);
        assert_eq!(c.live().count(), 2, "b is back through SWIM, unconfirmed");
        c.swim_up(&BTreeSet::from(["b", "c", "d"]), 6_000);
        assert_eq!(
            c.live().count(),
            3,
            "a member known only through SWIM is awaited"
        );
    }

    #[test]
    fn a_member_that_left_no_longer_counts() {
        let mut c = Confirmations::new(BOUND);
        c.contact(&"b", 0);
        assert_eq!(c.confirmed_since(), None);
        c.leave(&"b");
        assert_eq!(
            c.confirmed_since(),
            Some(Millis::MAX),
            "alone again, by b's own word"
        );
    }

    #[test]
    fn a_node_that_knows_of_peers_is_not_alone_before_contact() {
        let mut c: Confirmations<&str> = Confirmations::new(BOUND);
        c.set_known_peers(1);
        assert_eq!(c.confirmed_since(), None);
        c.contact(&"b", 0);
        let nonce = c.ping(&"b", 5);
        c.pong(&"b", nonce, 0, Some(0), Some(vec!["b", "c"]), 6);
        assert_eq!(c.confirmed_since(), Some(5));
    }

    #[test]
    fn a_node_cut_off_from_the_majority_is_never_confirmed() {
        let mut c = Confirmations::new(BOUND);
        for member in ["b", "c"] {
            c.contact(&member, 0);
        }
        assert!(
            c.expire(2_000).is_empty(),
            "a node hearing no majority retires nobody"
        );
        assert_eq!(c.confirmed_since(), None, "and is not confirmed");

        let mut pair = Confirmations::new(BOUND);
        pair.contact(&"b", 0);
        assert!(pair.expire(2_000).is_empty());
        assert_eq!(pair.confirmed_since(), None, "one of two is no majority");
    }

    /// Two nodes lost each other while a third still counted as live for both: the one whose
    /// last confirmation of the third is older than the bound may be the one cut off, and must
    /// not retire the other (which, with the third, may retire it).
    #[test]
    fn only_a_fresh_majority_retires() {
        let mut c = Confirmations::new(BOUND);
        for member in ["b", "c"] {
            c.contact(&member, 0);
            let nonce = c.ping(&member, 0);
            c.pong(&member, nonce, 0, Some(0), Some(vec!["b", "c"]), 10);
        }
        let nonce = c.ping(&"c", 1_000);
        c.pong(&"c", nonce, 0, Some(0), Some(vec![]), 1_010);
        assert!(
            c.expire(1_600).is_empty(),
            "b silent and c live, but c last confirmed 600 ms ago"
        );
        assert!(!c.has_fresh_majority(1_600));
        let nonce = c.ping(&"c", 1_650);
        c.pong(&"c", nonce, 0, Some(0), Some(vec![]), 1_660);
        assert_eq!(c.expire(1_700), vec!["b"], "c confirmed again: a majority");
    }

    /// A member that still hears the silent one testifies against retiring it: the link between
    /// the two is what failed, and the silent one may be serving.
    #[test]
    fn a_member_that_hears_the_silent_one_keeps_it_awaited() {
        let mut c = Confirmations::new(BOUND);
        for member in ["b", "c"] {
            c.contact(&member, 0);
            let nonce = c.ping(&member, 0);
            c.pong(&member, nonce, 0, Some(0), Some(vec!["b", "c"]), 10);
        }
        let nonce = c.ping(&"c", 1_900);
        c.pong(&"c", nonce, 0, Some(0), Some(vec!["b", "c"]), 1_910);
        assert!(c.has_fresh_majority(2_000));
        assert!(c.expire(2_000).is_empty(), "c heard b");
        assert_eq!(c.live().count(), 2, "b is awaited");
        assert_eq!(c.confirmed_since(), Some(0), "as of its last confirmation");
        let nonce = c.ping(&"c", 2_100);
        c.pong(&"c", nonce, 0, Some(0), Some(vec![]), 2_110);
        assert_eq!(c.expire(2_200), vec!["b"], "c no longer hears b");
    }

    proptest! {
        /// Whatever the order of pings, pongs and contacts, a reported confirmation time is the send
        /// time of a ping whose pong showed every event applied, and never later than now.
        #[test]
        fn confirmations_come_only_from_answered_pings(
            steps in proptest::collection::vec((0_u8..4, 0_u64..3, 0_u64..4), 1..80),
        ) {
            let mut c = Confirmations::new(BOUND);
            let mut now = 0;
            let mut sent = Vec::new();
            let mut confirming = std::collections::BTreeSet::new();
            for (kind, member, arg) in steps {
                now += 7;
                match kind {
                    0 => c.contact(&member, now),
                    1 => sent.push((member, c.ping(&member, now), now)),
                    2 => if let Some(&(m, nonce, at)) = sent.get(arg as usize % sent.len().max(1))
                        && c.pong(&m, nonce, arg, Some(2), Some(vec![0, 1, 2]), now) == PongVerdict::Confirmed
                    {
                        confirming.insert(at);
                    },
                    _ => { c.expire(now); }
                }
                if let Some(since) = c.confirmed_since().filter(|&s| s != Millis::MAX) {
                    prop_assert!(since <= now);
                    prop_assert!(confirming.contains(&since), "{} confirmed by nothing", since);
                }
            }
        }
    }

    /// Pongs come back behind the member's events, so they may lag more than one ping
    /// interval: a pong to an older ping still outstanding confirms as of that ping.
    #[test]
    fn a_pong_to_an_older_outstanding_ping_confirms() {
        let mut c = Confirmations::new(BOUND);
        c.contact(&"b", 0);
        let first = c.ping(&"b", 10);
        let _second = c.ping(&"b", 20);
        assert_eq!(
            c.pong(&"b", first, 0, Some(0), Some(vec!["b", "c"]), 25),
            PongVerdict::Confirmed
        );
        assert_eq!(c.confirmed_since(), Some(10));
    }

    #[test]
    fn at_most_outstanding_pings_are_awaited_per_member() {
        let mut c = Confirmations::new(BOUND);
        c.contact(&"b", 0);
        let nonces: Vec<u64> = (0..=OUTSTANDING as Millis)
            .map(|at| c.ping(&"b", at))
            .collect();
        assert_eq!(
            c.pong(&"b", nonces[0], 0, Some(0), Some(vec!["b", "c"]), 100),
            PongVerdict::Unknown,
            "the oldest was forgotten"
        );
        assert_eq!(
            c.pong(&"b", nonces[1], 0, Some(0), Some(vec!["b", "c"]), 100),
            PongVerdict::Confirmed
        );
        assert_eq!(c.confirmed_since(), Some(1));
    }
}
