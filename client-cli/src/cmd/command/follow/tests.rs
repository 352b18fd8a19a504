//! The pure rules of following: cursors, replays, names, JSON lines, resume and ctrl-c.

use super::*;
use crate::view::{CommandState, InvocationState, OutputChunkView, OutputStream};

fn command_event(state: CommandState) -> CommandEventView {
    let mut command = crate::cmd::command::render::tests::command(state);
    command.counts = crate::view::InvocationCountsView::default();
    CommandEventView {
        cursor: 0,
        kind: CommandEventKind::Command,
        command: Some(command),
        invocation: None,
        output: None,
    }
}

fn invocation_event(cursor: u64, id: &str, name: &str, state: InvocationState) -> CommandEventView {
    let invocation = pb::Invocation {
        invocation_id: id.into(),
        command_id: "c-1".into(),
        agent_id: format!("agent-{id}"),
        agent_name: name.into(),
        state: state.to_pb() as i32,
        ..pb::Invocation::default()
    };
    CommandEventView {
        cursor,
        kind: CommandEventKind::Invocation,
        command: None,
        invocation: Some(invocation.into()),
        output: None,
    }
}

fn output_event(cursor: u64, id: &str, offset: u64, data: &[u8]) -> CommandEventView {
    CommandEventView {
        cursor,
        kind: CommandEventKind::Output,
        command: None,
        invocation: None,
        output: Some(OutputChunkView {
            invocation_id: id.into(),
            agent_id: format!("agent-{id}"),
            stream: OutputStream::Stdout,
            offset,
            data: data.to_vec(),
        }),
    }
}

fn apply_all(tracker: &mut Tracker, events: Vec<CommandEventView>) -> String {
    let mut printed = Printed::default();
    for event in events {
        let _progress = tracker.apply(event, &mut printed);
    }
    String::from_utf8(printed.stdout).expect("utf-8")
}

#[test]
fn lines_carry_the_agent_name_and_the_command_ends_the_follow() {
    let mut tracker = Tracker::new(false, false);
    assert_eq!(tracker.request("c-1").after_cursor, 0);
    let text = apply_all(
        &mut tracker,
        vec![
            command_event(CommandState::Running),
            invocation_event(1, "i1", "web-1", InvocationState::Running),
            output_event(2, "i1", 0, b"up 3 days\nlast li"),
            invocation_event(3, "i1", "web-1", InvocationState::Succeeded),
        ],
    );
    assert_eq!(text, "web-1 | up 3 days\nweb-1 | last li\n");
    assert!(!tracker.is_done());
    assert_eq!(tracker.request("c-1").after_cursor, 3);
    apply_all(&mut tracker, vec![command_event(CommandState::Succeeded)]);
    assert!(tracker.is_done());
}

#[test]
fn a_resumed_watch_prints_nothing_twice() {
    let mut tracker = Tracker::new(false, false);
    let first = apply_all(
        &mut tracker,
        vec![
            invocation_event(1, "i1", "web-1", InvocationState::Running),
            output_event(2, "i1", 0, b"one\n"),
        ],
    );
    // The server replays from an older cursor, then goes on.
    let second = apply_all(
        &mut tracker,
        vec![
            command_event(CommandState::Running),
            output_event(2, "i1", 0, b"one\n"),
            output_event(3, "i1", 0, b"one\ntwo\n"),
        ],
    );
    assert_eq!(first, "web-1 | one\n");
    assert_eq!(second, "web-1 | two\n");
    assert_eq!(tracker.request("c-1").after_cursor, 3);
}

#[test]
fn only_new_stored_events_are_progress() {
    let mut tracker = Tracker::new(false, false);
    let mut printed = Printed::default();
    assert!(!tracker.apply(command_event(CommandState::Running), &mut printed));
    assert!(tracker.apply(
        invocation_event(4, "i1", "web-1", InvocationState::Queued),
        &mut printed
    ));
    assert!(!tracker.apply(
        invocation_event(4, "i1", "web-1", InvocationState::Queued),
        &mut printed
    ));
    assert!(!tracker.apply(
        invocation_event(2, "i1", "web-1", InvocationState::Queued),
        &mut printed
    ));
}

#[test]
fn output_before_its_invocation_is_named_by_agent_id() {
    let mut tracker = Tracker::new(false, false);
    let text = apply_all(&mut tracker, vec![output_event(1, "i7", 0, b"early\n")]);
    assert_eq!(text, "agent-i7 | early\n");
}

#[test]
fn json_mode_prints_each_new_event_once_as_a_line() {
    let mut tracker = Tracker::new(true, false);
    let text = apply_all(
        &mut tracker,
        vec![
            command_event(CommandState::Running),
            invocation_event(1, "i1", "web-1", InvocationState::Running),
            output_event(2, "i1", 0, b"hi\n"),
            output_event(2, "i1", 0, b"hi\n"),
            command_event(CommandState::Succeeded),
        ],
    );
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert_eq!(lines[0]["kind"], "command");
    assert_eq!(lines[1]["invocation"]["state"], "running");
    assert_eq!(lines[2]["output"]["text"], "hi\n");
    assert_eq!(lines[2]["cursor"], 2);
    assert_eq!(lines[3]["command"]["state"], "succeeded");
    assert!(tracker.is_done());
}

#[test]
fn only_transient_failures_are_resumed() {
    for code in [
        Code::Unavailable,
        Code::Unknown,
        Code::Internal,
        Code::Aborted,
    ] {
        assert!(is_transient(code), "{code:?}");
    }
    for code in [
        Code::NotFound,
        Code::PermissionDenied,
        Code::Unauthenticated,
        Code::InvalidArgument,
        Code::Unimplemented,
    ] {
        assert!(!is_transient(code), "{code:?}");
    }
}

#[test]
fn backoff_doubles_to_its_cap_with_jitter_and_resets() {
    let mut backoff = Backoff::new();
    let within = |d: Duration, base: Duration| d >= base.mul_f64(0.8) && d < base.mul_f64(1.2);
    let mut base = RESUME_BACKOFF_INITIAL;
    for _ in 0..10 {
        let delay = backoff.next_delay();
        assert!(within(delay, base), "{delay:?} vs {base:?}");
        base = (base * 2).min(RESUME_BACKOFF_MAX);
    }
    assert_eq!(base, RESUME_BACKOFF_MAX);
    backoff.reset();
    assert!(within(backoff.next_delay(), RESUME_BACKOFF_INITIAL));
}

#[test]
fn answers_to_ctrl_c() {
    assert_eq!(parse_answer("c\n"), Some(Decision::Cancel));
    assert_eq!(parse_answer(" Cancel "), Some(Decision::Cancel));
    assert_eq!(parse_answer("d"), Some(Decision::Detach));
    assert_eq!(
        parse_answer("\n"),
        Some(Decision::Detach),
        "the default changes nothing"
    );
    assert_eq!(parse_answer("yes"), None);
}
