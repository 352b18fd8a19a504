//! TLS and mTLS end to end: certificates from the same code as `tether-server gen-certs`, a real
//! server serving TLS on `127.0.0.1:0`, real agents, the real CLI and raw clients.
//!
//! Covered: an agent trusting the CA enrolls, connects and reports over TLS, and the CLI lists
//! it; clients that do not trust the CA, and plaintext clients, are refused; with a client CA
//! (mTLS) an agent needs a certificate issued for its own id (`PERMISSION_DENIED` otherwise,
//! and without one), while the CLI without a certificate still works; a handshake that never
//! completes is closed after the handshake timeout while a healthy agent keeps reporting;
//! plaintext on a non-loopback address needs `--insecure-plaintext`; and mTLS refusals are
//! counted and audited within the credential's budget.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use tether_proto as pb;
use tether_server::server::{ListenSecurity, check_listen};
use tether_tests::{
    TestServer, TlsOptions, eventually, fast_config, hello, system_info, trace_init,
};
use tokio::io::AsyncReadExt as _;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

/// Opens `Connect` over TLS as `agent_id` with `credential`, presenting `identity` if given, and
/// sends `Hello`. `Ok` once `Welcome` arrives; the status code if the server refuses.
async fn connect_as(
    server: &TestServer,
    agent_id: &str,
    credential: &str,
    identity: Option<(&Path, &Path)>,
) -> Result<tokio::sync::mpsc::Sender<pb::ConnectRequest>, Code> {
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tx.send(pb::ConnectRequest {
        message: Some(pb::connect_request::Message::Hello(hello(
            agent_id,
            "tls-raw",
            &[],
        ))),
    })
    .await
    .expect("queue hello");
    let mut client = server
        .agent_client_with_cert(Some(credential), identity)
        .await;
    let mut inbound = client
        .connect(ReceiverStream::new(rx))
        .await
        .map_err(|status| status.code())?
        .into_inner();
    match tokio::time::timeout(Duration::from_secs(10), inbound.message()).await {
        Ok(Ok(Some(pb::ConnectResponse {
            message: Some(pb::connect_response::Message::Welcome(_)),
        }))) => Ok(tx),
        Ok(Err(status)) => Err(status.code()),
        other => panic!("expected Welcome or an error status, got {other:?}"),
    }
}

#[tokio::test]
async fn agent_reports_over_tls_and_the_cli_lists_it() {
    trace_init();
    let data = tempfile::tempdir().expect("data dir");
    let server = TestServer::start_tls(fast_config(data.path()), TlsOptions::default()).await;

    let agent = server.spawn_agent("tls-1", &[]).await;
    let id = agent.id().await;
    server.wait_status(&id, pb::AgentStatus::Online).await;
    eventually("samples acknowledged over TLS", || async {
        (agent.handle.stats.samples_acked() >= 3).then_some(())
    })
    .await;

    let listed = server
        .cli(&["agents", "list", "-o", "json"])
        .await
        .expect("tetherctl over TLS");
    assert!(listed.contains(&id), "{listed}");

    // The CLI without the CA does not trust the server (the dev CA is not a system root).
    let err = tether_tests::cli_at(&server.url, &server.admin_token, &["agents", "list"])
        .await
        .expect_err("untrusted server");
    assert!(
        matches!(err, tetherctl::CliError::Unreachable { .. }),
        "{err:?}"
    );

    agent.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn untrusting_and_plaintext_clients_are_refused() {
    trace_init();
    let data = tempfile::tempdir().expect("data dir");
    let server = TestServer::start_tls(fast_config(data.path()), TlsOptions::default()).await;

    // A client trusting another CA fails the handshake.
    let other_dir = tempfile::tempdir().expect("other CA dir");
    let other = tether_server::devcerts::generate_dev_certs(
        other_dir.path(),
        &["localhost".to_owned()],
        false,
    )
    .expect("other CA");
    let other_ca = std::fs::read(&other.ca_cert).expect("read other CA");
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(other_ca));
    assert!(
        server.try_channel(Some(tls)).await.is_err(),
        "a client that does not trust the CA must not connect"
    );

    // A plaintext HTTP/2 client against the TLS port gets no answer to any RPC.
    let plaintext = async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr))
            .expect("url")
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await?;
        let mut fleet = pb::fleet_service_client::FleetServiceClient::with_interceptor(
            channel,
            tether_tests::Bearer(Some(server.admin_token.clone())),
        );
        fleet
            .list_agents(pb::ListAgentsRequest::default())
            .await
            .map(|_| ())
            .map_err(anyhow::Error::from)
    };
    let result = tokio::time::timeout(Duration::from_secs(15), plaintext)
        .await
        .expect("the plaintext attempt ends");
    assert!(
        result.is_err(),
        "plaintext must not be served on the TLS port"
    );

    // The server is unaffected.
    server
        .fleet()
        .await
        .list_agents(pb::ListAgentsRequest::default())
        .await
        .expect("a TLS client is served");
    server.stop().await;
}

#[tokio::test]
async fn mtls_requires_a_certificate_issued_for_the_agents_own_id() {
    trace_init();
    let data = tempfile::tempdir().expect("data dir");
    let mtls = TlsOptions {
        mtls: true,
        ..TlsOptions::default()
    };
    let server = TestServer::start_tls(fast_config(data.path()), mtls).await;

    // Enrollment needs no client certificate (the agent has no id yet to issue one for).
    let enrolled = server
        .enroll_with(pb::EnrollRequest {
            system_info: Some(system_info("mtls-1")),
            labels: Default::default(),
            name: String::new(),
            previous_credential: String::new(),
        })
        .await
        .expect("enroll over TLS");
    let id = enrolled.agent_id.clone();
    let credential = enrolled.agent_credential.clone();

    // No client certificate: refused.
    assert_eq!(
        connect_as(&server, &id, &credential, None).await.err(),
        Some(Code::PermissionDenied)
    );

    // A valid certificate from the CA, but issued for another agent: refused.
    let (other_cert, other_key) = server.issue_agent_cert("someone-else");
    assert_eq!(
        connect_as(&server, &id, &credential, Some((&other_cert, &other_key)))
            .await
            .err(),
        Some(Code::PermissionDenied)
    );

    // Its own certificate: accepted.
    let (cert, key) = server.issue_agent_cert(&id);
    let session = connect_as(&server, &id, &credential, Some((&cert, &key)))
        .await
        .expect("an agent with its own certificate connects");
    server.wait_status(&id, pb::AgentStatus::Online).await;
    drop(session);
    server.wait_status(&id, pb::AgentStatus::Offline).await;

    // A real agent holding that enrollment and certificate connects and reports.
    let state_dir = tempfile::tempdir().expect("agent state dir");
    tether_agent::StateDir::open(state_dir.path())
        .expect("state dir")
        .save(&tether_agent::Enrollment {
            agent_id: id.clone(),
            org_id: enrolled.org_id.clone(),
            credential: tether_agent::Credential::new(credential.clone()),
        })
        .expect("save enrollment");
    let agent = server.spawn_agent_in(
        "mtls-1",
        &[],
        state_dir,
        None,
        Some((cert.clone(), key.clone())),
    );
    server.wait_status(&id, pb::AgentStatus::Online).await;
    eventually("samples acknowledged over mTLS", || async {
        (agent.handle.stats.samples_acked() >= 3).then_some(())
    })
    .await;

    // Operators' CLI connects without a client certificate.
    let listed = server
        .cli(&["agents", "list", "-o", "json"])
        .await
        .expect("tetherctl without a client certificate");
    assert!(listed.contains(&id), "{listed}");

    // A client certificate from a CA the server does not trust fails the handshake: the
    // connection (or, with TLS 1.3, its first request) is refused.
    let rogue_dir = tempfile::tempdir().expect("rogue CA dir");
    let rogue = tether_server::devcerts::issue_agent_certs(
        rogue_dir.path(),
        std::slice::from_ref(&id),
        false,
    )
    .expect("rogue CA");
    let (_, rogue_cert, rogue_key) = &rogue.agents[0];
    let tls = server.client_tls(Some((rogue_cert, rogue_key)));
    let attempt = async {
        let channel = server.try_channel(Some(tls)).await?;
        let mut fleet = pb::fleet_service_client::FleetServiceClient::with_interceptor(
            channel,
            tether_tests::Bearer(Some(server.admin_token.clone())),
        );
        fleet
            .list_agents(pb::ListAgentsRequest::default())
            .await
            .map(|_| ())
            .map_err(anyhow::Error::from)
    };
    let result = tokio::time::timeout(Duration::from_secs(15), attempt)
        .await
        .expect("the rogue attempt ends");
    assert!(
        result.is_err(),
        "a certificate from another CA must be refused"
    );

    agent.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn stalled_handshakes_are_closed_while_agents_keep_reporting() {
    trace_init();
    const HANDSHAKE_TIMEOUT: Duration = Duration::from_millis(500);
    let data = tempfile::tempdir().expect("data dir");
    let options = TlsOptions {
        handshake_timeout: Some(HANDSHAKE_TIMEOUT),
        ..TlsOptions::default()
    };
    let server = TestServer::start_tls(fast_config(data.path()), options).await;
    let agent = server.spawn_agent("steady", &[]).await;
    let id = agent.id().await;
    server.wait_status(&id, pb::AgentStatus::Online).await;

    // Connections that never start a handshake: each is closed by the server after the
    // timeout, not before.
    let started = Instant::now();
    let mut stalled = Vec::new();
    for _ in 0..20 {
        stalled.push(
            tokio::net::TcpStream::connect(server.addr)
                .await
                .expect("tcp connect"),
        );
    }
    let acked_before = agent.handle.stats.samples_acked();
    for mut stream in stalled {
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("the server closes a stalled handshake");
        // EOF, or a reset: either way the connection is gone, and nothing was sent.
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed >= HANDSHAKE_TIMEOUT - Duration::from_millis(100),
        "closed after {elapsed:?}, before the handshake timeout"
    );

    // The healthy agent kept reporting throughout.
    eventually("the agent's samples to keep being acknowledged", || async {
        (agent.handle.stats.samples_acked() >= acked_before + 2).then_some(())
    })
    .await;
    server.wait_status(&id, pb::AgentStatus::Online).await;

    agent.stop().await;
    server.stop().await;
}

#[test]
fn plaintext_on_a_non_loopback_address_needs_the_flag() {
    let addr = |s: &str| s.parse::<SocketAddr>().expect("addr");
    // Loopback: plaintext is fine.
    for a in ["127.0.0.1:7600", "[::1]:7600"] {
        assert_eq!(
            check_listen(&addr(a), false, false).expect(a),
            ListenSecurity::PlaintextLoopback
        );
    }
    // Anything else, the wildcard included, needs TLS or the explicit flag.
    for a in [
        "0.0.0.0:7600",
        "[::]:7600",
        "10.1.2.3:7600",
        "192.0.2.1:7600",
    ] {
        assert!(check_listen(&addr(a), false, false).is_err(), "{a}");
        assert_eq!(
            check_listen(&addr(a), false, true).expect(a),
            ListenSecurity::PlaintextExposed
        );
        assert_eq!(
            check_listen(&addr(a), true, false).expect(a),
            ListenSecurity::Tls
        );
    }
}

/// The agent streams mTLS refuses (no client certificate, a certificate for another agent) are
/// counted by reason and audited in the agent's org, naming the agent; a flood of them writes
/// a bounded number of audit records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_refusals_are_counted_and_audited() {
    use tether_server::metrics::MtlsLabels;
    trace_init();
    let data = tempfile::tempdir().expect("data dir");
    let mtls = TlsOptions {
        mtls: true,
        ..TlsOptions::default()
    };
    let server = TestServer::start_tls(fast_config(data.path()), mtls).await;
    let (id, credential) = server.enroll("mtls-refused", &[]).await;
    let refusals = |reason| {
        server
            .metrics
            .mtls_refusals
            .get_or_create(&MtlsLabels { reason })
            .get()
    };

    let refused = connect_as(&server, &id, &credential, None).await.err();
    assert_eq!(refused, Some(Code::PermissionDenied));
    let (other_cert, other_key) = server.issue_agent_cert("someone-else");
    let other = Some((other_cert.as_path(), other_key.as_path()));
    let refused = connect_as(&server, &id, &credential, other).await.err();
    assert_eq!(refused, Some(Code::PermissionDenied));
    assert_eq!(
        (refusals("no_certificate"), refusals("wrong_agent")),
        (1, 1)
    );

    // Settle the asynchronous audit writes behind an audited call, then read the trail.
    let mut admin = server.admin().await;
    tether_tests::create_token(&mut admin, "settle", pb::Role::Viewer, None).await;
    let connect = "/tether.v1.AgentService/Connect";
    let refusals_audited = |events: &[pb::AuditEvent]| {
        events
            .iter()
            .filter(|e| e.method == connect && e.target == id)
            .cloned()
            .collect::<Vec<_>>()
    };
    let events = tether_tests::list_audit(&admin, Default::default()).await;
    let audited = refusals_audited(&events);
    assert_eq!(audited.len(), 2, "{events:?}");
    for event in &audited {
        assert_eq!(event.outcome, pb::AuditOutcome::Denied as i32);
        assert_eq!(Code::from(event.status_code), Code::PermissionDenied);
        assert_eq!(event.actor_token_id, tether_tests::token_id(&credential));
        assert_eq!(event.actor_role, pb::Role::Agent as i32);
    }

    // A stolen credential without the certificate, retried 300 times: every attempt is
    // counted, a bounded number audited.
    let started = Instant::now();
    for _ in 0..300 {
        let refused = connect_as(&server, &id, &credential, None).await.err();
        assert_eq!(refused, Some(Code::PermissionDenied));
    }
    assert_eq!(refusals("no_certificate"), 301);
    tether_tests::create_token(&mut admin, "settle-2", pb::Role::Viewer, None).await;
    let events = tether_tests::list_audit(&admin, Default::default()).await;
    let audited = refusals_audited(&events).len();
    // The burst of 100, refilled at one a second while the attempts ran.
    let refilled = started.elapsed().as_secs() as usize + 1;
    assert!(
        (100..=100 + refilled).contains(&audited),
        "{audited} refusals audited"
    );
    tetherctl::verify_chain(&events).expect("the chain verifies");
    server.stop().await;
}
