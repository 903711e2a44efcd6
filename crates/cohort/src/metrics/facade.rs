//! The node's figures through the `metrics` facade (feature `metrics`), so that whatever
//! recorder the application installed (a Prometheus exporter, OpenTelemetry, StatsD) takes them.
//!
//! Counters stay where they are counted (striped on the hit path) and are folded in every
//! [`EXPORT_EVERY`] by [`export`], as absolute values: a hit costs what it cost without the
//! feature. Histograms are recorded where the time is measured: around the loader, around
//! `update`, and from a ping to its pong.
//!
//! Every call registers its metric with the recorder installed at that moment (no handles are
//! kept), so a recorder installed after the node started takes everything from then on.

use std::time::Duration;

use metrics::{Label, Unit};

use super::{NodeReport, Reading};
use crate::id::NodeId;

/// How often a node folds its counters and gauges into the facade: well under any scrape
/// interval, and cheap (a few dozen registrations with the recorder).
pub(crate) const EXPORT_EVERY: Duration = Duration::from_secs(1);

/// A cache's reads, split by `result`: `hit`, `miss` or `bypass`.
const REQUESTS: &str = "cohort_cache_requests_total";
const LOAD_DURATION: &str = "cohort_cache_load_duration_seconds";
const UPDATE_DURATION: &str = "cohort_cache_update_duration_seconds";
const ROUND_TRIP: &str = "cohort_peer_round_trip_seconds";

/// Sets every counter and gauge of `report` in the recorder, and describes every metric.
pub(crate) fn export(report: &NodeReport<'_>) {
    describe();
    let node = report.node.to_owned();
    for (cache, stats) in &report.caches {
        // A bypass counts as a miss too, and is counted as one first, before the bypass itself,
        // on every path; the snapshot reads misses before bypasses. So `misses - bypasses` is
        // never more than the true number of plain misses, only less for a moment: a counter
        // whose `absolute` keeps the highest value (as the facade asks of recorders) then never
        // goes back.
        let results = [
            ("hit", stats.hits),
            ("miss", stats.misses.saturating_sub(stats.bypasses)),
            ("bypass", stats.bypasses),
        ];
        for (result, total) in results {
            let labels = vec![
                Label::new("node", node.clone()),
                Label::new("cache", cache.clone()),
                Label::from_static_parts("result", result),
            ];
            metrics::counter!(REQUESTS, labels).absolute(total);
        }
    }
    let mut described = "";
    for sample in report.samples() {
        let mut labels = vec![Label::new("node", node.clone())];
        if let Some(cache) = sample.cache {
            labels.push(Label::new("cache", cache.to_owned()));
        }
        let new = sample.name != described;
        described = sample.name;
        match sample.reading {
            Reading::Total(total) => {
                if new {
                    metrics::describe_counter!(sample.name, sample.help);
                }
                metrics::counter!(sample.name, labels).absolute(total);
            }
            Reading::Level(level) => {
                if new {
                    if sample.name.ends_with("_seconds") {
                        metrics::describe_gauge!(sample.name, Unit::Seconds, sample.help);
                    } else {
                        metrics::describe_gauge!(sample.name, sample.help);
                    }
                }
                metrics::gauge!(sample.name, labels).set(level);
            }
        }
    }
}

/// Describes the metrics that are not samples of a report. Done on every export rather than
/// once, so that a recorder installed later has them too.
fn describe() {
    metrics::describe_counter!(
        REQUESTS,
        "Reads of a cache, by result: hit (answered from the cache), miss (nothing usable \
         there), bypass (sent to the source because the node's lease had lapsed)."
    );
    metrics::describe_histogram!(
        LOAD_DURATION,
        Unit::Seconds,
        "Loader calls, from the call to its result (a failed load included)."
    );
    metrics::describe_histogram!(
        UPDATE_DURATION,
        Unit::Seconds,
        "update calls whose write ran, from the call until the local copy was current and the \
         change sent (a failed write included)."
    );
    metrics::describe_histogram!(
        ROUND_TRIP,
        Unit::Seconds,
        "From a ping to a peer to its pong, which queues behind the peer's events: an event \
         reaches the peer in about half of it."
    );
}

/// Records one loader call of `cache` on `node` that took `took`.
pub(crate) fn record_load(node: &NodeId, cache: &str, took: Duration) {
    metrics::histogram!(LOAD_DURATION, "node" => node.as_str().to_owned(), "cache" => cache.to_owned())
        .record(took);
}

/// Records one `update` of `cache` on `node` that took `took`.
pub(crate) fn record_update(node: &NodeId, cache: &str, took: Duration) {
    metrics::histogram!(UPDATE_DURATION, "node" => node.as_str().to_owned(), "cache" => cache.to_owned())
        .record(took);
}

/// Records the round trip of a ping from `node` to `peer` that took `took`.
pub(crate) fn record_round_trip(node: &NodeId, peer: &NodeId, took: Duration) {
    metrics::histogram!(ROUND_TRIP, "node" => node.as_str().to_owned(), "peer" => peer.as_str().to_owned())
        .record(took);
}
