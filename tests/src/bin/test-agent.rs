//! `test-agent`: the Tether agent library (its runner, journal and command execution) as a
//! process of its own, for the tests that kill an agent the way an operating system does
//! (SIGKILL). A synthetic collector makes each one a distinct machine (`--hostname`); its
//! commands run in the process's working directory.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Parser;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
struct Args {
    #[arg(long)]
    server: String,
    #[arg(long)]
    state_dir: PathBuf,
    #[arg(long)]
    enroll_token: Option<String>,
    #[arg(long)]
    hostname: String,
    /// A program commands may run (repeatable).
    #[arg(long)]
    allow_exec: Vec<String>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    tether_tests::trace_to_stderr();
    let args = Args::parse();
    let mut config =
        tether_tests::agent_config(&args.server, &args.state_dir, &[], args.enroll_token);
    config.commands.allow_exec = args.allow_exec;
    let collector = tether_agent::SyntheticCollector::new(
        &args.hostname,
        format!("hw-{}", args.hostname),
        "linux",
    );
    let shutdown = CancellationToken::new();
    tokio::spawn(tether_proto::process::cancel_on_signal(shutdown.clone()));
    let stats = Arc::new(tether_agent::AgentStats::new());
    tether_agent::run(config, Box::new(collector), stats, shutdown).await?;
    Ok(())
}
