//! `FleetService` and `AdminService`: bad arguments and the wrong credentials.

use super::*;

// === FleetService ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_without_a_valid_token_is_unauthenticated() {
    let f = Fixture::new().await;
    let unknown = unknown_token();
    let tampered_admin = tampered(&f.server.admin_token);
    for (what, token) in [
        ("no token", None),
        ("garbage token", Some("garbage")),
        ("unknown token", Some(unknown.as_str())),
        ("tampered admin token", Some(tampered_admin.as_str())),
    ] {
        let mut fleet = f.server.fleet_as(token).await;
        let status = refused(
            what,
            fleet.list_agents(pb::ListAgentsRequest::default()).await,
        );
        assert_code(what, &status, Code::Unauthenticated);
        let status = refused(
            what,
            fleet
                .get_agent(pb::GetAgentRequest {
                    agent_id: f.id.clone(),
                })
                .await,
        );
        assert_code(what, &status, Code::Unauthenticated);
    }
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_with_agent_or_enrollment_token_is_denied() {
    let f = Fixture::new().await;
    let enrollment = f.server.enrollment_token().await;
    for (what, token) in [
        ("agent credential", f.credential.as_str()),
        ("enrollment token", enrollment.as_str()),
    ] {
        let mut fleet = f.server.fleet_as(Some(token)).await;
        let status = refused(
            what,
            fleet.list_agents(pb::ListAgentsRequest::default()).await,
        );
        assert_code(what, &status, Code::PermissionDenied);
        let status = refused(
            what,
            fleet
                .get_agent(pb::GetAgentRequest {
                    agent_id: f.id.clone(),
                })
                .await,
        );
        assert_code(what, &status, Code::PermissionDenied);
        let status = refused(
            what,
            fleet.get_fleet_summary(pb::GetFleetSummaryRequest {}).await,
        );
        assert_code(what, &status, Code::PermissionDenied);
        let status = refused(
            what,
            fleet.watch_agents(pb::WatchAgentsRequest::default()).await,
        );
        assert_code(what, &status, Code::PermissionDenied);
    }
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_agents_with_bad_arguments() {
    let f = Fixture::new().await;
    let mut fleet = f.server.fleet().await;
    let real_token_text = {
        // A page token of the right shape but another version, and one that is not hex.
        let bad_version: String = "2:abc".bytes().map(|b| format!("{b:02x}")).collect();
        vec!["garbage".to_owned(), "zz".to_owned(), bad_version]
    };
    for page_token in real_token_text {
        let what = format!("page_token {page_token:?}");
        let status = refused(
            &what,
            fleet
                .list_agents(pb::ListAgentsRequest {
                    page_token,
                    ..Default::default()
                })
                .await,
        );
        assert_code(&what, &status, Code::InvalidArgument);
    }
    for page_size in [-1, i32::MIN] {
        let what = format!("page_size {page_size}");
        let status = refused(
            &what,
            fleet
                .list_agents(pb::ListAgentsRequest {
                    page_size,
                    ..Default::default()
                })
                .await,
        );
        assert_code(&what, &status, Code::InvalidArgument);
    }
    for selector in [
        "=prod",
        "env=prod,,tier",
        "bad key=x",
        "env=a b",
        "!",
        "é",
        ",",
    ] {
        let what = format!("selector {selector:?}");
        let status = refused(
            &what,
            fleet
                .list_agents(pb::ListAgentsRequest {
                    label_selector: selector.to_owned(),
                    ..Default::default()
                })
                .await,
        );
        assert_code(&what, &status, Code::InvalidArgument);
        let status = refused(
            &what,
            fleet
                .watch_agents(pb::WatchAgentsRequest {
                    label_selector: selector.to_owned(),
                    ..Default::default()
                })
                .await,
        );
        assert_code(&format!("watch {what}"), &status, Code::InvalidArgument);
    }
    for status_number in [42, -1] {
        let what = format!("status {status_number}");
        let status = refused(
            &what,
            fleet
                .list_agents(pb::ListAgentsRequest {
                    statuses: vec![pb::AgentStatus::Online as i32, status_number],
                    ..Default::default()
                })
                .await,
        );
        assert_code(&what, &status, Code::InvalidArgument);
    }
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_agent_with_bad_ids() {
    let f = Fixture::new().await;
    let status = refused("unknown id", f.server.get_agent(UNKNOWN_ID).await);
    assert_code("unknown id", &status, Code::NotFound);
    for id in ["../x", "UPPER", "", "a b", "a/b", &"a".repeat(65)] {
        let what = format!("id {id:?}");
        let status = refused(&what, f.server.get_agent(id).await);
        assert_code(&what, &status, Code::InvalidArgument);
    }
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_metrics_with_bad_arguments() {
    let f = Fixture::new().await;
    let mut fleet = f.server.fleet().await;
    let now = SystemTime::now();
    let ts = |t: SystemTime| Some(prost_types::Timestamp::from(t));
    let hour_ago = now - Duration::from_secs(3600);

    let status = refused(
        "start after end",
        fleet
            .get_metrics(pb::GetMetricsRequest {
                agent_id: f.id.clone(),
                start: ts(now),
                end: ts(hour_ago),
                step: None,
            })
            .await,
    );
    assert_code("start after end", &status, Code::InvalidArgument);

    // One hour in steps of 100 ms is 36,000 points, above the 10,000 the server allows.
    let status = refused(
        "step too small",
        fleet
            .get_metrics(pb::GetMetricsRequest {
                agent_id: f.id.clone(),
                start: ts(hour_ago),
                end: ts(now),
                step: Some(prost_types::Duration {
                    seconds: 0,
                    nanos: 100_000_000,
                }),
            })
            .await,
    );
    assert_code("step too small", &status, Code::InvalidArgument);

    let status = refused(
        "negative step",
        fleet
            .get_metrics(pb::GetMetricsRequest {
                agent_id: f.id.clone(),
                start: ts(hour_ago),
                end: ts(now),
                step: Some(prost_types::Duration {
                    seconds: -60,
                    nanos: 0,
                }),
            })
            .await,
    );
    assert_code("negative step", &status, Code::InvalidArgument);

    let status = refused(
        "invalid timestamp",
        fleet
            .get_metrics(pb::GetMetricsRequest {
                agent_id: f.id.clone(),
                start: Some(prost_types::Timestamp {
                    seconds: 0,
                    nanos: -5,
                }),
                end: ts(now),
                step: None,
            })
            .await,
    );
    assert_code("invalid timestamp", &status, Code::InvalidArgument);

    let status = refused(
        "unknown agent",
        fleet
            .get_metrics(pb::GetMetricsRequest {
                agent_id: UNKNOWN_ID.to_owned(),
                ..Default::default()
            })
            .await,
    );
    assert_code("unknown agent", &status, Code::NotFound);

    let status = refused(
        "malformed agent id",
        fleet
            .get_metrics(pb::GetMetricsRequest {
                agent_id: "../x".to_owned(),
                ..Default::default()
            })
            .await,
    );
    assert_code("malformed agent id", &status, Code::InvalidArgument);
    f.finish().await;
}

// === AdminService ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_unknown_or_malformed_enrollment_token() {
    let f = Fixture::new().await;
    let mut admin = f.server.admin().await;
    let status = refused(
        "unknown token id",
        admin
            .revoke_enrollment_token(pb::RevokeEnrollmentTokenRequest {
                token_id: UNKNOWN_ID.to_owned(),
            })
            .await,
    );
    assert_code("unknown token id", &status, Code::NotFound);
    for token_id in ["", "../x", "UPPER"] {
        let what = format!("token id {token_id:?}");
        let status = refused(
            &what,
            admin
                .revoke_enrollment_token(pb::RevokeEnrollmentTokenRequest {
                    token_id: token_id.to_owned(),
                })
                .await,
        );
        assert_code(&what, &status, Code::InvalidArgument);
    }
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_rpcs_need_an_admin_token() {
    let f = Fixture::new().await;
    let (token_id, secret) = f
        .create_token(pb::CreateEnrollmentTokenRequest::default())
        .await;
    let unknown = unknown_token();
    for (what, token, code) in [
        (
            "agent credential",
            Some(f.credential.as_str()),
            Code::PermissionDenied,
        ),
        (
            "enrollment token",
            Some(secret.as_str()),
            Code::PermissionDenied,
        ),
        ("no token", None, Code::Unauthenticated),
        (
            "unknown token",
            Some(unknown.as_str()),
            Code::Unauthenticated,
        ),
    ] {
        let mut admin = f.admin_as(token).await;
        let status = refused(
            what,
            admin
                .create_enrollment_token(pb::CreateEnrollmentTokenRequest::default())
                .await,
        );
        assert_code(what, &status, code);
        let status = refused(
            what,
            admin
                .list_enrollment_tokens(pb::ListEnrollmentTokensRequest {})
                .await,
        );
        assert_code(what, &status, code);
        let status = refused(
            what,
            admin
                .revoke_enrollment_token(pb::RevokeEnrollmentTokenRequest {
                    token_id: token_id.clone(),
                })
                .await,
        );
        assert_code(what, &status, code);
    }
    // Nothing was created or revoked by the refused calls.
    let tokens = f
        .server
        .admin()
        .await
        .list_enrollment_tokens(pb::ListEnrollmentTokensRequest {})
        .await
        .expect("list")
        .into_inner()
        .tokens;
    let record = tokens
        .iter()
        .find(|t| t.token_id == token_id)
        .expect("token listed");
    assert!(!record.revoked);
    // The fixture's enrollment token and this one.
    assert_eq!(tokens.len(), 2, "{tokens:?}");
    f.finish().await;
}
