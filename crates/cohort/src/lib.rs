//! cohort keeps an in-process cache on every server of an application coherent with the others.
//!
//! Every node holds a bounded local copy of each cache, answers hits from it as fast as a plain
//! concurrent map, and tells every peer of each change it makes over a direct TCP mesh, so that
//! peers drop (or replace) their copies within well under a millisecond. A load that raced with a
//! change is returned but never stored, so no node caches a value older than one it was told of.
//!
//! Give every node the same [`ClusterKey`] ([`ClusterBuilder::cluster_keys`]) and every link
//! is authenticated and encrypted (Noise); without keys a node listens on loopback only, unless
//! told [`insecure`](ClusterBuilder::insecure).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use cohort::{Cluster, Mode};
//!
//! let cluster = Cluster::builder()
//!     .node_name("a")
//!     .listen("127.0.0.1:0".parse()?)
//!     .max_staleness(Duration::from_millis(500))
//!     .start()
//!     .await?;
//! let users = cluster.cache::<u64, String>("users").capacity(1_000_000).mode(Mode::Invalidate).build()?;
//! let name = users.get_or_load(&1, |id| async move { Ok::<_, std::io::Error>(format!("user {id}")) }).await?;
//! users.update(&1, |_| async { Ok::<_, std::io::Error>("renamed".to_owned()) }).await?;
//! # let _ = name;
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - `store`: the local bounded store (quick_cache), expiry, versions, slots.
//! - `wire`: the frames nodes exchange (postcard), the preamble and its protocol version.
//! - `transport`: TCP links, the preamble exchange, the Noise handshake and encrypted stream,
//!   reconnect backoff.
//! - `membership`: SWIM (foca): which nodes are up, probed directly and through others; the
//!   member table by identity (name), what the majority rule counts, forgetting.
//! - `config`: every setting of a node, its default and its range ([`ConfigError`]).
//! - `node`: the running node: its whole protocol as one pure state machine (`NodeState`:
//!   sequence tracking, gap repair, peer confirmations, intents, membership) and the thin tokio
//!   shell that drives it and routes events to caches.
//! - `cache`: the typed handle ([`Cache`]): `get`, `get_or_load`, `update`, `invalidate`.
//! - `cluster`: the public handle ([`Cluster`]) and its builder ([`ClusterBuilder`]).
//! - `changelog`: the database change log ([`ChangeLog`]): triggers, tailing, the poll lease.
//! - `metrics`: counters and their snapshots ([`CacheStats`], [`ClusterStats`]), the Prometheus
//!   page ([`Cluster::prometheus`]) and, with the `metrics` feature, the export to the `metrics`
//!   facade.
//!
//! Dependencies run one way: `id`, `event`, `clock`, `wire` ← `lease`, `store`, `membership`,
//! `transport` ← `changelog`, `metrics`, `config` ← `node` ← `cache` ← `cluster`.
//!
//! # Feature flags
//! | feature | default | what it adds |
//! |---|---|---|
//! | `sqlite` | yes | [`ChangeLog::sqlite`]: the change log in a SQLite database (sqlx) |
//! | `postgres` | no | `ChangeLog::postgres`: the change log in Postgres, with NOTIFY wake-ups |
//! | `redis` | no | `RedisBus`: links over Redis pub/sub, for nodes that cannot reach each other |
//! | `metrics` | no | every counter and gauge, and histograms of load and update durations and peer round trips, through the [`metrics`](https://docs.rs/metrics) facade to the recorder the application installs (names in the README) |

mod cache;
mod changelog;
mod clock;
mod cluster;
mod config;
mod event;
mod id;
mod lease;
mod membership;
mod metrics;
mod node;
mod store;
mod transport;
mod wire;

pub use cache::{
    BulkError, Cache, CacheBuilder, ChangeEvent, Changed, Changes, DEFAULT_CAPACITY,
    DEFAULT_CHANGES_BUFFER, DEFAULT_OWNER_TIMEOUT, EncodeError, Fetched, Key, Lagged, Mode, Origin,
    ReadyError, Receipt, Source, UpdateError, Value,
};
pub use changelog::{
    ChangeLog, ChangeLogError, DEFAULT_LOG_RETENTION, LogBackend, LogBatch, LogPosition, LogRow,
    LogStatus, WatchedTable,
};
pub use clock::TimeSource;
#[doc(hidden)]
pub use clock::coarse_now;
pub use cluster::{Cluster, ClusterBuilder, StartError};
pub use config::{
    ConfigError, DEFAULT_FORGET_AFTER, DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_LINK_QUEUE,
    DEFAULT_LINK_QUEUE_BYTES, DEFAULT_MAX_FRAME_BYTES, DEFAULT_MAX_INBOUND_LINKS,
    DEFAULT_MAX_MEMBERS, DEFAULT_MAX_STALENESS, DEFAULT_RECONNECT_MAX, DEFAULT_RECONNECT_MIN,
    DEFAULT_REPLAY_BUFFER, DEFAULT_SEED_REFRESH,
};
pub use event::ClusterEvent;
pub use id::{EventId, NodeId};
pub use membership::{Member, SwimState};
pub use metrics::{CacheStats, ClusterStats};
#[cfg(feature = "redis")]
pub use transport::RedisBus;
pub use transport::{
    BoxConnection, BoxFuture, ClusterKey, Connection, KeyError, Listener, Network, Tcp,
};

#[cfg(fuzzing)]
#[doc(hidden)]
pub mod fuzzing;

/// The layout of a peer link, for tools that sit on one and forward it (the fault proxy of
/// `cohort check`); not part of the stable API.
#[doc(hidden)]
pub mod link {
    pub use crate::transport::{MESSAGE_HEADER, message_header, message_len};
    pub use crate::wire::PREAMBLE_LEN;
}
