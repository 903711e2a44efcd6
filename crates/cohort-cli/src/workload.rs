//! Workload shapes shared by the demo and the benchmark.

use rand::RngExt;
use rand::rngs::StdRng;

/// Zipf-distributed keys 1..=n: key k is drawn with probability proportional to 1/k^s.
pub(crate) struct Zipf {
    cumulative: Vec<f64>,
}

impl Zipf {
    pub(crate) fn new(n: u64, s: f64) -> Self {
        let mut total = 0.0;
        let cumulative = (1..=n)
            .map(|k| {
                total += 1.0 / (k as f64).powf(s);
                total
            })
            .collect();
        Self { cumulative }
    }

    pub(crate) fn sample(&self, rng: &mut StdRng) -> u64 {
        let total = self.cumulative.last().copied().unwrap_or(0.0);
        let u = rng.random::<f64>() * total;
        let index = self.cumulative.partition_point(|&c| c < u);
        index.min(self.cumulative.len() - 1) as u64 + 1
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn zipf_prefers_small_keys_and_stays_in_range() {
        let zipf = Zipf::new(100, 0.99);
        let mut rng = StdRng::seed_from_u64(1);
        let samples: Vec<u64> = (0..10_000).map(|_| zipf.sample(&mut rng)).collect();
        assert!(samples.iter().all(|&k| (1..=100).contains(&k)));
        let ones = samples.iter().filter(|&&k| k == 1).count();
        let fifties = samples.iter().filter(|&&k| k == 50).count();
        assert!(ones > 10 * fifties, "{ones} ones vs {fifties} fifties");
    }
}
