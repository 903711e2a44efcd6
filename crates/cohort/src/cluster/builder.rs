//! Configuring and starting a node: the builder over [`Config`].

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::changelog::ChangeLog;
use crate::clock::TimeSource;
use crate::config::Config;
use crate::config::ConfigError;
use crate::id::NodeId;
use crate::node::{self, Running};
use crate::transport::{ClusterKey, Network};

use super::Cluster;

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
#[derive(Clone, Default)]
pub struct ClusterBuilder {
    config: Config,
}

impl fmt::Debug for ClusterBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.config.fmt(f)
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
        self.config.name = Some(name.into());
        self
    }

    /// Where to accept links from peers.
    ///
    /// Defaults to: `127.0.0.1:0` (a free loopback port; see [`Cluster::local_addr`]).
    pub fn listen(&mut self, addr: SocketAddr) -> &mut Self {
        self.config.listen = addr;
        self
    }

    /// The address peers should dial, when it differs from the bound one (a wildcard bind, NAT).
    ///
    /// Defaults to: the bound listen address.
    pub fn advertise(&mut self, addr: SocketAddr) -> &mut Self {
        self.config.advertise = Some(addr);
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
        self.config.seeds = seeds.into_iter().map(Into::into).collect();
        self
    }

    /// The most members a node keeps in its member table, itself not included. A name new to a
    /// full table is refused (counted in `members_refused`), unless it was met directly and some
    /// member was never reached: the longest unheard of those makes room.
    ///
    /// Defaults to: [`DEFAULT_MAX_MEMBERS`](crate::DEFAULT_MAX_MEMBERS) (1024); between 1 and 2^24.
    pub fn max_members(&mut self, members: usize) -> &mut Self {
        self.config.max_members = members;
        self
    }

    /// How long a member may stay unreached, or silent and declared down by SWIM, before this
    /// node forgets it: stops dialing it, gossiping it and counting it toward the majority. A
    /// member this node once reached is forgotten only while this node and its live members are
    /// a strict majority of every member it counts, that one included, so a node cut off from
    /// the others never forgets them. A new process of a known name replaces the old one at
    /// once, without waiting for this.
    ///
    /// Defaults to: [`DEFAULT_FORGET_AFTER`](crate::DEFAULT_FORGET_AFTER) (30 s), or 4 × `max_staleness` if that is longer;
    /// between 4 × `max_staleness` and a year.
    pub fn forget_after(&mut self, grace: Duration) -> &mut Self {
        self.config.forget_after = Some(grace);
        self
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
        self.config.cluster_keys = keys.into_iter().collect();
        self
    }

    /// Lets a node without cluster keys listen where other machines can reach it (a non-loopback
    /// address, or a [`Network`] that says so). Anything that reaches its peer port can then join
    /// the cluster, read every change and inject its own: only for networks where every process
    /// is trusted.
    ///
    /// Defaults to: `false`.
    pub fn insecure(&mut self, insecure: bool) -> &mut Self {
        self.config.insecure = insecure;
        self
    }

    /// How often seeds given as DNS names are resolved again.
    ///
    /// Defaults to: [`DEFAULT_SEED_REFRESH`](crate::DEFAULT_SEED_REFRESH) (30 s); between 1 ms and a day.
    pub fn seed_refresh(&mut self, every: Duration) -> &mut Self {
        self.config.seed_refresh = every;
        self
    }

    /// The promised bound Δ on staleness.
    ///
    /// Defaults to: [`DEFAULT_MAX_STALENESS`](crate::DEFAULT_MAX_STALENESS) (500 ms); between 1 ms and a day.
    pub fn max_staleness(&mut self, bound: Duration) -> &mut Self {
        self.config.max_staleness = bound;
        self
    }

    /// The largest frame accepted from a peer; a longer one closes its link unread. Also caps the
    /// size of a replicated value.
    ///
    /// Defaults to: [`DEFAULT_MAX_FRAME_BYTES`](crate::DEFAULT_MAX_FRAME_BYTES) (4 MiB).
    pub fn max_frame_bytes(&mut self, bytes: usize) -> &mut Self {
        self.config.max_frame_bytes = bytes;
        self
    }

    /// Frames queued per peer before the link counts as overflowed. An overflowed link is closed
    /// and re-established; the peer catches up from the [replay buffer](Self::replay_buffer).
    ///
    /// Defaults to: [`DEFAULT_LINK_QUEUE`](crate::DEFAULT_LINK_QUEUE); between 1 and 2^24.
    pub fn link_queue(&mut self, frames: usize) -> &mut Self {
        self.config.link_queue = frames;
        self
    }

    /// Bytes of frames queued per peer before the link counts as overflowed, as with
    /// [`link_queue`](Self::link_queue): what a peer that stops reading can make this node hold.
    ///
    /// Defaults to: [`DEFAULT_LINK_QUEUE_BYTES`](crate::DEFAULT_LINK_QUEUE_BYTES) (64 MiB); at least `max_frame_bytes`.
    pub fn link_queue_bytes(&mut self, bytes: usize) -> &mut Self {
        self.config.link_queue_bytes = bytes;
        self
    }

    /// The most links accepted from peers at once (handshakes included). A connection over the
    /// limit is closed at once and counted (`links_refused`): a flood of connections cannot
    /// exhaust the node.
    ///
    /// Defaults to: [`DEFAULT_MAX_INBOUND_LINKS`](crate::DEFAULT_MAX_INBOUND_LINKS) (1024); between 1 and 2^24.
    pub fn max_inbound_links(&mut self, links: usize) -> &mut Self {
        self.config.max_inbound_links = links;
        self
    }

    /// How many bytes of its latest events a node keeps to replay to a peer whose link broke
    /// (a reset, a partition, an overflow). The peer says how far it got when the link comes
    /// back and receives the rest before anything newer. Events that fell out of the buffer are
    /// a gap: the peer flushes its caches that no change log covers. Zero keeps nothing.
    ///
    /// Defaults to: [`DEFAULT_REPLAY_BUFFER`](crate::DEFAULT_REPLAY_BUFFER) (16 MiB).
    pub fn replay_buffer(&mut self, bytes: usize) -> &mut Self {
        self.config.replay_buffer = bytes;
        self
    }

    /// Delays between reconnect attempts: exponential from `min` to `max`, with full jitter.
    ///
    /// Defaults to: [`DEFAULT_RECONNECT_MIN`](crate::DEFAULT_RECONNECT_MIN) to [`DEFAULT_RECONNECT_MAX`](crate::DEFAULT_RECONNECT_MAX); both between 1 ms
    /// and a day.
    pub fn reconnect_backoff(&mut self, min: Duration, max: Duration) -> &mut Self {
        self.config.reconnect = (min, max);
        self
    }

    /// How long a peer may take to complete its handshake.
    ///
    /// Defaults to: [`DEFAULT_HANDSHAKE_TIMEOUT`](crate::DEFAULT_HANDSHAKE_TIMEOUT); between 1 ms and a day.
    pub fn handshake_timeout(&mut self, timeout: Duration) -> &mut Self {
        self.config.handshake_timeout = timeout;
        self
    }

    /// The database change log this node tails. With it, caches that
    /// [watch tables](crate::CacheBuilder::watch_table) keep the staleness bound whatever happens
    /// to the mesh, and see changes made by writers that never go through cohort.
    ///
    /// Defaults to: none (changes travel over the mesh only).
    pub fn change_log(&mut self, log: ChangeLog) -> &mut Self {
        self.config.change_log = Some(log);
        self
    }

    /// How long change-log rows are kept. A node paused or cut off for longer flushes its caches
    /// when it catches up.
    ///
    /// Defaults to: [`DEFAULT_LOG_RETENTION`](crate::DEFAULT_LOG_RETENTION) (10 minutes); between 4 × `max_staleness` and a
    /// year.
    pub fn log_retention(&mut self, retention: Duration) -> &mut Self {
        self.config.log_retention = retention;
        self
    }

    /// Where connections come from: the operating system's TCP, or a simulated network for
    /// deterministic tests.
    ///
    /// Defaults to: [`Tcp`](crate::Tcp).
    pub fn network(&mut self, network: impl Network) -> &mut Self {
        self.config.network = Arc::new(network);
        self
    }

    /// Which clock leases and expiries are read from.
    ///
    /// Defaults to: [`TimeSource::System`].
    pub fn time_source(&mut self, source: TimeSource) -> &mut Self {
        self.config.time_source = source;
        self
    }

    /// Seeds the node's randomness (reconnect jitter), so that a simulation replays exactly.
    ///
    /// Defaults to: a random seed.
    pub fn rng_seed(&mut self, seed: u64) -> &mut Self {
        self.config.rng_seed = Some(seed);
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
        self.config.incarnation = Some(incarnation);
        self
    }

    /// Breaks the staleness bound on purpose: caches serve whatever they hold, whether or not the
    /// node can vouch for it (no change-log or peer lease is checked). It exists so that a
    /// consistency checker can show that it catches the staleness that follows. Never use it to
    /// serve anyone.
    #[doc(hidden)]
    pub fn unsafe_ignore_leases(&mut self, ignore: bool) -> &mut Self {
        self.config.unsafe_ignore_leases = ignore;
        self
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
        let config = &self.config;
        config.validate()?;
        let (mut fixed, mut by_name) = (Vec::new(), Vec::new());
        for seed in &config.seeds {
            let resolved =
                config
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
        let listener =
            config
                .network
                .bind(config.listen)
                .await
                .map_err(|source| StartError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let bound = listener.local_addr().map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
        if config.cluster_keys.is_empty() && !config.insecure && !config.network.is_private(bound) {
            return Err(StartError::Insecure { addr: bound });
        }
        let name = config
            .name
            .clone()
            .unwrap_or_else(|| format!("node-{}", bound.port()));
        let node = node::start(
            NodeId::from(name.as_str()),
            listener,
            bound,
            config,
            (&fixed, &by_name),
        );
        Ok(Cluster {
            node: Arc::clone(&node),
            _running: Arc::new(Running::new(node)),
        })
    }
}
