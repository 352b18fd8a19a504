//! Agents and watchers that misbehave: what they get, and what healthy ones keep.

use tether_proto as pb;
use tether_tests::{RawSession, command_agent, exec_request, finished, history, send, shell};
use tonic::Code;

use super::*;

use pb::connect_request::Message as In;
use pb::connect_response::Message as Out;

/// Reads `session` until an offer arrives (skipping acks and pongs); returns its invocation id.
async fn next_offer(session: &mut RawSession) -> String {
    loop {
        match session.recv().await.expect("stream") {
            Some(Out::CommandOffer(offer)) => return offer.invocation_id,
            Some(_) => {}
            None => panic!("the stream ended before an offer"),
        }
    }
}

/// Reads `session` until a `CommandAck` names `id`; returns its seq.
async fn ack_of(session: &mut RawSession, id: &str) -> u64 {
    loop {
        match session.recv().await.expect("stream") {
            Some(Out::CommandAck(ack)) => {
                if let Some(found) = ack.acks.iter().find(|a| a.invocation_id == id) {
                    return found.seq;
                }
            }
            Some(_) => {}
            None => panic!("the stream ended before the ack"),
        }
    }
}

fn report(updates: Vec<pb::CommandUpdate>) -> In {
    In::Commands(pb::CommandReport { updates })
}

fn update(id: &str, seq: u64, state: pb::InvocationState) -> pb::CommandUpdate {
    pb::CommandUpdate {
        invocation_id: id.to_owned(),
        seq,
        state: state as i32,
        exit_code: (state == pb::InvocationState::Succeeded).then_some(0),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_reporting_on_another_agents_invocation_is_acked_and_changes_nothing() {
    let (server, _dir) = server().await;
    let (victim, victim_cred) = server.enroll("victim-1", &[]).await;
    let (thief, thief_cred) = server.enroll("thief-1", &[]).await;
    let (mut victim_session, _) = RawSession::hello(&server, &victim, &victim_cred, "victim-1")
        .await
        .expect("victim session");
    let (mut thief_session, _) = RawSession::hello(&server, &thief, &thief_cred, "thief-1")
        .await
        .expect("thief session");
    server.wait_status(&victim, pb::AgentStatus::Online).await;
    let client = server.commands().await;
    let sent = send(
        &client,
        exec_request(vec!["/bin/true".into()], command_agent(&[&victim])),
    )
    .await;
    let id = next_offer(&mut victim_session).await;

    use pb::InvocationState::*;
    thief_session
        .send(report(vec![
            update(&id, 1, Running),
            update(&id, 2, Succeeded),
        ]))
        .await;
    assert_eq!(
        ack_of(&mut thief_session, &id).await,
        2,
        "acked, not stored"
    );
    let invocation = &by_agent(&client, &sent.command_id).await[&victim];
    assert_eq!(invocation.state(), Offered, "the thief changed nothing");

    victim_session
        .send(report(vec![
            update(&id, 1, Running),
            update(&id, 2, Succeeded),
        ]))
        .await;
    assert_eq!(ack_of(&mut victim_session, &id).await, 2);
    let done = finished(&client, &sent.command_id, FINISH).await;
    assert_eq!(done.state(), pb::CommandState::Succeeded);
    let history = history(&client, &sent.command_id, 0, "").await;
    assert_eq!(history.states(&id), [Queued, Offered, Running, Succeeded]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_reports_end_the_stream_and_duplicates_are_acked_again() {
    let (server, _dir) = server().await;
    let (_healthy, healthy) = server
        .spawn_commanded_agent("healthy-1", &[], &["/bin/echo"])
        .await;
    let (rogue, cred) = server.enroll("rogue-1", &[]).await;
    let open = || RawSession::hello(&server, &rogue, &cred, "rogue-1");
    let (mut session, _) = open().await.expect("session");
    server.wait_status(&rogue, pb::AgentStatus::Online).await;
    let client = server.commands().await;
    let sent = send(
        &client,
        exec_request(vec!["/bin/true".into()], command_agent(&[&rogue])),
    )
    .await;
    let id = next_offer(&mut session).await;
    use pb::InvocationState::*;

    let too_many: Vec<_> = (1..=tether_proto::command::MAX_UPDATES_PER_REPORT as u64 + 1)
        .map(|seq| update(&id, seq, Unspecified))
        .collect();
    let huge_chunk = pb::CommandUpdate {
        output: vec![pb::OutputChunk {
            stream: pb::OutputStream::Stdout as i32,
            offset: 0,
            data: vec![b'x'; tether_proto::command::MAX_UPDATE_OUTPUT_BYTES + 1],
        }],
        ..update(&id, 1, Running)
    };
    let malformed = [
        too_many,
        vec![update(&id, 2, Running), update(&id, 1, Running)],
        vec![update(&id, 0, Running)],
        vec![update(&id, 1, Queued)],
        vec![huge_chunk],
    ];
    for (i, updates) in malformed.into_iter().enumerate() {
        if i > 0 {
            // Reconnected: the invocation it never journaled is offered again.
            let (again, _) = open().await.expect("session");
            session = again;
            assert_eq!(next_offer(&mut session).await, id);
        }
        session.send(report(updates)).await;
        let status = session.wait_error().await;
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "report {i}: {status:?}"
        );
    }
    assert_eq!(
        by_agent(&client, &sent.command_id).await[&rogue].state(),
        Offered,
        "nothing of the refused reports was stored"
    );

    let (again, _) = open().await.expect("session");
    session = again;
    assert_eq!(next_offer(&mut session).await, id);
    session.send(report(vec![update(&id, 1, Running)])).await;
    assert_eq!(ack_of(&mut session, &id).await, 1);
    // The same update again: acked with what is stored, not stored twice.
    session.send(report(vec![update(&id, 1, Running)])).await;
    assert_eq!(ack_of(&mut session, &id).await, 1);
    // A jump in seq is accepted (the updates between were lost by the agent).
    session.send(report(vec![update(&id, 5, Succeeded)])).await;
    assert_eq!(ack_of(&mut session, &id).await, 5);
    // After the end, more updates are acked and ignored.
    session.send(report(vec![update(&id, 6, Failed)])).await;
    assert_eq!(ack_of(&mut session, &id).await, 6);
    let done = finished(&client, &sent.command_id, FINISH).await;
    assert_eq!(done.state(), pb::CommandState::Succeeded);
    let history = history(&client, &sent.command_id, 0, "").await;
    assert_eq!(history.states(&id), [Queued, Offered, Running, Succeeded]);

    // The healthy agent was not disturbed.
    let ok = send(
        &client,
        exec_request(
            vec!["/bin/echo".into(), "ok".into()],
            command_agent(&[&healthy]),
        ),
    )
    .await;
    let ok = finished(&client, &ok.command_id, FINISH).await;
    assert_eq!(ok.state(), pb::CommandState::Succeeded);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_that_never_reads_costs_healthy_clients_nothing() {
    let (server, _dir) = server().await;
    let (_agent, id) = server
        .spawn_commanded_agent("loud-1", &[], &["/bin/sh"])
        .await;
    let client = server.commands().await;
    // About 6 MB of output, all kept (the limit is 8 MiB).
    let mut request = exec_request(
        shell(
            "i=0; while [ $i -lt 3000 ]; do head -c 2000 /dev/zero | tr '\\0' x; echo; i=$((i+1)); done",
        ),
        command_agent(&[&id]),
    );
    request.output_limit_bytes = 8 << 20;
    let sent = send(&client, request).await;
    // A watcher that takes the first message and then never reads again.
    let mut stalled = client
        .clone()
        .watch_command(pb::WatchCommandRequest {
            command_id: sent.command_id.clone(),
            ..Default::default()
        })
        .await
        .expect("watch")
        .into_inner();
    stalled.message().await.expect("first message");

    let done = finished(&client, &sent.command_id, FINISH).await;
    assert_eq!(done.state(), pb::CommandState::Succeeded);
    let invocation = by_agent(&client, &sent.command_id)
        .await
        .remove(&id)
        .expect("one");
    assert_eq!(invocation.stdout_bytes, 3000 * 2001);
    assert_eq!(invocation.dropped_bytes, 0);
    // A healthy watcher gets all of it, in order, while the other sits.
    let full = history(&client, &sent.command_id, 0, "").await;
    let kept: usize = full
        .output(&invocation.invocation_id, pb::OutputStream::Stdout)
        .iter()
        .map(|(_, data)| data.len())
        .sum();
    assert_eq!(kept, 3000 * 2001);
    // And the server goes on with other commands.
    let next = send(&client, exec_request(shell("true"), command_agent(&[&id]))).await;
    finished(&client, &next.command_id, FINISH).await;
    drop(stalled);
    server.stop().await;
}
