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
    }
}

fn report(samples: Vec<pb::MetricsSample>) -> Option<In> {
    Some(In::Metrics(pb::MetricsReport { samples }))
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

// === Connect ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_first_message_must_be_hello() {
    let f = Fixture::new().await;
    let ping = In::Ping(pb::Ping {
        nonce: 7,
        sent_at: None,
    });
    let status = refused(
        "ping first",
        RawSession::open(&f.server, Some(&f.credential), Some(ping)).await,
    );
    assert_code("ping first", &status, Code::InvalidArgument);

    let metrics = In::Metrics(pb::MetricsReport {
        samples: vec![sample(f.stored + 1)],
    });
    let status = refused(
        "metrics first",
        RawSession::open(&f.server, Some(&f.credential), Some(metrics)).await,
    );
    assert_code("metrics first", &status, Code::InvalidArgument);
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_stream_closed_before_hello() {
    let f = Fixture::new().await;
    let status = refused(
        "empty stream",
        f.server
            .agent_client(Some(&f.credential))
            .await
            .connect(futures::stream::empty::<pb::ConnectRequest>())
            .await,
    );
    assert_code("empty stream", &status, Code::InvalidArgument);
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_empty_first_message() {
    let f = Fixture::new().await;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(pb::ConnectRequest { message: None })
        .await
        .expect("queue");
    let status = refused(
        "unset oneof first",
        f.server
            .agent_client(Some(&f.credential))
            .await
            .connect(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await,
    );
    assert_code("unset oneof first", &status, Code::InvalidArgument);
    drop(tx);
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_second_hello_ends_the_session() {
    let f = Fixture::new().await;
    let (mut session, _) = f.session().await;
    session
        .send(In::Hello(hello(&f.id, HOST, &[("env", "dev")])))
        .await;
    let status = session.wait_error().await;
    assert_code("second hello", &status, Code::InvalidArgument);
    // The error is the end of the stream: nothing follows it.
    match session.rx.message().await {
        Ok(None) | Err(_) => {}
        Ok(Some(m)) => panic!("a message after the error status: {m:?}"),
    }
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_empty_message_mid_session() {
    let f = Fixture::new().await;
    let status = f.mid_session(None).await;
    assert_code("unset oneof mid-session", &status, Code::InvalidArgument);
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_as_another_agent_is_denied() {
    let mut f = Fixture::new().await;
    let (other_id, other_credential) = f.server.enroll("other-1", &[("env", "dev")]).await;
    f.agents += 1;
    // My credential, the other agent's id.
    let status = refused(
        "hello as another agent",
        RawSession::hello_with(
            &f.server,
            &f.credential,
            hello(&other_id, "other-1", &[("env", "dev")]),
        )
        .await,
    );
    assert_code("hello as another agent", &status, Code::PermissionDenied);
    // And the other way round: the other agent's credential cannot speak for the victim.
    let status = refused(
        "hello as the victim",
        RawSession::hello_with(&f.server, &other_credential, hello(&f.id, HOST, &[])).await,
    );
    assert_code("hello as the victim", &status, Code::PermissionDenied);
    let other = f
        .server
        .get_agent(&other_id)
        .await
        .expect("other agent")
        .agent
        .expect("agent");
    assert_eq!(other.status, pb::AgentStatus::Offline as i32);
    assert_eq!(other.labels, labels(&[("env", "dev")]));
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_without_valid_credential_is_unauthenticated() {
    let f = Fixture::new().await;
    let wrong = tampered(&f.credential);
    let unknown = unknown_token();
    for (what, token) in [
        ("no token", None),
        ("garbage token", Some("garbage")),
        ("empty token", Some("")),
        ("tampered credential", Some(wrong.as_str())),
        ("unknown token", Some(unknown.as_str())),
    ] {
        let status = refused(
            what,
            RawSession::open(
                &f.server,
                token,
                Some(In::Hello(hello(&f.id, HOST, LABELS))),
            )
            .await,
        );
        assert_code(what, &status, Code::Unauthenticated);
    }
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_with_a_non_agent_token_is_denied() {
    let f = Fixture::new().await;
    let enrollment = f.server.enrollment_token().await;
    for (what, token) in [
        ("admin token", f.server.admin_token.as_str()),
        ("enrollment token", enrollment.as_str()),
    ] {
        let status = refused(
            what,
            RawSession::open(
                &f.server,
                Some(token),
                Some(In::Hello(hello(&f.id, HOST, LABELS))),
            )
            .await,
        );
        assert_code(what, &status, Code::PermissionDenied);
    }
    f.finish().await;
}

// === Labels ===

/// Label maps that must be refused, with the config's label limits.
fn bad_label_sets(config: &Config) -> Vec<(String, std::collections::HashMap<String, String>)> {
    let mut sets: Vec<(String, std::collections::HashMap<String, String>)> = [
        ("space in key", "bad key", "x"),
        ("non-ascii key", "é", "x"),
        ("'=' in key", "a=b", "x"),
        ("empty key", "", "x"),
        ("key starting with '-'", "-a", "x"),
        ("space in value", "k", "bad value"),
        ("comma in value", "k", "a,b"),
    ]
    .into_iter()
    .map(|(what, k, v)| (what.to_owned(), labels(&[(k, v)])))
    .collect();
    sets.push((
        "key too long".to_owned(),
        labels(&[(&"k".repeat(config.limits.max_label_key_bytes + 1), "x")]),
    ));
    sets.push((
        "value too long".to_owned(),
        labels(&[("k", &"v".repeat(config.limits.max_label_value_bytes + 1))]),
    ));
    sets.push((
        "too many labels".to_owned(),
        (0..=config.limits.max_labels)
            .map(|i| (format!("k{i}"), "v".to_owned()))
            .collect(),
    ));
    sets
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enroll_with_bad_labels_enrolls_nothing() {
    let f = Fixture::new().await;
    let (token_id, secret) = f
        .create_token(pb::CreateEnrollmentTokenRequest::default())
        .await;
    for (what, bad) in bad_label_sets(&f.config) {
        let status = refused(
            &what,
            f.enroll_as(
                Some(&secret),
                pb::EnrollRequest {
                    labels: bad,
                    ..enroll_request("newcomer", &[])
                },
            )
            .await,
        );
        assert_code(&what, &status, Code::InvalidArgument);
    }
    assert_eq!(f.token_record(&token_id).await.use_count, 0);
    f.assert_stored("after refused enrollments").await;
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enroll_over_label_limit_with_token_labels_releases_the_use() {
    let f = Fixture::new().await;
    // Each side alone is within the limit; together they are one over.
    let (token_id, secret) = f
        .create_token(pb::CreateEnrollmentTokenRequest {
            labels: labels(&[("pinned", "yes")]),
            max_uses: 1,
            ..Default::default()
        })
        .await;
    let asked = (0..f.config.limits.max_labels)
        .map(|i| (format!("k{i}"), "v".to_owned()))
        .collect();
    let status = refused(
        "merged labels over the limit",
        f.enroll_as(
            Some(&secret),
            pb::EnrollRequest {
                labels: asked,
                ..enroll_request("newcomer", &[])
            },
        )
        .await,
    );
    assert_code(
        "merged labels over the limit",
        &status,
        Code::InvalidArgument,
    );
    assert_eq!(f.token_record(&token_id).await.use_count, 0);
    f.assert_stored("after a refused enrollment").await;
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_with_bad_labels_changes_nothing() {
    let mut f = Fixture::new().await;
    for (what, bad) in bad_label_sets(&f.config) {
        let status = refused(
            &what,
            RawSession::hello_with(
                &f.server,
                &f.credential,
                pb::Hello {
                    labels: bad,
                    ..hello(&f.id, HOST, &[])
                },
            )
            .await,
        );
        assert_code(&what, &status, Code::InvalidArgument);
        f.assert_intact().await;
    }
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_with_bad_system_info_changes_nothing() {
    let mut f = Fixture::new().await;
    let long = "h".repeat(2048);
    let cases: [(&str, Option<pb::SystemInfo>); 3] = [
        ("no system_info", None),
        (
            "hostname over the text limit",
            Some(pb::SystemInfo {
                hostname: long.clone(),
                ..system_info(HOST)
            }),
        ),
        (
            "invalid boot time",
            Some(pb::SystemInfo {
                boot_time: Some(prost_types::Timestamp {
                    seconds: 0,
                    nanos: -1,
                }),
                ..system_info(HOST)
            }),
        ),
    ];
    for (what, info) in cases {
        let status = refused(
            what,
            RawSession::hello_with(
                &f.server,
                &f.credential,
                pb::Hello {
                    system_info: info,
                    ..hello(&f.id, HOST, LABELS)
                },
            )
            .await,
        );
        assert_code(what, &status, Code::InvalidArgument);
        f.assert_intact().await;
    }
    f.finish().await;
}

// === Oversized messages ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_metrics_report_ends_the_stream_with_resource_exhausted() {
    let f = Fixture::new().await;
    let mut big = sample(f.stored + 1);
    big.disks.push(pb::DiskUsage {
        mount_point: "/".repeat(OVERSIZED),
        used_bytes: 1,
        total_bytes: 2,
    });
    let status = f.mid_session(report(vec![big])).await;
    assert_code("oversized report", &status, Code::ResourceExhausted);
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_hello_is_resource_exhausted() {
    let f = Fixture::new().await;
    let mut big = hello(&f.id, HOST, LABELS);
    if let Some(info) = big.system_info.as_mut() {
        info.cpu_model = "x".repeat(OVERSIZED);
    }
    let status = refused(
        "oversized hello",
        RawSession::open(&f.server, Some(&f.credential), Some(In::Hello(big))).await,
    );
    // The contract: a violated limit is RESOURCE_EXHAUSTED, as for an oversized report.
    assert_code("oversized hello", &status, Code::ResourceExhausted);
    f.finish().await;
}

/// A unary request above the limit is refused by tonic before any handler runs, with
/// `OUT_OF_RANGE`; the server's gate rewrites it to the contract's `RESOURCE_EXHAUSTED`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_unary_request_is_refused() {
    let f = Fixture::new().await;
    let status = refused(
        "oversized ListAgents",
        f.server
            .fleet()
            .await
            .list_agents(pb::ListAgentsRequest {
                query: "q".repeat(OVERSIZED),
                ..Default::default()
            })
            .await,
    );
    assert_code("oversized ListAgents", &status, Code::ResourceExhausted);
    let (_, secret) = f
        .create_token(pb::CreateEnrollmentTokenRequest::default())
        .await;
    let mut request = enroll_request("newcomer", &[]);
    request.name = "n".repeat(OVERSIZED);
    let status = refused(
        "oversized Enroll",
        f.enroll_as(Some(&secret), request).await,
    );
    assert_code("oversized Enroll", &status, Code::ResourceExhausted);
    f.finish().await;
}

// === Samples ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seq_too_far_ahead_is_refused_without_poisoning_the_high_water_mark() {
    let mut f = Fixture::new().await;
    // Alone, and after a valid sample in the same report: nothing of the report is stored.
    for with_valid_first in [false, true] {
        let far = f.stored + f.config.limits.max_seq_jump + 1;
        let seqs = if with_valid_first {
            vec![f.stored + 1, far]
        } else {
            vec![far]
        };
        let what = format!("seqs {seqs:?}");
        let status = f
            .mid_session(report(seqs.into_iter().map(sample).collect()))
            .await;
        assert_code(&what, &status, Code::InvalidArgument);
        f.assert_intact().await;
    }
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_samples_are_refused_and_nothing_is_stored() {
    let mut f = Fixture::new().await;
    type Case = (&'static str, fn(u64) -> Vec<pb::MetricsSample>);
    let cases: [Case; 9] = [
        ("seq 0", |_| vec![sample(0)]),
        ("repeated seq in one report", |next| {
            vec![sample(next), sample(next)]
        }),
        ("decreasing seqs in one report", |next| {
            vec![sample(next + 1), sample(next)]
        }),
        ("NaN cpu", |next| {
            vec![pb::MetricsSample {
                cpu_percent: f64::NAN,
                ..sample(next)
            }]
        }),
        ("infinite cpu", |next| {
            vec![pb::MetricsSample {
                cpu_percent: f64::INFINITY,
                ..sample(next)
            }]
        }),
        ("negative cpu", |next| {
            vec![pb::MetricsSample {
                cpu_percent: -1.0,
                ..sample(next)
            }]
        }),
        ("negative load", |next| {
            vec![pb::MetricsSample {
                load_5: -0.5,
                ..sample(next)
            }]
        }),
        ("missing time", |next| {
            vec![pb::MetricsSample {
                time: None,
                ..sample(next)
            }]
        }),
        ("bad sample after a good one", |next| {
            vec![
                sample(next),
                pb::MetricsSample {
                    time: None,
                    ..sample(next + 1)
                },
            ]
        }),
    ];
    for (what, make) in cases {
        let status = f.mid_session(report(make(f.stored + 1))).await;
        assert_code(what, &status, Code::InvalidArgument);
        f.assert_intact().await;
    }
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_samples_in_one_report_is_resource_exhausted() {
    let f = Fixture::new().await;
    let next = f.stored + 1;
    let samples = (next..next + MAX_SAMPLES_PER_REPORT as u64 + 1)
        .map(sample)
        .collect();
    let status = f.mid_session(report(samples)).await;
    assert_code("too many samples", &status, Code::ResourceExhausted);
    f.finish().await;
}

// === Enroll ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enroll_without_an_enrollment_token() {
    let f = Fixture::new().await;
    let unknown = unknown_token();
    for (what, token) in [
        ("no token", None),
        ("garbage token", Some("garbage")),
        ("unknown token", Some(unknown.as_str())),
    ] {
        let status = refused(
            what,
            f.enroll_as(token, enroll_request("newcomer", &[])).await,
        );
        assert_code(what, &status, Code::Unauthenticated);
    }
    for (what, token) in [
        ("admin token", f.server.admin_token.as_str()),
        ("agent credential", f.credential.as_str()),
    ] {
        let status = refused(
            what,
            f.enroll_as(Some(token), enroll_request("newcomer", &[]))
                .await,
        );
        assert_code(what, &status, Code::PermissionDenied);
    }
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enroll_without_system_info() {
    let f = Fixture::new().await;
    let (token_id, secret) = f
        .create_token(pb::CreateEnrollmentTokenRequest::default())
        .await;
    let status = refused(
        "no system_info",
        f.enroll_as(
            Some(&secret),
            pb::EnrollRequest {
                system_info: None,
                ..enroll_request("newcomer", &[])
            },
        )
        .await,
    );
    assert_code("no system_info", &status, Code::InvalidArgument);
    assert_eq!(f.token_record(&token_id).await.use_count, 0);
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enroll_with_an_exhausted_token() {
    let mut f = Fixture::new().await;
    let (token_id, secret) = f
        .create_token(pb::CreateEnrollmentTokenRequest {
            max_uses: 1,
            ..Default::default()
        })
        .await;
    f.enroll_as(Some(&secret), enroll_request("first", &[]))
        .await
        .expect("first use");
    f.agents += 1;
    let status = refused(
        "second use",
        f.enroll_as(Some(&secret), enroll_request("second", &[]))
            .await,
    );
    assert_code("second use", &status, Code::PermissionDenied);
    assert_eq!(f.token_record(&token_id).await.use_count, 1);
    f.assert_stored("after the refused second use").await;
    f.finish().await;
}

/// Concurrent enrollments cannot use a limited token more often than allowed, and the use
/// count afterwards is exact (a lower count would let the token be used again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_enrollments_respect_max_uses() {
    const MAX_USES: u32 = 10;
    let mut f = Fixture::new().await;
    let (token_id, secret) = f
        .create_token(pb::CreateEnrollmentTokenRequest {
            max_uses: MAX_USES,
            ..Default::default()
        })
        .await;
    let client = f.server.agent_client(Some(&secret)).await;
    let attempts = (0..4 * MAX_USES).map(|i| {
        let mut client = client.clone();
        async move {
            client
                .enroll(enroll_request(&format!("racer-{i}"), &[]))
                .await
        }
    });
    let results = futures::future::join_all(attempts).await;
    let mut accepted = 0;
    for result in results {
        match result {
            Ok(_) => accepted += 1,
            Err(status) => assert_code("over max_uses", &status, Code::PermissionDenied),
        }
    }
    assert_eq!(accepted, MAX_USES);
    f.agents += MAX_USES;
    assert_eq!(
        f.token_record(&token_id).await.use_count,
        MAX_USES,
        "use count after {MAX_USES} concurrent enrollments"
    );
    let late = f
        .enroll_as(Some(&secret), enroll_request("latecomer", &[]))
        .await;
    if let Ok(response) = &late {
        f.agents += 1;
        panic!(
            "an exhausted token enrolled agent {} after the race",
            response.agent_id
        );
    }
    assert_code(
        "after the race",
        &refused("late", late),
        Code::PermissionDenied,
    );
    f.assert_stored("after the race").await;
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enroll_with_a_bad_name() {
    let f = Fixture::new().await;
    let (token_id, secret) = f
        .create_token(pb::CreateEnrollmentTokenRequest::default())
        .await;
    for (what, name) in [
        ("control character in name", "bad\nname".to_owned()),
        ("name too long", "n".repeat(257)),
    ] {
        let status = refused(
            what,
            f.enroll_as(
                Some(&secret),
                pb::EnrollRequest {
                    name,
                    ..enroll_request("newcomer", &[])
                },
            )
            .await,
        );
        assert_code(what, &status, Code::InvalidArgument);
    }
    assert_eq!(f.token_record(&token_id).await.use_count, 0);
    f.assert_stored("after refused enrollments").await;
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enroll_with_a_revoked_token() {
    let f = Fixture::new().await;
    let (token_id, secret) = f
        .create_token(pb::CreateEnrollmentTokenRequest::default())
        .await;
    f.server
        .admin()
        .await
        .revoke_enrollment_token(pb::RevokeEnrollmentTokenRequest {
            token_id: token_id.clone(),
        })
        .await
        .expect("revoke");
    let status = refused(
        "revoked token",
        f.enroll_as(Some(&secret), enroll_request("newcomer", &[]))
            .await,
    );
    assert_code("revoked token", &status, Code::PermissionDenied);
    let record = f.token_record(&token_id).await;
    assert!(record.revoked);
    assert_eq!(record.use_count, 0);
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enroll_with_an_expired_token() {
    let f = Fixture::new().await;
    let (token_id, secret) = f
        .create_token(pb::CreateEnrollmentTokenRequest {
            ttl: Some(prost_types::Duration {
                seconds: 1,
                nanos: 0,
            }),
            ..Default::default()
        })
        .await;
    let expires_at = f
        .token_record(&token_id)
        .await
        .expires_at
        .expect("a token with a ttl expires");
    let expires_at = SystemTime::try_from(expires_at).expect("valid expiry");
    eventually("the enrollment token to be past its expiry", || async {
        (SystemTime::now() > expires_at).then_some(())
    })
    .await;
    let status = refused(
        "expired token",
        f.enroll_as(Some(&secret), enroll_request("newcomer", &[]))
            .await,
    );
    assert_code("expired token", &status, Code::PermissionDenied);
    assert_eq!(f.token_record(&token_id).await.use_count, 0);
    f.finish().await;
}

// === FleetService ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_without_a_valid_token_is_unauthenticated() {
    let f = Fixture::new().await;
    let unknown = unknown_token();
    let tampered_admin = tampered(&f.server.admin_token);
    for (what, token) in [
        ("no token", None),
        ("garbage token", Some("garbage")),
        ("unknown token", Some(unknown.as_str())),
        ("tampered admin token", Some(tampered_admin.as_str())),
    ] {
        let mut fleet = f.server.fleet_as(token).await;
        let status = refused(
            what,
            fleet.list_agents(pb::ListAgentsRequest::default()).await,
        );
        assert_code(what, &status, Code::Unauthenticated);
        let status = refused(
            what,
            fleet
                .get_agent(pb::GetAgentRequest {
                    agent_id: f.id.clone(),
                })
                .await,
        );
        assert_code(what, &status, Code::Unauthenticated);
    }
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_with_agent_or_enrollment_token_is_denied() {
    let f = Fixture::new().await;
    let enrollment = f.server.enrollment_token().await;
    for (what, token) in [
        ("agent credential", f.credential.as_str()),
        ("enrollment token", enrollment.as_str()),
    ] {
        let mut fleet = f.server.fleet_as(Some(token)).await;
        let status = refused(
            what,
            fleet.list_agents(pb::ListAgentsRequest::default()).await,
        );
        assert_code(what, &status, Code::PermissionDenied);
        let status = refused(
            what,
            fleet
                .get_agent(pb::GetAgentRequest {
                    agent_id: f.id.clone(),
                })
                .await,
        );
        assert_code(what, &status, Code::PermissionDenied);
        let status = refused(
            what,
            fleet.get_fleet_summary(pb::GetFleetSummaryRequest {}).await,
        );
        assert_code(what, &status, Code::PermissionDenied);
        let status = refused(
            what,
            fleet.watch_agents(pb::WatchAgentsRequest::default()).await,
        );
        assert_code(what, &status, Code::PermissionDenied);
    }
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_agents_with_bad_arguments() {
    let f = Fixture::new().await;
    let mut fleet = f.server.fleet().await;
    let real_token_text = {
        // A page token of the right shape but another version, and one that is not hex.
        let bad_version: String = "2:abc".bytes().map(|b| format!("{b:02x}")).collect();
        vec!["garbage".to_owned(), "zz".to_owned(), bad_version]
    };
    for page_token in real_token_text {
        let what = format!("page_token {page_token:?}");
        let status = refused(
            &what,
            fleet
                .list_agents(pb::ListAgentsRequest {
                    page_token,
                    ..Default::default()
                })
                .await,
        );
        assert_code(&what, &status, Code::InvalidArgument);
    }
    for page_size in [-1, i32::MIN] {
        let what = format!("page_size {page_size}");
        let status = refused(
            &what,
            fleet
                .list_agents(pb::ListAgentsRequest {
                    page_size,
                    ..Default::default()
                })
                .await,
        );
        assert_code(&what, &status, Code::InvalidArgument);
    }
    for selector in [
        "=prod",
        "env=prod,,tier",
        "bad key=x",
        "env=a b",
        "!",
        "é",
        ",",
    ] {
        let what = format!("selector {selector:?}");
        let status = refused(
            &what,
            fleet
                .list_agents(pb::ListAgentsRequest {
                    label_selector: selector.to_owned(),
                    ..Default::default()
                })
                .await,
        );
        assert_code(&what, &status, Code::InvalidArgument);
        let status = refused(
            &what,
            fleet
                .watch_agents(pb::WatchAgentsRequest {
                    label_selector: selector.to_owned(),
                    ..Default::default()
                })
                .await,
        );
        assert_code(&format!("watch {what}"), &status, Code::InvalidArgument);
    }
    for status_number in [42, -1] {
        let what = format!("status {status_number}");
        let status = refused(
            &what,
            fleet
                .list_agents(pb::ListAgentsRequest {
                    statuses: vec![pb::AgentStatus::Online as i32, status_number],
                    ..Default::default()
                })
                .await,
        );
        assert_code(&what, &status, Code::InvalidArgument);
    }
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_agent_with_bad_ids() {
    let f = Fixture::new().await;
    let status = refused("unknown id", f.server.get_agent(UNKNOWN_ID).await);
    assert_code("unknown id", &status, Code::NotFound);
    for id in ["../x", "UPPER", "", "a b", "a/b", &"a".repeat(65)] {
        let what = format!("id {id:?}");
        let status = refused(&what, f.server.get_agent(id).await);
        assert_code(&what, &status, Code::InvalidArgument);
    }
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_metrics_with_bad_arguments() {
    let f = Fixture::new().await;
    let mut fleet = f.server.fleet().await;
    let now = SystemTime::now();
    let ts = |t: SystemTime| Some(prost_types::Timestamp::from(t));
    let hour_ago = now - Duration::from_secs(3600);

    let status = refused(
        "start after end",
        fleet
            .get_metrics(pb::GetMetricsRequest {
                agent_id: f.id.clone(),
                start: ts(now),
                end: ts(hour_ago),
                step: None,
            })
            .await,
    );
    assert_code("start after end", &status, Code::InvalidArgument);

    // One hour in steps of 100 ms is 36,000 points, above the 10,000 the server allows.
    let status = refused(
        "step too small",
        fleet
            .get_metrics(pb::GetMetricsRequest {
                agent_id: f.id.clone(),
                start: ts(hour_ago),
                end: ts(now),
                step: Some(prost_types::Duration {
                    seconds: 0,
                    nanos: 100_000_000,
                }),
            })
            .await,
    );
    assert_code("step too small", &status, Code::InvalidArgument);

    let status = refused(
        "negative step",
        fleet
            .get_metrics(pb::GetMetricsRequest {
                agent_id: f.id.clone(),
                start: ts(hour_ago),
                end: ts(now),
                step: Some(prost_types::Duration {
                    seconds: -60,
                    nanos: 0,
                }),
            })
            .await,
    );
    assert_code("negative step", &status, Code::InvalidArgument);

    let status = refused(
        "invalid timestamp",
        fleet
            .get_metrics(pb::GetMetricsRequest {
                agent_id: f.id.clone(),
                start: Some(prost_types::Timestamp {
                    seconds: 0,
                    nanos: -5,
                }),
                end: ts(now),
                step: None,
            })
            .await,
    );
    assert_code("invalid timestamp", &status, Code::InvalidArgument);

    let status = refused(
        "unknown agent",
        fleet
            .get_metrics(pb::GetMetricsRequest {
                agent_id: UNKNOWN_ID.to_owned(),
                ..Default::default()
            })
            .await,
    );
    assert_code("unknown agent", &status, Code::NotFound);

    let status = refused(
        "malformed agent id",
        fleet
            .get_metrics(pb::GetMetricsRequest {
                agent_id: "../x".to_owned(),
                ..Default::default()
            })
            .await,
    );
    assert_code("malformed agent id", &status, Code::InvalidArgument);
    f.finish().await;
}

// === AdminService ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_unknown_or_malformed_enrollment_token() {
    let f = Fixture::new().await;
    let mut admin = f.server.admin().await;
    let status = refused(
        "unknown token id",
        admin
            .revoke_enrollment_token(pb::RevokeEnrollmentTokenRequest {
                token_id: UNKNOWN_ID.to_owned(),
            })
            .await,
    );
    assert_code("unknown token id", &status, Code::NotFound);
    for token_id in ["", "../x", "UPPER"] {
        let what = format!("token id {token_id:?}");
        let status = refused(
            &what,
            admin
                .revoke_enrollment_token(pb::RevokeEnrollmentTokenRequest {
                    token_id: token_id.to_owned(),
                })
                .await,
        );
        assert_code(&what, &status, Code::InvalidArgument);
    }
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_rpcs_need_an_admin_token() {
    let f = Fixture::new().await;
    let (token_id, secret) = f
        .create_token(pb::CreateEnrollmentTokenRequest::default())
        .await;
    let unknown = unknown_token();
    for (what, token, code) in [
        (
            "agent credential",
            Some(f.credential.as_str()),
            Code::PermissionDenied,
        ),
        (
            "enrollment token",
            Some(secret.as_str()),
            Code::PermissionDenied,
        ),
        ("no token", None, Code::Unauthenticated),
        (
            "unknown token",
            Some(unknown.as_str()),
            Code::Unauthenticated,
        ),
    ] {
        let mut admin = f.admin_as(token).await;
        let status = refused(
            what,
            admin
                .create_enrollment_token(pb::CreateEnrollmentTokenRequest::default())
                .await,
        );
        assert_code(what, &status, code);
        let status = refused(
            what,
            admin
                .list_enrollment_tokens(pb::ListEnrollmentTokensRequest {})
                .await,
        );
        assert_code(what, &status, code);
        let status = refused(
            what,
            admin
                .revoke_enrollment_token(pb::RevokeEnrollmentTokenRequest {
                    token_id: token_id.clone(),
                })
                .await,
        );
        assert_code(what, &status, code);
    }
    // Nothing was created or revoked by the refused calls.
    let tokens = f
        .server
        .admin()
        .await
        .list_enrollment_tokens(pb::ListEnrollmentTokensRequest {})
        .await
        .expect("list")
        .into_inner()
        .tokens;
    let record = tokens
        .iter()
        .find(|t| t.token_id == token_id)
        .expect("token listed");
    assert!(!record.revoked);
    // The fixture's enrollment token and this one.
    assert_eq!(tokens.len(), 2, "{tokens:?}");
    f.finish().await;
}
