//! Change hooks: a per-cache stream of the changes this node applies, for the application's own
//! derived state (a search index, a rendered page, a second-level cache of its own).
//!
//! Changes go out on a bounded broadcast ring. Sending never waits, so a slow subscriber cannot
//! stall the node: it misses the oldest changes instead and is told how many
//! ([`Lagged`]). With nobody subscribed, applying a change costs one atomic load more; the hit
//! path does not look at hooks at all.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};

use futures_util::Stream;
use tokio::sync::broadcast::{self, Receiver, error::RecvError};
use tokio_util::sync::ReusableBoxFuture;

use super::{Cache, Key, Value};
use crate::id::NodeId;

/// How many changes a [`Changes`] stream holds for a subscriber that has not read them yet;
/// past it, the subscriber loses the oldest and reads a [`Lagged`] item.
pub const DEFAULT_CHANGES_BUFFER: usize = 4096;

/// What changed in a cache, from a [`Changes`] stream.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Changed<K> {
    /// The key's copy here was dropped or replaced: an update or invalidation of the key.
    Key(K),
    /// Every entry of the cache was dropped, cluster-wide, by a clear.
    Clear,
    /// Every entry carrying the tag was dropped, cluster-wide.
    Tag(String),
    /// This node lost track of changes (it missed a peer's events, its change-log position was
    /// pruned, or it read a change it could not decode) and dropped every entry: any key may
    /// have changed.
    Flush,
}

/// Where an applied change came from.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Origin {
    /// A call on this node ([`Cache::update`], [`Cache::invalidate`],
    /// [`Cache::invalidate_many`], [`Cache::clear`], [`Cache::invalidate_tag`]); also a
    /// [`Changed::Flush`] this node decided on.
    Local,
    /// An event from the named peer, over the mesh.
    Peer(NodeId),
    /// A row of the database's change log.
    ChangeLog,
}

/// One change as this node applied it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChangeEvent<K> {
    /// What changed.
    pub change: Changed<K>,
    /// Where the change came from.
    pub origin: Origin,
}

/// A [`Changes`] subscriber read too slowly: this many changes were dropped from its buffer
/// before it read them. The stream goes on with the oldest change still held; whatever the
/// subscriber derived from the cache should be rebuilt, as after a [`Changed::Flush`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the subscriber fell behind and missed {0} changes")]
pub struct Lagged(pub u64);

/// The changes one cache applies on this node, as they are applied; from [`Cache::changes`].
///
/// A `Stream` of `Result<ChangeEvent<K>, Lagged>` ending when the cache is dropped; or read it
/// with [`recv`](Self::recv).
pub struct Changes<K> {
    next: ReusableBoxFuture<'static, Received<K>>,
    _subscribed: Subscribed,
}

type Received<K> = (Result<ChangeEvent<K>, RecvError>, Receiver<ChangeEvent<K>>);

async fn receive<K: Clone>(mut rx: Receiver<ChangeEvent<K>>) -> Received<K> {
    (rx.recv().await, rx)
}

/// Counts a subscriber for as long as it lives, so that senders can skip work without any.
struct Subscribed(Arc<AtomicUsize>);

impl Drop for Subscribed {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Release);
    }
}

impl<K: Clone + Send + 'static> Changes<K> {
    /// The next change; `None` once the cache is dropped. `Err(Lagged(n))` says `n` changes
    /// were lost to a full buffer; the next call goes on with the oldest one held.
    pub async fn recv(&mut self) -> Option<Result<ChangeEvent<K>, Lagged>> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await
    }
}

impl<K: Clone + Send + 'static> Stream for Changes<K> {
    type Item = Result<ChangeEvent<K>, Lagged>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let (received, rx) = ready!(self.next.poll(cx));
        self.next.set(receive(rx));
        Poll::Ready(match received {
            Ok(event) => Some(Ok(event)),
            Err(RecvError::Lagged(n)) => Some(Err(Lagged(n))),
            Err(RecvError::Closed) => None,
        })
    }
}

/// A cache's sending side of its [`Changes`] streams.
pub(super) struct Hooks<K> {
    sender: broadcast::Sender<ChangeEvent<K>>,
    subscribers: Arc<AtomicUsize>,
}

impl<K: Clone + Send + 'static> Hooks<K> {
    pub(super) fn new(buffer: usize) -> Self {
        Self {
            sender: broadcast::Sender::new(buffer),
            subscribers: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Hands the change to every subscriber; builds it only if there is one. Never waits.
    #[inline]
    pub(super) fn emit(
        &self,
        origin: impl FnOnce() -> Origin,
        change: impl FnOnce() -> Changed<K>,
    ) {
        if self.subscribers.load(Ordering::Acquire) == 0 {
            return;
        }
        // Fails only when every subscriber left meanwhile: nobody to tell.
        let _ = self.sender.send(ChangeEvent {
            change: change(),
            origin: origin(),
        });
    }

    fn subscribe(&self) -> Changes<K> {
        let rx = self.sender.subscribe();
        // Counted once the receiver exists: a change applied after `changes()` returns is sent.
        self.subscribers.fetch_add(1, Ordering::AcqRel);
        Changes {
            next: ReusableBoxFuture::new(receive(rx)),
            _subscribed: Subscribed(Arc::clone(&self.subscribers)),
        }
    }
}

impl<K: Key, V: Value> Cache<K, V> {
    /// The changes this cache applies on this node from now on, as they are applied: each
    /// update or invalidation of a key (from this node, from a peer, from the change log), and
    /// each flush, exactly once per event applied here, in the order applied (so in order per
    /// origin). A write through [`update`](Self::update) on a cache that watches tables arrives
    /// twice: from the mesh (or locally) and again from the change log, which records it too.
    ///
    /// The stream never slows the node: it holds up to [`DEFAULT_CHANGES_BUFFER`] unread
    /// changes, past which the oldest are dropped and the subscriber reads [`Lagged`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use cohort::{Changed, Origin};
    ///
    /// let cluster = cohort::Cluster::builder().start().await?;
    /// let users = cluster.cache::<u64, String>("users").build()?;
    /// let mut changes = users.changes();
    /// users.invalidate(&7).await?;
    /// let event = changes.recv().await.expect("the cache lives")?;
    /// assert_eq!((event.change, event.origin), (Changed::Key(7), Origin::Local));
    /// # Ok(()) }
    /// ```
    pub fn changes(&self) -> Changes<K> {
        self.inner.hooks.subscribe()
    }
}
