//! Tags: [`CacheBuilder::tags`] and [`Cache::invalidate_tag`].
//!
//! The index from tags to keys, and the guard refusing fills of values that carry a tag
//! invalidated while they loaded, live in the store (`store::tags`): every fill goes through a
//! store slot, so every path that stores a value is covered. Caches without tags pay nothing.

use std::sync::Arc;

use crate::changelog::ops::CacheOp;
use crate::id::EventId;
use crate::store::Store;
use crate::wire::Change;

use super::{BulkError, Cache, CacheBuilder, Key, Origin, Value};

impl<K: Key, V: Value> CacheBuilder<K, V> {
    /// Reads the tags each value carries, so that [`Cache::invalidate_tag`] drops every entry
    /// carrying one. Called on every store of a value (not on hits); each node keeps an index
    /// from tags to keys. In [`Mode::Partitioned`](super::Mode::Partitioned) each owner drops
    /// its own entries and every node its hot copies; for twice the bound after a tag
    /// invalidation no owner's answer becomes a hot copy, since which keys it touched is only
    /// known to their owners.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cluster = cohort::Cluster::builder().start().await?;
    /// let users = cluster
    ///     .cache::<u64, (String, u64)>("users")
    ///     .tags(|(_, team): &(String, u64)| [format!("team:{team}")])
    ///     .build()?;
    /// users.get_or_load(&1, |_| async { Ok::<_, std::io::Error>(("ada".to_owned(), 7)) }).await?;
    /// users.invalidate_tag("team:7").await?;
    /// assert_eq!(users.get(&1), None);
    /// # Ok(()) }
    /// ```
    ///
    /// Defaults to: no tags.
    pub fn tags<F, I>(&mut self, tags: F) -> &mut Self
    where
        F: Fn(&V) -> I + Send + Sync + 'static,
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.tags = Some(Arc::new(move |value: &V| {
            tags(value).into_iter().map(Into::into).collect()
        }));
        self
    }
    /// `store`, indexed under the tags if the cache has any.
    pub(super) fn tagged(&self, store: Store<K, V>) -> Store<K, V> {
        match &self.tags {
            Some(tags) => store.with_tags(Arc::clone(tags)),
            None => store,
        }
    }
}

impl<K: Key, V: Value> Cache<K, V> {
    /// Drops every entry whose value carries `tag` (see [`CacheBuilder::tags`]) here and on
    /// every peer, under the promise of [`invalidate`](Self::invalidate): a load in flight whose
    /// value carries the tag when the invalidation arrives is returned to its caller but not
    /// stored. For a cache that watches tables the invalidation is also appended to the change
    /// log before this returns, so a node that misses the event applies it within the bound; for
    /// one without (or a strong one), [`BulkError::Fenced`] says this node had not confirmed
    /// its peers.
    ///
    /// See [`CacheBuilder::tags`] for an example.
    pub async fn invalidate_tag(&self, tag: &str) -> Result<EventId, BulkError> {
        let inner = &*self.inner;
        let max = inner.node.max_frame_bytes() / 2;
        if tag.len() > max {
            return Err(BulkError::TagTooLarge {
                len: tag.len(),
                max,
            });
        }
        let confirmed = inner.confirmed();
        let event = {
            let _span = tracing::debug_span!("cohort.invalidate_tag", node = %inner.node.id(), cache = %inner.name)
                .entered();
            inner.invalidate_tag_local(tag, Origin::Local);
            inner
                .node
                .publish(&inner.name, Change::InvalidateTag { tag })
        };
        inner.record(CacheOp::Tag(tag)).await?;
        confirmed?;
        Ok(event)
    }
}
