//! `tetherctl` against whatever text a real server accepts from agents and admins: terminal
//! escape sequences, bidi overrides, zero-width and line-break characters in agent names,
//! hostnames, OS fields, mount points, token names and descriptions and org names.
//!
//! The server may refuse such text (`INVALID_ARGUMENT`); whatever it accepts, every command
//! succeeds, its human output (tables, detail pages, watch lines, CSV) holds no non-printable
//! character but its own line breaks, and its JSON output carries the accepted text exactly.

use serde_json::Value;
use tether_proto as pb;
use tether_tests::{RawSession, TestServer, fast_config, hello, sample, system_info, trace_init};
use tetherctl::format::is_printable;
use tonic::Code;

/// Text an agent or an admin could send to take over an operator's terminal, and one plain
/// non-ASCII text that must come through unchanged.
const HOSTILE: &[&str] = &[
    "\u{1b}]0;owned\u{7}",
    "\u{1b}[2J\u{1b}[H",
    "web\u{202e}1gnp.exe",
    "a\u{200b}b\u{feff}c",
    "\u{9b}31m",
    "line1\nline2",
    "plain 日本 🚀",
];

/// Whether `result` was accepted; a refusal must be `INVALID_ARGUMENT`.
fn accepted<T>(what: &str, result: Result<T, tonic::Status>) -> Option<T> {
    match result {
        Ok(value) => Some(value),
        Err(status) => {
            assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
            None
        }
    }
}

/// Every string in `value`, recursively.
fn strings(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(s) => out.push(s.clone()),
        Value::Array(items) => items.iter().for_each(|v| strings(v, out)),
        Value::Object(map) => map.iter().for_each(|(k, v)| {
            out.push(k.clone());
            strings(v, out);
        }),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_shows_whatever_the_server_accepts_escaped_and_exact() {
    trace_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(fast_config(dir.path())).await;
    let mut admin = server.admin().await;
    let mut stored: Vec<&str> = Vec::new();
    let mut agents: Vec<String> = Vec::new();
    let mut sessions = Vec::new();

    for (idx, text) in HOSTILE.iter().enumerate() {
        let mut info = system_info(&format!("hostile-{idx}"));
        info.hostname = (*text).to_owned();
        info.os_name = (*text).to_owned();
        info.os_version = (*text).to_owned();
        info.cpu_model = (*text).to_owned();
        let enrolled = server
            .enroll_with(pb::EnrollRequest {
                system_info: Some(info.clone()),
                labels: Default::default(),
                name: String::new(),
                previous_credential: String::new(),
            })
            .await;
        if let Some(enrolled) = accepted("system info", enrolled) {
            stored.push(text);
            agents.push(enrolled.agent_id.clone());
            // A session whose Hello and samples carry the text too (a mount point).
            let mut first = hello(&enrolled.agent_id, "x", &[]);
            first.system_info = Some(info);
            let opened = RawSession::hello_with(&server, &enrolled.agent_credential, first).await;
            if let Some((mut session, _)) = accepted("hello", opened) {
                let mut report = sample(1);
                report.disks = vec![pb::DiskUsage {
                    mount_point: (*text).to_owned(),
                    used_bytes: u64::MAX,
                    total_bytes: 1,
                }];
                session
                    .send(pb::connect_request::Message::Metrics(pb::MetricsReport {
                        deferred_seq: 0,
                        previous_ack_latency: None,
                        samples: vec![report],
                    }))
                    .await;
                if accepted("sample", session.wait_ack(1).await).is_some() {
                    sessions.push(session);
                }
            }
        }
        let named = server
            .enroll_with(pb::EnrollRequest {
                system_info: Some(system_info(&format!("named-{idx}"))),
                labels: Default::default(),
                name: (*text).to_owned(),
                previous_credential: String::new(),
            })
            .await;
        if let Some(named) = accepted("agent name", named) {
            stored.push(text);
            agents.push(named.agent_id);
        }
        let token = admin
            .create_token(pb::CreateTokenRequest {
                name: (*text).to_owned(),
                role: pb::Role::Viewer as i32,
                ttl: None,
            })
            .await;
        if accepted("token name", token).is_some() {
            stored.push(text);
        }
        let enrollment = admin
            .create_enrollment_token(pb::CreateEnrollmentTokenRequest {
                description: (*text).to_owned(),
                ..Default::default()
            })
            .await;
        if accepted("enrollment token description", enrollment).is_some() {
            stored.push(text);
        }
        let org = admin
            .create_org(pb::CreateOrgRequest {
                org_id: format!("hostile-{idx}"),
                display_name: (*text).to_owned(),
            })
            .await;
        if accepted("org display name", org).is_some() {
            stored.push(text);
        }
    }
    assert!(
        stored.contains(&"plain 日本 🚀"),
        "plain text is accepted everywhere: {stored:?}"
    );

    let first = agents.first().expect("an enrolled agent").clone();
    let n_watch = agents.len().to_string();
    let human: Vec<Vec<&str>> = vec![
        vec!["agents", "list"],
        vec!["agents", "list", "-o", "wide"],
        vec!["agents", "list", "-o", "csv"],
        vec!["agents", "get", &first],
        vec!["agents", "watch", "--max-events", &n_watch],
        vec!["metrics", &first, "--step", "0s"],
        vec!["metrics", &first, "-o", "csv"],
        vec!["summary"],
        vec!["config"],
        vec!["tokens", "list"],
        vec!["enroll-token", "list"],
        vec!["enroll-token", "list", "-o", "csv"],
        vec!["orgs", "list"],
        vec!["audit"],
        vec!["audit", "verify"],
    ];
    for args in &human {
        let out = server
            .cli(args)
            .await
            .unwrap_or_else(|e| panic!("tetherctl {args:?}: {e}"));
        assert!(
            out.chars().all(|c| is_printable(c) || c == '\n'),
            "tetherctl {args:?} leaks a non-printable character:\n{}",
            tetherctl::format::terminal_safe(&out)
        );
    }
    for agent in &agents {
        let out = server
            .cli(&["agents", "get", agent])
            .await
            .expect("agents get");
        assert!(out.chars().all(|c| is_printable(c) || c == '\n'), "{out}");
    }

    let mut shown = Vec::new();
    let json: Vec<Vec<&str>> = vec![
        vec!["agents", "list", "-o", "json"],
        vec!["tokens", "list", "-o", "json"],
        vec!["enroll-token", "list", "-o", "json"],
        vec!["orgs", "list", "-o", "json"],
        vec!["metrics", &first, "--step", "0s", "-o", "json"],
        vec!["audit", "-o", "json"],
    ];
    for agent in &agents {
        let out = server
            .cli(&["agents", "get", agent, "-o", "json"])
            .await
            .expect("agents get -o json");
        let value: Value = serde_json::from_str(&out).expect("valid JSON");
        strings(&value, &mut shown);
    }
    for args in &json {
        let out = server
            .cli(args)
            .await
            .unwrap_or_else(|e| panic!("tetherctl {args:?}: {e}"));
        assert!(out.chars().all(|c| is_printable(c) || c == '\n'), "{out}");
        let value: Value = serde_json::from_str(&out).expect("valid JSON");
        strings(&value, &mut shown);
    }
    let watch = server
        .cli(&["agents", "watch", "--max-events", &n_watch, "-o", "json"])
        .await
        .expect("agents watch -o json");
    for line in watch.lines() {
        let value: Value = serde_json::from_str(line).expect("one JSON document per line");
        strings(&value, &mut shown);
    }
    for text in &stored {
        assert!(
            shown.iter().any(|s| s == text),
            "{text:?} is carried exactly in the JSON output"
        );
    }
    drop(sessions);
    server.stop().await;
}
