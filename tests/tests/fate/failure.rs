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

/// An event report whose commit fails ends the session UNAVAILABLE (as samples do): nothing of
/// it is stored or acknowledged, the agent re-sends it on its next session, and it is then
/// stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_event_commit_ends_the_session_unavailable_and_the_resend_is_stored_once() {
    trace_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, store) = TestServer::start_failing(fast_config(dir.path())).await;
    let (id, credential) = server.enroll("events-during-failure", &[]).await;
    let host = "events-during-failure";
    let (mut session, _) = RawSession::hello(&server, &id, &credential, host)
        .await
        .expect("session");
    let event = tether_tests::agent_event(1, "disk.failing", pb::EventSeverity::Error);

    store.fail(true);
    let status = session
        .report_events(vec![event.clone()])
        .await
        .expect_err("the commit fails");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("send again"), "{status:?}");

    store.fail(false);
    let (mut session, welcome) = eventually("a new session once the disk recovers", || async {
        RawSession::hello(&server, &id, &credential, host)
            .await
            .ok()
    })
    .await;
    assert_eq!(welcome.last_durable_event_seq, 0, "nothing was stored");
    let ack = session.report_events(vec![event]).await.expect("ack");
    assert_eq!(ack.durable_seq, 1);
    let listed = server
        .events()
        .await
        .list_events(pb::ListEventsRequest::default())
        .await
        .expect("list")
        .into_inner()
        .events;
    assert_eq!(listed.len(), 1, "stored once: {listed:?}");
    drop(session);
    server.stop().await;
}
