//! Connections that do nothing useful cannot hold the server: the first-request deadline, the
//! per-source and global caps, and the TLS handshake cap, each while a healthy agent keeps
//! reporting and the CLI keeps working.

use std::time::{Duration, Instant};

use tether_tests::{
    Healthy, TestServer, TlsOptions, connections_refused, eventually, fast_config, trace_init,
};

use super::{closed_within, loopback, silent_flood, silent_tcp};

/// How long past its deadline a silent connection may stay open (a loaded test machine).
const SLACK: Duration = Duration::from_secs(10);

fn open_connections(server: &TestServer) -> i64 {
    server.metrics.connections.get()
}

/// `ListAgents` over a raw HTTP/2 connection, with `token` if given; returns the grpc-status.
async fn list_agents_call(
    send: h2::client::SendRequest<bytes::Bytes>,
    addr: std::net::SocketAddr,
    token: Option<&str>,
) -> Option<String> {
    let mut request = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}/tether.v1.FleetService/ListAgents"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let request = request.body(()).expect("request");
    let mut send = send.ready().await.expect("stream slot");
    let (response, mut body) = send.send_request(request, false).expect("send");
    // An empty ListAgentsRequest: uncompressed, zero length.
    let _ = body.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]), true);
    let response = response.await.expect("response");
    // A trailers-only answer (an error) carries its status in the headers.
    if let Some(status) = response.headers().get("grpc-status") {
        return Some(status.to_str().ok()?.to_owned());
    }
    let mut body = response.into_body();
    while let Some(data) = body.data().await {
        data.expect("the response's data");
    }
    let trailers = body.trailers().await.expect("trailers");
    let status = match &trailers {
        Some(trailers) => trailers.get("grpc-status"),
        None => None,
    };
    Some(status?.to_str().ok()?.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_are_closed_at_the_first_request_deadline() {
    trace_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = fast_config(dir.path());
    let deadline = Duration::from_secs(2);
    config.connections.first_request_timeout = deadline;
    let server = TestServer::start(config).await;
    let healthy = Healthy::start(&server).await;

    // Two thousand connections that never send the HTTP/2 preface.
    const FLOOD: usize = 2000;
    let mut flood = silent_flood(server.addr, loopback(2), FLOOD).await;
    // One that sends the preface and SETTINGS, but no request.
    let (_idle_send, idle) = h2::client::handshake(silent_tcp(server.addr, loopback(2)).await)
        .await
        .expect("h2 handshake");
    let idle = tokio::spawn(idle);
    // One whose only request is refused (no token): a refusal does not keep a connection.
    let (refused_send, refused) = h2::client::handshake(silent_tcp(server.addr, loopback(2)).await)
        .await
        .expect("h2 handshake");
    let refused = tokio::spawn(refused);
    assert_eq!(
        // A clone: with its last handle dropped, the client would close the connection itself.
        list_agents_call(refused_send.clone(), server.addr, None).await,
        Some("16".to_owned()),
        "UNAUTHENTICATED"
    );

    // Meanwhile the CLI works, on a connection of its own.
    server
        .cli(&["agents", "list"])
        .await
        .expect("tetherctl agents list during the flood");

    for (i, tcp) in flood.iter_mut().enumerate() {
        assert!(
            closed_within(tcp, deadline + SLACK).await,
            "silent connection {i} is still open"
        );
    }
    for (what, conn) in [
        ("without a request", idle),
        ("with a refused request", refused),
    ] {
        let ended = tokio::time::timeout(deadline + SLACK, conn).await;
        assert!(ended.is_ok(), "the connection {what} is still open");
    }
    let closed = connections_refused(&server.metrics, "first_request_timeout");
    assert!(
        closed >= FLOOD as u64 + 2,
        "{closed} closed for the deadline"
    );

    // The agent's connection made an authenticated request: no deadline for it.
    healthy.assert_unaffected(&server).await;
    eventually("every connection closed and counted out", || async {
        (open_connections(&server) == 0).then_some(())
    })
    .await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_source_address_holds_at_most_its_share() {
    trace_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = fast_config(dir.path());
    config.connections.max_connections_per_source = 20;
    config.connections.first_request_timeout = Duration::from_secs(60);
    let server = TestServer::start(config).await;
    let healthy = Healthy::start(&server).await;

    let _held = silent_flood(server.addr, loopback(3), 20).await;
    eventually("twenty connections from 127.0.0.3 accepted", || async {
        (open_connections(&server) >= 21).then_some(())
    })
    .await;
    // The twenty-first from that address is closed at once, long before any deadline.
    let started = Instant::now();
    let mut extra = silent_tcp(server.addr, loopback(3)).await;
    assert!(closed_within(&mut extra, SLACK).await);
    assert!(started.elapsed() < Duration::from_secs(60));
    assert_eq!(connections_refused(&server.metrics, "max_per_source"), 1);

    // Other addresses are not affected.
    server
        .cli(&["agents", "list"])
        .await
        .expect("tetherctl from another address");
    healthy.assert_unaffected(&server).await;
    server.stop().await;
}

/// A server capped at 30 connections whose silent ones are not closed for a minute, with its
/// healthy agent.
async fn capped_at_thirty(dir: &std::path::Path) -> (TestServer, Healthy) {
    let mut config = fast_config(dir);
    config.connections.max_connections = Some(30);
    config.connections.first_request_timeout = Duration::from_secs(60);
    let server = TestServer::start(config).await;
    let healthy = Healthy::start(&server).await;
    (server, healthy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_connection_limit_a_silent_connection_makes_room() {
    trace_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, healthy) = capped_at_thirty(dir.path()).await;

    // The healthy agent's connection and 29 silent ones fill the server.
    let mut flood = silent_flood(server.addr, loopback(4), 29).await;
    eventually("thirty connections open", || async {
        (open_connections(&server) == 30).then_some(())
    })
    .await;
    // The CLI still gets in: the oldest silent connection gives it its place.
    server
        .cli(&["agents", "list"])
        .await
        .expect("tetherctl at the connection limit");
    assert!(connections_refused(&server.metrics, "evicted") >= 1);
    assert!(
        closed_within(&mut flood[0], SLACK).await,
        "the oldest silent connection was evicted"
    );
    healthy.assert_unaffected(&server).await;
    server.stop().await;
}

/// A flood that arrives after a client connected, while the client's first request is still
/// on its way, evicts its own connections, not the client's: the victim comes from the source
/// with the most connections waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_arriving_after_a_client_evicts_its_own_connections() {
    trace_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, healthy) = capped_at_thirty(dir.path()).await;
    let before = open_connections(&server);

    // The client connects: the oldest connection without a request...
    let client = silent_tcp(server.addr, loopback(6)).await;
    eventually("the client's connection accepted", || async {
        (open_connections(&server) == before + 1).then_some(())
    })
    .await;
    // ...when a flood from one address fills the server and goes on arriving.
    const FLOOD: i64 = 60;
    let free = 30 - (before + 1);
    let _flood = silent_flood(server.addr, loopback(4), FLOOD as usize).await;
    eventually("every flood connection accepted", || async {
        // Beyond the cap, each made room for itself or (while the evicted ones were still
        // closing) was refused.
        let turned_away = connections_refused(&server.metrics, "evicted")
            + connections_refused(&server.metrics, "max_connections");
        (turned_away >= (FLOOD - free) as u64).then_some(())
    })
    .await;

    // The client's request, sent only now, is served on its connection.
    let (send, connection) = h2::client::handshake(client)
        .await
        .expect("the client's connection is still open");
    let connection = tokio::spawn(connection);
    assert_eq!(
        list_agents_call(send, server.addr, Some(&server.admin_token)).await,
        Some("0".to_owned()),
        "the client's request succeeds"
    );
    connection.abort();
    healthy.assert_unaffected(&server).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_handshakes_beyond_the_cap_wait_their_turn() {
    trace_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = fast_config(dir.path());
    config.connections.max_tls_handshakes = 2;
    let handshake_timeout = Duration::from_secs(1);
    let options = TlsOptions {
        handshake_timeout: Some(handshake_timeout),
        ..TlsOptions::default()
    };
    let server = TestServer::start_tls(config, options).await;
    let healthy = Healthy::start(&server).await;

    // Two peers that connect and never complete their handshake hold both turns...
    let mut silent = silent_flood(server.addr, loopback(5), 2).await;
    eventually("two handshakes in progress", || async {
        (server.metrics.tls_handshakes.get() == 2).then_some(())
    })
    .await;
    // ...so the CLI's handshake waits until they time out, then succeeds.
    let started = Instant::now();
    server
        .cli(&["agents", "list"])
        .await
        .expect("tetherctl over TLS");
    assert!(
        started.elapsed() >= handshake_timeout / 2,
        "the CLI's handshake did not wait for a turn ({:?})",
        started.elapsed()
    );
    for tcp in &mut silent {
        assert!(closed_within(tcp, SLACK).await);
    }
    assert_eq!(
        connections_refused(&server.metrics, "tls_handshake_timeout"),
        2
    );
    healthy.assert_unaffected(&server).await;
    server.stop().await;
}
