//! `FleetService` messages: agents and their history, listing and watch requests, page tokens,
//! metrics queries and points, the fleet summary and the server's configuration. Also what the
//! read budgets need to know about the wire: the room an answer leaves around its agents, the
//! largest metrics point, and the history `GetAgent` trims to fit.

use std::time::SystemTime;

use prost::Message as _;
use tether_proto as pb;
use tether_proto::selector::Selector;

use super::{
    duration, duration_from_pb, health_to_pb, id_from_pb, labels_to_pb, opt_timestamp,
    page_size_from_pb, plain, reason_to_pb, sample_to_pb, status_from_pb, status_to_pb,
    system_info_to_pb, time_from_pb, timestamp,
};
use crate::config::{Config, FEATURES};
use crate::domain::{AgentId, Health, MetricsPoint, MetricsQuery, Time, Transition};
use crate::error::ServerError;
use crate::registry::{
    AgentFilter, AgentListQuery, AgentView, EventKind, FleetEvent, Page, Summary, WatchItem,
};

/// Page size of `ListAgents` when the request leaves it at zero.
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// Largest page `ListAgents` returns.
pub const MAX_PAGE_SIZE: usize = 1000;
/// Room a `ListAgentsResponse` keeps for what is not an agent (page token, total).
pub const LIST_RESPONSE_ROOM: usize = 1024;
/// Largest encoding of one `MetricsPoint` in a `GetMetricsResponse` (a test pins it).
pub const MAX_METRICS_POINT_BYTES: usize = 160;

const PAGE_TOKEN_VERSION: &str = "1:";

// === agents ===

pub fn agent_to_pb(view: &AgentView) -> pb::Agent {
    let record = &view.record;
    pb::Agent {
        agent_id: record.id.to_string(),
        org_id: record.org.to_string(),
        name: record.name.clone(),
        labels: labels_to_pb(&record.labels),
        system_info: Some(system_info_to_pb(&record.system_info)),
        status: status_to_pb(view.status) as i32,
        status_reason: reason_to_pb(view.reason) as i32,
        status_since: Some(timestamp(view.since)),
        last_seen: opt_timestamp(view.last_seen),
        enrolled_at: Some(timestamp(record.enrolled_at)),
        session_id: view
            .session
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        latest_metrics: view.latest.as_deref().map(sample_to_pb),
        health: health_to_pb(view.health) as i32,
        duplicate_hardware_id: view.duplicate_hardware_id,
        agent_version: record.system_info.agent_version.clone(),
        last_durable_seq: view.last_seq,
        identity_conflict: view.identity_conflict.is_some(),
        identity_conflict_detail: view.identity_conflict.clone().unwrap_or_default(),
    }
}

pub fn transition_to_pb(t: &Transition) -> pb::StatusTransition {
    pb::StatusTransition {
        time: Some(timestamp(t.time)),
        from_status: status_to_pb(t.from) as i32,
        to_status: status_to_pb(t.to) as i32,
        reason: reason_to_pb(t.reason) as i32,
    }
}

/// # Errors
///
/// `INVALID_ARGUMENT` for an empty or malformed id.
pub fn agent_id_from_pb(raw: &str) -> Result<AgentId, ServerError> {
    id_from_pb(raw, "agent_id").map(AgentId::new)
}

/// # Errors
///
/// `INVALID_ARGUMENT` for a malformed agent id.
pub fn get_agent_from_pb(req: pb::GetAgentRequest) -> Result<AgentId, ServerError> {
    let pb::GetAgentRequest { agent_id } = req;
    agent_id_from_pb(&agent_id)
}

/// The agent with as many of its `transitions` (newest first) as fit in `max_bytes`; the
/// agent alone always fits, since the read budget is at least the largest valid agent
/// (`config::MIN_RESPONSE_BYTES`).
pub fn get_agent_to_pb(
    view: &AgentView,
    transitions: &[Transition],
    max_bytes: usize,
) -> pb::GetAgentResponse {
    let mut response = pb::GetAgentResponse {
        agent: Some(agent_to_pb(view)),
        recent_transitions: transitions.iter().map(transition_to_pb).collect(),
    };
    while response.encoded_len() > max_bytes && response.recent_transitions.pop().is_some() {}
    response
}

// === listing ===

/// Encodes the position after `last` as an opaque page token.
pub fn encode_page_token(last: &AgentId) -> String {
    hex::encode(format!("{PAGE_TOKEN_VERSION}{last}"))
}

/// # Errors
///
/// `INVALID_ARGUMENT` for anything that [`encode_page_token`] did not produce.
pub fn decode_page_token(token: &str) -> Result<Option<AgentId>, ServerError> {
    if token.is_empty() {
        return Ok(None);
    }
    let invalid = || {
        ServerError::invalid("invalid page_token: pass the next_page_token of a previous answer")
    };
    let bytes = hex::decode(token).map_err(|_| invalid())?;
    let text = String::from_utf8(bytes).map_err(|_| invalid())?;
    let id = text.strip_prefix(PAGE_TOKEN_VERSION).ok_or_else(invalid)?;
    if !crate::domain::is_valid_id(id) {
        return Err(invalid());
    }
    Ok(Some(AgentId::new(id)))
}

fn filter_from_pb(
    statuses: Vec<i32>,
    selector: &str,
    os: &str,
    query: &str,
    include_expired: bool,
) -> Result<AgentFilter, ServerError> {
    let statuses = statuses
        .into_iter()
        .map(status_from_pb)
        .collect::<Result<Vec<_>, _>>()?;
    let selector =
        Selector::parse(selector).map_err(|e| ServerError::InvalidArgument(e.to_string()))?;
    plain(os, "os")?;
    plain(query, "query")?;
    let os = os.trim();
    let query = query.trim();
    Ok(AgentFilter {
        statuses,
        include_expired,
        selector,
        os: (!os.is_empty()).then(|| os.to_lowercase()),
        query: (!query.is_empty()).then(|| query.to_lowercase()),
        id_prefix: None,
    })
}

/// `ListAgents`' `id_prefix`: empty is no filter; anything else must be the start of a
/// well-formed id.
///
/// # Errors
///
/// `INVALID_ARGUMENT` for characters no id has, or more than an id holds.
fn id_prefix_from_pb(prefix: &str) -> Result<Option<String>, ServerError> {
    if prefix.is_empty() {
        return Ok(None);
    }
    crate::convert::id_from_pb(prefix, "id_prefix").map(|p| Some(p.to_owned()))
}

/// The query of a `ListAgents` request whose answer may take `max_response_bytes`.
///
/// # Errors
///
/// `INVALID_ARGUMENT` for a negative page size, a foreign page token, an unknown status or a
/// malformed label selector.
pub fn list_agents_from_pb(
    req: pb::ListAgentsRequest,
    max_response_bytes: usize,
) -> Result<AgentListQuery, ServerError> {
    let pb::ListAgentsRequest {
        statuses,
        label_selector,
        os,
        query,
        page_size,
        page_token,
        include_expired,
        id_prefix,
    } = req;
    let page_size = page_size_from_pb(page_size, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)?;
    let after = decode_page_token(&page_token)?;
    let mut filter = filter_from_pb(statuses, &label_selector, &os, &query, include_expired)?;
    filter.id_prefix = id_prefix_from_pb(&id_prefix)?;
    Ok(AgentListQuery {
        filter,
        after,
        page_size,
        max_bytes: max_response_bytes.saturating_sub(LIST_RESPONSE_ROOM),
    })
}

pub fn list_agents_to_pb(page: &Page) -> pb::ListAgentsResponse {
    pb::ListAgentsResponse {
        agents: page.agents.iter().map(agent_to_pb).collect(),
        next_page_token: page
            .next_after
            .as_ref()
            .map(encode_page_token)
            .unwrap_or_default(),
        total_size: u32::try_from(page.total).unwrap_or(u32::MAX),
    }
}

// === watch ===

/// The watch's filter and whether it wants metrics events.
///
/// # Errors
///
/// `INVALID_ARGUMENT` for a malformed label selector.
pub fn watch_agents_from_pb(
    req: pb::WatchAgentsRequest,
) -> Result<(AgentFilter, bool), ServerError> {
    let pb::WatchAgentsRequest {
        label_selector,
        include_metrics,
        include_expired,
    } = req;
    let filter = filter_from_pb(vec![], &label_selector, "", "", include_expired)?;
    Ok((filter, include_metrics))
}

/// One item of a watch as sent; snapshot and `SYNCED` items are stamped `now`.
pub fn watch_item_to_pb(item: &WatchItem, now: SystemTime) -> pb::WatchAgentsResponse {
    let marker =
        |kind: pb::AgentEventKind, agent: Option<pb::Agent>, revision| pb::WatchAgentsResponse {
            kind: kind as i32,
            agent,
            previous_status: 0,
            time: Some(timestamp(now)),
            revision,
        };
    match item {
        WatchItem::Snapshot { agent, revision } => marker(
            pb::AgentEventKind::Snapshot,
            Some(agent_to_pb(agent)),
            *revision,
        ),
        WatchItem::Synced { revision } => marker(pb::AgentEventKind::Synced, None, *revision),
        WatchItem::Event(event) => fleet_event_to_pb(event),
    }
}

pub fn fleet_event_to_pb(event: &FleetEvent) -> pb::WatchAgentsResponse {
    let (kind, previous) = match event.kind {
        EventKind::Registered => (pb::AgentEventKind::Registered, None),
        EventKind::StatusChanged { previous } => {
            (pb::AgentEventKind::StatusChanged, Some(previous))
        }
        EventKind::MetricsUpdated => (pb::AgentEventKind::MetricsUpdated, None),
        EventKind::LabelsChanged => (pb::AgentEventKind::LabelsChanged, None),
        EventKind::Removed => (pb::AgentEventKind::Removed, None),
        EventKind::FlagsChanged => (pb::AgentEventKind::FlagsChanged, None),
    };
    pb::WatchAgentsResponse {
        kind: kind as i32,
        agent: Some(agent_to_pb(&event.agent)),
        previous_status: previous.map_or(0, |p| status_to_pb(p) as i32),
        time: Some(timestamp(event.time)),
        revision: event.revision,
    }
}

// === metrics ===

/// # Errors
///
/// `INVALID_ARGUMENT` for a malformed agent id, step or timestamp, or a time outside 1970 to
/// 9999.
pub fn get_metrics_from_pb(req: pb::GetMetricsRequest) -> Result<MetricsQuery, ServerError> {
    let pb::GetMetricsRequest {
        agent_id,
        start,
        end,
        step,
    } = req;
    Ok(MetricsQuery {
        agent: agent_id_from_pb(&agent_id)?,
        end: end
            .map(|t| time_from_pb(t, "end").map(Time::get))
            .transpose()?,
        start: start
            .map(|t| time_from_pb(t, "start").map(Time::get))
            .transpose()?,
        step: step
            .map(|d| duration_from_pb(d, "step"))
            .transpose()?
            .unwrap_or_default(),
    })
}

/// How many metrics points a `GetMetricsResponse` of at most `max_bytes` holds.
pub fn metrics_points_within(max_bytes: usize) -> usize {
    max_bytes / MAX_METRICS_POINT_BYTES
}

pub fn get_metrics_to_pb(points: &[MetricsPoint]) -> pb::GetMetricsResponse {
    pb::GetMetricsResponse {
        points: points.iter().map(metrics_point_to_pb).collect(),
    }
}

pub fn metrics_point_to_pb(point: &MetricsPoint) -> pb::MetricsPoint {
    let MetricsPoint {
        time,
        sample_count,
        cpu_percent,
        load: [load_1, load_5, load_15],
        memory_used_bytes,
        memory_total_bytes,
        swap_used_bytes,
        swap_total_bytes,
        disk_used_bytes,
        disk_total_bytes,
        network_rx_bytes_per_second,
        network_tx_bytes_per_second,
        process_count,
    } = *point;
    pb::MetricsPoint {
        time: Some(timestamp(time)),
        sample_count,
        cpu_percent,
        load_1,
        load_5,
        load_15,
        memory_used_bytes,
        memory_total_bytes,
        swap_used_bytes,
        swap_total_bytes,
        disk_used_bytes,
        disk_total_bytes,
        network_rx_bytes_per_second,
        network_tx_bytes_per_second,
        process_count,
    }
}

// === summary and configuration ===

pub fn summary_to_pb(s: &Summary) -> pb::GetFleetSummaryResponse {
    let health = |h: Health| s.health.get(&h).copied().unwrap_or(0);
    pb::GetFleetSummaryResponse {
        total: s.online + s.stale + s.offline,
        online: s.online,
        stale: s.stale,
        offline: s.offline,
        expired: s.expired,
        by_os: s.by_os.clone().into_iter().collect(),
        health_ok: health(Health::Ok),
        health_warning: health(Health::Warning),
        health_critical: health(Health::Critical),
        health_unknown: health(Health::Unknown),
    }
}

fn limits_to_pb(l: &crate::config::Limits) -> pb::ServerLimits {
    pb::ServerLimits {
        max_samples_per_report: saturating_u32(l.max_samples_per_report),
        max_agents_per_org: l.max_agents_per_org as u64,
        stream_messages_per_second: l.stream_messages_per_second,
        stream_message_burst: l.stream_message_burst,
        token_requests_per_second: l.token_requests_per_second,
        token_request_burst: l.token_request_burst,
        max_watches_per_token: saturating_u32(l.max_watches_per_token),
        max_watches_per_org: saturating_u32(l.max_watches_per_org),
        max_response_bytes: l.max_response_bytes as u64,
        max_concurrent_streams: l.max_concurrent_streams,
    }
}

fn command_settings_to_pb(c: &crate::config::CommandSettings) -> pb::CommandSettings {
    pb::CommandSettings {
        default_timeout: Some(duration(c.default_timeout)),
        default_deliver_within: Some(duration(c.default_deliver_within)),
        default_output_limit_bytes: c.default_output_limit,
        max_output_limit_bytes: c.max_output_limit,
        retention: Some(duration(c.retention)),
        max_in_flight_per_org: saturating_u32(c.max_in_flight_per_org),
        max_queued_per_agent: saturating_u32(c.max_queued_per_agent),
    }
}

fn saturating_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// The configuration in force, as served to every client.
pub fn server_config_to_pb(config: &Config) -> pb::GetServerConfigResponse {
    let l = &config.liveness;
    let h = &config.health;
    pb::GetServerConfigResponse {
        server_version: env!("CARGO_PKG_VERSION").to_owned(),
        heartbeat_interval: Some(duration(l.heartbeat_interval)),
        metrics_interval: Some(duration(l.metrics_interval)),
        stale_after: Some(duration(l.stale_after)),
        offline_after: Some(duration(l.offline_after)),
        fleet_ttl: Some(duration(l.fleet_ttl)),
        metrics_retention: Some(duration(config.storage.metrics_retention)),
        rollup_5m_retention: Some(duration(config.storage.rollup_5m_retention)),
        rollup_1h_retention: Some(duration(config.storage.rollup_1h_retention)),
        events_retention: Some(duration(config.events.retention)),
        event_stats_retention: Some(duration(config.events.stats_retention)),
        event_fingerprint_window: Some(duration(config.events.fingerprint_window)),
        health_thresholds: Some(pb::HealthThresholds {
            cpu_warning_percent: h.cpu_warning,
            cpu_critical_percent: h.cpu_critical,
            memory_warning_percent: h.memory_warning,
            memory_critical_percent: h.memory_critical,
            disk_warning_percent: h.disk_warning,
            disk_critical_percent: h.disk_critical,
        }),
        max_message_bytes: config.limits.max_message_bytes as u64,
        max_labels: saturating_u32(config.limits.max_labels),
        max_label_key_bytes: saturating_u32(config.limits.max_label_key_bytes),
        max_label_value_bytes: saturating_u32(config.limits.max_label_value_bytes),
        limits: Some(limits_to_pb(&config.limits)),
        commands: Some(command_settings_to_pb(&config.commands)),
        features: FEATURES
            .iter()
            .copied()
            .chain(config.tls.is_some().then_some("tls"))
            .chain(config.mtls().then_some("mtls"))
            .map(str::to_owned)
            .collect(),
    }
}

#[cfg(test)]
mod tests;
