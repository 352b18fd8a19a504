//! One live `Connect` stream: its shared state, and the loop that drives it.
//!
//! A session is not a task. The inbound `Streaming` is polled from inside the outbound response
//! stream (see [`SessionLoop`]), and everything the rest of the server needs to tell the session
//! (a durable ack, a Goodbye, "you went silent") is a field of [`Session`] plus one `Notify`.
//! This keeps an idle session at a few hundred bytes of server state beyond tonic's own buffers:
//! no spawned task, no per-session channel.
//!
//! Liveness updates go through one path: [`SessionGuard`]'s `Drop` tells the registry that the
//! stream ended, whether it ended by EOF, error, Goodbye, replacement or cancellation.
//!
//! # Backpressure
//!
//! A session reads its next message only while it has fewer than `reports_in_flight` metrics
//! reports read and not yet acknowledged, and no report waiting for ingest budget
//! ([`WriterHandle::admit`]). Otherwise it is *held*: it stops polling its inbound stream, so
//! HTTP/2 flow control stops the agent, whose own buffer keeps the samples, while the loop
//! still sends acks, command messages and Goodbyes. A held agent's silence is the server's
//! doing, so it does not count towards stale or offline (`silent_for` is zero while held, and
//! silence counts again from the release); a dead peer is still found by the connection's
//! keepalive, which ends the stream.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use futures::Stream;
use tether_proto as pb;
use tokio::sync::Notify;
use tonic::{Status, Streaming};

use crate::command::Engine;
use crate::command::record::Offer;
use crate::convert;
use crate::domain::{AgentId, OrgId, Sample, SessionId, StatusReason};
use crate::error::ServerError;
use crate::metrics::Metrics;
use crate::rate::TokenBucket;
use crate::registry::Registry;
use crate::writer::{Admitting, WriterHandle};

mod deferral;
mod event_report;
mod metrics_report;
mod outbox;
pub mod pacing;

use self::metrics_report::admission;
pub use self::outbox::{CommandMessage, MAX_ACKS_PER_MESSAGE};

/// Why the server ends a session on its own initiative.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum CloseReason {
    /// Still open.
    None = 0,
    /// A newer session of the same agent took over: send `Goodbye(REPLACED)`.
    Replaced = 1,
    /// The agent was silent for `offline_after`: end the stream with `UNAVAILABLE`.
    Silent = 2,
    /// The server is shutting down: send `Goodbye(SERVER_DRAINING)`.
    Draining = 3,
    /// The credential was revoked: send `Goodbye(REVOKED)`.
    Revoked = 4,
    /// A batch holding samples of this session failed to commit: end the stream with
    /// `UNAVAILABLE`, so the agent reconnects and re-sends from its Welcome's durable seq.
    WriteFailed = 5,
}

impl CloseReason {
    /// The reason's name in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "stream_closed",
            Self::Replaced => "replaced",
            Self::Silent => "silent",
            Self::Draining => "server_draining",
            Self::Revoked => "revoked",
            Self::WriteFailed => "write_failed",
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Replaced,
            2 => Self::Silent,
            3 => Self::Draining,
            4 => Self::Revoked,
            5 => Self::WriteFailed,
            _ => Self::None,
        }
    }
}

/// State shared between a session's stream loop, the registry, the liveness pass and the writer.
#[derive(Debug)]
pub struct Session {
    pub id: SessionId,
    pub org: OrgId,
    pub agent: AgentId,
    /// Monotonic time of the last inbound message, in milliseconds since [`Session::epoch`].
    /// Written on every message (one relaxed store), read by the liveness pass.
    last_activity_ms: AtomicU64,
    /// On tokio's clock (the system's monotonic clock outside tests), so that unit tests with
    /// paused time drive silence.
    epoch: tokio::time::Instant,
    /// Wall-clock time at `epoch`, to report activity as `last_seen`.
    epoch_wall: SystemTime,
    /// Set by the liveness pass when it marks the agent stale, so the next message knows to
    /// report the agent back online without taking the registry lock on every message.
    pub(crate) stale: AtomicBool,
    /// Set while the loop does not read the agent's stream because of backpressure: its
    /// silence is the server's, not the agent's.
    held: AtomicBool,
    /// Highest seq the writer has made durable for this session's agent; the loop sends
    /// `MetricsAck` when it moves.
    durable_seq: AtomicU64,
    close: AtomicU8,
    /// With [`CloseReason::Draining`]: milliseconds the agent is told to wait before it
    /// reconnects (`Goodbye.reconnect_after`), set by [`Session::drain`] before the close.
    reconnect_after_ms: AtomicU32,
    /// Set by the writer when a batch with samples of this session failed to commit. From then
    /// on the writer stores and acks nothing more of this session, whatever its close reason:
    /// a later ack would cover the samples that were not written.
    write_failed: AtomicBool,
    /// Command messages for the agent (acks, offers, cancels), filled by the command engine.
    /// `None` while there are none: an idle session pays for the empty slot only, and commands
    /// cost memory only while they exist.
    commands: Mutex<Option<Box<outbox::Outbox>>>,
    /// Wakes the loop when `durable_seq`, `close` or `commands` changes. `notify_one` stores a
    /// permit, so a wake-up that arrives while the loop is busy is not lost.
    notify: Notify,
}

// === impl Session ===

impl Session {
    pub fn new(id: SessionId, org: OrgId, agent: AgentId, durable_seq: u64) -> Self {
        Self {
            id,
            org,
            agent,
            last_activity_ms: AtomicU64::new(0),
            epoch: tokio::time::Instant::now(),
            epoch_wall: SystemTime::now(),
            stale: AtomicBool::new(false),
            held: AtomicBool::new(false),
            durable_seq: AtomicU64::new(durable_seq),
            close: AtomicU8::new(CloseReason::None as u8),
            reconnect_after_ms: AtomicU32::new(0),
            write_failed: AtomicBool::new(false),
            commands: Mutex::new(None),
            notify: Notify::new(),
        }
    }

    /// Records inbound activity now.
    pub fn touch(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_activity_ms.store(ms, Ordering::Relaxed);
    }

    /// How long since the last inbound message (or since the session opened, or since the
    /// server last held it back); zero while the server holds it back.
    pub fn silent_for(&self, now: tokio::time::Instant) -> Duration {
        if self.is_held() {
            return Duration::ZERO;
        }
        let last =
            self.epoch + Duration::from_millis(self.last_activity_ms.load(Ordering::Relaxed));
        now.saturating_duration_since(last)
    }

    /// Marks the session held back (its stream not read) or released. Both count as activity,
    /// so silence is measured only while the server reads the stream.
    fn hold(&self, held: bool) {
        // Activity first: the liveness pass never sees the flag cleared with the activity
        // from before the hold.
        self.touch();
        self.held.store(held, Ordering::Release);
    }

    /// Whether the server holds the session back (does not read its stream).
    pub fn is_held(&self) -> bool {
        self.held.load(Ordering::Acquire)
    }

    /// How long the session has been open.
    pub fn open_for(&self) -> Duration {
        self.epoch.elapsed()
    }

    /// Wall-clock time of the last inbound message (or of the session's start).
    pub fn last_seen(&self) -> SystemTime {
        self.epoch_wall + Duration::from_millis(self.last_activity_ms.load(Ordering::Relaxed))
    }

    /// Highest seq the writer has acknowledged as durable for this session's agent.
    pub fn durable_seq(&self) -> u64 {
        self.durable_seq.load(Ordering::Acquire)
    }

    /// Called by the writer after a flush made samples up to `seq` durable.
    pub fn acked(&self, seq: u64) {
        if self.durable_seq.fetch_max(seq, Ordering::AcqRel) < seq {
            self.notify.notify_one();
        }
    }

    /// Called by the writer when a batch holding samples of this session failed to commit: the
    /// session stores nothing more and ends.
    pub fn fail_writes(&self) {
        self.write_failed.store(true, Ordering::Release);
        self.close(CloseReason::WriteFailed);
    }

    /// Whether a batch holding samples of this session failed to commit.
    pub fn writes_failed(&self) -> bool {
        self.write_failed.load(Ordering::Acquire)
    }

    /// Asks the session to end. The first reason wins.
    pub fn close(&self, reason: CloseReason) {
        if self
            .close
            .compare_exchange(
                CloseReason::None as u8,
                reason as u8,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
        {
            self.notify.notify_one();
        }
    }

    pub fn close_reason(&self) -> CloseReason {
        CloseReason::from_u8(self.close.load(Ordering::Acquire))
    }

    /// Ends the session because the server shuts down, telling the agent to come back after
    /// `reconnect_after` (unless the session was already ending for another reason).
    pub fn drain(&self, reconnect_after: Duration) {
        let ms = u32::try_from(reconnect_after.as_millis()).unwrap_or(u32::MAX);
        // Released by the close below, which the loop reads with Acquire.
        self.reconnect_after_ms.store(ms, Ordering::Relaxed);
        self.close(CloseReason::Draining);
    }

    /// The delay [`Session::drain`] gave, for the `Goodbye`.
    pub fn reconnect_after(&self) -> Duration {
        Duration::from_millis(u64::from(self.reconnect_after_ms.load(Ordering::Relaxed)))
    }

    /// Queues `CommandAck`s: every update of each invocation up to its seq is durable (or will
    /// never be stored). Acks of one invocation merge.
    pub fn push_acks(&self, acks: impl IntoIterator<Item = (String, u64)>) {
        let mut acks = acks.into_iter().peekable();
        if acks.peek().is_none() {
            return;
        }
        self.with_outbox(|outbox| {
            for (id, seq) in acks {
                outbox.ack(id, seq);
            }
        });
    }

    /// Queues an offer, after the offers and cancels already waiting.
    pub fn push_offer(&self, offer: Offer) {
        self.with_outbox(|outbox| outbox.offer(offer));
    }

    /// Queues a cancel, after the offers and cancels already waiting.
    pub fn push_cancel(&self, invocation_id: String) {
        self.with_outbox(|outbox| outbox.cancel(invocation_id));
    }

    /// The next command message for the agent; frees the outbox once it is empty.
    pub fn next_command_message(&self) -> Option<CommandMessage> {
        let mut slot = self.outbox();
        let outbox = slot.as_mut()?;
        let message = outbox.next();
        if outbox.is_empty() {
            *slot = None;
        }
        message
    }

    fn with_outbox(&self, push: impl FnOnce(&mut outbox::Outbox)) {
        push(self.outbox().get_or_insert_with(Box::default));
        self.notify.notify_one();
    }

    fn outbox(&self) -> MutexGuard<'_, Option<Box<outbox::Outbox>>> {
        // Each change under this lock is a push or a pop that cannot panic midway.
        self.commands.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Marks the session closed in the registry when dropped, whatever ended the stream, and logs
/// the one line that says so.
pub struct SessionGuard {
    registry: Arc<Registry>,
    session: Arc<Session>,
    /// The agent's address, for the log.
    peer: Option<SocketAddr>,
    /// The agent said Goodbye before the stream ended.
    goodbye: bool,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        let close = self.session.close_reason();
        let reason = if self.goodbye {
            StatusReason::Goodbye
        } else {
            match close {
                CloseReason::Silent => StatusReason::Silent,
                _ => StatusReason::StreamClosed,
            }
        };
        let session = &self.session;
        // Whole milliseconds: a session's length, not the clock's resolution.
        let open_for = Duration::from_millis(
            u64::try_from(session.open_for().as_millis()).unwrap_or(u64::MAX),
        );
        tracing::info!(
            agent = %session.agent,
            org = %session.org,
            session = %session.id,
            peer = self.peer.map(tracing::field::display),
            reason = %if self.goodbye { "goodbye" } else { close.as_str() },
            duration = %humantime::format_duration(open_for),
            "session closed"
        );
        self.registry.session_closed(&self.session, reason);
    }
}

/// Limits a session enforces on what the agent sends.
#[derive(Clone)]
pub struct SessionLimits {
    pub max_samples_per_report: usize,
    pub max_seq_jump: u64,
    /// What a sample may hold: text, disks, how far ahead its time may be.
    pub report: convert::ReportLimits,
    /// Sustained inbound messages per second (token bucket refill rate).
    pub messages_per_second: f64,
    /// Inbound message burst (token bucket size).
    pub message_burst: f64,
    /// Metrics reports read and not yet acknowledged, at most, before the session stops
    /// reading (at least 1).
    pub reports_in_flight: usize,
    /// Least time the agent waits after a metrics ack before its next report (0: none).
    pub min_report_interval: Duration,
    /// Longest such wait adaptive pacing asks ([`pacing`]); at or below the least, none.
    pub max_report_interval: Duration,
    pub metrics: Arc<Metrics>,
}

/// Everything the stream loop owns. Dropping it (client gone, server shutting down) drops the
/// guard, which updates liveness.
pub struct SessionLoop {
    inbound: Streaming<pb::ConnectRequest>,
    session: Arc<Session>,
    guard: SessionGuard,
    registry: Arc<Registry>,
    writer: WriterHandle,
    /// Where command reports go.
    commands: Arc<Engine>,
    /// Where event reports go.
    events: Arc<crate::events::Events>,
    limits: SessionLimits,
    /// Highest seq accepted in this session (or durable at its start).
    max_seq: u64,
    /// Highest seq acknowledged to the agent.
    acked_seq: u64,
    /// Each report handed to the writer and not yet durable, oldest first: its last seq and
    /// when it was read (`tether_report_residence_seconds`).
    in_flight: std::collections::VecDeque<(u64, Instant)>,
    /// A report read and valid, waiting for ingest budget: the wait, the samples, and when
    /// the wait began.
    admitting: Option<(Admitting, Vec<Sample>, Instant)>,
    /// Whether the loop holds the session back (mirrors `Session::held`).
    held: bool,
    /// Inbound message budget.
    budget: TokenBucket,
    /// The wait each metrics ack asks before the agent's next report.
    pacing: pacing::Pacing,
    /// Deferrals: whether the agent accepts them, and those in a row (`session/deferral.rs`).
    deferral: deferral::Deferral,
    welcome: Option<pb::Welcome>,
    done: bool,
}

// === impl SessionLoop ===

impl SessionLoop {
    #[allow(
        clippy::too_many_arguments,
        reason = "the session's parts, each used once"
    )]
    pub fn new(
        inbound: Streaming<pb::ConnectRequest>,
        session: Arc<Session>,
        peer: Option<SocketAddr>,
        registry: Arc<Registry>,
        writer: WriterHandle,
        commands: Arc<Engine>,
        events: Arc<crate::events::Events>,
        limits: SessionLimits,
        welcome: pb::Welcome,
        accepts_deferred_reports: bool,
    ) -> Self {
        let durable = welcome.last_durable_seq;
        let (rate, burst) = (limits.messages_per_second, limits.message_burst);
        let pacing = pacing::Pacing::new(limits.min_report_interval, limits.max_report_interval);
        Self {
            inbound,
            guard: SessionGuard {
                registry: registry.clone(),
                session: session.clone(),
                peer,
                goodbye: false,
            },
            session,
            registry,
            writer,
            commands,
            events,
            limits,
            max_seq: durable,
            acked_seq: durable,
            in_flight: std::collections::VecDeque::new(),
            admitting: None,
            held: false,
            budget: TokenBucket::new(rate, burst, Instant::now()),
            pacing,
            deferral: deferral::Deferral::new(accepts_deferred_reports),
            welcome: Some(welcome),
            done: false,
        }
    }

    /// The response stream: `Welcome`, then pongs, acks, command messages and at most one
    /// Goodbye, interleaved with handling every inbound message.
    pub fn into_stream(self) -> impl Stream<Item = Result<pb::ConnectResponse, Status>> + Send {
        futures::stream::unfold(self, |mut this| async move {
            let item = this.next_item().await?;
            Some((item, this))
        })
    }

    async fn next_item(&mut self) -> Option<Result<pb::ConnectResponse, Status>> {
        use pb::connect_response::Message as Out;
        if let Some(welcome) = self.welcome.take() {
            return Some(Ok(respond(Out::Welcome(welcome))));
        }
        loop {
            if self.done {
                return None;
            }
            match self.session.close_reason() {
                CloseReason::None => {}
                CloseReason::Silent => {
                    self.done = true;
                    return Some(Err(Status::unavailable(
                        "session closed by the server: no message within offline-after",
                    )));
                }
                CloseReason::WriteFailed => {
                    self.done = true;
                    return Some(Err(Status::unavailable(
                        "the server could not store this session's samples; reconnect and send \
                         again from the Welcome's last_durable_seq",
                    )));
                }
                reason => {
                    self.done = true;
                    let reconnect_after =
                        (reason == CloseReason::Draining).then(|| self.session.reconnect_after());
                    return Some(Ok(respond(Out::Goodbye(convert::agent::goodbye_to_pb(
                        reason,
                        reconnect_after,
                    )))));
                }
            }
            let durable = self.session.durable_seq();
            while let Some(&(seq, read_at)) = self.in_flight.front()
                && seq <= durable
            {
                self.limits
                    .metrics
                    .report_residence_seconds
                    .observe(read_at.elapsed().as_secs_f64());
                self.in_flight.pop_front();
            }
            if durable > self.acked_seq {
                self.acked_seq = durable;
                let report_after = self.pacing.report_after();
                if let Some(after) = report_after
                    && self.pacing.adapted()
                {
                    self.limits
                        .metrics
                        .report_pace_seconds
                        .observe(after.as_secs_f64());
                }
                return Some(Ok(respond(Out::MetricsAck(pb::MetricsAck {
                    durable_seq: durable,
                    report_after: report_after.map(convert::duration),
                }))));
            }
            if let Some(message) = self.session.next_command_message() {
                return Some(Ok(respond(convert::command::session_message_to_pb(
                    message,
                ))));
            }
            let read = self.admitting.is_none()
                && self.in_flight.len() < self.limits.reports_in_flight.max(1);
            if self.held == read {
                self.held = !read;
                self.session.hold(self.held);
            }
            let event = tokio::select! {
                biased;
                () = self.session.notify.notified() => None,
                admitted = admission(&mut self.admitting), if self.admitting.is_some() => {
                    Some(Event::Admitted(admitted))
                }
                msg = self.inbound.message(), if read => Some(Event::Inbound(msg)),
            };
            match event {
                None => {}
                Some(Event::Admitted(admitted)) => {
                    let Some((_, samples, since)) = self.admitting.take() else {
                        continue;
                    };
                    if let Err(e) = self.hand_over(samples, admitted, since).await {
                        self.done = true;
                        return Some(Err(e.into()));
                    }
                }
                Some(Event::Inbound(Ok(Some(msg)))) => {
                    self.session.touch();
                    count_message(&self.limits.metrics, &msg);
                    if !self.budget.try_take(Instant::now()) {
                        self.limits.metrics.limit("stream_message_rate");
                        self.done = true;
                        return Some(Err(Status::resource_exhausted(format!(
                            "agent stream exceeds {} messages per second",
                            self.limits.messages_per_second
                        ))));
                    }
                    if self.session.stale.load(Ordering::Relaxed)
                        && self.session.stale.swap(false, Ordering::AcqRel)
                    {
                        self.registry.session_active(&self.session);
                    }
                    match self.handle(msg).await {
                        Ok(Some(out)) => return Some(Ok(respond(out))),
                        Ok(None) => {}
                        Err(status) => {
                            self.done = true;
                            return Some(Err(status));
                        }
                    }
                }
                Some(Event::Inbound(Ok(None))) => {
                    tracing::debug!(agent = %self.session.agent, session = %self.session.id, "agent closed its stream");
                    return None;
                }
                Some(Event::Inbound(Err(status))) => {
                    tracing::info!(
                        agent = %self.session.agent,
                        session = %self.session.id,
                        code = ?status.code(),
                        "agent stream ended: {}",
                        status.message()
                    );
                    // If the agent is still there (e.g. it sent an oversized or undecodable
                    // message), it learns why its stream ends.
                    self.done = true;
                    return Some(Err(inbound_error(status, &self.limits.metrics)));
                }
            }
        }
    }

    async fn handle(
        &mut self,
        msg: pb::ConnectRequest,
    ) -> Result<Option<pb::connect_response::Message>, Status> {
        use pb::connect_request::Message as In;
        match msg.message {
            Some(In::Ping(ping)) => Ok(Some(pb::connect_response::Message::Pong(
                convert::agent::pong_to_pb(ping, SystemTime::now())?,
            ))),
            Some(In::Metrics(report)) => {
                if let Some(waited) = report.previous_ack_latency {
                    let waited = convert::duration_from_pb(waited, "previous_ack_latency")?
                        .min(pacing::LONGEST_WAIT);
                    self.limits
                        .metrics
                        .agent_ack_latency_seconds
                        .observe(waited.as_secs_f64());
                    self.pacing.observe(waited, Instant::now());
                }
                Ok(self
                    .on_report(report)
                    .await?
                    .map(pb::connect_response::Message::MetricsDeferred))
            }
            Some(In::Goodbye(bye)) => {
                // Validated (bounded, no control characters) and logged quoted.
                let reason = convert::agent::goodbye_from_pb(bye)?;
                tracing::debug!(agent = %self.session.agent, session = %self.session.id, reason = ?reason, "agent said goodbye");
                self.guard.goodbye = true;
                self.done = true;
                Ok(None)
            }
            Some(In::Commands(report)) => {
                let updates = convert::command::report_from_pb(report)?;
                if !updates.is_empty() {
                    self.commands.report(&self.session, updates).await?;
                }
                Ok(None)
            }
            Some(In::Events(report)) => {
                let ack = event_report::ingest(&self.events, &self.session, report).await?;
                Ok(Some(pb::connect_response::Message::EventAck(ack)))
            }
            Some(In::Hello(_)) => {
                Err(ServerError::invalid("Hello may only be the first message of a session").into())
            }
            // A message of a kind this server does not know (a newer agent's), or none: ignored,
            // as the wire contract asks; counted as `other` and under the stream's rate limit.
            None => {
                tracing::debug!(agent = %self.session.agent, "ignoring a message of an unknown kind");
                Ok(None)
            }
        }
    }
}

/// What woke the loop besides its `Notify`.
#[allow(
    clippy::large_enum_variant,
    reason = "one value on the loop's stack at a time, moved straight into its handling"
)]
enum Event {
    /// The report waiting for ingest budget got it (or the writer stopped).
    Admitted(Result<crate::writer::Admission, ServerError>),
    /// The next inbound message, its end, or the stream's failure.
    Inbound(Result<Option<pb::ConnectRequest>, Status>),
}

/// The status to end a session with after its inbound stream failed. tonic reports an
/// over-limit message as `OUT_OF_RANGE`; Tether's contract for limits is `RESOURCE_EXHAUSTED`.
pub(crate) fn inbound_error(status: Status, metrics: &Metrics) -> Status {
    if status.code() == tonic::Code::OutOfRange {
        metrics.limit("max_message_bytes");
        Status::resource_exhausted(status.message().to_owned())
    } else {
        status
    }
}

/// Counts one inbound message under its kind (`tether_agent_messages_total{kind}`).
pub(crate) fn count_message(metrics: &Metrics, msg: &pb::ConnectRequest) {
    use pb::connect_request::Message as In;
    let counters = &metrics.agent_messages;
    let counter = match &msg.message {
        Some(In::Hello(_)) => &counters.hello,
        Some(In::Metrics(_)) => &counters.metrics,
        Some(In::Ping(_)) => &counters.ping,
        Some(In::Commands(_)) => &counters.commands,
        Some(In::Goodbye(_)) => &counters.goodbye,
        Some(In::Events(_)) => &counters.events,
        None => &counters.other,
    };
    counter.inc();
}

fn respond(message: pb::connect_response::Message) -> pb::ConnectResponse {
    pb::ConnectResponse {
        message: Some(message),
    }
}
