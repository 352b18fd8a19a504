//! Delivery: offline agents, delivery deadlines, timeouts, cancel.

use tether_proto as pb;
use tether_tests::{command_agent, eventually, exec_request, finished, send, shell};

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_agent_gets_its_invocation_when_it_reconnects() {
    let (server, _dir) = server().await;
    let (agent, id) = server
        .spawn_commanded_agent("away-1", &[], &["/bin/echo"])
        .await;
    let state_dir = agent.stop().await;
    server.wait_status(&id, pb::AgentStatus::Offline).await;
    let client = server.commands().await;
    let sent = send(
        &client,
        including_offline(exec_request(
            vec!["/bin/echo".into(), "back".into()],
            command_agent(&[&id]),
        )),
    )
    .await;
    let queued = &by_agent(&client, &sent.command_id).await[&id];
    assert_eq!(queued.state(), pb::InvocationState::Queued);

    let mut config = tether_tests::agent_config(&server.url, state_dir.path(), &[], None);
    config.commands.allow_exec = vec!["/bin/echo".into()];
    let _agent = tether_tests::TestAgent::spawn_with(config, state_dir, "away-1", "linux");
    let done = finished(&client, &sent.command_id, FINISH).await;
    assert_eq!(done.state(), pb::CommandState::Succeeded);
    let history = tether_tests::history(&client, &sent.command_id, 0, "").await;
    assert_eq!(
        history.output(&queued.invocation_id, pb::OutputStream::Stdout),
        [(0, b"back\n".to_vec())]
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invocation_not_delivered_in_time_ends_delivery_timed_out_and_never_runs() {
    let (server, _dir) = server().await;
    let (agent, id) = server
        .spawn_commanded_agent("late-1", &[], &["/bin/sh"])
        .await;
    let state_dir = agent.stop().await;
    server.wait_status(&id, pb::AgentStatus::Offline).await;
    let marker = state_dir.path().join("ran");
    let client = server.commands().await;
    let mut request = including_offline(exec_request(
        shell(&format!("echo ran > {}", marker.display())),
        command_agent(&[&id]),
    ));
    request.deliver_within = Some(prost_types::Duration {
        seconds: 1,
        nanos: 0,
    });
    let sent = send(&client, request).await;
    let done = finished(&client, &sent.command_id, FINISH).await;
    assert_eq!(done.state(), pb::CommandState::Failed);
    let invocation = &by_agent(&client, &sent.command_id).await[&id];
    assert_eq!(invocation.state(), pb::InvocationState::DeliveryTimedOut);

    // The agent comes back: nothing is offered any more, nothing runs.
    let mut config = tether_tests::agent_config(&server.url, state_dir.path(), &[], None);
    config.commands.allow_exec = vec!["/bin/sh".into()];
    let agent = tether_tests::TestAgent::spawn_with(config, state_dir, "late-1", "linux");
    server.wait_status(&id, pb::AgentStatus::Online).await;
    // A later command reaches it, so anything offered before would have been handled first.
    let probe = send(&client, exec_request(shell("true"), command_agent(&[&id]))).await;
    finished(&client, &probe.command_id, FINISH).await;
    assert!(!marker.exists(), "the expired invocation ran");
    agent.stop().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_kills_the_whole_process_group() {
    let (server, _dir) = server().await;
    let (_agent, id) = server
        .spawn_commanded_agent("slow-1", &[], &["/bin/sh"])
        .await;
    let work = tempfile::tempdir().expect("work dir");
    let pidfile = work.path().join("child.pid");
    let client = server.commands().await;
    let mut request = exec_request(
        shell(&format!(
            "sleep 300 & echo $! > {}; wait",
            pidfile.display()
        )),
        command_agent(&[&id]),
    );
    request.timeout = Some(prost_types::Duration {
        seconds: 1,
        nanos: 0,
    });
    let sent = send(&client, request).await;
    let done = finished(&client, &sent.command_id, FINISH).await;
    assert_eq!(done.state(), pb::CommandState::Failed);
    let invocation = &by_agent(&client, &sent.command_id).await[&id];
    assert_eq!(invocation.state(), pb::InvocationState::TimedOut);
    let pid = std::fs::read_to_string(&pidfile).expect("the shell wrote its child's pid");
    let proc_dir = std::path::PathBuf::from(format!("/proc/{}", pid.trim()));
    eventually("the background child to be gone", || async {
        // Gone, or a zombie nobody reaps any more.
        let status = std::fs::read_to_string(proc_dir.join("status")).unwrap_or_default();
        (status.is_empty() || status.contains("State:\tZ")).then_some(())
    })
    .await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_ends_queued_invocations_at_once_and_stops_running_ones() {
    let (server, _dir) = server().await;
    let (_a1, first) = server.spawn_commanded_agent("c-1", &[], &[]).await;
    let (_a2, second) = server.spawn_commanded_agent("c-2", &[], &[]).await;
    let client = server.commands().await;
    let mut request = sleep_request(300, 600, command_agent(&[&first, &second]));
    request.rollout = Some(pb::RolloutPolicy {
        max_concurrency: Some(pb::Budget {
            value: Some(pb::budget::Value::Count(1)),
        }),
        ..Default::default()
    });
    let sent = send(&client, request).await;
    let (running, queued) = {
        let mut agents = [first.clone(), second.clone()];
        agents.sort();
        (agents[0].clone(), agents[1].clone())
    };
    until_state(
        &client,
        &sent.command_id,
        &running,
        pb::InvocationState::Running,
    )
    .await;
    assert_eq!(
        by_agent(&client, &sent.command_id).await[&queued].state(),
        pb::InvocationState::Queued
    );
    let cancelled = client
        .clone()
        .cancel_command(pb::CancelCommandRequest {
            command_id: sent.command_id.clone(),
        })
        .await
        .expect("cancel")
        .into_inner()
        .command
        .expect("command");
    assert!(cancelled.cancel_requested);
    // The queued invocation ended with the answer.
    assert_eq!(
        by_agent(&client, &sent.command_id).await[&queued].state(),
        pb::InvocationState::Cancelled
    );
    let done = finished(&client, &sent.command_id, FINISH).await;
    assert_eq!(done.state(), pb::CommandState::Cancelled);
    let invocations = by_agent(&client, &sent.command_id).await;
    assert_eq!(
        invocations[&running].state(),
        pb::InvocationState::Cancelled
    );
    assert!(
        invocations[&running]
            .finished_at
            .as_ref()
            .zip(invocations[&running].started_at.as_ref())
            .is_some_and(|(end, start)| end.seconds - start.seconds < 60),
        "stopped long before its 300 s"
    );
    // Cancelling again changes nothing.
    let again = client
        .clone()
        .cancel_command(pb::CancelCommandRequest {
            command_id: sent.command_id.clone(),
        })
        .await
        .expect("cancel again")
        .into_inner()
        .command
        .expect("command");
    assert_eq!(again.state(), pb::CommandState::Cancelled);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_agents_invocations_end_agent_deleted() {
    let (server, _dir) = server().await;
    let (agent, id) = server.spawn_commanded_agent("doomed-1", &[], &[]).await;
    let client = server.commands().await;
    let sent = send(&client, sleep_request(300, 600, command_agent(&[&id]))).await;
    until_state(&client, &sent.command_id, &id, pb::InvocationState::Running).await;
    server
        .admin()
        .await
        .delete_agent(pb::DeleteAgentRequest {
            agent_id: id.clone(),
        })
        .await
        .expect("delete agent");
    let done = finished(&client, &sent.command_id, FINISH).await;
    assert_eq!(done.state(), pb::CommandState::Failed);
    let invocation = &by_agent(&client, &sent.command_id).await[&id];
    assert_eq!(invocation.state(), pb::InvocationState::AgentDeleted);
    // The deleted machine comes back, if at all, only as a new agent (its enrollment token
    // lets it re-enroll); the deleted id stays deleted and its invocation stays ended.
    agent.stop().await;
    let invocation = &by_agent(&client, &sent.command_id).await[&id];
    assert_eq!(invocation.state(), pb::InvocationState::AgentDeleted);
    server.stop().await;
}
