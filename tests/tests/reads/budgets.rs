//! Read RPCs over agents as large as the server accepts: each answer stays within the read
//! budget, so a standard client (4 MiB limit) and `tetherctl` get every agent and every point.

use std::time::SystemTime;

use prost::Message as _;
use tether_server::config::{DEFAULT_MAX_RESPONSE_BYTES, MIN_RESPONSE_BYTES};
use tether_server::convert::fleet::metrics_points_within;
use tether_tests::{MAX_DISKS, create_token, heavy_sample};

use super::*;

/// The 4 MiB a standard gRPC client accepts.
const CLIENT_LIMIT: usize = 4 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_get_and_metrics_answer_within_the_budget_with_agents_at_every_input_limit() {
    trace_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(config(dir.path())).await;
    // Enough agents with the most disks and the longest mount points that one page of them
    // would be over 5 MiB (about 20 with today's limits).
    let per_agent = heavy_sample(1, SystemTime::now(), MAX_DISKS).encoded_len() + 30_000;
    let n = ((5 << 20) / per_agent + 1).clamp(16, 200);
    const SAMPLES: u64 = 30;
    let mut agents = heavy_agents(&server, &server.admin_token, 0..1, SAMPLES, MAX_DISKS).await;
    agents.extend(heavy_agents(&server, &server.admin_token, 1..n, 1, MAX_DISKS).await);

    // Every page fits the budget, and together they hold every agent.
    let mut fleet = server.fleet().await;
    let mut request = pb::ListAgentsRequest {
        page_size: 1000,
        ..Default::default()
    };
    let mut listed = Vec::new();
    let mut pages = 0;
    loop {
        let page = fleet
            .list_agents(request.clone())
            .await
            .expect("a page within the client's limit")
            .into_inner();
        assert!(
            page.encoded_len() <= DEFAULT_MAX_RESPONSE_BYTES,
            "{} bytes",
            page.encoded_len()
        );
        assert_eq!(page.total_size as usize, n);
        pages += 1;
        listed.extend(page.agents.into_iter().map(|a| a.agent_id));
        if page.next_page_token.is_empty() {
            break;
        }
        request.page_token = page.next_page_token;
    }
    assert!(pages > 1, "the agents weigh more than one page");
    let mut want: Vec<String> = agents.iter().map(|(id, _)| id.clone()).collect();
    want.sort();
    assert_eq!(listed, want);
    // So does the CLI, which pages with the default client limit.
    let out = server
        .cli(&["agents", "list", "-o", "json"])
        .await
        .expect("agents list");
    let json: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(json.as_array().map(Vec::len), Some(n));

    // GetAgent: the agent with its history.
    let (id, _) = &agents[0];
    let detail = server.get_agent(id).await.expect("get agent");
    assert!(detail.encoded_len() <= DEFAULT_MAX_RESPONSE_BYTES);
    assert!(!detail.recent_transitions.is_empty());
    assert_eq!(
        detail
            .agent
            .and_then(|a| a.latest_metrics)
            .map(|m| m.disks.len()),
        Some(MAX_DISKS)
    );

    // GetMetrics(step=0) as a viewer: each sample a point, its disks summed.
    let viewer = create_token(&mut server.admin().await, "viewer", pb::Role::Viewer, None)
        .await
        .secret;
    let now = SystemTime::now();
    let points = server
        .fleet_as(Some(&viewer))
        .await
        .get_metrics(pb::GetMetricsRequest {
            agent_id: id.clone(),
            start: Some((now - Duration::from_secs(3600)).into()),
            end: Some((now + Duration::from_secs(60)).into()),
            step: Some(prost_types::Duration::default()),
        })
        .await
        .expect("get metrics")
        .into_inner();
    assert!(points.encoded_len() <= DEFAULT_MAX_RESPONSE_BYTES);
    assert_eq!(points.points.len() as u64, SAMPLES);
    let disks = MAX_DISKS as u64;
    for point in &points.points {
        assert_eq!(point.disk_used_bytes, disks << 30);
        assert_eq!(point.disk_total_bytes, disks * (4 << 30));
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_metrics_keeps_the_newest_points_that_fit_its_budget() {
    trace_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = config(dir.path());
    config.limits.max_response_bytes = MIN_RESPONSE_BYTES;
    let server = TestServer::start(config).await;
    let (id, credential) = server.enroll("dense", &[]).await;
    let (mut session, _) = RawSession::hello(&server, &id, &credential, "dense")
        .await
        .expect("hello");
    let fits = metrics_points_within(MIN_RESPONSE_BYTES);
    let n = u64::try_from(fits).expect("small") + 500;
    // Whole milliseconds: the store keeps sample times at that precision.
    let hour_ago = (SystemTime::now() - Duration::from_secs(3600))
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("after 1970");
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_millis(hour_ago.as_millis() as u64);
    let at = |seq: u64| t0 + Duration::from_millis(seq);
    for first in (1..=n).step_by(500) {
        let samples = (first..=(first + 499).min(n))
            .map(|seq| pb::MetricsSample {
                time: Some(at(seq).into()),
                ..tether_tests::sample(seq)
            })
            .collect();
        session
            .send(pb::connect_request::Message::Metrics(pb::MetricsReport {
                deferred_seq: 0,
                previous_ack_latency: None,
                samples,
            }))
            .await;
    }
    session.wait_ack(n).await.expect("ack");

    let response = server
        .fleet()
        .await
        .get_metrics(pb::GetMetricsRequest {
            agent_id: id.clone(),
            start: Some(t0.into()),
            end: Some(at(n + 1).into()),
            step: Some(prost_types::Duration::default()),
        })
        .await
        .expect("get metrics")
        .into_inner();
    assert!(response.encoded_len() <= MIN_RESPONSE_BYTES.min(CLIENT_LIMIT));
    assert_eq!(response.points.len(), fits);
    let time = |p: &pb::MetricsPoint| SystemTime::try_from(p.time.expect("time")).expect("valid");
    assert_eq!(
        time(&response.points[0]),
        at(n + 1 - fits as u64),
        "the oldest went"
    );
    assert_eq!(time(&response.points[fits - 1]), at(n));
    drop(session);
    server.stop().await;
}
