//! Re-enrolling costs nothing that stays: the replaced credential is deleted, from the cache
//! and the store, and one hardware id can only re-enroll so fast.

use tether_server::store::{SledStore, Store as _};

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reenrolling_keeps_one_credential_and_is_rate_limited_per_hardware_id() {
    let (server, dir) = start().await;
    let token = server.enrollment_token().await;
    let info = machine("phoenix", "hw-phoenix");
    let first = enroll(&server, &token, &info, None).await.expect("enroll");

    // The default burst: ten re-enrollments of one hardware id, each replacing the credential.
    let mut current = first.clone();
    for n in 0..tether_server::config::DEFAULT_REENROLL_BURST {
        let again = enroll(&server, &token, &info, Some(&current.agent_credential))
            .await
            .unwrap_or_else(|e| panic!("re-enrollment {n}: {e:?}"));
        assert_eq!(again.agent_id, first.agent_id);
        current = again;
    }
    // The next one is told when to come back.
    let status = enroll(&server, &token, &info, Some(&current.agent_credential))
        .await
        .expect_err("over the rate");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let delay = tether_proto::refusal::retry_after(&status).expect("a retry delay");
    assert!(
        delay > Duration::ZERO && delay <= Duration::from_secs(6),
        "{delay:?}"
    );
    assert_eq!(
        tether_tests::limit_violations(&server.metrics, "reenroll_per_hardware_id"),
        1
    );
    // Other machines are not slowed down by it.
    enroll(&server, &token, &machine("other", "hw-other"), None)
        .await
        .expect("another hardware id enrolls");
    // The refused attempt cost nothing: the current credential still works.
    connect(&server, &current, &info, "x")
        .await
        .expect("the current credential works");

    // Of eleven credentials issued to the agent, the store holds one: the current one.
    let current_id = tether_tests::token_id(&current.agent_credential).to_owned();
    server.stop().await;
    let store = SledStore::open(&dir.path().join("store")).expect("open the store");
    let credentials: Vec<String> = store
        .load()
        .expect("load")
        .tokens
        .into_iter()
        .filter(|t| t.agent.as_ref().map(|a| a.as_str()) == Some(first.agent_id.as_str()))
        .map(|t| t.id.as_str().to_owned())
        .collect();
    assert_eq!(credentials, [current_id]);
}
