//! Liveness over real streams: how a stream's end, silence, speech, replacement and time move an
//! agent between online, stale, offline and expired, and what watchers see of it.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use tether_proto as pb;
use tether_tests::{
    Bearer, EVENTUALLY, FleetClient, RawSession, TestServer, eventually, fast_config, hello,
    list_all, trace_init,
};
use tonic::Streaming;
use tonic::transport::Endpoint;

type Events = Streaming<pb::WatchAgentsResponse>;

fn time(ts: Option<prost_types::Timestamp>) -> SystemTime {
    SystemTime::try_from(ts.expect("timestamp set")).expect("valid timestamp")
}

async fn watch(fleet: &mut FleetClient, selector: &str, include_metrics: bool) -> Events {
    fleet
        .watch_agents(pb::WatchAgentsRequest {
            label_selector: selector.to_owned(),
            include_metrics,
            include_expired: false,
        })
        .await
        .expect("watch agents")
        .into_inner()
}

/// The next event; panics if the stream ends or nothing arrives within [`EVENTUALLY`].
async fn next_event(events: &mut Events) -> pb::WatchAgentsResponse {
    match tokio::time::timeout(EVENTUALLY, events.message()).await {
        Ok(Ok(Some(event))) => event,
        Ok(Ok(None)) => panic!("the watch ended"),
        Ok(Err(status)) => panic!("the watch failed: {status:?}"),
        Err(_) => panic!("no watch event within {EVENTUALLY:?}"),
    }
}

/// Reads the snapshot up to `SYNCED`; returns the snapshot's agents and its revision.
async fn read_snapshot(events: &mut Events) -> (Vec<pb::Agent>, u64) {
    let mut agents = Vec::new();
    loop {
        let event = next_event(events).await;
        match event.kind() {
            pb::AgentEventKind::Snapshot => agents.push(event.agent.expect("snapshot agent")),
            pb::AgentEventKind::Synced => {
                assert!(event.agent.is_none(), "SYNCED carries no agent: {event:?}");
                return (agents, event.revision);
            }
            other => panic!("expected the snapshot, got {other:?}: {event:?}"),
        }
    }
}

/// The agent's current state and its recent transitions, newest first.
async fn agent_and_history(
    server: &TestServer,
    id: &str,
) -> (pb::Agent, Vec<pb::StatusTransition>) {
    let response = server.get_agent(id).await.expect("get agent");
    (response.agent.expect("agent"), response.recent_transitions)
}

/// Waits until the agent's stored history holds `path` as its newest transitions (newest
/// first); returns the whole history. The history is read from the store, which a transition
/// reaches through the writer's next batch, a moment after the status itself changed.
async fn wait_history(
    server: &TestServer,
    id: &str,
    path: &[(pb::AgentStatus, pb::AgentStatus, pb::StatusReason)],
) -> Vec<pb::StatusTransition> {
    eventually(
        &format!("history of {id} to start with {path:?}"),
        || async {
            let (_, history) = agent_and_history(server, id).await;
            let newest: Vec<_> = history
                .iter()
                .take(path.len())
                .map(|t| (t.from_status(), t.to_status(), t.reason()))
                .collect();
            (newest == path).then_some(history)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_stream_makes_agent_offline_with_reason_stream_closed() {
    trace_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(fast_config(dir.path())).await;
    let (id, credential) = server.enroll("drop-1", &[]).await;
    let before = SystemTime::now();
    let (session, welcome) = RawSession::hello(&server, &id, &credential, "drop-1")
        .await
        .expect("hello");
    let online = server.wait_status(&id, pb::AgentStatus::Online).await;
    assert_eq!(online.session_id, welcome.session_id);
    assert_eq!(online.status_reason(), pb::StatusReason::Connected);

    // Both halves go: the request stream ends and the response stream is reset.
    drop(session);
    let offline = server.wait_status(&id, pb::AgentStatus::Offline).await;
    let after = SystemTime::now();
    assert_eq!(offline.status_reason(), pb::StatusReason::StreamClosed);
    assert!(offline.session_id.is_empty(), "{offline:?}");
    let last_seen = time(offline.last_seen);
    assert!(
        before <= last_seen && last_seen <= after,
        "last_seen {last_seen:?} outside the session's life [{before:?}, {after:?}]"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goodbye_makes_agent_offline_with_reason_goodbye_and_ends_the_stream_cleanly() {
    trace_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(fast_config(dir.path())).await;
    let (id, credential) = server.enroll("bye-1", &[]).await;
    let (mut session, _) = RawSession::hello(&server, &id, &credential, "bye-1")
        .await
        .expect("hello");
    server.wait_status(&id, pb::AgentStatus::Online).await;

    session
        .send(pb::connect_request::Message::Goodbye(pb::AgentGoodbye {
            reason: "shutting down".to_owned(),
        }))
        .await;
    // The request half stays open: the server ends the stream on its own, with OK.
    match session.recv().await {
        Ok(None) => {}
        other => panic!("expected a clean end of stream after Goodbye, got {other:?}"),
    }
    let offline = server.wait_status(&id, pb::AgentStatus::Offline).await;
    assert_eq!(offline.status_reason(), pb::StatusReason::Goodbye);
    assert!(offline.last_seen.is_some());
    assert!(offline.session_id.is_empty());
    drop(session);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_agent_turns_stale_then_offline_and_its_stream_ends_unavailable() {
    trace_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(fast_config(dir.path())).await;
    let (id, credential) = server.enroll("quiet-1", &[]).await;
    let (mut session, welcome) = RawSession::hello(&server, &id, &credential, "quiet-1")
        .await
        .expect("hello");
    server.wait_status(&id, pb::AgentStatus::Online).await;

    // Nothing is sent after Hello.
    let stale = server.wait_status(&id, pb::AgentStatus::Stale).await;
    assert_eq!(stale.status_reason(), pb::StatusReason::Silent);
    assert_eq!(
        stale.session_id, welcome.session_id,
        "a stale agent keeps its session"
    );
    let offline = server.wait_status(&id, pb::AgentStatus::Offline).await;
    assert_eq!(offline.status_reason(), pb::StatusReason::Silent);
    assert!(offline.session_id.is_empty());

    let status = session.wait_error().await;
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");

    // The history holds the whole path, once each, newest first.
    use pb::AgentStatus::{Offline, Online, Stale};
    use pb::StatusReason::{Connected, Silent};
    let path = [
        (Stale, Offline, Silent),
        (Online, Stale, Silent),
        (Offline, Online, Connected),
    ];
    let history = wait_history(&server, &id, &path).await;
    assert_eq!(history.len(), path.len(), "{history:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_agent_that_speaks_again_is_online_with_reason_activity() {
    trace_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(fast_config(dir.path())).await;
    let (id, credential) = server.enroll("wake-1", &[]).await;
    let (mut session, _) = RawSession::hello(&server, &id, &credential, "wake-1")
        .await
        .expect("hello");
    server.wait_status(&id, pb::AgentStatus::Stale).await;

    let sent_at = prost_types::Timestamp::from(SystemTime::now());
    session
        .send(pb::connect_request::Message::Ping(pb::Ping {
            nonce: 4242,
            sent_at: Some(sent_at),
        }))
        .await;
    let pong = match session.recv().await {
        Ok(Some(pb::connect_response::Message::Pong(pong))) => pong,
        other => panic!("expected a Pong, got {other:?}"),
    };
    assert_eq!(pong.nonce, 4242);
    assert_eq!(pong.ping_sent_at, Some(sent_at));
    let received = time(pong.server_receive_time);
    assert!(received >= time(Some(sent_at)), "{pong:?}");

    let online = server.wait_status(&id, pb::AgentStatus::Online).await;
    assert_eq!(online.status_reason(), pb::StatusReason::Activity);
    wait_history(
        &server,
        &id,
        &[(
            pb::AgentStatus::Stale,
            pb::AgentStatus::Online,
            pb::StatusReason::Activity,
        )],
    )
    .await;
    drop(session);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_session_replaces_the_first_which_gets_goodbye_replaced() {
    trace_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(fast_config(dir.path())).await;
    let (id, credential) = server.enroll("twin-1", &[]).await;
    let (mut first, first_welcome) = RawSession::hello(&server, &id, &credential, "twin-1")
        .await
        .expect("first hello");
    server.wait_status(&id, pb::AgentStatus::Online).await;
    let history_before = wait_history(
        &server,
        &id,
        &[(
            pb::AgentStatus::Offline,
            pb::AgentStatus::Online,
            pb::StatusReason::Connected,
        )],
    )
    .await;

    let (mut second, second_welcome) = RawSession::hello(&server, &id, &credential, "twin-1")
        .await
        .expect("second hello");
    assert_ne!(first_welcome.session_id, second_welcome.session_id);

    match first.recv().await {
        Ok(Some(pb::connect_response::Message::Goodbye(bye))) => {
            assert_eq!(bye.reason(), pb::GoodbyeReason::Replaced, "{bye:?}");
        }
        other => panic!("expected Goodbye(REPLACED) on the first session, got {other:?}"),
    }
    match first.recv().await {
        Ok(None) => {}
        other => panic!("expected the first stream to end after its Goodbye, got {other:?}"),
    }
    // The first session has ended on the server too (its end reached us), and dropping what
    // is left of it must not touch the agent.
    drop(first);

    // The second session is alive and answers.
    second
        .send(pb::connect_request::Message::Ping(pb::Ping {
            nonce: 2,
            sent_at: Some(SystemTime::now().into()),
        }))
        .await;
    match second.recv().await {
        Ok(Some(pb::connect_response::Message::Pong(pong))) => assert_eq!(pong.nonce, 2),
        other => panic!("expected a Pong on the second session, got {other:?}"),
    }
    let (agent, history) = agent_and_history(&server, &id).await;
    assert_eq!(agent.status(), pb::AgentStatus::Online, "{agent:?}");
    assert_eq!(agent.session_id, second_welcome.session_id);
    assert_eq!(
        history, history_before,
        "the replacement must not record a status change"
    );
    drop(second);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_sees_snapshot_then_every_transition_in_order() {
    trace_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(fast_config(dir.path())).await;
    // An agent that exists before the watch starts is in the snapshot.
    let (known, _) = server.enroll("known-1", &[]).await;

    let mut fleet = server.fleet().await;
    let mut all = watch(&mut fleet, "", false).await;
    let mut none = watch(&mut fleet, "env=prod", false).await;
    let (snapshot, synced) = read_snapshot(&mut all).await;
    let ids: Vec<_> = snapshot.iter().map(|a| a.agent_id.as_str()).collect();
    assert_eq!(ids, [known.as_str()]);
    let (snapshot, _) = read_snapshot(&mut none).await;
    assert!(snapshot.is_empty(), "{snapshot:?}");

    let (id, credential) = server.enroll("watched-1", &[]).await;
    let (session, _) = RawSession::hello(&server, &id, &credential, "watched-1")
        .await
        .expect("hello");
    // Silent after Hello: stale, then offline.
    let mut seen = Vec::new();
    while seen.len() < 4 {
        let event = next_event(&mut all).await;
        let agent = event.agent.clone().expect("event agent");
        assert_eq!(
            agent.agent_id, id,
            "an event about another agent: {event:?}"
        );
        seen.push(event);
    }
    use pb::AgentEventKind::{Registered, StatusChanged};
    use pb::AgentStatus::{Offline, Online, Stale, Unspecified};
    use pb::StatusReason::{Connected, Enrolled, Silent};
    let summary: Vec<_> = seen
        .iter()
        .map(|e| {
            let agent = e.agent.as_ref().expect("agent");
            (
                e.kind(),
                agent.status(),
                e.previous_status(),
                agent.status_reason(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (Registered, Offline, Unspecified, Enrolled),
            (StatusChanged, Online, Offline, Connected),
            (StatusChanged, Stale, Online, Silent),
            (StatusChanged, Offline, Stale, Silent),
        ]
    );
    let mut revision = synced;
    for event in &seen {
        assert!(
            event.revision > revision,
            "revisions must increase: {revision} then {event:?}"
        );
        revision = event.revision;
    }

    // A sentinel that matches the selective watcher: it must be the first thing that watcher
    // sees, since events arrive in order. The full watcher sees it next too, with nothing
    // in between.
    let (sentinel, _) = server.enroll("sentinel-1", &[("env", "prod")]).await;
    let first = next_event(&mut none).await;
    assert_eq!(first.kind(), Registered, "{first:?}");
    assert_eq!(
        first.agent.as_ref().map(|a| a.agent_id.as_str()),
        Some(sentinel.as_str()),
        "the env=prod watcher saw an event for a non-matching agent: {first:?}"
    );
    let next = next_event(&mut all).await;
    assert_eq!(next.kind(), Registered, "{next:?}");
    assert_eq!(
        next.agent.as_ref().map(|a| a.agent_id.as_str()),
        Some(sentinel.as_str())
    );
    assert!(next.revision > revision);
    assert_eq!(first.revision, next.revision);
    drop(session);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_watcher_is_ended_with_aborted_without_slowing_ingest() {
    trace_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = fast_config(dir.path());
    config.limits.watch_buffer = 16;
    // This test drives one report per round trip as fast as acks come back; the per-stream
    // message rate limit is not what it is about.
    config.limits.stream_messages_per_second = 1_000_000;
    config.limits.stream_message_burst = 1_000_000;
    let server = TestServer::start(config).await;
    let (id, credential) = server.enroll("busy-1", &[]).await;
    // Large labels make every event large, so flow control stops the watch stream early.
    let labels: Vec<(String, String)> = (0..64)
        .map(|i| (format!("label-{i:02}"), "v".repeat(255)))
        .collect();
    let labels: Vec<(&str, &str)> = labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let (mut session, _) =
        RawSession::hello_with(&server, &credential, hello(&id, "busy-1", &labels))
            .await
            .expect("hello");

    // A watcher on a connection with small HTTP/2 windows, which never reads while ingest runs.
    let channel = Endpoint::from_shared(server.url.clone())
        .expect("url")
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .connect()
        .await
        .expect("connect");
    let mut slow = pb::fleet_service_client::FleetServiceClient::with_interceptor(
        channel,
        Bearer(Some(server.admin_token.clone())),
    );
    let mut events = watch(&mut slow, "", true).await;

    // One report per commit (each waits for its ack), so one METRICS_UPDATED event per report.
    const REPORTS: u64 = 300;
    const PER_REPORT: u64 = 10;
    for report in 0..REPORTS {
        let first = report * PER_REPORT + 1;
        let last = first + PER_REPORT - 1;
        session.send_samples(first..=last).await;
        let acked = session.wait_ack(last).await.expect("ack");
        assert_eq!(acked, last);
    }
    let agent = server
        .get_agent(&id)
        .await
        .expect("get agent")
        .agent
        .expect("agent");
    assert_eq!(agent.last_durable_seq, REPORTS * PER_REPORT);

    let mut received = 0_u64;
    let status = loop {
        match tokio::time::timeout(EVENTUALLY, events.message()).await {
            Ok(Ok(Some(_))) => received += 1,
            Ok(Ok(None)) => panic!("the slow watch ended cleanly after {received} messages"),
            Ok(Err(status)) => break status,
            Err(_) => panic!("the slow watch neither ended nor delivered within {EVENTUALLY:?}"),
        }
    };
    assert_eq!(status.code(), tonic::Code::Aborted, "{status:?}");
    assert!(
        received < REPORTS,
        "the watcher received {received} messages: it was never behind"
    );
    drop(session);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_agent_expires_after_fleet_ttl_and_comes_back_on_reconnect() {
    trace_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = fast_config(dir.path());
    config.liveness.fleet_ttl = Duration::from_secs(1);
    let server = TestServer::start(config).await;
    let (id, credential) = server.enroll("gone-1", &[]).await;
    let (session, _) = RawSession::hello(&server, &id, &credential, "gone-1")
        .await
        .expect("hello");
    server.wait_status(&id, pb::AgentStatus::Online).await;
    drop(session);
    server.wait_status(&id, pb::AgentStatus::Offline).await;

    let expired = server.wait_status(&id, pb::AgentStatus::Expired).await;
    assert_eq!(expired.status_reason(), pb::StatusReason::Ttl);

    let mut fleet = server.fleet().await;
    let listed = list_all(&mut fleet, pb::ListAgentsRequest::default()).await;
    assert!(
        listed.iter().all(|a| a.agent_id != id),
        "an expired agent is listed by default: {listed:?}"
    );
    let listed = list_all(
        &mut fleet,
        pb::ListAgentsRequest {
            include_expired: true,
            ..Default::default()
        },
    )
    .await;
    assert!(
        listed.iter().any(|a| a.agent_id == id),
        "include_expired must list the expired agent: {listed:?}"
    );
    let summary = fleet
        .get_fleet_summary(pb::GetFleetSummaryRequest {})
        .await
        .expect("summary")
        .into_inner();
    assert_eq!((summary.total, summary.expired), (0, 1), "{summary:?}");
    assert_eq!(
        (summary.online, summary.stale, summary.offline),
        (0, 0, 0),
        "{summary:?}"
    );

    let (session, _) = RawSession::hello(&server, &id, &credential, "gone-1")
        .await
        .expect("hello after expiry");
    let online = server.wait_status(&id, pb::AgentStatus::Online).await;
    assert_eq!(online.status_reason(), pb::StatusReason::Reconnected);
    let summary = fleet
        .get_fleet_summary(pb::GetFleetSummaryRequest {})
        .await
        .expect("summary")
        .into_inner();
    assert_eq!(
        (summary.total, summary.online, summary.expired),
        (1, 1, 0),
        "{summary:?}"
    );
    let listed = list_all(&mut fleet, pb::ListAgentsRequest::default()).await;
    assert!(listed.iter().any(|a| a.agent_id == id), "{listed:?}");
    drop(session);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_real_agent_stays_online_without_false_transitions() {
    trace_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = fast_config(dir.path());
    let stale_after = config.liveness.stale_after;
    let server = TestServer::start(config).await;
    let mut fleet = server.fleet().await;
    let mut events = watch(&mut fleet, "", false).await;
    read_snapshot(&mut events).await;

    let agent = server.spawn_agent("steady-1", &[("env", "prod")]).await;
    let id = agent.id().await;
    // Wait, on the watch, for the agent to come online.
    loop {
        let event = next_event(&mut events).await;
        let a = event.agent.as_ref().expect("agent");
        if event.kind() == pb::AgentEventKind::StatusChanged {
            assert_eq!(a.agent_id, id);
            assert_eq!(a.status(), pb::AgentStatus::Online, "{event:?}");
            break;
        }
    }

    // The absence of events is what is asserted: watch for three stale-after periods.
    let deadline = tokio::time::Instant::now() + 3 * stale_after;
    let mut other: HashMap<i32, u32> = HashMap::new();
    loop {
        match tokio::time::timeout_at(deadline, events.message()).await {
            Err(_) => break,
            Ok(Ok(Some(event))) => {
                assert_ne!(
                    event.kind(),
                    pb::AgentEventKind::StatusChanged,
                    "false transition of a healthy agent: {event:?}"
                );
                *other.entry(event.kind).or_default() += 1;
            }
            Ok(Ok(None)) => panic!("the watch ended"),
            Ok(Err(status)) => panic!("the watch failed: {status:?}"),
        }
    }
    assert!(
        other.is_empty(),
        "unexpected events for a steady agent: {other:?}"
    );

    let (state, history) = agent_and_history(&server, &id).await;
    assert_eq!(state.status(), pb::AgentStatus::Online);
    let path: Vec<_> = history
        .iter()
        .map(|t| (t.from_status(), t.to_status(), t.reason()))
        .collect();
    assert_eq!(
        path,
        [(
            pb::AgentStatus::Offline,
            pb::AgentStatus::Online,
            pb::StatusReason::Connected
        )]
    );
    assert_eq!(
        agent.handle.stats.sessions_started(),
        1,
        "the agent reconnected"
    );
    // It did talk during the window: samples kept arriving and being acked.
    eventually("the agent's samples to be acked", || async {
        (agent.handle.stats.samples_acked_seq() >= 5).then_some(())
    })
    .await;
    agent.stop().await;
    server.stop().await;
}
