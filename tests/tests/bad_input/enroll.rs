//! `Enroll`: missing, spent, revoked or expired enrollment tokens, bad requests, concurrent
//! use.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enroll_without_an_enrollment_token() {
    let f = Fixture::new().await;
    let unknown = unknown_token();
    for (what, token) in [
        ("no token", None),
        ("garbage token", Some("garbage")),
        ("unknown token", Some(unknown.as_str())),
    ] {
        let status = refused(
            what,
            f.enroll_as(token, enroll_request("newcomer", &[])).await,
        );
        assert_code(what, &status, Code::Unauthenticated);
    }
    for (what, token) in [
        ("admin token", f.server.admin_token.as_str()),
        ("agent credential", f.credential.as_str()),
    ] {
        let status = refused(
            what,
            f.enroll_as(Some(token), enroll_request("newcomer", &[]))
                .await,
        );
        assert_code(what, &status, Code::PermissionDenied);
    }
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enroll_without_system_info() {
    let f = Fixture::new().await;
    let (token_id, secret) = f
        .create_token(pb::CreateEnrollmentTokenRequest::default())
        .await;
    let status = refused(
        "no system_info",
        f.enroll_as(
            Some(&secret),
            pb::EnrollRequest {
                system_info: None,
                ..enroll_request("newcomer", &[])
            },
        )
        .await,
    );
    assert_code("no system_info", &status, Code::InvalidArgument);
    assert_eq!(f.token_record(&token_id).await.use_count, 0);
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enroll_with_an_exhausted_token() {
    let mut f = Fixture::new().await;
    let (token_id, secret) = f
        .create_token(pb::CreateEnrollmentTokenRequest {
            max_uses: 1,
            ..Default::default()
        })
        .await;
    f.enroll_as(Some(&secret), enroll_request("first", &[]))
        .await
        .expect("first use");
    f.agents += 1;
    let status = refused(
        "second use",
        f.enroll_as(Some(&secret), enroll_request("second", &[]))
            .await,
    );
    assert_code("second use", &status, Code::PermissionDenied);
    assert_eq!(f.token_record(&token_id).await.use_count, 1);
    f.assert_stored("after the refused second use").await;
    f.finish().await;
}

/// Concurrent enrollments cannot use a limited token more often than allowed, and the use
/// count afterwards is exact (a lower count would let the token be used again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_enrollments_respect_max_uses() {
    const MAX_USES: u32 = 10;
    let mut f = Fixture::new().await;
    let (token_id, secret) = f
        .create_token(pb::CreateEnrollmentTokenRequest {
            max_uses: MAX_USES,
            ..Default::default()
        })
        .await;
    let client = f.server.agent_client(Some(&secret)).await;
    let attempts = (0..4 * MAX_USES).map(|i| {
        let mut client = client.clone();
        async move {
            client
                .enroll(enroll_request(&format!("racer-{i}"), &[]))
                .await
        }
    });
    let results = futures::future::join_all(attempts).await;
    let mut accepted = 0;
    for result in results {
        match result {
            Ok(_) => accepted += 1,
            Err(status) => assert_code("over max_uses", &status, Code::PermissionDenied),
        }
    }
    assert_eq!(accepted, MAX_USES);
    f.agents += MAX_USES;
    assert_eq!(
        f.token_record(&token_id).await.use_count,
        MAX_USES,
        "use count after {MAX_USES} concurrent enrollments"
    );
    let late = f
        .enroll_as(Some(&secret), enroll_request("latecomer", &[]))
        .await;
    if let Ok(response) = &late {
        f.agents += 1;
        panic!(
            "an exhausted token enrolled agent {} after the race",
            response.agent_id
        );
    }
    assert_code(
        "after the race",
        &refused("late", late),
        Code::PermissionDenied,
    );
    f.assert_stored("after the race").await;
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enroll_with_a_bad_name() {
    let f = Fixture::new().await;
    let (token_id, secret) = f
        .create_token(pb::CreateEnrollmentTokenRequest::default())
        .await;
    for (what, name) in [
        ("control character in name", "bad\nname".to_owned()),
        ("name too long", "n".repeat(257)),
    ] {
        let status = refused(
            what,
            f.enroll_as(
                Some(&secret),
                pb::EnrollRequest {
                    name,
                    ..enroll_request("newcomer", &[])
                },
            )
            .await,
        );
        assert_code(what, &status, Code::InvalidArgument);
    }
    assert_eq!(f.token_record(&token_id).await.use_count, 0);
    f.assert_stored("after refused enrollments").await;
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enroll_with_a_revoked_token() {
    let f = Fixture::new().await;
    let (token_id, secret) = f
        .create_token(pb::CreateEnrollmentTokenRequest::default())
        .await;
    f.server
        .admin()
        .await
        .revoke_enrollment_token(pb::RevokeEnrollmentTokenRequest {
            token_id: token_id.clone(),
        })
        .await
        .expect("revoke");
    let status = refused(
        "revoked token",
        f.enroll_as(Some(&secret), enroll_request("newcomer", &[]))
            .await,
    );
    assert_code("revoked token", &status, Code::PermissionDenied);
    let record = f.token_record(&token_id).await;
    assert!(record.revoked);
    assert_eq!(record.use_count, 0);
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enroll_with_an_expired_token() {
    let f = Fixture::new().await;
    let (token_id, secret) = f
        .create_token(pb::CreateEnrollmentTokenRequest {
            ttl: Some(prost_types::Duration {
                seconds: 1,
                nanos: 0,
            }),
            ..Default::default()
        })
        .await;
    let expires_at = f
        .token_record(&token_id)
        .await
        .expires_at
        .expect("a token with a ttl expires");
    let expires_at = SystemTime::try_from(expires_at).expect("valid expiry");
    eventually("the enrollment token to be past its expiry", || async {
        (SystemTime::now() > expires_at).then_some(())
    })
    .await;
    let status = refused(
        "expired token",
        f.enroll_as(Some(&secret), enroll_request("newcomer", &[]))
            .await,
    );
    assert_code("expired token", &status, Code::PermissionDenied);
    assert_eq!(f.token_record(&token_id).await.use_count, 0);
    f.finish().await;
}
