//! The audit trail: one [`AuditEntry`] per mutating call and per denied call, chained per org.
//!
//! The writer places each entry in its org's chain when it commits it: `seq` is the previous
//! record's plus one, and `hash` is [`tether_proto::audit::event_hash`] of the event, the
//! contract's definition, which `tetherctl audit verify` recomputes with the same function: a
//! modified record breaks a hash, a deleted one leaves a gap in `seq`.
//!
//! Every text field of an entry is bounded when the entry is made ([`entry`]): a method path, a
//! target or a status message may echo what a caller sent, and the trail must stay small
//! enough to be read back (`ListAuditEvents` pages, `tetherctl audit verify`) whatever callers
//! send.

use crate::auth::{Caller, Principal};
use crate::convert;
use crate::domain::{AuditEntry, AuditOutcome, AuditRecord, Role};

pub use tether_proto::audit::GENESIS;

/// Longest method path, target or actor name an audit entry keeps, in bytes.
pub const MAX_FIELD_BYTES: usize = 256;
/// Longest status message an audit entry keeps, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 1024;
/// Appended to a text that [`bounded`] shortened.
const ELLIPSIS: &str = "…";

/// Places `entry` after `(prev_seq, prev_hash)`: the hash covers the wire form of the event
/// with its hash field empty ([`convert::admin::audit_event_to_pb`]).
pub fn chain(prev_seq: u64, prev_hash: [u8; 32], entry: AuditEntry) -> AuditRecord {
    let seq = prev_seq + 1;
    let event = convert::admin::audit_event_to_pb(seq, &entry, &prev_hash, None);
    AuditRecord {
        seq,
        hash: tether_proto::audit::event_hash(&event),
        entry,
        prev_hash,
    }
}

/// An entry for `caller` calling `method` on `target`, ending with `result`.
pub fn entry(
    caller: &Caller,
    method: &str,
    target: &str,
    result: Result<(), &tonic::Status>,
) -> AuditEntry {
    let (actor_name, actor_role) = match &caller.principal {
        Principal::User { name, role, .. } => (name.clone(), Some(*role)),
        Principal::Agent { agent } => (format!("agent {agent}"), Some(Role::Agent)),
        Principal::Enrollment => ("enrollment token".to_owned(), None),
    };
    let (outcome, status_code, message) = match result {
        Ok(()) => (AuditOutcome::Succeeded, 0, String::new()),
        Err(status) => (
            outcome_of(status.code()),
            status.code() as i32,
            status.message().to_owned(),
        ),
    };
    AuditEntry {
        org: caller.org.clone(),
        time: std::time::SystemTime::now(),
        actor_token: Some(caller.token.clone()),
        actor_name: bounded(&actor_name, MAX_FIELD_BYTES),
        actor_role,
        method: bounded(method, MAX_FIELD_BYTES),
        target: bounded(target, MAX_FIELD_BYTES),
        outcome,
        status_code,
        message: bounded(&message, MAX_MESSAGE_BYTES),
    }
}

/// `text` cut to at most `max_bytes` (at a character boundary, marked with an ellipsis), for
/// text a caller chose that goes into the audit trail or a log line.
pub fn bounded(text: &str, max_bytes: usize) -> String {
    if text.len() <= max_bytes {
        return text.to_owned();
    }
    let mut end = max_bytes.saturating_sub(ELLIPSIS.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{ELLIPSIS}", &text[..end])
}

/// Refusals (credentials, permissions, limits) are `Denied`; other errors are `Failed`.
pub fn outcome_of(code: tonic::Code) -> AuditOutcome {
    match code {
        tonic::Code::Ok => AuditOutcome::Succeeded,
        tonic::Code::Unauthenticated
        | tonic::Code::PermissionDenied
        | tonic::Code::ResourceExhausted => AuditOutcome::Denied,
        _ => AuditOutcome::Failed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{OrgId, TokenId};

    fn e(n: u64) -> AuditEntry {
        AuditEntry {
            org: OrgId::new("o"),
            time: std::time::UNIX_EPOCH + std::time::Duration::from_secs(n),
            actor_token: Some(TokenId::new("t")),
            actor_name: "n".into(),
            actor_role: Some(Role::Admin),
            method: "/m".into(),
            target: format!("x{n}"),
            outcome: AuditOutcome::Succeeded,
            status_code: 0,
            message: String::new(),
        }
    }

    #[test]
    fn long_fields_are_bounded_at_a_character_boundary() {
        assert_eq!(bounded("short", 10), "short");
        let cut = bounded(&"é".repeat(300), MAX_FIELD_BYTES);
        assert!(cut.len() <= MAX_FIELD_BYTES, "{}", cut.len());
        assert!(cut.ends_with(ELLIPSIS) && cut.starts_with("éé"), "{cut}");
        let caller = Caller {
            org: OrgId::new("o"),
            token: TokenId::new("t"),
            principal: Principal::Enrollment,
        };
        let huge = "x".repeat(100_000);
        let status = tonic::Status::invalid_argument(huge.clone());
        let e = entry(&caller, &huge, &huge, Err(&status));
        assert!(e.method.len() <= MAX_FIELD_BYTES);
        assert!(e.target.len() <= MAX_FIELD_BYTES);
        assert!(e.message.len() <= MAX_MESSAGE_BYTES);
    }

    #[test]
    fn chain_links_and_detects_changes() {
        let a = chain(0, GENESIS, e(1));
        let b = chain(a.seq, a.hash, e(2));
        assert_eq!((a.seq, b.seq), (1, 2));
        assert_eq!(b.prev_hash, a.hash);
        let mut tampered = e(1);
        tampered.target = "other".into();
        assert_ne!(chain(0, GENESIS, tampered).hash, a.hash);
    }

    /// The hash is the contract `tetherctl audit verify` checks: these values were computed
    /// when the chain was introduced and must never change for the same entry.
    #[test]
    fn chain_hash_of_a_known_entry_is_stable() {
        let entry = AuditEntry {
            org: OrgId::new("acme"),
            time: std::time::UNIX_EPOCH + std::time::Duration::new(1_700_000_000, 123_000_000),
            actor_token: Some(TokenId::new("0123456789abcdef")),
            actor_name: "ops".into(),
            actor_role: Some(Role::Operator),
            method: "/tether.v1.AdminService/CreateToken".into(),
            target: "ci".into(),
            outcome: AuditOutcome::Denied,
            status_code: 7,
            message: "no".into(),
        };
        let first = chain(41, [7u8; 32], entry.clone());
        assert_eq!(first.seq, 42);
        assert_eq!(
            hex::encode(first.hash),
            "360bab2344a23d0efc2a9c344b747a68c8fec0bccc205c1a31db08b80822ef14"
        );
        let anonymous = AuditEntry {
            actor_token: None,
            actor_role: None,
            ..entry
        };
        let second = chain(first.seq, first.hash, anonymous);
        assert_eq!(
            hex::encode(second.hash),
            "323cef51f42e1f32cd2abacd36a900bc458e802244e41a49327d0820af4945c7"
        );
    }
}
