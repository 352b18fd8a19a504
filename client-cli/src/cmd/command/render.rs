//! The pure renderers of the `cmd` commands: the command detail page (`cmd get`), the command
//! listing (`cmd list`), the invocation table (`cmd invocations` and the summary of `cmd run`),
//! and the one-line messages around them. Each is a function of views and the current time.
//!
//! What others chose (agent names, reasons, descriptions, arguments) is escaped before it
//! reaches a table, so it cannot break a row or drive the terminal.

use std::time::SystemTime;

use crate::format::{
    NONE, Table, elapsed, escape_control, format_bytes, key_values, or_none, relative_time_detail,
    relative_time_opt,
};
use crate::view::{
    BudgetView, CommandKind, CommandSpecView, CommandState, CommandView, InvocationCountsView,
    InvocationView,
};

/// What a command runs, in one line: `exec /usr/bin/uptime -p`, `sleep 5s`, `noop`.
pub(super) fn spec_text(spec: &CommandSpecView) -> String {
    match spec.kind {
        CommandKind::Exec => {
            let argv: Vec<String> = spec.argv.iter().map(|a| quoted(a)).collect();
            format!("exec {}", argv.join(" "))
        }
        CommandKind::Sleep => match spec.sleep_seconds {
            Some(d) => format!("sleep {}", humantime::format_duration(d)),
            None => "sleep".to_owned(),
        },
        kind => kind.as_str().to_owned(),
    }
}

/// An argument as a shell user would read it: bare when plain, in single quotes otherwise.
fn quoted(arg: &str) -> String {
    let plain = !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_alphanumeric() || "-_./=:,+@%".contains(c));
    if plain {
        arg.to_owned()
    } else {
        format!("'{}'", escape_control(&arg.replace('\'', r"'\''")))
    }
}

/// A budget: `3`, `10%`, or `none_text` when unset.
fn budget_text(budget: Option<BudgetView>, none_text: &str) -> String {
    match budget {
        Some(BudgetView::Count(n)) => n.to_string(),
        Some(BudgetView::Percent(p)) => format!("{p}%"),
        None => none_text.to_owned(),
    }
}

/// The non-zero counts, in the order of the states' life: "3 succeeded, 1 failed, 1 skipped";
/// "none" for a command without invocations.
pub(super) fn counts_text(counts: &InvocationCountsView) -> String {
    let parts: Vec<String> = [
        (counts.queued, "queued"),
        (counts.offered, "offered"),
        (counts.running, "running"),
        (counts.succeeded, "succeeded"),
        (counts.failed, "failed"),
        (counts.timed_out, "timed out"),
        (counts.cancelled, "cancelled"),
        (counts.delivery_timed_out, "not delivered in time"),
        (counts.rejected, "rejected"),
        (counts.skipped, "skipped"),
        (counts.agent_deleted, "agent deleted"),
        (counts.agent_restarted, "agent restarted"),
    ]
    .into_iter()
    .filter(|(n, _)| *n > 0)
    .map(|(n, what)| format!("{n} {what}"))
    .collect();
    if parts.is_empty() {
        "none".to_owned()
    } else {
        parts.join(", ")
    }
}

/// The state cell of a command: `RUNNING`, or `RUNNING (cancel requested)`.
fn command_state_text(command: &CommandView) -> String {
    let mut text = command.state.label().to_owned();
    if command.cancel_requested && !command.state.is_terminal() {
        text.push_str(" (cancel requested)");
    }
    text
}

/// Renders `cmd get` for a person.
pub(super) fn render_command(command: &CommandView, now: SystemTime) -> String {
    let spec = &command.spec;
    let targets = &command.targets;
    let when = |t| relative_time_detail(now, t);
    let mut pairs = vec![
        ("ID", command.command_id.clone()),
        ("State", command_state_text(command)),
        (
            "Description",
            or_none(&escape_control(&command.description)),
        ),
        ("Runs", spec_text(spec)),
    ];
    if spec.kind == CommandKind::Exec {
        let env: Vec<String> = spec
            .env
            .iter()
            .map(|(k, v)| escape_control(&format!("{k}={v}")))
            .collect();
        pairs.extend([
            ("Environment", or_none(&env.join(" "))),
            ("Working dir", or_none(&escape_control(&spec.working_dir))),
            ("Stdin", format_bytes(spec.stdin_bytes)),
        ]);
    }
    let agents = targets
        .agent_ids
        .iter()
        .map(|id| escape_control(id))
        .collect::<Vec<_>>()
        .join(",");
    pairs.extend([
        (
            "Selector",
            or_none(&escape_control(&targets.label_selector)),
        ),
        ("Agents", or_none(&agents)),
        (
            "Offline agents",
            if targets.include_offline {
                "queued"
            } else {
                "skipped"
            }
            .to_owned(),
        ),
        (
            "Max concurrency",
            budget_text(command.rollout.max_concurrency, "all at once"),
        ),
        (
            "Max errors",
            budget_text(command.rollout.max_errors, "no limit"),
        ),
        (
            "Canary",
            match command.rollout.canary {
                0 => "none".to_owned(),
                n => n.to_string(),
            },
        ),
        (
            "Timeout",
            command.timeout_seconds.map_or_else(
                || NONE.to_owned(),
                |d| humantime::format_duration(d).to_string(),
            ),
        ),
        ("Deliver by", when(command.deliver_by)),
        ("Output limit", format_bytes(command.output_limit_bytes)),
        (
            "Idempotency key",
            or_none(&escape_control(&command.idempotency_key)),
        ),
        (
            "Sent by",
            format!(
                "{} ({})",
                or_none(&escape_control(&command.sender_name)),
                or_none(&command.sender_token_id)
            ),
        ),
        ("Created", when(command.created_at)),
        ("Finished", when(command.finished_at)),
        (
            "Invocations",
            format!(
                "{} in all: {}",
                command.counts.total,
                counts_text(&command.counts)
            ),
        ),
    ]);
    key_values(0, &pairs)
}

/// Renders `cmd list` as a table.
pub(super) fn render_commands(commands: &[CommandView], now: SystemTime) -> String {
    let mut table = Table::new([
        "ID", "STATE", "RUNS", "AGENTS", "DONE", "NOT OK", "SENDER", "CREATED",
    ])
    .align_right(3)
    .align_right(4)
    .align_right(5);
    for command in commands {
        let counts = &command.counts;
        table.push([
            command.command_id.clone(),
            command_state_text(command),
            truncated(&spec_text(&command.spec), 40),
            counts.total.to_string(),
            counts.finished().to_string(),
            counts.unsuccessful().to_string(),
            or_none(&escape_control(&command.sender_name)),
            relative_time_opt(now, command.created_at),
        ]);
    }
    table.render()
}

/// Renders invocations as a table: `cmd invocations`, and the summary after `cmd run`.
pub(super) fn render_invocations(invocations: &[InvocationView]) -> String {
    let mut table = Table::new([
        "AGENT", "AGENT ID", "STATE", "EXIT", "DURATION", "OUTPUT", "REASON",
    ])
    .align_right(3)
    .align_right(4)
    .align_right(5);
    for invocation in invocations {
        let written = invocation.stdout_bytes + invocation.stderr_bytes;
        let mut output = if written == 0 {
            NONE.to_owned()
        } else {
            format_bytes(written)
        };
        if invocation.dropped_bytes > 0 {
            output.push_str(&format!(
                " ({} cut)",
                format_bytes(invocation.dropped_bytes)
            ));
        }
        let mut state = invocation.state_label();
        if invocation.canary {
            state.push_str(" (canary)");
        }
        table.push([
            escape_control(invocation.display_name()),
            escape_control(&invocation.agent_id),
            state,
            exit_text(invocation),
            invocation
                .duration_seconds
                .map_or_else(|| NONE.to_owned(), elapsed),
            output,
            or_none(&escape_control(&invocation.reason)),
        ]);
    }
    table.render()
}

/// How the process ended: its exit code, the signal that killed it, or [`NONE`].
fn exit_text(invocation: &InvocationView) -> String {
    match (invocation.exit_code, invocation.signal) {
        (_, Some(signal)) => signal_name(signal),
        (Some(code), None) => code.to_string(),
        (None, None) => NONE.to_owned(),
    }
}

/// A signal by its usual name (numbers as on Linux, where agents run), e.g. `SIGKILL`.
pub(super) fn signal_name(signal: i32) -> String {
    let name = match signal {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        13 => "SIGPIPE",
        14 => "SIGALRM",
        15 => "SIGTERM",
        _ => return format!("signal {signal}"),
    };
    name.to_owned()
}

/// The last line after a followed command: how it ended, in words.
pub(super) fn render_outcome(command: &CommandView) -> String {
    let counts = &command.counts;
    let state = command.state.label();
    let id = &command.command_id;
    if command.state == CommandState::Succeeded && counts.succeeded == counts.total {
        return format!(
            "Command {id} {state}: {} of {} invocations succeeded.\n",
            counts.succeeded, counts.total
        );
    }
    format!(
        "Command {id} {state}: {} of {} invocations did not succeed ({}).\n",
        counts.total - counts.succeeded.min(counts.total),
        counts.total,
        counts_text(counts)
    )
}

/// The notice on stderr when `cmd run` starts following: what was sent, and what ctrl-c does.
pub(super) fn render_sent(command: &CommandView, existing: bool, interactive: bool) -> String {
    let id = &command.command_id;
    let counts = &command.counts;
    let mut text = if existing {
        format!("The idempotency key matches command {id}, sent earlier; following it")
    } else {
        format!("Command {id} sent to {} agents", counts.total)
    };
    if counts.skipped > 0 {
        text.push_str(&format!(" ({} skipped)", counts.skipped));
    }
    text.push_str(if interactive {
        ". Ctrl-c to cancel it or to detach.\n"
    } else {
        ".\n"
    });
    text
}

/// The confirmation of `cmd cancel|pause|resume`.
pub(super) fn render_steered(verb: &str, command: &CommandView) -> String {
    format!(
        "Command {}: {verb}; it is {} ({}).\n",
        command.command_id,
        command_state_text(command),
        counts_text(&command.counts)
    )
}

/// `text` cut to `max` characters, ending in `…` when cut.
fn truncated(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
pub(super) mod tests;
