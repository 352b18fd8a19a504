//! Test harness for Tether's end-to-end tests: a real server on `127.0.0.1:0`, real agents
//! (the `tether-agent` library with a synthetic collector so that many agents on one host look
//! like distinct machines), the real CLI, and raw gRPC clients for driving the protocol by hand
//! (bad inputs, exact sequencing).
//!
//! Nothing here stands in for the store, the network or tonic. Tests wait on conditions with
//! [`eventually`], never on sleeps.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tether_proto as pb;
use tether_server::config::Config;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Streaming;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

/// How long [`eventually`] waits by default. Generous: CI machines are slow and shared.
pub const EVENTUALLY: Duration = Duration::from_secs(20);

/// Installs a test subscriber once (honours `RUST_LOG`).
pub fn trace_init() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

/// Polls `check` until it returns `Some`, or panics after `timeout` naming `what`.
pub async fn eventually_within<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// [`eventually_within`] with [`EVENTUALLY`].
pub async fn eventually<T, F, Fut>(what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    eventually_within(EVENTUALLY, what, check).await
}

/// Server settings with short intervals, so liveness tests finish in seconds.
pub fn fast_config(data_dir: &Path) -> Config {
    let mut config = Config::new(data_dir);
    config.liveness.heartbeat_interval = Duration::from_millis(200);
    config.liveness.metrics_interval = Duration::from_millis(200);
    config.liveness.stale_after = Duration::from_millis(1200);
    config.liveness.offline_after = Duration::from_millis(2400);
    config.liveness.tick = Duration::from_millis(50);
    config.storage.writer_linger = Duration::from_millis(2);
    config
}

/// Adds `authorization: Bearer <token>` to every request.
#[derive(Clone)]
pub struct Bearer(pub Option<String>);

impl tonic::service::Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = &self.0 {
            let value = MetadataValue::try_from(format!("Bearer {token}"))
                .map_err(|_| tonic::Status::invalid_argument("token is not valid header text"))?;
            request.metadata_mut().insert("authorization", value);
        }
        Ok(request)
    }
}

pub type Authed = InterceptedService<Channel, Bearer>;
pub type FleetClient = pb::fleet_service_client::FleetServiceClient<Authed>;
pub type AdminClient = pb::admin_service_client::AdminServiceClient<Authed>;
pub type AgentClient = pb::agent_service_client::AgentServiceClient<Authed>;

/// A server running in this process on a real socket.
pub struct TestServer {
    pub addr: SocketAddr,
    pub url: String,
    pub data_dir: PathBuf,
    pub admin_token: String,
    /// Where the server serves Prometheus metrics, when its config asked for them.
    pub metrics_addr: Option<SocketAddr>,
    shutdown: CancellationToken,
    handle: JoinHandle<Result<(), tether_server::server::StartError>>,
}

// === impl TestServer ===

impl TestServer {
    /// Starts a server with `config` on `127.0.0.1:0`.
    pub async fn start(config: Config) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        Self::start_on(listener, config).await
    }

    /// Starts a server with `config` on `addr` (e.g. the address of a stopped server).
    pub async fn start_at(addr: SocketAddr, config: Config) -> Self {
        let listener = eventually("the old address to be free", || async {
            tokio::net::TcpListener::bind(addr).await.ok()
        })
        .await;
        Self::start_on(listener, config).await
    }

    async fn start_on(listener: tokio::net::TcpListener, config: Config) -> Self {
        let addr = listener.local_addr().expect("local addr");
        let data_dir = config.data_dir.clone();
        let server = tether_server::server::start(config)
            .await
            .expect("server starts");
        let admin_token = std::fs::read_to_string(&server.admin_token_file)
            .expect("admin token file")
            .trim()
            .to_owned();
        let metrics_addr = server.metrics_addr();
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(server.serve(listener, shutdown.clone()));
        Self {
            addr,
            url: format!("http://{addr}"),
            data_dir,
            admin_token,
            metrics_addr,
            shutdown,
            handle,
        }
    }

    /// Shuts the server down in order and re-raises a panic or error from it.
    pub async fn stop(self) {
        self.shutdown.cancel();
        match self.handle.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("server failed: {e}"),
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }

    pub async fn channel(&self) -> Channel {
        Endpoint::from_shared(self.url.clone())
            .expect("url")
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .expect("connect to test server")
    }

    pub async fn fleet(&self) -> FleetClient {
        self.fleet_as(Some(&self.admin_token)).await
    }

    pub async fn fleet_as(&self, token: Option<&str>) -> FleetClient {
        pb::fleet_service_client::FleetServiceClient::with_interceptor(
            self.channel().await,
            Bearer(token.map(str::to_owned)),
        )
    }

    pub async fn admin(&self) -> AdminClient {
        pb::admin_service_client::AdminServiceClient::with_interceptor(
            self.channel().await,
            Bearer(Some(self.admin_token.clone())),
        )
    }

    pub async fn agent_client(&self, token: Option<&str>) -> AgentClient {
        pb::agent_service_client::AgentServiceClient::with_interceptor(
            self.channel().await,
            Bearer(token.map(str::to_owned)),
        )
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20)
    }

    /// Creates an enrollment token through the admin RPC; returns its secret.
    pub async fn enrollment_token(&self) -> String {
        self.admin()
            .await
            .create_enrollment_token(pb::CreateEnrollmentTokenRequest::default())
            .await
            .expect("create enrollment token")
            .into_inner()
            .secret
    }

    /// Enrolls a synthetic machine directly over the RPC; returns (agent id, credential).
    pub async fn enroll(&self, hostname: &str, labels: &[(&str, &str)]) -> (String, String) {
        let token = self.enrollment_token().await;
        let response = self
            .agent_client(Some(&token))
            .await
            .enroll(pb::EnrollRequest {
                system_info: Some(system_info(hostname)),
                labels: labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
                name: String::new(),
            })
            .await
            .expect("enroll")
            .into_inner();
        (response.agent_id, response.agent_credential)
    }

    /// Starts a real agent (synthetic machine `hostname`) with its own state directory.
    pub async fn spawn_agent(&self, hostname: &str, labels: &[(&str, &str)]) -> TestAgent {
        let state_dir = tempfile::tempdir().expect("agent state dir");
        let token = self.enrollment_token().await;
        TestAgent::spawn(&self.url, state_dir, hostname, "linux", labels, Some(token))
    }

    pub async fn get_agent(&self, id: &str) -> Result<pb::GetAgentResponse, tonic::Status> {
        self.fleet()
            .await
            .get_agent(pb::GetAgentRequest {
                agent_id: id.to_owned(),
            })
            .await
            .map(tonic::Response::into_inner)
    }

    /// Waits until agent `id` has `status`; returns the agent.
    pub async fn wait_status(&self, id: &str, status: pb::AgentStatus) -> pb::Agent {
        let fleet = self.fleet().await;
        eventually(&format!("agent {id} to be {status:?}"), || {
            let mut fleet = fleet.clone();
            async move {
                let agent = fleet
                    .get_agent(pb::GetAgentRequest {
                        agent_id: id.to_owned(),
                    })
                    .await
                    .ok()?
                    .into_inner()
                    .agent?;
                (agent.status == status as i32).then_some(agent)
            }
        })
        .await
    }

    /// Runs `tetherctl` with `args` against this server (admin token); returns stdout.
    ///
    /// # Errors
    ///
    /// The CLI's error, as the binary would report it.
    pub async fn cli(&self, args: &[&str]) -> Result<String, tetherctl::CliError> {
        self.cli_as(&self.admin_token, args).await
    }

    /// Runs `tetherctl` with `args` and `token`; returns stdout.
    ///
    /// # Errors
    ///
    /// The CLI's error, as the binary would report it.
    pub async fn cli_as(&self, token: &str, args: &[&str]) -> Result<String, tetherctl::CliError> {
        use clap::Parser as _;
        let mut argv = vec!["tetherctl", "--server", &self.url, "--token", token];
        argv.extend_from_slice(args);
        let cli = tetherctl::Cli::try_parse_from(argv)
            .map_err(|e| tetherctl::CliError::Usage(e.to_string()))?;
        let mut out = Vec::new();
        tetherctl::run_with_env(cli, &tetherctl::Env::default(), &mut out).await?;
        Ok(String::from_utf8(out).expect("utf-8 output"))
    }
}

/// A real agent running in this process.
pub struct TestAgent {
    pub handle: tether_agent::AgentHandle,
    pub state_dir: tempfile::TempDir,
    pub hostname: String,
}

impl TestAgent {
    pub fn spawn(
        url: &str,
        state_dir: tempfile::TempDir,
        hostname: &str,
        os: &str,
        labels: &[(&str, &str)],
        enroll_token: Option<String>,
    ) -> Self {
        let mut config = tether_agent::AgentConfig::new(url, state_dir.path());
        config.enroll_token = enroll_token;
        config.labels = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<BTreeMap<_, _>>();
        config.backoff.initial = Duration::from_millis(100);
        config.backoff.max = Duration::from_millis(500);
        let collector =
            tether_agent::SyntheticCollector::new(hostname, format!("hw-{hostname}"), os);
        let handle = tether_agent::spawn(config, Box::new(collector));
        Self {
            handle,
            state_dir,
            hostname: hostname.to_owned(),
        }
    }

    /// The agent id, once enrolled.
    pub async fn id(&self) -> String {
        eventually("the agent to enroll", || async {
            self.handle.stats.agent_id()
        })
        .await
    }

    /// Stops the agent (it says Goodbye) and waits for it.
    pub async fn stop(self) -> tempfile::TempDir {
        self.handle.shutdown();
        if let Err(e) = self.handle.join().await {
            panic!("agent failed: {e}");
        }
        self.state_dir
    }
}

/// A `SystemInfo` for a synthetic machine.
pub fn system_info(hostname: &str) -> pb::SystemInfo {
    pb::SystemInfo {
        hostname: hostname.to_owned(),
        os_name: "linux".to_owned(),
        os_version: "1".to_owned(),
        kernel_version: "6.1".to_owned(),
        architecture: "x86_64".to_owned(),
        cpu_model: "test".to_owned(),
        logical_cores: 2,
        total_memory_bytes: 1 << 30,
        hardware_id: format!("hw-{hostname}"),
        boot_time: None,
        agent_version: "test".to_owned(),
    }
}

/// A sample with `seq`, taken now.
pub fn sample(seq: u64) -> pb::MetricsSample {
    pb::MetricsSample {
        seq,
        time: Some(prost_types::Timestamp::from(std::time::SystemTime::now())),
        cpu_percent: 10.0,
        memory_used_bytes: 100,
        memory_total_bytes: 1000,
        ..Default::default()
    }
}

/// A session driven by hand: the test decides every message.
pub struct RawSession {
    pub tx: mpsc::Sender<pb::ConnectRequest>,
    pub rx: Streaming<pb::ConnectResponse>,
}

impl RawSession {
    /// Opens `Connect` with `credential` and sends `first` as the first message. Returns the
    /// status if the server refuses the stream.
    ///
    /// # Errors
    ///
    /// The status the server answered with.
    pub async fn open(
        server: &TestServer,
        credential: Option<&str>,
        first: Option<pb::connect_request::Message>,
    ) -> Result<Self, tonic::Status> {
        let (tx, rx) = mpsc::channel(64);
        if let Some(first) = first {
            tx.send(pb::ConnectRequest {
                message: Some(first),
            })
            .await
            .expect("queue first message");
        }
        let mut client = server.agent_client(credential).await;
        let rx = client.connect(ReceiverStream::new(rx)).await?.into_inner();
        Ok(Self { tx, rx })
    }

    /// Opens a session with a proper `Hello` and returns it with the `Welcome`.
    ///
    /// # Errors
    ///
    /// The status the server answered with.
    pub async fn hello(
        server: &TestServer,
        agent_id: &str,
        credential: &str,
        hostname: &str,
    ) -> Result<(Self, pb::Welcome), tonic::Status> {
        let hello = pb::connect_request::Message::Hello(pb::Hello {
            agent_id: agent_id.to_owned(),
            agent_version: "test".to_owned(),
            system_info: Some(system_info(hostname)),
            labels: HashMap::new(),
        });
        let mut session = Self::open(server, Some(credential), Some(hello)).await?;
        match session.recv().await? {
            Some(pb::connect_response::Message::Welcome(w)) => Ok((session, w)),
            other => panic!("expected Welcome, got {other:?}"),
        }
    }

    pub async fn send(&self, message: pb::connect_request::Message) {
        self.tx
            .send(pb::ConnectRequest {
                message: Some(message),
            })
            .await
            .expect("session outbound queue");
    }

    pub async fn send_samples(&self, seqs: impl IntoIterator<Item = u64>) {
        self.send(pb::connect_request::Message::Metrics(pb::MetricsReport {
            samples: seqs.into_iter().map(sample).collect(),
        }))
        .await;
    }

    /// The next message, `None` at a clean end of stream.
    ///
    /// # Errors
    ///
    /// The status the stream ended with.
    pub async fn recv(&mut self) -> Result<Option<pb::connect_response::Message>, tonic::Status> {
        match tokio::time::timeout(EVENTUALLY, self.rx.message()).await {
            Ok(Ok(Some(m))) => Ok(m.message),
            Ok(Ok(None)) => Ok(None),
            Ok(Err(status)) => Err(status),
            Err(_) => panic!("no message from the server within {EVENTUALLY:?}"),
        }
    }

    /// Reads until a `MetricsAck` at or above `seq` arrives (skipping pongs).
    ///
    /// # Errors
    ///
    /// The status the stream ended with.
    pub async fn wait_ack(&mut self, seq: u64) -> Result<u64, tonic::Status> {
        loop {
            match self.recv().await? {
                Some(pb::connect_response::Message::MetricsAck(ack)) if ack.durable_seq >= seq => {
                    return Ok(ack.durable_seq);
                }
                Some(_) => {}
                None => return Err(tonic::Status::unknown("stream ended before the ack")),
            }
        }
    }

    /// Closes the outbound half (the server sees end of stream).
    pub fn close(self) -> Streaming<pb::ConnectResponse> {
        self.rx
    }
}

/// Lists every agent matching `req`, following pages.
pub async fn list_all(fleet: &mut FleetClient, mut req: pb::ListAgentsRequest) -> Vec<pb::Agent> {
    let mut out = Vec::new();
    loop {
        let page = fleet
            .list_agents(req.clone())
            .await
            .expect("list agents")
            .into_inner();
        out.extend(page.agents);
        if page.next_page_token.is_empty() {
            return out;
        }
        req.page_token = page.next_page_token;
    }
}

// === helpers for bad-input, query and CLI tests ===

/// A label map from `(key, value)` pairs.
pub fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// A `Hello` for `agent_id` on the synthetic machine `hostname` (see [`system_info`]) asking
/// for `labels`.
pub fn hello(agent_id: &str, hostname: &str, pairs: &[(&str, &str)]) -> pb::Hello {
    pb::Hello {
        agent_id: agent_id.to_owned(),
        agent_version: "test".to_owned(),
        system_info: Some(system_info(hostname)),
        labels: labels(pairs),
    }
}

impl TestServer {
    /// Enrolls with a fresh (unlimited) enrollment token and `request` exactly as given, so the
    /// caller chooses the `SystemInfo` (OS, hardware id), the name and the labels.
    ///
    /// # Errors
    ///
    /// The status `Enroll` answered with.
    pub async fn enroll_with(
        &self,
        request: pb::EnrollRequest,
    ) -> Result<pb::EnrollResponse, tonic::Status> {
        let token = self.enrollment_token().await;
        self.agent_client(Some(&token))
            .await
            .enroll(request)
            .await
            .map(tonic::Response::into_inner)
    }
}

impl RawSession {
    /// Opens a session whose first message is `hello` and returns it with the `Welcome`.
    ///
    /// # Errors
    ///
    /// The status the server answered with.
    pub async fn hello_with(
        server: &TestServer,
        credential: &str,
        hello: pb::Hello,
    ) -> Result<(Self, pb::Welcome), tonic::Status> {
        let first = pb::connect_request::Message::Hello(hello);
        let mut session = Self::open(server, Some(credential), Some(first)).await?;
        match session.recv().await? {
            Some(pb::connect_response::Message::Welcome(w)) => Ok((session, w)),
            other => panic!("expected Welcome, got {other:?}"),
        }
    }

    /// Reads until the stream ends with an error status (skipping acks and pongs) and returns
    /// it. Panics if the stream ends cleanly instead.
    pub async fn wait_error(&mut self) -> tonic::Status {
        loop {
            match self.recv().await {
                Ok(Some(_)) => {}
                Ok(None) => panic!("the stream ended cleanly; expected an error status"),
                Err(status) => return status,
            }
        }
    }
}

/// Runs `tetherctl` with `args` against the server at `url` with `token`; returns stdout.
/// For servers that are not a [`TestServer`] (e.g. an address where nothing listens).
///
/// # Errors
///
/// The CLI's error, as the binary would report it.
pub async fn cli_at(url: &str, token: &str, args: &[&str]) -> Result<String, tetherctl::CliError> {
    use clap::Parser as _;
    let mut argv = vec!["tetherctl", "--server", url, "--token", token];
    argv.extend_from_slice(args);
    let cli = tetherctl::Cli::try_parse_from(argv)
        .map_err(|e| tetherctl::CliError::Usage(e.to_string()))?;
    let mut out = Vec::new();
    tetherctl::run_with_env(cli, &tetherctl::Env::default(), &mut out).await?;
    Ok(String::from_utf8(out).expect("utf-8 output"))
}

// === helpers for restart tests ===

/// A [`TestServer`] on a tokio runtime of its own, so that it can crash.
///
/// [`CrashableServer::crash`] shuts that runtime down: every task of the server (serving, each
/// connection, the writer, the liveness pass) is dropped at once with no orderly step, as the
/// death of the process would, and the store is released. Only what the store had flushed
/// survives. ([`TestServer::kill`] aborts the serving task only: the writer, the liveness task and
/// the connections live on, and the store stays locked, so no server can reopen the data
/// directory.) Dereferences to the [`TestServer`] for clients and helpers.
pub struct CrashableServer {
    /// `None` only after [`CrashableServer::stop`] took it.
    server: Option<TestServer>,
    /// Owns the server's tasks. `None` once shut down. Dropping a runtime inside async code
    /// panics, so `Drop` shuts it down in the background instead.
    runtime: Option<tokio::runtime::Runtime>,
}

impl CrashableServer {
    /// Starts a server with `config` on `127.0.0.1:0`, on its own runtime.
    pub async fn start(config: Config) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        Self::start_on(listener, config).await
    }

    /// Starts a server with `config` on `addr` (e.g. the address of a crashed server).
    pub async fn start_at(addr: SocketAddr, config: Config) -> Self {
        let listener = eventually("the old address to be free", || async {
            std::net::TcpListener::bind(addr).ok()
        })
        .await;
        Self::start_on(listener, config).await
    }

    async fn start_on(listener: std::net::TcpListener, config: Config) -> Self {
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let addr = listener.local_addr().expect("local addr");
        let data_dir = config.data_dir.clone();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("crashable-server")
            .enable_all()
            .build()
            .expect("server runtime");
        let shutdown = CancellationToken::new();
        let (started, token_file) = tokio::sync::oneshot::channel();
        let handle = runtime.spawn({
            let shutdown = shutdown.clone();
            async move {
                let listener =
                    tokio::net::TcpListener::from_std(listener).expect("register listener");
                let server = tether_server::server::start(config)
                    .await
                    .expect("server starts");
                let _ = started.send(server.admin_token_file.clone());
                server.serve(listener, shutdown).await
            }
        });
        let Ok(token_file) = token_file.await else {
            // The server task failed before it started: re-raise its panic.
            match handle.await {
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                other => panic!("server task ended before starting: {other:?}"),
            }
        };
        let admin_token = std::fs::read_to_string(&token_file)
            .expect("admin token file")
            .trim()
            .to_owned();
        let server = TestServer {
            addr,
            url: format!("http://{addr}"),
            data_dir,
            admin_token,
            metrics_addr: None,
            shutdown,
            handle,
        };
        Self {
            server: Some(server),
            runtime: Some(runtime),
        }
    }

    /// Shuts the server down in order (see [`TestServer::stop`]).
    pub async fn stop(mut self) {
        if let Some(server) = self.server.take() {
            server.stop().await;
        }
        self.shutdown_runtime().await;
    }

    /// Crashes the server: drops all its tasks mid-flight and waits until they are gone and the
    /// store is closed.
    pub async fn crash(mut self) {
        self.shutdown_runtime().await;
    }

    async fn shutdown_runtime(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            // Blocks until the worker threads have dropped every task; blocking pool work in
            // flight (a store commit) finishes first.
            tokio::task::spawn_blocking(move || runtime.shutdown_timeout(Duration::from_secs(10)))
                .await
                .expect("server runtime shutdown");
        }
    }
}

impl std::ops::Deref for CrashableServer {
    type Target = TestServer;

    fn deref(&self) -> &TestServer {
        self.server.as_ref().expect("the server is running")
    }
}

impl Drop for CrashableServer {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

// === TLS ===

/// A [`TestServer`] serving TLS with development certificates made by
/// [`tether_server::devcerts::generate_dev_certs`] (the code behind `tether-server gen-certs`) in a
/// temporary directory. Its clients connect to `https://localhost:PORT` trusting that CA; the
/// plaintext helpers of the inner [`TestServer`] are deliberately not reachable.
pub struct TlsTestServer {
    server: TestServer,
    /// `https://localhost:PORT`: the name the server certificate is issued for.
    pub url: String,
    pub addr: SocketAddr,
    pub admin_token: String,
    /// The CA, server and CLI certificates (agents' ones come from [`Self::issue_agent_cert`]).
    pub certs: tether_server::devcerts::DevCerts,
    /// Keeps the certificate directory alive.
    pub certs_dir: tempfile::TempDir,
}

impl TlsTestServer {
    /// Starts a server with `config` plus TLS on `127.0.0.1:0`; with `mtls`, the dev CA is
    /// also the client CA. `handshake_timeout` overrides the default when given.
    pub async fn start(config: Config, mtls: bool, handshake_timeout: Option<Duration>) -> Self {
        let certs_dir = tempfile::tempdir().expect("certs dir");
        let certs =
            tether_server::devcerts::generate_dev_certs(certs_dir.path(), &tls_hosts(), &[])
                .expect("generate dev certs");
        let mut config = config;
        let mut tls =
            tether_server::config::TlsSettings::new(&certs.server_cert, &certs.server_key);
        if mtls {
            tls.client_ca = Some(certs.ca_cert.clone());
        }
        if let Some(timeout) = handshake_timeout {
            tls.handshake_timeout = timeout;
        }
        config.tls = Some(tls);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let server = TestServer::start_on(listener, config).await;
        Self {
            url: format!("https://localhost:{}", server.addr.port()),
            addr: server.addr,
            admin_token: server.admin_token.clone(),
            server,
            certs,
            certs_dir,
        }
    }

    /// Shuts the server down in order (see [`TestServer::stop`]).
    pub async fn stop(self) {
        self.server.stop().await;
    }

    /// Issues a client certificate with Common Name `id` from the server's CA; returns
    /// (certificate, key) paths.
    pub fn issue_agent_cert(&self, id: &str) -> (PathBuf, PathBuf) {
        let certs = tether_server::devcerts::generate_dev_certs(
            self.certs_dir.path(),
            &tls_hosts(),
            &[id.to_owned()],
        )
        .expect("issue agent cert");
        assert!(certs.reused_ca, "the server's CA is reused");
        let (_, cert, key) = certs.agents.into_iter().next().expect("one agent cert");
        (cert, key)
    }

    /// TLS settings trusting the server's CA, presenting `identity` (cert, key) if given.
    pub fn client_tls(
        &self,
        identity: Option<(&Path, &Path)>,
    ) -> tonic::transport::ClientTlsConfig {
        let ca = std::fs::read(&self.certs.ca_cert).expect("read CA");
        let mut tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(ca));
        if let Some((cert, key)) = identity {
            tls = tls.identity(tonic::transport::Identity::from_pem(
                std::fs::read(cert).expect("read client cert"),
                std::fs::read(key).expect("read client key"),
            ));
        }
        tls
    }

    /// Connects to `url` (this server's unless overridden) with `tls`.
    ///
    /// # Errors
    ///
    /// The transport error (bad TLS settings, failed handshake).
    pub async fn try_channel(
        &self,
        tls: Option<tonic::transport::ClientTlsConfig>,
    ) -> Result<Channel, tonic::transport::Error> {
        let mut endpoint =
            Endpoint::from_shared(self.url.clone())?.connect_timeout(Duration::from_secs(5));
        if let Some(tls) = tls {
            endpoint = endpoint.tls_config(tls)?;
        }
        endpoint.connect().await
    }

    /// A channel trusting the server's CA, without a client certificate.
    pub async fn channel(&self) -> Channel {
        self.try_channel(Some(self.client_tls(None)))
            .await
            .expect("connect to the TLS test server")
    }

    pub async fn fleet(&self) -> FleetClient {
        pb::fleet_service_client::FleetServiceClient::with_interceptor(
            self.channel().await,
            Bearer(Some(self.admin_token.clone())),
        )
    }

    pub async fn admin(&self) -> AdminClient {
        pb::admin_service_client::AdminServiceClient::with_interceptor(
            self.channel().await,
            Bearer(Some(self.admin_token.clone())),
        )
    }

    /// An `AgentService` client over TLS, presenting `identity` (cert, key) if given.
    pub async fn agent_client(
        &self,
        token: Option<&str>,
        identity: Option<(&Path, &Path)>,
    ) -> AgentClient {
        let channel = self
            .try_channel(Some(self.client_tls(identity)))
            .await
            .expect("connect to the TLS test server");
        pb::agent_service_client::AgentServiceClient::with_interceptor(
            channel,
            Bearer(token.map(str::to_owned)),
        )
    }

    /// Creates an enrollment token through the admin RPC; returns its secret.
    pub async fn enrollment_token(&self) -> String {
        self.admin()
            .await
            .create_enrollment_token(pb::CreateEnrollmentTokenRequest::default())
            .await
            .expect("create enrollment token")
            .into_inner()
            .secret
    }

    /// Enrolls the synthetic machine `hostname` over TLS (no client certificate needed);
    /// returns the response.
    pub async fn enroll(&self, hostname: &str) -> pb::EnrollResponse {
        let token = self.enrollment_token().await;
        self.agent_client(Some(&token), None)
            .await
            .enroll(pb::EnrollRequest {
                system_info: Some(system_info(hostname)),
                labels: HashMap::new(),
                name: String::new(),
            })
            .await
            .expect("enroll over TLS")
            .into_inner()
    }

    /// Waits until agent `id` has `status`; returns the agent.
    pub async fn wait_status(&self, id: &str, status: pb::AgentStatus) -> pb::Agent {
        let fleet = self.fleet().await;
        eventually(&format!("agent {id} to be {status:?}"), || {
            let mut fleet = fleet.clone();
            async move {
                let agent = fleet
                    .get_agent(pb::GetAgentRequest {
                        agent_id: id.to_owned(),
                    })
                    .await
                    .ok()?
                    .into_inner()
                    .agent?;
                (agent.status == status as i32).then_some(agent)
            }
        })
        .await
    }

    /// Starts a real agent over TLS trusting the server's CA. With `enroll`, it enrolls with a
    /// fresh token; otherwise `state_dir` must already hold its enrollment. `identity` is its
    /// client certificate (cert, key) for mTLS.
    pub async fn spawn_agent(
        &self,
        hostname: &str,
        state_dir: tempfile::TempDir,
        enroll: bool,
        identity: Option<(PathBuf, PathBuf)>,
    ) -> TestAgent {
        let token = if enroll {
            Some(self.enrollment_token().await)
        } else {
            None
        };
        let mut config = tether_agent::AgentConfig::new(&self.url, state_dir.path());
        config.enroll_token = token;
        config.backoff.initial = Duration::from_millis(100);
        config.backoff.max = Duration::from_millis(500);
        let (client_cert, client_key) = identity.unzip();
        config.tls = Some(tether_agent::ClientTls {
            ca_cert: Some(self.certs.ca_cert.clone()),
            client_cert,
            client_key,
        });
        let collector =
            tether_agent::SyntheticCollector::new(hostname, format!("hw-{hostname}"), "linux");
        TestAgent {
            handle: tether_agent::spawn(config, Box::new(collector)),
            state_dir,
            hostname: hostname.to_owned(),
        }
    }

    /// Runs `tetherctl` with `args` against this server (admin token), trusting the CA through
    /// `--ca-cert`; returns stdout.
    ///
    /// # Errors
    ///
    /// The CLI's error, as the binary would report it.
    pub async fn cli(&self, args: &[&str]) -> Result<String, tetherctl::CliError> {
        let ca = self.certs.ca_cert.display().to_string();
        let mut argv = vec!["--ca-cert", ca.as_str()];
        argv.extend_from_slice(args);
        cli_at(&self.url, &self.admin_token, &argv).await
    }
}

/// The names the TLS test server's certificate is issued for.
fn tls_hosts() -> Vec<String> {
    vec!["localhost".to_owned(), "127.0.0.1".to_owned()]
}

// === helpers for abuse tests ===

impl TestServer {
    /// Like [`TestServer::start`], and also returns the server's metrics, so a test can check
    /// that a refused input was counted (`tether_limit_violations`, `tether_auth_denials`).
    pub async fn start_with_metrics(
        config: Config,
    ) -> (Self, std::sync::Arc<tether_server::metrics::Metrics>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let data_dir = config.data_dir.clone();
        let server = tether_server::server::start(config)
            .await
            .expect("server starts");
        let metrics = server.state().metrics.clone();
        let admin_token = std::fs::read_to_string(&server.admin_token_file)
            .expect("admin token file")
            .trim()
            .to_owned();
        let metrics_addr = server.metrics_addr();
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(server.serve(listener, shutdown.clone()));
        let server = Self {
            addr,
            url: format!("http://{addr}"),
            data_dir,
            admin_token,
            metrics_addr,
            shutdown,
            handle,
        };
        (server, metrics)
    }
}

/// How many inputs the server refused for exceeding `limit` (the `limit` label of
/// `tether_limit_violations`).
pub fn limit_violations(metrics: &tether_server::metrics::Metrics, limit: &'static str) -> u64 {
    metrics
        .limit_violations
        .get_or_create(&tether_server::metrics::LimitLabels { limit })
        .get()
}

// === helpers for tenancy, admin and secrets tests ===

impl TestServer {
    /// An `AdminService` client presenting `token` (none when `None`).
    pub async fn admin_as(&self, token: Option<&str>) -> AdminClient {
        pb::admin_service_client::AdminServiceClient::with_interceptor(
            self.channel().await,
            Bearer(token.map(str::to_owned)),
        )
    }

    /// Creates org `org_id` as the server admin (the bootstrap token); returns the response,
    /// which holds the org's first admin secret.
    pub async fn create_org(&self, org_id: &str) -> pb::CreateOrgResponse {
        self.admin()
            .await
            .create_org(pb::CreateOrgRequest {
                org_id: org_id.to_owned(),
                display_name: String::new(),
            })
            .await
            .unwrap_or_else(|e| panic!("create org {org_id}: {e}"))
            .into_inner()
    }
}

/// The public id of a token `tether_<id>_<secret>`.
pub fn token_id(token: &str) -> &str {
    token
        .strip_prefix("tether_")
        .and_then(|rest| rest.split_once('_'))
        .map_or_else(|| panic!("not a token: tether_<id>_<secret>"), |(id, _)| id)
}

/// Creates an API token `name` with `role` (and `ttl`, if any) through `admin`.
pub async fn create_token(
    admin: &mut AdminClient,
    name: &str,
    role: pb::Role,
    ttl: Option<Duration>,
) -> pb::CreateTokenResponse {
    admin
        .create_token(pb::CreateTokenRequest {
            name: name.to_owned(),
            role: role as i32,
            ttl: ttl.map(|d| prost_types::Duration::try_from(d).expect("ttl fits")),
        })
        .await
        .unwrap_or_else(|e| panic!("create token {name}: {e}"))
        .into_inner()
}
