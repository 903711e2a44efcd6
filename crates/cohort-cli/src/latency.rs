//! Latency distributions for `demo` and `bench`: durations recorded in an HDR histogram
//! (hdrhistogram), read back at quantiles.
//!
//! A histogram takes any number of samples in a table of fixed size and reads a quantile without
//! sorting them; a value comes back within [`SIGNIFICANT_DIGITS`] significant digits of what was
//! recorded.

use std::time::Duration;

use hdrhistogram::Histogram;

/// Precision of a value read back: three significant digits, within 0.1% of the recorded one.
const SIGNIFICANT_DIGITS: u8 = 3;

/// Durations, in nanoseconds.
#[derive(Clone, Debug)]
pub(crate) struct Latencies(Histogram<u64>);

impl Default for Latencies {
    fn default() -> Self {
        // hdrhistogram takes 0 to 5 significant digits; a histogram made without bounds resizes
        // itself to whatever is recorded.
        let histogram = Histogram::new(SIGNIFICANT_DIGITS).expect("3 significant digits is valid");
        Self(histogram)
    }
}

impl Latencies {
    /// Records one duration.
    pub(crate) fn record(&mut self, latency: Duration) {
        let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        // The histogram grows to take the value (clamping would not grow it); only a value past
        // what its table can index is clamped.
        if self.0.record(nanos).is_err() {
            self.0.saturating_record(nanos);
        }
    }

    /// Records every duration `other` holds.
    pub(crate) fn add(&mut self, other: &Self) {
        // Only a histogram with fixed bounds refuses another's values; these resize.
        self.0
            .add(&other.0)
            .expect("a resizing histogram takes any values");
    }

    /// How many durations were recorded.
    pub(crate) fn len(&self) -> u64 {
        self.0.len()
    }

    /// The duration at `quantile` (0.5 the median), within the precision: the recorded one of
    /// rank ⌈quantile × len⌉ in increasing order; zero for none.
    pub(crate) fn quantile(&self, quantile: f64) -> Duration {
        Duration::from_nanos(self.0.value_at_quantile(quantile))
    }

    /// The longest duration recorded; zero for none.
    pub(crate) fn max(&self) -> Duration {
        Duration::from_nanos(self.0.max())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `got` is `expected` within the histogram's precision.
    fn close(got: Duration, expected: Duration) -> bool {
        got.abs_diff(expected).as_secs_f64() <= expected.as_secs_f64() * 1e-3
    }

    #[test]
    fn quantiles_pick_by_rank_within_the_precision() {
        let mut latencies = Latencies::default();
        // Shuffled, so the histogram (not the order of recording) ranks them.
        for micros in (1..=100).map(|i| i * 37 % 101) {
            latencies.record(Duration::from_micros(micros));
        }
        assert_eq!(latencies.len(), 100);
        for (quantile, micros) in [(0.01, 1), (0.5, 50), (0.99, 99), (1.0, 100)] {
            let got = latencies.quantile(quantile);
            assert!(
                close(got, Duration::from_micros(micros)),
                "{quantile}: {got:?}"
            );
        }
        assert!(close(latencies.max(), Duration::from_micros(100)));
    }

    #[test]
    fn added_latencies_are_ranked_together() {
        let (mut low, mut high) = (Latencies::default(), Latencies::default());
        for micros in 1..=50 {
            low.record(Duration::from_micros(micros));
            high.record(Duration::from_millis(micros));
        }
        low.add(&high);
        assert_eq!(low.len(), 100);
        assert!(close(low.quantile(0.5), Duration::from_micros(50)));
        assert!(close(low.quantile(0.51), Duration::from_millis(1)));
        assert!(close(low.max(), Duration::from_millis(50)));
    }

    #[test]
    fn nothing_recorded_reads_as_zero() {
        let latencies = Latencies::default();
        assert_eq!(latencies.len(), 0);
        assert_eq!(latencies.quantile(0.5), Duration::ZERO);
        assert_eq!(latencies.max(), Duration::ZERO);
    }
}
