//! The whole vertical slice: a real agent enrolls, connects, reports, and an operator sees it
//! through the fleet RPCs and the CLI.

use tether_proto as pb;
use tether_tests::{TestServer, eventually, fast_config, trace_init};

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
