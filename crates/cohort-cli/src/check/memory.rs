//! The checked nodes' resident memory over the run: sampled from `/proc`, summed up per node as
//! start, end, peak and how fast it still grew over the second half and the last third of the
//! last process's life, and judged: a node whose memory still grows under steady load, faster
//! than filling its bounded buffers could explain, fails the check.
//!
//! Growth is judged over the last third of a life of at least [`JUDGED_LIFE`]. Under a steady
//! load a bounded buffer fills at a steady rate until it is full, then stays flat; one that is
//! still filling at the end of a life of L minutes has been filling all along, so it grew by less
//! than its capacity C over L minutes: never faster than C / L. A leak keeps its rate however
//! long the run, while that allowance shrinks as the run goes on, so a long enough run tells one
//! from the other. The allowance never goes below [`GROWTH_FLOOR`], the wander of a flat process's
//! resident size (the allocator returning and taking back pages).

use std::fmt;
use std::time::Duration;

use crate::serve;

/// Samples kept of one process life. When full, every other one is dropped and samples are kept
/// half as often from then on, so the kept ones stay evenly spread over the whole life and a run
/// of any length costs the same.
const KEPT: usize = 512;

/// Lives shorter than this are not judged for growth: too short to tell a filling buffer from a
/// leak.
pub(crate) const JUDGED_LIFE: Duration = Duration::from_secs(5 * 60);

/// The least growth a minute allowed, however long the life: 256 KiB a minute.
pub(crate) const GROWTH_FLOOR: f64 = (256 << 10) as f64;

/// Growth beyond the bounded buffers allowed for the allocator's own keeping (fragmentation,
/// per-thread arenas).
pub(crate) const ALLOCATOR_SLACK: u64 = 8 << 20;

/// SQLite's page cache on each database connection (its default `cache_size`, 2,000 KiB).
const SQLITE_PAGE_CACHE: u64 = 2_000 << 10;

/// What a node's users may take in its cache, each, at most (a small row, a key, bookkeeping).
const CACHED_USER: u64 = 1 << 10;

/// What a node's bounded buffers may take in all, for judging whether its memory still grows:
/// its replay buffer, SQLite's page cache on each of its database connections (counted on
/// Postgres too), and the users the clients read, in its cache.
pub(crate) fn bounded_buffers(keys: u64) -> u64 {
    cohort::DEFAULT_REPLAY_BUFFER as u64
        + u64::from(serve::DB_CONNECTIONS) * SQLITE_PAGE_CACHE
        + keys * CACHED_USER
}

/// One node's samples over its last process's life (one a second, thinned as it goes on).
#[derive(Debug)]
pub(crate) struct Samples {
    pid: Option<u32>,
    /// (time since the start of the run, resident bytes), the first sample of the life included.
    kept: Vec<(Duration, u64)>,
    /// Samples of this life so far, kept or not.
    seen: u64,
    /// Every `stride`-th sample is kept.
    stride: u64,
    peak: u64,
    /// The latest sample, kept or not.
    last: Option<(Duration, u64)>,
}

impl Default for Samples {
    fn default() -> Self {
        Self {
            pid: None,
            kept: Vec::new(),
            seen: 0,
            stride: 1,
            peak: 0,
            last: None,
        }
    }
}

impl Samples {
    /// Records `pid`'s resident memory now (`at` into the run); a process gone meanwhile is
    /// skipped.
    pub(crate) fn sample(&mut self, pid: u32, at: Duration) {
        if let Some(rss) = resident_bytes(pid) {
            self.record(pid, at, rss);
        }
    }

    /// Records that `pid` held `rss` bytes `at` into the run; a new process starts a new life.
    fn record(&mut self, pid: u32, at: Duration, rss: u64) {
        if self.pid != Some(pid) {
            *self = Self {
                pid: Some(pid),
                ..Self::default()
            };
        }
        if self.seen.is_multiple_of(self.stride) {
            if self.kept.len() == KEPT {
                let mut index = 0;
                self.kept.retain(|_| {
                    index += 1;
                    index % 2 == 1
                });
                self.stride *= 2;
            }
            if self.seen.is_multiple_of(self.stride) {
                self.kept.push((at, rss));
            }
        }
        self.seen += 1;
        self.peak = self.peak.max(rss);
        self.last = Some((at, rss));
    }

    /// The samples of the node's last process, summed up; `None` without any.
    pub(crate) fn summary(&self) -> Option<Summary> {
        let (last_at, end) = self.last?;
        let &(first_at, start) = self.kept.first()?;
        let mut samples = self.kept.clone();
        if samples.last() != Some(&(last_at, end)) {
            samples.push((last_at, end));
        }
        let life = last_at - first_at;
        let middle = first_at + life / 2;
        let (mid_at, mid) = samples
            .iter()
            .copied()
            .find(|&(at, _)| at >= middle)
            .unwrap_or((last_at, end));
        let minutes = (last_at - mid_at).as_secs_f64() / 60.0;
        let growth_per_minute = (minutes > 0.0).then(|| (end as f64 - mid as f64) / minutes);
        let last_third: Vec<_> = samples
            .iter()
            .copied()
            .filter(|&(at, _)| at >= first_at + life * 2 / 3)
            .collect();
        Some(Summary {
            start,
            end,
            peak: self.peak,
            life,
            growth_per_minute,
            last_third_per_minute: slope_per_minute(&last_third),
        })
    }
}

/// The least-squares slope of `samples`, in bytes a minute; `None` for fewer than two instants.
fn slope_per_minute(samples: &[(Duration, u64)]) -> Option<f64> {
    let n = samples.len() as f64;
    let minutes = |at: Duration| at.as_secs_f64() / 60.0;
    let mean_t = samples.iter().map(|&(at, _)| minutes(at)).sum::<f64>() / n;
    let mean_m = samples.iter().map(|&(_, rss)| rss as f64).sum::<f64>() / n;
    let (mut covariance, mut variance) = (0.0, 0.0);
    for &(at, rss) in samples {
        let dt = minutes(at) - mean_t;
        covariance += dt * (rss as f64 - mean_m);
        variance += dt * dt;
    }
    (variance > 0.0).then(|| covariance / variance)
}

/// A node's memory over its last process's life.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Summary {
    pub(crate) start: u64,
    pub(crate) end: u64,
    pub(crate) peak: u64,
    /// From the first sample to the last.
    pub(crate) life: Duration,
    /// Bytes a minute over the second half; `None` for a life too short to tell.
    pub(crate) growth_per_minute: Option<f64>,
    /// Bytes a minute over the last third, fitted by least squares; `None` for a life too short
    /// to tell.
    pub(crate) last_third_per_minute: Option<f64>,
}

impl Summary {
    /// The most the memory may grow a minute over the last third of this life while only filling
    /// buffers of `bounded` bytes in all: twice their capacity spread evenly over the life (a
    /// buffer that fills late or in bursts may come near once that); `None` for a life shorter
    /// than [`JUDGED_LIFE`].
    pub(crate) fn allowed_growth(&self, bounded: u64) -> Option<f64> {
        (self.life >= JUDGED_LIFE)
            .then(|| (2.0 * bounded as f64 / (self.life.as_secs_f64() / 60.0)).max(GROWTH_FLOOR))
    }

    /// Why this life fails the check, if it does: its memory grew past what buffers of `bounded`
    /// bytes (and the allocator's slack) can hold, or still grew over the last third faster than
    /// filling them could explain.
    pub(crate) fn still_growing(&self, bounded: u64) -> Option<String> {
        let allowed = self.allowed_growth(bounded)?;
        let grown = self.end.saturating_sub(self.start);
        let plateau = bounded + ALLOCATOR_SLACK;
        if grown > plateau {
            return Some(format!(
                "its memory grew by {:.1} MB over its {:.1}-minute life, more than its bounded \
                 buffers ({:.0} MB) and the allocator's slack ({:.0} MB) hold",
                mb(grown as f64),
                self.life.as_secs_f64() / 60.0,
                mb(bounded as f64),
                mb(ALLOCATOR_SLACK as f64),
            ));
        }
        let growth = self.last_third_per_minute?;
        (growth > allowed).then(|| {
            format!(
                "its memory still grows: {:+.2} MB/min over the last third of its {:.1}-minute \
                 life, faster than filling its bounded buffers ({:.0} MB) explains ({:.2} MB/min)",
                mb(growth),
                self.life.as_secs_f64() / 60.0,
                mb(bounded as f64),
                mb(allowed),
            )
        })
    }
}

fn mb(bytes: f64) -> f64 {
    bytes / (1 << 20) as f64
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "start {:.1} MB, end {:.1} MB, peak {:.1} MB",
            mb(self.start as f64),
            mb(self.end as f64),
            mb(self.peak as f64)
        )?;
        if let Some(growth) = self.growth_per_minute {
            write!(f, ", {:+.2} MB/min over the second half", mb(growth))?;
        }
        if let Some(growth) = self.last_third_per_minute {
            write!(f, ", {:+.2} MB/min over the last third", mb(growth))?;
        }
        Ok(())
    }
}

/// This process's peak resident memory (`VmHWM` in `/proc/self/status`).
pub(crate) fn own_peak() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?;
    let kib: u64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    Some(kib << 10)
}

/// A process's resident memory, from `/proc/<pid>/statm`.
fn resident_bytes(pid: u32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    /// Samples of `pid` once a second for `secs` seconds from `from`, of `rss(second)` bytes.
    fn life(samples: &mut Samples, pid: u32, from: u64, secs: u64, rss: impl Fn(u64) -> u64) {
        for s in 0..=secs {
            samples.record(pid, Duration::from_secs(from + s), rss(s));
        }
    }

    #[test]
    fn the_summary_covers_the_last_process_only() {
        let mut samples = Samples::default();
        life(&mut samples, 1, 0, 60, |s| (100 + s) * MIB);
        life(&mut samples, 2, 120, 180, |s| 10 * MIB + s * MIB / 6);
        let summary = samples.summary().unwrap();
        assert_eq!(
            summary.start,
            10 * MIB,
            "the restarted process's first sample"
        );
        assert_eq!(summary.end, 40 * MIB);
        assert_eq!(summary.peak, 40 * MIB);
        assert_eq!(summary.life, Duration::from_secs(180));
        for growth in [summary.growth_per_minute, summary.last_third_per_minute] {
            let growth = growth.unwrap();
            assert!((growth - (10 * MIB) as f64).abs() < 1.0, "{growth}");
        }
        assert!(Samples::default().summary().is_none());
    }

    /// A day of samples keeps no more than a few hundred, spread over the whole life.
    #[test]
    fn a_long_life_keeps_a_bounded_number_of_samples() {
        let mut samples = Samples::default();
        life(&mut samples, 1, 0, 86_400, |s| MIB + s);
        assert!(samples.kept.len() <= KEPT);
        assert!(samples.kept.len() >= KEPT / 2);
        let summary = samples.summary().unwrap();
        assert_eq!(summary.start, MIB);
        assert_eq!(summary.end, MIB + 86_400);
        assert_eq!(summary.life, Duration::from_secs(86_400));
        let growth = summary.last_third_per_minute.unwrap();
        assert!((growth - 60.0).abs() < 0.01, "{growth}");
        let gaps: Vec<Duration> = samples.kept.windows(2).map(|w| w[1].0 - w[0].0).collect();
        assert!(gaps.iter().all(|&gap| gap == gaps[0]), "evenly spread");
    }

    /// The data behind the rule: a node that fills a 16 MiB ring at 0.5 MiB a minute over 30
    /// minutes (still filling at the end) passes, as does one that filled it early and stayed
    /// flat; one that leaks 1.5 MiB a minute fails (past its buffers), as does one that starts
    /// leaking late (by its slope alone), and one that leaks more slowly than the ring fills fails
    /// once it has grown past what the buffers could hold.
    #[test]
    fn memory_that_still_grows_fails_unless_bounded_buffers_explain_it() {
        let bounded = 32 * MIB;
        let minutes = |m: u64| m * 60;
        let judge = |secs: u64, rss: &dyn Fn(u64) -> u64| {
            let mut samples = Samples::default();
            life(&mut samples, 1, 0, secs, rss);
            samples.summary().unwrap().still_growing(bounded)
        };
        let filling = |s: u64| 20 * MIB + (s * MIB / 120).min(16 * MIB);
        assert_eq!(judge(minutes(30), &filling), None, "a ring still filling");
        let filled_early = |s: u64| 20 * MIB + (s * MIB / 20).min(16 * MIB);
        assert_eq!(judge(minutes(30), &filled_early), None, "a plateau");
        let noisy = |s: u64| 20 * MIB + if s % 7 < 3 { 2 * MIB } else { 0 };
        assert_eq!(judge(minutes(120), &noisy), None, "a flat, noisy plateau");
        let leak = |s: u64| 20 * MIB + s * MIB * 3 / 120;
        let failure = judge(minutes(30), &leak).expect("a leak of 1.5 MiB/min fails");
        assert!(failure.contains("grew by 45.0 MB"), "{failure}");
        let late_leak = |s: u64| 20 * MIB + s.saturating_sub(minutes(40)) * MIB * 3 / 120;
        let failure = judge(minutes(60), &late_leak).expect("a leak starting late fails");
        assert!(failure.contains("+1.50 MB/min"), "{failure}");
        let slow_leak = |s: u64| 20 * MIB + s * MIB / 150;
        assert_eq!(
            judge(minutes(30), &slow_leak),
            None,
            "0.4 MiB/min: as a ring filling"
        );
        assert!(
            judge(minutes(180), &slow_leak).is_some(),
            "but not for 3 hours"
        );
        assert_eq!(
            judge(minutes(4), &leak),
            None,
            "a life shorter than {JUDGED_LIFE:?} is not judged"
        );
    }

    #[test]
    fn this_process_can_be_sampled() {
        let mut samples = Samples::default();
        samples.sample(std::process::id(), Duration::ZERO);
        let end = samples.summary().map(|s| s.end).unwrap();
        assert!(end > 0);
        assert!(
            own_peak().is_some_and(|peak| peak >= end / 2),
            "{:?}",
            own_peak()
        );
    }
}
