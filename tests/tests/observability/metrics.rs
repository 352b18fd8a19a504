//! The Prometheus listener as Prometheus, `curl` and `promtool` see it.

use futures::StreamExt as _;
use tether_proto as pb;
use tether_tests::{Scrape, eventually, promtool_check, scrape};
use tonic::Code;

use crate::start;

/// Scrapes until `ready` holds, then returns that scrape.
async fn scrape_until(
    addr: std::net::SocketAddr,
    what: &str,
    ready: impl Fn(&Scrape) -> bool,
) -> Scrape {
    eventually(what, || async {
        let scraped = scrape(addr, Some("text/plain")).await.ok()?;
        ready(&scraped).then_some(scraped)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_server_exposes_every_family_and_passes_promtool() {
    let (server, _dir) = start().await;
    let addr = server.metrics_addr.expect("metrics are on");
    let agent = server.spawn_agent("scraped-1", &[]).await;
    let id = agent.id().await;
    server.wait_status(&id, pb::AgentStatus::Online).await;

    // A watch that stays open, an answered call, a refused one and an unknown method.
    let mut watch = server
        .fleet()
        .await
        .watch_agents(pb::WatchAgentsRequest::default())
        .await
        .expect("watch")
        .into_inner();
    watch.next().await.expect("a first event").expect("ok");
    server.get_agent(&id).await.expect("GetAgent");
    let refused = server
        .fleet_as(None)
        .await
        .get_fleet_summary(pb::GetFleetSummaryRequest::default())
        .await
        .expect_err("no token");
    assert_eq!(refused.code(), Code::Unauthenticated);
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel().await);
    health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("health");

    let get_agent_ok =
        r#"tether_rpc_requests_total{method="tether.v1.FleetService/GetAgent",code="OK"}"#;
    let scraped = scrape_until(addr, "samples stored and acked, calls counted", |s| {
        s.value("tether_samples_stored_total").unwrap_or(0.0) >= 1.0
            && s.value("tether_report_residence_seconds_count")
                .unwrap_or(0.0)
                >= 1.0
            && s.value(get_agent_ok).unwrap_or(0.0) >= 1.0
            && s.value("tether_watchers") == Some(1.0)
    })
    .await;
    assert!(scraped.head.starts_with("HTTP/1.1 200"), "{}", scraped.head);
    assert_eq!(
        scraped.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let body = &scraped.body;
    if let Some(verdict) = promtool_check(body) {
        verdict.unwrap_or_else(|said| panic!("promtool check metrics failed:\n{said}\n{body}"));
    }

    let positive = [
        r#"tether_agents{status="online"}"#,
        r#"tether_org_agents{org="default",status="online"}"#,
        "tether_sessions",
        r#"tether_agent_messages_total{kind="hello"}"#,
        r#"tether_agent_messages_total{kind="metrics"}"#,
        r#"tether_status_transitions_total{to="online",reason="connected"}"#,
        "tether_writer_batch_writes_count",
        "tether_writer_commit_seconds_count",
        // Every report handed to the writer is counted, with no wait as with one.
        "tether_ingest_budget_wait_seconds_count",
        "tether_report_residence_seconds_count",
        // The lag probe wakes every 10 ms from the start.
        "tether_runtime_lag_seconds_count",
        r#"tether_rpc_requests_total{method="tether.v1.FleetService/GetFleetSummary",code="UNAUTHENTICATED"}"#,
        r#"tether_rpc_requests_total{method="grpc.health.v1.Health/Check",code="OK"}"#,
        r#"tether_rpc_duration_seconds_count{method="tether.v1.FleetService/GetAgent",code="OK"}"#,
        r#"tether_rpc_in_flight{method="tether.v1.AgentService/Connect"}"#,
        r#"tether_rpc_in_flight{method="tether.v1.FleetService/WatchAgents"}"#,
        "tether_watchers",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        r#"tether_allocator_memory_bytes{kind="allocated"}"#,
        r#"tether_allocator_memory_bytes{kind="resident"}"#,
        "process_open_fds",
        "process_start_time_seconds",
    ];
    for series in positive {
        let value = scraped
            .value(series)
            .unwrap_or_else(|| panic!("no {series}:\n{body}"));
        assert!(value > 0.0, "{series} = {value}\n{body}");
    }
    for zero in [
        r#"tether_agents{status="offline"}"#,
        r#"tether_agents{status="expired"}"#,
    ] {
        assert_eq!(scraped.value(zero), Some(0.0), "{zero}\n{body}");
    }
    let build = format!(
        r#"tether_build_info{{version="{}"}}"#,
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(scraped.value(&build), Some(1.0), "{body}");
    assert!(
        body.contains("# HELP tether_agent_messages_total "),
        "{body}"
    );

    // Ending the watch ends its in-flight call; it is then counted as finished.
    drop(watch);
    let watch_done = r#"tether_rpc_in_flight{method="tether.v1.FleetService/WatchAgents"}"#;
    scrape_until(addr, "the watch to end", |s| {
        s.value(watch_done) == Some(0.0) && s.value("tether_watchers") == Some(0.0)
    })
    .await;

    agent.stop().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_gets_openmetrics_when_it_asks_and_unknown_paths_stay_one_series() {
    let (server, _dir) = start().await;
    let addr = server.metrics_addr.expect("metrics are on");

    // Calls to paths the server does not serve: counted under one `unknown` method, whatever
    // the path, so a caller cannot mint series.
    let channel = server.channel().await;
    for i in 0..3 {
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        grpc.ready().await.expect("ready");
        let path =
            http::uri::PathAndQuery::try_from(format!("/made.up.Service/Method{i}")).expect("path");
        let status = grpc
            .unary::<_, (), _>(
                tonic::Request::new(()),
                path,
                tonic_prost::ProstCodec::<(), ()>::default(),
            )
            .await
            .expect_err("no such method");
        assert_eq!(status.code(), Code::Unimplemented);
    }
    let unknown = r#"tether_rpc_requests_total{method="unknown",code="UNIMPLEMENTED"}"#;
    let scraped = scrape_until(addr, "the unknown calls", |s| s.value(unknown) == Some(3.0)).await;
    assert!(!scraped.body.contains("made.up"), "{}", scraped.body);

    let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
                      version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    let openmetrics = scrape(addr, Some(prometheus)).await.expect("scrape");
    assert_eq!(
        openmetrics.header("content-type"),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    assert!(
        openmetrics.body.ends_with("# EOF\n"),
        "{}",
        openmetrics.body
    );
    assert!(
        openmetrics
            .body
            .contains("# TYPE tether_agent_messages counter"),
        "{}",
        openmetrics.body
    );
    // Without an Accept header (curl), the text format.
    let plain = scrape(addr, None).await.expect("scrape");
    assert!(
        plain
            .header("content-type")
            .is_some_and(|t| t.starts_with("text/plain; version=0.0.4")),
        "{}",
        plain.head
    );
    assert!(!plain.body.contains("# EOF"));
    server.stop().await;
}
