//! What the clients did, and the promise it is judged by: no read returns a version older than
//! one whose update completed more than that update's promise (the bound, or nothing for a strong
//! update through cohort) before the read started. Times are simulated time since the start.

use std::time::Duration;

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Op {
    Read {
        node: &'static str,
        key: u64,
        version: u64,
        started: Duration,
    },
    Update {
        node: &'static str,
        key: u64,
        version: u64,
        completed: Duration,
        /// How long after completing it may still be missed.
        promise: Duration,
    },
}

/// Simulated time, the same on every host.
pub(crate) fn now() -> Duration {
    turmoil::sim_elapsed().expect("inside the simulation")
}

/// The first read that missed an update it was owed, described.
pub(crate) fn check(history: &[Op]) -> Result<(), String> {
    for op in history {
        let Op::Read {
            key,
            version,
            started,
            ..
        } = *op
        else {
            continue;
        };
        let owed = history
            .iter()
            .filter_map(|op| match *op {
                Op::Update {
                    key: k,
                    version: v,
                    completed,
                    promise,
                    ..
                } if k == key && completed + promise < started => Some(v),
                _ => None,
            })
            .max()
            .unwrap_or(0);
        if version < owed {
            print_key(history, key);
            return Err(format!(
                "a read of key {key} started at {started:?} returned version {version}, but version {owed} was owed"
            ));
        }
    }
    Ok(())
}

fn print_key(history: &[Op], key: u64) {
    for op in history {
        match *op {
            Op::Read {
                node,
                key: k,
                version,
                started,
            } if k == key => eprintln!("{started:>12?} read   {node} v{version}"),
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

pub(crate) fn reads_and_updates(history: &[Op]) -> (usize, usize) {
    let reads = history
        .iter()
        .filter(|op| matches!(op, Op::Read { .. }))
        .count();
    (reads, history.len() - reads)
}
