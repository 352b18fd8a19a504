//! An agent's `EventReport` on its session: the report's shape is checked first (a wrong one
//! ends the stream with `INVALID_ARGUMENT`: an agent bug); then each event's content, alone
//! (rejected with `INVALID_ARGUMENT` in the ack, never stored), then the agent's rate (the
//! excess rejected with `RESOURCE_EXHAUSTED`, counted, and reported as one
//! `tether.rate_limited` event per window). The ack is sent once the rest is durable.

use std::collections::BTreeMap;
use std::time::{Instant, SystemTime};

use tether_proto as pb;
use tether_proto::event::{KIND_RATE_LIMITED, MAX_EVENTS_PER_REPORT};
use tonic::{Code, Status};

use super::Session;
use crate::convert;
use crate::error::ServerError;
use crate::events::{Events, NewEvent, Severity};

fn rejection(seq: u64, code: Code, reason: String) -> pb::EventRejection {
    pb::EventRejection {
        seq,
        code: code as i32,
        reason,
    }
}

/// Stores a report's acceptable events and answers with the ack.
///
/// # Errors
///
/// `INVALID_ARGUMENT` for a report of the wrong shape or a seq too far ahead; `UNAVAILABLE`
/// when the commit failed or the server is stopping (nothing of the report is stored: the agent
/// reconnects and re-sends).
pub(super) async fn ingest(
    events: &Events,
    session: &Session,
    report: pb::EventReport,
) -> Result<pb::EventAck, Status> {
    let pb::EventReport { events: raw } = report;
    if raw.is_empty() {
        return Err(ServerError::invalid("event report holds no events").into());
    }
    if raw.len() > MAX_EVENTS_PER_REPORT {
        return Err(ServerError::invalid(format!(
            "event report holds {} events; at most {MAX_EVENTS_PER_REPORT} are allowed",
            raw.len()
        ))
        .into());
    }
    let mut prev = 0;
    for event in &raw {
        if event.seq <= prev {
            return Err(ServerError::invalid(format!(
                "event seq {} is not greater than the previous seq {prev} in the same report \
                 (seqs start at 1)",
                event.seq
            ))
            .into());
        }
        prev = event.seq;
    }
    let max_seq = prev;
    let now = SystemTime::now();
    let mut rejected = Vec::new();
    let mut accepted = Vec::with_capacity(raw.len());
    for event in raw {
        let seq = event.seq;
        match convert::event::agent_event_from_pb(event, now) {
            Ok(event) => accepted.push(event),
            Err(e) => rejected.push(rejection(seq, Code::InvalidArgument, e.0)),
        }
    }
    let times: Vec<SystemTime> = accepted.iter().map(|event| event.time).collect();
    let admission = events
        .limiter
        .admit(&session.agent, &times, now, Instant::now());
    let limit = events.limiter.per_minute();
    for dropped in accepted.drain(admission.admitted..) {
        rejected.push(rejection(
            dropped.seq,
            Code::ResourceExhausted,
            format!("over the agent's event rate of {limit} per minute"),
        ));
    }
    if let Some(dropped) = admission.report_dropped {
        accepted.push(NewEvent {
            seq: 0,
            time: now,
            kind: KIND_RATE_LIMITED.to_owned(),
            severity: Severity::Warning,
            message: format!(
                "{dropped} events dropped over the agent's rate of {limit} per minute"
            ),
            attributes: BTreeMap::from([
                ("dropped".to_owned(), dropped.to_string()),
                ("limit_per_minute".to_owned(), limit.to_string()),
                (
                    "window_seconds".to_owned(),
                    events.limiter.window().as_secs_f64().to_string(),
                ),
            ]),
            fingerprint: String::new(),
        });
    }
    rejected.sort_by_key(|r| r.seq);
    let durable_seq = events
        .ingest(
            session.org.clone(),
            session.agent.clone(),
            accepted,
            max_seq,
        )
        .await
        .map_err(|e| match e {
            // The commit failed: nothing of the report is stored, and the agent still holds it.
            // UNAVAILABLE, as for samples, tells it to reconnect and send again.
            ServerError::Store(_) | ServerError::Internal(_) => {
                tracing::error!(agent = %session.agent, org = %session.org, error = %e,
                    "an event report could not be stored; the session ends for the agent to re-send");
                Status::unavailable(
                    "the server could not store this session's events; reconnect and send again \
                     after the Welcome's last_durable_event_seq",
                )
            }
            other => other.into(),
        })?;
    Ok(pb::EventAck {
        durable_seq,
        rejected,
    })
}
