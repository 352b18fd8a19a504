//! Admission control of agent sessions: a server that is behind says so early and cheaply, with
//! a retry delay, and never blames the agent for its own slowness.

use std::time::{Duration, Instant};

use tether_proto as pb;
use tether_tests::{
    AgentClient, Healthy, RawSession, TestServer, eventually, fast_config, hello, sessions_refused,
    trace_init,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

/// The retry delay a refusal carries (`grpc-retry-pushback-ms`).
fn pushback(status: &tonic::Status) -> Duration {
    tether_proto::refusal::retry_after(status)
        .unwrap_or_else(|| panic!("no retry delay in {status:?}"))
}

/// A `Connect` stream that sends nothing, holding its place in setup until the task is aborted
/// (the client then resets the stream).
struct HeldInSetup {
    task: JoinHandle<Result<(), tonic::Status>>,
    /// Keeps the request stream open.
    _tx: mpsc::Sender<pb::ConnectRequest>,
}

impl HeldInSetup {
    fn open(mut client: AgentClient) -> Self {
        let (tx, rx) = mpsc::channel(1);
        let task =
            tokio::spawn(async move { client.connect(ReceiverStream::new(rx)).await.map(|_| ()) });
        Self { task, _tx: tx }
    }
}

fn in_setup(server: &TestServer) -> i64 {
    server.metrics.sessions_in_setup.get()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_without_hello_is_told_to_retry_not_blamed() {
    trace_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = fast_config(dir.path());
    config.admission.hello_timeout = Duration::from_millis(300);
    let retry_after = config.admission.retry_after;
    let server = TestServer::start(config).await;
    let healthy = Healthy::start(&server).await;

    let (_, credential) = server.enroll("mute", &[]).await;
    let status = RawSession::open(&server, Some(&credential), None)
        .await
        .err()
        .expect("a stream without Hello is ended");
    // The server may be the slow one: UNAVAILABLE and "come back later", not INVALID_ARGUMENT.
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let delay = pushback(&status);
    assert!(
        delay >= retry_after && delay <= retry_after * 2,
        "retry delay {delay:?}"
    );
    assert_eq!(sessions_refused(&server.metrics, "hello_timeout"), 1);
    assert_eq!(
        in_setup(&server),
        0,
        "the refused stream gave its place back"
    );

    healthy.assert_unaffected(&server).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_beyond_the_setup_limit_are_refused_before_any_work() {
    trace_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = fast_config(dir.path());
    config.admission.max_sessions_in_setup = 3;
    config.admission.hello_timeout = Duration::from_secs(60);
    config.admission.retry_after = Duration::from_millis(400);
    let retry_after = config.admission.retry_after;
    let server = TestServer::start(config).await;
    let healthy = Healthy::start(&server).await;

    let mut agents = Vec::new();
    for i in 0..4 {
        agents.push(server.enroll(&format!("held-{i}"), &[]).await);
    }
    // Three streams that never send Hello take every place in setup.
    let mut held = Vec::new();
    for (_, credential) in &agents[..3] {
        held.push(HeldInSetup::open(
            server.agent_client(Some(credential)).await,
        ));
    }
    eventually("three sessions in setup", || async {
        (in_setup(&server) == 3).then_some(())
    })
    .await;

    // A fourth agent, Hello and all, is refused at once, long before any Hello timeout, and
    // the server did no work for it: the agent is still as enrolled, never seen online.
    let (id, credential) = &agents[3];
    let started = Instant::now();
    let first = pb::connect_request::Message::Hello(hello(id, "held-3", &[]));
    let status = RawSession::open(&server, Some(credential), Some(first))
        .await
        .err()
        .expect("refused while setup is full");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    let delay = pushback(&status);
    assert!(
        delay >= retry_after && delay <= retry_after * 2,
        "retry delay {delay:?}"
    );
    assert_eq!(sessions_refused(&server.metrics, "setup_full"), 1);
    let agent = server
        .get_agent(id)
        .await
        .expect("get")
        .agent
        .expect("agent");
    assert_eq!(agent.status, pb::AgentStatus::Offline as i32);
    assert!(agent.last_seen.is_none(), "no session was opened for it");

    // A real agent arriving now is refused, honours the delay, and gets in once a place frees.
    let latecomer = server.spawn_agent("latecomer", &[]).await;
    eventually("the latecomer to be refused", || async {
        (latecomer.handle.stats.session_failures() >= 1).then_some(())
    })
    .await;
    assert!(
        !latecomer.handle.is_finished(),
        "a refusal never stops an agent"
    );
    let released = held.remove(0);
    released.task.abort();
    let latecomer_id = latecomer.id().await;
    server
        .wait_status(&latecomer_id, pb::AgentStatus::Online)
        .await;

    // One agent has at most one session in setup: a second one of a held agent is refused.
    let (id, credential) = &agents[1];
    let first = pb::connect_request::Message::Hello(hello(id, "held-1", &[]));
    let status = RawSession::open(&server, Some(credential), Some(first))
        .await
        .err()
        .expect("refused while its first session is in setup");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(sessions_refused(&server.metrics, "agent_in_setup"), 1);

    for held in held {
        held.task.abort();
    }
    eventually("every place in setup given back", || async {
        (in_setup(&server) == 0).then_some(())
    })
    .await;
    healthy.assert_unaffected(&server).await;
    latecomer.stop().await;
    server.stop().await;
}
