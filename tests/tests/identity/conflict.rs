//! Two machines holding one agent credential (a copied state directory): their sessions
//! replace each other until the server flags the agent and refuses the newcomer. The machine
//! holding the session keeps working; a restart is never taken for a conflict.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_of_two_machines_replacing_each_other_are_flagged_then_refused() {
    let (server, _dir) = start().await;
    let token = server.enrollment_token().await;
    let (orig, copy) = (machine("orig", "hw-orig"), machine("copy", "hw-copy"));
    let enrolled = enroll(&server, &token, &orig, None).await.expect("enroll");
    let id = &enrolled.agent_id;
    let mut events = watch(&server).await;

    // The original holds the session; the copy replaces it: as far as anyone can tell, the
    // machine was reinstalled and restarted. Not flagged.
    let _first = connect(&server, &enrolled, &orig, "aaaa")
        .await
        .expect("orig");
    let _second = connect(&server, &enrolled, &copy, "bbbb")
        .await
        .expect("copy");
    assert!(!get(&server, id).await.expect("agent").identity_conflict);

    // The original comes back: two live machines. Flagged, and still let in a few times.
    let _third = connect(&server, &enrolled, &orig, "aaaa")
        .await
        .expect("orig");
    let agent = get(&server, id).await.expect("agent");
    assert!(agent.identity_conflict);
    for host in ["\"orig\"", "\"copy\"", "hw-orig", "hw-copy"] {
        assert!(
            agent.identity_conflict_detail.contains(host),
            "{host} in {:?}",
            agent.identity_conflict_detail
        );
    }
    let _fourth = connect(&server, &enrolled, &copy, "bbbb")
        .await
        .expect("copy");
    let (mut incumbent, welcome) = connect(&server, &enrolled, &orig, "aaaa")
        .await
        .expect("orig");
    assert_eq!(conflicts(&server, "flagged"), 3);

    // Past three conflicting replacements, the newcomer is refused, with what to do.
    for attempt in 0..2 {
        let refused = refused(&server, &enrolled, &copy, "bbbb").await;
        assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
        assert_eq!(
            tether_proto::refusal::refusal(&refused),
            Some(tether_proto::refusal::Refusal::IdentityConflict),
            "attempt {attempt}"
        );
        assert!(
            refused
                .message()
                .contains("two machines share this agent's credential")
                && refused.message().contains("--enroll-token"),
            "{refused:?}"
        );
    }
    assert_eq!(conflicts(&server, "refused"), 2);

    // The machine holding the session keeps it, undisturbed.
    let agent = get(&server, id).await.expect("agent");
    assert_eq!(agent.session_id, welcome.session_id);
    assert_eq!(agent.status, pb::AgentStatus::Online as i32);
    incumbent.send_samples([1, 2]).await;
    assert_eq!(incumbent.wait_ack(2).await.expect("ack"), 2);

    // Listed, announced and audited.
    let listed = list_all(&mut server.fleet().await, Default::default()).await;
    assert!(
        listed
            .iter()
            .any(|a| &a.agent_id == id && a.identity_conflict)
    );
    watch_until(&mut events, "the conflict flag's event", |seen| {
        seen.iter().any(|e| {
            is_event(e, pb::AgentEventKind::FlagsChanged, id)
                && e.agent.as_ref().is_some_and(|a| a.identity_conflict)
        })
    })
    .await;
    let trail: Vec<pb::AuditEvent> = audit(&server.admin().await)
        .await
        .into_iter()
        .filter(|e| e.method.ends_with("/Connect") && &e.target == id)
        .collect();
    assert!(
        trail
            .iter()
            .any(|e| e.outcome == pb::AuditOutcome::Succeeded as i32
                && e.message.starts_with("identity_conflict")),
        "{trail:?}"
    );
    // The conflicts let in are audited once per minute; each refusal is audited within the
    // credential's refusal budget, like every other refusal.
    let (let_in, refused): (Vec<_>, Vec<_>) = trail
        .iter()
        .partition(|e| e.outcome == pb::AuditOutcome::Succeeded as i32);
    assert_eq!(let_in.len(), 1, "{trail:?}");
    assert_eq!(refused.len(), 2, "{trail:?}");
    assert!(
        refused
            .iter()
            .all(|e| e.outcome == pb::AuditOutcome::Failed as i32
                && e.status_code == Code::FailedPrecondition as i32),
        "{trail:?}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_and_reconnects_are_not_identity_conflicts() {
    let (server, _dir) = start().await;
    let token = server.enrollment_token().await;
    let host = machine("steady", "hw-steady");
    let enrolled = enroll(&server, &token, &host, None).await.expect("enroll");
    // A process reconnecting over a half-open stream, then new processes (restarts) replacing
    // the previous one's session, which is never heard from again.
    let mut sessions = Vec::new();
    for instance in ["p1", "p1", "p2", "p3", "p4", "p5", "p6"] {
        sessions.push(
            connect(&server, &enrolled, &host, instance)
                .await
                .expect("a restart is let in"),
        );
    }
    // An agent that sends no instance id (an older agent) is told apart by its boot time.
    let mut rebooted = host.clone();
    rebooted.boot_time = Some(prost_types::Timestamp::from(std::time::SystemTime::now()));
    connect(&server, &enrolled, &rebooted, "")
        .await
        .expect("after a reboot");
    connect(&server, &enrolled, &rebooted, "")
        .await
        .expect("reconnect");
    let agent = get(&server, &enrolled.agent_id).await.expect("agent");
    assert!(!agent.identity_conflict);
    assert_eq!(conflicts(&server, "flagged"), 0);
    assert_eq!(conflicts(&server, "refused"), 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copied_state_directory_is_refused_and_the_original_agent_keeps_working() {
    let (server, _dir) = start().await;
    let token = server.enrollment_token().await;
    let config = |dir: &tempfile::TempDir, token: Option<String>| {
        let mut config = agent_config(&server.url, dir.path(), &[], token);
        // A refused agent waits long; the test must see that it does.
        config.identity_conflict_backoff = Duration::from_secs(3600);
        config
    };
    let orig_dir = tempfile::tempdir().expect("state dir");
    let orig = TestAgent::spawn_machine(config(&orig_dir, Some(token)), orig_dir, "orig", "hw-1");
    let id = orig.id().await;
    server.wait_status(&id, pb::AgentStatus::Online).await;
    let mut events = watch(&server).await;

    // The state directory is copied to another machine, whose agent starts with it.
    let copy_dir = tempfile::tempdir().expect("state dir");
    let state = tether_agent::state::STATE_FILE_NAME;
    std::fs::copy(
        orig.state_dir.path().join(state),
        copy_dir.path().join(state),
    )
    .expect("copy the state file");
    let copy = TestAgent::spawn_machine(config(&copy_dir, None), copy_dir, "copy", "hw-2");

    // They replace each other a few times; then the newcomer is refused.
    eventually("a refusal", || async {
        (conflicts(&server, "refused") > 0).then_some(())
    })
    .await;
    let agent = get(&server, &id).await.expect("agent");
    assert!(agent.identity_conflict);
    let holder = agent.session_id.clone();
    let (survivor, refused) = if orig.handle.stats.session_id().as_deref() == Some(&holder) {
        (&orig, &copy)
    } else {
        (&copy, &orig)
    };
    assert_eq!(survivor.handle.stats.session_id(), Some(holder.clone()));

    // The machine holding the session keeps working on the same session; the refused one
    // waits (it does not try again, and does not exit).
    let failures = refused.handle.stats.session_failures();
    let acked = survivor.handle.stats.samples_acked_seq();
    eventually("the survivor to report on", || async {
        (survivor.handle.stats.samples_acked_seq() >= acked + 5).then_some(())
    })
    .await;
    let agent = get(&server, &id).await.expect("agent");
    assert_eq!(agent.session_id, holder, "never replaced again");
    assert_eq!(agent.status, pb::AgentStatus::Online as i32);
    assert_eq!(refused.handle.stats.session_failures(), failures);
    assert!(!refused.handle.stats.connected());
    assert!(!refused.handle.is_finished(), "a refused agent never exits");
    watch_until(&mut events, "the conflict flag's event", |seen| {
        seen.iter().any(|e| {
            is_event(e, pb::AgentEventKind::FlagsChanged, &id)
                && e.agent.as_ref().is_some_and(|a| a.identity_conflict)
        })
    })
    .await;
    orig.stop().await;
    copy.stop().await;
    server.stop().await;
}
