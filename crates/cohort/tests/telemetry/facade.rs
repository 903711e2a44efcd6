//! The `metrics` feature: what reaches the recorder an application installed. The recorder is
//! the process's global one, shared by the tests of this binary: each names its nodes apart.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, Once};
use std::time::Duration;

use cohort::{Cluster, Source};
use cohort_testkit::wait;
use metrics::{
    Counter, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};

const REQUESTS: &str = "cohort_cache_requests_total";
const LOAD_DURATION: &str = "cohort_cache_load_duration_seconds";
const UPDATE_DURATION: &str = "cohort_cache_update_duration_seconds";
const ROUND_TRIP: &str = "cohort_peer_round_trip_seconds";

/// Everything recorded, by metric name and labels (`name{key=value,…}`, labels sorted).
#[derive(Default)]
struct Recorded {
    counters: Mutex<BTreeMap<String, Arc<AtomicU64>>>,
    /// A gauge's `f64`, as its bits.
    gauges: Mutex<BTreeMap<String, Arc<AtomicU64>>>,
    histograms: Mutex<BTreeMap<String, Arc<Samples>>>,
    /// Described metrics, and their units.
    described: Mutex<BTreeMap<String, Option<Unit>>>,
}

#[derive(Default)]
struct Samples(Mutex<Vec<f64>>);

impl HistogramFn for Samples {
    fn record(&self, value: f64) {
        self.0.lock().unwrap().push(value);
    }
}

fn series(name: &str, labels: &[(&str, &str)]) -> String {
    let mut labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    labels.sort();
    format!("{name}{{{}}}", labels.join(","))
}

fn series_of(key: &Key) -> String {
    let labels: Vec<(&str, &str)> = key.labels().map(|l| (l.key(), l.value())).collect();
    series(key.name(), &labels)
}

impl Recorded {
    fn counter(&self, name: &str, labels: &[(&str, &str)]) -> Option<u64> {
        let counters = self.counters.lock().unwrap();
        let counter = counters.get(&series(name, labels))?;
        Some(counter.load(Ordering::Relaxed))
    }

    fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let gauges = self.gauges.lock().unwrap();
        let gauge = gauges.get(&series(name, labels))?;
        Some(f64::from_bits(gauge.load(Ordering::Relaxed)))
    }

    fn samples(&self, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
        let histograms = self.histograms.lock().unwrap();
        histograms
            .get(&series(name, labels))
            .map(|samples| samples.0.lock().unwrap().clone())
            .unwrap_or_default()
    }

    fn unit(&self, name: &str) -> Option<Option<Unit>> {
        self.described.lock().unwrap().get(name).copied()
    }

    fn describe(&self, key: &KeyName, unit: Option<Unit>) {
        self.described
            .lock()
            .unwrap()
            .insert(key.as_str().to_owned(), unit);
    }
}

impl Recorder for Recorded {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, _: SharedString) {
        self.describe(&key, unit);
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, _: SharedString) {
        self.describe(&key, unit);
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, _: SharedString) {
        self.describe(&key, unit);
    }

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let mut counters = self.counters.lock().unwrap();
        Counter::from_arc(Arc::clone(counters.entry(series_of(key)).or_default()))
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        let mut gauges = self.gauges.lock().unwrap();
        Gauge::from_arc(Arc::clone(gauges.entry(series_of(key)).or_default()))
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        let mut histograms = self.histograms.lock().unwrap();
        Histogram::from_arc(Arc::clone(histograms.entry(series_of(key)).or_default()))
    }
}

/// The process's recorder, installed by the first test to ask.
fn recorder() -> &'static Recorded {
    static RECORDED: LazyLock<Recorded> = LazyLock::new(Recorded::default);
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        metrics::set_global_recorder(&*RECORDED).expect("the only recorder of this binary");
    });
    &RECORDED
}

/// How long the loader and the write of the tests take, at least.
const LOAD: Duration = Duration::from_millis(20);
const WRITE: Duration = Duration::from_millis(10);

#[tokio::test]
async fn reads_loads_and_updates_reach_the_recorder() {
    let recorded = recorder();
    let cluster = Cluster::builder().node_name("reads").start().await.unwrap();
    let users = cluster.cache::<u64, String>("users").build().unwrap();
    assert_eq!(users.get(&1), None);
    let load = |id| async move {
        tokio::time::sleep(LOAD).await;
        Ok::<_, Infallible>(format!("user {id}"))
    };
    users.get_or_load(&1, load).await.unwrap();
    assert!(users.get(&1).is_some());
    assert_eq!(users.fetch(&1, load).await.unwrap().source, Source::Cache);
    users
        .update(&1, |_| async {
            tokio::time::sleep(WRITE).await;
            Ok::<_, Infallible>("ada".to_owned())
        })
        .await
        .unwrap();

    let cache = [("node", "reads"), ("cache", "users")];
    let requests = |result| recorded.counter(REQUESTS, &[cache[0], cache[1], ("result", result)]);
    // Counters are folded in by the node's export every second.
    wait::poll(async || (requests("hit") == Some(2)).then_some(()))
        .await
        .unwrap_or_else(|e| panic!("hits exported ({e}): {:?}", requests("hit")));
    assert_eq!(requests("miss"), Some(2), "a get and a get_or_load");
    assert_eq!(requests("bypass"), Some(0));
    assert_eq!(
        recorded.counter("cohort_cache_loads_total", &cache),
        Some(1)
    );
    assert_eq!(
        recorded.counter("cohort_cache_updates_total", &cache),
        Some(1)
    );
    assert_eq!(recorded.gauge("cohort_cache_entries", &cache), Some(1.0));
    let node = [("node", "reads")];
    assert_eq!(recorded.counter("cohort_events_sent_total", &node), Some(1));
    let lease = recorded
        .gauge("cohort_peer_lease_remaining_seconds", &node)
        .expect("the peer lease");
    assert!(lease > 0.0, "a node without peers serves: {lease}");

    let loads = recorded.samples(LOAD_DURATION, &cache);
    assert!(
        loads.len() == 1 && loads[0] >= LOAD.as_secs_f64(),
        "one load of at least {LOAD:?}: {loads:?}"
    );
    let updates = recorded.samples(UPDATE_DURATION, &cache);
    assert!(
        updates.len() == 1 && updates[0] >= WRITE.as_secs_f64(),
        "one update of at least {WRITE:?}: {updates:?}"
    );
    assert_eq!(recorded.unit(REQUESTS), Some(None), "described");
    assert_eq!(recorded.unit(LOAD_DURATION), Some(Some(Unit::Seconds)));
    assert_eq!(
        recorded.unit("cohort_peer_lease_remaining_seconds"),
        Some(Some(Unit::Seconds))
    );
    cluster.shutdown().await;
}

#[tokio::test]
async fn a_read_while_the_lease_has_lapsed_is_a_bypass_not_a_miss() {
    let recorded = recorder();
    // A seed nobody answers at: the node cannot confirm its peers, so it never serves.
    let cluster = Cluster::builder()
        .node_name("lapsed")
        .seeds(["127.0.0.1:1"])
        .start()
        .await
        .unwrap();
    let users = cluster.cache::<u64, String>("users").build().unwrap();
    assert!(!users.is_serving());
    assert_eq!(users.get(&1), None);
    let fetched = users
        .fetch(
            &1,
            |id| async move { Ok::<_, Infallible>(format!("user {id}")) },
        )
        .await
        .unwrap();
    assert_eq!(fetched.source, Source::Bypassed);

    let cache = [("node", "lapsed"), ("cache", "users")];
    let requests = |result| recorded.counter(REQUESTS, &[cache[0], cache[1], ("result", result)]);
    wait::poll(async || (requests("bypass") == Some(2)).then_some(()))
        .await
        .unwrap_or_else(|e| panic!("bypasses exported ({e}): {:?}", requests("bypass")));
    assert_eq!(requests("miss"), Some(0), "a bypass is not also a miss");
    assert_eq!(requests("hit"), Some(0));
    assert_eq!(recorded.samples(LOAD_DURATION, &cache).len(), 1);
    assert_eq!(
        recorded.gauge("cohort_peer_lease_remaining_seconds", &[("node", "lapsed")]),
        Some(0.0)
    );
    cluster.shutdown().await;
}

#[tokio::test]
async fn peers_time_their_ping_round_trips() {
    let recorded = recorder();
    let a = Cluster::builder().node_name("rtt-a").start().await.unwrap();
    let b = Cluster::builder()
        .node_name("rtt-b")
        .seeds([a.local_addr().to_string()])
        .start()
        .await
        .unwrap();
    wait::within(a.wait_for_peers(1))
        .await
        .expect("a links to b");
    let trips = || recorded.samples(ROUND_TRIP, &[("node", "rtt-a"), ("peer", "rtt-b")]);
    // Pings go every quarter of the bound.
    wait::poll(async || (!trips().is_empty()).then_some(()))
        .await
        .expect("a round trip from a to b");
    let bound = a.max_staleness().as_secs_f64();
    assert!(
        trips().iter().all(|&t| t > 0.0 && t < 2.0 * bound),
        "{:?}",
        trips()
    );
    wait::poll(async || {
        (recorded.gauge("cohort_peers_connected", &[("node", "rtt-a")]) == Some(1.0)).then_some(())
    })
    .await
    .expect("a's link to b exported");
    b.shutdown().await;
    a.shutdown().await;
}
