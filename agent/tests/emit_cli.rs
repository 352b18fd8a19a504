//! `tether-agent emit` as a process: a bad event or a missing agent is a non-zero exit with
//! the reason on stderr, before anything is stored.

use std::process::Command;

fn emit(args: &[&str]) -> (bool, String) {
    let state = tempfile::tempdir().expect("state dir");
    let output = Command::new(env!("CARGO_BIN_EXE_tether-agent"))
        .arg("emit")
        .arg("--state-dir")
        .arg(state.path())
        .args(args)
        .env_remove("TETHER_AGENT_CONFIG")
        .env_remove("TETHER_EVENT_SOCKET")
        .output()
        .expect("run tether-agent emit");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_bad_event_is_refused_with_the_reason() {
    for (args, words) in [
        (vec!["--kind", "Disk Full", "x"], "dotted name"),
        (
            vec!["--kind", "disk.full", "--severity", "fatal", "x"],
            "severity",
        ),
        (vec!["--kind", "tether.agent_started", "x"], "reserved"),
        (
            vec!["--kind", "disk.full", "--attr", "bad key=v", "x"],
            "attribute",
        ),
        (
            vec!["--kind", "disk.full", "--attr", "novalue", "x"],
            "key=value",
        ),
    ] {
        let (ok, stderr) = emit(&args);
        assert!(!ok, "{args:?} succeeded");
        assert!(stderr.contains(words), "{args:?}: {stderr}");
    }
}

#[test]
fn without_a_running_agent_emit_names_the_socket() {
    let (ok, stderr) = emit(&[
        "--kind",
        "disk.full",
        "--severity",
        "error",
        "disk / is full",
    ]);
    assert!(!ok);
    assert!(stderr.contains("events.sock"), "{stderr}");
}
