//! The per-node protocol as one plain state machine: no I/O, no tokio, no clock reads.
//!
//! [`NodeState`] ties the pure pieces together: the outbox (this node's event numbers, the replay
//! ring, the outgoing links), the sequence tracker, the member table, SWIM, the peer
//! confirmations and strong updates' intents. Time comes in as coarse-clock milliseconds.
//!
//! Call order: feed an input (`handle_*`, `publish`, `open_link`, …), then drain
//! [`poll_transmit`](NodeState::poll_transmit) (frames for outgoing links) and
//! [`poll_output`](NodeState::poll_output) (what the shell must do: tell subscribers, empty
//! caches, dial, settle intents, move the peer lease), in that order and before the next input;
//! then call [`handle_timeout`](NodeState::handle_timeout) when
//! [`poll_timeout`](NodeState::poll_timeout) says (the heartbeat and SWIM's timers). The order matters: a pong vouches for the events queued on its link
//! before it, and caches are emptied before the lease that lets them serve again is renewed.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::slice;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tracing::span::EnteredSpan;

use super::confirm::{Confirmations, PongVerdict};
use super::ownership::Owners;
use super::replay::{self, ReplayRing};
use super::sequence::{Delivery, SequenceTracker};
use crate::clock::{Millis, millis};
use crate::config::Config;
use crate::event::ClusterEvent;
use crate::id::NodeId;
use crate::membership::{
    self, Admission, Identity, Member, Membership, Refusal, Roster, RosterConfig, Timer,
};
use crate::metrics::ClusterCounters;
use crate::transport::{self, LinkError};
use crate::wire::{Change, Event, Frame, Hello, PeerInfo, WireError};

/// Where an outgoing link's event stream starts, as its hello tells the peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LinkStart {
    /// The last event published before the link: it carries every later one.
    pub(crate) seq: u64,
    /// The oldest event the sender can still replay.
    pub(crate) replay_from: u64,
}

impl LinkStart {
    /// The answer to a hello that opens no link (a node that dialed itself).
    pub(crate) const NONE: Self = Self {
        seq: 0,
        replay_from: 0,
    };

    /// Refuses a start no sender can have: a replay ring beginning past its next event, or a
    /// sequence space used up.
    pub(crate) fn check(&self) -> Result<(), WireError> {
        if self.seq == u64::MAX || self.replay_from > self.seq + 1 {
            return Err(WireError::Unexpected(
                "a hello whose replay ring starts past its next event",
            ));
        }
        Ok(())
    }
}

/// One outgoing link, as the state knows it; the shell keeps its queue under the same id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct LinkId(u64);

/// A frame to queue on outgoing links.
#[derive(Debug)]
pub(crate) struct Transmit {
    pub(crate) to: To,
    pub(crate) frame: Bytes,
}

/// Which outgoing links a frame is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum To {
    /// One link.
    Link(LinkId),
    /// Every link open now: an event, or news for every peer. (One transmit, not one per link:
    /// this is the path of every change.)
    Every,
}

/// The other end of an inbound link, as its hello introduced it.
#[derive(Clone, Debug)]
pub(crate) struct Peer {
    pub(crate) node: NodeId,
    pub(crate) incarnation: u64,
    /// Where it accepts links: this node's outgoing link to it is keyed by that address.
    pub(crate) addr: SocketAddr,
}

/// What the shell must do, in the order the state decided it.
#[derive(Debug)]
pub(crate) enum Output {
    /// Tell the node's subscribers.
    Notify(ClusterEvent),
    /// Empty the caches whose promise rests on the mesh (those that watch no tables, and the
    /// strong ones): events they needed may be lost.
    Flush,
    /// Start a dialer for this address.
    Dial(SocketAddr),
    /// Drop the link's queue: its writer sends what is queued, then closes.
    CloseLink(LinkId),
    /// Every member that had to acknowledge this intent did.
    IntentSettled(u64),
    /// Set the peer lease: every live member confirmed since then (`None`: not all did).
    PeerLease(Option<Millis>),
    /// The members that own keys of partitioned caches changed: a link came up or went down.
    Owners(Owners),
    /// A ping to `peer` was queued, whose pong will answer `nonce`: the shell times the round
    /// trip (it reads a finer clock than the state is given), for
    /// [`Member::round_trip`] and the metrics.
    Pinged { peer: NodeId, nonce: u64 },
}

/// What to do with an inbound frame once the state handled it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Inbound {
    /// Nothing more.
    Done,
    /// Apply the event to its cache, then, for an intent, call
    /// [`NodeState::acknowledge`].
    Apply,
    /// The peer left: close the link.
    Closed,
    /// Serve the request (a partitioned cache's key this node owns), then call
    /// [`NodeState::answer`].
    Serve,
    /// Hand the answer to whoever asked.
    Answer,
}

/// How an acceptor answers a hello: its own hello, telling the dialer where to resume.
#[derive(Debug)]
pub(crate) struct Greeting {
    /// The dialer, admitted; `None` if the hello was this node's own (it dialed itself, or
    /// another node uses its name, which the dialer sorts out): the link then ends.
    pub(crate) peer: Option<Peer>,
    /// The answer to send.
    pub(crate) answer: Bytes,
}

/// A dialer's link after the acceptor's answer.
#[derive(Debug)]
pub(crate) struct Answered {
    pub(crate) peer: NodeId,
    pub(crate) incarnation: u64,
    /// Earlier events the peer lacks, to send before the link's queue.
    pub(crate) replay: Vec<Bytes>,
}

/// One outgoing link.
#[derive(Debug)]
struct OutLink {
    id: LinkId,
    /// The peer's listen address.
    addr: SocketAddr,
    /// The peer's name, once its handshake told it.
    peer: Option<NodeId>,
}

/// The whole protocol of one node. See the module docs for the call order.
pub(crate) struct NodeState {
    id: NodeId,
    incarnation: u64,
    addr: SocketAddr,
    bound: Duration,
    max_frame_bytes: usize,
    /// The latest event this node originated.
    seq: u64,
    ring: ReplayRing,
    links: Vec<OutLink>,
    next_link: u64,
    tracker: SequenceTracker<NodeId>,
    /// Who is in the cluster: members by name, seeds not yet resolved.
    roster: Roster,
    membership: Membership,
    confirmations: Confirmations<NodeId>,
    /// Strong updates awaiting acknowledgements: intent sequence → who has yet to answer.
    intents: BTreeMap<u64, BTreeSet<NodeId>>,
    /// The peer lease last told to the shell.
    lease: Option<Option<Millis>>,
    /// The heartbeat's period (a quarter of the bound) and its next tick.
    tick_every: Millis,
    next_tick: Millis,
    /// SWIM's timers by deadline, in the order scheduled among equal deadlines.
    timers: BTreeMap<(Millis, u64), Timer<Identity>>,
    timers_scheduled: u64,
    /// The last request this node sent to a key's owner.
    requests: u64,
    stopped: bool,
    counters: Arc<ClusterCounters>,
    transmits: VecDeque<Transmit>,
    outputs: VecDeque<Output>,
}

impl NodeState {
    /// The state of node `id`, process `incarnation`, accepting links at `addr`.
    pub(crate) fn new(
        id: NodeId,
        addr: SocketAddr,
        incarnation: u64,
        rng_seed: u64,
        config: &Config,
        counters: Arc<ClusterCounters>,
    ) -> Self {
        let grace = config.grace();
        let membership = Membership::new(
            Identity::new(id.clone(), addr, incarnation),
            config.max_staleness,
            grace,
            rng_seed,
        );
        let roster = Roster::new(
            id.clone(),
            addr,
            RosterConfig {
                max_members: config.max_members,
                forget_after: millis(grace),
                seed_ttl: millis(grace.max(config.seed_refresh.saturating_mul(2))),
            },
        );
        let mut state = Self {
            id,
            incarnation,
            addr,
            bound: config.max_staleness,
            max_frame_bytes: config.max_frame_bytes,
            seq: 0,
            ring: ReplayRing::new(config.replay_buffer),
            links: Vec::new(),
            next_link: 0,
            tracker: SequenceTracker::default(),
            roster,
            membership,
            confirmations: Confirmations::new(millis(config.max_staleness)),
            intents: BTreeMap::new(),
            lease: None,
            tick_every: millis(config.max_staleness / 4).max(1),
            next_tick: 0,
            timers: BTreeMap::new(),
            timers_scheduled: 0,
            requests: 0,
            stopped: false,
            counters,
            transmits: VecDeque::new(),
            outputs: VecDeque::new(),
        };
        // With no peers yet, there is nothing to confirm: peer-only caches serve from the start.
        state.refresh_lease();
        state
    }

    /// The next frame to queue on an outgoing link.
    pub(crate) fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next thing for the shell to do.
    pub(crate) fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    // ---- The outbox.

    /// Numbers a change to `cache` as this node's next event and queues it on every link.
    ///
    /// A replicated value too large for a frame goes as an invalidation instead: peers would
    /// refuse the frame, and replaying it from the ring would break their links over and over.
    /// (Keys are checked by the cache to fit with room to spare.)
    pub(crate) fn publish(&mut self, cache: &str, change: Change<'_>) -> u64 {
        self.seq += 1;
        let seq = self.seq;
        let event = |change| {
            Frame::Event(Event {
                node: self.id.as_str(),
                incarnation: self.incarnation,
                seq,
                cache,
                change,
            })
            .encode()
        };
        let mut frame = event(change);
        if frame.len() > self.max_frame_bytes
            && let Change::Replicate { key, .. } = change
        {
            self.counters.replicas_downgraded.incr();
            tracing::warn!(node = %self.id, %cache, bytes = frame.len(), "a replicated value is too large for a frame; invalidating instead");
            frame = event(Change::Invalidate { key });
        }
        self.ring.push(seq, &frame);
        self.broadcast(&frame);
        self.counters.events_sent.incr();
        seq
    }

    /// Announces a strong update of `key` in `cache` as an event, to be acknowledged by every
    /// live member: [`Output::IntentSettled`] follows once all did (at once, if none is live).
    pub(crate) fn publish_intent(&mut self, cache: &str, key: &[u8]) -> u64 {
        let waiting: BTreeSet<NodeId> = self.confirmations.live().cloned().collect();
        let seq = self.publish(cache, Change::Intent { key });
        if waiting.is_empty() {
            self.outputs.push_back(Output::IntentSettled(seq));
        } else {
            self.intents.insert(seq, waiting);
        }
        seq
    }

    /// Stops waiting for acknowledgements of intent `seq` (its bound passed).
    pub(crate) fn abandon_intent(&mut self, seq: u64) {
        self.intents.remove(&seq);
    }

    /// This node's events after `after` up to `upto` still in its replay ring, oldest first.
    pub(crate) fn replay(&self, after: u64, upto: u64) -> Vec<Bytes> {
        let events = self.ring.range(after, upto);
        self.counters.events_replayed.add(events.len() as u64);
        events
    }

    /// Opens a new outgoing link to `addr`. Returns where it starts: every event after the
    /// returned one is queued on it.
    pub(crate) fn open_link(&mut self, addr: SocketAddr) -> (LinkId, LinkStart) {
        let id = LinkId(self.next_link);
        self.next_link += 1;
        self.links.push(OutLink {
            id,
            addr,
            peer: None,
        });
        let start = LinkStart {
            seq: self.seq,
            replay_from: self.ring.replay_from(self.seq),
        };
        (id, start)
    }

    /// Forgets an outgoing link whose queue overflowed or whose writer is gone.
    pub(crate) fn close_link(&mut self, link: LinkId) {
        self.close_links_where(|l| l.id == link);
    }

    /// Closes every outgoing link; each dialer opens a new one, and the peer says where its
    /// stream resumes.
    pub(crate) fn close_all_links(&mut self) {
        self.close_links_where(|_| true);
    }

    fn close_links_where(&mut self, close: impl Fn(&OutLink) -> bool) {
        let outputs = &mut self.outputs;
        self.links.retain(|link| {
            let closing = close(link);
            if closing {
                outputs.push_back(Output::CloseLink(link.id));
            }
            !closing
        });
    }

    /// Queues a frame that is not an event (it takes no sequence number) on every link.
    fn broadcast(&mut self, frame: &Bytes) {
        if !self.links.is_empty() {
            self.transmits.push_back(Transmit {
                to: To::Every,
                frame: frame.clone(),
            });
        }
    }

    /// Queues a frame on the link to the node listening at `to`; without one, it is lost.
    fn send_to(&mut self, to: SocketAddr, frame: &Bytes) {
        for link in self.links.iter().filter(|l| l.addr == to) {
            self.transmits.push_back(Transmit {
                to: To::Link(link.id),
                frame: frame.clone(),
            });
        }
    }

    // ---- Links.

    /// This node's hello: its name, process and address, where the link's stream starts, and
    /// the members it reached, as many as fit half a frame.
    pub(crate) fn hello(&self, start: LinkStart) -> Bytes {
        // A gossiped member costs its name plus at most 30 bytes (varints, an IPv6 address); the
        // whole hello must fit what a node reads before it accepted the hello.
        let mut budget = (self.max_frame_bytes / 2).min(transport::MAX_HELLO_BYTES / 2);
        let peers = self
            .roster
            .reached()
            .into_iter()
            .take_while(|(node, _)| {
                let cost = node.as_str().len() + 30;
                let fits = cost <= budget;
                budget = budget.saturating_sub(cost);
                fits
            })
            .map(|(node, entry)| PeerInfo {
                node: node.as_str(),
                incarnation: entry.incarnation,
                addr: entry.addr,
            })
            .collect();
        Frame::Hello(Hello {
            node: self.id.as_str(),
            incarnation: self.incarnation,
            listen: self.addr,
            seq: start.seq,
            replay_from: start.replay_from,
            peers,
        })
        .encode()
    }

    /// An inbound link opened with `hello`. Admits its sender and says where it should resume:
    /// it replays the rest from its ring, so only what fell out of the ring is missed.
    ///
    /// A hello claiming fewer events than this node already applied of that process is refused:
    /// accepted, it would make the sender's real events look like duplicates.
    pub(crate) fn handle_hello(
        &mut self,
        hello: &Hello<'_>,
        now: Millis,
    ) -> Result<Greeting, LinkError> {
        if hello.node == self.id.as_str() {
            return Ok(Greeting {
                peer: None,
                answer: self.hello(LinkStart::NONE),
            });
        }
        let start = LinkStart {
            seq: hello.seq,
            replay_from: hello.replay_from,
        };
        start.check()?;
        let peer = Peer {
            node: NodeId::from(hello.node),
            incarnation: hello.incarnation,
            addr: hello.listen,
        };
        self.meet(&peer.node, peer.incarnation, peer.addr, None, now)?;
        let applied = match self.tracker.applied(&peer.node) {
            Some((known, applied)) if known == peer.incarnation => applied,
            _ => 0,
        };
        if start.seq < applied {
            return Err(WireError::Unexpected(
                "a hello claiming fewer events than were applied of its process",
            )
            .into());
        }
        // Judged before answering: the answer tells the dialer where to resume, and the events
        // it replays must find the tracker already expecting them.
        let resume = replay::resume_point(applied, start.seq, start.replay_from);
        let delivery = self.tracker.hello(&peer.node, peer.incarnation, resume);
        self.judge(&peer.node, delivery);
        let answer = self.hello(LinkStart {
            seq: resume,
            replay_from: 0,
        });
        self.contact(&peer.node, now);
        self.hear_of(&hello.peers, now);
        Ok(Greeting {
            peer: Some(peer),
            answer,
        })
    }

    /// The acceptor at `addr` answered this node's outgoing link, which started at `start`, with
    /// `hello`. Admits it, and returns what to replay to it; `None` when the address is
    /// this node's own.
    pub(crate) fn handle_answer(
        &mut self,
        addr: SocketAddr,
        start: LinkStart,
        hello: &Hello<'_>,
        now: Millis,
    ) -> Result<Option<Answered>, LinkError> {
        if hello.node == self.id.as_str() {
            if hello.incarnation == self.incarnation {
                self.myself_at(addr);
                return Ok(None);
            }
            return Err(WireError::Unexpected("another node uses this node's name").into());
        }
        if hello.seq > start.seq {
            return Err(WireError::Unexpected("a peer claims events this node never sent").into());
        }
        let peer = NodeId::from(hello.node);
        self.meet(&peer, hello.incarnation, hello.listen, Some(addr), now)?;
        self.hear_of(&hello.peers, now);
        Ok(Some(Answered {
            peer,
            incarnation: hello.incarnation,
            replay: self.replay(hello.seq, start.seq),
        }))
    }

    /// The outgoing `link` to `addr` is up, to `peer`, a process of `incarnation`: it is
    /// introduced to the other members and to SWIM.
    pub(crate) fn handle_link_up(
        &mut self,
        link: LinkId,
        addr: SocketAddr,
        peer: &NodeId,
        incarnation: u64,
        now: Millis,
    ) {
        if let Some(link) = self.links.iter_mut().find(|l| l.id == link) {
            link.peer = Some(peer.clone());
        }
        self.contact(peer, now);
        self.broadcast(
            &Frame::Peers(vec![PeerInfo {
                node: peer.as_str(),
                incarnation,
                addr,
            }])
            .encode(),
        );
        let identity = Identity::new(peer.clone(), addr, incarnation);
        self.swim(now, |membership| membership.announce(identity));
        self.set_connected(addr, peer, true);
    }

    /// The outgoing link to `peer` at `addr` closed.
    pub(crate) fn handle_link_down(&mut self, addr: SocketAddr, peer: &NodeId) {
        self.set_connected(addr, peer, false);
    }

    fn set_connected(&mut self, addr: SocketAddr, node: &NodeId, connected: bool) {
        self.roster.set_connected(node, addr, connected);
        self.outputs.push_back(Output::Owners(self.owners()));
        let node = node.clone();
        self.notify(if connected {
            ClusterEvent::PeerUp { node, addr }
        } else {
            ClusterEvent::PeerDown { node, addr }
        });
    }

    /// A frame arrived on the inbound link from `from`.
    pub(crate) fn handle_frame(
        &mut self,
        from: &Peer,
        frame: &Frame<'_>,
        now: Millis,
    ) -> Result<Inbound, WireError> {
        match frame {
            Frame::Event(event) => return self.handle_event(from, event),
            Frame::Peers(members) => self.hear_of(members, now),
            Frame::Ping { nonce } => {
                self.contact(&from.node, now);
                self.pong(from.addr, *nonce, now);
            }
            Frame::Pong {
                nonce,
                incarnation,
                seq,
                heard,
            } => self.on_pong(
                &from.node,
                *nonce,
                *incarnation,
                *seq,
                heard.as_deref(),
                now,
            ),
            Frame::IntentAck { seq } => self.on_intent_ack(&from.node, *seq),
            Frame::Leave => {
                self.on_leave(&from.node, from.addr, now);
                return Ok(Inbound::Closed);
            }
            Frame::Swim(packet) => self.swim(now, |membership| {
                if let Err(error) = membership.receive(packet) {
                    tracing::debug!(origin = %from.node, %error, "ignored a membership packet");
                }
            }),
            Frame::Request { .. } => return Ok(Inbound::Serve),
            Frame::Answer { .. } => return Ok(Inbound::Answer),
            Frame::Hello(_) => return Err(WireError::Unexpected("a second hello")),
        }
        Ok(Inbound::Done)
    }

    /// An event arrived on the inbound link from `from`: [`handle_frame`](Self::handle_frame)
    /// for the frame that needs no time, the one on every change's path.
    pub(crate) fn handle_event(
        &mut self,
        from: &Peer,
        event: &Event<'_>,
    ) -> Result<Inbound, WireError> {
        if event.node != from.node.as_str() || event.incarnation != from.incarnation {
            return Err(WireError::Unexpected("an event from another origin"));
        }
        let delivery = self.tracker.event(&from.node, event.incarnation, event.seq);
        Ok(if self.judge(&from.node, delivery) {
            Inbound::Apply
        } else {
            Inbound::Done
        })
    }

    /// Asks `owner` for `key` of `cache` on this node's link to it, behind every event this
    /// node published before; returns the request's id, or `None` without a link to `owner`.
    pub(crate) fn request(&mut self, owner: &NodeId, cache: &str, key: &[u8]) -> Option<u64> {
        let link = self.links.iter().find(|l| l.peer.as_ref() == Some(owner))?;
        self.requests += 1;
        let id = self.requests;
        self.transmits.push_back(Transmit {
            to: To::Link(link.id),
            frame: Frame::Request { id, cache, key }.encode(),
        });
        Some(id)
    }

    /// Answers `from`'s request `id` on this node's own link to it.
    pub(crate) fn answer(&mut self, from: &Peer, id: u64, value: Option<&[u8]>) {
        self.send_to(from.addr, &Frame::Answer { id, value }.encode());
    }

    /// The members that may own keys: this node and the peers its links reach.
    fn owners(&self) -> Owners {
        Owners::new(
            self.id.clone(),
            self.roster
                .members()
                .filter(|(_, entry)| entry.connected)
                .map(|(node, _)| node.clone()),
        )
    }

    /// This node applied intent `seq` from `from`: acknowledged on this node's own link to it.
    pub(crate) fn acknowledge(&mut self, from: &Peer, seq: u64) {
        self.send_to(from.addr, &Frame::IntentAck { seq }.encode());
    }

    /// Acts on the tracker's verdict; returns whether the event itself should be applied.
    fn judge(&mut self, origin: &NodeId, delivery: Delivery) -> bool {
        match delivery {
            Delivery::Apply => true,
            Delivery::Duplicate => {
                self.counters.events_duplicate.incr();
                false
            }
            Delivery::Retired => false,
            Delivery::Gap { missed } => {
                tracing::info!(node = %self.id, %origin, ?missed, "missed peer events; flushing caches");
                self.counters.gaps.incr();
                self.outputs.push_back(Output::Flush);
                self.notify(ClusterEvent::Gap {
                    origin: origin.clone(),
                    missed,
                });
                true
            }
            Delivery::Restarted => {
                // What its previous process sent last may be lost; the log has those writes.
                tracing::info!(node = %self.id, %origin, "a peer restarted; flushing caches");
                self.counters.gaps.incr();
                self.outputs.push_back(Output::Flush);
                true
            }
        }
    }

    /// Answers a ping from the node listening at `to`, behind every event already queued to it.
    fn pong(&mut self, to: SocketAddr, nonce: u64, now: Millis) {
        // At most half a frame of names; more, and the pong testifies nothing.
        let budget = self.max_frame_bytes / 2;
        let window = millis(self.bound.saturating_mul(2));
        let heard = self.roster.heard_lately(now, window, budget);
        let frame = Frame::Pong {
            nonce,
            incarnation: self.incarnation,
            seq: self.seq,
            heard: heard.map(|heard| heard.into_iter().map(NodeId::as_str).collect()),
        }
        .encode();
        self.send_to(to, &frame);
    }

    /// A pong from `origin` arrived on its link.
    fn on_pong(
        &mut self,
        origin: &NodeId,
        nonce: u64,
        incarnation: u64,
        seq: u64,
        heard: Option<&[&str]>,
        now: Millis,
    ) {
        self.roster.heard(origin, now);
        let applied = self
            .tracker
            .applied(origin)
            .and_then(|(known, applied)| (known == incarnation).then_some(applied));
        let verdict = self.confirmations.pong(
            origin,
            nonce,
            seq,
            applied,
            heard.map(|heard| heard.iter().map(|&name| NodeId::from(name)).collect()),
            now,
        );
        if verdict == PongVerdict::Confirmed {
            self.refresh_lease();
            self.notify(ClusterEvent::Confirmed {
                node: origin.clone(),
            });
        }
    }

    /// `origin` applied this node's intent event `seq`.
    fn on_intent_ack(&mut self, origin: &NodeId, seq: u64) {
        if let Some(waiting) = self.intents.get_mut(&seq) {
            waiting.remove(origin);
            if waiting.is_empty() {
                self.intents.remove(&seq);
                self.outputs.push_back(Output::IntentSettled(seq));
            }
        }
    }

    /// The node listening at `addr`, `origin`, said it is leaving: forget it at once rather than
    /// wait for its silence.
    fn on_leave(&mut self, origin: &NodeId, addr: SocketAddr, now: Millis) {
        let _span = self.membership_span("member_left", slice::from_ref(origin));
        self.roster.leave(origin, now);
        self.confirmations.leave(origin);
        self.close_links_where(|link| link.addr == addr);
        self.count_members();
        tracing::info!(node = %self.id, peer = %origin, "a peer left");
        self.notify(ClusterEvent::PeerLeft {
            node: origin.clone(),
        });
    }

    // ---- Members.

    /// Seeds resolved to `addrs`: given as addresses (`fixed`) or found by resolving names.
    pub(crate) fn add_seeds(&mut self, addrs: &[SocketAddr], fixed: bool, now: Millis) {
        self.roster.add_seeds(addrs, fixed, now);
        self.count_members();
    }

    /// `addr` turned out to be this node itself (a seed list that includes it): not dialed again.
    fn myself_at(&mut self, addr: SocketAddr) {
        let _ = self
            .roster
            .meet(&self.id, self.incarnation, self.addr, Some(addr), 0);
        self.count_members();
    }

    /// Whether the dialer of `addr` should keep trying it: a member accepts links there, or a
    /// seed no member was found at. A dialer told no must end.
    pub(crate) fn wants(&mut self, addr: SocketAddr) -> bool {
        !self.stopped && self.roster.keep_dialing(addr)
    }

    /// Whether `peer` showed signs of life within `window`.
    pub(crate) fn heard_within(&self, peer: &NodeId, window: Duration, now: Millis) -> bool {
        self.roster
            .get(peer)
            .is_some_and(|entry| now.saturating_sub(entry.last_heard) <= millis(window))
    }

    /// How many members this node's links reach now.
    pub(crate) fn connected_peers(&self) -> usize {
        self.roster.members().filter(|(_, e)| e.connected).count()
    }

    /// The members, as [`Cluster::members`](crate::Cluster::members) shows them.
    pub(crate) fn members(&self, now: Millis) -> Vec<Member> {
        let live: BTreeSet<&NodeId> = self.confirmations.live().collect();
        let mut members: Vec<Member> = self
            .roster
            .members()
            .map(|(node, entry)| Member {
                addr: entry.addr,
                node: Some(node.clone()),
                incarnation: Some(entry.incarnation),
                swim: self.membership.state(node, entry.incarnation),
                last_heard: Some(Duration::from_millis(now.saturating_sub(entry.last_heard))),
                last_confirmed: self
                    .confirmations
                    .confirmed(node)
                    .map(|at| Duration::from_millis(now.saturating_sub(at))),
                // Timed by the shell.
                round_trip: None,
                connected: entry.connected,
                live: live.contains(node),
                up: entry.swim_up,
            })
            .chain(self.roster.unresolved_seeds().map(|addr| Member {
                addr,
                node: None,
                incarnation: None,
                swim: None,
                last_heard: None,
                last_confirmed: None,
                round_trip: None,
                connected: false,
                live: false,
                up: false,
            }))
            .collect();
        members.sort_by(|a, b| (&a.node, a.addr).cmp(&(&b.node, b.addr)));
        members
    }

    /// Admits a peer met on a link, or says why not (the link must then close).
    fn meet(
        &mut self,
        peer: &NodeId,
        incarnation: u64,
        addr: SocketAddr,
        dialed: Option<SocketAddr>,
        now: Millis,
    ) -> Result<(), LinkError> {
        let admission = self.roster.meet(peer, incarnation, addr, dialed, now);
        let result = match admission {
            Ok(admission) => {
                self.admitted(peer, addr, &admission);
                Ok(())
            }
            Err(Refusal::Myself) => Err(Refusal::Myself),
            Err(refusal) => {
                self.counters.members_refused.incr();
                tracing::warn!(node = %self.id, %peer, %addr, %refusal, "refused a peer");
                Err(refusal)
            }
        };
        self.count_members();
        result.map_err(|refusal| LinkError::Refused(refusal.into()))
    }

    /// Peers told of members (in a hello, in a peers frame): admits those it can.
    fn hear_of(&mut self, members: &[PeerInfo<'_>], now: Millis) {
        for member in members {
            let node = NodeId::from(member.node);
            let news = self
                .roster
                .hear_of(&node, member.incarnation, member.addr, now);
            self.on_news(&node, member.addr, news);
        }
        self.count_members();
    }

    /// Acts on news of a member (gossip, SWIM): its admission, or its refusal, counted when the
    /// table was full or the name bad. News of an older or forgotten process, or of this node,
    /// is routine.
    fn on_news(&mut self, node: &NodeId, addr: SocketAddr, news: Result<Admission, Refusal>) {
        match news {
            Ok(admission) => self.admitted(node, addr, &admission),
            Err(Refusal::Full | Refusal::BadName) => self.counters.members_refused.incr(),
            Err(Refusal::Myself | Refusal::Stale | Refusal::Forgotten) => {}
        }
    }

    /// Acts on a member's admission: a replaced entry's links to its old address close.
    fn admitted(&mut self, node: &NodeId, addr: SocketAddr, admission: &Admission) {
        if let &Admission::Replaced { old_addr, .. } = admission {
            let _span = self.membership_span("member_replaced", slice::from_ref(node));
            if old_addr != addr {
                self.close_links_where(|link| link.addr == old_addr);
            }
            tracing::info!(node = %self.id, peer = %node, %old_addr, %addr, "a member came back");
            self.notify(ClusterEvent::MemberReplaced {
                node: node.clone(),
                old_addr,
                addr,
            });
        }
    }

    /// `origin`, a member, showed signs of life (a hello, a ping).
    fn contact(&mut self, origin: &NodeId, now: Millis) {
        self.roster.heard(origin, now);
        if self.roster.get(origin).is_some() {
            self.confirmations.contact(origin, now);
            self.refresh_lease();
        }
    }

    /// After the member table changed: tells the majority rule what it counts, and dials the
    /// addresses that have no dialer yet.
    fn count_members(&mut self) {
        self.confirmations.set_known_peers(self.roster.counted());
        self.refresh_lease();
        let dials = self.roster.dials();
        if !self.stopped {
            self.outputs.extend(dials.into_iter().map(Output::Dial));
        }
    }

    // ---- SWIM.

    /// Runs one step of the SWIM state machine, then does what it asked: sends its packets,
    /// schedules its timers, admits members it found, and tells confirmations who is up.
    fn swim(&mut self, now: Millis, step: impl FnOnce(&mut Membership)) {
        step(&mut self.membership);
        let up: BTreeSet<NodeId> = self.membership.up().map(|id| id.node.clone()).collect();
        for output in self.membership.drain() {
            match output {
                membership::Output::Send(to, packet) => {
                    self.send_to(to.addr, &Frame::Swim(&packet).encode());
                }
                membership::Output::Schedule(after, timer) => {
                    self.timers_scheduled += 1;
                    let due = now.saturating_add(millis(after));
                    self.timers.insert((due, self.timers_scheduled), timer);
                }
                membership::Output::Up(id) => {
                    let _span = self.membership_span("member_up", slice::from_ref(&id.node));
                    let admission = self.roster.swim_up(&id.node, id.incarnation, id.addr, now);
                    self.on_news(&id.node, id.addr, admission);
                    self.notify(ClusterEvent::MemberUp {
                        node: id.node,
                        addr: id.addr,
                    });
                }
                membership::Output::Down(id) => {
                    let _span = self.membership_span("member_down", slice::from_ref(&id.node));
                    self.roster.swim_down(&id.node, id.incarnation);
                    self.notify(ClusterEvent::MemberDown {
                        node: id.node,
                        addr: id.addr,
                    });
                }
            }
        }
        // SWIM may hold up names the member table refused (full): those are not waited for.
        let up: BTreeSet<NodeId> = up
            .into_iter()
            .filter(|n| self.roster.get(n).is_some())
            .collect();
        self.confirmations.swim_up(&up, now);
        self.count_members();
    }

    // ---- Time.

    /// When [`handle_timeout`](Self::handle_timeout) is due next: the heartbeat's tick or a SWIM
    /// timer, whichever comes first. `None` once stopped.
    pub(crate) fn poll_timeout(&self) -> Option<Millis> {
        if self.stopped {
            return None;
        }
        let swim = self.timers.first_key_value().map(|(&(due, _), _)| due);
        Some(swim.map_or(self.next_tick, |swim| swim.min(self.next_tick)))
    }

    /// Fires the SWIM timers due by `now`, in deadline order, and the heartbeat if it is due.
    pub(crate) fn handle_timeout(&mut self, now: Millis) {
        while let Some(entry) = self.timers.first_entry()
            && entry.key().0 <= now
        {
            let timer = entry.remove();
            self.swim(now, |membership| membership.timer(timer));
        }
        if self.next_tick <= now {
            self.next_tick = now.saturating_add(self.tick_every);
            self.tick(now);
        }
    }

    /// One heartbeat (every quarter of the bound): pings every linked peer, retires the silent
    /// ones and closes their links (a stuck connection then gets replaced), and forgets the
    /// members that are due.
    fn tick(&mut self, now: Millis) {
        for link in &self.links {
            if let Some(peer) = &link.peer {
                let nonce = self.confirmations.ping(peer, now);
                self.transmits.push_back(Transmit {
                    to: To::Link(link.id),
                    frame: Frame::Ping { nonce }.encode(),
                });
                self.outputs.push_back(Output::Pinged {
                    peer: peer.clone(),
                    nonce,
                });
            }
        }
        let dead = self.confirmations.expire(now);
        if dead.is_empty() {
            self.refresh_lease();
        } else {
            self.retire(dead);
        }
        self.forget_due(now);
    }

    /// Retires the members that went `dead` (silent, on a majority's testimony): closes their
    /// links and stops waiting for them.
    fn retire(&mut self, dead: Vec<NodeId>) {
        let _span = self.membership_span("members_retired", &dead);
        self.close_links_where(|link| link.peer.as_ref().is_some_and(|p| dead.contains(p)));
        // They may have written, and sent events now lost, until their own leases ended; those
        // keys are unknown, so the caches that only they could have told are emptied, before
        // the lease (no longer waiting for them) lets those caches serve again.
        tracing::info!(node = %self.id, peers = ?dead, "peers went silent; flushing peer-only caches");
        self.outputs.push_back(Output::Flush);
        self.refresh_lease();
        for node in dead {
            self.notify(ClusterEvent::PeerSilent { node });
        }
    }

    /// Forgets the members the member table says are due (see `membership::roster`), and the
    /// state kept for each. Those this node reached go only once retired (on testimony), and
    /// only while this node still hears a majority.
    fn forget_due(&mut self, now: Millis) {
        let majority = self.confirmations.has_fresh_majority(now);
        let live: BTreeSet<NodeId> = self.confirmations.live().cloned().collect();
        let forgotten = self
            .roster
            .expire(now, |node| majority && !live.contains(node));
        if forgotten.is_empty() {
            return;
        }
        let names: Vec<NodeId> = forgotten.iter().map(|(node, _)| node.clone()).collect();
        let _span = self.membership_span("members_forgotten", &names);
        for (node, _) in &forgotten {
            self.confirmations.leave(node);
            self.tracker.forget(node);
        }
        self.close_links_where(|link| forgotten.iter().any(|(_, e)| e.addr == link.addr));
        self.count_members();
        for (node, entry) in forgotten {
            self.counters.members_forgotten.incr();
            tracing::info!(node = %self.id, peer = %node, addr = %entry.addr, "forgot a member");
            self.notify(ClusterEvent::MemberForgotten {
                node,
                addr: entry.addr,
            });
        }
    }

    /// The node is stopping: it tells SWIM and every peer it is leaving (each link's writer
    /// sends that last, then closes), and dials nothing more.
    pub(crate) fn stop(&mut self) {
        self.stopped = true;
        self.membership.leave();
        for output in self.membership.drain() {
            if let membership::Output::Send(to, packet) = output {
                self.send_to(to.addr, &Frame::Swim(&packet).encode());
            }
        }
        self.broadcast(&Frame::Leave.encode());
        self.close_all_links();
    }

    // ---- Outputs.

    /// Tells the shell the peer lease, if it moved: every live member confirmed since then.
    fn refresh_lease(&mut self) {
        let since = self.confirmations.confirmed_since();
        if self.lease != Some(since) {
            self.lease = Some(since);
            self.outputs.push_back(Output::PeerLease(since));
        }
    }

    fn notify(&mut self, event: ClusterEvent) {
        self.outputs.push_back(Output::Notify(event));
    }

    /// A span over the handling of one membership change: `change` happened to `members`. At
    /// info level: such changes are rare, and what an operator follows.
    fn membership_span(&self, change: &'static str, members: &[NodeId]) -> EnteredSpan {
        tracing::info_span!("cohort.membership", node = %self.id, change, ?members).entered()
    }
}

/// Plays `bytes` to a node's state machine as one peer's inbound link, for the `node_link` fuzz
/// target: records of a time step (one byte, in milliseconds), a length (two bytes, big-endian)
/// and a frame body. The first must be a hello that opens the link; an error ends the link, as
/// it would end a real one. After each record, the node's due timeouts fire and its outputs are
/// drained.
#[cfg(fuzzing)]
pub(crate) fn play_link(bytes: &[u8]) {
    let peer_addr = SocketAddr::from(([127, 0, 0, 1], 7001));
    let mut node = NodeState::new(
        NodeId::from("fuzz"),
        SocketAddr::from(([127, 0, 0, 1], 1)),
        1,
        7,
        &Config::default(),
        Arc::default(),
    );
    // This node's own link to the peer: where its pongs and acknowledgements go.
    node.open_link(peer_addr);
    let mut peer: Option<Peer> = None;
    let mut now: Millis = 1_000;
    let mut rest = bytes;
    while let [step, high, low, tail @ ..] = rest {
        let len = usize::from(u16::from_be_bytes([*high, *low])).min(tail.len());
        let (body, next) = tail.split_at(len);
        rest = next;
        now += Millis::from(*step);
        let Ok(frame) = crate::wire::decode(body) else {
            return;
        };
        match &peer {
            None => {
                let Frame::Hello(hello) = &frame else {
                    return;
                };
                match node.handle_hello(hello, now) {
                    Ok(Greeting {
                        peer: Some(admitted),
                        ..
                    }) => peer = Some(admitted),
                    _ => return,
                }
            }
            Some(from) => match node.handle_frame(from, &frame, now) {
                Ok(Inbound::Apply) => {
                    if let Frame::Event(event) = &frame
                        && let Change::Intent { .. } = event.change
                    {
                        node.acknowledge(from, event.seq);
                    }
                }
                Ok(Inbound::Serve) => {
                    if let Frame::Request { id, key, .. } = frame {
                        node.answer(from, id, Some(key));
                    }
                }
                Ok(Inbound::Done | Inbound::Answer) => {}
                Ok(Inbound::Closed) | Err(_) => return,
            },
        }
        if node.poll_timeout().is_some_and(|due| due <= now) {
            node.handle_timeout(now);
        }
        while node.poll_transmit().is_some() {}
        while node.poll_output().is_some() {}
    }
}

#[cfg(test)]
mod tests {
    //! The node protocol on an in-memory network: frames and instants go in, and the tests
    //! assert on what comes out. Links deliver in order, or not at all across a cut.

    use std::collections::BTreeMap;

    use super::*;
    use crate::wire;

    const BOUND: Duration = Duration::from_millis(500);
    /// The heartbeat's period: a quarter of the bound.
    const TICK: Millis = 125;

    fn addr_of(index: usize) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], 7000 + u16::try_from(index).unwrap()))
    }

    fn state(name: &str, index: usize, incarnation: u64) -> NodeState {
        let config = Config {
            max_staleness: BOUND,
            ..Config::default()
        };
        NodeState::new(
            NodeId::from(name),
            addr_of(index),
            incarnation,
            index as u64,
            &config,
            Arc::new(ClusterCounters::default()),
        )
    }

    /// What one node did that a test may look at.
    #[derive(Default)]
    struct Seen {
        /// Events applied, as (origin, seq).
        applied: Vec<(String, u64)>,
        flushes: usize,
        lease: Option<Millis>,
        settled: Vec<u64>,
        events: Vec<ClusterEvent>,
        owners: Option<Owners>,
        /// Answers to this node's requests, as (owner, id, value).
        answers: Vec<(String, u64, Option<Vec<u8>>)>,
    }

    /// Nodes linked in memory. Each outgoing link delivers its frames in order to the node it
    /// reaches, unless the pair is cut.
    struct Net {
        nodes: Vec<NodeState>,
        seen: Vec<Seen>,
        /// (from, link) → (to, the sender as the receiver's hello made it known).
        links: BTreeMap<(usize, LinkId), (usize, Peer)>,
        in_flight: VecDeque<(usize, Peer, Bytes)>,
        cut: BTreeSet<(usize, usize)>,
        dials: VecDeque<(usize, SocketAddr)>,
        now: Millis,
    }

    impl Net {
        fn new(names: &[&str]) -> Self {
            let nodes: Vec<NodeState> = names
                .iter()
                .enumerate()
                .map(|(index, name)| state(name, index, 1))
                .collect();
            let mut net = Self {
                seen: nodes.iter().map(|_| Seen::default()).collect(),
                nodes,
                links: BTreeMap::new(),
                in_flight: VecDeque::new(),
                cut: BTreeSet::new(),
                dials: VecDeque::new(),
                now: 1_000,
            };
            net.settle();
            net
        }

        /// Every node learns of the first one and dials it; the rest follows from gossip.
        fn joined(names: &[&str]) -> Self {
            let mut net = Self::new(names);
            for index in 1..names.len() {
                let now = net.now;
                net.nodes[index].add_seeds(&[addr_of(0)], true, now);
            }
            net.settle();
            net
        }

        fn is_cut(&self, a: usize, b: usize) -> bool {
            self.cut.contains(&(a, b)) || self.cut.contains(&(b, a))
        }

        /// Opens a link from `from` to the node at `addr`, as a dialer would.
        fn dial(&mut self, from: usize, addr: SocketAddr) {
            let Some(to) = self.nodes.iter().position(|n| n.addr == addr) else {
                return;
            };
            if self.is_cut(from, to) || !self.nodes[from].wants(addr) {
                return;
            }
            let now = self.now;
            let (link, start) = self.nodes[from].open_link(addr);
            let hello = self.nodes[from].hello(start);
            let Frame::Hello(hello) = wire::decode(&hello).unwrap() else {
                unreachable!()
            };
            let greeting = self.nodes[to].handle_hello(&hello, now).unwrap();
            let Frame::Hello(answer) = wire::decode(&greeting.answer).unwrap() else {
                unreachable!()
            };
            let answered = self.nodes[from]
                .handle_answer(addr, start, &answer, now)
                .unwrap()
                .expect("another node");
            let peer = greeting.peer.expect("admitted");
            self.links.insert((from, link), (to, peer.clone()));
            for frame in answered.replay {
                self.in_flight.push_back((to, peer.clone(), frame));
            }
            self.nodes[from].handle_link_up(link, addr, &answered.peer, answered.incarnation, now);
        }

        /// Carries out every node's outputs and delivers every frame, until nothing moves.
        fn settle(&mut self) {
            loop {
                let mut moved = false;
                for index in 0..self.nodes.len() {
                    moved |= self.drain(index);
                }
                if let Some((to, from, frame)) = self.in_flight.pop_front() {
                    self.deliver(to, &from, &frame);
                    moved = true;
                }
                if let Some((from, addr)) = self.dials.pop_front() {
                    self.dial(from, addr);
                    moved = true;
                }
                if !moved {
                    return;
                }
            }
        }

        fn drain(&mut self, index: usize) -> bool {
            let mut moved = false;
            while let Some(Transmit { to, frame }) = self.nodes[index].poll_transmit() {
                moved = true;
                let links: Vec<(usize, Peer)> = self
                    .links
                    .iter()
                    .filter(|((from, link), _)| {
                        *from == index && (to == To::Every || to == To::Link(*link))
                    })
                    .map(|(_, reached)| reached.clone())
                    .collect();
                for (reached, peer) in links {
                    if !self.is_cut(index, reached) {
                        self.in_flight.push_back((reached, peer, frame.clone()));
                    }
                }
            }
            while let Some(output) = self.nodes[index].poll_output() {
                moved = true;
                let seen = &mut self.seen[index];
                match output {
                    Output::Notify(event) => seen.events.push(event),
                    Output::Flush => seen.flushes += 1,
                    Output::Dial(addr) => self.dials.push_back((index, addr)),
                    Output::CloseLink(link) => {
                        self.links.remove(&(index, link));
                    }
                    Output::IntentSettled(seq) => seen.settled.push(seq),
                    Output::PeerLease(since) => seen.lease = since,
                    Output::Owners(owners) => seen.owners = Some(owners),
                    Output::Pinged { .. } => {}
                }
            }
            moved
        }

        fn deliver(&mut self, to: usize, from: &Peer, frame: &Bytes) {
            let now = self.now;
            let frame = wire::decode(frame).unwrap();
            let inbound = self.nodes[to].handle_frame(from, &frame, now).unwrap();
            match (inbound, &frame) {
                // The owner answers with the key's bytes reversed.
                (Inbound::Serve, &Frame::Request { id, key, .. }) => {
                    let value: Vec<u8> = key.iter().rev().copied().collect();
                    self.nodes[to].answer(from, id, Some(&value));
                }
                (Inbound::Answer, &Frame::Answer { id, value }) => {
                    let answer = (from.node.as_str().to_owned(), id, value.map(<[u8]>::to_vec));
                    self.seen[to].answers.push(answer);
                }
                _ => {}
            }
            if let (Inbound::Apply, Frame::Event(event)) = (inbound, &frame) {
                self.seen[to]
                    .applied
                    .push((event.node.to_owned(), event.seq));
                if let Change::Intent { .. } = event.change {
                    self.nodes[to].acknowledge(from, event.seq);
                }
            }
        }

        /// Lets `ticks` heartbeat periods pass, each node handling its timeouts as they fall
        /// due, in order.
        fn run(&mut self, ticks: u64) {
            let until = self.now + ticks * TICK;
            while let Some((due, index)) = (0..self.nodes.len())
                .filter_map(|i| Some((self.nodes[i].poll_timeout()?, i)))
                .filter(|&(due, _)| due <= until)
                .min()
            {
                self.now = self.now.max(due);
                let now = self.now;
                self.nodes[index].handle_timeout(now);
                self.settle();
            }
            self.now = until;
        }

        /// Whether `index`'s peer lease lets its peer-only caches serve now.
        fn serves(&self, index: usize) -> bool {
            self.seen[index]
                .lease
                .is_some_and(|since| since.saturating_add(millis(BOUND)) > self.now)
        }

        fn publish(&mut self, index: usize, key: u8) -> u64 {
            let seq = self.nodes[index].publish("users", Change::Invalidate { key: &[key] });
            self.settle();
            seq
        }
    }

    /// Once linked, every node names the same owner for each key, each owns a share, and a
    /// request reaches the owner on the asker's link and its answer comes back to the asker.
    #[test]
    fn linked_nodes_agree_on_owners_and_requests_reach_them() {
        let mut net = Net::joined(&["a", "b", "c"]);
        let owners: Vec<Owners> = (0..3)
            .map(|i| net.seen[i].owners.clone().expect("links came up"))
            .collect();
        let mut owned = [0; 3];
        for key in 0_u16..300 {
            let key = key.to_le_bytes();
            let names: Vec<&NodeId> = owners
                .iter()
                .zip(&net.nodes)
                .map(|(o, node)| o.owner(&key).unwrap_or(&node.id))
                .collect();
            assert!(names.iter().all(|n| *n == names[0]), "{names:?}");
            owned[net.nodes.iter().position(|n| &n.id == names[0]).unwrap()] += 1;
        }
        assert!(owned.iter().all(|&n| n > 50), "{owned:?}");

        let b = NodeId::from("b");
        let id = net.nodes[0]
            .request(&b, "users", b"key")
            .expect("a links to b");
        assert_eq!(
            net.nodes[0].request(&NodeId::from("z"), "users", b"key"),
            None
        );
        net.settle();
        assert_eq!(
            net.seen[0].answers,
            [("b".to_owned(), id, Some(b"yek".to_vec()))]
        );
    }

    #[test]
    fn nodes_find_each_other_through_one_seed_and_serve_once_confirmed() {
        let mut net = Net::joined(&["a", "b", "c"]);
        for node in &net.nodes {
            assert_eq!(
                node.connected_peers(),
                2,
                "{} links to both others",
                node.id
            );
        }
        assert!(!net.serves(0), "nobody confirmed a yet");
        net.run(1);
        assert!((0..3).all(|i| net.serves(i)), "one round of pings confirms");
    }

    /// A pong vouches for every event its sender had queued on the link when it answered: it is
    /// queued behind them and names the latest, so the pinging peer confirms this node (and
    /// renews the lease its peer-only and strong caches serve under) only once it applied them.
    #[test]
    fn a_pong_is_queued_behind_the_events_before_it_and_names_the_latest() {
        let mut a = state("a", 0, 7);
        let b = Peer {
            node: NodeId::from("b"),
            incarnation: 1,
            addr: addr_of(1),
        };
        let (link, start) = a.open_link(b.addr);
        let published: Vec<u64> = (0..3_u8)
            .map(|key| a.publish("users", Change::Invalidate { key: &[key] }))
            .collect();
        assert_eq!(published, [start.seq + 1, start.seq + 2, start.seq + 3]);
        a.handle_frame(&b, &Frame::Ping { nonce: 42 }, 1_000)
            .unwrap();

        let mut sent = Vec::new();
        while let Some(transmit) = a.poll_transmit() {
            assert!(transmit.to == To::Every || transmit.to == To::Link(link));
            match wire::decode(&transmit.frame).unwrap() {
                Frame::Event(event) => sent.push(format!("event {}", event.seq)),
                Frame::Pong {
                    nonce,
                    incarnation,
                    seq,
                    ..
                } => sent.push(format!("pong {nonce} {incarnation} {seq}")),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(sent, ["event 1", "event 2", "event 3", "pong 42 7 3"]);
    }

    #[test]
    fn a_broken_link_resumes_where_the_peer_left_off_without_a_gap() {
        let mut net = Net::joined(&["a", "b"]);
        net.publish(0, 1);
        net.cut.insert((0, 1));
        // Sent while cut: lost with the link.
        for key in 2..5 {
            net.publish(0, key);
        }
        let applied = |net: &Net| -> Vec<u64> { net.seen[1].applied.iter().map(|e| e.1).collect() };
        assert_eq!(applied(&net), [1]);
        net.cut.clear();
        net.nodes[0].close_all_links();
        net.settle();
        net.dial(0, addr_of(1));
        net.settle();
        assert_eq!(
            applied(&net),
            [1, 2, 3, 4],
            "the new link replayed what was lost"
        );
        assert_eq!(net.seen[1].flushes, 0, "nothing was missed for good");
        assert_eq!(net.nodes[1].counters.gaps.get(), 0);
    }

    #[test]
    fn events_that_never_arrive_are_a_gap_that_flushes_before_the_next_applies() {
        let mut net = Net::joined(&["a", "b"]);
        net.publish(0, 1);
        // Lost on a link that stays up (what a keyed link would refuse to decrypt).
        net.nodes[0].publish("users", Change::Invalidate { key: &[2] });
        while net.nodes[0].poll_transmit().is_some() {}
        net.publish(0, 3);
        assert_eq!(net.seen[1].flushes, 1);
        assert!(
            net.seen[1]
                .events
                .iter()
                .any(|e| matches!(e, ClusterEvent::Gap { missed, .. } if *missed == (2..=2)))
        );
        let applied: Vec<u64> = net.seen[1].applied.iter().map(|e| e.1).collect();
        assert_eq!(applied, [1, 3], "the event after the gap is applied");
    }

    #[test]
    fn a_silent_member_is_retired_only_on_a_majoritys_testimony() {
        let mut net = Net::joined(&["a", "b", "c"]);
        net.run(1);
        net.cut.extend([(2, 0), (2, 1)]);
        net.run(4);
        assert!(!net.serves(0), "c's confirmation lapsed: a waits for it");
        net.run(8);
        assert!(net.serves(0), "a and b, a majority, retired c");
        assert!(net.serves(1));
        assert!(net.seen[0].flushes > 0, "what c may have sent was flushed");
        assert!(!net.serves(2), "c, alone, never serves");

        let mut pair = Net::joined(&["a", "b"]);
        pair.run(1);
        pair.cut.insert((0, 1));
        pair.run(20);
        assert!(
            !pair.serves(0) && !pair.serves(1),
            "one of two is no majority"
        );
    }

    #[test]
    fn a_strong_update_settles_once_every_live_member_applied_its_intent() {
        let mut net = Net::joined(&["a", "b", "c"]);
        net.run(1);
        net.cut.insert((0, 2));
        let seq = net.nodes[0].publish_intent("users", &[9]);
        net.settle();
        assert!(net.seen[0].settled.is_empty(), "c has not acknowledged");
        assert!(net.seen[1].applied.contains(&("a".to_owned(), seq)));

        let mut net = Net::joined(&["a", "b", "c"]);
        net.run(1);
        let seq = net.nodes[0].publish_intent("users", &[9]);
        net.settle();
        assert_eq!(net.seen[0].settled, [seq]);

        let mut alone = Net::new(&["a"]);
        let seq = alone.nodes[0].publish_intent("users", &[9]);
        alone.settle();
        assert_eq!(alone.seen[0].settled, [seq], "nobody to wait for");
    }

    #[test]
    fn a_member_that_leaves_is_not_waited_for() {
        let mut net = Net::joined(&["a", "b", "c"]);
        net.run(1);
        net.nodes[2].stop();
        net.settle();
        assert!(
            net.seen[0]
                .events
                .iter()
                .any(|e| matches!(e, ClusterEvent::PeerLeft { node } if node.as_str() == "c"))
        );
        assert!(net.serves(0), "a serves on without waiting for c");
        net.run(1);
        assert!(net.serves(0) && net.serves(1));
        assert!(net.dials.is_empty());
    }

    #[test]
    fn a_restarted_member_replaces_its_old_process_and_its_caches_are_flushed() {
        let mut net = Net::joined(&["a", "b"]);
        net.publish(1, 1);
        net.run(1);
        net.cut.insert((0, 1));
        // b restarts elsewhere as a new process; its old one's last events may be lost.
        net.nodes.push(state("b", 2, 2));
        net.seen.push(Seen::default());
        let now = net.now;
        net.nodes[2].add_seeds(&[addr_of(0)], true, now);
        net.settle();
        assert!(net.seen[0].events.iter().any(|e| matches!(
            e,
            ClusterEvent::MemberReplaced { node, addr, .. } if node.as_str() == "b" && *addr == addr_of(2)
        )));
        net.publish(2, 1);
        assert_eq!(net.seen[0].flushes, 1, "a flushed on b's restart");
        assert_eq!(net.seen[0].applied.last(), Some(&("b".to_owned(), 1)));
        assert!(
            !net.nodes[0].links.iter().any(|l| l.addr == addr_of(1)),
            "a's link to b's old address closed"
        );
    }

    #[test]
    fn a_hello_claiming_fewer_events_than_applied_is_refused() {
        let mut net = Net::joined(&["a", "b"]);
        for key in 0..3 {
            net.publish(0, key);
        }
        let forged = Hello {
            node: "a",
            incarnation: 1,
            listen: addr_of(0),
            seq: 1,
            replay_from: 1,
            peers: Vec::new(),
        };
        let now = net.now;
        assert!(net.nodes[1].handle_hello(&forged, now).is_err());
        let impossible = Hello {
            seq: 1,
            replay_from: 5,
            ..forged
        };
        assert!(net.nodes[1].handle_hello(&impossible, now).is_err());
    }

    /// A duration, mostly within `0..=most_ms` milliseconds, sometimes anything at all.
    fn duration(most_ms: u64) -> impl proptest::strategy::Strategy<Value = Duration> {
        use proptest::prelude::*;
        prop_oneof![
            24 => (0..=most_ms).prop_map(Duration::from_millis),
            1 => (0..u64::MAX).prop_map(Duration::from_nanos),
            1 => (0..u64::MAX, 0..1_000_000_000_u32).prop_map(|(s, n)| Duration::new(s, n)),
            1 => Just(Duration::ZERO),
            1 => Just(Duration::MAX),
        ]
    }

    const DAY_MS: u64 = 86_400_000;

    proptest::proptest! {
        /// Whatever the settings, the config check answers without panicking, and a node built
        /// from settings it accepts runs: its arithmetic on them cannot overflow.
        #[test]
        fn any_accepted_config_gives_a_node_that_runs(
            bound in duration(DAY_MS / 100),
            timeouts in proptest::array::uniform4(duration(DAY_MS)),
            retention in duration(366 * DAY_MS),
            forget_after in proptest::option::of(duration(366 * DAY_MS)),
            counts in proptest::array::uniform4(proptest::prop_oneof![
                12 => 0..=(1_usize << 24) + 1,
                1 => 0..usize::MAX,
            ]),
        ) {
            let [handshake, min, max, seed_refresh] = timeouts;
            let config = Config {
                max_staleness: bound,
                handshake_timeout: handshake,
                reconnect: (min, max),
                seed_refresh,
                log_retention: retention,
                forget_after,
                max_members: counts[0],
                link_queue: counts[1],
                max_inbound_links: counts[2],
                replay_buffer: counts[3],
                ..Config::default()
            };
            if config.validate().is_ok() {
                let mut node = NodeState::new(
                    NodeId::from("a"),
                    addr_of(0),
                    1,
                    0,
                    &config,
                    Arc::new(ClusterCounters::default()),
                );
                node.add_seeds(&[addr_of(1)], true, u64::MAX / 2);
                node.publish("users", Change::Invalidate { key: &[1] });
                for now in [0, 1, u64::MAX / 2, u64::MAX] {
                    node.handle_timeout(now);
                    let _ = node.poll_timeout();
                }
                while node.poll_output().is_some() {}
            }
        }
    }
}
