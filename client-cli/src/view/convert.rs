//! Conversions between the wire types and the views: every server answer becomes a view here,
//! and the enum flags (`--status`, `--role`, `--outcome`) become wire values here.
//!
//! Conversions destructure the wire types exhaustively: a new proto field fails the build here
//! until the CLI decides how to show it. Unknown enum values degrade to an `Unknown` variant
//! instead of failing, so an older CLI still reads a newer server.
//!
//! The `CommandService` conversions live in the child module `command`.

mod command;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime};

use tether_proto as pb;

use super::{
    AgentStatus, AgentView, ApiTokenView, AuditEventView, AuditOutcome, CommandSettingsView,
    DiskView, EnrollmentTokenView, EventKind, Health, HealthCounts, LimitsView, MetricsPointView,
    MetricsSampleView, OrgView, Role, ServerConfigView, StatusReason, SummaryView, SystemInfoView,
    ThresholdsView, TokenState, TransitionView, WatchEventView,
};

impl AgentStatus {
    /// The wire value, for request filters.
    pub fn to_pb(self) -> pb::AgentStatus {
        match self {
            Self::Online => pb::AgentStatus::Online,
            Self::Stale => pb::AgentStatus::Stale,
            Self::Offline => pb::AgentStatus::Offline,
            Self::Expired => pb::AgentStatus::Expired,
            Self::Unknown => pb::AgentStatus::Unspecified,
        }
    }

    /// Decodes a wire value; unknown values become [`AgentStatus::Unknown`].
    pub fn from_pb(value: i32) -> Self {
        match pb::AgentStatus::try_from(value) {
            Ok(pb::AgentStatus::Online) => Self::Online,
            Ok(pb::AgentStatus::Stale) => Self::Stale,
            Ok(pb::AgentStatus::Offline) => Self::Offline,
            Ok(pb::AgentStatus::Expired) => Self::Expired,
            Ok(pb::AgentStatus::Unspecified) | Err(_) => Self::Unknown,
        }
    }
}

impl StatusReason {
    /// Decodes a wire value; unknown values become [`StatusReason::Unknown`].
    pub fn from_pb(value: i32) -> Self {
        use pb::StatusReason as R;
        match R::try_from(value) {
            Ok(R::Enrolled) => Self::Enrolled,
            Ok(R::Reconnected) => Self::Reconnected,
            Ok(R::Activity) => Self::Activity,
            Ok(R::Silent) => Self::Silent,
            Ok(R::StreamClosed) => Self::StreamClosed,
            Ok(R::Goodbye) => Self::Goodbye,
            Ok(R::Replaced) => Self::Replaced,
            Ok(R::ServerRestart) => Self::ServerRestart,
            Ok(R::Connected) => Self::Connected,
            Ok(R::Ttl) => Self::Ttl,
            Ok(R::Unspecified) | Err(_) => Self::Unknown,
        }
    }
}

impl Health {
    /// Decodes a wire value; unknown values become [`Health::Unknown`].
    pub fn from_pb(value: i32) -> Self {
        match pb::Health::try_from(value) {
            Ok(pb::Health::Ok) => Self::Ok,
            Ok(pb::Health::Warning) => Self::Warning,
            Ok(pb::Health::Critical) => Self::Critical,
            Ok(pb::Health::Unknown | pb::Health::Unspecified) | Err(_) => Self::Unknown,
        }
    }
}

impl EventKind {
    /// Decodes a wire value; unknown values become [`EventKind::Unknown`].
    pub fn from_pb(value: i32) -> Self {
        use pb::AgentEventKind as K;
        match K::try_from(value) {
            Ok(K::Snapshot) => Self::Snapshot,
            Ok(K::Synced) => Self::Synced,
            Ok(K::Registered) => Self::Registered,
            Ok(K::StatusChanged) => Self::StatusChanged,
            Ok(K::MetricsUpdated) => Self::MetricsUpdated,
            Ok(K::LabelsChanged) => Self::LabelsChanged,
            Ok(K::Removed) => Self::Removed,
            Ok(K::FlagsChanged) => Self::FlagsChanged,
            Ok(K::Unspecified) | Err(_) => Self::Unknown,
        }
    }
}

impl Role {
    /// The wire value, for requests.
    pub fn to_pb(self) -> pb::Role {
        match self {
            Self::Admin => pb::Role::Admin,
            Self::Operator => pb::Role::Operator,
            Self::Viewer => pb::Role::Viewer,
            Self::Agent => pb::Role::Agent,
            Self::Unknown => pb::Role::Unspecified,
        }
    }

    /// Decodes a wire value; `None` for `ROLE_UNSPECIFIED`, [`Role::Unknown`] for values this
    /// CLI does not know.
    pub fn from_pb(value: i32) -> Option<Self> {
        match pb::Role::try_from(value) {
            Ok(pb::Role::Unspecified) => None,
            Ok(pb::Role::Admin) => Some(Self::Admin),
            Ok(pb::Role::Operator) => Some(Self::Operator),
            Ok(pb::Role::Viewer) => Some(Self::Viewer),
            Ok(pb::Role::Agent) => Some(Self::Agent),
            Err(_) => Some(Self::Unknown),
        }
    }
}

impl AuditOutcome {
    /// The wire value, for request filters.
    pub fn to_pb(self) -> pb::AuditOutcome {
        match self {
            Self::Succeeded => pb::AuditOutcome::Succeeded,
            Self::Denied => pb::AuditOutcome::Denied,
            Self::Failed => pb::AuditOutcome::Failed,
            Self::Unknown => pb::AuditOutcome::Unspecified,
        }
    }

    /// Decodes a wire value; unknown values become [`AuditOutcome::Unknown`].
    pub fn from_pb(value: i32) -> Self {
        match pb::AuditOutcome::try_from(value) {
            Ok(pb::AuditOutcome::Succeeded) => Self::Succeeded,
            Ok(pb::AuditOutcome::Denied) => Self::Denied,
            Ok(pb::AuditOutcome::Failed) => Self::Failed,
            Ok(pb::AuditOutcome::Unspecified) | Err(_) => Self::Unknown,
        }
    }
}

/// The snake_case name of a numeric gRPC status code (`0` → `ok`, `7` → `permission_denied`);
/// `unknown` for values outside the standard range.
pub fn status_code_name(code: i32) -> &'static str {
    match code {
        0 => "ok",
        1 => "cancelled",
        3 => "invalid_argument",
        4 => "deadline_exceeded",
        5 => "not_found",
        6 => "already_exists",
        7 => "permission_denied",
        8 => "resource_exhausted",
        9 => "failed_precondition",
        10 => "aborted",
        11 => "out_of_range",
        12 => "unimplemented",
        13 => "internal",
        14 => "unavailable",
        15 => "data_loss",
        16 => "unauthenticated",
        _ => "unknown",
    }
}

/// A wire timestamp as a `SystemTime`; `None` when absent, or outside the years 0001–9999
/// (the range of `google.protobuf.Timestamp`, and all RFC 3339 can write): such a time is
/// shown as unknown rather than failing the command.
pub fn time(ts: Option<prost_types::Timestamp>) -> Option<SystemTime> {
    ts.and_then(|ts| SystemTime::try_from(ts).ok())
        .filter(|t| crate::format::is_rfc3339_time(*t))
}

/// A wire duration as a `Duration`; `None` when absent or negative.
pub fn duration(d: Option<prost_types::Duration>) -> Option<Duration> {
    d.and_then(|d| Duration::try_from(d).ok())
}

fn sorted(labels: HashMap<String, String>) -> BTreeMap<String, String> {
    labels.into_iter().collect()
}

impl From<pb::Agent> for AgentView {
    fn from(agent: pb::Agent) -> Self {
        let pb::Agent {
            agent_id,
            org_id,
            name,
            labels,
            system_info,
            status,
            status_reason,
            status_since,
            last_seen,
            enrolled_at,
            session_id,
            latest_metrics,
            health,
            duplicate_hardware_id,
            agent_version,
            last_durable_seq,
            identity_conflict,
            identity_conflict_detail,
        } = agent;
        Self {
            agent_id,
            org_id,
            name,
            status: AgentStatus::from_pb(status),
            status_reason: StatusReason::from_pb(status_reason),
            status_since: time(status_since),
            last_seen: time(last_seen),
            enrolled_at: time(enrolled_at),
            session_id: Some(session_id).filter(|s| !s.is_empty()),
            health: Health::from_pb(health),
            duplicate_hardware_id,
            identity_conflict,
            identity_conflict_detail: Some(identity_conflict_detail).filter(|d| !d.is_empty()),
            agent_version,
            last_durable_seq,
            labels: sorted(labels),
            system: system_info.map(Into::into),
            latest_metrics: latest_metrics.map(Into::into),
        }
    }
}

impl From<pb::SystemInfo> for SystemInfoView {
    fn from(info: pb::SystemInfo) -> Self {
        let pb::SystemInfo {
            hostname,
            os_name,
            os_version,
            kernel_version,
            architecture,
            cpu_model,
            logical_cores,
            total_memory_bytes,
            hardware_id,
            boot_time,
            agent_version,
        } = info;
        Self {
            hostname,
            os_name,
            os_version,
            kernel_version,
            architecture,
            cpu_model,
            logical_cores,
            total_memory_bytes,
            hardware_id,
            boot_time: time(boot_time),
            agent_version,
        }
    }
}

impl From<pb::MetricsSample> for MetricsSampleView {
    fn from(sample: pb::MetricsSample) -> Self {
        let pb::MetricsSample {
            seq,
            time: sample_time,
            cpu_percent,
            load_1,
            load_5,
            load_15,
            memory_used_bytes,
            memory_total_bytes,
            swap_used_bytes,
            swap_total_bytes,
            disks,
            network_rx_bytes,
            network_tx_bytes,
            uptime,
            process_count,
        } = sample;
        Self {
            seq,
            time: time(sample_time),
            cpu_percent,
            load_1,
            load_5,
            load_15,
            memory_used_bytes,
            memory_total_bytes,
            swap_used_bytes,
            swap_total_bytes,
            disks: disks.into_iter().map(Into::into).collect(),
            network_rx_bytes,
            network_tx_bytes,
            uptime_seconds: duration(uptime),
            process_count,
        }
    }
}

impl From<pb::DiskUsage> for DiskView {
    fn from(disk: pb::DiskUsage) -> Self {
        let pb::DiskUsage {
            mount_point,
            used_bytes,
            total_bytes,
        } = disk;
        Self {
            mount_point,
            used_bytes,
            total_bytes,
        }
    }
}

impl From<pb::StatusTransition> for TransitionView {
    fn from(transition: pb::StatusTransition) -> Self {
        let pb::StatusTransition {
            time: at,
            from_status,
            to_status,
            reason,
        } = transition;
        Self {
            time: time(at),
            from_status: AgentStatus::from_pb(from_status),
            to_status: AgentStatus::from_pb(to_status),
            reason: StatusReason::from_pb(reason),
        }
    }
}

impl From<pb::WatchAgentsResponse> for WatchEventView {
    fn from(event: pb::WatchAgentsResponse) -> Self {
        let pb::WatchAgentsResponse {
            kind,
            agent,
            previous_status,
            time: at,
            revision,
        } = event;
        let kind = EventKind::from_pb(kind);
        Self {
            kind,
            time: time(at),
            revision,
            previous_status: (kind == EventKind::StatusChanged)
                .then(|| AgentStatus::from_pb(previous_status)),
            agent: agent.map(Into::into),
        }
    }
}

impl From<pb::MetricsPoint> for MetricsPointView {
    fn from(point: pb::MetricsPoint) -> Self {
        let pb::MetricsPoint {
            time: at,
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
        } = point;
        Self {
            time: time(at),
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
}

impl From<pb::GetFleetSummaryResponse> for SummaryView {
    fn from(summary: pb::GetFleetSummaryResponse) -> Self {
        let pb::GetFleetSummaryResponse {
            total,
            online,
            stale,
            offline,
            expired,
            by_os,
            health_ok,
            health_warning,
            health_critical,
            health_unknown,
        } = summary;
        Self {
            total,
            online,
            stale,
            offline,
            expired,
            by_os: by_os.into_iter().collect(),
            health: HealthCounts {
                ok: health_ok,
                warning: health_warning,
                critical: health_critical,
                unknown: health_unknown,
            },
        }
    }
}

impl From<pb::GetServerConfigResponse> for ServerConfigView {
    fn from(config: pb::GetServerConfigResponse) -> Self {
        let pb::GetServerConfigResponse {
            server_version,
            heartbeat_interval,
            metrics_interval,
            stale_after,
            offline_after,
            fleet_ttl,
            metrics_retention,
            health_thresholds,
            max_message_bytes,
            max_labels,
            max_label_key_bytes,
            max_label_value_bytes,
            features,
            rollup_5m_retention,
            rollup_1h_retention,
            limits,
            commands,
            events_retention,
            event_stats_retention,
            event_fingerprint_window,
        } = config;
        Self {
            server_version,
            heartbeat_interval_seconds: duration(heartbeat_interval),
            metrics_interval_seconds: duration(metrics_interval),
            stale_after_seconds: duration(stale_after),
            offline_after_seconds: duration(offline_after),
            fleet_ttl_seconds: duration(fleet_ttl),
            metrics_retention_seconds: duration(metrics_retention),
            rollup_5m_retention_seconds: duration(rollup_5m_retention),
            rollup_1h_retention_seconds: duration(rollup_1h_retention),
            events_retention_seconds: duration(events_retention),
            event_stats_retention_seconds: duration(event_stats_retention),
            event_fingerprint_window_seconds: duration(event_fingerprint_window),
            health_thresholds: health_thresholds.map(Into::into),
            max_message_bytes,
            max_labels,
            max_label_key_bytes,
            max_label_value_bytes,
            limits: limits.map(Into::into),
            commands: commands.map(Into::into),
            features,
        }
    }
}

impl From<pb::ServerLimits> for LimitsView {
    fn from(l: pb::ServerLimits) -> Self {
        let pb::ServerLimits {
            max_samples_per_report,
            max_agents_per_org,
            stream_messages_per_second,
            stream_message_burst,
            token_requests_per_second,
            token_request_burst,
            max_watches_per_token,
            max_watches_per_org,
            max_response_bytes,
            max_concurrent_streams,
        } = l;
        Self {
            max_samples_per_report,
            max_agents_per_org,
            stream_messages_per_second,
            stream_message_burst,
            token_requests_per_second,
            token_request_burst,
            max_watches_per_token,
            max_watches_per_org,
            max_response_bytes,
            max_concurrent_streams,
        }
    }
}

impl From<pb::CommandSettings> for CommandSettingsView {
    fn from(c: pb::CommandSettings) -> Self {
        let pb::CommandSettings {
            default_timeout,
            default_deliver_within,
            default_output_limit_bytes,
            max_output_limit_bytes,
            retention,
            max_in_flight_per_org,
            max_queued_per_agent,
        } = c;
        Self {
            default_timeout_seconds: duration(default_timeout),
            default_deliver_within_seconds: duration(default_deliver_within),
            default_output_limit_bytes,
            max_output_limit_bytes,
            retention_seconds: duration(retention),
            max_in_flight_per_org,
            max_queued_per_agent,
        }
    }
}

impl From<pb::HealthThresholds> for ThresholdsView {
    fn from(t: pb::HealthThresholds) -> Self {
        let pb::HealthThresholds {
            cpu_warning_percent,
            cpu_critical_percent,
            memory_warning_percent,
            memory_critical_percent,
            disk_warning_percent,
            disk_critical_percent,
        } = t;
        Self {
            cpu_warning_percent,
            cpu_critical_percent,
            memory_warning_percent,
            memory_critical_percent,
            disk_warning_percent,
            disk_critical_percent,
        }
    }
}

impl EnrollmentTokenView {
    /// Converts a wire token, deciding its [`TokenState`] as of `now`.
    pub fn from_pb(token: pb::EnrollmentToken, now: SystemTime) -> Self {
        let pb::EnrollmentToken {
            token_id,
            org_id,
            description,
            labels,
            max_uses,
            use_count,
            created_at,
            expires_at,
            revoked,
            allow_reclaim,
        } = token;
        let max_uses = Some(max_uses).filter(|&n| n > 0);
        let expires_at = time(expires_at);
        let state = if revoked {
            TokenState::Revoked
        } else if expires_at.is_some_and(|at| at <= now) {
            TokenState::Expired
        } else if max_uses.is_some_and(|max| use_count >= max) {
            TokenState::Exhausted
        } else {
            TokenState::Active
        };
        Self {
            token_id,
            org_id,
            description,
            labels: sorted(labels),
            max_uses,
            use_count,
            created_at: time(created_at),
            expires_at,
            revoked,
            allow_reclaim,
            state,
        }
    }
}
impl From<pb::Org> for OrgView {
    fn from(org: pb::Org) -> Self {
        let pb::Org {
            org_id,
            display_name,
            created_at,
        } = org;
        Self {
            org_id,
            display_name,
            created_at: time(created_at),
        }
    }
}

impl ApiTokenView {
    /// Converts a wire token, deciding its [`TokenState`] as of `now`.
    pub fn from_pb(token: pb::ApiToken, now: SystemTime) -> Self {
        let pb::ApiToken {
            token_id,
            org_id,
            name,
            role,
            created_at,
            expires_at,
            revoked,
            last_used_at,
            server_admin,
        } = token;
        let expires_at = time(expires_at);
        let state = if revoked {
            TokenState::Revoked
        } else if expires_at.is_some_and(|at| at <= now) {
            TokenState::Expired
        } else {
            TokenState::Active
        };
        Self {
            token_id,
            org_id,
            name,
            role: Role::from_pb(role).unwrap_or(Role::Unknown),
            server_admin,
            created_at: time(created_at),
            expires_at,
            last_used_at: time(last_used_at),
            revoked,
            state,
        }
    }
}

impl From<pb::AuditEvent> for AuditEventView {
    fn from(event: pb::AuditEvent) -> Self {
        let pb::AuditEvent {
            seq,
            org_id,
            time: at,
            actor_token_id,
            actor_name,
            actor_role,
            method,
            target,
            outcome,
            status_code,
            message,
            prev_hash,
            hash,
        } = event;
        let non_empty = |s: String| Some(s).filter(|s| !s.is_empty());
        Self {
            seq,
            org_id,
            time: time(at),
            actor_token_id: non_empty(actor_token_id),
            actor_name: non_empty(actor_name),
            actor_role: Role::from_pb(actor_role),
            method,
            target: non_empty(target),
            outcome: AuditOutcome::from_pb(outcome),
            status_code,
            code: status_code_name(status_code).to_owned(),
            message,
            prev_hash,
            hash,
        }
    }
}
