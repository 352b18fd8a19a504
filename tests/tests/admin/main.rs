//! Administration end to end: enrollment tokens and their limits, deleting agents, API tokens and
//! their revocation, the per-org agent limit, and the hash-chained audit trail (including
//! tampering with the stored chain).

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use prost::Message as _;
use sha2::{Digest as _, Sha256};
use tether_proto as pb;
use tether_server::store::sled::test_support::RawStore;
use tether_tests::{
    AdminClient, FleetClient, RawSession, TestServer, create_token, eventually, fast_config,
    labels, list_all, system_info, token_id, trace_init,
};
use tonic::Code;

mod audit;
mod tokens;

const STREAM_WAIT: Duration = Duration::from_secs(5);

fn enroll_request(hostname: &str, pairs: &[(&str, &str)]) -> pb::EnrollRequest {
    pb::EnrollRequest {
        system_info: Some(system_info(hostname)),
        labels: labels(pairs),
        name: String::new(),
        previous_credential: String::new(),
    }
}

async fn enroll_with(
    server: &TestServer,
    token: &str,
    hostname: &str,
) -> Result<pb::EnrollResponse, tonic::Status> {
    server
        .agent_client(Some(token))
        .await
        .enroll(enroll_request(hostname, &[]))
        .await
        .map(tonic::Response::into_inner)
}

async fn enrollment_token(
    admin: &mut AdminClient,
    req: pb::CreateEnrollmentTokenRequest,
) -> pb::CreateEnrollmentTokenResponse {
    admin
        .create_enrollment_token(req)
        .await
        .expect("create enrollment token")
        .into_inner()
}

async fn enrollment_tokens(admin: &mut AdminClient) -> HashMap<String, pb::EnrollmentToken> {
    admin
        .list_enrollment_tokens(pb::ListEnrollmentTokensRequest::default())
        .await
        .expect("list enrollment tokens")
        .into_inner()
        .tokens
        .into_iter()
        .map(|t| (t.token_id.clone(), t))
        .collect()
}

async fn agent_ids(fleet: &mut FleetClient) -> Vec<String> {
    let mut ids: Vec<String> = list_all(fleet, pb::ListAgentsRequest::default())
        .await
        .into_iter()
        .map(|a| a.agent_id)
        .collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrollment_tokens_enforce_max_uses_revocation_expiry_and_stamp_labels() {
    trace_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(fast_config(dir.path())).await;
    let mut admin = server.admin().await;
    let mut fleet = server.fleet().await;

    // Two uses, and labels that win over the agent's own.
    let limited = enrollment_token(
        &mut admin,
        pb::CreateEnrollmentTokenRequest {
            description: "two machines".to_owned(),
            labels: labels(&[("team", "blue"), ("env", "prod")]),
            max_uses: 2,
            ttl: None,
            allow_reclaim: false,
        },
    )
    .await;
    let limited_id = limited.token.as_ref().expect("token").token_id.clone();
    let first = server
        .agent_client(Some(&limited.secret))
        .await
        .enroll(enroll_request("a", &[("env", "dev"), ("role", "web")]))
        .await
        .expect("first use")
        .into_inner();
    let agent = server.get_agent(&first.agent_id).await.expect("get agent");
    let stamped = agent.agent.expect("agent").labels;
    let want = labels(&[("team", "blue"), ("env", "prod"), ("role", "web")]);
    assert_eq!(stamped, want, "the token's labels are stamped and win");
    enroll_with(&server, &limited.secret, "b")
        .await
        .expect("second use");
    let before = agent_ids(&mut fleet).await;
    assert_eq!(before.len(), 2);

    // Exhausted: a new machine, and a replay for a machine already enrolled, are refused.
    for host in ["c", "a"] {
        let err = enroll_with(&server, &limited.secret, host)
            .await
            .expect_err("the token is used up");
        assert_eq!(err.code(), Code::PermissionDenied, "{host}: {err:?}");
    }
    assert_eq!(agent_ids(&mut fleet).await, before, "nothing created");
    let token = &enrollment_tokens(&mut admin).await[&limited_id];
    assert_eq!((token.use_count, token.max_uses), (2, 2));

    // Revoked.
    let revoked = enrollment_token(&mut admin, Default::default()).await;
    let revoked_id = revoked.token.as_ref().expect("token").token_id.clone();
    let answer = admin
        .revoke_enrollment_token(pb::RevokeEnrollmentTokenRequest {
            token_id: revoked_id.clone(),
        })
        .await
        .expect("revoke")
        .into_inner();
    assert!(answer.token.expect("token").revoked);
    let err = enroll_with(&server, &revoked.secret, "d")
        .await
        .expect_err("revoked");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

    // Expired: wait (on the clock, without using the token) until its expiry has passed.
    let expiring = enrollment_token(
        &mut admin,
        pb::CreateEnrollmentTokenRequest {
            ttl: Some(prost_types::Duration {
                seconds: 1,
                nanos: 0,
            }),
            ..Default::default()
        },
    )
    .await;
    let expires_at = expiring
        .token
        .as_ref()
        .and_then(|t| t.expires_at)
        .expect("an expiry");
    let expires_at = SystemTime::try_from(expires_at).expect("expiry time");
    eventually("the enrollment token's expiry to pass", || async {
        (SystemTime::now() > expires_at).then_some(())
    })
    .await;
    let err = enroll_with(&server, &expiring.secret, "e")
        .await
        .expect_err("expired");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

    assert_eq!(agent_ids(&mut fleet).await, before, "nothing created");
    let tokens = enrollment_tokens(&mut admin).await;
    assert_eq!(tokens[&limited_id].use_count, 2);
    assert_eq!(tokens[&revoked_id].use_count, 0);
    let expiring_id = &expiring.token.as_ref().expect("token").token_id;
    assert_eq!(tokens[expiring_id].use_count, 0);
    server.stop().await;
}

/// Reads `session` until the server's `Goodbye`, then until the stream ends.
async fn expect_revoked_goodbye(session: &mut RawSession) {
    loop {
        match session.recv().await {
            Ok(Some(pb::connect_response::Message::Goodbye(goodbye))) => {
                assert_eq!(
                    goodbye.reason,
                    pb::GoodbyeReason::Revoked as i32,
                    "{goodbye:?}"
                );
                break;
            }
            Ok(Some(_)) => {}
            other => panic!("expected Goodbye(REVOKED), got {other:?}"),
        }
    }
    loop {
        match session.recv().await {
            Ok(Some(pb::connect_response::Message::Goodbye(g))) => panic!("second goodbye {g:?}"),
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => return,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_agent_is_disconnected_and_can_neither_reconnect_nor_reappear() {
    trace_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(fast_config(dir.path())).await;
    let mut admin = server.admin().await;
    let mut fleet = server.fleet().await;
    let (id, credential) = server.enroll("doomed", &[]).await;
    let (keeper, _) = server.enroll("keeper", &[]).await;

    let mut watch = fleet
        .watch_agents(pb::WatchAgentsRequest::default())
        .await
        .expect("watch")
        .into_inner();
    loop {
        let event = tokio::time::timeout(STREAM_WAIT, watch.message())
            .await
            .expect("snapshot in time")
            .expect("watch event")
            .expect("watch open");
        if event.kind == pb::AgentEventKind::Synced as i32 {
            break;
        }
    }
    let (mut session, _) = RawSession::hello(&server, &id, &credential, "doomed")
        .await
        .expect("the agent connects");
    server.wait_status(&id, pb::AgentStatus::Online).await;

    admin
        .delete_agent(pb::DeleteAgentRequest {
            agent_id: id.clone(),
        })
        .await
        .expect("delete agent");

    expect_revoked_goodbye(&mut session).await;
    let err = server.get_agent(&id).await.expect_err("deleted");
    assert_eq!(err.code(), Code::NotFound);
    loop {
        let event = tokio::time::timeout(STREAM_WAIT, watch.message())
            .await
            .expect("REMOVED in time")
            .expect("watch event")
            .expect("watch open");
        let agent = event.agent.expect("event agent");
        if event.kind == pb::AgentEventKind::Removed as i32 {
            assert_eq!(agent.agent_id, id);
            break;
        }
    }

    // The old credential is refused for good (PERMISSION_DENIED: the agent must not retry).
    let err = RawSession::hello(&server, &id, &credential, "doomed")
        .await
        .err()
        .expect("the deleted agent cannot reconnect");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

    // The machine may enroll again with a valid token, as a new agent.
    let again = server
        .enroll_with(enroll_request("doomed", &[]))
        .await
        .expect("enroll again");
    assert_ne!(again.agent_id, id, "a deleted agent id never comes back");
    let mut want = vec![keeper.clone(), again.agent_id.clone()];
    want.sort();
    assert_eq!(agent_ids(&mut fleet).await, want);
    let err = RawSession::hello(&server, &id, &credential, "doomed")
        .await
        .err()
        .expect("still refused");
    assert_eq!(err.code(), Code::PermissionDenied);

    // ... and after a restart.
    drop((watch, session, admin, fleet));
    server.stop().await;
    let server = TestServer::start(fast_config(dir.path())).await;
    let err = server.get_agent(&id).await.expect_err("still deleted");
    assert_eq!(err.code(), Code::NotFound);
    let mut fleet = server.fleet().await;
    assert_eq!(agent_ids(&mut fleet).await, want);
    let err = RawSession::hello(&server, &id, &credential, "doomed")
        .await
        .err()
        .expect("refused after a restart");
    assert_eq!(err.code(), Code::PermissionDenied);
    RawSession::hello(&server, &again.agent_id, &again.agent_credential, "doomed")
        .await
        .expect("the new agent connects");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_token_ends_its_open_watch() {
    trace_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(fast_config(dir.path())).await;
    let mut admin = server.admin().await;
    let viewer = create_token(&mut admin, "watcher", pb::Role::Viewer, None).await;
    let mut fleet = server.fleet_as(Some(&viewer.secret)).await;
    let mut watch = fleet
        .watch_agents(pb::WatchAgentsRequest::default())
        .await
        .expect("watch")
        .into_inner();
    let synced = tokio::time::timeout(STREAM_WAIT, watch.message())
        .await
        .expect("SYNCED in time")
        .expect("watch event")
        .expect("watch open");
    assert_eq!(synced.kind, pb::AgentEventKind::Synced as i32);

    admin
        .revoke_token(pb::RevokeTokenRequest {
            token_id: viewer.token.expect("token").token_id,
        })
        .await
        .expect("revoke");

    let end = tokio::time::timeout(STREAM_WAIT, watch.message())
        .await
        .expect("the watch ends after the revocation");
    let status = end.expect_err("the watch ends with an error status");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let err = fleet
        .list_agents(pb::ListAgentsRequest::default())
        .await
        .expect_err("revoked");
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = fleet
        .watch_agents(pb::WatchAgentsRequest::default())
        .await
        .expect_err("no new watch either");
    assert_eq!(err.code(), Code::Unauthenticated);
    server.stop().await;
}

/// The 64 hex digits after the id of a token `tether_<id>_<secret>`.
fn secret_half(token: &str) -> &str {
    token.rsplit('_').next().expect("secret part")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_tokens_work_with_their_role_and_are_never_listed_with_their_secret() {
    trace_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(fast_config(dir.path())).await;
    let mut admin = server.admin().await;
    let viewer = create_token(&mut admin, "viewer", pb::Role::Viewer, None).await;
    let operator = create_token(&mut admin, "operator", pb::Role::Operator, None).await;
    let admin2 = create_token(
        &mut admin,
        "admin",
        pb::Role::Admin,
        Some(Duration::from_secs(3600)),
    )
    .await;
    let idle = create_token(&mut admin, "idle", pb::Role::Viewer, None).await;
    let created = [&viewer, &operator, &admin2, &idle];
    for c in created {
        let token = c.token.as_ref().expect("token");
        assert!(c.secret.starts_with("tether_"), "{}", token.name);
        assert_eq!(token_id(&c.secret), token.token_id);
        assert!(!format!("{token:?}").contains(secret_half(&c.secret)));
    }
    let token = admin2.token.as_ref().expect("token");
    assert_eq!(token.role, pb::Role::Admin as i32);
    assert!(token.expires_at.is_some() && !token.server_admin);

    // Each works with its role, and no more.
    for (who, secret, admin_ok) in [
        ("viewer", &viewer.secret, false),
        ("operator", &operator.secret, false),
        ("admin", &admin2.secret, true),
    ] {
        let mut fleet = server.fleet_as(Some(secret)).await;
        fleet
            .list_agents(pb::ListAgentsRequest::default())
            .await
            .unwrap_or_else(|e| panic!("{who} reads: {e}"));
        let mut as_admin = server.admin_as(Some(secret)).await;
        let listed = as_admin.list_tokens(pb::ListTokensRequest::default()).await;
        let created = as_admin
            .create_enrollment_token(pb::CreateEnrollmentTokenRequest::default())
            .await;
        if admin_ok {
            listed.unwrap_or_else(|e| panic!("{who} lists tokens: {e}"));
            created.unwrap_or_else(|e| panic!("{who} creates enrollment tokens: {e}"));
        } else {
            for err in [listed.map(drop), created.map(drop)] {
                let err = err.expect_err(who);
                assert_eq!(err.code(), Code::PermissionDenied, "{who}: {err:?}");
            }
        }
    }

    // Listings never carry secrets, and show when each token was last used.
    let listed = admin
        .list_tokens(pb::ListTokensRequest::default())
        .await
        .expect("list tokens")
        .into_inner()
        .tokens;
    let text = format!("{listed:?}");
    let secrets = [
        &viewer.secret,
        &operator.secret,
        &admin2.secret,
        &idle.secret,
        &server.admin_token,
    ];
    for secret in secrets {
        assert!(!text.contains(secret_half(secret)), "a secret is listed");
    }
    for token in &listed {
        for field in [&token.token_id, &token.org_id, &token.name] {
            assert!(!secrets.contains(&field), "{field}");
        }
    }
    let by_name: HashMap<&str, &pb::ApiToken> =
        listed.iter().map(|t| (t.name.as_str(), t)).collect();
    for used in ["viewer", "operator", "admin", "bootstrap-admin"] {
        let token = by_name.get(used).unwrap_or_else(|| panic!("{used} listed"));
        assert!(token.last_used_at.is_some(), "{used}: {token:?}");
    }
    assert!(by_name["idle"].last_used_at.is_none(), "never used");
    assert!(by_name["bootstrap-admin"].server_admin);

    // Agent credentials come from Enroll only; a role is required.
    for role in [pb::Role::Agent as i32, pb::Role::Unspecified as i32, 42] {
        let err = admin
            .create_token(pb::CreateTokenRequest {
                name: "bad".to_owned(),
                role,
                ttl: None,
            })
            .await
            .expect_err("not an API token role");
        assert_eq!(err.code(), Code::InvalidArgument, "role {role}: {err:?}");
    }
    let count = admin
        .list_tokens(pb::ListTokensRequest {
            include_revoked: true,
        })
        .await
        .expect("list")
        .into_inner()
        .tokens
        .len();
    assert_eq!(count, listed.len(), "nothing created by refused calls");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_enrollments_never_pass_the_per_org_agent_limit() {
    trace_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = fast_config(dir.path());
    config.limits.max_agents_per_org = 5;
    let server = TestServer::start(config).await;
    let token = server.enrollment_token().await;
    // Thirty machines enroll at once: each enrollment's commit waits for a flush, the window
    // in which a check-then-insert limit lets several through.
    let attempts: Vec<_> = (0..30)
        .map(|i| {
            let (server, token) = (&server, &token);
            async move { enroll_with(server, token, &format!("host-{i}")).await }
        })
        .collect();
    let results = futures::future::join_all(attempts).await;
    let enrolled = results.iter().filter(|r| r.is_ok()).count();
    for result in &results {
        if let Err(err) = result {
            assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
        }
    }
    assert_eq!(enrolled, 5, "exactly the limit got in");
    let mut fleet = server.fleet().await;
    assert_eq!(agent_ids(&mut fleet).await.len(), 5);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrollment_beyond_the_per_org_agent_limit_is_refused() {
    trace_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = fast_config(dir.path());
    config.limits.max_agents_per_org = 2;
    let server = TestServer::start(config).await;
    let token = server.enrollment_token().await;
    let first = enroll_with(&server, &token, "one").await.expect("first");
    enroll_with(&server, &token, "two").await.expect("second");
    let err = enroll_with(&server, &token, "three")
        .await
        .expect_err("over the limit");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    // Re-enrolling a machine that is already counted (proving it with its credential) adds no
    // agent, so it is allowed.
    let again = server
        .agent_client(Some(&token))
        .await
        .enroll(pb::EnrollRequest {
            previous_credential: first.agent_credential.clone(),
            ..enroll_request("one", &[])
        })
        .await
        .expect("re-enroll")
        .into_inner();
    assert_eq!(again.agent_id, first.agent_id);
    let mut fleet = server.fleet().await;
    assert_eq!(agent_ids(&mut fleet).await.len(), 2);

    // The limit is per org.
    let acme = server.create_org("acme").await;
    let mut acme_admin = server.admin_as(Some(&acme.admin_secret)).await;
    let acme_token = enrollment_token(&mut acme_admin, Default::default()).await;
    for host in ["one", "two"] {
        let enrolled = enroll_with(&server, &acme_token.secret, host)
            .await
            .expect("acme has its own budget");
        assert_eq!(enrolled.org_id, "acme");
    }
    let err = enroll_with(&server, &acme_token.secret, "three")
        .await
        .expect_err("acme over the limit");
    assert_eq!(err.code(), Code::ResourceExhausted);
    server.stop().await;
}
