//! `test-server`: the Tether server library as a process of its own, with the short intervals
//! of the tests ([`tether_tests::fast_config`]), for the tests that kill a server the way an
//! operating system does (SIGKILL), or at one of its store's crash points (`--crash-at`, where
//! the process aborts on the spot as a `kill -9` there would leave it), and for those that put
//! it under process limits (`prlimit --nofile=256 -- test-server …`), which an in-process
//! server would share with the test. It serves exactly what `tether-server` serves (the same
//! `start` and `serve`); the store settings the crash tests vary come from flags.
//!
//! Serves on `--listen` (port 0: any). Once it serves it prints `METRICS <addr>` (with
//! `--metrics-listen`), then `LISTENING <addr>` and `ADMIN_TOKEN <token>`. SIGTERM, or its
//! standard input closing, drains and stops it.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use tokio::io::AsyncReadExt as _;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
struct Args {
    #[arg(long)]
    data_dir: PathBuf,
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Serve Prometheus metrics there (port 0: any).
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    #[arg(long, value_parser = humantime::parse_duration)]
    first_request_timeout: Option<Duration>,
    #[arg(long)]
    max_connections: Option<usize>,
    #[arg(long)]
    max_connections_per_source: Option<usize>,
    /// A store crash point (`tether_server::store::fault::POINTS`) to abort at.
    #[arg(long)]
    crash_at: Option<String>,
    /// Abort the `n`th time the crash point is reached (or stall there, with `--stall`).
    #[arg(long, default_value_t = 1)]
    crash_nth: u64,
    /// Block the thread that reaches the crash point for good instead of aborting: a store
    /// commit that never returns.
    #[arg(long, requires = "crash_at")]
    stall: bool,
    /// How long a store commit may run before the server exits for a restart.
    #[arg(long, value_parser = humantime::parse_duration)]
    store_stall_limit: Option<Duration>,
    /// Most samples in one chunk.
    #[arg(long)]
    head_samples: Option<u32>,
    /// How often the store compacts.
    #[arg(long, value_parser = humantime::parse_duration)]
    compaction_interval: Option<Duration>,
    /// How often the store checkpoints.
    #[arg(long, value_parser = humantime::parse_duration)]
    checkpoint_interval: Option<Duration>,
    /// How often retention runs.
    #[arg(long, value_parser = humantime::parse_duration)]
    retention_interval: Option<Duration>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tether_tests::trace_to_stderr();
    let args = Args::parse();
    tether_server::config::raise_open_file_limit();
    if let Some(point) = &args.crash_at {
        let armed = if args.stall {
            tether_server::store::fault::arm_stall(point, args.crash_nth)
        } else {
            tether_server::store::fault::arm(point, args.crash_nth)
        };
        anyhow::ensure!(armed, "unknown crash point {point}");
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("bind {}", args.listen))?;
    let mut config = tether_tests::fast_config(&args.data_dir);
    config.metrics_listen = args.metrics_listen;
    if let Some(timeout) = args.first_request_timeout {
        config.connections.first_request_timeout = timeout;
    }
    config.connections.max_connections = args.max_connections;
    if let Some(max) = args.max_connections_per_source {
        config.connections.max_connections_per_source = max;
    }
    let storage = &mut config.storage;
    if let Some(samples) = args.head_samples {
        storage.series.head_max_samples = samples;
    }
    if let Some(every) = args.compaction_interval {
        storage.compaction_interval = every;
    }
    if let Some(every) = args.checkpoint_interval {
        storage.checkpoint_interval = every;
    }
    if let Some(every) = args.retention_interval {
        storage.retention_interval = every;
    }
    if let Some(limit) = args.store_stall_limit {
        storage.commit_stall_limit = limit;
    }
    let server = tether_server::server::start(config).await?;
    let token = std::fs::read_to_string(&server.admin_token_file).context("admin token")?;
    let mut out = std::io::stdout();
    if let Some(metrics) = server.metrics_addr() {
        writeln!(out, "METRICS {metrics}")?;
    }
    writeln!(out, "LISTENING {}", listener.local_addr()?)?;
    writeln!(out, "ADMIN_TOKEN {}", token.trim())?;
    out.flush()?;
    let shutdown = CancellationToken::new();
    tokio::spawn(tether_proto::process::cancel_on_signal(shutdown.clone()));
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            let mut stdin = tokio::io::stdin();
            let mut buf = [0u8; 64];
            while matches!(stdin.read(&mut buf).await, Ok(n) if n > 0) {}
            shutdown.cancel();
        }
    });
    server.serve(listener, shutdown).await?;
    Ok(())
}
