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
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
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
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(server.serve(listener, shutdown.clone()));
        Self {
            addr,
            url: format!("http://{addr}"),
            data_dir,
            admin_token,
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

    /// Aborts the server task without the orderly shutdown: sessions are dropped mid-stream,
    /// like a crash of the process (the store is only what was flushed).
    pub async fn kill(self) {
        self.handle.abort();
        let _ = self.handle.await;
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
        let cli = tetherctl::Cli::try_parse_from(argv).map_err(|e| tetherctl::CliError::Usage(e.to_string()))?;
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
        eventually("the agent to enroll", || async { self.handle.stats.agent_id() }).await
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
