//! Each agent's event rate: a token bucket of `rate_per_minute` (a full minute's worth of
//! burst). Events over it are rejected (`RESOURCE_EXHAUSTED` in the ack) and counted per
//! one-minute window; the first report after a window that dropped events carries the count,
//! which the session stores as one `tether.rate_limited` event. Nothing is dropped silently.
//!
//! Memory: one small entry per agent that reported events, bounded by the fleet's size.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::domain::AgentId;

/// Default window over which drops are counted and reported once.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(60);

struct Bucket {
    tokens: f64,
    last: Instant,
    window_start: Instant,
    dropped: u64,
}

/// What a report may store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Admission {
    /// The report's first `admitted` events are within the rate; the rest are dropped.
    pub admitted: usize,
    /// Events dropped in a window that has ended, to report now.
    pub report_dropped: Option<u64>,
}

pub struct RateLimiter {
    per_minute: u32,
    window: Duration,
    agents: Mutex<HashMap<AgentId, Bucket>>,
}

impl RateLimiter {
    pub fn new(per_minute: u32, window: Duration) -> Self {
        Self {
            per_minute,
            window,
            agents: Mutex::new(HashMap::new()),
        }
    }

    pub fn per_minute(&self) -> u32 {
        self.per_minute
    }

    pub fn window(&self) -> Duration {
        self.window
    }

    /// Takes up to `n` events of `agent` at `now`.
    pub fn admit(&self, agent: &AgentId, n: usize, now: Instant) -> Admission {
        let capacity = f64::from(self.per_minute);
        let mut agents = self.agents.lock().unwrap_or_else(PoisonError::into_inner);
        let bucket = agents.entry(agent.clone()).or_insert(Bucket {
            tokens: capacity,
            last: now,
            window_start: now,
            dropped: 0,
        });
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * capacity / 60.0).min(capacity);
        bucket.last = now;
        let mut report_dropped = None;
        if now.saturating_duration_since(bucket.window_start) >= self.window {
            if bucket.dropped > 0 {
                report_dropped = Some(bucket.dropped);
            }
            bucket.dropped = 0;
            bucket.window_start = now;
        }
        let whole = bucket.tokens.floor();
        let admitted = if whole >= n as f64 { n } else { whole as usize };
        bucket.tokens -= admitted as f64;
        bucket.dropped += (n - admitted) as u64;
        Admission {
            admitted,
            report_dropped,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excess_is_dropped_counted_and_reported_after_the_window() {
        let limiter = RateLimiter::new(60, DEFAULT_WINDOW);
        let agent = AgentId::new("a");
        let t0 = Instant::now();
        let first = limiter.admit(&agent, 100, t0);
        assert_eq!(
            first,
            Admission {
                admitted: 60,
                report_dropped: None
            }
        );
        let again = limiter.admit(&agent, 5, t0 + Duration::from_secs(2));
        assert_eq!(again.admitted, 2, "one token a second comes back");
        let later = limiter.admit(&agent, 1, t0 + DEFAULT_WINDOW + Duration::from_secs(1));
        assert_eq!(later.report_dropped, Some(43));
        assert_eq!(later.admitted, 1);
        let quiet = limiter.admit(&agent, 1, t0 + 3 * DEFAULT_WINDOW);
        assert_eq!(quiet.report_dropped, None);
    }
}
