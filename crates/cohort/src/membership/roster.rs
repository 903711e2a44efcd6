//! The roster: the members this node knows, by identity, and the seed addresses not yet known to
//! belong to one. It decides whom to dial, whom to tell others about, whom the majority rule
//! counts, and when a member is forgotten.
//!
//! Pure state, no I/O; time comes in as coarse-clock milliseconds.
//!
//! A member is a node **name**; its process (incarnation) and its address are attributes. The
//! same name met with a newer process, or at another address, replaces the old entry, so a node
//! restarted elsewhere (a Kubernetes pod with a new IP) is one member, not two, and its old
//! address is neither dialed nor gossiped again. An older process of a known name is refused.
//!
//! What the majority rule counts ([`Roster::counted`]): every member in the table, plus every seed
//! address no identity has been found at yet. The set changes only in these ways:
//! - meeting or hearing of a new name adds it (a bigger set only makes a majority harder);
//! - a new process of a known name replaces it (the count is unchanged);
//! - a member that says it leaves is removed;
//! - a member this node never reached (no link it dialed completed a handshake, SWIM never held it
//!   up) is forgotten once nothing was heard of it for `forget_after`;
//! - a member this node did reach is forgotten once it has been silent and not held up by SWIM
//!   for `forget_after`, **and only while** this node with its live members is a strict majority
//!   of the set that still counts it ([`Roster::expire`]'s `majority`). A node cut off from
//!   everyone has no live member, is no majority of any set of two or more, and so never shrinks
//!   its set below the members it has reached: it never comes to believe it is alone;
//! - a seed address stops counting once an identity is found there (by a handshake, or a member
//!   gossiped at that address); an address named by a seed's DNS record stops counting once the
//!   record has not named it for `seed_ttl`.
//!
//! Forgotten names are remembered (a tombstone, for `forget_after`) with their incarnation, so a
//! peer that has not forgotten them yet cannot gossip them back; meeting one directly (a
//! handshake) always readmits it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use crate::clock::Millis;
use crate::id::NodeId;

/// The longest node name accepted, in bytes.
pub(crate) const MAX_NAME_BYTES: usize = 128;

/// Limits of the roster.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RosterConfig {
    /// Most members kept, this node not included.
    pub(crate) max_members: usize,
    /// How long a member stays unreached, or silent and down, before it is forgotten.
    pub(crate) forget_after: Millis,
    /// How long an address a seed's name resolved to keeps counting once the name no longer
    /// resolves to it.
    pub(crate) seed_ttl: Millis,
}

/// A member as this node knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    /// Where it accepts links.
    pub(crate) addr: SocketAddr,
    /// Its process.
    pub(crate) incarnation: u64,
    /// This node reached it: a link this node dialed completed its handshake, or SWIM held it up.
    pub(crate) reached: bool,
    /// This node's link to it is up.
    pub(crate) connected: bool,
    /// SWIM holds it up.
    pub(crate) swim_up: bool,
    /// When it last showed signs of life (or, never reached, when it was learned of).
    pub(crate) last_heard: Millis,
}

/// What admitting a member changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Known already: same process, same address.
    Known,
    /// A name new to this node.
    Added,
    /// A newer process of a known name, or the same one at another address: it replaced the old
    /// entry, which was at `old_addr`.
    Replaced {
        /// Where the replaced entry accepted links.
        old_addr: SocketAddr,
        /// Whether the process changed (not only the address).
        restarted: bool,
    },
}

/// Why a member was not admitted. Nothing changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refusal {
    /// The name is longer than [`MAX_NAME_BYTES`], or empty.
    #[error("a node name must be 1 to {MAX_NAME_BYTES} bytes")]
    BadName,
    /// An older process than the one known under that name.
    #[error("an older process of a known member")]
    Stale,
    /// The table holds `max_members` members, none of them forgettable to make room.
    #[error("the member table is full")]
    Full,
    /// The name is this node's own.
    #[error("this node's own name")]
    Myself,
    /// Gossip of a name forgotten recently, no newer than the process forgotten.
    #[error("a member forgotten recently")]
    Forgotten,
}

/// A seed address.
#[derive(Clone, Debug)]
struct Seed {
    /// The member found at this address, once known.
    found: Option<NodeId>,
    /// Given as an address (kept for good), not found by resolving a name.
    fixed: bool,
    /// When a seed's name last resolved to it.
    named_at: Millis,
}

/// This node's members, by name.
#[derive(Debug)]
pub(crate) struct Roster {
    me: NodeId,
    my_addr: SocketAddr,
    config: RosterConfig,
    members: BTreeMap<NodeId, Entry>,
    seeds: BTreeMap<SocketAddr, Seed>,
    /// Forgotten names: the incarnation forgotten and when.
    tombstones: BTreeMap<NodeId, (u64, Millis)>,
    /// Addresses with a dialer running.
    dialing: BTreeSet<SocketAddr>,
    /// Members evicted to make room, for [`expire`](Self::expire) to report.
    evicted: Vec<(NodeId, Entry)>,
}

impl Roster {
    /// The roster of node `me`, accepting links at `my_addr`.
    pub(crate) fn new(me: NodeId, my_addr: SocketAddr, config: RosterConfig) -> Self {
        Self {
            me,
            my_addr,
            config,
            members: BTreeMap::new(),
            seeds: BTreeMap::new(),
            tombstones: BTreeMap::new(),
            dialing: BTreeSet::new(),
            evicted: Vec::new(),
        }
    }

    /// Seeds resolved to `addrs`: given as addresses (`fixed`) or found by resolving names.
    pub(crate) fn add_seeds(&mut self, addrs: &[SocketAddr], fixed: bool, now: Millis) {
        for &addr in addrs.iter().filter(|&&addr| addr != self.my_addr) {
            let seed = self.seeds.entry(addr).or_insert(Seed {
                found: None,
                fixed,
                named_at: now,
            });
            seed.fixed |= fixed;
            seed.named_at = now;
        }
        let found: Vec<(SocketAddr, NodeId)> = self
            .members
            .iter()
            .map(|(name, entry)| (entry.addr, name.clone()))
            .collect();
        for (addr, name) in found {
            self.found_at(addr, &name);
        }
    }

    /// A link handshake with `node` (process `incarnation`, accepting links at `addr`) completed:
    /// on a link this node dialed to `dialed`, or on one it accepted (`None`).
    pub(crate) fn meet(
        &mut self,
        node: &NodeId,
        incarnation: u64,
        addr: SocketAddr,
        dialed: Option<SocketAddr>,
        now: Millis,
    ) -> Result<Admission, Refusal> {
        if let Some(dialed) = dialed {
            self.found_at(dialed, node);
        }
        check_name(node)?;
        if node == &self.me {
            return Err(Refusal::Myself);
        }
        self.tombstones.remove(node);
        let admission = self.admit(node, incarnation, addr, now, true)?;
        if let Some(entry) = self.members.get_mut(node) {
            entry.last_heard = entry.last_heard.max(now);
            entry.reached |= dialed.is_some();
        }
        Ok(admission)
    }

    /// A peer told of `node` (process `incarnation`) accepting links at `addr`, in its hello or
    /// a peers frame.
    pub(crate) fn hear_of(
        &mut self,
        node: &NodeId,
        incarnation: u64,
        addr: SocketAddr,
        now: Millis,
    ) -> Result<Admission, Refusal> {
        check_name(node)?;
        self.found_at(addr, node);
        if node == &self.me {
            return Err(Refusal::Myself);
        }
        if let Some(&(forgotten, _)) = self.tombstones.get(node) {
            if incarnation <= forgotten {
                return Err(Refusal::Forgotten);
            }
            self.tombstones.remove(node);
        }
        match self.members.get(node) {
            Some(entry) if incarnation < entry.incarnation => Err(Refusal::Stale),
            Some(entry) if incarnation == entry.incarnation => Ok(Admission::Known),
            _ => self.admit(node, incarnation, addr, now, false),
        }
    }

    /// SWIM holds `node` (process `incarnation` at `addr`) up: it was reached.
    pub(crate) fn swim_up(
        &mut self,
        node: &NodeId,
        incarnation: u64,
        addr: SocketAddr,
        now: Millis,
    ) -> Result<Admission, Refusal> {
        let admission = self.hear_of(node, incarnation, addr, now)?;
        if let Some(entry) = self.members.get_mut(node) {
            entry.swim_up = true;
            entry.reached = true;
            entry.last_heard = entry.last_heard.max(now);
        }
        Ok(admission)
    }

    /// SWIM declared process `incarnation` of `node` down.
    pub(crate) fn swim_down(&mut self, node: &NodeId, incarnation: u64) {
        if let Some(entry) = self.members.get_mut(node)
            && entry.incarnation == incarnation
        {
            entry.swim_up = false;
        }
    }

    /// `node` showed signs of life (a ping, a pong, an event).
    pub(crate) fn heard(&mut self, node: &NodeId, now: Millis) {
        if let Some(entry) = self.members.get_mut(node) {
            entry.last_heard = entry.last_heard.max(now);
        }
    }

    /// This node's link to `node` at `addr` came up or went down.
    pub(crate) fn set_connected(&mut self, node: &NodeId, addr: SocketAddr, connected: bool) {
        if let Some(entry) = self.members.get_mut(node)
            && entry.addr == addr
        {
            entry.connected = connected;
        }
    }

    /// `node` said it leaves: it no longer counts, and is not dialed or gossiped.
    pub(crate) fn leave(&mut self, node: &NodeId, now: Millis) -> Option<Entry> {
        let entry = self.members.remove(node)?;
        self.bury(node, entry.incarnation, now);
        Some(entry)
    }

    /// Forgets the members due (see the module docs): those never reached and unheard of for
    /// `forget_after`, and those silent and not held up by SWIM for as long that
    /// `may_forget_reached` allows (the majority rule: see `node::confirm`). Also drops old
    /// tombstones and seed addresses no name resolves to any more. Returns the forgotten members,
    /// and those evicted to make room since the last call.
    pub(crate) fn expire(
        &mut self,
        now: Millis,
        may_forget_reached: impl Fn(&NodeId) -> bool,
    ) -> Vec<(NodeId, Entry)> {
        let grace = self.config.forget_after;
        let due: Vec<NodeId> = self
            .members
            .iter()
            .filter(|(name, e)| {
                let quiet = now.saturating_sub(e.last_heard) > grace;
                quiet && (!e.reached || (!e.swim_up && may_forget_reached(name)))
            })
            .map(|(name, _)| name.clone())
            .collect();
        let mut forgotten = std::mem::take(&mut self.evicted);
        for name in due {
            if let Some(entry) = self.members.remove(&name) {
                self.bury(&name, entry.incarnation, now);
                forgotten.push((name, entry));
            }
        }
        self.tombstones
            .retain(|_, &mut (_, at)| now.saturating_sub(at) <= grace);
        let ttl = self.config.seed_ttl;
        self.seeds
            .retain(|_, seed| seed.fixed || now.saturating_sub(seed.named_at) <= ttl);
        forgotten
    }

    /// How many other nodes the majority rule counts: every member, and every seed address no
    /// member has been found at.
    pub(crate) fn counted(&self) -> usize {
        self.members.len() + self.unresolved_seeds().count()
    }

    /// The members heard from within `window`, if their names fit in `budget` bytes.
    pub(crate) fn heard_lately(
        &self,
        now: Millis,
        window: Millis,
        budget: usize,
    ) -> Option<Vec<&NodeId>> {
        let heard: Vec<&NodeId> = self
            .members
            .iter()
            .filter(|(_, e)| now.saturating_sub(e.last_heard) <= window)
            .map(|(name, _)| name)
            .collect();
        let bytes: usize = heard.iter().map(|name| name.as_str().len() + 1).sum();
        (bytes <= budget).then_some(heard)
    }

    /// Whether a dialer should keep trying `addr`: a member accepts links there, or a seed no
    /// member has been found at. A dialer told no is done: the address may be handed out again
    /// by [`dials`](Self::dials).
    pub(crate) fn keep_dialing(&mut self, addr: SocketAddr) -> bool {
        let wanted = self.wants(addr);
        if !wanted {
            self.dialing.remove(&addr);
        }
        wanted
    }

    /// Addresses to dial that have no dialer yet; each now counts as having one.
    pub(crate) fn dials(&mut self) -> Vec<SocketAddr> {
        let wanted: Vec<SocketAddr> = self
            .members
            .values()
            .map(|e| e.addr)
            .chain(self.unresolved_seeds())
            .filter(|addr| !self.dialing.contains(addr))
            .collect();
        self.dialing.extend(wanted.iter().copied());
        wanted
    }

    /// The members this node reached, most recently heard first: what it tells peers about.
    pub(crate) fn reached(&self) -> Vec<(&NodeId, &Entry)> {
        let mut reached: Vec<_> = self.members.iter().filter(|(_, e)| e.reached).collect();
        reached.sort_by_key(|(_, e)| std::cmp::Reverse(e.last_heard));
        reached
    }

    /// The member named `node`.
    pub(crate) fn get(&self, node: &NodeId) -> Option<&Entry> {
        self.members.get(node)
    }

    /// Every member.
    pub(crate) fn members(&self) -> impl Iterator<Item = (&NodeId, &Entry)> {
        self.members.iter()
    }

    /// Seed addresses no member has been found at.
    pub(crate) fn unresolved_seeds(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.seeds
            .iter()
            .filter(|(_, seed)| seed.found.is_none())
            .map(|(&addr, _)| addr)
    }

    fn wants(&self, addr: SocketAddr) -> bool {
        self.members.values().any(|e| e.addr == addr)
            || self.seeds.get(&addr).is_some_and(|s| s.found.is_none())
    }

    /// `node` was found accepting links at `addr` (now, or in an earlier process): a seed there
    /// stops counting on its own.
    fn found_at(&mut self, addr: SocketAddr, node: &NodeId) {
        if let Some(seed) = self.seeds.get_mut(&addr) {
            seed.found = Some(node.clone());
        }
    }

    /// Adds or replaces the entry of `node`. A full table refuses a new name, unless `evict`
    /// (the name was met directly) and some member was never reached: the longest-unheard of
    /// those makes room, so a flood of names that never answer cannot lock out real peers.
    fn admit(
        &mut self,
        node: &NodeId,
        incarnation: u64,
        addr: SocketAddr,
        now: Millis,
        evict: bool,
    ) -> Result<Admission, Refusal> {
        let fresh = Entry {
            addr,
            incarnation,
            reached: false,
            connected: false,
            swim_up: false,
            last_heard: now,
        };
        if let Some(entry) = self.members.get_mut(node) {
            if incarnation < entry.incarnation {
                return Err(Refusal::Stale);
            }
            if incarnation == entry.incarnation && addr == entry.addr {
                return Ok(Admission::Known);
            }
            let restarted = incarnation > entry.incarnation;
            let old = std::mem::replace(entry, fresh);
            if !restarted {
                entry.reached = old.reached;
                entry.swim_up = old.swim_up;
            }
            return Ok(Admission::Replaced {
                old_addr: old.addr,
                restarted,
            });
        }
        if self.members.len() >= self.config.max_members {
            if !evict {
                return Err(Refusal::Full);
            }
            let evict = self
                .members
                .iter()
                .filter(|(_, e)| !e.reached)
                .min_by_key(|(_, e)| e.last_heard)
                .map(|(name, _)| name.clone())
                .ok_or(Refusal::Full)?;
            if let Some(entry) = self.members.remove(&evict) {
                self.evicted.push((evict, entry));
            }
        }
        self.members.insert(node.clone(), fresh);
        Ok(Admission::Added)
    }

    fn bury(&mut self, node: &NodeId, incarnation: u64, now: Millis) {
        if self.tombstones.len() >= self.config.max_members
            && let Some(oldest) = self
                .tombstones
                .iter()
                .min_by_key(|(_, (_, at))| *at)
                .map(|(name, _)| name.clone())
        {
            self.tombstones.remove(&oldest);
        }
        self.tombstones.insert(node.clone(), (incarnation, now));
    }
}

fn check_name(node: &NodeId) -> Result<(), Refusal> {
    if node.as_str().is_empty() || node.as_str().len() > MAX_NAME_BYTES {
        return Err(Refusal::BadName);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const GRACE: Millis = 10_000;

    fn roster(max_members: usize) -> Roster {
        Roster::new(
            NodeId::from("me"),
            addr(1),
            RosterConfig {
                max_members,
                forget_after: GRACE,
                seed_ttl: GRACE,
            },
        )
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], port))
    }

    fn name(n: &str) -> NodeId {
        NodeId::from(n)
    }

    #[test]
    fn a_restart_at_a_new_address_replaces_the_member() {
        let mut r = roster(8);
        r.add_seeds(&[addr(2)], true, 0);
        assert_eq!(r.counted(), 1, "an unresolved seed counts");
        assert_eq!(r.dials(), vec![addr(2)]);
        assert_eq!(
            r.meet(&name("b"), 1, addr(2), Some(addr(2)), 0),
            Ok(Admission::Added)
        );
        assert_eq!(r.counted(), 1, "the seed now is b");

        let moved = r.meet(&name("b"), 2, addr(3), None, 100);
        assert_eq!(
            moved,
            Ok(Admission::Replaced {
                old_addr: addr(2),
                restarted: true
            })
        );
        assert_eq!(r.counted(), 1, "one name, one member");
        assert!(
            !r.keep_dialing(addr(2)),
            "the old address is not dialed again"
        );
        assert_eq!(r.dials(), vec![addr(3)]);
        assert_eq!(
            r.reached().len(),
            0,
            "not gossiped before this node reaches it"
        );
        assert_eq!(
            r.meet(&name("b"), 2, addr(3), Some(addr(3)), 200),
            Ok(Admission::Known)
        );
        assert_eq!(r.reached()[0].1.addr, addr(3));
    }

    #[test]
    fn an_older_process_is_refused_in_person_and_in_gossip() {
        let mut r = roster(8);
        r.meet(&name("b"), 5, addr(2), None, 0).unwrap();
        assert_eq!(r.meet(&name("b"), 4, addr(9), None, 1), Err(Refusal::Stale));
        assert_eq!(r.hear_of(&name("b"), 4, addr(9), 1), Err(Refusal::Stale));
        assert_eq!(r.get(&name("b")).map(|e| e.addr), Some(addr(2)));
    }

    #[test]
    fn names_are_capped_and_this_nodes_own_is_refused() {
        let mut r = roster(8);
        let long = "x".repeat(MAX_NAME_BYTES + 1);
        assert_eq!(
            r.meet(&name(&long), 1, addr(2), None, 0),
            Err(Refusal::BadName)
        );
        assert_eq!(r.hear_of(&name(""), 1, addr(2), 0), Err(Refusal::BadName));
        assert_eq!(r.hear_of(&name("me"), 7, addr(2), 0), Err(Refusal::Myself));
        assert_eq!(r.counted(), 0);
    }

    #[test]
    fn gossip_of_this_nodes_old_address_resolves_a_seed_pointing_there() {
        let mut r = roster(8);
        r.add_seeds(&[addr(5)], true, 0);
        assert_eq!(r.hear_of(&name("me"), 1, addr(5), 0), Err(Refusal::Myself));
        assert_eq!(r.counted(), 0);
        assert!(!r.keep_dialing(addr(5)));
    }

    #[test]
    fn a_member_never_reached_is_forgotten_after_the_grace_majority_or_not() {
        let mut r = roster(8);
        r.hear_of(&name("ghost"), 1, addr(2), 0).unwrap();
        assert!(r.expire(GRACE, |_| false).is_empty());
        let forgotten = r.expire(GRACE + 1, |_| false);
        assert_eq!(forgotten.len(), 1);
        assert_eq!(r.counted(), 0);
        assert_eq!(
            r.hear_of(&name("ghost"), 1, addr(2), GRACE + 2),
            Err(Refusal::Forgotten),
            "a peer that still remembers it cannot gossip it back"
        );
        assert_eq!(
            r.hear_of(&name("ghost"), 2, addr(2), GRACE + 3),
            Ok(Admission::Added),
            "a newer process can"
        );
    }

    #[test]
    fn a_reached_member_is_forgotten_only_by_a_majority_and_only_when_down() {
        let mut r = roster(8);
        r.meet(&name("b"), 1, addr(2), Some(addr(2)), 0).unwrap();
        r.swim_up(&name("b"), 1, addr(2), 0).unwrap();
        assert!(r.expire(GRACE * 5, |_| true).is_empty(), "SWIM holds it up");
        r.swim_down(&name("b"), 1);
        assert!(
            r.expire(GRACE * 5, |_| false).is_empty(),
            "a node with no majority never shrinks its set"
        );
        assert_eq!(r.counted(), 1);
        let forgotten = r.expire(GRACE * 5, |_| true);
        assert_eq!(forgotten.len(), 1);
        assert_eq!(r.counted(), 0);
        assert!(!r.keep_dialing(addr(2)));
    }

    #[test]
    fn a_swim_verdict_on_an_old_process_does_not_touch_the_new_one() {
        let mut r = roster(8);
        r.swim_up(&name("b"), 1, addr(2), 0).unwrap();
        r.swim_up(&name("b"), 2, addr(3), 10).unwrap();
        r.swim_down(&name("b"), 1);
        assert!(r.get(&name("b")).is_some_and(|e| e.swim_up));
    }

    #[test]
    fn a_full_table_refuses_gossip_and_makes_room_only_for_members_met() {
        let mut r = roster(2);
        r.meet(&name("real"), 1, addr(2), Some(addr(2)), 0).unwrap();
        r.hear_of(&name("fake-1"), 1, addr(3), 1).unwrap();
        assert_eq!(
            r.hear_of(&name("fake-2"), 1, addr(4), 2),
            Err(Refusal::Full)
        );
        assert_eq!(
            r.meet(&name("fake-3"), 1, addr(5), None, 3),
            Ok(Admission::Added)
        );
        assert!(
            r.get(&name("fake-1")).is_none(),
            "the unreached one made room"
        );
        assert!(
            r.get(&name("real")).is_some(),
            "a member reached is never evicted"
        );
        assert_eq!(r.expire(4, |_| false).len(), 1, "the eviction is reported");
        r.meet(&name("fake-3"), 1, addr(5), Some(addr(5)), 5)
            .unwrap();
        assert_eq!(
            r.meet(&name("fake-4"), 1, addr(6), None, 6),
            Err(Refusal::Full)
        );
    }

    #[test]
    fn a_seed_named_by_dns_stops_counting_once_no_longer_named() {
        let mut r = roster(8);
        r.add_seeds(&[addr(2)], false, 0);
        r.add_seeds(&[addr(3)], true, 0);
        assert_eq!(r.counted(), 2);
        r.expire(GRACE + 1, |_| false);
        assert_eq!(r.counted(), 1, "the fixed seed stays");
        assert!(!r.keep_dialing(addr(2)));
        assert!(r.keep_dialing(addr(3)));
    }

    #[test]
    fn each_address_gets_one_dialer() {
        let mut r = roster(8);
        r.add_seeds(&[addr(2), addr(3)], true, 0);
        let mut first = r.dials();
        first.sort();
        assert_eq!(first, vec![addr(2), addr(3)]);
        assert!(r.dials().is_empty());
        r.meet(&name("b"), 1, addr(4), Some(addr(2)), 0).unwrap();
        assert!(!r.keep_dialing(addr(2)), "b accepts links elsewhere");
        assert_eq!(r.dials(), vec![addr(4)]);
    }

    proptest! {
        /// Any number of rolling restarts, each at a new address, leaves one member per name.
        #[test]
        fn rolling_restarts_never_grow_the_table(
            restarts in proptest::collection::vec((0_usize..5, any::<bool>()), 1..200),
        ) {
            let mut r = roster(64);
            let mut incarnation = [1_u64; 5];
            let mut port = 100;
            for (i, inc) in incarnation.iter().enumerate() {
                r.meet(&name(&format!("n{i}")), *inc, addr(port), Some(addr(port)), 0).unwrap();
                port += 1;
            }
            for (now, (node, gossip)) in restarts.into_iter().enumerate() {
                incarnation[node] += 1;
                port += 1;
                let (n, now) = (name(&format!("n{node}")), now as Millis);
                if gossip {
                    r.hear_of(&n, incarnation[node], addr(port), now).unwrap();
                } else {
                    r.meet(&n, incarnation[node], addr(port), None, now).unwrap();
                }
                prop_assert_eq!(r.counted(), 5);
                prop_assert!(r.members().count() == 5);
                r.dials();
                let running: Vec<SocketAddr> = r.dialing.iter().copied().collect();
                for dialer in running {
                    r.keep_dialing(dialer);
                }
                prop_assert_eq!(r.dialing.len(), 5, "one dialer per member");
            }
        }
    }

    #[test]
    fn a_seed_given_as_an_address_stays_when_dns_names_it_too() {
        for fixed_first in [true, false] {
            let mut r = roster(8);
            r.add_seeds(&[addr(2)], fixed_first, 0);
            r.add_seeds(&[addr(2)], !fixed_first, 0);
            r.expire(GRACE + 1, |_| false);
            assert_eq!(r.counted(), 1, "fixed first: {fixed_first}");
            assert!(r.keep_dialing(addr(2)));
        }
    }

    #[test]
    fn gossip_of_a_known_process_at_another_address_changes_nothing() {
        let mut r = roster(8);
        r.meet(&name("b"), 1, addr(2), Some(addr(2)), 0).unwrap();
        assert_eq!(r.hear_of(&name("b"), 1, addr(9), 1), Ok(Admission::Known));
        assert_eq!(r.get(&name("b")).map(|e| e.addr), Some(addr(2)));
    }

    #[test]
    fn signs_of_life_keep_a_reached_member() {
        let mut r = roster(8);
        r.meet(&name("b"), 1, addr(2), Some(addr(2)), 0).unwrap();
        r.heard(&name("b"), GRACE);
        assert!(r.expire(GRACE + 1, |_| true).is_empty(), "heard at GRACE");
        assert_eq!(r.expire(2 * GRACE + 1, |_| true).len(), 1);
    }

    #[test]
    fn a_link_marks_its_member_connected_only_at_the_members_address() {
        let mut r = roster(8);
        r.meet(&name("b"), 1, addr(2), Some(addr(2)), 0).unwrap();
        r.set_connected(&name("b"), addr(2), true);
        assert!(r.get(&name("b")).is_some_and(|e| e.connected));
        r.set_connected(&name("b"), addr(3), false);
        assert!(
            r.get(&name("b")).is_some_and(|e| e.connected),
            "a link to an old address"
        );
        r.set_connected(&name("b"), addr(2), false);
        assert!(r.get(&name("b")).is_some_and(|e| !e.connected));
    }

    #[test]
    fn a_member_that_leaves_stops_counting_and_is_not_gossiped_back() {
        let mut r = roster(8);
        r.meet(&name("b"), 1, addr(2), Some(addr(2)), 0).unwrap();
        assert_eq!(r.leave(&name("b"), 5).map(|e| e.addr), Some(addr(2)));
        assert_eq!(r.counted(), 0);
        assert!(!r.keep_dialing(addr(2)));
        assert_eq!(
            r.hear_of(&name("b"), 1, addr(2), 6),
            Err(Refusal::Forgotten)
        );
        assert_eq!(r.leave(&name("b"), 7), None);
    }

    #[test]
    fn a_restart_at_the_same_address_replaces_the_member() {
        let mut r = roster(8);
        r.meet(&name("b"), 1, addr(2), Some(addr(2)), 0).unwrap();
        assert_eq!(
            r.meet(&name("b"), 2, addr(2), None, 10),
            Ok(Admission::Replaced {
                old_addr: addr(2),
                restarted: true
            })
        );
        let b = r.get(&name("b")).unwrap();
        assert_eq!(b.incarnation, 2);
        assert!(!b.reached, "the new process is not reached yet");
    }

    #[test]
    fn the_same_process_at_a_new_address_keeps_what_was_known_of_it() {
        let mut r = roster(8);
        r.meet(&name("b"), 1, addr(2), Some(addr(2)), 0).unwrap();
        r.swim_up(&name("b"), 1, addr(2), 0).unwrap();
        assert_eq!(
            r.meet(&name("b"), 1, addr(3), None, 10),
            Ok(Admission::Replaced {
                old_addr: addr(2),
                restarted: false
            })
        );
        let b = r.get(&name("b")).unwrap();
        assert!(b.reached && b.swim_up);
    }

    #[test]
    fn every_forgotten_name_is_remembered() {
        let mut r = roster(8);
        let ghosts = ["g1", "g2", "g3"];
        for (port, ghost) in (2..).zip(ghosts) {
            r.hear_of(&name(ghost), 1, addr(port), 0).unwrap();
        }
        assert_eq!(r.expire(GRACE + 1, |_| false).len(), 3);
        for (port, ghost) in (2..).zip(ghosts) {
            assert_eq!(
                r.hear_of(&name(ghost), 1, addr(port), GRACE + 2),
                Err(Refusal::Forgotten),
                "{ghost}"
            );
        }
    }

    #[test]
    fn a_name_of_the_longest_length_is_accepted() {
        let mut r = roster(8);
        let longest = "x".repeat(MAX_NAME_BYTES);
        assert_eq!(
            r.hear_of(&name(&longest), 1, addr(2), 0),
            Ok(Admission::Added)
        );
    }
}
