//! The `tether-agent` binary: parses flags, sets up logging, and runs the agent library until
//! SIGTERM or SIGINT.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use tether_agent::{AgentConfig, AgentStats, BackoffConfig, SysinfoCollector};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// Tether agent: reports this machine to a Tether server over one long-lived stream.
#[derive(Debug, Parser)]
#[command(name = "tether-agent", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    #[command(flatten)]
    run: RunArgs,

    #[command(flatten)]
    log: LogArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the agent (the default when no subcommand is given).
    Run,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Server address.
    #[arg(long, env = "TETHER_SERVER", default_value = tether_agent::DEFAULT_SERVER_URL, global = true)]
    server: String,

    /// Directory holding the agent id and credential (created with mode 0700).
    #[arg(long, env = "TETHER_AGENT_STATE_DIR", default_value = tether_agent::DEFAULT_STATE_DIR, global = true)]
    state_dir: PathBuf,

    /// Enrollment token; used only when the state directory holds no credential.
    #[arg(
        long,
        env = "TETHER_ENROLL_TOKEN",
        hide_env_values = true,
        global = true
    )]
    enroll_token: Option<String>,

    /// Display name sent at enrollment (the server defaults it to the hostname).
    #[arg(long, global = true)]
    name: Option<String>,

    /// Label as key=value; repeat for several.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label, global = true)]
    labels: Vec<(String, String)>,

    /// How many unacknowledged samples to keep across disconnects.
    #[arg(long, default_value_t = tether_agent::DEFAULT_BUFFER_CAPACITY, global = true)]
    buffer_capacity: usize,

    /// Time allowed to connect to the server, and again to receive its Welcome.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s", global = true)]
    connect_timeout: Duration,
}

#[derive(Debug, Args)]
struct LogArgs {
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,

    /// Log filter, e.g. `info` or `tether_agent=debug` (default: RUST_LOG, else `info`).
    #[arg(long, global = true)]
    log_level: Option<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(err) = init_tracing(&cli.log) {
        eprintln!("error: {err:#}");
        return ExitCode::from(2);
    }
    match real_main(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main(cli: Cli) -> anyhow::Result<()> {
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => {
            let config = agent_config(cli.run);
            config.validate()?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("start the tokio runtime")?;
            runtime.block_on(run_agent(config))
        }
    }
}

async fn run_agent(config: AgentConfig) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    let collector = tokio::task::spawn_blocking(SysinfoCollector::new)
        .await
        .context("initialise the system collector")?;
    let stats = std::sync::Arc::new(AgentStats::new());
    tether_agent::run(config, Box::new(collector), stats, shutdown)
        .await
        .context("agent stopped")
}

fn agent_config(args: RunArgs) -> AgentConfig {
    let RunArgs {
        server,
        state_dir,
        enroll_token,
        name,
        labels,
        buffer_capacity,
        connect_timeout,
    } = args;
    let mut config = AgentConfig::new(server, state_dir);
    config.enroll_token = enroll_token.filter(|token| !token.is_empty());
    config.name = name;
    config.labels = labels.into_iter().collect::<BTreeMap<_, _>>();
    config.buffer_capacity = buffer_capacity;
    config.backoff = BackoffConfig::default();
    config.connect_timeout = connect_timeout;
    config
}

/// Parses `key=value`; the key must be non-empty and free of whitespace and `=`.
fn parse_label(raw: &str) -> Result<(String, String), String> {
    let (key, value) = raw
        .split_once('=')
        .ok_or_else(|| format!("label {raw:?} must look like key=value"))?;
    if key.is_empty() {
        return Err(format!("label {raw:?} has an empty key"));
    }
    if key.chars().any(char::is_whitespace) || value.chars().any(char::is_control) {
        return Err(format!(
            "label {raw:?} contains whitespace or control characters"
        ));
    }
    Ok((key.to_owned(), value.to_owned()))
}

fn init_tracing(log: &LogArgs) -> anyhow::Result<()> {
    let filter = match &log.log_level {
        Some(level) => {
            EnvFilter::try_new(level).with_context(|| format!("bad --log-level {level:?}"))?
        }
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match log.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}

/// Cancels `shutdown` on the first SIGTERM or SIGINT; a second one exits at once.
async fn cancel_on_signal(shutdown: CancellationToken) {
    wait_for_signal().await;
    tracing::info!("shutdown requested; saying goodbye (signal again to exit immediately)");
    shutdown.cancel();
    wait_for_signal().await;
    tracing::warn!("second signal: exiting immediately");
    std::process::exit(130);
}

#[cfg(unix)]
async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut terminate) => {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(err) => {
            tracing::warn!("cannot listen for SIGTERM: {err}");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() {
    let _ = tokio::signal::ctrl_c().await;
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn labels_parse() {
        assert_eq!(parse_label("env=prod"), Ok(("env".into(), "prod".into())));
        assert_eq!(parse_label("empty="), Ok(("empty".into(), String::new())));
        assert!(parse_label("novalue").is_err());
        assert!(parse_label("=x").is_err());
        assert!(parse_label("a b=c").is_err());
    }

    #[test]
    fn flags_build_config() {
        let cli = Cli::try_parse_from([
            "tether-agent",
            "--server",
            "http://10.0.0.1:7600",
            "--label",
            "env=prod",
            "--label",
            "zone=a",
            "--buffer-capacity",
            "50",
        ])
        .expect("valid flags");
        assert!(cli.command.is_none());
        let config = agent_config(cli.run);
        assert_eq!(config.server_url, "http://10.0.0.1:7600");
        assert_eq!(config.labels.len(), 2);
        assert_eq!(config.buffer_capacity, 50);
        config.validate().expect("valid config");

        let cli = Cli::try_parse_from(["tether-agent", "run", "--name", "web-1"])
            .expect("run subcommand accepts flags");
        assert!(matches!(cli.command, Some(Command::Run)));
        assert_eq!(cli.run.name.as_deref(), Some("web-1"));
    }
}
