//! Report pacing: a metrics ack may ask the agent to wait before its next report
//! (`MetricsAck.report_after`): always the server's `--min-report-interval`, and longer, up to
//! `--max-report-interval`, while the agent's acks lag (it tells the server how long each
//! report waited, `MetricsReport.previous_ack_latency`). The agent keeps sampling at its
//! interval; the samples leave together, and its pings, and so its liveness, are not paced.

use std::time::Duration;

use tether_proto as pb;
use tether_tests::{
    RawSession, TestAgent, TestServer, eventually, fast_config, sample, trace_init,
};

/// A server asking for `min_report_interval` between reports (samples every 200 ms), one
/// agent on it (with a sample buffer of `buffer_capacity`, or the default), and the seq of
/// that agent's first acknowledged sample.
async fn paced_agent(
    dir: &std::path::Path,
    min_report_interval: Duration,
    buffer_capacity: Option<usize>,
) -> (TestServer, TestAgent, u64) {
    trace_init();
    let mut config = fast_config(dir);
    config.storage.min_report_interval = min_report_interval;
    config.storage.max_report_interval =
        config.storage.max_report_interval.max(min_report_interval);
    let server = TestServer::start(config).await;
    let agent = match buffer_capacity {
        None => server.spawn_agent("paced", &[]).await,
        Some(capacity) => {
            let state_dir = tempfile::tempdir().expect("agent state dir");
            let token = server.enrollment_token().await;
            let mut agent_config =
                tether_tests::agent_config(&server.url, state_dir.path(), &[], Some(token));
            agent_config.buffer_capacity = capacity;
            TestAgent::spawn_with(agent_config, state_dir, "paced", "linux")
        }
    };
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
    let (server, agent, first) = paced_agent(dir.path(), Duration::from_secs(1), None).await;
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
    let (server, agent, first) = paced_agent(dir.path(), Duration::from_secs(30), None).await;
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

/// A report that fills up leaves at once whatever the pacing: while the pacing holds samples,
/// the agent is not woken for each new one, only for the one that fills a report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_report_leaves_at_once_however_long_the_pacing() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Every ack asks a minute before the next report; samples come every 200 ms. A report is
    // full at half the agent's buffer: four samples.
    let (_server, agent, first) = paced_agent(dir.path(), Duration::from_secs(60), Some(8)).await;
    let stats = agent.handle.stats.clone();
    // Three full reports' worth acked within 20 s: only full reports can go before the minute.
    let acked = tether_tests::eventually_within(
        Duration::from_secs(20),
        "three full reports acked",
        || async {
            let seq = stats.samples_acked_seq();
            (seq >= first + 12).then_some(seq)
        },
    )
    .await;
    assert_eq!(
        stats.samples_dropped(),
        0,
        "no sample dropped: {acked} acked"
    );
    agent.stop().await;
}

/// A report of one sample, `seq`, telling the server how long the previous one waited.
fn report(seq: u64, waited: Option<prost_types::Duration>) -> pb::connect_request::Message {
    pb::connect_request::Message::Metrics(pb::MetricsReport {
        deferred_seq: 0,
        samples: vec![sample(seq)],
        previous_ack_latency: waited,
    })
}

fn millis(ms: u64) -> Option<prost_types::Duration> {
    Some(
        Duration::from_millis(ms)
            .try_into()
            .expect("a representable duration"),
    )
}

/// Sends `report(seq, waited)` on `session` and returns its ack's `report_after` (`None` for
/// "at once").
async fn report_after(
    session: &mut RawSession,
    seq: u64,
    waited: Option<prost_types::Duration>,
) -> Option<Duration> {
    session.send(report(seq, waited)).await;
    loop {
        match session.recv().await.expect("the session stays up") {
            Some(pb::connect_response::Message::MetricsAck(ack)) if ack.durable_seq >= seq => {
                return ack
                    .report_after
                    .map(|d| Duration::try_from(d).expect("a non-negative report_after"));
            }
            Some(_) => {}
            None => panic!("the stream ended before the ack of {seq}"),
        }
    }
}

/// An agent whose acks lag behind its best round trip is asked to wait between reports, up
/// to `--max-report-interval`, and at once again when they are prompt; what one agent claims
/// paces only that agent; a malformed claim ends only its own session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_pace_only_the_agent_whose_acks_lag() {
    trace_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = fast_config(dir.path());
    let ceiling = Duration::from_secs(5);
    config.storage.max_report_interval = ceiling;
    let server = TestServer::start(config).await;
    let open = |hostname: &'static str| {
        let server = &server;
        async move {
            let (id, credential) = server.enroll(hostname, &[]).await;
            let (session, _) = RawSession::hello(server, &id, &credential, hostname)
                .await
                .expect("the session opens");
            session
        }
    };
    let mut lagging = open("lagging").await;
    let mut prompt = open("prompt").await;

    // Without a measure, and with waits near the best one: at once.
    assert_eq!(report_after(&mut lagging, 1, None).await, None);
    assert_eq!(report_after(&mut lagging, 2, millis(5)).await, None);
    assert_eq!(report_after(&mut prompt, 1, millis(5)).await, None);

    // Two seconds past its best: paced, more at each lagging report, never past the ceiling.
    let mut paced = Vec::new();
    for seq in 3..=8 {
        paced.push(report_after(&mut lagging, seq, millis(2_005)).await);
    }
    let first = paced[0].expect("a lagging agent is paced");
    assert!(
        first >= Duration::from_millis(500),
        "paced {first:?} after acks 2 s past the best"
    );
    assert!(
        paced.windows(2).all(|w| w[0] <= w[1]),
        "the pace only grows while the acks lag: {paced:?}"
    );
    assert_eq!(paced.last().copied().flatten(), Some(ceiling), "{paced:?}");
    // A claim beyond anything an agent waits counts as the longest: still the ceiling.
    let huge = Some(prost_types::Duration {
        seconds: 315_576_000_000,
        nanos: 0,
    });
    assert_eq!(report_after(&mut lagging, 9, huge).await, Some(ceiling));

    // Meanwhile the other agent's acks ask nothing of it.
    for seq in 2..=4 {
        assert_eq!(report_after(&mut prompt, seq, millis(6)).await, None);
    }

    // Prompt acks again: the pace falls back to none within a few reports.
    let mut seq = 10;
    let mut falling = Vec::new();
    loop {
        let after = report_after(&mut lagging, seq, millis(5)).await;
        falling.push(after);
        if after.is_none() {
            break;
        }
        assert!(falling.len() < 20, "the pace did not fall: {falling:?}");
        seq += 1;
    }
    assert!(
        falling.windows(2).all(|w| w[0].is_none() || w[1] <= w[0]),
        "the pace only falls while the acks are prompt: {falling:?}"
    );

    // A negative wait is malformed (the most negative one too, which overflows a naive
    // negation): that session ends with INVALID_ARGUMENT, the other goes on.
    let negative = Some(prost_types::Duration {
        seconds: i64::MIN,
        nanos: -1,
    });
    lagging.send(report(seq + 1, negative)).await;
    let status = lagging.wait_error().await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("previous_ack_latency"),
        "{status:?}"
    );
    assert_eq!(report_after(&mut prompt, 5, millis(6)).await, None);
}

/// A real agent tells the server how long each report waited for its ack, and the server
/// paces it when those waits grow: here a store whose commits turn slow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_agent_reports_its_ack_waits_and_is_paced_when_they_grow() {
    trace_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = fast_config(dir.path());
    config.storage.max_report_interval = Duration::from_secs(2);
    let (server, store) = TestServer::start_failing(config).await;
    let agent = server.spawn_agent("measured", &[]).await;
    let stats = agent.handle.stats.clone();
    eventually("the agent's first acks", || async {
        (stats.samples_acked_seq() >= 3).then_some(())
    })
    .await;
    let histogram = |name: &str| {
        let text = server.metrics.encode(tether_server::metrics::Format::Text);
        let value = |suffix: &str| {
            let series = format!("tether_{name}_seconds_{suffix} ");
            text.lines()
                .find_map(|line| line.strip_prefix(&series)?.parse::<f64>().ok())
                .unwrap_or_else(|| panic!("no {series} in the metrics"))
        };
        (value("count"), value("sum"))
    };
    // The agent measures each wait; prompt ones, and no pacing.
    let (measured, _) = eventually("the agent's measured waits", || async {
        let (count, sum) = histogram("agent_ack_latency");
        (count >= 2.0).then_some((count, sum))
    })
    .await;
    assert!(measured >= 2.0);
    assert_eq!(histogram("report_pace").0, 0.0, "prompt acks are not paced");

    // Commits now take 700 ms: the agent's waits grow past its best, and its acks pace it.
    let (before_count, before_sum) = histogram("agent_ack_latency");
    store.slow(Duration::from_millis(700));
    eventually("slow waits measured by the agent", || async {
        let (count, sum) = histogram("agent_ack_latency");
        let (n, total) = (count - before_count, sum - before_sum);
        (n >= 3.0 && total / n >= 0.5).then_some(())
    })
    .await;
    eventually("the agent paced", || async {
        (histogram("report_pace").0 >= 2.0).then_some(())
    })
    .await;
    store.slow(Duration::ZERO);
    agent.stop().await;
}
