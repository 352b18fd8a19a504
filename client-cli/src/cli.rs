//! The command-line grammar: every command, flag and help text, as clap derive types.
//!
//! This lives in the library (not `main.rs`) so the end-to-end tests can build a [`Cli`] with
//! `Cli::try_parse_from([...])` and drive [`crate::run`] exactly as the binary does. Each
//! command group's grammar is a child module: `agents` (and `metrics`), `admin` (tokens, orgs,
//! audit), `command` (`cmd`), `event` and `alerts`; this module holds the top level, the
//! global flags, the output formats and the value parsers they share.

mod admin;
mod agents;
mod alerts;
mod command;
mod event;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::Secret;

pub use admin::{
    ApiTokensCommand, AuditArgs, AuditCommand, CreateApiTokenArgs, CreateOrgArgs, CreateTokenArgs,
    EnrollTokenCommand, ListApiTokensArgs, ListTokensArgs, OrgsCommand, RevokeTokenArgs,
};
pub use agents::{
    AgentsCommand, AllowReclaimArgs, DeleteArgs, GetArgs, ListArgs, MetricsArgs, SortKey, WatchArgs,
};
pub use alerts::{
    AlertRulesCommand, AlertStateArg, AlertsCommand, CreateAlertRuleArgs, DeleteAlertRuleArgs,
    ListAlertsArgs, RuleKindArg, WatchAlertsArgs, WebhookFormatArg,
};
pub use command::{
    CmdCommand, CommandIdArgs, InvocationsArgs, KindArg, ListCommandsArgs, LogsArgs, RunArgs,
    parse_budget, parse_size,
};
pub use event::{
    ChangeEventsArgs, EventSelectors, EventStatsArgs, EventsCommand, ListEventsArgs, SeverityArg,
    StateArg, StoredSelectors, WatchEventsArgs,
};

/// Default page size when `agents list` follows pages.
pub const LIST_PAGE_SIZE: u32 = 500;

/// tetherctl: inspect and administer a Tether fleet.
///
/// The server address and API token come from --server/--token, then the TETHER_SERVER and
/// TETHER_TOKEN environment variables, then the config file (keys `server` and `token`):
/// --config, else $TETHER_CONFIG, else $XDG_CONFIG_HOME/tether/config.toml or
/// ~/.config/tether/config.toml. Without a server, http://127.0.0.1:7600 is used.
#[derive(Debug, Parser)]
#[command(name = "tetherctl", version, propagate_version = true)]
pub struct Cli {
    /// Connection settings, accepted before or after the subcommand.
    #[command(flatten)]
    pub global: GlobalArgs,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Flags accepted by every command.
#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// Server URL, e.g. http://127.0.0.1:7600 [env: TETHER_SERVER]
    #[arg(long, global = true, value_name = "URL", help_heading = "Connection")]
    pub server: Option<String>,

    /// API token [env: TETHER_TOKEN]
    #[arg(long, global = true, value_name = "TOKEN", help_heading = "Connection")]
    pub token: Option<Secret>,

    /// Config file [env: TETHER_CONFIG; default: ~/.config/tether/config.toml]
    #[arg(long, global = true, value_name = "PATH", help_heading = "Connection")]
    pub config: Option<PathBuf>,

    /// CA certificate (PEM) an https:// server's certificate must chain to; default: the
    /// system's roots [env: TETHER_CA_CERT; config: ca_cert]
    #[arg(long, global = true, value_name = "PATH", help_heading = "Connection")]
    pub ca_cert: Option<PathBuf>,

    /// Client certificate (PEM) for mTLS [env: TETHER_CLIENT_CERT; config: client_cert]
    #[arg(long, global = true, value_name = "PATH", help_heading = "Connection")]
    pub client_cert: Option<PathBuf>,

    /// Private key (PEM) of --client-cert [env: TETHER_CLIENT_KEY; config: client_key]
    #[arg(long, global = true, value_name = "PATH", help_heading = "Connection")]
    pub client_key: Option<PathBuf>,

    /// Deadline of each request and of connecting, e.g. 5s, 1m (watches and followed commands
    /// stay open once connected); kubectl's name, as `cmd run --timeout` bounds the command
    /// [default: 10s]
    #[arg(
        long,
        global = true,
        value_name = "DURATION",
        value_parser = parse_timeout,
        help_heading = "Connection"
    )]
    pub request_timeout: Option<Duration>,
}

/// The top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List, inspect and watch agents.
    #[command(subcommand)]
    Agents(AgentsCommand),

    /// Show one agent's metrics over a time range.
    Metrics(MetricsArgs),

    /// Show fleet-wide counts by status, OS and health.
    Summary(ObjectOutput),

    /// Show the intervals, thresholds and limits the server has in force.
    Config(ObjectOutput),

    /// Create, list and revoke enrollment tokens (admin).
    #[command(subcommand, name = "enroll-token")]
    EnrollToken(EnrollTokenCommand),

    /// Create and list orgs (server admin).
    #[command(subcommand)]
    Orgs(OrgsCommand),

    /// Create, list and revoke API tokens (admin).
    #[command(subcommand)]
    Tokens(ApiTokensCommand),

    /// List audit events, or verify their hash chain (admin).
    Audit(AuditArgs),

    /// Run commands on agents and follow, inspect, cancel, pause or resume them.
    #[command(subcommand)]
    Cmd(CmdCommand),

    /// List, watch, acknowledge, resolve and count events agents report.
    #[command(subcommand)]
    Events(EventsCommand),

    /// Save a consistent backup of the whole running server (every org) into a new file, for
    /// `tether-server restore` (server admin).
    Backup(BackupArgs),
    /// List and watch alerts, and manage alert rules.
    #[command(subcommand)]
    Alerts(AlertsCommand),

    /// Print this client's version and the server's.
    Version(VersionArgs),

    /// Print a shell completion script, e.g. `source <(tetherctl completion bash)`.
    Completion(CompletionArgs),
}

/// `backup`
#[derive(Debug, Clone, Args)]
pub struct BackupArgs {
    /// The file to create (mode 0600); never overwritten. It is written as FILE.partial and
    /// renamed once its size and SHA-256 match what the server sent.
    #[arg(long, value_name = "FILE")]
    pub out: std::path::PathBuf,
}

/// `version`
#[derive(Debug, Clone, Args)]
pub struct VersionArgs {
    /// Only this client's version (no server is contacted)
    #[arg(long)]
    pub client: bool,

    /// Output format
    #[arg(short = 'o', long = "output", value_enum, default_value_t = ObjectFormat::Table)]
    pub output: ObjectFormat,
}

/// `completion`
#[derive(Debug, Clone, Args)]
pub struct CompletionArgs {
    /// The shell to complete for
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// Output flag of commands that print one object.
#[derive(Debug, Clone, Args)]
pub struct ObjectOutput {
    /// Output format
    #[arg(short = 'o', long = "output", value_enum, default_value_t = ObjectFormat::Table)]
    pub output: ObjectFormat,
}

/// Output formats of listings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ListFormat {
    /// Aligned columns.
    Table,
    /// Aligned columns with more detail.
    Wide,
    /// One JSON array.
    Json,
    /// CSV with a header row.
    Csv,
    /// One agent id per line, for scripts.
    Name,
}

/// Output formats of single objects (and of watch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ObjectFormat {
    /// Human-readable text.
    Table,
    /// JSON.
    Json,
}

/// Output formats of series and short listings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SeriesFormat {
    /// Aligned columns.
    Table,
    /// One JSON array.
    Json,
    /// CSV with a header row.
    Csv,
}

/// An enrollment token's lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ttl {
    /// Expires this long after creation.
    After(Duration),
    /// Never expires.
    Never,
}

/// Parses a humantime duration ("90s", "15m", "1h 30m", "2d").
///
/// # Errors
///
/// A message naming the accepted forms.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(text)
        .map_err(|err| format!("{err} (expected a duration such as 30s, 15m, 1h or 2d)"))
}

/// Parses `--request-timeout`: a duration longer than zero.
///
/// # Errors
///
/// As [`parse_duration`], and for zero.
pub fn parse_timeout(text: &str) -> Result<Duration, String> {
    let d = parse_duration(text)?;
    if d.is_zero() {
        return Err("the timeout must be longer than zero".to_owned());
    }
    Ok(d)
}

/// Parses `--ttl`: a duration, or `never` / `none` / `0` for no expiry.
///
/// # Errors
///
/// As [`parse_duration`].
pub fn parse_ttl(text: &str) -> Result<Ttl, String> {
    if matches!(text.trim(), "never" | "none") {
        return Ok(Ttl::Never);
    }
    let d = parse_duration(text)?;
    Ok(if d.is_zero() {
        Ttl::Never
    } else {
        Ttl::After(d)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    use crate::view::AgentStatus;

    #[test]
    fn command_tree_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_go_anywhere() {
        let cli = Cli::try_parse_from([
            "tetherctl",
            "agents",
            "list",
            "--server",
            "http://h:1",
            "-l",
            "env=prod",
            "--status",
            "online",
            "--status",
            "stale",
            "-o",
            "wide",
            "--token",
            "t",
        ])
        .expect("parses");
        assert_eq!(cli.global.server.as_deref(), Some("http://h:1"));
        assert_eq!(cli.global.token.as_ref().map(Secret::expose), Some("t"));
        let Command::Agents(AgentsCommand::List(args)) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!(args.statuses, [AgentStatus::Online, AgentStatus::Stale]);
        assert_eq!(args.output, ListFormat::Wide);
        assert_eq!(args.selector.as_deref(), Some("env=prod"));
    }

    #[test]
    fn the_request_timeout_is_apart_from_a_commands_timeout() {
        let cli = Cli::try_parse_from([
            "tetherctl",
            "--request-timeout",
            "3s",
            "cmd",
            "run",
            "--agent",
            "a-1",
            "--timeout",
            "5m",
            "--",
            "/bin/true",
        ])
        .expect("parses");
        assert_eq!(cli.global.request_timeout, Some(Duration::from_secs(3)));
        let Command::Cmd(CmdCommand::Run(args)) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!(args.timeout, Some(Duration::from_secs(300)));
        assert!(Cli::try_parse_from(["tetherctl", "--request-timeout", "0s", "summary"]).is_err());
    }

    #[test]
    fn unknown_status_is_rejected() {
        assert!(
            Cli::try_parse_from(["tetherctl", "agents", "list", "--status", "unknown"]).is_err()
        );
    }

    #[test]
    fn durations_and_ttls() {
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3_600)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("soon").is_err());
        assert_eq!(parse_ttl("never"), Ok(Ttl::Never));
        assert_eq!(parse_ttl("0s"), Ok(Ttl::Never));
        assert_eq!(
            parse_ttl("24h"),
            Ok(Ttl::After(Duration::from_secs(86_400)))
        );
    }

    #[test]
    fn enroll_token_create_flags() {
        let cli = Cli::try_parse_from([
            "tetherctl",
            "enroll-token",
            "create",
            "--label",
            "env=prod",
            "--label",
            "tier=web",
            "--max-uses",
            "3",
            "--ttl",
            "1h",
        ])
        .expect("parses");
        let Command::EnrollToken(EnrollTokenCommand::Create(args)) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!(args.labels, ["env=prod", "tier=web"]);
        assert_eq!(args.max_uses, 3);
        assert_eq!(args.ttl, Ttl::After(Duration::from_secs(3_600)));
    }
}
