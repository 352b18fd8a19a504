//! Reads of stored events: the filter every call shares, pages of `ListEvents` (newest first)
//! and what `GetEventStats` asks and answers (`stats.rs` computes it).
//!
//! Invariant: statistics read only the counts tables, never raw events, so their cost depends
//! on the range's days and hours and the distinct kinds and agents in them, not on how many
//! events there were.

use std::collections::{BTreeMap, HashSet};

use super::keys::{self, EventKey, EventRecord, EventState, Severity};
use crate::domain::{AgentId, OrgId};
use crate::error::ServerError;
use crate::store::{EventTable, Store};

/// Which events a call reads or changes: every set field must match.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Filter {
    /// The agents allowed (from ids and the label selector); `None`: any.
    pub agents: Option<HashSet<AgentId>>,
    pub kind: Option<String>,
    pub kind_prefix: Option<String>,
    pub min_severity: Option<Severity>,
    /// Time range over `time` (ms): `start <= time < end`.
    pub start_ms: Option<u64>,
    pub end_ms: Option<u64>,
    pub states: Vec<EventState>,
    pub attributes: BTreeMap<String, String>,
}

impl Filter {
    /// Whether the event's kind and severity match (what the hourly counts know besides the
    /// agent).
    pub fn matches_kind(&self, kind: &str, severity: Severity) -> bool {
        self.matches_kind_name(kind) && self.min_severity.is_none_or(|m| severity >= m)
    }

    /// Whether the kind matches the kind and kind prefix filters (severity aside).
    pub fn matches_kind_name(&self, kind: &str) -> bool {
        self.kind.as_ref().is_none_or(|k| k == kind)
            && self
                .kind_prefix
                .as_ref()
                .is_none_or(|p| tether_proto::event::kind_has_prefix(kind, p))
    }

    /// Whether the agent is one the filter allows.
    pub fn matches_agent(&self, agent: &AgentId) -> bool {
        self.agents.as_ref().is_none_or(|a| a.contains(agent))
    }

    /// Whether a stored event matches, time range aside (the scan's range applies it).
    pub fn matches(&self, record: &EventRecord) -> bool {
        self.matches_agent(&record.agent)
            && self.matches_kind(&record.kind, record.severity)
            && (self.states.is_empty() || self.states.contains(&record.state))
            && self
                .attributes
                .iter()
                .all(|(k, v)| record.attributes.get(k) == Some(v))
    }

    /// Matching events, newest first, at most `limit`.
    ///
    /// # Errors
    ///
    /// The store's.
    pub fn scan(
        &self,
        store: &dyn Store,
        org: &OrgId,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, EventRecord)>, ServerError> {
        let page = self.page(store, org, None, limit, usize::MAX)?;
        Ok(page.events)
    }

    /// One page of matching events, newest first, before `before` (a key; `None`: from the
    /// newest). Reads at most `max_scan` events: a filter that matches rarely ends the page
    /// early, with `next` set.
    ///
    /// # Errors
    ///
    /// The store's.
    pub fn page(
        &self,
        store: &dyn Store,
        org: &OrgId,
        before: Option<&[u8]>,
        limit: usize,
        max_scan: usize,
    ) -> Result<Page, ServerError> {
        let from = keys::time_floor(self.start_ms.unwrap_or(0));
        let end = self.end_ms.map(keys::time_floor);
        let to = match (before, end.as_deref()) {
            (Some(b), Some(e)) => Some(b.min(e)),
            (Some(b), None) => Some(b),
            (None, e) => e,
        };
        let mut events = Vec::new();
        let mut scanned = 0;
        for entry in store.event_entries(org, EventTable::Events, &from, to, true) {
            let (key, value) = entry?;
            scanned += 1;
            if let Some(record) = keys::decode::<EventRecord>(&value) {
                if self.matches(&record) {
                    events.push((key.clone(), record));
                }
            } else {
                tracing::warn!(org = %org, "a stored event does not decode; skipped");
            }
            if events.len() >= limit || scanned >= max_scan {
                return Ok(Page {
                    events,
                    next: Some(key),
                });
            }
        }
        Ok(Page { events, next: None })
    }
}

/// A page of events and where the next one starts (exclusive), if any.
pub struct Page {
    pub events: Vec<(Vec<u8>, EventRecord)>,
    pub next: Option<Vec<u8>>,
}

/// One event by key.
///
/// # Errors
///
/// `NotFound` for an event the org does not hold (or past retention).
pub fn get(store: &dyn Store, org: &OrgId, key: &EventKey) -> Result<EventRecord, ServerError> {
    store
        .event_entry(org, EventTable::Events, &key.to_bytes())?
        .and_then(|raw| keys::decode::<EventRecord>(&raw))
        .ok_or_else(|| ServerError::NotFound(format!("event {} not found", key.id())))
}

/// What `GetEventStats` asks for, checked.
#[derive(Clone, Debug)]
pub struct StatsQuery {
    pub filter: Filter,
    /// Whole hours: `start_ms` and `end_ms` are multiples of an hour.
    pub start_ms: u64,
    pub end_ms: u64,
    pub step_ms: u64,
    pub top: usize,
    /// The rate window, whole hours.
    pub rate_window_ms: u64,
    pub now_ms: u64,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct StatsStep {
    pub start_ms: u64,
    pub by_severity: [u64; 4],
    pub by_kind: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stats {
    pub steps: Vec<StatsStep>,
    pub top_kinds: Vec<(String, u64)>,
    pub top_agents: Vec<(AgentId, u64)>,
    pub total: u64,
    pub rate_per_minute: f64,
    pub previous_rate_per_minute: f64,
}

pub use super::stats::stats;
