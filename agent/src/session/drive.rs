//! The session's steady state after `Welcome`: one `select!` loop that reads the server's
//! messages and applies them, pings every heartbeat interval, and sends samples, events and
//! command reports as they come.
//!
//! **Invariants:** at most [`MAX_REPORTS_IN_FLIGHT`] (one) metrics report awaits its ack (the
//! rest of the samples wait in the buffer and leave at the next ack, or once the ack's
//! `report_after` has passed, at most [`MAX_REPORT_AFTER`]; a full report is never held, and
//! what pacing holds leaves before the goodbye); pings are never paced; at most one
//! `CommandReport` per [`REPORT_INTERVAL`]; a muted agent sends nothing; a stream silent for
//! [`SILENT_HEARTBEATS`] heartbeat intervals (or the server's `offline_after`, if longer) is
//! dead.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use tether_proto as pb;
use tokio::time::{Instant, MissedTickBehavior};
use tonic::codec::Streaming;
use tracing::{debug, warn};

use super::clock::clock_sample;
use super::{
    InFlight, MAX_REPORT_AFTER, MAX_REPORTS_IN_FLIGHT, MAX_SAMPLES_PER_REPORT, PACING_TICK,
    REPORT_INTERVAL, SILENT_HEARTBEATS, SendFailed, ServerMessage, Session, SessionEnd, Shared,
    Welcome,
};
use crate::AgentError;
use crate::convert;

impl Session<'_> {
    /// The steady state after `Welcome`.
    pub(super) async fn drive(
        &mut self,
        mut inbound: Streaming<pb::ConnectResponse>,
        welcome: &Welcome,
    ) -> Result<SessionEnd, AgentError> {
        let ctx = self.ctx;
        let heartbeat_interval = welcome.heartbeat_interval;
        let mut heartbeat =
            tokio::time::interval_at(Instant::now() + heartbeat_interval, heartbeat_interval);
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let silence_limit =
            (heartbeat_interval * SILENT_HEARTBEATS).max(welcome.offline_after.unwrap_or_default());
        // Fires `silence_limit` after the last inbound message: moved when it fires, not at
        // every message (a timer reset is a trip to the runtime's timer wheel).
        let mut last_heard = Instant::now();
        let silence = tokio::time::sleep(silence_limit);
        tokio::pin!(silence);
        // The futures waited on in every turn of the loop live across turns: one made in each
        // turn registers with its `Notify` (a lock, a list insert) and unregisters when dropped.
        let shutdown = ctx.shutdown.cancelled();
        tokio::pin!(shutdown);
        let new_samples = ctx.shared.new_samples.notified();
        tokio::pin!(new_samples);
        let events = events_ready(ctx.shared);
        tokio::pin!(events);
        let commands_ready = ctx.shared.commands.ready().notified();
        tokio::pin!(commands_ready);
        // Armed when the command subsystem has something to report; fires no earlier than
        // `next_report_at`. Armed at once: unacknowledged updates are re-sent after `Welcome`.
        let report_timer = tokio::time::sleep_until(self.next_report_at);
        tokio::pin!(report_timer);
        let mut report_armed = true;
        // Fires when the server's pacing (`next_metrics_at`) lets the samples that waited go.
        // Armed (set to that instant) only when samples wait for it.
        let metrics_timer = tokio::time::sleep_until(self.next_metrics_at);
        tokio::pin!(metrics_timer);
        let mut metrics_timer_at = self.next_metrics_at;

        loop {
            if self.paced && metrics_timer_at != self.next_metrics_at {
                metrics_timer.as_mut().reset(self.next_metrics_at);
                metrics_timer_at = self.next_metrics_at;
            }
            tokio::select! {
                biased;
                () = &mut shutdown => return self.say_goodbye(inbound).await,
                message = inbound.message() => match message? {
                    None => {
                        return Ok(SessionEnd::Closed {
                            healthy: self.healthy,
                            reason: "server closed the stream".into(),
                        });
                    }
                    Some(response) => {
                        last_heard = Instant::now();
                        let message = ServerMessage::try_from(response)?;
                        let ack = matches!(
                            message,
                            ServerMessage::MetricsAck { .. } | ServerMessage::MetricsDeferred { .. }
                        );
                        if let Some(end) = self.on_message(message)? {
                            return Ok(end);
                        }
                        // An ack frees room for the samples that waited for it (at once, or
                        // when the server's pacing says).
                        if ack {
                            match self.flush_pending().await {
                                Ok(()) => {}
                                Err(SendFailed::Cancelled) => return self.say_goodbye(inbound).await,
                                Err(SendFailed::Closed) => return self.outbound_closed(inbound).await,
                            }
                        }
                    }
                },
                () = &mut silence => {
                    let deadline = last_heard + silence_limit;
                    if deadline > Instant::now() {
                        silence.as_mut().reset(deadline);
                        continue;
                    }
                    return Err(AgentError::Timeout("any message from the server"));
                }
                _ = heartbeat.tick(), if !ctx.shared.is_muted() => {
                    // The branch's condition is read when the select starts, so a tick that
                    // fires after a mute must check again.
                    if ctx.shared.is_muted() {
                        continue;
                    }
                    let nonce = self.next_nonce;
                    self.next_nonce += 1;
                    match self.send(convert::ping(nonce, SystemTime::now())).await {
                        Ok(()) => debug!(nonce, "ping sent"),
                        Err(SendFailed::Cancelled) => return self.say_goodbye(inbound).await,
                        Err(SendFailed::Closed) => return self.outbound_closed(inbound).await,
                    }
                }
                () = &mut metrics_timer, if self.paced => {
                    // Cleared first: a completed timer fires again at once while armed.
                    self.paced = false;
                    match self.flush_pending().await {
                        Ok(()) => {}
                        Err(SendFailed::Cancelled) => return self.say_goodbye(inbound).await,
                        Err(SendFailed::Closed) => return self.outbound_closed(inbound).await,
                    }
                }
                () = &mut new_samples, if !ctx.shared.is_muted() => {
                    new_samples.set(ctx.shared.new_samples.notified());
                    match self.flush_pending().await {
                        Ok(()) => {}
                        Err(SendFailed::Cancelled) => return self.say_goodbye(inbound).await,
                        Err(SendFailed::Closed) => return self.outbound_closed(inbound).await,
                    }
                }
                () = &mut events, if !ctx.shared.is_muted() => {
                    events.set(events_ready(ctx.shared));
                    match self.flush_events().await {
                        Ok(()) => {}
                        Err(SendFailed::Cancelled) => return self.say_goodbye(inbound).await,
                        Err(SendFailed::Closed) => return self.outbound_closed(inbound).await,
                    }
                }
                () = &mut commands_ready, if !report_armed => {
                    commands_ready.set(ctx.shared.commands.ready().notified());
                    report_armed = true;
                    report_timer.as_mut().reset(self.next_report_at.max(Instant::now()));
                }
                () = &mut report_timer, if report_armed && !ctx.shared.is_muted() => {
                    report_armed = false;
                    match self.send_command_report().await {
                        Ok(more) => {
                            if more {
                                report_armed = true;
                                report_timer.as_mut().reset(self.next_report_at);
                            }
                        }
                        Err(SendFailed::Cancelled) => return self.say_goodbye(inbound).await,
                        Err(SendFailed::Closed) => return self.outbound_closed(inbound).await,
                    }
                }
            }
        }
    }

    /// Handles one message after `Welcome`. Returns how the session ends, if it does.
    fn on_message(&mut self, message: ServerMessage) -> Result<Option<SessionEnd>, AgentError> {
        let stats = &self.ctx.shared.stats;
        match message {
            ServerMessage::Pong(pong) => {
                self.mark_healthy();
                let (Some(sent_at), Some(received_at)) =
                    (pong.ping_sent_at, pong.server_receive_time)
                else {
                    debug!(nonce = pong.nonce, "pong without timestamps");
                    return Ok(None);
                };
                let clock = clock_sample(sent_at, received_at, SystemTime::now());
                stats.set_clock(clock.rtt, clock.offset_micros);
                debug!(
                    nonce = pong.nonce,
                    rtt = ?clock.rtt,
                    clock_offset_micros = clock.offset_micros,
                    "pong"
                );
            }
            ServerMessage::MetricsAck {
                durable_seq,
                report_after,
            } => {
                self.mark_healthy();
                self.ctx.shared.apply_ack(durable_seq);
                self.next_metrics_at = paced_until(report_after);
                let now = Instant::now();
                while let Some(&InFlight {
                    last_seq, sent_at, ..
                }) = self.in_flight.front()
                    && last_seq <= durable_seq
                {
                    let waited = now.saturating_duration_since(sent_at);
                    if let Some(histogram) = &self.ctx.shared.ack_latency {
                        histogram.record(waited);
                    }
                    self.ack_wait = Some(waited);
                    self.in_flight.pop_front();
                }
                debug!(durable_seq, "metrics acknowledged");
            }
            ServerMessage::MetricsDeferred {
                last_seq,
                retry_after,
            } => {
                self.mark_healthy();
                // The server stored nothing of that report, nor of any written after it
                // (it defers those too, until a report names this deferral): they all go
                // again, from where that report started, once `retry_after` has passed.
                // A deferral of a report no longer in flight is an answer to one already
                // written again.
                if let Some(at) = self
                    .in_flight
                    .iter()
                    .position(|report| report.last_seq == last_seq)
                {
                    self.sent_through = self.in_flight[at].after;
                    self.in_flight.truncate(at);
                    self.deferred_seq = Some(last_seq);
                    self.next_metrics_at = paced_until(retry_after);
                    self.deferred_until = self.next_metrics_at;
                    stats.report_deferred();
                    debug!(last_seq, ?retry_after, "metrics report deferred");
                }
            }
            ServerMessage::Goodbye(goodbye) => return self.on_goodbye(goodbye).map(Some),
            ServerMessage::CommandOffer(offer) => {
                if let Some(arrivals) = &self.ctx.shared.offer_arrivals {
                    arrivals.record(SystemTime::now());
                }
                self.ctx.shared.commands.offer(offer);
            }
            ServerMessage::CommandCancel { invocation_id } => {
                self.ctx.shared.commands.cancel(&invocation_id);
            }
            ServerMessage::CommandAck(acks) => {
                self.mark_healthy();
                self.ctx.shared.commands.ack(&acks);
            }
            ServerMessage::EventAck(ack) => {
                self.mark_healthy();
                self.on_event_ack(&ack);
            }
            ServerMessage::Welcome(welcome) => {
                warn!(session_id = %welcome.session_id, "ignoring a second Welcome");
            }
            ServerMessage::Unknown => debug!("ignoring a message of an unknown type"),
        }
        Ok(None)
    }

    fn mark_healthy(&mut self) {
        if !self.healthy {
            self.healthy = true;
            debug!("session healthy");
        }
    }

    /// At a clean stop: sends the samples that only the server's pacing holds back, so that
    /// they are not lost with the buffer (which does not outlive the process). Gives up at
    /// `deadline` or when the stream is closed.
    pub(super) async fn send_paced_samples_unless_closed(&mut self, deadline: Instant) {
        // `paced`, not the clock: samples the pacing held are still held when their time has
        // just passed and the metrics timer has not fired yet.
        if self.ctx.shared.is_muted()
            || self.in_flight.len() >= MAX_REPORTS_IN_FLIGHT
            || !self.paced
        {
            return;
        }
        let Some((report, last_seq, n_samples)) = self.next_report() else {
            return;
        };
        if let Ok(Ok(())) = tokio::time::timeout_at(deadline, self.tx.send(report)).await {
            self.ctx.shared.stats.message_sent();
            self.report_written(last_seq, n_samples);
            debug!(n_samples, last_seq, "paced metrics sent before goodbye");
        }
    }

    /// The next report of the buffered samples not yet written to this stream (at most
    /// [`MAX_SAMPLES_PER_REPORT`]), with its last seq and its number of samples; it tells the
    /// server the last measured ack wait, once.
    fn next_report(&mut self) -> Option<(pb::ConnectRequest, u64, usize)> {
        // Converted straight from the buffer: one copy of each sample, not two.
        let batch = self.ctx.shared.buffer().map_after(
            self.sent_through,
            MAX_SAMPLES_PER_REPORT,
            |entry| pb::MetricsSample::from(entry),
        );
        let last_seq = batch.last()?.seq;
        let n_samples = batch.len();
        let report = convert::metrics_report(batch, self.ack_wait.take(), self.deferred_seq.take());
        Some((report, last_seq, n_samples))
    }

    /// Records a report written to the stream: in flight until its ack.
    fn report_written(&mut self, last_seq: u64, n_samples: usize) {
        self.in_flight.push_back(InFlight {
            last_seq,
            sent_at: Instant::now(),
            after: self.sent_through,
        });
        self.sent_through = last_seq;
        self.ctx.shared.stats.add_samples_sent(n_samples);
    }

    /// Sends every buffered sample not yet written to this stream, in reports of at most
    /// [`MAX_SAMPLES_PER_REPORT`], while fewer than [`MAX_REPORTS_IN_FLIGHT`] reports await
    /// their ack.
    pub(super) async fn flush_pending(&mut self) -> Result<(), SendFailed> {
        if self.ctx.shared.is_muted() {
            self.ctx.shared.buffer().wake_from(0);
            return Ok(());
        }
        loop {
            if self.in_flight.len() >= MAX_REPORTS_IN_FLIGHT {
                // The next ack sends what waits: new samples need not wake the session.
                self.ctx.shared.buffer().wake_from(u64::MAX);
                return Ok(());
            }
            // The server's pacing holds a report back (the metrics timer sends it), but never a
            // full one: a backlog drains at a full report per round trip whatever the pacing.
            // Counted before anything is copied, and decided under the buffer's lock together
            // with the sample whose push wakes the session next: the first one while nothing
            // waits, the one that fills a report while the pacing holds them, none while a
            // report awaits its ack (the sampler then does not wake the session at all).
            let pending = {
                let mut buffer = self.ctx.shared.buffer();
                // A report is full at half a buffer smaller than two reports, so that pacing
                // never holds samples until the buffer drops them.
                let full = MAX_SAMPLES_PER_REPORT.min(buffer.capacity() / 2).max(1);
                let pending = buffer.count_after(self.sent_through);
                let now = Instant::now();
                // After a deferral even a full report waits for its `retry_after`.
                self.paced = pending > 0
                    && (pending < full || now < self.deferred_until)
                    && now < self.next_metrics_at;
                if pending == 0 {
                    buffer.wake_from(0);
                } else if self.paced {
                    // Seqs are consecutive, and a buffer that dropped some holds at least two
                    // full reports: the push of this seq is the one that fills a report.
                    buffer.wake_from(self.sent_through.saturating_add(full as u64));
                }
                pending
            };
            if pending == 0 || self.paced {
                return Ok(());
            }
            let Some((report, last_seq, n_samples)) = self.next_report() else {
                return Ok(());
            };
            self.send(report).await?;
            self.report_written(last_seq, n_samples);
            debug!(n_samples, last_seq, "metrics sent");
        }
    }

    /// Sends one `CommandReport` of what this stream has not carried yet. Returns whether more
    /// waits (the report hit its size cap).
    async fn send_command_report(&mut self) -> Result<bool, SendFailed> {
        let Some(report) = self
            .ctx
            .shared
            .commands
            .next_report(self.commands_sent_through)
        else {
            return Ok(false);
        };
        self.send(convert::command_report(&report.updates)).await?;
        self.commands_sent_through = report.last_index;
        self.next_report_at = Instant::now() + REPORT_INTERVAL;
        debug!(
            n_updates = report.updates.len(),
            more = report.more,
            "command report sent"
        );
        Ok(report.more)
    }
}

/// When a report may go after an ack asking `report_after` (at most [`MAX_REPORT_AFTER`]):
/// now without one; else rounded up to the process's next [`PACING_TICK`], so that the reports
/// of agents sharing a process (the simulator's) leave in the same turn of its event loop and
/// share its writes, rather than one write each at scattered instants.
fn paced_until(report_after: Option<Duration>) -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let now = Instant::now();
    let Some(after) = report_after.filter(|after| !after.is_zero()) else {
        return now;
    };
    let epoch = *EPOCH.get_or_init(|| now);
    let due = (now + after.min(MAX_REPORT_AFTER)).saturating_duration_since(epoch);
    let tick = PACING_TICK.as_nanos();
    let ticks = due.as_nanos().div_ceil(tick);
    epoch + Duration::from_nanos(u64::try_from(ticks * tick).unwrap_or(u64::MAX))
}

/// Completes when the event subsystem has something new to send (never, without one).
async fn events_ready(shared: &Shared) {
    match &shared.events {
        Some(events) => events.ready().notified().await,
        None => std::future::pending().await,
    }
}
