//! One `Connect` stream, from `Hello` to its end.
//!
//! A session opens the stream with `Hello`, waits for `Welcome`, then re-sends every buffered
//! sample the server does not hold, forwards new samples as the sampler takes them, pings every
//! heartbeat interval, and applies acks. It ends when the server closes the stream or says
//! goodbye, when the stream breaks or goes silent, or when the agent shuts down (then it sends
//! its own goodbye first). The run loop decides what happens next from [`SessionEnd`].
//!
//! Longer than usual: one `select!` loop and the handlers of every server message share the
//! session's state (buffer marks, command outbox, timers); splitting them would pass that state
//! through every call.
//!
//! The buffer and the sampler live outside the session, in [`Shared`], so samples keep being
//! taken and numbered while disconnected. So does the command subsystem: the session hands it
//! offers, cancels and acks, lists its journaled invocations in `Hello`, and sends its updates
//! as coalesced `CommandReport`s, at most one per [`REPORT_INTERVAL`], re-sending after
//! `Welcome` whatever the server has not acknowledged.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use tether_proto as pb;
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::codec::Streaming;
use tracing::{debug, info, warn};

use crate::buffer::SampleBuffer;
use crate::client::{self, Transport};
use crate::collector::{AGENT_VERSION, SystemInfo};
use crate::command::Commands;
use crate::command::types::{InvalidOffer, Offer};
use crate::convert;
use crate::events::Events;
use crate::latency::{ArrivalLog, LatencyHistogram};
use crate::state::Enrollment;
use crate::{AgentError, AgentStats};

/// Most samples in one `MetricsReport`.
pub const MAX_SAMPLES_PER_REPORT: usize = 500;
/// How long the agent waits, after its goodbye, for the server to end the stream.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// Most one `CommandReport` per this interval: output never approaches the server's
/// per-stream message-rate limit, which metrics and pings share.
pub const REPORT_INTERVAL: Duration = Duration::from_millis(100);
/// Least time the agent waits for the server to answer a new stream (its response, then
/// `Welcome`). A server that read the stream's HEADERS answers within its Hello timeout (10 s
/// by default), with `Welcome` or `UNAVAILABLE` and a retry delay; a dead connection is found by
/// HTTP/2 keepalive. What is left for this timeout is a server so far behind that it has not
/// read the stream yet, and cancelling early there does harm: the RST_STREAM reaches the server
/// together with the HEADERS it cancels, and the server counts such resets as a Rapid Reset
/// attack. Sessions opened together on one connection (the simulator's) time out together, so a
/// short timeout got whole connections closed with GOAWAY under load.
pub const MIN_WELCOME_TIMEOUT: Duration = Duration::from_secs(60);
/// Capacity of the outbound message queue of one session.
const OUTBOUND_QUEUE: usize = 32;
/// Metrics reports written to a stream and not yet acknowledged, at most. Further samples
/// wait in the buffer and leave together, in one report, once an ack comes: when the server
/// is behind (and holds the stream back), the samples wait here rather than in the transport,
/// every report written is acked within a few of the server's commits, and the server is
/// sent fewer, larger reports.
const MAX_REPORTS_IN_FLIGHT: usize = 4;
/// A session with no inbound message for this many heartbeat intervals (or the server's
/// `offline_after`, if longer) is considered dead.
const SILENT_HEARTBEATS: u32 = 9;

/// State that outlives sessions: the sample buffer, the sampler's wake-up, the metrics interval
/// the sampler follows, and the stats.
pub(crate) struct Shared {
    /// Unacknowledged samples and the sequence counter. Locked briefly, never across `.await`.
    pub(crate) buffer: Mutex<SampleBuffer>,
    /// Signalled by the sampler after each new sample; the live session (if any) sends it.
    pub(crate) new_samples: Notify,
    /// Metrics interval from the latest `Welcome`; `None` until the first one.
    pub(crate) metrics_interval: watch::Sender<Option<Duration>>,
    pub(crate) stats: Arc<AgentStats>,
    /// The simulator's "hung agent": while set, the session keeps its stream open but sends
    /// nothing (no pings, no samples), so the server sees silence. Never set in a real agent.
    pub(crate) muted: AtomicBool,
    /// Where to record the time from writing a report to the ack covering it (simulator only).
    pub(crate) ack_latency: Option<Arc<LatencyHistogram>>,
    /// Where to record, per event, the time from writing its report to the ack covering it
    /// (simulator only).
    pub(crate) event_ack_latency: Option<Arc<LatencyHistogram>>,
    /// Where to record the time each command offer arrived (simulator only).
    pub(crate) offer_arrivals: Option<Arc<ArrivalLog>>,
    /// The command subsystem: invocations run and report across sessions.
    pub(crate) commands: Commands,
    /// The event subsystem; `None` in the simulator, whose agents keep no spool.
    pub(crate) events: Option<Events>,
}

/// Everything a session needs from the run loop.
pub(crate) struct SessionContext<'a> {
    pub(crate) transport: &'a Transport,
    pub(crate) connect_timeout: Duration,
    pub(crate) enrollment: &'a Enrollment,
    pub(crate) system_info: &'a SystemInfo,
    pub(crate) labels: &'a BTreeMap<String, String>,
    pub(crate) shared: &'a Shared,
    pub(crate) shutdown: &'a CancellationToken,
    /// The agent process's random instance id, sent in `Hello`.
    pub(crate) instance_id: &'a str,
}

/// How a session ended.
#[derive(Debug)]
pub(crate) enum SessionEnd {
    /// The agent is shutting down; it said goodbye.
    Shutdown,
    /// The server ended the session in an orderly way (closed the stream, replaced the session,
    /// drained without saying when to come back). Reconnect after backoff.
    Closed { healthy: bool, reason: String },
    /// The server is shutting down and said when to come back: reconnect after
    /// `reconnect_after` (its share of the spread that keeps a restart from becoming a
    /// reconnect storm), then with backoff if the server is not back yet.
    Drained {
        healthy: bool,
        reconnect_after: Duration,
        message: String,
    },
    /// The session failed. Reconnect after backoff if the error is retryable.
    Failed { healthy: bool, error: AgentError },
}

/// The server's `Welcome`, validated.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Welcome {
    pub(crate) session_id: String,
    pub(crate) server_time: Option<SystemTime>,
    pub(crate) heartbeat_interval: Duration,
    pub(crate) metrics_interval: Duration,
    pub(crate) stale_after: Option<Duration>,
    pub(crate) offline_after: Option<Duration>,
    pub(crate) last_durable_seq: u64,
    /// Highest durable update seq per journaled invocation listed in `Hello`.
    pub(crate) invocation_acks: Vec<(String, u64)>,
    /// Highest event seq the server settled for this agent.
    pub(crate) last_durable_event_seq: u64,
}

/// The server's `EventAck`: every event at or below `durable_seq` is settled.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct EventAck {
    pub(crate) durable_seq: u64,
    /// Events of the acked report the server did not store.
    pub(crate) rejected: Vec<EventRejection>,
}

/// One event the server refused to store, and why.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct EventRejection {
    pub(crate) seq: u64,
    pub(crate) code: tonic::Code,
    pub(crate) reason: String,
}

/// The server's answer to a `Ping`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Pong {
    pub(crate) nonce: u64,
    pub(crate) ping_sent_at: Option<SystemTime>,
    pub(crate) server_receive_time: Option<SystemTime>,
}

/// Why the server said goodbye.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GoodbyeReason {
    Unspecified,
    Replaced,
    Revoked,
    ServerDraining,
}

/// The server's goodbye.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ServerGoodbye {
    pub(crate) reason: GoodbyeReason,
    pub(crate) message: String,
    /// When to reconnect, if the server said (at most [`crate::convert::MAX_RECONNECT_AFTER`]).
    pub(crate) reconnect_after: Option<Duration>,
}

/// A message from the server, converted from `pb::ConnectResponse`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ServerMessage {
    Welcome(Welcome),
    Pong(Pong),
    MetricsAck {
        durable_seq: u64,
    },
    Goodbye(ServerGoodbye),
    /// Run an invocation (or reject it, if the offer is malformed).
    CommandOffer(Result<Offer, InvalidOffer>),
    CommandCancel {
        invocation_id: String,
    },
    /// (invocation id, highest durable seq) pairs.
    CommandAck(Vec<(String, u64)>),
    EventAck(EventAck),
    /// A message type this agent does not know (sent by a newer server).
    Unknown,
}

/// Round-trip time and clock offset derived from one `Pong`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ClockSample {
    pub(crate) rtt: Duration,
    /// Server clock minus agent clock, in microseconds.
    pub(crate) offset_micros: i64,
}

/// One live stream's bookkeeping.
struct Session<'a> {
    ctx: &'a SessionContext<'a>,
    tx: mpsc::Sender<pb::ConnectRequest>,
    /// Highest `seq` already written to this stream (or held by the server).
    sent_through: u64,
    next_nonce: u64,
    /// Set once an ack or pong arrives after `Welcome`.
    healthy: bool,
    /// Last seq and send time of each report awaiting its ack (at most
    /// [`MAX_REPORTS_IN_FLIGHT`]).
    in_flight: VecDeque<(u64, Instant)>,
    /// Highest command outbox index already written to this stream.
    commands_sent_through: u64,
    /// Earliest time the next `CommandReport` may go out.
    next_report_at: Instant,
    /// Highest event seq already written to this stream.
    events_sent_through: u64,
    /// Last seq, send time and number of events of each `EventReport` awaiting its ack,
    /// oldest first.
    events_in_flight: VecDeque<(u64, Instant, usize)>,
}

/// Why a send on the outbound stream did not happen.
enum SendFailed {
    /// The stream is gone (the request body was dropped).
    Closed,
    /// The agent is shutting down.
    Cancelled,
}

/// Runs one session to its end. Never returns early on shutdown without saying goodbye once the
/// stream is open.
pub(crate) async fn run_session(ctx: &SessionContext<'_>) -> SessionEnd {
    let (tx, rx) = mpsc::channel(OUTBOUND_QUEUE);
    let mut session = Session {
        ctx,
        tx,
        sent_through: 0,
        next_nonce: 1,
        healthy: false,
        in_flight: VecDeque::new(),
        commands_sent_through: 0,
        next_report_at: Instant::now(),
        events_sent_through: 0,
        events_in_flight: VecDeque::new(),
    };
    let result = session.run(rx).await;
    ctx.shared.stats.session_closed();
    if result.is_err() {
        ctx.shared.stats.session_failed();
    }
    match result {
        Ok(end) => end,
        Err(error) => SessionEnd::Failed {
            healthy: session.healthy,
            error,
        },
    }
}

/// Computes RTT and clock offset: `rtt = now - ping_sent_at`, `offset = server_receive_time -
/// (ping_sent_at + rtt / 2)`. A clock that stepped backwards gives an RTT of zero.
pub(crate) fn clock_sample(
    ping_sent_at: SystemTime,
    server_receive_time: SystemTime,
    now: SystemTime,
) -> ClockSample {
    let rtt = now.duration_since(ping_sent_at).unwrap_or(Duration::ZERO);
    let midpoint = ping_sent_at + rtt / 2;
    ClockSample {
        rtt,
        offset_micros: signed_micros(server_receive_time, midpoint),
    }
}

/// `a - b` in microseconds, saturating.
pub(crate) fn signed_micros(a: SystemTime, b: SystemTime) -> i64 {
    match a.duration_since(b) {
        Ok(ahead) => i64::try_from(ahead.as_micros()).unwrap_or(i64::MAX),
        Err(behind) => i64::try_from(behind.duration().as_micros())
            .map(|micros| -micros)
            .unwrap_or(i64::MIN + 1),
    }
}

/// Locks the buffer; a poisoned lock still holds consistent data (every update is one call).
fn lock(buffer: &Mutex<SampleBuffer>) -> MutexGuard<'_, SampleBuffer> {
    buffer.lock().unwrap_or_else(PoisonError::into_inner)
}

// === impl Shared ===

impl Shared {
    pub(crate) fn new(buffer_capacity: usize, stats: Arc<AgentStats>, commands: Commands) -> Self {
        Self {
            buffer: Mutex::new(SampleBuffer::new(buffer_capacity)),
            new_samples: Notify::new(),
            metrics_interval: watch::Sender::new(None),
            stats,
            muted: AtomicBool::new(false),
            ack_latency: None,
            event_ack_latency: None,
            offer_arrivals: None,
            commands,
            events: None,
        }
    }

    /// The same, with the event subsystem.
    pub(crate) fn with_events(self, events: Events) -> Self {
        Self {
            events: Some(events),
            ..self
        }
    }

    /// Whether the simulator muted this agent.
    pub(crate) fn is_muted(&self) -> bool {
        self.muted.load(Ordering::Relaxed)
    }

    /// Applies a `MetricsAck` (or the acks that arrive during shutdown).
    fn apply_ack(&self, durable_seq: u64) {
        let mut buffer = self.buffer();
        let n_acked = buffer.ack(durable_seq);
        self.stats.set_buffer(buffer.len(), buffer.dropped());
        drop(buffer);
        self.stats.add_samples_acked(n_acked);
        self.stats.acked(durable_seq);
    }

    /// Locks the sample buffer.
    pub(crate) fn buffer(&self) -> MutexGuard<'_, SampleBuffer> {
        lock(&self.buffer)
    }
}

// === impl Session ===

impl Session<'_> {
    async fn run(
        &mut self,
        rx: mpsc::Receiver<pb::ConnectRequest>,
    ) -> Result<SessionEnd, AgentError> {
        let ctx = self.ctx;
        let Some(client) =
            cancellable(ctx.shutdown, ctx.transport.client(ctx.connect_timeout)).await
        else {
            return Ok(SessionEnd::Shutdown);
        };
        let mut client = client?;

        // Queue `Hello` before opening the stream so it is the first message the server reads.
        let hello = convert::hello(
            &ctx.enrollment.agent_id,
            AGENT_VERSION,
            ctx.system_info,
            ctx.labels,
            ctx.instance_id,
            ctx.shared.commands.journaled_ids(),
        );
        if self.tx.send(hello).await.is_err() {
            return Err(AgentError::Protocol(
                "outbound queue closed before Hello".into(),
            ));
        }
        ctx.shared.stats.message_sent();
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        client::authorize(&mut request, ctx.enrollment.credential.expose_secret())?;

        let welcome_timeout = ctx.connect_timeout.max(MIN_WELCOME_TIMEOUT);
        let Some(opened) = cancellable(
            ctx.shutdown,
            tokio::time::timeout(welcome_timeout, client.connect(request)),
        )
        .await
        else {
            return Ok(SessionEnd::Shutdown);
        };
        let mut inbound = opened
            .map_err(|_| AgentError::Timeout("the session to open"))??
            .into_inner();

        // The first message must be `Welcome`; the agent does nothing else until it arrives.
        let Some(first) = cancellable(
            ctx.shutdown,
            tokio::time::timeout(welcome_timeout, inbound.message()),
        )
        .await
        else {
            return self.say_goodbye(inbound).await;
        };
        let welcome = match first.map_err(|_| AgentError::Timeout("Welcome"))?? {
            None => {
                return Ok(SessionEnd::Closed {
                    healthy: false,
                    reason: "server closed the stream before Welcome".into(),
                });
            }
            Some(response) => match ServerMessage::try_from(response)? {
                ServerMessage::Welcome(welcome) => welcome,
                ServerMessage::Goodbye(goodbye) => return self.on_goodbye(goodbye),
                other => {
                    return Err(AgentError::Protocol(format!(
                        "expected Welcome as the first message, got {other:?}"
                    )));
                }
            },
        };
        self.on_welcome(&welcome);
        let flushed = match self.flush_pending().await {
            Ok(()) => self.flush_events().await,
            Err(failed) => Err(failed),
        };
        match flushed {
            Ok(()) => {}
            Err(SendFailed::Cancelled) => return self.say_goodbye(inbound).await,
            Err(SendFailed::Closed) => return self.outbound_closed(inbound).await,
        }
        self.drive(inbound, &welcome).await
    }

    /// The steady state after `Welcome`.
    async fn drive(
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
        let silence = tokio::time::sleep(silence_limit);
        tokio::pin!(silence);
        // Armed when the command subsystem has something to report; fires no earlier than
        // `next_report_at`. Armed at once: unacknowledged updates are re-sent after `Welcome`.
        let report_timer = tokio::time::sleep_until(self.next_report_at);
        tokio::pin!(report_timer);
        let mut report_armed = true;
        let commands = &ctx.shared.commands;

        loop {
            tokio::select! {
                biased;
                () = ctx.shutdown.cancelled() => return self.say_goodbye(inbound).await,
                message = inbound.message() => match message? {
                    None => {
                        return Ok(SessionEnd::Closed {
                            healthy: self.healthy,
                            reason: "server closed the stream".into(),
                        });
                    }
                    Some(response) => {
                        silence.as_mut().reset(Instant::now() + silence_limit);
                        let message = ServerMessage::try_from(response)?;
                        let ack = matches!(message, ServerMessage::MetricsAck { .. });
                        if let Some(end) = self.on_message(message)? {
                            return Ok(end);
                        }
                        // An ack frees room for the samples that waited for it.
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
                () = ctx.shared.new_samples.notified(), if !ctx.shared.is_muted() => match self.flush_pending().await {
                    Ok(()) => {}
                    Err(SendFailed::Cancelled) => return self.say_goodbye(inbound).await,
                    Err(SendFailed::Closed) => return self.outbound_closed(inbound).await,
                },
                () = events_ready(ctx.shared), if !ctx.shared.is_muted() => match self.flush_events().await {
                    Ok(()) => {}
                    Err(SendFailed::Cancelled) => return self.say_goodbye(inbound).await,
                    Err(SendFailed::Closed) => return self.outbound_closed(inbound).await,
                },
                () = commands.ready().notified(), if !report_armed => {
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

    fn on_welcome(&mut self, welcome: &Welcome) {
        let shared = &self.ctx.shared;
        {
            let mut buffer = shared.buffer();
            buffer.resume_after(welcome.last_durable_seq);
            shared.stats.set_buffer(buffer.len(), buffer.dropped());
        }
        self.sent_through = welcome.last_durable_seq;
        shared.stats.acked(welcome.last_durable_seq);
        shared
            .commands
            .on_welcome(&welcome.invocation_acks, welcome.server_time);
        self.commands_sent_through = 0;
        if let Some(events) = &shared.events {
            events.resume_after(welcome.last_durable_event_seq);
        }
        self.events_sent_through = 0;
        self.events_in_flight.clear();
        shared.stats.session_established(&welcome.session_id);
        shared.metrics_interval.send_if_modified(|interval| {
            let changed = *interval != Some(welcome.metrics_interval);
            *interval = Some(welcome.metrics_interval);
            changed
        });
        info!(
            session_id = %welcome.session_id,
            heartbeat_interval = ?welcome.heartbeat_interval,
            metrics_interval = ?welcome.metrics_interval,
            last_durable_seq = welcome.last_durable_seq,
            "session established"
        );
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
            ServerMessage::MetricsAck { durable_seq } => {
                self.mark_healthy();
                self.ctx.shared.apply_ack(durable_seq);
                let now = Instant::now();
                while let Some(&(seq, sent_at)) = self.in_flight.front()
                    && seq <= durable_seq
                {
                    if let Some(histogram) = &self.ctx.shared.ack_latency {
                        histogram.record(now.saturating_duration_since(sent_at));
                    }
                    self.in_flight.pop_front();
                }
                debug!(durable_seq, "metrics acknowledged");
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

    fn on_goodbye(&self, goodbye: ServerGoodbye) -> Result<SessionEnd, AgentError> {
        let ServerGoodbye {
            reason,
            message,
            reconnect_after,
        } = goodbye;
        match (reason, reconnect_after) {
            (GoodbyeReason::Revoked, _) => Err(AgentError::Revoked(message)),
            (GoodbyeReason::ServerDraining, Some(reconnect_after)) => {
                info!(?reconnect_after, %message, "server draining");
                Ok(SessionEnd::Drained {
                    healthy: self.healthy,
                    reconnect_after,
                    message,
                })
            }
            (reason, _) => {
                info!(?reason, %message, "server said goodbye");
                Ok(SessionEnd::Closed {
                    healthy: self.healthy,
                    reason: format!("server said goodbye ({reason:?}): {message}"),
                })
            }
        }
    }

    fn mark_healthy(&mut self) {
        if !self.healthy {
            self.healthy = true;
            debug!("session healthy");
        }
    }

    /// Sends every buffered sample not yet written to this stream, in reports of at most
    /// [`MAX_SAMPLES_PER_REPORT`], while fewer than [`MAX_REPORTS_IN_FLIGHT`] reports await
    /// their ack.
    async fn flush_pending(&mut self) -> Result<(), SendFailed> {
        if self.ctx.shared.is_muted() {
            return Ok(());
        }
        loop {
            if self.in_flight.len() >= MAX_REPORTS_IN_FLIGHT {
                // The next ack sends what waits.
                return Ok(());
            }
            let batch = self
                .ctx
                .shared
                .buffer()
                .after(self.sent_through, MAX_SAMPLES_PER_REPORT);
            let Some(last) = batch.last() else {
                return Ok(());
            };
            let last_seq = last.seq;
            self.send(convert::metrics_report(&batch)).await?;
            self.in_flight.push_back((last_seq, Instant::now()));
            self.sent_through = last_seq;
            self.ctx.shared.stats.add_samples_sent(batch.len());
            debug!(n_samples = batch.len(), last_seq, "metrics sent");
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

    /// Queues one message on the outbound stream, giving up on shutdown.
    async fn send(&self, message: pb::ConnectRequest) -> Result<(), SendFailed> {
        tokio::select! {
            biased;
            () = self.ctx.shutdown.cancelled() => Err(SendFailed::Cancelled),
            sent = self.tx.send(message) => {
                sent.map_err(|_| SendFailed::Closed)?;
                self.ctx.shared.stats.message_sent();
                Ok(())
            }
        }
    }

    /// The outbound stream went away: the inbound side says why.
    async fn outbound_closed(
        &mut self,
        mut inbound: Streaming<pb::ConnectResponse>,
    ) -> Result<SessionEnd, AgentError> {
        match tokio::time::timeout(SHUTDOWN_GRACE, inbound.message()).await {
            Ok(Err(status)) => Err(status.into()),
            _ => Ok(SessionEnd::Closed {
                healthy: self.healthy,
                reason: "outbound stream closed".into(),
            }),
        }
    }

    /// Clean shutdown: `Goodbye`, close the outbound stream, then wait up to
    /// [`SHUTDOWN_GRACE`] for the server to end the stream, still applying acks.
    async fn say_goodbye(
        &mut self,
        mut inbound: Streaming<pb::ConnectResponse>,
    ) -> Result<SessionEnd, AgentError> {
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        // The stop is an event too: recorded and sent (if the stream takes it in time) before
        // the goodbye; otherwise it waits in the spool for the next start.
        if let Some(events) = &self.ctx.shared.events {
            events.stopping("shutdown").await;
            let sent = tokio::time::timeout_at(deadline, self.flush_events_unless_closed()).await;
            if sent.is_err() {
                info!("could not send the last events before the deadline");
            }
        }
        let goodbye = convert::goodbye("shutdown");
        if tokio::time::timeout_at(deadline, self.tx.send(goodbye))
            .await
            .is_err()
        {
            info!("could not queue goodbye before the deadline");
        }
        // Dropping the last sender ends the request stream: the server sees end-of-stream.
        let (closed_tx, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.tx, closed_tx));
        loop {
            match tokio::time::timeout_at(deadline, inbound.message()).await {
                Err(_) => {
                    info!("server did not end the stream within the shutdown grace period");
                    break;
                }
                Ok(Ok(None)) => break,
                Ok(Err(status)) => {
                    debug!(code = ?status.code(), "stream ended with an error during shutdown");
                    break;
                }
                Ok(Ok(Some(response))) => match ServerMessage::try_from(response) {
                    Ok(ServerMessage::MetricsAck { durable_seq }) => {
                        self.ctx.shared.apply_ack(durable_seq);
                    }
                    Ok(ServerMessage::CommandAck(acks)) => self.ctx.shared.commands.ack(&acks),
                    Ok(ServerMessage::EventAck(ack)) => self.on_event_ack(&ack),
                    _ => {}
                },
            }
        }
        info!("session closed for shutdown");
        Ok(SessionEnd::Shutdown)
    }
}

/// Completes when the event subsystem has something new to send (never, without one).
async fn events_ready(shared: &Shared) {
    match &shared.events {
        Some(events) => events.ready().notified().await,
        None => std::future::pending().await,
    }
}

/// Runs `future` unless `shutdown` fires first (then `None`).
async fn cancellable<F: std::future::Future>(
    shutdown: &CancellationToken,
    future: F,
) -> Option<F::Output> {
    tokio::select! {
        biased;
        () = shutdown.cancelled() => None,
        output = future => Some(output),
    }
}

mod events;

#[cfg(test)]
mod tests {
    use super::*;

    fn at(micros: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000) + Duration::from_micros(micros)
    }

    #[test]
    fn clock_in_sync() {
        // Ping at 0, server receives at 5 ms (its clock agrees), pong back at 10 ms.
        let clock = clock_sample(at(0), at(5_000), at(10_000));
        assert_eq!(clock.rtt, Duration::from_millis(10));
        assert_eq!(clock.offset_micros, 0);
    }

    #[test]
    fn server_clock_ahead() {
        // Server clock is 1 s ahead: it stamps 1.005 s for a receive at agent time 5 ms.
        let clock = clock_sample(at(0), at(1_005_000), at(10_000));
        assert_eq!(clock.rtt, Duration::from_millis(10));
        assert_eq!(clock.offset_micros, 1_000_000);
    }

    #[test]
    fn server_clock_behind() {
        let clock = clock_sample(at(2_000_000), at(1_500_100), at(2_000_200));
        assert_eq!(clock.rtt, Duration::from_micros(200));
        assert_eq!(clock.offset_micros, -500_000);
    }

    #[test]
    fn clock_stepping_backwards_gives_zero_rtt() {
        let clock = clock_sample(at(10_000), at(10_000), at(0));
        assert_eq!(clock.rtt, Duration::ZERO);
        assert_eq!(clock.offset_micros, 0);
    }
}
