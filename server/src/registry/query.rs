//! Queries over the registry: one agent, a filtered page of agents, the fleet summary. Each
//! takes the read lock once and copies out [`AgentView`]s; nothing is held after it returns.
//! A page stops at its byte budget before copying the agent that would exceed it, so a listing
//! costs at most its budget in memory and on the wire whatever the agents hold.
//!
//! Filters are answered by the org's index and the summary by its counts (`registry/index.rs`):
//! a listing touches the agents its filter selects (only to test the substring `query`, which
//! no index answers) and the ones it returns, not the whole org. [`Entry::matches`] is the same
//! filter tested on one agent, for the watch's snapshot pages and the events it takes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tether_proto::selector::Selector;

use super::{AgentView, Agents, Entry, Registry};
use crate::domain::{AgentId, AgentStatus, Health, OrgId};
use crate::session::Session;

/// Filters of `ListAgents` / `WatchAgents`.
#[derive(Clone, Debug, Default)]
pub struct AgentFilter {
    /// Empty: every status but expired (unless `include_expired`).
    pub statuses: Vec<AgentStatus>,
    pub include_expired: bool,
    pub selector: Selector,
    /// Lowercase OS name to match exactly.
    pub os: Option<String>,
    /// Lowercase substring of name or hostname.
    pub query: Option<String>,
    /// Start of the agent id.
    pub id_prefix: Option<String>,
}

/// Counts for `GetFleetSummary`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Summary {
    pub online: u32,
    pub stale: u32,
    pub offline: u32,
    pub expired: u32,
    pub by_os: BTreeMap<String, u32>,
    pub health: BTreeMap<Health, u32>,
}

/// What `ListAgents` asks for: the filter, where the page starts and how large it may be.
#[derive(Clone, Debug, Default)]
pub struct AgentListQuery {
    pub filter: AgentFilter,
    /// Start after this agent id (the previous page's last).
    pub after: Option<AgentId>,
    pub page_size: usize,
    /// Most bytes of agents in the page (see `registry/size.rs`); the page ends early, with a
    /// next page, before the agent that would exceed it. A page holds at least one agent.
    pub max_bytes: usize,
}

/// An agent a command targets, as resolved when the command is sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub id: AgentId,
    pub name: String,
    /// Online with a live session (not stale, not offline).
    pub online: bool,
}

/// One page of a listing.
#[derive(Clone, Debug, Default)]
pub struct Page {
    pub agents: Vec<AgentView>,
    /// Set when more agents match after the last one returned.
    pub next_after: Option<AgentId>,
    pub total: usize,
}

// === impl Registry ===

impl Registry {
    pub fn get(&self, org: &OrgId, agent: &AgentId) -> Option<AgentView> {
        let inner = self.read();
        let entry = inner.orgs.get(org)?.get(agent)?;
        Some(entry.view())
    }

    /// One page of the agents of `org` matching the query's filter, ordered by agent id,
    /// starting after the query's `after`; `total` counts every match.
    pub fn list(&self, org: &OrgId, query: &AgentListQuery) -> Page {
        let AgentListQuery {
            filter,
            after,
            page_size,
            max_bytes,
        } = query;
        let (page_size, max_bytes) = (*page_size, *max_bytes);
        let inner = self.read();
        let Some(agents) = inner.orgs.get(org) else {
            return Page::default();
        };
        let selected = agents.select(filter);
        // What the index does not hold: name and hostname text, the start of the id.
        let text = |entry: &&Entry| {
            filter
                .query
                .as_deref()
                .is_none_or(|q| entry.facts.search_text().contains(q))
                && filter
                    .id_prefix
                    .as_deref()
                    .is_none_or(|p| entry.facts.record().id.as_str().starts_with(p))
        };
        let total = if filter.query.is_none() && filter.id_prefix.is_none() {
            usize::try_from(selected.len()).unwrap_or(usize::MAX)
        } else {
            agents.selected(&selected).filter(text).count()
        };
        let mut page = Page {
            total,
            ..Page::default()
        };
        let mut bytes = 0;
        for entry in agents.in_id_order(&selected, after.as_ref()).filter(text) {
            let size = entry.size_bytes();
            let full = page.agents.len() == page_size
                || (!page.agents.is_empty() && bytes + size > max_bytes);
            if full {
                // Another agent matches after the last one returned.
                page.next_after = page.agents.last().map(|a| a.record.id.clone());
                break;
            }
            bytes += size;
            page.agents.push(entry.view());
        }
        page
    }

    /// The live session of `agent` in `org`, if it has one.
    pub fn session(&self, org: &OrgId, agent: &AgentId) -> Option<Arc<Session>> {
        let inner = self.read();
        inner.orgs.get(org)?.get(agent)?.session.clone()
    }

    /// The agents of `org` a command targets: each of `ids`, and each agent `selector` matches
    /// (expired agents aside), once, in agent id order.
    ///
    /// # Errors
    ///
    /// The first of `ids` that is not an agent of `org`.
    pub fn resolve_targets(
        &self,
        org: &OrgId,
        ids: &[AgentId],
        selector: Option<&Selector>,
    ) -> Result<Vec<Target>, AgentId> {
        let inner = self.read();
        let Some(agents) = inner.orgs.get(org) else {
            return match ids.first() {
                Some(id) => Err(id.clone()),
                None => Ok(Vec::new()),
            };
        };
        let target = |entry: &Entry| Target {
            id: entry.record().id.clone(),
            name: entry.record().name.clone(),
            online: entry.status() == AgentStatus::Online && entry.session.is_some(),
        };
        let mut out: BTreeMap<&AgentId, Target> = BTreeMap::new();
        for id in ids {
            let entry = agents.get(id).ok_or_else(|| id.clone())?;
            out.insert(&entry.record().id, target(entry));
        }
        if let Some(selector) = selector {
            // Every status but expired, as a listing without status filters.
            let filter = AgentFilter {
                selector: selector.clone(),
                ..AgentFilter::default()
            };
            let selected = agents.select(&filter);
            for entry in agents.selected(&selected) {
                out.entry(&entry.record().id)
                    .or_insert_with(|| target(entry));
            }
        }
        Ok(out.into_values().collect())
    }

    /// Whether `selector` selects `agent` of `org` by its labels now (whatever its status: an
    /// agent reporting is not expired), with the selection epoch it was read at: the answer
    /// holds until [`Registry::selection_epoch`] moves past it.
    pub fn selects(&self, org: &OrgId, agent: &AgentId, selector: &Selector) -> (bool, u64) {
        // The epoch before the labels: a change in between moves the epoch past this answer.
        let epoch = self.selection_epoch();
        let inner = self.read();
        let selected = inner
            .orgs
            .get(org)
            .and_then(|agents| agents.get(agent))
            .is_some_and(|entry| selector.matches(&entry.record().labels));
        (selected, epoch)
    }

    /// Calls `f` with the labels of `agent` in `org` (`None` for an agent the registry does
    /// not hold), under the read lock: `f` must not block.
    pub fn with_labels<R>(
        &self,
        org: &OrgId,
        agent: &AgentId,
        f: impl FnOnce(Option<&crate::domain::Labels>) -> R,
    ) -> R {
        let inner = self.read();
        let labels = inner
            .orgs
            .get(org)
            .and_then(|agents| agents.get(agent))
            .map(|entry| &entry.record().labels);
        f(labels)
    }

    /// The epoch of [`Registry::selects`]' answers.
    pub fn selection_epoch(&self) -> u64 {
        self.selection_epoch.load(Ordering::Acquire)
    }

    /// The counts of `GetFleetSummary` for `org`, as kept by its index.
    pub fn summary(&self, org: &OrgId) -> Summary {
        let inner = self.read();
        inner
            .orgs
            .get(org)
            .map_or_else(Summary::default, Agents::summary)
    }
}

// === impl Entry ===

impl Entry {
    /// Whether this agent passes `filter`.
    pub(super) fn matches(&self, filter: &AgentFilter) -> bool {
        let status = self.status();
        let record = self.record();
        let status_ok = if filter.statuses.is_empty() {
            filter.include_expired || status != AgentStatus::Expired
        } else {
            filter.statuses.contains(&status)
        };
        status_ok
            && filter.selector.matches(&record.labels)
            && filter
                .os
                .as_deref()
                .is_none_or(|os| record.system_info.os_name.eq_ignore_ascii_case(os))
            && filter
                .query
                .as_deref()
                .is_none_or(|q| self.facts.search_text().contains(q))
            && filter
                .id_prefix
                .as_deref()
                .is_none_or(|p| record.id.as_str().starts_with(p))
    }
}
