//! Server configuration: plain structs, built by `main.rs` from flags and passed explicitly.
//!
//! Every default is a named constant here; clap's `default_value` and `GetServerConfig` use the
//! same constants, so there is one source of truth for intervals, thresholds and limits.
//!
//! The relations between settings are checked in `config/validate.rs`, at start.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

mod validate;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:7600";
pub const DEFAULT_DATA_DIR: &str = "tether-data";
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:7601";

pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);
pub const DEFAULT_METRICS_INTERVAL: Duration = Duration::from_secs(10);
pub const DEFAULT_STALE_AFTER: Duration = Duration::from_secs(15);
pub const DEFAULT_OFFLINE_AFTER: Duration = Duration::from_secs(45);
pub const DEFAULT_FLEET_TTL: Duration = Duration::from_secs(24 * 3600);
/// How often the liveness pass runs. Bounds how late a silent agent turns stale.
pub const DEFAULT_LIVENESS_TICK: Duration = Duration::from_millis(250);
/// Returns per second a shutdown spreads its agents' reconnects to (`drain`): each
/// reconnect costs a TLS handshake and a `Hello`, far more than a report.
pub const DEFAULT_DRAIN_RECONNECTS_PER_SECOND: u32 = 1000;
/// Longest window a shutdown spreads its agents' reconnects over (the agents' own backoff
/// cap).
pub const DEFAULT_DRAIN_MAX_WINDOW: Duration = Duration::from_secs(120);

/// How long raw samples (sealed chunks) and status history are kept.
pub const DEFAULT_METRICS_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);
/// How long 5-minute rollups are kept.
pub const DEFAULT_ROLLUP_5M_RETENTION: Duration = Duration::from_secs(90 * 24 * 3600);
/// How long 1-hour rollups are kept (two years).
pub const DEFAULT_ROLLUP_1H_RETENTION: Duration = Duration::from_secs(730 * 24 * 3600);
pub const DEFAULT_RETENTION_INTERVAL: Duration = Duration::from_secs(3600);
/// How often the store seals heads that are due, reports its memory, and checks whether a
/// checkpoint is due.
pub const DEFAULT_COMPACTION_INTERVAL: Duration = Duration::from_secs(10);
/// How often the store snapshots its open heads and truncates its write-ahead log: bounds
/// the log (about this long of ingest) and so the replay at start-up.
pub const DEFAULT_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(5 * 60);
/// Log size past which a checkpoint is due sooner than its interval (under heavy ingest).
pub const DEFAULT_CHECKPOINT_LOG_BYTES: u64 = 64 * 1024 * 1024;
/// Smallest allowed head size bound: a chunk must hold a few samples to compress at all.
pub const MIN_HEAD_MAX_BYTES: usize = 256;
/// Most writes the writer commits in one batch.
pub const DEFAULT_WRITER_MAX_BATCH: usize = 4096;
/// How long the writer waits for more writes after the first one of a batch arrives.
pub const DEFAULT_WRITER_LINGER: Duration = Duration::from_millis(5);
/// Writes queued towards the writer before sessions wait (backpressure on ingest).
pub const DEFAULT_WRITER_QUEUE: usize = 65_536;
/// Handler commits and audit entries queued towards the writer before their callers wait.
pub const DEFAULT_WRITER_CONTROL_QUEUE: usize = 4096;
/// How long one store commit may run before the server gives up on its store and exits for a
/// restart (a commit normally takes milliseconds, seconds on a machine under heavy load).
pub const DEFAULT_STORE_STALL_LIMIT: Duration = Duration::from_secs(120);
/// Samples all sessions together may have read and not yet seen acknowledged (the ingest
/// budget). Two batches: one filling while the other commits. Past it, sessions stop reading
/// their streams (HTTP/2 flow control holds the agents back) and take turns, first come first
/// served, as budget frees up; so a sample waits at most about two commits inside the server.
pub const DEFAULT_INGEST_BUDGET: usize = 2 * DEFAULT_WRITER_MAX_BATCH;
/// Samples that may wait in line for the ingest budget (one batch) before the reports of
/// agents that accept it are deferred (`MetricsDeferred`) and wait in the agents' buffers: a
/// report's wait inside the server stays about three commits at any offered load, instead of
/// growing with the number of agents that each hold a report in line.
pub const DEFAULT_INGEST_QUEUE: usize = DEFAULT_WRITER_MAX_BATCH;
/// Metrics reports one session may have read and not yet seen acknowledged; past it, the
/// session reads nothing more until an ack, so a flooding agent holds at most this much of the
/// ingest budget and waits on itself.
pub const DEFAULT_SESSION_REPORTS_IN_FLIGHT: usize = 4;
/// Most `--min-report-interval` and `--max-report-interval`: agents obey a wait between
/// reports up to this long.
pub const MAX_MIN_REPORT_INTERVAL: Duration = Duration::from_secs(60);
/// Longest wait between an agent's reports that adaptive pacing asks when its acks lag
/// (`session/pacing.rs`): under overload, samples reach the server at least this often.
pub const DEFAULT_MAX_REPORT_INTERVAL: Duration = Duration::from_secs(30);

pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 1024 * 1024;
pub const DEFAULT_MAX_SAMPLES_PER_REPORT: usize = 1000;
pub const DEFAULT_MAX_LABELS: usize = 64;
pub const DEFAULT_MAX_LABEL_KEY_BYTES: usize = 63;
pub const DEFAULT_MAX_LABEL_VALUE_BYTES: usize = 255;
/// A sample whose seq is this far beyond the highest one seen is refused: accepting it would
/// make every later genuine sample look like a duplicate.
pub const DEFAULT_MAX_SEQ_JUMP: u64 = 1_000_000;
/// Longest text field of an agent's `SystemInfo` and longest disk mount point, in bytes.
pub const DEFAULT_MAX_REPORTED_TEXT_BYTES: usize = tether_proto::text::MAX_REPORTED_TEXT_BYTES;
/// Most disks in one metrics sample.
pub const DEFAULT_MAX_DISKS_PER_SAMPLE: usize = tether_proto::text::MAX_DISKS_PER_SAMPLE;
/// How far ahead of the server's clock a sample (or boot) time may be. A sample from the future
/// would sort after every real one and outlive retention; a machine whose clock is further
/// ahead has its reports refused (`INVALID_ARGUMENT`, naming the clock) until it is fixed.
pub const DEFAULT_MAX_CLOCK_SKEW: Duration = Duration::from_secs(10 * 60);
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 1024;
pub const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Events queued per watcher before it is ended with `ABORTED` and must resync.
pub const DEFAULT_WATCH_BUFFER: usize = 8192;
/// Bytes of events queued per watcher before it is ended with `ABORTED` and must resync: what
/// a watcher that stops reading can hold, beyond one snapshot page.
pub const DEFAULT_WATCH_BUFFER_BYTES: usize = 4 * 1024 * 1024;
/// Concurrent `WatchAgents` streams per token.
pub const DEFAULT_MAX_WATCHES_PER_TOKEN: usize = 16;
/// Concurrent `WatchAgents` streams per org.
pub const DEFAULT_MAX_WATCHES_PER_ORG: usize = 128;
/// Largest answer of a read RPC (a `ListAgents` page, `GetAgent`, `GetMetrics`): half the
/// 4 MiB that gRPC clients accept by default.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 2 * 1024 * 1024;
/// Smallest allowed read budget and watcher byte bound: one agent at every input limit must
/// fit (`convert` tests pin that the largest valid agent is smaller).
pub const MIN_RESPONSE_BYTES: usize = 1024 * 1024;
/// Largest HTTP/2 header block accepted (header-flood defence).
pub const DEFAULT_MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;
/// Bytes a client may send on one stream before the server has read them (HTTP/2 flow
/// control). It is what a stream the server holds back can make it buffer, so it is small:
/// HTTP/2's own default rather than hyper's 1 MiB.
pub const DEFAULT_HTTP2_STREAM_WINDOW: u32 = 64 * 1024;
/// Bytes a client may send on all streams of one connection before the server has read them.
pub const DEFAULT_HTTP2_CONNECTION_WINDOW: u32 = 1024 * 1024;
/// Smallest allowed flow-control window.
pub const MIN_HTTP2_WINDOW: u32 = 16 * 1024;
/// Streams reset by a client before the server accepted them, per connection, before the
/// connection is closed (HTTP/2 Rapid Reset defence). As large as the stream limit: a
/// well-behaved client may cancel every stream it is allowed to have open at once (its HEADERS
/// and its RST_STREAM then reach a busy server in one read), and must not lose its connection
/// for it; a Rapid Reset flood opens and resets far more than that per read.
pub const DEFAULT_MAX_PENDING_ACCEPT_RESETS: usize = DEFAULT_MAX_CONCURRENT_STREAMS as usize;
/// Streams the server itself had to reset for protocol errors, per connection, before the
/// connection is closed (reset-flood defence).
pub const DEFAULT_MAX_LOCAL_ERROR_RESETS: usize = 256;
/// Sustained inbound messages per second allowed on one agent stream.
pub const DEFAULT_STREAM_MESSAGES_PER_SECOND: u32 = 50;
/// Burst of inbound messages allowed on one agent stream (a reconnecting agent re-sends its
/// buffer in reports of up to 500 samples, so 20,000 buffered samples take 40 messages).
pub const DEFAULT_STREAM_MESSAGE_BURST: u32 = 200;
/// Sustained requests per second allowed per token.
pub const DEFAULT_TOKEN_REQUESTS_PER_SECOND: u32 = 200;
/// Burst of requests allowed per token.
pub const DEFAULT_TOKEN_REQUEST_BURST: u32 = 400;
/// Most enrolled agents per org.
pub const DEFAULT_MAX_AGENTS_PER_ORG: usize = 250_000;
/// Sustained re-enrollments per minute allowed for one hardware id the org already knows
/// (first enrollments of a hardware id are not limited by it).
pub const DEFAULT_REENROLL_PER_MINUTE: u32 = 10;
/// Burst of re-enrollments allowed for one hardware id.
pub const DEFAULT_REENROLL_BURST: u32 = 10;
/// How long a session replaced by another agent process, and an identity conflict, are
/// remembered; the `identity_conflict` flag clears once none happened for this long.
pub const DEFAULT_IDENTITY_CONFLICT_WINDOW: Duration = Duration::from_secs(15 * 60);
/// Conflicting replacements (two processes with one credential replacing each other) allowed
/// within the window before the newcomer is refused with `FAILED_PRECONDITION`.
pub const DEFAULT_IDENTITY_CONFLICT_REPLACEMENTS: u32 = 3;
/// How long an admin's reclaim permission (`AllowAgentReclaim`) lasts when no TTL is given.
pub const DEFAULT_RECLAIM_TTL: Duration = Duration::from_secs(3600);
/// Longest reclaim permission an admin may give.
pub const MAX_RECLAIM_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Time a new connection has to complete its TLS handshake before the server closes it, so a
/// peer that connects and sends nothing cannot hold a socket (and a task) forever.
pub const DEFAULT_TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a new connection has, from accept, to send its first authenticated request (TLS
/// handshake and HTTP/2 preface included); a connection that has not is closed.
pub const DEFAULT_FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections open at once from one source address. Enough for the benchmark's 11,000 agents
/// over 39 addresses many times over; raise it when many agents share one address (NAT).
pub const DEFAULT_MAX_CONNECTIONS_PER_SOURCE: usize = 2048;
/// File descriptors kept out of the connection cap when it is derived from the open-file limit
/// (the store, the metrics listener, the accept itself). At most a quarter of the limit.
pub const CONNECTION_FD_RESERVE: usize = 256;
/// The connection cap when none is configured and the open-file limit cannot be read.
pub const FALLBACK_MAX_CONNECTIONS: usize = 65_536;
/// TLS handshakes in progress at once; further accepted connections wait for a turn (within
/// their first-request deadline).
pub const DEFAULT_MAX_TLS_HANDSHAKES: usize = 512;
/// How long a new `Connect` stream may take to send its `Hello` before it is ended with
/// `UNAVAILABLE` (the server may be the slow one, so it is never the client's fault).
pub const DEFAULT_HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Sessions being set up at once (from the opening of `Connect` to its `Welcome`); a new one
/// beyond this is refused with `UNAVAILABLE` and a retry delay before any work is done for it.
pub const DEFAULT_MAX_SESSIONS_IN_SETUP: usize = 512;
/// Retry delay the server asks for when it refuses or ends a session because it is busy. Each
/// answer spreads it with jitter over `[1×, 2×]`, so refused agents do not return together.
pub const DEFAULT_BUSY_RETRY_AFTER: Duration = Duration::from_secs(2);

/// Run time an invocation gets when its command names none.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// How long the server tries to deliver an invocation when its command says nothing.
pub const DEFAULT_COMMAND_DELIVER_WITHIN: Duration = Duration::from_secs(10 * 60);
/// Output kept per invocation when its command says nothing (head and tail).
pub const DEFAULT_COMMAND_OUTPUT_LIMIT: u64 = 1 << 20;
/// Most output a command may ask the server to keep per invocation.
pub const DEFAULT_MAX_COMMAND_OUTPUT_LIMIT: u64 = 16 << 20;
/// Between SIGTERM and SIGKILL when an invocation is cancelled or times out (sent in offers).
pub const DEFAULT_COMMAND_KILL_GRACE: Duration = Duration::from_secs(10);
/// How long finished commands (with their invocations and output) are kept.
pub const DEFAULT_COMMAND_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);
/// Unfinished commands an org may have at once.
pub const DEFAULT_MAX_COMMANDS_IN_FLIGHT: usize = 1000;
/// Unfinished invocations one agent may have at once (a send that would exceed it is refused;
/// the agent's own queue holds 64 waiting offers by default).
pub const DEFAULT_MAX_QUEUED_INVOCATIONS_PER_AGENT: usize = 64;
/// How often the command engine checks delivery and result deadlines.
pub const DEFAULT_COMMAND_TICK: Duration = Duration::from_millis(250);

pub const DEFAULT_CPU_WARNING: f64 = 80.0;
pub const DEFAULT_CPU_CRITICAL: f64 = 95.0;
pub const DEFAULT_MEMORY_WARNING: f64 = 85.0;
pub const DEFAULT_MEMORY_CRITICAL: f64 = 95.0;
pub const DEFAULT_DISK_WARNING: f64 = 85.0;
pub const DEFAULT_DISK_CRITICAL: f64 = 95.0;

/// Capabilities this server offers, for clients to check instead of guessing from versions
/// (served by `GetServerConfig`). Always on; `tls` and `mtls` are added when configured.
pub const FEATURES: &[&str] = &[
    "enrollment",
    "metrics",
    "watch",
    "liveness",
    "orgs",
    "audit",
    "commands",
    "alerts",
];

/// Name of the file in the data directory that holds the bootstrap admin token (mode 0600).
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

/// Everything the server needs to run.
#[derive(Clone, Debug)]
pub struct Config {
    pub data_dir: PathBuf,
    pub liveness: LivenessConfig,
    pub storage: StorageConfig,
    pub limits: Limits,
    pub health: HealthThresholds,
    pub commands: CommandSettings,
    /// TLS on the gRPC listener; `None` serves plaintext (allowed on loopback only, unless the
    /// binary was told `--insecure-plaintext`).
    pub tls: Option<TlsSettings>,
    pub connections: ConnectionLimits,
    pub admission: AdmissionConfig,
    /// How events are kept and limited.
    pub events: crate::events::EventsConfig,
    /// Where the Prometheus listener (`GET /metrics`) binds; `None` serves no metrics. Off in
    /// [`Config::new`], so servers started by tests bind nothing extra; the binary sets
    /// [`DEFAULT_METRICS_LISTEN`] unless told `--no-metrics`.
    pub metrics_listen: Option<SocketAddr>,
    /// Alert rules of the rules file, the evaluation interval and webhook delivery.
    pub alerts: crate::alert::AlertSettings,
}

/// Where the listener's TLS material is. Loaded and checked by [`crate::tls::server_config`].
#[derive(Clone, Debug, PartialEq)]
pub struct TlsSettings {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of the leaf certificate.
    pub key: PathBuf,
    /// PEM CA certificate(s) for client certificates (mTLS). When set, clients may present a
    /// certificate, which must then chain to this CA; agents must present one whose identity is
    /// their agent id (see [`crate::tls::peer_identity`]). Clients without one (operators'
    /// CLI) still connect and authenticate with their token.
    pub client_ca: Option<PathBuf>,
    /// See [`DEFAULT_TLS_HANDSHAKE_TIMEOUT`].
    pub handshake_timeout: Duration,
}

/// Intervals the agents follow and thresholds the server applies.
#[derive(Clone, Debug, PartialEq)]
pub struct LivenessConfig {
    pub heartbeat_interval: Duration,
    pub metrics_interval: Duration,
    pub stale_after: Duration,
    pub offline_after: Duration,
    pub fleet_ttl: Duration,
    pub tick: Duration,
    /// When agents told to leave at shutdown come back.
    pub drain: crate::drain::DrainPolicy,
}

#[derive(Clone, Debug, PartialEq)]
pub struct StorageConfig {
    /// Bound of the embedded store's page cache.
    pub cache_bytes: u64,
    /// Raw samples and status history.
    pub metrics_retention: Duration,
    pub rollup_5m_retention: Duration,
    pub rollup_1h_retention: Duration,
    pub retention_interval: Duration,
    pub compaction_interval: Duration,
    pub checkpoint_interval: Duration,
    /// Size of the write-ahead log past which a checkpoint comes before its interval.
    pub checkpoint_log_bytes: u64,
    /// How samples are kept: head sizes, chunk span, the heads' memory budget.
    pub series: crate::store::SeriesConfig,
    pub writer_max_batch: usize,
    pub writer_linger: Duration,
    pub writer_queue: usize,
    pub writer_control_queue: usize,
    /// A store commit running longer ends the process (`writer/stall.rs`).
    pub commit_stall_limit: Duration,
    /// Samples read from all sessions and not yet acknowledged, at most.
    pub ingest_budget: usize,
    /// Samples that may wait in line for the ingest budget before a report of an agent that
    /// accepts a deferral is answered `MetricsDeferred` instead of joining the line.
    pub ingest_queue: usize,
    /// Metrics reports read from one session and not yet acknowledged, at most.
    pub session_reports_in_flight: usize,
    /// Least time an agent waits after a metrics ack before its next report (0: none).
    pub min_report_interval: Duration,
    /// Longest such wait adaptive pacing asks of an agent whose acks lag; at or below
    /// `min_report_interval` (0 included), no adaptive pacing.
    pub max_report_interval: Duration,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Limits {
    pub max_message_bytes: usize,
    pub max_samples_per_report: usize,
    pub max_labels: usize,
    pub max_label_key_bytes: usize,
    pub max_label_value_bytes: usize,
    pub max_seq_jump: u64,
    pub max_reported_text_bytes: usize,
    pub max_disks_per_sample: usize,
    pub max_clock_skew: Duration,
    pub max_concurrent_streams: u32,
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    pub watch_buffer: usize,
    pub watch_buffer_bytes: usize,
    pub max_watches_per_token: usize,
    pub max_watches_per_org: usize,
    pub max_response_bytes: usize,
    pub max_header_list_bytes: u32,
    /// HTTP/2 flow-control window of each stream and of each connection.
    pub http2_stream_window: u32,
    pub http2_connection_window: u32,
    pub max_pending_accept_resets: usize,
    pub max_local_error_resets: usize,
    pub stream_messages_per_second: u32,
    pub stream_message_burst: u32,
    pub token_requests_per_second: u32,
    pub token_request_burst: u32,
    pub max_agents_per_org: usize,
    pub reenroll_per_minute: u32,
    pub reenroll_burst: u32,
    pub identity_conflict_window: Duration,
    pub identity_conflict_replacements: u32,
}

/// Defaults and limits of commands.
#[derive(Clone, Debug, PartialEq)]
pub struct CommandSettings {
    pub default_timeout: Duration,
    pub default_deliver_within: Duration,
    pub default_output_limit: u64,
    pub max_output_limit: u64,
    pub kill_grace: Duration,
    pub retention: Duration,
    pub max_in_flight_per_org: usize,
    pub max_queued_per_agent: usize,
    pub tick: Duration,
}

/// What a connection may hold before it proves useful, and how many there may be. Enforced by
/// the accept loop (`listener.rs`) and the connection wrapper (`conn.rs`).
#[derive(Clone, Debug, PartialEq)]
pub struct ConnectionLimits {
    /// See [`DEFAULT_FIRST_REQUEST_TIMEOUT`].
    pub first_request_timeout: Duration,
    /// Connections open at once; `None` derives it from the process's open-file limit (see
    /// [`ConnectionLimits::effective_max_connections`]).
    pub max_connections: Option<usize>,
    /// See [`DEFAULT_MAX_CONNECTIONS_PER_SOURCE`].
    pub max_connections_per_source: usize,
    /// See [`DEFAULT_MAX_TLS_HANDSHAKES`].
    pub max_tls_handshakes: usize,
}

/// When the `Connect` handler refuses new sessions because the server is behind.
#[derive(Clone, Debug, PartialEq)]
pub struct AdmissionConfig {
    /// See [`DEFAULT_HELLO_TIMEOUT`].
    pub hello_timeout: Duration,
    /// See [`DEFAULT_MAX_SESSIONS_IN_SETUP`].
    pub max_sessions_in_setup: usize,
    /// See [`DEFAULT_BUSY_RETRY_AFTER`].
    pub retry_after: Duration,
}

/// Percentages at or above which a resource makes an agent `Warning` / `Critical`.
#[derive(Clone, Debug, PartialEq)]
pub struct HealthThresholds {
    pub cpu_warning: f64,
    pub cpu_critical: f64,
    pub memory_warning: f64,
    pub memory_critical: f64,
    pub disk_warning: f64,
    pub disk_critical: f64,
}

/// A configuration that cannot work, found before anything is bound.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Invalid(String),
}

// === impl Config ===

impl Config {
    /// Defaults for everything, with data in `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            liveness: LivenessConfig::default(),
            storage: StorageConfig::default(),
            limits: Limits::default(),
            health: HealthThresholds::default(),
            commands: CommandSettings::default(),
            tls: None,
            connections: ConnectionLimits::default(),
            admission: AdmissionConfig::default(),
            events: crate::events::EventsConfig::default(),
            metrics_listen: None,
            alerts: crate::alert::AlertSettings::default(),
        }
    }

    /// Whether agents must present a client certificate matching their agent id (mTLS):
    /// TLS is on and a client CA is configured.
    pub fn mtls(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.client_ca.is_some())
    }
}

impl Limits {
    /// When sessions replacing each other count as an identity conflict.
    pub fn conflict_policy(&self) -> crate::identity::ConflictPolicy {
        crate::identity::ConflictPolicy {
            window: self.identity_conflict_window,
            max_replacements: self.identity_conflict_replacements,
        }
    }

    /// How often one known hardware id may enroll again.
    pub fn reenroll_rate(&self) -> crate::identity::ReenrollRate {
        crate::identity::ReenrollRate {
            per_minute: self.reenroll_per_minute,
            burst: self.reenroll_burst,
        }
    }
}

impl TlsSettings {
    /// Settings for `cert` and `key`, without client certificates, with the default handshake
    /// timeout.
    pub fn new(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        Self {
            cert: cert.into(),
            key: key.into(),
            client_ca: None,
            handshake_timeout: DEFAULT_TLS_HANDSHAKE_TIMEOUT,
        }
    }

    /// Settings from the binary's flags: `None` when neither certificate nor key is given.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] when only one of certificate and key is given, or a client CA
    /// without them. Whether the files can be read and parsed is checked by
    /// [`crate::tls::server_config`].
    pub fn from_flags(
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
        client_ca: Option<PathBuf>,
        handshake_timeout: Duration,
    ) -> Result<Option<Self>, ConfigError> {
        match (cert, key) {
            (Some(cert), Some(key)) => Ok(Some(Self {
                cert,
                key,
                client_ca,
                handshake_timeout,
            })),
            (None, None) if client_ca.is_none() => Ok(None),
            (None, None) => Err(ConfigError::Invalid(
                "--client-ca needs TLS: also pass --tls-cert and --tls-key".to_owned(),
            )),
            (Some(_), None) => Err(ConfigError::Invalid(
                "--tls-cert needs --tls-key (the certificate's private key)".to_owned(),
            )),
            (None, Some(_)) => Err(ConfigError::Invalid(
                "--tls-key needs --tls-cert (the certificate chain)".to_owned(),
            )),
        }
    }
}

impl CommandSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        use tether_proto::command::{MAX_DELIVER_WITHIN, MAX_TIMEOUT};
        let invalid = |msg: String| Err(ConfigError::Invalid(msg));
        if self.default_timeout.is_zero() || self.default_timeout > MAX_TIMEOUT {
            return invalid(format!(
                "the default command timeout must be above zero and at most {}",
                humantime::format_duration(MAX_TIMEOUT)
            ));
        }
        if self.default_deliver_within.is_zero() || self.default_deliver_within > MAX_DELIVER_WITHIN
        {
            return invalid(format!(
                "the default command delivery window must be above zero and at most {}",
                humantime::format_duration(MAX_DELIVER_WITHIN)
            ));
        }
        if self.default_output_limit == 0 || self.default_output_limit > self.max_output_limit {
            return invalid(
                "the default command output limit must be above zero and at most the maximum"
                    .to_owned(),
            );
        }
        if self.tick.is_zero()
            || self.retention.is_zero()
            || self.max_in_flight_per_org == 0
            || self.max_queued_per_agent == 0
        {
            return invalid(
                "the command tick, retention and per-org and per-agent limits must be greater \
                 than zero"
                    .to_owned(),
            );
        }
        Ok(())
    }
}

impl Default for CommandSettings {
    fn default() -> Self {
        Self {
            default_timeout: DEFAULT_COMMAND_TIMEOUT,
            default_deliver_within: DEFAULT_COMMAND_DELIVER_WITHIN,
            default_output_limit: DEFAULT_COMMAND_OUTPUT_LIMIT,
            max_output_limit: DEFAULT_MAX_COMMAND_OUTPUT_LIMIT,
            kill_grace: DEFAULT_COMMAND_KILL_GRACE,
            retention: DEFAULT_COMMAND_RETENTION,
            max_in_flight_per_org: DEFAULT_MAX_COMMANDS_IN_FLIGHT,
            max_queued_per_agent: DEFAULT_MAX_QUEUED_INVOCATIONS_PER_AGENT,
            tick: DEFAULT_COMMAND_TICK,
        }
    }
}

impl Default for LivenessConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            metrics_interval: DEFAULT_METRICS_INTERVAL,
            stale_after: DEFAULT_STALE_AFTER,
            offline_after: DEFAULT_OFFLINE_AFTER,
            fleet_ttl: DEFAULT_FLEET_TTL,
            tick: DEFAULT_LIVENESS_TICK,
            drain: crate::drain::DrainPolicy {
                reconnects_per_second: DEFAULT_DRAIN_RECONNECTS_PER_SECOND,
                max_window: DEFAULT_DRAIN_MAX_WINDOW,
            },
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            cache_bytes: crate::store::sled::CACHE_CAPACITY_BYTES,
            metrics_retention: DEFAULT_METRICS_RETENTION,
            rollup_5m_retention: DEFAULT_ROLLUP_5M_RETENTION,
            rollup_1h_retention: DEFAULT_ROLLUP_1H_RETENTION,
            retention_interval: DEFAULT_RETENTION_INTERVAL,
            compaction_interval: DEFAULT_COMPACTION_INTERVAL,
            checkpoint_interval: DEFAULT_CHECKPOINT_INTERVAL,
            checkpoint_log_bytes: DEFAULT_CHECKPOINT_LOG_BYTES,
            series: crate::store::SeriesConfig::default(),
            writer_max_batch: DEFAULT_WRITER_MAX_BATCH,
            writer_linger: DEFAULT_WRITER_LINGER,
            writer_queue: DEFAULT_WRITER_QUEUE,
            writer_control_queue: DEFAULT_WRITER_CONTROL_QUEUE,
            commit_stall_limit: DEFAULT_STORE_STALL_LIMIT,
            ingest_budget: DEFAULT_INGEST_BUDGET,
            ingest_queue: DEFAULT_INGEST_QUEUE,
            session_reports_in_flight: DEFAULT_SESSION_REPORTS_IN_FLIGHT,
            min_report_interval: Duration::ZERO,
            max_report_interval: DEFAULT_MAX_REPORT_INTERVAL,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_samples_per_report: DEFAULT_MAX_SAMPLES_PER_REPORT,
            max_labels: DEFAULT_MAX_LABELS,
            max_label_key_bytes: DEFAULT_MAX_LABEL_KEY_BYTES,
            max_label_value_bytes: DEFAULT_MAX_LABEL_VALUE_BYTES,
            max_seq_jump: DEFAULT_MAX_SEQ_JUMP,
            max_reported_text_bytes: DEFAULT_MAX_REPORTED_TEXT_BYTES,
            max_disks_per_sample: DEFAULT_MAX_DISKS_PER_SAMPLE,
            max_clock_skew: DEFAULT_MAX_CLOCK_SKEW,
            max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
            keepalive_interval: DEFAULT_KEEPALIVE_INTERVAL,
            keepalive_timeout: DEFAULT_KEEPALIVE_TIMEOUT,
            watch_buffer: DEFAULT_WATCH_BUFFER,
            watch_buffer_bytes: DEFAULT_WATCH_BUFFER_BYTES,
            max_watches_per_token: DEFAULT_MAX_WATCHES_PER_TOKEN,
            max_watches_per_org: DEFAULT_MAX_WATCHES_PER_ORG,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            max_header_list_bytes: DEFAULT_MAX_HEADER_LIST_BYTES,
            http2_stream_window: DEFAULT_HTTP2_STREAM_WINDOW,
            http2_connection_window: DEFAULT_HTTP2_CONNECTION_WINDOW,
            max_pending_accept_resets: DEFAULT_MAX_PENDING_ACCEPT_RESETS,
            max_local_error_resets: DEFAULT_MAX_LOCAL_ERROR_RESETS,
            stream_messages_per_second: DEFAULT_STREAM_MESSAGES_PER_SECOND,
            stream_message_burst: DEFAULT_STREAM_MESSAGE_BURST,
            token_requests_per_second: DEFAULT_TOKEN_REQUESTS_PER_SECOND,
            token_request_burst: DEFAULT_TOKEN_REQUEST_BURST,
            max_agents_per_org: DEFAULT_MAX_AGENTS_PER_ORG,
            reenroll_per_minute: DEFAULT_REENROLL_PER_MINUTE,
            reenroll_burst: DEFAULT_REENROLL_BURST,
            identity_conflict_window: DEFAULT_IDENTITY_CONFLICT_WINDOW,
            identity_conflict_replacements: DEFAULT_IDENTITY_CONFLICT_REPLACEMENTS,
        }
    }
}

impl ConnectionLimits {
    /// The global connection cap in force: the configured one, else the soft open-file limit
    /// minus [`CONNECTION_FD_RESERVE`] (at most a quarter of it), else
    /// [`FALLBACK_MAX_CONNECTIONS`] where the limit cannot be read.
    pub fn effective_max_connections(&self) -> usize {
        self.max_connections.unwrap_or_else(|| {
            open_file_limit().map_or(FALLBACK_MAX_CONNECTIONS, connections_for_fd_limit)
        })
    }
}

/// The connection cap that leaves room for everything else under an open-file limit of
/// `limit`.
pub fn connections_for_fd_limit(limit: usize) -> usize {
    let reserve = CONNECTION_FD_RESERVE.min(limit / 4);
    limit.saturating_sub(reserve).max(1)
}

/// Raises this process's soft limit on open files to its hard limit, and logs what it did:
/// the servers' binaries call it first thing, before the connection cap is derived from it.
///
/// The soft limit's usual default (1,024) exists for programs that still use `select(2)`;
/// a server that does not is meant to raise it itself (systemd's `LimitNOFILE=` documentation
/// says so). Left alone, a shell's default would cap Tether at 768 connections
/// ([`connections_for_fd_limit`]) on a machine whose hard limit allows far more. The hard
/// limit stays the operator's: it is never raised, and `--max-connections` still caps
/// connections below it. An unlimited hard limit is left as it is (Linux refuses it for open
/// files; elsewhere the soft one could not follow it).
pub fn raise_open_file_limit() {
    match raise_soft_open_file_limit() {
        Ok(Some((from, to))) => {
            tracing::info!(
                from,
                to,
                "raised the soft open-file limit to the hard limit"
            );
        }
        Ok(None) => {}
        Err(err) => tracing::warn!(
            error = %err,
            limit = open_file_limit().map(tracing::field::display),
            "could not raise the soft open-file limit: connections stay capped by it"
        ),
    }
}

/// The soft limit on open files before and after raising it to the hard one; `None` when it
/// was already there (or either is unlimited).
fn raise_soft_open_file_limit() -> std::io::Result<Option<(u64, u64)>> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let (Some(soft), Some(hard)) = (limit.current, limit.maximum) else {
        return Ok(None);
    };
    if soft >= hard {
        return Ok(None);
    }
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(hard),
            maximum: Some(hard),
        },
    )?;
    Ok(Some((soft, hard)))
}

/// The soft limit on open files of this process (`getrlimit`); `None` when unlimited or
/// too large for a `usize`.
pub fn open_file_limit() -> Option<usize> {
    let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile).current?;
    usize::try_from(soft).ok()
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            first_request_timeout: DEFAULT_FIRST_REQUEST_TIMEOUT,
            max_connections: None,
            max_connections_per_source: DEFAULT_MAX_CONNECTIONS_PER_SOURCE,
            max_tls_handshakes: DEFAULT_MAX_TLS_HANDSHAKES,
        }
    }
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        Self {
            hello_timeout: DEFAULT_HELLO_TIMEOUT,
            max_sessions_in_setup: DEFAULT_MAX_SESSIONS_IN_SETUP,
            retry_after: DEFAULT_BUSY_RETRY_AFTER,
        }
    }
}

impl Default for HealthThresholds {
    fn default() -> Self {
        Self {
            cpu_warning: DEFAULT_CPU_WARNING,
            cpu_critical: DEFAULT_CPU_CRITICAL,
            memory_warning: DEFAULT_MEMORY_WARNING,
            memory_critical: DEFAULT_MEMORY_CRITICAL,
            disk_warning: DEFAULT_DISK_WARNING,
            disk_critical: DEFAULT_DISK_CRITICAL,
        }
    }
}

#[cfg(test)]
mod tests;
