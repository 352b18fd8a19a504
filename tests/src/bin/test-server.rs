//! `test-server`: the Tether server library as a process of its own, with the short intervals
//! of the tests ([`tether_tests::fast_config`]), for the tests that kill a server the way an
//! operating system does (SIGKILL) and for those that put it under process limits
//! (`prlimit --nofile=256 -- test-server …`), which an in-process server would share with the
//! test. It serves exactly what `tether-server` serves (the same `start` and `serve`).
//!
//! Serves on `--listen` (port 0: any). Once it serves it prints `METRICS <addr>` (with
//! `--metrics-listen`), then `LISTENING <addr>` and `ADMIN_TOKEN <token>`. SIGTERM drains and
//! stops it.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tether_tests::trace_to_stderr();
    let args = Args::parse();
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
    server.serve(listener, shutdown).await?;
    Ok(())
}
