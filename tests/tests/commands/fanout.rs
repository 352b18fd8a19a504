//! Targets, the agent's allowlist, idempotency, roles and the audit trail, and the refusal of
//! bad requests.

use tether_proto as pb;
use tether_tests::{command_agent, create_token, exec_request, finished, history, send};
use tonic::Code;

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_selector_fans_out_to_the_matching_agents_and_each_runs_once() {
    let (server, _dir) = server().await;
    let echo = ["/bin/echo"];
    let (_web1, web1) = server
        .spawn_commanded_agent("web-1", &[("env", "prod")], &echo)
        .await;
    let (_web2, web2) = server
        .spawn_commanded_agent("web-2", &[("env", "prod")], &echo)
        .await;
    let (_dev, dev) = server
        .spawn_commanded_agent("dev-1", &[("env", "dev")], &echo)
        .await;
    let client = server.commands().await;
    let mut request = exec_request(
        vec!["/bin/echo".into(), "hello".into()],
        pb::CommandTargets {
            label_selector: "env=prod".into(),
            ..Default::default()
        },
    );
    request.description = "say hello".into();
    let sent = send(&client, request).await;
    assert_eq!(sent.counts.as_ref().map(|c| c.total), Some(2));

    let done = finished(&client, &sent.command_id, FINISH).await;
    assert_eq!(done.state(), pb::CommandState::Succeeded);
    let invocations = by_agent(&client, &sent.command_id).await;
    assert_eq!(
        invocations.keys().cloned().collect::<Vec<_>>(),
        {
            let mut ids = vec![web1.clone(), web2.clone()];
            ids.sort();
            ids
        },
        "the dev agent is not a target"
    );
    assert!(!invocations.contains_key(&dev));
    let history = history(&client, &sent.command_id, 0, "").await;
    for invocation in invocations.values() {
        assert_eq!(invocation.state(), pb::InvocationState::Succeeded);
        assert_eq!(invocation.exit_code, Some(0));
        use pb::InvocationState::*;
        assert_eq!(
            history.states(&invocation.invocation_id),
            [Queued, Offered, Running, Succeeded],
            "each state once, the first one stored too"
        );
        assert_eq!(
            history.output(&invocation.invocation_id, pb::OutputStream::Stdout),
            [(0, b"hello\n".to_vec())]
        );
    }
    let cursors = history.cursors();
    assert_eq!(cursors, (1..=cursors.len() as u64).collect::<Vec<_>>());
    assert_eq!(
        history.command().map(pb::Command::state),
        Some(pb::CommandState::Succeeded)
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_refuses_what_its_allowlist_does_not_name() {
    let (server, _dir) = server().await;
    let (_agent, id) = server
        .spawn_commanded_agent("locked-1", &[], &["/bin/echo"])
        .await;
    let client = server.commands().await;
    let sent = send(
        &client,
        exec_request(vec!["/bin/true".into()], command_agent(&[&id])),
    )
    .await;
    let done = finished(&client, &sent.command_id, FINISH).await;
    assert_eq!(done.state(), pb::CommandState::Failed);
    let invocation = &by_agent(&client, &sent.command_id).await[&id];
    assert_eq!(invocation.state(), pb::InvocationState::Rejected);
    assert!(
        invocation.reason.contains("/bin/true"),
        "the reason names the program: {:?}",
        invocation.reason
    );
    assert_eq!(invocation.exit_code, None);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_never_reaches_another_orgs_agents() {
    let (server, _dir) = server().await;
    let globex = server.create_org("globex").await;
    let mut globex_admin = server.admin_as(Some(&globex.admin_secret)).await;
    let token = globex_admin
        .create_enrollment_token(pb::CreateEnrollmentTokenRequest::default())
        .await
        .expect("enrollment token")
        .into_inner()
        .secret;
    let state = tempfile::tempdir().expect("state dir");
    let foreign = server.spawn_agent_in("globex-1", &[("env", "prod")], state, Some(token), None);
    let foreign_id = foreign.id().await;
    let client = server.commands().await;

    // The default org has no agent labelled env=prod: the selector matches nothing here.
    let by_selector = exec_request(
        vec!["/bin/true".into()],
        pb::CommandTargets {
            label_selector: "env=prod".into(),
            include_offline: true,
            ..Default::default()
        },
    );
    let refused = client
        .clone()
        .send_command(by_selector.clone())
        .await
        .expect_err("nothing matches");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    // Naming the other org's agent is naming an agent that does not exist.
    let by_id = exec_request(vec!["/bin/true".into()], command_agent(&[&foreign_id]));
    let refused = client
        .clone()
        .send_command(by_id)
        .await
        .expect_err("not this org's agent");
    assert_eq!(refused.code(), Code::NotFound, "{refused:?}");

    // An agent of this org with the label is the only target.
    let (_own, own) = server
        .spawn_commanded_agent("own-1", &[("env", "prod")], &["/bin/true"])
        .await;
    let sent = send(&client, by_selector).await;
    let targets: Vec<String> = by_agent(&client, &sent.command_id)
        .await
        .into_keys()
        .collect();
    assert_eq!(targets, [own]);
    // And the other org does not see the command.
    let mut globex_commands = server.commands_as(Some(&globex.admin_secret)).await;
    let status = globex_commands
        .get_command(pb::GetCommandRequest {
            command_id: sent.command_id.clone(),
        })
        .await
        .expect_err("another org's command");
    assert_eq!(status.code(), Code::NotFound);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_reads_commands_but_cannot_send_or_steer_them() {
    let (server, _dir) = server().await;
    let (_agent, id) = server
        .spawn_commanded_agent("viewed-1", &[], &["/bin/true"])
        .await;
    let mut admin = server.admin().await;
    let viewer = create_token(&mut admin, "viewer", pb::Role::Viewer, None).await;
    let mut as_viewer = server.commands_as(Some(&viewer.secret)).await;
    let request = exec_request(vec!["/bin/true".into()], command_agent(&[&id]));
    let refused = as_viewer
        .send_command(request.clone())
        .await
        .expect_err("viewers do not send");
    assert_eq!(refused.code(), Code::PermissionDenied);

    let sent = send(&server.commands().await, request).await;
    let read = as_viewer
        .get_command(pb::GetCommandRequest {
            command_id: sent.command_id.clone(),
        })
        .await
        .expect("viewers read");
    assert_eq!(
        read.into_inner().command.map(|c| c.command_id),
        Some(sent.command_id.clone())
    );
    let refused = as_viewer
        .cancel_command(pb::CancelCommandRequest {
            command_id: sent.command_id.clone(),
        })
        .await
        .expect_err("viewers do not cancel");
    assert_eq!(refused.code(), Code::PermissionDenied);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_pause_resume_and_cancel_are_audited_with_the_command_and_its_targets() {
    let (server, _dir) = server().await;
    let (_agent, id) = server
        .spawn_commanded_agent("audited-1", &[("env", "prod")], &["/bin/true"])
        .await;
    let client = server.commands().await;
    let targets = pb::CommandTargets {
        agent_ids: vec![id.clone()],
        label_selector: "env=prod".into(),
        include_offline: true,
    };
    let sent = send(&client, sleep_request(30, 60, targets)).await;
    let command_id = sent.command_id.clone();
    let mut steer = client.clone();
    steer
        .pause_command(pb::PauseCommandRequest {
            command_id: command_id.clone(),
        })
        .await
        .expect("pause");
    steer
        .resume_command(pb::ResumeCommandRequest {
            command_id: command_id.clone(),
        })
        .await
        .expect("resume");
    steer
        .cancel_command(pb::CancelCommandRequest {
            command_id: command_id.clone(),
        })
        .await
        .expect("cancel");
    let done = finished(&client, &command_id, FINISH).await;
    assert_eq!(done.state(), pb::CommandState::Cancelled);

    let events = tether_tests::list_audit(&server.admin().await, Default::default()).await;
    let audited: Vec<&pb::AuditEvent> = events
        .iter()
        .filter(|e| e.method.starts_with("/tether.v1.CommandService/"))
        .collect();
    let methods: Vec<&str> = audited.iter().map(|e| e.method.as_str()).collect();
    assert_eq!(
        methods,
        [
            "/tether.v1.CommandService/SendCommand",
            "/tether.v1.CommandService/PauseCommand",
            "/tether.v1.CommandService/ResumeCommand",
            "/tether.v1.CommandService/CancelCommand",
        ],
        "every send and steer, in order; reads are not audited"
    );
    for event in &audited {
        assert_eq!(event.outcome(), pb::AuditOutcome::Succeeded, "{event:?}");
        assert_eq!(event.actor_role(), pb::Role::Admin, "{event:?}");
        assert!(event.target.contains(&command_id), "{event:?}");
    }
    let send_target = &audited[0].target;
    for part in ["to 1 agents", "selector env=prod", &id, "offline included"] {
        assert!(send_target.contains(part), "{part:?} in {send_target:?}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_returns_the_first_command_and_runs_nothing_more() {
    let (server, _dir) = server().await;
    let (_agent, id) = server
        .spawn_commanded_agent("idem-1", &[], &["/bin/true"])
        .await;
    let client = server.commands().await;
    let mut request = exec_request(vec!["/bin/true".into()], command_agent(&[&id]));
    request.idempotency_key = "deploy-42".into();
    let first = client
        .clone()
        .send_command(request.clone())
        .await
        .expect("send")
        .into_inner();
    assert!(!first.existing);
    let first = first.command.expect("command");
    finished(&client, &first.command_id, FINISH).await;
    let again = client
        .clone()
        .send_command(request)
        .await
        .expect("send again")
        .into_inner();
    assert!(again.existing);
    assert_eq!(
        again.command.map(|c| c.command_id),
        Some(first.command_id.clone())
    );
    let listed = client
        .clone()
        .list_commands(pb::ListCommandsRequest::default())
        .await
        .expect("list")
        .into_inner()
        .commands;
    assert_eq!(listed.len(), 1, "one command, not two");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_agents_are_skipped_unless_included_and_bad_requests_are_refused() {
    let (server, _dir) = server().await;
    let (agent, id) = server
        .spawn_commanded_agent("gone-1", &[], &["/bin/true"])
        .await;
    agent.stop().await;
    server.wait_status(&id, pb::AgentStatus::Offline).await;
    let client = server.commands().await;
    let request = exec_request(vec!["/bin/true".into()], command_agent(&[&id]));
    let sent = send(&client, request.clone()).await;
    let done = finished(&client, &sent.command_id, FINISH).await;
    assert_eq!(done.state(), pb::CommandState::Failed);
    let invocation = &by_agent(&client, &sent.command_id).await[&id];
    assert_eq!(invocation.state(), pb::InvocationState::Skipped);
    assert_eq!(invocation.skip_reason(), pb::SkipReason::Offline);

    let with = |edit: &dyn Fn(&mut pb::SendCommandRequest)| {
        let mut request = request.clone();
        edit(&mut request);
        request
    };
    let exec = |argv: Vec<String>, stdin: Vec<u8>| {
        Some(pb::CommandSpec {
            kind: Some(pb::command_spec::Kind::Exec(pb::ExecSpec {
                argv,
                stdin,
                ..Default::default()
            })),
        })
    };
    let bad = [
        with(&|r| r.targets = None),
        with(&|r| r.spec = None),
        with(&|r| r.spec = exec(vec!["true".into()], vec![])),
        with(&|r| r.spec = exec(vec!["/bin/true\u{1b}[2J".into()], vec![])),
        with(&|r| {
            r.spec = exec(
                vec!["/bin/true".into()],
                vec![0; tether_proto::command::MAX_STDIN_BYTES + 1],
            )
        }),
        with(&|r| {
            r.rollout = Some(pb::RolloutPolicy {
                max_concurrency: Some(pb::Budget {
                    value: Some(pb::budget::Value::Count(0)),
                }),
                ..Default::default()
            })
        }),
        with(&|r| {
            r.rollout = Some(pb::RolloutPolicy {
                max_errors: Some(pb::Budget {
                    value: Some(pb::budget::Value::Percent(101)),
                }),
                ..Default::default()
            })
        }),
        with(&|r| r.description = "bell\u{7}".into()),
        with(&|r| {
            r.timeout = Some(prost_types::Duration {
                seconds: 10 * 24 * 3600,
                nanos: 0,
            })
        }),
        with(&|r| r.output_limit_bytes = u64::MAX),
    ];
    for request in bad {
        let status = client
            .clone()
            .send_command(request.clone())
            .await
            .expect_err("refused");
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{request:?}: {status:?}"
        );
    }
    let listed = client
        .clone()
        .list_commands(pb::ListCommandsRequest::default())
        .await
        .expect("list")
        .into_inner()
        .commands;
    assert_eq!(listed.len(), 1, "nothing refused was stored");
    server.stop().await;
}
