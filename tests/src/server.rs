//! [`TestServer`]: a real server in this process on a real socket, plaintext or TLS, with the
//! clients, agents and CLI runs that talk to it.
//!
//! With TLS ([`TestServer::start_tls`]) the certificates come from the code behind
//! `tether-server gen-certs`, in a temporary directory; every client the server hands out
//! (channels, RPC clients, agents, the CLI) trusts that CA, so a test written for plaintext runs
//! unchanged over TLS.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tether_proto as pb;
use tether_server::config::{Config, TlsSettings};
use tether_server::devcerts::{DevCerts, generate_dev_certs, issue_agent_certs};
use tether_server::metrics::{LimitLabels, Metrics, ReasonLabels};
use tether_server::server::{Server, StartError};
use tether_server::testing::FailingStore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::{
    AdminClient, AgentClient, AlertClient, Bearer, CommandClient, FleetClient, TestAgent,
    agent_config, cli_at, eventually, system_info,
};

/// A server running in this process on a real socket.
pub struct TestServer {
    pub addr: SocketAddr,
    /// `http://127.0.0.1:PORT`, or with TLS `https://localhost:PORT` (the name the server
    /// certificate is issued for).
    pub url: String,
    pub data_dir: PathBuf,
    pub admin_token: String,
    /// Where the server serves Prometheus metrics, when its config asked for them.
    pub metrics_addr: Option<SocketAddr>,
    /// The server's counters, for tests that check a refused input was counted
    /// (`tether_limit_violations`, `tether_auth_denials`).
    pub metrics: Arc<Metrics>,
    /// Set when the server serves TLS.
    pub tls: Option<TestTls>,
    shutdown: CancellationToken,
    handle: JoinHandle<Result<(), StartError>>,
}

/// The TLS side of a [`TestServer`] started with [`TestServer::start_tls`].
pub struct TestTls {
    /// The CA, server and CLI certificates (agents' ones come from
    /// [`TestServer::issue_agent_cert`]).
    pub certs: DevCerts,
    /// Keeps the certificate directory alive.
    pub dir: tempfile::TempDir,
}

/// How [`TestServer::start_tls`] sets up TLS.
#[derive(Clone, Copy, Debug, Default)]
pub struct TlsOptions {
    /// The development CA is also the client CA (mTLS): agents must present a certificate
    /// issued for their own id.
    pub mtls: bool,
    /// Overrides the default TLS handshake timeout.
    pub handshake_timeout: Option<Duration>,
}

/// What a started server tells the harness before it serves.
pub(crate) struct Started {
    admin_token_file: PathBuf,
    metrics: Arc<Metrics>,
    metrics_addr: Option<SocketAddr>,
}

impl Started {
    pub(crate) fn of(server: &Server) -> Self {
        Self {
            admin_token_file: server.admin_token_file.clone(),
            metrics: server.state().metrics.clone(),
            metrics_addr: server.metrics_addr(),
        }
    }
}

/// The names the TLS test server's certificate is issued for.
fn tls_hosts() -> Vec<String> {
    vec!["localhost".to_owned(), "127.0.0.1".to_owned()]
}

// === impl TestServer ===

impl TestServer {
    /// Starts a server with `config` on `127.0.0.1:0`.
    pub async fn start(config: Config) -> Self {
        Self::start_on(bind_any().await, config, None).await
    }

    /// Starts a server with `config` on `127.0.0.1:0` whose store commits fail while the
    /// returned [`FailingStore`] is told to fail: what a broken disk does.
    pub async fn start_failing(config: Config) -> (Self, Arc<FailingStore>) {
        let listener = bind_any().await;
        let addr = listener.local_addr().expect("local addr");
        let data_dir = config.data_dir.clone();
        let mut failing = None;
        let server = tether_server::server::start_with_store(config, |store| {
            let store = Arc::new(FailingStore::new(store));
            failing = Some(store.clone());
            store
        })
        .await
        .expect("server starts");
        let failing = failing.expect("the store was opened");
        let started = Started::of(&server);
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(server.serve(listener, shutdown.clone()));
        let server = Self::new(addr, data_dir, started, None, shutdown, handle);
        (server, failing)
    }

    /// Starts a server with `config` plus TLS on `127.0.0.1:0`, with fresh development
    /// certificates.
    pub async fn start_tls(mut config: Config, options: TlsOptions) -> Self {
        let dir = tempfile::tempdir().expect("certs dir");
        let certs =
            generate_dev_certs(dir.path(), &tls_hosts(), false).expect("generate dev certs");
        let mut tls = TlsSettings::new(&certs.server_cert, &certs.server_key);
        if options.mtls {
            tls.client_ca = Some(certs.ca_cert.clone());
        }
        if let Some(timeout) = options.handshake_timeout {
            tls.handshake_timeout = timeout;
        }
        config.tls = Some(tls);
        let tls = TestTls { certs, dir };
        Self::start_on(bind_any().await, config, Some(tls)).await
    }

    /// Starts a server with `config` on `addr` (e.g. the address of a stopped server).
    pub async fn start_at(addr: SocketAddr, config: Config) -> Self {
        let listener = eventually("the old address to be free", || async {
            tokio::net::TcpListener::bind(addr).await.ok()
        })
        .await;
        Self::start_on(listener, config, None).await
    }

    async fn start_on(
        listener: tokio::net::TcpListener,
        config: Config,
        tls: Option<TestTls>,
    ) -> Self {
        let addr = listener.local_addr().expect("local addr");
        let data_dir = config.data_dir.clone();
        let server = tether_server::server::start(config)
            .await
            .expect("server starts");
        let started = Started::of(&server);
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(server.serve(listener, shutdown.clone()));
        Self::new(addr, data_dir, started, tls, shutdown, handle)
    }

    /// The harness's view of a server that `handle` serves on `addr`.
    pub(crate) fn new(
        addr: SocketAddr,
        data_dir: PathBuf,
        started: Started,
        tls: Option<TestTls>,
        shutdown: CancellationToken,
        handle: JoinHandle<Result<(), StartError>>,
    ) -> Self {
        let admin_token = std::fs::read_to_string(&started.admin_token_file)
            .expect("admin token file")
            .trim()
            .to_owned();
        let url = match tls {
            Some(_) => format!("https://localhost:{}", addr.port()),
            None => format!("http://{addr}"),
        };
        Self {
            addr,
            url,
            data_dir,
            admin_token,
            metrics_addr: started.metrics_addr,
            metrics: started.metrics,
            tls,
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

    // --- channels and clients ---

    /// The server's TLS; panics for a plaintext server.
    fn test_tls(&self) -> &TestTls {
        self.tls
            .as_ref()
            .expect("this needs a server started with start_tls")
    }

    /// TLS settings trusting the server's CA, presenting `identity` (cert, key) if given.
    /// Panics for a plaintext server.
    pub fn client_tls(&self, identity: Option<(&Path, &Path)>) -> ClientTlsConfig {
        let ca = std::fs::read(&self.test_tls().certs.ca_cert).expect("read CA");
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
        if let Some((cert, key)) = identity {
            tls = tls.identity(Identity::from_pem(
                std::fs::read(cert).expect("read client cert"),
                std::fs::read(key).expect("read client key"),
            ));
        }
        tls
    }

    /// Connects to the server's url with `tls` (or in plaintext).
    ///
    /// # Errors
    ///
    /// The transport error (bad TLS settings, failed handshake).
    pub async fn try_channel(
        &self,
        tls: Option<ClientTlsConfig>,
    ) -> Result<Channel, tonic::transport::Error> {
        let mut endpoint =
            Endpoint::from_shared(self.url.clone())?.connect_timeout(Duration::from_secs(5));
        if let Some(tls) = tls {
            endpoint = endpoint.tls_config(tls)?;
        }
        endpoint.connect().await
    }

    /// A channel to the server; with TLS it trusts the server's CA and presents no
    /// certificate.
    pub async fn channel(&self) -> Channel {
        let tls = self.tls.as_ref().map(|_| self.client_tls(None));
        self.try_channel(tls)
            .await
            .expect("connect to the test server")
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

    pub async fn commands(&self) -> CommandClient {
        self.commands_as(Some(&self.admin_token)).await
    }

    /// A `CommandService` client presenting `token` (none when `None`).
    pub async fn commands_as(&self, token: Option<&str>) -> CommandClient {
        pb::command_service_client::CommandServiceClient::with_interceptor(
            self.channel().await,
            Bearer(token.map(str::to_owned)),
        )
        .max_decoding_message_size(64 << 20)
    }

    /// An `AlertService` client presenting `token` (none when `None`).
    pub async fn alerts_as(&self, token: Option<&str>) -> AlertClient {
        pb::alert_service_client::AlertServiceClient::with_interceptor(
            self.channel().await,
            Bearer(token.map(str::to_owned)),
        )
    }

    pub async fn admin(&self) -> AdminClient {
        self.admin_as(Some(&self.admin_token)).await
    }

    /// An `AdminService` client presenting `token` (none when `None`).
    pub async fn admin_as(&self, token: Option<&str>) -> AdminClient {
        pb::admin_service_client::AdminServiceClient::with_interceptor(
            self.channel().await,
            Bearer(token.map(str::to_owned)),
        )
    }

    pub async fn agent_client(&self, token: Option<&str>) -> AgentClient {
        self.agent_client_with_cert(token, None).await
    }

    /// An `AgentService` client presenting `token` and, over TLS, the client certificate
    /// `identity` (cert, key) if given.
    pub async fn agent_client_with_cert(
        &self,
        token: Option<&str>,
        identity: Option<(&Path, &Path)>,
    ) -> AgentClient {
        let channel = match (&self.tls, identity) {
            (None, None) => self.channel().await,
            (None, Some(_)) => panic!("a client certificate needs a server started with TLS"),
            (Some(_), identity) => self
                .try_channel(Some(self.client_tls(identity)))
                .await
                .expect("connect to the TLS test server"),
        };
        pb::agent_service_client::AgentServiceClient::with_interceptor(
            channel,
            Bearer(token.map(str::to_owned)),
        )
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20)
    }

    // --- certificates ---

    /// Issues a client certificate with Common Name `id` from the server's CA; returns
    /// (certificate, key) paths. Panics for a plaintext server.
    pub fn issue_agent_cert(&self, id: &str) -> (PathBuf, PathBuf) {
        let certs = issue_agent_certs(self.test_tls().dir.path(), &[id.to_owned()], false)
            .expect("issue agent cert");
        assert!(certs.reused_ca, "the server's CA is reused");
        let (_, cert, key) = certs.agents.into_iter().next().expect("one agent cert");
        (cert, key)
    }

    // --- enrollment and agents ---

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
        let response = self
            .enroll_with(pb::EnrollRequest {
                system_info: Some(system_info(hostname)),
                labels: crate::labels(labels),
                ..Default::default()
            })
            .await
            .expect("enroll");
        (response.agent_id, response.agent_credential)
    }

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

    /// Starts a real agent (synthetic machine `hostname`) with its own state directory,
    /// enrolling with a fresh token.
    pub async fn spawn_agent(&self, hostname: &str, labels: &[(&str, &str)]) -> TestAgent {
        let state_dir = tempfile::tempdir().expect("agent state dir");
        let token = self.enrollment_token().await;
        self.spawn_agent_in(hostname, labels, state_dir, Some(token), None)
    }

    /// Starts a real agent (plaintext only) that may run the programs `allow_exec` names, and
    /// waits until it is online; returns it with its id.
    pub async fn spawn_commanded_agent(
        &self,
        hostname: &str,
        labels: &[(&str, &str)],
        allow_exec: &[&str],
    ) -> (TestAgent, String) {
        let state_dir = tempfile::tempdir().expect("agent state dir");
        let token = self.enrollment_token().await;
        let mut config = agent_config(&self.url, state_dir.path(), labels, Some(token));
        config.commands.allow_exec = allow_exec.iter().map(|p| (*p).to_owned()).collect();
        let agent = TestAgent::spawn_with(config, state_dir, hostname, "linux");
        let id = agent.id().await;
        self.wait_status(&id, pb::AgentStatus::Online).await;
        (agent, id)
    }

    /// Starts a real agent (synthetic Linux machine `hostname`) in `state_dir`, enrolling with
    /// `enroll_token` if given (otherwise `state_dir` must hold its enrollment). Over TLS it
    /// trusts the server's CA and presents `identity` (cert, key) if given.
    pub fn spawn_agent_in(
        &self,
        hostname: &str,
        labels: &[(&str, &str)],
        state_dir: tempfile::TempDir,
        enroll_token: Option<String>,
        identity: Option<(PathBuf, PathBuf)>,
    ) -> TestAgent {
        let mut config = agent_config(&self.url, state_dir.path(), labels, enroll_token);
        match (&self.tls, identity) {
            (None, None) => {}
            (None, Some(_)) => panic!("a client certificate needs a server started with TLS"),
            (Some(tls), identity) => {
                let (client_cert, client_key) = identity.unzip();
                config.tls = Some(tether_agent::ClientTls {
                    ca_cert: Some(tls.certs.ca_cert.clone()),
                    client_cert,
                    client_key,
                });
            }
        }
        TestAgent::spawn_with(config, state_dir, hostname, "linux")
    }

    // --- queries ---

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

    // --- the CLI ---

    /// Runs `tetherctl` with `args` against this server (admin token); returns stdout.
    ///
    /// # Errors
    ///
    /// The CLI's error, as the binary would report it.
    pub async fn cli(&self, args: &[&str]) -> Result<String, tetherctl::CliError> {
        self.cli_as(&self.admin_token, args).await
    }

    /// Runs `tetherctl` with `args` and `token` (over TLS, trusting the server's CA through
    /// `--ca-cert`); returns stdout.
    ///
    /// # Errors
    ///
    /// The CLI's error, as the binary would report it.
    pub async fn cli_as(&self, token: &str, args: &[&str]) -> Result<String, tetherctl::CliError> {
        let ca = self
            .tls
            .as_ref()
            .map(|tls| tls.certs.ca_cert.display().to_string());
        let mut argv: Vec<&str> = match &ca {
            Some(ca) => vec!["--ca-cert", ca],
            None => vec![],
        };
        argv.extend_from_slice(args);
        cli_at(&self.url, token, &argv).await
    }
}

async fn bind_any() -> tokio::net::TcpListener {
    tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0")
}

/// How many inputs the server refused for exceeding `limit` (the `limit` label of
/// `tether_limit_violations`).
pub fn limit_violations(metrics: &Metrics, limit: &'static str) -> u64 {
    metrics
        .limit_violations
        .get_or_create(&LimitLabels { limit })
        .get()
}

/// How many connections the server closed or refused for `reason` (the `reason` label of
/// `tether_connections_refused`).
pub fn connections_refused(metrics: &Metrics, reason: &'static str) -> u64 {
    metrics
        .connections_refused
        .get_or_create(&ReasonLabels { reason })
        .get()
}

/// How many new sessions admission control refused for `reason` (the `reason` label of
/// `tether_sessions_refused`).
pub fn sessions_refused(metrics: &Metrics, reason: &'static str) -> u64 {
    metrics
        .sessions_refused
        .get_or_create(&ReasonLabels { reason })
        .get()
}

/// `GET /metrics` over a plain HTTP/1.1 connection to `addr`: the whole response.
///
/// # Errors
///
/// Connecting, writing or reading failed (nothing serves metrics there).
pub async fn scrape_metrics(addr: SocketAddr) -> std::io::Result<String> {
    let scraped = crate::scrape(addr, None).await?;
    Ok(format!("{}\r\n\r\n{}", scraped.head, scraped.body))
}
