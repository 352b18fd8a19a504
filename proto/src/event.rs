//! The bounds and grammar of events that both ends apply with this one code: the agent checks an
//! event before it spools it (so a local program learns at once why its event is refused), the
//! server checks every event it receives (an event that fails is rejected alone, see
//! `EventRejection`), and clients check filters before a round trip.
//!
//! Invariant: an event [`check_event`] accepts is one the server stores (unless over the
//! agent's rate); one it refuses is never stored.

use std::fmt;
use std::time::Duration;

use crate::text::is_forbidden;
use crate::v1 as pb;

/// Most events in one `EventReport`.
pub const MAX_EVENTS_PER_REPORT: usize = 512;
/// Longest `AgentEvent.kind`, in bytes.
pub const MAX_KIND_BYTES: usize = 128;
/// Longest `AgentEvent.message`, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 4096;
/// Most entries of `AgentEvent.attributes`.
pub const MAX_ATTRIBUTES: usize = 32;
/// Longest attribute name, in bytes.
pub const MAX_ATTRIBUTE_KEY_BYTES: usize = 64;
/// Longest attribute value, in bytes.
pub const MAX_ATTRIBUTE_VALUE_BYTES: usize = 1024;
/// Longest `AgentEvent.fingerprint`, in bytes.
pub const MAX_FINGERPRINT_BYTES: usize = 128;
/// Most bytes of one event's kind, message, fingerprint and attributes together.
pub const MAX_EVENT_BYTES: usize = 16 << 10;
/// How far ahead of the server's clock an event's time may be.
pub const MAX_FUTURE_SKEW: Duration = Duration::from_secs(5 * 60);
/// Prefix of the kinds Tether itself reports.
pub const TETHER_KIND_PREFIX: &str = "tether.";
/// Kind of the event the server stores, once per window, for an agent over its event rate.
pub const KIND_RATE_LIMITED: &str = "tether.rate_limited";
/// Kind of the event an agent reports after its spool dropped events.
pub const KIND_EVENTS_DROPPED: &str = "tether.events_dropped";

/// Why an event or a filter breaks the contract. The text names the field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventError(pub String);

impl fmt::Display for EventError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for EventError {}

fn err(text: impl Into<String>) -> EventError {
    EventError(text.into())
}

/// Whether `kind` is a well-formed dotted kind: segments of lowercase ASCII letters, digits,
/// `_` and `-`, separated by single dots, at most [`MAX_KIND_BYTES`].
pub fn is_valid_kind(kind: &str) -> bool {
    !kind.is_empty()
        && kind.len() <= MAX_KIND_BYTES
        && kind.split('.').all(|segment| {
            !segment.is_empty()
                && segment
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        })
}

/// Whether `kind` is `prefix` or below it (`ssh` covers `ssh` and `ssh.login_failed`, not
/// `sshd`).
pub fn kind_has_prefix(kind: &str, prefix: &str) -> bool {
    kind.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
}

/// A severity the contract knows, other than UNSPECIFIED.
///
/// # Errors
///
/// [`EventError`] for UNSPECIFIED or an unknown value.
pub fn severity(value: i32) -> Result<pb::EventSeverity, EventError> {
    match pb::EventSeverity::try_from(value) {
        Ok(pb::EventSeverity::Unspecified) | Err(_) => Err(err(format!(
            "severity {value} is not one of info, warning, error, critical"
        ))),
        Ok(severity) => Ok(severity),
    }
}

/// The lowercase name of a severity, as the CLI and docs write it.
pub fn severity_name(severity: pb::EventSeverity) -> &'static str {
    match severity {
        pb::EventSeverity::Unspecified => "unspecified",
        pb::EventSeverity::Info => "info",
        pb::EventSeverity::Warning => "warning",
        pb::EventSeverity::Error => "error",
        pb::EventSeverity::Critical => "critical",
    }
}

/// Parses `info|warning|error|critical` (case-insensitive).
///
/// # Errors
///
/// [`EventError`] for any other word.
pub fn parse_severity(text: &str) -> Result<pb::EventSeverity, EventError> {
    match text.to_ascii_lowercase().as_str() {
        "info" => Ok(pb::EventSeverity::Info),
        "warning" | "warn" => Ok(pb::EventSeverity::Warning),
        "error" => Ok(pb::EventSeverity::Error),
        "critical" | "crit" => Ok(pb::EventSeverity::Critical),
        _ => Err(err(format!(
            "unknown severity {text:?}: use info, warning, error or critical"
        ))),
    }
}

/// Checks text that may hold tabs and newlines but no other control or format character.
fn check_text(field: &str, text: &str, max: usize) -> Result<(), EventError> {
    if text.len() > max {
        return Err(err(format!(
            "{field} is {} bytes; at most {max} are allowed",
            text.len()
        )));
    }
    let forbidden = text
        .char_indices()
        .find(|&(_, c)| c != '\t' && c != '\n' && is_forbidden(c));
    if let Some((at, c)) = forbidden {
        return Err(err(format!(
            "{field} holds the control or format character U+{:04X} at byte {at}",
            u32::from(c)
        )));
    }
    Ok(())
}

/// Checks one event's content against the bounds and grammar of this module; `seq` and the
/// report's order are the report's business (the server checks them separately). `now` is the
/// checker's clock, for [`MAX_FUTURE_SKEW`].
///
/// # Errors
///
/// [`EventError`] naming the first field that breaks the contract.
pub fn check_event(event: &pb::AgentEvent, now: std::time::SystemTime) -> Result<(), EventError> {
    if !is_valid_kind(&event.kind) {
        return Err(err(format!(
            "kind {:?} is not a dotted name of lowercase letters, digits, '_' and '-' (at most {MAX_KIND_BYTES} bytes)",
            truncate(&event.kind, 80)
        )));
    }
    severity(event.severity)?;
    let Some(time) = event.time else {
        return Err(err("time is required"));
    };
    let time =
        std::time::SystemTime::try_from(time).map_err(|_| err("time is not a valid timestamp"))?;
    if time > now + MAX_FUTURE_SKEW {
        return Err(err(format!(
            "time is more than {}s ahead of the server's clock",
            MAX_FUTURE_SKEW.as_secs()
        )));
    }
    check_text("message", &event.message, MAX_MESSAGE_BYTES)?;
    check_text("fingerprint", &event.fingerprint, MAX_FINGERPRINT_BYTES)?;
    if event.attributes.len() > MAX_ATTRIBUTES {
        return Err(err(format!(
            "{} attributes; at most {MAX_ATTRIBUTES} are allowed",
            event.attributes.len()
        )));
    }
    let mut total = event.kind.len() + event.message.len() + event.fingerprint.len();
    for (key, value) in &event.attributes {
        if key.len() > MAX_ATTRIBUTE_KEY_BYTES || !crate::selector::is_valid_label_key(key) {
            return Err(err(format!(
                "attribute name {:?} is not a label key of at most {MAX_ATTRIBUTE_KEY_BYTES} bytes",
                truncate(key, 80)
            )));
        }
        check_text(
            &format!("attribute {key:?}"),
            value,
            MAX_ATTRIBUTE_VALUE_BYTES,
        )?;
        total += key.len() + value.len();
    }
    if total > MAX_EVENT_BYTES {
        return Err(err(format!(
            "the event is {total} bytes; at most {MAX_EVENT_BYTES} are allowed"
        )));
    }
    Ok(())
}

fn truncate(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    fn event() -> pb::AgentEvent {
        pb::AgentEvent {
            seq: 1,
            time: Some(SystemTime::now().into()),
            kind: "ssh.login_failed".into(),
            severity: pb::EventSeverity::Warning as i32,
            message: "failed password for root\nfrom 10.0.0.1".into(),
            attributes: [("user".to_owned(), "root".to_owned())].into(),
            fingerprint: String::new(),
        }
    }

    #[test]
    fn a_well_formed_event_passes() {
        assert_eq!(check_event(&event(), SystemTime::now()), Ok(()));
    }

    #[test]
    fn kinds_are_dotted_lowercase_names() {
        for good in [
            "ssh",
            "ssh.login_failed",
            "disk.sda-1.full",
            "tether.rate_limited",
        ] {
            assert!(is_valid_kind(good), "{good}");
        }
        for bad in [
            "",
            ".ssh",
            "ssh.",
            "ssh..x",
            "SSH",
            "ssh login",
            "ssh/x",
            &"a".repeat(129),
        ] {
            assert!(!is_valid_kind(bad), "{bad}");
        }
    }

    #[test]
    fn kind_prefix_matches_whole_segments() {
        assert!(kind_has_prefix("ssh", "ssh"));
        assert!(kind_has_prefix("ssh.login_failed", "ssh"));
        assert!(!kind_has_prefix("sshd.crash", "ssh"));
        assert!(!kind_has_prefix("ss", "ssh"));
    }

    #[test]
    fn each_bound_is_enforced_and_named() {
        let now = SystemTime::now();
        type Change = Box<dyn Fn(&mut pb::AgentEvent)>;
        let cases: Vec<(Change, &str)> = vec![
            (Box::new(|e| e.severity = 0), "severity"),
            (Box::new(|e| e.severity = 9), "severity"),
            (Box::new(|e| e.time = None), "time"),
            (
                Box::new(|e| e.time = Some((SystemTime::now() + Duration::from_secs(3600)).into())),
                "ahead",
            ),
            (
                Box::new(|e| e.message = "x".repeat(MAX_MESSAGE_BYTES + 1)),
                "message",
            ),
            (Box::new(|e| e.message = "bell\u{7}".into()), "message"),
            (Box::new(|e| e.message = "rtl\u{202E}".into()), "message"),
            (
                Box::new(|e| e.fingerprint = "f".repeat(MAX_FINGERPRINT_BYTES + 1)),
                "fingerprint",
            ),
            (
                Box::new(|e| {
                    e.attributes = (0..=MAX_ATTRIBUTES)
                        .map(|i| (format!("k{i}"), String::new()))
                        .collect();
                }),
                "attributes",
            ),
            (
                Box::new(|e| {
                    e.attributes.insert("bad key".into(), "v".into());
                }),
                "attribute name",
            ),
            (
                Box::new(|e| {
                    e.attributes
                        .insert("k".into(), "v".repeat(MAX_ATTRIBUTE_VALUE_BYTES + 1));
                }),
                "attribute",
            ),
            (
                Box::new(|e| {
                    e.message = "m".repeat(MAX_MESSAGE_BYTES);
                    e.attributes = (0..MAX_ATTRIBUTES)
                        .map(|i| (format!("k{i}"), "v".repeat(MAX_ATTRIBUTE_VALUE_BYTES)))
                        .collect();
                }),
                "bytes",
            ),
        ];
        for (change, word) in cases {
            let mut e = event();
            change(&mut e);
            let error = check_event(&e, now).expect_err(word);
            assert!(error.0.contains(word), "{error} should name {word}");
        }
    }

    #[test]
    fn severities_parse_and_print() {
        for s in ["info", "warning", "error", "critical"] {
            let parsed = parse_severity(s).expect("known");
            assert_eq!(severity_name(parsed), s);
        }
        assert!(parse_severity("loud").is_err());
    }
}
