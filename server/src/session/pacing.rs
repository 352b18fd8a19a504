//! Adaptive report pacing: how long one agent waits after a metrics ack before its next report
//! (`MetricsAck.report_after`).
//!
//! Past the server's CPU, every agent's report waits in the sockets behind the others' (an
//! agent keeps one report unacknowledged), so an ack takes about (agents) / (reports the server
//! reads per second), whatever the reports carry. Most of the server's cost is per message, so
//! the way out is fewer, larger reports: each agent reports, with its next report, how long
//! its previous one waited for its ack (`MetricsReport.previous_ack_latency`), and while that
//! wait exceeds the agent's own best one by more than [`TARGET_EXCESS`], its acks ask it to
//! wait longer before the next report. The agent keeps sampling, so the samples wait in its
//! buffer instead of in the server's sockets, and leave together.
//!
//! The excess is measured against the lowest wait the agent reported on the session, counted
//! at most [`BASE_LIMIT`]: a long round trip of the agent's own network, or a disk whose every
//! commit is slow, is not a queue that fewer reports would shorten; and a session that opened
//! while the server was already behind still paces once its wait exceeds
//! `BASE_LIMIT + TARGET_EXCESS`. That best rises only when pacing has proved it wrong: if
//! every report for [`BEST_WINDOW`] asked for a longer pace and none of them brought the wait
//! back within the target, the waits are the agent's own (a slower route), and the lowest of
//! them becomes its best, instead of the agent being held at the ceiling until it reconnects.
//! A fleet under steady overload holds its pace part of the time, so its best never creeps up
//! with the queue.
//!
//! The pace moves by half the excess over the target when the agent waited too long, and
//! falls by a quarter (and a little more, to reach the floor) once the agent barely waited;
//! in between it holds, so a fleet under steady overload settles with its waits between a
//! quarter of the target and the target.
//!
//! **Invariants:** the pace stays within `[--min-report-interval, --max-report-interval]`
//! (just the minimum when adaptive pacing is off: a maximum of 0); a report's value changes
//! only its own agent's pacing, so an agent that lies about its waits slows only itself.

use std::time::{Duration, Instant};

/// Queueing an agent's acks may show, beyond its best round trip, before it is paced.
pub const TARGET_EXCESS: Duration = Duration::from_millis(200);
/// Most of an agent's best ack wait that counts as its own: its network's round trip, or a
/// store whose every commit is slow, neither of which fewer reports would shorten.
pub const BASE_LIMIT: Duration = Duration::from_secs(1);
/// Longest wait a report may claim; longer ones count as this.
pub const LONGEST_WAIT: Duration = Duration::from_secs(60);
/// Below the floor-reaching step, the pace falls straight to the floor.
const FALL_STEP: Duration = Duration::from_millis(25);
/// How long every report must have raised an agent's pace, its waits never back within the
/// target, before its lowest wait of that time becomes its best. Longer than a few reports at
/// the ceiling pace (30 s by default).
pub const BEST_WINDOW: Duration = Duration::from_secs(120);

/// One session's report pacing.
#[derive(Debug)]
pub struct Pacing {
    floor: Duration,
    ceiling: Duration,
    pace: Duration,
    /// The lowest ack wait the agent reported on this session, or since `rising` last proved
    /// it wrong.
    best: Option<Duration>,
    /// Since when every report has raised the pace, and the lowest wait reported since.
    rising: Option<(Instant, Duration)>,
}

impl Pacing {
    /// Pacing between `floor` (`--min-report-interval`) and `ceiling`
    /// (`--max-report-interval`); a ceiling at or below the floor turns adaptation off.
    pub fn new(floor: Duration, ceiling: Duration) -> Self {
        Self {
            floor,
            ceiling: ceiling.max(floor),
            pace: floor,
            best: None,
            rising: None,
        }
    }

    /// What the next ack asks (`report_after`); `None` for "at once".
    pub fn report_after(&self) -> Option<Duration> {
        (!self.pace.is_zero()).then_some(self.pace)
    }

    /// Whether the pace is above the operator's floor (the server is pacing this agent).
    pub fn adapted(&self) -> bool {
        self.pace > self.floor
    }

    /// Takes the agent's measured wait for its previous report's ack, reported at `now`, into
    /// the pace.
    pub fn observe(&mut self, waited: Duration, now: Instant) {
        if self.ceiling == self.floor {
            return;
        }
        let waited = waited.min(LONGEST_WAIT);
        let mut best = self.best.map_or(waited, |best| best.min(waited));
        let mut excess = waited.saturating_sub(best.min(BASE_LIMIT));
        if excess > TARGET_EXCESS {
            let (since, lowest) = self.rising.unwrap_or((now, waited));
            let lowest = lowest.min(waited);
            if now.saturating_duration_since(since) >= BEST_WINDOW {
                // A longer pace at every report for that long never brought the wait back:
                // it is the agent's own.
                best = lowest;
                excess = waited.saturating_sub(best.min(BASE_LIMIT));
                self.rising = None;
            } else {
                self.rising = Some((since, lowest));
            }
        } else {
            self.rising = None;
        }
        self.best = Some(best);
        self.pace = if excess > TARGET_EXCESS {
            self.pace + (excess - TARGET_EXCESS) / 2
        } else if excess < TARGET_EXCESS / 4 {
            (self.pace * 3 / 4).saturating_sub(FALL_STEP)
        } else {
            self.pace
        }
        .clamp(self.floor, self.ceiling);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// One instant for tests that keep every wait in one window.
    fn t0() -> Instant {
        static T0: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        *T0.get_or_init(Instant::now)
    }

    #[test]
    fn waits_past_the_target_raise_the_pace_by_half_the_excess() {
        let mut pacing = Pacing::new(Duration::ZERO, Duration::from_secs(30));
        pacing.observe(5 * MS, t0());
        assert_eq!(pacing.report_after(), None, "a prompt ack: no pacing");
        pacing.observe(1205 * MS, t0());
        // Excess over the best (5 ms) 1,200 ms, 1,000 past the target: half of it.
        assert_eq!(pacing.report_after(), Some(500 * MS));
        assert!(pacing.adapted());
        pacing.observe(605 * MS, t0());
        assert_eq!(pacing.report_after(), Some(700 * MS));
        // Within the target: held.
        pacing.observe(105 * MS, t0());
        assert_eq!(pacing.report_after(), Some(700 * MS));
    }

    #[test]
    fn prompt_acks_bring_the_pace_back_to_the_floor() {
        let floor = 100 * MS;
        let mut pacing = Pacing::new(floor, Duration::from_secs(30));
        pacing.observe(10 * MS, t0());
        pacing.observe(60 * 1000 * MS, t0());
        pacing.observe(60 * 1000 * MS, t0());
        assert_eq!(
            pacing.report_after(),
            Some(Duration::from_secs(30)),
            "capped"
        );
        let mut steps = 0;
        while pacing.adapted() {
            pacing.observe(10 * MS, t0());
            steps += 1;
            assert!(steps < 30, "the pace falls by a quarter a report");
        }
        assert_eq!(pacing.report_after(), Some(floor));
    }

    #[test]
    fn a_long_round_trip_of_the_agents_own_is_not_paced() {
        let mut pacing = Pacing::new(Duration::ZERO, Duration::from_secs(30));
        for _ in 0..10 {
            pacing.observe(780 * MS, t0());
            pacing.observe(920 * MS, t0());
        }
        assert_eq!(pacing.report_after(), None);
        // A session that opened behind a queue still counts at most `BASE_LIMIT` as its own.
        let mut behind = Pacing::new(Duration::ZERO, Duration::from_secs(30));
        behind.observe(2500 * MS, t0());
        assert_eq!(behind.report_after(), Some(650 * MS));
    }

    #[test]
    fn no_ceiling_above_the_floor_means_no_adaptation() {
        let mut pacing = Pacing::new(Duration::from_secs(1), Duration::ZERO);
        pacing.observe(Duration::ZERO, t0());
        pacing.observe(Duration::from_secs(10), t0());
        assert_eq!(pacing.report_after(), Some(Duration::from_secs(1)));
        assert!(!pacing.adapted());
        let mut off = Pacing::new(Duration::ZERO, Duration::ZERO);
        off.observe(Duration::from_secs(10), t0());
        assert_eq!(off.report_after(), None);
    }

    #[test]
    fn an_agent_whose_own_round_trip_grew_is_paced_down_after_a_window_of_rising_paces() {
        let mut pacing = Pacing::new(Duration::ZERO, Duration::from_secs(30));
        let t = t0();
        pacing.observe(5 * MS, t);
        // Its route got slower: every wait now 800 ms, however long the pace.
        let mut at = t;
        let mut waits = |pacing: &mut Pacing, until: Instant, wait: Duration| {
            while at < until {
                at += Duration::from_secs(10);
                pacing.observe(wait, at);
            }
        };
        waits(&mut pacing, t + BEST_WINDOW - 10 * 1000 * MS, 800 * MS);
        let rising = pacing.report_after();
        // The report 110 s after the first rise (at t + 10 s) still raises the pace.
        waits(&mut pacing, t + BEST_WINDOW, 800 * MS);
        assert!(
            pacing.report_after() > rising,
            "still rising: 5 ms is its best"
        );
        let paced = pacing.report_after();
        // The report a whole window after the first rise: 800 ms becomes the best.
        waits(&mut pacing, t + BEST_WINDOW + 10 * 1000 * MS, 800 * MS);
        assert!(pacing.report_after() < paced, "the pace falls");
        waits(&mut pacing, t + BEST_WINDOW + 400 * 1000 * MS, 800 * MS);
        assert_eq!(pacing.report_after(), None, "back to the floor");
    }

    #[test]
    fn a_queue_that_pacing_holds_never_becomes_the_best() {
        let mut pacing = Pacing::new(Duration::ZERO, Duration::from_secs(30));
        let t = t0();
        pacing.observe(5 * MS, t);
        // Steady overload: waits past the target, then within it (the pace held), for an hour.
        for i in 1..=360 {
            let wait = if i % 2 == 0 { 300 * MS } else { 100 * MS };
            pacing.observe(wait, t + i * Duration::from_secs(10));
        }
        // The best is still 5 ms: a wait 255 ms over it raises the pace.
        let held = pacing.report_after();
        pacing.observe(260 * MS, t + Duration::from_secs(3_610));
        assert!(pacing.report_after() > held, "{held:?}");
    }
}
