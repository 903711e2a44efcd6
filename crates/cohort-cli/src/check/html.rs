//! `cohort check --report PATH.html`: the run as one self-contained HTML file, to read at a
//! glance: the verdict, a timeline of operations per node with every fault's window shaded, the
//! distribution of observed staleness against the bound, reads by source per node, and the
//! timelines of the reads that lagged the most.
//!
//! [`Gathered`] takes what the report draws as operations complete, in memory bounded by the
//! run's length in bins (not its operations): counts per node and time bin, a histogram of lags,
//! a short ring of recent operations (the context of the worst reads), and the worst reads
//! themselves. [`write`] turns it into the file: the data as JSON inside the page, drawn by the
//! page's script with uPlot (embedded, as on the live cluster page: nothing is fetched).

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

use cohort_testkit::history::{Late, Verdict};

use super::faults::{Action, Planned};
use super::record::{Actor, By, Counts, JUDGE_WINDOW, Op};
use crate::api::Source;

/// The reads whose timelines the report shows: those that lagged the most.
const WORST: usize = 5;

/// Time bins a timeline has at most: a longer run gets wider bins.
const BINS: u32 = 300;

/// The narrowest time bin.
const MIN_BIN: Duration = Duration::from_millis(100);

/// Operations on a worst read's key shown around it, at most.
const CONTEXT_OPS: usize = 300;

/// Recent operations kept for the worst reads' context, at most.
const RECENT_OPS: usize = 100_000;

/// What the report is made of, gathered as the run goes.
pub(crate) struct Gathered {
    origin: Instant,
    bin: Duration,
    /// Per node, per bin: reads its cache answered, reads another node answered as the key's
    /// owner, reads the database answered, updates.
    timeline: Vec<Vec<[u32; 4]>>,
    /// Per node: reads by source, in the order of [`SOURCES`].
    sources: Vec<[u64; 4]>,
    /// Per bin: updates by plain SQL, through no node.
    sql: Vec<u32>,
    faults: Vec<Window>,
    staleness: Histogram,
    /// Recent operations, oldest first: the context of a read found late a window after it ended.
    recent: VecDeque<Recent>,
    /// How long operations stay in `recent`.
    keep: Duration,
    /// The reads that lagged the most, longest first.
    worst: Vec<Offender>,
}

/// A fault, when it was injected and when its injection ended (the node restarted, resumed, the
/// links healed), as seconds from the start of the workload.
#[derive(Clone, Debug, Serialize)]
struct Window {
    kind: &'static str,
    label: String,
    /// The nodes it struck; empty for all of them (the links, the database).
    nodes: Vec<usize>,
    from_s: f64,
    to_s: f64,
}

/// Observed lags, in bins whose edges follow 1-2-5 steps with the bound as one more edge.
#[derive(Clone, Debug, Serialize)]
struct Histogram {
    /// Upper edges of every bin but the last, which is open.
    edges_ms: Vec<f64>,
    /// Late reads within their promise, per bin.
    within: Vec<u64>,
    /// Late reads beyond their promise, per bin.
    beyond: Vec<u64>,
}

#[derive(Clone, Copy, Debug, Serialize)]
struct Recent {
    key: u64,
    version: u64,
    /// `read` or `update`.
    kind: &'static str,
    /// The node it went through; `None` for plain SQL.
    node: Option<usize>,
    /// For reads: what answered ([`Source::name`]).
    source: Option<&'static str>,
    from_s: f64,
    to_s: f64,
}

#[derive(Clone, Debug, Serialize)]
struct Offender {
    key: u64,
    lag_ms: f64,
    beyond: bool,
    at_least: bool,
    read: Recent,
    missed: Missed,
    /// Operations on the key around the read, oldest first.
    context: Vec<Recent>,
}

#[derive(Clone, Debug, Serialize)]
struct Missed {
    version: u64,
    returned_s: f64,
    promise_ms: f64,
    by: String,
}

/// What can answer a read, in the order the report counts them.
const SOURCES: [Source; 4] = [
    Source::Cache,
    Source::Owner,
    Source::OwnerSkipped,
    Source::Db,
];

/// What answered a read (a read always says; one that did not would have read the database).
fn source(op: &Op) -> Source {
    op.source.unwrap_or(Source::Db)
}

/// The timeline's column of a read answered by `source`: the node's cache, the key's owner, or
/// the database (read by the node itself, its owner skipped or not).
fn column(source: Source) -> usize {
    match source {
        // A fail-safe read served from memory.
        Source::Cache | Source::Stale => 0,
        Source::Owner => 1,
        Source::OwnerSkipped | Source::Db => 2,
    }
}

impl Gathered {
    /// Gathers a run of `nodes` nodes over `duration` from `origin`, whose updates are promised
    /// `bound`.
    pub(crate) fn new(origin: Instant, nodes: usize, duration: Duration, bound: Duration) -> Self {
        let bin = (duration / BINS).max(MIN_BIN);
        Self {
            origin,
            bin,
            timeline: vec![Vec::new(); nodes],
            sources: vec![[0; 4]; nodes],
            sql: Vec::new(),
            faults: Vec::new(),
            staleness: Histogram::new(bound),
            recent: VecDeque::new(),
            keep: (bound * 4).max(Duration::from_secs(5)) + JUDGE_WINDOW,
            worst: Vec::new(),
        }
    }

    fn secs(&self, at: Instant) -> f64 {
        at.saturating_duration_since(self.origin).as_secs_f64()
    }

    fn bin_of(&self, at: Instant) -> usize {
        let since = at.saturating_duration_since(self.origin);
        (since.as_nanos() / self.bin.as_nanos().max(1)) as usize
    }

    /// A read or an update that returned.
    pub(crate) fn op(&mut self, op: &Op, read: bool) {
        let bin = self.bin_of(op.started);
        let column = match op.actor {
            Actor::Client { node, .. } => {
                if read && let Some(counts) = self.sources.get_mut(node) {
                    let at = SOURCES.iter().position(|&s| s == source(op));
                    counts[at.unwrap_or(SOURCES.len() - 1)] += 1;
                }
                Some((node, if read { column(source(op)) } else { 3 }))
            }
            Actor::Sql => None,
        };
        match column {
            Some((node, column)) => {
                if let Some(bins) = self.timeline.get_mut(node) {
                    if bins.len() <= bin {
                        bins.resize(bin + 1, [0; 4]);
                    }
                    bins[bin][column] += 1;
                }
            }
            None => {
                if self.sql.len() <= bin {
                    self.sql.resize(bin + 1, 0);
                }
                self.sql[bin] += 1;
            }
        }
        let recent = Recent {
            key: op.key,
            version: op.version,
            kind: if read { "read" } else { "update" },
            node: column.map(|(node, _)| node),
            source: read.then(|| source(op).name()),
            from_s: self.secs(op.started),
            to_s: self.secs(op.ended),
        };
        if self.recent.len() == RECENT_OPS {
            self.recent.pop_front();
        }
        self.recent.push_back(recent);
        let drop_before = self.secs(op.ended) - self.keep.as_secs_f64();
        while self.recent.front().is_some_and(|r| r.to_s < drop_before) {
            self.recent.pop_front();
        }
    }

    /// A fault's window: injected at `from`, its injection over at `to`.
    pub(crate) fn fault(&mut self, fault: &Planned, from: Instant, to: Instant) {
        let (label, nodes) = describe(&fault.action);
        self.faults.push(Window {
            kind: fault.kind.name(),
            label,
            nodes,
            from_s: self.secs(from),
            to_s: self.secs(to),
        });
    }

    /// A read the judge found late (within its promise or beyond). The worst are kept, one per
    /// key: reads around one fault tend to miss the same update.
    pub(crate) fn late(&mut self, late: &Late<By>) {
        self.staleness.add(late.lag, late.beyond);
        let (read, missed) = (&late.read, &late.missed);
        let lag_ms = late.lag.as_secs_f64() * 1e3;
        if let Some(same) = self.worst.iter().position(|w| w.key == read.key) {
            if self.worst[same].lag_ms >= lag_ms {
                return;
            }
            self.worst.remove(same);
        }
        let at = self.worst.partition_point(|w| w.lag_ms >= lag_ms);
        if at >= WORST {
            return;
        }
        let (node, source) = read.by.read_on();
        let since = self.secs(missed.returned) - 1.0;
        let context = self
            .recent
            .iter()
            .filter(|r| r.key == read.key && r.to_s >= since)
            .take(CONTEXT_OPS)
            .copied()
            .collect();
        let offender = Offender {
            key: read.key,
            lag_ms,
            beyond: late.beyond,
            at_least: late.at_least,
            read: Recent {
                key: read.key,
                version: read.version,
                kind: "read",
                node: Some(node),
                source: Some(source.name()),
                from_s: self.secs(read.started),
                to_s: self.secs(read.ended),
            },
            missed: Missed {
                version: missed.version,
                returned_s: self.secs(missed.returned),
                promise_ms: missed.promise.as_secs_f64() * 1e3,
                by: missed.by.describe(),
            },
            context,
        };
        self.worst.insert(at, offender);
        self.worst.truncate(WORST);
    }
}

/// What a fault did, in words, and the nodes it struck (none: all of them).
fn describe(action: &Action) -> (String, Vec<usize>) {
    match action {
        Action::Kill { node } => (format!("kill -9 n{node}, restart"), vec![*node]),
        Action::Pause { node, machine } => (
            format!(
                "SIGSTOP n{node}{}",
                if *machine { ", its links cut" } else { "" }
            ),
            vec![*node],
        ),
        Action::Partition { side } => {
            let names: Vec<String> = side.iter().map(|n| format!("n{n}")).collect();
            (
                format!("partition: {} cut off", names.join(", ")),
                side.clone(),
            )
        }
        Action::Drop { share } => (
            format!("drop {:.0} % of peer messages", share * 100.0),
            Vec::new(),
        ),
        Action::Slow { delay } => (
            format!("peer messages held {} ms", delay.as_millis()),
            Vec::new(),
        ),
        Action::External { writes } => (format!("{writes} plain-SQL writes"), Vec::new()),
        Action::DbPause => ("database frozen for the nodes".to_owned(), Vec::new()),
    }
}

impl Histogram {
    fn new(bound: Duration) -> Self {
        let bound_ms = bound.as_secs_f64() * 1e3;
        let mut edges_ms: Vec<f64> = [1.0, 2.0, 5.0]
            .iter()
            .flat_map(|step| (0..5).map(move |power| step * 10f64.powi(power)))
            .filter(|&edge| edge <= 30_000.0)
            .collect();
        if bound_ms > 0.0 && !edges_ms.contains(&bound_ms) {
            edges_ms.push(bound_ms);
        }
        edges_ms.sort_by(f64::total_cmp);
        let bins = edges_ms.len() + 1;
        Self {
            edges_ms,
            within: vec![0; bins],
            beyond: vec![0; bins],
        }
    }

    fn add(&mut self, lag: Duration, beyond: bool) {
        let ms = lag.as_secs_f64() * 1e3;
        let bin = self.edges_ms.partition_point(|&edge| edge <= ms);
        let counts = if beyond {
            &mut self.beyond
        } else {
            &mut self.within
        };
        counts[bin] += 1;
    }
}

/// What the run was, and what the judge found: the report's header.
pub(crate) struct Outcome<'a> {
    pub(crate) passed: bool,
    pub(crate) verdict: Verdict,
    pub(crate) counts: Counts,
    /// What went wrong besides stale reads.
    pub(crate) problems: &'a [String],
    pub(crate) nodes: usize,
    pub(crate) duration: Duration,
    pub(crate) faults: Vec<&'static str>,
    pub(crate) mode: String,
    pub(crate) seed: u64,
    /// The promise of updates through a node (zero in strong mode).
    pub(crate) bound: Duration,
    pub(crate) max_staleness: Duration,
    pub(crate) clients: u16,
    pub(crate) keys: u64,
}

/// The report's data, as the page's script reads it.
#[derive(Serialize)]
struct Data<'a> {
    verdict: VerdictData<'a>,
    run: RunData<'a>,
    timeline: Timeline,
    faults: &'a [Window],
    staleness: &'a Histogram,
    /// Per node: reads by source, by name.
    sources: Vec<BTreeMap<&'static str, u64>>,
    worst: &'a [Offender],
}

#[derive(Serialize)]
struct VerdictData<'a> {
    passed: bool,
    problems: &'a [String],
    judged: u64,
    fresh: u64,
    stale_within_bound: u64,
    stale_beyond_bound: u64,
    max_staleness_ms: f64,
    max_staleness_at_least: bool,
    too_old: u64,
    recorded_late: u64,
    reads: u64,
    updates: u64,
    by_sql: u64,
    failed: u64,
}

#[derive(Serialize)]
struct RunData<'a> {
    nodes: usize,
    duration_s: f64,
    faults: &'a [&'static str],
    mode: &'a str,
    seed: u64,
    bound_ms: f64,
    max_staleness_ms: f64,
    clients: u16,
    keys: u64,
}

#[derive(Serialize)]
struct Timeline {
    bin_s: f64,
    /// Operations per second, per node: `[cache reads, owner reads, database reads, updates]`
    /// per bin.
    nodes: Vec<Vec<[f64; 4]>>,
    /// Plain-SQL updates per second, per bin.
    sql: Vec<f64>,
}

/// Writes the report of a run to `path`.
pub(crate) fn write(path: &Path, gathered: &Gathered, outcome: &Outcome<'_>) -> anyhow::Result<()> {
    let bin_s = gathered.bin.as_secs_f64();
    let bins = gathered
        .timeline
        .iter()
        .map(Vec::len)
        .chain([gathered.sql.len()])
        .max()
        .unwrap_or(0);
    let rate = |count: u32| f64::from(count) / bin_s;
    let nodes = gathered
        .timeline
        .iter()
        .map(|node| {
            (0..bins)
                .map(|i| node.get(i).copied().unwrap_or_default().map(rate))
                .collect()
        })
        .collect();
    let sources = gathered
        .sources
        .iter()
        .map(|counts| {
            SOURCES
                .iter()
                .map(|s| s.name())
                .zip(counts.iter().copied())
                .collect()
        })
        .collect();
    let verdict = &outcome.verdict;
    let data = Data {
        verdict: VerdictData {
            passed: outcome.passed,
            problems: outcome.problems,
            judged: verdict.judged,
            fresh: verdict.judged - verdict.stale_within_bound - verdict.stale_beyond_bound,
            stale_within_bound: verdict.stale_within_bound,
            stale_beyond_bound: verdict.stale_beyond_bound,
            max_staleness_ms: verdict.max_staleness.as_secs_f64() * 1e3,
            max_staleness_at_least: verdict.max_staleness_at_least,
            too_old: verdict.too_old,
            recorded_late: verdict.recorded_late,
            reads: outcome.counts.reads,
            updates: outcome.counts.updates,
            by_sql: outcome.counts.by_sql,
            failed: outcome.counts.failed,
        },
        run: RunData {
            nodes: outcome.nodes,
            duration_s: outcome.duration.as_secs_f64(),
            faults: &outcome.faults,
            mode: &outcome.mode,
            seed: outcome.seed,
            bound_ms: outcome.bound.as_secs_f64() * 1e3,
            max_staleness_ms: outcome.max_staleness.as_secs_f64() * 1e3,
            clients: outcome.clients,
            keys: outcome.keys,
        },
        timeline: Timeline {
            bin_s,
            nodes,
            sql: (0..bins)
                .map(|i| rate(gathered.sql.get(i).copied().unwrap_or(0)))
                .collect(),
        },
        faults: &gathered.faults,
        staleness: &gathered.staleness,
        sources,
        worst: &gathered.worst,
    };
    let html = page(&serde_json::to_string(&data)?);
    std::fs::write(path, html).with_context(|| format!("cannot write {}", path.display()))
}

/// The report's HTML around `json`, the run's data.
fn page(json: &str) -> String {
    // Inside a script element, `</script>` would end it: JSON may escape every `<`, and outside
    // its strings it has none.
    let json = json.replace('<', "\\u003c");
    [
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n",
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n",
        "<title>cohort check report</title>\n<style>\n",
        cohort_page::vendored::UPLOT_CSS,
        "\n",
        include_str!("html/report.css"),
        "</style>\n</head>\n<body>\n",
        include_str!("html/report.html"),
        "<script type=\"application/json\" id=\"report-data\">",
        &json,
        "</script>\n<script>\n",
        cohort_page::vendored::UPLOT_JS,
        "\n</script>\n<script>\n",
        include_str!("html/report.js"),
        "</script>\n</body>\n</html>\n",
    ]
    .concat()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::faults::FaultKind;
    use cohort_testkit::history::{Read, Update};

    const BOUND: Duration = Duration::from_millis(500);

    fn op(origin: Instant, node: usize, ms: u64, key: u64, version: u64, source: Source) -> Op {
        Op {
            actor: Actor::Client { client: 0, node },
            key,
            version,
            source: Some(source),
            started: origin + Duration::from_millis(ms),
            ended: origin + Duration::from_millis(ms + 2),
            age: None,
        }
    }

    fn late(origin: Instant, lag_ms: u64, key: u64) -> Late<By> {
        let started = origin + Duration::from_millis(2_000);
        let returned = started - Duration::from_millis(lag_ms);
        Late {
            read: Read {
                key,
                version: 1,
                started,
                ended: started + Duration::from_millis(3),
                by: By::Read {
                    node: 1,
                    source: Source::Cache,
                },
                age: None,
            },
            missed: Update {
                key,
                version: 2,
                returned,
                promise: BOUND,
                by: By::Put { node: 0 },
            },
            lag: Duration::from_millis(lag_ms),
            beyond: Duration::from_millis(lag_ms) > BOUND,
            at_least: false,
        }
    }

    #[test]
    fn operations_fall_in_their_node_bin_and_column() {
        let origin = Instant::now();
        let mut gathered = Gathered::new(origin, 2, Duration::from_secs(10), BOUND);
        assert_eq!(gathered.bin, Duration::from_millis(100));
        gathered.op(&op(origin, 0, 50, 1, 1, Source::Cache), true);
        gathered.op(&op(origin, 0, 60, 1, 1, Source::Db), true);
        gathered.op(&op(origin, 0, 70, 1, 1, Source::Owner), true);
        gathered.op(&op(origin, 0, 80, 1, 1, Source::OwnerSkipped), true);
        gathered.op(&op(origin, 1, 250, 1, 2, Source::Db), false);
        let sql = Op {
            actor: Actor::Sql,
            source: None,
            ..op(origin, 0, 450, 2, 3, Source::Db)
        };
        gathered.op(&sql, false);
        assert_eq!(gathered.timeline[0], [[1, 1, 2, 0]]);
        assert_eq!(gathered.timeline[1], [[0; 4], [0; 4], [0, 0, 0, 1]]);
        assert_eq!(
            gathered.sources,
            [[1, 1, 1, 1], [0; 4]],
            "updates are no reads"
        );
        assert_eq!(gathered.sql, [0, 0, 0, 0, 1]);
        let long = Gathered::new(origin, 1, Duration::from_secs(3_000), BOUND);
        assert_eq!(
            long.bin,
            Duration::from_secs(10),
            "a long run has wider bins"
        );
    }

    /// Lags fall in 1-2-5 bins with the bound as an edge of its own, those beyond their promise
    /// apart.
    #[test]
    fn the_histogram_splits_at_the_bound() {
        let mut histogram = Histogram::new(Duration::from_millis(400));
        assert!(histogram.edges_ms.contains(&400.0));
        histogram.add(Duration::from_micros(300), false);
        histogram.add(Duration::from_millis(399), false);
        histogram.add(Duration::from_millis(401), true);
        histogram.add(Duration::from_secs(60), true);
        let bin = |ms: f64| histogram.edges_ms.partition_point(|&e| e <= ms);
        assert_eq!(histogram.within[0], 1);
        assert_eq!(histogram.within[bin(399.0)], 1);
        assert_eq!(histogram.beyond[bin(401.0)], 1);
        assert_eq!(
            histogram.beyond[histogram.edges_ms.len()],
            1,
            "the open last bin"
        );
        assert_ne!(bin(399.0), bin(401.0));
    }

    /// The worst reads are kept longest first, one per key, each with the operations on its key
    /// around it.
    #[test]
    fn the_worst_reads_keep_their_context() {
        let origin = Instant::now();
        let mut gathered = Gathered::new(origin, 2, Duration::from_secs(10), BOUND);
        for ms in (0..2_000).step_by(10) {
            gathered.op(&op(origin, 0, ms, 7, 1 + ms / 100, Source::Cache), true);
            gathered.op(&op(origin, 1, ms, 8, 1, Source::Cache), true);
        }
        for (lag, key) in [
            (5, 7),
            (700, 3),
            (30, 4),
            (600, 5),
            (1, 6),
            (2, 9),
            (900, 7),
            (800, 3),
        ] {
            gathered.late(&late(origin, lag, key));
        }
        let worst: Vec<(f64, u64)> = gathered.worst.iter().map(|w| (w.lag_ms, w.key)).collect();
        assert_eq!(
            worst,
            [(900.0, 7), (800.0, 3), (600.0, 5), (30.0, 4), (2.0, 9)],
            "longest first, one per key"
        );
        let worst = &gathered.worst[0];
        assert!(worst.beyond);
        assert!(!worst.context.is_empty());
        assert!(worst.context.iter().all(|r| r.key == 7));
        // The context starts a second before the missed update returned (1.1 s).
        assert!(worst.context.iter().all(|r| r.to_s >= 0.1 - 1e-9));
        assert_eq!(gathered.staleness.beyond.iter().sum::<u64>(), 4);
        assert_eq!(gathered.staleness.within.iter().sum::<u64>(), 4);
    }

    #[test]
    fn faults_are_described_with_the_nodes_they_struck() {
        let origin = Instant::now();
        let mut gathered = Gathered::new(origin, 3, Duration::from_secs(10), BOUND);
        let planned = |action| Planned {
            kind: FaultKind::Partition,
            action,
            at: Duration::ZERO,
            lasts: Duration::ZERO,
        };
        let at = |ms| origin + Duration::from_millis(ms);
        gathered.fault(
            &planned(Action::Partition { side: vec![2] }),
            at(1_000),
            at(2_500),
        );
        gathered.fault(&planned(Action::Drop { share: 0.25 }), at(3_000), at(4_000));
        let windows: Vec<(String, Vec<usize>, f64, f64)> = gathered
            .faults
            .iter()
            .map(|w| (w.label.clone(), w.nodes.clone(), w.from_s, w.to_s))
            .collect();
        assert_eq!(
            windows,
            [
                ("partition: n2 cut off".to_owned(), vec![2], 1.0, 2.5),
                ("drop 25 % of peer messages".to_owned(), vec![], 3.0, 4.0),
            ]
        );
    }

    /// The report is one file: styles and scripts inline, nothing fetched from elsewhere.
    #[test]
    fn the_report_is_self_contained() {
        let html = page("{}");
        for outside in ["<script src", "<link", "src=\"http", "url(http"] {
            assert!(!html.contains(outside), "{outside}");
        }
        assert!(html.contains("var uPlot="), "uPlot is inline");
    }

    /// The data sits in a script element: no string in it can end that element early.
    #[test]
    fn the_data_cannot_break_out_of_its_script_element() {
        let html = page(r#"{"problem":"</script><script>alert(1)</script>"}"#);
        let data = html
            .split("id=\"report-data\">")
            .nth(1)
            .and_then(|rest| rest.split("</script>").next())
            .unwrap();
        let parsed: serde_json::Value = serde_json::from_str(data).unwrap();
        assert_eq!(parsed["problem"], "</script><script>alert(1)</script>");
    }
}
