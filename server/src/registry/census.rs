//! What the Prometheus scrape counts in the registry: agents by org and status, and the
//! watchers with the events queued for them.
//!
//! Agents come from the counts each org keeps with its index (`registry/index.rs`), so a scrape
//! costs a pass over the orgs, not over the agents; watchers are few (bounded per org).

use crate::domain::{AgentStatus, OrgId};

use super::Registry;

/// The statuses in the order of [`Census::orgs`]' counts.
pub const STATUSES: [AgentStatus; 4] = [
    AgentStatus::Online,
    AgentStatus::Stale,
    AgentStatus::Offline,
    AgentStatus::Expired,
];

/// Agents and watchers, counted at one instant.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Census {
    /// Each org with agents, and its agents by status (in the order of [`STATUSES`]).
    pub orgs: Vec<(OrgId, [u64; 4])>,
    /// Open watch streams.
    pub watchers: u64,
    /// Events queued for all watchers, not yet read by their clients.
    pub queued_events: u64,
    /// Events queued for the watcher furthest behind.
    pub max_queued_events: u64,
}

// === impl Registry ===

impl Registry {
    /// Counts the agents of every org by status, and the watchers and their queues.
    pub fn census(&self) -> Census {
        let inner = self.read();
        let orgs = inner
            .orgs
            .iter()
            .filter(|(_, agents)| agents.len() > 0)
            .map(|(org, agents)| {
                let summary = agents.summary();
                let counts = [
                    summary.online,
                    summary.stale,
                    summary.offline,
                    summary.expired,
                ]
                .map(u64::from);
                (org.clone(), counts)
            })
            .collect();
        let (watchers, queued_events, max_queued_events) = inner.watch_census();
        Census {
            orgs,
            watchers,
            queued_events,
            max_queued_events,
        }
    }
}
