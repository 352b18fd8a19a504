//! Test harness for Tether's end-to-end tests: a real server on `127.0.0.1:0` (plaintext or
//! TLS), real agents (the `tether-agent` library with a synthetic collector so that many agents
//! on one host look like distinct machines), the real CLI, and raw gRPC clients for driving the
//! protocol by hand (bad inputs, exact sequencing).
//!
//! Nothing here stands in for the store, the network or tonic. Tests wait on conditions with
//! [`eventually`], never on sleeps.
//!
//! - `server.rs`: [`TestServer`], its clients, and its TLS option ([`TlsOptions`]).
//! - `crash.rs`: [`CrashableServer`], a server on a runtime of its own that can die abruptly.
//! - `agent.rs`: [`TestAgent`], a real agent in this process.
//! - `healthy.rs`: [`Healthy`], the agent that must lose nothing while a test abuses the server.
//! - `session.rs`: [`RawSession`] and the messages tests send by hand.
//! - `rpc.rs`: helpers over the RPCs and the CLI (listing, tokens, `tetherctl`).
//! - `heavy.rs`: agents as large as the server accepts, and seeding an org with them.
//! - `command.rs`: helpers over `CommandService` (send, wait for the end, read the history).
//! - `procs.rs`: a server and agents as real processes (`test-server`, `test-agent`), to kill.
//! - `logs.rs`: [`LogCapture`], what the server and agents log, captured for assertions.
//! - `scrape.rs`: the Prometheus listener read as a scraper does, and `promtool` on it.

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use tether_proto as pb;
use tether_server::config::Config;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

mod agent;
mod command;
mod crash;
mod event;
mod healthy;
mod heavy;
mod logs;
mod procs;
mod rpc;
mod scrape;
mod server;
mod session;

pub use self::agent::{TestAgent, agent_config};
pub use self::command::{
    History, command_agent, exec_request, finished, history, invocations, send, shell,
};
pub use self::crash::CrashableServer;
pub use self::event::{EventClient, agent_event};
pub use self::healthy::Healthy;
pub use self::heavy::{
    MAX_DISKS, Seed, heavy_enroll_request, heavy_hello, heavy_labels, heavy_sample,
    heavy_system_info, seed_heavy_agents,
};
pub use self::logs::{LogCapture, SharedBuffer};
pub use self::procs::{AgentProcess, Launch, ServerProcess, agent_dirs};
pub use self::rpc::{cli_at, create_token, list_all, list_audit, token_id};
pub use self::scrape::{Scrape, promtool_check, scrape};
pub use self::server::{
    TestServer, TestTls, TlsOptions, connections_refused, limit_violations, scrape_metrics,
    sessions_refused,
};
pub use self::session::{RawSession, hello, labels, sample, system_info};

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

/// Installs a subscriber writing to stderr (honours `RUST_LOG`, default `warn`): for this
/// crate's test binaries, whose stdout carries what the tests read.
pub fn trace_to_stderr() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
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
pub type CommandClient = pb::command_service_client::CommandServiceClient<Authed>;
