//! Exponential reconnect backoff with jitter, and the streak of failures it is backing off
//! from.
//!
//! Delays start at [`BackoffConfig::initial`], grow by [`BackoffConfig::multiplier`] per
//! attempt, are scaled by a random factor in `[1 - jitter, 1 + jitter]` so that a fleet
//! disconnected at once does not reconnect in lockstep, and never exceed
//! [`BackoffConfig::max`]. The run loop calls [`Backoff::reset`] only after a healthy session
//! (a `Welcome` followed by an ack or pong), so a server that accepts connections and then drops
//! them does not get hammered at the initial rate.
//!
//! [`Backoff::failed`] is what the loops call after a failure: it honours a retry delay the
//! server asked for (never retrying sooner, spread by the same jitter upwards) and says when
//! the failure has persisted long enough ([`PERSISTENT_FAILURES`] in a row that the server did
//! not ask to wait for, or [`PERSISTENT_FOR`] of failing) to be logged at ERROR, at most once
//! per [`PERSISTENT_LOG_INTERVAL`]. A server restart or a busy server asking agents to wait is
//! not worth an ERROR on every machine of the fleet; an unreachable server or minutes of
//! refusals are.

use std::time::Duration;

use tokio::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::BackoffConfig;

/// Consecutive failures without a server-given retry delay after which a failure is logged at
/// ERROR (about a minute of backoff from a 1 s start).
pub const PERSISTENT_FAILURES: u32 = 10;
/// Time spent failing after which a failure is logged at ERROR, however few the attempts.
pub const PERSISTENT_FOR: Duration = Duration::from_secs(180);
/// While failures persist, at most one ERROR per this interval (the others are INFO).
pub const PERSISTENT_LOG_INTERVAL: Duration = Duration::from_secs(600);

/// Backoff state: the next un-jittered delay, the random source for jitter, and the current
/// streak of failures.
#[derive(Debug)]
pub struct Backoff<R = StdRng> {
    config: BackoffConfig,
    /// Delay before jitter for the next attempt; starts at `config.initial`.
    current: Duration,
    rng: R,
    streak: Streak,
}

/// Failures since the last healthy session.
#[derive(Debug, Default, Clone, Copy)]
struct Streak {
    failures: u32,
    /// Of which the server did not ask to wait (it is down, unreachable or failing).
    unasked: u32,
    since: Option<Instant>,
    last_logged: Option<Instant>,
}

/// What to do after a failure: wait `delay`, and log it at ERROR if `persistent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    pub delay: Duration,
    /// The failure persisted and no ERROR about it was logged for a while: log this one.
    pub persistent: bool,
    /// Failures in a row, this one included.
    pub failures: u32,
    /// Since the first failure of the streak.
    pub failing_for: Duration,
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
            streak: Streak::default(),
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

    /// The longest delay: what a failure that only a configuration change can fix waits.
    pub fn max(&self) -> Duration {
        self.config.max
    }

    /// Records a failure at `now`: the delay before the next attempt is the backoff's, or the
    /// server's `server_delay` scaled up by up to the jitter if that is longer.
    pub fn failed(&mut self, server_delay: Option<Duration>, now: Instant) -> Retry {
        let own = self.next_delay();
        let delay = match server_delay {
            Some(asked) if asked > own => {
                let spread = if self.config.jitter > 0.0 {
                    1.0 + self.rng.random_range(0.0..=self.config.jitter)
                } else {
                    1.0
                };
                asked.mul_f64(spread)
            }
            _ => own,
        };
        let streak = &mut self.streak;
        streak.failures = streak.failures.saturating_add(1);
        if server_delay.is_none() {
            streak.unasked = streak.unasked.saturating_add(1);
        }
        let since = *streak.since.get_or_insert(now);
        let failing_for = now.saturating_duration_since(since);
        let persists = streak.unasked >= PERSISTENT_FAILURES || failing_for >= PERSISTENT_FOR;
        let quiet = streak
            .last_logged
            .is_none_or(|at| now.saturating_duration_since(at) >= PERSISTENT_LOG_INTERVAL);
        let persistent = persists && quiet;
        if persistent {
            streak.last_logged = Some(now);
        }
        Retry {
            delay,
            persistent,
            failures: streak.failures,
            failing_for,
        }
    }

    /// Starts over from the initial delay and ends the failure streak. Call only after a
    /// healthy session.
    pub fn reset(&mut self) {
        self.current = self.config.initial;
        self.streak = Streak::default();
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
    fn a_longer_server_delay_is_honoured_with_upward_jitter() {
        let mut backoff = seeded(BackoffConfig::default());
        let now = Instant::now();
        let asked = Duration::from_secs(30);
        // Five attempts: the backoff's own delay stays below 30 s.
        for _ in 0..5 {
            let retry = backoff.failed(Some(asked), now);
            assert!(
                retry.delay >= asked && retry.delay <= asked.mul_f64(1.2),
                "{:?}",
                retry.delay
            );
        }
        // A shorter one than the backoff's own delay changes nothing.
        let mut backoff = seeded(BackoffConfig {
            jitter: 0.0,
            ..BackoffConfig::default()
        });
        let retry = backoff.failed(Some(Duration::from_millis(10)), now);
        assert_eq!(retry.delay, Duration::from_secs(1));
    }

    #[test]
    fn persistent_failures_are_flagged_once_per_interval() {
        let mut backoff = seeded(BackoffConfig::default());
        let start = Instant::now();
        let flagged: Vec<bool> = (0..PERSISTENT_FAILURES + 2)
            .map(|i| {
                backoff
                    .failed(None, start + Duration::from_secs(u64::from(i)))
                    .persistent
            })
            .collect();
        let first = usize::try_from(PERSISTENT_FAILURES - 1).expect("small");
        assert_eq!(flagged.iter().position(|&f| f), Some(first));
        assert_eq!(flagged.iter().filter(|&&f| f).count(), 1, "{flagged:?}");
        let later = backoff.failed(
            None,
            start + PERSISTENT_LOG_INTERVAL + Duration::from_secs(10),
        );
        assert!(later.persistent, "flagged again after the interval");
        assert_eq!(later.failures, PERSISTENT_FAILURES + 3);

        // Few attempts over a long time persist too (a long server-given delay).
        let mut backoff = seeded(BackoffConfig::default());
        assert!(!backoff.failed(None, start).persistent);
        let retry = backoff.failed(None, start + PERSISTENT_FOR);
        assert!(retry.persistent);
        assert_eq!(retry.failing_for, PERSISTENT_FOR);

        // A busy server asking to wait is not counted as a failure in a row, only as time.
        let mut backoff = seeded(BackoffConfig::default());
        let asked = Some(Duration::from_secs(2));
        for i in 0..PERSISTENT_FAILURES * 2 {
            let at = start + Duration::from_secs(u64::from(i));
            assert!(!backoff.failed(asked, at).persistent, "refusal {i}");
        }
        assert!(backoff.failed(asked, start + PERSISTENT_FOR).persistent);

        // A healthy session ends the streak.
        backoff.reset();
        assert_eq!(backoff.failed(None, start + PERSISTENT_FOR * 2).failures, 1);
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
