//! A commit that fails (an injected disk failure, through test-support) costs nothing that was
//! acknowledged and skips nothing in the audit chain.

use super::*;

/// While the store fails every commit: the agent's session ends with UNAVAILABLE and the agent
/// reconnects by itself, the admin's call answers INTERNAL, a viewer's refused call is still
/// audited. Once the disk recovers, the agent is acknowledged again, every sample acknowledged
/// to it is on disk, and the chain holds every audited call (the success before, the failure
/// and the refusal during, the success after), in order, and verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_commit_loses_nothing_acknowledged_and_skips_no_audit_record() {
    trace_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, store) = TestServer::start_failing(fast_config(dir.path())).await;
    let agent = server.spawn_agent("healthy", &[]).await;
    let agent_id = agent.id().await;
    let stats = agent.handle.stats.clone();
    eventually("the agent's first ack", || async {
        (stats.samples_acked_seq() > 0).then_some(())
    })
    .await;
    let mut admin = server.admin().await;
    let viewer = tether_tests::create_token(&mut admin, "viewer", pb::Role::Viewer, None).await;
    let viewer_id = viewer.token.expect("token").token_id;
    let sessions = stats.sessions_started();

    store.fail(true);
    let status = admin
        .create_token(pb::CreateTokenRequest {
            name: "during".into(),
            role: pb::Role::Viewer as i32,
            ttl: None,
        })
        .await
        .expect_err("the commit fails");
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    let status = server
        .admin_as(Some(&viewer.secret))
        .await
        .create_token(pb::CreateTokenRequest {
            name: "sneaky".into(),
            role: pb::Role::Admin as i32,
            ttl: None,
        })
        .await
        .expect_err("a viewer may not create tokens");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    eventually(
        "the agent's session to end and a new one to start",
        || async { (stats.sessions_started() > sessions).then_some(()) },
    )
    .await;
    let acked_during = stats.samples_acked_seq();
    assert!(server.metrics.writer_commit_failures.get() > 0);

    store.fail(false);
    eventually("the agent to be acknowledged again", || async {
        (stats.samples_acked_seq() > acked_during + 2).then_some(())
    })
    .await;
    let after = tether_tests::create_token(&mut admin, "after", pb::Role::Viewer, None).await;
    let after_id = after.token.expect("token").token_id;

    let events = eventually("the retried audit records to be committed", || async {
        let events = audit_of(&admin, CREATE_TOKEN).await;
        (events.len() >= 4).then_some(events)
    })
    .await;
    let seen: Vec<(String, i32, i32)> = events
        .iter()
        .map(|e| (e.target.clone(), e.outcome, e.status_code))
        .collect();
    let ok = pb::AuditOutcome::Succeeded as i32;
    assert_eq!(
        seen,
        [
            (viewer_id, ok, 0),
            (
                "during".to_owned(),
                pb::AuditOutcome::Failed as i32,
                Code::Internal as i32
            ),
            (
                String::new(),
                pb::AuditOutcome::Denied as i32,
                Code::PermissionDenied as i32
            ),
            (after_id, ok, 0),
        ]
    );
    server
        .cli(&["audit", "verify"])
        .await
        .expect("the audit chain verifies");

    agent.stop().await;
    let acked = stats.samples_acked_seq();
    let data_dir = server.data_dir.clone();
    server.stop().await;
    drop(store);
    let stored = stored_seqs(&data_dir, ORG, &agent_id);
    assert_eq!(
        missing(&stored, acked),
        Vec::<u64>::new(),
        "acked up to {acked}"
    );
}
