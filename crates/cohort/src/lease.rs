//! Leases: whether a node may serve a cache's values right now.
//!
//! A lease is a deadline on the node's coarse monotonic clock. The change log grants one: a poll
//! sees every change committed before it started, so a node whose last complete poll started at
//! `s` may serve until `s + Δ`. Peers grant one too: a node that confirmed at `s` that it applied
//! every event of every live member may serve until `s + Δ`. Either way the hit path compares the
//! deadline with the clock: no background task has to notice that the node was paused or cut off,
//! because time alone ends the lease. The clock is the coarse one, which may read up to its
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
    /// A lease that never ends, whatever renews it: for a node told to ignore leases.
    pub(crate) fn forever() -> Self {
        Self {
            until: AtomicU64::new(Millis::MAX),
        }
    }

    /// Whether values may be served now.
    #[inline]
    pub(crate) fn is_valid(&self, clock: &Clock) -> bool {
        clock.now() < self.until.load(Ordering::Acquire)
    }

    /// What happened at `at` (read from `clock`) proves freshness until `at + bound`, less the
    /// clock's resolution. Never moves the deadline back, so a slow poll that finishes after a
    /// faster, later one cannot shorten the lease.
    pub(crate) fn renew(&self, clock: &Clock, at: Millis, bound: Duration) {
        self.until
            .fetch_max(deadline(clock, at, bound), Ordering::AcqRel);
    }

    /// Sets the deadline to `at + bound` (less the resolution), or ends the lease for `None`; it
    /// may move back, as when a new member must be confirmed before the node serves again.
    pub(crate) fn set(&self, clock: &Clock, at: Option<Millis>, bound: Duration) {
        let until = at.map_or(0, |at| deadline(clock, at, bound));
        self.until.store(until, Ordering::Release);
    }

    /// When the lease was last proven, at the latest: the start of the poll or confirmation that
    /// granted it, read back from the deadline (`until - bound`, which is the grant's clock
    /// reading less the resolution, so never later than the grant). `None` if never granted, or
    /// ended by [`set`](Self::set). What a node held then was current then; see
    /// [`Cache::fetch_or_stale`](crate::Cache::fetch_or_stale).
    pub(crate) fn proven_at(&self, bound: Duration) -> Option<Millis> {
        match self.until.load(Ordering::Acquire) {
            0 => None,
            until => Some(until.saturating_sub(millis(bound))),
        }
    }

    /// How long the lease still runs, if it does.
    pub(crate) fn remaining(&self, clock: &Clock) -> Option<Duration> {
        let until = self.until.load(Ordering::Acquire);
        let now = clock.now();
        (now < until).then(|| Duration::from_millis(until - now))
    }
}

fn deadline(clock: &Clock, at: Millis, bound: Duration) -> Millis {
    at.saturating_add(millis(bound))
        .saturating_sub(clock.resolution())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_forever_outlasts_any_renewal() {
        let clock = Clock::manual(1_000);
        let lease = Lease::forever();
        lease.renew(&clock, 1_000, Duration::from_millis(100));
        clock.advance(Duration::from_secs(3_600));
        assert!(lease.is_valid(&clock));
    }

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
    fn proven_at_is_never_later_than_the_grant() {
        let clock = Clock::manual(1_000);
        let lease = Lease::default();
        assert_eq!(lease.proven_at(Duration::from_millis(100)), None);
        lease.renew(&clock, 1_000, Duration::from_millis(100));
        let proven = lease.proven_at(Duration::from_millis(100)).unwrap();
        assert!(proven <= 1_000 && proven + clock.resolution() >= 1_000);
        lease.set(&clock, None, Duration::from_millis(100));
        assert_eq!(lease.proven_at(Duration::from_millis(100)), None);
    }

    #[test]
    fn set_moves_the_deadline_either_way_and_none_ends_it() {
        let clock = Clock::manual(1_000);
        let lease = Lease::default();
        lease.set(&clock, Some(1_000), Duration::from_millis(100));
        assert_eq!(lease.remaining(&clock), Some(Duration::from_millis(100)));
        lease.set(&clock, Some(950), Duration::from_millis(100));
        assert_eq!(lease.remaining(&clock), Some(Duration::from_millis(50)));
        lease.set(&clock, None, Duration::from_millis(100));
        assert!(!lease.is_valid(&clock));
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
