//! Metrics retention: the background task removes whole chunks of samples older than the
//! configured retention, and only those, while the server keeps ingesting; rollups outlive them.

use std::time::{Duration, SystemTime};

use tether_proto as pb;
use tether_tests::{RawSession, TestServer, eventually, fast_config, trace_init};

fn sample_at(seq: u64, time: SystemTime) -> pb::MetricsSample {
    pb::MetricsSample {
        time: Some(prost_types::Timestamp::from(time)),
        ..tether_tests::sample(seq)
    }
}

async fn points(
    server: &TestServer,
    agent: &str,
    since: SystemTime,
    step: Duration,
) -> Vec<pb::MetricsPoint> {
    server
        .fleet()
        .await
        .get_metrics(pb::GetMetricsRequest {
            agent_id: agent.to_owned(),
            start: Some(prost_types::Timestamp::from(since)),
            end: Some(prost_types::Timestamp::from(
                SystemTime::now() + Duration::from_secs(60),
            )),
            step: Some(step.try_into().expect("a step")),
        })
        .await
        .expect("get metrics")
        .into_inner()
        .points
}

/// Raw samples stored since `since`: one point each at step 0.
async fn stored_seq_count(server: &TestServer, agent: &str, since: SystemTime) -> usize {
    points(server, agent, since, Duration::ZERO).await.len()
}

/// Samples counted in the 5-minute rollups of buckets starting since `since`.
async fn rolled_up_count(server: &TestServer, agent: &str, since: SystemTime) -> u32 {
    points(server, agent, since, Duration::from_secs(300))
        .await
        .iter()
        .map(|p| p.sample_count)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_removes_only_samples_older_than_the_retention() {
    trace_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = fast_config(dir.path());
    config.storage.metrics_retention = Duration::from_secs(3600);
    config.storage.retention_interval = Duration::from_millis(100);
    let server = TestServer::start(config).await;
    let (agent, credential) = server.enroll("old-timer", &[]).await;
    let (session, _) = RawSession::hello(&server, &agent, &credential, "old-timer")
        .await
        .expect("hello");
    let mut session = session;

    // Three samples from three hours ago (past the retention, and more than a chunk's span
    // before the next sample, so they are sealed into a chunk of their own), two from now.
    let now = SystemTime::now();
    let old = now - Duration::from_secs(3 * 3600);
    session
        .send(pb::connect_request::Message::Metrics(pb::MetricsReport {
            deferred_seq: 0,
            previous_ack_latency: None,
            samples: vec![
                sample_at(1, old),
                sample_at(2, old + Duration::from_secs(1)),
                sample_at(3, old + Duration::from_secs(2)),
                sample_at(4, now),
                sample_at(5, now + Duration::from_millis(1)),
            ],
        }))
        .await;
    session.wait_ack(5).await.expect("ack");

    let day_ago = now - Duration::from_secs(86_400);
    assert_eq!(rolled_up_count(&server, &agent, day_ago).await, 5);
    eventually("retention to remove the old samples", || {
        let server = &server;
        let agent = agent.clone();
        async move { (stored_seq_count(server, &agent, day_ago).await == 2).then_some(()) }
    })
    .await;

    // Recent samples stay, the durable mark is untouched, and ingest goes on.
    let got = server
        .get_agent(&agent)
        .await
        .expect("agent")
        .agent
        .expect("agent");
    assert_eq!(got.last_durable_seq, 5);
    session.send_samples([6]).await;
    session.wait_ack(6).await.expect("ack after retention");
    assert_eq!(stored_seq_count(&server, &agent, day_ago).await, 3);
    // The 5-minute rollups are kept longer: they still count the removed samples.
    assert_eq!(rolled_up_count(&server, &agent, day_ago).await, 6);
    drop(session);
    server.stop().await;
}
