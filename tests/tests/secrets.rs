//! Secrets hygiene, grep-style: a whole scenario runs with every log line at TRACE captured
//! (server, agent, CLI, tonic, h2, sled, all in this process), then no token, credential or
//! enrollment secret that was issued or presented may appear in the capture, nor in an error
//! message.
//!
//! This file is its own test binary with one test, so the capturing subscriber can be the global
//! default (seen by every tokio worker thread) without affecting other tests.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tether_proto as pb;
use tether_tests::{
    RawSession, TestAgent, TestServer, create_token, eventually, fast_config, system_info, token_id,
};
use tonic::Code;

/// Every line logged, from every thread: each event with its fields, each span's fields when
/// the span is created or recorded.
///
/// A subscriber of its own rather than `tracing_subscriber::fmt`: the fmt layer formats into a
/// thread-local buffer, and an event logged while a thread's locals are being destroyed (a
/// runtime or pool thread ending, at TRACE) makes that buffer's access panic, which aborts the
/// process ("thread local panicked on drop"). This one keeps no thread-local state.
#[derive(Clone, Default)]
struct Capture {
    lines: Arc<Mutex<Vec<u8>>>,
    next_span: Arc<AtomicU64>,
}

impl Capture {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.lines.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }

    fn push(&self, mut line: Fields) {
        line.0.push('\n');
        self.lines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(line.0.as_bytes());
    }
}

/// One captured line: a head, then ` name=value` per field (values as the fmt layer shows them:
/// `Display` for `%` fields, `Debug` otherwise).
struct Fields(String);

impl Fields {
    fn head(kind: &str, metadata: &tracing::Metadata<'_>) -> Self {
        Fields(format!(
            "{kind} {} {}: {}",
            metadata.level(),
            metadata.target(),
            metadata.name()
        ))
    }
}

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, " {}={value:?}", field.name());
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        let _ = write!(self.0, " {}={value}", field.name());
    }
}

impl tracing::Subscriber for Capture {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }

    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(tracing::level_filters::LevelFilter::TRACE)
    }

    fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        let mut line = Fields::head("span", span.metadata());
        span.record(&mut line);
        self.push(line);
        tracing::span::Id::from_u64(self.next_span.fetch_add(1, Ordering::Relaxed) + 1)
    }

    fn record(&self, _: &tracing::span::Id, values: &tracing::span::Record<'_>) {
        let mut line = Fields("span record".to_owned());
        values.record(&mut line);
        self.push(line);
    }

    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}

    fn event(&self, event: &tracing::Event<'_>) {
        let mut line = Fields::head("event", event.metadata());
        event.record(&mut line);
        self.push(line);
    }

    fn enter(&self, _: &tracing::span::Id) {}

    fn exit(&self, _: &tracing::span::Id) {}
}

/// Every `tether_<hex id>_<hex secret>` in `text` (the CLI prints secrets it creates once).
fn tokens_in(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for (at, _) in text.match_indices("tether_") {
        let token: String = text[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if token.len() > "tether_".len() + 17 && token.matches('_').count() == 2 {
            found.push(token);
        }
    }
    found
}

/// The random part of a token `tether_<id>_<secret>`.
fn secret_half(token: &str) -> &str {
    token.rsplit('_').next().expect("secret part")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_appears_in_any_log_line_or_error_message() {
    let capture = Capture::default();
    // Also installs the `log` bridge, for the crates that log through `log` (sled).
    tracing_subscriber::util::SubscriberInitExt::try_init(capture.clone())
        .expect("the only subscriber of this test binary");

    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(fast_config(dir.path())).await;
    let mut secrets: Vec<String> = vec![server.admin_token.clone()];
    let mut errors: Vec<String> = Vec::new();
    let mut admin = server.admin().await;

    // A real agent enrolls, connects and reports.
    let enrollment = admin
        .create_enrollment_token(pb::CreateEnrollmentTokenRequest {
            description: "fleet".to_owned(),
            labels: tether_tests::labels(&[("env", "prod")]),
            ..Default::default()
        })
        .await
        .expect("enrollment token")
        .into_inner();
    secrets.push(enrollment.secret.clone());
    let state = tempfile::tempdir().expect("agent state dir");
    let agent = TestAgent::spawn(
        &server.url,
        state,
        "secretive",
        "linux",
        &[],
        Some(enrollment.secret.clone()),
    );
    let agent_id = agent.id().await;
    server.wait_status(&agent_id, pb::AgentStatus::Online).await;
    eventually("the agent's metrics to be acked", || async {
        (agent.handle.stats.samples_acked_seq() >= 2).then_some(())
    })
    .await;
    let state_file = agent.state_dir.path().join("state.json");
    let stored_credential = || {
        let state: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&state_file).expect("agent state file"))
                .expect("state json");
        state["credential"]
            .as_str()
            .expect("credential in the state file")
            .to_owned()
    };
    let credential = stored_credential();
    assert!(credential.starts_with("tether_"));
    secrets.push(credential.clone());

    // Another machine enrolls by hand.
    let enrolled = server
        .agent_client(Some(&enrollment.secret))
        .await
        .enroll(pb::EnrollRequest {
            system_info: Some(system_info("by-hand")),
            ..Default::default()
        })
        .await
        .expect("enroll")
        .into_inner();
    secrets.push(enrolled.agent_credential.clone());
    let (mut session, _) = RawSession::hello(
        &server,
        &enrolled.agent_id,
        &enrolled.agent_credential,
        "by-hand",
    )
    .await
    .expect("session");
    session.send_samples([1, 2]).await;
    session.wait_ack(2).await.expect("ack");

    // API tokens of every role, used once each.
    let mut issued = Vec::new();
    for (name, role) in [
        ("admin", pb::Role::Admin),
        ("operator", pb::Role::Operator),
        ("viewer", pb::Role::Viewer),
    ] {
        let created = create_token(&mut admin, name, role, None).await;
        secrets.push(created.secret.clone());
        issued.push(created);
    }
    for created in &issued {
        server
            .fleet_as(Some(&created.secret))
            .await
            .list_agents(pb::ListAgentsRequest::default())
            .await
            .expect("each role reads");
    }
    let org = server.create_org("acme").await;
    secrets.push(org.admin_secret.clone());
    let mut acme = server.admin_as(Some(&org.admin_secret)).await;
    let acme_enrollment = acme
        .create_enrollment_token(pb::CreateEnrollmentTokenRequest::default())
        .await
        .expect("acme enrollment token")
        .into_inner();
    secrets.push(acme_enrollment.secret.clone());
    acme.revoke_enrollment_token(pb::RevokeEnrollmentTokenRequest {
        token_id: token_id(&acme_enrollment.secret).to_owned(),
    })
    .await
    .expect("revoke enrollment token");
    let err = server
        .agent_client(Some(&acme_enrollment.secret))
        .await
        .enroll(pb::EnrollRequest {
            system_info: Some(system_info("too-late")),
            ..Default::default()
        })
        .await
        .expect_err("revoked enrollment token");
    errors.push(format!("{err:?}"));

    // Failed authentication: a known token id with a wrong secret, an unknown token, a revoked
    // token, and garbage that embeds a real secret.
    let viewer = &issued[2].secret;
    let wrong = format!("tether_{}_{}", token_id(viewer), "c3".repeat(32));
    let unknown = format!("tether_{}_{}", "0123456789abcdef", "d4".repeat(32));
    secrets.push(wrong.clone());
    secrets.push(unknown.clone());
    let garbage = format!("nonsense{}", secret_half(viewer));
    for presented in [&wrong, &unknown, &garbage] {
        let err = server
            .fleet_as(Some(presented))
            .await
            .list_agents(pb::ListAgentsRequest::default())
            .await
            .expect_err("refused");
        assert_eq!(err.code(), Code::Unauthenticated);
        errors.push(format!("{err:?}"));
    }
    admin
        .revoke_token(pb::RevokeTokenRequest {
            token_id: token_id(viewer).to_owned(),
        })
        .await
        .expect("revoke token");
    let err = server
        .fleet_as(Some(viewer))
        .await
        .get_fleet_summary(pb::GetFleetSummaryRequest::default())
        .await
        .expect_err("revoked");
    assert_eq!(err.code(), Code::Unauthenticated);
    errors.push(format!("{err:?}"));

    // The CLI: reads, and creating secrets (which it prints once, on stdout only).
    for args in [
        &["agents", "list"][..],
        &["agents", "get", &agent_id],
        &["summary"],
        &["tokens", "list", "--include-revoked"],
        &["enroll-token", "list"],
        &["orgs", "list"],
        &["audit"],
        &["audit", "verify"],
    ] {
        server
            .cli(args)
            .await
            .unwrap_or_else(|e| panic!("tetherctl {args:?}: {e}"));
    }
    let mut printed = Vec::new();
    for args in [
        &["tokens", "create", "--name", "cli", "--role", "operator"][..],
        &["enroll-token", "create", "--max-uses", "1"],
        &["orgs", "create", "globex"],
    ] {
        let out = server
            .cli(args)
            .await
            .unwrap_or_else(|e| panic!("tetherctl {args:?}: {e}"));
        let found = tokens_in(&out);
        assert_eq!(found.len(), 1, "tetherctl {args:?} prints its secret once");
        printed.extend(found);
    }
    let cli_enrollment = printed[1].clone();
    server
        .cli(&["enroll-token", "revoke", token_id(&cli_enrollment)])
        .await
        .expect("tetherctl enroll-token revoke");
    secrets.extend(printed);
    for token in [&wrong, &server.admin_token] {
        let bad = format!("{token}0");
        let err = server
            .cli_as(&bad, &["agents", "list"])
            .await
            .expect_err("a bad token is refused");
        errors.push(format!("{err:?} / {err}"));
    }

    // The agent is deleted while running: it discards its state and enrolls again, sending its
    // old credential as its claim, which no log line may show either.
    admin
        .delete_agent(pb::DeleteAgentRequest {
            agent_id: agent_id.clone(),
        })
        .await
        .expect("delete agent");
    let new_id = eventually("the deleted agent to enroll again", || async {
        agent.handle.stats.agent_id().filter(|id| *id != agent_id)
    })
    .await;
    server.wait_status(&new_id, pb::AgentStatus::Online).await;
    secrets.push(stored_credential());
    agent.handle.shutdown();
    let state_dir = agent.state_dir;
    let stopped = agent.handle.join().await;
    errors.push(format!("{stopped:?}"));
    drop(session);
    server.stop().await;

    // Secret files are private.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        for file in [
            dir.path().join("admin.token"),
            state_dir.path().join("state.json"),
        ] {
            let mode = std::fs::metadata(&file)
                .expect("metadata")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{}", file.display());
        }
    }

    let logs = capture.text();
    assert!(
        logs.contains("agent enrolled") && logs.contains("session opened"),
        "the capture works: the server's info lines are there"
    );
    assert!(
        logs.contains(" DEBUG ") && logs.contains(" TRACE "),
        "the capture holds debug and trace lines"
    );
    let mut leaks = Vec::new();
    for secret in &secrets {
        let half = secret_half(secret);
        assert_eq!(half.len(), 64, "a token's secret half is 64 hex digits");
        if logs.contains(secret.as_str()) || logs.contains(half) {
            let line = logs
                .lines()
                .find(|l| l.contains(half))
                .unwrap_or_default()
                .chars()
                .take(300)
                .collect::<String>();
            leaks.push(format!("token {} in a log line: {line}", token_id(secret)));
        }
        for message in &errors {
            if message.contains(half) {
                leaks.push(format!("token {} in an error: {message}", token_id(secret)));
            }
        }
    }
    assert!(
        leaks.is_empty(),
        "{} leaks in {} bytes of logs:\n{}",
        leaks.len(),
        logs.len(),
        leaks.join("\n")
    );
}
