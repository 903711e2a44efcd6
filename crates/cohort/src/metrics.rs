//! Counters a node keeps about its caches and its links, and their snapshots.
//!
//! Counters touched on the hit path are striped over cache-line-padded cells, one per thread, so
//! that two cores reading the cache never fight over one line, and bumped with a plain load and
//! store rather than a locked read-modify-write (measured: the `lock xadd` alone made a hot hit
//! 12% slower). Everything else is a plain relaxed atomic. [`CacheStats`] and [`ClusterStats`]
//! are point-in-time copies.
//!
//! A [`NodeReport`] gathers a node's snapshots; its figures, their names and help texts are
//! listed once here, for the Prometheus page ([`render_prometheus`]) and, with the `metrics`
//! feature, for the `metrics` facade (`facade`), which also records the histograms.

use std::cell::Cell;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use crate::changelog::LogStatus;

#[cfg(feature = "metrics")]
pub(crate) mod facade;

/// A power of two, so that a stripe index is masked rather than bounds-checked.
const STRIPES: usize = 64;

/// A counter that many threads bump often and that is read rarely.
///
/// Exact while no two live threads share a stripe, that is while fewer than 64 threads have ever
/// counted on it; past that, two threads bumping a shared stripe at the same instant can lose one
/// of the increments, so the figure may undercount slightly.
#[derive(Debug)]
pub(crate) struct StripedCounter {
    stripes: [Padded; STRIPES],
}

impl Default for StripedCounter {
    fn default() -> Self {
        Self {
            stripes: std::array::from_fn(|_| Padded::default()),
        }
    }
}

#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded(AtomicU64);

impl StripedCounter {
    #[inline]
    pub(crate) fn incr(&self) {
        // The mask lets the compiler drop the bounds check; `stripe` is below STRIPES anyway.
        let cell = &self.stripes[stripe() & (STRIPES - 1)].0;
        cell.store(cell.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    }

    pub(crate) fn sum(&self) -> u64 {
        self.stripes
            .iter()
            .map(|s| s.0.load(Ordering::Relaxed))
            .sum()
    }
}

/// This thread's stripe: threads are numbered in the order they first count something.
#[inline]
fn stripe() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static STRIPE: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    STRIPE.with(|s| {
        let mut index = s.get();
        if index == usize::MAX {
            index = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
            s.set(index);
        }
        index
    })
}

/// A counter bumped off the hit path.
#[derive(Debug, Default)]
pub(crate) struct Counter(AtomicU64);

impl Counter {
    #[inline]
    pub(crate) fn incr(&self) {
        self.add(1);
    }

    #[inline]
    pub(crate) fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The live counters of one cache on one node.
#[derive(Debug, Default)]
pub(crate) struct CacheCounters {
    pub(crate) hits: StripedCounter,
    pub(crate) misses: StripedCounter,
    pub(crate) bypasses: StripedCounter,
    pub(crate) loads: Counter,
    pub(crate) fills_rejected: Counter,
    pub(crate) updates: Counter,
    pub(crate) invalidations_applied: Counter,
    pub(crate) replicas_applied: Counter,
    pub(crate) logged_applied: Counter,
    pub(crate) logged_unparsable: Counter,
    pub(crate) flushes: Counter,
    pub(crate) remote_hits: Counter,
    pub(crate) owner_skipped: Counter,
    pub(crate) served: Counter,
}

impl CacheCounters {
    pub(crate) fn snapshot(&self, entries: usize) -> CacheStats {
        CacheStats {
            entries,
            hits: self.hits.sum(),
            misses: self.misses.sum(),
            bypasses: self.bypasses.sum(),
            loads: self.loads.get(),
            fills_rejected: self.fills_rejected.get(),
            updates: self.updates.get(),
            invalidations_applied: self.invalidations_applied.get(),
            replicas_applied: self.replicas_applied.get(),
            logged_applied: self.logged_applied.get(),
            logged_unparsable: self.logged_unparsable.get(),
            flushes: self.flushes.get(),
            remote_hits: self.remote_hits.get(),
            owner_skipped: self.owner_skipped.get(),
            served: self.served.get(),
        }
    }
}

/// A snapshot of one cache's counters on this node, from [`Cache::stats`](crate::Cache::stats).
///
/// ```
/// let stats = cohort::CacheStats::default();
/// assert_eq!(stats.hit_ratio(), 0.0);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheStats {
    /// Entries held now.
    pub entries: usize,
    /// Reads answered from the cache.
    pub hits: u64,
    /// Reads that found nothing usable in the cache (bypasses included).
    pub misses: u64,
    /// Reads that went to the source because the node's change-log lease had lapsed.
    pub bypasses: u64,
    /// Loader calls made by `get_or_load` (concurrent misses of one key share one call).
    pub loads: u64,
    /// Loaded or written values not stored because the key changed while they were produced.
    pub fills_rejected: u64,
    /// `update` calls whose write succeeded on this node.
    pub updates: u64,
    /// Invalidations received from peers and applied.
    pub invalidations_applied: u64,
    /// Replicated values received from peers and applied (stored, or dropped as older).
    pub replicas_applied: u64,
    /// Change-log rows applied (each an invalidation).
    pub logged_applied: u64,
    /// Change-log rows whose key did not parse; each flushed the cache.
    pub logged_unparsable: u64,
    /// Times the whole cache was emptied because the node could not vouch for it.
    pub flushes: u64,
    /// Partitioned caches: reads answered by the key's owner on another node.
    pub remote_hits: u64,
    /// Partitioned caches: reads whose owner could not answer in time; loaded here instead.
    pub owner_skipped: u64,
    /// Partitioned caches: peers' requests this node answered as a key's owner.
    pub served: u64,
}

impl CacheStats {
    /// Hits divided by all reads; zero before the first read.
    pub fn hit_ratio(&self) -> f64 {
        let reads = self.hits + self.misses;
        if reads == 0 {
            0.0
        } else {
            self.hits as f64 / reads as f64
        }
    }
}

/// The live counters of one node's mesh.
#[derive(Debug, Default)]
pub(crate) struct ClusterCounters {
    pub(crate) events_sent: Counter,
    pub(crate) events_applied: Counter,
    pub(crate) events_duplicate: Counter,
    pub(crate) gaps: Counter,
    pub(crate) events_replayed: Counter,
    pub(crate) frames_rejected: Counter,
    pub(crate) links_overflowed: Counter,
    pub(crate) connects: Counter,
    pub(crate) members_refused: Counter,
    pub(crate) members_forgotten: Counter,
    pub(crate) auth_failures: Counter,
    pub(crate) links_refused: Counter,
    pub(crate) replicas_downgraded: Counter,
}

impl ClusterCounters {
    pub(crate) fn snapshot(&self) -> ClusterStats {
        ClusterStats {
            events_sent: self.events_sent.get(),
            events_applied: self.events_applied.get(),
            events_duplicate: self.events_duplicate.get(),
            gaps: self.gaps.get(),
            events_replayed: self.events_replayed.get(),
            frames_rejected: self.frames_rejected.get(),
            links_overflowed: self.links_overflowed.get(),
            connects: self.connects.get(),
            members_refused: self.members_refused.get(),
            members_forgotten: self.members_forgotten.get(),
            auth_failures: self.auth_failures.get(),
            links_refused: self.links_refused.get(),
            replicas_downgraded: self.replicas_downgraded.get(),
        }
    }
}

/// A snapshot of one node's mesh counters, from [`Cluster::stats`](crate::Cluster::stats).
///
/// ```
/// let stats = cohort::ClusterStats::default();
/// assert_eq!(stats.frames_rejected, 0);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClusterStats {
    /// Events this node originated and queued to its peers (one per event, not per peer).
    pub events_sent: u64,
    /// Peer events applied here.
    pub events_applied: u64,
    /// Peer events ignored because they were already applied.
    pub events_duplicate: u64,
    /// Peer events missed for good (gone from the peer's replay buffer, or sent by a previous
    /// process of a restarted peer); each time, this node flushed the caches no change log
    /// covers.
    pub gaps: u64,
    /// Events this node sent again to a peer whose link broke, from its replay buffer.
    pub events_replayed: u64,
    /// Frames or handshakes rejected as malformed, oversized, of another protocol version or
    /// otherwise invalid; each one closed its link.
    pub frames_rejected: u64,
    /// Outgoing links dropped because the peer could not keep up.
    pub links_overflowed: u64,
    /// Outgoing links established (first connects and reconnects).
    pub connects: u64,
    /// Members not admitted to the member table: full, a name too long, an older process of a
    /// known member, or this node's own name in another process.
    pub members_refused: u64,
    /// Members dropped from the member table: never reached, or held down, for longer than
    /// [`forget_after`](crate::ClusterBuilder::forget_after).
    pub members_forgotten: u64,
    /// Link handshakes that failed to authenticate: the other end holds none of this node's
    /// cluster keys (or this node none of its), or spoke no valid handshake.
    pub auth_failures: u64,
    /// Connections closed at once because [`max_inbound_links`] links were open.
    ///
    /// [`max_inbound_links`]: crate::ClusterBuilder::max_inbound_links
    pub links_refused: u64,
    /// Replicated values too large for a frame (`max_frame_bytes`), sent as invalidations.
    pub replicas_downgraded: u64,
}

/// One counter of a snapshot: its metric name, its help text and how to read it.
type Row<S> = (&'static str, &'static str, fn(&S) -> u64);

/// A cache's reads as the page counts them: `misses` includes `bypasses`. The `metrics` feature
/// exports them as one counter split by a `result` label instead.
const READ_COUNTERS: [Row<CacheStats>; 3] = [
    (
        "cohort_cache_hits_total",
        "Reads answered from the cache.",
        |s| s.hits,
    ),
    (
        "cohort_cache_misses_total",
        "Reads the cache could not answer.",
        |s| s.misses,
    ),
    (
        "cohort_cache_bypasses_total",
        "Reads sent to the source because the change-log lease had lapsed.",
        |s| s.bypasses,
    ),
];

/// A cache's other counters.
const CACHE_COUNTERS: [Row<CacheStats>; 11] = [
    ("cohort_cache_loads_total", "Loader calls.", |s| s.loads),
    (
        "cohort_cache_fills_rejected_total",
        "Loaded or written values not stored because the key changed meanwhile.",
        |s| s.fills_rejected,
    ),
    (
        "cohort_cache_updates_total",
        "Successful updates through this node.",
        |s| s.updates,
    ),
    (
        "cohort_cache_invalidations_applied_total",
        "Peer invalidations applied.",
        |s| s.invalidations_applied,
    ),
    (
        "cohort_cache_replicas_applied_total",
        "Peer replicated values applied.",
        |s| s.replicas_applied,
    ),
    (
        "cohort_cache_logged_applied_total",
        "Change-log rows applied.",
        |s| s.logged_applied,
    ),
    (
        "cohort_cache_logged_unparsable_total",
        "Change-log rows whose key did not parse.",
        |s| s.logged_unparsable,
    ),
    (
        "cohort_cache_flushes_total",
        "Times the cache was emptied.",
        |s| s.flushes,
    ),
    (
        "cohort_cache_remote_hits_total",
        "Partitioned caches: reads answered by the key's owner on another node.",
        |s| s.remote_hits,
    ),
    (
        "cohort_cache_owner_skipped_total",
        "Partitioned caches: reads loaded here because the key's owner did not answer in time.",
        |s| s.owner_skipped,
    ),
    (
        "cohort_cache_served_total",
        "Partitioned caches: peers' requests answered as the key's owner.",
        |s| s.served,
    ),
];

const CLUSTER_COUNTERS: [Row<ClusterStats>; 13] = [
    ("cohort_events_sent_total", "Events originated here.", |c| {
        c.events_sent
    }),
    (
        "cohort_events_applied_total",
        "Peer events applied here.",
        |c| c.events_applied,
    ),
    (
        "cohort_events_duplicate_total",
        "Peer events ignored as already applied.",
        |c| c.events_duplicate,
    ),
    (
        "cohort_gaps_total",
        "Peer events missed for good (each flushed the caches no change log covers).",
        |c| c.gaps,
    ),
    (
        "cohort_events_replayed_total",
        "Events sent again from the replay buffer to a peer whose link broke.",
        |c| c.events_replayed,
    ),
    (
        "cohort_frames_rejected_total",
        "Rejected frames and handshakes.",
        |c| c.frames_rejected,
    ),
    (
        "cohort_links_overflowed_total",
        "Peer links closed because the peer fell behind.",
        |c| c.links_overflowed,
    ),
    (
        "cohort_connects_total",
        "Outgoing links established.",
        |c| c.connects,
    ),
    (
        "cohort_members_refused_total",
        "Members not admitted to the member table.",
        |c| c.members_refused,
    ),
    (
        "cohort_auth_failures_total",
        "Link handshakes that failed to authenticate.",
        |c| c.auth_failures,
    ),
    (
        "cohort_links_refused_total",
        "Connections closed at once: too many inbound links.",
        |c| c.links_refused,
    ),
    (
        "cohort_replicas_downgraded_total",
        "Replicated values too large for a frame, sent as invalidations.",
        |c| c.replicas_downgraded,
    ),
    (
        "cohort_members_forgotten_total",
        "Members forgotten after being unreached or down for the grace period.",
        |c| c.members_forgotten,
    ),
];

const LOG_COUNTERS: [Row<LogStatus>; 3] = [
    (
        "cohort_log_polls_total",
        "Complete polls of the change log.",
        |l| l.polls,
    ),
    (
        "cohort_log_errors_total",
        "Failed change-log operations.",
        |l| l.errors,
    ),
    (
        "cohort_log_pruned_flushes_total",
        "Flushes after rows were pruned unread.",
        |l| l.pruned_flushes,
    ),
];

/// Everything a node reports: the page [`render_prometheus`] writes, and, with the `metrics`
/// feature, what goes to the facade.
pub(crate) struct NodeReport<'a> {
    pub(crate) node: &'a str,
    pub(crate) peers_connected: usize,
    /// How much longer the peer lease (that of caches without a change log) holds; `None` once
    /// it lapsed.
    pub(crate) peer_lease_remaining: Option<Duration>,
    pub(crate) cluster: ClusterStats,
    pub(crate) caches: Vec<(String, CacheStats)>,
    pub(crate) log: Option<LogStatus>,
}

/// What a sample reads: a counter's total, or a gauge's level.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Reading {
    Total(u64),
    Level(f64),
}

/// One figure of a [`NodeReport`].
#[derive(Debug)]
pub(crate) struct Sample<'a> {
    pub(crate) name: &'static str,
    pub(crate) help: &'static str,
    /// The cache it is about, for a cache's figures.
    pub(crate) cache: Option<&'a str>,
    pub(crate) reading: Reading,
}

impl NodeReport<'_> {
    /// A cache's reads, as the page counts them (see [`READ_COUNTERS`]).
    fn reads(&self) -> Vec<Sample<'_>> {
        self.per_cache(&READ_COUNTERS)
    }

    /// Every figure but a cache's reads, which the page and the facade count differently; the
    /// samples of one name come together.
    pub(crate) fn samples(&self) -> Vec<Sample<'_>> {
        let mut samples = self.per_cache(&CACHE_COUNTERS);
        let level = |name, help, value| Sample {
            name,
            help,
            cache: None,
            reading: Reading::Level(value),
        };
        let seconds = |d: Option<Duration>| d.unwrap_or_default().as_secs_f64();
        samples.extend(self.caches.iter().map(|(cache, stats)| Sample {
            name: "cohort_cache_entries",
            help: "Entries held.",
            cache: Some(cache),
            reading: Reading::Level(stats.entries as f64),
        }));
        samples.push(level(
            "cohort_peers_connected",
            "Peers this node's links reach.",
            self.peers_connected as f64,
        ));
        samples.push(level(
            "cohort_peer_lease_remaining_seconds",
            "Time left on the peer lease (caches without a change log serve under it); 0 once lapsed.",
            seconds(self.peer_lease_remaining),
        ));
        samples.extend(totals(&CLUSTER_COUNTERS, &self.cluster));
        if let Some(log) = &self.log {
            samples.push(level(
                "cohort_log_serving",
                "1 while the change-log lease holds.",
                f64::from(u8::from(log.serving)),
            ));
            samples.push(level(
                "cohort_log_lease_remaining_seconds",
                "Time left on the change-log lease; 0 once lapsed.",
                seconds(log.lease_remaining),
            ));
            if let Some(age) = log.last_poll_age {
                samples.push(level(
                    "cohort_log_last_poll_age_seconds",
                    "Age of the last complete poll's start.",
                    age.as_secs_f64(),
                ));
            }
            samples.push(level(
                "cohort_log_behind_rows",
                "Rows the last complete poll applied.",
                log.behind_rows as f64,
            ));
            samples.extend(totals(&LOG_COUNTERS, log));
        }
        samples
    }

    /// `rows` for every cache, each row's caches together.
    fn per_cache(&self, rows: &'static [Row<CacheStats>]) -> Vec<Sample<'_>> {
        rows.iter()
            .flat_map(|&(name, help, read)| {
                self.caches.iter().map(move |(cache, stats)| Sample {
                    name,
                    help,
                    cache: Some(cache),
                    reading: Reading::Total(read(stats)),
                })
            })
            .collect()
    }
}

/// The node-wide counters `rows` read from `snapshot`.
fn totals<'a, S>(
    rows: &'static [Row<S>],
    snapshot: &'a S,
) -> impl Iterator<Item = Sample<'a>> + 'a {
    rows.iter().map(move |&(name, help, read)| Sample {
        name,
        help,
        cache: None,
        reading: Reading::Total(read(snapshot)),
    })
}

/// The node's figures in the Prometheus text exposition format (version 0.0.4).
pub(crate) fn render_prometheus(report: &NodeReport<'_>) -> String {
    let mut out = String::new();
    let node = escape(report.node);
    let mut last = "";
    for sample in report.reads().into_iter().chain(report.samples()) {
        if sample.name != last {
            let kind = match sample.reading {
                Reading::Total(_) => "counter",
                Reading::Level(_) => "gauge",
            };
            let _ = writeln!(out, "# HELP {} {}", sample.name, sample.help);
            let _ = writeln!(out, "# TYPE {} {kind}", sample.name);
            last = sample.name;
        }
        let cache = sample
            .cache
            .map(|cache| format!(",cache=\"{}\"", escape(cache)))
            .unwrap_or_default();
        let _ = match sample.reading {
            Reading::Total(n) => writeln!(out, "{}{{node=\"{node}\"{cache}}} {n}", sample.name),
            Reading::Level(x) => writeln!(out, "{}{{node=\"{node}\"{cache}}} {x}", sample.name),
        };
    }
    out
}

/// Escapes a label value.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn prometheus_text_has_one_sample_per_cache_and_escapes_labels() {
        let report = NodeReport {
            node: "a\"b",
            peers_connected: 2,
            peer_lease_remaining: None,
            cluster: ClusterStats {
                events_sent: 5,
                ..ClusterStats::default()
            },
            caches: vec![
                (
                    "users".into(),
                    CacheStats {
                        hits: 3,
                        ..CacheStats::default()
                    },
                ),
                ("orders".into(), CacheStats::default()),
            ],
            log: None,
        };
        let text = render_prometheus(&report);
        assert!(
            text.contains("cohort_cache_hits_total{node=\"a\\\"b\",cache=\"users\"} 3\n"),
            "{text}"
        );
        assert!(text.contains("cohort_cache_hits_total{node=\"a\\\"b\",cache=\"orders\"} 0\n"));
        assert!(text.contains("cohort_events_sent_total{node=\"a\\\"b\"} 5\n"));
        assert!(text.contains("# TYPE cohort_peers_connected gauge"));
        assert!(
            !text.contains("cohort_log_"),
            "no change log, no log metrics"
        );
        assert!(
            text.contains("cohort_peer_lease_remaining_seconds{node=\"a\\\"b\"} 0\n"),
            "a lapsed lease has no time left: {text}"
        );
        // The samples of one metric come together, under one header.
        let mut headers: Vec<&str> = text.lines().filter(|l| l.starts_with("# HELP")).collect();
        let all = headers.len();
        headers.sort_unstable();
        headers.dedup();
        assert_eq!(headers.len(), all, "{text}");
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, value) = line.rsplit_once(' ').unwrap();
            value.parse::<f64>().unwrap();
        }
    }

    #[test]
    fn striped_counter_sums_every_thread() {
        let counter = Arc::new(StripedCounter::default());
        // Fewer threads than stripes, and consecutive stripes: no two of them share one.
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let counter = Arc::clone(&counter);
                std::thread::spawn(move || (0..1_000).for_each(|_| counter.incr()))
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!(counter.sum(), 8_000);
    }
}
