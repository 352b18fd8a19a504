//! [`TokenBucket`]: the server's one rate limiter, used for per-token request rates, per-stream
//! message rates, and the audit budget of refused calls.

use std::time::Instant;

/// Holds up to `burst` tokens, refilled at `per_second`; each admitted event takes one.
#[derive(Clone, Copy, Debug)]
pub struct TokenBucket {
    tokens: f64,
    updated: Instant,
    per_second: f64,
    burst: f64,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(per_second: f64, burst: f64, now: Instant) -> Self {
        Self {
            tokens: burst,
            updated: now,
            per_second,
            burst,
        }
    }

    /// Takes one token if there is one at `now`.
    pub fn try_take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.burst);
        self.updated = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// How long from `now` until a token is available (zero if one is).
    pub fn time_to_next(&self, now: Instant) -> std::time::Duration {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        let tokens = (self.tokens + elapsed * self.per_second).min(self.burst);
        if tokens >= 1.0 || self.per_second <= 0.0 {
            return std::time::Duration::ZERO;
        }
        std::time::Duration::from_secs_f64((1.0 - tokens) / self.per_second)
    }

    /// Whether the bucket has refilled to its burst at `now`: forgetting it changes nothing.
    pub fn is_full(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens + elapsed * self.per_second >= self.burst
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn burst_then_refill() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(10.0, 3.0, start);
        assert!((0..3).all(|_| bucket.try_take(start)));
        assert!(!bucket.try_take(start));
        assert!(bucket.try_take(start + Duration::from_millis(100)));
        assert!(!bucket.try_take(start + Duration::from_millis(100)));
        // Never more than the burst, however long it waited.
        let later = start + Duration::from_secs(60);
        assert!((0..3).all(|_| bucket.try_take(later)));
        assert!(!bucket.try_take(later));
        assert_eq!(bucket.time_to_next(later), Duration::from_millis(100));
        assert!(!bucket.is_full(later));
        assert!(bucket.is_full(later + Duration::from_millis(300)));
        assert_eq!(
            bucket.time_to_next(later + Duration::from_millis(100)),
            Duration::ZERO
        );
    }
}
