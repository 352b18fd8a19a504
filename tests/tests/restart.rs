//! Restarts: what a server keeps across an orderly stop or a crash, how agents pick up again,
//! and how a store of another schema version is refused.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tether_proto as pb;
use tether_server::server::StartError;
use tether_server::store::StoreError;
use tether_server::store::sled::test_support::RawStore;
use tether_tests::{
    CrashableServer, EVENTUALLY, RawSession, TestServer, eventually, fast_config, system_info,
    trace_init,
};

fn time(ts: Option<prost_types::Timestamp>) -> SystemTime {
    SystemTime::try_from(ts.expect("timestamp set")).expect("valid timestamp")
}

/// Every stored sample of `id`, one point each (step 0), over the default range.
async fn metrics_points(server: &TestServer, id: &str) -> Vec<pb::MetricsPoint> {
    server
        .fleet()
        .await
        .get_metrics(pb::GetMetricsRequest {
            agent_id: id.to_owned(),
            ..Default::default()
        })
        .await
        .expect("get metrics")
        .into_inner()
        .points
}

async fn agent(server: &TestServer, id: &str) -> pb::Agent {
    server
        .get_agent(id)
        .await
        .expect("get agent")
        .agent
        .expect("agent")
}

fn store_path(data_dir: &Path) -> PathBuf {
    data_dir.join("store")
}

/// The seqs of the samples stored for `agent` in `org`, in key (time) order, read from the
/// store of a stopped server.
fn stored_seqs(data_dir: &Path, org: &str, agent: &str) -> Vec<u64> {
    RawStore::open(store_path(data_dir))
        .expect("open the store")
        .sample_seqs(org, agent)
        .expect("read sample keys")
}

/// Every record of every tree of the store of a stopped server: (tree, key) → value.
fn dump_store(data_dir: &Path) -> BTreeMap<(Vec<u8>, Vec<u8>), Vec<u8>> {
    RawStore::open(store_path(data_dir))
        .expect("open the store")
        .dump()
        .expect("read every record")
}

fn set_schema_version(data_dir: &Path, version: &str) {
    RawStore::open(store_path(data_dir))
        .expect("open the store")
        .set_schema_version(version)
        .expect("write schema version");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_samples_survive_a_crash() {
    trace_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let server = CrashableServer::start(fast_config(dir.path())).await;
    let (id, credential) = server.enroll("durable-1", &[]).await;
    let (mut session, welcome) = RawSession::hello(&server, &id, &credential, "durable-1")
        .await
        .expect("hello");
    assert_eq!(welcome.last_durable_seq, 0);
    session.send_samples(1..=50).await;
    let acked = session.wait_ack(50).await.expect("ack");
    assert_eq!(acked, 50);

    let addr = server.addr;
    server.crash().await;
    // The crash really cut the session.
    assert!(
        session.recv().await.is_err(),
        "the session outlived the crash"
    );

    let server = CrashableServer::start_at(addr, fast_config(dir.path())).await;
    let points = metrics_points(&server, &id).await;
    assert_eq!(points.len(), 50, "acknowledged samples were lost");
    assert_eq!(agent(&server, &id).await.last_durable_seq, 50);
    let (_, welcome) = RawSession::hello(&server, &id, &credential, "durable-1")
        .await
        .expect("hello after the crash");
    assert_eq!(welcome.last_durable_seq, 50);
    server.stop().await;
}

/// How long after its last stored sample a connected agent keeps pinging before the restart.
const ACTIVITY_GAP: Duration = Duration::from_millis(200);
/// How far apart two readings of one unchanged last_seen may be: the server keeps activity
/// times at millisecond precision.
const LAST_SEEN_SLACK: Duration = Duration::from_millis(5);

/// Two agents: one connected when the server goes down, one that had already said Goodbye.
struct Fleet {
    connected: String,
    left: String,
}

/// Sets up a [`Fleet`]; returns it with the connected agent's session.
async fn fleet_before_restart(server: &TestServer) -> (Fleet, RawSession) {
    let (left, credential) = server.enroll("left-1", &[]).await;
    let (session, _) = RawSession::hello(server, &left, &credential, "left-1")
        .await
        .expect("hello");
    session
        .send(pb::connect_request::Message::Goodbye(pb::AgentGoodbye {
            reason: "leaving".to_owned(),
        }))
        .await;
    server.wait_status(&left, pb::AgentStatus::Offline).await;
    drop(session);

    let (connected, credential) = server.enroll("up-1", &[]).await;
    let (mut session, _) = RawSession::hello(server, &connected, &credential, "up-1")
        .await
        .expect("hello");
    server
        .wait_status(&connected, pb::AgentStatus::Online)
        .await;
    // Samples after the Hello, then pings until the server has seen the agent well after the
    // samples' commit: the last sign of life is then a message that changes no stored record.
    session.send_samples(1..=3).await;
    session.wait_ack(3).await.expect("ack");
    let acked_at = SystemTime::now();
    let deadline = tokio::time::Instant::now() + EVENTUALLY;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    for nonce in 1.. {
        tick.tick().await;
        session
            .send(pb::connect_request::Message::Ping(pb::Ping {
                nonce,
                sent_at: Some(SystemTime::now().into()),
            }))
            .await;
        match session.recv().await {
            Ok(Some(pb::connect_response::Message::Pong(pong))) => assert_eq!(pong.nonce, nonce),
            other => panic!("expected a Pong, got {other:?}"),
        }
        let last_seen = time(agent(server, &connected).await.last_seen);
        if last_seen >= acked_at + ACTIVITY_GAP {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "last_seen never moved past the samples' commit"
        );
    }
    (Fleet { connected, left }, session)
}

/// Checks the agents of [`fleet_before_restart`] after the restart; returns the connected
/// agent's last_seen before and after.
async fn check_after_restart(
    server: &TestServer,
    fleet: &Fleet,
    before: &[pb::Agent; 2],
    went_down: SystemTime,
) -> (SystemTime, SystemTime) {
    let [connected_before, left_before] = before;
    let connected = agent(server, &fleet.connected).await;
    assert_eq!(
        connected.status(),
        pb::AgentStatus::Offline,
        "{connected:?}"
    );
    assert_eq!(
        connected.status_reason(),
        pb::StatusReason::ServerRestart,
        "{connected:?}"
    );
    assert!(connected.session_id.is_empty());
    assert!(time(connected.status_since) >= went_down);
    assert_eq!(connected.last_durable_seq, 3);
    let last_seen = time(connected.last_seen);
    let last_seen_before = time(connected_before.last_seen);
    assert!(
        last_seen <= went_down,
        "last_seen {last_seen:?} is after the server went down at {went_down:?}"
    );
    // The history is read from the store, which the restart's transition reaches through the
    // writer shortly after start.
    eventually("the restart transition in the history", || async {
        let history = server
            .get_agent(&fleet.connected)
            .await
            .expect("get agent")
            .recent_transitions;
        let newest = history.first()?;
        ((newest.from_status(), newest.to_status(), newest.reason())
            == (
                pb::AgentStatus::Online,
                pb::AgentStatus::Offline,
                pb::StatusReason::ServerRestart,
            ))
            .then_some(())
    })
    .await;

    // The agent that had left keeps what it had: it was not cut off by the restart.
    let left = agent(server, &fleet.left).await;
    assert_eq!(left.status(), pb::AgentStatus::Offline);
    assert_eq!(left.status_reason(), pb::StatusReason::Goodbye, "{left:?}");
    assert_eq!(left.status_since, left_before.status_since);
    assert_eq!(left.last_seen, left_before.last_seen);
    (last_seen_before, last_seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orderly_restart_marks_connected_agents_offline_server_restart_keeping_last_seen() {
    trace_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(fast_config(dir.path())).await;
    let (fleet, mut session) = fleet_before_restart(&server).await;
    let before = [
        agent(&server, &fleet.connected).await,
        agent(&server, &fleet.left).await,
    ];

    let went_down = SystemTime::now();
    let stopping = tokio::spawn(server.stop());
    match session.recv().await {
        Ok(Some(pb::connect_response::Message::Goodbye(bye))) => {
            assert_eq!(bye.reason(), pb::GoodbyeReason::ServerDraining, "{bye:?}");
        }
        other => panic!("expected Goodbye(SERVER_DRAINING), got {other:?}"),
    }
    drop(session);
    stopping.await.expect("server stops");

    let server = TestServer::start(fast_config(dir.path())).await;
    let (last_seen_before, last_seen) =
        check_after_restart(&server, &fleet, &before, went_down).await;
    // After an orderly stop the server knew the last sign of life: it must survive.
    let drift = last_seen
        .duration_since(last_seen_before)
        .unwrap_or_else(|e| e.duration());
    assert!(
        drift <= LAST_SEEN_SLACK,
        "last_seen not preserved across an orderly restart: {last_seen_before:?} before, \
         {last_seen:?} after ({drift:?} apart)"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orderly_stop_held_open_by_a_slow_stream_still_records_server_restart() {
    trace_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(fast_config(dir.path())).await;
    let (id, credential) = server.enroll("held-1", &[]).await;
    let (mut session, _) = RawSession::hello(&server, &id, &credential, "held-1")
        .await
        .expect("hello");
    server.wait_status(&id, pb::AgentStatus::Online).await;

    // A watcher that stops reading, on a stream whose HTTP/2 window is tiny: its queued events
    // (and then its final status) cannot leave, so the orderly shutdown waits for it for the
    // whole grace period, as it would for any slow client stream.
    let channel = tonic::transport::Endpoint::from_shared(server.url.clone())
        .expect("url")
        .initial_stream_window_size(1024)
        .connect()
        .await
        .expect("connect");
    let mut slow = pb::fleet_service_client::FleetServiceClient::with_interceptor(
        channel,
        tether_tests::Bearer(Some(server.admin_token.clone())),
    );
    let stuck = slow
        .watch_agents(pb::WatchAgentsRequest {
            include_metrics: true,
            ..Default::default()
        })
        .await
        .expect("watch");
    for seq in 1..=20 {
        session.send_samples([seq]).await;
        session.wait_ack(seq).await.expect("ack");
    }

    let stopping = tokio::spawn(server.stop());
    match session.recv().await {
        Ok(Some(pb::connect_response::Message::Goodbye(bye))) => {
            assert_eq!(bye.reason(), pb::GoodbyeReason::ServerDraining, "{bye:?}");
        }
        other => panic!("expected Goodbye(SERVER_DRAINING), got {other:?}"),
    }
    drop(session);
    stopping.await.expect("server stops");
    // The watcher's connection outlives the grace period and keeps the store open; the client
    // going away releases it.
    drop(stuck);
    drop(slow);
    eventually("the stopped server to release its store", || async {
        RawStore::open(store_path(dir.path())).ok().map(drop)
    })
    .await;

    let server = TestServer::start(fast_config(dir.path())).await;
    let restarted = agent(&server, &id).await;
    assert_eq!(
        (restarted.status(), restarted.status_reason()),
        (pb::AgentStatus::Offline, pb::StatusReason::ServerRestart),
        "an agent drained by an orderly stop must come back as cut off by the restart"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_restart_marks_connected_agents_offline_server_restart_keeping_last_seen() {
    trace_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let server = CrashableServer::start(fast_config(dir.path())).await;
    let (fleet, session) = fleet_before_restart(&server).await;
    let before = [
        agent(&server, &fleet.connected).await,
        agent(&server, &fleet.left).await,
    ];
    let came_online = time(before[0].status_since);

    let went_down = SystemTime::now();
    server.crash().await;
    drop(session);
    let server = CrashableServer::start(fast_config(dir.path())).await;
    let (_, last_seen) = check_after_restart(&server, &fleet, &before, went_down).await;
    // A crash may lose the newest activity, but not what was stored before it.
    assert!(
        last_seen >= came_online,
        "last_seen {last_seen:?} is older than the session ({came_online:?})"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_agent_buffers_across_a_restart_and_resends_without_duplicates() {
    trace_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(fast_config(dir.path())).await;
    let agent = server.spawn_agent("restart-1", &[]).await;
    let id = agent.id().await;
    server.wait_status(&id, pb::AgentStatus::Online).await;
    let stats = agent.handle.stats.clone();
    eventually("a few acked samples", || async {
        (stats.samples_acked_seq() >= 3).then_some(())
    })
    .await;
    let org = agent_org(&server, &id).await;

    let addr = server.addr;
    server.stop().await;
    let buffered_at_stop = stats.samples_buffered();
    eventually("the agent to keep sampling while disconnected", || async {
        (!stats.connected() && stats.samples_buffered() >= buffered_at_stop + 5).then_some(())
    })
    .await;

    let server = TestServer::start_at(addr, fast_config(dir.path())).await;
    let taken_while_down = stats.samples_taken();
    let online = server.wait_status(&id, pb::AgentStatus::Online).await;
    assert_eq!(online.status_reason(), pb::StatusReason::Reconnected);
    eventually("the samples taken while down to be acked", || async {
        (stats.samples_acked_seq() >= taken_while_down).then_some(())
    })
    .await;
    let history = server
        .get_agent(&id)
        .await
        .expect("get agent")
        .recent_transitions;
    let path: Vec<_> = history
        .iter()
        .take(2)
        .map(|t| (t.from_status(), t.to_status(), t.reason()))
        .collect();
    assert_eq!(
        path,
        [
            (
                pb::AgentStatus::Offline,
                pb::AgentStatus::Online,
                pb::StatusReason::Reconnected
            ),
            (
                pb::AgentStatus::Online,
                pb::AgentStatus::Offline,
                pb::StatusReason::ServerRestart
            ),
        ],
        "{history:?}"
    );

    agent.stop().await;
    assert_eq!(stats.samples_dropped(), 0, "the agent's buffer overflowed");
    server.wait_status(&id, pb::AgentStatus::Offline).await;
    // Once the last commit has landed, every stored sample is one point, each seq once.
    let durable = eventually("the stored samples to settle", || async {
        let durable = agent_durable_seq(&server, &id).await;
        let points = metrics_points(&server, &id).await;
        (points.len() as u64 == durable).then_some((durable, points))
    })
    .await;
    let (durable, points) = durable;
    assert!(
        durable >= taken_while_down,
        "{durable} < {taken_while_down}"
    );
    let times: Vec<_> = points.iter().map(|p| time(p.time)).collect();
    assert!(
        times.windows(2).all(|w| w[0] < w[1]),
        "sample times are not strictly increasing (a duplicate?): {times:?}"
    );
    server.stop().await;

    let seqs = stored_seqs(dir.path(), &org, &id);
    let expected: Vec<u64> = (1..=durable).collect();
    assert_eq!(
        seqs, expected,
        "stored seqs must be 1..={durable}, each once"
    );
}

async fn agent_org(server: &TestServer, id: &str) -> String {
    agent(server, id).await.org_id
}

async fn agent_durable_seq(server: &TestServer, id: &str) -> u64 {
    agent(server, id).await.last_durable_seq
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resent_samples_are_deduplicated_and_still_acked() {
    trace_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(fast_config(dir.path())).await;
    let (id, credential) = server.enroll("dup-1", &[]).await;
    let (mut session, _) = RawSession::hello(&server, &id, &credential, "dup-1")
        .await
        .expect("hello");
    session.send_samples(1..=10).await;
    assert_eq!(session.wait_ack(10).await.expect("ack"), 10);
    drop(session);
    server.wait_status(&id, pb::AgentStatus::Offline).await;

    let (mut session, welcome) = RawSession::hello(&server, &id, &credential, "dup-1")
        .await
        .expect("hello again");
    assert_eq!(welcome.last_durable_seq, 10);
    session.send_samples(5..=15).await;
    assert_eq!(session.wait_ack(15).await.expect("ack"), 15);

    let points = metrics_points(&server, &id).await;
    assert_eq!(points.len(), 15, "{points:?}");
    assert!(points.iter().all(|p| p.sample_count == 1));
    assert_eq!(agent_durable_seq(&server, &id).await, 15);
    let org = agent_org(&server, &id).await;
    drop(session);
    server.stop().await;
    assert_eq!(
        stored_seqs(dir.path(), &org, &id),
        (1..=15).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_of_another_schema_version_is_refused_and_left_untouched() {
    trace_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(fast_config(dir.path())).await;
    let (id, credential) = server.enroll("schema-1", &[]).await;
    let (mut session, _) = RawSession::hello(&server, &id, &credential, "schema-1")
        .await
        .expect("hello");
    session.send_samples(1..=5).await;
    session.wait_ack(5).await.expect("ack");
    drop(session);
    server.stop().await;

    set_schema_version(dir.path(), "999");
    let records_before = dump_store(dir.path());
    match tether_server::server::start(fast_config(dir.path())).await {
        Err(StartError::Store {
            source: StoreError::SchemaNewer { found, supported },
            ..
        }) => {
            assert_eq!(found, 999);
            assert_eq!(supported, tether_server::store::SCHEMA_VERSION);
        }
        Err(other) => panic!("expected a newer schema refused, got {other:?}"),
        Ok(_) => panic!("a store of schema version 999 was opened"),
    }
    let records_after = dump_store(dir.path());
    assert_eq!(
        records_before.len(),
        records_after.len(),
        "the refused store gained or lost records"
    );
    assert!(
        records_before == records_after,
        "the refused store was modified"
    );

    set_schema_version(
        dir.path(),
        &tether_server::store::SCHEMA_VERSION.to_string(),
    );
    let server = TestServer::start(fast_config(dir.path())).await;
    let restored = agent(&server, &id).await;
    assert_eq!(restored.last_durable_seq, 5);
    assert_eq!(
        restored.system_info.as_ref().map(|i| i.hostname.as_str()),
        Some(system_info("schema-1").hostname.as_str())
    );
    assert_eq!(metrics_points(&server, &id).await.len(), 5);
    server.stop().await;
}
