//! The fault schedule of a check: pure, drawn from the seed, so a run can be repeated.
//!
//! Faults come one after another, every kind asked for in turn (in an order drawn from the seed),
//! each lasting long enough to matter against the bound Δ: a pause or a partition outlasts Δ, a
//! slow link holds frames back for more than Δ.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};

/// A kind of fault `cohort check` can inject.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum)]
pub(crate) enum FaultKind {
    /// SIGKILL a node, restart it a little later.
    Kill,
    /// SIGSTOP a node, SIGCONT it a little later; half the time its peer links are cut for as
    /// long, as when a whole machine freezes. Meanwhile an outside writer changes many rows, then
    /// every key the clients use: the node resumes behind a long backlog.
    Pause,
    /// Cut a minority of nodes off from the others, both ways, then heal.
    Partition,
    /// Drop a share of the encrypted messages on every peer link (each loss breaks its link).
    Drop,
    /// Hold every message on every peer link back for longer than the bound.
    Slow,
    /// Update rows with plain SQL, through no node.
    External,
    /// Freeze the database for the nodes (Postgres only): every byte between them and the server
    /// held, connections left open, for longer than the bound, while plain SQL renames every key.
    #[value(name = "dbpause")]
    DbPause,
}

impl FaultKind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Kill => "kill",
            Self::Pause => "pause",
            Self::Partition => "partition",
            Self::Drop => "drop",
            Self::Slow => "slow",
            Self::External => "external",
            Self::DbPause => "dbpause",
        }
    }
}

/// What one fault does.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Action {
    Kill { node: usize },
    Pause { node: usize, machine: bool },
    Partition { side: Vec<usize> },
    Drop { share: f64 },
    Slow { delay: Duration },
    External { writes: u32 },
    DbPause,
}

/// A fault, when it starts (from the start of the workload) and how long it lasts.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Planned {
    pub(crate) kind: FaultKind,
    pub(crate) action: Action,
    pub(crate) at: Duration,
    pub(crate) lasts: Duration,
}

/// The faults of a run of `duration` over `nodes` nodes with bound `bound`, from `seed`. Every
/// fault ends at least one bound before the run does, so the last reads are judged after healing.
pub(crate) fn plan(
    kinds: &[FaultKind],
    nodes: usize,
    duration: Duration,
    bound: Duration,
    seed: u64,
) -> Vec<Planned> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut order = kinds.to_vec();
    order.sort_unstable();
    order.dedup();
    let mut planned = Vec::new();
    if order.is_empty() || nodes == 0 {
        return planned;
    }
    let mut at = Duration::from_millis(500);
    let end = duration.saturating_sub(bound);
    'rounds: loop {
        order.shuffle(&mut rng);
        for &kind in &order {
            let ms = |rng: &mut StdRng, low: Duration, high: Duration| {
                Duration::from_millis(
                    rng.random_range(low.as_millis() as u64..=high.as_millis() as u64),
                )
            };
            let (action, lasts) = match kind {
                FaultKind::Kill => (
                    Action::Kill {
                        node: rng.random_range(0..nodes),
                    },
                    ms(&mut rng, bound, bound * 3),
                ),
                FaultKind::Pause => (
                    Action::Pause {
                        node: rng.random_range(0..nodes),
                        machine: rng.random_bool(0.5),
                    },
                    ms(&mut rng, bound + bound / 5, bound * 4),
                ),
                FaultKind::Partition => {
                    let mut all: Vec<usize> = (0..nodes).collect();
                    all.shuffle(&mut rng);
                    let minority = rng.random_range(1..=(nodes.saturating_sub(1) / 2).max(1));
                    all.truncate(minority);
                    all.sort_unstable();
                    (
                        Action::Partition { side: all },
                        ms(&mut rng, bound * 2, bound * 6),
                    )
                }
                FaultKind::Drop => (
                    Action::Drop {
                        share: rng.random_range(0.05..0.4),
                    },
                    ms(&mut rng, bound * 2, bound * 5),
                ),
                FaultKind::Slow => (
                    Action::Slow {
                        delay: bound + ms(&mut rng, bound / 10, bound / 2),
                    },
                    ms(&mut rng, bound * 2, bound * 4),
                ),
                FaultKind::External => (
                    Action::External {
                        writes: rng.random_range(1..=5),
                    },
                    Duration::ZERO,
                ),
                FaultKind::DbPause => (Action::DbPause, ms(&mut rng, bound + bound / 5, bound * 4)),
            };
            if at + lasts > end {
                break 'rounds;
            }
            planned.push(Planned {
                kind,
                action,
                at,
                lasts,
            });
            at += lasts + ms(&mut rng, bound / 2, bound * 2);
        }
    }
    planned
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUND: Duration = Duration::from_millis(500);
    const ALL: [FaultKind; 7] = [
        FaultKind::Kill,
        FaultKind::Pause,
        FaultKind::Partition,
        FaultKind::Drop,
        FaultKind::Slow,
        FaultKind::External,
        FaultKind::DbPause,
    ];

    #[test]
    fn a_seed_gives_the_same_plan() {
        let a = plan(&ALL, 3, Duration::from_secs(30), BOUND, 7);
        assert_eq!(a, plan(&ALL, 3, Duration::from_secs(30), BOUND, 7));
        assert_ne!(a, plan(&ALL, 3, Duration::from_secs(30), BOUND, 8));
    }

    #[test]
    fn every_kind_comes_and_faults_do_not_overlap_or_overrun() {
        let duration = Duration::from_secs(30);
        let faults = plan(&ALL, 3, duration, BOUND, 7);
        for kind in ALL {
            assert!(faults.iter().any(|f| f.kind == kind), "{kind:?} missing");
        }
        for pair in faults.windows(2) {
            assert!(pair[0].at + pair[0].lasts < pair[1].at);
        }
        let last = faults.last().unwrap();
        assert!(last.at + last.lasts <= duration - BOUND);
    }

    #[test]
    fn a_partition_cuts_off_a_minority() {
        for seed in 0..50 {
            for fault in plan(
                &[FaultKind::Partition],
                5,
                Duration::from_secs(20),
                BOUND,
                seed,
            ) {
                let Action::Partition { side } = fault.action else {
                    unreachable!()
                };
                assert!(!side.is_empty() && side.len() * 2 < 5, "{side:?}");
            }
        }
    }

    #[test]
    fn pauses_and_partitions_outlast_the_bound() {
        for fault in plan(&ALL, 3, Duration::from_secs(60), BOUND, 3) {
            if matches!(
                fault.action,
                Action::Pause { .. } | Action::Partition { .. } | Action::DbPause
            ) {
                assert!(fault.lasts > BOUND);
            }
        }
    }
}
