//! Abuse over raw HTTP/2: frames and messages that tonic's own client never sends, driven with
//! the `h2` crate and gRPC framed by hand (5-byte prefix: compressed flag, big-endian length).
//!
//! Each test starts a server, a healthy real agent on its own connection, performs one abuse on
//! another connection, asserts exactly how the server answers (gRPC status, HTTP/2 GOAWAY or
//! RST_STREAM reason), and then asserts that the healthy agent kept reporting throughout (its
//! acknowledged seq kept moving, with no long stall, on the same session) and that the server
//! still answers `ListAgents`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use h2::client::{ResponseFuture, SendRequest};
use h2::{Reason, RecvStream, SendStream};
use prost::Message;
use tether_proto as pb;
use tether_tests::{
    RawSession, TestAgent, TestServer, eventually, fast_config, hello, limit_violations, trace_init,
};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tonic::Code;

const LIST_AGENTS: &str = "/tether.v1.FleetService/ListAgents";
const CONNECT: &str = "/tether.v1.AgentService/Connect";

/// Longest the healthy agent may go without a new acknowledgement while another connection
/// abuses the server. Its metrics interval is 200 ms; stale-after is 1.2 s.
const MAX_STALL: Duration = Duration::from_secs(3);

/// How long a test waits for the server to answer one abusive request.
const ANSWER: Duration = Duration::from_secs(10);

// === gRPC over raw h2 ===

/// One raw HTTP/2 connection; its connection task runs in the background.
struct Raw {
    addr: SocketAddr,
    send: SendRequest<Bytes>,
    conn: JoinHandle<Result<(), h2::Error>>,
}

impl Raw {
    async fn connect(addr: SocketAddr) -> Self {
        let (send, conn) = h2::client::handshake(tcp(addr).await)
            .await
            .expect("h2 handshake");
        Self {
            addr,
            send,
            conn: tokio::spawn(conn),
        }
    }

    fn request(&self, path: &str, token: &str, extra: &[(&str, &str)]) -> http::Request<()> {
        grpc_request(self.addr, path, token, extra)
    }

    /// Opens a stream with `request` (waiting for a stream slot as the peer's SETTINGS allow).
    async fn open(
        &self,
        request: http::Request<()>,
        end_of_stream: bool,
    ) -> Result<(ResponseFuture, SendStream<Bytes>), h2::Error> {
        let mut send = self.send.clone().ready().await?;
        send.send_request(request, end_of_stream)
    }

    /// A unary call: `request`, then `body` as the whole request body.
    async fn unary(&self, request: http::Request<()>, body: Bytes) -> Result<Reply, h2::Error> {
        let (response, mut stream) = self.open(request, false).await?;
        // The server may answer from the headers alone (a refusal) and close the stream before
        // the body goes out (the connection task runs on another thread): then sending fails
        // and the answer is what counts.
        let _ = stream.send_data(body, true);
        Reply::read(response).await
    }

    /// Waits for the connection to end (the server closed it) and returns how.
    async fn closed(&mut self) -> Result<(), h2::Error> {
        tokio::time::timeout(ANSWER, &mut self.conn)
            .await
            .expect("the server closes the connection")
            .expect("the h2 connection task does not panic")
    }
}

/// A gRPC request for `path` with `authorization: Bearer <token>` and `extra` headers.
fn grpc_request(
    addr: SocketAddr,
    path: &str,
    token: &str,
    extra: &[(&str, &str)],
) -> http::Request<()> {
    let mut builder = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("authorization", format!("Bearer {token}"));
    for (name, value) in extra {
        builder = builder.header(*name, *value);
    }
    builder.body(()).expect("request")
}

async fn tcp(addr: SocketAddr) -> TcpStream {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.set_nodelay(true).expect("nodelay");
    tcp
}

/// One gRPC message as it goes on the wire: flag, length, payload.
fn grpc_frame(compressed: bool, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(5 + payload.len());
    out.put_u8(u8::from(compressed));
    out.put_u32(u32::try_from(payload.len()).expect("message fits a gRPC frame"));
    out.put_slice(payload);
    out.freeze()
}

fn grpc_message(message: &impl Message) -> Bytes {
    grpc_frame(false, &message.encode_to_vec())
}

fn grpc_message_text(headers: &http::HeaderMap) -> Option<String> {
    Some(headers.get("grpc-message")?.to_str().ok()?.to_owned())
}

fn grpc_status(headers: &http::HeaderMap) -> Option<Code> {
    let value = headers.get("grpc-status")?.to_str().ok()?;
    Some(Code::from(value.parse::<i32>().ok()?))
}

/// The response side of a gRPC call: messages as they arrive, then the status.
struct Inbound {
    headers: http::HeaderMap,
    body: RecvStream,
    buf: BytesMut,
}

impl Inbound {
    fn headers(&self) -> &http::HeaderMap {
        &self.headers
    }

    /// The next message, `None` at the end of the response body.
    async fn message(&mut self) -> Result<Option<Bytes>, h2::Error> {
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes(self.buf[1..5].try_into().expect("4 bytes"));
                let len = usize::try_from(len).expect("usize");
                if self.buf.len() >= 5 + len {
                    self.buf.advance(5);
                    return Ok(Some(self.buf.split_to(len).freeze()));
                }
            }
            match self.body.data().await {
                None => return Ok(None),
                Some(chunk) => {
                    let chunk = chunk?;
                    let _ = self.body.flow_control().release_capacity(chunk.len());
                    self.buf.extend_from_slice(&chunk);
                }
            }
        }
    }

    async fn decode<M: Message + Default>(&mut self) -> Result<Option<M>, h2::Error> {
        Ok(self
            .message()
            .await?
            .map(|bytes| M::decode(bytes).expect("the server sends valid messages")))
    }

    /// Drains the remaining messages and returns them with the trailers.
    async fn finish(mut self) -> Result<(Vec<Bytes>, http::HeaderMap), h2::Error> {
        let mut messages = Vec::new();
        while let Some(message) = self.message().await? {
            messages.push(message);
        }
        let trailers = self.body.trailers().await?;
        Ok((messages, trailers.unwrap_or_default()))
    }
}

/// A complete answer to a call.
#[derive(Debug)]
struct Reply {
    http: http::StatusCode,
    /// From the trailers, or from the headers of a trailers-only response.
    grpc: Option<Code>,
    /// grpc-message, only for failure reports (read through `Debug`).
    #[allow(dead_code)]
    detail: Option<String>,
    messages: Vec<Bytes>,
}

impl Reply {
    async fn read(response: ResponseFuture) -> Result<Self, h2::Error> {
        let (http, early, inbound) = respond(response).await?;
        if early.is_some() {
            return Ok(Self {
                http,
                grpc: early,
                detail: grpc_message_text(inbound.headers()),
                messages: Vec::new(),
            });
        }
        let (messages, trailers) = inbound.finish().await?;
        Ok(Self {
            http,
            grpc: grpc_status(&trailers),
            detail: grpc_message_text(&trailers),
            messages,
        })
    }
}

/// Waits for the response headers; returns the HTTP status, a trailers-only grpc-status, and
/// the body.
async fn respond(
    response: ResponseFuture,
) -> Result<(http::StatusCode, Option<Code>, Inbound), h2::Error> {
    let response = tokio::time::timeout(ANSWER, response)
        .await
        .expect("the server answers")?;
    let early = grpc_status(response.headers());
    let (parts, body) = response.into_parts();
    Ok((
        parts.status,
        early,
        Inbound {
            headers: parts.headers,
            body,
            buf: BytesMut::new(),
        },
    ))
}

fn list_agents() -> Bytes {
    grpc_message(&pb::ListAgentsRequest::default())
}

// === HTTP/2 frames by hand (what the h2 client will not produce) ===

/// Appends an HPACK integer with an `n`-bit prefix to `out`; `first` holds the pattern bits
/// above the prefix (RFC 7541, 5.1).
fn hpack_int(out: &mut Vec<u8>, first: u8, n: u32, value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(first | u8::try_from(value).expect("fits the prefix"));
        return;
    }
    out.push(first | u8::try_from(max).expect("prefix"));
    let mut rest = value - max;
    while rest >= 128 {
        out.push(0x80 | u8::try_from(rest % 128).expect("7 bits"));
        rest /= 128;
    }
    out.push(u8::try_from(rest).expect("7 bits"));
}

/// Appends an HPACK string literal, not Huffman-coded.
fn hpack_str(out: &mut Vec<u8>, text: &[u8]) {
    hpack_int(out, 0x00, 7, text.len());
    out.extend_from_slice(text);
}

/// Appends one HTTP/2 frame.
fn h2_frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = u32::try_from(payload.len()).expect("frame length");
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

const FRAME_HEADERS: u8 = 0x1;
const FRAME_RST_STREAM: u8 = 0x3;
const FRAME_SETTINGS: u8 = 0x4;
const FRAME_GOAWAY: u8 = 0x7;
const FLAG_END_HEADERS: u8 = 0x4;

/// The HPACK block of a gRPC request for `path`, every field a literal without indexing (so
/// blocks do not depend on each other).
fn hpack_request(addr: SocketAddr, path: &str, token: &str) -> Vec<u8> {
    let mut block = vec![0x83, 0x86]; // :method POST, :scheme http (static 3 and 6)
    hpack_int(&mut block, 0x00, 4, 4); // :path
    hpack_str(&mut block, path.as_bytes());
    hpack_int(&mut block, 0x00, 4, 1); // :authority
    hpack_str(&mut block, addr.to_string().as_bytes());
    hpack_int(&mut block, 0x00, 4, 31); // content-type
    hpack_str(&mut block, b"application/grpc");
    block.push(0x00); // te, a new name
    hpack_str(&mut block, b"te");
    hpack_str(&mut block, b"trailers");
    hpack_int(&mut block, 0x00, 4, 23); // authorization
    hpack_str(&mut block, format!("Bearer {token}").as_bytes());
    block
}

/// Opens a TCP connection and writes the client preface, an empty SETTINGS and `frames`, all
/// before reading anything from the server.
async fn raw_h2(addr: SocketAddr, frames: &[u8]) -> TcpStream {
    use tokio::io::AsyncWriteExt as _;
    let mut wire = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    h2_frame(&mut wire, FRAME_SETTINGS, 0, 0, &[]);
    wire.extend_from_slice(frames);
    let mut tcp = tcp(addr).await;
    tcp.write_all(&wire).await.expect("write frames");
    tcp
}

/// Reads one frame: (type, flags, stream id, payload).
async fn read_h2_frame(tcp: &mut TcpStream) -> (u8, u8, u32, Vec<u8>) {
    use tokio::io::AsyncReadExt as _;
    let mut head = [0u8; 9];
    tcp.read_exact(&mut head).await.expect("a frame before EOF");
    let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
    let stream = u32::from_be_bytes(head[5..9].try_into().expect("4 bytes")) & 0x7fff_ffff;
    let mut payload = vec![0u8; len];
    tcp.read_exact(&mut payload).await.expect("frame payload");
    (head[3], head[4], stream, payload)
}

fn error_code(payload: &[u8]) -> Reason {
    Reason::from(u32::from_be_bytes(
        payload[..4].try_into().expect("4-byte error code"),
    ))
}

/// Sends a `ListAgents` HEADERS frame whose block adds `x-bomb: <value_len bytes>` to the HPACK
/// dynamic table once and then references it, `copies` times in all. Returns the GOAWAY the
/// server answers with (reason, debug data).
async fn hpack_bomb(
    addr: SocketAddr,
    token: &str,
    value_len: usize,
    copies: usize,
) -> (Reason, Vec<u8>) {
    let mut block = hpack_request(addr, LIST_AGENTS, token);
    block.push(0x40); // x-bomb, literal with incremental indexing: dynamic entry 62
    hpack_str(&mut block, b"x-bomb");
    hpack_str(&mut block, "b".repeat(value_len).as_bytes());
    for _ in 1..copies {
        hpack_int(&mut block, 0x80, 7, 62);
    }
    assert!(block.len() < 16_384, "one frame: {} bytes", block.len());
    let mut frames = Vec::new();
    h2_frame(&mut frames, FRAME_HEADERS, FLAG_END_HEADERS, 1, &block);
    let mut tcp = raw_h2(addr, &frames).await;
    let read = async {
        loop {
            let (kind, _, _, payload) = read_h2_frame(&mut tcp).await;
            if kind == FRAME_GOAWAY {
                return (error_code(&payload[4..]), payload[8..].to_vec());
            }
        }
    };
    tokio::time::timeout(ANSWER, read)
        .await
        .expect("a GOAWAY in time")
}

// === the healthy agent ===

/// A real agent on its own connection, and a task recording the longest time its acknowledged
/// seq stood still.
struct Healthy {
    agent: TestAgent,
    id: String,
    /// Acknowledged seq when the abuse started.
    acked: u64,
    sessions: u64,
    watching: Arc<AtomicBool>,
    longest_stall: JoinHandle<Duration>,
}

impl Healthy {
    /// Starts the agent and waits for its first acknowledgement.
    async fn start(server: &TestServer) -> Self {
        let agent = server.spawn_agent("healthy", &[("role", "canary")]).await;
        let id = agent.id().await;
        let acked = eventually("the healthy agent's first ack", || async {
            let seq = agent.handle.stats.samples_acked_seq();
            (seq >= 1).then_some(seq)
        })
        .await;
        let sessions = agent.handle.stats.sessions_started();
        let watching = Arc::new(AtomicBool::new(true));
        let longest_stall = tokio::spawn({
            let stats = agent.handle.stats.clone();
            let watching = watching.clone();
            async move {
                let mut last = stats.samples_acked_seq();
                let mut since = Instant::now();
                let mut longest = Duration::ZERO;
                while watching.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    let seq = stats.samples_acked_seq();
                    if seq > last {
                        last = seq;
                        since = Instant::now();
                    }
                    longest = longest.max(since.elapsed());
                }
                longest
            }
        });
        Self {
            agent,
            id,
            acked,
            sessions,
            watching,
            longest_stall,
        }
    }

    /// Asserts that the agent kept reporting throughout the abuse, on the same session, and
    /// that the server still answers `ListAgents` with it online; then stops the agent.
    async fn assert_unaffected(self, server: &TestServer) {
        let acked = self.acked;
        let stats = self.agent.handle.stats.clone();
        let now = eventually(
            "the healthy agent's acked seq to keep increasing",
            || async {
                let seq = stats.samples_acked_seq();
                (seq > acked).then_some(seq)
            },
        )
        .await;
        self.watching.store(false, Ordering::Relaxed);
        let stall = self.longest_stall.await.expect("stall watcher");
        assert!(
            stall < MAX_STALL,
            "the healthy agent went {stall:?} without an ack during the abuse (acked {acked} -> {now})"
        );
        assert_eq!(
            stats.sessions_started(),
            self.sessions,
            "the healthy agent's session was not disturbed"
        );
        let agents = server
            .fleet()
            .await
            .list_agents(pb::ListAgentsRequest::default())
            .await
            .expect("the server still answers ListAgents")
            .into_inner()
            .agents;
        let healthy = agents
            .iter()
            .find(|a| a.agent_id == self.id)
            .expect("the healthy agent is listed");
        assert_eq!(healthy.status, pb::AgentStatus::Online as i32);
        self.agent.stop().await;
    }
}

/// A fresh connection's normal `ListAgents` succeeds.
async fn assert_list_agents_ok(server: &TestServer, token: &str) {
    let raw = Raw::connect(server.addr).await;
    let reply = raw
        .unary(raw.request(LIST_AGENTS, token, &[]), list_agents())
        .await
        .expect("ListAgents over a fresh connection");
    assert_eq!(reply.grpc, Some(Code::Ok), "{reply:?}");
    assert_eq!(reply.messages.len(), 1);
}

// === 1. Rapid reset ===

/// CVE-2023-44487: open streams and reset each at once, so the server does the work of
/// accepting them while the client pays nothing. After `max_pending_accept_resets` (32 by
/// default) resets of streams the server had not accepted yet, the server ends the connection
/// with GOAWAY(ENHANCE_YOUR_CALM), long before the 1,000 streams were sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_is_answered_with_goaway_enhance_your_calm() {
    trace_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = fast_config(dir.path());
    let limit = config.limits.max_pending_accept_resets;
    let server = TestServer::start(config).await;
    let healthy = Healthy::start(&server).await;

    let mut raw = Raw::connect(server.addr).await;
    const STREAMS: usize = 1000;
    let mut reset = 0;
    for _ in 0..STREAMS {
        let Ok(mut send) = raw.send.clone().ready().await else {
            break;
        };
        let request = raw.request(LIST_AGENTS, &server.admin_token, &[]);
        let Ok((_response, mut stream)) = send.send_request(request, false) else {
            break;
        };
        stream.send_reset(Reason::CANCEL);
        reset += 1;
        // Let the connection task write what is queued, as a real attacker's loop would.
        tokio::task::yield_now().await;
    }
    // How many of the resets the client queued before it read the GOAWAY depends on timing;
    // the server's verdict does not.
    assert!(reset > limit, "only {reset} streams were opened and reset");
    let err = raw
        .closed()
        .await
        .expect_err("the server ends the connection");
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
    assert!(
        raw.send.clone().ready().await.is_err(),
        "the connection takes no new stream"
    );

    // The same attack at wire speed: 1,000 HEADERS + RST_STREAM(CANCEL) pairs in one write.
    // The GOAWAY names the pending-accept limit ("too_many_resets") and its last stream id
    // shows the server stopped processing streams long before the end of the batch.
    let mut frames = Vec::new();
    let block = hpack_request(server.addr, LIST_AGENTS, &server.admin_token);
    for i in 0..STREAMS {
        let stream = 2 * u32::try_from(i).expect("u32") + 1;
        h2_frame(&mut frames, FRAME_HEADERS, FLAG_END_HEADERS, stream, &block);
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
    // Observed: exactly the stream whose reset was one too many (65 for the default 32).
    assert!(
        (limit_stream..=4 * limit_stream).contains(&last_stream),
        "GOAWAY last stream id {last_stream} (limit {limit} resets)"
    );
    drop(tcp);

    healthy.assert_unaffected(&server).await;
    assert_list_agents_ok(&server, &server.admin_token).await;
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

// === 3. Oversized message ===

/// A message over `max_message_bytes`, announced and carried in full. On the unary
/// `ListAgents` the answer is RESOURCE_EXHAUSTED (tonic's OUT_OF_RANGE, rewritten by the gate)
/// and the connection keeps serving; on `Connect`, after a valid Hello and acknowledged samples,
/// the session ends with RESOURCE_EXHAUSTED and what was stored before stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_message_is_refused() {
    trace_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = fast_config(dir.path());
    config.limits.max_message_bytes = 64 * 1024;
    let limit = config.limits.max_message_bytes;
    let server = TestServer::start(config).await;
    let healthy = Healthy::start(&server).await;
    let token = server.admin_token.clone();

    // Unary: a ListAgentsRequest of twice the limit, announced and carried in full.
    let raw = Raw::connect(server.addr).await;
    let request = pb::ListAgentsRequest {
        query: "q".repeat(2 * limit),
        ..Default::default()
    };
    let reply = raw
        .unary(
            raw.request(LIST_AGENTS, &token, &[]),
            grpc_message(&request),
        )
        .await
        .expect("the server answers the oversized unary call");
    // tonic's codec answers OUT_OF_RANGE; the gate's layer rewrites it to the contract's
    // RESOURCE_EXHAUSTED.
    assert_eq!(reply.grpc, Some(Code::ResourceExhausted), "{reply:?}");
    assert!(reply.messages.is_empty());
    // The connection is still usable.
    let reply = raw
        .unary(raw.request(LIST_AGENTS, &token, &[]), list_agents())
        .await
        .expect("the same connection still serves");
    assert_eq!(reply.grpc, Some(Code::Ok), "{reply:?}");

    // Connect: Hello, three samples acknowledged, then an oversized message.
    let (agent_id, credential) = server.enroll("oversized", &[]).await;
    let (response, mut stream) = raw
        .open(raw.request(CONNECT, &credential, &[]), false)
        .await
        .expect("open Connect");
    let first = pb::ConnectRequest {
        message: Some(pb::connect_request::Message::Hello(hello(
            &agent_id,
            "oversized",
            &[],
        ))),
    };
    stream
        .send_data(grpc_message(&first), false)
        .expect("send Hello");
    let (http, early, mut inbound) = respond(response).await.expect("Connect response");
    assert_eq!((http, early), (http::StatusCode::OK, None));
    let welcome = inbound
        .decode::<pb::ConnectResponse>()
        .await
        .expect("read Welcome")
        .expect("a Welcome");
    assert!(
        matches!(
            welcome.message,
            Some(pb::connect_response::Message::Welcome(_))
        ),
        "{welcome:?}"
    );
    let report = pb::ConnectRequest {
        message: Some(pb::connect_request::Message::Metrics(pb::MetricsReport {
            samples: (1..=3).map(tether_tests::sample).collect(),
        })),
    };
    stream
        .send_data(grpc_message(&report), false)
        .expect("send samples");
    loop {
        let message = tokio::time::timeout(ANSWER, inbound.decode::<pb::ConnectResponse>())
            .await
            .expect("an ack in time")
            .expect("read")
            .expect("the stream goes on");
        if let Some(pb::connect_response::Message::MetricsAck(ack)) = message.message
            && ack.durable_seq >= 3
        {
            break;
        }
    }
    let huge = pb::ConnectRequest {
        message: Some(pb::connect_request::Message::Hello(hello(
            &agent_id,
            &"h".repeat(2 * limit),
            &[],
        ))),
    };
    stream
        .send_data(grpc_message(&huge), false)
        .expect("send the oversized message");
    let (_, trailers) = tokio::time::timeout(ANSWER, inbound.finish())
        .await
        .expect("the session ends")
        .expect("the session ends with trailers");
    assert_eq!(
        grpc_status(&trailers),
        Some(Code::ResourceExhausted),
        "{trailers:?}"
    );

    // Stored data intact.
    let agent = server
        .get_agent(&agent_id)
        .await
        .expect("get agent")
        .agent
        .expect("agent");
    assert_eq!(agent.last_durable_seq, 3);

    healthy.assert_unaffected(&server).await;
    assert_list_agents_ok(&server, &token).await;
    server.stop().await;
}

// === 4. Gzip bomb ===

/// Reads a `kB` field of /proc/self/status (the server runs in this process).
fn proc_status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Samples VmRSS every millisecond until stopped; returns the highest value seen (KiB).
struct RssSampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<u64>,
}

impl RssSampler {
    fn start() -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let stop = stop.clone();
            move || {
                let mut peak = 0;
                while !stop.load(Ordering::Relaxed) {
                    peak = peak.max(proc_status_kib("VmRSS:").unwrap_or(0));
                    std::thread::sleep(Duration::from_millis(1));
                }
                peak
            }
        });
        Self { stop, thread }
    }

    fn peak_kib(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("RSS sampler")
    }
}

/// A message whose compressed flag is set and which inflates to 64 MiB of zeros (about 64 KiB
/// on the wire, well under the 1 MiB message limit). The server does not accept gzip at all:
/// it answers UNIMPLEMENTED from the `grpc-encoding` header without reading the message, so it
/// never inflates anything; the process's resident memory does not grow by anything near the
/// inflated size. A compressed flag without `grpc-encoding` is a protocol error (INTERNAL).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_bomb_is_refused_without_inflating() {
    use std::io::Write as _;
    trace_init();
    const INFLATED: usize = 64 << 20;
    let bomb = tokio::task::spawn_blocking(|| {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..INFLATED / zeros.len() {
            gz.write_all(&zeros).expect("compress");
        }
        gz.finish().expect("compress")
    })
    .await
    .expect("compress the bomb");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = fast_config(dir.path());
    assert!(bomb.len() < config.limits.max_message_bytes && INFLATED > 32 * bomb.len());
    let server = TestServer::start(config).await;
    let healthy = Healthy::start(&server).await;
    let token = server.admin_token.clone();
    let raw = Raw::connect(server.addr).await;

    let framed = grpc_frame(true, &bomb);
    let before = proc_status_kib("VmRSS:").expect("VmRSS in /proc/self/status");
    let sampler = RssSampler::start();
    let reply = raw
        .unary(
            raw.request(LIST_AGENTS, &token, &[("grpc-encoding", "gzip")]),
            framed.clone(),
        )
        .await
        .expect("the server answers the gzip bomb");
    // A second bomb on the same connection: the refusal is not a one-off.
    let again = raw
        .unary(
            raw.request(LIST_AGENTS, &token, &[("grpc-encoding", "gzip")]),
            framed.clone(),
        )
        .await
        .expect("the server answers the second gzip bomb");
    let peak = sampler.peak_kib();
    assert_eq!(reply.grpc, Some(Code::Unimplemented), "{reply:?}");
    assert_eq!(again.grpc, Some(Code::Unimplemented), "{again:?}");
    assert!(reply.messages.is_empty());
    let growth_kib = peak.saturating_sub(before);
    let inflated_kib = u64::try_from(INFLATED / 1024).expect("u64");
    assert!(
        growth_kib < inflated_kib / 4,
        "resident memory grew by {growth_kib} KiB answering a bomb that inflates to \
         {inflated_kib} KiB"
    );

    // The compressed flag without a grpc-encoding: refused by the codec, nothing inflated.
    let reply = raw
        .unary(raw.request(LIST_AGENTS, &token, &[]), framed)
        .await
        .expect("the server answers a compressed message without an encoding");
    assert_eq!(reply.grpc, Some(Code::Internal), "{reply:?}");

    healthy.assert_unaffected(&server).await;
    assert_list_agents_ok(&server, &token).await;
    server.stop().await;
}

// === 5. A stream faster than its rate ===

/// A session sending pings far faster than `stream_messages_per_second` is ended with
/// RESOURCE_EXHAUSTED once its burst is spent; the violation is counted and what the agent had
/// stored before is intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_faster_than_its_rate_is_ended() {
    trace_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = fast_config(dir.path());
    config.limits.stream_messages_per_second = 20;
    config.limits.stream_message_burst = 40;
    let server = TestServer::start(config).await;
    let metrics = server.metrics.clone();
    let healthy = Healthy::start(&server).await;

    let (agent_id, credential) = server.enroll("flooder", &[]).await;
    let (mut session, _) = RawSession::hello(&server, &agent_id, &credential, "flooder")
        .await
        .expect("hello");
    session.send_samples(1..=3).await;
    session.wait_ack(3).await.expect("ack of the samples");
    let before = limit_violations(&metrics, "stream_message_rate");

    // 400 pings at once: ten times the burst.
    let tx = session.tx.clone();
    let started = Instant::now();
    let flood = tokio::spawn(async move {
        let mut sent = 0u32;
        for nonce in 0..400 {
            let ping = pb::ConnectRequest {
                message: Some(pb::connect_request::Message::Ping(pb::Ping {
                    nonce,
                    sent_at: None,
                })),
            };
            if tx.send(ping).await.is_err() {
                break;
            }
            sent += 1;
        }
        sent
    });
    let mut pongs = 0;
    let status = loop {
        match session.recv().await {
            Ok(Some(pb::connect_response::Message::Pong(_))) => pongs += 1,
            Ok(Some(_)) => {}
            Ok(None) => panic!("the stream ended cleanly; expected RESOURCE_EXHAUSTED"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    flood.abort();
    // The burst (40, of which the samples report took one), plus what refilled meanwhile.
    let refilled = (started.elapsed().as_secs_f64() * 20.0).ceil() as u32;
    assert!(
        (39..=40 + refilled).contains(&pongs),
        "{pongs} pongs before the limit"
    );
    assert_eq!(
        limit_violations(&metrics, "stream_message_rate"),
        before + 1
    );

    // Stored data intact; the agent may connect again and is told what is durable.
    let agent = server
        .get_agent(&agent_id)
        .await
        .expect("get agent")
        .agent
        .expect("agent");
    assert_eq!(agent.last_durable_seq, 3);
    let points = server
        .fleet()
        .await
        .get_metrics(pb::GetMetricsRequest {
            agent_id: agent_id.clone(),
            ..Default::default()
        })
        .await
        .expect("metrics")
        .into_inner()
        .points;
    assert_eq!(points.len(), 3);
    let (_session, welcome) = RawSession::hello(&server, &agent_id, &credential, "flooder")
        .await
        .expect("hello again");
    assert_eq!(welcome.last_durable_seq, 3);

    healthy.assert_unaffected(&server).await;
    assert_list_agents_ok(&server, &server.admin_token).await;
    server.stop().await;
}

// === 6. Per-token request rate ===

/// Unary calls with one token beyond `token_requests_per_second` are answered
/// RESOURCE_EXHAUSTED (and counted); another token of the same org is unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_request_rate_is_enforced_per_token() {
    trace_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = fast_config(dir.path());
    config.limits.token_requests_per_second = 10;
    config.limits.token_request_burst = 20;
    let server = TestServer::start(config).await;
    let metrics = server.metrics.clone();
    let viewer = server
        .admin()
        .await
        .create_token(pb::CreateTokenRequest {
            name: "viewer".to_owned(),
            role: pb::Role::Viewer as i32,
            ttl: None,
        })
        .await
        .expect("create a viewer token")
        .into_inner()
        .secret;
    let healthy = Healthy::start(&server).await;
    let before = limit_violations(&metrics, "token_request_rate");

    // 60 concurrent calls on one connection with the admin token.
    const CALLS: usize = 60;
    let raw = Arc::new(Raw::connect(server.addr).await);
    let started = Instant::now();
    let calls: Vec<_> = (0..CALLS)
        .map(|_| {
            let raw = raw.clone();
            let request = raw.request(LIST_AGENTS, &server.admin_token, &[]);
            tokio::spawn(async move { raw.unary(request, list_agents()).await })
        })
        .collect();
    let mut ok = 0u64;
    let mut exhausted = 0u64;
    for call in calls {
        let reply = call.await.expect("call task").expect("the server answers");
        match reply.grpc {
            Some(Code::Ok) => ok += 1,
            Some(Code::ResourceExhausted) => exhausted += 1,
            other => panic!("unexpected answer {other:?}: {reply:?}"),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    // At most the burst (of which creating the viewer token and the agent's enrollment token
    // spent two: 18 admitted when the calls take a few milliseconds) plus what refilled.
    let allowed = 20 + (elapsed * 10.0).ceil() as u64;
    assert!(
        (1..=allowed).contains(&ok),
        "{ok} calls admitted, at most {allowed} allowed"
    );
    assert_eq!(ok + exhausted, CALLS as u64);
    assert!(exhausted >= 30, "only {exhausted} calls refused");
    assert_eq!(
        limit_violations(&metrics, "token_request_rate"),
        before + exhausted,
        "every refusal is counted"
    );

    // Another token is unaffected, right now.
    let reply = raw
        .unary(raw.request(LIST_AGENTS, &viewer, &[]), list_agents())
        .await
        .expect("the viewer's call");
    assert_eq!(reply.grpc, Some(Code::Ok), "{reply:?}");

    healthy.assert_unaffected(&server).await;
    // The admin token recovers once its bucket refills.
    eventually("the admin token to be admitted again", || async {
        let reply = raw
            .unary(
                raw.request(LIST_AGENTS, &server.admin_token, &[]),
                list_agents(),
            )
            .await
            .ok()?;
        (reply.grpc == Some(Code::Ok)).then_some(())
    })
    .await;
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
