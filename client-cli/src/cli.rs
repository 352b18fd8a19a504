//! The command-line grammar: every command, flag and help text, as clap derive types.
//!
//! This lives in the library (not `main.rs`) so the end-to-end tests can build a [`Cli`] with
//! `Cli::try_parse_from([...])` and drive [`crate::run`] exactly as the binary does.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::Secret;
use crate::view::AgentStatus;

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
}

/// `agents …`
#[derive(Debug, Subcommand)]
pub enum AgentsCommand {
    /// List agents, following every page unless --limit is given.
    #[command(visible_alias = "ls")]
    List(ListArgs),

    /// Show one agent in detail: identity, system, labels, status, metrics, transitions.
    Get(GetArgs),

    /// Print the matching agents, then one line per change as it happens.
    Watch(WatchArgs),
}

/// `agents list`
#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    /// Label selector: comma-separated `k=v`, `k!=v`, `k` (has key), `!k` (lacks key)
    #[arg(short = 'l', long = "selector", value_name = "SELECTOR")]
    pub selector: Option<String>,

    /// Only agents with this status (repeatable)
    #[arg(long = "status", value_name = "STATUS")]
    pub statuses: Vec<AgentStatus>,

    /// Only agents on this OS (case-insensitive exact match on the OS name)
    #[arg(long, value_name = "OS")]
    pub os: Option<String>,

    /// Only agents whose name or hostname contains TEXT (case-insensitive)
    #[arg(short = 'q', long, value_name = "TEXT")]
    pub query: Option<String>,

    /// Include expired agents
    #[arg(long)]
    pub include_expired: bool,

    /// Stop after N agents instead of fetching every page
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: Option<u32>,

    /// Output format
    #[arg(short = 'o', long = "output", value_enum, default_value_t = ListFormat::Table)]
    pub output: ListFormat,
}

/// `agents get`
#[derive(Debug, Clone, Args)]
pub struct GetArgs {
    /// Agent id
    pub id: String,

    /// Output format
    #[arg(short = 'o', long = "output", value_enum, default_value_t = ObjectFormat::Table)]
    pub output: ObjectFormat,
}

/// `agents watch`
#[derive(Debug, Clone, Args)]
pub struct WatchArgs {
    /// Label selector, as for `agents list`
    #[arg(short = 'l', long = "selector", value_name = "SELECTOR")]
    pub selector: Option<String>,

    /// Also print an event for every metrics report
    #[arg(long)]
    pub metrics: bool,

    /// Include expired agents in the snapshot
    #[arg(long)]
    pub include_expired: bool,

    /// Stop after N events (snapshot entries count; the end-of-snapshot marker does not)
    #[arg(long, value_name = "N")]
    pub max_events: Option<u64>,

    /// Output format (json: one object per line)
    #[arg(short = 'o', long = "output", value_enum, default_value_t = ObjectFormat::Table)]
    pub output: ObjectFormat,
}

/// `metrics`
#[derive(Debug, Clone, Args)]
pub struct MetricsArgs {
    /// Agent id
    pub id: String,

    /// How far back to look, e.g. 15m, 1h, 2d
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_duration)]
    pub since: Duration,

    /// Width of each averaged point; 0s returns every stored sample
    #[arg(long, value_name = "DURATION", default_value = "1m", value_parser = parse_duration)]
    pub step: Duration,

    /// Output format
    #[arg(short = 'o', long = "output", value_enum, default_value_t = SeriesFormat::Table)]
    pub output: SeriesFormat,
}

/// Output flag of commands that print one object.
#[derive(Debug, Clone, Args)]
pub struct ObjectOutput {
    /// Output format
    #[arg(short = 'o', long = "output", value_enum, default_value_t = ObjectFormat::Table)]
    pub output: ObjectFormat,
}

/// `enroll-token …`
#[derive(Debug, Subcommand)]
pub enum EnrollTokenCommand {
    /// Create an enrollment token; its secret is printed once.
    Create(CreateTokenArgs),

    /// List enrollment tokens (never their secrets).
    #[command(visible_alias = "ls")]
    List(ListTokensArgs),

    /// Revoke an enrollment token so no more agents can enroll with it.
    Revoke(RevokeTokenArgs),
}

/// `enroll-token create`
#[derive(Debug, Clone, Args)]
pub struct CreateTokenArgs {
    /// Free text to recognise the token by
    #[arg(long, value_name = "TEXT", default_value = "")]
    pub description: String,

    /// Label stamped on every agent enrolled with the token, as k=v (repeatable)
    #[arg(long = "label", value_name = "K=V")]
    pub labels: Vec<String>,

    /// Most enrollments allowed; 0 means unlimited
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub max_uses: u32,

    /// Lifetime, e.g. 1h, 7d; `never` (or 0s) for no expiry
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = parse_ttl)]
    pub ttl: Ttl,

    /// Output format
    #[arg(short = 'o', long = "output", value_enum, default_value_t = ObjectFormat::Table)]
    pub output: ObjectFormat,
}

/// `enroll-token list`
#[derive(Debug, Clone, Args)]
pub struct ListTokensArgs {
    /// Output format
    #[arg(short = 'o', long = "output", value_enum, default_value_t = SeriesFormat::Table)]
    pub output: SeriesFormat,
}

/// `enroll-token revoke`
#[derive(Debug, Clone, Args)]
pub struct RevokeTokenArgs {
    /// Token id
    pub id: String,

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
