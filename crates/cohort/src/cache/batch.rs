//! Batch reads: many keys answered at once, every miss handed to one loader call.
//!
//! A batch keeps the single-key rules. It takes a slot for each missing key before it reads the
//! source, so a change to one of them while the loader runs voids that key's slot only: the
//! value is returned but not stored, and the batch's other keys are. A key whose slot another
//! load holds (another batch, a `get_or_load`) is not loaded again: the batch waits for that
//! load. It claims what it can without waiting, loads and fills, and only then waits for the
//! rest, so it never holds a slot while waiting for one (two overlapping batches cannot wait for
//! each other).

use std::collections::{HashMap, HashSet};
use std::future::Future;

use futures_util::future::join_all;
use tracing::Instrument;

use super::{Cache, Inner, Key, Value};
use crate::store::Lookup;
use crate::wire;

/// How many times a batch claims keys that concurrent loads left unfilled (their loader failed,
/// or did not return the key) before it loads the rest without storing them.
const MAX_ROUNDS: usize = 3;

impl<K: Key, V: Value> Cache<K, V> {
    /// The values of those `keys` this node holds live copies of and may serve, as
    /// [`get`](Self::get) answers them; missing keys are absent from the map. Never waits.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cluster = cohort::Cluster::builder().start().await?;
    /// let users = cluster.cache::<u64, String>("users").build()?;
    /// users.get_or_load(&1, |id| async move { Ok::<_, std::io::Error>(format!("user {id}")) }).await?;
    /// let found = users.get_many(&[1, 2]);
    /// assert_eq!(found.get(&1).map(String::as_str), Some("user 1"));
    /// assert!(!found.contains_key(&2));
    /// # Ok(()) }
    /// ```
    pub fn get_many(&self, keys: &[K]) -> HashMap<K, V> {
        keys.iter()
            .filter_map(|key| Some((key.clone(), self.get(key)?)))
            .collect()
    }

    /// The values of `keys`: hits answered from this node's copy, every miss loaded by **one**
    /// call of `load` (a `SELECT … WHERE id IN (…)`), which returns the rows it found as pairs
    /// (a `HashMap<K, V>`, a `Vec<(K, V)>`). Each loaded value is stored under the rules of
    /// [`get_or_load`](Self::get_or_load): unless its key changed while the loader ran (that
    /// key alone is then returned but not stored).
    ///
    /// A key the loader does not return (no such row) is absent from the result and nothing is
    /// stored for it. A key another task on this node is already loading (a concurrent batch
    /// or `get_or_load`) is not loaded again: the batch waits for that load. `load` is called
    /// once, and again only for keys such a concurrent load left unfilled (it failed, or found
    /// no row), at most three times in all. If `load` fails the batch fails with its error and
    /// stores nothing of that call.
    ///
    /// While the cache may not serve (its lease lapsed), `load` runs once for every key and
    /// nothing is stored. In a [`Mode::Partitioned`](super::Mode::Partitioned) cache, the keys
    /// owned by other nodes are asked of their owners, all at once; those whose owner does not
    /// answer in time join the loader call, and are not stored here (nor kept as hot copies).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cluster = cohort::Cluster::builder().start().await?;
    /// let users = cluster.cache::<u64, String>("users").build()?;
    /// let found = users
    ///     .get_or_load_many(&[1, 2, 3], |missing| async move {
    ///         // One query for every miss; row 3 does not exist.
    ///         let rows = missing.into_iter().filter(|id| *id != 3).map(|id| (id, format!("user {id}")));
    ///         Ok::<_, std::io::Error>(rows.collect::<Vec<_>>())
    ///     })
    ///     .await?;
    /// assert_eq!(found.len(), 2);
    /// assert_eq!(users.get(&2).as_deref(), Some("user 2"));
    /// assert_eq!(users.get(&3), None);
    /// # Ok(()) }
    /// ```
    pub async fn get_or_load_many<F, Fut, I, E>(
        &self,
        keys: &[K],
        mut load: F,
    ) -> Result<HashMap<K, V>, E>
    where
        F: FnMut(Vec<K>) -> Fut,
        Fut: Future<Output = Result<I, E>>,
        I: IntoIterator<Item = (K, V)>,
    {
        let inner = &*self.inner;
        let mut found = HashMap::with_capacity(keys.len());
        let mut seen = HashSet::with_capacity(keys.len());
        let unique: Vec<K> = keys
            .iter()
            .filter(|key| seen.insert(*key))
            .cloned()
            .collect();
        if !inner.serving() {
            for _ in &unique {
                inner.counters.misses.incr();
            }
            inner.bypassing();
            let loaded = inner.load_many(unique, "bypass", &mut load).await?;
            found.extend(loaded);
            return Ok(found);
        }
        let mut pending = Vec::new();
        for key in unique {
            match inner.store.get(&key).or_else(|| inner.hot_get(&key)) {
                Some(value) => {
                    inner.counters.hits.incr();
                    found.insert(key, value);
                }
                None => {
                    inner.counters.misses.incr();
                    pending.push(key);
                }
            }
        }
        // Keys loaded here but not stored: owners that did not answer, or the last round.
        let mut unstored = inner.ask_owners(&mut pending, &mut found).await;
        for round in 1..=MAX_ROUNDS {
            let mut claimed = Vec::new();
            let mut busy = Vec::new();
            for key in pending.drain(..) {
                match inner.store.try_load_slot(&key) {
                    // Asking the owners and earlier rounds waited: as after any wait, a held
                    // value is served only under a lease that holds now.
                    Some(Lookup::Hit(value)) if inner.serving() => {
                        found.insert(key, value);
                    }
                    Some(Lookup::Hit(_)) => unstored.push(key),
                    Some(Lookup::Miss(slot)) => claimed.push((key, slot)),
                    None if round == MAX_ROUNDS => unstored.push(key),
                    None => busy.push(key),
                }
            }
            if !claimed.is_empty() || !unstored.is_empty() {
                let mut asked: Vec<K> = claimed.iter().map(|(key, _)| key.clone()).collect();
                asked.append(&mut unstored);
                let mut loaded = inner.load_many(asked, "miss", &mut load).await?;
                for (key, slot) in claimed {
                    // A key without a row: its slot goes unfilled, so nothing is stored (and a
                    // waiter, if any, loads it itself).
                    let Some(value) = loaded.remove(&key) else {
                        continue;
                    };
                    inner.offer(&key, slot, value.clone());
                    found.insert(key, value);
                }
                found.extend(loaded);
            }
            if busy.is_empty() {
                break;
            }
            // Waits for the other loads of the busy keys. A slot handed over here (their loader
            // failed) is let go at once rather than held while the other keys are awaited; the
            // key is claimed again in the next round.
            let waits = busy.into_iter().map(|key| async move {
                match inner.store.load_slot(&key).await {
                    Lookup::Hit(value) => (key, Some(value)),
                    Lookup::Miss(_) => (key, None),
                }
            });
            for (key, value) in join_all(waits).await {
                match value {
                    // As in `fetch`: a value found after a wait is served only under a lease
                    // that holds now.
                    Some(value) if inner.serving() => {
                        found.insert(key, value);
                    }
                    Some(_) => unstored.push(key),
                    None => pending.push(key),
                }
            }
        }
        Ok(found)
    }
}

impl<K: Key, V: Value> Inner<K, V> {
    /// Runs one call of the application's batch `load` for `keys`: counted, in a
    /// `cohort.load_many` span. Keeps only the rows for keys asked.
    async fn load_many<F, Fut, I, E>(
        &self,
        keys: Vec<K>,
        reason: &'static str,
        load: &mut F,
    ) -> Result<HashMap<K, V>, E>
    where
        F: FnMut(Vec<K>) -> Fut,
        Fut: Future<Output = Result<I, E>>,
        I: IntoIterator<Item = (K, V)>,
    {
        self.counters.loads.incr();
        let span = tracing::debug_span!(
            "cohort.load_many",
            node = %self.node.id(),
            cache = %self.name,
            keys = keys.len(),
            reason
        );
        let asked: HashSet<K> = keys.iter().cloned().collect();
        let rows = load(keys).instrument(span).await?;
        Ok(rows
            .into_iter()
            .filter(|(key, _)| asked.contains(key))
            .collect())
    }

    /// For a partitioned cache: asks the owners of those `pending` keys that other nodes own,
    /// all at once, moving the answers to `found`. Returns the keys whose owner did not answer:
    /// the caller loads them without storing them (they are not this node's to keep).
    async fn ask_owners(&self, pending: &mut Vec<K>, found: &mut HashMap<K, V>) -> Vec<K> {
        let Some(partition) = &self.partition else {
            return Vec::new();
        };
        let mut remote = Vec::new();
        pending.retain(|key| {
            let owner = self
                .encode_key(key)
                .ok()
                .and_then(|bytes| Some((self.node.owner_of(&bytes)?, bytes)));
            match owner {
                Some((owner, bytes)) => {
                    remote.push((key.clone(), owner, bytes));
                    false
                }
                None => true,
            }
        });
        let asks = remote.into_iter().map(|(key, owner, bytes)| async move {
            let answer = self
                .node
                .ask(&owner, &self.name, &bytes, partition.owner_timeout)
                .await
                .and_then(|bytes| wire::decode_item::<V>(&bytes).ok());
            (key, answer)
        });
        let mut unanswered = Vec::new();
        for (key, answer) in join_all(asks).await {
            match answer {
                Some(value) => {
                    self.counters.remote_hits.incr();
                    found.insert(key, value);
                }
                None => {
                    self.counters.owner_skipped.incr();
                    unanswered.push(key);
                }
            }
        }
        unanswered
    }
}
