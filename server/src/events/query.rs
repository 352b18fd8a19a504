//! Reads of stored events: the filter every call shares, pages of `ListEvents` (newest first)
//! and `GetEventStats` from the hourly counts.
//!
//! Invariant: statistics read only the hourly tables, never raw events, so their cost depends
//! on the range's hours and the distinct (kind, severity[, agent]) per hour, not on how many
//! events there were.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use super::keys::{self, EventKey, EventRecord, EventState, HourCount, Severity};
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
        self.kind.as_ref().is_none_or(|k| k == kind)
            && self
                .kind_prefix
                .as_ref()
                .is_none_or(|p| tether_proto::event::kind_has_prefix(kind, p))
            && self.min_severity.is_none_or(|m| severity >= m)
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

/// Counts over hours `from..to` (ms, whole hours), yielded one by one from the table that can
/// answer `filter`: the kind table when no agent is filtered on.
fn hours<'a>(
    store: &'a dyn Store,
    org: &OrgId,
    filter: &'a Filter,
    by_agent: bool,
    from: u64,
    to: u64,
) -> impl Iterator<Item = Result<HourCount, ServerError>> + 'a {
    let table = if by_agent {
        EventTable::AgentHours
    } else {
        EventTable::KindHours
    };
    store
        .event_entries(
            org,
            table,
            &keys::time_floor(from),
            Some(&keys::time_floor(to)),
            false,
        )
        .filter_map(move |entry| {
            let (key, value) = match entry {
                Ok(kv) => kv,
                Err(e) => return Some(Err(ServerError::from(e))),
            };
            let parsed = if by_agent {
                keys::parse_agent_hour(&key, &value)
            } else {
                keys::parse_kind_hour(&key, &value)
            };
            let Some(count) = parsed else {
                tracing::warn!("an hourly event count does not decode; skipped");
                return None;
            };
            let wanted = count.agent.as_ref().is_none_or(|a| filter.matches_agent(a))
                && filter.matches_kind(&count.kind, count.severity);
            wanted.then_some(Ok(count))
        })
}

/// Answers `GetEventStats` from the hourly counts.
///
/// # Errors
///
/// The store's.
pub fn stats(store: &dyn Store, org: &OrgId, q: &StatsQuery) -> Result<Stats, ServerError> {
    let n_steps = (q.end_ms - q.start_ms).div_ceil(q.step_ms);
    let mut steps: Vec<StatsStep> = (0..n_steps)
        .map(|i| StatsStep {
            start_ms: q.start_ms + i * q.step_ms,
            ..StatsStep::default()
        })
        .collect();
    let mut by_kind_step: HashMap<(usize, String), u64> = HashMap::new();
    let mut kinds: HashMap<String, u64> = HashMap::new();
    let mut agents: HashMap<AgentId, u64> = HashMap::new();
    let mut total = 0;
    // Agents are counted from the agent table; kinds and severities from the kind table
    // unless the filter names agents, which only the agent table knows.
    let agent_filtered = q.filter.agents.is_some();
    for count in hours(store, org, &q.filter, agent_filtered, q.start_ms, q.end_ms) {
        let count = count?;
        let i = usize::try_from((count.hour_ms - q.start_ms) / q.step_ms).unwrap_or(usize::MAX);
        if let Some(step) = steps.get_mut(i) {
            step.by_severity[count.severity as usize - 1] += count.count;
        }
        *by_kind_step.entry((i, count.kind.clone())).or_default() += count.count;
        *kinds.entry(count.kind).or_default() += count.count;
        total += count.count;
        if let Some(agent) = count.agent {
            *agents.entry(agent).or_default() += count.count;
        }
    }
    if !agent_filtered {
        for count in hours(store, org, &q.filter, true, q.start_ms, q.end_ms) {
            let count = count?;
            if let Some(agent) = count.agent {
                *agents.entry(agent).or_default() += count.count;
            }
        }
    }
    let top_kinds = top(kinds, q.top);
    let top_set: BTreeSet<&String> = top_kinds.iter().map(|(k, _)| k).collect();
    for ((i, kind), n) in by_kind_step {
        if top_set.contains(&kind)
            && let Some(step) = steps.get_mut(i)
        {
            step.by_kind.insert(kind, n);
        }
    }
    // The rate: the window's whole hours before the current one, plus the current hour so far.
    let current_hour = keys::hour_of(q.now_ms);
    let window_start = current_hour + keys::HOUR_MS - q.rate_window_ms;
    let previous_start = window_start - q.rate_window_ms;
    let mut in_window = 0;
    let mut in_previous = 0;
    for count in hours(
        store,
        org,
        &q.filter,
        agent_filtered,
        previous_start,
        current_hour + keys::HOUR_MS,
    ) {
        let count = count?;
        if count.hour_ms >= window_start {
            in_window += count.count;
        } else {
            in_previous += count.count;
        }
    }
    let window_minutes = (q.now_ms - window_start).max(1) as f64 / 60_000.0;
    let previous_minutes = q.rate_window_ms as f64 / 60_000.0;
    Ok(Stats {
        steps,
        top_kinds,
        top_agents: top(agents, q.top),
        total,
        rate_per_minute: in_window as f64 / window_minutes,
        previous_rate_per_minute: in_previous as f64 / previous_minutes,
    })
}

/// The `n` largest counts, largest first, ties by name.
fn top<K: Ord + Clone>(counts: HashMap<K, u64>, n: usize) -> Vec<(K, u64)> {
    let mut all: Vec<_> = counts.into_iter().collect();
    all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    all.truncate(n);
    all
}
