//! The checked nodes' resident memory over the run: sampled from `/proc`, summed up per node as
//! start, end, peak and how fast it still grew over the second half of the last process's life.

use std::fmt;
use std::time::Duration;

/// One node's samples: (process id, time since the start of the run, resident bytes).
#[derive(Debug, Default)]
pub(crate) struct Samples(Vec<(u32, Duration, u64)>);

impl Samples {
    /// Records `pid`'s resident memory now (`at` into the run); a process gone meanwhile is
    /// skipped.
    pub(crate) fn sample(&mut self, pid: u32, at: Duration) {
        if let Some(rss) = resident_bytes(pid) {
            self.0.push((pid, at, rss));
        }
    }

    /// The samples of the node's last process, summed up; `None` without any.
    pub(crate) fn summary(&self) -> Option<Summary> {
        let &(last_pid, ..) = self.0.last()?;
        let samples: Vec<(Duration, u64)> = self
            .0
            .iter()
            .filter(|(pid, ..)| *pid == last_pid)
            .map(|&(_, at, rss)| (at, rss))
            .collect();
        let (first_at, start) = samples[0];
        let (last_at, end) = samples[samples.len() - 1];
        let peak = samples.iter().map(|&(_, rss)| rss).max().unwrap_or(end);
        let middle = first_at + (last_at - first_at) / 2;
        let (mid_at, mid) = samples
            .iter()
            .copied()
            .find(|&(at, _)| at >= middle)
            .unwrap_or((last_at, end));
        let minutes = (last_at - mid_at).as_secs_f64() / 60.0;
        let growth_per_minute = (minutes > 0.0).then(|| (end as f64 - mid as f64) / minutes);
        Some(Summary {
            start,
            end,
            peak,
            growth_per_minute,
        })
    }
}

/// A node's memory over its last process's life.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Summary {
    pub(crate) start: u64,
    pub(crate) end: u64,
    pub(crate) peak: u64,
    /// Bytes a minute over the second half; `None` for a life too short to tell.
    pub(crate) growth_per_minute: Option<f64>,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mb = |bytes: f64| bytes / (1 << 20) as f64;
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
        Ok(())
    }
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

    #[test]
    fn the_summary_covers_the_last_process_only() {
        let s = |secs| Duration::from_secs(secs);
        let samples = Samples(vec![
            (1, s(0), 100 << 20),
            (1, s(60), 500 << 20),
            (2, s(120), 10 << 20),
            (2, s(180), 20 << 20),
            (2, s(240), 30 << 20),
            (2, s(300), 32 << 20),
        ]);
        let summary = samples.summary().unwrap();
        assert_eq!(
            summary.start,
            10 << 20,
            "the restarted process's first sample"
        );
        assert_eq!(summary.end, 32 << 20);
        assert_eq!(summary.peak, 32 << 20);
        let growth = summary.growth_per_minute.unwrap();
        assert!((growth - (2 << 20) as f64).abs() < 1.0, "{growth}");
        assert!(Samples::default().summary().is_none());
    }

    #[test]
    fn this_process_can_be_sampled() {
        let mut samples = Samples::default();
        samples.sample(std::process::id(), Duration::ZERO);
        assert!(samples.summary().is_some_and(|s| s.end > 0));
    }
}
