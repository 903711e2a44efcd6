//! What a node tells its application about the cluster, through
//! [`Cluster::subscribe`](crate::Cluster::subscribe).

use std::net::SocketAddr;
use std::ops::RangeInclusive;

use tokio::time::Instant;

use crate::id::{EventId, NodeId};

/// Something that happened in the cluster, as seen by this node; from
/// [`Cluster::subscribe`](crate::Cluster::subscribe).
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
    /// [`forget_after`](crate::ClusterBuilder::forget_after). It is no longer dialed, gossiped or
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
