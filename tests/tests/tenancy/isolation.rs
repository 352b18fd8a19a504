//! Isolation: another org's objects are invisible and untouchable.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_orgs_objects_are_invisible_and_untouchable() {
    let world = World::new().await;
    let server = &world.server;
    let (acme, globex) = (&world.acme, &world.globex);
    // Acme has more agents than globex, so that counts tell the orgs apart.
    let extra = enroll(server, &acme.enrollment, "acme-extra").await;
    let mut acme_agents = acme.agents.clone();
    acme_agents.push(extra.agent_id.clone());
    let acme_ids: Vec<&String> = acme_agents
        .iter()
        .chain(&acme.tokens)
        .chain(&acme.enrollment_tokens)
        .collect();
    let is_acme = |id: &str| acme_ids.iter().any(|a| a.as_str() == id);

    let mut fleet = server.fleet_as(Some(&globex.viewer)).await;
    let mut admin = server.admin_as(Some(&globex.admin)).await;
    let mut acme_fleet = server.fleet_as(Some(&acme.viewer)).await;

    // Lists.
    let agents = fleet
        .list_agents(pb::ListAgentsRequest::default())
        .await
        .expect("list agents")
        .into_inner();
    let mut got: Vec<&str> = agents.agents.iter().map(|a| a.agent_id.as_str()).collect();
    got.sort_unstable();
    let mut want: Vec<&str> = globex.agents.iter().map(String::as_str).collect();
    want.sort_unstable();
    assert_eq!(got, want, "globex lists exactly its own agents");
    assert_eq!(agents.total_size as usize, globex.agents.len());
    assert!(agents.agents.iter().all(|a| a.org_id == GLOBEX));

    let summary = fleet
        .get_fleet_summary(pb::GetFleetSummaryRequest::default())
        .await
        .expect("summary")
        .into_inner();
    assert_eq!(summary.total as usize, globex.agents.len());
    let acme_summary = acme_fleet
        .get_fleet_summary(pb::GetFleetSummaryRequest::default())
        .await
        .expect("acme summary")
        .into_inner();
    assert_eq!(acme_summary.total as usize, acme_agents.len());

    let tokens = admin
        .list_tokens(pb::ListTokensRequest {
            include_revoked: true,
        })
        .await
        .expect("list tokens")
        .into_inner()
        .tokens;
    assert!(!tokens.is_empty());
    for token in &tokens {
        assert_eq!(token.org_id, GLOBEX, "{token:?}");
        assert!(!is_acme(&token.token_id), "acme's token listed: {token:?}");
    }
    let enrollment_tokens = admin
        .list_enrollment_tokens(pb::ListEnrollmentTokensRequest::default())
        .await
        .expect("list enrollment tokens")
        .into_inner()
        .tokens;
    assert_eq!(enrollment_tokens.len(), globex.enrollment_tokens.len());
    for token in &enrollment_tokens {
        assert_eq!(token.org_id, GLOBEX, "{token:?}");
        assert!(!is_acme(&token.token_id), "{token:?}");
    }
    let events = all_audit(&admin).await;
    assert!(!events.is_empty(), "globex's own trail is not empty");
    for event in &events {
        assert_eq!(event.org_id, GLOBEX, "{event:?}");
        assert!(
            !is_acme(&event.actor_token_id) && !is_acme(&event.target),
            "acme's object in globex's audit trail: {event:?}"
        );
    }

    // The watch: a snapshot of globex's agents only, then no event of acme's.
    let mut watch = fleet
        .watch_agents(pb::WatchAgentsRequest::default())
        .await
        .expect("watch")
        .into_inner();
    let mut snapshot = Vec::new();
    loop {
        let event = tokio::time::timeout(STREAM_WAIT, watch.message())
            .await
            .expect("a watch event in time")
            .expect("watch event")
            .expect("the watch stays open");
        if event.kind == pb::AgentEventKind::Synced as i32 {
            break;
        }
        snapshot.push(event.agent.expect("snapshot agent").agent_id);
    }
    snapshot.sort();
    let mut want: Vec<String> = globex.agents.clone();
    want.sort();
    assert_eq!(snapshot, want);
    // An acme agent connects (and acme enrolls a new one), then a globex agent connects: the
    // globex event comes after the acme ones in revision order, so reaching it proves the acme
    // events were filtered out rather than late.
    let (acme_session, _) =
        RawSession::hello(server, &acme.subject.0, &acme.subject.1, "acme-subject")
            .await
            .expect("acme agent connects");
    enroll(server, &acme.enrollment, "acme-late").await;
    let (globex_session, _) = RawSession::hello(
        server,
        &globex.subject.0,
        &globex.subject.1,
        "globex-subject",
    )
    .await
    .expect("globex agent connects");
    loop {
        let event = tokio::time::timeout(STREAM_WAIT, watch.message())
            .await
            .expect("the globex agent's event in time")
            .expect("watch event")
            .expect("the watch stays open");
        let agent = event.agent.expect("event agent");
        assert_eq!(
            agent.org_id, GLOBEX,
            "acme's event reached globex: {agent:?}"
        );
        if agent.agent_id == globex.subject.0 {
            break;
        }
    }
    drop((acme_session, globex_session));

    // Acme's ids answer exactly like ids that do not exist.
    let absent = "0123456789abcdef";
    let get_agent = |id: &str| {
        let mut fleet = fleet.clone();
        let id = id.to_owned();
        async move {
            fleet
                .get_agent(pb::GetAgentRequest { agent_id: id })
                .await
                .expect_err("not visible")
        }
    };
    let get_metrics = |id: &str| {
        let mut fleet = fleet.clone();
        let id = id.to_owned();
        async move {
            fleet
                .get_metrics(pb::GetMetricsRequest {
                    agent_id: id,
                    ..Default::default()
                })
                .await
                .expect_err("not visible")
        }
    };
    let delete_agent = |id: &str| {
        let mut admin = admin.clone();
        let id = id.to_owned();
        async move {
            admin
                .delete_agent(pb::DeleteAgentRequest { agent_id: id })
                .await
                .expect_err("not visible")
        }
    };
    let revoke_token = |id: &str| {
        let mut admin = admin.clone();
        let id = id.to_owned();
        async move {
            admin
                .revoke_token(pb::RevokeTokenRequest { token_id: id })
                .await
                .expect_err("not visible")
        }
    };
    let revoke_enrollment = |id: &str| {
        let mut admin = admin.clone();
        let id = id.to_owned();
        async move {
            admin
                .revoke_enrollment_token(pb::RevokeEnrollmentTokenRequest { token_id: id })
                .await
                .expect_err("not visible")
        }
    };
    let acme_token = token_id(&acme.admin).to_owned();
    let acme_enrollment = token_id(&acme.enrollment).to_owned();
    let cases: Vec<(&str, Status, Status, &str)> = vec![
        (
            "GetAgent",
            get_agent(&acme.victim_agent).await,
            get_agent(absent).await,
            &acme.victim_agent,
        ),
        (
            "GetMetrics",
            get_metrics(&acme.victim_agent).await,
            get_metrics(absent).await,
            &acme.victim_agent,
        ),
        (
            "DeleteAgent",
            delete_agent(&acme.victim_agent).await,
            delete_agent(absent).await,
            &acme.victim_agent,
        ),
        (
            "RevokeToken",
            revoke_token(&acme_token).await,
            revoke_token(absent).await,
            &acme_token,
        ),
        (
            "RevokeEnrollmentToken",
            revoke_enrollment(&acme_enrollment).await,
            revoke_enrollment(absent).await,
            &acme_enrollment,
        ),
    ];
    for (rpc, theirs, missing, id) in &cases {
        assert_eq!(
            theirs.code(),
            Code::NotFound,
            "{rpc} on acme's {id}: {theirs:?}"
        );
        assert_eq!(
            shape(theirs, id),
            shape(missing, absent),
            "{rpc}: acme's object must look exactly like an absent one"
        );
    }
    // ... and acme's objects are untouched.
    let mut acme_admin = server.admin_as(Some(&acme.admin)).await;
    acme_fleet
        .get_agent(pb::GetAgentRequest {
            agent_id: acme.victim_agent.clone(),
        })
        .await
        .expect("acme's agent still exists");
    acme_fleet
        .list_agents(pb::ListAgentsRequest::default())
        .await
        .expect("acme's viewer still lists its fleet");
    let enrollment = acme_admin
        .list_enrollment_tokens(pb::ListEnrollmentTokensRequest::default())
        .await
        .expect("list")
        .into_inner()
        .tokens;
    assert!(
        enrollment
            .iter()
            .any(|t| t.token_id == acme_enrollment && !t.revoked)
    );

    // Orgs are the server admin's: an org admin may neither create nor list them.
    let mut org_admin = server.admin_as(Some(&acme.first_admin)).await;
    let err = org_admin
        .create_org(pb::CreateOrgRequest {
            org_id: "initech".to_owned(),
            display_name: String::new(),
        })
        .await
        .expect_err("org admins cannot create orgs");
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = org_admin
        .list_orgs(pb::ListOrgsRequest::default())
        .await
        .expect_err("org admins cannot list orgs");
    assert_eq!(err.code(), Code::PermissionDenied);
    let mut server_admin = server.admin().await;
    let err = server_admin
        .create_org(pb::CreateOrgRequest {
            org_id: ACME.to_owned(),
            display_name: "again".to_owned(),
        })
        .await
        .expect_err("duplicate org");
    assert_eq!(err.code(), Code::AlreadyExists);
    // The default org (the bootstrap admin's) exists from the first start on, like any other.
    let again = server_admin
        .create_org(pb::CreateOrgRequest {
            org_id: "default".to_owned(),
            display_name: String::new(),
        })
        .await;
    match again {
        Err(err) => assert_eq!(err.code(), Code::AlreadyExists, "{err:?}"),
        Ok(created) => panic!(
            "CreateOrg(\"default\") answered OK on the server's first start: it replaced the \
             default org's record and minted admin token {:?} in the org that already holds the \
             bootstrap admin; expected ALREADY_EXISTS",
            created.into_inner().admin_token.map(|t| t.token_id)
        ),
    }
    let orgs: Vec<String> = server_admin
        .list_orgs(pb::ListOrgsRequest::default())
        .await
        .expect("list orgs")
        .into_inner()
        .orgs
        .into_iter()
        .map(|o| o.org_id)
        .collect();
    for org in ["default", ACME, GLOBEX] {
        assert!(orgs.iter().any(|o| o == org), "{org} in {orgs:?}");
    }
    assert!(!orgs.iter().any(|o| o == "initech"));
    drop(acme_admin);
    server_stop(world).await;
}
