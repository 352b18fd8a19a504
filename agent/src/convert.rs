//! Conversions between the agent's domain types and the `tether.v1` wire types: the only place
//! that builds or takes apart `pb` messages.
//!
//! Incoming messages are destructured exhaustively, so a new proto field breaks the build here
//! until it is handled.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use tether_proto as pb;

use crate::AgentError;
use crate::buffer::SeqSample;
use crate::collector::{DiskUsage, Sample, SystemInfo};
use crate::session::{GoodbyeReason, Pong, ServerGoodbye, ServerMessage, Welcome};
use crate::state::{Credential, Enrollment};

/// Shortest interval accepted from the server; guards against a misconfigured server making the
/// agent spin.
pub(crate) const MIN_INTERVAL: Duration = Duration::from_millis(10);

// === outgoing ===

impl From<&SystemInfo> for pb::SystemInfo {
    fn from(info: &SystemInfo) -> Self {
        let SystemInfo {
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
            hostname: hostname.clone(),
            os_name: os_name.clone(),
            os_version: os_version.clone(),
            kernel_version: kernel_version.clone(),
            architecture: architecture.clone(),
            cpu_model: cpu_model.clone(),
            logical_cores: *logical_cores,
            total_memory_bytes: *total_memory_bytes,
            hardware_id: hardware_id.clone(),
            boot_time: boot_time.map(prost_types::Timestamp::from),
            agent_version: agent_version.clone(),
        }
    }
}

impl From<&SeqSample> for pb::MetricsSample {
    fn from(entry: &SeqSample) -> Self {
        let SeqSample { seq, sample } = entry;
        let Sample {
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
        Self {
            seq: *seq,
            time: Some(prost_types::Timestamp::from(*time)),
            cpu_percent: *cpu_percent,
            load_1: *load_1,
            load_5: *load_5,
            load_15: *load_15,
            memory_used_bytes: *memory_used_bytes,
            memory_total_bytes: *memory_total_bytes,
            swap_used_bytes: *swap_used_bytes,
            swap_total_bytes: *swap_total_bytes,
            disks: disks.iter().map(pb::DiskUsage::from).collect(),
            network_rx_bytes: *network_rx_bytes,
            network_tx_bytes: *network_tx_bytes,
            uptime: Some(duration_to_pb(*uptime)),
            process_count: *process_count,
        }
    }
}

impl From<&DiskUsage> for pb::DiskUsage {
    fn from(disk: &DiskUsage) -> Self {
        let DiskUsage {
            mount_point,
            used_bytes,
            total_bytes,
        } = disk;
        Self {
            mount_point: mount_point.clone(),
            used_bytes: *used_bytes,
            total_bytes: *total_bytes,
        }
    }
}

/// The enrollment request; `previous` is the credential the agent held before, if any (its
/// proof of being that agent).
pub(crate) fn enroll_request(
    info: &SystemInfo,
    labels: &BTreeMap<String, String>,
    name: Option<&str>,
    previous: Option<&Credential>,
) -> pb::EnrollRequest {
    pb::EnrollRequest {
        system_info: Some(info.into()),
        labels: labels_to_pb(labels),
        name: name.unwrap_or_default().to_owned(),
        previous_credential: previous
            .map(|c| c.expose_secret().to_owned())
            .unwrap_or_default(),
    }
}

/// The first message of a session, from the agent process `instance_id`.
pub(crate) fn hello(
    agent_id: &str,
    agent_version: &str,
    info: &SystemInfo,
    labels: &BTreeMap<String, String>,
    instance_id: &str,
) -> pb::ConnectRequest {
    request(pb::connect_request::Message::Hello(pb::Hello {
        agent_id: agent_id.to_owned(),
        agent_version: agent_version.to_owned(),
        system_info: Some(info.into()),
        labels: labels_to_pb(labels),
        instance_id: instance_id.to_owned(),
    }))
}

/// A metrics report carrying `samples` in order.
pub(crate) fn metrics_report(samples: &[SeqSample]) -> pb::ConnectRequest {
    request(pb::connect_request::Message::Metrics(pb::MetricsReport {
        samples: samples.iter().map(pb::MetricsSample::from).collect(),
    }))
}

/// A heartbeat.
pub(crate) fn ping(nonce: u64, sent_at: SystemTime) -> pb::ConnectRequest {
    request(pb::connect_request::Message::Ping(pb::Ping {
        nonce,
        sent_at: Some(sent_at.into()),
    }))
}

/// The agent's goodbye before it closes its stream on purpose.
pub(crate) fn goodbye(reason: &str) -> pb::ConnectRequest {
    request(pb::connect_request::Message::Goodbye(pb::AgentGoodbye {
        reason: reason.to_owned(),
    }))
}

fn request(message: pb::connect_request::Message) -> pb::ConnectRequest {
    pb::ConnectRequest {
        message: Some(message),
    }
}

fn labels_to_pb(labels: &BTreeMap<String, String>) -> std::collections::HashMap<String, String> {
    labels
        .iter()
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect()
}

fn duration_to_pb(duration: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(duration.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(duration.subsec_nanos()).unwrap_or(0),
    }
}

// === incoming ===

impl TryFrom<pb::EnrollResponse> for Enrollment {
    type Error = AgentError;

    fn try_from(response: pb::EnrollResponse) -> Result<Self, Self::Error> {
        let pb::EnrollResponse {
            agent_id,
            org_id,
            agent_credential,
        } = response;
        if agent_id.is_empty() {
            return Err(protocol("EnrollResponse.agent_id is empty"));
        }
        if agent_credential.is_empty() {
            return Err(protocol("EnrollResponse.agent_credential is empty"));
        }
        Ok(Self {
            agent_id,
            org_id,
            credential: Credential::new(agent_credential),
        })
    }
}

impl TryFrom<pb::ConnectResponse> for ServerMessage {
    type Error = AgentError;

    fn try_from(response: pb::ConnectResponse) -> Result<Self, Self::Error> {
        use pb::connect_response::Message;

        let pb::ConnectResponse { message } = response;
        Ok(match message {
            Some(Message::Welcome(welcome)) => Self::Welcome(welcome.try_into()?),
            Some(Message::Pong(pong)) => Self::Pong(pong.into()),
            Some(Message::MetricsAck(pb::MetricsAck { durable_seq })) => {
                Self::MetricsAck { durable_seq }
            }
            Some(Message::Goodbye(goodbye)) => Self::Goodbye(goodbye.into()),
            // A message type newer than this agent: prost decodes it as an empty oneof.
            None => Self::Unknown,
        })
    }
}

impl TryFrom<pb::Welcome> for Welcome {
    type Error = AgentError;

    fn try_from(welcome: pb::Welcome) -> Result<Self, Self::Error> {
        let pb::Welcome {
            session_id,
            server_time,
            heartbeat_interval,
            metrics_interval,
            stale_after,
            offline_after,
            last_durable_seq,
        } = welcome;
        Ok(Self {
            session_id,
            server_time: server_time.and_then(|time| SystemTime::try_from(time).ok()),
            heartbeat_interval: required_interval("heartbeat_interval", heartbeat_interval)?,
            metrics_interval: required_interval("metrics_interval", metrics_interval)?,
            stale_after: optional_duration(stale_after),
            offline_after: optional_duration(offline_after),
            last_durable_seq,
        })
    }
}

impl From<pb::Pong> for Pong {
    fn from(pong: pb::Pong) -> Self {
        let pb::Pong {
            nonce,
            ping_sent_at,
            server_receive_time,
        } = pong;
        Self {
            nonce,
            ping_sent_at: ping_sent_at.and_then(|time| SystemTime::try_from(time).ok()),
            server_receive_time: server_receive_time
                .and_then(|time| SystemTime::try_from(time).ok()),
        }
    }
}

impl From<pb::ServerGoodbye> for ServerGoodbye {
    fn from(goodbye: pb::ServerGoodbye) -> Self {
        let pb::ServerGoodbye { reason, message } = goodbye;
        let reason = match pb::GoodbyeReason::try_from(reason) {
            Ok(pb::GoodbyeReason::Replaced) => GoodbyeReason::Replaced,
            Ok(pb::GoodbyeReason::Revoked) => GoodbyeReason::Revoked,
            Ok(pb::GoodbyeReason::ServerDraining) => GoodbyeReason::ServerDraining,
            Ok(pb::GoodbyeReason::Unspecified) | Err(_) => GoodbyeReason::Unspecified,
        };
        Self { reason, message }
    }
}

impl TryFrom<pb::SystemInfo> for SystemInfo {
    type Error = AgentError;

    fn try_from(info: pb::SystemInfo) -> Result<Self, Self::Error> {
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
        Ok(Self {
            hostname,
            os_name,
            os_version,
            kernel_version,
            architecture,
            cpu_model,
            logical_cores,
            total_memory_bytes,
            hardware_id,
            boot_time: boot_time
                .map(|time| {
                    SystemTime::try_from(time)
                        .map_err(|err| protocol(format!("SystemInfo.boot_time: {err}")))
                })
                .transpose()?,
            agent_version,
        })
    }
}

impl TryFrom<pb::MetricsSample> for SeqSample {
    type Error = AgentError;

    fn try_from(sample: pb::MetricsSample) -> Result<Self, Self::Error> {
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
        let time = time.ok_or_else(|| protocol("MetricsSample.time is missing"))?;
        let time = SystemTime::try_from(time)
            .map_err(|err| protocol(format!("MetricsSample.time: {err}")))?;
        let uptime = uptime
            .map(Duration::try_from)
            .transpose()
            .map_err(|err| protocol(format!("MetricsSample.uptime: {err}")))?
            .unwrap_or_default();
        Ok(Self {
            seq,
            sample: Sample {
                time,
                cpu_percent,
                load_1,
                load_5,
                load_15,
                memory_used_bytes,
                memory_total_bytes,
                swap_used_bytes,
                swap_total_bytes,
                disks: disks
                    .into_iter()
                    .map(|disk| {
                        let pb::DiskUsage {
                            mount_point,
                            used_bytes,
                            total_bytes,
                        } = disk;
                        DiskUsage {
                            mount_point,
                            used_bytes,
                            total_bytes,
                        }
                    })
                    .collect(),
                network_rx_bytes,
                network_tx_bytes,
                uptime,
                process_count,
            },
        })
    }
}

fn required_interval(
    field: &'static str,
    duration: Option<prost_types::Duration>,
) -> Result<Duration, AgentError> {
    let duration = duration.ok_or_else(|| protocol(format!("Welcome.{field} is missing")))?;
    let duration =
        Duration::try_from(duration).map_err(|err| protocol(format!("Welcome.{field}: {err}")))?;
    if duration.is_zero() {
        return Err(protocol(format!("Welcome.{field} is zero")));
    }
    Ok(duration.max(MIN_INTERVAL))
}

fn optional_duration(duration: Option<prost_types::Duration>) -> Option<Duration> {
    duration
        .and_then(|duration| Duration::try_from(duration).ok())
        .filter(|duration| !duration.is_zero())
}

fn protocol(message: impl Into<String>) -> AgentError {
    AgentError::Protocol(message.into())
}

#[cfg(test)]
mod tests;
