//! Refusals are not free: a flood of calls the gate refuses costs the caller its own request
//! budget, writes a bounded number of audit records, and leaves the audit trail readable.

use std::collections::HashMap;

use super::*;

const CREATE_TOKEN: &str = "/tether.v1.AdminService/CreateToken";

/// Calls kept in flight at once by [`flood`].
const IN_FLIGHT: usize = 64;

/// Bytes under `dir`, counting every file below it.
fn dir_bytes(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let meta = entry.metadata().expect("metadata");
        total += if meta.is_dir() {
            dir_bytes(&entry.path())
        } else {
            meta.len()
        };
    }
    total
}

/// How one flood went.
#[derive(Debug, Default)]
struct Flood {
    /// Answers by gRPC code.
    codes: HashMap<Code, u64>,
    /// Calls per second over the whole flood.
    rate: f64,
}

/// Sends `n` calls to `path` with `token` over one connection, [`IN_FLIGHT`] at a time.
async fn flood(server: &TestServer, path: &str, token: &str, body: Bytes, n: usize) -> Flood {
    let raw = Arc::new(Raw::connect(server.addr).await);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..IN_FLIGHT)
        .map(|_| {
            let (raw, next, body) = (raw.clone(), next.clone(), body.clone());
            let request = raw.request(path, token, &[]);
            tokio::spawn(async move {
                let mut codes = HashMap::new();
                while next.fetch_add(1, Ordering::Relaxed) < n {
                    let reply = raw
                        .unary(request.clone(), body.clone())
                        .await
                        .expect("the server answers");
                    let code = reply.grpc.expect("a gRPC status");
                    *codes.entry(code).or_insert(0u64) += 1;
                }
                codes
            })
        })
        .collect();
    let mut out = Flood::default();
    for worker in workers {
        for (code, n) in worker.await.expect("flood worker") {
            *out.codes.entry(code).or_insert(0) += n;
        }
    }
    out.rate = n as f64 / started.elapsed().as_secs_f64();
    out
}

/// Every audit event of the default org.
async fn audit_events(server: &TestServer) -> Vec<pb::AuditEvent> {
    tether_tests::list_audit(&server.admin().await, Default::default()).await
}

/// Waits until every audit entry queued so far is durable: the writer commits in queue order,
/// so once an audited admin call has returned, every refusal queued before it is stored.
async fn settle_audit(server: &TestServer, name: &str) {
    let mut admin = server.admin().await;
    tether_tests::create_token(&mut admin, name, pb::Role::Viewer, None).await;
}

/// A viewer calling an admin RPC 3,000 times as fast as it can: after the token's burst the
/// calls are refused for its rate before any authorization, and only a small budget of the
/// denials is audited; every refusal is still counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_denied_calls_is_rate_limited_and_audited_within_a_budget() {
    trace_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(fast_config(dir.path())).await;
    let healthy = Healthy::start(&server).await;
    let mut admin = server.admin().await;
    let viewer = tether_tests::create_token(&mut admin, "viewer", pb::Role::Viewer, None).await;
    let viewer_id = viewer.token.expect("token").token_id;
    settle_audit(&server, "before").await;
    let records_before = audit_events(&server).await.len();
    let store_before = dir_bytes(&dir.path().join("store"));

    const CALLS: usize = 3_000;
    let body = grpc_message(&pb::CreateTokenRequest {
        name: "escalate".to_owned(),
        role: pb::Role::Admin as i32,
        ttl: None,
    });
    let result = flood(&server, CREATE_TOKEN, &viewer.secret, body, CALLS).await;
    settle_audit(&server, "after").await;
    let events = audit_events(&server).await;
    let by_viewer = events
        .iter()
        .filter(|e| e.actor_token_id == viewer_id)
        .count();
    let store_after = dir_bytes(&dir.path().join("store"));
    eprintln!(
        "denied-call flood: {CALLS} calls at {:.0}/s, answers {:?}; audit records written: {} \
         ({} by the viewer); store {} -> {} bytes",
        result.rate,
        result.codes,
        events.len() - records_before - 1,
        by_viewer,
        store_before,
        store_after,
    );

    let denied = result
        .codes
        .get(&Code::PermissionDenied)
        .copied()
        .unwrap_or(0);
    let exhausted = result
        .codes
        .get(&Code::ResourceExhausted)
        .copied()
        .unwrap_or(0);
    assert_eq!(denied + exhausted, CALLS as u64, "{:?}", result.codes);
    assert!(
        exhausted > 0,
        "denied calls spend the token's request budget: {:?}",
        result.codes
    );
    // The denial budget (100, refilled at one a second) and one rate-limit refusal a second.
    let secs = 1 + (CALLS as f64 / result.rate).ceil() as usize;
    assert!(
        by_viewer <= 100 + 2 * secs,
        "{by_viewer} audit records for {CALLS} refused calls"
    );
    assert!(by_viewer >= 1, "refusals are still audited");
    healthy.assert_unaffected(&server).await;
    tetherctl::verify_chain(&events).expect("the chain verifies");
    server.stop().await;
}

/// An agent credential calling `/tether.v1.X/<12 KB name>` over and over: the unknown method is
/// recorded as one bounded value, so the store barely grows and `tetherctl audit` and `audit
/// verify` keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_to_long_unknown_methods_leave_a_small_readable_audit_trail() {
    trace_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(fast_config(dir.path())).await;
    let (_, credential) = server.enroll("prober", &[]).await;
    settle_audit(&server, "before").await;
    let records_before = audit_events(&server).await.len();
    let store_before = dir_bytes(&dir.path().join("store"));

    const CALLS: usize = 1_500;
    let path = format!("/tether.v1.X/{}", "m".repeat(12 * 1024));
    let result = flood(&server, &path, &credential, list_agents(), CALLS).await;
    settle_audit(&server, "after").await;
    let events = audit_events(&server).await;
    let store_after = dir_bytes(&dir.path().join("store"));
    let written = events.len() - records_before - 1;
    eprintln!(
        "long-method flood: {CALLS} calls at {:.0}/s, answers {:?}; audit records written: \
         {written}; store {} -> {} bytes",
        result.rate, result.codes, store_before, store_after,
    );

    let refused: u64 = result.codes.values().sum();
    assert_eq!(refused, CALLS as u64);
    assert!(
        result
            .codes
            .keys()
            .all(|code| matches!(code, Code::PermissionDenied | Code::ResourceExhausted)),
        "{:?}",
        result.codes
    );
    assert!(written <= 150, "{written} audit records for {CALLS} calls");
    let probes: Vec<_> = events[records_before..]
        .iter()
        .filter(|e| e.actor_token_id == tether_tests::token_id(&credential))
        .collect();
    assert!(!probes.is_empty(), "the refusals are audited");
    for event in probes {
        assert_eq!(event.method, "(unknown method)", "{event:?}");
        let size = event.encoded_len();
        assert!(size < 1024, "an audit event of {size} bytes: {event:?}");
    }
    assert!(
        store_after.saturating_sub(store_before) < 4 << 20,
        "the store grew from {store_before} to {store_after} bytes"
    );

    // The CLI reads and verifies the trail.
    let listing = server
        .cli(&["audit", "--outcome", "denied"])
        .await
        .expect("tetherctl audit");
    assert!(listing.lines().count() > 1, "{listing}");
    server
        .cli(&["audit", "verify"])
        .await
        .expect("tetherctl audit verify");
    server.stop().await;
}
