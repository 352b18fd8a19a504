//! The audit hash chain check behind `audit verify`, as a pure function over fetched events.
//!
//! The chain is defined next to `AuditEvent` in `admin.proto` and computed by
//! [`tether_proto::audit::event_hash`], the function the server uses too: `hash` is the SHA-256
//! of `prev_hash` followed by the protobuf encoding of the event with `prev_hash` and `hash` left
//! empty; the first event's `prev_hash` is 32 zero bytes; `seq` increases by one per event.
//! [`verify_chain`] checks exactly that, as a pure function over the fetched events, so it is
//! unit-tested without a server. It detects a modified, deleted, moved or inserted event; it
//! cannot detect events removed from the end of the chain, which is why a successful check
//! prints the last seq and hash: compare them with a value recorded earlier.

use std::fmt;

use tether_proto as pb;
use tether_proto::audit::{HASH_LEN, event_hash};

/// An intact chain, as [`verify_chain`] found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainSummary {
    /// Events checked.
    pub n_events: u64,
    /// Sequence number of the last event; 0 when there are none.
    pub last_seq: u64,
    /// Hash of the last event; 32 zero bytes when there are none.
    pub last_hash: Vec<u8>,
}

/// The first place where a chain is broken. [`ChainError::seq`] names the first bad seq.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainError {
    /// Sequence numbers `first_missing..=last_missing` are absent after `after` (0: at the start):
    /// events were deleted.
    Gap {
        /// The last seq before the gap; 0 when the gap is at the start of the chain.
        after: u64,
        /// The first missing seq.
        first_missing: u64,
        /// The last missing seq.
        last_missing: u64,
    },
    /// `found` stands where `expected` should: events were moved, duplicated or inserted.
    OutOfOrder {
        /// The seq that belongs at this position.
        expected: u64,
        /// The seq that is there.
        found: u64,
    },
    /// The first event's `prev_hash` is not 32 zero bytes.
    FirstPrevHashNotZero {
        /// Its seq.
        seq: u64,
    },
    /// An event's `prev_hash` is not the previous event's `hash`.
    PrevHashMismatch {
        /// The event's seq.
        seq: u64,
        /// The previous event's seq.
        prev_seq: u64,
    },
    /// An event's `hash` does not match its contents: it was modified.
    HashMismatch {
        /// The event's seq.
        seq: u64,
    },
}

/// Checks the hash chain of `events`, which must be every event of one org, oldest first.
///
/// Checks, event by event: `seq` starts at 1 and increases by one; `prev_hash` equals the
/// previous event's `hash` (for the first event, 32 zero bytes); `hash` equals
/// SHA-256(`prev_hash` ‖ the event's protobuf encoding with `prev_hash` and `hash` cleared).
/// An empty list is an intact (empty) chain.
///
/// # Errors
///
/// The first violation found, in chain order.
pub fn verify_chain(events: &[pb::AuditEvent]) -> Result<ChainSummary, ChainError> {
    let zero = [0u8; HASH_LEN];
    let mut prev: Option<&pb::AuditEvent> = None;
    for (idx, event) in events.iter().enumerate() {
        let expected = prev.map_or(1, |p| p.seq.saturating_add(1));
        if event.seq != expected {
            let expected_comes_later = events[idx + 1..].iter().any(|e| e.seq == expected);
            return Err(if event.seq > expected && !expected_comes_later {
                ChainError::Gap {
                    after: expected - 1,
                    first_missing: expected,
                    last_missing: event.seq - 1,
                }
            } else {
                ChainError::OutOfOrder {
                    expected,
                    found: event.seq,
                }
            });
        }
        match prev {
            None if event.prev_hash != zero => {
                return Err(ChainError::FirstPrevHashNotZero { seq: event.seq });
            }
            Some(p) if event.prev_hash != p.hash => {
                return Err(ChainError::PrevHashMismatch {
                    seq: event.seq,
                    prev_seq: p.seq,
                });
            }
            _ => {}
        }
        if event.hash.as_slice() != event_hash(event).as_slice() {
            return Err(ChainError::HashMismatch { seq: event.seq });
        }
        prev = Some(event);
    }
    Ok(match prev {
        Some(last) => ChainSummary {
            n_events: events.len() as u64,
            last_seq: last.seq,
            last_hash: last.hash.clone(),
        },
        None => ChainSummary {
            n_events: 0,
            last_seq: 0,
            last_hash: zero.to_vec(),
        },
    })
}

// === impl ChainError ===

impl ChainError {
    /// The first seq at which the chain is wrong: the first missing one for a gap, the one that
    /// belongs at the position for events out of order, else the bad event's own.
    pub fn seq(&self) -> u64 {
        match *self {
            Self::Gap { first_missing, .. } => first_missing,
            Self::OutOfOrder { expected, .. } => expected,
            Self::FirstPrevHashNotZero { seq }
            | Self::PrevHashMismatch { seq, .. }
            | Self::HashMismatch { seq } => seq,
        }
    }
}

impl fmt::Display for ChainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Gap {
                after,
                first_missing,
                last_missing,
            } => {
                let missing = if first_missing == last_missing {
                    format!("seq {first_missing} is missing")
                } else {
                    format!("seq {first_missing} to {last_missing} are missing")
                };
                if after == 0 {
                    write!(f, "{missing} at the start of the chain (events deleted)")
                } else {
                    write!(f, "{missing} after seq {after} (events deleted)")
                }
            }
            Self::OutOfOrder { expected, found } => write!(
                f,
                "found seq {found} where seq {expected} belongs (events moved, duplicated or \
                 inserted)"
            ),
            Self::FirstPrevHashNotZero { .. } => write!(
                f,
                "the first event's prev_hash is not 32 zero bytes (events before it were \
                 removed or it was modified)"
            ),
            Self::PrevHashMismatch { prev_seq, .. } => write!(
                f,
                "prev_hash does not equal the hash of seq {prev_seq} (an event was modified or \
                 replaced)"
            ),
            Self::HashMismatch { .. } => write!(
                f,
                "hash does not match the event's contents (the event was modified)"
            ),
        }
    }
}

impl std::error::Error for ChainError {}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::CliError;
    use crate::cmd::audit::render_summary;

    /// An intact chain of `n` events, built as the server must build it.
    pub(crate) fn chain(n: u64) -> Vec<pb::AuditEvent> {
        let mut prev_hash = vec![0u8; HASH_LEN];
        (1..=n)
            .map(|seq| {
                let mut event = pb::AuditEvent {
                    seq,
                    org_id: "acme".into(),
                    time: Some(prost_types::Timestamp {
                        seconds: 1_700_000_000 + i64::try_from(seq).expect("small"),
                        nanos: 0,
                    }),
                    actor_token_id: "tok-1".into(),
                    actor_name: "ci".into(),
                    actor_role: pb::Role::Admin as i32,
                    method: "/tether.v1.AdminService/CreateToken".into(),
                    target: format!("tok-{}", seq + 1),
                    outcome: pb::AuditOutcome::Succeeded as i32,
                    status_code: 0,
                    message: String::new(),
                    prev_hash: prev_hash.clone(),
                    hash: Vec::new(),
                };
                event.hash = event_hash(&event).to_vec();
                prev_hash.clone_from(&event.hash);
                event
            })
            .collect()
    }

    #[test]
    fn intact_chain_verifies() {
        let events = chain(5);
        let summary = verify_chain(&events).expect("intact");
        assert_eq!(summary.n_events, 5);
        assert_eq!(summary.last_seq, 5);
        assert_eq!(summary.last_hash, events[4].hash);
        let text = render_summary(&summary);
        assert!(
            text.starts_with("audit chain OK: 5 events, last seq 5, last hash "),
            "{text}"
        );
        assert_eq!(
            text.trim_end().len(),
            text.find("hash ").expect("hash") + 5 + 64
        );
    }

    #[test]
    fn empty_chain_verifies() {
        let summary = verify_chain(&[]).expect("intact");
        assert_eq!(summary.n_events, 0);
        assert_eq!(summary.last_seq, 0);
        assert_eq!(summary.last_hash, vec![0u8; HASH_LEN]);
    }

    #[test]
    fn modified_field_is_detected() {
        let mut events = chain(5);
        events[2].outcome = pb::AuditOutcome::Denied as i32;
        assert_eq!(
            verify_chain(&events),
            Err(ChainError::HashMismatch { seq: 3 })
        );
        let mut events = chain(5);
        events[3].actor_name = "someone else".into();
        let err = verify_chain(&events).expect_err("modified");
        assert_eq!(err.seq(), 4);
        assert!(err.to_string().contains("modified"), "{err}");
    }

    #[test]
    fn modified_event_with_recomputed_hash_breaks_the_next_link() {
        let mut events = chain(5);
        events[1].target = "tok-evil".into();
        events[1].hash = event_hash(&events[1]).to_vec();
        assert_eq!(
            verify_chain(&events),
            Err(ChainError::PrevHashMismatch {
                seq: 3,
                prev_seq: 2
            })
        );
    }

    #[test]
    fn deleted_middle_event_is_a_gap() {
        let mut events = chain(6);
        events.remove(3);
        let err = verify_chain(&events).expect_err("gap");
        assert_eq!(
            err,
            ChainError::Gap {
                after: 3,
                first_missing: 4,
                last_missing: 4
            }
        );
        assert_eq!(err.seq(), 4);
        assert_eq!(
            CliError::AuditChainBroken(err).to_string(),
            "audit chain broken at seq 4: seq 4 is missing after seq 3 (events deleted)"
        );
        let mut events = chain(6);
        events.drain(1..4);
        assert_eq!(
            verify_chain(&events).expect_err("gap").to_string(),
            "seq 2 to 4 are missing after seq 1 (events deleted)"
        );
    }

    #[test]
    fn deleted_first_event_is_a_gap_at_the_start() {
        let mut events = chain(3);
        events.remove(0);
        let err = verify_chain(&events).expect_err("gap");
        assert_eq!(err.seq(), 1);
        assert!(err.to_string().contains("at the start"), "{err}");
    }

    #[test]
    fn swapped_events_are_out_of_order() {
        let mut events = chain(5);
        events.swap(1, 2);
        assert_eq!(
            verify_chain(&events),
            Err(ChainError::OutOfOrder {
                expected: 2,
                found: 3
            })
        );
    }

    #[test]
    fn swapped_contents_under_the_same_seqs_break_the_chain() {
        let mut events = chain(5);
        let (a, b) = (events[1].clone(), events[2].clone());
        events[1] = pb::AuditEvent { seq: 2, ..b };
        events[2] = pb::AuditEvent { seq: 3, ..a };
        let err = verify_chain(&events).expect_err("broken");
        assert_eq!(err.seq(), 2);
    }

    #[test]
    fn first_prev_hash_must_be_zero() {
        let mut events = chain(3);
        events[0].prev_hash = vec![1u8; HASH_LEN];
        events[0].hash = event_hash(&events[0]).to_vec();
        assert_eq!(
            verify_chain(&events),
            Err(ChainError::FirstPrevHashNotZero { seq: 1 })
        );
        let mut events = chain(1);
        events[0].prev_hash = Vec::new();
        assert_eq!(
            verify_chain(&events),
            Err(ChainError::FirstPrevHashNotZero { seq: 1 })
        );
    }

    #[test]
    fn duplicated_event_is_out_of_order() {
        let mut events = chain(3);
        events.insert(2, events[1].clone());
        assert_eq!(
            verify_chain(&events),
            Err(ChainError::OutOfOrder {
                expected: 3,
                found: 2
            })
        );
    }
}
