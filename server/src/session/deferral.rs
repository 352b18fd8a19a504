//! Deferred metrics reports (`MetricsDeferred`).
//!
//! A report that finds no ingest budget free waits in line for it (`writer/admission.rs`). Every
//! agent may hold a report in that line, so without a bound a report's wait grows with the
//! number of agents that each hold one there, whatever the writer's pace. For the agents that
//! accept it (`Hello.accepts_deferred_reports`), the line is bounded (`--ingest-queue`): a
//! report that would wait behind more is answered `MetricsDeferred` and stored nothing; the
//! agent keeps the samples in its buffer and sends them again, with those taken meanwhile, after
//! the deferral's `retry_after`. So the ack waits stay about (budget + queue) / commit rate, and
//! the rest of an overload waits in the agents' buffers.
//!
//! **Invariants:** a deferred report stores nothing; until the agent answers a deferral (a
//! report naming it in `deferred_seq`), every metrics report of the session is deferred, so no
//! report the agent sent before it read the deferral is stored ahead of the deferred samples
//! (which would then be dropped as duplicates); an agent that did not accept deferrals is never
//! sent one.

use std::time::Duration;

/// The wait before the first resend after a deferral, doubled after each further deferral in a
/// row (at most [`MAX_DOUBLINGS`] times, and never past the session's `max_report_interval`).
pub const FIRST_RETRY: Duration = Duration::from_millis(500);
/// Most doublings of [`FIRST_RETRY`]: 32 s.
const MAX_DOUBLINGS: u32 = 6;

/// One session's deferrals.
#[derive(Debug)]
pub(super) struct Deferral {
    /// The agent accepts `MetricsDeferred`.
    accepted: bool,
    /// The `last_seq` of the deferral the agent has not answered yet.
    outstanding: Option<u64>,
    /// Deferrals since the last report that was handed to the writer or joined the line.
    in_a_row: u32,
}

impl Deferral {
    pub(super) fn new(accepted: bool) -> Self {
        Self {
            accepted,
            outstanding: None,
            in_a_row: 0,
        }
    }

    /// Whether the agent accepts `MetricsDeferred`.
    pub(super) fn accepted(&self) -> bool {
        self.accepted
    }

    /// Whether a report naming `answers` (its `deferred_seq`) must be deferred because the agent
    /// has not read the last deferral yet. A report naming that deferral answers it.
    pub(super) fn holds(&mut self, answers: u64) -> bool {
        match self.outstanding {
            Some(seq) if seq == answers => {
                self.outstanding = None;
                false
            }
            Some(_) => true,
            None => false,
        }
    }

    /// A report was handed to the writer or joined the line for budget.
    pub(super) fn admitted(&mut self) {
        self.in_a_row = 0;
    }

    /// Defers the report ending at `last_seq`; returns its `retry_after`, spread by `unit` (in
    /// `[0, 1)`) over half to one and a half times the base, so that the agents deferred
    /// together do not come back together.
    /// The deferral the agent must answer stays the first one it has not answered: the agent
    /// sends again from that report on, and names that one; reports it wrote after it are held
    /// and deferred too, and it ignores those deferrals.
    pub(super) fn defer(&mut self, last_seq: u64, longest: Duration, unit: f64) -> Duration {
        self.outstanding.get_or_insert(last_seq);
        let base = FIRST_RETRY * (1 << self.in_a_row.min(MAX_DOUBLINGS));
        self.in_a_row = self.in_a_row.saturating_add(1);
        base.mul_f64(0.5 + unit.clamp(0.0, 1.0))
            .min(longest.max(FIRST_RETRY))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LONGEST: Duration = Duration::from_secs(30);

    #[test]
    fn retries_double_in_a_row_within_the_longest_and_start_over_once_admitted() {
        let mut deferral = Deferral::new(true);
        let waits: Vec<Duration> = (0..10)
            .map(|i| {
                let wait = deferral.defer(i, LONGEST, 0.5);
                assert!(
                    !deferral.holds(i),
                    "a report naming the deferral answers it"
                );
                wait
            })
            .collect();
        assert_eq!(waits[0], FIRST_RETRY);
        assert_eq!(waits[1], FIRST_RETRY * 2);
        assert_eq!(waits[5], FIRST_RETRY * 32);
        assert_eq!(waits[6], LONGEST, "capped at the longest report interval");
        assert_eq!(waits[9], LONGEST);
        deferral.admitted();
        assert_eq!(deferral.defer(11, LONGEST, 0.5), FIRST_RETRY);
    }

    #[test]
    fn the_spread_covers_half_to_one_and_a_half_times_the_base() {
        let mut deferral = Deferral::new(true);
        assert_eq!(deferral.defer(1, LONGEST, 0.0), FIRST_RETRY / 2);
        deferral.admitted();
        assert_eq!(deferral.defer(2, LONGEST, 1.0), FIRST_RETRY * 3 / 2);
        deferral.admitted();
        assert_eq!(
            deferral.defer(3, LONGEST, 7.0),
            FIRST_RETRY * 3 / 2,
            "a unit out of range is clamped"
        );
    }

    #[test]
    fn until_the_agent_answers_a_deferral_every_report_is_held() {
        let mut deferral = Deferral::new(true);
        assert!(!deferral.holds(0), "nothing deferred yet");
        deferral.defer(40, LONGEST, 0.5);
        // A report sent before the agent read the deferral names no deferral, or an older one.
        assert!(deferral.holds(0));
        assert!(deferral.holds(39));
        assert!(
            deferral.holds(0),
            "still held: the deferral is not answered"
        );
        // Held reports are deferred too; the agent answers the first deferral all the same.
        deferral.defer(41, LONGEST, 0.5);
        assert!(
            deferral.holds(41),
            "the first deferral is the one to answer"
        );
        assert!(!deferral.holds(40), "the resend names the deferral");
        assert!(!deferral.holds(0), "answered: later reports are not held");
    }
}
