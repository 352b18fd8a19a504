//! When each agent comes back after a shutdown: the reconnect delays of a drain.
//!
//! A restart must not become a reconnect storm. At shutdown every session gets
//! `Goodbye(SERVER_DRAINING)` with its own `reconnect_after`, and the agents wait that long
//! before their first attempt. [`DrainPolicy::delays`] spreads `n` sessions over a window just
//! long enough to keep their return under `reconnects_per_second` (never longer than
//! `max_window`): the window is cut into `n` equal slots and session `i` comes back at a random
//! moment of slot `i`, so no slot holds two returns and the peak rate stays bounded, while no
//! two servers' drains line their agents up on the same instants.
//!
//! The rule is pure; `Registry::drain_sessions` applies it to the live sessions.

use std::time::Duration;

use rand::Rng;

/// How a drain spreads the agents' return.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DrainPolicy {
    /// Returns per second the spread aims for (at least 1).
    pub reconnects_per_second: u32,
    /// Longest window, whatever the fleet's size.
    pub max_window: Duration,
}

impl DrainPolicy {
    /// The window `n` sessions are spread over: `n / reconnects_per_second`, at most
    /// `max_window`.
    pub fn window(&self, n: usize) -> Duration {
        let rate = f64::from(self.reconnects_per_second.max(1));
        // Precision: fleets far beyond 2^52 sessions are not a concern.
        #[allow(clippy::cast_precision_loss)]
        let seconds = n as f64 / rate;
        Duration::try_from_secs_f64(seconds)
            .unwrap_or(Duration::MAX)
            .min(self.max_window)
    }

    /// The reconnect delays of `n` sessions, in slot order: delay `i` lies in
    /// `[i, i + 1) * window / n`.
    pub fn delays(&self, n: usize, rng: &mut impl Rng) -> Vec<Duration> {
        let slot = match u32::try_from(n) {
            Ok(n) if n > 0 => self.window(n as usize) / n,
            _ => return Vec::new(),
        };
        (0..n)
            .map(|i| {
                let start = slot.saturating_mul(u32::try_from(i).unwrap_or(u32::MAX));
                start + slot.mul_f64(rng.random_range(0.0..1.0))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: DrainPolicy = DrainPolicy {
        reconnects_per_second: 1000,
        max_window: Duration::from_secs(120),
    };

    #[test]
    fn the_window_grows_with_the_fleet_up_to_its_bound() {
        assert_eq!(POLICY.window(0), Duration::ZERO);
        assert_eq!(POLICY.window(10), Duration::from_millis(10));
        assert_eq!(POLICY.window(10_000), Duration::from_secs(10));
        assert_eq!(POLICY.window(1_000_000), Duration::from_secs(120));
        let zero_rate = DrainPolicy {
            reconnects_per_second: 0,
            ..POLICY
        };
        assert_eq!(
            zero_rate.window(10),
            Duration::from_secs(10),
            "read as 1 per second"
        );
    }

    #[test]
    fn each_session_returns_within_its_own_slot() {
        let mut rng = rand::rng();
        assert!(POLICY.delays(0, &mut rng).is_empty());
        let n = 5_000;
        let window = POLICY.window(n);
        let delays = POLICY.delays(n, &mut rng);
        assert_eq!(delays.len(), n);
        let slot = window / u32::try_from(n).expect("small");
        for (i, delay) in delays.iter().enumerate() {
            let start = slot * u32::try_from(i).expect("small");
            assert!(*delay >= start && *delay < start + slot, "{i}: {delay:?}");
        }
        // So no second of the window gets more than its share (plus one at a slot's edge).
        let mut per_second = vec![0_u32; usize::try_from(window.as_secs()).expect("small") + 1];
        for delay in &delays {
            per_second[usize::try_from(delay.as_secs()).expect("small")] += 1;
        }
        assert!(
            per_second
                .iter()
                .all(|&k| k <= POLICY.reconnects_per_second + 1),
            "{per_second:?}"
        );
        // And two drains do not give the same instants.
        assert_ne!(delays, POLICY.delays(n, &mut rng));
    }
}
