//! The per-agent rate limit of events from the socket: at most `limit` per fixed window.
//! Excess events are dropped and counted, and each window that dropped some is reported once,
//! as one `tether.rate_limited` event, instead of silence (or one event per drop).

use std::time::Duration;

use tokio::time::Instant;

use crate::events::types::{Event, Severity};

/// Kind of the event that reports events dropped by the rate limit.
pub const RATE_LIMITED_KIND: &str = tether_proto::event::KIND_RATE_LIMITED;

/// A fixed-window counter.
#[derive(Debug)]
pub struct RateLimiter {
    limit: u32,
    window: Duration,
    window_start: Instant,
    admitted: u32,
    /// Dropped in the current window.
    dropped: u64,
}

// === impl RateLimiter ===

impl RateLimiter {
    pub fn new(limit: u32, window: Duration, now: Instant) -> Self {
        Self {
            limit,
            window,
            window_start: now,
            admitted: 0,
            dropped: 0,
        }
    }

    /// Whether one more event may pass at `now`. Also returns the report of a window that
    /// ended with drops, if `now` is past it.
    pub fn admit(&mut self, now: Instant) -> (bool, Option<Event>) {
        let report = self.roll(now);
        if self.admitted < self.limit {
            self.admitted += 1;
            (true, report)
        } else {
            self.dropped += 1;
            (false, report)
        }
    }

    /// The report of the window that ended with drops, if `now` is past it.
    pub fn roll(&mut self, now: Instant) -> Option<Event> {
        if now.saturating_duration_since(self.window_start) < self.window {
            return None;
        }
        let dropped = std::mem::take(&mut self.dropped);
        self.admitted = 0;
        // Windows stay aligned to the first one: a burst cannot straddle two fresh windows.
        let elapsed = now.saturating_duration_since(self.window_start);
        let n_windows = (elapsed.as_nanos() / self.window.as_nanos().max(1)) as u32;
        self.window_start += self.window * n_windows;
        (dropped > 0).then(|| self.report(dropped))
    }

    /// When the current window ends, if it dropped something (a report is then due).
    pub fn report_due(&self) -> Option<Instant> {
        (self.dropped > 0).then(|| self.window_start + self.window)
    }

    fn report(&self, dropped: u64) -> Event {
        Event::now(
            RATE_LIMITED_KIND,
            Severity::Warning,
            format!(
                "dropped {dropped} events over the agent's rate limit of {} per {}",
                self.limit,
                humantime::format_duration(self.window)
            ),
        )
        .with("dropped", dropped)
        .with("limit", self.limit)
        .with("window_seconds", self.window.as_secs())
        .fingerprint(RATE_LIMITED_KIND)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excess_is_dropped_and_reported_once_per_window() {
        let start = Instant::now();
        let mut limiter = RateLimiter::new(3, Duration::from_secs(60), start);
        let admitted: Vec<bool> = (0..10).map(|_| limiter.admit(start).0).collect();
        assert_eq!(admitted.iter().filter(|&&ok| ok).count(), 3);
        assert_eq!(limiter.report_due(), Some(start + Duration::from_secs(60)));
        assert!(limiter.roll(start + Duration::from_secs(59)).is_none());
        let report = limiter
            .roll(start + Duration::from_secs(61))
            .expect("a report for the window");
        assert_eq!(report.kind, RATE_LIMITED_KIND);
        assert_eq!(report.attributes["dropped"], "7");
        crate::events::check::check(&report).expect("valid");
        // Once only, and the new window admits again.
        assert!(limiter.roll(start + Duration::from_secs(62)).is_none());
        assert_eq!(limiter.report_due(), None);
        assert!(limiter.admit(start + Duration::from_secs(62)).0);
        // A quiet window reports nothing.
        assert_eq!(
            limiter.admit(start + Duration::from_secs(300)),
            (true, None)
        );
    }
}
