//! Whether an [`Event`] fits the contract: the grammar of kinds, the text rules and the size
//! bounds the server enforces. The socket, `tether-agent emit` and the built-in sources all
//! check here, so a program on the machine hears about a bad event at once, in the same words
//! the server would use, instead of the server rejecting it later.

use crate::events::types::Event;

/// Longest kind, in bytes.
pub const MAX_KIND_BYTES: usize = 128;
/// Longest message, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 4096;
/// Most attributes of one event.
pub const MAX_ATTRIBUTES: usize = 32;
/// Longest attribute key, in bytes.
pub const MAX_ATTRIBUTE_KEY_BYTES: usize = 128;
/// Longest attribute value, in bytes.
pub const MAX_ATTRIBUTE_VALUE_BYTES: usize = 1024;
/// Longest fingerprint, in bytes.
pub const MAX_FINGERPRINT_BYTES: usize = 256;
/// Most bytes of one event's text (kind, message, attribute keys and values, fingerprint).
pub const MAX_EVENT_BYTES: usize = 16 << 10;

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
    check_kind(&event.kind)?;
    if event.message.len() > MAX_MESSAGE_BYTES {
        return Err(invalid(format!(
            "message is {} bytes, more than {MAX_MESSAGE_BYTES}",
            event.message.len()
        )));
    }
    if let Some((at, c)) = event
        .message
        .char_indices()
        .find(|&(_, c)| c != '\t' && c != '\n' && tether_proto::text::is_forbidden(c))
    {
        return Err(invalid(format!(
            "message holds the control or format character U+{:04X} at byte {at}",
            u32::from(c)
        )));
    }
    if event.attributes.len() > MAX_ATTRIBUTES {
        return Err(invalid(format!(
            "{} attributes, more than {MAX_ATTRIBUTES}",
            event.attributes.len()
        )));
    }
    let mut total = event.kind.len() + event.message.len();
    for (key, value) in &event.attributes {
        if key.len() > MAX_ATTRIBUTE_KEY_BYTES || !tether_proto::selector::is_valid_label_key(key) {
            return Err(invalid(format!(
                "attribute name {key:?} must be 1 to {MAX_ATTRIBUTE_KEY_BYTES} bytes of ASCII \
                 letters, digits and -_./, starting and ending with a letter or digit"
            )));
        }
        if value.len() > MAX_ATTRIBUTE_VALUE_BYTES {
            return Err(invalid(format!(
                "attribute {key:?} is {} bytes, more than {MAX_ATTRIBUTE_VALUE_BYTES}",
                value.len()
            )));
        }
        if tether_proto::text::first_forbidden(value).is_some() {
            return Err(invalid(format!(
                "attribute {key:?} holds a control or format character"
            )));
        }
        total += key.len() + value.len();
    }
    if let Some(fingerprint) = &event.fingerprint {
        if fingerprint.is_empty() || fingerprint.len() > MAX_FINGERPRINT_BYTES {
            return Err(invalid(format!(
                "fingerprint must be 1 to {MAX_FINGERPRINT_BYTES} bytes"
            )));
        }
        if tether_proto::text::first_forbidden(fingerprint).is_some() {
            return Err(invalid(
                "fingerprint holds a control or format character".into(),
            ));
        }
        total += fingerprint.len();
    }
    if total > MAX_EVENT_BYTES {
        return Err(invalid(format!(
            "event is {total} bytes, more than {MAX_EVENT_BYTES}"
        )));
    }
    Ok(())
}

/// Checks a kind: segments of lowercase ASCII letters, digits, `_` and `-`, separated by
/// single dots, at most [`MAX_KIND_BYTES`].
///
/// # Errors
///
/// [`InvalidEvent`] saying what a kind looks like.
pub fn check_kind(kind: &str) -> Result<(), InvalidEvent> {
    let well_formed = !kind.is_empty()
        && kind.len() <= MAX_KIND_BYTES
        && kind.split('.').all(|segment| {
            !segment.is_empty()
                && segment
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        });
    if well_formed {
        Ok(())
    } else {
        Err(invalid(format!(
            "kind {kind:?} must be a dotted name such as ssh.login_failed: segments of \
             lowercase letters, digits, _ and -, separated by single dots, at most \
             {MAX_KIND_BYTES} bytes"
        )))
    }
}

fn invalid(message: String) -> InvalidEvent {
    InvalidEvent(message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::types::Severity;

    fn event(kind: &str) -> Event {
        Event::now(kind, Severity::Warning, "something happened")
    }

    #[test]
    fn kinds_are_dotted_names() {
        for good in [
            "ssh.login_failed",
            "tether.events_dropped",
            "a",
            "disk-1.full_2",
        ] {
            check_kind(good).unwrap_or_else(|err| panic!("{good}: {err}"));
        }
        for bad in [
            "",
            "Ssh.login",
            "ssh..login",
            ".ssh",
            "ssh.",
            "ssh login",
            "ß.x",
        ] {
            assert!(check_kind(bad).is_err(), "{bad:?}");
        }
        assert!(check_kind(&"a".repeat(MAX_KIND_BYTES + 1)).is_err());
    }

    #[test]
    fn message_attributes_and_fingerprint_are_bounded() {
        check(&event("x.y").with("user", "root").fingerprint("f1")).expect("valid");
        let mut bad = event("x.y");
        bad.message = "line one\nline\ttwo".into();
        check(&bad).expect("tab and newline are text");
        bad.message = "bell\u{7}".into();
        assert!(check(&bad).is_err());
        bad.message = "x".repeat(MAX_MESSAGE_BYTES + 1);
        assert!(check(&bad).is_err());
        assert!(check(&event("x.y").with("bad key", "v")).is_err());
        assert!(check(&event("x.y").with("k", "\u{202e}")).is_err());
        assert!(check(&event("x.y").with("k", "v".repeat(MAX_ATTRIBUTE_VALUE_BYTES + 1))).is_err());
        assert!(check(&event("x.y").fingerprint("")).is_err());
        let mut many = event("x.y");
        for i in 0..=MAX_ATTRIBUTES {
            many.attributes.insert(format!("k{i}"), "v".into());
        }
        assert!(check(&many).is_err());
        let mut large = event("x.y");
        for i in 0..20 {
            large
                .attributes
                .insert(format!("k{i}"), "v".repeat(MAX_ATTRIBUTE_VALUE_BYTES));
        }
        assert!(check(&large).is_err(), "over the total size");
    }
}
