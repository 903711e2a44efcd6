//! What the page shows, kept as the sampler looks at the node: the latest look, a window of
//! samples for the charts, and the events found by comparing each look with the one before.
//!
//! Pure: the sampler hands each [`Look`] over with its wall-clock time; nothing here reads a
//! clock or the node.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;

use serde::Serialize;

/// Events the page keeps, newest first.
const EVENTS: usize = 100;

/// The node the page is of: what does not change while it runs.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct NodeInfo {
    pub(crate) name: String,
    pub(crate) incarnation: u64,
    /// The address peers dial.
    pub(crate) addr: SocketAddr,
    pub(crate) max_staleness_ms: u64,
    pub(crate) sample_every_ms: u64,
}

/// One look at the node, taken at `at_ms` (milliseconds since the Unix epoch).
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Look {
    pub(crate) at_ms: u64,
    pub(crate) members: Vec<MemberRow>,
    pub(crate) caches: Vec<CacheRow>,
    pub(crate) log: Option<LogRow>,
    pub(crate) mesh: MeshRow,
}

/// A member as the node sees it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct MemberRow {
    /// Its name; `None` for a seed address no member was found at yet.
    pub(crate) node: Option<String>,
    pub(crate) addr: SocketAddr,
    pub(crate) incarnation: Option<u64>,
    pub(crate) link: Link,
    /// What SWIM holds of it: `alive`, `suspect` or `down`; `None` before SWIM heard of it.
    pub(crate) swim: Option<String>,
    /// Whether peer-only caches wait for its confirmations.
    pub(crate) live: bool,
    pub(crate) last_heard_ms: Option<u64>,
    /// How long ago it last confirmed that this node had all its events.
    pub(crate) last_confirmed_ms: Option<u64>,
    /// What its latest confirmation leaves of the peer lease: the bound minus its age.
    pub(crate) lease_remaining_ms: Option<u64>,
    /// The latest ping round trip to it.
    pub(crate) round_trip_us: Option<u64>,
}

/// The node's link to a member.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Link {
    Up,
    Down,
}

/// One cache's counters on the node.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub(crate) struct CacheRow {
    pub(crate) name: String,
    pub(crate) entries: u64,
    pub(crate) hits: u64,
    pub(crate) misses: u64,
    pub(crate) loads: u64,
    pub(crate) bypasses: u64,
    /// Loads and writes not stored because the key changed meanwhile.
    pub(crate) fills_rejected: u64,
    pub(crate) flushes: u64,
    pub(crate) updates: u64,
    pub(crate) invalidations_applied: u64,
}

/// The node's tailing of the change log.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub(crate) struct LogRow {
    pub(crate) serving: bool,
    pub(crate) lease_remaining_ms: Option<u64>,
    pub(crate) last_poll_age_ms: Option<u64>,
    /// Rows the last complete poll applied: how far behind the log the node was.
    pub(crate) behind_rows: u64,
    pub(crate) polls: u64,
    pub(crate) errors: u64,
    pub(crate) last_error: Option<String>,
    pub(crate) pruned_flushes: u64,
}

/// The node's mesh counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub(crate) struct MeshRow {
    pub(crate) events_sent: u64,
    pub(crate) events_applied: u64,
    pub(crate) gaps: u64,
    pub(crate) frames_rejected: u64,
    pub(crate) auth_failures: u64,
}

/// What a chart needs of one look.
#[derive(Clone, Debug)]
struct Sample {
    at_ms: u64,
    /// Round trips, by peer name.
    round_trips: Vec<(String, u64)>,
    log: Option<LogSample>,
    /// Reads per second since the look before; `None` for the first.
    reads: Option<Rates>,
}

#[derive(Clone, Copy, Debug)]
struct LogSample {
    poll_age_ms: Option<u64>,
    lease_ms: Option<u64>,
    behind_rows: u64,
}

#[derive(Clone, Copy, Debug, PartialEq)]
struct Rates {
    hits: f64,
    misses: f64,
    bypasses: f64,
}

/// Something the page lists: a change between two looks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct Event {
    pub(crate) at_ms: u64,
    pub(crate) kind: EventKind,
    /// The member it is about, if any.
    pub(crate) node: Option<String>,
    pub(crate) text: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum EventKind {
    /// A member joined, left, restarted, moved, or SWIM changed its mind about it.
    Member,
    /// A link came up or went down.
    Link,
    /// Caches were emptied.
    Flush,
    /// The change log's lease lapsed or came back, or a poll failed.
    Log,
}

/// The looks of the last `keep` samples and the events between them.
///
/// Call [`record`](Self::record) with each look, in time order; [`view`](Self::view) is what the
/// page's JSON shows.
#[derive(Debug)]
pub(crate) struct History {
    keep: usize,
    samples: VecDeque<Sample>,
    latest: Option<Look>,
    events: VecDeque<Event>,
}

impl History {
    /// A history of the last `keep` looks.
    pub(crate) fn new(keep: usize) -> Self {
        Self {
            keep: keep.max(1),
            samples: VecDeque::new(),
            latest: None,
            events: VecDeque::new(),
        }
    }

    /// Records `look`: what changed since the look before becomes events, and a sample.
    pub(crate) fn record(&mut self, look: Look) {
        let reads = self.latest.as_ref().and_then(|before| rates(before, &look));
        match self.latest.take() {
            Some(before) => self.compare(&before, &look),
            None => {
                let named = look.members.iter().filter(|m| m.node.is_some()).count();
                self.push(
                    &look,
                    EventKind::Member,
                    None,
                    format!("watching: {named} members"),
                );
            }
        }
        if self.samples.len() == self.keep {
            self.samples.pop_front();
        }
        self.samples.push_back(Sample {
            at_ms: look.at_ms,
            // A member whose link is down has no round trip now, only its last one: the chart
            // breaks off there instead of drawing the last value on.
            round_trips: look
                .members
                .iter()
                .filter(|m| m.link == Link::Up)
                .filter_map(|m| Some((m.node.clone()?, m.round_trip_us?)))
                .collect(),
            log: look.log.as_ref().map(|log| LogSample {
                poll_age_ms: log.last_poll_age_ms,
                lease_ms: log.lease_remaining_ms,
                behind_rows: log.behind_rows,
            }),
            reads,
        });
        self.latest = Some(look);
    }

    fn push(&mut self, look: &Look, kind: EventKind, node: Option<&str>, text: String) {
        if self.events.len() == EVENTS {
            self.events.pop_back();
        }
        self.events.push_front(Event {
            at_ms: look.at_ms,
            kind,
            node: node.map(str::to_owned),
            text,
        });
    }

    /// Turns what changed from `before` to `now` into events.
    fn compare(&mut self, before: &Look, now: &Look) {
        let named = |look: &Look| -> BTreeMap<String, MemberRow> {
            look.members
                .iter()
                .filter_map(|m| Some((m.node.clone()?, m.clone())))
                .collect()
        };
        let (old, new) = (named(before), named(now));
        for (name, m) in &new {
            let Some(was) = old.get(name) else {
                let text = format!("{name} joined, at {}", m.addr);
                self.push(now, EventKind::Member, Some(name), text);
                continue;
            };
            if was.incarnation.is_some() && was.incarnation != m.incarnation {
                let text = format!("{name} restarted: a new process");
                self.push(now, EventKind::Member, Some(name), text);
            }
            if was.addr != m.addr {
                let text = format!("{name} moved from {} to {}", was.addr, m.addr);
                self.push(now, EventKind::Member, Some(name), text);
            }
            if was.link != m.link {
                let text = match m.link {
                    Link::Up => format!("link to {name} up"),
                    Link::Down => format!("link to {name} down"),
                };
                self.push(now, EventKind::Link, Some(name), text);
            }
            if was.swim != m.swim {
                let state = |s: &Option<String>| s.clone().unwrap_or_else(|| "unknown".into());
                let text = format!("SWIM: {name} {} → {}", state(&was.swim), state(&m.swim));
                self.push(now, EventKind::Member, Some(name), text);
            }
            if was.live != m.live {
                let text = if m.live {
                    format!("{name} is awaited again by peer-only caches")
                } else {
                    format!("{name} retired: silent, and down by SWIM; peer-only caches flushed")
                };
                self.push(now, EventKind::Member, Some(name), text);
            }
        }
        for name in old.keys().filter(|name| !new.contains_key(*name)) {
            let text = format!("{name} forgotten");
            self.push(now, EventKind::Member, Some(name), text);
        }
        for cache in &now.caches {
            let was = before.caches.iter().find(|c| c.name == cache.name);
            let flushed =
                cache.flushes - was.map_or(cache.flushes, |c| c.flushes.min(cache.flushes));
            if flushed > 0 {
                let text = format!(
                    "cache {} emptied{}: the node could not vouch for its entries",
                    cache.name,
                    times(flushed)
                );
                self.push(now, EventKind::Flush, None, text);
            }
        }
        let gaps = now.mesh.gaps.saturating_sub(before.mesh.gaps);
        if gaps > 0 {
            let text = format!("peer events missed for good{}: caches flushed", times(gaps));
            self.push(now, EventKind::Flush, None, text);
        }
        if let (Some(was), Some(log)) = (&before.log, &now.log) {
            if was.serving != log.serving {
                let text = if log.serving {
                    "change-log lease held again: caches serve".to_owned()
                } else {
                    "change-log lease lapsed: caches read the database".to_owned()
                };
                self.push(now, EventKind::Log, None, text);
            }
            let pruned = log.pruned_flushes.saturating_sub(was.pruned_flushes);
            if pruned > 0 {
                let text = format!(
                    "change log pruned past this node{}: caches flushed",
                    times(pruned)
                );
                self.push(now, EventKind::Flush, None, text);
            }
            if log.errors > was.errors {
                let error = log.last_error.as_deref().unwrap_or("(recovered since)");
                let text = format!(
                    "change log failed{}: {error}",
                    times(log.errors - was.errors)
                );
                self.push(now, EventKind::Log, None, text);
            }
        }
    }

    /// Samples held.
    #[cfg(test)]
    pub(crate) fn samples(&self) -> usize {
        self.samples.len()
    }

    /// What the page's JSON shows.
    pub(crate) fn view<'a>(&'a self, node: &'a NodeInfo) -> View<'a> {
        let latest = self.latest.as_ref();
        let t = self.samples.iter().map(|s| s.at_ms as f64 / 1e3).collect();
        let mut peers: Vec<&str> = self
            .samples
            .iter()
            .flat_map(|s| s.round_trips.iter().map(|(peer, _)| peer.as_str()))
            .collect();
        peers.sort_unstable();
        peers.dedup();
        let round_trip_ms = peers
            .into_iter()
            .map(|peer| PeerSeries {
                peer,
                values: self
                    .samples
                    .iter()
                    .map(|s| {
                        s.round_trips
                            .iter()
                            .find(|(p, _)| p == peer)
                            .map(|(_, us)| *us as f64 / 1e3)
                    })
                    .collect(),
            })
            .collect();
        let log = |f: fn(&LogSample) -> Option<u64>| -> Vec<Option<u64>> {
            self.samples
                .iter()
                .map(|s| s.log.as_ref().and_then(f))
                .collect()
        };
        let reads = |f: fn(&Rates) -> f64| -> Vec<Option<f64>> {
            self.samples
                .iter()
                .map(|s| s.reads.as_ref().map(f))
                .collect()
        };
        View {
            node,
            at_ms: latest.map(|l| l.at_ms),
            members: latest.map_or(&[], |l| &l.members),
            caches: latest.map_or(&[], |l| &l.caches),
            change_log: latest.and_then(|l| l.log.as_ref()),
            mesh: latest.map(|l| &l.mesh),
            series: Series {
                t,
                round_trip_ms,
                log_poll_age_ms: log(|l| l.poll_age_ms),
                log_lease_ms: log(|l| l.lease_ms),
                log_behind_rows: log(|l| Some(l.behind_rows)),
                hits_per_s: reads(|r| r.hits),
                misses_per_s: reads(|r| r.misses),
                bypasses_per_s: reads(|r| r.bypasses),
            },
            events: &self.events,
        }
    }
}

/// " (3 times)", or nothing for once.
fn times(n: u64) -> String {
    if n == 1 {
        String::new()
    } else {
        format!(" ({n} times)")
    }
}

/// Reads per second over every cache between two looks; `None` if no time passed.
fn rates(before: &Look, now: &Look) -> Option<Rates> {
    let secs = now.at_ms.checked_sub(before.at_ms).filter(|&ms| ms > 0)? as f64 / 1e3;
    let total = |look: &Look, f: fn(&CacheRow) -> u64| -> u64 { look.caches.iter().map(f).sum() };
    // Counters only grow; a cache that appeared counts from zero.
    let per_second =
        |f: fn(&CacheRow) -> u64| total(now, f).saturating_sub(total(before, f)) as f64 / secs;
    Some(Rates {
        hits: per_second(|c| c.hits),
        misses: per_second(|c| c.misses - c.bypasses.min(c.misses)),
        bypasses: per_second(|c| c.bypasses),
    })
}

/// The page's JSON: the node, its latest look, the charts' series and the events.
#[derive(Debug, Serialize)]
pub(crate) struct View<'a> {
    node: &'a NodeInfo,
    /// When the latest look was taken (ms since the Unix epoch).
    at_ms: Option<u64>,
    members: &'a [MemberRow],
    caches: &'a [CacheRow],
    change_log: Option<&'a LogRow>,
    mesh: Option<&'a MeshRow>,
    series: Series<'a>,
    /// Newest first.
    events: &'a VecDeque<Event>,
}

/// The charts' data, one value per sample (`null` where a sample has none).
#[derive(Debug, Serialize)]
struct Series<'a> {
    /// Sample times, in seconds since the Unix epoch.
    t: Vec<f64>,
    round_trip_ms: Vec<PeerSeries<'a>>,
    log_poll_age_ms: Vec<Option<u64>>,
    log_lease_ms: Vec<Option<u64>>,
    log_behind_rows: Vec<Option<u64>>,
    hits_per_s: Vec<Option<f64>>,
    /// Misses that were not bypasses.
    misses_per_s: Vec<Option<f64>>,
    bypasses_per_s: Vec<Option<f64>>,
}

#[derive(Debug, Serialize)]
struct PeerSeries<'a> {
    peer: &'a str,
    values: Vec<Option<f64>>,
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn member(name: &str, port: u16) -> MemberRow {
        MemberRow {
            node: Some(name.to_owned()),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            incarnation: Some(1),
            link: Link::Up,
            swim: Some("alive".to_owned()),
            live: true,
            last_heard_ms: Some(10),
            last_confirmed_ms: Some(100),
            lease_remaining_ms: Some(400),
            round_trip_us: Some(150),
        }
    }

    fn look(at_ms: u64, members: Vec<MemberRow>) -> Look {
        Look {
            at_ms,
            members,
            caches: vec![CacheRow {
                name: "users".to_owned(),
                ..CacheRow::default()
            }],
            log: Some(LogRow {
                serving: true,
                lease_remaining_ms: Some(300),
                last_poll_age_ms: Some(200),
                ..LogRow::default()
            }),
            mesh: MeshRow::default(),
        }
    }

    fn node() -> NodeInfo {
        NodeInfo {
            name: "a".to_owned(),
            incarnation: 7,
            addr: SocketAddr::from(([127, 0, 0, 1], 7001)),
            max_staleness_ms: 500,
            sample_every_ms: 1_000,
        }
    }

    fn view(history: &History) -> Value {
        serde_json::to_value(history.view(&node())).unwrap()
    }

    fn texts(history: &History) -> Vec<String> {
        history.events.iter().map(|e| e.text.clone()).collect()
    }

    /// A killed peer: its link goes down, SWIM suspects it, then declares it down; a restart
    /// brings it back as a new process. Each change is one event, newest first.
    #[test]
    fn a_killed_and_restarted_peer_is_told_step_by_step() {
        let mut history = History::new(300);
        history.record(look(1_000, vec![member("b", 1), member("c", 2)]));
        let mut c = member("c", 2);
        // Its last round trip stays known, but is no longer charted.
        c.link = Link::Down;
        history.record(look(2_000, vec![member("b", 1), c.clone()]));
        c.swim = Some("suspect".to_owned());
        history.record(look(3_000, vec![member("b", 1), c.clone()]));
        c.swim = Some("down".to_owned());
        c.live = false;
        history.record(look(4_000, vec![member("b", 1), c]));
        let mut back = member("c", 3);
        back.incarnation = Some(2);
        history.record(look(5_000, vec![member("b", 1), back]));
        assert_eq!(
            texts(&history),
            [
                "c is awaited again by peer-only caches",
                "SWIM: c down → alive",
                "link to c up",
                "c moved from 127.0.0.1:2 to 127.0.0.1:3",
                "c restarted: a new process",
                "c retired: silent, and down by SWIM; peer-only caches flushed",
                "SWIM: c suspect → down",
                "SWIM: c alive → suspect",
                "link to c down",
                "watching: 2 members",
            ]
        );
        assert_eq!(history.events[8].at_ms, 2_000);
        assert_eq!(history.events[8].node.as_deref(), Some("c"));

        let json = view(&history);
        assert_eq!(json["series"]["t"], json!([1.0, 2.0, 3.0, 4.0, 5.0]));
        let peers = json["series"]["round_trip_ms"].as_array().unwrap();
        assert_eq!(peers.len(), 2);
        assert_eq!(peers[1]["peer"], "c");
        assert_eq!(peers[1]["values"], json!([0.15, null, null, null, 0.15]));
        assert_eq!(json["members"][1]["link"], "up");
        assert_eq!(json["node"]["name"], "a");
    }

    #[test]
    fn flushes_gaps_and_the_change_log_are_events() {
        let mut history = History::new(300);
        history.record(look(1_000, vec![]));
        let mut later = look(2_000, vec![]);
        later.caches[0].flushes = 2;
        later.mesh.gaps = 1;
        if let Some(log) = &mut later.log {
            log.serving = false;
            log.errors = 1;
            log.last_error = Some("database is locked".to_owned());
            log.pruned_flushes = 1;
        }
        history.record(later);
        assert_eq!(
            texts(&history),
            [
                "change log failed: database is locked",
                "change log pruned past this node: caches flushed",
                "change-log lease lapsed: caches read the database",
                "peer events missed for good: caches flushed",
                "cache users emptied (2 times): the node could not vouch for its entries",
                "watching: 0 members",
            ]
        );
    }

    /// Read rates come from the counters' growth between looks, bypasses apart from misses.
    #[test]
    fn reads_per_second_come_from_counter_deltas() {
        let mut history = History::new(300);
        let mut first = look(1_000, vec![]);
        first.caches[0].hits = 100;
        history.record(first);
        let mut second = look(3_000, vec![]);
        second.caches[0].hits = 300;
        second.caches[0].misses = 50;
        second.caches[0].bypasses = 10;
        history.record(second);
        let json = view(&history);
        assert_eq!(json["series"]["hits_per_s"], json!([null, 100.0]));
        assert_eq!(json["series"]["misses_per_s"], json!([null, 20.0]));
        assert_eq!(json["series"]["bypasses_per_s"], json!([null, 5.0]));
        assert_eq!(json["series"]["log_poll_age_ms"], json!([200, 200]));
    }

    /// However long the node runs, the page keeps `keep` samples and a fixed number of events.
    #[test]
    fn memory_is_bounded() {
        let mut history = History::new(10);
        for i in 0..1_000 {
            let mut b = member("b", 1);
            b.link = if i % 2 == 0 { Link::Up } else { Link::Down };
            history.record(look(i * 1_000, vec![b]));
        }
        assert_eq!(history.samples.len(), 10);
        assert_eq!(history.events.len(), EVENTS);
        assert_eq!(view(&history)["series"]["t"].as_array().unwrap().len(), 10);
    }
}
