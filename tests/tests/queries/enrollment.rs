//! Enrollment identity: re-enrolling a machine, duplicate hardware ids, token labels. The
//! attacks and mistakes around identity (take-overs, clones, copies, races) are in the
//! `identity` suite.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reenrolling_with_the_previous_credential_keeps_the_id_and_replaces_the_credential() {
    let (server, _dir) = start().await;
    let request = pb::EnrollRequest {
        system_info: Some(system_info("phoenix")),
        labels: labels(&[("env", "prod")]),
        name: String::new(),
        previous_credential: String::new(),
    };
    let first = server.enroll_with(request.clone()).await.expect("enroll");
    let (mut session, _) = RawSession::hello_with(
        &server,
        &first.agent_credential,
        tether_tests::hello(&first.agent_id, "phoenix", &[("env", "prod")]),
    )
    .await
    .expect("session");
    session.send_samples([1, 2]).await;
    session.wait_ack(2).await.expect("ack");
    drop(session.close());
    let before = server
        .wait_status(&first.agent_id, pb::AgentStatus::Offline)
        .await;

    // The machine enrolls again, proving who it is with the credential it holds.
    let second = server
        .enroll_with(pb::EnrollRequest {
            previous_credential: first.agent_credential.clone(),
            ..request
        })
        .await
        .expect("re-enroll");
    assert_eq!(second.agent_id, first.agent_id, "same machine, same id");
    assert_ne!(second.agent_credential, first.agent_credential);

    let status = match RawSession::hello_with(
        &server,
        &first.agent_credential,
        tether_tests::hello(&first.agent_id, "phoenix", &[("env", "prod")]),
    )
    .await
    {
        Ok(_) => panic!("the replaced credential still connects"),
        Err(status) => status,
    };
    // The replaced credential is gone (deleted, not kept revoked): an old copy of the machine
    // must enroll again rather than fight for the identity.
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");

    let (_session, welcome) = RawSession::hello_with(
        &server,
        &second.agent_credential,
        tether_tests::hello(&second.agent_id, "phoenix", &[("env", "prod")]),
    )
    .await
    .expect("the new credential connects");
    assert_eq!(welcome.last_durable_seq, 2, "the machine's history is kept");

    let mut fleet = server.fleet().await;
    let all = list_all(&mut fleet, Default::default()).await;
    assert_eq!(all.len(), 1, "still one machine");
    let agent = &all[0];
    assert!(!agent.duplicate_hardware_id);
    assert_eq!(
        agent.enrolled_at, before.enrolled_at,
        "first enrollment kept"
    );
    assert_eq!(agent.labels, labels(&[("env", "prod")]));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reenrolling_a_connected_hardware_id_makes_a_flagged_duplicate() {
    let (server, _dir) = start().await;
    let request = pb::EnrollRequest {
        system_info: Some(system_info("clone")),
        ..Default::default()
    };
    let first = server.enroll_with(request.clone()).await.expect("enroll");
    let (other_id, _) = server.enroll("unrelated", &[]).await;
    let (mut session, _) =
        RawSession::hello(&server, &first.agent_id, &first.agent_credential, "clone")
            .await
            .expect("session");

    // A cloned image enrolls while the original is connected.
    let second = server.enroll_with(request).await.expect("enroll clone");
    assert_ne!(
        second.agent_id, first.agent_id,
        "a live machine keeps its id"
    );

    for id in [&first.agent_id, &second.agent_id] {
        let agent = server
            .get_agent(id)
            .await
            .expect("get")
            .agent
            .expect("agent");
        assert!(agent.duplicate_hardware_id, "GetAgent {id}");
    }
    let other = server
        .get_agent(&other_id)
        .await
        .expect("get")
        .agent
        .expect("agent");
    assert!(!other.duplicate_hardware_id);
    let mut fleet = server.fleet().await;
    let flagged: BTreeSet<String> = list_all(&mut fleet, Default::default())
        .await
        .into_iter()
        .filter(|a| a.duplicate_hardware_id)
        .map(|a| a.agent_id)
        .collect();
    assert_eq!(
        flagged,
        BTreeSet::from([first.agent_id.clone(), second.agent_id.clone()])
    );

    // The original's session and credential were not disturbed.
    session
        .send(pb::connect_request::Message::Ping(pb::Ping {
            nonce: 42,
            sent_at: None,
        }))
        .await;
    match session.recv().await.expect("pong") {
        Some(pb::connect_response::Message::Pong(pong)) => assert_eq!(pong.nonce, 42),
        other => panic!("expected Pong, got {other:?}"),
    }
    let (_clone_session, _) =
        RawSession::hello(&server, &second.agent_id, &second.agent_credential, "clone")
            .await
            .expect("the clone connects as itself");
    let original = server
        .get_agent(&first.agent_id)
        .await
        .expect("get")
        .agent
        .expect("agent");
    assert_eq!(original.status, pb::AgentStatus::Online as i32);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrollment_token_labels_win_over_the_agents_own() {
    let (server, _dir) = start().await;
    let secret = server
        .admin()
        .await
        .create_enrollment_token(pb::CreateEnrollmentTokenRequest {
            labels: labels(&[("env", "prod"), ("team", "core")]),
            ..Default::default()
        })
        .await
        .expect("token")
        .into_inner()
        .secret;
    let enrolled = server
        .agent_client(Some(&secret))
        .await
        .enroll(pb::EnrollRequest {
            system_info: Some(system_info("pinned")),
            labels: labels(&[("env", "dev"), ("role", "web")]),
            name: String::new(),
            previous_credential: String::new(),
        })
        .await
        .expect("enroll")
        .into_inner();
    let agent = server
        .get_agent(&enrolled.agent_id)
        .await
        .expect("get")
        .agent
        .expect("agent");
    assert_eq!(
        agent.labels,
        labels(&[("env", "prod"), ("team", "core"), ("role", "web")]),
        "at enrollment"
    );

    // The agent's Hello tries to override the pinned labels.
    let (_session, _) = RawSession::hello_with(
        &server,
        &enrolled.agent_credential,
        tether_tests::hello(
            &enrolled.agent_id,
            "pinned",
            &[
                ("env", "test"),
                ("team", "x"),
                ("role", "db"),
                ("extra", "one"),
            ],
        ),
    )
    .await
    .expect("session");
    let expected = labels(&[
        ("env", "prod"),
        ("team", "core"),
        ("role", "db"),
        ("extra", "one"),
    ]);
    let agent = server
        .get_agent(&enrolled.agent_id)
        .await
        .expect("get")
        .agent
        .expect("agent");
    assert_eq!(agent.labels, expected, "after Hello");
    let mut fleet = server.fleet().await;
    assert_eq!(
        list_all(&mut fleet, selector("env=prod,role=db"))
            .await
            .len(),
        1
    );
    assert!(list_all(&mut fleet, selector("env=test")).await.is_empty());
    server.stop().await;
}
