//! A hardware id is never proof: taking over an agent needs its credential or an admin's
//! permission. Cloned images become separate, flagged agents.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hardware_id_alone_never_takes_over_an_agent() {
    let (server, _dir) = start().await;
    let prod = token(&server, &[("env", "prod")], false).await;
    let db = machine("db-1", "hw-db-1");
    let victim = enroll(&server, &prod, &db, None).await.expect("enroll");
    let (mut session, _) = connect(&server, &victim, &db, "db-1-agent")
        .await
        .expect("session");
    session.send_samples([1, 2, 3]).await;
    session.wait_ack(3).await.expect("ack");
    drop(session.close());
    server
        .wait_status(&victim.agent_id, pb::AgentStatus::Offline)
        .await;

    // Hardware ids are visible to any viewer.
    let mut admin = server.admin().await;
    let viewer = tether_tests::create_token(&mut admin, "viewer", pb::Role::Viewer, None).await;
    let seen = server
        .fleet_as(Some(&viewer.secret))
        .await
        .get_agent(pb::GetAgentRequest {
            agent_id: victim.agent_id.clone(),
        })
        .await
        .expect("a viewer reads the agent")
        .into_inner()
        .agent
        .and_then(|a| a.system_info)
        .expect("system info")
        .hardware_id;
    assert_eq!(seen, "hw-db-1");
    let mut events = watch(&server).await;

    // An attacker with any enrollment token of the org claims that hardware id.
    let dev = token(&server, &[("env", "dev")], false).await;
    let attacker = enroll(&server, &dev, &machine("evil", &seen), None)
        .await
        .expect("enrolls, as a new agent");
    assert_ne!(attacker.agent_id, victim.agent_id, "no takeover");

    // The victim keeps its id, its pinned label, its history and its working credential.
    let kept = get(&server, &victim.agent_id).await.expect("victim");
    assert_eq!(kept.labels, labels(&[("env", "prod")]));
    assert_eq!(kept.name, "db-1");
    assert_eq!(kept.last_durable_seq, 3);
    let (_session, welcome) = connect(&server, &victim, &db, "db-1-agent")
        .await
        .expect("the real machine still connects");
    assert_eq!(welcome.last_durable_seq, 3, "its history is its own");

    // Both are flagged, and an event, an audit record and a metric say so.
    let newcomer = get(&server, &attacker.agent_id).await.expect("attacker");
    assert!(kept.duplicate_hardware_id && newcomer.duplicate_hardware_id);
    assert_eq!(newcomer.labels, labels(&[("env", "dev")]));
    let flagged: BTreeSet<String> = list_all(&mut server.fleet().await, Default::default())
        .await
        .into_iter()
        .filter(|a| a.duplicate_hardware_id)
        .map(|a| a.agent_id)
        .collect();
    assert_eq!(
        flagged,
        BTreeSet::from([victim.agent_id.clone(), attacker.agent_id.clone()])
    );
    let seen = watch_until(&mut events, "the duplicate's events", |seen| {
        seen.iter().any(|e| {
            is_event(e, pb::AgentEventKind::FlagsChanged, &victim.agent_id)
                && e.agent.as_ref().is_some_and(|a| a.duplicate_hardware_id)
        }) && seen.iter().any(|e| {
            is_event(e, pb::AgentEventKind::Registered, &attacker.agent_id)
                && e.agent.as_ref().is_some_and(|a| a.duplicate_hardware_id)
        })
    })
    .await;
    assert!(!seen.is_empty());
    let record = audit(&admin)
        .await
        .into_iter()
        .rfind(|e| e.method.ends_with("/Enroll") && e.target == attacker.agent_id)
        .expect("the enrollment is audited");
    assert!(
        record.message.contains("duplicate_hardware_id")
            && record.message.contains(&victim.agent_id),
        "{record:?}"
    );
    assert_eq!(enrollments(&server, "duplicate_hardware_id"), 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloned_images_become_two_flagged_agents_that_never_fight() {
    let (server, _dir) = start().await;
    let token = server.enrollment_token().await;
    let spawn = |hostname: &str, own: Option<&str>| {
        let dir = tempfile::tempdir().expect("state dir");
        let mut config = agent_config(&server.url, dir.path(), &[], Some(token.clone()));
        config.hardware_id = own.map(str::to_owned);
        TestAgent::spawn_machine(config, dir, hostname, "golden-image-machine-id")
    };
    let a = spawn("clone-a", None);
    let a_id = a.id().await;
    server.wait_status(&a_id, pb::AgentStatus::Online).await;
    let b = spawn("clone-b", None);
    let b_id = b.id().await;
    server.wait_status(&b_id, pb::AgentStatus::Online).await;
    assert_ne!(a_id, b_id, "two machines, two agents");

    // Both flagged, both stay connected: neither replaces the other's session.
    for id in [&a_id, &b_id] {
        let agent = get(&server, id).await.expect("agent");
        assert!(agent.duplicate_hardware_id, "{id}");
    }
    let acked = (
        a.handle.stats.samples_acked_seq(),
        b.handle.stats.samples_acked_seq(),
    );
    eventually("both clones to keep reporting", || async {
        (a.handle.stats.samples_acked_seq() >= acked.0 + 3
            && b.handle.stats.samples_acked_seq() >= acked.1 + 3)
            .then_some(())
    })
    .await;
    assert_eq!(a.handle.stats.sessions_started(), 1, "never replaced");
    assert_eq!(b.handle.stats.sessions_started(), 1, "never replaced");
    assert_eq!(conflicts(&server, "flagged"), 0);

    // A clone given its own hardware id (--hardware-id) is no duplicate.
    let c = spawn("clone-c", Some("clone-c-own-id"));
    let c_id = c.id().await;
    let agent = server.wait_status(&c_id, pb::AgentStatus::Online).await;
    assert!(!agent.duplicate_hardware_id);
    assert_eq!(
        agent.system_info.map(|s| s.hardware_id).as_deref(),
        Some("clone-c-own-id")
    );
    for agent in [a, b, c] {
        agent.stop().await;
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_may_allow_a_reclaim_once_and_pinned_labels_are_never_dropped() {
    let (server, _dir) = start().await;
    let prod = token(&server, &[("env", "prod"), ("team", "db")], false).await;
    let db = machine("db-2", "hw-db-2");
    let original = enroll(&server, &prod, &db, None).await.expect("enroll");
    let mut admin = server.admin().await;

    // The machine was reinstalled and lost its state: an admin allows the reclaim.
    let granted = admin
        .allow_agent_reclaim(pb::AllowAgentReclaimRequest {
            agent_id: original.agent_id.clone(),
            ttl: None,
        })
        .await
        .expect("allow reclaim")
        .into_inner();
    assert!(granted.expires_at.is_some());
    let dev = token(&server, &[("env", "dev"), ("rack", "7")], false).await;
    let reclaimed = enroll(&server, &dev, &db, None).await.expect("reclaim");
    assert_eq!(reclaimed.agent_id, original.agent_id, "the same agent");
    let agent = get(&server, &original.agent_id).await.expect("agent");
    assert_eq!(
        agent.labels,
        labels(&[("env", "prod"), ("team", "db"), ("rack", "7")]),
        "pinned labels kept (env stays prod); the new token's added"
    );
    assert!(!agent.duplicate_hardware_id);
    let old = refused(&server, &original, &db, "x").await;
    assert_eq!(old.code(), Code::Unauthenticated, "{old:?}");
    connect(&server, &reclaimed, &db, "x")
        .await
        .expect("the new credential works");

    // The permission was used: the next enrollment of that hardware id is a new agent.
    let again = enroll(&server, &dev, &db, None).await.expect("enroll");
    assert_ne!(again.agent_id, original.agent_id);
    assert!(
        get(&server, &again.agent_id)
            .await
            .expect("agent")
            .duplicate_hardware_id
    );

    // A token created with allow_reclaim takes over the one disconnected agent with the
    // hardware id, and nothing when that is ambiguous.
    let lone = machine("web-9", "hw-web-9");
    let reclaiming = token(&server, &[], true).await;
    let first = enroll(&server, &prod, &lone, None).await.expect("enroll");
    let taken = enroll(&server, &reclaiming, &lone, None)
        .await
        .expect("reclaim");
    assert_eq!(taken.agent_id, first.agent_id);
    let ambiguous = enroll(&server, &reclaiming, &db, None)
        .await
        .expect("enroll");
    assert!(
        ![&original.agent_id, &again.agent_id].contains(&&ambiguous.agent_id),
        "two agents share hw-db-2: reclaiming either would be a guess"
    );

    // Every step is audited, and counted.
    let trail = audit(&admin).await;
    assert!(
        trail
            .iter()
            .any(|e| e.method.ends_with("/AllowAgentReclaim")
                && e.target == original.agent_id
                && e.outcome == pb::AuditOutcome::Succeeded as i32)
    );
    assert!(trail.iter().any(|e| e.method.ends_with("/Enroll")
        && e.target == original.agent_id
        && e.message.contains("reclaim allowed by an admin")));
    assert_eq!(enrollments(&server, "admin_reclaim"), 1);
    assert_eq!(enrollments(&server, "token_reclaim"), 1);

    // An admin cannot allow a reclaim for a longer time than the server allows, nor for an
    // agent that does not exist.
    let status = admin
        .allow_agent_reclaim(pb::AllowAgentReclaimRequest {
            agent_id: original.agent_id.clone(),
            ttl: Some(prost_types::Duration {
                seconds: 8 * 24 * 3600,
                nanos: 0,
            }),
        })
        .await
        .expect_err("too long");
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = admin
        .allow_agent_reclaim(pb::AllowAgentReclaimRequest {
            agent_id: "no-such-agent".to_owned(),
            ttl: None,
        })
        .await
        .expect_err("unknown");
    assert_eq!(status.code(), Code::NotFound);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_allows_a_reclaim_and_creates_reclaiming_tokens() {
    let (server, _dir) = start().await;
    let token = server.enrollment_token().await;
    let info = machine("lab-1", "hw-lab-1");
    let enrolled = enroll(&server, &token, &info, None).await.expect("enroll");
    let out = server
        .cli(&[
            "agents",
            "allow-reclaim",
            &enrolled.agent_id,
            "--ttl",
            "30m",
        ])
        .await
        .expect("allow-reclaim");
    assert!(
        out.contains(&enrolled.agent_id) && out.contains("once"),
        "{out}"
    );
    let again = enroll(&server, &token, &info, None).await.expect("reclaim");
    assert_eq!(again.agent_id, enrolled.agent_id);

    let out = server
        .cli(&["enroll-token", "create", "--allow-reclaim", "-o", "json"])
        .await
        .expect("create");
    let created: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(
        created["token"]["allow_reclaim"],
        serde_json::Value::Bool(true),
        "{out}"
    );
    let err = server
        .cli(&["agents", "allow-reclaim", "no-such-agent"])
        .await
        .expect_err("unknown agent");
    assert!(err.to_string().contains("no-such-agent"), "{err}");
    server.stop().await;
}
