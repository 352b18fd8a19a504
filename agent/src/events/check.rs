//! Whether an [`Event`] fits the contract: `tether_proto::event::check_event`, the one check
//! the server runs too, applied to the event's wire form. The socket, `tether-agent emit` and
//! the built-in sources all check here, so a program on the machine hears about a bad event at
//! once, in the words the server would use, and the spool never holds an event the server
//! would reject.

use std::time::SystemTime;

use crate::events::types::{Event, SpooledEvent};

/// Why an event was refused: one sentence naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidEvent(pub String);

/// Checks `event` against the contract's grammar and bounds.
///
/// # Errors
///
/// [`InvalidEvent`] naming the first field that breaks a rule.
pub fn check(event: &Event) -> Result<(), InvalidEvent> {
    let wire = crate::convert::agent_event(&SpooledEvent {
        seq: 1,
        event: event.clone(),
    });
    tether_proto::event::check_event(&wire, SystemTime::now()).map_err(|err| InvalidEvent(err.0))
}

#[cfg(test)]
mod tests {
    use tether_proto::event::{MAX_ATTRIBUTE_VALUE_BYTES, MAX_ATTRIBUTES, MAX_MESSAGE_BYTES};

    use super::*;
    use crate::events::types::Severity;

    fn event(kind: &str) -> Event {
        Event::now(kind, Severity::Warning, "something happened")
    }

    #[test]
    fn the_contract_decides() {
        check(
            &event("ssh.login_failed")
                .with("user", "root")
                .fingerprint("f1"),
        )
        .expect("valid");
        for bad in ["", "Ssh.login", "ssh..login", ".ssh", "ssh login"] {
            assert!(check(&event(bad)).is_err(), "{bad:?}");
        }
        let mut bad = event("x.y");
        bad.message = "line one\nline\ttwo".into();
        check(&bad).expect("tab and newline are text");
        bad.message = "bell\u{7}".into();
        assert!(check(&bad).is_err());
        bad.message = "x".repeat(MAX_MESSAGE_BYTES + 1);
        assert!(check(&bad).is_err());
        assert!(check(&event("x.y").with("bad key", "v")).is_err());
        assert!(check(&event("x.y").with("k", "v".repeat(MAX_ATTRIBUTE_VALUE_BYTES + 1))).is_err());
        let mut many = event("x.y");
        for i in 0..=MAX_ATTRIBUTES {
            many.attributes.insert(format!("k{i}"), "v".into());
        }
        assert!(check(&many).is_err());
        let mut future = event("x.y");
        future.time = SystemTime::now() + std::time::Duration::from_secs(3600);
        assert!(check(&future).is_err(), "an hour ahead");
    }
}
