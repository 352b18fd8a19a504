//! What API tokens an admin may create and manage: bounded lifetimes, and the server-admin
//! token out of reach of an org admin.

use super::*;

const YEAR: Duration = Duration::from_secs(365 * 86_400);

fn ttl(d: Duration) -> Option<prost_types::Duration> {
    Some(prost_types::Duration::try_from(d).expect("fits the wire"))
}

/// Token lifetimes beyond ten years (which could end after the year 9999, where no client can
/// print them) are refused with INVALID_ARGUMENT, for API and enrollment tokens alike; ten years
/// is accepted, and every expiry listed is a time the CLI prints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_lifetimes_are_bounded_to_ten_years() {
    trace_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(fast_config(dir.path())).await;
    let mut admin = server.admin().await;
    let too_long = [
        11 * YEAR,
        9_000 * YEAR,
        Duration::from_secs(i64::MAX as u64),
    ];
    for d in too_long {
        let err = admin
            .create_token(pb::CreateTokenRequest {
                name: "forever".to_owned(),
                role: pb::Role::Viewer as i32,
                ttl: ttl(d),
            })
            .await
            .expect_err("ttl too long");
        assert_eq!(err.code(), Code::InvalidArgument, "{d:?}: {err:?}");
        let err = admin
            .create_enrollment_token(pb::CreateEnrollmentTokenRequest {
                ttl: ttl(d),
                ..Default::default()
            })
            .await
            .expect_err("ttl too long");
        assert_eq!(err.code(), Code::InvalidArgument, "{d:?}: {err:?}");
    }
    let ten_years = 10 * YEAR;
    let token = admin
        .create_token(pb::CreateTokenRequest {
            name: "decade".to_owned(),
            role: pb::Role::Viewer as i32,
            ttl: ttl(ten_years),
        })
        .await
        .expect("ten years")
        .into_inner()
        .token
        .expect("token");
    let expires = SystemTime::try_from(token.expires_at.expect("expiry")).expect("a time");
    assert!(expires > SystemTime::now() + ten_years - Duration::from_secs(60));
    admin
        .create_enrollment_token(pb::CreateEnrollmentTokenRequest {
            ttl: ttl(ten_years),
            ..Default::default()
        })
        .await
        .expect("ten years");

    // Nothing was created by the refused calls; the CLI lists what was.
    let listing = server
        .cli(&["tokens", "list", "-o", "json"])
        .await
        .expect("tetherctl tokens list");
    let tokens: Vec<serde_json::Value> = serde_json::from_str(&listing).expect("json");
    assert_eq!(tokens.len(), 2, "{listing}");
    assert!(!listing.contains("forever"), "{listing}");
    server
        .cli(&["enroll-token", "list"])
        .await
        .expect("tetherctl enroll-token list");
    server.stop().await;
}

/// An admin of org `default` neither sees nor revokes the server-admin (bootstrap) token: to it
/// the token does not exist (NOT_FOUND, like an absent one), and the server admin keeps working.
/// The server admin sees and may revoke its own token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_server_admin_sees_and_revokes_the_server_admin_token() {
    trace_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(fast_config(dir.path())).await;
    let bootstrap_id = token_id(&server.admin_token).to_owned();
    let mut root = server.admin().await;
    let ops = create_token(&mut root, "ops", pb::Role::Admin, None).await;
    let mut ops_admin = server.admin_as(Some(&ops.secret)).await;

    let listed = ops_admin
        .list_tokens(pb::ListTokensRequest {
            include_revoked: true,
        })
        .await
        .expect("an org admin lists tokens")
        .into_inner()
        .tokens;
    assert!(
        listed
            .iter()
            .all(|t| t.token_id != bootstrap_id && !t.server_admin),
        "{listed:?}"
    );
    assert!(listed.iter().any(|t| t.name == "ops"));

    let hidden = ops_admin
        .revoke_token(pb::RevokeTokenRequest {
            token_id: bootstrap_id.clone(),
        })
        .await
        .expect_err("the server-admin token is out of reach");
    let absent = ops_admin
        .revoke_token(pb::RevokeTokenRequest {
            token_id: "0123456789abcdef".to_owned(),
        })
        .await
        .expect_err("absent");
    assert_eq!(hidden.code(), Code::NotFound, "{hidden:?}");
    assert_eq!(absent.code(), Code::NotFound, "{absent:?}");
    let err = server
        .cli_as(&ops.secret, &["tokens", "revoke", &bootstrap_id])
        .await
        .expect_err("the CLI gets the same answer");
    assert!(matches!(err, tetherctl::CliError::NotFound(_)), "{err:?}");

    // The server admin is untouched, sees itself, and may revoke another admin's token.
    root.list_orgs(pb::ListOrgsRequest {})
        .await
        .expect("the server admin still works");
    let listed = root
        .list_tokens(pb::ListTokensRequest::default())
        .await
        .expect("list")
        .into_inner()
        .tokens;
    assert!(
        listed
            .iter()
            .any(|t| t.token_id == bootstrap_id && t.server_admin),
        "{listed:?}"
    );
    let ops_id = token_id(&ops.secret).to_owned();
    root.revoke_token(pb::RevokeTokenRequest { token_id: ops_id })
        .await
        .expect("the server admin revokes an org admin");
    server.stop().await;
}
