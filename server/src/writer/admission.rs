//! The ingest budget: how many samples all sessions together may have read and not yet seen
//! acknowledged. A report takes its samples' worth ([`WriterHandle::try_admit`],
//! [`WriterHandle::admit`]) before it is queued and holds it, as an [`Admission`], until the
//! batch holding it is committed and acked, or failed (`batch.rs` drops it last). Waiters are
//! served first come, first served (tokio's semaphore is fair, and `try_admit` never passes a
//! waiter), one report per session at a time, so a session flooding big reports gets its turn
//! like every other and no more.
//!
//! The line itself is bounded for the agents that accept a deferral ([`WriterHandle::has_room`]):
//! a report that would wait behind `ingest_queue` samples or more is answered
//! `MetricsDeferred` instead and waits in its agent's buffer, so what the server holds, and a
//! report's wait inside it, stays about `(budget + queue) / commit rate` at any offered load.

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::WriterHandle;
use crate::error::ServerError;

/// A share of the ingest budget, held by a report from [`WriterHandle::admit`] until the batch
/// holding it is committed and acked, or failed.
#[derive(Debug)]
pub struct Admission(OwnedSemaphorePermit);

impl Admission {
    /// Joins `other` (of the same budget) to this one, to be given back together.
    pub(super) fn merge(&mut self, other: Self) {
        self.0.merge(other.0);
    }
}

/// A wait for ingest budget, in line behind the sessions that asked before.
pub type Admitting =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Admission, ServerError>> + Send>>;

// === impl WriterHandle ===

impl WriterHandle {
    /// The ingest budget for a report of `n` samples, if it is free now and nobody waits for
    /// budget before this caller.
    pub fn try_admit(&self, n: usize) -> Option<Admission> {
        let permit = self
            .admission
            .clone()
            .try_acquire_many_owned(self.cost(n))
            .ok()?;
        self.observe_admitted();
        Some(Admission(permit))
    }

    /// Waits for the ingest budget for a report of `n` samples, behind every caller that
    /// waits already (first come, first served).
    ///
    /// # Errors
    ///
    /// `Unavailable` if the writer has stopped.
    pub fn admit(&self, n: usize) -> Admitting {
        let cost = self.cost(n);
        let acquire = self.admission.clone().acquire_many_owned(cost);
        let handle = self.clone();
        // In line from now until the budget is taken or the wait is dropped.
        let in_line = InLine::join(&self.depth.waiting, cost);
        Box::pin(async move {
            let permit = acquire.await.map_err(|_| ServerError::Unavailable)?;
            drop(in_line);
            handle.observe_admitted();
            Ok(Admission(permit))
        })
    }

    /// Whether a report of `n` samples may join the line for ingest budget: while nothing
    /// waits in it, or while what waits and the report together stay within `ingest_queue`
    /// samples. A report of an agent that accepts a deferral is deferred otherwise. The count
    /// is read without a lock: two sessions deciding at once may both join, passing the bound
    /// by a report, never more than once each.
    pub fn has_room(&self, n: usize) -> bool {
        // The gauge only counts `InLine`s alive, so it is never negative.
        let waiting = usize::try_from(self.depth.waiting.get()).unwrap_or(0);
        waiting == 0 || waiting + self.cost(n) as usize <= self.ingest_queue
    }

    /// The budget a report of `n` samples takes: one per sample, at most the whole budget.
    fn cost(&self, n: usize) -> u32 {
        u32::try_from(n).unwrap_or(u32::MAX).clamp(1, self.budget)
    }

    fn observe_admitted(&self) {
        observe_budget(&self.depth.admitted, &self.admission, self.budget);
    }
}

/// A report's samples counted in the line for ingest budget until dropped, in the gauge
/// `tether_writer_queue_depth{queue="waiting_samples"}`, which [`WriterHandle::has_room`] reads.
struct InLine {
    waiting: Gauge,
    samples: i64,
}

impl InLine {
    fn join(waiting: &Gauge, samples: u32) -> Self {
        let samples = i64::from(samples);
        waiting.inc_by(samples);
        Self {
            waiting: waiting.clone(),
            samples,
        }
    }
}

impl Drop for InLine {
    fn drop(&mut self) {
        self.waiting.dec_by(self.samples);
    }
}

/// Sets `gauge` to the ingest budget in use.
pub(super) fn observe_budget(gauge: &Gauge, admission: &Semaphore, budget: u32) {
    let used = (budget as usize).saturating_sub(admission.available_permits());
    gauge.set(i64::try_from(used).unwrap_or(i64::MAX));
}
