//! `tetherctl cmd run` (and the other `cmd` commands) against the real server.

use tetherctl::CliError;

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cmd_run_prints_each_agents_lines_a_summary_and_succeeds() {
    let (server, _dir) = server().await;
    let (_agent, id) = server
        .spawn_commanded_agent("cli-web-1", &[("role", "cli")], &["/bin/echo"])
        .await;
    let out = server
        .cli(&[
            "cmd",
            "run",
            "-l",
            "role=cli",
            "--",
            "/bin/echo",
            "hello from tether",
        ])
        .await
        .expect("cmd run");
    assert!(
        out.lines()
            .any(|l| l.contains("cli-web-1") && l.ends_with("hello from tether")),
        "the output line, prefixed by the agent's name:\n{out}"
    );
    assert!(out.contains("SUCCEEDED"), "the summary table:\n{out}");

    // The stored history through the other commands.
    let listed = server
        .cli(&["cmd", "list", "-o", "json"])
        .await
        .expect("list");
    let listed: serde_json::Value = serde_json::from_str(&listed).expect("json");
    let command_id = listed[0]["command_id"].as_str().expect("an id").to_owned();
    let logs = server
        .cli(&["cmd", "logs", &command_id, &id])
        .await
        .expect("logs");
    assert_eq!(logs, "hello from tether\n");
    let got = server
        .cli(&["cmd", "get", &command_id, "-o", "json"])
        .await
        .expect("get");
    let got: serde_json::Value = serde_json::from_str(&got).expect("json");
    assert_eq!(got["state"], "succeeded");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cmd_run_fails_when_an_invocation_does_not_succeed() {
    let (server, _dir) = server().await;
    let (_agent, id) = server
        .spawn_commanded_agent("cli-fail-1", &[], &["/bin/false"])
        .await;
    let err = server
        .cli(&["cmd", "run", "--agent", &id, "--", "/bin/false"])
        .await
        .expect_err("the invocation failed");
    assert!(
        matches!(&err, CliError::CommandFailed { state, .. } if state == "FAILED"),
        "{err:?}"
    );
    assert_ne!(err.exit_code(), 0);
    let err = server
        .cli(&["cmd", "run", "--agent", &id, "--", "/bin/true"])
        .await
        .expect_err("not on the allowlist");
    assert!(matches!(&err, CliError::CommandFailed { .. }), "{err:?}");
    server.stop().await;
}
