//! The `cmd` tables and messages, exactly.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use super::*;
use crate::view::{InvocationState, OutputStream};
use crate::view::{RolloutView, SkipReason, TargetsView};

fn at(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

/// A command `c-1` running `/usr/bin/uptime -p` on `env=prod`, in `state`.
pub(in crate::cmd::command) fn command(state: CommandState) -> CommandView {
    CommandView {
        command_id: "c-1".into(),
        org_id: "default".into(),
        spec: CommandSpecView {
            kind: CommandKind::Exec,
            argv: vec!["/usr/bin/uptime".into(), "-p".into()],
            env: BTreeMap::from([("LANG".into(), "C".into())]),
            working_dir: String::new(),
            stdin_bytes: 0,
            sleep_seconds: None,
        },
        targets: TargetsView {
            agent_ids: Vec::new(),
            label_selector: "env=prod".into(),
            include_offline: false,
        },
        rollout: RolloutView {
            max_concurrency: Some(BudgetView::Percent(10)),
            max_errors: Some(BudgetView::Count(0)),
            canary: 1,
        },
        timeout_seconds: Some(Duration::from_secs(30)),
        deliver_by: Some(at(1_600)),
        idempotency_key: String::new(),
        description: "uptime".into(),
        sender_token_id: "t-1".into(),
        sender_name: "ops".into(),
        created_at: Some(at(1_000)),
        state,
        finished_at: None,
        counts: InvocationCountsView {
            total: 3,
            running: 1,
            succeeded: 1,
            skipped: 1,
            ..InvocationCountsView::default()
        },
        output_limit_bytes: 1 << 20,
        cancel_requested: false,
    }
}

/// Agent `a-{name}`'s invocation `i-{name}` of `c-1`, in `state`, with nothing else known.
pub(in crate::cmd::command) fn invocation(name: &str, state: InvocationState) -> InvocationView {
    InvocationView {
        invocation_id: format!("i-{name}"),
        command_id: "c-1".into(),
        agent_id: format!("a-{name}"),
        agent_name: name.into(),
        state,
        skip_reason: None,
        reason: String::new(),
        canary: false,
        exit_code: None,
        signal: None,
        queued_at: None,
        offered_at: None,
        started_at: None,
        finished_at: None,
        duration_seconds: None,
        stdout_bytes: 0,
        stderr_bytes: 0,
        dropped_bytes: 0,
    }
}

#[test]
fn specs_read_like_what_runs() {
    let mut spec = command(CommandState::Running).spec;
    assert_eq!(spec_text(&spec), "exec /usr/bin/uptime -p");
    spec.argv = vec![
        "/bin/echo".into(),
        "it's".into(),
        "two words".into(),
        "a\nb".into(),
        String::new(),
    ];
    assert_eq!(
        spec_text(&spec),
        r"exec /bin/echo 'it'\''s' 'two words' 'a\nb' ''"
    );
    spec.kind = CommandKind::Sleep;
    spec.sleep_seconds = Some(Duration::from_secs(5));
    assert_eq!(spec_text(&spec), "sleep 5s");
    spec.kind = CommandKind::Noop;
    assert_eq!(spec_text(&spec), "noop");
}

#[test]
fn the_detail_page_names_every_setting() {
    let text = render_command(&command(CommandState::Running), at(1_060));
    assert_eq!(
        text,
        "ID:               c-1\n\
         State:            RUNNING\n\
         Description:      uptime\n\
         Runs:             exec /usr/bin/uptime -p\n\
         Environment:      LANG=C\n\
         Working dir:      -\n\
         Stdin:            0 B\n\
         Selector:         env=prod\n\
         Agents:           -\n\
         Offline agents:   skipped\n\
         Max concurrency:  10%\n\
         Max errors:       0\n\
         Canary:           1\n\
         Timeout:          30s\n\
         Deliver by:       in 9m (1970-01-01T00:26:40Z)\n\
         Output limit:     1.0 MiB\n\
         Idempotency key:  -\n\
         Sent by:          ops (t-1)\n\
         Created:          1m ago (1970-01-01T00:16:40Z)\n\
         Finished:         never\n\
         Invocations:      3 in all: 1 running, 1 succeeded, 1 skipped\n"
    );
    let mut cancelling = command(CommandState::Running);
    cancelling.cancel_requested = true;
    cancelling.spec.kind = CommandKind::Collect;
    let text = render_command(&cancelling, at(1_060));
    assert!(
        text.contains("State:            RUNNING (cancel requested)\n"),
        "{text}"
    );
    assert!(!text.contains("Environment"), "exec only: {text}");
}

#[test]
fn the_listing_shows_progress_per_command() {
    let mut done = command(CommandState::Failed);
    done.command_id = "c-2".into();
    done.counts = InvocationCountsView {
        total: 2,
        succeeded: 1,
        timed_out: 1,
        ..InvocationCountsView::default()
    };
    done.spec.argv = vec![
        "/opt/tools/a-very-long-program-name".into(),
        "--with-many".into(),
        "--arguments".into(),
    ];
    let text = render_commands(&[command(CommandState::Running), done], at(1_120));
    assert_eq!(
        text,
        "ID    STATE     RUNS                                       AGENTS   DONE   NOT OK   SENDER   CREATED\n\
         c-1   RUNNING   exec /usr/bin/uptime -p                         3      2        1   ops      2m ago\n\
         c-2   FAILED    exec /opt/tools/a-very-long-program-nam…        2      2        1   ops      2m ago\n"
    );
}

#[test]
fn the_summary_shows_state_exit_and_duration_per_agent() {
    let mut ok = invocation("web-1", InvocationState::Succeeded);
    ok.exit_code = Some(0);
    ok.duration_seconds = Some(Duration::from_millis(1_250));
    ok.stdout_bytes = 2_048;
    ok.canary = true;
    let mut failed = invocation("web-2", InvocationState::Failed);
    failed.exit_code = Some(3);
    failed.duration_seconds = Some(Duration::from_secs(75));
    failed.stderr_bytes = 10;
    failed.dropped_bytes = 4_096;
    let mut killed = invocation("web-3", InvocationState::TimedOut);
    killed.signal = Some(9);
    killed.reason = "ran past 30s\u{1b}[2J".into();
    let mut skipped = invocation("db-1", InvocationState::Skipped);
    skipped.skip_reason = Some(SkipReason::Offline);
    let mut nameless = invocation("", InvocationState::Rejected);
    nameless.agent_id = "a-9".into();
    nameless.reason = "/bin/sh is not in --allow-exec".into();
    let text = render_invocations(&[ok, failed, killed, skipped, nameless]);
    assert_eq!(
        text,
        "AGENT   AGENT ID   STATE                   EXIT   DURATION               OUTPUT   REASON\n\
         web-1   a-web-1    SUCCEEDED (canary)         0       1.2s              2.0 KiB   -\n\
         web-2   a-web-2    FAILED                     3     1m 15s   10 B (4.0 KiB cut)   -\n\
         web-3   a-web-3    TIMED_OUT            SIGKILL          -                    -   ran past 30s\\u{1b}[2J\n\
         db-1    a-db-1     SKIPPED_OFFLINE            -          -                    -   -\n\
         a-9     a-9        REJECTED                   -          -                    -   /bin/sh is not in --allow-exec\n"
    );
}

#[test]
fn names_that_hold_control_characters_cannot_break_a_row() {
    let evil = invocation("x\ny\u{1b}[31m", InvocationState::Succeeded);
    let text = render_invocations(&[evil]);
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(text.contains(r"x\ny\u{1b}[31m"), "{text}");
}

#[test]
fn signals_have_their_names() {
    assert_eq!(signal_name(9), "SIGKILL");
    assert_eq!(signal_name(15), "SIGTERM");
    assert_eq!(signal_name(64), "signal 64");
}

#[test]
fn the_outcome_says_how_many_did_not_succeed() {
    let mut command = command(CommandState::Succeeded);
    command.counts = InvocationCountsView {
        total: 3,
        succeeded: 3,
        ..InvocationCountsView::default()
    };
    assert_eq!(
        render_outcome(&command),
        "Command c-1 SUCCEEDED: 3 of 3 invocations succeeded.\n"
    );
    command.state = CommandState::Failed;
    command.counts.succeeded = 1;
    command.counts.failed = 1;
    command.counts.skipped = 1;
    assert_eq!(
        render_outcome(&command),
        "Command c-1 FAILED: 2 of 3 invocations did not succeed (1 succeeded, 1 failed, 1 \
         skipped).\n"
    );
}

#[test]
fn messages_around_a_run() {
    let command = command(CommandState::Pending);
    assert_eq!(
        render_sent(&command, false, true),
        "Command c-1 sent to 3 agents (1 skipped). Ctrl-c to cancel it or to detach.\n"
    );
    assert_eq!(
        render_sent(&command, true, false),
        "The idempotency key matches command c-1, sent earlier; following it (1 skipped).\n"
    );
    assert_eq!(
        render_steered("paused", &command),
        "Command c-1: paused; it is PENDING (1 running, 1 succeeded, 1 skipped).\n"
    );
    assert_eq!(counts_text(&InvocationCountsView::default()), "none");
    assert_eq!(OutputStream::Stderr.as_str(), "stderr");
}
