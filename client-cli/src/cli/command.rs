//! The grammar of `tetherctl cmd …`: sending a command to agents, and following, inspecting and
//! steering it, with the parsers of its amount flags (`--max-errors 10%`, `--output-limit 1MiB`).
//!
//! Only the shape of each flag is checked here; what depends on several flags (a program for
//! `exec`, none for the built-ins) is checked when the request is built, with a message naming
//! the flags.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};

use super::{ObjectFormat, parse_duration};
use crate::view::{BudgetView, CommandState, InvocationState};

/// `cmd …`
#[derive(Debug, Subcommand)]
pub enum CmdCommand {
    /// Send a command and follow it: each agent's output as it comes, then a summary. Exits
    /// non-zero unless every invocation succeeded; ctrl-c offers to cancel it or to detach.
    Run(Box<RunArgs>),

    /// Show one command: what it runs, its targets, budgets, state and counts.
    Get(CommandIdArgs),

    /// List the org's commands, newest first, following every page unless --limit is given.
    #[command(visible_alias = "ls")]
    List(ListCommandsArgs),

    /// List one command's invocations: state, exit code and duration per agent.
    Invocations(InvocationsArgs),

    /// Follow a command: its stored output, then live output, then a summary. Exits non-zero
    /// unless every invocation succeeded.
    Watch(CommandIdArgs),

    /// Print one agent's stored output of a command: its stdout on stdout, its stderr on
    /// stderr, and a note of any output that was not kept.
    Logs(LogsArgs),

    /// Cancel a command: queued invocations end at once, running ones are stopped (operator).
    Cancel(CommandIdArgs),

    /// Pause a command: no new invocation is offered; running ones continue (operator).
    Pause(CommandIdArgs),

    /// Resume a paused command (operator).
    Resume(CommandIdArgs),
}

/// `cmd run`
#[derive(Debug, Clone, Args)]
#[command(after_help = "Examples:\n  \
    tetherctl cmd run -l env=prod --max-concurrency 10% --max-errors 0 -- /usr/bin/uptime\n  \
    tetherctl cmd run --agent a-1 --agent a-2 --kind sleep --sleep 5s --async")]
pub struct RunArgs {
    /// Target the agents matching this label selector (as for `agents list`)
    #[arg(
        short = 'l',
        long = "selector",
        value_name = "SELECTOR",
        help_heading = "Targets"
    )]
    pub selector: Option<String>,

    /// Target this agent (repeatable, or comma-separated); combined with -l as a union
    #[arg(
        long = "agent",
        value_name = "ID",
        value_delimiter = ',',
        help_heading = "Targets"
    )]
    pub agents: Vec<String>,

    /// Queue the command for offline agents until the delivery deadline instead of skipping
    /// them (skipped agents are listed as SKIPPED_OFFLINE)
    #[arg(long, help_heading = "Targets")]
    pub include_offline: bool,

    /// Invocations offered or running at once: a count or a percentage (10%); default: all
    #[arg(long, value_name = "N|P%", value_parser = parse_budget, help_heading = "Rollout")]
    pub max_concurrency: Option<BudgetView>,

    /// Failures tolerated before the rest is skipped: a count or a percentage; default: no
    /// limit
    #[arg(long, value_name = "N|P%", value_parser = parse_budget, help_heading = "Rollout")]
    pub max_errors: Option<BudgetView>,

    /// The first K invocations must succeed before the others are offered
    #[arg(long, value_name = "K", default_value_t = 0, help_heading = "Rollout")]
    pub canary: u32,

    /// How long each invocation may run once started, e.g. 30s; default: the server's
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, help_heading = "Rollout")]
    pub timeout: Option<Duration>,

    /// How long the server tries to deliver each invocation, e.g. 10m; default: the server's
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, help_heading = "Rollout")]
    pub deliver_within: Option<Duration>,

    /// Sending again with the same key within 24 h returns the first command
    #[arg(long, value_name = "KEY")]
    pub idempotency_key: Option<String>,

    /// Free text to recognise the command by
    #[arg(long, value_name = "TEXT", default_value = "")]
    pub description: String,

    /// Output kept per invocation (head and tail), e.g. 64KiB, 1MiB; default: the server's
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub output_limit: Option<u64>,

    /// Print the command id (or, with -o json, the command) and return without following it
    #[arg(long = "async")]
    pub no_follow: bool,

    /// What to run: a program (exec, the default) or a built-in
    #[arg(long, value_enum, default_value_t = KindArg::Exec, help_heading = "What to run")]
    pub kind: KindArg,

    /// How long `--kind sleep` waits, e.g. 5s
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, help_heading = "What to run")]
    pub sleep: Option<Duration>,

    /// Environment variable of the program (repeatable); the agent clears all others
    #[arg(long = "env", value_name = "K=V", help_heading = "What to run")]
    pub env: Vec<String>,

    /// Working directory of the program; default: the agent's own
    #[arg(long, value_name = "DIR", help_heading = "What to run")]
    pub workdir: Option<String>,

    /// File whose contents are the program's standard input (`-`: this command's stdin)
    #[arg(long, value_name = "PATH", help_heading = "What to run")]
    pub stdin_file: Option<PathBuf>,

    /// Output format (json: the events as `cmd watch -o json` prints them)
    #[arg(short = 'o', long = "output", value_enum, default_value_t = ObjectFormat::Table)]
    pub output: ObjectFormat,

    /// The program (an absolute path the agents' allowlists must match) and its arguments,
    /// after `--`
    #[arg(last = true, value_name = "PROGRAM ARGS")]
    pub argv: Vec<String>,
}

/// What `cmd run --kind` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KindArg {
    /// The program after `--`.
    Exec,
    /// Built-in: succeeds at once (tests the path, runs nothing).
    Noop,
    /// Built-in: the agent sends a metrics sample now.
    Collect,
    /// Built-in: waits for --sleep.
    Sleep,
}

/// Commands that take one command id.
#[derive(Debug, Clone, Args)]
pub struct CommandIdArgs {
    /// Command id
    pub id: String,

    /// Output format
    #[arg(short = 'o', long = "output", value_enum, default_value_t = ObjectFormat::Table)]
    pub output: ObjectFormat,
}

/// `cmd list`
#[derive(Debug, Clone, Args)]
pub struct ListCommandsArgs {
    /// Only commands in this state (repeatable)
    #[arg(long = "state", value_name = "STATE", ignore_case = true)]
    pub states: Vec<CommandState>,

    /// Only commands sent within this recent period, e.g. 15m, 1h, 2d
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub since: Option<Duration>,

    /// Only commands sent with this token
    #[arg(long, value_name = "TOKEN_ID")]
    pub sender: Option<String>,

    /// Stop after the N newest matching commands instead of fetching every page
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: Option<u32>,

    /// Output format
    #[arg(short = 'o', long = "output", value_enum, default_value_t = ObjectFormat::Table)]
    pub output: ObjectFormat,
}

/// `cmd invocations`
#[derive(Debug, Clone, Args)]
pub struct InvocationsArgs {
    /// Command id
    pub id: String,

    /// Only invocations in this state (repeatable)
    #[arg(long = "state", value_name = "STATE", ignore_case = true)]
    pub states: Vec<InvocationState>,

    /// Output format
    #[arg(short = 'o', long = "output", value_enum, default_value_t = ObjectFormat::Table)]
    pub output: ObjectFormat,
}

/// `cmd logs`
#[derive(Debug, Clone, Args)]
pub struct LogsArgs {
    /// Command id
    pub id: String,

    /// The agent: its id, or its name when no target has that id
    pub agent: String,

    /// Output format
    #[arg(short = 'o', long = "output", value_enum, default_value_t = ObjectFormat::Table)]
    pub output: ObjectFormat,
}

/// Parses a budget: a count (`3`) or a percentage of the command's invocations (`10%`,
/// 0-100).
///
/// # Errors
///
/// A message naming the accepted forms.
pub fn parse_budget(text: &str) -> Result<BudgetView, String> {
    let text = text.trim();
    let bad = || format!("`{text}` is neither a count (3) nor a percentage (10%)");
    match text.strip_suffix('%') {
        Some(percent) => {
            let percent: u32 = percent.trim().parse().map_err(|_| bad())?;
            if percent > 100 {
                return Err(format!("`{text}` is more than 100%"));
            }
            Ok(BudgetView::Percent(percent))
        }
        None => text.parse().map(BudgetView::Count).map_err(|_| bad()),
    }
}

/// Parses a size in bytes: a number with an optional binary unit (`B`, `K`/`KiB`, `M`/`MiB`,
/// `G`/`GiB`; case-insensitive, `KB` means KiB too), e.g. `65536`, `64KiB`, `1M`.
///
/// # Errors
///
/// A message naming the accepted forms, or saying the size is zero or too large.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let bad = || format!("`{text}` is not a size such as 65536, 64KiB or 1MiB");
    let number: u64 = number.parse().map_err(|_| bad())?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => return Err(bad()),
    };
    let bytes = number
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("`{text}` is too large"))?;
    if bytes == 0 {
        return Err("the size must be at least one byte".to_owned());
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::cli::{Cli, Command};

    fn run_args(args: &[&str]) -> Result<RunArgs, clap::Error> {
        let mut argv = vec!["tetherctl", "cmd", "run"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv)?.command {
            Command::Cmd(CmdCommand::Run(args)) => Ok(*args),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn run_takes_every_flag_and_the_program_after_the_separator() {
        let args = run_args(&[
            "-l",
            "env=prod",
            "--agent",
            "a-1,a-2",
            "--agent",
            "a-3",
            "--include-offline",
            "--max-concurrency",
            "10%",
            "--max-errors",
            "0",
            "--canary",
            "1",
            "--timeout",
            "30s",
            "--deliver-within",
            "10m",
            "--idempotency-key",
            "deploy-42",
            "--description",
            "uptime check",
            "--output-limit",
            "64KiB",
            "--env",
            "LANG=C",
            "--workdir",
            "/tmp",
            "--async",
            "-o",
            "json",
            "--",
            "/usr/bin/uptime",
            "-p",
            "--",
        ])
        .expect("parses");
        assert_eq!(args.selector.as_deref(), Some("env=prod"));
        assert_eq!(args.agents, ["a-1", "a-2", "a-3"]);
        assert!(args.include_offline);
        assert_eq!(args.max_concurrency, Some(BudgetView::Percent(10)));
        assert_eq!(args.max_errors, Some(BudgetView::Count(0)));
        assert_eq!(args.canary, 1);
        assert_eq!(args.timeout, Some(Duration::from_secs(30)));
        assert_eq!(args.deliver_within, Some(Duration::from_secs(600)));
        assert_eq!(args.idempotency_key.as_deref(), Some("deploy-42"));
        assert_eq!(args.description, "uptime check");
        assert_eq!(args.output_limit, Some(64 << 10));
        assert_eq!(args.env, ["LANG=C"]);
        assert_eq!(args.workdir.as_deref(), Some("/tmp"));
        assert!(args.no_follow);
        assert_eq!(args.output, ObjectFormat::Json);
        assert_eq!(args.kind, KindArg::Exec);
        // Everything after the first `--` belongs to the program, flags and `--` included.
        assert_eq!(args.argv, ["/usr/bin/uptime", "-p", "--"]);
    }

    #[test]
    fn run_without_the_separator_is_refused_by_clap() {
        assert!(run_args(&["-l", "env=prod", "/usr/bin/uptime"]).is_err());
        let args = run_args(&["--agent", "a-1", "--kind", "sleep", "--sleep", "5s"])
            .expect("a built-in needs no program");
        assert_eq!(args.kind, KindArg::Sleep);
        assert_eq!(args.sleep, Some(Duration::from_secs(5)));
        assert!(args.argv.is_empty());
        assert!(!args.no_follow);
    }

    #[test]
    fn bad_amounts_are_refused_while_parsing() {
        assert!(run_args(&["--max-errors", "ten"]).is_err());
        assert!(run_args(&["--max-concurrency", "150%"]).is_err());
        assert!(run_args(&["--output-limit", "0"]).is_err());
        assert!(run_args(&["--timeout", "soon"]).is_err());
        assert!(run_args(&["--kind", "shell"]).is_err());
    }

    #[test]
    fn budgets_are_counts_or_percentages() {
        assert_eq!(parse_budget("3"), Ok(BudgetView::Count(3)));
        assert_eq!(parse_budget(" 10% "), Ok(BudgetView::Percent(10)));
        assert_eq!(parse_budget("0%"), Ok(BudgetView::Percent(0)));
        assert_eq!(parse_budget("100%"), Ok(BudgetView::Percent(100)));
        assert!(parse_budget("101%").is_err());
        assert!(parse_budget("-1").is_err());
        assert!(parse_budget("%").is_err());
        assert!(parse_budget("1.5").is_err());
    }

    #[test]
    fn sizes_take_binary_units() {
        assert_eq!(parse_size("65536"), Ok(65_536));
        assert_eq!(parse_size("64KiB"), Ok(65_536));
        assert_eq!(parse_size("64k"), Ok(65_536));
        assert_eq!(parse_size("1 MiB"), Ok(1 << 20));
        assert_eq!(parse_size("1MB"), Ok(1 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert!(parse_size("0").is_err());
        assert!(parse_size("1TiB").is_err());
        assert!(parse_size("KiB").is_err());
        assert!(parse_size("99999999999999999999G").is_err());
        assert!(parse_size("17179869184G").is_err(), "overflows u64");
    }

    #[test]
    fn the_other_subcommands_parse() {
        let parse = |args: &[&str]| {
            let mut argv = vec!["tetherctl", "cmd"];
            argv.extend_from_slice(args);
            match Cli::try_parse_from(argv).expect("parses").command {
                Command::Cmd(command) => command,
                other => panic!("parsed as {other:?}"),
            }
        };
        let CmdCommand::List(list) = parse(&[
            "list", "--state", "running", "--state", "FAILED", "--since", "1h", "--sender", "t-1",
            "--limit", "5",
        ]) else {
            panic!("not list");
        };
        assert_eq!(list.states, [CommandState::Running, CommandState::Failed]);
        assert_eq!(list.since, Some(Duration::from_secs(3_600)));
        assert_eq!(list.sender.as_deref(), Some("t-1"));
        assert_eq!(list.limit, Some(5));
        let CmdCommand::Invocations(invocations) = parse(&[
            "invocations",
            "c-1",
            "--state",
            "skipped",
            "--state",
            "delivery_timed_out",
            "--state",
            "agent-restarted",
        ]) else {
            panic!("not invocations");
        };
        assert_eq!(
            invocations.states,
            [
                InvocationState::Skipped,
                InvocationState::DeliveryTimedOut,
                InvocationState::AgentRestarted
            ]
        );
        let CmdCommand::Logs(logs) = parse(&["logs", "c-1", "web-1", "-o", "json"]) else {
            panic!("not logs");
        };
        assert_eq!((logs.id.as_str(), logs.agent.as_str()), ("c-1", "web-1"));
        assert_eq!(logs.output, ObjectFormat::Json);
        for verb in ["get", "watch", "cancel", "pause", "resume"] {
            match parse(&[verb, "c-9"]) {
                CmdCommand::Get(a)
                | CmdCommand::Watch(a)
                | CmdCommand::Cancel(a)
                | CmdCommand::Pause(a)
                | CmdCommand::Resume(a) => assert_eq!(a.id, "c-9", "{verb}"),
                other => panic!("{verb} parsed as {other:?}"),
            }
        }
    }
}
