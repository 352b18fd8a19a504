//! The RPC edge: every conversion between wire types (`pb`) and domain types, with the
//! validation that inbound data needs before it may reach the registry or the store.
//!
//! Handlers convert a request here, call a use case with domain types, and convert its answer
//! here; nothing else in the server builds or reads a `pb` message's fields (the session loop's
//! protocol framing aside). This file holds what every service shares (times, labels, ids,
//! system info, samples, enums); `convert/{agent,fleet,admin,command}.rs` hold each service's
//! messages (`command` also the command messages of the agent stream).
//!
//! Inbound conversions destructure their message exhaustively, so a field added to the proto
//! fails to compile here until it is handled.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use tether_proto as pb;

use crate::config::Limits;
use crate::domain::{
    AgentStatus, AuditOutcome, DiskUsage, Health, Labels, Role, Sample, StatusReason, SystemInfo,
    Time,
};
use crate::error::ServerError;

pub mod admin;
pub mod agent;
pub mod alert;
pub mod command;
pub mod event;
pub mod fleet;

/// What the edge accepts of the text, lists and times agents report, from [`Limits`]: small and
/// `Copy`, so each session keeps its own.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ReportLimits {
    /// Longest `SystemInfo` text field and mount point, in bytes.
    pub max_text_bytes: usize,
    pub max_disks_per_sample: usize,
    /// How far ahead of the server's clock a sample (or boot) time may be.
    pub max_clock_skew: Duration,
}

impl ReportLimits {
    pub fn of(limits: &Limits) -> Self {
        Self {
            max_text_bytes: limits.max_reported_text_bytes,
            max_disks_per_sample: limits.max_disks_per_sample,
            max_clock_skew: limits.max_clock_skew,
        }
    }
}

pub fn timestamp(time: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(time)
}

pub fn opt_timestamp(time: Option<SystemTime>) -> Option<prost_types::Timestamp> {
    time.map(timestamp)
}

/// Every time the server accepts from an agent or a caller: well-formed and within the range of
/// [`Time`] (1970 to 9999).
///
/// # Errors
///
/// `INVALID_ARGUMENT` naming `field` for a malformed timestamp (nanos outside 0..1e9) or one
/// outside that range.
pub fn time_from_pb(ts: prost_types::Timestamp, field: &str) -> Result<Time, ServerError> {
    let out_of_range = || {
        ServerError::invalid(format!(
            "{field}: {}s from the Unix epoch is outside 1970-01-01T00:00:00Z ..= \
             9999-12-31T23:59:59Z",
            ts.seconds
        ))
    };
    if !(0..1_000_000_000).contains(&ts.nanos) {
        return Err(ServerError::invalid(format!(
            "{field}: invalid timestamp (nanos {} outside 0..1e9)",
            ts.nanos
        )));
    }
    let time = SystemTime::try_from(ts).map_err(|_| out_of_range())?;
    Time::new(time).map_err(|_| out_of_range())
}

/// A time that reports something that already happened (a sample, a boot): in range, and not
/// more than `max_skew` ahead of the server's clock `now`.
///
/// # Errors
///
/// As [`time_from_pb`], and `INVALID_ARGUMENT` for a time too far in the future.
pub fn past_time_from_pb(
    ts: prost_types::Timestamp,
    field: &str,
    now: SystemTime,
    max_skew: Duration,
) -> Result<Time, ServerError> {
    let time = time_from_pb(ts, field)?;
    if let Ok(ahead) = time.get().duration_since(now)
        && ahead > max_skew
    {
        return Err(ServerError::invalid(format!(
            "{field} is {} ahead of the server's clock; at most {} is allowed (check the \
             machine's clock)",
            humantime::format_duration(Duration::from_secs(ahead.as_secs())),
            humantime::format_duration(max_skew)
        )));
    }
    Ok(time)
}

pub fn duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration::try_from(d).unwrap_or(prost_types::Duration {
        seconds: i64::MAX,
        nanos: 0,
    })
}

/// # Errors
///
/// `INVALID_ARGUMENT` for a negative or malformed duration.
pub fn duration_from_pb(d: prost_types::Duration, field: &str) -> Result<Duration, ServerError> {
    let invalid = || ServerError::invalid(format!("{field}: invalid or negative duration"));
    // Refused before prost's conversion, which negates a negative `seconds` (and so overflows
    // on `i64::MIN`).
    if d.seconds < 0 {
        return Err(invalid());
    }
    Duration::try_from(d).map_err(|_| invalid())
}

/// An optional span where zero means "none" (e.g. a TTL).
///
/// # Errors
///
/// `INVALID_ARGUMENT` for a negative or malformed duration.
pub fn nonzero_duration_from_pb(
    d: Option<prost_types::Duration>,
    field: &str,
) -> Result<Option<Duration>, ServerError> {
    Ok(d.map(|d| duration_from_pb(d, field))
        .transpose()?
        .filter(|d| !d.is_zero()))
}

/// Checks that `raw` is a well-formed id (see [`crate::domain::is_valid_id`]) named `field`.
///
/// # Errors
///
/// `INVALID_ARGUMENT` when it is empty or malformed.
pub fn id_from_pb<'a>(raw: &'a str, field: &str) -> Result<&'a str, ServerError> {
    if crate::domain::is_valid_id(raw) {
        Ok(raw)
    } else if raw.is_empty() {
        Err(ServerError::invalid(format!("{field} is required")))
    } else {
        Err(ServerError::invalid(format!(
            "malformed {field} {:?}: 1-64 characters of [a-z0-9-]",
            truncate(raw)
        )))
    }
}

// === labels ===

pub use tether_proto::selector::{is_valid_label_key, is_valid_label_value};

/// Validates labels against the charset and the configured limits.
///
/// # Errors
///
/// `INVALID_ARGUMENT` naming the offending label.
pub fn labels_from_pb(
    labels: HashMap<String, String>,
    limits: &Limits,
) -> Result<Labels, ServerError> {
    if labels.len() > limits.max_labels {
        return Err(ServerError::invalid(format!(
            "{} labels given; at most {} are allowed",
            labels.len(),
            limits.max_labels
        )));
    }
    let mut out = Labels::new();
    for (key, value) in labels {
        if key.len() > limits.max_label_key_bytes || !is_valid_label_key(&key) {
            return Err(ServerError::invalid(format!(
                "invalid label key {:?}: 1-{} characters of letters, digits, '-', '_', '.', '/', \
                 starting and ending with a letter or digit",
                truncate(&key),
                limits.max_label_key_bytes
            )));
        }
        if value.len() > limits.max_label_value_bytes || !is_valid_label_value(&value) {
            return Err(ServerError::invalid(format!(
                "invalid value for label {key:?}: at most {} characters of letters, digits and \
                 '-_./:@'",
                limits.max_label_value_bytes
            )));
        }
        out.insert(key, value);
    }
    Ok(out)
}

/// Labels as the wire carries them.
pub fn labels_to_pb(labels: &Labels) -> HashMap<String, String> {
    labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

/// Checks a free-text field named `field`: at most `max_bytes` long, and free of control and
/// format characters (see [`tether_proto::text`]).
///
/// # Errors
///
/// `INVALID_ARGUMENT` naming the field.
pub fn text(value: String, field: &str, max_bytes: usize) -> Result<String, ServerError> {
    if value.len() > max_bytes {
        return Err(ServerError::invalid(format!(
            "{field} is {} bytes long; at most {max_bytes} are allowed",
            value.len()
        )));
    }
    plain(&value, field)?;
    Ok(value)
}

/// Checks that `value` (field `field`) holds no control or format character.
///
/// # Errors
///
/// `INVALID_ARGUMENT` naming the field, the character and where it is.
pub fn plain(value: &str, field: &str) -> Result<(), ServerError> {
    match tether_proto::text::first_forbidden(value) {
        None => Ok(()),
        Some((at, c)) => Err(ServerError::invalid(format!(
            "{field} holds the control or format character U+{:04X} at byte {at}; text fields \
             may not carry control (Cc) or format (Cf) characters",
            u32::from(c)
        ))),
    }
}

// === system info ===

/// `now` is the server's clock, against which the boot time is checked.
///
/// # Errors
///
/// `INVALID_ARGUMENT` naming the field, for oversized text or text holding control or format
/// characters, or a boot time out of range or ahead of `now`.
pub fn system_info_from_pb(
    info: pb::SystemInfo,
    limits: &ReportLimits,
    now: SystemTime,
) -> Result<SystemInfo, ServerError> {
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
    let max = limits.max_text_bytes;
    Ok(SystemInfo {
        hostname: text(hostname, "system_info.hostname", max)?,
        os_name: text(os_name, "system_info.os_name", max)?,
        os_version: text(os_version, "system_info.os_version", max)?,
        kernel_version: text(kernel_version, "system_info.kernel_version", max)?,
        architecture: text(architecture, "system_info.architecture", max)?,
        cpu_model: text(cpu_model, "system_info.cpu_model", max)?,
        logical_cores,
        total_memory_bytes,
        hardware_id: text(hardware_id, "system_info.hardware_id", max)?,
        boot_time: boot_time
            .map(|t| past_time_from_pb(t, "system_info.boot_time", now, limits.max_clock_skew))
            .transpose()?,
        agent_version: text(agent_version, "system_info.agent_version", max)?,
    })
}

pub fn system_info_to_pb(info: &SystemInfo) -> pb::SystemInfo {
    pb::SystemInfo {
        hostname: info.hostname.clone(),
        os_name: info.os_name.clone(),
        os_version: info.os_version.clone(),
        kernel_version: info.kernel_version.clone(),
        architecture: info.architecture.clone(),
        cpu_model: info.cpu_model.clone(),
        logical_cores: info.logical_cores,
        total_memory_bytes: info.total_memory_bytes,
        hardware_id: info.hardware_id.clone(),
        boot_time: opt_timestamp(info.boot_time.map(Time::get)),
        agent_version: info.agent_version.clone(),
    }
}

// === samples ===

fn gauge(value: f64, field: &str) -> Result<f64, ServerError> {
    if value.is_finite() && value >= 0.0 {
        Ok(value)
    } else {
        Err(ServerError::invalid(format!(
            "{field} must be a finite, non-negative number"
        )))
    }
}

/// `now` is the server's clock, against which the sample time is checked.
///
/// # Errors
///
/// `INVALID_ARGUMENT` for a zero seq, a missing time, a time out of range or ahead of `now`,
/// non-finite or negative gauges, too many disks, or a bad mount point.
pub fn sample_from_pb(
    sample: pb::MetricsSample,
    limits: &ReportLimits,
    now: SystemTime,
) -> Result<Sample, ServerError> {
    let pb::MetricsSample {
        seq,
        time,
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
    if seq == 0 {
        return Err(ServerError::invalid("sample seq must start at 1"));
    }
    let time = time.ok_or_else(|| ServerError::invalid(format!("sample {seq} has no time")))?;
    let time = past_time_from_pb(
        time,
        &format!("sample {seq} time"),
        now,
        limits.max_clock_skew,
    )?;
    if disks.len() > limits.max_disks_per_sample {
        return Err(ServerError::invalid(format!(
            "sample {seq} lists {} disks; at most {} are allowed",
            disks.len(),
            limits.max_disks_per_sample
        )));
    }
    let disks = disks
        .into_iter()
        .map(|d| {
            let pb::DiskUsage {
                mount_point,
                used_bytes,
                total_bytes,
            } = d;
            Ok(DiskUsage {
                mount_point: text(mount_point, "disk mount point", limits.max_text_bytes)?,
                used_bytes,
                total_bytes,
            })
        })
        .collect::<Result<Vec<_>, ServerError>>()?;
    Ok(Sample {
        seq,
        time,
        cpu_percent: gauge(cpu_percent, "cpu_percent")?,
        load: [
            gauge(load_1, "load_1")?,
            gauge(load_5, "load_5")?,
            gauge(load_15, "load_15")?,
        ],
        memory_used_bytes,
        memory_total_bytes,
        swap_used_bytes,
        swap_total_bytes,
        disks,
        network_rx_bytes,
        network_tx_bytes,
        uptime: uptime
            .map(|d| duration_from_pb(d, "uptime"))
            .transpose()?
            .unwrap_or_default(),
        process_count,
    })
}

pub fn sample_to_pb(sample: &Sample) -> pb::MetricsSample {
    pb::MetricsSample {
        seq: sample.seq,
        time: Some(timestamp(sample.time.get())),
        cpu_percent: sample.cpu_percent,
        load_1: sample.load[0],
        load_5: sample.load[1],
        load_15: sample.load[2],
        memory_used_bytes: sample.memory_used_bytes,
        memory_total_bytes: sample.memory_total_bytes,
        swap_used_bytes: sample.swap_used_bytes,
        swap_total_bytes: sample.swap_total_bytes,
        disks: sample
            .disks
            .iter()
            .map(|d| pb::DiskUsage {
                mount_point: d.mount_point.clone(),
                used_bytes: d.used_bytes,
                total_bytes: d.total_bytes,
            })
            .collect(),
        network_rx_bytes: sample.network_rx_bytes,
        network_tx_bytes: sample.network_tx_bytes,
        uptime: Some(duration(sample.uptime)),
        process_count: sample.process_count,
    }
}

// === enums ===

pub fn status_to_pb(status: AgentStatus) -> pb::AgentStatus {
    match status {
        AgentStatus::Online => pb::AgentStatus::Online,
        AgentStatus::Stale => pb::AgentStatus::Stale,
        AgentStatus::Offline => pb::AgentStatus::Offline,
        AgentStatus::Expired => pb::AgentStatus::Expired,
    }
}

/// # Errors
///
/// `INVALID_ARGUMENT` for `UNSPECIFIED` or an unknown number.
pub fn status_from_pb(value: i32) -> Result<AgentStatus, ServerError> {
    match pb::AgentStatus::try_from(value) {
        Ok(pb::AgentStatus::Online) => Ok(AgentStatus::Online),
        Ok(pb::AgentStatus::Stale) => Ok(AgentStatus::Stale),
        Ok(pb::AgentStatus::Offline) => Ok(AgentStatus::Offline),
        Ok(pb::AgentStatus::Expired) => Ok(AgentStatus::Expired),
        Ok(pb::AgentStatus::Unspecified) | Err(_) => Err(ServerError::invalid(format!(
            "unknown agent status {value}"
        ))),
    }
}

pub fn reason_to_pb(reason: StatusReason) -> pb::StatusReason {
    match reason {
        StatusReason::Enrolled => pb::StatusReason::Enrolled,
        StatusReason::Reconnected => pb::StatusReason::Reconnected,
        StatusReason::Activity => pb::StatusReason::Activity,
        StatusReason::Silent => pb::StatusReason::Silent,
        StatusReason::StreamClosed => pb::StatusReason::StreamClosed,
        StatusReason::Goodbye => pb::StatusReason::Goodbye,
        StatusReason::Replaced => pb::StatusReason::Replaced,
        StatusReason::ServerRestart => pb::StatusReason::ServerRestart,
        StatusReason::Ttl => pb::StatusReason::Ttl,
        StatusReason::Connected => pb::StatusReason::Connected,
    }
}

pub fn health_to_pb(health: Health) -> pb::Health {
    match health {
        Health::Unknown => pb::Health::Unknown,
        Health::Ok => pb::Health::Ok,
        Health::Warning => pb::Health::Warning,
        Health::Critical => pb::Health::Critical,
    }
}

pub fn role_to_pb(role: Role) -> pb::Role {
    match role {
        Role::Admin => pb::Role::Admin,
        Role::Operator => pb::Role::Operator,
        Role::Viewer => pb::Role::Viewer,
        Role::Agent => pb::Role::Agent,
    }
}

pub fn outcome_to_pb(outcome: AuditOutcome) -> pb::AuditOutcome {
    match outcome {
        AuditOutcome::Succeeded => pb::AuditOutcome::Succeeded,
        AuditOutcome::Denied => pb::AuditOutcome::Denied,
        AuditOutcome::Failed => pb::AuditOutcome::Failed,
    }
}

/// An outcome filter: `UNSPECIFIED` means any.
///
/// # Errors
///
/// `INVALID_ARGUMENT` for an unknown number.
pub fn outcome_filter_from_pb(value: i32) -> Result<Option<AuditOutcome>, ServerError> {
    match pb::AuditOutcome::try_from(value) {
        Ok(pb::AuditOutcome::Unspecified) => Ok(None),
        Ok(pb::AuditOutcome::Succeeded) => Ok(Some(AuditOutcome::Succeeded)),
        Ok(pb::AuditOutcome::Denied) => Ok(Some(AuditOutcome::Denied)),
        Ok(pb::AuditOutcome::Failed) => Ok(Some(AuditOutcome::Failed)),
        Err(_) => Err(ServerError::invalid("unknown audit outcome")),
    }
}

/// A page size: zero means `default`, larger than `max` means `max`.
///
/// # Errors
///
/// `INVALID_ARGUMENT` for a negative size.
pub fn page_size_from_pb(value: i32, default: usize, max: usize) -> Result<usize, ServerError> {
    match value {
        0 => Ok(default),
        n if n < 0 => Err(ServerError::invalid("page_size must not be negative")),
        n => Ok(usize::try_from(n).unwrap_or(max).min(max)),
    }
}

#[cfg(test)]
mod tests;
