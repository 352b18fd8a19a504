//! The reported attack, as reported: one agent sends samples dated before 1970, 40 times a
//! second for 10 s, while a healthy agent ingests and an admin creates tokens.

use super::*;

/// How long the attack runs and how often the attacker and the admin send.
const ATTACK: Duration = Duration::from_secs(10);
const ATTACK_EVERY: Duration = Duration::from_millis(25);
const ADMIN_EVERY: Duration = Duration::from_millis(65);

/// Sends one sample dated 1960 every [`ATTACK_EVERY`] until `until`, reconnecting whenever the
/// server ends the session; returns the codes the sessions ended with.
async fn send_pre_1970_samples(
    server: &TestServer,
    agent: &str,
    credential: &str,
    until: tokio::time::Instant,
) -> Codes {
    let mut codes = Codes::default();
    let mut seq = 0;
    let mut tick = tokio::time::interval(ATTACK_EVERY);
    'sessions: while tokio::time::Instant::now() < until {
        let mut session = match RawSession::hello(server, agent, credential, "attacker").await {
            Ok((session, _)) => session,
            Err(status) => {
                codes.add(status.code());
                tick.tick().await;
                continue;
            }
        };
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if tokio::time::Instant::now() >= until {
                        break 'sessions;
                    }
                    seq += 1;
                    let bad = report(vec![sample_at(seq, BEFORE_1970)]);
                    let message = pb::ConnectRequest { message: Some(bad) };
                    if session.tx.send(message).await.is_err() {
                        continue 'sessions;
                    }
                }
                answer = session.rx.message() => match answer {
                    Ok(Some(_)) => {}
                    Ok(None) => continue 'sessions,
                    Err(status) => {
                        codes.add(status.code());
                        continue 'sessions;
                    }
                },
            }
        }
    }
    codes
}

/// Creates a viewer token every [`ADMIN_EVERY`] until `until`; returns the answers' codes and
/// the ids of the tokens created.
async fn create_tokens(admin: &AdminClient, until: tokio::time::Instant) -> (Codes, Vec<String>) {
    let mut admin = admin.clone();
    let mut codes = Codes::default();
    let mut created = Vec::new();
    let mut tick = tokio::time::interval(ADMIN_EVERY);
    let mut n = 0;
    while tokio::time::Instant::now() < until {
        tick.tick().await;
        n += 1;
        let answer = admin
            .create_token(pb::CreateTokenRequest {
                name: format!("ci-{n}"),
                role: pb::Role::Viewer as i32,
                ttl: None,
            })
            .await;
        match answer {
            Ok(response) => {
                codes.add(Code::Ok);
                let token = response.into_inner().token.expect("the created token");
                created.push(token.token_id);
            }
            Err(status) => codes.add(status.code()),
        }
    }
    (codes, created)
}

/// The attacker's sessions end with INVALID_ARGUMENT; meanwhile every `CreateToken` succeeds
/// and is in the audit chain, which verifies, and every sample acknowledged to the healthy
/// agent is on disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pre_1970_samples_cost_other_clients_nothing() {
    trace_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = fast_config(dir.path());
    // The healthy agent samples as often as the attacker sends, so that their samples share
    // the writer's batches, with the writer's default linger.
    config.liveness.metrics_interval = ATTACK_EVERY;
    config.storage.writer_linger = tether_server::config::DEFAULT_WRITER_LINGER;
    let server = TestServer::start(config).await;
    let (attacker, credential) = server.enroll("attacker", &[]).await;
    let healthy = server.spawn_agent("healthy", &[]).await;
    let healthy_id = healthy.id().await;
    eventually("the healthy agent's first ack", || async {
        (healthy.handle.stats.samples_acked_seq() > 0).then_some(())
    })
    .await;
    let admin = server.admin().await;

    let until = tokio::time::Instant::now() + ATTACK;
    let (attacks, (admin_codes, created)) = tokio::join!(
        send_pre_1970_samples(&server, &attacker, &credential, until),
        create_tokens(&admin, until),
    );
    let stats = healthy.handle.stats.clone();
    healthy.stop().await;
    let acked = stats.samples_acked_seq();

    let audited = audit_of(&admin, CREATE_TOKEN).await;
    let audited_targets: BTreeSet<&str> = audited.iter().map(|e| e.target.as_str()).collect();
    let unaudited: Vec<&String> = created
        .iter()
        .filter(|id| !audited_targets.contains(id.as_str()))
        .collect();
    let verify = server.cli(&["audit", "verify"]).await;
    let data_dir = server.data_dir.clone();
    server.stop().await;
    let stored = stored_seqs(&data_dir, ORG, &healthy_id);
    let lost = missing(&stored, acked);

    println!(
        "pre-1970 attack: attacker sessions ended {:?}; CreateToken {} of {} succeeded ({:?}); \
         healthy agent acked up to seq {acked}, {} of those stored ({} lost); CreateToken \
         audit records {} for {} calls; audit verify: {}",
        attacks.0,
        admin_codes.get(Code::Ok),
        admin_codes.total(),
        admin_codes.0,
        acked - lost.len() as u64,
        lost.len(),
        audited.len(),
        admin_codes.total(),
        verify
            .as_ref()
            .map_or_else(|e| e.to_string(), |_| "ok".to_owned()),
    );
    assert!(
        attacks.get(Code::InvalidArgument) > 0
            && attacks.get(Code::InvalidArgument) == attacks.total(),
        "the attacker's sessions end with INVALID_ARGUMENT: {attacks:?}"
    );
    assert_eq!(
        admin_codes.get(Code::Ok),
        admin_codes.total(),
        "every CreateToken succeeds: {admin_codes:?}"
    );
    assert!(
        acked > 100,
        "the healthy agent kept ingesting (acked {acked})"
    );
    assert!(lost.is_empty(), "acknowledged samples lost: {lost:?}");
    assert_eq!(
        audited.len() as u64,
        admin_codes.total(),
        "one audit record per CreateToken call"
    );
    assert!(
        unaudited.is_empty(),
        "created tokens without audit: {unaudited:?}"
    );
    verify.expect("the audit chain verifies");
}
