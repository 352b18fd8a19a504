//! Conversions between the agent's domain types and the `tether.v1` wire types: the only place
//! that builds or takes apart `pb` messages.
//!
//! Incoming messages are destructured exhaustively, so a new proto field breaks the build here
//! until it is handled.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use tether_proto as pb;

use crate::AgentError;
use crate::buffer::SeqSample;
use crate::collector::{AGENT_VERSION, DiskUsage, Sample, SystemInfo};
use crate::command::types::{
    CommandSpec, ExecSpec, InvalidOffer, Offer, OutputChunk, OutputStream, Step, Terminal, Update,
};
use crate::session::{GoodbyeReason, Pong, ServerGoodbye, ServerMessage, Welcome};
use crate::state::{Credential, Enrollment};

/// Shortest interval accepted from the server; guards against a misconfigured server making the
/// agent spin.
pub(crate) const MIN_INTERVAL: Duration = Duration::from_millis(10);
/// Longest kill grace the agent honours, whatever an offer asks for.
pub(crate) const MAX_KILL_GRACE: Duration = Duration::from_secs(300);
/// Longest wait before reconnecting the agent honours from a draining server's `Goodbye`, so a
/// misconfigured server cannot keep its fleet away for long.
pub(crate) const MAX_RECONNECT_AFTER: Duration = Duration::from_secs(15 * 60);

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
    journaled_invocation_ids: Vec<String>,
) -> pb::ConnectRequest {
    request(pb::connect_request::Message::Hello(pb::Hello {
        agent_id: agent_id.to_owned(),
        agent_version: agent_version.to_owned(),
        system_info: Some(info.into()),
        labels: labels_to_pb(labels),
        instance_id: instance_id.to_owned(),
        journaled_invocation_ids,
        accepts_deferred_reports: true,
    }))
}

/// A report carrying `updates` in order.
pub(crate) fn command_report(updates: &[Update]) -> pb::ConnectRequest {
    request(pb::connect_request::Message::Commands(pb::CommandReport {
        updates: updates.iter().map(pb::CommandUpdate::from).collect(),
    }))
}

impl From<&Update> for pb::CommandUpdate {
    fn from(update: &Update) -> Self {
        let Update {
            invocation_id,
            seq,
            step,
            output,
            time,
        } = update;
        let (state, outcome) = match step {
            Step::Output => (pb::InvocationState::Unspecified, None),
            Step::Running => (pb::InvocationState::Running, None),
            Step::Finished(outcome) => (terminal_to_pb(outcome.state), Some(outcome)),
        };
        Self {
            invocation_id: invocation_id.clone(),
            seq: *seq,
            state: state.into(),
            reason: outcome.map(|o| o.reason.clone()).unwrap_or_default(),
            exit_code: outcome.and_then(|o| o.exit_code),
            signal: outcome.and_then(|o| o.signal),
            output: output.iter().map(pb::OutputChunk::from).collect(),
            time: Some((*time).into()),
        }
    }
}

impl From<&OutputChunk> for pb::OutputChunk {
    fn from(chunk: &OutputChunk) -> Self {
        let OutputChunk {
            stream,
            offset,
            data,
        } = chunk;
        let stream = match stream {
            OutputStream::Stdout => pb::OutputStream::Stdout,
            OutputStream::Stderr => pb::OutputStream::Stderr,
        };
        Self {
            stream: stream.into(),
            offset: *offset,
            data: data.clone(),
        }
    }
}

fn terminal_to_pb(state: Terminal) -> pb::InvocationState {
    match state {
        Terminal::Succeeded => pb::InvocationState::Succeeded,
        Terminal::Failed => pb::InvocationState::Failed,
        Terminal::TimedOut => pb::InvocationState::TimedOut,
        Terminal::Cancelled => pb::InvocationState::Cancelled,
        Terminal::DeliveryTimedOut => pb::InvocationState::DeliveryTimedOut,
        Terminal::Rejected => pb::InvocationState::Rejected,
        Terminal::AgentRestarted => pb::InvocationState::AgentRestarted,
    }
}

/// A metrics report carrying `samples` in order, and how long the stream's previous report
/// waited for its ack.
pub(crate) fn metrics_report(
    samples: Vec<pb::MetricsSample>,
    previous_ack_latency: Option<Duration>,
    deferred_seq: Option<u64>,
) -> pb::ConnectRequest {
    request(pb::connect_request::Message::Metrics(pb::MetricsReport {
        samples,
        previous_ack_latency: previous_ack_latency.and_then(|d| d.try_into().ok()),
        deferred_seq: deferred_seq.unwrap_or(0),
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

pub(crate) use event::{agent_event, event_report};

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
            Some(Message::MetricsAck(pb::MetricsAck {
                durable_seq,
                report_after,
            })) => Self::MetricsAck {
                durable_seq,
                report_after: optional_duration(report_after),
            },
            Some(Message::MetricsDeferred(pb::MetricsDeferred {
                last_seq,
                retry_after,
            })) => Self::MetricsDeferred {
                last_seq,
                retry_after: optional_duration(retry_after),
            },
            Some(Message::Goodbye(goodbye)) => Self::Goodbye(goodbye.into()),
            Some(Message::CommandOffer(offer)) => Self::CommandOffer(offer.try_into()),
            Some(Message::CommandCancel(pb::CommandCancel { invocation_id })) => {
                Self::CommandCancel { invocation_id }
            }
            Some(Message::CommandAck(pb::CommandAck { acks })) => {
                Self::CommandAck(acks.into_iter().map(invocation_ack).collect())
            }
            Some(Message::EventAck(ack)) => Self::EventAck(event::event_ack(ack)),
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
            invocation_acks,
            last_durable_event_seq,
        } = welcome;
        Ok(Self {
            session_id,
            server_time: server_time.and_then(|time| SystemTime::try_from(time).ok()),
            heartbeat_interval: required_interval("heartbeat_interval", heartbeat_interval)?,
            metrics_interval: required_interval("metrics_interval", metrics_interval)?,
            stale_after: optional_duration(stale_after),
            offline_after: optional_duration(offline_after),
            last_durable_seq,
            invocation_acks: invocation_acks.into_iter().map(invocation_ack).collect(),
            last_durable_event_seq,
        })
    }
}

fn invocation_ack(ack: pb::InvocationAck) -> (String, u64) {
    let pb::InvocationAck { invocation_id, seq } = ack;
    (invocation_id, seq)
}

impl TryFrom<pb::CommandOffer> for Offer {
    type Error = InvalidOffer;

    /// Validates an offer. A malformed one comes back as [`InvalidOffer`], to be rejected with
    /// its reason rather than end the session.
    fn try_from(offer: pb::CommandOffer) -> Result<Self, Self::Error> {
        let pb::CommandOffer {
            invocation_id,
            command_id,
            spec,
            timeout,
            deliver_by,
            output_limit_bytes,
            kill_grace,
        } = offer;
        let invalid = |reason: String| InvalidOffer {
            invocation_id: invocation_id.clone(),
            command_id: command_id.clone(),
            reason,
        };
        if invocation_id.is_empty() {
            return Err(invalid("the offer has no invocation id".into()));
        }
        let duration = |field: &str, value: Option<prost_types::Duration>| {
            value
                .map(Duration::try_from)
                .transpose()
                .map_err(|err| invalid(format!("CommandOffer.{field}: {err}")))
        };
        let spec = match spec.and_then(|spec| spec.kind) {
            None => {
                return Err(invalid(format!(
                    "the offer names no command kind this agent knows (tether-agent \
                     {AGENT_VERSION})"
                )));
            }
            Some(pb::command_spec::Kind::Exec(exec)) => {
                let pb::ExecSpec {
                    argv,
                    env,
                    working_dir,
                    stdin,
                } = exec;
                CommandSpec::Exec(ExecSpec {
                    argv,
                    env: env.into_iter().collect(),
                    working_dir: (!working_dir.is_empty()).then(|| PathBuf::from(working_dir)),
                    stdin,
                })
            }
            Some(pb::command_spec::Kind::Noop(pb::NoopSpec {})) => CommandSpec::Noop,
            Some(pb::command_spec::Kind::Collect(pb::CollectSpec {})) => CommandSpec::Collect,
            Some(pb::command_spec::Kind::Sleep(pb::SleepSpec { duration: sleep })) => {
                CommandSpec::Sleep(
                    duration("spec.sleep.duration", sleep)?
                        .ok_or_else(|| invalid("sleep needs a duration".into()))?,
                )
            }
        };
        let deliver_by = deliver_by
            .map(SystemTime::try_from)
            .transpose()
            .map_err(|err| invalid(format!("CommandOffer.deliver_by: {err}")))?;
        let timeout = duration("timeout", timeout)?.filter(|timeout| !timeout.is_zero());
        let kill_grace = duration("kill_grace", kill_grace)?.map(|grace| grace.min(MAX_KILL_GRACE));
        Ok(Self {
            invocation_id,
            command_id,
            spec,
            timeout,
            deliver_by,
            output_limit_bytes,
            kill_grace,
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
        let pb::ServerGoodbye {
            reason,
            message,
            reconnect_after,
        } = goodbye;
        let reason = match pb::GoodbyeReason::try_from(reason) {
            Ok(pb::GoodbyeReason::Replaced) => GoodbyeReason::Replaced,
            Ok(pb::GoodbyeReason::Revoked) => GoodbyeReason::Revoked,
            Ok(pb::GoodbyeReason::ServerDraining) => GoodbyeReason::ServerDraining,
            Ok(pb::GoodbyeReason::Unspecified) | Err(_) => GoodbyeReason::Unspecified,
        };
        // A negative or unreadable delay is no delay said: the agent's backoff applies.
        let reconnect_after = reconnect_after
            .and_then(|d| Duration::try_from(d).ok())
            .map(|d| d.min(MAX_RECONNECT_AFTER));
        Self {
            reason,
            message,
            reconnect_after,
        }
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

mod event;
#[cfg(test)]
mod tests;
