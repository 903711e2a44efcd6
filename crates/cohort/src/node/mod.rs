//! The running node: the state every cache, link and task of one node shares, and the tasks that
//! drive it.
//!
//! - `Node` (here) is the shell: it owns the node's locks, tasks and channels, and routes what
//!   the protocol decides (events to apply, caches to flush, links to dial) to the caches and the
//!   drivers.
//! - `sequence`: the pure tracker judging each peer event (apply, duplicate, gap, retired).
//! - `replay`: the ring of this node's latest events, replayed to peers whose link broke.
//! - `confirm`: peer confirmations, the majority rule and the peer lease they grant.
//! - `link_queue`: the bounded queue of one outgoing link.
//! - `driver`: the tasks moving bytes (accepting, dialing, reading, writing, heartbeats, SWIM
//!   timers, seed refresh). The change log's tailer (`crate::changelog`) feeds the node through
//!   `LogTarget`.

mod confirm;
mod driver;
mod link_queue;
mod replay;
pub(crate) mod sequence;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use crate::changelog::{self, LogRuntime, driver::LogTarget};
use crate::clock::{Clock, millis};
use crate::config::{Config, ConfigError};
use crate::event::ClusterEvent;
use crate::id::{EventId, NodeId};
use crate::lease::Lease;
use crate::membership::{
    self, Admission, Identity, Member, Membership, Refusal, Roster, RosterConfig, Timer,
};
use crate::metrics::{CacheStats, ClusterCounters};
use crate::transport::{self, Keyring, LinkError, Listener, Network};
use crate::wire::{Change, Event, Frame, PeerInfo, WireError};
use confirm::{Confirmations, PongVerdict};
use replay::ReplayRing;
use sequence::{Delivery, SequenceTracker};

/// Where an outgoing link's event stream starts, as its hello tells the peer.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LinkStart {
    /// The last event published before the link: it carries every later one.
    pub(crate) seq: u64,
    /// The oldest event the sender can still replay.
    pub(crate) replay_from: u64,
}

impl LinkStart {
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

/// Settings a running node reads.
#[derive(Clone, Debug)]
pub(crate) struct NodeConfig {
    pub(crate) max_staleness: Duration,
    pub(crate) max_frame_bytes: usize,
    pub(crate) link_queue: usize,
    pub(crate) link_queue_bytes: usize,
    pub(crate) max_inbound_links: usize,
    pub(crate) reconnect: (Duration, Duration),
    pub(crate) handshake_timeout: Duration,
    /// The cluster keys; `None` for plaintext links.
    pub(crate) keyring: Option<Keyring>,
    pub(crate) unsafe_ignore_leases: bool,
}

/// A cache as the node sees it: somewhere to apply peers' changes.
pub(crate) trait Sink: Send + Sync {
    /// Applies one change from a peer.
    fn apply(&self, change: &Change<'_>);
    /// The cache's counters.
    fn stats(&self) -> CacheStats;
    /// Whether the mesh is the cache's only source of changes (it watches no tables).
    fn is_peer_only(&self) -> bool;
    /// Whether the cache is strong: its reads must see every completed update, which only the
    /// mesh's intents give.
    fn is_strong(&self) -> bool;
    /// Applies a change-log row: the key, as text, changed.
    fn apply_logged(&self, key: &str);
    /// Empties the cache: the node missed changes and cannot tell which keys they touched.
    fn flush(&self);
}

/// Numbers this node's events, queues them on every outgoing link and keeps the latest for
/// replay.
struct Outbox {
    seq: u64,
    links: Vec<OutLink>,
    ring: ReplayRing,
}

/// The queue of one outgoing link.
struct OutLink {
    /// The peer's listen address: the link's key.
    addr: SocketAddr,
    /// The peer's name, once its handshake told it.
    peer: Option<NodeId>,
    queue: link_queue::QueueTx,
}

/// Starts a node named `id` accepting links from `listener` (bound at `bound`): its tasks, and
/// its dialers to the seeds resolved to `seeds` (given as addresses, found by name).
pub(crate) fn start(
    id: NodeId,
    listener: Box<dyn Listener>,
    bound: SocketAddr,
    config: &Config,
    seeds: (&[SocketAddr], &[SocketAddr]),
) -> Arc<Node> {
    let addr = config.advertise.unwrap_or(bound);
    let (node, swim_timers) = Node::new(id, addr, bound, config);
    let node = Arc::new(node);
    // With no peers yet, there is nothing to confirm: peer-only caches serve from the start.
    node.refresh_peer_lease();
    driver::spawn_listener(&node, listener);
    driver::spawn_heartbeat(&node);
    driver::spawn_swim_timers(&node, swim_timers);
    let named: Vec<String> = config
        .seeds
        .iter()
        .filter(|seed| seed.parse::<SocketAddr>().is_err())
        .cloned()
        .collect();
    if !named.is_empty() {
        driver::spawn_seed_refresh(&node, named, config.seed_refresh);
    }
    if let Some(log) = &node.log {
        changelog::driver::spawn(
            &node.tasks,
            node.shutdown.subscribe(),
            Arc::clone(&node),
            Arc::clone(log),
        );
    }
    let (fixed, by_name) = seeds;
    node.add_seeds(fixed, true);
    node.add_seeds(by_name, false);
    node
}

/// Stops the node when the last user-facing handle (a cluster or cache handle) goes away.
pub(crate) struct Running(Arc<Node>);

impl Running {
    pub(crate) fn new(node: Arc<Node>) -> Self {
        Self(node)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.stop();
    }
}

/// The state shared by a node's handle, caches and tasks.
pub(crate) struct Node {
    pub(crate) id: NodeId,
    pub(crate) incarnation: u64,
    pub(crate) addr: SocketAddr,
    /// Where the listener is bound; `addr` may differ (NAT, a proxy).
    pub(crate) bound: SocketAddr,
    pub(crate) config: NodeConfig,
    outbox: Mutex<Outbox>,
    tracker: Mutex<SequenceTracker<NodeId>>,
    pub(crate) caches: RwLock<BTreeMap<Arc<str>, Arc<dyn Sink>>>,
    pub(crate) events: broadcast::Sender<ClusterEvent>,
    pub(crate) counters: ClusterCounters,
    pub(crate) shutdown: watch::Sender<bool>,
    pub(crate) tasks: TaskTracker,
    pub(crate) log: Option<Arc<LogRuntime>>,
    /// Who is in the cluster: members by name, seeds not yet resolved.
    roster: Mutex<Roster>,
    confirmations: Mutex<Confirmations<NodeId>>,
    /// Strong updates awaiting acknowledgements: intent sequence → who has yet to answer.
    intents: Mutex<BTreeMap<u64, PendingIntent>>,
    membership: Mutex<Membership>,
    swim_timers: mpsc::UnboundedSender<(Duration, Timer<Identity>)>,
    /// The lease of caches with no change log: every live member confirmed within Δ.
    pub(crate) peer_lease: Arc<Lease>,
    pub(crate) clock: Clock,
    pub(crate) network: Arc<dyn Network>,
    pub(crate) rng_seed: u64,
}

/// A strong update's intent: the members yet to acknowledge it, and whom to tell when none is
/// left.
type PendingIntent = (BTreeSet<NodeId>, oneshot::Sender<()>);

/// Membership timers for the node's timer task: each is handed back after its delay.
pub(crate) type SwimTimers = mpsc::UnboundedReceiver<(Duration, Timer<Identity>)>;

impl Node {
    pub(crate) fn new(
        id: NodeId,
        addr: SocketAddr,
        bound: SocketAddr,
        config: &Config,
    ) -> (Self, SwimTimers) {
        // Microseconds since the Unix epoch: a restarted process gets a higher incarnation.
        let incarnation = config.incarnation.unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(1, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        });
        let rng_seed = config.rng_seed.unwrap_or_else(rand::random);
        let (swim_timers, timers) = mpsc::unbounded_channel();
        let membership = Membership::new(
            Identity::new(id.clone(), addr, incarnation),
            config.max_staleness,
            config.grace(),
            rng_seed,
        );
        let roster = Roster::new(
            id.clone(),
            addr,
            RosterConfig {
                max_members: config.max_members,
                forget_after: millis(config.grace()),
                seed_ttl: millis(config.grace().max(config.seed_refresh * 2)),
            },
        );
        let node = Self {
            id,
            incarnation,
            addr,
            bound,
            config: NodeConfig {
                max_staleness: config.max_staleness,
                max_frame_bytes: config.max_frame_bytes,
                link_queue: config.link_queue,
                link_queue_bytes: config.link_queue_bytes,
                max_inbound_links: config.max_inbound_links,
                reconnect: config.reconnect,
                handshake_timeout: config.handshake_timeout,
                keyring: (!config.cluster_keys.is_empty())
                    .then(|| Keyring::new(config.cluster_keys.clone())),
                unsafe_ignore_leases: config.unsafe_ignore_leases,
            },
            outbox: Mutex::new(Outbox {
                seq: 0,
                links: Vec::new(),
                ring: ReplayRing::new(config.replay_buffer),
            }),
            tracker: Mutex::new(SequenceTracker::default()),
            caches: RwLock::new(BTreeMap::new()),
            roster: Mutex::new(roster),
            events: broadcast::channel(64 * 1024).0,
            counters: ClusterCounters::default(),
            shutdown: watch::channel(false).0,
            tasks: TaskTracker::new(),
            confirmations: Mutex::new(Confirmations::new(millis(config.max_staleness))),
            peer_lease: Arc::new(Lease::default()),
            clock: Clock::from(config.time_source),
            network: Arc::clone(&config.network),
            rng_seed,
            membership: Mutex::new(membership),
            intents: Mutex::new(BTreeMap::new()),
            swim_timers,
            log: config.change_log.clone().map(|log| {
                Arc::new(LogRuntime::new(
                    log,
                    Clock::from(config.time_source),
                    config.max_staleness,
                    config.log_retention,
                ))
            }),
        };
        (node, timers)
    }

    /// Stops the node: tells every peer it is leaving (each link's writer sends that last, then
    /// closes), and ends every other task.
    pub(crate) fn stop(&self) {
        self.shutdown.send_replace(true);
        self.tasks.close();
        let outputs = {
            let mut membership = self.membership.lock();
            membership.leave();
            membership.drain()
        };
        for output in outputs {
            if let membership::Output::Send(to, packet) = output {
                self.send_swim(&to, &packet);
            }
        }
        let mut outbox = self.outbox.lock();
        let leave = Frame::Leave.encode();
        for link in &outbox.links {
            let _ = link.queue.try_send(leave.clone());
        }
        outbox.links.clear();
    }

    /// The node listening at `addr`, `origin`, said it is leaving: forget it at once rather than
    /// wait for its silence.
    pub(crate) fn on_leave(self: &Arc<Self>, origin: &NodeId, addr: SocketAddr) {
        self.roster.lock().leave(origin, self.clock.now());
        self.confirmations.lock().leave(origin);
        self.outbox.lock().links.retain(|link| link.addr != addr);
        self.count_members();
        tracing::info!(node = %self.id, peer = %origin, "a peer left");
        self.notify(ClusterEvent::PeerLeft {
            node: origin.clone(),
        });
    }

    /// Whether the dialer of `addr` should keep trying it: a member accepts links there, or a
    /// seed no member was found at. A dialer told no must end.
    pub(crate) fn wants(&self, addr: SocketAddr) -> bool {
        !self.is_stopped() && self.roster.lock().keep_dialing(addr)
    }

    /// Names of the members whose confirmations this node's peer-only caches wait for.
    pub(crate) fn live_members(&self) -> Vec<NodeId> {
        self.confirmations.lock().live().cloned().collect()
    }

    pub(crate) fn is_stopped(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Registers a cache under its name.
    pub(crate) fn register(&self, name: Arc<str>, sink: Arc<dyn Sink>) -> Result<(), ConfigError> {
        let mut caches = self.caches.write();
        if caches.contains_key(&name) {
            return Err(ConfigError::DuplicateCache(name.to_string()));
        }
        caches.insert(name, sink);
        Ok(())
    }

    /// Closes every outgoing link; each dialer opens a new one (with the current keys), and the
    /// peer says where its stream resumes.
    pub(crate) fn relink(&self) {
        self.outbox.lock().links.clear();
    }

    /// Numbers a change to `cache` as this node's next event and queues it to every peer.
    ///
    /// A replicated value too large for a frame goes as an invalidation instead: peers would
    /// refuse the frame, and replaying it from the ring would break their links over and over.
    /// (Keys are checked by the cache to fit with room to spare.)
    pub(crate) fn publish(&self, cache: &str, change: Change<'_>) -> EventId {
        let mut outbox = self.outbox.lock();
        outbox.seq += 1;
        let seq = outbox.seq;
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
        if frame.len() > self.config.max_frame_bytes
            && let Change::Replicate { key, .. } = change
        {
            self.counters.replicas_downgraded.incr();
            tracing::warn!(node = %self.id, %cache, bytes = frame.len(), "a replicated value is too large for a frame; invalidating instead");
            frame = event(Change::Invalidate { key });
        }
        outbox
            .links
            .retain(|link| match link.queue.try_send(frame.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    // The peer catches up from the ring when it reconnects.
                    self.counters.links_overflowed.incr();
                    tracing::warn!(node = %self.id, "a peer link overflowed; closing it");
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            });
        outbox.ring.push(seq, &frame);
        drop(outbox);
        self.counters.events_sent.incr();
        EventId {
            origin: self.id.clone(),
            incarnation: self.incarnation,
            seq,
        }
    }

    /// Opens a queue for a new outgoing link to `addr`. Returns where the link starts: every
    /// event after the returned one is queued on it.
    pub(crate) fn attach(&self, addr: SocketAddr) -> (LinkStart, link_queue::QueueRx) {
        let (queue, rx) = link_queue::channel(self.config.link_queue, self.config.link_queue_bytes);
        let mut outbox = self.outbox.lock();
        outbox.links.push(OutLink {
            addr,
            peer: None,
            queue,
        });
        let start = LinkStart {
            seq: outbox.seq,
            replay_from: outbox.ring.replay_from(outbox.seq),
        };
        (start, rx)
    }

    /// This node's events after `after` up to `upto` still in its replay ring, oldest first.
    pub(crate) fn replay(&self, after: u64, upto: u64) -> Vec<Bytes> {
        let events = self.outbox.lock().ring.range(after, upto);
        self.counters.events_replayed.add(events.len() as u64);
        events
    }

    /// The outgoing link to `addr` finished its handshake with `peer`, a process of
    /// `incarnation`: it is introduced to SWIM through it.
    pub(crate) fn link_ready(self: &Arc<Self>, addr: SocketAddr, peer: &NodeId, incarnation: u64) {
        for link in self
            .outbox
            .lock()
            .links
            .iter_mut()
            .filter(|l| l.addr == addr)
        {
            link.peer = Some(peer.clone());
        }
        self.contact(peer);
        self.broadcast(
            Frame::Peers(vec![PeerInfo {
                node: peer.as_str(),
                incarnation,
                addr,
            }])
            .encode(),
        );
        let identity = Identity::new(peer.clone(), addr, incarnation);
        self.swim(|membership| membership.announce(identity));
    }

    /// A link handshake with `peer`, process `incarnation` accepting links at `addr`, completed:
    /// on a link this node dialed to `dialed`, or accepted (`None`). Admits it to the member
    /// table, or says why not (the link must then close).
    pub(crate) fn meet(
        self: &Arc<Self>,
        peer: &NodeId,
        incarnation: u64,
        addr: SocketAddr,
        dialed: Option<SocketAddr>,
    ) -> Result<(), Refusal> {
        let now = self.clock.now();
        let admission = self
            .roster
            .lock()
            .meet(peer, incarnation, addr, dialed, now);
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
        result
    }

    /// Peers told of members (in a hello, in a peers frame): admits those it can.
    pub(crate) fn hear_of(self: &Arc<Self>, members: &[PeerInfo<'_>]) {
        let now = self.clock.now();
        let news: Vec<_> = {
            let mut roster = self.roster.lock();
            members
                .iter()
                .map(|member| {
                    let node = NodeId::from(member.node);
                    let news = roster.hear_of(&node, member.incarnation, member.addr, now);
                    (node, member.addr, news)
                })
                .collect()
        };
        for (node, addr, news) in news {
            self.on_news(&node, addr, news);
        }
        self.count_members();
    }

    /// Acts on news of a member (gossip, SWIM): its admission, or its refusal, counted when the
    /// table was full or the name bad. News of an older or forgotten process, or of this node,
    /// is routine.
    fn on_news(&self, node: &NodeId, addr: SocketAddr, news: Result<Admission, Refusal>) {
        match news {
            Ok(admission) => self.admitted(node, addr, &admission),
            Err(Refusal::Full | Refusal::BadName) => self.counters.members_refused.incr(),
            Err(Refusal::Myself | Refusal::Stale | Refusal::Forgotten) => {}
        }
    }

    /// Acts on a member's admission: a replaced entry's links to its old address close.
    fn admitted(&self, node: &NodeId, addr: SocketAddr, admission: &Admission) {
        if let &Admission::Replaced { old_addr, .. } = admission {
            if old_addr != addr {
                self.outbox
                    .lock()
                    .links
                    .retain(|link| link.addr != old_addr);
            }
            tracing::info!(node = %self.id, peer = %node, %old_addr, %addr, "a member came back");
            self.notify(ClusterEvent::MemberReplaced {
                node: node.clone(),
                old_addr,
                addr,
            });
        }
    }

    /// Runs one step of the SWIM state machine, then does what it asked: sends its packets,
    /// schedules its timers, links to members it found, and tells confirmations who is up.
    pub(crate) fn swim(self: &Arc<Self>, step: impl FnOnce(&mut Membership)) {
        let (outputs, up) = {
            let mut membership = self.membership.lock();
            step(&mut membership);
            let up: BTreeSet<NodeId> = membership.up().map(|id| id.node.clone()).collect();
            (membership.drain(), up)
        };
        let now = self.clock.now();
        for output in outputs {
            match output {
                membership::Output::Send(to, packet) => self.send_swim(&to, &packet),
                membership::Output::Schedule(after, timer) => {
                    let _ = self.swim_timers.send((after, timer));
                }
                membership::Output::Up(id) => {
                    let admission =
                        self.roster
                            .lock()
                            .swim_up(&id.node, id.incarnation, id.addr, now);
                    self.on_news(&id.node, id.addr, admission);
                    self.notify(ClusterEvent::MemberUp {
                        node: id.node,
                        addr: id.addr,
                    });
                }
                membership::Output::Down(id) => {
                    self.roster.lock().swim_down(&id.node, id.incarnation);
                    self.notify(ClusterEvent::MemberDown {
                        node: id.node,
                        addr: id.addr,
                    })
                }
            }
        }
        // SWIM may hold up names the member table refused (full): those are not waited for.
        let up: BTreeSet<NodeId> = {
            let roster = self.roster.lock();
            up.into_iter().filter(|n| roster.get(n).is_some()).collect()
        };
        self.confirmations.lock().swim_up(&up, now);
        self.count_members();
    }

    /// Queues a SWIM packet on the link to `to`; without one, it is lost, as a datagram would be.
    fn send_swim(&self, to: &Identity, packet: &[u8]) {
        self.send_to(to.addr, Frame::Swim(packet).encode());
    }

    /// Queues a frame that is not an event (it takes no sequence number) on every link.
    fn broadcast(&self, frame: Bytes) {
        let outbox = self.outbox.lock();
        for link in &outbox.links {
            // A full link is about to be closed as overflowed; it will get a fresh hello.
            let _ = link.queue.try_send(frame.clone());
        }
    }

    /// Announces a strong update of `key` in `cache` to every peer, as an event. Resolves once
    /// every live member acknowledged it, or after the bound: a member that did not answer by
    /// then cannot be serving any more, since its lease rests on this node's answers to its
    /// pings, which travel behind the announcement.
    pub(crate) async fn announce_intent(self: &Arc<Self>, cache: &str, key: &[u8]) {
        let (done, acked) = oneshot::channel();
        let waiting: BTreeSet<NodeId> = self.live_members().into_iter().collect();
        let seq = {
            let mut intents = self.intents.lock();
            let event = self.publish(cache, Change::Intent { key });
            if waiting.is_empty() {
                let _ = done.send(());
            } else {
                intents.insert(event.seq, (waiting, done));
            }
            event.seq
        };
        if tokio::time::timeout(self.config.max_staleness, acked)
            .await
            .is_err()
        {
            self.intents.lock().remove(&seq);
        }
    }

    /// `origin` applied this node's intent event `seq`.
    pub(crate) fn on_intent_ack(&self, origin: &NodeId, seq: u64) {
        let mut intents = self.intents.lock();
        if let Some((waiting, _)) = intents.get_mut(&seq) {
            waiting.remove(origin);
            if waiting.is_empty()
                && let Some((_, done)) = intents.remove(&seq)
            {
                let _ = done.send(());
            }
        }
    }

    /// Queues a frame on the link to the node listening at `to`.
    fn send_to(&self, to: SocketAddr, frame: Bytes) {
        for link in self.outbox.lock().links.iter().filter(|l| l.addr == to) {
            let _ = link.queue.try_send(frame.clone());
        }
    }

    /// Answers a ping from the node listening at `to`, behind every event already queued to it.
    pub(crate) fn pong(&self, to: SocketAddr, nonce: u64) {
        let heard: Option<Vec<NodeId>> = {
            let roster = self.roster.lock();
            // At most half a frame of names; more, and the pong testifies nothing.
            let budget = self.config.max_frame_bytes / 2;
            let window = millis(self.config.max_staleness * 2);
            roster
                .heard_lately(self.clock.now(), window, budget)
                .map(|heard| heard.into_iter().cloned().collect())
        };
        let outbox = self.outbox.lock();
        let frame = Frame::Pong {
            nonce,
            incarnation: self.incarnation,
            seq: outbox.seq,
            heard: heard
                .as_ref()
                .map(|heard| heard.iter().map(NodeId::as_str).collect()),
        }
        .encode();
        for link in outbox.links.iter().filter(|l| l.addr == to) {
            let _ = link.queue.try_send(frame.clone());
        }
    }

    /// One heartbeat: pings every linked peer, retires the silent ones and closes their links (a
    /// stuck connection then gets replaced), and refreshes the peer lease.
    pub(crate) fn heartbeat(self: &Arc<Self>) {
        let now = self.clock.now();
        let dead = {
            let mut outbox = self.outbox.lock();
            let mut confirmations = self.confirmations.lock();
            for link in &outbox.links {
                if let Some(peer) = &link.peer {
                    let nonce = confirmations.ping(peer, now);
                    let _ = link.queue.try_send(Frame::Ping { nonce }.encode());
                }
            }
            let dead = confirmations.expire(now);
            outbox
                .links
                .retain(|link| link.peer.as_ref().is_none_or(|p| !dead.contains(p)));
            dead
        };
        if !dead.is_empty() {
            // They may have written, and sent events now lost, until their own leases ended;
            // those keys are unknown, so the caches that only they could have told are emptied,
            // before the lease (no longer waiting for them) lets those caches serve again.
            tracing::info!(node = %self.id, peers = ?dead, "peers went silent; flushing peer-only caches");
            self.flush_mesh_dependent();
        }
        self.refresh_peer_lease();
        for node in dead {
            self.notify(ClusterEvent::PeerSilent { node });
        }
        self.forget_due(now);
    }

    /// Forgets the members the member table says are due (see `membership::roster`), and the
    /// state kept for each. Those this node reached go only if it is in a majority now, counting
    /// them.
    fn forget_due(self: &Arc<Self>, now: crate::clock::Millis) {
        // A reached member goes only once retired (on testimony), and only while this node
        // still hears a majority.
        let (majority, live): (bool, BTreeSet<NodeId>) = {
            let confirmations = self.confirmations.lock();
            (
                confirmations.has_fresh_majority(now),
                confirmations.live().cloned().collect(),
            )
        };
        let forgotten = self
            .roster
            .lock()
            .expire(now, |node| majority && !live.contains(node));
        if forgotten.is_empty() {
            return;
        }
        {
            let mut confirmations = self.confirmations.lock();
            let mut tracker = self.tracker.lock();
            for (node, _) in &forgotten {
                confirmations.leave(node);
                tracker.forget(node);
            }
        }
        self.outbox
            .lock()
            .links
            .retain(|link| !forgotten.iter().any(|(_, e)| e.addr == link.addr));
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

    /// Counts why a link failed or was refused, where it was the other end's doing.
    pub(crate) fn count_link_error(&self, error: &LinkError) {
        match error {
            LinkError::Wire(_) => self.counters.frames_rejected.incr(),
            LinkError::Auth(_) => self.counters.auth_failures.incr(),
            _ => {}
        }
    }

    /// `origin`, a member, showed signs of life (a hello, a ping).
    pub(crate) fn contact(&self, origin: &NodeId) {
        let now = self.clock.now();
        let member = {
            let mut roster = self.roster.lock();
            roster.heard(origin, now);
            roster.get(origin).is_some()
        };
        if member {
            self.confirmations.lock().contact(origin, now);
            self.refresh_peer_lease();
        }
    }

    /// Whether `peer` showed signs of life within `window`.
    pub(crate) fn heard_within(&self, peer: &NodeId, window: Duration) -> bool {
        let now = self.clock.now();
        self.roster
            .lock()
            .get(peer)
            .is_some_and(|entry| now.saturating_sub(entry.last_heard) <= millis(window))
    }

    /// A pong from `origin` arrived on its link.
    pub(crate) fn on_pong(
        &self,
        origin: &NodeId,
        nonce: u64,
        incarnation: u64,
        seq: u64,
        heard: Option<&[&str]>,
    ) {
        self.roster.lock().heard(origin, self.clock.now());
        let applied = self
            .tracker
            .lock()
            .applied(origin)
            .and_then(|(known, applied)| (known == incarnation).then_some(applied));
        let verdict = self.confirmations.lock().pong(
            origin,
            nonce,
            seq,
            applied,
            heard.map(|heard| heard.iter().map(|&name| NodeId::from(name)).collect()),
            self.clock.now(),
        );
        if verdict == PongVerdict::Confirmed {
            self.refresh_peer_lease();
            self.notify(ClusterEvent::Confirmed {
                node: origin.clone(),
            });
        }
    }

    pub(crate) fn refresh_peer_lease(&self) {
        let since = self.confirmations.lock().confirmed_since();
        self.peer_lease
            .set(&self.clock, since, self.config.max_staleness);
    }

    /// The members this node reached, as many as fit in half a frame: what its hello tells.
    pub(crate) fn gossip(&self) -> Vec<(NodeId, u64, SocketAddr)> {
        // A gossiped member costs its name plus at most 30 bytes (varints, an IPv6 address); the
        // whole hello must fit what a node reads before it accepted the hello.
        let mut budget = (self.config.max_frame_bytes / 2).min(transport::MAX_HELLO_BYTES / 2);
        let roster = self.roster.lock();
        roster
            .reached()
            .into_iter()
            .take_while(|(node, _)| {
                let cost = node.as_str().len() + 30;
                let fits = cost <= budget;
                budget = budget.saturating_sub(cost);
                fits
            })
            .map(|(node, entry)| (node.clone(), entry.incarnation, entry.addr))
            .collect()
    }

    /// Seeds resolved to `addrs`: given as addresses (`fixed`) or found by resolving names.
    pub(crate) fn add_seeds(self: &Arc<Self>, addrs: &[SocketAddr], fixed: bool) {
        self.roster.lock().add_seeds(addrs, fixed, self.clock.now());
        self.count_members();
    }

    /// `addr` turned out to be this node itself (a seed list that includes it): not dialed again.
    pub(crate) fn myself_at(self: &Arc<Self>, addr: SocketAddr) {
        let _ = self
            .roster
            .lock()
            .meet(&self.id, self.incarnation, self.addr, Some(addr), 0);
        self.count_members();
    }

    /// After the member table changed: tells the majority rule what it counts, and dials the
    /// addresses that have no dialer yet.
    fn count_members(self: &Arc<Self>) {
        let (counted, dials) = {
            let mut roster = self.roster.lock();
            (roster.counted(), roster.dials())
        };
        self.confirmations.lock().set_known_peers(counted);
        self.refresh_peer_lease();
        if !self.is_stopped() {
            for addr in dials {
                driver::spawn_dialer(self, addr);
            }
        }
    }

    /// How many members this node's links reach now.
    pub(crate) fn connected_peers(&self) -> usize {
        self.roster
            .lock()
            .members()
            .filter(|(_, e)| e.connected)
            .count()
    }

    /// The members, as [`Cluster::members`] shows them.
    pub(crate) fn members(&self) -> Vec<Member> {
        let now = self.clock.now();
        let live: BTreeSet<NodeId> = self.live_members().into_iter().collect();
        let membership = self.membership.lock();
        let roster = self.roster.lock();
        let mut members: Vec<Member> = roster
            .members()
            .map(|(node, entry)| Member {
                addr: entry.addr,
                node: Some(node.clone()),
                incarnation: Some(entry.incarnation),
                swim: membership.state(node, entry.incarnation),
                last_heard: Some(Duration::from_millis(now.saturating_sub(entry.last_heard))),
                connected: entry.connected,
                live: live.contains(node),
                up: entry.swim_up,
            })
            .chain(roster.unresolved_seeds().map(|addr| Member {
                addr,
                node: None,
                incarnation: None,
                swim: None,
                last_heard: None,
                connected: false,
                live: false,
                up: false,
            }))
            .collect();
        members.sort_by(|a, b| (&a.node, a.addr).cmp(&(&b.node, b.addr)));
        members
    }

    pub(crate) fn set_connected(&self, addr: SocketAddr, node: &NodeId, connected: bool) {
        self.roster.lock().set_connected(node, addr, connected);
        let event = if connected {
            ClusterEvent::PeerUp {
                node: node.clone(),
                addr,
            }
        } else {
            ClusterEvent::PeerDown {
                node: node.clone(),
                addr,
            }
        };
        self.notify(event);
    }

    pub(crate) fn notify(&self, event: ClusterEvent) {
        if self.events.receiver_count() > 0 {
            let _ = self.events.send(event);
        }
    }

    /// A link from `origin` opened at `start`. Returns the event after which `origin` should
    /// resume: it replays the rest from its ring, so that only what fell out of it is missed.
    ///
    /// A hello claiming fewer events than this node already applied of that process is refused:
    /// accepted, it would make the sender's real events look like duplicates. (The caller has
    /// refused impossible starts already, with [`LinkStart::check`], before admitting the peer.)
    pub(crate) fn peer_hello(
        &self,
        origin: &NodeId,
        incarnation: u64,
        start: LinkStart,
    ) -> Result<u64, WireError> {
        let (resume, delivery) = {
            let mut tracker = self.tracker.lock();
            let applied = match tracker.applied(origin) {
                Some((known, applied)) if known == incarnation => applied,
                _ => 0,
            };
            if start.seq < applied {
                return Err(WireError::Unexpected(
                    "a hello claiming fewer events than were applied of its process",
                ));
            }
            let resume = replay::resume_point(applied, start.seq, start.replay_from);
            (resume, tracker.hello(origin, incarnation, resume))
        };
        self.judge(origin, delivery);
        Ok(resume)
    }

    /// Applies one event that arrived on a link from `origin`.
    pub(crate) fn receive(&self, origin: &NodeId, origin_addr: SocketAddr, event: &Event<'_>) {
        let delivery = self
            .tracker
            .lock()
            .event(origin, event.incarnation, event.seq);
        if !self.judge(origin, delivery) {
            return;
        }
        let sink = self.caches.read().get(event.cache).cloned();
        if let Some(sink) = sink {
            sink.apply(&event.change);
        }
        if let Change::Intent { .. } = event.change {
            // Acknowledged once applied, on this node's own link to the writer.
            self.send_to(origin_addr, Frame::IntentAck { seq: event.seq }.encode());
        }
        self.counters.events_applied.incr();
        if self.events.receiver_count() > 0 {
            self.notify(ClusterEvent::Applied {
                event: EventId {
                    origin: origin.clone(),
                    incarnation: event.incarnation,
                    seq: event.seq,
                },
                at: Instant::now(),
            });
        }
    }

    /// Acts on the tracker's verdict; returns whether the event itself should be applied.
    fn judge(&self, origin: &NodeId, delivery: Delivery) -> bool {
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
                self.flush_mesh_dependent();
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
                self.flush_mesh_dependent();
                true
            }
        }
    }

    /// Empties the caches whose promise rests on the mesh: missed events left them unsure.
    /// Those are the caches that watch no tables and the strong ones; the others are not
    /// flushed, since the change log carries the same writes within Δ.
    fn flush_mesh_dependent(&self) {
        self.flush_caches(|sink| sink.is_peer_only() || sink.is_strong());
    }

    fn flush_caches(&self, which: impl Fn(&dyn Sink) -> bool) {
        let sinks: Vec<_> = self.caches.read().values().cloned().collect();
        for sink in sinks.iter().filter(|sink| which(sink.as_ref())) {
            sink.flush();
        }
    }
}

impl LogTarget for Node {
    fn name(&self) -> &str {
        self.id.as_str()
    }

    fn apply_logged(&self, cache: &str, key: &str) {
        let sink = self.caches.read().get(cache).cloned();
        if let Some(sink) = sink {
            sink.apply_logged(key);
        }
    }

    fn flush_watching(&self) {
        self.flush_caches(|sink| !sink.is_peer_only());
    }

    fn notify(&self, event: ClusterEvent) {
        Node::notify(self, event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Cluster;
    use crate::wire;

    /// A pong vouches for every event its sender had queued on the link when it answered: it is
    /// queued behind them and names the latest, so the pinging peer confirms this node (and
    /// renews the lease its peer-only and strong caches serve under) only once it has applied
    /// them.
    #[tokio::test]
    async fn a_pong_is_queued_behind_the_events_before_it_and_names_the_latest() {
        let cluster = Cluster::builder().node_name("a").start().await.unwrap();
        let node = &cluster.node;
        let peer = SocketAddr::from(([127, 0, 0, 1], 9));
        let (start, mut queue) = node.attach(peer);
        let published: Vec<u64> = (0..3_u8)
            .map(|key| {
                node.publish("users", Change::Invalidate { key: &[key] })
                    .seq
            })
            .collect();
        assert_eq!(published, [start.seq + 1, start.seq + 2, start.seq + 3]);
        node.pong(peer, 42);

        let mut events = Vec::new();
        let pong = loop {
            let frame = queue.try_recv().expect("the pong was queued");
            match wire::decode(&frame).unwrap() {
                Frame::Event(event) => events.push(event.seq),
                Frame::Pong {
                    nonce,
                    incarnation,
                    seq,
                    ..
                } => break (nonce, incarnation, seq),
                // Gossip or SWIM on the same link says nothing about the order of the two.
                _ => {}
            }
        };
        assert_eq!(
            events, published,
            "the events queued before the pong precede it"
        );
        assert_eq!(
            pong,
            (42, node.incarnation, start.seq + 3),
            "the pong names the latest event"
        );
    }
}
