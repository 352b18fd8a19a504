//! Helpers over `CommandService`: requests, sending, waiting for a command's end, and its whole
//! history as `WatchCommand` replays it.

use std::time::Duration;

use tether_proto as pb;

use crate::{CommandClient, EVENTUALLY, eventually_within};

/// `/bin/sh -c script`.
pub fn shell(script: &str) -> Vec<String> {
    vec!["/bin/sh".into(), "-c".into(), script.into()]
}

/// Targets naming agents by id.
pub fn command_agent(ids: &[&str]) -> pb::CommandTargets {
    pb::CommandTargets {
        agent_ids: ids.iter().map(|id| (*id).to_owned()).collect(),
        label_selector: String::new(),
        include_offline: false,
    }
}

/// A request to run `argv` on `targets`, with a 30 s timeout.
pub fn exec_request(argv: Vec<String>, targets: pb::CommandTargets) -> pb::SendCommandRequest {
    pb::SendCommandRequest {
        spec: Some(pb::CommandSpec {
            kind: Some(pb::command_spec::Kind::Exec(pb::ExecSpec {
                argv,
                ..Default::default()
            })),
        }),
        targets: Some(targets),
        timeout: Some(prost_types::Duration {
            seconds: 30,
            nanos: 0,
        }),
        ..Default::default()
    }
}

/// Sends `request`; returns the command as stored.
pub async fn send(client: &CommandClient, request: pb::SendCommandRequest) -> pb::Command {
    client
        .clone()
        .send_command(request)
        .await
        .unwrap_or_else(|e| panic!("send command: {e:?}"))
        .into_inner()
        .command
        .expect("the sent command")
}

/// Waits (up to `within`) until command `id` is finished; returns it.
pub async fn finished(client: &CommandClient, id: &str, within: Duration) -> pb::Command {
    eventually_within(within, &format!("command {id} to finish"), || {
        let mut client = client.clone();
        async move {
            let command = client
                .get_command(pb::GetCommandRequest {
                    command_id: id.to_owned(),
                })
                .await
                .ok()?
                .into_inner()
                .command?;
            command.finished_at.is_some().then_some(command)
        }
    })
    .await
}

/// Every invocation of command `id`, following pages.
pub async fn invocations(client: &CommandClient, id: &str) -> Vec<pb::Invocation> {
    let mut client = client.clone();
    let mut out = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_invocations(pb::ListInvocationsRequest {
                command_id: id.to_owned(),
                states: vec![],
                page_size: 0,
                page_token,
            })
            .await
            .expect("list invocations")
            .into_inner();
        out.extend(page.invocations);
        if page.next_page_token.is_empty() {
            return out;
        }
        page_token = page.next_page_token;
    }
}

/// A command's stored history, as a watch from cursor 0 to its end returned it.
#[derive(Debug, Default)]
pub struct History {
    pub events: Vec<pb::WatchCommandResponse>,
}

impl History {
    /// The states each invocation reached, in order.
    pub fn states(&self, invocation_id: &str) -> Vec<pb::InvocationState> {
        self.events
            .iter()
            .filter_map(|e| match &e.event {
                Some(pb::watch_command_response::Event::Invocation(i))
                    if i.invocation_id == invocation_id =>
                {
                    Some(i.state())
                }
                _ => None,
            })
            .collect()
    }

    /// The output chunks of an invocation's stream, as (offset, bytes), in order.
    pub fn output(&self, invocation_id: &str, stream: pb::OutputStream) -> Vec<(u64, Vec<u8>)> {
        self.events
            .iter()
            .filter_map(|e| match &e.event {
                Some(pb::watch_command_response::Event::Output(o))
                    if o.invocation_id == invocation_id =>
                {
                    let chunk = o.chunk.as_ref()?;
                    (chunk.stream() == stream).then(|| (chunk.offset, chunk.data.clone()))
                }
                _ => None,
            })
            .collect()
    }

    /// The cursors of the stored events, in order.
    pub fn cursors(&self) -> Vec<u64> {
        self.events
            .iter()
            .map(|e| e.cursor)
            .filter(|c| *c != 0)
            .collect()
    }

    /// The last command message.
    pub fn command(&self) -> Option<&pb::Command> {
        self.events.iter().rev().find_map(|e| match &e.event {
            Some(pb::watch_command_response::Event::Command(c)) => Some(c),
            _ => None,
        })
    }
}

/// Watches command `id` from `after` (filtered to `agent_id` when not empty) until the server
/// ends the stream; panics if it does not end within [`EVENTUALLY`] or ends with an error.
pub async fn history(client: &CommandClient, id: &str, after: u64, agent_id: &str) -> History {
    let mut stream = client
        .clone()
        .watch_command(pb::WatchCommandRequest {
            command_id: id.to_owned(),
            after_cursor: after,
            agent_id: agent_id.to_owned(),
            exclude_output: false,
        })
        .await
        .expect("watch command")
        .into_inner();
    let mut history = History::default();
    tokio::time::timeout(EVENTUALLY, async {
        while let Some(event) = stream.message().await.expect("the watch ends cleanly") {
            history.events.push(event);
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the watch of {id} did not end: {history:?}"));
    history
}
