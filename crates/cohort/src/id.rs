//! Names of things that cross the wire and the API: nodes and their events.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

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
