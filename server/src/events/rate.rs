//! Each agent's event rate: a token bucket of `rate_per_minute` (a full minute's worth of
//! burst) that refills with the events' own time, not their arrival. Events over it are
//! rejected (`RESOURCE_EXHAUSTED` in the ack) and counted per one-minute window of arrival; the
//! first report after a window that dropped events carries the count, which the session stores
//! as one `tether.rate_limited` event. Nothing is dropped silently.
//!
//! Why event time: an agent that was cut off (its own outage, or the server's) spools what
//! happened meanwhile and sends it all at once when it is back. Counted by arrival, everything
//! past the first minute's worth of that replay would be refused; counted by when the events
//! happened, a replay passes exactly when the agent stayed within the rate while it spooled.
//! The bucket's clock only moves forward, to an event's time clamped to
//! `[now − CATCH_UP_HORIZON, now]`, so claimed times can buy an agent at most the horizon's
//! worth of events once; after that, its events come at the rate as real time passes.
//!
//! Memory: one small entry per agent that reported events, bounded by the fleet's size.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use crate::domain::AgentId;

/// Default window over which drops are counted and reported once.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(60);
/// How far back an event's time may refill its agent's bucket: the late window of the
/// events' hourly counts.
pub const CATCH_UP_HORIZON: Duration = Duration::from_secs(24 * 3600);

struct Bucket {
    tokens: f64,
    /// Event time up to which the bucket was refilled; never moves back.
    clock: SystemTime,
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

    /// Takes the events of `agent` that happened at `times` (in the report's order), as they
    /// arrive at `now` (`wall_now` on the wall clock): the longest prefix the bucket allows.
    pub fn admit(
        &self,
        agent: &AgentId,
        times: &[SystemTime],
        wall_now: SystemTime,
        now: Instant,
    ) -> Admission {
        let capacity = f64::from(self.per_minute);
        let earliest = wall_now
            .checked_sub(CATCH_UP_HORIZON)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let clamp = |t: SystemTime| t.clamp(earliest, wall_now);
        let mut agents = self.agents.lock().unwrap_or_else(PoisonError::into_inner);
        let bucket = agents.entry(agent.clone()).or_insert_with(|| Bucket {
            tokens: capacity,
            clock: times.first().copied().map_or(wall_now, clamp),
            window_start: now,
            dropped: 0,
        });
        // A clock left behind the horizon (an agent quiet for longer) starts from it.
        bucket.clock = bucket.clock.max(earliest);
        let mut report_dropped = None;
        if now.saturating_duration_since(bucket.window_start) >= self.window {
            if bucket.dropped > 0 {
                report_dropped = Some(bucket.dropped);
            }
            bucket.dropped = 0;
            bucket.window_start = now;
        }
        let mut admitted = 0;
        for &time in times {
            let time = clamp(time);
            if let Ok(elapsed) = time.duration_since(bucket.clock) {
                bucket.tokens =
                    (bucket.tokens + elapsed.as_secs_f64() * capacity / 60.0).min(capacity);
                bucket.clock = time;
            }
            if bucket.tokens < 1.0 {
                break;
            }
            bucket.tokens -= 1.0;
            admitted += 1;
        }
        bucket.dropped += (times.len() - admitted) as u64;
        Admission {
            admitted,
            report_dropped,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` events `spacing` apart, the last at `last`.
    fn times(n: usize, spacing: Duration, last: SystemTime) -> Vec<SystemTime> {
        (0..n)
            .map(|i| last - spacing * u32::try_from(n - 1 - i).expect("small"))
            .collect()
    }

    #[test]
    fn excess_is_dropped_counted_and_reported_after_the_window() {
        let limiter = RateLimiter::new(60, DEFAULT_WINDOW);
        let agent = AgentId::new("a");
        let t0 = Instant::now();
        let w0 = SystemTime::now();
        let burst = vec![w0; 100];
        let first = limiter.admit(&agent, &burst, w0, t0);
        assert_eq!(
            first,
            Admission {
                admitted: 60,
                report_dropped: None
            }
        );
        let w2 = w0 + Duration::from_secs(2);
        let again = limiter.admit(&agent, &[w2; 5], w2, t0 + Duration::from_secs(2));
        assert_eq!(again.admitted, 2, "one token a second comes back");
        let w61 = w0 + DEFAULT_WINDOW + Duration::from_secs(1);
        let later = limiter.admit(
            &agent,
            &[w61],
            w61,
            t0 + DEFAULT_WINDOW + Duration::from_secs(1),
        );
        assert_eq!(later.report_dropped, Some(43));
        assert_eq!(later.admitted, 1);
        let w180 = w0 + 3 * DEFAULT_WINDOW;
        let quiet = limiter.admit(&agent, &[w180], w180, t0 + 3 * DEFAULT_WINDOW);
        assert_eq!(quiet.report_dropped, None);
    }

    #[test]
    fn a_replay_of_events_that_kept_the_rate_passes_whole() {
        // An hour of spooled events at the rate (one a second), sent at once after an
        // outage: to a limiter that never saw the agent (the server restarted) and to one
        // that did.
        let now = SystemTime::now();
        let t0 = Instant::now();
        let spooled = times(3600, Duration::from_secs(1), now - Duration::from_secs(1));
        let fresh = RateLimiter::new(60, DEFAULT_WINDOW);
        let agent = AgentId::new("a");
        let mut admitted = 0;
        for report in spooled.chunks(512) {
            admitted += fresh.admit(&agent, report, now, t0).admitted;
        }
        assert_eq!(admitted, 3600);

        let known = RateLimiter::new(60, DEFAULT_WINDOW);
        let before = now - Duration::from_secs(3601);
        known.admit(&agent, &[before], before, t0);
        let mut admitted = 0;
        for report in spooled.chunks(512) {
            admitted += known
                .admit(&agent, report, now, t0 + Duration::from_secs(3601))
                .admitted;
        }
        assert_eq!(admitted, 3600);
    }

    #[test]
    fn claimed_times_buy_at_most_the_horizon() {
        let agent = AgentId::new("a");
        let now = SystemTime::now();
        let t0 = Instant::now();
        // Times older than the horizon all count at its start: a minute's burst, no refill.
        let old = RateLimiter::new(60, DEFAULT_WINDOW);
        let claimed = times(
            600,
            Duration::from_secs(1),
            now - 25 * 3600 * Duration::from_secs(1),
        );
        assert_eq!(old.admit(&agent, &claimed, now, t0).admitted, 60);
        // At the rate over the whole horizon: the horizon's worth, and no more.
        let limiter = RateLimiter::new(60, DEFAULT_WINDOW);
        let day = times(86_400, Duration::from_secs(1), now);
        assert_eq!(limiter.admit(&agent, &day, now, t0).admitted, 86_400);
        // Times going back buy nothing: only what is left of the burst.
        let back = times(1000, Duration::from_secs(60), now);
        let again = limiter.admit(&agent, &back, now, t0).admitted;
        assert!(again <= 60, "admitted {again}");
    }
}
