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
mod tests {
    use super::*;

    fn system_info() -> SystemInfo {
        SystemInfo {
            hostname: "web-1".into(),
            os_name: "Debian GNU/Linux".into(),
            os_version: "12".into(),
            kernel_version: "6.1.0".into(),
            architecture: "x86_64".into(),
            cpu_model: "Test CPU".into(),
            logical_cores: 8,
            total_memory_bytes: 16 << 30,
            hardware_id: "abc123".into(),
            boot_time: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
            agent_version: "0.1.0".into(),
        }
    }

    fn seq_sample() -> SeqSample {
        SeqSample {
            seq: 42,
            sample: Sample {
                time: SystemTime::UNIX_EPOCH + Duration::new(1_700_000_100, 123_456_000),
                cpu_percent: 12.5,
                load_1: 0.5,
                load_5: 0.25,
                load_15: 0.125,
                memory_used_bytes: 1 << 30,
                memory_total_bytes: 16 << 30,
                swap_used_bytes: 0,
                swap_total_bytes: 1 << 30,
                disks: vec![DiskUsage {
                    mount_point: "/".into(),
                    used_bytes: 10,
                    total_bytes: 100,
                }],
                network_rx_bytes: 1000,
                network_tx_bytes: 2000,
                uptime: Duration::from_secs(3600),
                process_count: 123,
            },
        }
    }

    #[test]
    fn system_info_round_trip() {
        let info = system_info();
        let wire = pb::SystemInfo::from(&info);
        assert_eq!(wire.hostname, "web-1");
        assert_eq!(
            wire.boot_time,
            Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 0
            })
        );
        assert_eq!(SystemInfo::try_from(wire).expect("valid"), info);
    }

    #[test]
    fn sample_round_trip() {
        let entry = seq_sample();
        let wire = pb::MetricsSample::from(&entry);
        assert_eq!(wire.seq, 42);
        assert_eq!(
            wire.uptime,
            Some(prost_types::Duration {
                seconds: 3600,
                nanos: 0
            })
        );
        assert_eq!(SeqSample::try_from(wire).expect("valid"), entry);
    }

    #[test]
    fn hello_carries_identity() {
        let labels = BTreeMap::from([("env".to_owned(), "prod".to_owned())]);
        let hello = hello("agent-1", "0.1.0", &system_info(), &labels, "0a1b2c");
        let Some(pb::connect_request::Message::Hello(hello)) = hello.message else {
            panic!("expected Hello");
        };
        assert_eq!(hello.agent_id, "agent-1");
        assert_eq!(hello.instance_id, "0a1b2c");
        assert_eq!(hello.agent_version, "0.1.0");
        assert_eq!(hello.labels.get("env").map(String::as_str), Some("prod"));
        assert!(hello.system_info.is_some());
    }

    #[test]
    fn enroll_request_carries_the_previous_credential() {
        let info = system_info();
        let labels = BTreeMap::new();
        let first = enroll_request(&info, &labels, None, None);
        assert!(first.previous_credential.is_empty());
        let previous = Credential::new("tether_abc_secret");
        let again = enroll_request(&info, &labels, Some("web"), Some(&previous));
        assert_eq!(again.previous_credential, "tether_abc_secret");
        assert_eq!(again.name, "web");
    }

    #[test]
    fn welcome_requires_intervals() {
        let welcome = pb::Welcome {
            session_id: "s1".into(),
            server_time: Some(SystemTime::now().into()),
            heartbeat_interval: Some(prost_types::Duration {
                seconds: 5,
                nanos: 0,
            }),
            metrics_interval: Some(prost_types::Duration {
                seconds: 10,
                nanos: 0,
            }),
            stale_after: Some(prost_types::Duration {
                seconds: 15,
                nanos: 0,
            }),
            offline_after: None,
            last_durable_seq: 7,
        };
        let parsed = Welcome::try_from(welcome.clone()).expect("valid");
        assert_eq!(parsed.heartbeat_interval, Duration::from_secs(5));
        assert_eq!(parsed.metrics_interval, Duration::from_secs(10));
        assert_eq!(parsed.stale_after, Some(Duration::from_secs(15)));
        assert_eq!(parsed.offline_after, None);
        assert_eq!(parsed.last_durable_seq, 7);

        let missing = pb::Welcome {
            heartbeat_interval: None,
            ..welcome.clone()
        };
        assert!(matches!(
            Welcome::try_from(missing),
            Err(AgentError::Protocol(_))
        ));
        let zero = pb::Welcome {
            metrics_interval: Some(prost_types::Duration::default()),
            ..welcome.clone()
        };
        assert!(matches!(
            Welcome::try_from(zero),
            Err(AgentError::Protocol(_))
        ));
        let negative = pb::Welcome {
            metrics_interval: Some(prost_types::Duration {
                seconds: -1,
                nanos: 0,
            }),
            ..welcome
        };
        assert!(matches!(
            Welcome::try_from(negative),
            Err(AgentError::Protocol(_))
        ));
    }

    #[test]
    fn goodbye_reasons() {
        let goodbye = |reason: pb::GoodbyeReason| {
            ServerGoodbye::from(pb::ServerGoodbye {
                reason: reason.into(),
                message: String::new(),
            })
            .reason
        };
        assert_eq!(
            goodbye(pb::GoodbyeReason::Replaced),
            GoodbyeReason::Replaced
        );
        assert_eq!(goodbye(pb::GoodbyeReason::Revoked), GoodbyeReason::Revoked);
        assert_eq!(
            goodbye(pb::GoodbyeReason::ServerDraining),
            GoodbyeReason::ServerDraining
        );
        let unknown = ServerGoodbye::from(pb::ServerGoodbye {
            reason: 99,
            message: String::new(),
        });
        assert_eq!(unknown.reason, GoodbyeReason::Unspecified);
    }

    #[test]
    fn unknown_server_message_is_tolerated() {
        let message = ServerMessage::try_from(pb::ConnectResponse { message: None });
        assert!(matches!(message, Ok(ServerMessage::Unknown)));
    }

    #[test]
    fn enrollment_requires_id_and_credential() {
        let response = pb::EnrollResponse {
            agent_id: "a1".into(),
            org_id: "o1".into(),
            agent_credential: "secret".into(),
        };
        let enrollment = Enrollment::try_from(response.clone()).expect("valid");
        assert_eq!(enrollment.credential.expose_secret(), "secret");
        let empty = pb::EnrollResponse {
            agent_credential: String::new(),
            ..response
        };
        assert!(Enrollment::try_from(empty).is_err());
    }
}
