//! Rollout budgets: the error budget's bound, canaries, pause and resume.

use tether_proto as pb;
use tether_tests::{TestAgent, exec_request, finished, send};

use super::*;

fn count(n: u32) -> Option<pb::Budget> {
    Some(pb::Budget {
        value: Some(pb::budget::Value::Count(n)),
    })
}

/// `n` agents labelled `group=<group>` that may run `allow`.
async fn fleet(
    server: &tether_tests::TestServer,
    group: &str,
    n: usize,
    allow: &[&str],
) -> Vec<(TestAgent, String)> {
    let mut agents = Vec::new();
    for i in 0..n {
        agents.push(
            server
                .spawn_commanded_agent(&format!("{group}-{i}"), &[("group", group)], allow)
                .await,
        );
    }
    agents
}

fn group(name: &str) -> pb::CommandTargets {
    pb::CommandTargets {
        label_selector: format!("group={name}"),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_error_budget_stops_the_rollout_within_its_bound() {
    let (server, _dir) = server().await;
    let _agents = fleet(&server, "budget", 8, &["/bin/false"]).await;
    let client = server.commands().await;
    let mut request = exec_request(vec!["/bin/false".into()], group("budget"));
    request.rollout = Some(pb::RolloutPolicy {
        max_concurrency: count(2),
        max_errors: count(1),
        canary: 0,
    });
    let sent = send(&client, request).await;
    let done = finished(&client, &sent.command_id, FINISH).await;
    assert_eq!(done.state(), pb::CommandState::Failed);
    let counts = done.counts.expect("counts");
    assert!(
        counts.failed <= 1 + 2,
        "failures {} exceed max_errors + max_concurrency",
        counts.failed
    );
    assert!(
        counts.failed >= 2,
        "the budget was exceeded before stopping"
    );
    assert_eq!(counts.failed + counts.skipped, 8);
    for invocation in by_agent(&client, &sent.command_id).await.values() {
        if invocation.state() == pb::InvocationState::Skipped {
            assert_eq!(invocation.skip_reason(), pb::SkipReason::ErrorBudget);
        }
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_canary_holds_the_rest() {
    let (server, _dir) = server().await;
    let _agents = fleet(&server, "canary", 4, &["/bin/false"]).await;
    let client = server.commands().await;
    let mut request = exec_request(vec!["/bin/false".into()], group("canary"));
    request.rollout = Some(pb::RolloutPolicy {
        canary: 1,
        ..Default::default()
    });
    let sent = send(&client, request).await;
    let done = finished(&client, &sent.command_id, FINISH).await;
    assert_eq!(done.state(), pb::CommandState::Failed);
    let invocations: Vec<pb::Invocation> = by_agent(&client, &sent.command_id)
        .await
        .into_values()
        .collect();
    let ran: Vec<&pb::Invocation> = invocations
        .iter()
        .filter(|i| i.state() == pb::InvocationState::Failed)
        .collect();
    assert_eq!(ran.len(), 1, "only the canary ran");
    assert!(ran[0].canary);
    assert!(
        invocations
            .iter()
            .filter(|i| !i.canary)
            .all(|i| i.state() == pb::InvocationState::Skipped
                && i.skip_reason() == pb::SkipReason::CanaryFailed)
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_holds_new_offers_and_resume_goes_on() {
    let (server, _dir) = server().await;
    let _agents = fleet(&server, "paused", 3, &[]).await;
    let client = server.commands().await;
    let mut request = sleep_request(2, 30, group("paused"));
    request.rollout = Some(pb::RolloutPolicy {
        max_concurrency: count(1),
        ..Default::default()
    });
    let sent = send(&client, request).await;
    let paused = client
        .clone()
        .pause_command(pb::PauseCommandRequest {
            command_id: sent.command_id.clone(),
        })
        .await
        .expect("pause")
        .into_inner()
        .command
        .expect("command");
    assert_eq!(paused.state(), pb::CommandState::Paused);
    // The invocation offered before the pause finishes; none follows it. The commit that
    // stores its end is the one that would have offered the next.
    let id = sent.command_id.clone();
    let command = tether_tests::eventually_within(FINISH, "the running one to end", || {
        let mut client = client.clone();
        let id = id.clone();
        async move {
            let command = client
                .get_command(pb::GetCommandRequest { command_id: id })
                .await
                .ok()?
                .into_inner()
                .command?;
            (command.counts.as_ref()?.succeeded == 1).then_some(command)
        }
    })
    .await;
    let counts = command.counts.expect("counts");
    assert_eq!((counts.queued, counts.offered, counts.running), (2, 0, 0));
    assert_eq!(command.state(), pb::CommandState::Paused);

    client
        .clone()
        .resume_command(pb::ResumeCommandRequest {
            command_id: sent.command_id.clone(),
        })
        .await
        .expect("resume");
    let done = finished(&client, &sent.command_id, FINISH).await;
    assert_eq!(done.state(), pb::CommandState::Succeeded);
    assert_eq!(done.counts.map(|c| c.succeeded), Some(3));
    server.stop().await;
}
