//! `tetherctl` against a real server, through the same library entry point the binary calls:
//! every output format parses and shows what the server holds, filters reach the server, and
//! failures map to the right `CliError` variant.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::Value;
use tether_proto as pb;
use tether_server::config::Config;
use tether_tests::{
    RawSession, TestServer, cli_at, fast_config, hello, sample, system_info, trace_init,
};
use tetherctl::CliError;

/// A well-formed id nobody has.
const UNKNOWN_ID: &str = "0123456789abcdef";

fn config(dir: &std::path::Path) -> Config {
    let mut config = fast_config(dir);
    // The online agent says nothing after its samples; it must stay online throughout.
    config.liveness.stale_after = Duration::from_secs(60);
    config.liveness.offline_after = Duration::from_secs(120);
    config
}

/// A server with three agents: `web1` (env=prod, online, three samples with cpu 10/20/30),
/// `web2` (env=prod, offline) and `db` (env=dev, offline).
struct Setup {
    server: TestServer,
    config: Config,
    web1: String,
    web2: String,
    db: String,
    /// Keeps `web1` online.
    _session: RawSession,
    _dir: tempfile::TempDir,
}

impl Setup {
    async fn new() -> Self {
        trace_init();
        let dir = tempfile::tempdir().expect("tempdir");
        let config = config(dir.path());
        let server = TestServer::start(config.clone()).await;
        let (web1, credential) = server.enroll("cli-web-1", &[("env", "prod")]).await;
        let (web2, _) = server.enroll("cli-web-2", &[("env", "prod")]).await;
        let (db, _) = server.enroll("cli-db-1", &[("env", "dev")]).await;
        let (mut session, _) = RawSession::hello_with(
            &server,
            &credential,
            hello(&web1, "cli-web-1", &[("env", "prod")]),
        )
        .await
        .expect("session");
        session
            .send(pb::connect_request::Message::Metrics(pb::MetricsReport {
                deferred_seq: 0,
                previous_ack_latency: None,
                samples: [(1, 10.0), (2, 20.0), (3, 30.0)]
                    .into_iter()
                    .map(|(seq, cpu)| pb::MetricsSample {
                        cpu_percent: cpu,
                        ..sample(seq)
                    })
                    .collect(),
            }))
            .await;
        session.wait_ack(3).await.expect("ack");
        Self {
            server,
            config,
            web1,
            web2,
            db,
            _session: session,
            _dir: dir,
        }
    }

    async fn cli(&self, args: &[&str]) -> String {
        self.server
            .cli(args)
            .await
            .unwrap_or_else(|e| panic!("tetherctl {args:?}: {e:?}"))
    }

    async fn json(&self, args: &[&str]) -> Value {
        let out = self.cli(args).await;
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("tetherctl {args:?}: {e}\n{out}"))
    }

    async fn stop(self) {
        self.server.stop().await;
    }
}

/// `agent_id → status` of a JSON agent list.
fn statuses(list: &Value) -> BTreeMap<String, String> {
    list.as_array()
        .expect("a JSON array")
        .iter()
        .map(|a| {
            (
                a["agent_id"].as_str().expect("agent_id").to_owned(),
                a["status"].as_str().expect("status").to_owned(),
            )
        })
        .collect()
}

fn ids<const N: usize>(ids: [&String; N]) -> BTreeSet<String> {
    ids.into_iter().cloned().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_list_in_every_format() {
    let s = Setup::new().await;

    let table = s.cli(&["agents", "list"]).await;
    let header = table.lines().next().expect("a header");
    assert!(
        header.starts_with("ID") && header.contains("STATUS"),
        "{table}"
    );
    assert_eq!(table.lines().count(), 4, "header and three rows:\n{table}");
    for (id, status) in [
        (&s.web1, "online"),
        (&s.web2, "offline"),
        (&s.db, "offline"),
    ] {
        let row = table
            .lines()
            .find(|l| l.starts_with(id.as_str()))
            .unwrap_or_else(|| panic!("no row for {id}:\n{table}"));
        assert!(row.contains(status), "{row}");
    }

    let wide = s.cli(&["agents", "list", "-o", "wide"]).await;
    assert!(
        wide.contains("cli-db-1") && wide.contains("env=dev"),
        "{wide}"
    );

    let json = s.json(&["agents", "list", "-o", "json"]).await;
    let expected: BTreeMap<String, String> = [
        (s.web1.clone(), "online".to_owned()),
        (s.web2.clone(), "offline".to_owned()),
        (s.db.clone(), "offline".to_owned()),
    ]
    .into();
    assert_eq!(statuses(&json), expected);
    let web1 = json
        .as_array()
        .expect("array")
        .iter()
        .find(|a| a["agent_id"] == s.web1.as_str())
        .expect("web1 listed");
    assert_eq!(web1["labels"]["env"], "prod");
    assert_eq!(web1["system"]["hostname"], "cli-web-1");
    assert_eq!(web1["latest_metrics"]["seq"], 3);
    assert_eq!(web1["health"], "ok");

    let csv = s.cli(&["agents", "list", "-o", "csv"]).await;
    let mut lines = csv.lines();
    let header = lines.next().expect("a header row");
    assert!(header.starts_with("agent_id,"), "{csv}");
    assert!(header.split(',').any(|c| c == "status"), "{csv}");
    assert_eq!(lines.count(), 3, "{csv}");

    server_filters(&s).await;
    s.stop().await;
}

async fn server_filters(s: &Setup) {
    let prod = s
        .json(&["agents", "list", "-l", "env=prod", "-o", "json"])
        .await;
    assert_eq!(
        statuses(&prod).into_keys().collect::<BTreeSet<_>>(),
        ids([&s.web1, &s.web2])
    );
    let online = s
        .json(&["agents", "list", "--status", "online", "-o", "json"])
        .await;
    assert_eq!(
        statuses(&online).into_keys().collect::<BTreeSet<_>>(),
        ids([&s.web1])
    );
    let both = s
        .json(&[
            "agents", "list", "--status", "offline", "-l", "env=prod", "-o", "json",
        ])
        .await;
    assert_eq!(
        statuses(&both).into_keys().collect::<BTreeSet<_>>(),
        ids([&s.web2])
    );
    let query = s.json(&["agents", "list", "-q", "DB", "-o", "json"]).await;
    assert_eq!(
        statuses(&query).into_keys().collect::<BTreeSet<_>>(),
        ids([&s.db])
    );
    let limited = s
        .json(&["agents", "list", "--limit", "2", "-o", "json"])
        .await;
    assert_eq!(limited.as_array().map(Vec::len), Some(2));
    let none = s.cli(&["agents", "list", "-l", "env=nope"]).await;
    assert!(!none.contains(s.web1.as_str()), "{none}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_get_as_text_and_json() {
    let s = Setup::new().await;
    let text = s.cli(&["agents", "get", &s.web1]).await;
    for needle in [s.web1.as_str(), "cli-web-1", "online", "env=prod"] {
        assert!(text.contains(needle), "{needle:?} missing:\n{text}");
    }

    let json = s.json(&["agents", "get", &s.db, "-o", "json"]).await;
    assert_eq!(json["agent_id"], s.db.as_str());
    assert_eq!(json["status"], "offline");
    assert_eq!(json["status_reason"], "enrolled");
    assert_eq!(json["labels"]["env"], "dev");
    assert_eq!(json["system"]["hostname"], "cli-db-1");
    assert!(json["recent_transitions"].is_array(), "{json}");

    let err = s
        .server
        .cli(&["agents", "get", UNKNOWN_ID])
        .await
        .expect_err("unknown agent");
    assert!(matches!(err, CliError::NotFound(_)), "{err:?}");
    let err = s
        .server
        .cli(&["agents", "get", "UPPER"])
        .await
        .expect_err("no such agent");
    // Text that cannot be an id is looked up as a name like any other, and not found.
    assert!(matches!(err, CliError::NotFound(_)), "{err:?}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn summary_config_and_metrics() {
    let s = Setup::new().await;

    let summary = s.json(&["summary", "-o", "json"]).await;
    assert_eq!(summary["total"], 3);
    assert_eq!(summary["online"], 1);
    assert_eq!(summary["offline"], 2);
    assert_eq!(summary["stale"], 0);
    assert_eq!(summary["by_os"]["linux"], 3);
    assert_eq!(summary["health"]["ok"], 1);
    assert_eq!(summary["health"]["unknown"], 2);
    let text = s.cli(&["summary"]).await;
    assert!(text.contains("Total"), "{text}");

    let config = s.json(&["config", "-o", "json"]).await;
    let c = &s.config;
    let seconds = |d: Duration| Value::from(d.as_secs_f64());
    assert_eq!(
        config["heartbeat_interval_seconds"],
        seconds(c.liveness.heartbeat_interval)
    );
    assert_eq!(
        config["metrics_interval_seconds"],
        seconds(c.liveness.metrics_interval)
    );
    assert_eq!(
        config["stale_after_seconds"],
        seconds(c.liveness.stale_after)
    );
    assert_eq!(
        config["offline_after_seconds"],
        seconds(c.liveness.offline_after)
    );
    assert_eq!(config["fleet_ttl_seconds"], seconds(c.liveness.fleet_ttl));
    assert_eq!(
        config["metrics_retention_seconds"],
        seconds(c.storage.metrics_retention)
    );
    assert_eq!(
        config["rollup_5m_retention_seconds"],
        seconds(c.storage.rollup_5m_retention)
    );
    assert_eq!(
        config["rollup_1h_retention_seconds"],
        seconds(c.storage.rollup_1h_retention)
    );
    assert_eq!(config["max_message_bytes"], c.limits.max_message_bytes);
    assert_eq!(config["max_labels"], c.limits.max_labels);
    assert_eq!(config["max_label_key_bytes"], c.limits.max_label_key_bytes);
    assert_eq!(
        config["max_label_value_bytes"],
        c.limits.max_label_value_bytes
    );
    assert_eq!(
        config["health_thresholds"]["cpu_critical_percent"],
        c.health.cpu_critical
    );
    assert!(
        config["features"].as_array().is_some_and(|f| !f.is_empty()),
        "{config}"
    );
    let text = s.cli(&["config"]).await;
    assert!(text.contains("Heartbeat interval"), "{text}");

    let points = s
        .json(&[
            "metrics", &s.web1, "--since", "10m", "--step", "0s", "-o", "json",
        ])
        .await;
    let cpus: Vec<f64> = points
        .as_array()
        .expect("array")
        .iter()
        .map(|p| {
            assert_eq!(p["sample_count"], 1, "{p}");
            p["cpu_percent"].as_f64().expect("cpu")
        })
        .collect();
    assert_eq!(cpus, [10.0, 20.0, 30.0]);
    let averaged = s
        .json(&[
            "metrics", &s.web1, "--since", "10m", "--step", "1h", "-o", "json",
        ])
        .await;
    let total: u64 = averaged
        .as_array()
        .expect("array")
        .iter()
        .map(|p| p["sample_count"].as_u64().expect("count"))
        .sum();
    assert_eq!(total, 3, "{averaged}");
    let table = s
        .cli(&["metrics", &s.web1, "--since", "10m", "--step", "0s"])
        .await;
    assert!(table.starts_with("TIME"), "{table}");
    assert_eq!(table.lines().count(), 4, "{table}");
    let empty = s.cli(&["metrics", &s.db, "--since", "10m"]).await;
    assert!(!empty.contains("TIME"), "{empty}");
    let err = s
        .server
        .cli(&["metrics", UNKNOWN_ID, "--since", "10m"])
        .await
        .expect_err("unknown agent");
    assert!(matches!(err, CliError::NotFound(_)), "{err:?}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enroll_token_lifecycle() {
    let s = Setup::new().await;
    let created = s
        .json(&[
            "enroll-token",
            "create",
            "--label",
            "env=dev",
            "--max-uses",
            "2",
            "-o",
            "json",
        ])
        .await;
    let secret = created["secret"].as_str().expect("secret").to_owned();
    let token_id = created["token"]["token_id"]
        .as_str()
        .expect("token_id")
        .to_owned();
    assert_eq!(created["token"]["labels"]["env"], "dev");
    assert_eq!(created["token"]["max_uses"], 2);
    assert_eq!(created["token"]["use_count"], 0);
    assert_eq!(created["token"]["state"], "active");

    // The secret really enrolls an agent, and its label is stamped.
    let enrolled = s
        .server
        .agent_client(Some(&secret))
        .await
        .enroll(pb::EnrollRequest {
            system_info: Some(system_info("cli-new-1")),
            ..Default::default()
        })
        .await
        .expect("enroll with the CLI's token")
        .into_inner();
    let agent = s
        .json(&["agents", "get", &enrolled.agent_id, "-o", "json"])
        .await;
    assert_eq!(agent["labels"]["env"], "dev");

    let list = s.json(&["enroll-token", "list", "-o", "json"]).await;
    let token = list
        .as_array()
        .expect("array")
        .iter()
        .find(|t| t["token_id"] == token_id.as_str())
        .expect("token listed");
    assert_eq!(token["use_count"], 1);
    assert!(
        token.get("secret").is_none(),
        "the secret is never listed: {token}"
    );
    let table = s.cli(&["enroll-token", "list"]).await;
    let row = table
        .lines()
        .find(|l| l.starts_with(token_id.as_str()))
        .unwrap_or_else(|| panic!("no row for {token_id}:\n{table}"));
    assert!(row.contains("1/2"), "{row}");
    assert!(!table.contains(&secret), "{table}");

    let out = s.cli(&["enroll-token", "revoke", &token_id]).await;
    assert!(out.contains("revoked"), "{out}");
    let status = s
        .server
        .agent_client(Some(&secret))
        .await
        .enroll(pb::EnrollRequest {
            system_info: Some(system_info("cli-new-2")),
            ..Default::default()
        })
        .await
        .expect_err("a revoked token enrolls nothing");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    let list = s.json(&["enroll-token", "list", "-o", "json"]).await;
    let token = list
        .as_array()
        .expect("array")
        .iter()
        .find(|t| t["token_id"] == token_id.as_str())
        .expect("token listed");
    assert_eq!(token["revoked"], true);
    assert_eq!(token["state"], "revoked");
    assert_eq!(token["use_count"], 1);

    let err = s
        .server
        .cli(&["enroll-token", "revoke", UNKNOWN_ID])
        .await
        .expect_err("unknown token");
    assert!(matches!(err, CliError::NotFound(_)), "{err:?}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_watch_prints_the_snapshot_as_json_lines() {
    let s = Setup::new().await;
    let out = s
        .cli(&["agents", "watch", "--max-events", "3", "-o", "json"])
        .await;
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(lines.len(), 3, "{out}");
    for line in &lines {
        assert_eq!(line["kind"], "snapshot", "{line}");
    }
    let seen: BTreeSet<String> = lines
        .iter()
        .map(|l| {
            l["agent"]["agent_id"]
                .as_str()
                .expect("agent id")
                .to_owned()
        })
        .collect();
    assert_eq!(seen, ids([&s.web1, &s.web2, &s.db]));

    let out = s
        .cli(&[
            "agents",
            "watch",
            "-l",
            "env=prod",
            "--max-events",
            "2",
            "-o",
            "json",
        ])
        .await;
    let seen: BTreeSet<String> = out
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("json line");
            v["agent"]["agent_id"].as_str().expect("id").to_owned()
        })
        .collect();
    assert_eq!(seen, ids([&s.web1, &s.web2]));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_map_to_their_variants() {
    let s = Setup::new().await;
    let unknown = format!("tether_{UNKNOWN_ID}_{}", "ab".repeat(32));
    for token in ["garbage", unknown.as_str()] {
        let err = s
            .server
            .cli_as(token, &["agents", "list"])
            .await
            .expect_err("bad token");
        assert!(matches!(err, CliError::Unauthenticated(_)), "{err:?}");
    }
    // An enrollment token is a real token, but not one that may read the fleet.
    let enrollment = s.server.enrollment_token().await;
    let err = s
        .server
        .cli_as(&enrollment, &["summary"])
        .await
        .expect_err("enrollment token");
    assert!(matches!(err, CliError::PermissionDenied(_)), "{err:?}");

    let err = s
        .server
        .cli(&["agents", "list", "-l", "bad key=x"])
        .await
        .expect_err("malformed selector");
    assert!(matches!(err, CliError::Usage(_)), "{err:?}");

    // Nothing listens on a port whose listener was just dropped.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let err = cli_at(
        &format!("http://{addr}"),
        &s.server.admin_token,
        &["summary"],
    )
    .await
    .expect_err("nothing listens");
    assert!(matches!(err, CliError::Unreachable { .. }), "{err:?}");
    s.stop().await;
}
