//! Races between identity changes: a deletion against a re-enrollment that would take the
//! deleted agent over, and many re-enrollments of one machine at once. Whoever wins, a deleted
//! agent stays deleted and an agent has exactly one valid credential.

use super::*;

/// Trials of each race: the losing orders happen in some of them.
const TRIALS: usize = 30;

/// Whether `enrolled`'s credential opens a session.
async fn works(server: &TestServer, enrolled: &pb::EnrollResponse, info: &pb::SystemInfo) -> bool {
    connect(server, enrolled, info, "probe").await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_an_agent_while_it_re_enrolls_never_brings_it_back() {
    let (server, dir) = start().await;
    let reclaiming = token(&server, &[], true).await;
    let admin = server.admin().await;
    let (mut took_over_first, mut deleted_first) = (0, 0);
    let mut deleted_ids = Vec::new();
    for trial in 0..TRIALS {
        let info = machine(&format!("victim-{trial}"), &format!("hw-victim-{trial}"));
        let first = enroll(&server, &reclaiming, &info, None)
            .await
            .expect("enroll");
        // Half the trials claim the agent by its credential, half by the reclaiming token.
        let proof = (trial % 2 == 0).then_some(first.agent_credential.as_str());
        let mut admin = admin.clone();
        let delete = admin.delete_agent(pb::DeleteAgentRequest {
            agent_id: first.agent_id.clone(),
        });
        let (deleted, again) = tokio::join!(delete, enroll(&server, &reclaiming, &info, proof));
        deleted.expect("the deletion succeeds");
        let again = again.expect("the enrollment succeeds");
        deleted_ids.push(first.agent_id.clone());

        let gone = get(&server, &first.agent_id)
            .await
            .expect_err("the deleted agent stays deleted");
        assert_eq!(gone.code(), Code::NotFound, "trial {trial}");
        assert!(!works(&server, &first, &info).await, "trial {trial}");
        if again.agent_id == first.agent_id {
            // The take-over committed first; the deletion revoked its credential too.
            took_over_first += 1;
            assert!(!works(&server, &again, &info).await, "trial {trial}");
        } else {
            deleted_first += 1;
            assert!(works(&server, &again, &info).await, "trial {trial}");
            get(&server, &again.agent_id).await.expect("a new agent");
        }
    }
    assert_eq!(took_over_first + deleted_first, TRIALS);

    // Nor does a restart: nothing was written for a deleted agent after its tombstone.
    let addr = server.addr;
    server.stop().await;
    let server = TestServer::start_at(addr, config(dir.path())).await;
    let listed: BTreeSet<String> = list_all(&mut server.fleet().await, Default::default())
        .await
        .into_iter()
        .map(|a| a.agent_id)
        .collect();
    let back: Vec<&String> = deleted_ids
        .iter()
        .filter(|id| listed.contains(*id))
        .collect();
    assert!(
        back.is_empty(),
        "deleted agents back after a restart: {back:?}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reenrollments_of_one_machine_leave_one_valid_credential_per_agent() {
    trace_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = config(dir.path());
    config.limits.reenroll_burst = 100;
    let server = TestServer::start(config).await;
    let reclaiming = token(&server, &[], true).await;
    let plain = server.enrollment_token().await;
    let info = machine("many", "hw-many");
    let first = enroll(&server, &reclaiming, &info, None)
        .await
        .expect("enroll");

    // Ten enrollments reclaiming the one offline agent at once: each takes it over in turn.
    let racing = |token: String, previous: Option<String>| {
        let calls: Vec<_> = (0..10)
            .map(|_| {
                let (token, previous, info) = (token.clone(), previous.clone(), info.clone());
                let server = &server;
                async move { enroll(server, &token, &info, previous.as_deref()).await }
            })
            .collect();
        futures::future::join_all(calls)
    };
    let responses: Vec<pb::EnrollResponse> = racing(reclaiming.clone(), None)
        .await
        .into_iter()
        .map(|r| r.expect("enroll"))
        .collect();
    assert!(responses.iter().all(|r| r.agent_id == first.agent_id));
    let mut valid = Vec::new();
    for response in responses.iter().chain([&first]) {
        if works(&server, response, &info).await {
            valid.push(response.clone());
        }
    }
    assert_eq!(valid.len(), 1, "exactly one of 11 credentials works");

    // Ten enrollments presenting the one valid credential at once: one takes the agent over,
    // the others prove nothing once it is replaced, and become new agents.
    let previous = valid[0].agent_credential.clone();
    let responses: Vec<pb::EnrollResponse> = racing(plain, Some(previous))
        .await
        .into_iter()
        .map(|r| r.expect("enroll"))
        .collect();
    let same: Vec<_> = responses
        .iter()
        .filter(|r| r.agent_id == first.agent_id)
        .collect();
    assert_eq!(same.len(), 1, "one take-over");
    let ids: BTreeSet<&str> = responses.iter().map(|r| r.agent_id.as_str()).collect();
    assert_eq!(ids.len(), 10, "nine new agents");
    for response in &responses {
        assert!(works(&server, response, &info).await);
    }
    assert!(!works(&server, &valid[0], &info).await, "replaced");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_agent_stays_deleted_across_a_restart() {
    trace_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(config(dir.path())).await;
    let reclaiming = token(&server, &[], true).await;
    let info = machine("gone", "hw-gone");
    let deleted = enroll(&server, &reclaiming, &info, None)
        .await
        .expect("enroll");
    server
        .admin()
        .await
        .delete_agent(pb::DeleteAgentRequest {
            agent_id: deleted.agent_id.clone(),
        })
        .await
        .expect("delete");
    let addr = server.addr;
    server.stop().await;

    let server = TestServer::start_at(addr, config(dir.path())).await;
    let refused = refused(&server, &deleted, &info, "x").await;
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert_eq!(
        tether_proto::refusal::refusal(&refused),
        Some(tether_proto::refusal::Refusal::CredentialRevoked)
    );
    let again = enroll(&server, &reclaiming, &info, Some(&deleted.agent_credential))
        .await
        .expect("enrolls again");
    assert_ne!(again.agent_id, deleted.agent_id, "a new agent");
    let gone = get(&server, &deleted.agent_id).await.expect_err("deleted");
    assert_eq!(gone.code(), Code::NotFound);
    let trail = audit(&server.admin().await).await;
    let record = trail
        .iter()
        .rfind(|e| e.method.ends_with("/Enroll") && e.target == again.agent_id)
        .expect("audited");
    assert!(
        record.message.contains(&deleted.agent_id) && record.message.contains("deleted"),
        "{record:?}"
    );
    server.stop().await;
}
