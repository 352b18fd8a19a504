//! A server with some of everything a store holds, for the backup tests and the store
//! fixture (`store-fixture`): agents with ten hours of samples (sealed chunks, 5-minute and
//! 1-hour rollups, status history), live agents, a finished command with its output, a deleted
//! agent (its tombstone), API and enrollment tokens, a second org, and the audit events of
//! all that.

use std::time::{Duration, SystemTime};

use tether_proto as pb;

use crate::{
    RawSession, TestAgent, TestServer, command_agent, create_token, exec_request, finished, send,
    shell,
};

/// Samples of each agent with history: three minutes apart over ten hours.
pub const HISTORY_SAMPLES: u64 = 200;
/// Time between two samples of an agent with history.
pub const HISTORY_STEP: Duration = Duration::from_secs(180);

/// What [`fill`] made.
pub struct Filled {
    /// Agents with history, disconnected (offline).
    pub historic: Vec<String>,
    /// When their first sample was taken.
    pub history_start: SystemTime,
    /// Real agents still reporting, with their ids.
    pub live: Vec<(TestAgent, String)>,
    /// The finished command (run on the first live agent).
    pub command_id: String,
    /// The deleted agent.
    pub deleted: String,
}

/// Fills `server` (see the module documentation).
pub async fn fill(server: &TestServer) -> Filled {
    let mut admin = server.admin().await;
    let commands = server.commands().await;
    let history_start = SystemTime::now() - HISTORY_STEP * HISTORY_SAMPLES as u32;
    let mut historic = Vec::new();
    for name in ["hist-1", "hist-2"] {
        let (id, credential) = server.enroll(name, &[("kind", "history")]).await;
        let (mut session, _) = RawSession::hello(server, &id, &credential, name)
            .await
            .expect("hello");
        for seqs in (1..=HISTORY_SAMPLES).collect::<Vec<_>>().chunks(50) {
            session
                .send(pb::connect_request::Message::Metrics(pb::MetricsReport {
                    deferred_seq: 0,
                    previous_ack_latency: None,
                    samples: seqs
                        .iter()
                        .map(|&seq| old_sample(history_start, seq))
                        .collect(),
                }))
                .await;
        }
        session.wait_ack(HISTORY_SAMPLES).await.expect("ack");
        drop(session);
        server.wait_status(&id, pb::AgentStatus::Offline).await;
        historic.push(id);
    }
    let (live_1, live_1_id) = server
        .spawn_commanded_agent("live-1", &[("env", "prod")], &["/bin/sh"])
        .await;
    let live_2 = server.spawn_agent("live-2", &[("env", "dev")]).await;
    let live_2_id = live_2.id().await;
    let command = send(
        &commands,
        exec_request(shell("echo backed up"), command_agent(&[&live_1_id])),
    )
    .await;
    finished(&commands, &command.command_id, Duration::from_secs(30)).await;
    let (deleted, _) = server.enroll("deleted-1", &[]).await;
    admin
        .delete_agent(pb::DeleteAgentRequest {
            agent_id: deleted.clone(),
        })
        .await
        .expect("delete agent");
    create_token(&mut admin, "ci", pb::Role::Viewer, None).await;
    create_token(&mut admin, "ops", pb::Role::Operator, None).await;
    server.enrollment_token().await;
    server.create_org("beta").await;
    Filled {
        historic,
        history_start,
        live: vec![(live_1, live_1_id), (live_2, live_2_id)],
        command_id: command.command_id,
        deleted,
    }
}

/// Sample `seq` of an agent whose history starts at `start`, its values varying with `seq`.
fn old_sample(start: SystemTime, seq: u64) -> pb::MetricsSample {
    pb::MetricsSample {
        seq,
        time: Some((start + HISTORY_STEP * seq as u32).into()),
        cpu_percent: (seq % 100) as f64,
        memory_used_bytes: 100 + seq,
        memory_total_bytes: 1000,
        ..Default::default()
    }
}
