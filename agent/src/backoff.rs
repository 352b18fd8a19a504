//! Exponential reconnect backoff with jitter.
//!
//! Delays start at [`BackoffConfig::initial`], grow by [`BackoffConfig::multiplier`] per
//! attempt, are scaled by a random factor in `[1 - jitter, 1 + jitter]` so that a fleet
//! disconnected at once does not reconnect in lockstep, and never exceed
//! [`BackoffConfig::max`]. The run loop calls [`Backoff::reset`] only after a healthy session
//! (a `Welcome` followed by an ack or pong), so a server that accepts connections and then drops
//! them does not get hammered at the initial rate.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::BackoffConfig;

/// Backoff state: the next un-jittered delay and the random source for jitter.
#[derive(Debug)]
pub struct Backoff<R = StdRng> {
    config: BackoffConfig,
    /// Delay before jitter for the next attempt; starts at `config.initial`.
    current: Duration,
    rng: R,
}

impl Backoff<StdRng> {
    /// A backoff seeded from the operating system's random source.
    pub fn new(config: BackoffConfig) -> Self {
        Self::with_rng(config, StdRng::from_os_rng())
    }
}

impl<R: Rng> Backoff<R> {
    /// A backoff using `rng` for jitter (tests pass a seeded one).
    pub fn with_rng(config: BackoffConfig, rng: R) -> Self {
        let current = config.initial;
        Self {
            config,
            current,
            rng,
        }
    }

    /// The delay to wait before the next attempt; advances the exponential.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.current.min(self.config.max);
        let factor = if self.config.jitter > 0.0 {
            1.0 + self
                .rng
                .random_range(-self.config.jitter..=self.config.jitter)
        } else {
            1.0
        };
        let delay = base.mul_f64(factor).min(self.config.max);
        self.current = base.mul_f64(self.config.multiplier).min(self.config.max);
        delay
    }

    /// Starts over from the initial delay. Call only after a healthy session.
    pub fn reset(&mut self) {
        self.current = self.config.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seeded(config: BackoffConfig) -> Backoff<StdRng> {
        Backoff::with_rng(config, StdRng::seed_from_u64(7))
    }

    #[test]
    fn grows_exponentially_without_jitter() {
        let config = BackoffConfig {
            jitter: 0.0,
            ..BackoffConfig::default()
        };
        let mut backoff = seeded(config);
        let delays: Vec<u128> = (0..4).map(|_| backoff.next_delay().as_millis()).collect();
        assert_eq!(delays, vec![1000, 1600, 2560, 4096]);
    }

    #[test]
    fn jitter_stays_within_twenty_percent() {
        let mut backoff = seeded(BackoffConfig::default());
        let mut expected = 1.0_f64;
        for _ in 0..8 {
            let delay = backoff.next_delay().as_secs_f64();
            assert!(
                delay >= expected * 0.8 - 1e-9 && delay <= expected * 1.2 + 1e-9,
                "{delay} not within 20% of {expected}"
            );
            expected *= 1.6;
        }
    }

    #[test]
    fn jitter_varies() {
        let mut a = seeded(BackoffConfig::default());
        let mut b = Backoff::with_rng(BackoffConfig::default(), StdRng::seed_from_u64(8));
        let a: Vec<Duration> = (0..5).map(|_| a.next_delay()).collect();
        let b: Vec<Duration> = (0..5).map(|_| b.next_delay()).collect();
        assert_ne!(a, b);
    }

    #[test]
    fn capped_at_max() {
        let mut backoff = seeded(BackoffConfig::default());
        for _ in 0..50 {
            assert!(backoff.next_delay() <= Duration::from_secs(120));
        }
        // Deep into the sequence every delay sits within the jitter band below the cap.
        for _ in 0..20 {
            let delay = backoff.next_delay();
            assert!(delay >= Duration::from_secs(96), "{delay:?}");
        }
    }

    #[test]
    fn reset_starts_over() {
        let config = BackoffConfig {
            jitter: 0.0,
            ..BackoffConfig::default()
        };
        let mut backoff = seeded(config);
        for _ in 0..10 {
            backoff.next_delay();
        }
        backoff.reset();
        assert_eq!(backoff.next_delay(), Duration::from_secs(1));
    }
}
