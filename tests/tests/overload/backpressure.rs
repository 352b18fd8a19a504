//! Backpressure on ingest: when the writer is behind, the server stops reading the agents that
//! have the most in flight instead of queueing their reports, so acks stay prompt for everyone,
//! a flooding agent waits on itself, and nobody held back is taken for silent.

use std::time::{Duration, Instant};

use tether_proto as pb;
use tether_tests::{Healthy, RawSession, TestServer, eventually, fast_config, trace_init};

/// Extra time every commit takes: the slow disk under test.
const COMMIT_DELAY: Duration = Duration::from_millis(100);

/// Sends `reports` metrics reports of `per_report` samples each on `flood`, `rate` reports a
/// second, with a ping every 200 ms as a real agent's heartbeat; returns the last seq.
async fn flood(flood: &RawSession, reports: u64, per_report: u64, rate: u64) -> u64 {
    let mut seq = 0;
    let mut nonce = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(1000 / rate));
    for i in 0..reports {
        tick.tick().await;
        flood.send_samples(seq + 1..=seq + per_report).await;
        seq += per_report;
        if i % (rate / 5).max(1) == 0 {
            nonce += 1;
            flood
                .send(pb::connect_request::Message::Ping(pb::Ping {
                    nonce,
                    sent_at: Some(std::time::SystemTime::now().into()),
                }))
                .await;
        }
    }
    seq
}

/// The statuses an agent went through, oldest first, from its recent transitions.
async fn statuses(server: &TestServer, id: &str) -> Vec<i32> {
    let agent = server.get_agent(id).await.expect("GetAgent");
    let mut transitions = agent.recent_transitions;
    transitions.reverse();
    transitions.iter().map(|t| t.to_status).collect()
}

fn went_stale_or_offline(statuses: &[i32]) -> bool {
    statuses
        .iter()
        .any(|&s| s == pb::AgentStatus::Stale as i32 || s == pb::AgentStatus::Offline as i32)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_writer_under_a_flood_keeps_every_ack_prompt() {
    trace_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = fast_config(dir.path());
    // A writer that commits 64 samples per 100 ms at most: about 600 samples a second.
    config.storage.writer_max_batch = 64;
    config.storage.ingest_budget = 128;
    let (server, store) = TestServer::start_failing(config).await;
    store.slow(COMMIT_DELAY);
    let healthy = Healthy::start(&server).await;

    // The flooder offers 3,000 samples a second (30 reports of 100, within the per-stream
    // message rate): five times what the writer commits.
    let (flooder_id, credential) = server.enroll("flooder", &[]).await;
    let (flooder, _) = RawSession::hello(&server, &flooder_id, &credential, "flooder")
        .await
        .expect("the flooder's session opens");
    let (steady_id, credential) = server.enroll("steady", &[]).await;
    let (mut steady, _) = RawSession::hello(&server, &steady_id, &credential, "steady")
        .await
        .expect("the steady agent's session opens");

    let flooder_done = tokio::spawn(async move {
        let last = flood(&flooder, 60, 100, 30).await;
        let sent = Instant::now();
        let mut flooder = flooder;
        let acked = flooder.wait_ack(last).await;
        // Returned, so the flooder's stream stays open until the statuses are checked.
        (last, acked, sent.elapsed(), flooder)
    });

    // Meanwhile a well-behaved agent reports one sample at a time and times each ack.
    let mut latencies = Vec::new();
    let mut seq = 0;
    while !flooder_done.is_finished() {
        seq += 1;
        let sent = Instant::now();
        steady.send_samples([seq]).await;
        steady
            .wait_ack(seq)
            .await
            .expect("the steady agent's stream stays up");
        latencies.push(sent.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (last, acked, drained_in, _flooder) = flooder_done.await.expect("flooder task");
    assert_eq!(acked.expect("the flooder's stream stays up"), last);
    // What the flooder sent took time to store (the writer's pace is the limit) ...
    assert!(
        drained_in >= Duration::from_secs(3),
        "the flood of 6,000 samples was stored in {drained_in:?}: the writer was not slow"
    );
    // ... while the steady agent's acks never waited behind it.
    latencies.sort();
    let worst = *latencies.last().expect("the steady agent reported");
    assert!(
        latencies.len() >= 10,
        "the steady agent got {} acks while the flood drained",
        latencies.len()
    );
    assert!(
        worst < Duration::from_secs(1),
        "the steady agent waited {worst:?} for an ack (all: {latencies:?})"
    );
    for id in [&flooder_id, &steady_id] {
        let seen = statuses(&server, id).await;
        assert!(!went_stale_or_offline(&seen), "{id} went through {seen:?}");
    }
    healthy.assert_unaffected(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_held_back_longer_than_stale_after_stays_online() {
    trace_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = fast_config(dir.path());
    config.storage.session_reports_in_flight = 1;
    let stale_after = config.liveness.stale_after;
    let (server, store) = TestServer::start_failing(config).await;
    let (id, credential) = server.enroll("held", &[]).await;
    let (mut held, _) = RawSession::hello(&server, &id, &credential, "held")
        .await
        .expect("the session opens");
    held.send_samples([1]).await;
    held.wait_ack(1).await.expect("the first report is acked");

    // A commit now takes longer than stale-after. The second report is in flight for that
    // long; the third waits in the stream, unread, behind it, and so does the ping after it:
    // the agent is silent only because the server does not read it.
    let delay = stale_after * 2;
    store.slow(delay);
    let held_from = Instant::now();
    held.send_samples([2]).await;
    held.send_samples([3]).await;
    held.send(pb::connect_request::Message::Ping(pb::Ping {
        nonce: 1,
        sent_at: Some(std::time::SystemTime::now().into()),
    }))
    .await;
    held.wait_ack(3)
        .await
        .expect("the stream stays up while held");
    assert!(
        held_from.elapsed() >= delay * 2,
        "two slow commits took {:?}",
        held_from.elapsed()
    );
    let seen = statuses(&server, &id).await;
    assert!(
        !went_stale_or_offline(&seen),
        "a session held back by the server went through {seen:?}"
    );
    store.slow(Duration::ZERO);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_behind_a_slow_writer_keeps_its_samples_and_sends_them_together() {
    trace_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, store) = TestServer::start_failing(fast_config(dir.path())).await;
    let agent = server.spawn_agent("patient", &[]).await;
    let stats = agent.handle.stats.clone();
    let first = eventually("the agent's first ack", || async {
        let seq = stats.samples_acked_seq();
        (seq >= 1).then_some(seq)
    })
    .await;
    // Each commit now takes 7 metrics intervals: the agent keeps one report unacknowledged,
    // keeps the rest in its buffer, and sends them together after each ack, so a report
    // carries several samples. One report per sample (an agent without that bound) or a few
    // reports ahead of the acks (4 made 1 report for every 2 samples here) fail the check.
    store.slow(Duration::from_millis(1500));
    let (sent, samples) =
        super::reports_for_samples(&server, &stats, first, 20, Duration::from_secs(60)).await;
    assert!(
        sent * 3 <= samples,
        "{sent} reports carried {samples} samples: the samples did not wait in the buffer"
    );
    store.slow(Duration::ZERO);
    assert!(
        agent.handle.stats.sessions_started() == 1,
        "the agent kept its session"
    );
    agent.stop().await;
}
