//! What the clients did, judged by the test kit's checker (the one `cohort check` uses): no read
//! returns a version older than one whose update completed more than that update's promise (the
//! bound, or nothing for a strong update through cohort) before the read started, or than one
//! another read had returned more than the bound before it started. Times are simulated time
//! since the start.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use cohort_testkit::history::{Read, Update, judge};

use crate::harness::BOUND;

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Op {
    Read {
        node: &'static str,
        key: u64,
        version: u64,
        started: Duration,
        ended: Duration,
        /// A fail-safe read's declared age: its value was last known current that long before.
        age: Option<Duration>,
    },
    Update {
        node: &'static str,
        key: u64,
        version: u64,
        completed: Duration,
        /// How long after completing it may still be missed.
        promise: Duration,
    },
    /// A version written where no trigger sees it: owed by reads that saw it only from when the
    /// caches were told of it with the promise (`told`), and never if they were not.
    Untriggered {
        key: u64,
        version: u64,
        told: Option<Duration>,
    },
}

impl Op {
    /// The node it went through.
    fn node(&self) -> &'static str {
        match *self {
            Op::Read { node, .. } | Op::Update { node, .. } => node,
            Op::Untriggered { .. } => "a writer no trigger sees",
        }
    }
}

/// Simulated time, the same on every host.
pub(crate) fn now() -> Duration {
    turmoil::sim_elapsed().expect("inside the simulation")
}

/// The first read that missed an update it was owed, described, after the key's history.
pub(crate) fn check(history: &[Op]) -> Result<(), String> {
    // The checker takes instants; any origin does, as only differences count.
    let origin = Instant::now();
    let told: HashMap<(u64, u64), Option<Duration>> = history
        .iter()
        .filter_map(|op| match *op {
            Op::Untriggered { key, version, told } => Some(((key, version), told)),
            _ => None,
        })
        .collect();
    let mut updates = Vec::new();
    let mut reads = Vec::new();
    // Each operation is known to the checker by its index in the history.
    for (index, op) in history.iter().enumerate() {
        match *op {
            Op::Read {
                key,
                version,
                started,
                ended,
                age,
                ..
            } => {
                let read = Read {
                    key,
                    version,
                    started: origin + started,
                    ended: origin + ended,
                    by: index,
                    age,
                };
                // Whoever wrote it, the version had committed by the time the read returned;
                // a version no trigger saw is owed only once the caches were told.
                let seen = read.seen(BOUND);
                match told.get(&(key, version)) {
                    None => updates.push(seen),
                    Some(Some(at)) => updates.push(Update {
                        returned: seen.returned.max(origin + *at),
                        ..seen
                    }),
                    Some(None) => {}
                }
                reads.push(read);
            }
            Op::Untriggered { .. } => {}
            Op::Update {
                key,
                version,
                completed,
                promise,
                ..
            } => updates.push(Update {
                key,
                version,
                returned: origin + completed,
                promise,
                by: index,
            }),
        }
    }
    let (late, verdict) = judge(updates, reads);
    let Some(first) = late.iter().find(|late| late.beyond) else {
        return Ok(());
    };
    print_key(history, first.read.key);
    let owed = match history[first.missed.by] {
        Op::Update {
            node,
            completed,
            promise,
            ..
        } => format!("updated through {node} at {completed:?} (promise {promise:?})"),
        Op::Read { node, ended, .. } => {
            format!("returned by a read on {node} that ended at {ended:?} (promise {BOUND:?})")
        }
        Op::Untriggered { told, .. } => format!("written where no trigger sees it, told {told:?}"),
    };
    let node = history[first.read.by].node();
    Err(format!(
        "a read of key {} on {node} started at {:?} returned version {}, but version {} was owed: \
         {owed}; {} reads beyond the bound in all",
        first.read.key,
        first.read.started - origin,
        first.read.version,
        first.missed.version,
        verdict.stale_beyond_bound,
    ))
}

fn print_key(history: &[Op], key: u64) {
    for op in history {
        match *op {
            Op::Read {
                node,
                key: k,
                version,
                started,
                ended,
                age,
            } if k == key => eprintln!(
                "{started:>12?} read   {node} v{version} (until {ended:?}{})",
                age.map(|age| format!(", declared {age:?} old"))
                    .unwrap_or_default()
            ),
            Op::Update {
                node,
                key: k,
                version,
                completed,
                promise,
            } if k == key => {
                eprintln!("{completed:>12?} update {node} v{version} (promise {promise:?})")
            }
            _ => {}
        }
    }
}

/// Reads that served a value declared stale.
pub(crate) fn stale_reads(history: &[Op]) -> usize {
    history
        .iter()
        .filter(|op| matches!(op, Op::Read { age: Some(_), .. }))
        .count()
}

pub(crate) fn reads_and_updates(history: &[Op]) -> (usize, usize) {
    let reads = history
        .iter()
        .filter(|op| matches!(op, Op::Read { .. }))
        .count();
    (reads, history.len() - reads)
}
