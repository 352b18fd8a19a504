//! What the server and the agent log for an operator: one line when a session opens and one
//! when it closes (agent, org, peer, reason, duration), fields written as values (`Display`),
//! and a misconfigured agent (trusting another CA) saying what to fix at ERROR and retrying
//! slowly.

use std::time::Duration;

use tether_proto as pb;
use tether_tests::{LogCapture, TestAgent, TestServer, TlsOptions, agent_config, eventually};

use crate::config;

#[tokio::test(flavor = "current_thread")]
async fn a_session_logs_one_line_when_it_opens_and_one_when_it_closes() {
    let (logs, _guard) = LogCapture::install("info");
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(config(dir.path())).await;
    let agent = server.spawn_agent("logged-1", &[]).await;
    let id = agent.id().await;
    server.wait_status(&id, pb::AgentStatus::Online).await;
    let agent_field = format!("agent={id}");
    let opened = eventually("the session opened line", || async {
        logs.find(&["session opened", &agent_field])
    })
    .await;
    assert!(opened.contains("org=default"), "{opened}");
    assert!(opened.contains("peer=127.0.0.1:"), "{opened}");

    agent.stop().await;
    server.wait_status(&id, pb::AgentStatus::Offline).await;
    let closed = eventually("the session closed line", || async {
        logs.find(&["session closed", &agent_field])
    })
    .await;
    for part in [
        "org=default",
        "peer=127.0.0.1:",
        "reason=goodbye",
        "duration=",
    ] {
        assert!(closed.contains(part), "{part} in {closed}");
    }

    // Addresses and ids are written as values, never as Rust debug output.
    let serving = logs.find(&["serving gRPC"]).expect("the serving line");
    assert!(serving.contains("addr=127.0.0.1:"), "{serving}");
    for line in logs.lines() {
        assert!(
            !line.contains("Some(") && !line.contains("AgentId("),
            "debug formatting in {line}"
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "current_thread")]
async fn an_agent_trusting_another_ca_says_what_to_fix_and_retries_slowly() {
    let (logs, _guard) = LogCapture::install("info");
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start_tls(config(dir.path()), TlsOptions::default()).await;
    let token = server.enrollment_token().await;
    let other_dir = tempfile::tempdir().expect("other CA dir");
    let other = tether_server::devcerts::generate_dev_certs(
        other_dir.path(),
        &["localhost".to_owned()],
        false,
    )
    .expect("another CA");

    let state = tempfile::tempdir().expect("state dir");
    let mut agent_config = agent_config(&server.url, state.path(), &[], Some(token));
    agent_config.tls = Some(tether_agent::ClientTls {
        ca_cert: Some(other.ca_cert.clone()),
        ..tether_agent::ClientTls::default()
    });
    agent_config.backoff.max = Duration::from_secs(30);
    let agent = TestAgent::spawn_with(agent_config, state, "untrusting-1", "linux");

    let line = eventually("an error naming the fix", || async {
        logs.find(&["ERROR", "--ca-cert"])
    })
    .await;
    assert!(line.contains("enrollment failed"), "{line}");
    assert!(line.contains("invalid peer certificate"), "{line}");
    // Retried at the backoff's cap, not at its 100 ms start.
    assert!(line.contains("retry_in=30s"), "{line}");
    assert_eq!(
        agent.handle.stats.samples_acked(),
        0,
        "the agent never got in"
    );
    agent.stop().await;
    server.stop().await;
}
