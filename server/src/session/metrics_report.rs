//! An agent's `MetricsReport` on its session: the report is checked whole (its size, its seqs
//! in order and not too far ahead of the last known one, each sample's content) before any of
//! it is kept; then it takes its samples' share of the writer's ingest budget, waiting in the
//! loop when there is none, and goes to the writer, in flight until acknowledged. A report
//! that would wait behind a full line for budget is deferred instead, checked for its size
//! only (`session/deferral.rs`).
//!
//! **Invariant:** nothing of an invalid report reaches the writer, and a report reaches it only
//! with its ingest budget.

use std::time::{Instant, SystemTime};

use tether_proto as pb;

use super::SessionLoop;
use crate::convert;
use crate::domain::Sample;
use crate::error::ServerError;
use crate::writer::Admitting;

impl SessionLoop {
    /// Hands a report's samples, read at `read_at`, to the writer with their ingest budget;
    /// they are in flight until acknowledged.
    pub(super) async fn hand_over(
        &mut self,
        samples: Vec<Sample>,
        admitted: Result<crate::writer::Admission, ServerError>,
        read_at: Instant,
    ) -> Result<(), ServerError> {
        let Some(last) = samples.last().map(|s| s.seq) else {
            return Ok(());
        };
        let admitted = admitted?;
        self.limits
            .metrics
            .ingest_budget_wait_seconds
            .observe(read_at.elapsed().as_secs_f64());
        self.writer
            .samples(self.session.clone(), samples, admitted)
            .await?;
        self.in_flight.push_back((last, read_at));
        Ok(())
    }

    /// Handles a metrics report: hands it to the writer with its ingest budget, puts it in line
    /// for budget, or defers it (`session/deferral.rs`), whose answer it returns.
    pub(super) async fn on_report(
        &mut self,
        report: pb::MetricsReport,
    ) -> Result<Option<pb::MetricsDeferred>, ServerError> {
        let n = report.samples.len();
        if n > self.limits.max_samples_per_report {
            return Err(ServerError::ResourceExhausted(format!(
                "metrics report holds {n} samples; at most {} are allowed per report",
                self.limits.max_samples_per_report
            )));
        }
        let Some(last_seq) = report.samples.last().map(|sample| sample.seq) else {
            return Ok(None);
        };
        // A report written before the agent read a deferral would, if stored, go ahead of the
        // deferred samples.
        let held = self.deferral.holds(report.deferred_seq);
        let admission = if held { None } else { self.writer.try_admit(n) };
        if admission.is_none() && (held || (self.deferral.accepted() && !self.writer.has_room(n))) {
            // Before its samples are converted: a deferral costs their decoding alone, and they
            // are checked when they come again.
            self.limits.metrics.reports_deferred.inc();
            let retry_after =
                self.deferral
                    .defer(last_seq, self.limits.max_report_interval, rand::random());
            return Ok(Some(pb::MetricsDeferred {
                last_seq,
                retry_after: Some(convert::duration(retry_after)),
            }));
        }
        let samples = self.accept_samples(report)?;
        self.deferral.admitted();
        match admission {
            Some(admission) => {
                self.hand_over(samples, Ok(admission), Instant::now())
                    .await?
            }
            None => {
                let wait = self.writer.admit(samples.len());
                self.admitting = Some((wait, samples, Instant::now()));
            }
        }
        Ok(None)
    }

    /// Validates a report of at most `max_samples_per_report` samples and converts them.
    /// Nothing is stored unless the whole report is valid.
    fn accept_samples(&mut self, report: pb::MetricsReport) -> Result<Vec<Sample>, ServerError> {
        let mut samples = Vec::with_capacity(report.samples.len());
        let mut prev = 0;
        let ceiling = self.max_seq.saturating_add(self.limits.max_seq_jump);
        let now = SystemTime::now();
        for raw in report.samples {
            let sample = convert::sample_from_pb(raw, &self.limits.report, now)?;
            if sample.seq <= prev {
                return Err(ServerError::invalid(format!(
                    "sample seq {} is not greater than the previous seq {prev} in the same report",
                    sample.seq
                )));
            }
            if sample.seq > ceiling {
                return Err(ServerError::invalid(format!(
                    "sample seq {} is too far ahead of the last known seq {} (at most {} ahead)",
                    sample.seq, self.max_seq, self.limits.max_seq_jump
                )));
            }
            prev = sample.seq;
            samples.push(sample);
        }
        self.max_seq = self.max_seq.max(prev);
        Ok(samples)
    }
}

/// Waits for the ingest budget of the report in `admitting`; never ready without one.
///
/// # Cancellation
///
/// Cancel safe: the wait stays in `admitting`, in its place in line.
pub(super) async fn admission(
    admitting: &mut Option<(Admitting, Vec<Sample>, Instant)>,
) -> Result<crate::writer::Admission, ServerError> {
    match admitting {
        Some((wait, ..)) => wait.as_mut().await,
        None => std::future::pending().await,
    }
}
