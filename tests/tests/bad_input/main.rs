//! Bad inputs at every RPC edge. Each case must answer the right gRPC status, must not panic the
//! server, and must not damage what is stored: after every case the victim agent still has its
//! labels and its stored samples, the enrollment tokens their use counts, and the server still
//! serves a healthy session that stores the next sample.

use std::time::{Duration, SystemTime};

use tether_proto as pb;
use tether_server::config::Config;
use tether_tests::{
    AdminClient, Bearer, RawSession, TestServer, eventually, fast_config, hello, labels, sample,
    system_info, trace_init,
};
use tonic::Code;

use pb::connect_request::Message as In;

mod connect;
mod enroll;
mod labels;
mod rpcs;

/// The agent every test tries to damage.
const HOST: &str = "victim-1";
const LABELS: &[(&str, &str)] = &[("env", "prod"), ("tier", "web")];
/// Small enough that a test can exceed it cheaply.
const MAX_MESSAGE_BYTES: usize = 64 * 1024;
const MAX_SAMPLES_PER_REPORT: usize = 10;
/// Comfortably above [`MAX_MESSAGE_BYTES`].
const OVERSIZED: usize = 96 * 1024;
/// A well-formed id nobody has.
const UNKNOWN_ID: &str = "0123456789abcdef";

fn config(dir: &std::path::Path) -> Config {
    let mut config = fast_config(dir);
    config.limits.max_message_bytes = MAX_MESSAGE_BYTES;
    config.limits.max_samples_per_report = MAX_SAMPLES_PER_REPORT;
    // Sessions in these tests are short, but a slow machine must not turn them stale midway.
    config.liveness.stale_after = Duration::from_secs(30);
    config.liveness.offline_after = Duration::from_secs(60);
    config
}

/// A server with one enrolled agent that has labels and three stored samples, and what is
/// expected to be stored.
struct Fixture {
    server: TestServer,
    config: Config,
    id: String,
    credential: String,
    /// Highest stored seq; samples are numbered 1..=stored, so it is also their count.
    stored: u64,
    /// Agents expected in `ListAgents`.
    agents: u32,
    _dir: tempfile::TempDir,
}

impl Fixture {
    async fn new() -> Self {
        trace_init();
        let dir = tempfile::tempdir().expect("tempdir");
        let config = config(dir.path());
        let server = TestServer::start(config.clone()).await;
        let (id, credential) = server.enroll(HOST, LABELS).await;
        let mut fixture = Self {
            server,
            config,
            id,
            credential,
            stored: 0,
            agents: 1,
            _dir: dir,
        };
        let (session, welcome) = fixture.session().await;
        assert_eq!(welcome.last_durable_seq, 0);
        fixture.store(session, 3).await;
        fixture
    }

    /// Opens a proper session for the victim (same machine, same labels).
    async fn session(&self) -> (RawSession, pb::Welcome) {
        RawSession::hello_with(
            &self.server,
            &self.credential,
            hello(&self.id, HOST, LABELS),
        )
        .await
        .expect("a healthy session opens")
    }

    /// Sends `n` next samples on `session`, waits for their ack, then closes the session and
    /// waits for the agent to be offline.
    async fn store(&mut self, mut session: RawSession, n: u64) {
        let next = self.stored + 1;
        session.send_samples(next..next + n).await;
        session
            .wait_ack(self.stored + n)
            .await
            .expect("samples acknowledged");
        self.stored += n;
        drop(session.close());
        self.server
            .wait_status(&self.id, pb::AgentStatus::Offline)
            .await;
    }

    /// Stored samples of the victim over the last hour.
    async fn stored_samples(&self) -> Vec<pb::MetricsPoint> {
        self.server
            .fleet()
            .await
            .get_metrics(pb::GetMetricsRequest {
                agent_id: self.id.clone(),
                ..Default::default()
            })
            .await
            .expect("get metrics")
            .into_inner()
            .points
    }

    async fn assert_stored(&self, when: &str) {
        let agent = self
            .server
            .get_agent(&self.id)
            .await
            .expect("the victim still exists")
            .agent
            .expect("agent");
        assert_eq!(agent.labels, labels(LABELS), "labels {when}");
        assert_eq!(
            agent.system_info.as_ref().map(|i| i.hostname.as_str()),
            Some(HOST),
            "system info {when}"
        );
        assert_eq!(agent.last_durable_seq, self.stored, "durable seq {when}");
        let points = self.stored_samples().await;
        assert_eq!(
            points.len() as u64,
            self.stored,
            "stored sample count {when}"
        );
        let listed = self
            .server
            .fleet()
            .await
            .list_agents(pb::ListAgentsRequest {
                include_expired: true,
                ..Default::default()
            })
            .await
            .expect("list agents")
            .into_inner();
        assert_eq!(listed.total_size, self.agents, "agent count {when}");
    }

    /// Proves nothing was damaged: stored facts are unchanged, and a fresh session is welcomed
    /// with the right high-water mark and stores the next sample (so a rejected report did not
    /// poison the seq either). Any bad session is first seen to end.
    async fn assert_intact(&mut self) {
        self.server
            .wait_status(&self.id, pb::AgentStatus::Offline)
            .await;
        self.assert_stored("after the bad input").await;
        let (session, welcome) = self.session().await;
        assert_eq!(
            welcome.last_durable_seq, self.stored,
            "the Welcome's high-water mark"
        );
        self.store(session, 1).await;
        self.assert_stored("after a healthy session").await;
    }

    /// [`Fixture::assert_intact`], then an orderly shutdown that re-raises any server panic.
    async fn finish(mut self) {
        self.assert_intact().await;
        self.server.stop().await;
    }

    async fn admin_as(&self, token: Option<&str>) -> AdminClient {
        pb::admin_service_client::AdminServiceClient::with_interceptor(
            self.server.channel().await,
            Bearer(token.map(str::to_owned)),
        )
    }

    async fn create_token(&self, req: pb::CreateEnrollmentTokenRequest) -> (String, String) {
        let created = self
            .server
            .admin()
            .await
            .create_enrollment_token(req)
            .await
            .expect("create enrollment token")
            .into_inner();
        (created.token.expect("token").token_id, created.secret)
    }

    async fn token_record(&self, token_id: &str) -> pb::EnrollmentToken {
        self.server
            .admin()
            .await
            .list_enrollment_tokens(pb::ListEnrollmentTokensRequest {})
            .await
            .expect("list enrollment tokens")
            .into_inner()
            .tokens
            .into_iter()
            .find(|t| t.token_id == token_id)
            .expect("the token is listed")
    }

    async fn enroll_as(
        &self,
        token: Option<&str>,
        req: pb::EnrollRequest,
    ) -> Result<pb::EnrollResponse, tonic::Status> {
        self.server
            .agent_client(token)
            .await
            .enroll(req)
            .await
            .map(tonic::Response::into_inner)
    }

    /// Opens a healthy session, sends `message`, and returns the status the stream ends with.
    async fn mid_session(&self, message: Option<In>) -> tonic::Status {
        let (mut session, _) = self.session().await;
        session
            .tx
            .send(pb::ConnectRequest { message })
            .await
            .expect("queue message");
        session.wait_error().await
    }
}

/// The status of a call that must fail.
fn refused<T>(what: &str, result: Result<T, tonic::Status>) -> tonic::Status {
    match result {
        Ok(_) => panic!("{what}: the server accepted a bad input"),
        Err(status) => status,
    }
}

fn assert_code(what: &str, status: &tonic::Status, code: Code) {
    assert_eq!(status.code(), code, "{what}: {status:?}");
}

fn enroll_request(hostname: &str, pairs: &[(&str, &str)]) -> pb::EnrollRequest {
    pb::EnrollRequest {
        system_info: Some(system_info(hostname)),
        labels: labels(pairs),
        name: String::new(),
        previous_credential: String::new(),
    }
}

fn report(samples: Vec<pb::MetricsSample>) -> Option<In> {
    Some(In::Metrics(pb::MetricsReport {
        deferred_seq: 0,
        samples,
        previous_ack_latency: None,
    }))
}

/// A well-formed token that the server never issued.
fn unknown_token() -> String {
    format!("tether_{UNKNOWN_ID}_{}", "ab".repeat(32))
}

/// `credential` with its last character changed.
fn tampered(credential: &str) -> String {
    let mut text = credential.to_owned();
    let last = text.pop().expect("non-empty credential");
    text.push(if last == '0' { '1' } else { '0' });
    text
}
