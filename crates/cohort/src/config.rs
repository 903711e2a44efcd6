//! A node's settings: their defaults, their bounds, and the one check that every setting is in
//! range before anything starts.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::changelog::{ChangeLog, DEFAULT_LOG_RETENTION};
use crate::clock::TimeSource;
use crate::membership::MAX_NAME_BYTES;
use crate::transport::{ClusterKey, Network, Tcp};

/// Default for [`ClusterBuilder::max_staleness`](crate::ClusterBuilder::max_staleness).
pub const DEFAULT_MAX_STALENESS: Duration = Duration::from_millis(500);
/// Default for [`ClusterBuilder::max_frame_bytes`](crate::ClusterBuilder::max_frame_bytes).
pub const DEFAULT_MAX_FRAME_BYTES: usize = 4 << 20;
/// Default for [`ClusterBuilder::link_queue`](crate::ClusterBuilder::link_queue).
pub const DEFAULT_LINK_QUEUE: usize = 64 * 1024;
/// Default for [`ClusterBuilder::link_queue_bytes`](crate::ClusterBuilder::link_queue_bytes).
pub const DEFAULT_LINK_QUEUE_BYTES: usize = 64 << 20;
/// Default for [`ClusterBuilder::max_inbound_links`](crate::ClusterBuilder::max_inbound_links).
pub const DEFAULT_MAX_INBOUND_LINKS: usize = 1024;
/// Default for [`ClusterBuilder::reconnect_backoff`](crate::ClusterBuilder::reconnect_backoff): first delay ceiling.
pub const DEFAULT_RECONNECT_MIN: Duration = Duration::from_millis(20);
/// Default for [`ClusterBuilder::reconnect_backoff`](crate::ClusterBuilder::reconnect_backoff): largest delay.
pub const DEFAULT_RECONNECT_MAX: Duration = Duration::from_secs(2);
/// Default for [`ClusterBuilder::seed_refresh`](crate::ClusterBuilder::seed_refresh).
pub const DEFAULT_SEED_REFRESH: Duration = Duration::from_secs(30);
/// Default for [`ClusterBuilder::replay_buffer`](crate::ClusterBuilder::replay_buffer).
pub const DEFAULT_REPLAY_BUFFER: usize = 16 << 20;
/// Default for [`ClusterBuilder::handshake_timeout`](crate::ClusterBuilder::handshake_timeout).
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Default for [`ClusterBuilder::max_members`](crate::ClusterBuilder::max_members).
pub const DEFAULT_MAX_MEMBERS: usize = 1024;
/// Default for [`ClusterBuilder::forget_after`](crate::ClusterBuilder::forget_after).
pub const DEFAULT_FORGET_AFTER: Duration = Duration::from_secs(30);

/// Counts (members, queued frames, inbound links) are at most this: past it, queues and
/// semaphores would refuse to be built.
const MAX_COUNT: usize = 1 << 24;
const MILLISECOND: Duration = Duration::from_millis(1);
/// Durations are at most a day (the bound, timeouts) or a year (retention): every sum and
/// product of them a node computes then fits.
const DAY: Duration = Duration::from_secs(24 * 60 * 60);
const YEAR: Duration = Duration::from_secs(365 * 24 * 60 * 60);

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

/// Every setting of a node, as the builder collects them; checked by [`Config::validate`]
/// before a node starts.
#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) network: Arc<dyn Network>,
    pub(crate) time_source: TimeSource,
    pub(crate) rng_seed: Option<u64>,
    pub(crate) incarnation: Option<u64>,
    pub(crate) name: Option<String>,
    pub(crate) listen: SocketAddr,
    pub(crate) advertise: Option<SocketAddr>,
    pub(crate) seeds: Vec<String>,
    pub(crate) max_staleness: Duration,
    pub(crate) max_frame_bytes: usize,
    pub(crate) link_queue: usize,
    pub(crate) link_queue_bytes: usize,
    pub(crate) max_inbound_links: usize,
    pub(crate) replay_buffer: usize,
    pub(crate) reconnect: (Duration, Duration),
    pub(crate) handshake_timeout: Duration,
    pub(crate) change_log: Option<ChangeLog>,
    pub(crate) log_retention: Duration,
    pub(crate) seed_refresh: Duration,
    pub(crate) max_members: usize,
    pub(crate) forget_after: Option<Duration>,
    pub(crate) cluster_keys: Vec<ClusterKey>,
    pub(crate) insecure: bool,
    pub(crate) unsafe_ignore_leases: bool,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("name", &self.name)
            .field("listen", &self.listen)
            .field("seeds", &self.seeds)
            .field("max_staleness", &self.max_staleness)
            .finish_non_exhaustive()
    }
}

impl Default for Config {
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

impl Config {
    /// The grace before a member is forgotten: as set, or the default for the bound.
    pub(crate) fn grace(&self) -> Duration {
        self.forget_after
            .unwrap_or_else(|| DEFAULT_FORGET_AFTER.max(self.max_staleness.saturating_mul(4)))
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
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
        if self.max_frame_bytes < 64 << 10 || self.max_frame_bytes > u32::MAX as usize {
            return invalid("max_frame_bytes", "must be between 64 KiB and 4 GiB");
        }
        if self.link_queue_bytes < self.max_frame_bytes {
            return invalid("link_queue_bytes", "must be at least max_frame_bytes");
        }
        for (setting, value) in [
            ("max_members", self.max_members),
            ("link_queue", self.link_queue),
            ("max_inbound_links", self.max_inbound_links),
        ] {
            if !(1..=MAX_COUNT).contains(&value) {
                return invalid(setting, "must be between 1 and 2^24");
            }
        }
        let (min, max) = self.reconnect;
        if min > max {
            return invalid("reconnect_backoff", "needs min <= max");
        }
        let four_bounds = self.max_staleness.saturating_mul(4);
        for (setting, value, least, most, range) in [
            (
                "max_staleness",
                self.max_staleness,
                MILLISECOND,
                DAY,
                "1 ms to 1 day",
            ),
            (
                "handshake_timeout",
                self.handshake_timeout,
                MILLISECOND,
                DAY,
                "1 ms to 1 day",
            ),
            ("reconnect_backoff", min, MILLISECOND, DAY, "1 ms to 1 day"),
            ("reconnect_backoff", max, MILLISECOND, DAY, "1 ms to 1 day"),
            (
                "seed_refresh",
                self.seed_refresh,
                MILLISECOND,
                DAY,
                "1 ms to 1 day",
            ),
            (
                "forget_after",
                self.grace(),
                four_bounds,
                YEAR,
                "4 × max_staleness to 1 year",
            ),
            (
                "log_retention",
                self.log_retention,
                four_bounds,
                YEAR,
                "4 × max_staleness to 1 year",
            ),
        ] {
            if value < least || value > most {
                return invalid(setting, &format!("must be {range}"));
            }
        }
        Ok(())
    }
}
