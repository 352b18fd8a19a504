//! The agent stream: the first message, identity and credentials, oversized messages and
//! bad samples.

use super::*;

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
        deferred_seq: 0,
        previous_ack_latency: None,
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
async fn a_stream_without_hello_is_told_to_retry() {
    let f = Fixture::new().await;
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::ConnectRequest>(1);
    let status = refused(
        "no hello",
        f.server
            .agent_client(Some(&f.credential))
            .await
            .connect(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await,
    );
    assert_code("no hello", &status, Code::Unavailable);
    assert!(
        tether_agent::AgentError::Rpc(status).is_retryable(),
        "an agent whose Hello was held up tries again"
    );
    drop(tx);
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

/// An unset oneof is what a message of a kind this server does not know decodes to (a newer
/// agent's): it is ignored and the session goes on (`tests/compat.rs` sends real unknown
/// kinds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_empty_message_mid_session_is_ignored() {
    let mut f = Fixture::new().await;
    let (session, _) = f.session().await;
    session
        .tx
        .send(pb::ConnectRequest { message: None })
        .await
        .expect("queue message");
    // The same session goes on: its next samples are stored and acknowledged.
    f.store(session, 2).await;
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
