//! The views of fleet-wide answers: `metrics`, `summary` and `config`.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use serde::Serialize;

/// One point of `metrics -o json`: samples averaged over one step.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricsPointView {
    /// Start of the step.
    #[serde(with = "super::json::rfc3339")]
    pub time: Option<SystemTime>,
    /// Samples averaged into this point.
    pub sample_count: u32,
    /// Mean CPU use, 0–100.
    #[serde(serialize_with = "super::json::rounded::serialize")]
    pub cpu_percent: f64,
    /// Mean 1-minute load.
    #[serde(serialize_with = "super::json::rounded::serialize")]
    pub load_1: f64,
    /// Mean 5-minute load.
    #[serde(serialize_with = "super::json::rounded::serialize")]
    pub load_5: f64,
    /// Mean 15-minute load.
    #[serde(serialize_with = "super::json::rounded::serialize")]
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
    #[serde(serialize_with = "super::json::rounded::serialize")]
    pub network_rx_bytes_per_second: f64,
    /// Send rate.
    #[serde(serialize_with = "super::json::rounded::serialize")]
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
    #[serde(with = "super::json::seconds")]
    pub heartbeat_interval_seconds: Option<Duration>,
    /// How often agents report metrics.
    #[serde(with = "super::json::seconds")]
    pub metrics_interval_seconds: Option<Duration>,
    /// Silence after which an agent is stale.
    #[serde(with = "super::json::seconds")]
    pub stale_after_seconds: Option<Duration>,
    /// Silence after which an agent is offline.
    #[serde(with = "super::json::seconds")]
    pub offline_after_seconds: Option<Duration>,
    /// Offline time after which an agent expires.
    #[serde(with = "super::json::seconds")]
    pub fleet_ttl_seconds: Option<Duration>,
    /// How long raw metrics samples are kept.
    #[serde(with = "super::json::seconds")]
    pub metrics_retention_seconds: Option<Duration>,
    /// How long 5-minute rollups are kept.
    #[serde(with = "super::json::seconds")]
    pub rollup_5m_retention_seconds: Option<Duration>,
    /// How long 1-hour rollups are kept.
    #[serde(with = "super::json::seconds")]
    pub rollup_1h_retention_seconds: Option<Duration>,
    /// How long raw events are kept.
    #[serde(with = "super::json::seconds")]
    pub events_retention_seconds: Option<Duration>,
    /// How long the hourly event counts are kept.
    #[serde(with = "super::json::seconds")]
    pub event_stats_retention_seconds: Option<Duration>,
    /// Window within which events sharing a fingerprint are one stored event.
    #[serde(with = "super::json::seconds")]
    pub event_fingerprint_window_seconds: Option<Duration>,
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
    /// Rate and size limits every caller runs into.
    pub limits: Option<LimitsView>,
    /// Command defaults and limits.
    pub commands: Option<CommandSettingsView>,
    /// Enabled features.
    pub features: Vec<String>,
}

/// Limits the server enforces on every caller.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LimitsView {
    /// Samples one metrics report may carry.
    pub max_samples_per_report: u32,
    /// Agents one org may enroll.
    pub max_agents_per_org: u64,
    /// Sustained messages per second on one agent stream.
    pub stream_messages_per_second: u32,
    /// Burst of messages on one agent stream.
    pub stream_message_burst: u32,
    /// Sustained requests per second of one API token.
    pub token_requests_per_second: u32,
    /// Burst of requests of one API token.
    pub token_request_burst: u32,
    /// Open watches per API token.
    pub max_watches_per_token: u32,
    /// Open watches per org.
    pub max_watches_per_org: u32,
    /// Largest response.
    pub max_response_bytes: u64,
    /// Concurrent HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
}

/// What a command gets when it names nothing, and what it may ask for.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CommandSettingsView {
    /// Run time of an invocation whose command names none.
    #[serde(with = "super::json::seconds")]
    pub default_timeout_seconds: Option<Duration>,
    /// Delivery window of a command that names none.
    #[serde(with = "super::json::seconds")]
    pub default_deliver_within_seconds: Option<Duration>,
    /// Output kept per invocation by default.
    pub default_output_limit_bytes: u64,
    /// Most output a command may ask to keep per invocation.
    pub max_output_limit_bytes: u64,
    /// How long finished commands are kept.
    #[serde(with = "super::json::seconds")]
    pub retention_seconds: Option<Duration>,
    /// Unfinished commands per org.
    pub max_in_flight_per_org: u32,
    /// Unfinished invocations queued per agent.
    pub max_queued_per_agent: u32,
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
