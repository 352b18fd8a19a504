//! `tether-server`: parses flags into a [`Config`], binds, and runs the library.
//!
//! `--dev` is the one-command local setup: loopback address, a data directory under the working
//! directory, the admin token printed with a ready-to-paste `export` line, and one agent for this
//! machine running in-process.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Parser;
use tether_server::config::{self, Config};
use tether_server::server;
use tokio_util::sync::CancellationToken;

/// The Tether server: agent sessions, liveness, storage, fleet queries.
#[derive(Debug, Parser)]
#[command(name = "tether-server", version, about)]
struct Args {
    /// Run for local development: loopback, ./tether-data, print the admin token, and run an
    /// agent for this machine in-process.
    #[arg(long)]
    dev: bool,

    /// Address to listen on.
    #[arg(long, env = "TETHER_LISTEN", default_value = config::DEFAULT_LISTEN)]
    listen: SocketAddr,

    /// Data directory (store, admin token). Created if missing.
    #[arg(long, env = "TETHER_DATA_DIR", default_value = config::DEFAULT_DATA_DIR)]
    data_dir: PathBuf,

    /// Allow plaintext on a non-loopback address. TLS is not available in this build, so
    /// traffic (tokens included) would cross the network unencrypted.
    #[arg(long)]
    insecure_plaintext: bool,

    /// Create an enrollment token at start-up and print it.
    #[arg(long)]
    print_enrollment_token: bool,

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

    /// How long metrics samples and status history are kept.
    #[arg(long, default_value_t = config::DEFAULT_METRICS_RETENTION.into())]
    metrics_retention: humantime::Duration,

    /// How long the writer waits for more writes before committing a batch.
    #[arg(long, default_value_t = config::DEFAULT_WRITER_LINGER.into())]
    writer_linger: humantime::Duration,

    /// Most writes committed in one batch.
    #[arg(long, default_value_t = config::DEFAULT_WRITER_MAX_BATCH)]
    writer_max_batch: usize,

    /// Largest accepted gRPC message, in bytes (after decompression).
    #[arg(long, default_value_t = config::DEFAULT_MAX_MESSAGE_BYTES)]
    max_message_bytes: usize,

    /// Most samples in one metrics report.
    #[arg(long, default_value_t = config::DEFAULT_MAX_SAMPLES_PER_REPORT)]
    max_samples_per_report: usize,

    /// Most labels per agent.
    #[arg(long, default_value_t = config::DEFAULT_MAX_LABELS)]
    max_labels: usize,

    /// HTTP/2 streams allowed at once on one connection.
    #[arg(long, default_value_t = config::DEFAULT_MAX_CONCURRENT_STREAMS)]
    max_concurrent_streams: u32,

    /// Interval of the server's HTTP/2 keepalive pings (frees half-open connections).
    #[arg(long, default_value_t = config::DEFAULT_KEEPALIVE_INTERVAL.into())]
    keepalive_interval: humantime::Duration,

    /// How long a keepalive ping may go unanswered before the connection is closed.
    #[arg(long, default_value_t = config::DEFAULT_KEEPALIVE_TIMEOUT.into())]
    keepalive_timeout: humantime::Duration,

    /// Events buffered per watcher before a slow watcher is ended and must resync.
    #[arg(long, default_value_t = config::DEFAULT_WATCH_BUFFER)]
    watch_buffer: usize,

    /// Log format.
    #[arg(long, value_enum, default_value = "text", env = "TETHER_LOG_FORMAT")]
    log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

impl Args {
    fn config(&self) -> Config {
        let mut c = Config::new(self.data_dir.clone());
        c.liveness.heartbeat_interval = self.heartbeat_interval.into();
        c.liveness.metrics_interval = self.metrics_interval.into();
        c.liveness.stale_after = self.stale_after.into();
        c.liveness.offline_after = self.offline_after.into();
        c.liveness.fleet_ttl = self.fleet_ttl.into();
        c.liveness.tick = self.liveness_tick.into();
        c.storage.metrics_retention = self.metrics_retention.into();
        c.storage.writer_linger = self.writer_linger.into();
        c.storage.writer_max_batch = self.writer_max_batch;
        c.limits.max_message_bytes = self.max_message_bytes;
        c.limits.max_samples_per_report = self.max_samples_per_report;
        c.limits.max_labels = self.max_labels;
        c.limits.max_concurrent_streams = self.max_concurrent_streams;
        c.limits.keepalive_interval = self.keepalive_interval.into();
        c.limits.keepalive_timeout = self.keepalive_timeout.into();
        c.limits.watch_buffer = self.watch_buffer;
        c
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_tracing(args.log_format);
    let config = args.config();
    config.validate().context("invalid configuration")?;
    if !server::is_loopback(&args.listen) && !args.insecure_plaintext {
        bail!(
            "refusing to serve plaintext on non-loopback address {}: this build has no TLS; \
             pass --insecure-plaintext to accept unencrypted traffic",
            args.listen
        );
    }
    if !server::is_loopback(&args.listen) {
        tracing::warn!(addr = %args.listen, "serving plaintext on a non-loopback address");
    }

    let shutdown = CancellationToken::new();
    tokio::spawn(signal_shutdown(shutdown.clone()));

    let server = server::start(config)
        .await
        .context("cannot start the server")?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr().context("listener address")?;
    let url = format!("http://{addr}");

    if args.print_enrollment_token || args.dev {
        let admin_token = std::fs::read_to_string(&server.admin_token_file)
            .with_context(|| format!("cannot read {}", server.admin_token_file.display()))?;
        println!("Tether server listening on {url}");
        println!(
            "Admin token (also in {}):\n\n    export TETHER_SERVER={url} TETHER_TOKEN={}\n",
            server.admin_token_file.display(),
            admin_token.trim()
        );
    }
    if args.print_enrollment_token {
        let (record, secret) = tether_server::service::admin::create_enrollment_token(
            server.state(),
            tether_server::domain::OrgId::new(tether_server::domain::DEFAULT_ORG),
            tether_proto::CreateEnrollmentTokenRequest::default(),
        )
        .await
        .context("cannot create an enrollment token")?;
        println!(
            "Enrollment token {} (shown once):\n\n    tether-agent --server {url} --enroll-token {}\n",
            record.id,
            secret.expose()
        );
    }

    let local_agent = if args.dev {
        Some(dev::spawn_local_agent(&server, &url, &args.data_dir).await?)
    } else {
        None
    };

    let result = server.serve(listener, shutdown).await;
    if let Some(agent) = local_agent {
        agent.shutdown();
        if let Err(e) = agent.join().await {
            tracing::warn!("local agent: {e:#}");
        }
    }
    result.context("server failed")
}

async fn signal_shutdown(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(e) => {
                    tracing::warn!("cannot listen for SIGTERM: {e}");
                    let _ = ctrl_c.await;
                    shutdown.cancel();
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
    shutdown.cancel();
}

mod dev {
    //! `--dev`: one agent for this machine, enrolled automatically and run in-process.

    use std::collections::BTreeMap;
    use std::path::Path;
    use std::time::Duration;

    use anyhow::Context;
    use tether_server::domain::{DEFAULT_ORG, OrgId};
    use tether_server::server::Server;

    pub async fn spawn_local_agent(
        server: &Server,
        url: &str,
        data_dir: &Path,
    ) -> anyhow::Result<tether_agent::AgentHandle> {
        let state_dir = data_dir.join("local-agent");
        let mut config = tether_agent::AgentConfig::new(url, &state_dir);
        let enrolled = tether_agent::StateDir::open(&state_dir)
            .and_then(|s| s.load())
            .with_context(|| {
                format!(
                    "cannot read the local agent's state in {}",
                    state_dir.display()
                )
            })?
            .is_some();
        if !enrolled {
            let request = tether_proto::CreateEnrollmentTokenRequest {
                description: "local agent of tether-server --dev".to_owned(),
                labels: Default::default(),
                max_uses: 1,
                ttl: Some(prost_types::Duration {
                    seconds: Duration::from_secs(600).as_secs() as i64,
                    nanos: 0,
                }),
            };
            let (_, secret) = tether_server::service::admin::create_enrollment_token(
                server.state(),
                OrgId::new(DEFAULT_ORG),
                request,
            )
            .await
            .context("cannot create the local agent's enrollment token")?;
            config.enroll_token = Some(secret.expose().to_owned());
        }
        config.labels = BTreeMap::from([("tether.dev/local".to_owned(), "true".to_owned())]);
        tracing::info!(state_dir = %state_dir.display(), "starting the local agent");
        Ok(tether_agent::spawn(
            config,
            Box::new(tether_agent::SysinfoCollector::new()),
        ))
    }
}
