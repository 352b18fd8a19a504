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

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::auth::{Caller, Principal};
use crate::convert;
use crate::domain::{AuditEntry, AuditOutcome, AuditRecord, Role, TokenId};
use crate::metrics::Metrics;
use crate::rate::TokenBucket;
use crate::writer::WriterHandle;

pub use tether_proto::audit::GENESIS;

/// Longest method path, target or actor name an audit entry keeps, in bytes.
pub const MAX_FIELD_BYTES: usize = 256;
/// Longest status message an audit entry keeps, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 1024;
/// Appended to a text that [`bounded`] shortened.
const ELLIPSIS: &str = "…";

/// Rate-limit refusals of a token are audited at most once per interval. Its other refusals
/// (failed authentications with its id, which is public; permission denials; mTLS refusals)
/// share a budget of [`REFUSAL_AUDIT_BURST`] records refilled at one per interval.
pub const REFUSAL_AUDIT_INTERVAL: Duration = Duration::from_secs(1);
pub const REFUSAL_AUDIT_BURST: f64 = 100.0;

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

/// The audit of refused calls, within a per-token budget: a flood of refusals writes a bounded
/// number of records. Every refusal left out is counted (`tether_refusals_unaudited`), and the
/// next audited refusal of the same token says how many were left out before it. Shared by the
/// gate and the handlers that refuse on their own (mTLS at `Connect`), so one token has one
/// budget.
pub struct RefusalAudits {
    writer: WriterHandle,
    metrics: Arc<Metrics>,
    budgets: Mutex<HashMap<TokenId, RefusalBudget>>,
}

/// Which budget a refusal draws on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefusalKind {
    /// The token's request rate: at most one record per [`REFUSAL_AUDIT_INTERVAL`].
    Rate,
    /// Anything else: the token's burst of [`REFUSAL_AUDIT_BURST`] records.
    Other,
}

struct RefusalBudget {
    last_rate_audit: Option<Instant>,
    other: TokenBucket,
    /// Refusals left out of the trail since the token's last audited one.
    unaudited: u64,
}

impl RefusalAudits {
    pub fn new(writer: WriterHandle, metrics: Arc<Metrics>) -> Self {
        Self {
            writer,
            metrics,
            budgets: Mutex::default(),
        }
    }

    /// The audit entry of `caller`'s call of `method` on `target`, refused with `status`, if
    /// the token's `kind` budget allows one (queue it with [`RefusalAudits::record`]); otherwise
    /// counts the refusal and returns `None`. `method` and `target` are bounded like every
    /// entry's ([`entry`]).
    pub fn refused(
        &self,
        caller: &Caller,
        method: &str,
        target: &str,
        status: &tonic::Status,
        kind: RefusalKind,
    ) -> Option<AuditEntry> {
        let Some(unaudited) = self.take(&caller.token, kind, Instant::now()) else {
            self.metrics.refusals_unaudited.inc();
            return None;
        };
        let mut entry = entry(caller, method, target, Err(status));
        if unaudited > 0 {
            entry.message.push_str(&format!(
                " ({unaudited} earlier refusals of this token were not audited)"
            ));
        }
        Some(entry)
    }

    /// Queues a refusal's audit entry, waiting for a slot in the writer's control queue.
    pub async fn record(&self, entry: AuditEntry) {
        self.writer.audit(entry).await;
    }

    /// [`RefusalAudits::refused`] then [`RefusalAudits::record`], for a handler that refuses
    /// on its own and may wait.
    pub async fn audit(
        &self,
        caller: &Caller,
        method: &str,
        target: &str,
        status: &tonic::Status,
        kind: RefusalKind,
    ) {
        if let Some(entry) = self.refused(caller, method, target, status, kind) {
            self.record(entry).await;
        }
    }

    /// Takes one record from token `id`'s `kind` budget at `now`: how many of its refusals were
    /// left out before this one, or `None` when this one is left out too.
    fn take(&self, id: &TokenId, kind: RefusalKind, now: Instant) -> Option<u64> {
        let mut budgets = self.budgets.lock().unwrap_or_else(|e| e.into_inner());
        let budget = budgets.entry(id.clone()).or_insert_with(|| RefusalBudget {
            last_rate_audit: None,
            other: TokenBucket::new(
                1.0 / REFUSAL_AUDIT_INTERVAL.as_secs_f64(),
                REFUSAL_AUDIT_BURST,
                now,
            ),
            unaudited: 0,
        });
        let admitted = match kind {
            RefusalKind::Rate => {
                let due = budget
                    .last_rate_audit
                    .is_none_or(|at| now.saturating_duration_since(at) >= REFUSAL_AUDIT_INTERVAL);
                if due {
                    budget.last_rate_audit = Some(now);
                }
                due
            }
            RefusalKind::Other => budget.other.try_take(now),
        };
        if admitted {
            Some(std::mem::take(&mut budget.unaudited))
        } else {
            budget.unaudited += 1;
            None
        }
    }
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
    fn refusals_are_audited_within_each_tokens_budget() {
        let metrics = crate::metrics::Metrics::new();
        let dir = tempfile::tempdir().expect("tempdir");
        let store = std::sync::Arc::new(crate::store::SledStore::open(dir.path()).expect("store"));
        let (writer, _queues) = crate::writer::channel(store, &metrics, 1, 1, 1, 1);
        let audits = RefusalAudits::new(writer, metrics);
        let (a, b) = (TokenId::new("a"), TokenId::new("b"));
        let start = Instant::now();
        let burst = REFUSAL_AUDIT_BURST as usize;
        for _ in 0..burst {
            assert_eq!(audits.take(&a, RefusalKind::Other, start), Some(0));
        }
        for _ in 0..5 {
            assert_eq!(audits.take(&a, RefusalKind::Other, start), None);
        }
        // Another token has its own budget.
        assert_eq!(audits.take(&b, RefusalKind::Other, start), Some(0));
        // Refilled at one per interval; the record says how many were left out.
        let later = start + REFUSAL_AUDIT_INTERVAL;
        assert_eq!(audits.take(&a, RefusalKind::Other, later), Some(5));
        assert_eq!(audits.take(&a, RefusalKind::Other, later), None);
        // Rate-limit refusals: one per interval, whatever the other budget holds.
        assert_eq!(audits.take(&b, RefusalKind::Rate, start), Some(0));
        assert_eq!(audits.take(&b, RefusalKind::Rate, start), None);
        assert_eq!(audits.take(&b, RefusalKind::Rate, later), Some(1));
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
