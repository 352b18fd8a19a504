//! [`Healthy`]: a real agent that keeps reporting while a test abuses the server through other
//! connections, and the check that it lost nothing (acks kept coming, same session, online).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tether_proto as pb;
use tokio::task::JoinHandle;

use crate::{TestAgent, TestServer, eventually};

/// Longest the healthy agent may go without a new acknowledgement while another connection
/// abuses the server. Its metrics interval is 200 ms; stale-after is 1.2 s.
const MAX_STALL: Duration = Duration::from_secs(3);

/// A real agent on its own connection, and a task recording the longest time its acknowledged
/// seq stood still.
pub struct Healthy {
    agent: TestAgent,
    id: String,
    /// Acknowledged seq when the abuse started.
    acked: u64,
    sessions: u64,
    watching: Arc<AtomicBool>,
    longest_stall: JoinHandle<Duration>,
}

impl Healthy {
    /// Starts the agent and waits for its first acknowledgement.
    pub async fn start(server: &TestServer) -> Self {
        let agent = server.spawn_agent("healthy", &[("role", "canary")]).await;
        let id = agent.id().await;
        let acked = eventually("the healthy agent's first ack", || async {
            let seq = agent.handle.stats.samples_acked_seq();
            (seq >= 1).then_some(seq)
        })
        .await;
        let sessions = agent.handle.stats.sessions_started();
        let watching = Arc::new(AtomicBool::new(true));
        let longest_stall = tokio::spawn({
            let stats = agent.handle.stats.clone();
            let watching = watching.clone();
            async move {
                let mut last = stats.samples_acked_seq();
                let mut since = Instant::now();
                let mut longest = Duration::ZERO;
                while watching.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    let seq = stats.samples_acked_seq();
                    if seq > last {
                        last = seq;
                        since = Instant::now();
                    }
                    longest = longest.max(since.elapsed());
                }
                longest
            }
        });
        Self {
            agent,
            id,
            acked,
            sessions,
            watching,
            longest_stall,
        }
    }

    /// Asserts that the agent kept reporting throughout the abuse, on the same session, and
    /// that the server still answers `ListAgents` with it online; then stops the agent.
    pub async fn assert_unaffected(self, server: &TestServer) {
        let acked = self.acked;
        let stats = self.agent.handle.stats.clone();
        let now = eventually(
            "the healthy agent's acked seq to keep increasing",
            || async {
                let seq = stats.samples_acked_seq();
                (seq > acked).then_some(seq)
            },
        )
        .await;
        self.watching.store(false, Ordering::Relaxed);
        let stall = self.longest_stall.await.expect("stall watcher");
        assert!(
            stall < MAX_STALL,
            "the healthy agent went {stall:?} without an ack during the abuse (acked {acked} -> {now})"
        );
        assert_eq!(
            stats.sessions_started(),
            self.sessions,
            "the healthy agent's session was not disturbed"
        );
        let agents = server
            .fleet()
            .await
            .list_agents(pb::ListAgentsRequest::default())
            .await
            .expect("the server still answers ListAgents")
            .into_inner()
            .agents;
        let healthy = agents
            .iter()
            .find(|a| a.agent_id == self.id)
            .expect("the healthy agent is listed");
        assert_eq!(healthy.status, pb::AgentStatus::Online as i32);
        self.agent.stop().await;
    }
}
