//! Report pacing: a metrics ack may ask the agent to wait before its next report
//! (`MetricsAck.report_after`, the server's `--min-report-interval`). The agent keeps
//! sampling at its interval; the samples leave together, and its pings, and so its liveness,
//! are not paced.

use std::time::Duration;

use tether_proto as pb;
use tether_tests::{TestAgent, TestServer, eventually, fast_config, trace_init};

/// A server asking for `min_report_interval` between reports (samples every 200 ms), one
/// agent on it, and the seq of that agent's first acknowledged sample.
async fn paced_agent(
    dir: &std::path::Path,
    min_report_interval: Duration,
) -> (TestServer, TestAgent, u64) {
    trace_init();
    let mut config = fast_config(dir);
    config.storage.min_report_interval = min_report_interval;
    let server = TestServer::start(config).await;
    let agent = server.spawn_agent("paced", &[]).await;
    let stats = agent.handle.stats.clone();
    let first = eventually("the agent's first ack", || async {
        let seq = stats.samples_acked_seq();
        (seq >= 1).then_some(seq)
    })
    .await;
    (server, agent, first)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paced_agent_sends_its_samples_together_and_stays_online() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A report at most every second after its ack: about five samples each.
    let (server, agent, first) = paced_agent(dir.path(), Duration::from_secs(1)).await;
    let stats = agent.handle.stats.clone();
    let (sent, samples) =
        super::reports_for_samples(&server, &stats, first, 20, Duration::from_secs(30)).await;
    // About five samples a report; one a sample (an agent that ignores the pacing) fails.
    assert!(
        sent * 3 <= samples,
        "{sent} reports carried {samples} samples: the pacing was not followed"
    );
    let id = agent.id().await;
    let record = server
        .fleet()
        .await
        .get_agent(pb::GetAgentRequest { agent_id: id })
        .await
        .expect("get agent")
        .into_inner();
    let status = record.agent.expect("agent").status;
    assert_eq!(
        status,
        pb::AgentStatus::Online as i32,
        "a paced agent is still online"
    );
    assert_eq!(agent.handle.stats.sessions_started(), 1, "one session");
    agent.stop().await;
}

/// Samples that only the pacing holds back leave before the goodbye: the agent's buffer does
/// not outlive the process, so they would otherwise be lost at a clean stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_stop_sends_what_the_pacing_held_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, agent, first) = paced_agent(dir.path(), Duration::from_secs(30)).await;
    let stats = agent.handle.stats.clone();
    // Held back for 30 s by the first ack: a few more samples taken, none sent.
    let taken = eventually("three more samples taken", || async {
        let taken = stats.samples_taken();
        (taken >= first + 3).then_some(taken)
    })
    .await;
    assert_eq!(
        stats.samples_acked_seq(),
        first,
        "the pacing held them back"
    );
    let id = agent.id().await;
    agent.stop().await;
    // The report goes before the goodbye; the server may store it just after the stream ends.
    let fleet = server.fleet().await;
    eventually("the held-back samples stored", || {
        let (mut fleet, id) = (fleet.clone(), id.clone());
        async move {
            let stored = fleet
                .get_metrics(pb::GetMetricsRequest {
                    agent_id: id,
                    ..Default::default()
                })
                .await
                .expect("get metrics")
                .into_inner()
                .points
                .len() as u64;
            (stored >= taken).then_some(())
        }
    })
    .await;
}
