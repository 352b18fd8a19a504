//! What alert rules read of the registry: the agents a rule's selector picks that are silent
//! or critical, and how many of them are online, answered from the org's index.
//!
//! Cost: one read lock per call; the selector is a few bitmap operations over the org's index
//! (`registry/index.rs`), and only the agents in the answer are touched (silent or critical
//! ones, usually few), never a pass over the org. The online ratio touches no agent at all.

use std::time::SystemTime;

use tether_proto::selector::Selector;

use super::{AgentFilter, Registry};
use crate::domain::{AgentId, AgentStatus, Health, OrgId};

/// An agent a rule's condition holds for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub id: AgentId,
    pub name: String,
    pub status: AgentStatus,
    /// For silent agents, the last message received (or, if none ever was, since when it has
    /// been in its status); for critical ones, unused (`since` of its status).
    pub since: SystemTime,
}

// === impl Registry ===

impl Registry {
    /// The agents of `org` matching `selector` that are stale or offline (not expired).
    pub fn silent_agents(&self, org: &OrgId, selector: &Selector) -> Vec<Candidate> {
        self.candidates(
            org,
            selector,
            &[AgentStatus::Stale, AgentStatus::Offline],
            None,
        )
    }

    /// The agents of `org` matching `selector`, not expired, whose health is critical.
    pub fn critical_agents(&self, org: &OrgId, selector: &Selector) -> Vec<Candidate> {
        self.candidates(org, selector, &[], Some(Health::Critical))
    }

    /// How many agents of `org` matching `selector` are online, and how many there are (expired
    /// agents aside).
    pub fn online_count(&self, org: &OrgId, selector: &Selector) -> (u64, u64) {
        let inner = self.read();
        let Some(agents) = inner.orgs.get(org) else {
            return (0, 0);
        };
        let selected = agents.select(&AgentFilter {
            selector: selector.clone(),
            ..AgentFilter::default()
        });
        (
            agents.count_status(&selected, AgentStatus::Online),
            selected.len(),
        )
    }

    fn candidates(
        &self,
        org: &OrgId,
        selector: &Selector,
        statuses: &[AgentStatus],
        health: Option<Health>,
    ) -> Vec<Candidate> {
        let inner = self.read();
        let Some(agents) = inner.orgs.get(org) else {
            return Vec::new();
        };
        let mut selected = agents.select(&AgentFilter {
            statuses: statuses.to_vec(),
            selector: selector.clone(),
            ..AgentFilter::default()
        });
        if let Some(health) = health {
            selected = agents.with_health(&selected, health);
        }
        agents
            .selected(&selected)
            .map(|entry| Candidate {
                id: entry.record().id.clone(),
                name: entry.record().name.clone(),
                status: entry.status(),
                since: entry.live_last_seen().unwrap_or(entry.since),
            })
            .collect()
    }
}
