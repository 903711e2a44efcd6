//! The running node: the protocol of one node and the thin shell that drives it.
//!
//! - `state`: [`NodeState`](state::NodeState), the whole per-node protocol as one plain state
//!   machine (no I/O, no tokio, no clock reads), built from the pure pieces beside it:
//!   - `sequence`: the tracker judging each peer event (apply, duplicate, gap, retired);
//!   - `replay`: the ring of this node's latest events, replayed to peers whose link broke;
//!   - `confirm`: peer confirmations and the majority rule behind the peer lease;
//!   - and, from `crate::membership`, the member table and SWIM.
//! - `Node` (here) is the shell: it holds the state behind one lock, feeds it inputs with the
//!   time, and carries out what it asks (frames onto link queues, events to subscribers, caches
//!   to empty, dialers to start, SWIM timers, the peer lease). It also routes peer events to
//!   the caches registered by name.
//! - `link_queue`: the bounded queue of one outgoing link.
//! - `round_trip`: each member's latest ping round trip, timed by the shell at a finer
//!   resolution than the state's clock (for [`Member::round_trip`](crate::Member::round_trip)).
//! - `ownership`: who owns a key of a partitioned cache (rendezvous hashing over the members
//!   this node's links reach); the shell keeps the current owners for the caches to ask, and
//!   serves peers' requests for keys this node owns.
//! - `driver`: the tasks moving bytes (accepting, dialing, reading, writing, heartbeats, SWIM
//!   timers, seed refresh). The change log's tailer (`crate::changelog`) feeds the node
//!   through [`LogTarget`].
//!
//! Lock order: the state lock may be held while taking the cache registry's (to empty caches)
//! and a cache's store locks; a cache never calls into the node while holding a lock of its
//! own, so no cycle can form.

mod confirm;
mod driver;
mod link_queue;
pub(crate) mod ownership;
mod replay;
mod round_trip;
pub(crate) mod sequence;
mod state;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use tokio::sync::{Notify, Semaphore, broadcast, mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use crate::changelog::driver::LogTarget;
use crate::changelog::ops::CacheOp;
use crate::changelog::{self, LogRuntime};
use crate::clock::{Clock, Millis};
use crate::config::{Config, ConfigError};
use crate::event::ClusterEvent;
use crate::id::{EventId, NodeId};
use crate::lease::Lease;
use crate::membership::Member;
use crate::metrics::{CacheStats, ClusterCounters, ClusterStats, NodeReport};
use crate::transport::{ClusterKey, Keyring, LinkError, Listener, Network};
use crate::wire::{Change, Event, Frame};
use link_queue::QueueTx;
use ownership::Owners;
use round_trip::RoundTrips;
#[cfg(fuzzing)]
pub(crate) use state::play_link;
use state::{Inbound, LinkId, NodeState, Output, Peer, To, Transmit};

/// Settings the shell and its drivers read.
#[derive(Clone, Debug)]
struct NodeConfig {
    max_staleness: Duration,
    max_frame_bytes: usize,
    link_queue: usize,
    link_queue_bytes: usize,
    max_inbound_links: usize,
    reconnect: (Duration, Duration),
    handshake_timeout: Duration,
    /// The cluster keys; `None` for plaintext links.
    keyring: Option<Keyring>,
    unsafe_ignore_leases: bool,
}

/// A cache as the node sees it: somewhere to apply peers' changes.
pub(crate) trait Sink: Send + Sync {
    /// Applies one change from the peer `from`.
    fn apply(&self, from: &NodeId, change: &Change<'_>);
    /// The cache's counters.
    fn stats(&self) -> CacheStats;
    /// Whether the mesh is the cache's only source of changes (it watches no tables).
    fn is_peer_only(&self) -> bool;
    /// Whether the cache is strong: its reads must see every completed update, which only the
    /// mesh's intents give.
    fn is_strong(&self) -> bool;
    /// Applies a change-log row: the key, as text, changed, to `version` if the log knows it.
    fn apply_logged(&self, key: &str, version: Option<u64>);
    /// Applies a change-log row cohort wrote itself: a clear or a tag invalidation.
    fn apply_logged_op(&self, op: CacheOp<'_>);
    /// Empties the cache: the node missed changes and cannot tell which keys they touched.
    fn flush(&self);
    /// The value of the key encoded as `key`, for a peer that asked this node as the key's
    /// owner: `None` if the cache is not partitioned (then nobody should have asked).
    fn serve(self: Arc<Self>, key: &[u8]) -> Option<Serving>;
}

/// A partitioned cache's answer to a peer's request, once it has one: the value's encoding, or
/// `None` when it cannot serve it.
pub(crate) type Serving = Pin<Box<dyn Future<Output = Option<Vec<u8>>> + Send>>;

/// How many peer requests a node serves at once; past it, a request is answered at once with
/// no value (the asker loads from the source itself), so peers cannot pile up work here.
const MAX_SERVING: usize = 1024;

/// Starts a node named `id` accepting links from `listener` (bound at `bound`): its tasks, and
/// its dialers to the seeds resolved to `seeds` (given as addresses, found by name).
pub(crate) fn start(
    id: NodeId,
    listener: Box<dyn Listener>,
    bound: SocketAddr,
    config: &Config,
    seeds: (&[SocketAddr], &[SocketAddr]),
) -> Arc<Node> {
    let node = Node::new(id, bound, config);
    driver::spawn_listener(&node, listener);
    driver::spawn_timers(&node);
    #[cfg(feature = "metrics")]
    driver::spawn_metrics(&node);
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

/// The shell of a running node, shared by its handle, caches and tasks.
pub(crate) struct Node {
    id: NodeId,
    incarnation: u64,
    /// The address peers dial: the advertised one, or else the bound one.
    addr: SocketAddr,
    /// Where the listener is bound; `addr` may differ (NAT, a proxy).
    bound: SocketAddr,
    config: NodeConfig,
    /// The protocol, and what carries out its decisions in order: one lock.
    core: Mutex<Core>,
    caches: RwLock<BTreeMap<Arc<str>, Arc<dyn Sink>>>,
    events: broadcast::Sender<ClusterEvent>,
    counters: Arc<ClusterCounters>,
    shutdown: watch::Sender<bool>,
    tasks: TaskTracker,
    log: Option<Arc<LogRuntime>>,
    /// Wakes the timer task: an input scheduled a timeout earlier than the one it sleeps for.
    rearm: Notify,
    /// The lease of caches with no change log: every live member confirmed within Δ.
    peer_lease: Arc<Lease>,
    clock: Clock,
    network: Arc<dyn Network>,
    rng_seed: u64,
    /// This node, for the dialers it starts.
    me: Weak<Node>,
    /// Who owns which key of a partitioned cache, as this node's links see it.
    owners: RwLock<Owners>,
    /// Permits for serving peers' requests; see [`MAX_SERVING`].
    serving: Arc<Semaphore>,
}

/// The node's state and the shell's side of its outputs, under one lock: the queue of every
/// outgoing link, and whom to tell when an intent settles.
struct Core {
    state: NodeState,
    queues: BTreeMap<LinkId, QueueTx>,
    intents: BTreeMap<u64, oneshot::Sender<()>>,
    /// The timeout the timer task sleeps until.
    armed: Option<Millis>,
    /// Requests to owners awaiting an answer.
    requests: BTreeMap<u64, Asker>,
    /// Each member's pings awaiting their pongs, and its latest round trip.
    round_trips: RoundTrips,
}

/// Who awaits the answer to a request, and from which owner it must come.
struct Asker {
    owner: NodeId,
    answer: oneshot::Sender<Option<Vec<u8>>>,
}

impl Node {
    fn new(id: NodeId, bound: SocketAddr, config: &Config) -> Arc<Self> {
        let addr = config.advertise.unwrap_or(bound);
        // Microseconds since the Unix epoch: a restarted process gets a higher incarnation.
        let incarnation = config.incarnation.unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(1, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        });
        let rng_seed = config.rng_seed.unwrap_or_else(rand::random);
        let counters = Arc::new(ClusterCounters::default());
        let state = NodeState::new(
            id.clone(),
            addr,
            incarnation,
            rng_seed,
            config,
            Arc::clone(&counters),
        );
        let clock = Clock::from(config.time_source);
        let id_for_owners = id.clone();
        let node = Arc::new_cyclic(|me| Self {
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
            core: Mutex::new(Core {
                state,
                queues: BTreeMap::new(),
                intents: BTreeMap::new(),
                armed: None,
                requests: BTreeMap::new(),
                round_trips: RoundTrips::default(),
            }),
            caches: RwLock::new(BTreeMap::new()),
            events: broadcast::channel(64 * 1024).0,
            counters,
            shutdown: watch::channel(false).0,
            tasks: TaskTracker::new(),
            log: config.change_log.clone().map(|log| {
                Arc::new(LogRuntime::new(
                    log,
                    clock.clone(),
                    config.max_staleness,
                    config.log_retention,
                ))
            }),
            rearm: Notify::new(),
            peer_lease: Arc::new(Lease::default()),
            clock,
            network: Arc::clone(&config.network),
            rng_seed,
            me: me.clone(),
            owners: RwLock::new(Owners::new(id_for_owners, [])),
            serving: Arc::new(Semaphore::new(MAX_SERVING)),
        });
        // The state's first output sets the peer lease: with no peers, it runs from the start.
        node.with_state(|_| ());
        node
    }

    /// Runs one input of the state machine, then carries out what it asked, in order, before
    /// the lock is released: so one thread's effects never overtake another's.
    fn with_state<R>(&self, input: impl FnOnce(&mut NodeState) -> R) -> R {
        let mut core = self.core.lock();
        let result = input(&mut core.state);
        self.carry_out(&mut core);
        result
    }

    /// [`with_state`](Self::with_state) for an input that needs the time, read under the lock so
    /// that the state sees time move forward only.
    fn with_time<R>(&self, input: impl FnOnce(&mut NodeState, Millis) -> R) -> R {
        self.with_state(|state| input(state, self.clock.now()))
    }

    /// Carries out what the state asked, until it asks nothing more: frames onto their links'
    /// queues first (a link that overflowed or whose writer is gone is closed), then the rest,
    /// in order.
    fn carry_out(&self, core: &mut Core) {
        loop {
            while let Some(Transmit { to, frame }) = core.state.poll_transmit() {
                match to {
                    To::Link(link) => self.queue(core, link, frame),
                    To::Every => {
                        // Links fail rarely: remembered, then closed once the map is free.
                        let mut failed = Vec::new();
                        for (&link, queue) in &core.queues {
                            if let Err(error) = queue.try_send(frame.clone()) {
                                failed.push((link, error));
                            }
                        }
                        for (link, error) in failed {
                            self.close_failed(core, link, &error);
                        }
                    }
                }
            }
            let Some(output) = core.state.poll_output() else {
                if core.state.poll_timeout() < core.armed.or(Some(Millis::MAX)) {
                    self.rearm.notify_one();
                }
                return;
            };
            match output {
                Output::Notify(event) => {
                    if let ClusterEvent::PeerLeft { node }
                    | ClusterEvent::MemberForgotten { node, .. } = &event
                    {
                        core.round_trips.forget(node);
                    }
                    self.notify(event);
                }
                Output::Flush => self.flush_caches(|sink| sink.is_peer_only() || sink.is_strong()),
                Output::Dial(addr) => self.dial(addr),
                Output::CloseLink(link) => {
                    core.queues.remove(&link);
                }
                Output::IntentSettled(seq) => {
                    if let Some(done) = core.intents.remove(&seq) {
                        let _ = done.send(());
                    }
                }
                Output::PeerLease(since) => {
                    self.peer_lease
                        .set(&self.clock, since, self.config.max_staleness);
                }
                Output::Owners(owners) => *self.owners.write() = owners,
                Output::Pinged { peer, nonce } => {
                    core.round_trips.pinged(peer, nonce, Instant::now());
                }
            }
        }
    }

    /// Starts a dialer for `addr`. Kept out of line: the dialer's future is large, and inlined it
    /// would give every input's path (each publish, each event) a stack frame of kilobytes.
    #[inline(never)]
    fn dial(&self, addr: SocketAddr) {
        if let Some(node) = self.me.upgrade() {
            driver::spawn_dialer(&node, addr);
        }
    }

    /// Queues `frame` on `link`; a link that overflowed or whose writer is gone is closed.
    fn queue(&self, core: &mut Core, link: LinkId, frame: Bytes) {
        let Some(queue) = core.queues.get(&link) else {
            return;
        };
        if let Err(error) = queue.try_send(frame) {
            self.close_failed(core, link, &error);
        }
    }

    /// Closes a link whose queue refused a frame: it overflowed, or its writer is gone.
    fn close_failed(
        &self,
        core: &mut Core,
        link: LinkId,
        error: &mpsc::error::TrySendError<Bytes>,
    ) {
        if let mpsc::error::TrySendError::Full(_) = error {
            // The peer catches up from the ring when it reconnects.
            self.counters.links_overflowed.incr();
            tracing::warn!(node = %self.id, "a peer link overflowed; closing it");
        }
        core.queues.remove(&link);
        core.state.close_link(link);
    }

    // ---- For the handle and the caches.

    pub(crate) fn id(&self) -> &NodeId {
        &self.id
    }

    pub(crate) fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// The address peers dial: the advertised one, or else the bound one.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where the listener is bound.
    pub(crate) fn bound_addr(&self) -> SocketAddr {
        self.bound
    }

    pub(crate) fn max_staleness(&self) -> Duration {
        self.config.max_staleness
    }

    pub(crate) fn max_frame_bytes(&self) -> usize {
        self.config.max_frame_bytes
    }

    /// Whether caches serve whatever their leases say (for tests showing what leases prevent).
    pub(crate) fn ignores_leases(&self) -> bool {
        self.config.unsafe_ignore_leases
    }

    pub(crate) fn clock(&self) -> &Clock {
        &self.clock
    }

    /// The lease of caches with no change log.
    pub(crate) fn peer_lease(&self) -> &Arc<Lease> {
        &self.peer_lease
    }

    pub(crate) fn log(&self) -> Option<&Arc<LogRuntime>> {
        self.log.as_ref()
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<ClusterEvent> {
        self.events.subscribe()
    }

    pub(crate) fn stats(&self) -> ClusterStats {
        self.counters.snapshot()
    }

    /// Each cache's counters, by name.
    pub(crate) fn cache_stats(&self) -> Vec<(String, CacheStats)> {
        self.caches
            .read()
            .iter()
            .map(|(name, sink)| (name.to_string(), sink.stats()))
            .collect()
    }

    /// Everything this node counts, for its Prometheus page and the `metrics` facade.
    pub(crate) fn report(&self) -> NodeReport<'_> {
        NodeReport {
            node: self.id.as_str(),
            peers_connected: self.connected_peers(),
            peer_lease_remaining: self.peer_lease.remaining(&self.clock),
            cluster: self.stats(),
            caches: self.cache_stats(),
            log: self.log.as_ref().map(|log| log.status()),
        }
    }

    /// The members, as [`Cluster::members`](crate::Cluster::members) shows them.
    pub(crate) fn members(&self) -> Vec<Member> {
        let core = self.core.lock();
        let mut members = core.state.members(self.clock.now());
        for member in &mut members {
            member.round_trip = member
                .node
                .as_ref()
                .and_then(|node| core.round_trips.last(node));
        }
        members
    }

    /// How many members this node's links reach now.
    pub(crate) fn connected_peers(&self) -> usize {
        self.core.lock().state.connected_peers()
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

    /// Replaces the cluster keys and closes every outgoing link: each dialer opens a new one
    /// with the new keys, and the peer says where its stream resumes. `false` if the node was
    /// started without keys.
    pub(crate) fn rekey(&self, keys: Vec<ClusterKey>) -> bool {
        let Some(keyring) = &self.config.keyring else {
            return false;
        };
        keyring.replace(keys);
        self.with_state(|state| state.close_all_links());
        true
    }

    /// Numbers a change to `cache` as this node's next event and queues it to every peer.
    pub(crate) fn publish(&self, cache: &str, change: Change<'_>) -> EventId {
        let seq = self.with_state(|state| state.publish(cache, change));
        EventId {
            origin: self.id.clone(),
            incarnation: self.incarnation,
            seq,
        }
    }

    /// Announces a strong update of `key` in `cache` to every peer, as an event. Resolves once
    /// every live member acknowledged it, or after the bound: a member that did not answer by
    /// then cannot be serving any more, since its lease rests on this node's answers to its
    /// pings, which travel behind the announcement.
    pub(crate) async fn announce_intent(&self, cache: &str, key: &[u8]) {
        let (done, settled) = oneshot::channel();
        let seq = {
            let mut core = self.core.lock();
            let seq = core.state.publish_intent(cache, key);
            // Registered before the outputs are carried out: one may settle it at once.
            core.intents.insert(seq, done);
            self.carry_out(&mut core);
            seq
        };
        if tokio::time::timeout(self.config.max_staleness, settled)
            .await
            .is_err()
        {
            let mut core = self.core.lock();
            core.state.abandon_intent(seq);
            core.intents.remove(&seq);
        }
    }

    /// The owner of the key encoded as `key` in partitioned caches: `None` for this node.
    pub(crate) fn owner_of(&self, key: &[u8]) -> Option<NodeId> {
        self.owners.read().owner(key).cloned()
    }

    /// Asks `owner` for `key` of `cache`, behind every change this node published before.
    /// `None` when it has no link to the owner, the owner cannot serve the key, or no answer
    /// came `within`.
    pub(crate) async fn ask(
        &self,
        owner: &NodeId,
        cache: &str,
        key: &[u8],
        within: Duration,
    ) -> Option<Vec<u8>> {
        let (answer, answered) = oneshot::channel();
        let pending = {
            let mut core = self.core.lock();
            let id = core.state.request(owner, cache, key)?;
            core.requests.insert(
                id,
                Asker {
                    owner: owner.clone(),
                    answer,
                },
            );
            self.carry_out(&mut core);
            Pending { node: self, id }
        };
        let value = tokio::time::timeout(within, answered).await;
        drop(pending);
        value.ok()?.ok()?
    }

    /// Stops the node: tells every peer it is leaving (each link's writer sends that last, then
    /// closes), and ends every other task.
    pub(crate) fn stop(&self) {
        self.shutdown.send_replace(true);
        self.tasks.close();
        self.with_state(|state| state.stop());
    }

    /// Stops the node and waits until its tasks ended, then until its network's did.
    pub(crate) async fn shut_down(&self) {
        self.stop();
        self.tasks.wait().await;
        self.network.close().await;
    }

    // ---- For the drivers.

    /// Records and returns how long until the state's next timeout (zero if it is due).
    fn arm_timer(&self) -> Option<Millis> {
        let mut core = self.core.lock();
        core.armed = core.state.poll_timeout();
        let now = self.clock.now();
        core.armed.map(|due| due.saturating_sub(now))
    }

    fn add_seeds(&self, addrs: &[SocketAddr], fixed: bool) {
        self.with_time(|state, now| state.add_seeds(addrs, fixed, now));
    }

    /// Counts why a link failed or was refused, where it was the other end's doing.
    fn count_link_error(&self, error: &LinkError) {
        match error {
            LinkError::Wire(_) => self.counters.frames_rejected.incr(),
            LinkError::Auth(_) => self.counters.auth_failures.incr(),
            _ => {}
        }
    }

    /// Opens a queue for a new outgoing link to `addr`.
    fn open_link(&self, addr: SocketAddr) -> (LinkId, state::LinkStart, link_queue::QueueRx) {
        let (queue, rx) = link_queue::channel(self.config.link_queue, self.config.link_queue_bytes);
        let mut core = self.core.lock();
        let (link, start) = core.state.open_link(addr);
        core.queues.insert(link, queue);
        (link, start, rx)
    }

    /// Applies an event from `from` that the state said to apply, and acknowledges an intent
    /// once applied.
    fn apply(&self, from: &Peer, event: &Event<'_>) {
        let sink = self.caches.read().get(event.cache).cloned();
        if let Some(sink) = sink {
            sink.apply(&from.node, &event.change);
        }
        if let Change::Intent { .. } = event.change {
            self.with_state(|state| state.acknowledge(from, event.seq));
        }
        self.counters.events_applied.incr();
        if self.events.receiver_count() > 0 {
            self.notify(ClusterEvent::Applied {
                event: EventId {
                    origin: from.node.clone(),
                    incarnation: event.incarnation,
                    seq: event.seq,
                },
                at: Instant::now(),
            });
        }
    }

    /// Handles a frame from an inbound link: applies an event to apply, serves a request, hands
    /// an answer to its asker.
    fn receive(&self, from: &Peer, frame: &Frame<'_>) -> Result<Inbound, LinkError> {
        let Frame::Event(event) = frame else {
            let inbound = self.with_time(|state, now| state.handle_frame(from, frame, now))?;
            match (inbound, frame) {
                (Inbound::Serve, &Frame::Request { id, cache, key }) => {
                    self.serve(from, id, cache, key);
                }
                (Inbound::Answer, &Frame::Answer { id, value }) => self.answered(from, id, value),
                (_, &Frame::Pong { nonce, .. }) => self.ponged(from, nonce),
                _ => {}
            }
            return Ok(inbound);
        };
        let inbound = self.with_state(|state| state.handle_event(from, event))?;
        if inbound == Inbound::Apply {
            self.apply(from, event);
        }
        Ok(inbound)
    }

    /// Serves `from`'s request `id` for `key` of `cache` in a task of its own, or answers at
    /// once that it cannot: no such partitioned cache here, or too many requests in hand.
    fn serve(&self, from: &Peer, id: u64, cache: &str, key: &[u8]) {
        let serving = self
            .caches
            .read()
            .get(cache)
            .cloned()
            .and_then(|sink| sink.serve(key));
        let permit = Arc::clone(&self.serving).try_acquire_owned().ok();
        let (Some(serving), Some(permit), Some(node)) = (serving, permit, self.me.upgrade()) else {
            self.with_state(|state| state.answer(from, id, None));
            return;
        };
        let from = from.clone();
        self.tasks.spawn(async move {
            let value = serving.await;
            drop(permit);
            node.with_state(|state| state.answer(&from, id, value.as_deref()));
        });
    }

    /// Times the round trip of the ping `from` answered with `nonce`.
    fn ponged(&self, from: &Peer, nonce: u64) {
        let took = self
            .core
            .lock()
            .round_trips
            .ponged(&from.node, nonce, Instant::now());
        #[cfg(feature = "metrics")]
        if let Some(took) = took {
            crate::metrics::facade::record_round_trip(&self.id, &from.node, took);
        }
        #[cfg(not(feature = "metrics"))]
        let _ = took;
    }

    /// Hands an answer to the request it answers, if `from` is the owner that was asked.
    fn answered(&self, from: &Peer, id: u64, value: Option<&[u8]>) {
        let mut core = self.core.lock();
        if core
            .requests
            .get(&id)
            .is_some_and(|asker| asker.owner == from.node)
            && let Some(asker) = core.requests.remove(&id)
        {
            let _ = asker.answer.send(value.map(<[u8]>::to_vec));
        }
    }

    fn notify(&self, event: ClusterEvent) {
        if self.events.receiver_count() > 0 {
            let _ = self.events.send(event);
        }
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

    fn apply_logged(&self, cache: &str, key: &str, version: Option<u64>) {
        let (cache, op) = match changelog::ops::parse(cache, key) {
            Some((cache, op)) => (cache, Some(op)),
            None => (cache, None),
        };
        let sink = self.caches.read().get(cache).cloned();
        match (sink, op) {
            (Some(sink), Some(op)) => sink.apply_logged_op(op),
            (Some(sink), None) => sink.apply_logged(key, version),
            (None, _) => {}
        }
    }

    fn flush_watching(&self) {
        self.flush_caches(|sink| !sink.is_peer_only());
    }

    fn notify(&self, event: ClusterEvent) {
        Node::notify(self, event);
    }
}

/// A request awaiting its answer: forgotten when its asker stops waiting, however it stops.
struct Pending<'a> {
    node: &'a Node,
    id: u64,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.node.core.lock().requests.remove(&self.id);
    }
}
