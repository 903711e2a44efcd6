//! Membership: which nodes are in the cluster, decided by SWIM (the `foca` crate).
//!
//! [`Membership`] owns foca's state machine and is pure: it takes packets, fired timers and
//! introductions, and returns what to do ([`Output`]): packets to send to a member, timers to
//! schedule, members that came up, went down or restarted. The node's driver carries the packets
//! on the peer links (as `Swim` frames) and fires the timers from a single task.
//!
//! What SWIM adds over a node's own pings is the indirect probe: a member this node cannot reach
//! is probed through others before it is suspected, and a suspected member has time to refute
//! before it is declared down. The peer-only tier uses that as a veto: a silent peer is retired
//! (its confirmations no longer awaited) only once SWIM also holds it down. A link broken between
//! two nodes that both still reach a third then leaves them waiting for each other, serving
//! nothing stale, instead of each going on without the other's events.
//!
//! Probing runs at twice the rate of the staleness bound Δ (a random member every Δ/2, a direct
//! reply expected within Δ/5), and a suspect is declared down after Δ.

use std::fmt;
use std::net::SocketAddr;
use std::num::{NonZeroU8, NonZeroUsize};
use std::time::Duration;

use bytes::Bytes;
use foca::{AccumulatingRuntime, Foca, NoCustomBroadcast, OwnedNotification, PeriodicParams};
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use crate::id::NodeId;

mod roster;

pub(crate) use roster::{Admission, MAX_NAME_BYTES, Refusal, Roster, RosterConfig};

pub(crate) use foca::Timer;

/// A peer as this node knows it; from [`Cluster::members`](crate::Cluster::members).
///
/// A member is a node's name; a seed address no member has been found at yet is listed too,
/// with no name.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Member {
    /// Where the peer accepts links.
    pub addr: SocketAddr,
    /// Its name, once a link or a peer has told it.
    pub node: Option<NodeId>,
    /// Its process epoch, once known.
    pub incarnation: Option<u64>,
    /// What SWIM holds of this process; `None` before SWIM has heard of it.
    pub swim: Option<SwimState>,
    /// How long ago it last showed signs of life (or was learned of, never reached).
    pub last_heard: Option<Duration>,
    /// How long ago this node sent the ping of the member's newest confirmation: it had then
    /// applied every event the member originated. Peer-only caches serve while this is within
    /// the bound for every live member, so the bound minus this is what the member leaves of
    /// their lease. `None` while unconfirmed. At the node clock's resolution (a few ms).
    pub last_confirmed: Option<Duration>,
    /// The latest round trip of a ping to it: from queueing the ping, behind this node's events
    /// to it, to the pong, behind the member's events to this node. Every event this node sent
    /// before a ping has reached the member within that ping's round trip. `None` before the
    /// first pong.
    pub round_trip: Option<Duration>,
    /// Whether this node's link to it is up.
    pub connected: bool,
    /// Whether this node's peer-only caches wait for its confirmation: it has been heard from
    /// within twice the bound, or SWIM holds it up.
    pub live: bool,
    /// Whether SWIM holds it up: reached, directly or through other members, recently enough
    /// not to be declared down.
    pub up: bool,
}

/// A member as SWIM knows it: a node's name and address, the process (incarnation), and a bump
/// that the process raises to rejoin after being declared down by mistake.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub(crate) struct Identity {
    pub(crate) node: NodeId,
    pub(crate) addr: SocketAddr,
    pub(crate) incarnation: u64,
    bump: u32,
}

impl Identity {
    /// The identity of a node's process, before any rejoin.
    pub(crate) fn new(node: NodeId, addr: SocketAddr, incarnation: u64) -> Self {
        Self {
            node,
            addr,
            incarnation,
            bump: 0,
        }
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}/{}", self.node, self.addr, self.bump)
    }
}

/// SWIM knows a member by its name: a newer process of the same name, wherever it listens,
/// replaces the older one in its table, which stays as small as the set of names.
impl foca::Identity for Identity {
    type Addr = NodeId;

    fn renew(&self) -> Option<Self> {
        Some(Self {
            bump: self.bump.wrapping_add(1),
            ..self.clone()
        })
    }

    fn addr(&self) -> NodeId {
        self.node.clone()
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        (self.incarnation, self.bump) > (adversary.incarnation, adversary.bump)
    }
}

/// What SWIM holds of a member.
///
/// ```
/// assert_eq!(cohort::SwimState::Suspect.to_string(), "suspect");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SwimState {
    /// Answering probes.
    Alive,
    /// Some member could not reach it; it has time to refute before being declared down.
    Suspect,
    /// Declared down: neither this node nor the members it asked could reach it.
    Down,
}

impl fmt::Display for SwimState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Alive => "alive",
            Self::Suspect => "suspect",
            Self::Down => "down",
        })
    }
}

/// Something for the driver to do, or to know.
#[derive(Debug, PartialEq)]
pub(crate) enum Output {
    /// Send this packet to the member.
    Send(Identity, Bytes),
    /// Hand this timer back to [`Membership::timer`] after the delay.
    Schedule(Duration, Timer<Identity>),
    /// A member joined, or came back.
    Up(Identity),
    /// A member was declared down (or left).
    Down(Identity),
}

/// This node's view of the cluster's membership.
pub(crate) struct Membership {
    foca: Foca<Identity, foca::PostcardCodec, StdRng, NoCustomBroadcast>,
    runtime: AccumulatingRuntime<Identity>,
}

impl fmt::Debug for Membership {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Membership")
            .field("me", self.foca.identity())
            .field("members", &self.foca.num_members())
            .finish()
    }
}

impl Membership {
    /// SWIM for the node `me`, timed from the staleness bound; `seed` drives its random choices.
    /// A member declared down is forgotten after `forget_after`.
    pub(crate) fn new(
        me: Identity,
        max_staleness: Duration,
        forget_after: Duration,
        seed: u64,
    ) -> Self {
        Self {
            foca: Foca::new(
                me,
                config(max_staleness, forget_after),
                StdRng::seed_from_u64(seed),
                foca::PostcardCodec,
            ),
            runtime: AccumulatingRuntime::new(),
        }
    }

    /// Introduces this node to `peer` (just linked to): it answers with what it knows.
    pub(crate) fn announce(&mut self, peer: Identity) {
        if let Err(error) = self.foca.announce(peer, &mut self.runtime) {
            tracing::debug!(%error, "announce failed");
        }
    }

    /// A packet from a peer.
    pub(crate) fn receive(&mut self, packet: &[u8]) -> Result<(), foca::Error> {
        self.foca.handle_data(packet, &mut self.runtime)
    }

    /// A timer scheduled earlier fired.
    pub(crate) fn timer(&mut self, timer: Timer<Identity>) {
        if let Err(error) = self.foca.handle_timer(timer, &mut self.runtime) {
            tracing::debug!(%error, "membership timer failed");
        }
    }

    /// Tells a few members this node is leaving.
    pub(crate) fn leave(&mut self) {
        if let Err(error) = self.foca.leave_cluster(&mut self.runtime) {
            tracing::debug!(%error, "leaving the membership failed");
        }
    }

    /// What SWIM holds of process `incarnation` of the node `name`; `None` if it knows nothing
    /// of that process.
    pub(crate) fn state(&self, name: &NodeId, incarnation: u64) -> Option<SwimState> {
        self.foca
            .iter_membership_state()
            .find(|m| &m.id().node == name && m.id().incarnation == incarnation)
            .map(|m| match m.state() {
                foca::State::Alive => SwimState::Alive,
                foca::State::Suspect => SwimState::Suspect,
                foca::State::Down => SwimState::Down,
            })
    }

    /// The members SWIM holds up.
    pub(crate) fn up(&self) -> impl Iterator<Item = &Identity> {
        self.foca.iter_members().map(|m| m.id())
    }

    /// What the last calls asked for, in order.
    pub(crate) fn drain(&mut self) -> Vec<Output> {
        let mut out = Vec::new();
        while let Some((to, packet)) = self.runtime.to_send() {
            out.push(Output::Send(to, packet));
        }
        while let Some((after, timer)) = self.runtime.to_schedule() {
            out.push(Output::Schedule(after, timer));
        }
        while let Some(notification) = self.runtime.to_notify() {
            match notification {
                OwnedNotification::MemberUp(id) => out.push(Output::Up(id)),
                OwnedNotification::MemberDown(id) => out.push(Output::Down(id)),
                OwnedNotification::Rename(old, new) => {
                    out.push(Output::Down(old));
                    out.push(Output::Up(new));
                }
                _ => {}
            }
        }
        out
    }
}

fn config(max_staleness: Duration, forget_after: Duration) -> foca::Config {
    let one = NonZeroUsize::MIN;
    foca::Config {
        probe_period: max_staleness / 2,
        probe_rtt: max_staleness / 5,
        num_indirect_probes: NonZeroUsize::new(3).unwrap_or(one),
        max_transmissions: NonZeroU8::new(10).unwrap_or(NonZeroU8::MIN),
        suspect_to_down_after: max_staleness,
        remove_down_after: Some(forget_after),
        max_packet_size: NonZeroUsize::new(1400).unwrap_or(one),
        notify_down_members: true,
        periodic_announce: Some(PeriodicParams {
            frequency: max_staleness * 10,
            num_members: one,
        }),
        periodic_announce_to_down_members: Some(PeriodicParams {
            frequency: max_staleness * 20,
            num_members: one,
        }),
        periodic_gossip: Some(PeriodicParams {
            frequency: max_staleness / 2,
            num_members: NonZeroUsize::new(3).unwrap_or(one),
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashSet, VecDeque};

    use super::*;

    const BOUND: Duration = Duration::from_millis(500);

    /// SWIM nodes on a network that delivers at once, in order, except across cut links or to
    /// crashed nodes; timers fire in virtual time.
    struct Net {
        nodes: Vec<Membership>,
        ids: Vec<Identity>,
        now: Duration,
        timers: Vec<(Duration, usize, Timer<Identity>)>,
        packets: VecDeque<(usize, Bytes)>,
        cut: HashSet<(usize, usize)>,
        crashed: HashSet<usize>,
    }

    impl Net {
        /// `n` nodes, each introduced to node 0.
        fn new(n: usize) -> Self {
            let ids: Vec<_> = (0..n)
                .map(|i| {
                    let addr = SocketAddr::from(([10, 0, 0, i as u8 + 1], 7000));
                    Identity::new(NodeId::from(format!("n{i}").as_str()), addr, 1)
                })
                .collect();
            let nodes = ids
                .iter()
                .enumerate()
                .map(|(i, id)| Membership::new(id.clone(), BOUND, BOUND * 60, i as u64))
                .collect();
            let mut net = Self {
                nodes,
                ids,
                now: Duration::ZERO,
                timers: Vec::new(),
                packets: VecDeque::new(),
                cut: HashSet::new(),
                crashed: HashSet::new(),
            };
            for i in 1..n {
                net.nodes[i].announce(net.ids[0].clone());
                net.collect(i);
            }
            net
        }

        fn index(&self, id: &Identity) -> usize {
            self.ids.iter().position(|i| i.addr == id.addr).unwrap()
        }

        fn collect(&mut self, from: usize) {
            for output in self.nodes[from].drain() {
                match output {
                    Output::Send(to, packet) => {
                        let to = self.index(&to);
                        if !self.cut.contains(&(from, to)) && !self.cut.contains(&(to, from)) {
                            self.packets.push_back((to, packet));
                        }
                    }
                    Output::Schedule(after, timer) => {
                        self.timers.push((self.now + after, from, timer));
                    }
                    Output::Up(_) | Output::Down(_) => {}
                }
            }
        }

        fn run_until(&mut self, until: Duration) {
            loop {
                while let Some((to, packet)) = self.packets.pop_front() {
                    if !self.crashed.contains(&to) {
                        let _ = self.nodes[to].receive(&packet);
                        self.collect(to);
                    }
                }
                let Some(next) = (0..self.timers.len())
                    .filter(|&i| self.timers[i].0 <= until)
                    .min_by_key(|&i| self.timers[i].0)
                else {
                    break;
                };
                let (at, node, timer) = self.timers.remove(next);
                self.now = at;
                if !self.crashed.contains(&node) {
                    self.nodes[node].timer(timer);
                    self.collect(node);
                }
            }
            self.now = until;
        }

        fn holds_up(&self, a: usize, b: usize) -> bool {
            self.nodes[a].up().any(|id| id.node == self.ids[b].node)
        }
    }

    #[test]
    fn members_find_each_other_through_one_introduction() {
        let mut net = Net::new(4);
        net.run_until(Duration::from_secs(3));
        for a in 0..4 {
            for b in (0..4).filter(|&b| b != a) {
                assert!(net.holds_up(a, b), "n{a} does not see n{b}");
            }
        }
    }

    #[test]
    fn a_crashed_member_is_declared_down_by_all() {
        let mut net = Net::new(3);
        net.run_until(Duration::from_secs(3));
        net.crashed.insert(2);
        let crashed_at = net.now;
        while net.holds_up(0, 2) || net.holds_up(1, 2) {
            assert!(net.now - crashed_at < BOUND * 8, "still up after 8 bounds");
            net.run_until(net.now + Duration::from_millis(10));
        }
        assert!(net.holds_up(0, 1) && net.holds_up(1, 0));
    }

    #[test]
    fn a_cut_link_is_bridged_by_indirect_probes() {
        let mut net = Net::new(3);
        net.run_until(Duration::from_secs(3));
        net.cut.insert((0, 1));
        for _ in 0..2_000 {
            net.run_until(net.now + Duration::from_millis(10));
            assert!(
                net.holds_up(0, 1) && net.holds_up(1, 0),
                "n0 and n1 reach each other through n2"
            );
        }
    }
}
