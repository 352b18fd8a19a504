//! The command-line grammar: every command, flag and help text, as clap derive types.
//!
//! This lives in the library (not `main.rs`) so the end-to-end tests can build a [`Cli`] with
//! `Cli::try_parse_from([...])` and drive [`crate::run`] exactly as the binary does. The `cmd`
//! group's grammar is in the child module `command`.

mod command;
mod event;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::Secret;
use crate::view::{AgentStatus, AuditOutcome, Role};

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

    /// Print this client's version and the server's.
    Version(VersionArgs),

    /// Print a shell completion script, e.g. `source <(tetherctl completion bash)`.
    Completion(CompletionArgs),
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

    /// Delete an agent: revoke its credential and end its session (admin; needs --yes).
    Delete(DeleteArgs),

    /// Let the next enrollment that reports this agent's hardware id take the agent over
    /// (its id, history and pinned labels) without its credential: for a machine that was
    /// reinstalled or lost its state directory (admin). Used once; expires.
    AllowReclaim(AllowReclaimArgs),
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

    /// Order of the agents (ascending, ties by id); default: by id
    #[arg(long, value_enum, value_name = "COLUMN")]
    pub sort_by: Option<SortKey>,

    /// Leave out the header row of table, wide and csv output
    #[arg(long)]
    pub no_headers: bool,

    /// Output format
    #[arg(short = 'o', long = "output", value_enum, default_value_t = ListFormat::Table)]
    pub output: ListFormat,
}

/// What `agents list --sort-by` orders by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SortKey {
    /// Agent id.
    Id,
    /// Name (case-insensitive).
    Name,
    /// Status: online, stale, offline, expired.
    Status,
    /// Last message, oldest first (agents never seen first of all).
    LastSeen,
    /// OS name.
    Os,
    /// Latest CPU use (agents without metrics first).
    Cpu,
    /// Latest memory use (agents without metrics first).
    Mem,
    /// Health: ok, warning, critical, unknown.
    Health,
}

/// `agents get`
#[derive(Debug, Clone, Args)]
pub struct GetArgs {
    /// Agent: its id, the start of its id, its name or its hostname
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

    /// Output format (json: one object per line; `{"kind":"synced"}` ends each snapshot,
    /// and a new snapshot follows when the watch resumes after the server came back)
    #[arg(short = 'o', long = "output", value_enum, default_value_t = ObjectFormat::Table)]
    pub output: ObjectFormat,
}

/// `metrics`
#[derive(Debug, Clone, Args)]
pub struct MetricsArgs {
    /// Agent: its id, the start of its id, its name or its hostname
    pub id: String,

    /// How far back to look, e.g. 15m, 1h, 2d
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_duration)]
    pub since: Duration,

    /// Width of each averaged point; 0s returns every stored sample [default: chosen from
    /// --since: at least 1m, at most about 300 points]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub step: Option<Duration>,

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

    /// Let an enrollment with this token take over the one disconnected agent that reports
    /// the same hardware id (a reinstalled machine keeps its agent), instead of creating a
    /// new, flagged agent. Anyone holding the token can then take over such an agent.
    #[arg(long)]
    pub allow_reclaim: bool,

    /// Also print the agent's enrollment command (`tether-agent --server … --enroll-token …`)
    /// as a QR code to scan on the machine
    #[arg(long)]
    pub qr: bool,

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

/// `enroll-token revoke` and `tokens revoke`
#[derive(Debug, Clone, Args)]
pub struct RevokeTokenArgs {
    /// Token id
    pub id: String,

    /// Output format
    #[arg(short = 'o', long = "output", value_enum, default_value_t = ObjectFormat::Table)]
    pub output: ObjectFormat,
}

/// `agents delete`
#[derive(Debug, Clone, Args)]
pub struct DeleteArgs {
    /// Agent: its id, the start of its id, its name or its hostname
    pub id: String,

    /// Confirm: revoke the agent's credential and end its session
    #[arg(long)]
    pub yes: bool,
}

/// `agents allow-reclaim`
#[derive(Debug, Clone, Args)]
pub struct AllowReclaimArgs {
    /// Agent: its id, the start of its id, its name or its hostname
    pub id: String,

    /// How long the permission lasts, e.g. 30m, 1d (at most 7d)
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_duration)]
    pub ttl: Duration,
}

/// `orgs …`
#[derive(Debug, Subcommand)]
pub enum OrgsCommand {
    /// Create an org and its first admin token; the token's secret is printed once.
    Create(CreateOrgArgs),

    /// List every org.
    #[command(visible_alias = "ls")]
    List(ObjectOutput),
}

/// `orgs create`
#[derive(Debug, Clone, Args)]
pub struct CreateOrgArgs {
    /// Org id: 1-64 characters of a-z, 0-9 and -
    pub org_id: String,

    /// Human-readable name
    #[arg(long, value_name = "NAME", default_value = "")]
    pub display_name: String,

    /// Output format
    #[arg(short = 'o', long = "output", value_enum, default_value_t = ObjectFormat::Table)]
    pub output: ObjectFormat,
}

/// `tokens …`
#[derive(Debug, Subcommand)]
pub enum ApiTokensCommand {
    /// Create an API token; its secret is printed once.
    Create(CreateApiTokenArgs),

    /// List API tokens (never their secrets).
    #[command(visible_alias = "ls")]
    List(ListApiTokensArgs),

    /// Revoke an API token; calls and open watches using it are refused from then on.
    Revoke(RevokeTokenArgs),
}

/// `tokens create`
#[derive(Debug, Clone, Args)]
pub struct CreateApiTokenArgs {
    /// Name to recognise the token by
    #[arg(long, value_name = "NAME")]
    pub name: String,

    /// What the token may do
    #[arg(long, value_enum)]
    pub role: Role,

    /// Lifetime, e.g. 12h, 30d; `never` (or 0s) for no expiry
    #[arg(long, value_name = "DURATION", default_value = "never", value_parser = parse_ttl)]
    pub ttl: Ttl,

    /// Output format
    #[arg(short = 'o', long = "output", value_enum, default_value_t = ObjectFormat::Table)]
    pub output: ObjectFormat,
}

/// `tokens list`
#[derive(Debug, Clone, Args)]
pub struct ListApiTokensArgs {
    /// Include revoked tokens
    #[arg(long)]
    pub include_revoked: bool,

    /// Output format
    #[arg(short = 'o', long = "output", value_enum, default_value_t = ObjectFormat::Table)]
    pub output: ObjectFormat,
}

/// `audit`: list events, or check the hash chain with `audit verify` / `audit --verify`.
#[derive(Debug, Clone, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AuditArgs {
    /// Check the chain instead of listing
    #[command(subcommand)]
    pub command: Option<AuditCommand>,

    /// Only calls of this method: a short name (CreateToken) or a full one
    /// (/tether.v1.AdminService/CreateToken)
    #[arg(long, value_name = "METHOD")]
    pub method: Option<String>,

    /// Only calls made with this token
    #[arg(long, value_name = "TOKEN_ID")]
    pub actor: Option<String>,

    /// Only calls with this outcome
    #[arg(long, value_enum)]
    pub outcome: Option<AuditOutcome>,

    /// Only events of this recent period, e.g. 15m, 1h, 2d
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub since: Option<Duration>,

    /// Only the N newest matching events
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: Option<u32>,

    /// Check the org's whole hash chain instead of listing (same as `audit verify`)
    #[arg(long, conflicts_with_all = ["method", "actor", "outcome", "since", "limit"])]
    pub verify: bool,

    /// Output format
    #[arg(short = 'o', long = "output", value_enum, default_value_t = ObjectFormat::Table)]
    pub output: ObjectFormat,
}

/// `audit …`
#[derive(Debug, Clone, Subcommand)]
pub enum AuditCommand {
    /// Fetch every event of the org and check the hash chain; exits non-zero if it is broken.
    Verify(ObjectOutput),
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
