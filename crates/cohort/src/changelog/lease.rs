//! The poll lease: whether a node may serve a cache's values right now.
//!
//! A poll of the change log sees every change committed before the poll started. So a node whose
//! last complete poll started at `s` has applied every change committed before `s`, and a value it
//! serves at time `t < s + Δ` is at most Δ stale. The lease records `s + Δ` and the hit path
//! compares it with the clock: no background task has to notice that the node was paused or cut
//! off, because time alone ends the lease. The clock is the coarse one, which may read up to its
//! resolution behind, so the deadline is shortened by that much.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::clock::{Clock, Millis, millis};

/// The end of one cache's lease on one node, as a coarse-clock reading. Zero: never granted.
#[derive(Debug, Default)]
pub(crate) struct Lease {
    until: AtomicU64,
}

impl Lease {
    /// Whether values may be served now.
    #[inline]
    pub(crate) fn is_valid(&self, clock: &Clock) -> bool {
        clock.now() < self.until.load(Ordering::Acquire)
    }

    /// A poll that started at `started` (read from `clock`) completed: serve until `started + bound`,
    /// less the clock's resolution. Never moves the deadline back, so a slow poll that finishes
    /// after a faster, later one cannot shorten the lease.
    pub(crate) fn renew(&self, clock: &Clock, started: Millis, bound: Duration) {
        let until = started
            .saturating_add(millis(bound))
            .saturating_sub(clock.resolution());
        self.until.fetch_max(until, Ordering::AcqRel);
    }

    /// How long the lease still runs, if it does.
    pub(crate) fn remaining(&self, clock: &Clock) -> Option<Duration> {
        let until = self.until.load(Ordering::Acquire);
        let now = clock.now();
        (now < until).then(|| Duration::from_millis(until - now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_is_invalid_until_granted() {
        let clock = Clock::manual(1_000);
        assert!(!Lease::default().is_valid(&clock));
    }

    #[test]
    fn a_lease_runs_for_the_bound_from_the_poll_start() {
        let clock = Clock::manual(1_000);
        let lease = Lease::default();
        clock.advance(Duration::from_millis(30));
        // The poll started at 1_000 and took 30 ms: the lease runs from its start, not its end.
        lease.renew(&clock, 1_000, Duration::from_millis(100));
        assert!(lease.is_valid(&clock));
        assert_eq!(lease.remaining(&clock), Some(Duration::from_millis(70)));
        clock.advance(Duration::from_millis(69));
        assert!(lease.is_valid(&clock));
        clock.advance(Duration::from_millis(1));
        assert!(!lease.is_valid(&clock), "expired exactly at start + bound");
        assert_eq!(lease.remaining(&clock), None);
    }

    #[test]
    fn a_late_renewal_never_shortens_the_lease() {
        let clock = Clock::manual(1_000);
        let lease = Lease::default();
        lease.renew(&clock, 1_050, Duration::from_millis(100));
        lease.renew(&clock, 1_000, Duration::from_millis(100));
        assert_eq!(lease.remaining(&clock), Some(Duration::from_millis(150)));
    }

    #[test]
    fn the_system_clock_lease_keeps_a_margin_of_one_tick() {
        let clock = Clock::System;
        let lease = Lease::default();
        let now = clock.now();
        lease.renew(&clock, now, Duration::from_millis(1_000));
        let remaining = lease.remaining(&clock).unwrap();
        assert!(remaining <= Duration::from_millis(1_000 - clock.resolution()));
    }
}
