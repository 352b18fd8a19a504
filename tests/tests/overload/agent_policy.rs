//! The agent's error policy, real agent and simulator alike: it stops only when revoked without
//! an enrollment token (with one, it enrolls again); every other answer (any gRPC code, one no
//! gRPC version defines, a refused connection) is retried with backoff, never sooner than the
//! server asked.
//!
//! The misbehaving server is [`Scripted`]: a tonic `AgentService` on a real socket answering
//! every `Connect` with the next status of a script (per credential), which no real Tether
//! server would send in that order, if at all.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tether_agent::simulate::{SimulateConfig, simulate};
use tether_proto as pb;
use tether_proto::refusal::{self, Refusal};
use tether_tests::{TestAgent, TestServer, agent_config, eventually, fast_config, trace_init};
use tokio_util::sync::CancellationToken;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Request, Response, Status, Streaming};

/// The delay the script's `UNAVAILABLE` asks for.
const PUSHBACK: Duration = Duration::from_millis(1500);
/// A grpc-status no gRPC version defines (tonic reports it as `UNKNOWN`).
const UNDEFINED_CODE: &str = "42";
/// Marks a scripted answer whose grpc-status the response layer rewrites to its value.
const RAW_STATUS: &str = "x-scripted-grpc-status";

/// Per credential: when each call came and which step of the script answered it.
type Calls = HashMap<String, Vec<(Instant, usize)>>;

/// Credentials issued by every [`Scripted`] server of the test binary, so that no two are alike.
static ISSUED: AtomicUsize = AtomicUsize::new(0);

/// One scripted answer to `Connect`.
#[derive(Clone, Debug)]
enum Answer {
    Code(Code),
    /// `UNAVAILABLE` with `grpc-retry-pushback-ms`.
    Busy(Duration),
    /// A grpc-status value outside the enum.
    Undefined,
    /// `PERMISSION_DENIED` marked as a revoked credential.
    Revoked,
}

/// Every answer a session can fail with, except revocation: every code but OK (a bare
/// `PERMISSION_DENIED` included), a busy answer with a delay, and a code outside the enum.
fn every_failure() -> Vec<Answer> {
    let mut script = vec![Answer::Busy(PUSHBACK), Answer::Undefined];
    script.extend((1..=16).map(Code::from_i32).map(Answer::Code));
    script
}

/// A server answering `Connect` from a script, one step per call and credential.
#[derive(Clone)]
struct Scripted {
    script: Arc<Vec<Answer>>,
    calls: Arc<Mutex<Calls>>,
    /// Answer `Enroll` with a fresh id and credential (else `UNAVAILABLE`).
    enrolls: bool,
    /// The credentials this server issued, in order.
    issued: Arc<Mutex<Vec<String>>>,
}

/// A running [`Scripted`] server.
struct ScriptedServer {
    scripted: Scripted,
    url: String,
    shutdown: CancellationToken,
    handle: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Scripted {
    fn new(script: Vec<Answer>, enrolls: bool) -> Self {
        Self {
            script: Arc::new(script),
            calls: Arc::default(),
            enrolls,
            issued: Arc::default(),
        }
    }

    /// Serves on `addr` (waiting for it to be free).
    async fn serve(self, addr: SocketAddr) -> ScriptedServer {
        let listener = eventually("the address to be free", || async {
            tokio::net::TcpListener::bind(addr).await.ok()
        })
        .await;
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let shutdown = CancellationToken::new();
        let router = tonic::transport::Server::builder()
            .layer(tower::layer::layer_fn(RawStatus))
            .add_service(pb::agent_service_server::AgentServiceServer::new(
                self.clone(),
            ));
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let stop = shutdown.clone();
        let handle = tokio::spawn(async move {
            router
                .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
                .await
        });
        ScriptedServer {
            scripted: self,
            url,
            shutdown,
            handle,
        }
    }

    /// Calls per credential.
    fn calls(&self) -> Calls {
        self.calls.lock().expect("calls").clone()
    }

    /// The credentials this server issued, as presented (`Bearer …`).
    fn issued(&self) -> Vec<String> {
        self.issued.lock().expect("issued").clone()
    }
}

impl ScriptedServer {
    async fn stop(self) -> Scripted {
        self.shutdown.cancel();
        self.handle
            .await
            .expect("scripted server task")
            .expect("scripted server");
        self.scripted
    }
}

#[tonic::async_trait]
impl pb::agent_service_server::AgentService for Scripted {
    async fn enroll(
        &self,
        _request: Request<pb::EnrollRequest>,
    ) -> Result<Response<pb::EnrollResponse>, Status> {
        if !self.enrolls {
            return Err(Status::unavailable("scripted: no enrollment here"));
        }
        let n = ISSUED.fetch_add(1, Ordering::Relaxed) + 1;
        let credential = format!("tether_scripted{n}_secret");
        self.issued
            .lock()
            .expect("issued")
            .push(format!("Bearer {credential}"));
        Ok(Response::new(pb::EnrollResponse {
            agent_id: format!("scripted-{n}"),
            org_id: "default".to_owned(),
            agent_credential: credential,
        }))
    }

    type ConnectStream = futures::stream::Pending<Result<pb::ConnectResponse, Status>>;

    async fn connect(
        &self,
        request: Request<Streaming<pb::ConnectRequest>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let credential = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let step = {
            let mut calls = self.calls.lock().expect("calls");
            let calls = calls.entry(credential).or_default();
            let step = calls.len() % self.script.len();
            calls.push((Instant::now(), step));
            step
        };
        Err(match &self.script[step] {
            Answer::Code(code) => Status::new(*code, "scripted failure"),
            Answer::Busy(delay) => {
                refusal::with_retry_after(Status::unavailable("scripted: busy"), *delay)
            }
            Answer::Revoked => refusal::refuse(
                Code::PermissionDenied,
                "scripted: revoked",
                Refusal::CredentialRevoked,
            ),
            Answer::Undefined => {
                let mut metadata = MetadataMap::new();
                metadata.insert(RAW_STATUS, MetadataValue::from_static(UNDEFINED_CODE));
                Status::with_metadata(Code::Unknown, "scripted: undefined code", metadata)
            }
        })
    }
}

/// Rewrites the grpc-status of answers marked with [`RAW_STATUS`] to the marker's value.
#[derive(Clone)]
struct RawStatus<S>(S);

impl<S, B> tower::Service<http::Request<B>> for RawStatus<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let response = self.0.call(request);
        Box::pin(async move {
            let mut response = response.await?;
            let headers = response.headers_mut();
            if let Some(raw) = headers.remove(RAW_STATUS) {
                headers.insert("grpc-status", raw);
            }
            Ok(response)
        })
    }
}

/// A simulator of `n_agents` over `n_connections` against `url`, with a short backoff.
fn simulator(url: &str, n_agents: usize, n_connections: usize, dir: &Path) -> SimulateConfig {
    let mut config = SimulateConfig::new(url.to_owned(), n_agents);
    config.n_connections = n_connections;
    config.state_file = Some(dir.join("sim.state"));
    config.stats_file = Some(dir.join("sim.stats"));
    config.stats_interval = Duration::from_millis(200);
    config.backoff.initial = Duration::from_millis(100);
    config.backoff.max = Duration::from_millis(500);
    config
}

/// The latest `stopped` count (agents that gave up on their own) in a simulator stats file.
fn simulated_agents_stopped(stats_file: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(stats_file).ok()?;
    text.lines()
        .rev()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|record| record["event"] == "stats")?["stopped"]
        .as_u64()
}

async fn count_online(server: &TestServer) -> usize {
    let mut fleet = server.fleet().await;
    tether_tests::list_all(
        &mut fleet,
        pb::ListAgentsRequest {
            statuses: vec![pb::AgentStatus::Online as i32],
            ..Default::default()
        },
    )
    .await
    .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_retry_every_failure_but_revocation_and_honour_the_servers_delay() {
    trace_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let sim_dir = tempfile::tempdir().expect("simulator dir");
    let config = fast_config(dir.path());
    let server = TestServer::start(config.clone()).await;
    let addr = server.addr;

    // A real agent, enrolled, then running without an enrollment token: nothing but waiting
    // can help it when the server refuses it.
    let enrolling = server.spawn_agent("real", &[]).await;
    let real_id = enrolling.id().await;
    server.wait_status(&real_id, pb::AgentStatus::Online).await;
    let state_dir = enrolling.stop().await;
    let real = server.spawn_agent_in("real", &[], state_dir, None, None);

    // Four simulated agents over two shared connections, enrolled by a first short run and
    // then running from their state file, without a token either.
    let mut first_run = simulator(&server.url, 4, 2, sim_dir.path());
    first_run.enroll_token = Some(server.enrollment_token().await);
    first_run.duration = Some(Duration::from_millis(100));
    simulate(first_run, CancellationToken::new())
        .await
        .expect("enroll the simulated agents");
    let sim_stop = CancellationToken::new();
    let sim = tokio::spawn(simulate(
        simulator(&server.url, 4, 2, sim_dir.path()),
        sim_stop.clone(),
    ));
    eventually("the five agents online", || async {
        (count_online(&server).await == 5).then_some(())
    })
    .await;
    server.stop().await;

    // The same address now answers every session with every failure there is, in turn.
    let script = every_failure();
    let steps = script.len();
    let scripted = Scripted::new(script.clone(), false).serve(addr).await;
    eventually("every agent to go through the whole script", || async {
        let calls = scripted.scripted.calls();
        (calls.len() == 5 && calls.values().all(|c| c.len() > steps)).then_some(())
    })
    .await;
    let calls = scripted.stop().await.calls();
    assert!(!real.handle.is_finished(), "the real agent kept going");
    assert_eq!(
        simulated_agents_stopped(&sim_dir.path().join("sim.stats")),
        Some(0)
    );

    // After the busy answer, nobody came back sooner than asked.
    let busy = script
        .iter()
        .position(|a| matches!(a, Answer::Busy(_)))
        .expect("a busy step");
    for (credential, calls) in &calls {
        for pair in calls.windows(2) {
            let ((at, step), (next, _)) = (pair[0], pair[1]);
            if step == busy {
                let waited = next.duration_since(at);
                assert!(
                    waited >= PUSHBACK,
                    "{credential:.12}… retried after {waited:?}, asked to wait {PUSHBACK:?}"
                );
            }
        }
    }

    // The real server is back: everyone comes online again, as the same agents.
    let server = TestServer::start_at(addr, config).await;
    eventually("the five agents online again", || async {
        (count_online(&server).await == 5).then_some(())
    })
    .await;
    server.wait_status(&real_id, pb::AgentStatus::Online).await;
    assert!(!real.handle.is_finished());
    sim_stop.cancel();
    sim.await.expect("simulator task").expect("simulator");
    assert_eq!(
        simulated_agents_stopped(&sim_dir.path().join("sim.stats")),
        Some(0)
    );
    real.stop().await;
    server.stop().await;
}

/// A free address on the loopback interface.
async fn free_addr() -> SocketAddr {
    let bind = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    bind.local_addr().expect("addr")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_agents_stop_without_a_token_and_enroll_again_with_one() {
    trace_init();
    let dir = tempfile::tempdir().expect("tempdir");
    const TOKEN: &str = "tether_any_token";

    // Credentials first, from a server that enrolls and then refuses every session: a real
    // agent and three simulated ones, which then run without a token.
    let enroller = Scripted::new(vec![Answer::Code(Code::Unavailable)], true)
        .serve(free_addr().await)
        .await;
    let state = tempfile::tempdir().expect("agent state dir");
    let config = agent_config(&enroller.url, state.path(), &[], Some(TOKEN.to_owned()));
    let enrolling = TestAgent::spawn_with(config, state, "revoked", "linux");
    enrolling.id().await;
    let state = enrolling.stop().await;
    let mut first_run = simulator(&enroller.url, 3, 3, dir.path());
    first_run.enroll_token = Some(TOKEN.to_owned());
    first_run.duration = Some(Duration::from_millis(100));
    simulate(first_run, CancellationToken::new())
        .await
        .expect("enroll the simulated agents");
    let without_token = enroller.stop().await.issued();
    assert_eq!(without_token.len(), 4);

    // The server now fails every session twice, then revokes the credential.
    let script = vec![
        Answer::Code(Code::Unavailable),
        Answer::Code(Code::Internal),
        Answer::Revoked,
    ];
    let scripted = Scripted::new(script, true).serve(free_addr().await).await;
    let config = agent_config(&scripted.url, state.path(), &[], None);
    let real = TestAgent::spawn_with(config, state, "revoked", "linux");
    let sim_stop = CancellationToken::new();
    let sim = tokio::spawn(simulate(
        simulator(&scripted.url, 3, 3, dir.path()),
        sim_stop.clone(),
    ));
    // And a real agent with a token, new to this server.
    let kept_state = tempfile::tempdir().expect("agent state dir");
    let config = agent_config(
        &scripted.url,
        kept_state.path(),
        &[],
        Some(TOKEN.to_owned()),
    );
    let kept = TestAgent::spawn_with(config, kept_state, "kept", "linux");

    eventually("the real agent without a token to stop", || async {
        real.handle.is_finished().then_some(())
    })
    .await;
    match real.handle.join().await {
        Err(tether_agent::AgentError::Revoked(message)) => {
            assert!(message.contains("--enroll-token"), "{message}");
        }
        other => panic!("expected the agent to stop as revoked, got {other:?}"),
    }
    eventually("the three simulated agents to stop", || async {
        (simulated_agents_stopped(&dir.path().join("sim.stats")) == Some(3)).then_some(())
    })
    .await;
    // The agent with a token enrolled again after its revocation, and again, and goes on.
    eventually("the agent with a token to enroll again twice", || async {
        (scripted.scripted.issued().len() >= 3).then_some(())
    })
    .await;
    assert!(
        !kept.handle.is_finished(),
        "the agent with a token kept going"
    );
    let calls = scripted.stop().await.calls();
    // Each agent without a token tried exactly as long as the script lasted, and not once more.
    for credential in &without_token {
        let n = calls.get(credential).map_or(0, Vec::len);
        assert_eq!(n, 3, "{credential:.20}…");
    }
    kept.stop().await;
    sim_stop.cancel();
    sim.await.expect("simulator task").expect("simulator");
}
