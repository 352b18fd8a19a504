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
    Healthy, RawSession, TestServer, eventually, fast_config, hello, limit_violations, trace_init,
};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tonic::Code;

mod http2;
mod messages;
mod rates;
mod refusals;

const LIST_AGENTS: &str = "/tether.v1.FleetService/ListAgents";
const CONNECT: &str = "/tether.v1.AgentService/Connect";

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
        Self::connect_with(addr, &h2::client::Builder::new()).await
    }

    /// Connects with `builder`'s settings (e.g. client-side limits an attacker lifts).
    async fn connect_with(addr: SocketAddr, builder: &h2::client::Builder) -> Self {
        let (send, conn) = builder
            .handshake(tcp(addr).await)
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
const FRAME_PING: u8 = 0x6;
const FRAME_GOAWAY: u8 = 0x7;
const FLAG_ACK: u8 = 0x1;
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

/// The HPACK blocks of `n` gRPC requests for `path` on one connection, as a real client (or
/// attacker) encodes them: the first adds its fields to the dynamic table, the others only
/// refer to them (seven bytes each), so that many requests fit one TCP window and reach the
/// server in one read.
fn hpack_requests_indexed(addr: SocketAddr, path: &str, token: &str, n: usize) -> Vec<Vec<u8>> {
    let mut first = vec![0x83, 0x86]; // :method POST, :scheme http (static 3 and 6)
    // Literals with incremental indexing (pattern 01, 6-bit name index): each new entry takes
    // dynamic index 62 and pushes the earlier ones up.
    for (name_index, value) in [
        (4, path.to_owned()),                // :path
        (1, addr.to_string()),               // :authority
        (31, "application/grpc".to_owned()), // content-type
        (23, format!("Bearer {token}")),     // authorization
    ] {
        hpack_int(&mut first, 0x40, 6, name_index);
        hpack_str(&mut first, value.as_bytes());
    }
    first.push(0x40); // te, a new name
    hpack_str(&mut first, b"te");
    hpack_str(&mut first, b"trailers");
    // The table now holds te (62), authorization (63), content-type (64), :authority (65),
    // :path (66).
    let mut again = vec![0x83, 0x86];
    for index in [66, 65, 64, 63, 62] {
        hpack_int(&mut again, 0x80, 7, index);
    }
    let mut blocks = vec![first];
    blocks.resize(n.max(1), again);
    blocks.truncate(n);
    blocks
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
