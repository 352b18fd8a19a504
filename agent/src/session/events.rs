//! The session's side of events: sending the spool's events as `EventReport`s and applying
//! the server's `EventAck`s.
//!
//! **Invariant:** reports go out in seq order and at most [`MAX_REPORTS_IN_FLIGHT`] await
//! their ack at once, so a spool that filled during a long outage drains at the pace the
//! server stores it (and within its per-stream message rate), never as one burst. The spool
//! forgets an event only when an ack covers its seq; a new stream starts again from the last
//! ack (`Welcome.last_durable_event_seq`), so a report lost with a broken stream is re-sent.

use tokio::time::Instant;
use tracing::{debug, warn};

use super::{SendFailed, Session};
use crate::convert;
use crate::session::EventAck;

/// `EventReport`s written to the stream and not yet acknowledged, at most.
pub(crate) const MAX_REPORTS_IN_FLIGHT: usize = 2;

// === impl Session ===

impl Session<'_> {
    /// Sends what the spool holds beyond this stream's last report, while the window allows.
    pub(super) async fn flush_events(&mut self) -> Result<(), SendFailed> {
        if self.ctx.shared.is_muted() {
            return Ok(());
        }
        while self.events_in_flight.len() < MAX_REPORTS_IN_FLIGHT {
            if !self.send_event_report(false).await? {
                break;
            }
        }
        Ok(())
    }

    /// At shutdown (the token already cancelled): one more report if there is something to
    /// send, whatever the window, written even though the agent is stopping.
    pub(super) async fn flush_events_unless_closed(&mut self) {
        match self.send_event_report(true).await {
            Ok(_) | Err(SendFailed::Closed | SendFailed::Cancelled) => {}
        }
    }

    /// Sends one report of the next events; `false` if there were none (or the spool could
    /// not be read: logged, and tried again at the next wake-up).
    async fn send_event_report(&mut self, stopping: bool) -> Result<bool, SendFailed> {
        let Some(events) = self.ctx.shared.events.clone() else {
            return Ok(false);
        };
        let batch = match events.read(self.events_sent_through).await {
            Ok(batch) => batch,
            Err(err) => {
                warn!("failed to read the event spool: {err}");
                return Ok(false);
            }
        };
        let Some(last_seq) = batch.last().map(|event| event.seq) else {
            return Ok(false);
        };
        let report = convert::event_report(&batch);
        if stopping {
            self.tx.send(report).await.map_err(|_| SendFailed::Closed)?;
            self.ctx.shared.stats.message_sent();
        } else {
            self.send(report).await?;
        }
        self.events_sent_through = last_seq;
        self.events_in_flight
            .push_back((last_seq, Instant::now(), batch.len()));
        self.ctx.shared.stats.add_events_sent(batch.len());
        debug!(n_events = batch.len(), last_seq, "events sent");
        Ok(true)
    }

    /// Applies an `EventAck`: the spool forgets what it covers, and the window opens again.
    pub(super) fn on_event_ack(&mut self, ack: &EventAck) {
        let Some(events) = &self.ctx.shared.events else {
            return;
        };
        for rejection in &ack.rejected {
            warn!(
                seq = rejection.seq,
                code = ?rejection.code,
                reason = %rejection.reason,
                "the server rejected an event; it is dropped from the spool"
            );
        }
        self.ctx
            .shared
            .stats
            .add_events_rejected(ack.rejected.len());
        events.ack(ack.durable_seq);
        let now = Instant::now();
        while let Some(&(seq, sent_at, n_events)) = self.events_in_flight.front()
            && seq <= ack.durable_seq
        {
            if let Some(histogram) = &self.ctx.shared.event_ack_latency {
                histogram.record_n(now.saturating_duration_since(sent_at), n_events as u64);
            }
            self.events_in_flight.pop_front();
        }
        debug!(durable_seq = ack.durable_seq, "events acknowledged");
        // More may wait in the spool now that the window has room.
        events.ready().notify_one();
    }
}
