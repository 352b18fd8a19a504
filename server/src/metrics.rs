//! Prometheus metrics of one server, served on a separate listener (`--metrics-listen`).
//!
//! Counters are cheap atomics; the hot path (one agent message) touches at most one.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Which limit a refused input hit.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    pub limit: &'static str,
}

/// A status transition's target status and reason.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransitionLabels {
    pub to: &'static str,
    pub reason: &'static str,
}

/// Why an agent's client certificate was refused: `no_certificate`, `wrong_agent`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MtlsLabels {
    pub reason: &'static str,
}

/// One of the writer's queues.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabels {
    pub queue: &'static str,
}

/// A terminal state of a command invocation, or why an agent's command update was not stored.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CommandLabels {
    pub kind: &'static str,
}

/// A part of the store's memory: `heads` (open chunks), `cache` (the page cache).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreMemoryLabels {
    pub part: &'static str,
}

/// Why authentication or authorization refused a call.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DenialLabels {
    pub code: &'static str,
}

/// How an enrollment ended up: `new`, `duplicate_hardware_id` (a new agent sharing its
/// hardware id with others), or the take-over's claim (`proof`, `admin_reclaim`,
/// `token_reclaim`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EnrollmentLabels {
    pub outcome: &'static str,
}

/// What the server did about two agent processes sharing one credential: `flagged` (a
/// conflicting replacement, allowed), `refused` (the newcomer was refused).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConflictLabels {
    pub outcome: &'static str,
}

/// Why the server turned something away or closed it: a connection, an accept, a session.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

pub struct Metrics {
    pub registry: Registry,
    pub limit_violations: Family<LimitLabels, Counter>,
    pub denials: Family<DenialLabels, Counter>,
    pub transitions: Family<TransitionLabels, Counter>,
    pub sessions: Gauge,
    pub agent_messages: Counter,
    pub samples_stored: Counter,
    pub writer_batches: Counter,
    pub writer_commit_failures: Counter,
    pub writer_queue_depth: Family<QueueLabels, Gauge>,
    pub writer_transitions_coalesced: Counter,
    pub writer_unencodable_writes: Counter,
    pub watchers_aborted: Counter,
    /// Refused calls left out of the audit trail by their token's audit budget.
    pub refusals_unaudited: Counter,
    /// Agent streams refused for their client certificate (mTLS), by reason.
    pub mtls_refusals: Family<MtlsLabels, Counter>,
    pub enrollments: Family<EnrollmentLabels, Counter>,
    pub identity_conflicts: Family<ConflictLabels, Counter>,
    /// Commands sent (stored).
    pub commands_sent: Counter,
    /// Invocations that reached a terminal state, by state.
    pub invocations_finished: Family<CommandLabels, Counter>,
    /// Agents' command updates acked without being stored, by reason.
    pub command_updates_ignored: Family<CommandLabels, Counter>,
    /// Command commits that failed and were submitted again.
    pub command_commit_retries: Counter,
    /// Open client connections (accepted and not yet closed).
    pub connections: Gauge,
    /// Connections closed or refused by a connection limit, by `reason`.
    pub connections_refused: Family<ReasonLabels, Counter>,
    /// Failed `accept` calls, by `reason` (`fd_limit` for EMFILE/ENFILE and other resource
    /// exhaustion, after which accepting backs off; `other`).
    pub accept_errors: Family<ReasonLabels, Counter>,
    /// New sessions refused or ended by admission control, by `reason`.
    pub sessions_refused: Family<ReasonLabels, Counter>,
    /// Agent sessions being set up (from `Connect` to `Welcome`).
    pub sessions_in_setup: Gauge,
    /// TLS handshakes in progress (holding one of the `max_tls_handshakes` turns).
    pub tls_handshakes: Gauge,
    /// Memory the store holds for samples now (`heads`), apart from the rest of the server.
    pub store_memory: Family<StoreMemoryLabels, Gauge>,
    /// The configured bounds of that memory (`heads`, `cache`).
    pub store_memory_limit: Family<StoreMemoryLabels, Gauge>,
    /// Agents with an open head.
    pub store_open_heads: Gauge,
    /// Bytes of the store's write-ahead log (on disk), which checkpoints bound.
    pub store_log_bytes: Gauge,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("tether");
        let limit_violations = Family::<LimitLabels, Counter>::default();
        let denials = Family::<DenialLabels, Counter>::default();
        let transitions = Family::<TransitionLabels, Counter>::default();
        let sessions = Gauge::default();
        let agent_messages = Counter::default();
        let samples_stored = Counter::default();
        let writer_batches = Counter::default();
        let writer_commit_failures = Counter::default();
        let watchers_aborted = Counter::default();
        let refusals_unaudited = Counter::default();
        let mtls_refusals = Family::<MtlsLabels, Counter>::default();
        let writer_queue_depth = Family::<QueueLabels, Gauge>::default();
        let writer_transitions_coalesced = Counter::default();
        let writer_unencodable_writes = Counter::default();
        let enrollments = Family::<EnrollmentLabels, Counter>::default();
        let identity_conflicts = Family::<ConflictLabels, Counter>::default();
        let commands_sent = Counter::default();
        let invocations_finished = Family::<CommandLabels, Counter>::default();
        let command_updates_ignored = Family::<CommandLabels, Counter>::default();
        let command_commit_retries = Counter::default();
        registry.register(
            "commands_sent",
            "Commands stored by SendCommand",
            commands_sent.clone(),
        );
        registry.register(
            "command_invocations_finished",
            "Command invocations that reached a terminal state, by state",
            invocations_finished.clone(),
        );
        registry.register(
            "command_updates_ignored",
            "Agents' command updates acked without being stored: duplicate, unknown, \
             foreign (another agent's), settled (already terminal), illegal (a state the \
             invocation cannot reach)",
            command_updates_ignored.clone(),
        );
        registry.register(
            "command_commit_retries",
            "Command commits that failed and were submitted again",
            command_commit_retries.clone(),
        );
        let connections = Gauge::default();
        let connections_refused = Family::<ReasonLabels, Counter>::default();
        let accept_errors = Family::<ReasonLabels, Counter>::default();
        let sessions_refused = Family::<ReasonLabels, Counter>::default();
        let sessions_in_setup = Gauge::default();
        let tls_handshakes = Gauge::default();
        let store_memory = Family::<StoreMemoryLabels, Gauge>::default();
        let store_memory_limit = Family::<StoreMemoryLabels, Gauge>::default();
        let store_open_heads = Gauge::default();
        let store_log_bytes = Gauge::default();
        registry.register(
            "store_memory_bytes",
            "Memory the store holds for samples, by part (heads: open chunks of every agent)",
            store_memory.clone(),
        );
        registry.register(
            "store_memory_limit_bytes",
            "Configured bound of the store's memory, by part (heads, cache)",
            store_memory_limit.clone(),
        );
        registry.register(
            "store_open_heads",
            "Agents whose newest samples are in an open chunk in memory",
            store_open_heads.clone(),
        );
        registry.register(
            "store_log_bytes",
            "Bytes of the store's write-ahead log on disk; a checkpoint truncates it once it \
             passes --store-checkpoint-log-mib",
            store_log_bytes.clone(),
        );
        registry.register(
            "limit_violations",
            "Inputs refused because they exceeded a configured limit",
            limit_violations.clone(),
        );
        registry.register(
            "auth_denials",
            "Calls refused by authentication or authorization",
            denials.clone(),
        );
        registry.register(
            "status_transitions",
            "Agent status changes",
            transitions.clone(),
        );
        registry.register("sessions", "Live agent sessions", sessions.clone());
        registry.register(
            "agent_messages",
            "Messages received on agent streams",
            agent_messages.clone(),
        );
        registry.register(
            "samples_stored",
            "Metrics samples durably stored (duplicates excluded)",
            samples_stored.clone(),
        );
        registry.register(
            "writer_batches",
            "Batches committed by the writer",
            writer_batches.clone(),
        );
        registry.register(
            "writer_commit_failures",
            "Batches the writer failed to commit",
            writer_commit_failures.clone(),
        );
        registry.register(
            "writer_queue_depth",
            "Items waiting for the writer: reports of samples, handler commits and audit \
             entries, agents and tokens with live changes",
            writer_queue_depth.clone(),
        );
        registry.register(
            "writer_transitions_coalesced",
            "Status changes left out of the history because too many of one agent waited",
            writer_transitions_coalesced.clone(),
        );
        registry.register(
            "writer_unencodable_writes",
            "Writes the writer built but could not encode, left out of their batch alone",
            writer_unencodable_writes.clone(),
        );
        registry.register(
            "watchers_aborted",
            "Watch streams ended because they fell behind",
            watchers_aborted.clone(),
        );
        registry.register(
            "refusals_unaudited",
            "Refused calls left out of the audit trail by their token's audit budget",
            refusals_unaudited.clone(),
        );
        registry.register(
            "mtls_refusals",
            "Agent streams refused for their client certificate",
            mtls_refusals.clone(),
        );
        registry.register(
            "enrollments",
            "Enrollments by outcome: a new agent, a new agent sharing its hardware id \
             (duplicate_hardware_id), or a take-over and its claim",
            enrollments.clone(),
        );
        registry.register(
            "identity_conflicts",
            "Sessions of two agent processes sharing one credential replacing each other \
             (flagged) or refused",
            identity_conflicts.clone(),
        );
        registry.register(
            "connections",
            "Open client connections",
            connections.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections closed or refused by a connection limit",
            connections_refused.clone(),
        );
        registry.register(
            "accept_errors",
            "Failed accepts of new connections (fd_limit: out of file descriptors)",
            accept_errors.clone(),
        );
        registry.register(
            "sessions_refused",
            "Agent sessions refused or ended by admission control",
            sessions_refused.clone(),
        );
        registry.register(
            "sessions_in_setup",
            "Agent sessions being set up (from Connect to Welcome)",
            sessions_in_setup.clone(),
        );
        registry.register(
            "tls_handshakes",
            "TLS handshakes in progress",
            tls_handshakes.clone(),
        );
        Arc::new(Self {
            registry,
            limit_violations,
            denials,
            transitions,
            sessions,
            agent_messages,
            samples_stored,
            writer_batches,
            writer_commit_failures,
            writer_queue_depth,
            writer_transitions_coalesced,
            writer_unencodable_writes,
            watchers_aborted,
            refusals_unaudited,
            mtls_refusals,
            enrollments,
            identity_conflicts,
            commands_sent,
            invocations_finished,
            command_updates_ignored,
            command_commit_retries,
            connections,
            connections_refused,
            accept_errors,
            sessions_refused,
            sessions_in_setup,
            tls_handshakes,
            store_memory,
            store_memory_limit,
            store_open_heads,
            store_log_bytes,
        })
    }

    /// Sets the store's memory gauges, and its log's size, from `memory`.
    pub fn set_store_memory(&self, memory: &crate::store::StoreMemory) {
        let set = |family: &Family<StoreMemoryLabels, Gauge>, part, bytes: u64| {
            family
                .get_or_create(&StoreMemoryLabels { part })
                .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        };
        set(&self.store_memory, "heads", memory.heads_bytes);
        set(&self.store_memory_limit, "heads", memory.heads_budget_bytes);
        set(&self.store_memory_limit, "cache", memory.cache_bytes);
        self.store_open_heads
            .set(i64::try_from(memory.heads).unwrap_or(i64::MAX));
        self.store_log_bytes
            .set(i64::try_from(memory.log_bytes).unwrap_or(i64::MAX));
    }

    pub fn limit(&self, limit: &'static str) {
        self.limit_violations
            .get_or_create(&LimitLabels { limit })
            .inc();
    }

    /// Counts an enrollment that ended as `outcome`.
    pub fn enrollment(&self, outcome: &'static str) {
        self.enrollments
            .get_or_create(&EnrollmentLabels { outcome })
            .inc();
    }

    /// Counts an identity conflict the server answered with `outcome`.
    pub fn identity_conflict(&self, outcome: &'static str) {
        self.identity_conflicts
            .get_or_create(&ConflictLabels { outcome })
            .inc();
    }

    /// Counts a connection closed or refused by a connection limit for `reason`.
    pub fn connection_refused(&self, reason: &'static str) {
        self.connections_refused
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Counts a failed `accept` for `reason`.
    pub fn accept_error(&self, reason: &'static str) {
        self.accept_errors
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Counts a session refused or ended by admission control for `reason`.
    pub fn session_refused(&self, reason: &'static str) {
        self.sessions_refused
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!("cannot encode metrics: {e}");
        }
        out
    }
}

/// Serves `GET /metrics` (Prometheus text format) on `listener` until `shutdown`.
///
/// # Errors
///
/// An I/O error of the listener.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    shutdown: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    use axum::http::header::CONTENT_TYPE;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let metrics = metrics.clone();
            async move {
                (
                    [(
                        CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    metrics.encode(),
                )
            }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}
