//! Reads for the edges of a cache's life: waiting until it serves, reading past it, and falling
//! back on what it held when the source fails.
//!
//! [`Cache::ready`] waits for the first lease (triggers installed and a complete poll of the
//! change log, or confirmed peers). [`Cache::fetch_fresh`] always reads the source and stores
//! what it read under the stale-fill rule. [`Cache::fetch_or_stale`] is the explicit fail-safe:
//! when the loader fails, the value the node still holds, labelled with its age.
//!
//! # What a stale value is and how old it is
//!
//! The value the node holds is what its store still has for the key: changes (from peers, from
//! the change log, from local writes) remove entries, so a key that a known newer write touched
//! is never held and never served stale, and neither is one evicted or past its time to live.
//! What a lapsed lease leaves behind, when polls or confirmations stop (the database is down, the
//! peers are unreachable), is still held: it was current when the lease was last proven, the
//! start of the last complete poll (every change committed before it was applied) or of the last
//! confirmation. The age is the time since then, read back from the lease's deadline, which is
//! never later than the proof: a value is never younger than it says. It is one time per cache,
//! so it costs no memory per entry; a value loaded after the proof is younger than its stated age,
//! never older.

use std::future::Future;
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;

use super::{Cache, Fetched, Key, Source, Value};

/// Why a cache did not serve within the time given to [`Cache::ready`]. Nothing changed: the
/// cache keeps trying in the background and serves once it can ([`Cache::is_serving`]); `ready`
/// may be called again.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadyError {
    /// The triggers of the cache's watched tables were not installed in time: the database is
    /// down or locked, or a table or column is missing (`last_error`, the change log's latest
    /// failure, says which; also in
    /// [`Cluster::change_log_status`](crate::Cluster::change_log_status)).
    #[error(
        "the change-log triggers were not installed within {waited:?}: {}",
        describe(last_error)
    )]
    NotInstalled {
        /// How long `ready` waited.
        waited: Duration,
        /// The change log's latest failure, if the last attempt failed.
        last_error: Option<String>,
    },
    /// The triggers are installed but no poll of the change log completed in time: the database
    /// is down or too slow to read.
    #[error(
        "no poll of the change log completed within {waited:?}: {}",
        describe(last_error)
    )]
    NotPolled {
        /// How long `ready` waited.
        waited: Duration,
        /// The change log's latest failure, if the last attempt failed.
        last_error: Option<String>,
    },
    /// This node did not confirm, in time, that it applied every event of every live peer (a
    /// cache without a change log, or a strong one, serves only then): a peer is unreachable or
    /// not answering. See [`Cluster::members`](crate::Cluster::members).
    #[error("this node did not confirm its peers within {waited:?}")]
    PeersUnconfirmed {
        /// How long `ready` waited.
        waited: Duration,
    },
}

fn describe(last_error: &Option<String>) -> &str {
    last_error.as_deref().unwrap_or("no failure reported")
}

impl<K: Key, V: Value> Cache<K, V> {
    /// Waits until this node may serve the cache's values, for at most `timeout`. A cache that
    /// watches tables serves once its triggers are installed and a poll of the change log that
    /// started after that completed; one without a change log (or a strong one) once its node
    /// has confirmed every live peer (at once for a node with no peers). Until then every read
    /// loads and stores nothing, so call it before handing the cache out: a service's first
    /// requests then fill the cache.
    ///
    /// Returns at once if the cache serves. A lease can lapse again later (the database or the
    /// peers unreachable for longer than the bound): [`is_serving`](Self::is_serving) tells.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    ///
    /// let pool = sqlx::SqlitePool::connect("sqlite::memory:").await?;
    /// sqlx::query("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)").execute(&pool).await?;
    /// let cluster = cohort::Cluster::builder()
    ///     .change_log(cohort::ChangeLog::sqlite(pool))
    ///     .start()
    ///     .await?;
    /// let users = cluster.cache::<u64, String>("users").watch_table("users", "id").build()?;
    /// users.ready(Duration::from_secs(10)).await?;
    /// assert!(users.is_serving());
    /// # Ok(()) }
    /// ```
    pub async fn ready(&self, timeout: Duration) -> Result<(), ReadyError> {
        let inner = &*self.inner;
        // Subscribed before looking: a lease granted after the look comes with an event (a
        // poll's `LogPolled`, a peer's `Confirmed`, both sent once the lease is renewed).
        let mut events = inner.node.subscribe();
        let serving = async {
            while !inner.serving() {
                match events.recv().await {
                    Ok(_) | Err(RecvError::Lagged(_)) => {}
                    // The node is gone: nothing will renew the lease.
                    Err(RecvError::Closed) => std::future::pending::<()>().await,
                }
            }
        };
        if tokio::time::timeout(timeout, serving).await.is_ok() {
            return Ok(());
        }
        let clock = inner.store.clock();
        let log = inner.node.log().filter(|_| inner.parse.is_some());
        match log {
            Some(log) if !inner.lease.is_valid(clock) => {
                let last_error = log.status().last_error;
                Err(if log.is_installed(&inner.lease) {
                    ReadyError::NotPolled {
                        waited: timeout,
                        last_error,
                    }
                } else {
                    ReadyError::NotInstalled {
                        waited: timeout,
                        last_error,
                    }
                })
            }
            _ => Err(ReadyError::PeersUnconfirmed { waited: timeout }),
        }
    }

    /// The value of `key` as `load` reads it now, whatever the cache holds: an authoritative
    /// read. The value is offered to the cache under the same rule as a load's: the key's held
    /// copy is dropped and a slot taken before `load` runs, so if a change to the key arrives
    /// while it runs, the value is returned but not stored. Reads of the key on this node that
    /// miss meanwhile wait for this load and share its value.
    ///
    /// [`Source::Loaded`] when the value was offered; [`Source::Bypassed`] when the node may not
    /// serve (nothing stored, as for [`fetch`](Self::fetch)). A key of a
    /// [`Mode::Partitioned`](super::Mode::Partitioned) cache owned by another node is loaded
    /// here and not stored (the owner keeps its own copy); this node's hot copy of it is
    /// dropped. If `load` fails, its error is returned and the key is left empty here.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use cohort::Source;
    ///
    /// let cluster = cohort::Cluster::builder().start().await?;
    /// let users = cluster.cache::<u64, String>("users").build()?;
    /// users.get_or_load(&7, |_| async { Ok::<_, std::io::Error>("old".to_owned()) }).await?;
    /// let fresh = users
    ///     .fetch_fresh(&7, |_| async { Ok::<_, std::io::Error>("new".to_owned()) })
    ///     .await?;
    /// assert_eq!((fresh.value.as_str(), fresh.source), ("new", Source::Loaded));
    /// assert_eq!(users.get(&7).as_deref(), Some("new"));
    /// # Ok(()) }
    /// ```
    pub async fn fetch_fresh<F, Fut, E>(&self, key: &K, load: F) -> Result<Fetched<V>, E>
    where
        F: FnOnce(K) -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        let inner = &*self.inner;
        if !inner.serving() {
            return Ok(Fetched {
                value: inner.bypass(key, load).await?,
                source: Source::Bypassed,
            });
        }
        let owned_elsewhere = inner.partition.is_some()
            && inner
                .encode_key(key)
                .is_ok_and(|key_bytes| inner.node.owner_of(&key_bytes).is_some());
        if owned_elsewhere {
            inner.forget_hot(key);
            return Ok(Fetched {
                value: inner.load(key.clone(), "fresh", load).await?,
                source: Source::Loaded,
            });
        }
        // Taken before the source is read: a change that lands while it is read voids it.
        let slot = inner.store.write_slot(key);
        let value = inner.load(key.clone(), "fresh", load).await?;
        inner.offer(key, slot, value.clone());
        Ok(Fetched {
            value,
            source: Source::Loaded,
        })
    }

    /// [`fetch`](Self::fetch), falling back on the value this node still holds for `key` when
    /// `load` fails: the fail-safe for a source that is down. The fallback is labelled
    /// [`Source::Stale`] with its age, the time since the value was last known current, and is
    /// returned only when that age is under `max_age`; otherwise `load`'s error is.
    ///
    /// While the node serves, this is [`fetch`](Self::fetch): a held value is a hit and `load`
    /// does not run. Once its lease has lapsed (the database down: polls of the change log fail
    /// and so do loads), every call runs `load` first, and a value is stale only if it fails.
    ///
    /// What is held, and so may be served stale: what the node's store kept when its lease
    /// lapsed, less what changed since. A key that an invalidation, an update or a change-log
    /// row removed (a newer write is known) is not held; nor is one evicted, past its
    /// [`ttl`](super::CacheBuilder::ttl), or only a hot copy of a partitioned cache. The age is
    /// the time since the start of the last poll or peer confirmation that renewed the lease
    /// (every change committed before it had been applied, and the value was still held), so a
    /// value is never younger than stated: reads of it may miss any write that returned within
    /// `age`, none older. A peer-only lease ended by a new member (not lapsed) leaves no known
    /// age: nothing is served stale until a confirmation renews it.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// use cohort::Source;
    ///
    /// let cluster = cohort::Cluster::builder().start().await?;
    /// let users = cluster.cache::<u64, String>("users").build()?;
    /// let down = |_| async { Err::<String, _>(std::io::Error::other("database down")) };
    /// // Nothing held: the loader's error.
    /// assert!(users.fetch_or_stale(&7, down, Duration::from_secs(60)).await.is_err());
    /// users.get_or_load(&7, |_| async { Ok::<_, std::io::Error>("ada".to_owned()) }).await?;
    /// // Held and served: a hit, whatever the loader would do.
    /// let hit = users.fetch_or_stale(&7, down, Duration::from_secs(60)).await?;
    /// assert_eq!(hit.source, Source::Cache);
    /// # Ok(()) }
    /// ```
    pub async fn fetch_or_stale<F, Fut, E>(
        &self,
        key: &K,
        load: F,
        max_age: Duration,
    ) -> Result<Fetched<V>, E>
    where
        F: FnOnce(K) -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        let error = match self.fetch(key, load).await {
            Ok(fetched) => return Ok(fetched),
            Err(error) => error,
        };
        let inner = &*self.inner;
        let bound = inner.node.max_staleness();
        // The proof is read before the value: a value held after the lease was proven survived
        // every change that proof covers.
        let proven = inner.lease.proven_at(bound);
        let proven = match &inner.strong {
            Some(strong) => proven
                .zip(strong.peer_lease.proven_at(bound))
                .map(|(a, b)| a.min(b)),
            None => proven,
        };
        let (Some(proven), Some(value)) = (proven, inner.store.get(key)) else {
            return Err(error);
        };
        let age = Duration::from_millis(inner.store.clock().now().saturating_sub(proven));
        if age >= max_age {
            return Err(error);
        }
        tracing::debug!(cache = %inner.name, ?age, "the load failed; serving the held value as stale");
        Ok(Fetched {
            value,
            source: Source::Stale { age },
        })
    }
}
