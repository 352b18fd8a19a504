//! The CLI's own view of the server's answers, and the conversions from the wire types.
//!
//! These structs are what `-o json` prints, so their shape is a public, stable contract:
//! snake_case keys, enums as lowercase strings (`"online"`, `"status_changed"`), timestamps as
//! RFC 3339 strings (UTC, whole seconds, `null` when unknown), durations as `*_seconds` numbers.
//! Prost types are never serialized directly. Table and CSV renderers read the same structs, so
//! every format shows the same facts.
//!
//! Conversions destructure the wire types exhaustively: a new proto field fails the build here
//! until the CLI decides how to show it.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tether_proto as pb;

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
    /// A session opened.
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
    #[serde(with = "rfc3339")]
    pub status_since: Option<SystemTime>,
    /// Last time any message arrived.
    #[serde(with = "rfc3339")]
    pub last_seen: Option<SystemTime>,
    /// When the agent enrolled.
    #[serde(with = "rfc3339")]
    pub enrolled_at: Option<SystemTime>,
    /// Id of the live session; `None` when not connected.
    pub session_id: Option<String>,
    /// Health from the latest metrics.
    pub health: Health,
    /// Another live machine shares this agent's hardware id.
    pub duplicate_hardware_id: bool,
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
    #[serde(with = "rfc3339")]
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
    #[serde(with = "rfc3339")]
    pub time: Option<SystemTime>,
    /// CPU use, 0–100.
    pub cpu_percent: f64,
    /// 1-minute load average.
    pub load_1: f64,
    /// 5-minute load average.
    pub load_5: f64,
    /// 15-minute load average.
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
    #[serde(with = "seconds")]
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
    #[serde(with = "rfc3339")]
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
    #[serde(with = "rfc3339")]
    pub time: Option<SystemTime>,
    /// Server-wide, increasing revision.
    pub revision: u64,
    /// For `status_changed`: the status before.
    pub previous_status: Option<AgentStatus>,
    /// The agent after the change; `None` for `synced`.
    pub agent: Option<AgentView>,
}

/// One point of `metrics -o json`: samples averaged over one step.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricsPointView {
    /// Start of the step.
    #[serde(with = "rfc3339")]
    pub time: Option<SystemTime>,
    /// Samples averaged into this point.
    pub sample_count: u32,
    /// Mean CPU use, 0–100.
    pub cpu_percent: f64,
    /// Mean 1-minute load.
    pub load_1: f64,
    /// Mean 5-minute load.
    pub load_5: f64,
    /// Mean 15-minute load.
    pub load_15: f64,
    /// Mean memory in use.
    pub memory_used_bytes: u64,
    /// Memory installed.
    pub memory_total_bytes: u64,
    /// Mean swap in use.
    pub swap_used_bytes: u64,
    /// Swap available.
    pub swap_total_bytes: u64,
    /// Disk used, summed over mounts.
    pub disk_used_bytes: u64,
    /// Disk size, summed over mounts.
    pub disk_total_bytes: u64,
    /// Receive rate.
    pub network_rx_bytes_per_second: f64,
    /// Send rate.
    pub network_tx_bytes_per_second: f64,
    /// Mean process count.
    pub process_count: u32,
}

/// `summary -o json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SummaryView {
    /// Agents that are not expired.
    pub total: u32,
    /// Online agents.
    pub online: u32,
    /// Stale agents.
    pub stale: u32,
    /// Offline agents.
    pub offline: u32,
    /// Expired agents.
    pub expired: u32,
    /// Non-expired agents by OS name.
    pub by_os: BTreeMap<String, u32>,
    /// Non-expired agents by health.
    pub health: HealthCounts,
}

/// Agents per health value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthCounts {
    /// Healthy.
    pub ok: u32,
    /// Warning.
    pub warning: u32,
    /// Critical.
    pub critical: u32,
    /// No metrics yet.
    pub unknown: u32,
}

/// `config -o json`: what the server has in force.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServerConfigView {
    /// Server software version.
    pub server_version: String,
    /// How often agents ping.
    #[serde(with = "seconds")]
    pub heartbeat_interval_seconds: Option<Duration>,
    /// How often agents report metrics.
    #[serde(with = "seconds")]
    pub metrics_interval_seconds: Option<Duration>,
    /// Silence after which an agent is stale.
    #[serde(with = "seconds")]
    pub stale_after_seconds: Option<Duration>,
    /// Silence after which an agent is offline.
    #[serde(with = "seconds")]
    pub offline_after_seconds: Option<Duration>,
    /// Offline time after which an agent expires.
    #[serde(with = "seconds")]
    pub fleet_ttl_seconds: Option<Duration>,
    /// How long metrics are kept.
    #[serde(with = "seconds")]
    pub metrics_retention_seconds: Option<Duration>,
    /// Health thresholds.
    pub health_thresholds: Option<ThresholdsView>,
    /// Largest accepted message.
    pub max_message_bytes: u64,
    /// Most labels per agent.
    pub max_labels: u32,
    /// Longest label key.
    pub max_label_key_bytes: u32,
    /// Longest label value.
    pub max_label_value_bytes: u32,
    /// Enabled features.
    pub features: Vec<String>,
}

/// Percentages at which a resource makes an agent's health warning or critical.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ThresholdsView {
    /// CPU warning.
    pub cpu_warning_percent: f64,
    /// CPU critical.
    pub cpu_critical_percent: f64,
    /// Memory warning.
    pub memory_warning_percent: f64,
    /// Memory critical.
    pub memory_critical_percent: f64,
    /// Disk warning.
    pub disk_warning_percent: f64,
    /// Disk critical.
    pub disk_critical_percent: f64,
}

/// Whether a token (enrollment or API) can still be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenState {
    /// Usable.
    Active,
    /// Revoked by an admin.
    Revoked,
    /// Past its expiry.
    Expired,
    /// Used `max_uses` times (enrollment tokens only).
    Exhausted,
}

/// One enrollment token (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EnrollmentTokenView {
    /// Token id.
    pub token_id: String,
    /// Owning org.
    pub org_id: String,
    /// Free text.
    pub description: String,
    /// Labels stamped on agents enrolled with it.
    pub labels: BTreeMap<String, String>,
    /// Most enrollments allowed; `None` means unlimited.
    pub max_uses: Option<u32>,
    /// Enrollments so far.
    pub use_count: u32,
    /// Creation time.
    #[serde(with = "rfc3339")]
    pub created_at: Option<SystemTime>,
    /// Expiry; `None` means never.
    #[serde(with = "rfc3339")]
    pub expires_at: Option<SystemTime>,
    /// Revoked by an admin.
    pub revoked: bool,
    /// Usable right now?
    pub state: TokenState,
}

/// `enroll-token create -o json`: the token and its secret, shown once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CreatedTokenView {
    /// The token.
    pub token: EnrollmentTokenView,
    /// The secret agents enroll with.
    pub secret: String,
}

/// A token's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything in the org: tokens, enrollment tokens, agents, plus what operators may do.
    Admin,
    /// Read, and send commands.
    Operator,
    /// Read only.
    Viewer,
    /// An agent credential: its own `Connect` only.
    #[value(skip)]
    Agent,
    /// A role this CLI does not know (a newer server).
    #[value(skip)]
    Unknown,
}

/// One org.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OrgView {
    /// Org id.
    pub org_id: String,
    /// Human-readable name.
    pub display_name: String,
    /// Creation time.
    #[serde(with = "rfc3339")]
    pub created_at: Option<SystemTime>,
}

/// `orgs create -o json`: the org and its first admin token with its secret, shown once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CreatedOrgView {
    /// The org.
    pub org: OrgView,
    /// The org's first admin token; `None` if the server sent none.
    pub admin_token: Option<ApiTokenView>,
    /// The admin token's secret.
    pub admin_secret: String,
}

/// One API token (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApiTokenView {
    /// Token id.
    pub token_id: String,
    /// Owning org.
    pub org_id: String,
    /// Name given at creation.
    pub name: String,
    /// What the token may do.
    pub role: Role,
    /// May also create and list orgs.
    pub server_admin: bool,
    /// Creation time.
    #[serde(with = "rfc3339")]
    pub created_at: Option<SystemTime>,
    /// Expiry; `None` means never.
    #[serde(with = "rfc3339")]
    pub expires_at: Option<SystemTime>,
    /// Last successful authentication, to the minute; `None` if never used.
    #[serde(with = "rfc3339")]
    pub last_used_at: Option<SystemTime>,
    /// Revoked by an admin.
    pub revoked: bool,
    /// Usable right now? (`active`, `revoked` or `expired`.)
    pub state: TokenState,
}

/// `tokens create -o json`: the token and its secret, shown once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CreatedApiTokenView {
    /// The token.
    pub token: ApiTokenView,
    /// The secret to pass as `--token`.
    pub secret: String,
}

/// How an audited call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AuditOutcome {
    /// Permitted and done.
    Succeeded,
    /// Refused: unauthenticated, not permitted, or over a limit.
    Denied,
    /// Permitted but failed (bad input, not found, internal error).
    Failed,
    /// Not given, or unknown to this CLI.
    #[value(skip)]
    Unknown,
}

/// One audit event, as `audit -o json` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEventView {
    /// Position in the org's chain, from 1.
    pub seq: u64,
    /// Owning org.
    pub org_id: String,
    /// When the call was answered.
    #[serde(with = "rfc3339")]
    pub time: Option<SystemTime>,
    /// The caller's token id; `None` when the caller could not be authenticated.
    pub actor_token_id: Option<String>,
    /// The caller's token name; `None` when unknown.
    pub actor_name: Option<String>,
    /// The caller's role; `None` when unknown.
    pub actor_role: Option<Role>,
    /// Full gRPC method, e.g. `/tether.v1.AdminService/CreateToken`.
    pub method: String,
    /// The object acted on (agent id, token id, org id), if any.
    pub target: Option<String>,
    /// How the call ended.
    pub outcome: AuditOutcome,
    /// Numeric gRPC status code of the answer (0 = OK).
    pub status_code: i32,
    /// The status code's name in snake_case, e.g. `ok`, `permission_denied`.
    pub code: String,
    /// The status message, if any.
    pub message: String,
    /// SHA-256 of the previous event, in hex.
    #[serde(with = "hex_bytes")]
    pub prev_hash: Vec<u8>,
    /// SHA-256 of `prev_hash` and this event, in hex.
    #[serde(with = "hex_bytes")]
    pub hash: Vec<u8>,
}

/// `audit verify -o json`: an intact chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditChainView {
    /// Always `true`: a broken chain is an error, not an answer.
    pub ok: bool,
    /// Events checked.
    pub n_events: u64,
    /// Sequence number of the last event; 0 when there are none.
    pub last_seq: u64,
    /// Hash of the last event (32 zero bytes when there are none), in hex.
    #[serde(with = "hex_bytes")]
    pub last_hash: Vec<u8>,
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

// === impl StatusReason ===

impl StatusReason {
    /// The snake_case name used in tables and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enrolled => "enrolled",
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
            Ok(R::Ttl) => Self::Ttl,
            Ok(R::Unspecified) | Err(_) => Self::Unknown,
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
            Self::Unknown => "unknown",
        }
    }

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
            Ok(K::Unspecified) | Err(_) => Self::Unknown,
        }
    }
}

// === impl TokenState ===

impl TokenState {
    /// The lowercase name used in tables and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Revoked => "revoked",
            Self::Expired => "expired",
            Self::Exhausted => "exhausted",
        }
    }
}

// === impl Role ===

impl Role {
    /// The lowercase name used in tables and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Operator => "operator",
            Self::Viewer => "viewer",
            Self::Agent => "agent",
            Self::Unknown => "unknown",
        }
    }

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

// === impl AuditOutcome ===

impl AuditOutcome {
    /// The lowercase name used in tables and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Denied => "denied",
            Self::Failed => "failed",
            Self::Unknown => "unknown",
        }
    }

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

// === conversions from the wire ===

/// A wire timestamp as a `SystemTime`; `None` when absent or out of range.
pub fn time(ts: Option<prost_types::Timestamp>) -> Option<SystemTime> {
    ts.and_then(|ts| SystemTime::try_from(ts).ok())
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
        } = config;
        Self {
            server_version,
            heartbeat_interval_seconds: duration(heartbeat_interval),
            metrics_interval_seconds: duration(metrics_interval),
            stale_after_seconds: duration(stale_after),
            offline_after_seconds: duration(offline_after),
            fleet_ttl_seconds: duration(fleet_ttl),
            metrics_retention_seconds: duration(metrics_retention),
            health_thresholds: health_thresholds.map(Into::into),
            max_message_bytes,
            max_labels,
            max_label_key_bytes,
            max_label_value_bytes,
            features,
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

/// Serializes `Option<SystemTime>` as an RFC 3339 string (UTC, whole seconds) or `null`.
mod rfc3339 {
    use std::time::SystemTime;

    #[allow(
        clippy::ref_option,
        reason = "serde's `with` passes a reference to the field"
    )]
    pub(super) fn serialize<S: serde::Serializer>(
        time: &Option<SystemTime>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match time {
            Some(t) => serializer.collect_str(&humantime::format_rfc3339_seconds(*t)),
            None => serializer.serialize_none(),
        }
    }
}

/// Serializes `Option<Duration>` as a number of seconds or `null`.
mod seconds {
    use std::time::Duration;

    #[allow(
        clippy::ref_option,
        reason = "serde's `with` passes a reference to the field"
    )]
    pub(super) fn serialize<S: serde::Serializer>(
        duration: &Option<Duration>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match duration {
            Some(d) => serializer.serialize_f64(d.as_secs_f64()),
            None => serializer.serialize_none(),
        }
    }
}
/// Serializes bytes as a lowercase hex string.
mod hex_bytes {
    #[allow(
        clippy::ptr_arg,
        reason = "serde's `with` passes a reference to the field"
    )]
    pub(super) fn serialize<S: serde::Serializer>(
        bytes: &Vec<u8>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&hex::encode(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(secs: i64) -> Option<prost_types::Timestamp> {
        Some(prost_types::Timestamp {
            seconds: secs,
            nanos: 0,
        })
    }

    #[test]
    fn agent_json_is_stable() {
        let agent = pb::Agent {
            agent_id: "a-1".into(),
            org_id: "o-1".into(),
            name: "web-1".into(),
            labels: HashMap::from([("env".into(), "prod".into())]),
            status: pb::AgentStatus::Stale as i32,
            status_reason: pb::StatusReason::StreamClosed as i32,
            last_seen: ts(1_700_000_000),
            health: pb::Health::Warning as i32,
            ..pb::Agent::default()
        };
        let json = serde_json::to_value(AgentView::from(agent)).expect("serializes");
        assert_eq!(json["status"], "stale");
        assert_eq!(json["status_reason"], "stream_closed");
        assert_eq!(json["health"], "warning");
        assert_eq!(json["last_seen"], "2023-11-14T22:13:20Z");
        assert_eq!(json["status_since"], serde_json::Value::Null);
        assert_eq!(json["session_id"], serde_json::Value::Null);
        assert_eq!(json["labels"]["env"], "prod");
    }

    #[test]
    fn unknown_enum_values_degrade() {
        assert_eq!(AgentStatus::from_pb(99), AgentStatus::Unknown);
        assert_eq!(Health::from_pb(0), Health::Unknown);
        assert_eq!(EventKind::from_pb(2), EventKind::Synced);
    }

    #[test]
    fn watch_event_previous_status_only_for_status_changes() {
        let event = pb::WatchAgentsResponse {
            kind: pb::AgentEventKind::StatusChanged as i32,
            previous_status: pb::AgentStatus::Online as i32,
            agent: Some(pb::Agent::default()),
            ..Default::default()
        };
        let json = serde_json::to_value(WatchEventView::from(event)).expect("serializes");
        assert_eq!(json["kind"], "status_changed");
        assert_eq!(json["previous_status"], "online");
        let event = pb::WatchAgentsResponse {
            kind: pb::AgentEventKind::Snapshot as i32,
            ..Default::default()
        };
        let json = serde_json::to_value(WatchEventView::from(event)).expect("serializes");
        assert_eq!(json["previous_status"], serde_json::Value::Null);
    }

    #[test]
    fn token_states() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let token = |revoked, expires, max_uses, use_count| pb::EnrollmentToken {
            revoked,
            expires_at: expires,
            max_uses,
            use_count,
            ..Default::default()
        };
        let state = |t| EnrollmentTokenView::from_pb(t, now).state;
        assert_eq!(state(token(false, None, 0, 5)), TokenState::Active);
        assert_eq!(state(token(true, None, 0, 0)), TokenState::Revoked);
        assert_eq!(state(token(false, ts(999), 0, 0)), TokenState::Expired);
        assert_eq!(state(token(false, ts(2_000), 2, 2)), TokenState::Exhausted);
        let json =
            serde_json::to_value(EnrollmentTokenView::from_pb(token(false, None, 0, 0), now))
                .expect("serializes");
        assert_eq!(json["max_uses"], serde_json::Value::Null);
        assert_eq!(json["state"], "active");
    }

    #[test]
    fn durations_are_seconds() {
        let config = pb::GetServerConfigResponse {
            stale_after: Some(prost_types::Duration {
                seconds: 15,
                nanos: 0,
            }),
            heartbeat_interval: Some(prost_types::Duration {
                seconds: 0,
                nanos: 500_000_000,
            }),
            ..Default::default()
        };
        let json = serde_json::to_value(ServerConfigView::from(config)).expect("serializes");
        assert_eq!(json["stale_after_seconds"], 15.0);
        assert_eq!(json["heartbeat_interval_seconds"], 0.5);
        assert_eq!(json["fleet_ttl_seconds"], serde_json::Value::Null);
    }
}
