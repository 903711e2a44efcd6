//! Reconnect delays: exponential, capped, with full jitter.
//!
//! Pure: the caller supplies the randomness, so tests and simulations replay exactly. Full jitter
//! (a uniform delay between zero and the current ceiling) keeps nodes that lost a peer at the same
//! moment from knocking on it in lockstep.

use std::time::Duration;

use rand::{Rng, RngExt};

/// The delay before each reconnect attempt to one peer.
#[derive(Clone, Debug)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    ceiling: Duration,
}

impl Backoff {
    /// Delays start at up to `min` and double per failure up to `max`.
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            ceiling: min,
        }
    }

    /// The delay before the next attempt; each call doubles the ceiling for the one after.
    pub(crate) fn next_delay(&mut self, rng: &mut impl Rng) -> Duration {
        let ceiling = self.ceiling;
        self.ceiling = (self.ceiling * 2).min(self.max);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rng.random_range(0..=nanos))
    }

    /// A connection succeeded: the next failure starts from the minimum again.
    pub(crate) fn reset(&mut self) {
        self.ceiling = self.min;
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    #[test]
    fn delays_grow_to_the_cap_and_reset() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut backoff = Backoff::new(Duration::from_millis(10), Duration::from_millis(100));
        let ceilings = [10, 20, 40, 80, 100, 100];
        for ceiling in ceilings {
            let delay = backoff.next_delay(&mut rng);
            assert!(
                delay <= Duration::from_millis(ceiling),
                "{delay:?} > {ceiling} ms"
            );
        }
        backoff.reset();
        assert!(backoff.next_delay(&mut rng) <= Duration::from_millis(10));
    }

    #[test]
    fn delays_are_jittered() {
        let mut rng = StdRng::seed_from_u64(7);
        let delays: std::collections::HashSet<_> = (0..20)
            .map(|_| {
                Backoff::new(Duration::from_secs(1), Duration::from_secs(1)).next_delay(&mut rng)
            })
            .collect();
        assert!(delays.len() > 15, "only {} distinct delays", delays.len());
    }
}
