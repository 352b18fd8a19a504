//! `AgentService` messages: enrollment, the session's `Hello` and `Welcome`, pongs and the
//! server's `Goodbye`.

use std::time::{Duration, SystemTime};

use tether_proto as pb;

use super::{
    ReportLimits, duration, labels_from_pb, system_info_from_pb, text, time_from_pb, timestamp,
};
use crate::auth::Secret;
use crate::config::{Limits, LivenessConfig};
use crate::domain::{AgentHello, AgentId, Enrollment, OrgId, SessionId};
use crate::error::ServerError;
use crate::session::CloseReason;

/// Longest display name accepted at enrollment.
pub const MAX_NAME_BYTES: usize = 256;
/// Longest reason accepted in an agent's `Goodbye`.
pub const MAX_GOODBYE_REASON_BYTES: usize = 256;
/// Longest `previous_credential` accepted (a credential is about 100 bytes).
pub const MAX_CREDENTIAL_BYTES: usize = 256;

/// `now` is the server's clock.
///
/// # Errors
///
/// `INVALID_ARGUMENT` for a missing or invalid `SystemInfo`, bad labels or a bad name.
pub fn enroll_from_pb(
    req: pb::EnrollRequest,
    limits: &Limits,
    now: SystemTime,
) -> Result<Enrollment, ServerError> {
    let pb::EnrollRequest {
        system_info,
        labels,
        name,
        previous_credential,
    } = req;
    let system_info = system_info_from_pb(
        system_info.ok_or_else(|| ServerError::invalid("system_info is required"))?,
        &ReportLimits::of(limits),
        now,
    )?;
    let labels = labels_from_pb(labels, limits)?;
    let name = text(name, "name", MAX_NAME_BYTES)?;
    let previous_credential = match previous_credential.as_str() {
        "" => None,
        _ => {
            let presented = text(
                previous_credential,
                "previous_credential",
                MAX_CREDENTIAL_BYTES,
            )?;
            Some(crate::auth::presented(&presented).ok_or_else(|| {
                ServerError::invalid("previous_credential is not a Tether agent credential")
            })?)
        }
    };
    Ok(Enrollment {
        system_info,
        labels,
        name,
        previous_credential,
    })
}

pub fn enroll_to_pb(agent: &AgentId, org: &OrgId, credential: &Secret) -> pb::EnrollResponse {
    pb::EnrollResponse {
        agent_id: agent.to_string(),
        org_id: org.to_string(),
        agent_credential: credential.expose().to_owned(),
    }
}

/// The facts of a session's first message. `agent_id` is not read here: the caller has
/// already compared it with the agent its credential belongs to.
///
/// `now` is the server's clock.
///
/// # Errors
///
/// `INVALID_ARGUMENT` for a missing or invalid `SystemInfo`, a bad agent version or bad labels.
pub fn hello_from_pb(
    hello: pb::Hello,
    limits: &Limits,
    now: SystemTime,
) -> Result<AgentHello, ServerError> {
    let pb::Hello {
        agent_id: _,
        agent_version,
        system_info,
        labels,
        instance_id,
        journaled_invocation_ids,
        accepts_deferred_reports,
    } = hello;
    let max = tether_proto::command::MAX_JOURNALED_INVOCATIONS;
    if journaled_invocation_ids.len() > max {
        return Err(ServerError::invalid(format!(
            "Hello lists {} journaled invocations; at most {max} are allowed",
            journaled_invocation_ids.len()
        )));
    }
    let id_max = super::command::MAX_INVOCATION_ID_BYTES;
    if journaled_invocation_ids.iter().any(|id| id.len() > id_max) {
        return Err(ServerError::invalid(format!(
            "Hello lists a journaled invocation id longer than {id_max} bytes"
        )));
    }
    let report = ReportLimits::of(limits);
    let agent_version = text(agent_version, "agent_version", report.max_text_bytes)?;
    // Stricter than the text rules: an id's characters are printable ASCII only.
    if !instance_id.is_empty() && !crate::domain::is_valid_id(&instance_id) {
        return Err(ServerError::invalid(
            "Hello.instance_id must be at most 64 characters of a-z, 0-9 and -",
        ));
    }
    let mut system_info = system_info_from_pb(
        system_info.ok_or_else(|| ServerError::invalid("Hello.system_info is required"))?,
        &report,
        now,
    )?;
    if system_info.agent_version.is_empty() {
        system_info.agent_version = agent_version;
    }
    Ok(AgentHello {
        system_info,
        labels: labels_from_pb(labels, limits)?,
        instance_id,
        journaled_invocations: journaled_invocation_ids,
        accepts_deferred_reports,
    })
}

/// The session's first answer: its id, the intervals the agent must follow, how far its
/// samples are durable, and how far the updates of its journaled invocations are.
pub fn welcome_to_pb(
    session: &SessionId,
    last_durable_seq: u64,
    last_durable_event_seq: u64,
    invocation_acks: &[(String, u64)],
    liveness: &LivenessConfig,
    now: SystemTime,
) -> pb::Welcome {
    pb::Welcome {
        session_id: session.to_string(),
        server_time: Some(timestamp(now)),
        heartbeat_interval: Some(duration(liveness.heartbeat_interval)),
        metrics_interval: Some(duration(liveness.metrics_interval)),
        stale_after: Some(duration(liveness.stale_after)),
        offline_after: Some(duration(liveness.offline_after)),
        last_durable_seq,
        invocation_acks: super::command::invocation_acks_to_pb(invocation_acks),
        last_durable_event_seq,
    }
}

/// The answer to `ping`, stamped with the time the server received it. The agent's send time
/// comes back as it came (it measures the agent's clock offset, so it may be far from the
/// server's), once checked to be a time at all.
///
/// # Errors
///
/// `INVALID_ARGUMENT` for a send time that is malformed or outside 1970 to 9999.
pub fn pong_to_pb(ping: pb::Ping, received: SystemTime) -> Result<pb::Pong, ServerError> {
    let pb::Ping { nonce, sent_at } = ping;
    let sent_at = sent_at
        .map(|t| time_from_pb(t, "ping.sent_at"))
        .transpose()?;
    Ok(pb::Pong {
        nonce,
        ping_sent_at: sent_at.map(|t| timestamp(t.get())),
        server_receive_time: Some(timestamp(received)),
    })
}

/// The reason an agent gives for its `Goodbye`, for the log.
///
/// # Errors
///
/// `INVALID_ARGUMENT` for a reason too long or holding control or format characters.
pub fn goodbye_from_pb(bye: pb::AgentGoodbye) -> Result<String, ServerError> {
    let pb::AgentGoodbye { reason } = bye;
    text(reason, "goodbye.reason", MAX_GOODBYE_REASON_BYTES)
}

/// The `Goodbye` that ends a session the server closes for `reason`, telling the agent when
/// to come back (`reconnect_after`, given when the server drains).
pub fn goodbye_to_pb(reason: CloseReason, reconnect_after: Option<Duration>) -> pb::ServerGoodbye {
    let (reason, message) = match reason {
        CloseReason::Replaced => (
            pb::GoodbyeReason::Replaced,
            "a newer session of this agent replaced this one",
        ),
        CloseReason::Revoked => (
            pb::GoodbyeReason::Revoked,
            "the agent's credential was revoked",
        ),
        CloseReason::Draining
        | CloseReason::None
        | CloseReason::Silent
        | CloseReason::WriteFailed => (
            pb::GoodbyeReason::ServerDraining,
            "the server is shutting down",
        ),
    };
    pb::ServerGoodbye {
        reason: reason as i32,
        message: message.to_owned(),
        reconnect_after: reconnect_after.and_then(|d| prost_types::Duration::try_from(d).ok()),
    }
}
