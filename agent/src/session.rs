//! One `Connect` stream, from `Hello` to its end.
//!
//! A session opens the stream with `Hello`, waits for `Welcome`, then re-sends every buffered
//! sample the server does not hold, forwards new samples as the sampler takes them, pings every
//! heartbeat interval, and applies acks. It ends when the server closes the stream or says
//! goodbye, when the stream breaks or goes silent, or when the agent shuts down (then it sends
//! its own goodbye first). The run loop decides what happens next from [`SessionEnd`].
//!
//! This module holds the session's state and its opening (`Hello`, `Welcome`);
//! [`drive`] is the steady state after `Welcome`, [`goodbye`] how a session ends, [`events`]
//! its side of events, and [`clock`] the round-trip and clock-offset arithmetic of pongs.
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
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tracing::info;

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
/// wait in the buffer and leave together, in one report, once the ack comes: when the server
/// is behind (its writer, or its CPU), the samples wait here rather than in the transport, and
/// the server is sent fewer, larger reports. One: when the server's CPU is the limit, every
/// agent's reports queue in the sockets and an ack waits behind all of them, about this many
/// report intervals (4 gave ack p99 1.5 s at the capacity benchmark's saturating step, with
/// 98 % of samples acked). A report carries up to [`MAX_SAMPLES_PER_REPORT`] samples, so one
/// round trip at a time still drains a backlog far faster than any interval fills it.
const MAX_REPORTS_IN_FLIGHT: usize = 1;
/// Longest wait between a metrics ack and the next report that the agent obeys
/// (`MetricsAck.report_after`): a server asking for more still gets a report this often. A
/// full report ([`MAX_SAMPLES_PER_REPORT`]) is never held back, so a backlog drains at one per
/// round trip whatever the pacing.
const MAX_REPORT_AFTER: Duration = Duration::from_secs(60);
/// A paced report waits until a multiple of this from the process's first pacing, at most
/// this much longer than asked: reports that one process's agents hold for the server leave
/// together.
const PACING_TICK: Duration = Duration::from_millis(50);
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
        /// How long to wait before the next metrics report (`None`: at once).
        report_after: Option<Duration>,
    },
    /// The report ending at `last_seq` was not stored: send its samples again, no sooner than
    /// `retry_after` (`None`: at once).
    MetricsDeferred {
        last_seq: u64,
        retry_after: Option<Duration>,
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

/// A metrics report written to the stream and not yet answered.
#[derive(Clone, Copy, Debug)]
struct InFlight {
    /// Its last seq.
    last_seq: u64,
    /// When it was written.
    sent_at: Instant,
    /// `sent_through` before it: where sending starts again if it is deferred.
    after: u64,
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
    /// Each report awaiting its ack (at most [`MAX_REPORTS_IN_FLIGHT`]).
    in_flight: VecDeque<InFlight>,
    /// The `last_seq` of a deferral not yet answered: the next report names it
    /// (`MetricsReport.deferred_seq`).
    deferred_seq: Option<u64>,
    /// Until then, after a deferral, even a full report waits (`MetricsDeferred.retry_after`).
    deferred_until: Instant,
    /// How long the last acknowledged report waited for its ack, not yet told to the server
    /// (it goes in the next report: `MetricsReport.previous_ack_latency`).
    ack_wait: Option<Duration>,
    /// Highest command outbox index already written to this stream.
    commands_sent_through: u64,
    /// Earliest time the next `CommandReport` may go out.
    next_report_at: Instant,
    /// Earliest time the next metrics report may go out: the server's pacing
    /// (`MetricsAck.report_after`, at most [`MAX_REPORT_AFTER`]).
    next_metrics_at: Instant,
    /// Set when samples wait only for `next_metrics_at` (its timer then sends them).
    paced: bool,
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
        deferred_seq: None,
        deferred_until: Instant::now(),
        ack_wait: None,
        commands_sent_through: 0,
        next_report_at: Instant::now(),
        next_metrics_at: Instant::now(),
        paced: false,
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

    /// Queues one message on the outbound stream, giving up on shutdown.
    async fn send(&self, message: pb::ConnectRequest) -> Result<(), SendFailed> {
        if self.ctx.shutdown.is_cancelled() {
            return Err(SendFailed::Cancelled);
        }
        // The queue almost always has room: queued at once, without registering a wait for
        // the shutdown (the simulator sends tens of thousands of messages a second).
        let message = match self.tx.try_send(message) {
            Ok(()) => {
                self.ctx.shared.stats.message_sent();
                return Ok(());
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(SendFailed::Closed),
            Err(mpsc::error::TrySendError::Full(message)) => message,
        };
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

mod clock;
mod drive;
mod events;
mod goodbye;

pub(crate) use clock::signed_micros;
