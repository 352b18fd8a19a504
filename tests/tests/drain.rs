//! A server's shutdown as its fleet sees it: health turns NOT_SERVING, every session gets
//! `Goodbye(SERVER_DRAINING)` with its own reconnect delay, and real agents keep to those
//! delays, so a restart brings the fleet back spread over the window instead of all at once.

use std::time::{Duration, Instant};

use tether_proto as pb;
use tether_server::drain::DrainPolicy;
use tether_tests::{
    RawSession, TestServer, eventually, eventually_within, fast_config, trace_init,
};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// Ten returns per second: `n` sessions spread over `n / 10` seconds.
const POLICY: DrainPolicy = DrainPolicy {
    reconnects_per_second: 10,
    max_window: Duration::from_secs(60),
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_reports_not_serving_and_gives_each_session_its_own_delay() {
    trace_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = fast_config(dir.path());
    config.liveness.drain = POLICY;
    let server = TestServer::start(config).await;
    let n = 8;
    let mut sessions = Vec::new();
    for i in 0..n {
        let hostname = format!("drain-{i}");
        let (id, credential) = server.enroll(&hostname, &[]).await;
        let (session, _) = RawSession::hello(&server, &id, &credential, &hostname)
            .await
            .expect("session");
        sessions.push(session);
    }
    let mut health = HealthClient::new(server.channel().await);
    let mut watch = health
        .watch(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health watch")
        .into_inner();
    let first = watch.message().await.expect("health").expect("a status");
    assert_eq!(first.status(), ServingStatus::Serving);

    let stopped = tokio::spawn(server.stop());
    let next = watch.message().await.expect("health").expect("a status");
    assert_eq!(
        next.status(),
        ServingStatus::NotServing,
        "first thing at shutdown"
    );
    drop(watch);

    let window = POLICY.window(n);
    let mut delays = Vec::new();
    for session in &mut sessions {
        let goodbye = loop {
            match session.recv().await.expect("a clean goodbye") {
                Some(pb::connect_response::Message::Goodbye(goodbye)) => break goodbye,
                Some(_) => {}
                None => panic!("the stream ended without a Goodbye"),
            }
        };
        assert_eq!(goodbye.reason(), pb::GoodbyeReason::ServerDraining);
        let delay = Duration::try_from(goodbye.reconnect_after.expect("a reconnect delay"))
            .expect("a non-negative delay");
        assert!(delay < window, "{delay:?} within {window:?}");
        delays.push(delay);
    }
    // One per slot of the window: all different, from its first slot to its last.
    delays.sort();
    let slot = window / u32::try_from(n).expect("small");
    for (i, delay) in delays.iter().enumerate() {
        let start = slot * u32::try_from(i).expect("small");
        assert!(
            *delay >= start && *delay < start + slot,
            "slot {i}: {delays:?}"
        );
    }
    stopped.await.expect("the server stops cleanly");
}

/// Real agents drained by a stop, with the server back at once: they return over the window
/// rather than all at once. (Without the delays, this fleet's 100 ms backoff brings every agent
/// back within half a second of the restart.) Both checks hold however slow the machine is:
/// an agent can return later than its delay, never earlier.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drained_agents_come_back_spread_over_the_window() {
    trace_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = fast_config(dir.path());
    config.liveness.drain = POLICY;
    let server = TestServer::start(config.clone()).await;
    let n = 20;
    let mut agents = Vec::new();
    for i in 0..n {
        agents.push(server.spawn_agent(&format!("spread-{i}"), &[]).await);
    }
    let stats: Vec<_> = agents.iter().map(|a| a.handle.stats.clone()).collect();
    eventually("every agent connected", || async {
        stats.iter().all(|s| s.connected()).then_some(())
    })
    .await;

    let addr = server.addr;
    let drained_at = Instant::now();
    server.stop().await;
    eventually("every agent told to leave", || async {
        stats.iter().all(|s| !s.connected()).then_some(())
    })
    .await;
    let _server = TestServer::start_at(addr, config).await;
    let mut back: Vec<Option<Duration>> = vec![None; n];
    eventually_within(Duration::from_secs(30), "every agent back", || {
        for (agent, returned) in stats.iter().zip(back.iter_mut()) {
            if returned.is_none() && agent.connected() {
                *returned = Some(drained_at.elapsed());
            }
        }
        let all = back.iter().all(Option::is_some);
        async move { all.then_some(()) }
    })
    .await;
    let mut back: Vec<Duration> = back.into_iter().flatten().collect();
    back.sort();

    let window = POLICY.window(n);
    let last_slot = window - window / u32::try_from(n).expect("small");
    assert!(
        back[n - 1] >= last_slot,
        "the last agent waited for the last slot ({last_slot:?}): {back:?}"
    );
    for t in [window / 4, window / 2, window * 3 / 4] {
        let returned = back.iter().filter(|b| **b < t).count();
        // At most the slots that began before t, plus one at a slot's edge.
        let allowed =
            usize::try_from(u128::from(POLICY.reconnects_per_second) * t.as_millis() / 1000)
                .expect("small")
                + 1;
        assert!(
            returned <= allowed,
            "{returned} agents back within {t:?}, at most {allowed} expected: {back:?}"
        );
    }
}
