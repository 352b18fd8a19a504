//! Prometheus metrics of one server, served on a separate listener (`--metrics-listen`).
//!
//! Counters are cheap atomics; the hot path (one agent message) touches at most one, taken
//! out of its family once at start. What is cheaper to count when scraped than to keep up to
//! date (agents by status and org, watchers, the process, the allocator) is read by collectors
//! at scrape time (`metrics/fleet.rs`, `metrics/process.rs`, `metrics/allocator.rs`); RPCs are counted by a tower layer
//! (`metrics/rpc.rs`); `metrics/expose.rs` serves the result in the format the scraper asks
//! for.
//!
//! **Invariants:** every family has help text and a name that ends in its unit (`_seconds`,
//! `_bytes`) or, for counters, `_total`, so the exposition passes `promtool check metrics` (a
//! test runs it where promtool is installed; CI installs it). Every label value comes from a
//! closed set the server chooses (`&'static str`), except orgs, whose series are capped
//! ([`fleet::MAX_ORG_SERIES`]): no input can grow the number of series.

use std::sync::{Arc, Weak};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

pub mod alerts;
mod allocator;
mod expose;
mod fleet;
mod process;
mod rpc;

pub use self::expose::{Format, serve, to_text_format};
pub use self::fleet::MAX_ORG_SERIES;
pub use self::rpc::{RpcMetricsLayer, RpcMetricsService, method_label};

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

/// The kind of a message an agent sent on its stream.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MessageLabels {
    pub kind: &'static str,
}

/// One RPC method ([`method_label`]) and the gRPC status code it ended with.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    pub method: &'static str,
    pub code: &'static str,
}

/// One RPC method ([`method_label`]).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    pub method: &'static str,
}

/// What the server was built as.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

/// The kinds of agent message, in the order of [`MessageCounters`]' fields.
pub const MESSAGE_KINDS: [&str; 7] = [
    "hello", "metrics", "ping", "commands", "goodbye", "events", "other",
];

/// Per-kind counters of agent messages, taken out of their family once so that counting a
/// message is one atomic add.
#[derive(Clone, Debug)]
pub struct MessageCounters {
    pub hello: Counter,
    pub metrics: Counter,
    pub ping: Counter,
    pub commands: Counter,
    pub goodbye: Counter,
    pub events: Counter,
    /// Empty or out-of-place messages (refused).
    pub other: Counter,
}

/// Whole days `GetEventStats` found in the day cache (`events/day_cache.rs`), or read from the
/// store.
#[derive(Clone, Debug, Default)]
pub struct DayCacheCounters {
    pub hits: Counter,
    pub misses: Counter,
}

/// What the events hub (`events/hub.rs`) did for `WatchEvents` watchers.
#[derive(Clone, Debug, Default)]
pub struct EventWatchCounters {
    /// Changes queued for a watcher whose whole filter matched.
    pub deliveries: Counter,
    /// Filters checked: watchers the hub's index offered a change to.
    pub candidates: Counter,
    /// Watchers detached for a full queue, reading the store again until caught up.
    pub fallbacks: Counter,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

pub struct Metrics {
    pub registry: Registry,
    pub limit_violations: Family<LimitLabels, Counter>,
    pub denials: Family<DenialLabels, Counter>,
    pub transitions: Family<TransitionLabels, Counter>,
    pub sessions: Gauge,
    /// Messages received on agent streams, by kind.
    pub agent_messages: MessageCounters,
    pub samples_stored: Counter,
    /// Metrics reports answered `MetricsDeferred` (the line for ingest budget was full).
    pub reports_deferred: Counter,
    pub writer_batches: Counter,
    /// Writes per committed batch.
    pub writer_batch_writes: Histogram,
    /// How long one batch commit (apply and flush) took.
    pub writer_commit_seconds: Histogram,
    pub writer_commit_failures: Counter,
    /// How long agents' metrics reports waited for their ack, as the agents measured it.
    pub agent_ack_latency_seconds: Histogram,
    /// The waits paced acks asked of their agents (only acks above `--min-report-interval`).
    pub report_pace_seconds: Histogram,
    /// How long metrics reports waited for ingest budget, from their reading.
    pub ingest_budget_wait_seconds: Histogram,
    /// How long metrics reports spent in the server, from their reading to their ack.
    pub report_residence_seconds: Histogram,
    /// How late the runtime's lag probe woke (`lag.rs`).
    pub runtime_lag_seconds: Histogram,
    /// How long the store commit in progress has run, once past the stall report (else 0).
    pub writer_commit_running_seconds: Gauge,
    pub writer_commit_stalls: Counter,
    pub writer_queue_depth: Family<QueueLabels, Gauge>,
    pub writer_transitions_coalesced: Counter,
    pub writer_unencodable_writes: Counter,
    pub watchers_aborted: Counter,
    /// The events hub's fan-out to `WatchEvents` watchers.
    pub event_watch: EventWatchCounters,
    pub event_stats_days: DayCacheCounters,
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
    /// RPCs finished, by method and code.
    pub rpc_requests: Family<RpcLabels, Counter>,
    /// How long RPCs took, from request headers to the end of the response (a stream's whole
    /// life), by method and code.
    pub rpc_duration_seconds: HistogramFamily<RpcLabels>,
    /// RPCs being served, by method.
    pub rpc_in_flight: Family<MethodLabels, Gauge>,
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
    /// Alert rules and webhook deliveries (`metrics/alerts.rs`).
    pub alerts: alerts::AlertMetrics,
    /// Where the fleet collector reads agents and watchers from, once the registry exists.
    fleet: Arc<fleet::FleetSource>,
}

/// Bucket bounds of [`Metrics::rpc_duration_seconds`]: 1 ms to about 65 s.
fn rpc_duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 4.0, 9))
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let mut root = Registry::default();
        root.register_collector(Box::new(process::ProcessCollector));
        let fleet = Arc::new(fleet::FleetSource::default());
        let registry = root.sub_registry_with_prefix("tether");
        registry.register_collector(Box::new(fleet::FleetCollector(fleet.clone())));
        registry.register_collector(Box::new(allocator::AllocatorCollector));
        let alerts = alerts::AlertMetrics::register(registry);

        let build_info = Family::<BuildLabels, Gauge>::default();
        build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register(
            "build_info",
            "The server's version (the value is always 1)",
            build_info,
        );

        let agent_messages = Family::<MessageLabels, Counter>::default();
        let kind = |kind| {
            agent_messages
                .get_or_create(&MessageLabels { kind })
                .clone()
        };
        let [hello, metrics, ping, commands, goodbye, events, other] = MESSAGE_KINDS.map(kind);
        let message_counters = MessageCounters {
            hello,
            metrics,
            ping,
            commands,
            goodbye,
            events,
            other,
        };
        registry.register(
            "agent_messages",
            "Messages received on agent streams, by kind",
            agent_messages,
        );

        let writer_batch_writes = Histogram::new(exponential_buckets(1.0, 4.0, 8));
        registry.register(
            "writer_batch_writes",
            "Writes (records) per batch the writer committed",
            writer_batch_writes.clone(),
        );
        let writer_commit_seconds = Histogram::new(exponential_buckets(0.0005, 3.0, 11));
        registry.register_with_unit(
            "writer_commit",
            "How long the writer's batch commits (one apply and flush each) took",
            Unit::Seconds,
            writer_commit_seconds.clone(),
        );

        let agent_ack_latency_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register_with_unit(
            "agent_ack_latency",
            "How long agents' metrics reports waited for their ack, from the agent's writing \
             the report to its reading the ack, as the agents measured it (one observation per \
             report that carries it)",
            Unit::Seconds,
            agent_ack_latency_seconds.clone(),
        );
        let report_pace_seconds = Histogram::new(exponential_buckets(0.1, 2.0, 10));
        registry.register_with_unit(
            "report_pace",
            "Waits before the next report that metrics acks asked of agents whose acks lagged \
             (adaptive pacing, above --min-report-interval); their count is the paced acks",
            Unit::Seconds,
            report_pace_seconds.clone(),
        );
        let ingest_budget_wait_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register_with_unit(
            "ingest_budget_wait",
            "How long metrics reports waited for their share of the writer's ingest budget \
             (--ingest-budget), from their reading: the server's queue in front of its writer, \
             one observation per report handed to the writer",
            Unit::Seconds,
            ingest_budget_wait_seconds.clone(),
        );
        let reports_deferred = Counter::default();
        registry.register(
            "reports_deferred",
            "Metrics reports answered MetricsDeferred instead of waiting in line for ingest budget \
             (--ingest-queue samples already waited): nothing of them was stored, and their \
             agents send the samples again later",
            reports_deferred.clone(),
        );
        let report_residence_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register_with_unit(
            "report_residence",
            "How long metrics reports spent in the server, from their reading to their ack (the \
             wait for ingest budget, the writer's queue and its commit): the server's part of \
             tether_agent_ack_latency_seconds, one observation per acknowledged report",
            Unit::Seconds,
            report_residence_seconds.clone(),
        );
        let runtime_lag_seconds = Histogram::new(exponential_buckets(0.0005, 2.0, 14));
        registry.register_with_unit(
            "runtime_lag",
            "How late a task that became ready ran: the lateness of a probe that sleeps 10 ms at \
             a time, one observation per wake-up. About a millisecond (the timer's granularity) \
             while the server has CPU to spare; past it, the time every agent's message waits \
             for the server's CPU",
            Unit::Seconds,
            runtime_lag_seconds.clone(),
        );

        let rpc_requests = Family::<RpcLabels, Counter>::default();
        registry.register(
            "rpc_requests",
            "RPCs finished, by method and gRPC status code (CANCELLED when the client went \
             away first)",
            rpc_requests.clone(),
        );
        let rpc_duration_seconds: HistogramFamily<RpcLabels> =
            Family::new_with_constructor(rpc_duration_histogram);
        registry.register_with_unit(
            "rpc_duration",
            "How long RPCs took, from the request to the end of the response (for streams, \
             their whole life), by method and gRPC status code",
            Unit::Seconds,
            rpc_duration_seconds.clone(),
        );
        let rpc_in_flight = Family::<MethodLabels, Gauge>::default();
        registry.register(
            "rpc_in_flight",
            "RPCs being served (streams included), by method",
            rpc_in_flight.clone(),
        );

        let connections = Gauge::default();
        let connections_refused = Family::<ReasonLabels, Counter>::default();
        let accept_errors = Family::<ReasonLabels, Counter>::default();
        let sessions_refused = Family::<ReasonLabels, Counter>::default();
        let sessions_in_setup = Gauge::default();
        let tls_handshakes = Gauge::default();
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

        let limit_violations = Family::<LimitLabels, Counter>::default();
        let denials = Family::<DenialLabels, Counter>::default();
        let transitions = Family::<TransitionLabels, Counter>::default();
        let sessions = Gauge::default();
        let samples_stored = Counter::default();
        let writer_batches = Counter::default();
        let writer_commit_failures = Counter::default();
        let writer_commit_running_seconds = Gauge::default();
        let writer_commit_stalls = Counter::default();
        let watchers_aborted = Counter::default();
        let event_watch = EventWatchCounters::default();
        let event_stats_days = DayCacheCounters::default();
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
            "Agent status changes, by new status and reason",
            transitions.clone(),
        );
        registry.register("sessions", "Live agent sessions", sessions.clone());
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
        registry.register_with_unit(
            "writer_commit_running",
            "How long the store commit in progress has run, once it runs past the stall report \
             (10 s); 0 otherwise. The server exits past --store-stall-limit",
            Unit::Seconds,
            writer_commit_running_seconds.clone(),
        );
        registry.register(
            "writer_commit_stalls",
            "Store commits that ran past the stall report (10 s)",
            writer_commit_stalls.clone(),
        );
        registry.register(
            "writer_queue_depth",
            "Items waiting for the writer: reports of samples, handler commits and audit \
             entries, agents and tokens with live changes; and samples holding ingest budget \
             (admitted_samples) or waiting in line for it (waiting_samples)",
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
            "event_watch_deliveries",
            "Event changes queued for WatchEvents watchers whose filter matched",
            event_watch.deliveries.clone(),
        );
        registry.register(
            "event_watch_candidates",
            "Event watch filters checked: watchers the hub's index offered a change to",
            event_watch.candidates.clone(),
        );
        registry.register(
            "event_watch_fallbacks",
            "Event watchers detached from the hub for a full queue, reading the store until \
             caught up",
            event_watch.fallbacks.clone(),
        );
        registry.register(
            "event_stats_day_cache_hits",
            "Whole days of event counts (daily tables, packed hourly agent counts) GetEventStats read from the day cache",
            event_stats_days.hits.clone(),
        );
        registry.register(
            "event_stats_day_cache_misses",
            "Whole days of event counts (daily tables, packed hourly agent counts) GetEventStats read from the store (not cached)",
            event_stats_days.misses.clone(),
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
        Arc::new(Self {
            registry: root,
            limit_violations,
            denials,
            transitions,
            sessions,
            agent_messages: message_counters,
            samples_stored,
            reports_deferred,
            writer_batches,
            writer_batch_writes,
            writer_commit_seconds,
            writer_commit_failures,
            agent_ack_latency_seconds,
            report_pace_seconds,
            ingest_budget_wait_seconds,
            report_residence_seconds,
            runtime_lag_seconds,
            writer_commit_running_seconds,
            writer_commit_stalls,
            writer_queue_depth,
            writer_transitions_coalesced,
            writer_unencodable_writes,
            watchers_aborted,
            event_watch,
            event_stats_days,
            refusals_unaudited,
            mtls_refusals,
            enrollments,
            identity_conflicts,
            commands_sent,
            invocations_finished,
            command_updates_ignored,
            command_commit_retries,
            rpc_requests,
            rpc_duration_seconds,
            rpc_in_flight,
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
            alerts,
            fleet,
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

    /// Lets the scrape count agents and watchers in `registry` from now on (until it is
    /// dropped). Before this, those families are absent.
    pub fn observe_fleet(&self, registry: Weak<crate::registry::Registry>) {
        self.fleet.set(registry);
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

    /// Records the size and duration of one writer batch commit (`n_writes` writes that took
    /// `elapsed`).
    pub fn observe_commit(&self, n_writes: usize, elapsed: std::time::Duration) {
        #[allow(
            clippy::cast_precision_loss,
            reason = "a batch holds far fewer than 2^53"
        )]
        self.writer_batch_writes.observe(n_writes as f64);
        self.writer_commit_seconds.observe(elapsed.as_secs_f64());
    }

    /// The exposition in `format`.
    pub fn encode(&self, format: Format) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!("cannot encode metrics: {e}");
        }
        match format {
            Format::OpenMetrics => out,
            Format::Text => to_text_format(&out),
        }
    }
}

#[cfg(test)]
mod tests;
