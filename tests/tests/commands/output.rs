//! Output: what is kept of a long output, and the history as watches replay it.

use tether_proto as pb;
use tether_tests::{command_agent, exec_request, finished, history, send, shell};

use super::*;

/// What `seq 1 n`-like output of `lines` lines is: `line-0\n line-1\n …`.
fn numbered_lines(lines: usize) -> Vec<u8> {
    (0..lines)
        .flat_map(|i| format!("line-{i}\n").into_bytes())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_past_the_limit_keeps_its_head_and_tail_and_counts_what_was_dropped() {
    let (server, _dir) = server().await;
    let (_agent, id) = server
        .spawn_commanded_agent("chatty-1", &[], &["/bin/sh"])
        .await;
    let client = server.commands().await;
    let lines = 5000;
    let mut request = exec_request(
        shell(&format!(
            "i=0; while [ $i -lt {lines} ]; do echo line-$i; i=$((i+1)); done"
        )),
        command_agent(&[&id]),
    );
    request.output_limit_bytes = 4096;
    let sent = send(&client, request).await;
    let done = finished(&client, &sent.command_id, FINISH).await;
    assert_eq!(done.state(), pb::CommandState::Succeeded);
    let invocation = by_agent(&client, &sent.command_id)
        .await
        .remove(&id)
        .expect("one");
    let written = numbered_lines(lines);
    assert_eq!(invocation.stdout_bytes, written.len() as u64);

    let history = history(&client, &sent.command_id, 0, "").await;
    let chunks = history.output(&invocation.invocation_id, pb::OutputStream::Stdout);
    let kept: u64 = chunks.iter().map(|(_, data)| data.len() as u64).sum();
    assert!(kept <= 4096, "kept {kept} bytes of a 4096-byte limit");
    assert_eq!(invocation.dropped_bytes, written.len() as u64 - kept);
    // Every chunk is the output at its offset, the first at 0 and the last at the end.
    for (offset, data) in &chunks {
        let start = usize::try_from(*offset).expect("offset");
        assert_eq!(&written[start..start + data.len()], data.as_slice());
    }
    assert_eq!(chunks.first().map(|c| c.0), Some(0), "the head is kept");
    let (last_offset, last) = chunks.last().expect("chunks");
    assert_eq!(
        *last_offset + last.len() as u64,
        written.len() as u64,
        "the tail is kept"
    );
    assert!(kept >= 2048, "the head half is full");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_resumes_after_any_cursor_and_a_filtered_one_ends_with_its_invocation() {
    let (server, _dir) = server().await;
    let (_a, one) = server
        .spawn_commanded_agent("w-1", &[("team", "w")], &["/bin/echo"])
        .await;
    let (_b, _two) = server
        .spawn_commanded_agent("w-2", &[("team", "w")], &["/bin/echo"])
        .await;
    let client = server.commands().await;
    let sent = send(
        &client,
        exec_request(
            vec!["/bin/echo".into(), "out".into()],
            pb::CommandTargets {
                label_selector: "team=w".into(),
                ..Default::default()
            },
        ),
    )
    .await;
    finished(&client, &sent.command_id, FINISH).await;
    let full = history(&client, &sent.command_id, 0, "").await;
    let cursors = full.cursors();
    assert!(cursors.len() >= 10, "{cursors:?}");
    let middle = cursors[cursors.len() / 2];
    let resumed = history(&client, &sent.command_id, middle, "").await;
    assert_eq!(
        resumed.cursors(),
        cursors
            .iter()
            .copied()
            .filter(|c| *c > middle)
            .collect::<Vec<_>>()
    );
    // One agent's invocation only: its events, then the end of the stream.
    let only = history(&client, &sent.command_id, 0, &one).await;
    let invocations = by_agent(&client, &sent.command_id).await;
    let mine = &invocations[&one].invocation_id;
    for event in &only.events {
        match &event.event {
            Some(pb::watch_command_response::Event::Invocation(i)) => {
                assert_eq!(&i.invocation_id, mine)
            }
            Some(pb::watch_command_response::Event::Output(o)) => {
                assert_eq!(&o.invocation_id, mine)
            }
            _ => {}
        }
    }
    assert_eq!(
        only.output(mine, pb::OutputStream::Stdout),
        [(0, b"out\n".to_vec())]
    );
    let status = client
        .clone()
        .watch_command(pb::WatchCommandRequest {
            command_id: sent.command_id.clone(),
            agent_id: "not-a-target".into(),
            ..Default::default()
        })
        .await
        .expect_err("an agent that is not a target");
    assert_eq!(status.code(), tonic::Code::NotFound);
    server.stop().await;
}
