//! The property: while random garbage flows from some agents and callers, every sample any
//! healthy agent saw acknowledged is stored, every audited call of the healthy admin is in the
//! chain, and the chain verifies.
//!
//! Garbage, drawn from a seeded generator (`TETHER_FATE_SEED` replays a run): samples with
//! times outside 1970–9999 or far ahead, text with control and format characters, oversized
//! text and disk lists, seqs out of order, zero or far ahead, non-finite gauges, bad pings and
//! goodbyes, second Hellos, undecodable bytes, unknown tokens, calls the caller's role denies,
//! and admin calls that fail validation (their failures are audited, so the audit trail is
//! under load too). Meanwhile healthy real agents ingest and the healthy admin creates tokens.

use bytes::{BufMut, Bytes, BytesMut};

use super::*;

/// How long the garbage flows.
const RUN: Duration = Duration::from_secs(4);
const N_HEALTHY: usize = 3;
const N_GARBAGE_AGENTS: usize = 2;
const DEFAULT_SEED: u64 = 0x7e7e_2024_f00d;

/// splitmix64: small, seedable, good enough to draw garbage.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    fn bytes(&mut self, max: u64) -> Vec<u8> {
        (0..=self.below(max)).map(|_| self.next() as u8).collect()
    }
}

/// Text an operator's terminal would interpret, or too long to show.
fn evil_text(rng: &mut Rng) -> String {
    let evil = [
        "\u{1b}]0;owned\u{7}",
        "\u{1b}[2J",
        "\u{202e}exe.txt",
        "zero\u{200b}width",
        "nul\0",
        "\u{feff}bom",
        "\u{e0041}tag",
    ];
    if rng.chance(20) {
        "x".repeat(300 + rng.below(2000) as usize)
    } else {
        format!("host{}", rng.pick(&evil))
    }
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64
}

/// A time no client can show.
fn out_of_range_time(rng: &mut Rng) -> prost_types::Timestamp {
    match rng.below(4) {
        0 => wire_time(BEFORE_1970),
        1 => wire_time(253_402_300_800 + rng.below(1 << 40) as i64),
        2 => wire_time(i64::MIN + rng.below(1000) as i64),
        _ => prost_types::Timestamp {
            seconds: now_secs(),
            nanos: -1,
        },
    }
}

/// A time no client can show, or (for what already happened) one far ahead of the server's
/// clock.
fn evil_time(rng: &mut Rng) -> prost_types::Timestamp {
    if rng.chance(25) {
        wire_time(now_secs() + 3600 + rng.below(86_400 * 365) as i64)
    } else {
        out_of_range_time(rng)
    }
}

/// A Hello for the garbage agent `agent` (`host`): usually fine, sometimes not.
fn maybe_bad_hello(rng: &mut Rng, agent: &str, host: &str) -> pb::Hello {
    let mut hello = tether_tests::hello(agent, host, &[]);
    let info = hello.system_info.as_mut().expect("info");
    match rng.below(10) {
        0 => info.hostname = evil_text(rng),
        1 => info.os_name = evil_text(rng),
        2 => info.boot_time = Some(evil_time(rng)),
        3 => hello.agent_version = evil_text(rng),
        _ => {}
    }
    hello
}

/// One message a garbage agent sends after its Welcome (`next` is the next genuine seq).
fn garbage_message(rng: &mut Rng, next: u64) -> pb::ConnectRequest {
    let mut s = sample(next);
    let message = match rng.below(13) {
        0 => {
            s.time = Some(evil_time(rng));
            report(vec![s])
        }
        1 => {
            s.disks = vec![pb::DiskUsage {
                mount_point: evil_text(rng),
                used_bytes: 1,
                total_bytes: 2,
            }];
            report(vec![s])
        }
        2 => {
            s.disks = vec![pb::DiskUsage::default(); 65 + rng.below(500) as usize];
            report(vec![s])
        }
        3 => report(vec![sample(next + 1), sample(next)]),
        4 => report(vec![sample(0)]),
        5 => report(vec![sample(u64::MAX - rng.below(10))]),
        6 => report(vec![sample(next + 2_000_000)]),
        7 => {
            s.cpu_percent = f64::NAN;
            report(vec![s])
        }
        8 => In::Ping(pb::Ping {
            nonce: rng.next(),
            sent_at: Some(out_of_range_time(rng)),
        }),
        9 => In::Goodbye(pb::AgentGoodbye {
            reason: evil_text(rng),
        }),
        10 => In::Hello(tether_tests::hello("x", "x", &[])),
        11 => return pb::ConnectRequest { message: None },
        // Sometimes a genuine sample: garbage agents are acknowledged too.
        _ => report(vec![s]),
    };
    pb::ConnectRequest {
        message: Some(message),
    }
}

/// The code a stream ends with, `Ok` if it ends cleanly or is still open after a moment.
async fn ending(rx: &mut tonic::Streaming<pb::ConnectResponse>) -> Code {
    let read = async {
        loop {
            match rx.message().await {
                Ok(Some(_)) => {}
                Ok(None) => return Code::Ok,
                Err(status) => return status.code(),
            }
        }
    };
    tokio::time::timeout(Duration::from_millis(150), read)
        .await
        .unwrap_or(Code::Ok)
}

/// A garbage agent: sessions with random Hellos and messages until `until`.
async fn garbage_agent(
    server: &TestServer,
    agent: &str,
    credential: &str,
    seed: u64,
    until: tokio::time::Instant,
) -> Codes {
    let mut rng = Rng(seed);
    let mut codes = Codes::default();
    let host = format!("garbage-{agent}");
    while tokio::time::Instant::now() < until {
        let hello = maybe_bad_hello(&mut rng, agent, &host);
        let (mut session, welcome) = match RawSession::hello_with(server, credential, hello).await {
            Ok(opened) => opened,
            Err(status) => {
                codes.add(status.code());
                continue;
            }
        };
        let message = garbage_message(&mut rng, welcome.last_durable_seq + 1);
        if session.tx.send(message).await.is_err() {
            continue;
        }
        codes.add(ending(&mut session.rx).await);
    }
    codes
}

/// One gRPC message over a raw HTTP/2 stream: `payload` framed as is, whatever it decodes to.
/// Returns the status the server answers with.
async fn raw_call(
    addr: std::net::SocketAddr,
    path: &str,
    token: &str,
    payload: Vec<u8>,
) -> Option<Code> {
    let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    let (send, connection) = h2::client::handshake(tcp).await.ok()?;
    let connection = tokio::spawn(connection);
    let request = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("authorization", format!("Bearer {token}"))
        .body(())
        .ok()?;
    let mut send = send.ready().await.ok()?;
    let (response, mut stream) = send.send_request(request, false).ok()?;
    let mut frame = BytesMut::with_capacity(5 + payload.len());
    frame.put_u8(0);
    frame.put_u32(u32::try_from(payload.len()).ok()?);
    frame.put_slice(&payload);
    // The server may answer before reading the body: then this fails and the answer counts.
    let _ = stream.send_data(Bytes::from(frame), true);
    let code = tokio::time::timeout(Duration::from_secs(10), async {
        let response = response.await.ok()?;
        let status = |headers: &http::HeaderMap| {
            let value = headers.get("grpc-status")?.to_str().ok()?;
            Some(Code::from(value.parse::<i32>().ok()?))
        };
        if let Some(code) = status(response.headers()) {
            return Some(code);
        }
        let mut body = response.into_body();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.ok()?;
            let _ = body.flow_control().release_capacity(chunk.len());
        }
        status(&body.trailers().await.ok()??)
    })
    .await
    .ok()
    .flatten();
    connection.abort();
    code
}

/// The callers' garbage: unknown tokens, denied calls, admin calls that fail validation,
/// queries out of range, undecodable bytes.
struct Callers<'a> {
    server: &'a TestServer,
    /// An admin of the org whose calls all fail validation (and are audited as failures).
    careless: AdminClient,
    viewer: AdminClient,
    careless_token: String,
    garbage_agent: (String, String),
}

impl Callers<'_> {
    async fn run(&self, seed: u64, until: tokio::time::Instant) -> Codes {
        let mut rng = Rng(seed);
        let mut codes = Codes::default();
        let mut careless = self.careless.clone();
        let mut viewer = self.viewer.clone();
        while tokio::time::Instant::now() < until {
            let code = match rng.below(10) {
                0 => {
                    let token = format!("tether_{:016x}_{:x}", rng.next(), rng.next());
                    let mut fleet = self.server.fleet_as(Some(&token)).await;
                    code(fleet.list_agents(pb::ListAgentsRequest::default()).await)
                }
                1 => code(viewer.create_token(token_request("denied", None)).await),
                2 => {
                    let name = evil_text(&mut rng);
                    code(careless.create_token(token_request(&name, None)).await)
                }
                3 => {
                    let ttl = prost_types::Duration {
                        seconds: 101 * 365 * 86_400 + rng.below(1 << 40) as i64,
                        nanos: 0,
                    };
                    code(careless.create_token(token_request("ttl", Some(ttl))).await)
                }
                4 => {
                    let request = pb::CreateEnrollmentTokenRequest {
                        description: evil_text(&mut rng),
                        labels: tether_tests::labels(&[("bad key", "v")]),
                        ..Default::default()
                    };
                    code(careless.create_enrollment_token(request).await)
                }
                5 => {
                    let token_id = format!("{:016x}", rng.next());
                    code(
                        careless
                            .revoke_token(pb::RevokeTokenRequest { token_id })
                            .await,
                    )
                }
                6 => {
                    let agent_id = format!("{:016x}", rng.next());
                    code(
                        careless
                            .delete_agent(pb::DeleteAgentRequest { agent_id })
                            .await,
                    )
                }
                7 => {
                    let request = pb::ListAuditEventsRequest {
                        since: Some(out_of_range_time(&mut rng)),
                        ..Default::default()
                    };
                    code(careless.list_audit_events(request).await)
                }
                8 => {
                    let payload = rng.bytes(64);
                    let path = "/tether.v1.AdminService/CreateToken";
                    raw_call(self.server.addr, path, &self.careless_token, payload)
                        .await
                        .unwrap_or(Code::Unknown)
                }
                _ => {
                    let payload = rng.bytes(64);
                    let path = "/tether.v1.AgentService/Connect";
                    let credential = &self.garbage_agent.1;
                    raw_call(self.server.addr, path, credential, payload)
                        .await
                        .unwrap_or(Code::Unknown)
                }
            };
            codes.add(code);
        }
        codes
    }
}

fn token_request(name: &str, ttl: Option<prost_types::Duration>) -> pb::CreateTokenRequest {
    pb::CreateTokenRequest {
        name: name.to_owned(),
        role: pb::Role::Viewer as i32,
        ttl,
    }
}

fn code<T>(result: Result<T, tonic::Status>) -> Code {
    result.map_or_else(|status| status.code(), |_| Code::Ok)
}

/// The healthy admin creates a token every 40 ms until `until`; returns the ids created and
/// the codes of the calls that failed.
async fn healthy_admin(admin: &AdminClient, until: tokio::time::Instant) -> (Vec<String>, Codes) {
    let mut admin = admin.clone();
    let mut created = Vec::new();
    let mut failed = Codes::default();
    let mut tick = tokio::time::interval(Duration::from_millis(40));
    let mut n = 0;
    while tokio::time::Instant::now() < until {
        tick.tick().await;
        n += 1;
        match admin
            .create_token(token_request(&format!("healthy-{n}"), None))
            .await
        {
            Ok(response) => created.push(response.into_inner().token.expect("token").token_id),
            Err(status) => failed.add(status.code()),
        }
    }
    (created, failed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_some_costs_the_healthy_nothing() {
    trace_init();
    let seed = std::env::var("TETHER_FATE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SEED);
    println!("fate property seed {seed} (TETHER_FATE_SEED replays it)");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = fast_config(dir.path());
    // Garbage agents open a session per message: more than a healthy agent ever does.
    config.limits.token_request_burst = 10_000;
    let server = TestServer::start(config).await;

    let mut healthy = Vec::new();
    for n in 0..N_HEALTHY {
        let agent = server.spawn_agent(&format!("healthy-{n}"), &[]).await;
        let id = agent.id().await;
        healthy.push((agent, id));
    }
    let mut garbage = Vec::new();
    for n in 0..N_GARBAGE_AGENTS {
        garbage.push(server.enroll(&format!("garbage-{n}"), &[]).await);
    }
    let admin = server.admin().await;
    let admin_id = tether_tests::token_id(&server.admin_token).to_owned();
    let mut setup = admin.clone();
    let careless = tether_tests::create_token(&mut setup, "careless", pb::Role::Admin, None).await;
    let viewer = tether_tests::create_token(&mut setup, "viewer", pb::Role::Viewer, None).await;
    let callers = Callers {
        server: &server,
        careless: server.admin_as(Some(&careless.secret)).await,
        viewer: server.admin_as(Some(&viewer.secret)).await,
        careless_token: careless.secret.clone(),
        garbage_agent: garbage[0].clone(),
    };
    for (agent, _) in &healthy {
        let stats = agent.handle.stats.clone();
        eventually("a healthy agent's first ack", || async {
            (stats.samples_acked_seq() > 0).then_some(())
        })
        .await;
    }
    let acked_before: Vec<u64> = healthy
        .iter()
        .map(|(agent, _)| agent.handle.stats.samples_acked_seq())
        .collect();

    let until = tokio::time::Instant::now() + RUN;
    let (agents_0, agents_1, callers_codes, (created, admin_failures)) = tokio::join!(
        garbage_agent(&server, &garbage[0].0, &garbage[0].1, seed, until),
        garbage_agent(&server, &garbage[1].0, &garbage[1].1, seed ^ 1, until),
        callers.run(seed ^ 2, until),
        healthy_admin(&admin, until),
    );
    println!(
        "garbage agents ended {:?} and {:?}; callers answered {:?}; healthy admin created {} \
         tokens, failures {:?}",
        agents_0.0,
        agents_1.0,
        callers_codes.0,
        created.len(),
        admin_failures.0
    );
    assert_eq!(
        admin_failures.total(),
        0,
        "every healthy CreateToken succeeds"
    );
    assert!(created.len() > 20, "the healthy admin kept working");
    assert!(
        agents_0.get(Code::InvalidArgument) + agents_1.get(Code::InvalidArgument) > 10,
        "the garbage was refused"
    );
    assert_eq!(callers_codes.get(Code::Ok), 0, "no garbage call succeeded");

    // Every audited call of the healthy admin is in the chain, and the chain verifies.
    let filter = pb::ListAuditEventsRequest {
        actor_token_id: admin_id,
        method: CREATE_TOKEN.to_owned(),
        page_size: 1000,
        ..Default::default()
    };
    let events = tether_tests::list_audit(&admin, filter).await;
    let audited: BTreeSet<&str> = events.iter().map(|e| e.target.as_str()).collect();
    let expected: BTreeSet<&str> = created.iter().map(String::as_str).collect();
    assert!(
        expected.is_subset(&audited),
        "unaudited: {:?}",
        expected.difference(&audited).collect::<Vec<_>>()
    );
    assert_eq!(events.len(), created.len() + 2, "plus careless and viewer");
    server
        .cli(&["audit", "verify"])
        .await
        .expect("the audit chain verifies");

    // Every sample a healthy agent saw acknowledged is on disk.
    let mut acked = Vec::new();
    for ((agent, id), before) in healthy.into_iter().zip(acked_before) {
        let stats = agent.handle.stats.clone();
        agent.stop().await;
        let seq = stats.samples_acked_seq();
        assert!(seq > before + 5, "{id} kept ingesting ({before} -> {seq})");
        acked.push((id, seq));
    }
    let data_dir = server.data_dir.clone();
    server.stop().await;
    for (id, seq) in acked {
        let stored = stored_seqs(&data_dir, ORG, &id);
        assert_eq!(
            missing(&stored, seq),
            Vec::<u64>::new(),
            "{id} acked up to {seq}"
        );
    }
}
