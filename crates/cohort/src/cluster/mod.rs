//! The handle an application holds: [`Cluster`], and [`ClusterBuilder`] (`builder`), which
//! configures and starts it. Everything the handle does is asked of the running node
//! (`crate::node`); nothing here holds protocol state.

mod builder;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;

use crate::cache::{CacheBuilder, Key, Value};
use crate::changelog::LogStatus;
use crate::config::ConfigError;
use crate::event::ClusterEvent;
use crate::id::NodeId;
use crate::membership::Member;
use crate::metrics::{CacheStats, ClusterStats, render_prometheus};
use crate::node::{Node, Running};
use crate::transport::ClusterKey;

pub use builder::{ClusterBuilder, StartError};

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
    pub(crate) node: Arc<Node>,
    _running: Arc<Running>,
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
        self.node.id()
    }

    /// This node's process epoch, carried by each of its events.
    pub fn incarnation(&self) -> u64 {
        self.node.incarnation()
    }

    /// The address peers dial to reach this node: the advertised one, or else the bound one.
    pub fn local_addr(&self) -> SocketAddr {
        self.node.addr()
    }

    /// The address this node accepts links on, as bound (with the port chosen for port 0).
    pub fn bound_addr(&self) -> SocketAddr {
        self.node.bound_addr()
    }

    /// The promised staleness bound Δ.
    pub fn max_staleness(&self) -> Duration {
        self.node.max_staleness()
    }

    /// The members this node knows, by name, and the seed addresses no member has been found
    /// at yet.
    ///
    /// Each says how this node's mesh reaches it: its link, what SWIM holds of it, how long ago
    /// it last confirmed this node had all its events, and the latest ping round trip to it.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    ///
    /// let a = cohort::Cluster::builder().node_name("a").start().await?;
    /// let b = cohort::Cluster::builder()
    ///     .node_name("b")
    ///     .seeds([a.local_addr().to_string()])
    ///     .start()
    ///     .await?;
    /// // Confirmed: a pong from `a` came back, so its round trip is known.
    /// tokio::time::timeout(Duration::from_secs(5), b.wait_for_peers(1)).await?;
    /// let members = b.members();
    /// let to_a = members.iter().find(|m| m.node.as_ref().is_some_and(|n| n.as_str() == "a"));
    /// let to_a = to_a.expect("b knows a");
    /// assert!(to_a.connected);
    /// assert!(to_a.round_trip.is_some_and(|rtt| rtt < Duration::from_secs(1)));
    /// let lease_left = b.max_staleness().saturating_sub(to_a.last_confirmed.expect("confirmed"));
    /// println!("a: round trip {:?}, lease {lease_left:?} left", to_a.round_trip);
    /// # Ok(()) }
    /// ```
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
            self.node.connected_peers() >= peers
                && self.node.peer_lease().is_valid(self.node.clock())
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
        self.node.subscribe()
    }

    /// How this node's tailing of the change log stands; `None` without a change log.
    pub fn change_log_status(&self) -> Option<LogStatus> {
        self.node.log().map(|log| log.status())
    }

    /// This node's mesh counters.
    pub fn stats(&self) -> ClusterStats {
        self.node.stats()
    }

    /// Each cache's counters on this node, by name.
    pub fn cache_stats(&self) -> Vec<(String, CacheStats)> {
        self.node.cache_stats()
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
        render_prometheus(&self.node.report())
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
        if keys.is_empty() {
            return Err(invalid("at least one key is needed"));
        }
        if !self.node.rekey(keys) {
            return Err(invalid("the node was started without keys"));
        }
        Ok(())
    }

    /// Stops accepting and dialing and closes every link; waits until the node's tasks ended.
    /// Caches keep answering locally but no longer hear of peers' changes.
    pub async fn shutdown(&self) {
        self.node.shut_down().await;
    }
}
