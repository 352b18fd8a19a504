//! Commands end to end: a real server, real agents (the agent library, and as processes where
//! they are killed), real programs. Each module is one concern:
//!
//! - `fanout`: targets (selector, ids, orgs, offline), the agent's allowlist, idempotency,
//!   who may send, the refusals of bad requests;
//! - `delivery`: offline agents, delivery deadlines, timeouts, cancel;
//! - `rollout`: the error budget, canaries, pause and resume;
//! - `output`: what is kept of large output, the history and its cursors;
//! - `attack`: agents and watchers that misbehave, and what healthy ones keep;
//! - `cli`: `tetherctl cmd run` against the server;
//! - `crash`: a server and an agent killed with SIGKILL.

use std::time::Duration;

use tether_proto as pb;
use tether_tests::{CommandClient, TestServer, fast_config, trace_init};

mod attack;
mod cli;
mod crash;
mod delivery;
mod fanout;
mod output;
mod rollout;

/// Longest wait for a command to finish in these tests.
const FINISH: Duration = Duration::from_secs(30);

/// A server with the tests' short intervals, and its data directory.
async fn server() -> (TestServer, tempfile::TempDir) {
    trace_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(fast_config(dir.path())).await;
    (server, dir)
}

/// `request` with its targets including offline agents.
fn including_offline(mut request: pb::SendCommandRequest) -> pb::SendCommandRequest {
    if let Some(targets) = request.targets.as_mut() {
        targets.include_offline = true;
    }
    request
}

/// A request for the built-in `sleep` of `secs` seconds on `targets`, with `timeout_secs`.
fn sleep_request(
    secs: i64,
    timeout_secs: i64,
    targets: pb::CommandTargets,
) -> pb::SendCommandRequest {
    pb::SendCommandRequest {
        spec: Some(pb::CommandSpec {
            kind: Some(pb::command_spec::Kind::Sleep(pb::SleepSpec {
                duration: Some(prost_types::Duration {
                    seconds: secs,
                    nanos: 0,
                }),
            })),
        }),
        targets: Some(targets),
        timeout: Some(prost_types::Duration {
            seconds: timeout_secs,
            nanos: 0,
        }),
        ..Default::default()
    }
}

/// The invocations of command `id`, by agent id.
async fn by_agent(
    client: &CommandClient,
    id: &str,
) -> std::collections::BTreeMap<String, pb::Invocation> {
    tether_tests::invocations(client, id)
        .await
        .into_iter()
        .map(|i| (i.agent_id.clone(), i))
        .collect()
}

/// Waits until invocation `n` of command `id` is in `state`.
async fn until_state(client: &CommandClient, id: &str, agent: &str, state: pb::InvocationState) {
    tether_tests::eventually_within(
        FINISH,
        &format!("{agent}'s invocation to be {state:?}"),
        || async {
            let invocations = by_agent(client, id).await;
            (invocations.get(agent)?.state() == state).then_some(())
        },
    )
    .await;
}
