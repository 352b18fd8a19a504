//! [`TestAgent`]: a real agent (the `tether-agent` library) running in this process, with a
//! synthetic collector so that many agents on one host look like distinct machines.

use std::path::Path;
use std::time::Duration;

use crate::eventually;

/// A real agent running in this process.
pub struct TestAgent {
    pub handle: tether_agent::AgentHandle,
    pub state_dir: tempfile::TempDir,
    pub hostname: String,
}

/// An agent configuration for `url` in `state_dir`: the given labels and enrollment token, and
/// a short reconnect backoff so that tests see reconnections within a second.
pub fn agent_config(
    url: &str,
    state_dir: &Path,
    labels: &[(&str, &str)],
    enroll_token: Option<String>,
) -> tether_agent::AgentConfig {
    let mut config = tether_agent::AgentConfig::new(url, state_dir);
    config.enroll_token = enroll_token;
    config.labels = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    config.backoff.initial = Duration::from_millis(100);
    config.backoff.max = Duration::from_millis(500);
    config
}

impl TestAgent {
    /// Starts an agent for the synthetic machine `hostname` running `os`, against `url`.
    pub fn spawn(
        url: &str,
        state_dir: tempfile::TempDir,
        hostname: &str,
        os: &str,
        labels: &[(&str, &str)],
        enroll_token: Option<String>,
    ) -> Self {
        let config = agent_config(url, state_dir.path(), labels, enroll_token);
        Self::spawn_with(config, state_dir, hostname, os)
    }

    /// Starts an agent with `config` (see [`agent_config`]) for the synthetic machine
    /// `hostname` running `os`; `state_dir` must be the config's.
    pub fn spawn_with(
        config: tether_agent::AgentConfig,
        state_dir: tempfile::TempDir,
        hostname: &str,
        os: &str,
    ) -> Self {
        let collector =
            tether_agent::SyntheticCollector::new(hostname, format!("hw-{hostname}"), os);
        Self::spawn_collecting(config, state_dir, hostname, collector)
    }

    /// Starts an agent with `config` for the synthetic Linux machine `hostname` whose own
    /// hardware id is `hardware_id` (machines cloned from one image share theirs).
    pub fn spawn_machine(
        config: tether_agent::AgentConfig,
        state_dir: tempfile::TempDir,
        hostname: &str,
        hardware_id: &str,
    ) -> Self {
        let collector = tether_agent::SyntheticCollector::new(hostname, hardware_id, "linux");
        Self::spawn_collecting(config, state_dir, hostname, collector)
    }

    fn spawn_collecting(
        config: tether_agent::AgentConfig,
        state_dir: tempfile::TempDir,
        hostname: &str,
        collector: tether_agent::SyntheticCollector,
    ) -> Self {
        let handle = tether_agent::spawn(config, Box::new(collector));
        Self {
            handle,
            state_dir,
            hostname: hostname.to_owned(),
        }
    }

    /// The agent id, once enrolled.
    pub async fn id(&self) -> String {
        eventually("the agent to enroll", || async {
            self.handle.stats.agent_id()
        })
        .await
    }

    /// Stops the agent (it says Goodbye) and waits for it.
    pub async fn stop(self) -> tempfile::TempDir {
        self.handle.shutdown();
        if let Err(e) = self.handle.join().await {
            panic!("agent failed: {e}");
        }
        self.state_dir
    }
}
