//! Alerts end to end: rules over RPC, real agents going offline and coming back, and real
//! webhook receivers on `127.0.0.1` (signed Alertmanager payloads, retries, a receiver that
//! hangs, isolation between orgs, restarts).

use std::time::Duration;

use tether_proto as pb;
use tether_server::config::Config;
use tether_tests::{
    AlertClient, Answer, Receiver, TestAgent, TestServer, create_token, eventually, fast_config,
};
use tokio_stream::StreamExt as _;
use tonic::Code;

const SECRET: &str = "webhook-secret";

fn alert_config(dir: &std::path::Path) -> Config {
    let mut config = fast_config(dir);
    config.alerts.interval = Duration::from_millis(100);
    config.alerts.delivery.timeout = Duration::from_secs(2);
    config.alerts.delivery.retry_first = Duration::from_millis(100);
    config.alerts.delivery.retry_max = Duration::from_millis(300);
    config.alerts.delivery.max_attempts = 200;
    config
}

fn webhook(url: &str, format: pb::WebhookFormat, secret: &str) -> pb::Webhook {
    pb::Webhook {
        url: url.to_owned(),
        format: format as i32,
        secret: secret.to_owned(),
        has_secret: false,
    }
}

fn offline_rule(name: &str, selector: &str, hook: Option<pb::Webhook>) -> pb::AlertRule {
    pb::AlertRule {
        name: name.to_owned(),
        kind: pb::AlertRuleKind::AgentOffline as i32,
        selector: selector.to_owned(),
        for_duration: Some(prost_types::Duration {
            seconds: 1,
            nanos: 0,
        }),
        webhook: hook,
        summary: "a machine stopped reporting".to_owned(),
        ..Default::default()
    }
}

async fn create(
    client: &mut AlertClient,
    rule: pb::AlertRule,
) -> Result<pb::AlertRule, tonic::Status> {
    client
        .create_alert_rule(pb::CreateAlertRuleRequest { rule: Some(rule) })
        .await
        .map(|r| r.into_inner().rule.expect("the rule"))
}

async fn list(client: &mut AlertClient, state: pb::AlertState) -> Vec<pb::Alert> {
    client
        .list_alerts(pb::ListAlertsRequest {
            state: state as i32,
            ..Default::default()
        })
        .await
        .expect("list alerts")
        .into_inner()
        .alerts
}

/// Starts an agent for the machine `host` and waits until it is online.
async fn online_agent(
    server: &TestServer,
    host: &str,
    labels: &[(&str, &str)],
) -> (TestAgent, String) {
    let agent = server.spawn_agent(host, labels).await;
    let id = agent.id().await;
    server.wait_status(&id, pb::AgentStatus::Online).await;
    (agent, id)
}

#[tokio::test]
async fn an_offline_agent_fires_a_signed_alertmanager_alert_that_resolves_when_it_returns() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(alert_config(dir.path())).await;
    let receiver = Receiver::start(Answer::Ok).await;
    let mut alerts = server.alerts_as(Some(&server.admin_token)).await;
    let hook = webhook(&receiver.url, pb::WebhookFormat::Alertmanager, SECRET);
    let rule = create(
        &mut alerts,
        offline_rule("lost-prod", "env=prod", Some(hook)),
    )
    .await
    .expect("create rule");
    assert!(
        rule.webhook
            .as_ref()
            .is_some_and(|w| w.has_secret && w.secret.is_empty())
    );

    let mut watch = alerts
        .watch_alerts(pb::WatchAlertsRequest {})
        .await
        .expect("watch")
        .into_inner();
    let synced = watch.next().await.expect("an event").expect("ok");
    assert_eq!(synced.kind, pb::AlertEventKind::Synced as i32);

    let (agent, id) = online_agent(&server, "web-1", &[("env", "prod")]).await;
    // An agent outside the selector never fires this rule.
    let (other, _) = online_agent(&server, "dev-1", &[("env", "dev")]).await;
    other.stop().await;

    let state_dir = agent.stop().await;
    let firing = receiver.wait_for(1).await;
    let body = firing[0].verified_json(SECRET);
    assert_eq!(body["version"], "4");
    assert_eq!(body["status"], "firing");
    assert_eq!(body["groupLabels"]["alertname"], "lost-prod");
    assert_eq!(body["alerts"].as_array().map(Vec::len), Some(1));
    let alert = &body["alerts"][0];
    assert_eq!(alert["status"], "firing");
    assert_eq!(alert["labels"]["agent_id"], id.as_str());
    assert_eq!(alert["endsAt"], "0001-01-01T00:00:00Z");
    assert!(firing[0].headers.contains_key("x-tether-delivery"));

    let event = watch.next().await.expect("an event").expect("ok");
    assert_eq!(event.kind, pb::AlertEventKind::Fired as i32);
    let fired = event.alert.expect("the alert");
    assert_eq!(fired.agent_id, id);
    let listed = list(&mut alerts, pb::AlertState::Firing).await;
    assert_eq!(
        listed.iter().map(|a| &a.alert_id).collect::<Vec<_>>(),
        [&fired.alert_id]
    );

    // The agent comes back with its own state directory: the alert resolves.
    let back = server.spawn_agent_in("web-1", &[("env", "prod")], state_dir, None, None);
    server.wait_status(&id, pb::AgentStatus::Online).await;
    let both = receiver.wait_for(2).await;
    let body = both[1].verified_json(SECRET);
    assert_eq!(body["status"], "resolved");
    assert_eq!(body["alerts"][0]["status"], "resolved");
    assert_eq!(body["alerts"][0]["fingerprint"], alert["fingerprint"]);
    assert_ne!(body["alerts"][0]["endsAt"], "0001-01-01T00:00:00Z");
    let event = watch.next().await.expect("an event").expect("ok");
    assert_eq!(event.kind, pb::AlertEventKind::Resolved as i32);
    assert!(list(&mut alerts, pb::AlertState::Firing).await.is_empty());
    let resolved = list(&mut alerts, pb::AlertState::Resolved).await;
    assert_eq!(resolved[0].alert_id, fired.alert_id);
    assert!(resolved[0].ends_at.is_some());
    // Nothing about the agent outside the selector, ever.
    assert_eq!(receiver.received().len(), 2);
    back.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn a_receiver_that_is_down_then_up_gets_the_retries() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(alert_config(dir.path())).await;
    let addr = Receiver::unused_addr().await;
    let mut alerts = server.alerts_as(Some(&server.admin_token)).await;
    let hook = webhook(
        &format!("http://{addr}/hook"),
        pb::WebhookFormat::Json,
        SECRET,
    );
    create(&mut alerts, offline_rule("lost", "", Some(hook)))
        .await
        .expect("create rule");
    let (agent, id) = online_agent(&server, "web-1", &[]).await;
    agent.stop().await;
    eventually("the alert to fire", || async {
        let mut alerts = alerts.clone();
        (!list(&mut alerts, pb::AlertState::Firing).await.is_empty()).then_some(())
    })
    .await;
    eventually("a failed attempt to be retried", || async {
        (server.metrics.alerts.delivery_retries.get() >= 2).then_some(())
    })
    .await;
    let receiver = Receiver::start_at(addr, Answer::Ok)
        .await
        .expect("the port is free again");
    let got = receiver.wait_for(1).await;
    let body = got[0].verified_json(SECRET);
    assert_eq!(body["version"], "tether.alerts.v1");
    assert_eq!(body["alerts"][0]["state"], "firing");
    assert_eq!(body["alerts"][0]["agent_id"], id.as_str());
    server.stop().await;
}

#[tokio::test]
async fn a_hanging_receiver_does_not_delay_another_rules_webhook() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = alert_config(dir.path());
    // An attempt may hang this long: far longer than this test waits for the other webhook.
    config.alerts.delivery.timeout = Duration::from_secs(600);
    let server = TestServer::start(config).await;
    let hanging = Receiver::start(Answer::Hang).await;
    let healthy = Receiver::start(Answer::Ok).await;
    let mut alerts = server.alerts_as(Some(&server.admin_token)).await;
    for (name, url) in [("a-hangs", &hanging.url), ("b-answers", &healthy.url)] {
        let hook = webhook(url, pb::WebhookFormat::Alertmanager, SECRET);
        create(&mut alerts, offline_rule(name, "", Some(hook)))
            .await
            .expect("create rule");
    }
    let (agent, id) = online_agent(&server, "web-1", &[]).await;
    let state_dir = agent.stop().await;
    // Both fire in the same pass; the hanging receiver holds its request, the other answers.
    hanging.wait_for(1).await;
    let got = healthy.wait_for(1).await;
    assert_eq!(got[0].verified_json(SECRET)["status"], "firing");
    // And keeps being served: the resolution arrives while the first request still hangs.
    let back = server.spawn_agent_in("web-1", &[], state_dir, None, None);
    server.wait_status(&id, pb::AgentStatus::Online).await;
    let got = healthy.wait_for(2).await;
    assert_eq!(got[1].verified_json(SECRET)["status"], "resolved");
    assert_eq!(
        hanging.received().len(),
        1,
        "the hanging webhook's queue waits behind it"
    );
    // RPCs are not held up either.
    list(&mut alerts, pb::AlertState::Unspecified).await;
    back.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn rules_and_alerts_never_cross_orgs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(alert_config(dir.path())).await;
    let ours = Receiver::start(Answer::Ok).await;
    let theirs = Receiver::start(Answer::Ok).await;
    let other = server.create_org("other").await;
    let mut default_alerts = server.alerts_as(Some(&server.admin_token)).await;
    let mut other_alerts = server.alerts_as(Some(&other.admin_secret)).await;
    let hook = |r: &Receiver| Some(webhook(&r.url, pb::WebhookFormat::Json, SECRET));
    create(&mut default_alerts, offline_rule("lost", "", hook(&ours)))
        .await
        .expect("ours");
    // The same name in another org is another rule; its empty selector selects every agent of
    // its own org only.
    create(&mut other_alerts, offline_rule("lost", "", hook(&theirs)))
        .await
        .expect("theirs");
    let (agent, _) = online_agent(&server, "web-1", &[]).await;
    agent.stop().await;
    ours.wait_for(1).await;
    assert_eq!(
        list(&mut default_alerts, pb::AlertState::Firing)
            .await
            .len(),
        1
    );
    // Several passes later, the other org still has nothing.
    let passes = server.metrics.alerts.evaluations.get();
    eventually("more evaluation passes", || async {
        (server.metrics.alerts.evaluations.get() >= passes + 5).then_some(())
    })
    .await;
    assert!(
        list(&mut other_alerts, pb::AlertState::Unspecified)
            .await
            .is_empty()
    );
    assert!(theirs.received().is_empty());
    let mut watch = other_alerts
        .watch_alerts(pb::WatchAlertsRequest {})
        .await
        .expect("watch")
        .into_inner();
    let first = watch.next().await.expect("an event").expect("ok");
    assert_eq!(
        first.kind,
        pb::AlertEventKind::Synced as i32,
        "no snapshot of our alert"
    );
    // Deleting ours from the other org deletes theirs, not ours.
    other_alerts
        .delete_alert_rule(pb::DeleteAlertRuleRequest {
            name: "lost".to_owned(),
        })
        .await
        .expect("delete theirs");
    let err = other_alerts
        .delete_alert_rule(pb::DeleteAlertRuleRequest {
            name: "lost".to_owned(),
        })
        .await
        .expect_err("already gone");
    assert_eq!(err.code(), Code::NotFound);
    let rules = default_alerts
        .list_alert_rules(pb::ListAlertRulesRequest {})
        .await
        .expect("rules")
        .into_inner()
        .rules;
    assert_eq!(rules.len(), 1);
    server.stop().await;
}

#[tokio::test]
async fn bad_rules_are_refused_and_roles_are_enforced() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = alert_config(dir.path());
    config.alerts.rules = tether_server::alert::file::parse(
        "[[rule]]\norg = \"default\"\nname = \"from-file\"\nkind = \"health_critical\"\nfor = \"1m\"",
        dir.path(),
    )
    .expect("rules file")
    .rules;
    let server = TestServer::start(config).await;
    let mut alerts = server.alerts_as(Some(&server.admin_token)).await;
    let ratio = |r: f64| pb::AlertRule {
        kind: pb::AlertRuleKind::OnlineRatioBelow as i32,
        min_online_ratio: r,
        ..offline_rule("ratio", "", None)
    };
    let zero = pb::AlertRule {
        for_duration: Some(prost_types::Duration::default()),
        ..offline_rule("zero", "", None)
    };
    let bad_hook = offline_rule(
        "hook",
        "",
        Some(webhook("ftp://example.com/", pb::WebhookFormat::Json, "")),
    );
    for bad in [
        offline_rule("sel", "env=prod,,x", None),
        offline_rule("sel", "Bad Key=1", None),
        zero,
        ratio(1.5),
        ratio(-0.1),
        offline_rule("Not An Id", "", None),
        bad_hook,
        pb::AlertRule {
            kind: 0,
            ..offline_rule("kind", "", None)
        },
    ] {
        let err = create(&mut alerts, bad.clone()).await.expect_err("refused");
        assert_eq!(err.code(), Code::InvalidArgument, "{bad:?}: {err}");
    }
    create(&mut alerts, ratio(0.5))
        .await
        .expect("a good ratio rule");
    let err = create(&mut alerts, ratio(0.5))
        .await
        .expect_err("duplicate");
    assert_eq!(err.code(), Code::AlreadyExists);
    let err = alerts
        .delete_alert_rule(pb::DeleteAlertRuleRequest {
            name: "from-file".to_owned(),
        })
        .await
        .expect_err("the file's rule");
    assert_eq!(err.code(), Code::FailedPrecondition);

    // Viewers read, operators manage.
    let mut admin = server.admin().await;
    let viewer = create_token(&mut admin, "v", pb::Role::Viewer, None)
        .await
        .secret;
    let operator = create_token(&mut admin, "o", pb::Role::Operator, None)
        .await
        .secret;
    let mut as_viewer = server.alerts_as(Some(&viewer)).await;
    let listed = as_viewer
        .list_alert_rules(pb::ListAlertRulesRequest {})
        .await
        .expect("viewers read rules")
        .into_inner()
        .rules;
    let sources: Vec<(String, i32)> = listed.iter().map(|r| (r.name.clone(), r.source)).collect();
    assert_eq!(
        sources,
        [
            ("from-file".to_owned(), pb::AlertRuleSource::Config as i32),
            ("ratio".to_owned(), pb::AlertRuleSource::Api as i32)
        ]
    );
    list(&mut as_viewer, pb::AlertState::Unspecified).await;
    let err = create(&mut as_viewer, offline_rule("v", "", None))
        .await
        .expect_err("viewer");
    assert_eq!(err.code(), Code::PermissionDenied);
    let mut as_operator = server.alerts_as(Some(&operator)).await;
    create(&mut as_operator, offline_rule("o", "", None))
        .await
        .expect("operators manage");
    as_operator
        .delete_alert_rule(pb::DeleteAlertRuleRequest {
            name: "o".to_owned(),
        })
        .await
        .expect("operators delete");
    server.stop().await;
}

#[tokio::test]
async fn firing_alerts_survive_a_restart_without_firing_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let receiver = Receiver::start(Answer::Ok).await;
    let server = TestServer::start(alert_config(dir.path())).await;
    let mut alerts = server.alerts_as(Some(&server.admin_token)).await;
    let hook = webhook(&receiver.url, pb::WebhookFormat::Alertmanager, SECRET);
    create(&mut alerts, offline_rule("lost", "", Some(hook)))
        .await
        .expect("create rule");
    let (agent, id) = online_agent(&server, "web-1", &[]).await;
    let state_dir = agent.stop().await;
    receiver.wait_for(1).await;
    let before = list(&mut alerts, pb::AlertState::Firing).await;
    assert_eq!(before.len(), 1);
    server.stop().await;

    let server = TestServer::start(alert_config(dir.path())).await;
    let mut alerts = server.alerts_as(Some(&server.admin_token)).await;
    let passes = server.metrics.alerts.evaluations.get();
    eventually("evaluation passes after the restart", || async {
        (server.metrics.alerts.evaluations.get() >= passes + 20).then_some(())
    })
    .await;
    let after = list(&mut alerts, pb::AlertState::Firing).await;
    assert_eq!(after, before, "the same alert, still firing");
    assert_eq!(receiver.received().len(), 1, "not announced again");
    let rules = alerts
        .list_alert_rules(pb::ListAlertRulesRequest {})
        .await
        .expect("rules")
        .into_inner()
        .rules;
    assert_eq!(rules.len(), 1, "the rule was stored");

    let back = server.spawn_agent_in("web-1", &[], state_dir, None, None);
    server.wait_status(&id, pb::AgentStatus::Online).await;
    let got = receiver.wait_for(2).await;
    assert_eq!(got[1].verified_json(SECRET)["status"], "resolved");
    back.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn alert_metrics_count_firing_rules_and_deliveries_and_pass_promtool() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = alert_config(dir.path());
    config.metrics_listen = Some("127.0.0.1:0".parse().expect("addr"));
    let server = TestServer::start(config).await;
    let receiver = Receiver::start(Answer::Ok).await;
    let mut alerts = server.alerts_as(Some(&server.admin_token)).await;
    let hook = webhook(&receiver.url, pb::WebhookFormat::Alertmanager, SECRET);
    create(&mut alerts, offline_rule("lost", "", Some(hook)))
        .await
        .expect("create rule");
    let (agent, _) = online_agent(&server, "web-1", &[]).await;
    agent.stop().await;
    receiver.wait_for(1).await;
    let addr = server.metrics_addr.expect("metrics are on");
    let firing = r#"tether_alerts_firing{org="default",rule="lost"}"#;
    let delivered = r#"tether_alert_deliveries_total{outcome="delivered"}"#;
    let scraped = eventually("the alert and its delivery counted", || async {
        let scraped = tether_tests::scrape(addr, Some("text/plain")).await.ok()?;
        (scraped.value(firing) == Some(1.0) && scraped.value(delivered) == Some(1.0))
            .then_some(scraped)
    })
    .await;
    assert!(
        scraped
            .value("tether_alert_evaluations_total")
            .unwrap_or(0.0)
            >= 1.0
    );
    let body = &scraped.body;
    if let Some(verdict) = tether_tests::promtool_check(body) {
        verdict.unwrap_or_else(|said| panic!("promtool check metrics failed:\n{said}\n{body}"));
    }
    server.stop().await;
}

#[tokio::test]
async fn tetherctl_manages_rules_and_lists_and_watches_alerts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(alert_config(dir.path())).await;
    let receiver = Receiver::start(Answer::Ok).await;
    let secret_file = dir.path().join("hook.secret");
    std::fs::write(&secret_file, format!("{SECRET}\n")).expect("secret file");
    let secret_path = secret_file.to_str().expect("utf-8 path");
    let created = server
        .cli(&[
            "alerts",
            "rules",
            "create",
            "lost",
            "--kind",
            "offline",
            "-l",
            "env=prod",
            "--for",
            "1s",
            "--webhook",
            &receiver.url,
            "--webhook-secret-file",
            secret_path,
            "-o",
            "json",
        ])
        .await
        .expect("create");
    let rule: serde_json::Value = serde_json::from_str(&created).expect("json");
    assert_eq!(rule["kind"], "agent_offline");
    assert_eq!(rule["for_seconds"], 1.0);
    assert_eq!(rule["webhook"]["has_secret"], true);
    assert!(!created.contains(SECRET), "the secret is never shown");
    let err = server
        .cli(&[
            "alerts", "rules", "create", "bad", "--kind", "offline", "--for", "0s",
        ])
        .await
        .expect_err("a zero hold time");
    assert!(err.to_string().contains("greater than zero"), "{err}");
    let table = server
        .cli(&["alerts", "rules", "list"])
        .await
        .expect("rules");
    assert!(
        table.contains("lost") && table.contains("signed"),
        "{table}"
    );

    let (agent, id) = online_agent(&server, "web-1", &[("env", "prod")]).await;
    agent.stop().await;
    receiver.wait_for(1).await[0].verified_json(SECRET);
    let listed = server
        .cli(&["alerts", "list", "--state", "firing", "-o", "json"])
        .await
        .expect("list");
    let listed: serde_json::Value = serde_json::from_str(&listed).expect("json");
    assert_eq!(listed[0]["agent_id"], id.as_str());
    assert_eq!(listed[0]["state"], "firing");
    let watched = server
        .cli(&["alerts", "watch", "-o", "json", "--max-events", "1"])
        .await
        .expect("watch");
    let lines: Vec<serde_json::Value> = watched
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines[0]["kind"], "snapshot");
    assert_eq!(lines[0]["alert"]["agent_id"], id.as_str());
    let table = server.cli(&["alerts", "list"]).await.expect("list");
    assert!(
        table.contains("firing") && table.contains("web-1"),
        "{table}"
    );

    server
        .cli(&["alerts", "rules", "delete", "lost"])
        .await
        .expect("delete");
    let resolved = receiver.wait_for(2).await;
    assert_eq!(resolved[1].verified_json(SECRET)["status"], "resolved");
    let after = server
        .cli(&["alerts", "list", "--state", "firing", "-o", "json"])
        .await
        .expect("list");
    assert_eq!(after.trim(), "[]");
    server.stop().await;
}

#[tokio::test]
async fn alert_watches_per_org_are_bounded_and_a_closed_one_frees_its_place() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = alert_config(dir.path());
    config.limits.max_watches_per_org = 2;
    let server = TestServer::start(config).await;
    let alerts = server.alerts_as(Some(&server.admin_token)).await;
    let open = || {
        let mut alerts = alerts.clone();
        async move {
            let mut stream = alerts
                .watch_alerts(pb::WatchAlertsRequest {})
                .await?
                .into_inner();
            stream.next().await.expect("an event")?;
            Ok::<_, tonic::Status>(stream)
        }
    };
    let first = open().await.expect("first");
    let _second = open().await.expect("second");
    let refused = open().await.expect_err("third");
    assert_eq!(refused.code(), Code::ResourceExhausted);
    drop(first);
    eventually("the closed watch's place to be free", || async {
        open().await.ok().map(drop)
    })
    .await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tetherctl_alerts_watch_resumes_after_a_restart_with_the_firing_alerts() {
    use clap::Parser as _;
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(alert_config(dir.path())).await;
    let mut alerts = server.alerts_as(Some(&server.admin_token)).await;
    create(&mut alerts, offline_rule("lost", "", None))
        .await
        .expect("create rule");
    let (agent, id) = online_agent(&server, "web-1", &[]).await;
    agent.stop().await;
    let (url, token, addr) = (server.url.clone(), server.admin_token.clone(), server.addr);
    let cli = tetherctl::Cli::try_parse_from([
        "tetherctl",
        "--server",
        &url,
        "--token",
        &token,
        "alerts",
        "watch",
        "-o",
        "json",
    ])
    .expect("parses");
    let out = tether_tests::SharedBuffer::default();
    let watch = {
        let mut out = out.clone();
        tokio::spawn(async move {
            tetherctl::run_with_env(cli, &tetherctl::Env::default(), &mut out).await
        })
    };
    let lines = |out: &tether_tests::SharedBuffer| -> Vec<serde_json::Value> {
        out.lines()
            .iter()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect()
    };
    let synced = |out: &tether_tests::SharedBuffer| {
        lines(out).iter().filter(|l| l["kind"] == "synced").count()
    };
    eventually("the alert fired and watched", || async {
        lines(&out)
            .iter()
            .any(|l| l["alert"]["agent_id"] == id.as_str())
            .then_some(())
    })
    .await;
    server.stop().await;
    let server = TestServer::start_at(addr, alert_config(dir.path())).await;
    eventually("a fresh snapshot after the restart", || async {
        (synced(&out) == 2).then_some(())
    })
    .await;
    let after: Vec<serde_json::Value> = lines(&out)
        .into_iter()
        .skip_while(|l| l["kind"] != "synced")
        .skip(1)
        .take_while(|l| l["kind"] != "synced")
        .collect();
    assert!(
        after
            .iter()
            .any(|l| l["kind"] == "snapshot" && l["alert"]["agent_id"] == id.as_str()),
        "the stored firing alert is in the new snapshot: {after:?}"
    );
    assert!(!watch.is_finished(), "the watch kept going");
    watch.abort();
    server.stop().await;
}
