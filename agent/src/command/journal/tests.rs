use super::*;

fn result(state: Terminal, seq: u64) -> JournaledResult {
    JournaledResult {
        outcome: Outcome {
            state,
            reason: "why".into(),
            exit_code: Some(0),
            signal: None,
        },
        seq,
        stdout_bytes: 12,
        stderr_bytes: 0,
    }
}

fn file_of(dir: &Path) -> PathBuf {
    dir.join(JOURNAL_FILE_NAME)
}

#[test]
fn an_accept_without_result_reopens_as_agent_restarted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let journal = Journal::open(dir.path()).expect("open");
    journal.accept("inv-1", "cmd-1").expect("accept");
    // The agent dies here: no result, no clean close.
    drop(journal);

    let reopened = Journal::open(dir.path()).expect("reopen");
    let entry = reopened.get("inv-1").expect("journaled");
    let result = entry.result.expect("settled at open");
    assert_eq!(result.outcome.state, Terminal::AgentRestarted);
    assert_eq!(result.seq, 0, "numbered only after Welcome");
    assert!(!entry.acked);
    assert_eq!(reopened.unacked().len(), 1);

    // The settlement itself was made durable: a second crash keeps it.
    drop(reopened);
    let again = Journal::open(dir.path()).expect("reopen again");
    assert_eq!(
        again
            .get("inv-1")
            .and_then(|e| e.result)
            .map(|r| r.outcome.state),
        Some(Terminal::AgentRestarted)
    );
}

#[test]
fn results_survive_and_acks_are_written_with_the_next_record_or_flush() {
    let dir = tempfile::tempdir().expect("tempdir");
    let journal = Journal::open(dir.path()).expect("open");
    journal.accept("inv-1", "cmd-1").expect("accept");
    journal
        .finish("inv-1", "cmd-1", &result(Terminal::Succeeded, 3))
        .expect("finish");
    journal
        .finish("inv-2", "cmd-1", &result(Terminal::Rejected, 1))
        .expect("finish without accept");
    journal.mark_acked("inv-2");
    // A crash now loses the ack (it was never written): inv-2 is re-sent, which is harmless.
    drop(journal);
    let reopened = Journal::open(dir.path()).expect("reopen");
    assert_eq!(
        reopened.get("inv-1").and_then(|e| e.result),
        Some(result(Terminal::Succeeded, 3))
    );
    assert!(!reopened.get("inv-2").expect("inv-2").acked);

    reopened.mark_acked("inv-2");
    reopened.flush().expect("flush");
    drop(reopened);
    let flushed = Journal::open(dir.path()).expect("reopen");
    assert!(flushed.get("inv-2").expect("inv-2").acked);
    let unacked: Vec<String> = flushed.unacked().into_iter().map(|(id, _)| id).collect();
    assert_eq!(unacked, ["inv-1"]);
}

#[test]
fn a_torn_last_record_is_dropped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let journal = Journal::open(dir.path()).expect("open");
    journal.accept("inv-1", "cmd-1").expect("accept");
    drop(journal);
    let mut file = OpenOptions::new()
        .append(true)
        .open(file_of(dir.path()))
        .expect("open file");
    file.write_all(br#"{"op":"result","id":"inv-1","comm"#)
        .expect("torn write");
    drop(file);
    let reopened = Journal::open(dir.path()).expect("a torn tail is not corruption");
    // The torn result never counted: the invocation was running when the agent died.
    assert_eq!(
        reopened
            .get("inv-1")
            .and_then(|e| e.result)
            .map(|r| r.outcome.state),
        Some(Terminal::AgentRestarted)
    );
}

#[test]
fn damage_before_the_end_and_unknown_versions_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = file_of(dir.path());
    fs::write(
        &path,
        concat!(
            "{\"op\":\"header\",\"version\":1}\n",
            "garbage\n",
            "{\"op\":\"accept\",\"id\":\"a\",\"command_id\":\"c\",\"at_ms\":1}\n"
        ),
    )
    .expect("write");
    assert!(matches!(
        Journal::open(dir.path()),
        Err(AgentError::StateCorrupt { .. })
    ));
    fs::write(&path, "{\"op\":\"header\",\"version\":99}\n").expect("write");
    assert!(matches!(
        Journal::open(dir.path()),
        Err(AgentError::StateCorrupt { .. })
    ));
}

#[test]
fn the_file_is_private_and_compacted_at_open() {
    use std::os::unix::fs::PermissionsExt as _;

    let dir = tempfile::tempdir().expect("tempdir");
    let journal = Journal::open(dir.path()).expect("open");
    for n in 0..20 {
        let id = format!("inv-{n}");
        journal.accept(&id, "cmd").expect("accept");
        journal
            .finish(&id, "cmd", &result(Terminal::Succeeded, 2))
            .expect("finish");
    }
    drop(journal);
    let before = fs::read_to_string(file_of(dir.path())).expect("read");
    assert_eq!(
        before.lines().count(),
        41,
        "header + accept and result each"
    );
    let _reopened = Journal::open(dir.path()).expect("reopen");
    let after = fs::read_to_string(file_of(dir.path())).expect("read");
    assert_eq!(
        after.lines().count(),
        21,
        "header + one line per invocation"
    );
    let mode = fs::metadata(file_of(dir.path()))
        .expect("metadata")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn appends_beyond_the_threshold_compact_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let journal = Journal::open(dir.path()).expect("open");
    let long_reason = "x".repeat(4096);
    let mut result = result(Terminal::Failed, 2);
    result.outcome.reason = long_reason;
    // The same invocation finishing again and again (as redeliveries cannot do, but appends
    // can) grows the file until it is rewritten to a single line for it.
    for _ in 0..80 {
        journal.finish("inv-1", "cmd", &result).expect("finish");
    }
    let len = fs::metadata(file_of(dir.path())).expect("metadata").len();
    assert!(len < COMPACT_AFTER_BYTES, "compacted: {len} bytes");
    drop(journal);
    let reopened = Journal::open(dir.path()).expect("reopen");
    assert_eq!(reopened.get("inv-1").and_then(|e| e.result), Some(result));
}

#[test]
fn entries_are_kept_for_the_retention_then_forgotten() {
    let dir = tempfile::tempdir().expect("tempdir");
    let old_ms = unix_ms(SystemTime::now() - JOURNAL_RETENTION - Duration::from_secs(60));
    let recent_ms = unix_ms(SystemTime::now() - Duration::from_secs(60));
    fs::write(
        file_of(dir.path()),
        format!(
            "{{\"op\":\"header\",\"version\":1}}\n\
             {{\"op\":\"result\",\"id\":\"old\",\"command_id\":\"c\",\"at_ms\":{old_ms},\
             \"state\":\"succeeded\",\"reason\":\"\",\"exit_code\":0,\"signal\":null,\"seq\":1,\
             \"stdout_bytes\":0,\"stderr_bytes\":0}}\n\
             {{\"op\":\"acked\",\"id\":\"old\",\"at_ms\":{old_ms}}}\n\
             {{\"op\":\"result\",\"id\":\"recent\",\"command_id\":\"c\",\"at_ms\":{recent_ms},\
             \"state\":\"succeeded\",\"reason\":\"\",\"exit_code\":0,\"signal\":null,\"seq\":1,\
             \"stdout_bytes\":0,\"stderr_bytes\":0}}\n\
             {{\"op\":\"acked\",\"id\":\"recent\",\"at_ms\":{recent_ms}}}\n"
        ),
    )
    .expect("write");
    let journal = Journal::open(dir.path()).expect("open");
    assert!(journal.get("old").is_none());
    assert!(journal.get("recent").expect("kept").acked);
}

#[test]
fn pruning_beyond_the_cap_drops_the_oldest_acknowledged_first() {
    let now = SystemTime::now();
    let entry = |age_secs: u64, acked: bool| Entry {
        command_id: "c".into(),
        updated_at: now - Duration::from_secs(age_secs),
        result: Some(result(Terminal::Succeeded, 1)),
        acked,
    };
    let mut map = HashMap::from([
        ("oldest-acked".to_owned(), entry(300, true)),
        ("newer-acked".to_owned(), entry(100, true)),
        ("oldest-unacked".to_owned(), entry(400, false)),
    ]);
    prune(&mut map, 2, now);
    assert!(!map.contains_key("oldest-acked"));
    assert!(map.contains_key("newer-acked"));
    assert!(
        map.contains_key("oldest-unacked"),
        "unacknowledged ends are never cut early"
    );
}

#[test]
fn the_in_memory_journal_keeps_state_without_a_file() {
    let journal = Journal::in_memory();
    assert!(!journal.is_durable());
    journal.accept("inv-1", "cmd").expect("accept");
    assert_eq!(journal.unacked().len(), 1);
    journal
        .finish("inv-1", "cmd", &result(Terminal::Succeeded, 1))
        .expect("finish");
    journal.mark_acked("inv-1");
    assert!(journal.unacked().is_empty());
    assert!(journal.get("inv-1").expect("remembered").acked);
    journal.flush().expect("nothing to write");
}

#[test]
fn no_file_is_written_until_the_first_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let journal = Journal::open(dir.path()).expect("open");
    journal.flush().expect("nothing to flush");
    assert!(!file_of(dir.path()).exists());
    journal.accept("inv-1", "cmd").expect("accept");
    let written = fs::read_to_string(file_of(dir.path())).expect("created");
    assert_eq!(written.lines().count(), 2, "header and the accept");
}
