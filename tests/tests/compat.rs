//! Compatibility across versions, over real sockets: a newer agent speaks to this server with
//! fields and message kinds this server does not know, as raw protobuf bytes on the agent
//! stream, and the server ignores them (docs/compatibility.md states the rule). The agent's
//! side of the rule (an unknown `ConnectResponse` kind is skipped) is pinned in
//! `agent/src/convert.rs`'s tests.

use std::time::Duration;

use bytes::{Buf as _, BufMut as _};
use prost::Message as _;
use tether_proto as pb;
use tether_tests::{TestServer, eventually, fast_config, hello, sample, trace_init};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

/// A field number no Tether message uses, for unknown fields.
const UNKNOWN_FIELD: u32 = 1000;
/// A `ConnectRequest.message` variant number this server does not know.
const UNKNOWN_KIND: u32 = 999;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_agents_unknown_fields_and_message_kinds_are_ignored() {
    trace_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(fast_config(dir.path())).await;
    let (id, credential) = server.enroll("newer-1", &[]).await;

    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(8);
    // Hello, with unknown fields inside it and beside it.
    let mut hello_bytes = hello(&id, "newer-1", &[("gen", "next")]).encode_to_vec();
    hello_bytes.extend(unknown_fields());
    let mut first = field(1, &hello_bytes);
    first.extend(unknown_fields());
    tx.send(first).await.expect("queue");

    let mut stream = connect_raw(&server, &credential, rx).await;
    let welcome = stream.message().await.expect("answer").expect("a message");
    assert!(
        matches!(
            welcome.message,
            Some(pb::connect_response::Message::Welcome(_))
        ),
        "{welcome:?}"
    );
    let agent = server
        .get_agent(&id)
        .await
        .expect("agent")
        .agent
        .expect("agent");
    assert_eq!(agent.labels.get("gen").map(String::as_str), Some("next"));

    // A message of a kind this server does not know, then samples whose every level carries
    // unknown fields: the session goes on and the samples are acknowledged.
    tx.send(field(UNKNOWN_KIND, &pb::Ping::default().encode_to_vec()))
        .await
        .expect("queue");
    let mut sample_bytes = sample(1).encode_to_vec();
    sample_bytes.extend(unknown_fields());
    let mut report = field(1, &sample_bytes);
    report.extend(unknown_fields());
    tx.send(field(2, &report)).await.expect("queue");
    let acked = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream.message().await.expect("no error").map(|m| m.message) {
                Some(Some(pb::connect_response::Message::MetricsAck(ack))) => {
                    break ack.durable_seq;
                }
                Some(_) => {}
                None => panic!("the stream ended"),
            }
        }
    })
    .await
    .expect("an ack in time");
    assert_eq!(acked, 1);
    let agent = eventually("the sample to be the agent's latest", || {
        let server = &server;
        let id = id.clone();
        async move {
            let agent = server.get_agent(&id).await.ok()?.agent?;
            (agent.last_durable_seq == 1).then_some(agent)
        }
    })
    .await;
    assert_eq!(agent.status(), pb::AgentStatus::Online);
    drop(tx);
    server.stop().await;
}

/// A varint field and a length-delimited field, both numbered [`UNKNOWN_FIELD`] and after.
fn unknown_fields() -> Vec<u8> {
    let mut out = Vec::new();
    prost::encoding::encode_key(UNKNOWN_FIELD, prost::encoding::WireType::Varint, &mut out);
    prost::encoding::encode_varint(42, &mut out);
    out.extend(field(UNKNOWN_FIELD + 1, b"a field from the future"));
    out
}

/// Field `number` holding `bytes` (length-delimited).
fn field(number: u32, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    prost::encoding::encode_key(number, prost::encoding::WireType::LengthDelimited, &mut out);
    prost::encoding::encode_varint(bytes.len() as u64, &mut out);
    out.extend_from_slice(bytes);
    out
}

/// Opens `AgentService.Connect` with `credential` and sends what `rx` yields as raw messages.
async fn connect_raw(
    server: &TestServer,
    credential: &str,
    rx: tokio::sync::mpsc::Receiver<Vec<u8>>,
) -> tonic::Streaming<pb::ConnectResponse> {
    let mut grpc = tonic::client::Grpc::new(server.channel().await);
    grpc.ready().await.expect("channel ready");
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {credential}").parse().expect("header"),
    );
    let path = http::uri::PathAndQuery::from_static("/tether.v1.AgentService/Connect");
    grpc.streaming(request, path, RawCodec)
        .await
        .expect("stream opened")
        .into_inner()
}

/// Sends messages as the bytes given; decodes answers as this build's `ConnectResponse`.
#[derive(Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = pb::ConnectResponse;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Self::Error> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = pb::ConnectResponse;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Self::Error> {
        let bytes = src.copy_to_bytes(src.remaining());
        pb::ConnectResponse::decode(bytes)
            .map(Some)
            .map_err(|e| tonic::Status::internal(e.to_string()))
    }
}
