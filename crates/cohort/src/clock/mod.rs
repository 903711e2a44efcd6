//! Monotonic time cheap enough for the hit path.
//!
//! A hit must cost about as much as a bare map lookup, so reading the time on it has to cost a few
//! nanoseconds, not the ~35 ns of a precise clock in a VM (it reads the TSC). On Linux this reads
//! `CLOCK_MONOTONIC_COARSE` through the vDSO (no syscall; see `os`); it advances in steps of
//! one kernel tick (up to 4 ms), so it may read up to [`Clock::resolution`] behind the true time.
//! A deadline that must never be passed (the poll lease) is shortened by that much. Unit tests
//! drive a manual clock.

#[cfg(target_os = "linux")]
mod os;

#[cfg(test)]
use std::sync::Arc;
#[cfg(test)]
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Milliseconds on a monotonic clock whose origin is unspecified but fixed for the process.
pub(crate) type Millis = u64;

/// Which clock a node reads for its leases and expiries; see
/// [`ClusterBuilder::time_source`](crate::ClusterBuilder::time_source).
///
/// ```
/// use std::time::Duration;
///
/// fn simulated() -> Duration {
///     Duration::from_secs(1) // e.g. turmoil::sim_elapsed().unwrap_or_default()
/// }
///
/// let mut builder = cohort::Cluster::builder();
/// builder.time_source(cohort::TimeSource::Custom(simulated));
/// ```
#[derive(Clone, Copy, Debug, Default)]
#[non_exhaustive]
pub enum TimeSource {
    /// The operating system's monotonic clock, at coarse resolution (a few nanoseconds a read).
    /// It keeps counting while the process is stopped (`SIGSTOP`, a frozen cgroup, a paused
    /// container), but not while the whole machine is suspended: on a machine that may sleep
    /// and wake with the process still running, use [`SuspendAware`](Self::SuspendAware).
    #[default]
    System,
    /// The operating system's clock that also counts time the machine spent suspended
    /// (`CLOCK_BOOTTIME` on Linux), read precisely: about 35 ns a read where the coarse clock
    /// takes 5 (measured on a 2-vCPU VM), so every hit costs that much more.
    SuspendAware,
    /// tokio's clock, which tests can pause. Slower to read.
    Tokio,
    /// The time since some fixed origin, as the function says; it must never go back. For a
    /// simulation whose hosts each run their own tokio clock (turmoil's: a host restarted
    /// mid-run starts a clock of its own), where caches are called from other hosts: every host
    /// then reads the one simulated time, e.g. `turmoil::sim_elapsed`.
    Custom(fn() -> Duration),
}

/// Where a node reads the time on its hit path.
#[derive(Clone, Debug, Default)]
pub(crate) enum Clock {
    /// The operating system's monotonic clock, at coarse resolution.
    #[default]
    System,
    /// The operating system's clock that counts suspended time too.
    SuspendAware,
    /// tokio's clock, counted from `origin`.
    Tokio(tokio::time::Instant),
    /// The application's clock.
    Custom(fn() -> Duration),
    /// A clock that moves only when told to.
    #[cfg(test)]
    Manual(Arc<AtomicU64>),
}

impl From<TimeSource> for Clock {
    fn from(source: TimeSource) -> Self {
        match source {
            TimeSource::System => Self::System,
            TimeSource::SuspendAware => Self::SuspendAware,
            TimeSource::Tokio => Self::Tokio(tokio::time::Instant::now()),
            TimeSource::Custom(now) => Self::Custom(now),
        }
    }
}

impl Clock {
    /// A clock starting at `start` that only moves through [`Clock::advance`].
    #[cfg(test)]
    pub(crate) fn manual(start: Millis) -> Self {
        Self::Manual(Arc::new(AtomicU64::new(start)))
    }

    /// Moves a manual clock forward; a system clock ignores it.
    #[cfg(test)]
    pub(crate) fn advance(&self, by: Duration) {
        if let Self::Manual(now) = self {
            now.fetch_add(millis(by), Ordering::Relaxed);
        }
    }

    /// The current time.
    #[inline]
    pub(crate) fn now(&self) -> Millis {
        // The system clock is every production node's: one compare, and the rest out of line.
        if let Self::System = self {
            system_now()
        } else {
            self.other_now()
        }
    }

    #[cold]
    #[inline(never)]
    fn other_now(&self) -> Millis {
        match self {
            Self::System => system_now(),
            Self::SuspendAware => suspend_aware_now(),
            Self::Tokio(origin) => millis(origin.elapsed()),
            Self::Custom(now) => millis(now()),
            #[cfg(test)]
            Self::Manual(now) => now.load(Ordering::Relaxed),
        }
    }

    /// How far behind the true time a reading may be.
    pub(crate) fn resolution(&self) -> Millis {
        match self {
            Self::System => system_resolution(),
            // Read to the nanosecond, truncated to the millisecond.
            Self::SuspendAware => 1,
            Self::Tokio(_) | Self::Custom(_) => 0,
            #[cfg(test)]
            Self::Manual(_) => 0,
        }
    }

    /// The deadline `after` from now; saturates instead of overflowing.
    #[inline]
    pub(crate) fn deadline(&self, after: Duration) -> Millis {
        self.now().saturating_add(millis(after))
    }
}

/// Whole milliseconds in `d`, rounded up so that a non-zero duration never becomes zero.
pub(crate) fn millis(d: Duration) -> Millis {
    u64::try_from(d.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX)
}

#[cfg(target_os = "linux")]
use os::{boottime_now as suspend_aware_now, now as system_now, resolution as system_resolution};

#[cfg(not(target_os = "linux"))]
fn system_resolution() -> Millis {
    1
}

/// Elsewhere, the monotonic clock std offers is the best there is.
#[cfg(not(target_os = "linux"))]
fn suspend_aware_now() -> Millis {
    system_now()
}

#[cfg(not(target_os = "linux"))]
fn system_now() -> Millis {
    use std::sync::OnceLock;
    use std::time::Instant;
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    millis(ORIGIN.get_or_init(Instant::now).elapsed())
}

/// The node's hit-path clock read, in milliseconds, for `cohort bench`'s clocked floor (the bare
/// map behind the same read); not part of the API.
#[doc(hidden)]
#[inline]
pub fn coarse_now() -> u64 {
    system_now()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_clock_is_monotonic_and_moves() {
        let clock = Clock::System;
        let first = clock.now();
        std::thread::sleep(Duration::from_millis(20));
        let second = clock.now();
        assert!(second >= first + 10, "{first} -> {second}");
    }

    #[test]
    fn system_resolution_is_a_few_milliseconds_at_most() {
        let resolution = Clock::System.resolution();
        assert!((1..=20).contains(&resolution), "{resolution} ms");
    }

    #[test]
    fn manual_clock_moves_only_when_advanced() {
        let clock = Clock::manual(100);
        assert_eq!(clock.now(), 100);
        clock.advance(Duration::from_micros(1_500));
        assert_eq!(clock.now(), 102);
        assert_eq!(clock.deadline(Duration::from_millis(5)), 107);
    }

    #[test]
    fn millis_rounds_up_and_saturates() {
        assert_eq!(millis(Duration::ZERO), 0);
        assert_eq!(millis(Duration::from_nanos(1)), 1);
        assert_eq!(millis(Duration::MAX), u64::MAX);
    }
}
