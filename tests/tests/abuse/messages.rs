//! Message-level abuse: oversized messages and gzip bombs.

use super::*;

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
            deferred_seq: 0,
            previous_ack_latency: None,
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
