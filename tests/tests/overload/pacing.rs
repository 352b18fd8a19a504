//! Report pacing: a metrics ack may ask the agent to wait before its next report
//! (`MetricsAck.report_after`, the server's `--min-report-interval`). The agent keeps
//! sampling at its interval; the samples leave together, and its pings, and so its liveness,
//! are not paced.

use std::time::Duration;

use tether_proto as pb;
use tether_tests::{TestServer, eventually, eventually_within, fast_config, trace_init};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paced_agent_sends_its_samples_together_and_stays_online() {
    trace_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = fast_config(dir.path());
    // Samples every 200 ms, a report at most every second after its ack.
    config.storage.min_report_interval = Duration::from_secs(1);
    let server = TestServer::start(config).await;
    let agent = server.spawn_agent("paced", &[]).await;
    let stats = agent.handle.stats.clone();
    let first = eventually("the agent's first ack", || async {
        let seq = stats.samples_acked_seq();
        (seq >= 1).then_some(seq)
    })
    .await;
    let reports = || server.metrics.agent_messages.metrics.get();
    let reports_before = reports();
    let acked = eventually_within(
        Duration::from_secs(30),
        "twenty more samples acked",
        || async {
            let seq = stats.samples_acked_seq();
            (seq >= first + 20).then_some(seq)
        },
    )
    .await;
    let sent = reports() - reports_before;
    // About five samples a report; one a sample (an agent that ignores the pacing) fails.
    assert!(
        sent * 3 <= acked - first,
        "{sent} reports carried {} samples: the pacing was not followed",
        acked - first
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
