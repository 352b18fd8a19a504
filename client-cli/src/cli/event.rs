//! The grammar of `tetherctl events …`.

use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};

use super::{SeriesFormat, parse_duration};

/// `events …`
#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// List events, newest first.
    #[command(visible_alias = "ls")]
    List(ListEventsArgs),

    /// Follow event changes as they happen (or from --cursor), one line each.
    Watch(WatchEventsArgs),

    /// Acknowledge events, by ids or by filter (operator).
    Ack(ChangeEventsArgs),

    /// Resolve events, by ids or by filter (operator).
    Resolve(ChangeEventsArgs),

    /// Reopen acknowledged or resolved events, by ids or by filter (operator).
    Reopen(ChangeEventsArgs),

    /// Counts per step by severity, top kinds and agents, and the current rate.
    Stats(EventStatsArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SeverityArg {
    Info,
    Warning,
    Error,
    Critical,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StateArg {
    New,
    Acknowledged,
    Resolved,
}

/// The selectors every events command shares.
#[derive(Debug, Clone, Default, Args)]
pub struct EventSelectors {
    /// Only events of this agent (repeatable)
    #[arg(long = "agent", value_name = "AGENT_ID")]
    pub agents: Vec<String>,

    /// Only events of agents whose labels match, e.g. env=prod,!canary
    #[arg(short = 'l', long = "selector", value_name = "SELECTOR")]
    pub selector: Option<String>,

    /// Only this kind; `ssh.*` means ssh and every kind below it
    #[arg(long, value_name = "KIND")]
    pub kind: Option<String>,

    /// Only this severity or a higher one
    #[arg(long, value_enum, value_name = "SEVERITY")]
    pub min_severity: Option<SeverityArg>,
}

/// Selectors of stored events beyond [`EventSelectors`].
#[derive(Debug, Clone, Default, Args)]
pub struct StoredSelectors {
    #[command(flatten)]
    pub common: EventSelectors,

    /// Only events of this recent period, e.g. 15m, 1h, 7d
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub since: Option<Duration>,

    /// Only events in this state (repeatable)
    #[arg(long = "state", value_enum)]
    pub states: Vec<StateArg>,

    /// Only events with this attribute value, KEY=VALUE (repeatable)
    #[arg(long = "attr", value_name = "KEY=VALUE")]
    pub attributes: Vec<String>,
}

/// `events list`
#[derive(Debug, Clone, Args)]
pub struct ListEventsArgs {
    #[command(flatten)]
    pub select: StoredSelectors,

    /// Only the N newest matching events
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: Option<u32>,

    /// Output format
    #[arg(short = 'o', long = "output", value_enum, default_value_t = SeriesFormat::Table)]
    pub output: SeriesFormat,
}

/// `events watch`
#[derive(Debug, Clone, Args)]
pub struct WatchEventsArgs {
    #[command(flatten)]
    pub select: EventSelectors,

    /// Resume after this cursor (printed with every change)
    #[arg(long, value_name = "CURSOR")]
    pub cursor: Option<String>,

    /// Output format: a line per change, or JSON lines
    #[arg(short = 'o', long = "output", value_enum, default_value_t = SeriesFormat::Table)]
    pub output: SeriesFormat,
}

/// `events ack|resolve|reopen`
#[derive(Debug, Clone, Args)]
pub struct ChangeEventsArgs {
    /// Event ids; without any, the selectors choose (at least one selector, or --all)
    pub ids: Vec<String>,

    #[command(flatten)]
    pub select: StoredSelectors,

    /// Every event of the org (when no id and no selector is given)
    #[arg(long)]
    pub all: bool,
}

/// `events stats`
#[derive(Debug, Clone, Args)]
pub struct EventStatsArgs {
    #[command(flatten)]
    pub select: EventSelectors,

    /// The period counted, whole hours back from the current hour's end
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "24h")]
    pub since: Duration,

    /// Width of each step, whole hours
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "1h")]
    pub step: Duration,

    /// How many top kinds and agents
    #[arg(long, value_name = "N", default_value_t = 10, value_parser = clap::value_parser!(i32).range(1..=100))]
    pub top: i32,

    /// Output format
    #[arg(short = 'o', long = "output", value_enum, default_value_t = SeriesFormat::Table)]
    pub output: SeriesFormat,
}
