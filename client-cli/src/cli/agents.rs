//! The grammar of `tetherctl agents …` (list, get, watch, delete, allow-reclaim) and
//! `tetherctl metrics`.
//!
//! **Invariant:** every command that names one agent takes it the same way (its id, the start
//! of its id, its name or its hostname), and selectors are the label grammar of `agents list`
//! everywhere.

use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};

use super::{ListFormat, ObjectFormat, SeriesFormat, parse_duration};
use crate::view::AgentStatus;

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
