//! The views of agents: `agents list`, `agents get` and `agents watch` print these, and
//! `agents list -o csv` and the tables read them.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use serde::Serialize;

/// An agent's liveness, as decided by the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AgentStatus {
    /// A message arrived within `stale_after`.
    Online,
    /// Connected but silent: the connection may be half-open.
    Stale,
    /// Stream closed or never connected.
    Offline,
    /// Offline for longer than the fleet TTL.
    Expired,
    /// A status this CLI does not know (a newer server), or none.
    #[value(skip)]
    Unknown,
}

/// Why an agent's status last changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StatusReason {
    /// The agent enrolled and has not connected yet.
    Enrolled,
    /// The first session since enrollment opened.
    Connected,
    /// A session opened after an earlier one.
    Reconnected,
    /// A stale agent sent a message again.
    Activity,
    /// No message for `stale_after` or `offline_after`.
    Silent,
    /// The stream ended without a goodbye.
    StreamClosed,
    /// The agent said goodbye.
    Goodbye,
    /// A newer session replaced this one.
    Replaced,
    /// The server restarted and the agent has not reconnected since.
    ServerRestart,
    /// Offline for longer than the fleet TTL.
    Ttl,
    /// Not given, or unknown to this CLI.
    Unknown,
}

/// Health derived from the latest metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Within every threshold.
    Ok,
    /// A resource is at or above its warning threshold.
    Warning,
    /// A resource is at or above its critical threshold.
    Critical,
    /// No metrics yet, or a value unknown to this CLI.
    Unknown,
}

/// What a watch event reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// Part of the initial snapshot.
    Snapshot,
    /// The snapshot is complete.
    Synced,
    /// A new agent enrolled.
    Registered,
    /// The agent's status changed.
    StatusChanged,
    /// The agent reported metrics.
    MetricsUpdated,
    /// The agent's labels changed.
    LabelsChanged,
    /// The agent was deleted.
    Removed,
    /// `duplicate_hardware_id` or `identity_conflict` changed.
    FlagsChanged,
    /// Unknown to this CLI.
    Unknown,
}

/// One agent, as `agents list -o json` prints it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AgentView {
    /// Agent id.
    pub agent_id: String,
    /// Owning org.
    pub org_id: String,
    /// Display name.
    pub name: String,
    /// Liveness.
    pub status: AgentStatus,
    /// Why the status last changed.
    pub status_reason: StatusReason,
    /// When the status last changed.
    #[serde(with = "super::json::rfc3339")]
    pub status_since: Option<SystemTime>,
    /// Last time any message arrived.
    #[serde(with = "super::json::rfc3339")]
    pub last_seen: Option<SystemTime>,
    /// When the agent enrolled.
    #[serde(with = "super::json::rfc3339")]
    pub enrolled_at: Option<SystemTime>,
    /// Id of the live session; `None` when not connected.
    pub session_id: Option<String>,
    /// Health from the latest metrics.
    pub health: Health,
    /// Another agent of the org reports the same hardware id (e.g. a cloned image).
    pub duplicate_hardware_id: bool,
    /// Two machines (or agent processes) holding this agent's credential keep replacing
    /// each other's session: a copied state directory.
    pub identity_conflict: bool,
    /// What the server saw, when `identity_conflict` is set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity_conflict_detail: Option<String>,
    /// Version of the agent software.
    pub agent_version: String,
    /// Highest metrics sequence number durably stored.
    pub last_durable_seq: u64,
    /// Labels, sorted by key.
    pub labels: BTreeMap<String, String>,
    /// What the agent reported about its machine.
    pub system: Option<SystemInfoView>,
    /// The most recent metrics sample.
    pub latest_metrics: Option<MetricsSampleView>,
}

/// A machine's identity and hardware.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SystemInfoView {
    /// Host name.
    pub hostname: String,
    /// OS name, e.g. "Ubuntu".
    pub os_name: String,
    /// OS version.
    pub os_version: String,
    /// Kernel version.
    pub kernel_version: String,
    /// CPU architecture.
    pub architecture: String,
    /// CPU model.
    pub cpu_model: String,
    /// Logical CPU count.
    pub logical_cores: u32,
    /// Physical memory.
    pub total_memory_bytes: u64,
    /// Stable hardware identity.
    pub hardware_id: String,
    /// When the machine booted.
    #[serde(with = "super::json::rfc3339")]
    pub boot_time: Option<SystemTime>,
    /// Agent version reported with the system info.
    pub agent_version: String,
}

/// One metrics sample.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricsSampleView {
    /// Per-agent sequence number.
    pub seq: u64,
    /// When the sample was taken.
    #[serde(with = "super::json::rfc3339")]
    pub time: Option<SystemTime>,
    /// CPU use, 0–100.
    #[serde(serialize_with = "super::json::rounded::serialize")]
    pub cpu_percent: f64,
    /// 1-minute load average.
    #[serde(serialize_with = "super::json::rounded::serialize")]
    pub load_1: f64,
    /// 5-minute load average.
    #[serde(serialize_with = "super::json::rounded::serialize")]
    pub load_5: f64,
    /// 15-minute load average.
    #[serde(serialize_with = "super::json::rounded::serialize")]
    pub load_15: f64,
    /// Memory in use.
    pub memory_used_bytes: u64,
    /// Memory installed.
    pub memory_total_bytes: u64,
    /// Swap in use.
    pub swap_used_bytes: u64,
    /// Swap available.
    pub swap_total_bytes: u64,
    /// Per-mount usage.
    pub disks: Vec<DiskView>,
    /// Bytes received since boot.
    pub network_rx_bytes: u64,
    /// Bytes sent since boot.
    pub network_tx_bytes: u64,
    /// Time since boot.
    #[serde(with = "super::json::seconds")]
    pub uptime_seconds: Option<Duration>,
    /// Running processes.
    pub process_count: u32,
}

/// One mounted filesystem's usage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DiskView {
    /// Mount point.
    pub mount_point: String,
    /// Bytes used.
    pub used_bytes: u64,
    /// Bytes in total.
    pub total_bytes: u64,
}

/// `agents get -o json`: the agent's fields plus its recent transitions.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AgentDetailView {
    /// The agent.
    #[serde(flatten)]
    pub agent: AgentView,
    /// Most recent status changes, newest first.
    pub recent_transitions: Vec<TransitionView>,
}

/// One stored status change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TransitionView {
    /// When it happened.
    #[serde(with = "super::json::rfc3339")]
    pub time: Option<SystemTime>,
    /// Status before.
    pub from_status: AgentStatus,
    /// Status after.
    pub to_status: AgentStatus,
    /// Why.
    pub reason: StatusReason,
}

/// One line of `agents watch -o json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WatchEventView {
    /// What happened.
    pub kind: EventKind,
    /// When it happened.
    #[serde(with = "super::json::rfc3339")]
    pub time: Option<SystemTime>,
    /// Server-wide, increasing revision.
    pub revision: u64,
    /// For `status_changed`: the status before.
    pub previous_status: Option<AgentStatus>,
    /// The agent after the change; `None` for `synced`.
    pub agent: Option<AgentView>,
}

// === impl AgentStatus ===

impl AgentStatus {
    /// The lowercase name used in tables and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Online => "online",
            Self::Stale => "stale",
            Self::Offline => "offline",
            Self::Expired => "expired",
            Self::Unknown => "unknown",
        }
    }
}

// === impl StatusReason ===

impl StatusReason {
    /// The snake_case name used in tables and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enrolled => "enrolled",
            Self::Connected => "connected",
            Self::Reconnected => "reconnected",
            Self::Activity => "activity",
            Self::Silent => "silent",
            Self::StreamClosed => "stream_closed",
            Self::Goodbye => "goodbye",
            Self::Replaced => "replaced",
            Self::ServerRestart => "server_restart",
            Self::Ttl => "ttl",
            Self::Unknown => "unknown",
        }
    }
}

// === impl Health ===

impl Health {
    /// The lowercase name used in tables and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Warning => "warning",
            Self::Critical => "critical",
            Self::Unknown => "unknown",
        }
    }
}

// === impl EventKind ===

impl EventKind {
    /// The snake_case name used in tables and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Snapshot => "snapshot",
            Self::Synced => "synced",
            Self::Registered => "registered",
            Self::StatusChanged => "status_changed",
            Self::MetricsUpdated => "metrics_updated",
            Self::LabelsChanged => "labels_changed",
            Self::Removed => "removed",
            Self::FlagsChanged => "flags_changed",
            Self::Unknown => "unknown",
        }
    }
}
