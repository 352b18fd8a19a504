//! The real agent's side of identity: what it does once its agent is deleted, with and
//! without an enrollment token, and the credential it presents when it enrolls again.

use tether_agent::{AgentError, StateDir};

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_agent_with_an_enrollment_token_discards_its_state_and_enrolls_again() {
    let (server, _dir) = start().await;
    let agent = server.spawn_agent("rebuilt", &[]).await;
    let old_id = agent.id().await;
    server.wait_status(&old_id, pb::AgentStatus::Online).await;

    server
        .admin()
        .await
        .delete_agent(pb::DeleteAgentRequest {
            agent_id: old_id.clone(),
        })
        .await
        .expect("delete");

    // The agent hears Goodbye(REVOKED), discards its state and enrolls as a new agent.
    let new_id = eventually("the agent to enroll again", || async {
        agent.handle.stats.agent_id().filter(|id| *id != old_id)
    })
    .await;
    server.wait_status(&new_id, pb::AgentStatus::Online).await;
    assert!(!agent.handle.is_finished());
    let stored = StateDir::open(agent.state_dir.path())
        .expect("state dir")
        .load()
        .expect("load")
        .expect("an enrollment");
    assert_eq!(stored.agent_id, new_id, "the new identity is stored");
    let gone = get(&server, &old_id).await.expect_err("deleted");
    assert_eq!(gone.code(), Code::NotFound);

    // It presented its old credential, which proved nothing: the audit trail says so.
    let record = audit(&server.admin().await)
        .await
        .into_iter()
        .rfind(|e| e.method.ends_with("/Enroll") && e.target == new_id)
        .expect("audited");
    assert!(
        record.message.contains(&old_id) && record.message.contains("deleted"),
        "{record:?}"
    );
    agent.stop().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_agent_without_a_token_stops_and_says_exactly_what_to_do() {
    let (server, _dir) = start().await;
    // Enrolled once with a token, then run without one (as a service manager would).
    let enrolled = server.spawn_agent("retired", &[]).await;
    let id = enrolled.id().await;
    server.wait_status(&id, pb::AgentStatus::Online).await;
    let state_dir = enrolled.stop().await;
    let agent = server.spawn_agent_in("retired", &[], state_dir, None, None);
    server.wait_status(&id, pb::AgentStatus::Online).await;

    server
        .admin()
        .await
        .delete_agent(pb::DeleteAgentRequest {
            agent_id: id.clone(),
        })
        .await
        .expect("delete");
    let TestAgent {
        handle, state_dir, ..
    } = agent;
    let error = handle.join().await.expect_err("the agent stops");
    let AgentError::Revoked(message) = &error else {
        panic!("expected a revocation, got {error:?}");
    };
    for what in [
        id.as_str(),
        "--enroll-token",
        "TETHER_ENROLL_TOKEN",
        "tetherctl enroll-token create",
    ] {
        assert!(message.contains(what), "{what:?} in {message:?}");
    }
    let kept = StateDir::open(state_dir.path())
        .expect("state dir")
        .load()
        .expect("load");
    assert_eq!(
        kept.map(|e| e.agent_id),
        Some(id.clone()),
        "without a token, nothing is discarded"
    );

    // Doing what it said: started with a token, it discards the revoked state and enrolls.
    let token = server.enrollment_token().await;
    let agent = server.spawn_agent_in("retired", &[], state_dir, Some(token), None);
    let new_id = eventually("the agent to enroll again", || async {
        agent.handle.stats.agent_id().filter(|new| *new != id)
    })
    .await;
    server.wait_status(&new_id, pb::AgentStatus::Online).await;
    agent.stop().await;
    server.stop().await;
}
