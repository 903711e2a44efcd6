//! The typed cache handle: reads, single-flight loads, write-through updates, invalidations.
//!
//! A [`Cache`] is one node's copy of a named cache. It answers reads from its [`Store`] and
//! keeps the store coherent with the cluster: every `update` or `invalidate` here becomes an
//! event on every peer, and every peer's event is applied here (through the [`Sink`] impl).
//!
//! The no-stale-fill rule lives here and in the store: a load or a write takes a slot for its key
//! before it reads or writes the source, and any change to that key meanwhile (from a peer, from
//! another local write) voids the slot, so the value is returned to its caller but not stored.
//!
//! A [`Mode::Partitioned`] cache stores only the keys its node owns, asks the owner for the
//! others, and may keep hot copies of them; `partition` holds those parts and the rule deciding
//! whether an owner's answer may be kept.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::num::NonZeroU64;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::Instrument;

use crate::changelog::WatchedTable;
use crate::changelog::ops::CacheOp;
use crate::clock::Millis;
use crate::config::ConfigError;
use crate::id::EventId;
use crate::id::NodeId;
use crate::lease::Lease;
use crate::metrics::{CacheCounters, CacheStats};
use crate::node::ownership::stable_hash;
use crate::node::{Node, Running, Serving, Sink};
use crate::store::{Bound, Lookup, Slot, Store, TagFn, WeighFn};
pub use bulk::BulkError;
pub use fallback::ReadyError;
use hooks::Hooks;
pub use hooks::{ChangeEvent, Changed, Changes, DEFAULT_CHANGES_BUFFER, Lagged, Origin};
pub use partition::DEFAULT_OWNER_TIMEOUT;
use partition::{LoadFn, Partition};

mod batch;
mod bulk;
mod fallback;
mod hooks;
mod partition;
mod tags;

/// What an answer frame adds to its value's encoding, at most.
const ANSWER_OVERHEAD: usize = 32;
use crate::wire::{self, Change};

/// Default for [`CacheBuilder::capacity`].
pub const DEFAULT_CAPACITY: u64 = 100_000;

/// What a cache key must be: hashable, comparable, clonable and serializable.
pub trait Key: Hash + Eq + Clone + Serialize + DeserializeOwned + Send + Sync + 'static {}
impl<T> Key for T where T: Hash + Eq + Clone + Serialize + DeserializeOwned + Send + Sync + 'static {}

/// What a cached value must be: clonable and serializable. Cloning happens on every hit, so large
/// values belong behind an `Arc`.
pub trait Value: Clone + Serialize + DeserializeOwned + Send + Sync + 'static {}
impl<T> Value for T where T: Clone + Serialize + DeserializeOwned + Send + Sync + 'static {}

/// How an `update` reaches the other nodes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Mode {
    /// Peers drop the key; their next read loads it from the source.
    #[default]
    Invalidate,
    /// Peers holding the key receive the new value. Needs [`CacheBuilder::version`]: a peer
    /// keeps the higher version, so concurrent updates through different nodes settle on the
    /// newest one.
    Replicate,
    /// Reads are linearizable with respect to completed updates: once `update` returns, no node
    /// serves the old value. Before the write runs, every live peer is told (an intent) and
    /// acknowledges: it drops the key and stores no load of it until the update has ended. A
    /// peer that does not answer within the bound is waited out: a strong cache serves only
    /// while its node has confirmed every live peer within the bound, and those confirmations
    /// travel behind the intent. Costs one round trip per update, or the bound when a peer is
    /// unreachable. Writers that bypass cohort (seen through the change log) stay bounded.
    Strong,
    /// Each key has one owner among the live members (rendezvous hashing over their names): the
    /// owner holds the value and loads it, with the cache's [`loader`](CacheBuilder::loader),
    /// once for the whole cluster per change; the other nodes ask it over the mesh, and may keep
    /// [hot copies](CacheBuilder::hot_copies). So the cluster's memory adds up: three nodes of
    /// capacity C hold 3 C distinct keys. The bound holds as in the other modes: an owner
    /// answers only under its lease, and an answer is kept as a hot copy only if the asking node
    /// saw no change to the key within twice the bound. An owner that does not answer within the
    /// [`owner_timeout`](CacheBuilder::owner_timeout) is skipped: the reader loads the key itself
    /// ([`Source::OwnerSkipped`]). With a [`version`](CacheBuilder::version), updates carry the
    /// value, which the owner (and any hot copy) takes in place of an older one it holds.
    Partitioned,
}

type VersionFn<V> = Arc<dyn Fn(&V) -> u64 + Send + Sync>;
type ParseFn<K> = Arc<dyn Fn(&str) -> Option<K> + Send + Sync>;

/// Where a [`Cache::fetch`] found its value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Source {
    /// The local copy (stored before, or just filled by a concurrent load of the same key).
    Cache,
    /// This call ran the loader and offered the value to the cache.
    Loaded,
    /// This call ran the loader and did not store the value: the change-log lease had lapsed.
    Bypassed,
    /// A partitioned cache's owner of the key, on another node, answered: from its memory, or
    /// from the one load it made for every node asking.
    Owner,
    /// A partitioned cache's owner of the key did not answer in time (or could not serve): this
    /// call ran the loader itself.
    OwnerSkipped,
    /// The loader failed and this is the value the node still held, last known current `age`
    /// ago; only from [`Cache::fetch_or_stale`], and only younger than its `max_age`.
    Stale {
        /// How long ago the value was last known current, at most (never an understatement).
        age: Duration,
    },
}

/// A value and where it came from; from [`Cache::fetch`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Fetched<V> {
    /// The value.
    pub value: V,
    /// Where it came from.
    pub source: Source,
}

/// Configures a cache; from [`Cluster::cache`](crate::Cluster::cache).
pub struct CacheBuilder<K, V> {
    node: Arc<Node>,
    running: Arc<Running>,
    name: String,
    capacity: u64,
    weigher: Option<(u64, WeighFn<K, V>)>,
    ttl: Option<Duration>,
    mode: Mode,
    version: Option<VersionFn<V>>,
    /// Each watched table's name, key column and version column.
    watches: Vec<(String, String, Option<String>)>,
    /// A version column named before any table was watched: a configuration error.
    stray_version_column: bool,
    parse: Option<ParseFn<K>>,
    loader: Option<LoadFn<K, V>>,
    hot_bytes: u64,
    owner_timeout: Option<Duration>,
    tags: Option<TagFn<V>>,
}

impl<K: Key + FromStr, V: Value> CacheBuilder<K, V> {
    /// Invalidates this cache's keys from the change log whenever a row of `table` is inserted,
    /// updated or deleted, by anyone: `key_column`'s value, as text, parsed with `K::from_str`,
    /// is the key. Installs the triggers (idempotently) when the cache is built. Needs a cluster
    /// with a [change log](crate::ClusterBuilder::change_log); with one, the cache serves values
    /// only under its node's poll lease.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let pool = sqlx::SqlitePool::connect("sqlite::memory:").await?;
    /// sqlx::query("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)").execute(&pool).await?;
    /// let cluster = cohort::Cluster::builder()
    ///     .change_log(cohort::ChangeLog::sqlite(pool))
    ///     .start()
    ///     .await?;
    /// let users = cluster.cache::<u64, String>("users").watch_table("users", "id").build()?;
    /// # Ok(()) }
    /// ```
    pub fn watch_table(&mut self, table: &str, key_column: &str) -> &mut Self {
        self.watch_table_with(table, key_column, |text| text.parse().ok())
    }
}

#[cfg(fuzzing)]
impl<K: Key + FromStr, V: Value> CacheBuilder<K, V> {
    /// A cache that parses change-log keys with `K::from_str`, on a node without a change log.
    pub fn build_for_fuzzing(&mut self) -> Cache<K, V> {
        self.parse = Some(Arc::new(|text: &str| text.parse().ok()));
        self.build().expect("a cache without watched tables builds")
    }
}

#[cfg(fuzzing)]
impl<K: Key, V: Value> Cache<K, V> {
    /// Applies `text` as a change-log row's key, then checks the store's invariants.
    pub fn apply_logged_for_fuzzing(&self, text: &str) {
        self.inner.apply_logged(text, None);
        self.inner.store.validate();
    }
}

impl<K: Key, V: Value> CacheBuilder<K, V> {
    pub(crate) fn new(node: Arc<Node>, running: Arc<Running>, name: &str) -> Self {
        Self {
            node,
            running,
            name: name.to_owned(),
            capacity: DEFAULT_CAPACITY,
            weigher: None,
            ttl: None,
            mode: Mode::default(),
            version: None,
            watches: Vec::new(),
            stray_version_column: false,
            parse: None,
            loader: None,
            hot_bytes: 0,
            owner_timeout: None,
            tags: None,
        }
    }

    /// Like [`watch_table`](Self::watch_table), with the application's own mapping from the key
    /// column's text to a key. A row that does not parse is logged, counted, and flushes the
    /// cache (the node cannot tell which key changed).
    ///
    /// Defaults to: no watched tables.
    pub fn watch_table_with(
        &mut self,
        table: &str,
        key_column: &str,
        parse: impl Fn(&str) -> Option<K> + Send + Sync + 'static,
    ) -> &mut Self {
        self.watches
            .push((table.to_owned(), key_column.to_owned(), None));
        self.parse = Some(Arc::new(parse));
        self
    }

    /// Names the version column of the table watched last (by [`watch_table`](Self::watch_table)
    /// or [`watch_table_with`](Self::watch_table_with)): its change-log rows then carry the
    /// row's new version, and a node keeps a copy whose [`version`](Self::version) is at least
    /// that one instead of dropping it. So a writer's own change coming back through the log
    /// costs no miss, on the writer or on peers that loaded or received the new row, while a
    /// change through any other writer, which no node holds yet, still drops every copy.
    ///
    /// The promise rests on every writer of the table raising the column on every update of a
    /// row: an update that does not raise it (and an insert, a delete, a changed key, a value
    /// that is not a non-negative integer) is logged without a version and drops every copy,
    /// as without this option. Needs [`version`](Self::version) to read the same number from a
    /// cached value; installing fails (see
    /// [`Cluster::change_log_status`](crate::Cluster::change_log_status)) if the column is
    /// missing or holds no integers.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let pool = sqlx::SqlitePool::connect("sqlite::memory:").await?;
    /// sqlx::query("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT, version INTEGER)")
    ///     .execute(&pool)
    ///     .await?;
    /// let cluster = cohort::Cluster::builder()
    ///     .change_log(cohort::ChangeLog::sqlite(pool))
    ///     .start()
    ///     .await?;
    /// let users = cluster
    ///     .cache::<u64, (String, u64)>("users")
    ///     .version(|(_, version)| *version)
    ///     .watch_table("users", "id")
    ///     .version_column("version")
    ///     .build()?;
    /// # Ok(()) }
    /// ```
    ///
    /// Defaults to: none (every logged change drops the key's copies).
    pub fn version_column(&mut self, column: &str) -> &mut Self {
        match self.watches.last_mut() {
            Some((_, _, version)) => *version = Some(column.to_owned()),
            None => self.stray_version_column = true,
        }
        self
    }

    /// The most entries this node holds; the least valuable are evicted past it (S3-FIFO).
    /// With a [`weigher`](Self::weigher), an estimate used to size the table.
    ///
    /// Defaults to: [`DEFAULT_CAPACITY`].
    pub fn capacity(&mut self, entries: u64) -> &mut Self {
        self.capacity = entries;
        self
    }

    /// Bounds the cache by total weight instead of entry count: `weigh` measures each entry
    /// (bytes, say) and entries are evicted once the sum would pass `max_weight`.
    ///
    /// Defaults to: every entry weighs 1.
    pub fn weigher(
        &mut self,
        max_weight: u64,
        weigh: impl Fn(&K, &V) -> u64 + Send + Sync + 'static,
    ) -> &mut Self {
        self.weigher = Some((max_weight, Arc::new(weigh)));
        self
    }

    /// How long an entry is served after it was stored; an expired entry is a miss.
    ///
    /// Defaults to: no expiry.
    pub fn ttl(&mut self, ttl: Duration) -> &mut Self {
        self.ttl = Some(ttl);
        self
    }

    /// How updates reach other nodes.
    ///
    /// Defaults to: [`Mode::Invalidate`].
    pub fn mode(&mut self, mode: Mode) -> &mut Self {
        self.mode = mode;
        self
    }

    /// The application's version of a value (a row's version column, an update timestamp); it
    /// must grow with every write of a key. Required by [`Mode::Replicate`] and by a
    /// [`version_column`](Self::version_column).
    ///
    /// Defaults to: none.
    pub fn version(&mut self, version: impl Fn(&V) -> u64 + Send + Sync + 'static) -> &mut Self {
        self.version = Some(Arc::new(version));
        self
    }

    /// The loader this node runs as the owner of a key of a [`Mode::Partitioned`] cache, when
    /// another node asks for the key. Required by that mode; it should read what the loaders
    /// given to [`get_or_load`](Cache::get_or_load) read.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use cohort::{Cluster, Mode};
    ///
    /// let cluster = Cluster::builder().start().await?;
    /// let users = cluster
    ///     .cache::<u64, String>("users")
    ///     .mode(Mode::Partitioned)
    ///     .loader(|id| async move { Ok::<_, std::io::Error>(format!("user {id}")) })
    ///     .hot_copies(16 << 20)
    ///     .build()?;
    /// let fetched = users.fetch(&7, |id| async move { Ok::<_, std::io::Error>(format!("user {id}")) }).await?;
    /// assert_eq!(fetched.value, "user 7");
    /// # Ok(()) }
    /// ```
    ///
    /// Defaults to: none.
    pub fn loader<F, Fut, E>(&mut self, load: F) -> &mut Self
    where
        F: Fn(K) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
        E: fmt::Display,
    {
        let load = Arc::new(load);
        self.loader = Some(Arc::new(move |key| {
            let load = Arc::clone(&load);
            Box::pin(async move { load(key).await.map_err(|e| e.to_string()) })
        }));
        self
    }

    /// For a [`Mode::Partitioned`] cache: how many bytes (keys and values as sent on the wire)
    /// of keys owned by other nodes this node may keep, so hot keys are read at local speed. A
    /// key is kept on its second read within a recent window; every change removes it, as in
    /// the other modes.
    ///
    /// Defaults to: 0 (every read of another node's key asks it).
    pub fn hot_copies(&mut self, max_bytes: u64) -> &mut Self {
        self.hot_bytes = max_bytes;
        self
    }

    /// For a [`Mode::Partitioned`] cache: how long a read waits for a key's owner before loading
    /// the key itself. The owner's own load counts in this time.
    ///
    /// Defaults to: [`DEFAULT_OWNER_TIMEOUT`], or half the bound if that is shorter.
    pub fn owner_timeout(&mut self, timeout: Duration) -> &mut Self {
        self.owner_timeout = Some(timeout);
        self
    }

    /// Creates the cache and joins it to the cluster's events.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// use cohort::{Cluster, Mode};
    ///
    /// let cluster = Cluster::builder().start().await?;
    /// let users = cluster
    ///     .cache::<u64, (String, u64)>("users")
    ///     .capacity(1_000_000)
    ///     .ttl(Duration::from_secs(600))
    ///     .mode(Mode::Replicate)
    ///     .version(|(_, version)| *version)
    ///     .build()?;
    /// assert_eq!(users.get(&1), None);
    /// # Ok(()) }
    /// ```
    pub fn build(&self) -> Result<Cache<K, V>, ConfigError> {
        let invalid = |setting, reason: &str| ConfigError::Invalid {
            setting,
            reason: reason.to_owned(),
        };
        if self.name.is_empty() || self.name.len() > 255 {
            return Err(invalid("cache name", "must be 1 to 255 bytes"));
        }
        if self.name.starts_with(crate::changelog::ops::MARK) {
            return Err(invalid("cache name", "must not start with U+0001"));
        }
        if self.mode == Mode::Replicate && self.version.is_none() {
            return Err(invalid("mode", "Mode::Replicate needs a version extractor"));
        }
        if self.mode == Mode::Partitioned && self.loader.is_none() {
            return Err(invalid("mode", "Mode::Partitioned needs a loader"));
        }
        if self.mode != Mode::Partitioned && (self.loader.is_some() || self.hot_bytes > 0) {
            return Err(invalid(
                "loader",
                "a loader and hot copies are for Mode::Partitioned only",
            ));
        }
        let owner_timeout = self
            .owner_timeout
            .unwrap_or(DEFAULT_OWNER_TIMEOUT.min(self.node.max_staleness() / 2));
        if owner_timeout.is_zero() || owner_timeout > self.node.max_staleness() {
            return Err(invalid(
                "owner_timeout",
                "must be positive and at most the bound",
            ));
        }
        if self.ttl.is_some_and(|ttl| ttl.is_zero()) {
            return Err(invalid("ttl", "must be positive"));
        }
        let capacity = NonZeroU64::new(self.capacity)
            .ok_or_else(|| invalid("capacity", "must be positive"))?;
        let bound = match &self.weigher {
            None => Bound::Entries(capacity),
            Some((max, weigh)) => Bound::Weight {
                max: NonZeroU64::new(*max)
                    .ok_or_else(|| invalid("weigher", "max_weight must be positive"))?,
                estimated_entries: usize::try_from(capacity.get()).unwrap_or(usize::MAX),
                weigh: Arc::clone(weigh),
            },
        };
        let name: Arc<str> = self.name.as_str().into();
        let watches: Vec<WatchedTable> = self
            .watches
            .iter()
            .map(|(table, key_column, version_column)| WatchedTable {
                cache: Arc::clone(&name),
                table: table.clone(),
                key_column: key_column.clone(),
                version_column: version_column.clone(),
            })
            .collect();
        for (i, watch) in watches.iter().enumerate() {
            watch.validate().map_err(|reason| ConfigError::Invalid {
                setting: "watch_table",
                reason,
            })?;
            // A cache's triggers on a table are one set, named after the two.
            if watches[..i].iter().any(|other| other.table == watch.table) {
                return Err(invalid("watch_table", "a table is watched twice"));
            }
        }
        if self.stray_version_column {
            return Err(invalid(
                "version_column",
                "names the version column of a watched table: call it after watch_table",
            ));
        }
        if self.version.is_none() && watches.iter().any(|w| w.version_column.is_some()) {
            return Err(invalid(
                "version_column",
                "a version column needs a version extractor (CacheBuilder::version)",
            ));
        }
        let log = match (self.node.log(), watches.is_empty()) {
            (_, true) => None,
            (Some(log), false) => Some(log),
            (None, false) => {
                return Err(invalid("watch_table", "the cluster has no change log"));
            }
        };
        let inner = Arc::new(Inner {
            name: Arc::clone(&name),
            store: self.tagged(Store::new(bound, self.node.clock().clone(), self.ttl)),
            mode: self.mode,
            version: self.version.clone(),
            parse: self.parse.clone(),
            lease: match log {
                _ if self.node.ignores_leases() => Arc::new(Lease::forever()),
                Some(_) => Arc::new(Lease::default()),
                None => Arc::clone(self.node.peer_lease()),
            },
            // Strong writes rest on the peers' acknowledgements whatever the log does.
            fenced: log.is_none() || self.mode == Mode::Strong,
            strong: (self.mode == Mode::Strong).then(|| Strong {
                peer_lease: if self.node.ignores_leases() {
                    Arc::new(Lease::forever())
                } else {
                    Arc::clone(self.node.peer_lease())
                },
                held: parking_lot::Mutex::new(HashMap::new()),
                all_held_until: AtomicU64::new(0),
            }),
            partition: self.loader.clone().map(|load| {
                let hot = NonZeroU64::new(self.hot_bytes).map(|max| {
                    let weigh: WeighFn<K, V> = Arc::new(|key, value| {
                        let size = |item: Result<usize, _>| item.unwrap_or(0) as u64;
                        size(postcard::experimental::serialized_size(key))
                            + size(postcard::experimental::serialized_size(value))
                    });
                    self.tagged(Store::new(
                        Bound::Weight {
                            max,
                            // A guess at 1 KiB an entry, to size the table.
                            estimated_entries: usize::try_from(max.get() / 1024)
                                .unwrap_or(usize::MAX)
                                .max(16),
                            weigh,
                        },
                        self.node.clock().clone(),
                        self.ttl,
                    ))
                });
                Partition::new(load, hot, self.node.max_staleness(), owner_timeout)
            }),
            node: Arc::clone(&self.node),
            counters: CacheCounters::default(),
            hooks: Hooks::new(DEFAULT_CHANGES_BUFFER),
            told_not_ready: AtomicBool::new(false),
        });
        self.node
            .register(name, Arc::clone(&inner) as Arc<dyn Sink>)?;
        // Installed only once the name is known to be free.
        if let Some(log) = log {
            log.register(watches, Arc::clone(&inner.lease));
        }
        Ok(Cache {
            inner,
            _running: Arc::clone(&self.running),
        })
    }
}

/// One node's copy of a named cache, kept coherent with the same cache on every peer.
///
/// Cloning is cheap and shares the copy.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let cluster = cohort::Cluster::builder().start().await?;
/// let users = cluster.cache::<u64, String>("users").build()?;
///
/// let name = users.get_or_load(&7, |id| async move { Ok::<_, std::io::Error>(format!("user {id}")) }).await?;
/// assert_eq!(name, "user 7");
/// assert_eq!(users.get(&7).as_deref(), Some("user 7"));
///
/// users.invalidate(&7).await?;
/// assert_eq!(users.get(&7), None);
/// # Ok(()) }
/// ```
pub struct Cache<K, V> {
    inner: Arc<Inner<K, V>>,
    _running: Arc<Running>,
}

impl<K, V> Clone for Cache<K, V> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
            _running: Arc::clone(&self._running),
        }
    }
}

impl<K, V> fmt::Debug for Cache<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache")
            .field("name", &self.inner.name)
            .finish_non_exhaustive()
    }
}

/// What a strong cache keeps besides its store.
struct Strong<K> {
    peer_lease: Arc<Lease>,
    /// Keys announced by an intent, with how many intents and until when at the latest: loads
    /// of them are not stored. A release ends one; a writer that vanished is outlived.
    held: parking_lot::Mutex<HashMap<K, (u32, Millis)>>,
    /// Until when no load of any key is stored: after missed events, whose intents (and so
    /// keys) are unknown, for as long as any intent could hold.
    all_held_until: AtomicU64,
}

struct Inner<K, V> {
    name: Arc<str>,
    store: Store<K, V>,
    mode: Mode,
    version: Option<VersionFn<V>>,
    /// Maps change-log key text to keys; set when the cache watches tables.
    parse: Option<ParseFn<K>>,
    /// The lease the cache serves under: its own change-log lease when it watches tables, the
    /// node's peer lease otherwise.
    lease: Arc<Lease>,
    /// Whether writes need the lease too: peer-only caches, where the mesh is the only path, and
    /// strong ones, whose writes only peers that still wait for this node may see in time.
    fenced: bool,
    /// For strong caches: the node's peer lease, needed to serve as well, and the keys whose
    /// strong updates are under way.
    strong: Option<Strong<K>>,
    /// For partitioned caches: the owner's loader, hot copies, recent changes.
    partition: Option<Partition<K, V>>,
    node: Arc<Node>,
    counters: CacheCounters,
    /// The subscribers to the changes applied here.
    hooks: Hooks<K>,
    /// Whether a read before the cache first served was logged.
    told_not_ready: AtomicBool,
}

/// The result of a successful [`Cache::update`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Receipt<V> {
    /// What the write returned, now the local copy (unless a concurrent change voided it).
    pub value: V,
    /// The event that carries the change to the peers.
    pub event: EventId,
}

/// Why an [`Cache::update`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpdateError<E> {
    /// The application's write failed. Since it may have committed before failing, the key was
    /// dropped here and invalidated on every peer all the same.
    #[error("the write failed: {0}")]
    Write(#[source] E),
    /// The key could not be serialized; the write did not run and nothing changed.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// A cache without a change log, or a strong one, writes only while this node has
    /// confirmed, within the bound, that it has every live peer's events (a node cut off from its
    /// peers must not write what they would never hear of in time; a strong writer checks again
    /// after its peers acknowledged, since waiting for them may have taken the bound). The write
    /// did not run and nothing changed; retry once the node is serving again
    /// ([`Cache::is_serving`]).
    #[error("fenced: this node has not confirmed its peers within the bound")]
    Fenced,
}

/// A key could not be sent on the wire: it did not serialize, or its encoding is over half of
/// [`max_frame_bytes`](crate::ClusterBuilder::max_frame_bytes), too large for a frame that every
/// peer reads. Nothing changed.
#[derive(Debug, thiserror::Error)]
#[error("cannot send the key on the wire: {0}")]
pub struct EncodeError(#[source] KeyEncoding);

/// Why a key could not be sent.
#[derive(Debug, thiserror::Error)]
enum KeyEncoding {
    #[error(transparent)]
    Serialize(postcard::Error),
    #[error("its encoding takes {len} bytes, over the {max} a frame has room for")]
    TooLarge { len: usize, max: usize },
}

impl<K: Key, V: Value> Cache<K, V> {
    /// The cache's name, shared with its copies on the other nodes.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The value of `key` if this node holds a live copy and may serve it (for a cache that
    /// watches tables: its change-log lease holds). Never waits, never allocates beyond cloning
    /// `V`.
    #[inline]
    pub fn get(&self, key: &K) -> Option<V> {
        let inner = &*self.inner;
        let serving = inner.serving();
        if serving && let Some(value) = inner.store.get(key) {
            inner.counters.hits.incr();
            return Some(value);
        }
        inner.get_past_store(key, serving)
    }

    /// Whether this node may serve this cache's values now. A cache that watches tables serves
    /// while its node's last complete poll of the change log started within Δ; a cache that does
    /// not, while its node has confirmed within Δ that it applied every event of every live peer
    /// (always, for a node with no peers).
    pub fn is_serving(&self) -> bool {
        self.inner.serving()
    }

    /// The value of `key`, loaded with `load` on a miss and stored unless the key changed while
    /// it loaded. Concurrent calls for one key on this node share one `load`; if it fails, its
    /// caller gets the error and one of the waiters tries its own `load`.
    ///
    /// While the change-log lease has lapsed, every call runs `load` and stores nothing.
    pub async fn get_or_load<F, Fut, E>(&self, key: &K, load: F) -> Result<V, E>
    where
        F: FnOnce(K) -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        self.fetch(key, load).await.map(|fetched| fetched.value)
    }

    /// [`get_or_load`](Self::get_or_load), also saying where the value came from.
    pub async fn fetch<F, Fut, E>(&self, key: &K, load: F) -> Result<Fetched<V>, E>
    where
        F: FnOnce(K) -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        let inner = &*self.inner;
        let fetched = |value, source| Ok(Fetched { value, source });
        if !inner.serving() {
            inner.counters.misses.incr();
            return fetched(inner.bypass(key, load).await?, Source::Bypassed);
        }
        if let Some(value) = inner.store.get(key).or_else(|| inner.hot_get(key)) {
            inner.counters.hits.incr();
            return fetched(value, Source::Cache);
        }
        inner.counters.misses.incr();
        if let Some(partition) = &inner.partition
            && let Ok(key_bytes) = inner.encode_key(key)
            && let Some(owner) = inner.node.owner_of(&key_bytes)
        {
            return inner
                .fetch_from_owner(partition, &owner, key, &key_bytes, load)
                .await;
        }
        match inner.store.load_slot(key).await {
            // Waiting for a concurrent load of the key can outlast the lease (a stalled
            // database): a value found after the wait is served only under a lease that holds
            // now, and otherwise read afresh.
            Lookup::Hit(value) if inner.serving() => fetched(value, Source::Cache),
            Lookup::Hit(_) => fetched(inner.bypass(key, load).await?, Source::Bypassed),
            Lookup::Miss(slot) => {
                let value = inner.load(key.clone(), "miss", load).await?;
                inner.offer(key, slot, value.clone());
                fetched(value, Source::Loaded)
            }
        }
    }

    /// Runs the application's `write` of `key` (to the source of truth), makes its result the
    /// local copy, and sends the change to every peer per the cache's [`Mode`].
    ///
    /// Returns once the local copy is current: a `get` here afterwards sees the value, unless a
    /// change to `key` from elsewhere arrived while the write ran, in which case the key is left
    /// empty rather than risk keeping the older of the two.
    pub async fn update<F, Fut, E>(&self, key: &K, write: F) -> Result<Receipt<V>, UpdateError<E>>
    where
        F: FnOnce(K) -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        let inner = &*self.inner;
        let span = tracing::debug_span!(
            "cohort.update",
            node = %inner.node.id(),
            cache = %inner.name,
            key_hash = inner.key_hash(key)
        );
        #[cfg(feature = "metrics")]
        let started = tokio::time::Instant::now();
        let updated = self.write_through(key, write).instrument(span).await;
        // Timed only when the write ran: a refused update returns at once.
        #[cfg(feature = "metrics")]
        if let Ok(_) | Err(UpdateError::Write(_)) = updated {
            crate::metrics::facade::record_update(inner.node.id(), &inner.name, started.elapsed());
        }
        updated
    }

    /// [`update`](Self::update), untraced.
    async fn write_through<F, Fut, E>(
        &self,
        key: &K,
        write: F,
    ) -> Result<Receipt<V>, UpdateError<E>>
    where
        F: FnOnce(K) -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        let inner = &*self.inner;
        let key_bytes = inner.encode_key(key)?;
        if inner.fenced && !inner.serving() {
            return Err(UpdateError::Fenced);
        }
        if inner.strong.is_some() {
            inner.hold(key);
            inner.store.remove(key);
            inner.node.announce_intent(&inner.name, &key_bytes).await;
            // Waiting for acknowledgements may have taken the bound: a writer whose confirmations
            // lapsed meanwhile may have been retired by the others, who then serve without
            // waiting for its intents. It must not write.
            if !inner.serving() {
                inner
                    .node
                    .publish(&inner.name, Change::Release { key: &key_bytes });
                inner.release(key);
                return Err(UpdateError::Fenced);
            }
        }
        inner.changing(&key_bytes);
        inner.forget_hot(key);
        let slot = inner.store.write_slot(key);
        let written = write(key.clone()).await;
        let release_peers = || {
            if inner.strong.is_some() {
                inner
                    .node
                    .publish(&inner.name, Change::Release { key: &key_bytes });
            }
        };
        let value = match written {
            Ok(value) => value,
            Err(e) => {
                drop(slot);
                inner.store.remove(key);
                inner
                    .node
                    .publish(&inner.name, Change::Invalidate { key: &key_bytes });
                inner.release(key);
                release_peers();
                inner
                    .hooks
                    .emit(|| Origin::Local, || Changed::Key(key.clone()));
                return Err(UpdateError::Write(e));
            }
        };
        inner.counters.updates.incr();
        let stored = value.clone();
        let version = inner.version_of(&value);
        inner.release(key);
        // A partitioned cache keeps the value on the key's owner only; the others ask for it.
        inner.changing(&key_bytes);
        inner.forget_hot(key);
        if inner.partition.is_some() && inner.node.owner_of(&key_bytes).is_some() {
            drop(slot);
            inner.store.remove(key);
        } else if inner.is_held(key) {
            // Another node's strong update of the key overlaps this one: which write landed
            // last is unknown, so neither writer keeps a copy.
            drop(slot);
            inner.counters.fills_rejected.incr();
            inner.store.remove(key);
        } else if !slot.fill(stored) {
            // Another change to the key landed while this write ran; which is newer is unknown.
            inner.counters.fills_rejected.incr();
            inner.store.remove(key);
        }
        let value_bytes = match inner.mode {
            Mode::Invalidate | Mode::Strong => None,
            Mode::Partitioned if inner.version.is_none() => None,
            Mode::Replicate | Mode::Partitioned => wire::encode_item(&value)
                .inspect_err(|e| tracing::warn!(cache = %inner.name, error = %e, "cannot serialize a value; invalidating instead"))
                .ok(),
        };
        let change = match &value_bytes {
            Some(value) => Change::Replicate {
                key: &key_bytes,
                version,
                value,
            },
            None => Change::Invalidate { key: &key_bytes },
        };
        let event = inner.node.publish(&inner.name, change);
        release_peers();
        inner
            .hooks
            .emit(|| Origin::Local, || Changed::Key(key.clone()));
        inner.kick_log();
        Ok(Receipt { value, event })
    }

    /// Drops `key` here and on every peer. Use it after writing the source some other way. In a
    /// cache without a change log (or a strong one) the bound holds for it only while this node
    /// serves ([`is_serving`](Self::is_serving)): a node cut off from its peers sends it once it
    /// can, and they may serve the old value until then.
    pub async fn invalidate(&self, key: &K) -> Result<EventId, EncodeError> {
        let inner = &*self.inner;
        let key_bytes = inner.encode_key(key)?;
        let span = tracing::debug_span!(
            "cohort.invalidate",
            node = %inner.node.id(),
            cache = %inner.name,
            key_hash = stable_hash(&key_bytes)
        );
        Ok(span.in_scope(|| {
            inner.changing(&key_bytes);
            inner.forget_hot(key);
            inner.store.remove(key);
            let event = inner
                .node
                .publish(&inner.name, Change::Invalidate { key: &key_bytes });
            inner
                .hooks
                .emit(|| Origin::Local, || Changed::Key(key.clone()));
            event
        }))
    }

    /// For a [`Mode::Partitioned`] cache, the node that owns `key` as this node's links see it
    /// (this node's own name when it owns it); `None` in the other modes, or for a key too large
    /// for the wire. Owners move when members come and go.
    pub fn owner(&self, key: &K) -> Option<NodeId> {
        let inner = &*self.inner;
        inner.partition.as_ref()?;
        let key_bytes = inner.encode_key(key).ok()?;
        Some(
            inner
                .node
                .owner_of(&key_bytes)
                .unwrap_or_else(|| inner.node.id().clone()),
        )
    }

    /// This cache's counters on this node.
    pub fn stats(&self) -> CacheStats {
        Sink::stats(&*self.inner)
    }
}

impl<K: Key, V: Value> Inner<K, V> {
    /// The key's wire encoding, if it fits a frame with room to spare for the rest of an event.
    fn encode_key(&self, key: &K) -> Result<Vec<u8>, EncodeError> {
        let bytes = wire::encode_item(key).map_err(|e| EncodeError(KeyEncoding::Serialize(e)))?;
        let max = self.node.max_frame_bytes() / 2;
        if bytes.len() > max {
            return Err(EncodeError(KeyEncoding::TooLarge {
                len: bytes.len(),
                max,
            }));
        }
        Ok(bytes)
    }

    #[inline]
    fn serving(&self) -> bool {
        let clock = self.store.clock();
        self.lease.is_valid(clock)
            && self
                .strong
                .as_ref()
                .is_none_or(|strong| strong.peer_lease.is_valid(clock))
    }

    /// Loads `key` for a caller that may not use the cache now; stores nothing.
    async fn bypass<F, Fut, E>(&self, key: &K, load: F) -> Result<V, E>
    where
        F: FnOnce(K) -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        self.bypassing();
        self.load(key.clone(), "bypass", load).await
    }

    /// Counts a read that may not use the cache now. The first one before the cache ever
    /// served is logged: it is what a service taking traffic before [`Cache::ready`] sees, and
    /// nothing else would tell why its first reads never cache.
    pub(super) fn bypassing(&self) {
        self.counters.bypasses.incr();
        if self.lease.proven_at(self.node.max_staleness()).is_none()
            && !self.told_not_ready.swap(true, Ordering::Relaxed)
        {
            tracing::info!(
                node = %self.node.id(),
                cache = %self.name,
                "a read before the cache first served: it loads and stores nothing \
                 (await Cache::ready after building the cache)"
            );
        }
    }

    /// Runs the application's `load` of `key`: counted, in a `cohort.load` span (`reason`: why
    /// the source is read) and, with the `metrics` feature, timed.
    async fn load<F, Fut, E>(&self, key: K, reason: &'static str, load: F) -> Result<V, E>
    where
        F: FnOnce(K) -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        self.counters.loads.incr();
        let span = tracing::debug_span!(
            "cohort.load",
            node = %self.node.id(),
            cache = %self.name,
            key_hash = self.key_hash(&key),
            reason
        );
        #[cfg(feature = "metrics")]
        let started = tokio::time::Instant::now();
        let loaded = load(key).instrument(span).await;
        #[cfg(feature = "metrics")]
        crate::metrics::facade::record_load(self.node.id(), &self.name, started.elapsed());
        loaded
    }

    /// What names `key` in traces: the stable hash of its wire encoding, the same on every node,
    /// which does not show the key itself; `None` for a key that does not serialize.
    fn key_hash(&self, key: &K) -> Option<u64> {
        wire::encode_item(key).ok().map(|bytes| stable_hash(&bytes))
    }

    /// Holds back fills of `key` until a matching [`release`](Self::release), or for four
    /// bounds at most.
    fn hold(&self, key: &K) {
        if let Some(strong) = &self.strong {
            let until = self.hold_limit();
            let mut held = strong.held.lock();
            let entry = held.entry(key.clone()).or_insert((0, until));
            *entry = (entry.0 + 1, entry.1.max(until));
        }
    }

    fn release(&self, key: &K) {
        if let Some(strong) = &self.strong {
            let mut held = strong.held.lock();
            if let Some((count, _)) = held.get_mut(key) {
                *count -= 1;
                if *count == 0 {
                    held.remove(key);
                }
            }
        }
    }

    /// How long an intent holds a key at most, as a deadline.
    fn hold_limit(&self) -> Millis {
        self.store.clock().deadline(self.node.max_staleness() * 4)
    }

    /// Stores a value just read from the source in the key's `slot`, unless a strong update of
    /// the key is in flight (which write lands last is unknown) or a change voided the slot
    /// while the source was read; a refusal is counted.
    fn offer(&self, key: &K, slot: Slot<'_, K, V>, value: V) {
        if self.is_held(key) {
            drop(slot);
            self.counters.fills_rejected.incr();
        } else if !slot.fill(value) {
            self.counters.fills_rejected.incr();
        }
    }

    fn is_held(&self, key: &K) -> bool {
        self.strong.as_ref().is_some_and(|strong| {
            let now = self.store.clock().now();
            if now < strong.all_held_until.load(Ordering::Acquire) {
                return true;
            }
            let mut held = strong.held.lock();
            held.retain(|_, &mut (_, until)| until > now);
            held.contains_key(key)
        })
    }

    /// The rest of [`Cache::get`] once the store had nothing to serve: kept out of line so that
    /// a hit runs as few instructions as possible (on a hit bound by memory latency, each one
    /// costs).
    #[cold]
    #[inline(never)]
    fn get_past_store(&self, key: &K, serving: bool) -> Option<V> {
        if !serving {
            self.counters.misses.incr();
            self.bypassing();
            return None;
        }
        let found = self.hot_get(key);
        match found {
            Some(_) => self.counters.hits.incr(),
            None => self.counters.misses.incr(),
        }
        found
    }

    /// The live hot copy of `key`, for partitioned caches that keep them.
    #[inline]
    fn hot_get(&self, key: &K) -> Option<V> {
        self.hot()?.get(key)
    }

    fn hot(&self) -> Option<&Store<K, V>> {
        self.partition.as_ref()?.hot.as_ref()
    }

    fn forget_hot(&self, key: &K) {
        if let Some(hot) = self.hot() {
            hot.remove(key);
        }
    }

    /// For partitioned caches: the key encoded as `key_bytes` changes now, so no owner's answer
    /// for it is kept for a while. Called before the stores drop the key: an ask racing with the
    /// change then sees one or the other.
    fn changing(&self, key_bytes: &[u8]) {
        if let Some(partition) = &self.partition {
            partition
                .recent
                .record(stable_hash(key_bytes), self.store.clock());
        }
    }

    /// For partitioned caches: any key may have changed (missed events).
    fn changing_all(&self) {
        if let Some(partition) = &self.partition {
            partition.recent.record_all(self.store.clock());
        }
    }

    /// Reads `key` from its `owner` on another node; loads it here if the owner does not answer
    /// in time. The answer becomes a hot copy only if the key is hot and changed neither while
    /// asking (the slot) nor lately (see `partition`).
    async fn fetch_from_owner<F, Fut, E>(
        &self,
        partition: &Partition<K, V>,
        owner: &NodeId,
        key: &K,
        key_bytes: &[u8],
        load: F,
    ) -> Result<Fetched<V>, E>
    where
        F: FnOnce(K) -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        let slot = match &partition.hot {
            // Concurrent reads of one key here share one ask.
            Some(hot) => match hot.load_slot(key).await {
                Lookup::Hit(value) if self.serving() => {
                    return Ok(Fetched {
                        value,
                        source: Source::Cache,
                    });
                }
                Lookup::Hit(_) => {
                    return Ok(Fetched {
                        value: self.bypass(key, load).await?,
                        source: Source::Bypassed,
                    });
                }
                Lookup::Miss(slot) => Some(slot),
            },
            None => None,
        };
        let hash = stable_hash(key_bytes);
        let changed_lately = partition.recent.contains(hash, self.store.clock());
        let answer = self
            .node
            .ask(owner, &self.name, key_bytes, partition.owner_timeout)
            .await
            .and_then(|bytes| wire::decode_item::<V>(&bytes).ok());
        let (value, source) = match answer {
            Some(value) => {
                self.counters.remote_hits.incr();
                (value, Source::Owner)
            }
            None => {
                self.counters.owner_skipped.incr();
                (
                    self.load(key.clone(), "owner_skipped", load).await?,
                    Source::OwnerSkipped,
                )
            }
        };
        if let Some(slot) = slot {
            // A load from the source is as fresh as the slot; an answer may be as old as the
            // owner's lag.
            let keep = (source == Source::OwnerSkipped || !changed_lately) && partition.admit(hash);
            if keep && !slot.fill(value.clone()) {
                self.counters.fills_rejected.incr();
            }
        }
        Ok(Fetched { value, source })
    }

    /// Answers a peer's request for `key`, as its owner: from the store, or loaded once for
    /// every asker at a time; `None` when this node may not serve (its lease lapsed) or the
    /// load failed.
    async fn serve_owned(&self, key: K) -> Option<Vec<u8>> {
        let partition = self.partition.as_ref()?;
        if !self.serving() {
            return None;
        }
        let value = match self.store.get(&key) {
            Some(value) => value,
            None => match self.store.load_slot(&key).await {
                Lookup::Hit(value) if self.serving() => value,
                Lookup::Hit(_) => return None,
                Lookup::Miss(slot) => {
                    let loaded = self.load(key, "owner", |key| (partition.load)(key)).await;
                    let value = match loaded {
                        Ok(value) => value,
                        Err(error) => {
                            tracing::warn!(cache = %self.name, %error, "the owner's load failed");
                            return None;
                        }
                    };
                    if !slot.fill(value.clone()) {
                        self.counters.fills_rejected.incr();
                    }
                    value
                }
            },
        };
        self.counters.served.incr();
        wire::encode_item(&value)
            .ok()
            .filter(|bytes| bytes.len() + ANSWER_OVERHEAD <= self.node.max_frame_bytes())
    }

    /// Polls the change log soon, so that this node's own write is confirmed by it early.
    fn kick_log(&self) {
        if let (Some(log), false) = (&self.node.log(), self.fenced) {
            log.kick();
        }
    }

    /// The application's version of `value`; zero for caches without versions.
    fn version_of(&self, value: &V) -> u64 {
        self.version.as_ref().map_or(0, |version| version(value))
    }

    /// Applies the peer `from`'s invalidation of the key encoded as `key_bytes`.
    fn invalidate_from(&self, from: &NodeId, key_bytes: &[u8]) -> Result<(), postcard::Error> {
        let key: K = wire::decode_item(key_bytes)?;
        self.changing(key_bytes);
        self.forget_hot(&key);
        self.store.remove(&key);
        self.counters.invalidations_applied.incr();
        self.hooks
            .emit(|| Origin::Peer(from.clone()), || Changed::Key(key));
        Ok(())
    }

    fn apply_change(&self, from: &NodeId, change: &Change<'_>) -> Result<(), postcard::Error> {
        match *change {
            Change::Invalidate { key } => self.invalidate_from(from, key)?,
            // Not a change yet: the writer's invalidation or replica follows it.
            Change::Intent { key } => {
                let key: K = wire::decode_item(key)?;
                self.hold(&key);
                self.store.remove(&key);
                self.counters.invalidations_applied.incr();
            }
            Change::Release { key } => self.release(&wire::decode_item(key)?),
            Change::InvalidateMany { keys } => self.invalidate_encoded(from, keys)?,
            Change::Clear => self.clear_local(Origin::Peer(from.clone())),
            Change::InvalidateTag { tag } => {
                self.invalidate_tag_local(tag, Origin::Peer(from.clone()));
            }
            Change::Replicate {
                key,
                version,
                value,
            } => {
                let key_bytes = key;
                let key: K = wire::decode_item(key_bytes)?;
                let value: V = wire::decode_item(value)?;
                self.changing(key_bytes);
                if let Some(hot) = self.hot() {
                    hot.apply_replica(&key, value.clone(), version, |held| self.version_of(held));
                }
                self.store
                    .apply_replica(&key, value, version, |held| self.version_of(held));
                self.counters.replicas_applied.incr();
                self.hooks
                    .emit(|| Origin::Peer(from.clone()), || Changed::Key(key));
            }
        }
        Ok(())
    }
}

impl<K: Key, V: Value> Sink for Inner<K, V> {
    fn apply(&self, from: &NodeId, change: &Change<'_>) {
        if let Err(error) = self.apply_change(from, change) {
            // A change this node cannot read may be about any key: forget them all.
            tracing::warn!(cache = %self.name, %error, "undecodable change from a peer; flushing");
            self.flush();
        }
    }

    fn stats(&self) -> CacheStats {
        let hot = self.hot().map_or(0, Store::len);
        self.counters.snapshot(self.store.len() + hot)
    }

    fn is_peer_only(&self) -> bool {
        self.fenced
    }

    fn is_strong(&self) -> bool {
        self.strong.is_some()
    }

    fn apply_logged(&self, text: &str, version: Option<u64>) {
        let Some(parse) = &self.parse else {
            // This node's copy of the cache watches no tables: the rows are for other nodes.
            return;
        };
        match parse(text) {
            Some(key) => {
                if self.partition.is_some() {
                    match wire::encode_item(&key) {
                        Ok(key_bytes) => self.changing(&key_bytes),
                        // Which hash the key has is unknown: take every key as changed.
                        Err(_) => self.changing_all(),
                    }
                }
                // A copy as new as the change (the writer's own, or one loaded or replicated
                // since) already has it; anything older, or in flight, goes.
                let version_of = |held: &V| self.version.as_ref().map(|version| version(held));
                if let Some(hot) = self.hot() {
                    hot.apply_logged(&key, version, version_of);
                }
                self.store.apply_logged(&key, version, version_of);
                self.counters.logged_applied.incr();
                self.hooks.emit(|| Origin::ChangeLog, || Changed::Key(key));
            }
            None => {
                tracing::warn!(cache = %self.name, key = text, "a change-log key does not parse; flushing");
                self.counters.logged_unparsable.incr();
                self.flush();
            }
        }
    }

    fn apply_logged_op(&self, op: CacheOp<'_>) {
        self.apply_op(op);
    }

    fn flush(&self) {
        // Rare, and what an operator wants to see: at info level.
        let _span = tracing::info_span!("cohort.flush", node = %self.node.id(), cache = %self.name)
            .entered();
        if let Some(strong) = &self.strong {
            // Missed events may have been intents for any key: hold them all, first.
            strong
                .all_held_until
                .fetch_max(self.hold_limit(), Ordering::AcqRel);
        }
        self.changing_all();
        if let Some(hot) = self.hot() {
            hot.clear();
        }
        self.store.clear();
        self.counters.flushes.incr();
        self.hooks.emit(|| Origin::Local, || Changed::Flush);
    }

    fn serve(self: Arc<Self>, key: &[u8]) -> Option<Serving> {
        self.partition.as_ref()?;
        let key: Option<K> = wire::decode_item(key).ok();
        Some(Box::pin(async move { self.serve_owned(key?).await }))
    }
}
