//! HTTP/2-level abuse: rapid resets, header floods and the concurrent-stream limit.

use super::*;

// === 1. Rapid reset ===

/// CVE-2023-44487: open streams and reset each at once, so the server does the work of
/// accepting them while the client pays nothing. After `max_pending_accept_resets` (the stream
/// limit, 1,024, by default) resets of streams the server had not accepted yet, the server ends
/// the connection with GOAWAY(ENHANCE_YOUR_CALM), long before the flood's streams were all
/// sent. (That a well-behaved client cancelling all its streams at once keeps its connection
/// is the next test.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_is_answered_with_goaway_enhance_your_calm() {
    trace_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = fast_config(dir.path());
    let limit = config.limits.max_pending_accept_resets;
    let server = TestServer::start(config).await;
    let healthy = Healthy::start(&server).await;

    let mut admin = server.admin().await;
    let attacker = tether_tests::create_token(&mut admin, "attacker", pb::Role::Viewer, None)
        .await
        .secret;
    // The attacker runs on a thread and a runtime of its own, as another process would: its
    // loop seldom waits, and on this test's runtime it would hold one of the two workers that
    // the server and the healthy agent need, which no real attacker can do.
    let addr = server.addr;
    let attack = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("the attacker's runtime")
            .block_on(open_and_reset(addr, &attacker, limit))
    });
    let (reset, err, takes_new_streams) = tokio::task::spawn_blocking(move || attack.join())
        .await
        .expect("the attacker's thread joined")
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
    // How many of the resets the client queued before it read the GOAWAY depends on timing;
    // the server's verdict does not.
    assert!(reset > limit, "only {reset} streams were opened and reset");
    // The server sends GOAWAY(ENHANCE_YOUR_CALM) and closes the socket. A client still writing
    // may hit the closed socket (EPIPE, or ECONNRESET) before its connection task reads the
    // GOAWAY; the raw-frame run below reads the GOAWAY itself.
    let torn_down = err.get_io().is_some_and(|e| {
        matches!(
            e.kind(),
            std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
        )
    });
    assert!(
        torn_down
            || (err.is_go_away()
                && err.is_remote()
                && err.reason() == Some(Reason::ENHANCE_YOUR_CALM)),
        "expected GOAWAY(ENHANCE_YOUR_CALM) or a closed socket, got {err:?}"
    );
    assert!(!takes_new_streams, "the connection takes no new stream");

    // The same attack at wire speed: HEADERS + RST_STREAM(CANCEL) pairs in one write, the
    // headers HPACK-indexed so that well over the limit reach the server in one read.
    // The GOAWAY names the pending-accept limit ("too_many_resets") and its last stream id
    // shows the server stopped processing streams long before the end of the batch.
    let mut frames = Vec::new();
    let blocks = hpack_requests_indexed(server.addr, LIST_AGENTS, &server.admin_token, 8 * limit);
    for (i, block) in blocks.iter().enumerate() {
        let stream = 2 * u32::try_from(i).expect("u32") + 1;
        h2_frame(&mut frames, FRAME_HEADERS, FLAG_END_HEADERS, stream, block);
        h2_frame(
            &mut frames,
            FRAME_RST_STREAM,
            0,
            stream,
            &u32::from(Reason::CANCEL).to_be_bytes(),
        );
    }
    let mut tcp = raw_h2(server.addr, &frames).await;
    let (last_stream, reason, debug) = tokio::time::timeout(ANSWER, async {
        loop {
            let (kind, _, _, payload) = read_h2_frame(&mut tcp).await;
            if kind == FRAME_GOAWAY {
                let last = u32::from_be_bytes(payload[..4].try_into().expect("4 bytes"));
                return (last, error_code(&payload[4..]), payload[8..].to_vec());
            }
        }
    })
    .await
    .expect("a GOAWAY in time");
    assert_eq!(
        (reason, debug.as_slice()),
        (Reason::ENHANCE_YOUR_CALM, b"too_many_resets".as_slice())
    );
    let limit_stream = 2 * u32::try_from(limit).expect("u32") + 1;
    // Observed: exactly the stream whose reset was one too many (2,049 for the default 1,024).
    assert!(
        (limit_stream..=4 * limit_stream).contains(&last_stream),
        "GOAWAY last stream id {last_stream} (limit {limit} resets)"
    );
    drop(tcp);

    healthy.assert_unaffected(&server).await;
    assert_list_agents_ok(&server, &server.admin_token).await;
    server.stop().await;
}

/// The rapid-reset attacker: through an HTTP/2 client, as an attacker's loop would, opens and
/// resets `64 * limit` streams as fast as the client allows, until the server ends the
/// connection. A server that keeps up accepts each reset stream at once (no worse than an
/// ordinary request, charged to the attacker's token); the attack is the server falling
/// behind, so that one read holds more resets than the limit. The client's own defences
/// against a misbehaving server are lifted: it is the attacker here. Returns how many streams
/// it reset, how the connection ended, and whether it still took a new stream after that.
async fn open_and_reset(addr: SocketAddr, token: &str, limit: usize) -> (usize, h2::Error, bool) {
    let mut builder = h2::client::Builder::new();
    builder
        .max_concurrent_reset_streams(usize::MAX)
        .max_local_error_reset_streams(None);
    let mut raw = Raw::connect_with(addr, &builder).await;
    let mut reset = 0;
    for _ in 0..64 * limit {
        let Ok(mut send) = raw.send.clone().ready().await else {
            break;
        };
        let request = raw.request(LIST_AGENTS, token, &[]);
        let Ok((_response, mut stream)) = send.send_request(request, false) else {
            break;
        };
        stream.send_reset(Reason::CANCEL);
        reset += 1;
    }
    let err = raw
        .closed()
        .await
        .expect_err("the server ends the connection");
    let takes_new_streams = raw.send.clone().ready().await.is_ok();
    (reset, err, takes_new_streams)
}

/// The other side of the Rapid Reset defence: a well-behaved multiplexed client (e.g. a
/// simulator or gateway carrying many agents over one connection) whose every open stream is
/// cancelled at once, while the server is too busy to accept them, must keep its connection.
/// The worst such client opens `max_concurrent_streams` streams and resets them all before the
/// server reads any: here all those HEADERS and RST_STREAMs arrive in one write, and the
/// connection still answers a PING afterwards instead of being closed with GOAWAY.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_every_stream_at_once_keeps_the_connection() {
    trace_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = fast_config(dir.path());
    let streams = config.limits.max_concurrent_streams;
    let server = TestServer::start(config).await;
    let healthy = Healthy::start(&server).await;

    let count = usize::try_from(streams).expect("usize");
    let blocks = hpack_requests_indexed(server.addr, LIST_AGENTS, &server.admin_token, count);
    let mut frames = Vec::new();
    for (i, block) in (0..streams).zip(&blocks) {
        h2_frame(
            &mut frames,
            FRAME_HEADERS,
            FLAG_END_HEADERS,
            2 * i + 1,
            block,
        );
    }
    for i in 0..streams {
        let reset = u32::from(Reason::CANCEL).to_be_bytes();
        h2_frame(&mut frames, FRAME_RST_STREAM, 0, 2 * i + 1, &reset);
    }
    const OPAQUE: [u8; 8] = *b"stillok!";
    h2_frame(&mut frames, FRAME_PING, 0, 0, &OPAQUE);
    let mut tcp = raw_h2(server.addr, &frames).await;
    let answer = tokio::time::timeout(ANSWER, async {
        loop {
            let (kind, flags, _, payload) = read_h2_frame(&mut tcp).await;
            match kind {
                FRAME_GOAWAY => return Err(error_code(&payload[4..])),
                FRAME_PING if flags & FLAG_ACK != 0 => return Ok(payload),
                _ => {}
            }
        }
    })
    .await
    .expect("an answer in time");
    assert_eq!(
        answer.expect("no GOAWAY for cancelled streams within the stream limit"),
        OPAQUE
    );
    drop(tcp);

    healthy.assert_unaffected(&server).await;
    server.stop().await;
}

// === 2. Header flood ===

/// A header block over `max_header_list_bytes` is refused: a moderately oversized one with
/// HTTP 431 and RST_STREAM on that stream only (the connection keeps serving); a flood of
/// headers spread over CONTINUATION frames with GOAWAY(COMPRESSION_ERROR) once the buffered
/// block passes the limit; an HPACK bomb (one indexed header referenced again and again,
/// decoding to over four times the limit) with GOAWAY(ENHANCE_YOUR_CALM,
/// "header_list_way_too_large").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_flood_is_refused() {
    trace_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = fast_config(dir.path());
    config.limits.max_header_list_bytes = 8 * 1024;
    let limit = usize::try_from(config.limits.max_header_list_bytes).expect("usize");
    let server = TestServer::start(config).await;
    let healthy = Healthy::start(&server).await;
    let token = server.admin_token.clone();

    // One header of 1.5 times the limit: 431 on that stream; the connection stays usable.
    let raw = Raw::connect(server.addr).await;
    let big = "a".repeat(limit + limit / 2);
    let reply = raw
        .unary(
            raw.request(LIST_AGENTS, &token, &[("x-flood", &big)]),
            list_agents(),
        )
        .await;
    match reply {
        Ok(reply) => {
            assert_eq!(
                reply.http,
                http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "{reply:?}"
            );
            assert_eq!(reply.grpc, None, "the request never reached gRPC");
        }
        Err(e) => panic!("expected HTTP 431 for an oversized header block, got {e:?}"),
    }
    let reply = raw
        .unary(raw.request(LIST_AGENTS, &token, &[]), list_agents())
        .await
        .expect("the same connection still serves");
    assert_eq!(reply.grpc, Some(Code::Ok), "{reply:?}");
    drop(raw);

    // A flood of distinct headers, over four times the limit: the connection is closed.
    let mut raw = Raw::connect(server.addr).await;
    let values: Vec<(String, String)> = (0..100)
        .map(|i| (format!("x-flood-{i}"), format!("{i:0>400}")))
        .collect();
    let headers: Vec<(&str, &str)> = values
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let flood = raw.unary(raw.request(LIST_AGENTS, &token, &headers), list_agents());
    let err = flood.await.expect_err("the flooded stream fails");
    // h2 marks the block over size, then refuses to buffer CONTINUATION bytes past the limit.
    assert!(err.is_go_away() && err.is_remote(), "{err:?}");
    assert_eq!(err.reason(), Some(Reason::COMPRESSION_ERROR), "{err:?}");
    let err = raw.closed().await.expect_err("the connection is closed");
    assert_eq!(err.reason(), Some(Reason::COMPRESSION_ERROR), "{err:?}");

    // An HPACK bomb: one 1,000-byte header added to the dynamic table, then referenced by a
    // one-byte index 99 times, so a 1.2 KB block decodes to 100 KB (over four times the limit).
    // The h2 client never encodes that, so the frames are written by hand.
    let (reason, debug) = hpack_bomb(server.addr, &token, 1000, 100).await;
    assert_eq!(
        (reason, debug.as_slice()),
        (
            Reason::ENHANCE_YOUR_CALM,
            b"header_list_way_too_large".as_slice()
        )
    );

    healthy.assert_unaffected(&server).await;
    assert_list_agents_ok(&server, &token).await;
    server.stop().await;
}

// === 7. Max concurrent streams ===

/// The server advertises `max_concurrent_streams` in its SETTINGS; a client that honours it
/// queues the extra stream until one ends; a client that opens more anyway has the extra
/// streams refused with RST_STREAM(REFUSED_STREAM).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_concurrent_streams_is_advertised_and_enforced() {
    trace_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = fast_config(dir.path());
    config.limits.max_concurrent_streams = 8;
    let server = TestServer::start(config).await;
    let healthy = Healthy::start(&server).await;
    let token = server.admin_token.clone();

    // A well-behaved client: learns the limit, and its ninth stream waits.
    let raw = Raw::connect(server.addr).await;
    let reply = raw
        .unary(raw.request(LIST_AGENTS, &token, &[]), list_agents())
        .await
        .expect("a first call, so the SETTINGS have been read");
    assert_eq!(reply.grpc, Some(Code::Ok));
    assert_eq!(raw.send.current_max_send_streams(), 8);
    let mut open = Vec::new();
    for _ in 0..8 {
        // Headers only: the server holds each stream open waiting for its message.
        open.push(
            raw.open(raw.request(LIST_AGENTS, &token, &[]), false)
                .await
                .expect("open one of eight streams"),
        );
    }
    let (ninth, mut ninth_body) = raw
        .open(raw.request(LIST_AGENTS, &token, &[]), false)
        .await
        .expect("queue a ninth stream");
    ninth_body
        .send_data(list_agents(), true)
        .expect("the ninth stream's message");
    let mut ninth = tokio::spawn(Reply::read(ninth));
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut ninth)
            .await
            .is_err(),
        "the ninth stream was answered while eight were open"
    );
    let (first, mut first_body) = open.remove(0);
    first_body
        .send_data(list_agents(), true)
        .expect("the first stream's message");
    let reply = Reply::read(first).await.expect("the first stream's answer");
    assert_eq!(reply.grpc, Some(Code::Ok));
    let reply = ninth
        .await
        .expect("ninth task")
        .expect("the ninth stream's answer");
    assert_eq!(reply.grpc, Some(Code::Ok));
    for (response, mut body) in open {
        body.send_data(list_agents(), true).expect("message");
        assert_eq!(
            Reply::read(response).await.expect("answer").grpc,
            Some(Code::Ok)
        );
    }
    drop(raw);

    // A client that ignores the limit: twelve HEADERS (streams 1, 3, .., 23, each waiting for
    // its message) written at once, without reading the server's SETTINGS first. The server
    // accepts eight and refuses the last four with RST_STREAM(REFUSED_STREAM).
    let mut frames = Vec::new();
    for stream in (1..=23).step_by(2) {
        let block = hpack_request(server.addr, LIST_AGENTS, &token);
        h2_frame(&mut frames, FRAME_HEADERS, FLAG_END_HEADERS, stream, &block);
    }
    let mut tcp = raw_h2(server.addr, &frames).await;
    let mut refused = Vec::new();
    let read = async {
        while refused.len() < 4 {
            let (kind, _, stream, payload) = read_h2_frame(&mut tcp).await;
            match kind {
                FRAME_RST_STREAM => {
                    assert_eq!(error_code(&payload), Reason::REFUSED_STREAM);
                    refused.push(stream);
                }
                FRAME_GOAWAY => panic!("GOAWAY {:?}", error_code(&payload[4..])),
                _ => {}
            }
        }
    };
    tokio::time::timeout(ANSWER, read)
        .await
        .expect("four refusals in time");
    assert_eq!(refused, [17, 19, 21, 23]);
    drop(tcp);

    healthy.assert_unaffected(&server).await;
    assert_list_agents_ok(&server, &token).await;
    server.stop().await;
}
