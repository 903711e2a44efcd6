//! The node runtime: who this node is, which peers it knows, and how events reach caches.
//!
//! [`Cluster`] is the handle an application holds; [`ClusterBuilder`] configures and starts it.
//! Inside, a [`Node`] owns the shared state:
//! - the outbox, which numbers every event this node originates, queues it on every link and
//!   keeps the latest in the replay ring (`replay`) for peers whose link broke;
//! - the [`SequenceTracker`](sequence::SequenceTracker), the pure state machine that judges each
//!   peer event (apply, duplicate, gap, retired incarnation);
//! - the peer confirmations (`confirm`) behind the peer lease, vetoed by SWIM membership
//!   (`crate::membership`) before a silent peer is retired;
//! - strong updates' intents awaiting acknowledgement;
//! - the registry of caches by name, through which peer events reach the right store.
//!
//! The tasks that move bytes (accepting, dialing, reading, writing, heartbeats, SWIM timers)
//! live in `driver`.

mod confirm;
mod driver;
mod link_queue;
mod replay;
pub(crate) mod sequence;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use crate::cache::{CacheBuilder, Key, Value};
use crate::changelog::{self, ChangeLog, DEFAULT_LOG_RETENTION, LogRuntime, LogStatus};
use crate::clock::{Clock, TimeSource, millis};
use crate::lease::Lease;
use crate::membership::{
    self, Admission, Identity, MAX_NAME_BYTES, Membership, Refusal, Roster, RosterConfig,
    SwimState, Timer,
};
use crate::metrics::{CacheStats, ClusterCounters, ClusterStats, NodeReport, render_prometheus};
use crate::transport::{self, ClusterKey, Keyring, LinkError, Network, Tcp};
use crate::wire::{Change, Event, Frame, PeerInfo, WireError};
use confirm::{Confirmations, PongVerdict};
use replay::ReplayRing;
use sequence::{Delivery, SequenceTracker};

/// Default for [`ClusterBuilder::max_staleness`].
pub const DEFAULT_MAX_STALENESS: Duration = Duration::from_millis(500);
/// Default for [`ClusterBuilder::max_frame_bytes`].
pub const DEFAULT_MAX_FRAME_BYTES: usize = 4 << 20;
/// Default for [`ClusterBuilder::link_queue`].
pub const DEFAULT_LINK_QUEUE: usize = 64 * 1024;
/// Default for [`ClusterBuilder::link_queue_bytes`].
pub const DEFAULT_LINK_QUEUE_BYTES: usize = 64 << 20;
/// Default for [`ClusterBuilder::max_inbound_links`].
pub const DEFAULT_MAX_INBOUND_LINKS: usize = 1024;
/// Default for [`ClusterBuilder::reconnect_backoff`]: first delay ceiling.
pub const DEFAULT_RECONNECT_MIN: Duration = Duration::from_millis(20);
/// Default for [`ClusterBuilder::reconnect_backoff`]: largest delay.
pub const DEFAULT_RECONNECT_MAX: Duration = Duration::from_secs(2);
/// Default for [`ClusterBuilder::seed_refresh`].
pub const DEFAULT_SEED_REFRESH: Duration = Duration::from_secs(30);
/// Default for [`ClusterBuilder::replay_buffer`].
pub const DEFAULT_REPLAY_BUFFER: usize = 16 << 20;
/// Default for [`ClusterBuilder::handshake_timeout`].
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Default for [`ClusterBuilder::max_members`].
pub const DEFAULT_MAX_MEMBERS: usize = 1024;
/// Default for [`ClusterBuilder::forget_after`].
pub const DEFAULT_FORGET_AFTER: Duration = Duration::from_secs(30);

/// A node's name, unique within its cluster. Cheap to clone.
///
/// ```
/// let id = cohort::NodeId::from("a");
/// assert_eq!(id.as_str(), "a");
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeId(Arc<str>);

impl NodeId {
    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for NodeId {
    fn from(name: &str) -> Self {
        Self(name.into())
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Identifies one event: its origin node, the origin's incarnation, and its sequence number.
///
/// ```
/// let id = cohort::EventId { origin: "a".into(), incarnation: 1, seq: 1 };
/// assert_eq!(id.to_string(), "a/1#1");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EventId {
    /// The node that originated the event.
    pub origin: NodeId,
    /// The origin's process epoch when it sent the event.
    pub incarnation: u64,
    /// The event's position in the origin's sequence, from 1.
    pub seq: u64,
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}#{}", self.origin, self.incarnation, self.seq)
    }
}

/// Something that happened in the cluster, as seen by this node; from [`Cluster::subscribe`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum ClusterEvent {
    /// A link to a peer was established: this node now sends it its events.
    PeerUp {
        /// The peer's name.
        node: NodeId,
        /// The peer's listen address.
        addr: SocketAddr,
    },
    /// The link to a peer closed; reconnection is under way.
    PeerDown {
        /// The peer's name.
        node: NodeId,
        /// The peer's listen address.
        addr: SocketAddr,
    },
    /// A peer confirmed that this node has all its events (answered a ping).
    Confirmed {
        /// The peer.
        node: NodeId,
    },
    /// A peer was silent for twice the bound: peer-only caches no longer wait for it, and were
    /// flushed, since events it sent before its own lease ended may be lost.
    PeerSilent {
        /// The peer.
        node: NodeId,
    },
    /// A peer shut down and said so; nobody waits for it any more.
    PeerLeft {
        /// The peer.
        node: NodeId,
    },
    /// SWIM holds a node up: it joined, came back or restarted.
    MemberUp {
        /// The node.
        node: NodeId,
        /// Its listen address.
        addr: SocketAddr,
    },
    /// SWIM declared a node down: neither this node nor the members it asked could reach it.
    MemberDown {
        /// The node.
        node: NodeId,
        /// Its listen address.
        addr: SocketAddr,
    },
    /// A member was forgotten: never reached, or down, for
    /// [`forget_after`](ClusterBuilder::forget_after). It is no longer dialed, gossiped or
    /// counted.
    MemberForgotten {
        /// The node.
        node: NodeId,
        /// Where it accepted links.
        addr: SocketAddr,
    },
    /// A known node came back as a new process, or at a new address: it replaced its old entry.
    MemberReplaced {
        /// The node.
        node: NodeId,
        /// Where it accepted links before.
        old_addr: SocketAddr,
        /// Where it accepts links now.
        addr: SocketAddr,
    },
    /// A peer's event was applied to this node's cache.
    Applied {
        /// The event.
        event: EventId,
        /// When it was applied.
        at: Instant,
    },
    /// A poll of the change log read it to its end and renewed the leases.
    LogPolled {
        /// Rows it applied.
        rows: u64,
        /// When it started: every change committed before this is now applied here.
        started: Instant,
    },
    /// A change-log operation failed; caches that watch tables bypass until a poll succeeds.
    LogUnavailable {
        /// What failed.
        error: String,
    },
    /// Events of a peer never arrived and were no longer in its replay buffer; this node
    /// flushed the caches no change log covers instead.
    Gap {
        /// The peer whose events were missed.
        origin: NodeId,
        /// Their sequence numbers.
        missed: RangeInclusive<u64>,
    },
}

/// A peer as this node knows it; from [`Cluster::members`].
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
    /// Whether this node's link to it is up.
    pub connected: bool,
    /// Whether this node's peer-only caches wait for its confirmation: it has been heard from
    /// within twice the bound, or SWIM holds it up.
    pub live: bool,
    /// Whether SWIM holds it up: reached, directly or through other members, recently enough
    /// not to be declared down.
    pub up: bool,
}

/// Why a configuration was refused. Nothing was started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A setting is out of its range.
    #[error("invalid {setting}: {reason}")]
    Invalid {
        /// The setting's name.
        setting: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A cache of this name already exists on this node.
    #[error("a cache named {0:?} already exists")]
    DuplicateCache(String),
}

/// Why a node could not start. Nothing was left running.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The configuration was refused.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The listen address could not be bound (in use, not local, no permission).
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The node would listen where other machines can reach it, without cluster keys.
    #[error(
        "refusing to listen on {addr} without cluster keys: give every node the same key \
         (`cohort keygen`, then --cluster-key-file or ClusterBuilder::cluster_keys), or, on a \
         network where every process is trusted, --insecure (ClusterBuilder::insecure)"
    )]
    Insecure {
        /// The address it would have listened on.
        addr: SocketAddr,
    },
    /// A seed did not resolve to any address.
    #[error("cannot resolve seed {seed:?}: {source}")]
    Seed {
        /// The seed as given.
        seed: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// Configures and starts a node. Every setting has a default; see [`Cluster::builder`].
#[derive(Clone)]
pub struct ClusterBuilder {
    network: Arc<dyn Network>,
    time_source: TimeSource,
    rng_seed: Option<u64>,
    incarnation: Option<u64>,
    name: Option<String>,
    listen: SocketAddr,
    advertise: Option<SocketAddr>,
    seeds: Vec<String>,
    max_staleness: Duration,
    max_frame_bytes: usize,
    link_queue: usize,
    link_queue_bytes: usize,
    max_inbound_links: usize,
    replay_buffer: usize,
    reconnect: (Duration, Duration),
    handshake_timeout: Duration,
    change_log: Option<ChangeLog>,
    log_retention: Duration,
    seed_refresh: Duration,
    max_members: usize,
    forget_after: Option<Duration>,
    cluster_keys: Vec<ClusterKey>,
    insecure: bool,
    unsafe_ignore_leases: bool,
}

impl fmt::Debug for ClusterBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterBuilder")
            .field("name", &self.name)
            .field("listen", &self.listen)
            .field("seeds", &self.seeds)
            .field("max_staleness", &self.max_staleness)
            .finish_non_exhaustive()
    }
}

impl Default for ClusterBuilder {
    fn default() -> Self {
        Self {
            network: Arc::new(Tcp),
            time_source: TimeSource::System,
            rng_seed: None,
            incarnation: None,
            name: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            advertise: None,
            seeds: Vec::new(),
            max_staleness: DEFAULT_MAX_STALENESS,
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            link_queue: DEFAULT_LINK_QUEUE,
            link_queue_bytes: DEFAULT_LINK_QUEUE_BYTES,
            max_inbound_links: DEFAULT_MAX_INBOUND_LINKS,
            replay_buffer: DEFAULT_REPLAY_BUFFER,
            reconnect: (DEFAULT_RECONNECT_MIN, DEFAULT_RECONNECT_MAX),
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            change_log: None,
            log_retention: DEFAULT_LOG_RETENTION,
            seed_refresh: DEFAULT_SEED_REFRESH,
            max_members: DEFAULT_MAX_MEMBERS,
            forget_after: None,
            cluster_keys: Vec::new(),
            insecure: false,
            unsafe_ignore_leases: false,
        }
    }
}

impl ClusterBuilder {
    /// This node's name, unique in the cluster, at most 128 bytes. It is the node's identity:
    /// a process started again under the same name (at any address) replaces the old one in
    /// every peer's member table, so give a node that restarts elsewhere (a Kubernetes pod) the
    /// same name, e.g. a StatefulSet pod's.
    ///
    /// Defaults to: `node-` followed by the listen port once bound.
    pub fn node_name(&mut self, name: impl Into<String>) -> &mut Self {
        self.name = Some(name.into());
        self
    }

    /// Where to accept links from peers.
    ///
    /// Defaults to: `127.0.0.1:0` (a free loopback port; see [`Cluster::local_addr`]).
    pub fn listen(&mut self, addr: SocketAddr) -> &mut Self {
        self.listen = addr;
        self
    }

    /// The address peers should dial, when it differs from the bound one (a wildcard bind, NAT).
    ///
    /// Defaults to: the bound listen address.
    pub fn advertise(&mut self, addr: SocketAddr) -> &mut Self {
        self.advertise = Some(addr);
        self
    }

    /// Addresses (`host:port`) of nodes to join through. One reachable seed is enough: peers
    /// tell each other whom they know. A DNS name may stand for several nodes (a headless
    /// service): it is resolved again every [`seed_refresh`](Self::seed_refresh) and new
    /// addresses are dialed. Give every node the same list: a node that knows of no peer is a
    /// cluster of one.
    ///
    /// Defaults to: none (the node waits to be dialed).
    pub fn seeds<I, S>(&mut self, seeds: I) -> &mut Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.seeds = seeds.into_iter().map(Into::into).collect();
        self
    }

    /// The most members a node keeps in its member table, itself not included. A name new to a
    /// full table is refused (counted in `members_refused`), unless it was met directly and some
    /// member was never reached: the longest unheard of those makes room.
    ///
    /// Defaults to: [`DEFAULT_MAX_MEMBERS`] (1024).
    pub fn max_members(&mut self, members: usize) -> &mut Self {
        self.max_members = members;
        self
    }

    /// How long a member may stay unreached, or silent and declared down by SWIM, before this
    /// node forgets it: stops dialing it, gossiping it and counting it toward the majority. A
    /// member this node once reached is forgotten only while this node and its live members are
    /// a strict majority of every member it counts, that one included, so a node cut off from
    /// the others never forgets them. A new process of a known name replaces the old one at
    /// once, without waiting for this.
    ///
    /// Defaults to: [`DEFAULT_FORGET_AFTER`] (30 s), or 4 × `max_staleness` if that is longer;
    /// at least 4 × `max_staleness`.
    pub fn forget_after(&mut self, grace: Duration) -> &mut Self {
        self.forget_after = Some(grace);
        self
    }

    /// The grace before a member is forgotten: as set, or the default for the bound.
    fn grace(&self) -> Duration {
        self.forget_after
            .unwrap_or_else(|| DEFAULT_FORGET_AFTER.max(self.max_staleness.saturating_mul(4)))
    }

    /// The cluster keys: every link is then authenticated and encrypted (Noise, with the key as a
    /// pre-shared secret). The first key is the primary, used to dial (a dial that fails tries the
    /// next one on its next attempt); all are accepted. Every node of a cluster needs a key in
    /// common with every other. See [`Cluster::set_cluster_keys`] for rotation.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let key = cohort::ClusterKey::generate();
    /// let a = cohort::Cluster::builder().cluster_keys([key.clone()]).start().await?;
    /// let b = cohort::Cluster::builder()
    ///     .cluster_keys([key])
    ///     .seeds([a.local_addr().to_string()])
    ///     .start()
    ///     .await?;
    /// b.wait_for_peers(1).await;
    /// # Ok(()) }
    /// ```
    ///
    /// Defaults to: none. Links are then plaintext and unauthenticated, and a node refuses to
    /// start where others could reach it unless [`insecure`](Self::insecure) says so.
    pub fn cluster_keys(&mut self, keys: impl IntoIterator<Item = ClusterKey>) -> &mut Self {
        self.cluster_keys = keys.into_iter().collect();
        self
    }

    /// Lets a node without cluster keys listen where other machines can reach it (a non-loopback
    /// address, or a [`Network`] that says so). Anything that reaches its peer port can then join
    /// the cluster, read every change and inject its own: only for networks where every process
    /// is trusted.
    ///
    /// Defaults to: `false`.
    pub fn insecure(&mut self, insecure: bool) -> &mut Self {
        self.insecure = insecure;
        self
    }

    /// How often seeds given as DNS names are resolved again.
    ///
    /// Defaults to: [`DEFAULT_SEED_REFRESH`] (30 s).
    pub fn seed_refresh(&mut self, every: Duration) -> &mut Self {
        self.seed_refresh = every;
        self
    }

    /// The promised bound Δ on staleness.
    ///
    /// Defaults to: [`DEFAULT_MAX_STALENESS`] (500 ms).
    pub fn max_staleness(&mut self, bound: Duration) -> &mut Self {
        self.max_staleness = bound;
        self
    }

    /// The largest frame accepted from a peer; a longer one closes its link unread. Also caps the
    /// size of a replicated value.
    ///
    /// Defaults to: [`DEFAULT_MAX_FRAME_BYTES`] (4 MiB).
    pub fn max_frame_bytes(&mut self, bytes: usize) -> &mut Self {
        self.max_frame_bytes = bytes;
        self
    }

    /// Frames queued per peer before the link counts as overflowed. An overflowed link is closed
    /// and re-established; the peer catches up from the [replay buffer](Self::replay_buffer).
    ///
    /// Defaults to: [`DEFAULT_LINK_QUEUE`].
    pub fn link_queue(&mut self, frames: usize) -> &mut Self {
        self.link_queue = frames;
        self
    }

    /// Bytes of frames queued per peer before the link counts as overflowed, as with
    /// [`link_queue`](Self::link_queue): what a peer that stops reading can make this node hold.
    ///
    /// Defaults to: [`DEFAULT_LINK_QUEUE_BYTES`] (64 MiB); at least `max_frame_bytes`.
    pub fn link_queue_bytes(&mut self, bytes: usize) -> &mut Self {
        self.link_queue_bytes = bytes;
        self
    }

    /// The most links accepted from peers at once (handshakes included). A connection over the
    /// limit is closed at once and counted (`links_refused`): a flood of connections cannot
    /// exhaust the node.
    ///
    /// Defaults to: [`DEFAULT_MAX_INBOUND_LINKS`] (1024).
    pub fn max_inbound_links(&mut self, links: usize) -> &mut Self {
        self.max_inbound_links = links;
        self
    }

    /// How many bytes of its latest events a node keeps to replay to a peer whose link broke
    /// (a reset, a partition, an overflow). The peer says how far it got when the link comes
    /// back and receives the rest before anything newer. Events that fell out of the buffer are
    /// a gap: the peer flushes its caches that no change log covers. Zero keeps nothing.
    ///
    /// Defaults to: [`DEFAULT_REPLAY_BUFFER`] (16 MiB).
    pub fn replay_buffer(&mut self, bytes: usize) -> &mut Self {
        self.replay_buffer = bytes;
        self
    }

    /// Delays between reconnect attempts: exponential from `min` to `max`, with full jitter.
    ///
    /// Defaults to: [`DEFAULT_RECONNECT_MIN`] to [`DEFAULT_RECONNECT_MAX`].
    pub fn reconnect_backoff(&mut self, min: Duration, max: Duration) -> &mut Self {
        self.reconnect = (min, max);
        self
    }

    /// How long a peer may take to complete its handshake.
    ///
    /// Defaults to: [`DEFAULT_HANDSHAKE_TIMEOUT`].
    pub fn handshake_timeout(&mut self, timeout: Duration) -> &mut Self {
        self.handshake_timeout = timeout;
        self
    }

    /// The database change log this node tails. With it, caches that
    /// [watch tables](crate::CacheBuilder::watch_table) keep the staleness bound whatever happens
    /// to the mesh, and see changes made by writers that never go through cohort.
    ///
    /// Defaults to: none (changes travel over the mesh only).
    pub fn change_log(&mut self, log: ChangeLog) -> &mut Self {
        self.change_log = Some(log);
        self
    }

    /// How long change-log rows are kept. A node paused or cut off for longer flushes its caches
    /// when it catches up.
    ///
    /// Defaults to: [`DEFAULT_LOG_RETENTION`] (10 minutes).
    pub fn log_retention(&mut self, retention: Duration) -> &mut Self {
        self.log_retention = retention;
        self
    }

    /// Where connections come from: the operating system's TCP, or a simulated network for
    /// deterministic tests.
    ///
    /// Defaults to: [`Tcp`].
    pub fn network(&mut self, network: impl Network) -> &mut Self {
        self.network = Arc::new(network);
        self
    }

    /// Which clock leases and expiries are read from.
    ///
    /// Defaults to: [`TimeSource::System`].
    pub fn time_source(&mut self, source: TimeSource) -> &mut Self {
        self.time_source = source;
        self
    }

    /// Seeds the node's randomness (reconnect jitter), so that a simulation replays exactly.
    ///
    /// Defaults to: a random seed.
    pub fn rng_seed(&mut self, seed: u64) -> &mut Self {
        self.rng_seed = Some(seed);
        self
    }

    /// Which life of its name this process is: peers take a higher incarnation for a restart
    /// (they drop the old process's state and flush what it may have changed unseen) and refuse a
    /// lower one. Set it only where the system clock is not the clock, as in a simulation; it must
    /// grow with every start of the name, or peers take the new process for the old one and drop
    /// its events as duplicates.
    ///
    /// ```
    /// let mut builder = cohort::Cluster::builder();
    /// builder.incarnation(42);
    /// ```
    ///
    /// Defaults to: microseconds since the Unix epoch when the node starts.
    pub fn incarnation(&mut self, incarnation: u64) -> &mut Self {
        self.incarnation = Some(incarnation);
        self
    }

    /// Breaks the staleness bound on purpose: caches serve whatever they hold, whether or not the
    /// node can vouch for it (no change-log or peer lease is checked). It exists so that a
    /// consistency checker can show that it catches the staleness that follows. Never use it to
    /// serve anyone.
    #[doc(hidden)]
    pub fn unsafe_ignore_leases(&mut self, ignore: bool) -> &mut Self {
        self.unsafe_ignore_leases = ignore;
        self
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |setting, reason: &str| {
            Err(ConfigError::Invalid {
                setting,
                reason: reason.to_owned(),
            })
        };
        if self.name.as_deref() == Some("") {
            return invalid("node_name", "must not be empty");
        }
        if self.name.as_ref().is_some_and(|n| n.len() > MAX_NAME_BYTES) {
            return invalid("node_name", "must be at most 128 bytes");
        }
        if self.incarnation == Some(0) {
            return invalid("incarnation", "must be positive");
        }
        if self.max_members == 0 {
            return invalid("max_members", "must be positive");
        }
        if self.grace() < self.max_staleness.saturating_mul(4) {
            return invalid("forget_after", "must be at least 4 × max_staleness");
        }
        if self.max_staleness.is_zero() {
            return invalid("max_staleness", "must be positive");
        }
        if self.max_frame_bytes < 64 << 10 || self.max_frame_bytes > u32::MAX as usize {
            return invalid("max_frame_bytes", "must be between 64 KiB and 4 GiB");
        }
        if self.link_queue == 0 {
            return invalid("link_queue", "must be positive");
        }
        if self.link_queue_bytes < self.max_frame_bytes {
            return invalid("link_queue_bytes", "must be at least max_frame_bytes");
        }
        if self.max_inbound_links == 0 {
            return invalid("max_inbound_links", "must be positive");
        }
        let (min, max) = self.reconnect;
        if min.is_zero() || min > max {
            return invalid("reconnect_backoff", "needs 0 < min <= max");
        }
        if self.handshake_timeout.is_zero() {
            return invalid("handshake_timeout", "must be positive");
        }
        if self.seed_refresh.is_zero() {
            return invalid("seed_refresh", "must be positive");
        }
        if self.log_retention < self.max_staleness * 4 {
            return invalid("log_retention", "must be at least 4 × max_staleness");
        }
        Ok(())
    }

    /// Binds the listen address and starts the node's tasks on the current tokio runtime.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cohort::StartError> {
    /// let cluster = cohort::Cluster::builder().node_name("a").start().await?;
    /// assert_eq!(cluster.node_id().as_str(), "a");
    /// # Ok(()) }
    /// ```
    pub async fn start(&self) -> Result<Cluster, StartError> {
        self.validate()?;
        let (mut fixed, mut by_name) = (Vec::new(), Vec::new());
        for seed in &self.seeds {
            let resolved = self
                .network
                .resolve(seed)
                .await
                .map_err(|source| StartError::Seed {
                    seed: seed.clone(),
                    source,
                })?;
            if seed.parse::<SocketAddr>().is_ok() {
                fixed.extend(resolved);
            } else {
                by_name.extend(resolved);
            }
        }
        let listener = self
            .network
            .bind(self.listen)
            .await
            .map_err(|source| StartError::Bind {
                addr: self.listen,
                source,
            })?;
        let bound = listener.local_addr().map_err(|source| StartError::Bind {
            addr: self.listen,
            source,
        })?;
        if self.cluster_keys.is_empty() && !self.insecure && !self.network.is_private(bound) {
            return Err(StartError::Insecure { addr: bound });
        }
        let advertised = self.advertise.unwrap_or(bound);
        let name = self
            .name
            .clone()
            .unwrap_or_else(|| format!("node-{}", bound.port()));
        let (node, swim_timers) = Node::new(NodeId::from(name.as_str()), advertised, bound, self);
        let node = Arc::new(node);
        // With no peers yet, there is nothing to confirm: peer-only caches serve from the start.
        node.refresh_peer_lease();
        driver::spawn_listener(&node, listener);
        driver::spawn_heartbeat(&node);
        driver::spawn_swim_timers(&node, swim_timers);
        let named: Vec<String> = self
            .seeds
            .iter()
            .filter(|seed| seed.parse::<SocketAddr>().is_err())
            .cloned()
            .collect();
        if !named.is_empty() {
            driver::spawn_seed_refresh(&node, named, self.seed_refresh);
        }
        if let Some(log) = &node.log {
            changelog::driver::spawn(&node, Arc::clone(log));
        }
        node.add_seeds(&fixed, true);
        node.add_seeds(&by_name, false);
        Ok(Cluster {
            node: Arc::clone(&node),
            _running: Arc::new(Running(node)),
        })
    }
}

/// A running node: the handle from which caches are made.
///
/// Cloning is cheap. The node stops when [`Cluster::shutdown`] is called or when the last clone
/// of it and of its caches is dropped.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use cohort::Cluster;
///
/// let a = Cluster::builder().node_name("a").start().await?;
/// let b = Cluster::builder()
///     .node_name("b")
///     .seeds([a.local_addr().to_string()])
///     .start()
///     .await?;
/// let users = b.cache::<u64, String>("users").capacity(10_000).build()?;
/// // Without a change log, b serves and writes once it has confirmed its peers.
/// b.wait_for_peers(1).await;
/// users.update(&1, |_| async { Ok::<_, std::io::Error>("ada".to_owned()) }).await?;
/// assert_eq!(users.get(&1).as_deref(), Some("ada"));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Cluster {
    node: Arc<Node>,
    _running: Arc<Running>,
}

/// Stops the node when the last user-facing handle goes away.
pub(crate) struct Running(Arc<Node>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.stop();
    }
}

impl Cluster {
    /// A builder with every setting at its default.
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder::default()
    }

    /// Starts building a cache named `name` on this node. Nodes share changes between caches of
    /// the same name, whose key and value types must match.
    pub fn cache<K: Key, V: Value>(&self, name: &str) -> CacheBuilder<K, V> {
        CacheBuilder::new(Arc::clone(&self.node), Arc::clone(&self._running), name)
    }

    /// This node's name.
    pub fn node_id(&self) -> &NodeId {
        &self.node.id
    }

    /// This node's process epoch, carried by each of its events.
    pub fn incarnation(&self) -> u64 {
        self.node.incarnation
    }

    /// The address peers dial to reach this node: the advertised one, or else the bound one.
    pub fn local_addr(&self) -> SocketAddr {
        self.node.addr
    }

    /// The address this node accepts links on, as bound (with the port chosen for port 0).
    pub fn bound_addr(&self) -> SocketAddr {
        self.node.bound
    }

    /// The promised staleness bound Δ.
    pub fn max_staleness(&self) -> Duration {
        self.node.config.max_staleness
    }

    /// The members this node knows, by name, and the seed addresses no member has been found
    /// at yet.
    pub fn members(&self) -> Vec<Member> {
        self.node.members()
    }

    /// Waits until this node's links to at least `peers` peers are up, so that its events reach
    /// them, and every live peer has confirmed that this node has its events, so that caches
    /// without a change log serve. Combine with `tokio::time::timeout` for a deadline.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let a = cohort::Cluster::builder().start().await?;
    /// let b = cohort::Cluster::builder().seeds([a.local_addr().to_string()]).start().await?;
    /// tokio::time::timeout(std::time::Duration::from_secs(5), b.wait_for_peers(1)).await?;
    /// # Ok(()) }
    /// ```
    pub async fn wait_for_peers(&self, peers: usize) {
        let mut events = self.subscribe();
        let linked = || {
            self.node.connected_peers() >= peers && self.node.peer_lease.is_valid(&self.node.clock)
        };
        // Every change of a link is an event; re-check after each (or after missing some).
        while !linked() {
            if let Err(broadcast::error::RecvError::Closed) = events.recv().await {
                return;
            }
        }
    }

    /// A stream of what happens in the cluster as this node sees it. A subscriber that falls more
    /// than 64 Ki events behind loses the oldest ones.
    pub fn subscribe(&self) -> broadcast::Receiver<ClusterEvent> {
        self.node.events.subscribe()
    }

    /// How this node's tailing of the change log stands; `None` without a change log.
    pub fn change_log_status(&self) -> Option<LogStatus> {
        self.node.log.as_ref().map(|log| log.status())
    }

    /// This node's mesh counters.
    pub fn stats(&self) -> ClusterStats {
        self.node.counters.snapshot()
    }

    /// Each cache's counters on this node, by name.
    pub fn cache_stats(&self) -> Vec<(String, CacheStats)> {
        let mut stats: Vec<_> = self
            .node
            .caches
            .read()
            .iter()
            .map(|(name, sink)| (name.to_string(), sink.stats()))
            .collect();
        stats.sort_by(|a, b| a.0.cmp(&b.0));
        stats
    }

    /// Everything this node counts, in the Prometheus text format, for a `/metrics` endpoint.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cluster = cohort::Cluster::builder().node_name("a").start().await?;
    /// let text = cluster.prometheus();
    /// assert!(text.contains("cohort_events_sent_total{node=\"a\"} 0"));
    /// # Ok(()) }
    /// ```
    pub fn prometheus(&self) -> String {
        render_prometheus(&NodeReport {
            node: self.node.id.as_str(),
            peers_connected: self.node.connected_peers(),
            cluster: self.stats(),
            caches: self.cache_stats(),
            log: self.change_log_status(),
        })
    }

    /// Replaces this node's cluster keys, the first becoming the primary, and re-establishes its
    /// outgoing links with it (each is down for one reconnect; peers catch up by replay). Rotate a
    /// key by calling this on every node in turn, three times: with the new key added (old one
    /// primary), with the new one primary, with the old one removed. No link breaks for longer
    /// than a reconnect and no event is lost.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let (old, new) = (cohort::ClusterKey::generate(), cohort::ClusterKey::generate());
    /// let node = cohort::Cluster::builder().cluster_keys([old.clone()]).start().await?;
    /// node.set_cluster_keys([old.clone(), new.clone()])?;
    /// node.set_cluster_keys([new.clone(), old])?;
    /// node.set_cluster_keys([new])?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] (nothing changed) if `keys` is empty or the node was started
    /// without keys: a cluster moves to keys by a restart of every node, since keyed and plain
    /// nodes cannot link.
    pub fn set_cluster_keys(
        &self,
        keys: impl IntoIterator<Item = ClusterKey>,
    ) -> Result<(), ConfigError> {
        let keys: Vec<ClusterKey> = keys.into_iter().collect();
        let invalid = |reason: &str| ConfigError::Invalid {
            setting: "cluster_keys",
            reason: reason.to_owned(),
        };
        let keyring = self
            .node
            .config
            .keyring
            .as_ref()
            .ok_or_else(|| invalid("the node was started without keys"))?;
        if keys.is_empty() {
            return Err(invalid("at least one key is needed"));
        }
        keyring.replace(keys);
        self.node.relink();
        Ok(())
    }

    /// Stops accepting and dialing and closes every link; waits until the node's tasks ended.
    /// Caches keep answering locally but no longer hear of peers' changes.
    pub async fn shutdown(&self) {
        self.node.stop();
        self.node.tasks.wait().await;
    }
}

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

/// The state shared by a node's handle, caches and tasks.
pub(crate) struct Node {
    pub(crate) id: NodeId,
    pub(crate) incarnation: u64,
    pub(crate) addr: SocketAddr,
    /// Where the listener is bound; `addr` may differ (NAT, a proxy).
    bound: SocketAddr,
    pub(crate) config: NodeConfig,
    outbox: Mutex<Outbox>,
    tracker: Mutex<SequenceTracker<NodeId>>,
    caches: RwLock<BTreeMap<Arc<str>, Arc<dyn Sink>>>,
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
type SwimTimers = mpsc::UnboundedReceiver<(Duration, Timer<Identity>)>;

impl Node {
    fn new(
        id: NodeId,
        addr: SocketAddr,
        bound: SocketAddr,
        builder: &ClusterBuilder,
    ) -> (Self, SwimTimers) {
        // Microseconds since the Unix epoch: a restarted process gets a higher incarnation.
        let incarnation = builder.incarnation.unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(1, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        });
        let rng_seed = builder.rng_seed.unwrap_or_else(rand::random);
        let (swim_timers, timers) = mpsc::unbounded_channel();
        let membership = Membership::new(
            Identity::new(id.clone(), addr, incarnation),
            builder.max_staleness,
            builder.grace(),
            rng_seed,
        );
        let roster = Roster::new(
            id.clone(),
            addr,
            RosterConfig {
                max_members: builder.max_members,
                forget_after: millis(builder.grace()),
                seed_ttl: millis(builder.grace().max(builder.seed_refresh * 2)),
            },
        );
        let node = Self {
            id,
            incarnation,
            addr,
            bound,
            config: NodeConfig {
                max_staleness: builder.max_staleness,
                max_frame_bytes: builder.max_frame_bytes,
                link_queue: builder.link_queue,
                link_queue_bytes: builder.link_queue_bytes,
                max_inbound_links: builder.max_inbound_links,
                reconnect: builder.reconnect,
                handshake_timeout: builder.handshake_timeout,
                keyring: (!builder.cluster_keys.is_empty())
                    .then(|| Keyring::new(builder.cluster_keys.clone())),
                unsafe_ignore_leases: builder.unsafe_ignore_leases,
            },
            outbox: Mutex::new(Outbox {
                seq: 0,
                links: Vec::new(),
                ring: ReplayRing::new(builder.replay_buffer),
            }),
            tracker: Mutex::new(SequenceTracker::default()),
            caches: RwLock::new(BTreeMap::new()),
            roster: Mutex::new(roster),
            events: broadcast::channel(64 * 1024).0,
            counters: ClusterCounters::default(),
            shutdown: watch::channel(false).0,
            tasks: TaskTracker::new(),
            confirmations: Mutex::new(Confirmations::new(millis(builder.max_staleness))),
            peer_lease: Arc::new(Lease::default()),
            clock: Clock::from(builder.time_source),
            network: Arc::clone(&builder.network),
            rng_seed,
            membership: Mutex::new(membership),
            intents: Mutex::new(BTreeMap::new()),
            swim_timers,
            log: builder.change_log.clone().map(|log| {
                Arc::new(LogRuntime::new(
                    log,
                    Clock::from(builder.time_source),
                    builder.max_staleness,
                    builder.log_retention,
                ))
            }),
        };
        (node, timers)
    }

    /// Stops the node: tells every peer it is leaving (each link's writer sends that last, then
    /// closes), and ends every other task.
    fn stop(&self) {
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
    fn relink(&self) {
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
        let unheard: Vec<NodeId> = {
            let roster = self.roster.lock();
            // Half a frame of names: a testimony cut short only keeps members awaited.
            let budget = self.config.max_frame_bytes / 2;
            let window = millis(self.config.max_staleness * 2);
            roster
                .unheard(self.clock.now(), window, budget)
                .into_iter()
                .cloned()
                .collect()
        };
        let outbox = self.outbox.lock();
        let frame = Frame::Pong {
            nonce,
            incarnation: self.incarnation,
            seq: outbox.seq,
            unheard: unheard.iter().map(NodeId::as_str).collect(),
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
        unheard: &[&str],
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
            unheard.iter().map(|&name| NodeId::from(name)).collect(),
            self.clock.now(),
        );
        if verdict == PongVerdict::Confirmed {
            self.refresh_peer_lease();
            self.notify(ClusterEvent::Confirmed {
                node: origin.clone(),
            });
        }
    }

    fn refresh_peer_lease(&self) {
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
    fn members(&self) -> Vec<Member> {
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

    /// Applies a change-log row to the cache it names, if this node has it.
    pub(crate) fn apply_logged(&self, cache: &str, key: &str) {
        let sink = self.caches.read().get(cache).cloned();
        if let Some(sink) = sink {
            sink.apply_logged(key);
        }
    }

    /// Empties the caches whose promise rests on the mesh: missed events left them unsure.
    /// Those are the caches that watch no tables and the strong ones; the others are not
    /// flushed, since the change log carries the same writes within Δ.
    fn flush_mesh_dependent(&self) {
        self.flush_caches(|sink| sink.is_peer_only() || sink.is_strong());
    }

    /// Empties the caches that watch tables: the change log lost rows they needed.
    pub(crate) fn flush_watching(&self) {
        self.flush_caches(|sink| !sink.is_peer_only());
    }

    fn flush_caches(&self, which: impl Fn(&dyn Sink) -> bool) {
        let sinks: Vec<_> = self.caches.read().values().cloned().collect();
        for sink in sinks.iter().filter(|sink| which(sink.as_ref())) {
            sink.flush();
        }
    }
}
