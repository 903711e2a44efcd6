//! The JSON of `cohort serve`'s HTTP API, one type per body: `serve` writes them, `check` reads
//! them back.
//!
//! Fields are declared in alphabetical order, the order the API has always listed them in (and
//! the README shows).

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// `GET /users/{id}`: the user, and whether the node's cache answered.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct UserRead {
    /// For a fail-safe read (`"source": "stale"`): how long before the read the value was last
    /// known current, in milliseconds, at most.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) age_ms: Option<u64>,
    pub(crate) id: u64,
    pub(crate) name: String,
    /// What answered the read.
    pub(crate) source: Source,
    /// The name of the user's team.
    pub(crate) team: String,
    /// The version of what the read shows: the user's row version plus its team's, so that it
    /// grows with a change of either.
    pub(crate) version: u64,
}

/// What answered a read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Source {
    /// The node's cache (in partitioned mode: a key it owns, or its hot copy of another's).
    Cache,
    /// The database.
    Db,
    /// Partitioned mode: the key's owner, another node, answered.
    Owner,
    /// Partitioned mode: the key's owner did not answer in time, or could not serve (its lease
    /// had lapsed, its load failed); the node read the database itself.
    OwnerSkipped,
    /// `?max_stale=`: the database failed, and the node served the value it held, younger than
    /// asked (`age_ms` says how old).
    Stale,
}

impl Source {
    /// The name the JSON gives it.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Cache => "cache",
            Self::Db => "db",
            Self::Owner => "owner",
            Self::OwnerSkipped => "owner_skipped",
            Self::Stale => "stale",
        }
    }
}

/// The body of `PUT /users/{id}`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Rename {
    /// The new name.
    pub(crate) name: String,
}

/// What `PUT /users/{id}` answers once the update has returned.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub(crate) struct Written {
    pub(crate) id: u64,
    /// The version the update wrote.
    pub(crate) version: u64,
}

/// What `PUT /teams/{id}` answers once every node has been told.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct TeamWritten {
    pub(crate) team: u64,
    /// The new versions of the team's users (those asked for, if the request listed some).
    pub(crate) users: Vec<Written>,
}

/// What `POST /users/clear` answers once every node has been told.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Cleared {
    /// The new versions of the users (those asked for, if the request listed some).
    pub(crate) users: Vec<Written>,
}

/// `GET /healthz`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Health {
    /// The node's name.
    pub(crate) node: String,
    /// Whether the users cache serves from memory now (linked, confirmed, its log tailed).
    pub(crate) serving: bool,
    /// Always `ok`: the process answers.
    pub(crate) status: String,
}

/// `GET /readyz`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Ready {
    /// The node's name.
    pub(crate) node: String,
    /// Joined and serving: the answer's status is 200, else 503.
    pub(crate) ready: bool,
    /// The node reached a peer, or was given no seeds.
    pub(crate) joined: bool,
    /// The users cache serves from memory now.
    pub(crate) serving: bool,
}

/// `GET /cluster`: the node, its members, its change log and its mesh's counters.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct ClusterState {
    /// The change log's state; `None` on a node without one.
    pub(crate) change_log: Option<LogState>,
    /// The mesh's counters.
    pub(crate) events: Events,
    /// The node's process epoch.
    pub(crate) incarnation: u64,
    /// The address peers dial.
    pub(crate) listen: SocketAddr,
    /// The bound the node was started with.
    pub(crate) max_staleness_ms: u64,
    /// Every member this node knows of.
    pub(crate) members: Vec<MemberState>,
    /// The node's name.
    pub(crate) node: String,
}

/// One member as a node sees it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct MemberState {
    /// Where it accepts links.
    pub(crate) addr: SocketAddr,
    /// Its process epoch, once known.
    pub(crate) incarnation: Option<u64>,
    /// How long ago it last showed signs of life.
    pub(crate) last_heard_ms: Option<u64>,
    /// Whether peer-only caches wait for its confirmation.
    pub(crate) live: bool,
    /// Its name, once known.
    pub(crate) node: Option<String>,
    /// This node's link to it.
    pub(crate) state: Link,
    /// What SWIM holds of it, once SWIM has heard of it.
    pub(crate) swim: Option<String>,
    /// Whether SWIM holds it up.
    pub(crate) up: bool,
}

/// A link to a member.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Link {
    /// Up.
    Connected,
    /// Being dialed, or awaited.
    Connecting,
}

/// The node's change log: its lease, its polls, how far behind it is.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct LogState {
    /// The last sequence number applied.
    pub(crate) cursor: u64,
    /// Failed polls (and failed installs and prunes).
    pub(crate) errors: u64,
    /// Rows the last complete poll had to apply: how far behind the log the node was.
    pub(crate) lag_rows: u64,
    /// The most recent failure, if the last attempt failed.
    pub(crate) last_error: Option<String>,
    /// How long ago the last complete poll started.
    pub(crate) last_poll_age_ms: Option<u64>,
    /// How much longer the lease holds without another complete poll.
    pub(crate) lease_remaining_ms: Option<u64>,
    /// Complete polls.
    pub(crate) polls: u64,
    /// Times the node flushed its caches because rows it had not read were pruned.
    pub(crate) pruned_flushes: u64,
    /// Whether the lease holds: the last complete poll started within the bound.
    pub(crate) serving: bool,
}

/// The mesh's counters on a node.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub(crate) struct Events {
    /// Peer events applied.
    pub(crate) applied: u64,
    /// Link handshakes that failed to authenticate.
    pub(crate) auth_failures: u64,
    /// Frames or handshakes rejected as invalid.
    pub(crate) frames_rejected: u64,
    /// Peer events missed for good (each flushed the caches no change log covers).
    pub(crate) gaps: u64,
    /// Members dropped from the member table after staying unreached or down.
    pub(crate) members_forgotten: u64,
    /// Members not admitted to the member table.
    pub(crate) members_refused: u64,
    /// Events this node originated.
    pub(crate) sent: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names scripts (and `check`) read in a read's `source`.
    #[test]
    fn sources_have_their_documented_names() {
        let named = [
            (Source::Cache, "cache"),
            (Source::Db, "db"),
            (Source::Owner, "owner"),
            (Source::OwnerSkipped, "owner_skipped"),
            (Source::Stale, "stale"),
        ];
        for (source, name) in named {
            assert_eq!(source.name(), name);
            let json = serde_json::to_string(&source).unwrap();
            assert_eq!(json, format!("\"{name}\""));
            assert_eq!(serde_json::from_str::<Source>(&json).unwrap(), source);
        }
    }
}
