//! `test-server`: the Tether server library as a process of its own, with the short intervals
//! of the tests ([`tether_tests::fast_config`]), for the tests that kill a server the way an
//! operating system does (SIGKILL). Serves on `--listen` (port 0: any) and prints
//! `LISTENING <addr>` and `ADMIN_TOKEN <token>` once it serves.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
struct Args {
    #[arg(long)]
    data_dir: PathBuf,
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tether_tests::trace_to_stderr();
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("bind {}", args.listen))?;
    let config = tether_tests::fast_config(&args.data_dir);
    let server = tether_server::server::start(config).await?;
    let token = std::fs::read_to_string(&server.admin_token_file).context("admin token")?;
    let mut out = std::io::stdout();
    writeln!(out, "LISTENING {}", listener.local_addr()?)?;
    writeln!(out, "ADMIN_TOKEN {}", token.trim())?;
    out.flush()?;
    let shutdown = CancellationToken::new();
    tokio::spawn(tether_proto::process::cancel_on_signal(shutdown.clone()));
    server.serve(listener, shutdown).await?;
    Ok(())
}
