//! The whole vertical slice: a real agent enrolls, connects, reports, and an operator sees it
//! through the fleet RPCs, the CLI and the Prometheus listener the server owns.

use tether_proto as pb;
use tether_tests::{TestServer, eventually, fast_config, scrape_metrics, trace_init};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_enrolls_connects_and_reports() {
    trace_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(fast_config(dir.path())).await;
    let agent = server.spawn_agent("web-1", &[("env", "prod")]).await;
    let id = agent.id().await;

    let online = server.wait_status(&id, pb::AgentStatus::Online).await;
    assert_eq!(online.labels.get("env").map(String::as_str), Some("prod"));
    assert_eq!(
        online.system_info.as_ref().map(|i| i.hostname.as_str()),
        Some("web-1")
    );
    assert!(!online.session_id.is_empty());

    // Metrics arrive, are acked, and are queryable.
    eventually("a stored sample", || {
        let server = &server;
        let id = id.clone();
        async move {
            let agent = server.get_agent(&id).await.ok()?.agent?;
            (agent.last_durable_seq >= 2 && agent.latest_metrics.is_some()).then_some(())
        }
    })
    .await;
    eventually("the agent to see an ack", || async {
        (agent.handle.stats.samples_acked_seq() >= 2).then_some(())
    })
    .await;
    let points = server
        .fleet()
        .await
        .get_metrics(pb::GetMetricsRequest {
            agent_id: id.clone(),
            ..Default::default()
        })
        .await
        .expect("metrics")
        .into_inner()
        .points;
    assert!(!points.is_empty());

    let out = server.cli(&["agents", "list"]).await.expect("cli list");
    assert!(out.contains(&id) && out.contains("online"), "{out}");

    agent.stop().await;
    let offline = server.wait_status(&id, pb::AgentStatus::Offline).await;
    assert_eq!(offline.status_reason, pb::StatusReason::Goodbye as i32);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_serves_prometheus_metrics_and_stops_them_with_itself() {
    trace_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = fast_config(dir.path());
    config.metrics_listen = Some("127.0.0.1:0".parse().expect("addr"));
    let server = TestServer::start(config).await;
    let addr = server.metrics_addr.expect("metrics are on");
    let agent = server.spawn_agent("scraped-1", &[]).await;
    let id = agent.id().await;
    server.wait_status(&id, pb::AgentStatus::Online).await;

    let body = eventually("the session gauge to count the agent", || async {
        let body = scrape_metrics(addr).await.ok()?;
        // The store's gauges are set by its first compaction pass, at start-up.
        (body.lines().any(|line| line == "tether_sessions 1")
            && body.contains("tether_store_log_bytes "))
        .then_some(body)
    })
    .await;
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert!(body.contains("tether_agent_messages_total"), "{body}");
    assert!(
        body.contains("tether_store_memory_limit_bytes{part=\"heads\"}"),
        "{body}"
    );

    agent.stop().await;
    server.stop().await;
    // Stopping the server stopped its listener: nothing answers on that port any more.
    assert!(
        scrape_metrics(addr).await.is_err(),
        "metrics still served after stop"
    );
}
