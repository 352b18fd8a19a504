//! Events on the wire: the spool's events as `AgentEvent`s in an `EventReport`, and the
//! server's `EventAck`.

use tether_proto as pb;

use crate::events::types::{Event, Severity, SpooledEvent};
use crate::session::{EventAck, EventRejection};

/// One `EventReport` of `events` (in seq order, as the spool reads them).
pub(crate) fn event_report(events: &[SpooledEvent]) -> pb::ConnectRequest {
    super::request(pb::connect_request::Message::Events(pb::EventReport {
        events: events.iter().map(agent_event).collect(),
    }))
}

/// The wire form of one event; also what `events::check` checks with the contract's code.
pub(crate) fn agent_event(spooled: &SpooledEvent) -> pb::AgentEvent {
    let SpooledEvent {
        seq,
        event:
            Event {
                time,
                kind,
                severity,
                message,
                attributes,
                fingerprint,
            },
    } = spooled;
    pb::AgentEvent {
        seq: *seq,
        time: Some((*time).into()),
        kind: kind.clone(),
        severity: severity_to_pb(*severity) as i32,
        message: message.clone(),
        attributes: attributes
            .iter()
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect(),
        fingerprint: fingerprint.clone().unwrap_or_default(),
    }
}

pub(crate) fn event_ack(ack: pb::EventAck) -> EventAck {
    let pb::EventAck {
        durable_seq,
        rejected,
    } = ack;
    EventAck {
        durable_seq,
        rejected: rejected
            .into_iter()
            .map(|rejection| {
                let pb::EventRejection { seq, code, reason } = rejection;
                EventRejection {
                    seq,
                    code: tonic::Code::from_i32(code),
                    reason,
                }
            })
            .collect(),
    }
}

fn severity_to_pb(severity: Severity) -> pb::EventSeverity {
    match severity {
        Severity::Info => pb::EventSeverity::Info,
        Severity::Warning => pb::EventSeverity::Warning,
        Severity::Error => pb::EventSeverity::Error,
        Severity::Critical => pb::EventSeverity::Critical,
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;

    #[test]
    fn events_and_acks_convert_field_by_field() {
        let time = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let spooled = SpooledEvent {
            seq: 7,
            event: Event {
                time,
                kind: "ssh.login_failed".into(),
                severity: Severity::Critical,
                message: "failed".into(),
                attributes: [("user".to_owned(), "root".to_owned())].into(),
                fingerprint: None,
            },
        };
        let wire = agent_event(&spooled);
        assert_eq!(wire.seq, 7);
        assert_eq!(wire.severity, pb::EventSeverity::Critical as i32);
        assert_eq!(
            SystemTime::try_from(wire.time.expect("time")).ok(),
            Some(time)
        );
        assert_eq!(wire.attributes["user"], "root");
        assert_eq!(wire.fingerprint, "");
        let ack = event_ack(pb::EventAck {
            durable_seq: 9,
            rejected: vec![pb::EventRejection {
                seq: 8,
                code: tonic::Code::InvalidArgument as i32,
                reason: "bad".into(),
            }],
        });
        assert_eq!(ack.durable_seq, 9);
        assert_eq!(ack.rejected[0].code, tonic::Code::InvalidArgument);
    }
}
