//! `tetherctl`'s kubectl habits against a real server: deadlines (`--request-timeout`), sentences for a wrong port or
//! scheme, agents named by name or id prefix, `-o name`, `--no-headers`, `--sort-by`,
//! `version`, `completion`, an automatic metrics step, the newest audit events first, a watch
//! that marks its snapshot and resumes after a server restart, and what a restarted server
//! still shows of an agent.

use std::time::{Duration, Instant};

use serde_json::Value;
use tether_proto as pb;
use tether_server::config::Config;
use tether_tests::{
    SharedBuffer, TestServer, TlsOptions, cli_at, eventually, fast_config, trace_init,
};
use tetherctl::CliError;

fn config(dir: &std::path::Path) -> Config {
    let mut config = fast_config(dir);
    config.liveness.stale_after = Duration::from_secs(60);
    config.liveness.offline_after = Duration::from_secs(120);
    config.metrics_listen = Some("127.0.0.1:0".parse().expect("addr"));
    config
}

async fn start() -> (TestServer, tempfile::TempDir) {
    trace_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(config(dir.path())).await;
    (server, dir)
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// Runs `tetherctl` with no token anywhere (`Env::default()`).
async fn cli_without_token(args: &[&str]) -> Result<String, CliError> {
    use clap::Parser as _;
    let mut argv = vec!["tetherctl"];
    argv.extend_from_slice(args);
    let cli = tetherctl::Cli::try_parse_from(argv).map_err(|e| CliError::Usage(e.to_string()))?;
    let mut out = Vec::new();
    tetherctl::run_with_env(cli, &tetherctl::Env::default(), &mut out).await?;
    Ok(String::from_utf8(out).expect("utf-8"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_bounds_a_server_that_never_answers() {
    trace_init();
    // Accepts connections (the kernel's backlog) and never says a word.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", silent.local_addr().expect("addr"));
    let started = Instant::now();
    let err = cli_at(&url, "t", &["--request-timeout", "1s", "summary"])
        .await
        .expect_err("no answer");
    let took = started.elapsed();
    assert!(matches!(err, CliError::Timeout { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains(&url) && text.contains("1s") && text.contains("--request-timeout"),
        "{text}"
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");
    let err = cli_at(&url, "t", &["--request-timeout", "0s", "summary"])
        .await
        .expect_err("zero");
    assert!(matches!(err, CliError::Usage(_)), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_port_or_scheme_gets_a_sentence_not_transport_internals() {
    let (server, _dir) = start().await;
    let metrics = server.metrics_addr.expect("metrics on");
    let token = server.admin_token.clone();
    let cases = [
        (format!("http://{metrics}"), "metrics port"),
        (format!("https://{}", server.addr), "does not speak TLS"),
    ];
    for (url, expected) in cases {
        let err = cli_at(&url, &token, &["summary"]).await.expect_err(&url);
        assert!(
            matches!(err, CliError::Unreachable { .. }),
            "{url}: {err:?}"
        );
        let text = err.to_string();
        assert!(text.contains(&url) && text.contains(expected), "{text}");
        assert!(!text.contains("grpc-status header") && !text.contains("InvalidContentType"));
    }
    server.stop().await;

    let dir = tempfile::tempdir().expect("tempdir");
    let tls = TestServer::start_tls(fast_config(dir.path()), TlsOptions::default()).await;
    let plain = format!("http://{}", tls.addr);
    let err = cli_at(&plain, &tls.admin_token, &["summary"])
        .await
        .expect_err("plaintext to TLS");
    assert!(err.to_string().contains("use an https://"), "{err}");
    // The development CA is not among the system's roots.
    let err = cli_at(&tls.url, &tls.admin_token, &["summary"])
        .await
        .expect_err("untrusted");
    let text = err.to_string();
    assert!(
        text.contains("not trusted") && text.contains("--ca-cert"),
        "{text}"
    );
    tls.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_are_found_by_name_hostname_or_id_prefix() {
    let (server, _dir) = start().await;
    let web = server.spawn_agent("lookup-web", &[]).await;
    let web_id = web.id().await;
    server.wait_status(&web_id, pb::AgentStatus::Online).await;
    let (twin_a, _) = server.enroll("lookup-twin", &[]).await;
    let (twin_b, _) = server.enroll("lookup-twin", &[]).await;

    for text in [
        web_id.clone(),
        "lookup-web".to_owned(),
        "LOOKUP-WEB".to_owned(),
        web_id[..6].to_owned(),
        web_id[..6].to_uppercase(),
    ] {
        let out = server
            .cli(&["agents", "get", &text, "-o", "json"])
            .await
            .unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(json(&out)["agent_id"], web_id.as_str(), "{text}");
    }
    let err = server
        .cli(&["agents", "get", "lookup-twin"])
        .await
        .expect_err("two agents");
    let text = err.to_string();
    assert!(matches!(err, CliError::Usage(_)), "{err:?}");
    assert!(text.contains(&twin_a) && text.contains(&twin_b), "{text}");
    // Anything else, malformed as an id or not, is simply not found.
    for junk in ["08ADF3E9B0C1D2E3F", "no-such-agent", "zz"] {
        let err = server.cli(&["agents", "get", junk]).await.expect_err(junk);
        assert!(matches!(err, CliError::NotFound(_)), "{junk}: {err:?}");
        assert_eq!(err.to_string(), format!("agent {junk} not found"));
    }
    // Every command that takes an agent takes it the same way.
    server
        .cli(&["metrics", "lookup-web", "--since", "5m"])
        .await
        .expect("metrics by name");
    server
        .cli(&["agents", "delete", &twin_a[..8], "--yes"])
        .await
        .expect("delete by prefix");
    let out = server
        .cli(&["agents", "get", "lookup-twin", "-o", "json"])
        .await
        .expect("one twin left");
    assert_eq!(json(&out)["agent_id"], twin_b.as_str());
    web.stop().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_output_for_scripts_names_headers_and_order() {
    let (server, _dir) = start().await;
    let (b, _) = server.enroll("order-b", &[]).await;
    let (a, _) = server.enroll("order-a", &[]).await;
    let (c, _) = server.enroll("order-c", &[]).await;

    let names = server
        .cli(&["agents", "list", "-o", "name", "--sort-by", "name"])
        .await
        .expect("-o name");
    assert_eq!(names, format!("{a}\n{b}\n{c}\n"));
    let table = server
        .cli(&["agents", "list", "--no-headers", "--sort-by", "name"])
        .await
        .expect("--no-headers");
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    assert!(
        lines[0].starts_with(&a) && lines[2].starts_with(&c),
        "{table}"
    );
    assert!(!table.contains("NAME"), "{table}");
    let csv = server
        .cli(&["agents", "list", "-o", "csv", "--no-headers"])
        .await
        .expect("csv");
    assert_eq!(csv.lines().count(), 3, "{csv}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_names_both_ends_and_completion_needs_no_server() {
    let (server, _dir) = start().await;
    let out = server
        .cli(&["version", "-o", "json"])
        .await
        .expect("version");
    let v = json(&out);
    assert_eq!(v["client_version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["server_version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["server"], server.url.as_str());
    server.stop().await;

    let out = cli_without_token(&["version", "--client"])
        .await
        .expect("no server needed");
    assert!(out.contains(env!("CARGO_PKG_VERSION")), "{out}");
    for shell in ["bash", "zsh", "fish"] {
        let script = cli_without_token(&["completion", shell])
            .await
            .expect("completion");
        assert!(
            script.contains("tetherctl") && script.contains("agents"),
            "{shell}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_metric_ranges_choose_their_step_and_audit_shows_the_newest() {
    let (server, _dir) = start().await;
    let agent = server.spawn_agent("ranged-1", &[]).await;
    let id = agent.id().await;
    eventually("a stored sample", || async {
        let agent = server.get_agent(&id).await.ok()?.agent?;
        (agent.last_durable_seq >= 1).then_some(())
    })
    .await;
    let out = server
        .cli(&["metrics", &id, "--since", "30d", "-o", "json"])
        .await
        .expect("30 days with the automatic step");
    assert!(!json(&out).as_array().expect("points").is_empty(), "{out}");
    let err = server
        .cli(&["metrics", &id, "--since", "30d", "--step", "1m"])
        .await
        .expect_err("an explicit step is taken as given");
    assert!(matches!(err, CliError::InvalidArgument(_)), "{err:?}");

    let mut admin = server.admin().await;
    let mut created = Vec::new();
    for name in ["first", "second", "third"] {
        let token = tether_tests::create_token(&mut admin, name, pb::Role::Viewer, None).await;
        created.push(token.token.expect("the token").token_id);
    }
    let out = server
        .cli(&[
            "audit",
            "--method",
            "CreateToken",
            "--limit",
            "2",
            "-o",
            "json",
        ])
        .await
        .expect("audit");
    let events = json(&out);
    let events = events.as_array().expect("events");
    assert_eq!(events.len(), 2, "{out}");
    let seqs: Vec<u64> = events
        .iter()
        .map(|e| e["seq"].as_u64().expect("seq"))
        .collect();
    assert!(seqs[0] > seqs[1], "newest first: {seqs:?}");
    assert_eq!(events[0]["target"], created[2].as_str(), "{out}");
    assert_eq!(events[1]["target"], created[1].as_str(), "{out}");
    agent.stop().await;
    server.stop().await;
}

/// What `tetherctl` wrote so far, one JSON value per line.
fn json_lines(out: &SharedBuffer) -> Vec<Value> {
    out.lines().iter().map(|line| json(line)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_watch_marks_each_snapshot_and_resumes_after_a_restart() {
    use clap::Parser as _;
    trace_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(config(dir.path())).await;
    let (agent_id, _) = server.enroll("watched-1", &[]).await;
    let (url, token, addr) = (server.url.clone(), server.admin_token.clone(), server.addr);
    let cli = tetherctl::Cli::try_parse_from([
        "tetherctl",
        "--server",
        &url,
        "--token",
        &token,
        "agents",
        "watch",
        "-o",
        "json",
    ])
    .expect("parses");
    let out = SharedBuffer::default();
    let watch = {
        let mut out = out.clone();
        tokio::spawn(async move {
            tetherctl::run_with_env(cli, &tetherctl::Env::default(), &mut out).await
        })
    };
    let synced = |out: &SharedBuffer| {
        json_lines(out)
            .iter()
            .filter(|l| l["kind"] == "synced")
            .count()
    };
    eventually("the first snapshot's marker", || async {
        (synced(&out) == 1).then_some(())
    })
    .await;
    let lines = json_lines(&out);
    assert_eq!(lines[0]["kind"], "snapshot");
    assert_eq!(lines[0]["agent"]["agent_id"], agent_id.as_str());
    assert_eq!(lines[1]["kind"], "synced");
    assert!(lines[1]["agent"].is_null());

    server.stop().await;
    let server = TestServer::start_at(addr, config(dir.path())).await;
    eventually("a fresh snapshot after the restart", || async {
        (synced(&out) == 2).then_some(())
    })
    .await;
    assert!(!watch.is_finished(), "the watch kept going");
    watch.abort();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_still_shows_an_agents_last_metrics_and_first_connection() {
    let (server, dir) = start().await;
    let agent = server.spawn_agent("remembered-1", &[]).await;
    let id = agent.id().await;
    eventually("a stored sample", || async {
        let agent = server.get_agent(&id).await.ok()?.agent?;
        (agent.last_durable_seq >= 2).then_some(())
    })
    .await;
    agent.stop().await;
    let addr = server.addr;
    server.stop().await;
    let server = TestServer::start_at(addr, config(dir.path())).await;

    let out = server
        .cli(&["agents", "get", &id, "-o", "json"])
        .await
        .expect("get");
    let detail = json(&out);
    assert!(detail["latest_metrics"].is_object(), "{out}");
    let transitions = detail["recent_transitions"]
        .as_array()
        .expect("transitions");
    let first = transitions.last().expect("at least one");
    assert_eq!(first["from_status"], "offline", "{out}");
    assert_eq!(first["reason"], "connected", "{out}");
    assert!(
        transitions[..transitions.len() - 1]
            .iter()
            .all(|t| t["reason"] != "connected"),
        "only the first session reads connected: {out}"
    );
    let text = server.cli(&["agents", "get", &id]).await.expect("get");
    assert!(
        text.contains("last reported before it went offline"),
        "{text}"
    );
    assert!(!text.contains("none yet"), "{text}");
    server.stop().await;
}
