//! Compatibility across versions, over real sockets (docs/compatibility.md states the rule):
//! a newer agent speaks to this server with fields and message kinds this server does not
//! know, as raw protobuf bytes on the agent stream, and the server ignores them; and this
//! agent meets a newer server, played by a gRPC endpoint that answers in raw bytes (a Welcome
//! with fields the agent does not know, then a message of a kind it does not know before
//! every ack), and keeps its one session, its samples acknowledged.

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn this_agent_skips_a_newer_servers_unknown_fields_and_message_kinds() {
    trace_init();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let shutdown = tokio_util::sync::CancellationToken::new();
    let serving = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(NewerServer)
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener),
                shutdown.clone().cancelled_owned(),
            ),
    );
    let state = tempfile::tempdir().expect("state dir");
    let config = tether_tests::agent_config(&url, state.path(), &[], Some("token".into()));
    let agent = tether_tests::TestAgent::spawn_with(config, state, "older-1", "linux");
    let stats = agent.handle.stats.clone();
    eventually("samples acknowledged by the newer server", || async {
        (stats.samples_acked_seq() >= 5).then_some(())
    })
    .await;
    assert_eq!(stats.sessions_started(), 1, "one session throughout");
    assert_eq!(stats.session_failures(), 0);
    agent.stop().await;
    shutdown.cancel();
    serving.await.expect("server task").expect("served");
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
    grpc.streaming(request, path, RawCodec::<pb::ConnectResponse>::default())
        .await
        .expect("stream opened")
        .into_inner()
}

/// Sends messages as the bytes given; decodes what comes back as this build's `D`.
struct RawCodec<D>(std::marker::PhantomData<D>);

impl<D> Default for RawCodec<D> {
    fn default() -> Self {
        Self(std::marker::PhantomData)
    }
}

impl<D: prost::Message + Default + Send + 'static> Codec for RawCodec<D> {
    type Encode = Vec<u8>;
    type Decode = D;
    type Encoder = RawCodec<D>;
    type Decoder = RawCodec<D>;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec::default()
    }
}

impl<D: Send + 'static> Encoder for RawCodec<D> {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Self::Error> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl<D: prost::Message + Default + Send + 'static> Decoder for RawCodec<D> {
    type Item = D;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Self::Error> {
        let bytes = src.copy_to_bytes(src.remaining());
        D::decode(bytes)
            .map(Some)
            .map_err(|e| tonic::Status::internal(e.to_string()))
    }
}

/// `tether.v1.AgentService` as a newer server would answer it, in raw bytes: `Enroll`, and a
/// `Connect` that answers `Hello` with a `Welcome` carrying unknown fields, and every report
/// with a message of an unknown kind followed by the ack.
#[derive(Clone)]
struct NewerServer;

impl tonic::server::NamedService for NewerServer {
    const NAME: &'static str = "tether.v1.AgentService";
}

impl tower::Service<http::Request<tonic::body::Body>> for NewerServer {
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(async move {
            Ok(match request.uri().path() {
                "/tether.v1.AgentService/Enroll" => {
                    let enroll = tower::service_fn(|_: tonic::Request<pb::EnrollRequest>| async {
                        let mut bytes = pb::EnrollResponse {
                            agent_id: "older-1".into(),
                            org_id: "default".into(),
                            agent_credential: "credential".into(),
                        }
                        .encode_to_vec();
                        bytes.extend(unknown_fields());
                        Ok::<_, tonic::Status>(tonic::Response::new(bytes))
                    });
                    tonic::server::Grpc::new(RawCodec::<pb::EnrollRequest>::default())
                        .unary(enroll, request)
                        .await
                }
                "/tether.v1.AgentService/Connect" => {
                    let connect = tower::service_fn(newer_connect);
                    tonic::server::Grpc::new(RawCodec::<pb::ConnectRequest>::default())
                        .streaming(connect, request)
                        .await
                }
                _ => tonic::Status::unimplemented("").into_http(),
            })
        })
    }
}

type RawStream = tokio_stream::wrappers::ReceiverStream<Result<Vec<u8>, tonic::Status>>;

/// The newer server's side of one session.
async fn newer_connect(
    request: tonic::Request<tonic::Streaming<pb::ConnectRequest>>,
) -> Result<tonic::Response<RawStream>, tonic::Status> {
    let mut inbound = request.into_inner();
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        while let Ok(Some(message)) = inbound.message().await {
            let answers = match message.message {
                Some(pb::connect_request::Message::Hello(_)) => {
                    let mut welcome = pb::Welcome {
                        session_id: "s-newer".into(),
                        heartbeat_interval: Some(Duration::from_millis(500).try_into().expect("d")),
                        metrics_interval: Some(Duration::from_millis(100).try_into().expect("d")),
                        ..Default::default()
                    }
                    .encode_to_vec();
                    welcome.extend(unknown_fields());
                    let mut response = field(1, &welcome);
                    response.extend(unknown_fields());
                    vec![response]
                }
                Some(pb::connect_request::Message::Metrics(report)) => {
                    let seq = report.samples.iter().map(|s| s.seq).max().unwrap_or(0);
                    let ack = pb::MetricsAck {
                        durable_seq: seq,
                        report_after: None,
                    }
                    .encode_to_vec();
                    vec![field(UNKNOWN_KIND, &unknown_fields()), field(3, &ack)]
                }
                Some(pb::connect_request::Message::Ping(ping)) => {
                    vec![field(
                        2,
                        &pb::Pong {
                            nonce: ping.nonce,
                            ..Default::default()
                        }
                        .encode_to_vec(),
                    )]
                }
                _ => Vec::new(),
            };
            for answer in answers {
                if tx.send(Ok(answer)).await.is_err() {
                    return;
                }
            }
        }
    });
    Ok(tonic::Response::new(RawStream::new(rx)))
}
