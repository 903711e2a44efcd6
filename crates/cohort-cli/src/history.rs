//! Judges a recorded history of reads and updates against the staleness bound.
//!
//! Pure: the workload records operations with their times, this module says which reads broke the
//! promise. A read of key k that started at `t` must return a version at least as new as every
//! update of k that had returned before `t - bound`. Versions come from the database, which
//! serializes writes of one key, so a higher version is a later write.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// An update that returned to its caller.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Update {
    pub(crate) key: u64,
    pub(crate) version: u64,
    pub(crate) returned: Instant,
}

/// A read and what it saw.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Read {
    pub(crate) key: u64,
    pub(crate) version: u64,
    pub(crate) started: Instant,
}

/// What the checker concluded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Verdict {
    /// Reads that missed an update which had returned more than the bound before they started.
    pub(crate) stale_beyond_bound: u64,
    /// Reads that missed an update which had returned before they started (within the bound or not).
    pub(crate) stale_within_bound: u64,
    /// The longest time by which any read lagged behind a returned update.
    pub(crate) max_staleness: Duration,
}

/// A read that missed an update which had returned before the read started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Late {
    /// Index of the read.
    pub(crate) read: usize,
    /// Index of the missed update that exceeds its promise the most.
    pub(crate) missed: usize,
    /// How long before the read started that update had returned.
    pub(crate) lag: Duration,
    /// Whether that is longer than the update's promise allows.
    pub(crate) beyond: bool,
}

/// Every read that missed an update which had returned before it started. `promised(i)` is how
/// long after update `i` returned a read may still miss it.
///
/// Per key, the updates are sorted by version and two suffix minima are kept: the earliest
/// return, and the earliest moment a read may no longer miss the update (return plus promise).
/// A read missed a promise if that moment, over the versions newer than the one it saw, came
/// before it started; it lagged at all if the earliest return did. Each read costs a binary
/// search: O((reads + updates) log updates) in all.
pub(crate) fn late_reads(
    updates: &[Update],
    reads: &[Read],
    promised: impl Fn(usize) -> Duration,
) -> Vec<Late> {
    /// Per key: update indexes by version, and for each position the index of the earliest
    /// return and of the earliest due time among it and all newer versions.
    struct Key {
        by_version: Vec<usize>,
        earliest_return: Vec<usize>,
        earliest_due: Vec<usize>,
    }
    let due = |i: usize| updates[i].returned + promised(i);
    let mut by_key: HashMap<u64, Vec<usize>> = HashMap::new();
    for (index, update) in updates.iter().enumerate() {
        by_key.entry(update.key).or_default().push(index);
    }
    let keys: HashMap<u64, Key> = by_key
        .into_iter()
        .map(|(key, mut by_version)| {
            by_version.sort_by_key(|&i| updates[i].version);
            let mut earliest_return = by_version.clone();
            let mut earliest_due = by_version.clone();
            for pos in (0..by_version.len().saturating_sub(1)).rev() {
                let (here, next) = (earliest_return[pos], earliest_return[pos + 1]);
                if updates[next].returned < updates[here].returned {
                    earliest_return[pos] = next;
                }
                let (here, next) = (earliest_due[pos], earliest_due[pos + 1]);
                if due(next) < due(here) {
                    earliest_due[pos] = next;
                }
            }
            (
                key,
                Key {
                    by_version,
                    earliest_return,
                    earliest_due,
                },
            )
        })
        .collect();
    let mut late = Vec::new();
    for (index, read) in reads.iter().enumerate() {
        let Some(key) = keys.get(&read.key) else {
            continue;
        };
        let newer = key
            .by_version
            .partition_point(|&i| updates[i].version <= read.version);
        if newer == key.by_version.len() {
            continue;
        }
        let overdue = key.earliest_due[newer];
        let missed = if due(overdue) < read.started {
            overdue
        } else {
            key.earliest_return[newer]
        };
        let returned = updates[missed].returned;
        if returned < read.started {
            let lag = read.started - returned;
            late.push(Late {
                read: index,
                missed,
                lag,
                beyond: lag > promised(missed),
            });
        }
    }
    late
}

/// What reads saw, as updates known to have committed: each (key, version) once, at the end of
/// the first read that returned it. Writes whose callers never learned the outcome (a request
/// that timed out, a node killed mid-write) are judged this way, as Jepsen judges indeterminate
/// operations: once a read has returned a version, every read that starts more than the bound
/// later must return it or a newer one.
pub(crate) fn first_seen(reads: impl IntoIterator<Item = (u64, u64, Instant)>) -> Vec<Update> {
    let mut first: HashMap<(u64, u64), Instant> = HashMap::new();
    for (key, version, ended) in reads {
        first
            .entry((key, version))
            .and_modify(|at| *at = (*at).min(ended))
            .or_insert(ended);
    }
    first
        .into_iter()
        .map(|((key, version), returned)| Update {
            key,
            version,
            returned,
        })
        .collect()
}

/// Sums up late reads.
pub(crate) fn verdict(late: &[Late]) -> Verdict {
    let mut verdict = Verdict::default();
    for late in late {
        verdict.max_staleness = verdict.max_staleness.max(late.lag);
        if late.beyond {
            verdict.stale_beyond_bound += 1;
        } else {
            verdict.stale_within_bound += 1;
        }
    }
    verdict
}

/// Checks every read against the updates of its key, all promised within `bound`.
pub(crate) fn judge(updates: &[Update], reads: &[Read], bound: Duration) -> Verdict {
    verdict(&late_reads(updates, reads, |_| bound))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fast judgment agrees with the definition, checked read by read against every update:
    /// a read is beyond its promise exactly when some newer version returned more than its
    /// promise before the read started, and late at all when one returned before it started.
    #[test]
    fn the_judgment_matches_the_definition_on_random_histories() {
        let t = Instant::now();
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = |below: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % below
        };
        for _ in 0..300 {
            let updates: Vec<Update> = (0..next(30))
                .map(|_| Update {
                    key: next(3),
                    version: 1 + next(20),
                    returned: at(t, next(2_000)),
                })
                .collect();
            let reads: Vec<Read> = (0..next(30))
                .map(|_| Read {
                    key: next(3),
                    version: next(21),
                    started: at(t, next(2_500)),
                })
                .collect();
            let promised =
                |i: usize| Duration::from_millis(if i.is_multiple_of(2) { 0 } else { 300 });
            let late = late_reads(&updates, &reads, promised);
            for (r, read) in reads.iter().enumerate() {
                let newer = || {
                    updates.iter().enumerate().filter(move |(_, u)| {
                        u.key == read.key && u.version > read.version && u.returned < read.started
                    })
                };
                let beyond = newer().any(|(i, u)| read.started - u.returned > promised(i));
                let found = late.iter().find(|l| l.read == r);
                assert_eq!(found.is_some(), newer().next().is_some(), "read {r} late");
                assert_eq!(found.is_some_and(|l| l.beyond), beyond, "read {r} beyond");
            }
        }
    }

    /// A write whose caller timed out is not in the history, but a read returned its version:
    /// a read more than the bound after that, returning an older version, is caught.
    #[test]
    fn a_version_once_read_is_owed_to_every_later_read() {
        let t = Instant::now();
        let seen = first_seen([(1, 5, at(t, 110)), (1, 5, at(t, 300)), (1, 4, at(t, 50))]);
        assert_eq!(seen.len(), 2);
        let five = seen.iter().find(|u| u.version == 5).unwrap();
        assert_eq!(five.returned, at(t, 110), "the first read to return it");
        let reads = [
            Read {
                key: 1,
                version: 4,
                started: at(t, 400),
            },
            Read {
                key: 1,
                version: 4,
                started: at(t, 700),
            },
        ];
        let verdict = judge(&seen, &reads, Duration::from_millis(500));
        assert_eq!(verdict.stale_within_bound, 1);
        assert_eq!(verdict.stale_beyond_bound, 1);
    }

    fn at(origin: Instant, ms: u64) -> Instant {
        origin + Duration::from_millis(ms)
    }

    #[test]
    fn reads_of_the_newest_version_are_fresh() {
        let t = Instant::now();
        let updates = [Update {
            key: 1,
            version: 2,
            returned: at(t, 10),
        }];
        let reads = [
            Read {
                key: 1,
                version: 2,
                started: at(t, 1_000),
            },
            Read {
                key: 1,
                version: 1,
                started: at(t, 5),
            },
            Read {
                key: 2,
                version: 1,
                started: at(t, 1_000),
            },
        ];
        assert_eq!(
            judge(&updates, &reads, Duration::from_millis(100)),
            Verdict::default()
        );
    }

    #[test]
    fn a_read_missing_an_old_update_is_stale_beyond_the_bound() {
        let t = Instant::now();
        let updates = [
            Update {
                key: 1,
                version: 2,
                returned: at(t, 10),
            },
            Update {
                key: 1,
                version: 3,
                returned: at(t, 200),
            },
        ];
        let reads = [
            Read {
                key: 1,
                version: 1,
                started: at(t, 150),
            },
            Read {
                key: 1,
                version: 2,
                started: at(t, 250),
            },
            Read {
                key: 1,
                version: 1,
                started: at(t, 300),
            },
        ];
        let late = late_reads(&updates, &reads, |_| Duration::from_millis(100));
        assert_eq!(
            late.iter().map(|l| (l.read, l.missed)).collect::<Vec<_>>(),
            [(0, 0), (1, 1), (2, 0)],
            "each late read names the update it missed by the most"
        );
        let strict_second = late_reads(&updates, &reads, |i| Duration::from_millis([1_000, 0][i]));
        assert_eq!(
            strict_second
                .iter()
                .map(|l| (l.missed, l.beyond))
                .collect::<Vec<_>>(),
            [(0, false), (1, true), (1, true)],
            "an update promised at once counts even when an older, laxer one was missed"
        );
        let verdict = judge(&updates, &reads, Duration::from_millis(100));
        assert_eq!(verdict.stale_beyond_bound, 2, "{verdict:?}");
        assert_eq!(verdict.stale_within_bound, 1);
        assert_eq!(verdict.max_staleness, Duration::from_millis(290));
    }

    /// Both ends of the definition are exclusive: an update that returned exactly when a read
    /// started was not missed, and a read that started exactly the bound after it is within it.
    #[test]
    fn the_return_instant_and_the_bound_are_exclusive() {
        let t = Instant::now();
        let updates = [Update {
            key: 1,
            version: 2,
            returned: at(t, 100),
        }];
        let reads = [100, 200, 201].map(|ms| Read {
            key: 1,
            version: 1,
            started: at(t, ms),
        });
        let late = late_reads(&updates, &reads, |_| Duration::from_millis(100));
        assert_eq!(
            late.iter().map(|l| (l.read, l.beyond)).collect::<Vec<_>>(),
            [(1, false), (2, true)]
        );
    }
}
