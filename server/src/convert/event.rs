//! Events at the RPC edge: agents' `AgentEvent`s in, stored events and statistics out, and the
//! requests of `EventService` checked into domain queries.
//!
//! Inbound messages are destructured exhaustively: a field added to the proto fails to compile
//! here until it is handled.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use tether_proto as pb;
use tether_proto::event::{EventError, check_event};
use tether_proto::selector::Selector;

use super::{duration_from_pb, time_from_pb, timestamp};
use crate::domain::AgentId;
use crate::error::ServerError;
use crate::events::keys::{self, Change, EventKey, EventRecord, EventState, NewEvent, Severity};
use crate::events::query::{Filter, Stats, StatsQuery};
use crate::events::watch_stream::WatchItem;

/// Most ids one lifecycle call or filter may name.
pub const MAX_IDS: usize = 1000;
/// Most events a `ListEvents` page holds.
pub const MAX_PAGE_SIZE: usize = 1000;
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// Most steps one `GetEventStats` answers.
pub const MAX_STEPS: u64 = 10_000;
/// Longest rate window of `GetEventStats`, in hours: a year.
pub const MAX_RATE_WINDOW_HOURS: u64 = 366 * 24;

pub fn severity_from_pb(s: pb::EventSeverity) -> Option<Severity> {
    match s {
        pb::EventSeverity::Unspecified => None,
        pb::EventSeverity::Info => Some(Severity::Info),
        pb::EventSeverity::Warning => Some(Severity::Warning),
        pb::EventSeverity::Error => Some(Severity::Error),
        pb::EventSeverity::Critical => Some(Severity::Critical),
    }
}

pub fn severity_to_pb(s: Severity) -> pb::EventSeverity {
    match s {
        Severity::Info => pb::EventSeverity::Info,
        Severity::Warning => pb::EventSeverity::Warning,
        Severity::Error => pb::EventSeverity::Error,
        Severity::Critical => pb::EventSeverity::Critical,
    }
}

fn state_to_pb(s: EventState) -> pb::EventState {
    match s {
        EventState::New => pb::EventState::New,
        EventState::Acknowledged => pb::EventState::Acknowledged,
        EventState::Resolved => pb::EventState::Resolved,
    }
}

fn change_to_pb(c: Change) -> pb::EventChangeKind {
    match c {
        Change::Created => pb::EventChangeKind::Created,
        Change::Repeated => pb::EventChangeKind::Repeated,
        Change::Acknowledged => pb::EventChangeKind::Acknowledged,
        Change::Resolved => pb::EventChangeKind::Resolved,
        Change::Reopened => pb::EventChangeKind::Reopened,
    }
}

/// One agent event, checked against the contract's bounds (`tether_proto::event`).
///
/// # Errors
///
/// The [`EventError`] naming what breaks the contract.
pub fn agent_event_from_pb(event: pb::AgentEvent, now: SystemTime) -> Result<NewEvent, EventError> {
    check_event(&event, now)?;
    let pb::AgentEvent {
        seq,
        time,
        kind,
        severity,
        message,
        attributes,
        fingerprint,
    } = event;
    let time = time
        .and_then(|t| SystemTime::try_from(t).ok())
        .ok_or_else(|| EventError("time is required".into()))?;
    let severity = tether_proto::event::severity(severity)
        .ok()
        .and_then(severity_from_pb)
        .ok_or_else(|| EventError("severity is required".into()))?;
    Ok(NewEvent {
        seq,
        time,
        kind,
        severity,
        message,
        attributes: attributes.into_iter().collect(),
        fingerprint,
    })
}

fn ms_timestamp(ms: u64) -> prost_types::Timestamp {
    timestamp(keys::from_millis(ms))
}

pub fn event_to_pb(record: &EventRecord) -> pb::Event {
    pb::Event {
        event_id: record.key().id(),
        agent_id: record.agent.to_string(),
        seq: record.seq,
        time: Some(ms_timestamp(record.time_ms)),
        kind: record.kind.clone(),
        severity: severity_to_pb(record.severity) as i32,
        message: record.message.clone(),
        attributes: record
            .attributes
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        fingerprint: record.fingerprint.clone(),
        count: record.count,
        first_seen: Some(ms_timestamp(record.first_seen_ms)),
        last_seen: Some(ms_timestamp(record.last_seen_ms)),
        state: state_to_pb(record.state) as i32,
        received_at: Some(ms_timestamp(record.received_at_ms)),
        state_changed_by: record.state_changed_by.clone(),
        state_changed_at: record.state_changed_at_ms.map(ms_timestamp),
        acknowledged_by: record.acknowledged_by.clone(),
        acknowledged_at: record.acknowledged_at_ms.map(ms_timestamp),
    }
}

/// # Errors
///
/// `INVALID_ARGUMENT` for an id this server never gave.
pub fn event_id_from_pb(raw: &str) -> Result<EventKey, ServerError> {
    EventKey::parse_id(raw).ok_or_else(|| {
        ServerError::invalid(format!(
            "event_id {:?} is not an event id",
            raw.chars().take(80).collect::<String>()
        ))
    })
}

/// # Errors
///
/// `INVALID_ARGUMENT` for more than [`MAX_IDS`] ids or a malformed one.
pub fn event_ids_from_pb(raw: &[String]) -> Result<Vec<EventKey>, ServerError> {
    if raw.len() > MAX_IDS {
        return Err(ServerError::invalid(format!(
            "{} event ids; at most {MAX_IDS} per call",
            raw.len()
        )));
    }
    raw.iter().map(|id| event_id_from_pb(id)).collect()
}

/// A filter as the request gives it: the agents are resolved by the caller (ids and selector
/// against the registry).
pub struct FilterRequest {
    pub filter: Filter,
    pub agent_ids: Vec<AgentId>,
    pub selector: Option<Selector>,
}

fn kind_from_pb(raw: String, field: &str) -> Result<Option<String>, ServerError> {
    if raw.is_empty() {
        return Ok(None);
    }
    if !tether_proto::event::is_valid_kind(&raw) {
        return Err(ServerError::invalid(format!(
            "{field} {:?} is not a dotted kind of lowercase letters, digits, '_' and '-'",
            raw.chars().take(80).collect::<String>()
        )));
    }
    Ok(Some(raw))
}

/// `kind` and `kind_prefix`, at most one of them set.
fn kinds_from_pb(
    kind: String,
    kind_prefix: String,
) -> Result<(Option<String>, Option<String>), ServerError> {
    let kind = kind_from_pb(kind, "kind")?;
    let kind_prefix = kind_from_pb(kind_prefix, "kind_prefix")?;
    if kind.is_some() && kind_prefix.is_some() {
        return Err(ServerError::invalid("set kind or kind_prefix, not both"));
    }
    Ok((kind, kind_prefix))
}

fn min_severity_from_pb(raw: i32) -> Result<Option<Severity>, ServerError> {
    match pb::EventSeverity::try_from(raw) {
        Ok(s) => Ok(severity_from_pb(s)),
        Err(_) => Err(ServerError::invalid(format!(
            "min_severity {raw} is unknown"
        ))),
    }
}

fn agent_ids_from_pb(raw: Vec<String>) -> Result<Vec<AgentId>, ServerError> {
    if raw.len() > MAX_IDS {
        return Err(ServerError::invalid(format!(
            "{} agent ids; at most {MAX_IDS}",
            raw.len()
        )));
    }
    raw.iter()
        .map(|id| super::fleet::agent_id_from_pb(id))
        .collect()
}

fn selector_from_pb(raw: &str) -> Result<Option<Selector>, ServerError> {
    if raw.is_empty() {
        return Ok(None);
    }
    Selector::parse(raw)
        .map(Some)
        .map_err(|e| ServerError::invalid(format!("label_selector: {e}")))
}

/// # Errors
///
/// `INVALID_ARGUMENT` naming the field that is malformed.
pub fn filter_from_pb(filter: Option<pb::EventFilter>) -> Result<FilterRequest, ServerError> {
    let pb::EventFilter {
        agent_ids,
        label_selector,
        kind,
        kind_prefix,
        min_severity,
        start,
        end,
        states,
        attributes,
    } = filter.unwrap_or_default();
    let (kind, kind_prefix) = kinds_from_pb(kind, kind_prefix)?;
    let start_ms = start
        .map(|t| time_from_pb(t, "start").map(|t| keys::millis(t.get())))
        .transpose()?;
    let end_ms = end
        .map(|t| time_from_pb(t, "end").map(|t| keys::millis(t.get())))
        .transpose()?;
    if let (Some(s), Some(e)) = (start_ms, end_ms)
        && s > e
    {
        return Err(ServerError::invalid("start is after end"));
    }
    let states = states
        .into_iter()
        .map(|s| match pb::EventState::try_from(s) {
            Ok(pb::EventState::New) => Ok(EventState::New),
            Ok(pb::EventState::Acknowledged) => Ok(EventState::Acknowledged),
            Ok(pb::EventState::Resolved) => Ok(EventState::Resolved),
            _ => Err(ServerError::invalid(format!("state {s} is unknown"))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    if attributes.len() > tether_proto::event::MAX_ATTRIBUTES {
        return Err(ServerError::invalid(format!(
            "{} attributes; at most {}",
            attributes.len(),
            tether_proto::event::MAX_ATTRIBUTES
        )));
    }
    Ok(FilterRequest {
        filter: Filter {
            agents: None,
            kind,
            kind_prefix,
            min_severity: min_severity_from_pb(min_severity)?,
            start_ms,
            end_ms,
            states,
            attributes: attributes.into_iter().collect::<BTreeMap<_, _>>(),
        },
        agent_ids: agent_ids_from_pb(agent_ids)?,
        selector: selector_from_pb(&label_selector)?,
    })
}

/// `(filter, page size, page start key)`.
///
/// # Errors
///
/// `INVALID_ARGUMENT` for a malformed filter, page size or token.
pub fn list_from_pb(
    req: pb::ListEventsRequest,
) -> Result<(FilterRequest, usize, Option<Vec<u8>>), ServerError> {
    let pb::ListEventsRequest {
        filter,
        page_size,
        page_token,
    } = req;
    let size = match page_size {
        0 => DEFAULT_PAGE_SIZE,
        n if n < 0 => return Err(ServerError::invalid("page_size must not be negative")),
        n => usize::try_from(n)
            .unwrap_or(MAX_PAGE_SIZE)
            .min(MAX_PAGE_SIZE),
    };
    let token = match page_token.as_str() {
        "" => None,
        raw => Some(
            hex::decode(raw)
                .ok()
                .filter(|k| EventKey::from_bytes(k).is_some() || k.len() == 8)
                .ok_or_else(|| ServerError::invalid("page_token is not one this server gave"))?,
        ),
    };
    Ok((filter_from_pb(filter)?, size, token))
}

pub fn page_token_to_pb(next: Option<Vec<u8>>) -> String {
    next.map(hex::encode).unwrap_or_default()
}

/// A watch cursor: `None` for the present.
///
/// # Errors
///
/// `INVALID_ARGUMENT` for text that is not a cursor.
pub fn cursor_from_pb(raw: &str) -> Result<Option<u64>, ServerError> {
    if raw.is_empty() {
        return Ok(None);
    }
    raw.parse()
        .map(Some)
        .map_err(|_| ServerError::invalid("cursor is not one this server gave"))
}

pub fn cursor_to_pb(cursor: u64) -> String {
    cursor.to_string()
}

pub fn watch_item_to_pb(item: WatchItem) -> pb::WatchEventsResponse {
    match item {
        WatchItem::Change {
            cursor,
            change,
            event,
        } => pb::WatchEventsResponse {
            change: change_to_pb(change) as i32,
            event: Some(event_to_pb(&event)),
            cursor: cursor_to_pb(cursor),
        },
        WatchItem::CaughtUp { cursor } => pb::WatchEventsResponse {
            change: pb::EventChangeKind::CaughtUp as i32,
            event: None,
            cursor: cursor_to_pb(cursor),
        },
    }
}

fn whole_hours(d: Option<prost_types::Duration>, field: &str) -> Result<u64, ServerError> {
    let d = match d {
        None => Duration::from_secs(3600),
        Some(d) => duration_from_pb(d, field)?,
    };
    let ms = crate::events::ms(d);
    if ms == 0 || !ms.is_multiple_of(keys::HOUR_MS) {
        return Err(ServerError::invalid(format!(
            "{field} must be a whole number of hours"
        )));
    }
    Ok(ms)
}

/// The stats query and the agents to resolve; `now` is the server's clock.
///
/// # Errors
///
/// `INVALID_ARGUMENT` for a malformed field, a range of more than [`MAX_STEPS`] steps, a rate
/// window longer than [`MAX_RATE_WINDOW_HOURS`].
pub fn stats_from_pb(
    req: pb::GetEventStatsRequest,
    now: SystemTime,
) -> Result<(StatsQuery, Vec<AgentId>, Option<Selector>), ServerError> {
    let pb::GetEventStatsRequest {
        agent_ids,
        label_selector,
        kind,
        kind_prefix,
        min_severity,
        start,
        end,
        step,
        top,
        rate_window,
    } = req;
    let now_ms = keys::millis(now);
    let end_ms = match end {
        Some(t) => keys::millis(time_from_pb(t, "end")?.get()),
        None => now_ms,
    };
    let end_ms = keys::hour_of(end_ms.saturating_add(keys::HOUR_MS - 1));
    let start_ms = match start {
        Some(t) => keys::hour_of(keys::millis(time_from_pb(t, "start")?.get())),
        None => end_ms.saturating_sub(24 * keys::HOUR_MS),
    };
    if start_ms >= end_ms {
        return Err(ServerError::invalid("start must be before end"));
    }
    let step_ms = whole_hours(step, "step")?;
    if (end_ms - start_ms).div_ceil(step_ms) > MAX_STEPS {
        return Err(ServerError::invalid(format!(
            "the range holds more than {MAX_STEPS} steps; use a longer step"
        )));
    }
    let rate_window_ms = whole_hours(rate_window, "rate_window")?;
    if rate_window_ms > MAX_RATE_WINDOW_HOURS * keys::HOUR_MS {
        return Err(ServerError::invalid(format!(
            "rate_window must be at most {MAX_RATE_WINDOW_HOURS} hours"
        )));
    }
    let top = match top {
        0 => 10,
        n if !(1..=100).contains(&n) => {
            return Err(ServerError::invalid("top must be between 1 and 100"));
        }
        n => usize::try_from(n).unwrap_or(10),
    };
    let (kind, kind_prefix) = kinds_from_pb(kind, kind_prefix)?;
    let filter = Filter {
        kind,
        kind_prefix,
        min_severity: min_severity_from_pb(min_severity)?,
        ..Filter::default()
    };
    Ok((
        StatsQuery {
            filter,
            start_ms,
            end_ms,
            step_ms,
            top,
            rate_window_ms,
            now_ms,
        },
        agent_ids_from_pb(agent_ids)?,
        selector_from_pb(&label_selector)?,
    ))
}

pub fn stats_to_pb(stats: Stats) -> pb::GetEventStatsResponse {
    let Stats {
        steps,
        top_kinds,
        top_agents,
        total,
        rate_per_minute,
        previous_rate_per_minute,
    } = stats;
    pb::GetEventStatsResponse {
        steps: steps
            .into_iter()
            .map(|s| pb::EventStatsStep {
                time: Some(ms_timestamp(s.start_ms)),
                total: s.by_severity.iter().sum(),
                info: s.by_severity[0],
                warning: s.by_severity[1],
                error: s.by_severity[2],
                critical: s.by_severity[3],
                by_kind: s.by_kind.into_iter().collect(),
            })
            .collect(),
        top_kinds: top_kinds
            .into_iter()
            .map(|(kind, count)| pb::EventKindCount { kind, count })
            .collect(),
        top_agents: top_agents
            .into_iter()
            .map(|(agent, count)| pb::EventAgentCount {
                agent_id: agent.to_string(),
                count,
            })
            .collect(),
        total,
        rate_per_minute,
        previous_rate_per_minute,
        rate_change_percent: (previous_rate_per_minute > 0.0).then(|| {
            (rate_per_minute - previous_rate_per_minute) / previous_rate_per_minute * 100.0
        }),
    }
}
