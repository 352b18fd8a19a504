//! Crashes: the server and an agent killed with SIGKILL, as processes (`test-server`,
//! `test-agent`: the server and agent libraries, each in a process of its own). Each run of a
//! program appends a line to a file in its agent's working directory, so the tests count runs
//! where they happen.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use tether_proto as pb;
use tether_tests::{
    AgentProcess, Bearer, CommandClient, ServerProcess, agent_dirs, command_agent,
    eventually_within, exec_request, finished, history, send, shell,
};
use tonic::transport::Endpoint;

use super::*;

const SERVER: &str = env!("CARGO_BIN_EXE_test-server");
const AGENT: &str = env!("CARGO_BIN_EXE_test-agent");

/// Long enough for restarts, reconnections and a rollout of one-second runs.
const SURVIVE: Duration = Duration::from_secs(120);

/// Clients of the server at `url` with `token`.
async fn clients(
    url: &str,
    token: &str,
) -> (
    CommandClient,
    tether_tests::FleetClient,
    tether_tests::AdminClient,
) {
    let channel = Endpoint::from_shared(url.to_owned())
        .expect("url")
        .connect_timeout(Duration::from_secs(5))
        .connect_lazy();
    let bearer = Bearer(Some(token.to_owned()));
    (
        pb::command_service_client::CommandServiceClient::with_interceptor(
            channel.clone(),
            bearer.clone(),
        ),
        pb::fleet_service_client::FleetServiceClient::with_interceptor(
            channel.clone(),
            bearer.clone(),
        ),
        pb::admin_service_client::AdminServiceClient::with_interceptor(channel, bearer),
    )
}

/// The lines each run appended to `work/runs`.
fn runs(work: &Path) -> usize {
    std::fs::read_to_string(work.join("runs"))
        .map(|text| text.lines().count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_again_and_again_mid_rollout_loses_nothing_and_runs_nothing_twice() {
    trace_init();
    let root = tempfile::tempdir().expect("tempdir");
    let data = root.path().join("data");
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let mut server = ServerProcess::start(Path::new(SERVER), &data, any).await;
    let (addr, url, token) = (server.addr, server.url.clone(), server.admin_token.clone());
    let (commands, fleet, mut admin) = clients(&url, &token).await;
    let enroll = admin
        .create_enrollment_token(pb::CreateEnrollmentTokenRequest::default())
        .await
        .expect("enrollment token")
        .into_inner()
        .secret;
    let hosts: Vec<String> = (0..4).map(|i| format!("crash-{i}")).collect();
    let mut agents = Vec::new();
    for host in &hosts {
        let (state, work) = agent_dirs(root.path(), host);
        agents.push(AgentProcess::start(
            Path::new(AGENT),
            &url,
            host,
            &state,
            &work,
            Some(&enroll),
            &["/bin/sh"],
        ));
    }
    let ids: Vec<String> = eventually_within(SURVIVE, "every agent online", || {
        let mut fleet = fleet.clone();
        async move {
            let agents = fleet
                .list_agents(pb::ListAgentsRequest {
                    statuses: vec![pb::AgentStatus::Online as i32],
                    ..Default::default()
                })
                .await
                .ok()?
                .into_inner()
                .agents;
            (agents.len() == 4).then(|| agents.into_iter().map(|a| a.agent_id).collect())
        }
    })
    .await;
    let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let mut request = exec_request(shell("echo run >> runs; sleep 1"), command_agent(&id_refs));
    request.rollout = Some(pb::RolloutPolicy {
        max_concurrency: Some(pb::Budget {
            value: Some(pb::budget::Value::Count(1)),
        }),
        ..Default::default()
    });
    request.deliver_within = Some(prost_types::Duration {
        seconds: 600,
        nanos: 0,
    });
    let sent = send(&commands, request).await;

    // Kill the server three times while the rollout goes on, each after some progress.
    for round in 1..=3u32 {
        let id = sent.command_id.clone();
        eventually_within(SURVIVE, &format!("progress before kill {round}"), || {
            let mut commands = commands.clone();
            let id = id.clone();
            async move {
                let command = commands
                    .get_command(pb::GetCommandRequest { command_id: id })
                    .await
                    .ok()?
                    .into_inner()
                    .command?;
                let counts = command.counts?;
                (counts.succeeded + counts.running >= round).then_some(())
            }
        })
        .await;
        server.kill().await;
        server = ServerProcess::start(Path::new(SERVER), &data, addr).await;
    }

    let done = finished(&commands, &sent.command_id, SURVIVE).await;
    assert_eq!(done.state(), pb::CommandState::Succeeded, "{done:?}");
    let history = history(&commands, &sent.command_id, 0, "").await;
    use pb::InvocationState::*;
    for invocation in tether_tests::invocations(&commands, &sent.command_id).await {
        assert_eq!(
            history.states(&invocation.invocation_id),
            [Queued, Offered, Running, Succeeded],
            "one state after the other, one end only: {}",
            invocation.agent_name
        );
    }
    for host in &hosts {
        let (_, work) = agent_dirs(root.path(), host);
        assert_eq!(runs(&work), 1, "{host} ran the command once");
    }
    for agent in agents {
        agent.kill().await;
    }
    server.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_mid_command_ends_agent_restarted_never_stuck() {
    let (server, _dir) = server().await;
    let root = tempfile::tempdir().expect("tempdir");
    let (state, work) = agent_dirs(root.path(), "victim");
    let enroll = server.enrollment_token().await;
    let agent = AgentProcess::start(
        Path::new(AGENT),
        &server.url,
        "victim",
        &state,
        &work,
        Some(&enroll),
        &["/bin/sh"],
    );
    let client = server.commands().await;
    let fleet = server.fleet().await;
    let id = eventually_within(SURVIVE, "the agent online", || {
        let mut fleet = fleet.clone();
        async move {
            let agents = fleet
                .list_agents(pb::ListAgentsRequest {
                    statuses: vec![pb::AgentStatus::Online as i32],
                    ..Default::default()
                })
                .await
                .ok()?
                .into_inner()
                .agents;
            agents.first().map(|a| a.agent_id.clone())
        }
    })
    .await;
    let sent = send(
        &client,
        exec_request(shell("echo run >> runs; sleep 20"), command_agent(&[&id])),
    )
    .await;
    until_state(&client, &sent.command_id, &id, pb::InvocationState::Running).await;
    agent.kill().await;

    // The same machine's agent starts again, from its state directory and journal.
    let agent = AgentProcess::start(
        Path::new(AGENT),
        &server.url,
        "victim",
        &state,
        &work,
        None,
        &["/bin/sh"],
    );
    let done = finished(&client, &sent.command_id, SURVIVE).await;
    assert_eq!(done.state(), pb::CommandState::Failed);
    let invocation = &by_agent(&client, &sent.command_id).await[&id];
    assert_eq!(invocation.state(), pb::InvocationState::AgentRestarted);
    assert_eq!(runs(&work), 1, "ran once, never again");
    // The agent works on.
    let next = send(&client, exec_request(shell("true"), command_agent(&[&id]))).await;
    let next = finished(&client, &next.command_id, SURVIVE).await;
    assert_eq!(next.state(), pb::CommandState::Succeeded);
    agent.kill().await;
    server.stop().await;
}
