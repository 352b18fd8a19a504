//! The server's flags: [`Args`], one flag with its help text per setting, its subcommands, and
//! the [`Config`] the flags describe ([`Args::checked_config`]).
//!
//! Longer than most files: [`Args`] is the server's whole configuration surface, and reads best
//! in one place. Every default is a named constant of `tether_server::config` (or of the
//! subsystem it configures), so the flags, the config file and `GetServerConfig` agree.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tether_server::config::{self, Config, TlsSettings};
use tether_server::{alert, server};

use crate::{CONFIG_ENV, gen_certs};

/// The Tether server: agent sessions, liveness, storage, fleet queries.
#[derive(Debug, Parser)]
#[command(name = "tether-server", version, about)]
pub(super) struct Args {
    /// Without a subcommand, the server runs with the flags below.
    #[command(subcommand)]
    pub(super) command: Option<Command>,

    /// Configuration file (TOML): every flag below may be set there, keyed by its long name
    /// (`heartbeat-interval = "5s"`); flags and TETHER_* variables override it. Default:
    /// /etc/tether/server.toml, if it exists.
    #[arg(long = "config", env = CONFIG_ENV, value_name = "PATH", global = true)]
    config_file: Option<PathBuf>,

    /// Run for local development: loopback, ./tether-data, print the admin token, and run an
    /// agent for this machine in-process (needs the `dev` cargo feature, on by default).
    #[arg(long)]
    pub(super) dev: bool,

    /// Address to listen on.
    #[arg(long, env = "TETHER_LISTEN", default_value = config::DEFAULT_LISTEN)]
    pub(super) listen: SocketAddr,

    /// Data directory (store, admin token). Created if missing.
    #[arg(long, env = "TETHER_DATA_DIR", default_value = config::DEFAULT_DATA_DIR, global = true)]
    pub(super) data_dir: PathBuf,

    /// Allow plaintext on a non-loopback address (without TLS): traffic, tokens included,
    /// would cross the network unencrypted.
    #[arg(long)]
    insecure_plaintext: bool,

    /// Address of the Prometheus metrics listener (`GET /metrics`).
    #[arg(long, env = "TETHER_METRICS_LISTEN", default_value = config::DEFAULT_METRICS_LISTEN)]
    metrics_listen: SocketAddr,

    /// Do not serve Prometheus metrics.
    #[arg(long)]
    no_metrics: bool,

    /// TLS certificate chain (PEM, leaf first). Needs --tls-key.
    #[arg(long, env = "TETHER_TLS_CERT", value_name = "PATH")]
    pub(super) tls_cert: Option<PathBuf>,

    /// Private key (PEM) of --tls-cert.
    #[arg(long, env = "TETHER_TLS_KEY", value_name = "PATH")]
    tls_key: Option<PathBuf>,

    /// CA (PEM) for client certificates (mTLS): agents must then present a certificate whose
    /// Common Name is their agent id; clients without a certificate (the CLI) still connect.
    #[arg(long, env = "TETHER_CLIENT_CA", value_name = "PATH")]
    client_ca: Option<PathBuf>,

    /// Time a new connection has to complete its TLS handshake before it is closed.
    #[arg(long, default_value_t = config::DEFAULT_TLS_HANDSHAKE_TIMEOUT.into())]
    tls_handshake_timeout: humantime::Duration,

    /// Create an enrollment token at start-up and print it.
    #[arg(long)]
    pub(super) print_enrollment_token: bool,

    /// How often agents send a heartbeat.
    #[arg(long, default_value_t = config::DEFAULT_HEARTBEAT_INTERVAL.into())]
    heartbeat_interval: humantime::Duration,

    /// How often agents take a metrics sample.
    #[arg(long, default_value_t = config::DEFAULT_METRICS_INTERVAL.into())]
    metrics_interval: humantime::Duration,

    /// Silence after which a connected agent is stale.
    #[arg(long, default_value_t = config::DEFAULT_STALE_AFTER.into())]
    stale_after: humantime::Duration,

    /// Silence after which a connected agent is offline and its stream is closed.
    #[arg(long, default_value_t = config::DEFAULT_OFFLINE_AFTER.into())]
    offline_after: humantime::Duration,

    /// Time offline after which an agent is expired (hidden from listings by default).
    #[arg(long, default_value_t = config::DEFAULT_FLEET_TTL.into())]
    fleet_ttl: humantime::Duration,

    /// How often the liveness pass runs.
    #[arg(long, default_value_t = config::DEFAULT_LIVENESS_TICK.into())]
    liveness_tick: humantime::Duration,

    /// At shutdown, agents are told to reconnect spread over a window that keeps their return
    /// under this many per second (see --drain-max-window).
    #[arg(long, default_value_t = config::DEFAULT_DRAIN_RECONNECTS_PER_SECOND)]
    drain_reconnects_per_second: u32,

    /// Longest window a shutdown spreads the agents' reconnects over, whatever the fleet's size.
    #[arg(long, default_value_t = config::DEFAULT_DRAIN_MAX_WINDOW.into())]
    drain_max_window: humantime::Duration,

    /// How long raw metrics samples and status history are kept (whole chunks of samples go
    /// once their newest sample is older).
    #[arg(long, default_value_t = config::DEFAULT_METRICS_RETENTION.into())]
    metrics_retention: humantime::Duration,

    /// How long 5-minute rollups of samples are kept.
    // Spelled out: humantime prints 90 days in months. A test checks it is the constant.
    #[arg(long, default_value = "90days")]
    rollup_5m_retention: humantime::Duration,

    /// How long 1-hour rollups of samples are kept.
    #[arg(long, default_value = "730days")]
    rollup_1h_retention: humantime::Duration,

    /// How long raw events are kept.
    #[arg(long, default_value = "90days")]
    events_retention: humantime::Duration,

    /// How long the hourly event counts (`GetEventStats`) are kept.
    #[arg(long, default_value = "730days")]
    event_stats_retention: humantime::Duration,

    /// Events of one agent with the same fingerprint within this window of the last occurrence
    /// are one stored event, counted.
    #[arg(long, default_value = "10m")]
    event_fingerprint_window: humantime::Duration,

    /// Events per agent and minute; the excess is dropped, counted and reported.
    #[arg(long, default_value_t = tether_server::events::DEFAULT_RATE_PER_MINUTE)]
    event_rate_per_minute: u32,

    /// Most memory the cache of whole days of event counts (`GetEventStats`) may hold, in
    /// MiB; past it, the least recently used days are dropped and read again when asked
    /// (0: no cache, every call reads the store).
    #[arg(long, default_value_t = tether_server::events::day_cache::MAX_BYTES >> 20)]
    event_stats_cache_mib: usize,

    /// Size of the embedded store's page cache, in MiB.
    #[arg(long, default_value_t = tether_server::store::sled::CACHE_CAPACITY_BYTES >> 20)]
    store_cache_mib: u64,

    /// Most memory all agents' open chunks of samples may hold together, in MiB; past it,
    /// chunks are sealed early (smaller chunks compress less well).
    #[arg(long, default_value_t = tether_server::store::DEFAULT_HEADS_BUDGET_BYTES >> 20)]
    store_heads_budget_mib: usize,

    /// Bytes at which an agent's open chunk of samples is sealed: memory per agent against
    /// compression.
    #[arg(long, default_value_t = tether_server::store::DEFAULT_HEAD_MAX_BYTES)]
    store_head_bytes: usize,

    /// Most samples in one chunk.
    #[arg(long, default_value_t = tether_server::store::DEFAULT_HEAD_MAX_SAMPLES)]
    store_head_samples: u32,

    /// Longest a chunk of samples stays open, and widest span of sample times it covers.
    #[arg(long, default_value_t = tether_server::store::DEFAULT_CHUNK_MAX_SPAN.into())]
    store_chunk_span: humantime::Duration,

    /// How often the store seals chunks that are due and reports its memory.
    #[arg(long, default_value_t = config::DEFAULT_COMPACTION_INTERVAL.into())]
    store_compaction_interval: humantime::Duration,

    /// How often the store snapshots open chunks and truncates its write-ahead log (bounds
    /// the log, and the replay at start-up, to about this much ingest).
    #[arg(long, default_value_t = config::DEFAULT_CHECKPOINT_INTERVAL.into())]
    store_checkpoint_interval: humantime::Duration,

    /// Size of the write-ahead log, in MiB, past which a checkpoint comes sooner.
    #[arg(long, default_value_t = config::DEFAULT_CHECKPOINT_LOG_BYTES >> 20)]
    store_checkpoint_log_mib: u64,

    /// How long the writer waits for more writes before committing a batch.
    #[arg(long, default_value_t = config::DEFAULT_WRITER_LINGER.into())]
    writer_linger: humantime::Duration,

    /// Most writes committed in one batch.
    #[arg(long, default_value_t = config::DEFAULT_WRITER_MAX_BATCH)]
    writer_max_batch: usize,

    /// How long one store commit may run before the server gives up on its store and exits
    /// (status 75) for its supervisor to restart it; it reports the commit every 10 s before.
    #[arg(long, default_value_t = config::DEFAULT_STORE_STALL_LIMIT.into())]
    store_stall_limit: humantime::Duration,
    /// Samples read from all agents and not yet acknowledged, at most; past it, agent streams
    /// are not read until acks free budget (the agents keep the samples).
    #[arg(long, default_value_t = config::DEFAULT_INGEST_BUDGET)]
    ingest_budget: usize,

    /// Samples that may wait in line for the ingest budget; past it, an agent's report is
    /// deferred (the agent sends it again later; its samples wait in its buffer) instead of
    /// waiting in line. Agents that do not accept a deferral always wait in line.
    #[arg(long, default_value_t = config::DEFAULT_INGEST_QUEUE)]
    ingest_queue: usize,

    /// Metrics reports read from one agent and not yet acknowledged, at most.
    #[arg(long, default_value_t = config::DEFAULT_SESSION_REPORTS_IN_FLIGHT)]
    session_reports_in_flight: usize,

    /// Least time an agent waits after a metrics ack before its next report: its samples,
    /// still taken every metrics interval, leave together, in fewer and larger reports, which
    /// cost the server far less per sample (most of its cost is per message). 0: at once.
    #[arg(long, default_value = "0s")]
    min_report_interval: humantime::Duration,

    /// Longest wait between an agent's reports that the server asks when that agent's acks lag
    /// (adaptive pacing): past the server's CPU, agents send fewer, larger reports and their
    /// acks stay prompt, while samples reach the server at least this often. At or below
    /// --min-report-interval (0 included): no adaptive pacing (then, past the server's CPU,
    /// each ack waits behind every agent's report).
    #[arg(long, default_value = "30s")]
    max_report_interval: humantime::Duration,

    /// Largest accepted gRPC message, in bytes (after decompression).
    #[arg(long, default_value_t = config::DEFAULT_MAX_MESSAGE_BYTES)]
    max_message_bytes: usize,

    /// Most samples in one metrics report.
    #[arg(long, default_value_t = config::DEFAULT_MAX_SAMPLES_PER_REPORT)]
    max_samples_per_report: usize,

    /// Most labels per agent.
    #[arg(long, default_value_t = config::DEFAULT_MAX_LABELS)]
    max_labels: usize,

    /// Longest text field of an agent's system info, and longest disk mount point, in bytes.
    #[arg(long, default_value_t = config::DEFAULT_MAX_REPORTED_TEXT_BYTES)]
    max_reported_text_bytes: usize,

    /// Most disks in one metrics sample.
    #[arg(long, default_value_t = config::DEFAULT_MAX_DISKS_PER_SAMPLE)]
    max_disks_per_sample: usize,

    /// How far ahead of this server's clock a sample time may be.
    #[arg(long, default_value_t = config::DEFAULT_MAX_CLOCK_SKEW.into())]
    max_clock_skew: humantime::Duration,

    /// HTTP/2 streams allowed at once on one connection.
    #[arg(long, default_value_t = config::DEFAULT_MAX_CONCURRENT_STREAMS)]
    max_concurrent_streams: u32,

    /// Interval of the server's HTTP/2 keepalive pings (frees half-open connections).
    #[arg(long, default_value_t = config::DEFAULT_KEEPALIVE_INTERVAL.into())]
    keepalive_interval: humantime::Duration,

    /// How long a keepalive ping may go unanswered before the connection is closed.
    #[arg(long, default_value_t = config::DEFAULT_KEEPALIVE_TIMEOUT.into())]
    keepalive_timeout: humantime::Duration,

    /// Events queued per watcher before a slow watcher is ended and must resync.
    #[arg(long, default_value_t = config::DEFAULT_WATCH_BUFFER)]
    watch_buffer: usize,

    /// Bytes of events queued per watcher before a slow watcher is ended and must resync.
    #[arg(long, default_value_t = config::DEFAULT_WATCH_BUFFER_BYTES)]
    watch_buffer_bytes: usize,

    /// Concurrent watches per token.
    #[arg(long, default_value_t = config::DEFAULT_MAX_WATCHES_PER_TOKEN)]
    max_watches_per_token: usize,

    /// Concurrent watches per org.
    #[arg(long, default_value_t = config::DEFAULT_MAX_WATCHES_PER_ORG)]
    max_watches_per_org: usize,

    /// Largest answer of a read RPC, in bytes (listings page by it).
    #[arg(long, default_value_t = config::DEFAULT_MAX_RESPONSE_BYTES)]
    max_response_bytes: usize,

    /// Largest HTTP/2 header block accepted, in bytes.
    #[arg(long, default_value_t = config::DEFAULT_MAX_HEADER_LIST_BYTES)]
    max_header_list_bytes: u32,

    /// HTTP/2 flow-control window of each stream, in bytes: what a client may send before
    /// the server reads it.
    #[arg(long, default_value_t = config::DEFAULT_HTTP2_STREAM_WINDOW)]
    http2_stream_window: u32,

    /// HTTP/2 flow-control window of each connection, in bytes.
    #[arg(long, default_value_t = config::DEFAULT_HTTP2_CONNECTION_WINDOW)]
    http2_connection_window: u32,

    /// Client-reset streams tolerated per connection before it is closed (Rapid Reset).
    #[arg(long, default_value_t = config::DEFAULT_MAX_PENDING_ACCEPT_RESETS)]
    max_pending_accept_resets: usize,

    /// Server-side protocol-error resets tolerated per connection before it is closed.
    #[arg(long, default_value_t = config::DEFAULT_MAX_LOCAL_ERROR_RESETS)]
    max_local_error_resets: usize,

    /// Sustained inbound messages per second allowed on one agent stream.
    #[arg(long, default_value_t = config::DEFAULT_STREAM_MESSAGES_PER_SECOND)]
    stream_messages_per_second: u32,

    /// Burst of inbound messages allowed on one agent stream.
    #[arg(long, default_value_t = config::DEFAULT_STREAM_MESSAGE_BURST)]
    stream_message_burst: u32,

    /// Sustained requests per second allowed per token.
    #[arg(long, default_value_t = config::DEFAULT_TOKEN_REQUESTS_PER_SECOND)]
    token_requests_per_second: u32,

    /// Burst of requests allowed per token.
    #[arg(long, default_value_t = config::DEFAULT_TOKEN_REQUEST_BURST)]
    token_request_burst: u32,

    /// Most enrolled agents per org.
    #[arg(long, default_value_t = config::DEFAULT_MAX_AGENTS_PER_ORG)]
    max_agents_per_org: usize,

    /// Sustained re-enrollments per minute allowed for one hardware id the org already knows.
    #[arg(long, default_value_t = config::DEFAULT_REENROLL_PER_MINUTE)]
    reenroll_per_minute: u32,

    /// Burst of re-enrollments allowed for one hardware id.
    #[arg(long, default_value_t = config::DEFAULT_REENROLL_BURST)]
    reenroll_burst: u32,

    /// How long sessions of two agent processes sharing one credential, replacing each other,
    /// are remembered (the `identity_conflict` flag clears after this long without one).
    #[arg(long, default_value_t = config::DEFAULT_IDENTITY_CONFLICT_WINDOW.into())]
    identity_conflict_window: humantime::Duration,

    /// Conflicting replacements allowed within the window before the newcomer is refused.
    #[arg(long, default_value_t = config::DEFAULT_IDENTITY_CONFLICT_REPLACEMENTS)]
    identity_conflict_replacements: u32,

    /// Run time an invocation gets when its command names none.
    #[arg(long, default_value_t = config::DEFAULT_COMMAND_TIMEOUT.into())]
    command_timeout: humantime::Duration,

    /// How long an invocation may wait for its agent when its command says nothing.
    #[arg(long, default_value_t = config::DEFAULT_COMMAND_DELIVER_WITHIN.into())]
    command_deliver_within: humantime::Duration,

    /// Output kept per invocation (head and tail), in bytes, when its command says nothing.
    #[arg(long, default_value_t = config::DEFAULT_COMMAND_OUTPUT_LIMIT)]
    command_output_limit: u64,

    /// Most output a command may ask to keep per invocation, in bytes.
    #[arg(long, default_value_t = config::DEFAULT_MAX_COMMAND_OUTPUT_LIMIT)]
    max_command_output_limit: u64,

    /// Between SIGTERM and SIGKILL when an invocation is cancelled or times out.
    #[arg(long, default_value_t = config::DEFAULT_COMMAND_KILL_GRACE.into())]
    command_kill_grace: humantime::Duration,

    /// How long finished commands, with their output, are kept.
    #[arg(long, default_value_t = config::DEFAULT_COMMAND_RETENTION.into())]
    command_retention: humantime::Duration,

    /// Unfinished commands an org may have at once.
    #[arg(long, default_value_t = config::DEFAULT_MAX_COMMANDS_IN_FLIGHT)]
    max_commands_in_flight: usize,

    /// Unfinished invocations one agent may have at once.
    #[arg(long, default_value_t = config::DEFAULT_MAX_QUEUED_INVOCATIONS_PER_AGENT)]
    max_queued_invocations_per_agent: usize,

    /// Alert rules and per-org webhooks, a TOML file read at start (docs/alerts.md).
    #[arg(long, value_name = "PATH", value_hint = clap::ValueHint::FilePath)]
    alert_rules: Option<PathBuf>,

    /// How often every alert rule is evaluated.
    #[arg(long, default_value_t = alert::DEFAULT_ALERT_INTERVAL.into())]
    alert_interval: humantime::Duration,

    /// Longest one webhook attempt may take (connect to response head).
    #[arg(long, default_value_t = alert::DEFAULT_WEBHOOK_TIMEOUT.into())]
    webhook_timeout: humantime::Duration,

    /// Attempts per webhook notification, the first included (backoff from 1 s, doubling, 60 s
    /// at most between two).
    #[arg(long, default_value_t = alert::DEFAULT_WEBHOOK_MAX_ATTEMPTS)]
    webhook_max_attempts: u32,

    /// Notifications waiting per webhook; past it the oldest is dropped.
    #[arg(long, default_value_t = alert::DEFAULT_WEBHOOK_QUEUE)]
    webhook_queue: usize,

    /// Time a new connection has, from accept, to send its first authenticated request (TLS
    /// handshake and HTTP/2 preface included) before it is closed.
    #[arg(long, default_value_t = config::DEFAULT_FIRST_REQUEST_TIMEOUT.into())]
    first_request_timeout: humantime::Duration,

    /// Most client connections open at once [default: the open-file limit minus 256]. At the
    /// limit, a new connection replaces the oldest one that has made no request yet.
    #[arg(long)]
    max_connections: Option<usize>,

    /// Most client connections open at once from one source address (raise it when many
    /// agents share an address, e.g. behind NAT).
    #[arg(long, default_value_t = config::DEFAULT_MAX_CONNECTIONS_PER_SOURCE)]
    max_connections_per_source: usize,

    /// Most TLS handshakes in progress at once; more connections wait for a turn.
    #[arg(long, default_value_t = config::DEFAULT_MAX_TLS_HANDSHAKES)]
    max_tls_handshakes: usize,

    /// Time a new agent stream has to send its Hello before it is ended with UNAVAILABLE.
    #[arg(long, default_value_t = config::DEFAULT_HELLO_TIMEOUT.into())]
    hello_timeout: humantime::Duration,

    /// Most agent sessions being set up at once; more are refused with UNAVAILABLE and a
    /// retry delay until the server catches up.
    #[arg(long, default_value_t = config::DEFAULT_MAX_SESSIONS_IN_SETUP)]
    max_sessions_in_setup: usize,

    /// Retry delay asked of refused agents (spread with jitter up to twice as long).
    #[arg(long, default_value_t = config::DEFAULT_BUSY_RETRY_AFTER.into())]
    busy_retry_after: humantime::Duration,

    /// Log format.
    #[arg(long, value_enum, default_value = "text", env = "TETHER_LOG_FORMAT")]
    pub(super) log_format: LogFormat,

    /// Log filter, e.g. `info`, `debug` or `tether_server=debug,warn` (default: RUST_LOG, else
    /// `info`).
    #[arg(long, env = "TETHER_LOG_LEVEL")]
    pub(super) log_level: Option<String>,
}

#[derive(Debug, Subcommand)]
pub(super) enum Command {
    /// Write a development CA, a server certificate and a client certificate for the CLI (keys
    /// 0600), or with --agent only agents' client certificates, and print how to use them. An
    /// existing CA in the directory is reused, so certificates for agents enrolled later share
    /// the trust root. Existing files are never overwritten without --force.
    GenCerts(gen_certs::GenCertsArgs),
    /// The configuration file and the settings in effect.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Back up the store of a stopped server (--data-dir) into a new file; refused while a
    /// server runs there (back a running server up with `tetherctl backup`).
    Backup {
        /// The backup file to create (mode 0600); never overwritten.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Restore a backup file (from `tetherctl backup` or `tether-server backup`) into
    /// --data-dir, which must be missing or empty, after checking the whole file. The restored
    /// server creates a new admin token at its first start.
    Restore {
        /// The backup file.
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub(super) enum ConfigCommand {
    /// Print the settings in effect (flags > TETHER_* environment > file > defaults) as TOML,
    /// each with where it came from, and check them: exits non-zero if the server would refuse
    /// to start with them.
    Print,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub(super) enum LogFormat {
    Text,
    Json,
}

impl Args {
    /// The configuration the flags describe, checked as far as it can be without binding or
    /// writing anything, with how the listener will be exposed.
    pub(super) fn checked_config(&self) -> anyhow::Result<(Config, server::ListenSecurity)> {
        #[cfg(not(feature = "dev"))]
        if self.dev {
            anyhow::bail!(
                "--dev runs an agent for this machine in-process, and this tether-server was \
                 built without it (cargo feature `dev`, on by default)"
            );
        }
        let mut config = self.config();
        if let Some(path) = &self.alert_rules {
            let file = alert::file::read(path)?;
            config.alerts.rules = file.rules;
            config.alerts.org_webhooks = file.org_webhooks;
        }
        config.tls = TlsSettings::from_flags(
            self.tls_cert.clone(),
            self.tls_key.clone(),
            self.client_ca.clone(),
            self.tls_handshake_timeout.into(),
        )
        .context("invalid TLS flags")?;
        config.validate().context("invalid configuration")?;
        if let Some(tls) = &config.tls {
            tether_server::tls::server_config(tls).context("cannot use the TLS certificate")?;
        }
        let security =
            server::check_listen(&self.listen, config.tls.is_some(), self.insecure_plaintext)?;
        Ok((config, security))
    }

    fn config(&self) -> Config {
        let mut c = Config::new(self.data_dir.clone());
        c.liveness.heartbeat_interval = self.heartbeat_interval.into();
        c.liveness.metrics_interval = self.metrics_interval.into();
        c.liveness.stale_after = self.stale_after.into();
        c.liveness.offline_after = self.offline_after.into();
        c.liveness.fleet_ttl = self.fleet_ttl.into();
        c.liveness.tick = self.liveness_tick.into();
        c.liveness.drain.reconnects_per_second = self.drain_reconnects_per_second;
        c.liveness.drain.max_window = self.drain_max_window.into();
        c.storage.metrics_retention = self.metrics_retention.into();
        c.storage.rollup_5m_retention = self.rollup_5m_retention.into();
        c.storage.rollup_1h_retention = self.rollup_1h_retention.into();
        c.events.retention = self.events_retention.into();
        c.events.stats_retention = self.event_stats_retention.into();
        c.events.stats_cache_bytes = self.event_stats_cache_mib.saturating_mul(1 << 20);
        c.events.fingerprint_window = self.event_fingerprint_window.into();
        c.events.rate_per_minute = self.event_rate_per_minute;
        c.storage.compaction_interval = self.store_compaction_interval.into();
        c.storage.checkpoint_interval = self.store_checkpoint_interval.into();
        c.storage.checkpoint_log_bytes = self.store_checkpoint_log_mib.saturating_mul(1 << 20);
        c.storage.series.heads_budget_bytes = self.store_heads_budget_mib.saturating_mul(1 << 20);
        c.storage.series.head_max_bytes = self.store_head_bytes;
        c.storage.series.head_max_samples = self.store_head_samples;
        c.storage.series.chunk_max_span = self.store_chunk_span.into();
        c.storage.writer_linger = self.writer_linger.into();
        c.storage.cache_bytes = self.store_cache_mib << 20;
        c.storage.writer_max_batch = self.writer_max_batch;
        c.storage.commit_stall_limit = self.store_stall_limit.into();
        c.storage.ingest_budget = self.ingest_budget;
        c.storage.ingest_queue = self.ingest_queue;
        c.storage.session_reports_in_flight = self.session_reports_in_flight;
        c.storage.min_report_interval = self.min_report_interval.into();
        c.storage.max_report_interval = self.max_report_interval.into();
        c.limits.max_message_bytes = self.max_message_bytes;
        c.limits.max_samples_per_report = self.max_samples_per_report;
        c.limits.max_labels = self.max_labels;
        c.limits.max_reported_text_bytes = self.max_reported_text_bytes;
        c.limits.max_disks_per_sample = self.max_disks_per_sample;
        c.limits.max_clock_skew = self.max_clock_skew.into();
        c.limits.max_concurrent_streams = self.max_concurrent_streams;
        c.limits.keepalive_interval = self.keepalive_interval.into();
        c.limits.keepalive_timeout = self.keepalive_timeout.into();
        c.limits.watch_buffer = self.watch_buffer;
        c.limits.watch_buffer_bytes = self.watch_buffer_bytes;
        c.limits.max_watches_per_token = self.max_watches_per_token;
        c.limits.max_watches_per_org = self.max_watches_per_org;
        c.limits.max_response_bytes = self.max_response_bytes;
        c.limits.max_header_list_bytes = self.max_header_list_bytes;
        c.limits.http2_stream_window = self.http2_stream_window;
        c.limits.http2_connection_window = self.http2_connection_window;
        c.limits.max_pending_accept_resets = self.max_pending_accept_resets;
        c.limits.max_local_error_resets = self.max_local_error_resets;
        c.limits.stream_messages_per_second = self.stream_messages_per_second;
        c.limits.stream_message_burst = self.stream_message_burst;
        c.limits.token_requests_per_second = self.token_requests_per_second;
        c.limits.token_request_burst = self.token_request_burst;
        c.limits.max_agents_per_org = self.max_agents_per_org;
        c.limits.reenroll_per_minute = self.reenroll_per_minute;
        c.limits.reenroll_burst = self.reenroll_burst;
        c.limits.identity_conflict_window = self.identity_conflict_window.into();
        c.limits.identity_conflict_replacements = self.identity_conflict_replacements;
        c.commands.default_timeout = self.command_timeout.into();
        c.commands.default_deliver_within = self.command_deliver_within.into();
        c.commands.default_output_limit = self.command_output_limit;
        c.commands.max_output_limit = self.max_command_output_limit;
        c.commands.kill_grace = self.command_kill_grace.into();
        c.commands.retention = self.command_retention.into();
        c.commands.max_in_flight_per_org = self.max_commands_in_flight;
        c.commands.max_queued_per_agent = self.max_queued_invocations_per_agent;
        c.connections.first_request_timeout = self.first_request_timeout.into();
        c.connections.max_connections = self.max_connections;
        c.connections.max_connections_per_source = self.max_connections_per_source;
        c.connections.max_tls_handshakes = self.max_tls_handshakes;
        c.admission.hello_timeout = self.hello_timeout.into();
        c.admission.max_sessions_in_setup = self.max_sessions_in_setup;
        c.admission.retry_after = self.busy_retry_after.into();
        c.metrics_listen = (!self.no_metrics).then_some(self.metrics_listen);
        c.alerts.interval = self.alert_interval.into();
        c.alerts.delivery.timeout = self.webhook_timeout.into();
        c.alerts.delivery.max_attempts = self.webhook_max_attempts;
        c.alerts.delivery.queue = self.webhook_queue;
        c
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn cli_is_well_formed() {
        Args::command().debug_assert();
    }

    #[test]
    fn storage_defaults_are_the_config_defaults() {
        let args = Args::try_parse_from(["tether-server"]).expect("defaults");
        let storage = args.config().storage;
        assert_eq!(storage, config::StorageConfig::default());
    }

    #[test]
    fn event_defaults_are_the_config_defaults_and_the_stats_cache_is_set_in_mib() {
        let args = Args::try_parse_from(["tether-server"]).expect("defaults");
        let events = args.config().events;
        assert_eq!(events, tether_server::events::EventsConfig::default());
        let args = Args::try_parse_from(["tether-server", "--event-stats-cache-mib", "3"])
            .expect("--event-stats-cache-mib");
        assert_eq!(args.config().events.stats_cache_bytes, 3 << 20);
    }

    #[test]
    fn serving_flags_and_gen_certs_parse() {
        let args = Args::try_parse_from(["tether-server", "--dev"]).expect("--dev");
        assert!(args.dev && args.command.is_none() && args.tls_cert.is_none());

        let args = Args::try_parse_from([
            "tether-server",
            "--tls-cert",
            "s.pem",
            "--tls-key",
            "k.pem",
            "--client-ca",
            "ca.pem",
            "--tls-handshake-timeout",
            "3s",
        ])
        .expect("TLS flags");
        assert_eq!(
            std::time::Duration::from(args.tls_handshake_timeout),
            std::time::Duration::from_secs(3)
        );
        assert_eq!(
            args.client_ca.as_deref(),
            Some(std::path::Path::new("ca.pem"))
        );

        let args = Args::try_parse_from([
            "tether-server",
            "gen-certs",
            "--out",
            "certs",
            "--hosts",
            "localhost,10.0.0.5",
            "--force",
        ])
        .expect("gen-certs");
        let Some(Command::GenCerts(gen_args)) = args.command else {
            panic!("expected gen-certs");
        };
        assert_eq!(gen_args.hosts, ["localhost", "10.0.0.5"]);
        assert!(gen_args.force && gen_args.agents.is_empty());

        let args = Args::try_parse_from([
            "tether-server",
            "gen-certs",
            "--out",
            "certs",
            "--agent",
            "a-1",
            "--agent",
            "a-2",
        ])
        .expect("gen-certs --agent");
        let Some(Command::GenCerts(gen_args)) = args.command else {
            panic!("expected gen-certs");
        };
        assert_eq!(gen_args.agents, ["a-1", "a-2"]);
        assert!(!gen_args.force);
        // Agent certificates never come with a server certificate: its hosts make no sense.
        let both = Args::try_parse_from([
            "tether-server",
            "gen-certs",
            "--out",
            "c",
            "--hosts",
            "h",
            "--agent",
            "a-1",
        ]);
        assert!(both.is_err(), "--hosts with --agent");

        let args =
            Args::try_parse_from(["tether-server", "gen-certs", "--out", "c"]).expect("defaults");
        let Some(Command::GenCerts(gen_args)) = args.command else {
            panic!("expected gen-certs");
        };
        assert_eq!(gen_args.hosts, ["localhost", "127.0.0.1"]);
    }
}
