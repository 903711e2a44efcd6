//! Changes to many entries at once: [`Cache::invalidate_many`] and [`Cache::clear`], and how a
//! node applies them (and tag invalidations) when they come from a peer or the change log.
//!
//! Each travels as one event on the mesh, with the same guarantees as an invalidation of one key:
//! the local copy goes first (cancelling loads in flight, whose fills are then refused), then the
//! event. A clear and a tag invalidation have no row of their own for the triggers to log, so for
//! a cache that watches tables they also append one to the change log (see
//! `changelog::ops`), from which a node that missed the event applies them within the bound.

use crate::changelog::ChangeLogError;
use crate::changelog::ops::CacheOp;
use crate::id::{EventId, NodeId};
use crate::node::Sink;
use crate::wire::{self, Change};

use super::{Cache, Changed, EncodeError, Inner, Key, KeyEncoding, Origin, Value};

/// Why a [`Cache::invalidate_many`], a [`Cache::clear`] or a [`Cache::invalidate_tag`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BulkError {
    /// A key could not be sent on the wire. Nothing changed.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// A cache without a change log, or a strong one, promises the bound for a change only while
    /// this node has confirmed, within the bound, that it has every live peer's events: a node
    /// cut off from its peers may already have been retired by them, and they would serve
    /// without hearing from it. The change was applied here and sent, and peers apply it once
    /// it reaches them, but until then they may serve older entries past the bound. Call again
    /// once the node serves ([`Cache::is_serving`]); applying it twice is harmless.
    #[error("fenced: this node has not confirmed its peers within the bound")]
    Fenced,
    /// The change log did not record the change. It was applied here and sent to every peer,
    /// but a node cut off from the mesh may serve older entries past the bound; retry the call
    /// (applying it twice is harmless).
    #[error("the change log did not record the change: {0}")]
    Log(#[source] ChangeLogError),
    /// The tag is too long for a frame (over half of
    /// [`max_frame_bytes`](crate::ClusterBuilder::max_frame_bytes)). Nothing changed.
    #[error("the tag takes {len} bytes, over the {max} a frame has room for")]
    TagTooLarge {
        /// The tag's length.
        len: usize,
        /// The most a tag may take.
        max: usize,
    },
}

impl<K: Key, V: Value> Cache<K, V> {
    /// Drops every key of `keys` here and on every peer, as one event (one write on each link):
    /// the promise of [`invalidate`](Self::invalidate) for each key. Loads of them in flight
    /// here or on a peer when the event arrives are returned to their callers but not stored.
    /// A list whose encoding does not fit a frame goes as a few events, in order; the last
    /// one's id is returned (`None` for an empty list). If a key does not encode, nothing
    /// changes. In a cache without a change log (or a strong one), [`BulkError::Fenced`] says
    /// this node had not confirmed its peers: the keys were dropped here and sent, without the
    /// promise.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cluster = cohort::Cluster::builder().start().await?;
    /// let users = cluster.cache::<u64, String>("users").build()?;
    /// for id in 1..=3 {
    ///     users.get_or_load(&id, |id| async move { Ok::<_, std::io::Error>(format!("user {id}")) }).await?;
    /// }
    /// users.invalidate_many(&[1, 2]).await?;
    /// assert_eq!((users.get(&1), users.get(&2)), (None, None));
    /// assert_eq!(users.get(&3).as_deref(), Some("user 3"));
    /// # Ok(()) }
    /// ```
    pub async fn invalidate_many(&self, keys: &[K]) -> Result<Option<EventId>, BulkError> {
        let inner = &*self.inner;
        let encoded = keys
            .iter()
            .map(|key| inner.encode_key(key))
            .collect::<Result<Vec<_>, _>>()?;
        let confirmed = inner.confirmed();
        let span = tracing::debug_span!(
            "cohort.invalidate_many",
            node = %inner.node.id(),
            cache = %inner.name,
            keys = keys.len()
        );
        let _entered = span.enter();
        for (key, key_bytes) in keys.iter().zip(&encoded) {
            inner.changing(key_bytes);
            inner.forget_hot(key);
            inner.store.remove(key);
            inner
                .hooks
                .emit(|| Origin::Local, || Changed::Key(key.clone()));
        }
        // Each key fits half a frame (`encode_key`), so every chunk holds at least one.
        let budget = inner.node.max_frame_bytes() / 2;
        let mut last = None;
        let mut start = 0;
        while start < encoded.len() {
            let mut size = 0;
            let mut end = start;
            while end < encoded.len() && (end == start || size + encoded[end].len() + 5 <= budget) {
                // A length prefix takes at most 5 bytes.
                size += encoded[end].len() + 5;
                end += 1;
            }
            let payload = wire::encode_keys(&encoded[start..end])
                .map_err(|e| EncodeError(KeyEncoding::Serialize(e)))?;
            last = Some(
                inner
                    .node
                    .publish(&inner.name, Change::InvalidateMany { keys: &payload }),
            );
            start = end;
        }
        confirmed?;
        Ok(last)
    }

    /// Drops every entry of this cache here and on every peer, and cancels every load in flight
    /// (returned to its caller, not stored): reads that start later load afresh. For a cache
    /// that watches tables the clear is also appended to the change log before this returns,
    /// so a node that misses the event on the mesh clears within the bound all the same; this
    /// node clears again when it reads the row back. For a [`Mode::Strong`](super::Mode::Strong)
    /// cache the promise is the bounded one, not the strong one; for one without a change log
    /// (or a strong one), [`BulkError::Fenced`] says this node had not confirmed its peers.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cluster = cohort::Cluster::builder().start().await?;
    /// let users = cluster.cache::<u64, String>("users").build()?;
    /// users.get_or_load(&1, |id| async move { Ok::<_, std::io::Error>(format!("user {id}")) }).await?;
    /// users.clear().await?;
    /// assert_eq!(users.get(&1), None);
    /// # Ok(()) }
    /// ```
    pub async fn clear(&self) -> Result<EventId, BulkError> {
        let inner = &*self.inner;
        let confirmed = inner.confirmed();
        let event = {
            let _span =
                tracing::debug_span!("cohort.clear", node = %inner.node.id(), cache = %inner.name)
                    .entered();
            inner.clear_local(Origin::Local);
            inner.node.publish(&inner.name, Change::Clear)
        };
        inner.record(CacheOp::Clear).await?;
        confirmed?;
        Ok(event)
    }
}

impl<K: Key, V: Value> Inner<K, V> {
    /// Applies a [`Change::InvalidateMany`] from the peer `from`. Keys before one that does not
    /// decode are dropped; the caller flushes on the error.
    pub(super) fn invalidate_encoded(
        &self,
        from: &NodeId,
        keys: &[u8],
    ) -> Result<(), postcard::Error> {
        for key_bytes in wire::decode_keys(keys)? {
            self.invalidate_from(from, key_bytes)?;
        }
        Ok(())
    }

    /// Drops every entry and cancels every load in flight.
    pub(super) fn clear_local(&self, origin: Origin) {
        self.changing_all();
        if let Some(hot) = self.hot() {
            hot.clear();
        }
        self.store.clear();
        self.counters.invalidations_applied.incr();
        self.hooks.emit(|| origin, || Changed::Clear);
    }

    /// Drops every entry carrying `tag` and refuses the fills in flight whose value carries it.
    pub(super) fn invalidate_tag_local(&self, tag: &str, origin: Origin) {
        // Which keys carry the tag on their owners is unknown here: an owner's answer may be
        // older than this invalidation for any key, so none becomes a hot copy for a while.
        self.changing_all();
        if let Some(hot) = self.hot() {
            hot.invalidate_tag(tag);
        }
        self.store.invalidate_tag(tag);
        self.counters.invalidations_applied.incr();
        self.hooks.emit(|| origin, || Changed::Tag(tag.to_owned()));
    }

    /// Applies a change-log row that cohort wrote for `clear` or `invalidate_tag`.
    pub(super) fn apply_op(&self, op: CacheOp<'_>) {
        match op {
            CacheOp::Clear => self.clear_local(Origin::ChangeLog),
            CacheOp::Tag(tag) => self.invalidate_tag_local(tag, Origin::ChangeLog),
            CacheOp::Unknown => {
                tracing::warn!(cache = %self.name, "a change-log row of an unknown kind; flushing");
                self.counters.logged_unparsable.incr();
                Sink::flush(self);
            }
        }
        self.counters.logged_applied.incr();
    }

    /// Whether this node may promise the bound for a change it sends now: always for a cache
    /// that watches tables (the log carries what the mesh may not), otherwise only while it has
    /// confirmed its peers.
    pub(super) fn confirmed(&self) -> Result<(), BulkError> {
        if self.fenced && !self.serving() {
            return Err(BulkError::Fenced);
        }
        Ok(())
    }

    /// Appends `op` to the change log, for a cache that watches tables (the others rest on the
    /// mesh alone).
    pub(super) async fn record(&self, op: CacheOp<'_>) -> Result<(), BulkError> {
        match (&self.parse, self.node.log()) {
            (Some(_), Some(log)) => log.append(&self.name, op).await.map_err(BulkError::Log),
            _ => Ok(()),
        }
    }
}
