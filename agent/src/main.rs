//! The `tether-agent` binary: parses flags, sets up logging, and runs the agent library until
//! SIGTERM or SIGINT.
//!
//! Every flag may also come from a TOML file (`--config`, else `$TETHER_AGENT_CONFIG`, else
//! [`DEFAULT_CONFIG_FILE`] if it exists) whose keys are the long flag names, such as
//! `allow-exec = ["/usr/bin/uptime"]`; flags beat `TETHER_*` variables, which beat the file
//! (`tether_proto::config_file`). `config print` shows the settings in effect, the enrollment
//! token redacted, and checks them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use tether_agent::{AgentConfig, AgentStats, BackoffConfig, SysinfoCollector};
use tokio_util::sync::CancellationToken;

/// The configuration file read when neither `--config` nor [`CONFIG_ENV`] names one, if it
/// exists.
const DEFAULT_CONFIG_FILE: &str = "/etc/tether/agent.toml";

/// The environment variable that names the configuration file.
const CONFIG_ENV: &str = "TETHER_AGENT_CONFIG";

/// Blocking threads of the agent's runtime: two, so that a sample stuck on a hung mount
/// (statvfs on a dead NFS server) does not also stop the event spool.
const AGENT_BLOCKING_THREADS: usize = 2;

/// Tether agent: reports this machine to a Tether server over one long-lived stream.
#[derive(Debug, Parser)]
#[command(name = "tether-agent", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    /// Configuration file (TOML): every flag may be set there, keyed by its long name
    /// (`allow-exec = ["/usr/bin/uptime"]`); flags and TETHER_* variables override it.
    /// Default: /etc/tether/agent.toml, if it exists.
    #[arg(long = "config", env = CONFIG_ENV, value_name = "PATH", global = true)]
    config_file: Option<PathBuf>,

    #[command(flatten)]
    run: RunArgs,

    #[command(flatten)]
    log: LogArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the agent (the default when no subcommand is given).
    Run,
    /// Simulate a fleet: N agents in this process, each a real agent session on the real
    /// protocol, for load tests and the fleet benchmark. Intervals come from the server.
    Simulate(Box<SimulateArgs>),
    /// The configuration file and the settings in effect.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Report an event through the running agent's local socket (it spools the event and
    /// sends it to the server). Exits non-zero, saying why, when the event is refused.
    Emit(EmitArgs),
}

#[derive(Debug, Args)]
struct EmitArgs {
    /// Dotted name such as `ssh.login_failed` (lowercase letters, digits, `_`, `-`).
    #[arg(long)]
    kind: String,

    /// info, warning, error or critical.
    #[arg(long, default_value = "info")]
    severity: String,

    /// Attribute as key=value; repeat for several.
    #[arg(long = "attr", value_name = "KEY=VALUE", value_parser = parse_attribute)]
    attributes: Vec<(String, String)>,

    /// Occurrences with the same fingerprint are stored by the server as one event, counted.
    #[arg(long)]
    fingerprint: Option<String>,

    /// What happened.
    message: String,
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Print the settings in effect (flags > TETHER_* environment > file > defaults) as TOML,
    /// each with where it came from, the enrollment token redacted, and check them: exits
    /// non-zero if the agent would refuse to start with them.
    Print,
}

#[derive(Debug, Args)]
struct SimulateArgs {
    /// Number of simulated agents.
    #[arg(long, default_value_t = 100)]
    agents: usize,

    /// Connections carrying the sessions (as multiplexed HTTP/2 streams); default: one per
    /// agent. Keep agents/connections under the server's --max-concurrent-streams.
    #[arg(long)]
    connections: Option<usize>,

    /// Local source addresses to spread connections over, e.g. `127.0.0.2-127.0.0.40`
    /// (one address pair runs out of ephemeral ports near 28,000 connections).
    #[arg(long, value_parser = checked(tether_agent::simulate::parse_source_addrs))]
    source_addrs: Option<String>,

    /// Connections opened per second while ramping up (0: all at once).
    #[arg(long, default_value_t = 1000.0)]
    ramp: f64,

    /// JSON-lines file of enrollments: read at start, appended to, so reruns reuse agent ids
    /// and credentials instead of enrolling again.
    #[arg(long)]
    state_file: Option<PathBuf>,

    /// Labels to spread over the agents by index, e.g. `env=prod|staging|dev,region=eu|us|ap`.
    #[arg(long, value_parser = checked(tether_agent::simulate::parse_label_mix), default_value = "env=prod|staging|dev,region=eu|us|ap")]
    label_mix: String,

    /// OS names to spread over the agents, e.g. `linux|windows|darwin`.
    #[arg(long, default_value = "linux|windows|darwin")]
    os_mix: String,

    /// Hostnames are `PREFIX-000042`; use distinct prefixes for simulators sharing a server.
    #[arg(long, default_value = "sim")]
    name_prefix: String,

    /// Once every agent was online, wait this long and then mute agents: they keep their
    /// streams open but send nothing (a hung machine).
    #[arg(long, value_parser = humantime::parse_duration)]
    silent_after: Option<Duration>,

    /// How many agents go silent (default: all).
    #[arg(long, requires = "silent_after")]
    silent_count: Option<usize>,

    /// Period of the stats records.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1s")]
    stats_interval: Duration,

    /// Print JSON lines on stdout instead of text.
    #[arg(long)]
    json: bool,

    /// Also append JSON stats lines to this file.
    #[arg(long)]
    stats_file: Option<PathBuf>,

    /// Stop after this long (default: until SIGINT/SIGTERM).
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,

    /// Enrollments in flight at once.
    #[arg(long, default_value_t = tether_agent::simulate::DEFAULT_ENROLL_CONCURRENCY)]
    enroll_concurrency: usize,

    /// Events each agent reports per minute (a mix of kinds and severities, some repeating
    /// by fingerprint); 0: none.
    #[arg(long, default_value_t = 0.0)]
    events_per_minute: f64,

    /// Stop when stdin closes (a supervising process, such as the fleet benchmark, went away).
    #[arg(long)]
    exit_on_stdin_close: bool,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Server address.
    #[arg(long, env = "TETHER_SERVER", default_value = tether_agent::DEFAULT_SERVER_URL, global = true)]
    server: String,

    /// Directory holding the agent id and credential (created with mode 0700).
    #[arg(long, env = "TETHER_AGENT_STATE_DIR", default_value = tether_agent::DEFAULT_STATE_DIR, global = true)]
    state_dir: PathBuf,

    /// Enrollment token; used when the state directory holds no credential, and to enroll
    /// again when the server revoked the stored one (the agent was deleted).
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

    /// Hardware id to report instead of this machine's (/etc/machine-id, else the SMBIOS
    /// UUID): give each machine cloned from one image its own, so that the server tells them
    /// apart.
    #[arg(long, env = "TETHER_HARDWARE_ID", global = true)]
    hardware_id: Option<String>,

    /// Label as key=value; repeat for several.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label, global = true)]
    labels: Vec<(String, String)>,

    /// How many unacknowledged samples to keep across disconnects.
    #[arg(long, default_value_t = tether_agent::DEFAULT_BUFFER_CAPACITY, global = true)]
    buffer_capacity: usize,

    /// Time allowed to connect to the server, and again (at least 60s) to receive its Welcome.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s", global = true)]
    connect_timeout: Duration,

    /// CA certificate (PEM) the server's certificate must chain to, for an https:// server
    /// (default: the system's trusted roots).
    #[arg(long, env = "TETHER_CA_CERT", value_name = "PATH", global = true)]
    ca_cert: Option<PathBuf>,

    /// Client certificate (PEM) to present for mTLS; its Common Name must be this agent's id.
    #[arg(
        long,
        env = "TETHER_CLIENT_CERT",
        value_name = "PATH",
        requires = "client_key",
        global = true
    )]
    client_cert: Option<PathBuf>,

    /// Private key (PEM) of --client-cert.
    #[arg(
        long,
        env = "TETHER_CLIENT_KEY",
        value_name = "PATH",
        requires = "client_cert",
        global = true
    )]
    client_key: Option<PathBuf>,

    /// Program the `exec` command may run: an absolute path, or a glob over absolute paths
    /// (`*` stays within one directory); repeat for several. A shell runs only when named
    /// exactly. Without any, this agent runs no program.
    #[arg(long = "allow-exec", value_name = "PATTERN")]
    allow_exec: Vec<String>,

    /// Refuse the built-in commands (noop, collect, sleep).
    #[arg(long)]
    no_builtin_commands: bool,

    #[command(flatten)]
    events: EventArgs,
}

/// The event settings (`tether_agent::events::EventsConfig`).
#[derive(Debug, Args)]
struct EventArgs {
    /// Most disk space the event spool (in the state directory) takes, e.g. 64MiB; beyond,
    /// the oldest events of the lowest severity are dropped, and the drop reported.
    #[arg(long, value_parser = tether_agent::events::config::parse_size, default_value = "64MiB", global = true)]
    event_spool_size: u64,

    /// The local socket programs report events through (`tether-agent emit`). Default:
    /// events.sock in the state directory.
    #[arg(long, env = "TETHER_EVENT_SOCKET", value_name = "PATH", global = true)]
    event_socket: Option<PathBuf>,

    /// Group (name or id) whose members may use the event socket (mode 0660); default: only
    /// the agent's user (mode 0600).
    #[arg(long, value_name = "GROUP", global = true)]
    event_socket_group: Option<String>,

    /// Events accepted from the socket per --event-rate-window; more are dropped, counted
    /// and reported once per window as tether.rate_limited.
    #[arg(long, default_value_t = tether_agent::events::config::DEFAULT_RATE_LIMIT, global = true)]
    event_rate_limit: u32,

    /// The window of --event-rate-limit.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1m", global = true)]
    event_rate_window: Duration,

    /// Disk usage (percent of a filesystem) that raises tether.disk_usage_high.
    #[arg(long, default_value_t = tether_agent::events::config::DEFAULT_DISK_THRESHOLD, global = true)]
    event_disk_threshold: f64,

    /// How long disk usage must stay at or above its threshold.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s", global = true)]
    event_disk_for: Duration,

    /// Memory usage (percent) that raises tether.memory_usage_high.
    #[arg(long, default_value_t = tether_agent::events::config::DEFAULT_MEMORY_THRESHOLD, global = true)]
    event_memory_threshold: f64,

    /// How long memory usage must stay at or above its threshold.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s", global = true)]
    event_memory_for: Duration,

    /// CPU usage (percent of all cores) that raises tether.cpu_usage_high.
    #[arg(long, default_value_t = tether_agent::events::config::DEFAULT_CPU_THRESHOLD, global = true)]
    event_cpu_threshold: f64,

    /// How long CPU usage must stay at or above its threshold.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5m", global = true)]
    event_cpu_for: Duration,

    /// Percentage points below its threshold a value must fall before its event clears (a
    /// value hovering at the threshold raises one event).
    #[arg(long, default_value_t = tether_agent::events::config::DEFAULT_HYSTERESIS, global = true)]
    event_hysteresis: f64,
}

#[derive(Debug, Args)]
struct LogArgs {
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,

    /// Log filter, e.g. `info` or `tether_agent=debug` (default: RUST_LOG, else `info`).
    #[arg(long, global = true, env = "TETHER_LOG_LEVEL")]
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
    let parsed =
        match tether_proto::config_file::parse::<Cli>(CONFIG_ENV, Path::new(DEFAULT_CONFIG_FILE)) {
            Ok(parsed) => parsed,
            Err(err) => {
                eprintln!("error: {}", tether_proto::process::error_line(&err));
                return ExitCode::from(2);
            }
        };
    let cli = parsed.args;
    let settings = || tether_proto::config_file::render(&parsed.layered, &parsed.matches);
    if let Err(err) = init_tracing(&cli.log) {
        eprintln!("error: {}", tether_proto::process::error_line(err.as_ref()));
        return ExitCode::from(2);
    }
    match real_main(cli, settings) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", tether_proto::process::error_line(err.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// Runs the subcommand; `settings` renders the settings in effect for `config print`.
fn real_main(cli: Cli, settings: impl FnOnce() -> String) -> anyhow::Result<()> {
    match cli.command.unwrap_or(Command::Run) {
        Command::Config(ConfigCommand::Print) => {
            print!("{}", settings());
            Ok(agent_config(cli.run).validate()?)
        }
        Command::Emit(args) => {
            let socket = agent_config(cli.run).events_socket_path();
            let request = tether_agent::events::EmitRequest {
                kind: args.kind,
                severity: args.severity,
                message: args.message,
                attributes: args.attributes.into_iter().collect(),
                fingerprint: args.fingerprint,
            };
            tether_agent::events::emit(&socket, &request)?;
            Ok(())
        }
        Command::Run => {
            let config = agent_config(cli.run);
            config.validate()?;
            // One thread is plenty for one agent: it is idle most of the time, and what blocks
            // (sampling, journal writes) runs on the blocking pool. Each extra worker would cost
            // its stack and a malloc arena, against the agent's small memory budget.
            // Blocking work (a sample every interval, spool and journal writes) is short and
            // rare: one blocking thread, kept alive between samples instead of started anew
            // each time, serves it; more threads would each bring a malloc arena.
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .max_blocking_threads(AGENT_BLOCKING_THREADS)
                .thread_keep_alive(Duration::from_secs(5 * 60))
                .build()
                .context("start the tokio runtime")?;
            runtime.block_on(run_agent(config))
        }
        Command::Simulate(args) => {
            let config = simulate_config(cli.run, &args);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("start the tokio runtime")?;
            runtime.block_on(async {
                let shutdown = CancellationToken::new();
                tokio::spawn(tether_proto::process::cancel_on_signal(shutdown.clone()));
                if args.exit_on_stdin_close {
                    let token = shutdown.clone();
                    std::thread::spawn(move || {
                        let mut sink = Vec::new();
                        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
                        token.cancel();
                    });
                }
                Ok(tether_agent::simulate::simulate(config, shutdown).await?)
            })
        }
    }
}

fn simulate_config(run: RunArgs, args: &SimulateArgs) -> tether_agent::simulate::SimulateConfig {
    let mut config = tether_agent::simulate::SimulateConfig::new(run.server, args.agents);
    config.n_connections = args.connections.unwrap_or(args.agents);
    config.source_addrs = args
        .source_addrs
        .as_deref()
        .map(tether_agent::simulate::parse_source_addrs)
        .transpose()
        .expect("validated by clap")
        .unwrap_or_default();
    config.ramp = args.ramp;
    config.enroll_token = run.enroll_token.filter(|token| !token.is_empty());
    config.state_file = args.state_file.clone();
    config.label_mix =
        tether_agent::simulate::parse_label_mix(&args.label_mix).expect("validated by clap");
    config.os_mix = args
        .os_mix
        .split('|')
        .filter(|os| !os.is_empty())
        .map(str::to_owned)
        .collect();
    config.name_prefix = args.name_prefix.clone();
    config.silent_after = args.silent_after;
    config.silent_count = args.silent_count;
    config.stats_interval = args.stats_interval;
    config.json = args.json;
    config.stats_file = args.stats_file.clone();
    config.duration = args.duration;
    config.buffer_capacity = run.buffer_capacity;
    config.connect_timeout = run.connect_timeout;
    config.enroll_concurrency = args.enroll_concurrency;
    config.events_per_minute = args.events_per_minute;
    config
}

async fn run_agent(config: AgentConfig) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    tokio::spawn(tether_proto::process::cancel_on_signal(shutdown.clone()));
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
        hardware_id,
        labels,
        buffer_capacity,
        connect_timeout,
        ca_cert,
        client_cert,
        client_key,
        allow_exec,
        no_builtin_commands,
        events,
    } = args;
    let mut config = AgentConfig::new(server, state_dir);
    config.commands.allow_exec = allow_exec;
    config.commands.builtins = !no_builtin_commands;
    config.events = events_config(events);
    if ca_cert.is_some() || client_cert.is_some() || client_key.is_some() {
        config.tls = Some(tether_agent::ClientTls {
            ca_cert,
            client_cert,
            client_key,
        });
    }
    config.enroll_token = enroll_token.filter(|token| !token.is_empty());
    config.name = name;
    config.hardware_id = hardware_id;
    config.labels = labels.into_iter().collect::<BTreeMap<_, _>>();
    config.buffer_capacity = buffer_capacity;
    config.backoff = BackoffConfig::default();
    config.connect_timeout = connect_timeout;
    config
}

fn events_config(args: EventArgs) -> tether_agent::events::EventsConfig {
    use tether_agent::events::config::Threshold;
    let EventArgs {
        event_spool_size,
        event_socket,
        event_socket_group,
        event_rate_limit,
        event_rate_window,
        event_disk_threshold,
        event_disk_for,
        event_memory_threshold,
        event_memory_for,
        event_cpu_threshold,
        event_cpu_for,
        event_hysteresis,
    } = args;
    tether_agent::events::EventsConfig {
        spool_bytes: event_spool_size,
        socket: event_socket,
        socket_group: event_socket_group,
        rate_limit: event_rate_limit,
        rate_window: event_rate_window,
        disk: Threshold {
            percent: event_disk_threshold,
            sustained: event_disk_for,
        },
        memory: Threshold {
            percent: event_memory_threshold,
            sustained: event_memory_for,
        },
        cpu: Threshold {
            percent: event_cpu_threshold,
            sustained: event_cpu_for,
        },
        hysteresis: event_hysteresis,
    }
}

/// Parses `--attr key=value` (split at the first `=`; the agent checks the rest).
fn parse_attribute(raw: &str) -> Result<(String, String), String> {
    raw.split_once('=')
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .ok_or_else(|| format!("{raw:?} is not key=value"))
}

/// A clap value parser that checks `raw` with `parse` and keeps it as a string.
fn checked<T>(
    parse: fn(&str) -> Result<T, String>,
) -> impl Fn(&str) -> Result<String, String> + Clone + Send + Sync + 'static
where
    T: 'static,
{
    move |raw: &str| parse(raw).map(|_| raw.to_owned())
}

/// Parses `--label key=value` with the contract's label grammar (`tether_proto::selector`), so
/// a label the server would refuse stops the agent here, with the same words, instead of at
/// enrollment.
fn parse_label(raw: &str) -> Result<(String, String), String> {
    tether_proto::selector::parse_label(raw).map_err(|err| err.to_string())
}

/// Logs on stderr, coloured only on a terminal (`tether_proto::log`).
fn init_tracing(log: &LogArgs) -> anyhow::Result<()> {
    let format = match log.log_format {
        LogFormat::Text => tether_proto::log::LogFormat::Text,
        LogFormat::Json => tether_proto::log::LogFormat::Json,
    };
    Ok(tether_proto::log::init(format, log.log_level.as_deref())?)
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
        assert!(config.commands.builtins);
        assert!(config.commands.allow_exec.is_empty());
        config.validate().expect("valid config");

        let cli = Cli::try_parse_from([
            "tether-agent",
            "--allow-exec",
            "/usr/bin/uptime",
            "--allow-exec",
            "/usr/lib/tether/*",
            "--no-builtin-commands",
        ])
        .expect("command flags");
        let config = agent_config(cli.run);
        assert_eq!(
            config.commands.allow_exec,
            ["/usr/bin/uptime", "/usr/lib/tether/*"]
        );
        assert!(!config.commands.builtins);
        config.validate().expect("valid config");
        let cli = Cli::try_parse_from(["tether-agent", "--allow-exec", "uptime"])
            .expect("parsed; checked by validate");
        assert!(agent_config(cli.run).validate().is_err());

        let cli = Cli::try_parse_from(["tether-agent", "run", "--name", "web-1"])
            .expect("run subcommand accepts flags");
        assert!(matches!(cli.command, Some(Command::Run)));
        assert_eq!(cli.run.name.as_deref(), Some("web-1"));
        assert_eq!(agent_config(cli.run).hardware_id, None);
    }

    #[test]
    fn hardware_id_comes_from_the_flag() {
        let cli = Cli::try_parse_from(["tether-agent", "--hardware-id", "clone-0042"])
            .expect("valid flags");
        let config = agent_config(cli.run);
        assert_eq!(config.hardware_id.as_deref(), Some("clone-0042"));
        config.validate().expect("valid config");
        let cli = Cli::try_parse_from(["tether-agent", "--hardware-id", ""]).expect("parses");
        assert!(
            agent_config(cli.run).validate().is_err(),
            "an empty override is refused before anything connects"
        );
    }
}
