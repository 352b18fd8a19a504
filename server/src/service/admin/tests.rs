//! `admin.rs`'s unit tests: a new token's expiry (at most ten years, never after the year
//! 9999) and who may manage the server admin's token.

use std::time::Duration;

use super::*;
use crate::domain::OrgId;

#[test]
fn expiries_stay_within_ten_years_and_the_year_9999() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    assert_eq!(expiry(None, now).expect("no ttl"), None);
    assert_eq!(
        expiry(Some(MAX_TTL), now).expect("ten years"),
        Some(now + MAX_TTL)
    );
    for ttl in [MAX_TTL + Duration::from_secs(1), Duration::MAX] {
        let err = expiry(Some(ttl), now).expect_err("too long");
        assert_eq!(
            tonic::Status::from(err).code(),
            tonic::Code::InvalidArgument
        );
    }
    // A clock near the end of the range: a short TTL may still end after 9999.
    let late = SystemTime::UNIX_EPOCH + LATEST_EXPIRY - Duration::from_secs(60);
    expiry(Some(Duration::from_secs(60)), late).expect("the last second");
    let err = expiry(Some(Duration::from_secs(61)), late).expect_err("after 9999");
    assert_eq!(
        tonic::Status::from(err).code(),
        tonic::Code::InvalidArgument
    );
}

#[test]
fn only_a_server_admin_manages_the_server_admin_token() {
    let now = SystemTime::now();
    let org = OrgId::new("default");
    let (mut bootstrap, _) = auth::issue(org.clone(), Role::Admin, "boot".into(), now);
    bootstrap.server_admin = true;
    let (other, _) = auth::issue(org.clone(), Role::Viewer, "v".into(), now);
    let caller = |server_admin| auth::Caller {
        org: org.clone(),
        token: TokenId::new("c"),
        principal: auth::Principal::User {
            name: "c".into(),
            role: Role::Admin,
            server_admin,
        },
    };
    assert!(may_manage(&caller(true), &bootstrap));
    assert!(!may_manage(&caller(false), &bootstrap));
    assert!(may_manage(&caller(false), &other));
}
