//! `audit` and `audit verify`: the org's audit events through `AdminService` (admin role), and a
//! check of their hash chain.
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
use std::io::Write;
use std::time::SystemTime;

use prost::Message as _;
use tether_proto as pb;
pub use tether_proto::audit::{HASH_LEN, event_hash};

use crate::cli::{AuditArgs, AuditCommand, ObjectFormat};
use crate::client::{Connection, unary};
use crate::config::Settings;
use crate::format::{NONE, Table, relative_time_opt};
use crate::view::{AuditChainView, AuditEventView};
use crate::{CliError, write_json};

use super::fetch_pages;

/// Events requested per page (the server's maximum).
pub const AUDIT_PAGE_SIZE: u32 = 1_000;

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

// === commands ===

/// `audit [filters]`, `audit --verify` and `audit verify`.
pub(crate) async fn run(
    args: AuditArgs,
    settings: &Settings,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    match args.command {
        Some(AuditCommand::Verify(output)) => verify(output.output, settings, out).await,
        None if args.verify => verify(args.output, settings, out).await,
        None => list(args, settings, out).await,
    }
}

/// `audit`: fetches every matching page (or `--limit` events) and prints them.
async fn list(
    args: AuditArgs,
    settings: &Settings,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let method = args.method.as_deref().map(resolve_method).transpose()?;
    let since = match args.since {
        Some(d) if d.is_zero() => {
            return Err(CliError::Usage(
                "--since must be longer than zero".to_owned(),
            ));
        }
        Some(d) => Some(
            SystemTime::now()
                .checked_sub(d)
                .ok_or_else(|| CliError::Usage("--since reaches too far back".to_owned()))?,
        ),
        None => None,
    };
    let base = pb::ListAuditEventsRequest {
        method: method.unwrap_or_default(),
        actor_token_id: args.actor.map(|a| a.trim().to_owned()).unwrap_or_default(),
        outcome: args.outcome.map_or(0, |o| o.to_pb() as i32),
        since: since.map(Into::into),
        page_size: 0,
        page_token: String::new(),
    };
    let conn = Connection::connect(settings).await?;
    let events: Vec<AuditEventView> = fetch(&conn, base, args.limit)
        .await?
        .into_iter()
        .map(AuditEventView::from)
        .collect();
    match args.output {
        ObjectFormat::Table if events.is_empty() => writeln!(out, "No audit events found.")?,
        ObjectFormat::Table => {
            out.write_all(render_table(&events, SystemTime::now()).as_bytes())?;
        }
        ObjectFormat::Json => write_json(out, &events)?,
    }
    Ok(())
}

/// `audit verify`: fetches every event of the org and checks the chain.
async fn verify(
    output: ObjectFormat,
    settings: &Settings,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let conn = Connection::connect(settings).await?;
    let events = fetch(&conn, pb::ListAuditEventsRequest::default(), None).await?;
    let summary = verify_chain(&events).map_err(CliError::AuditChainBroken)?;
    match output {
        ObjectFormat::Table => out.write_all(render_summary(&summary).as_bytes())?,
        ObjectFormat::Json => write_json(
            out,
            &AuditChainView {
                ok: true,
                n_events: summary.n_events,
                last_seq: summary.last_seq,
                last_hash: summary.last_hash,
            },
        )?,
    }
    Ok(())
}

/// Follows pages of `ListAuditEvents` from `base` until the last page or `limit` events.
async fn fetch(
    conn: &Connection,
    base: pb::ListAuditEventsRequest,
    limit: Option<u32>,
) -> Result<Vec<pb::AuditEvent>, CliError> {
    let client = conn.admin();
    fetch_pages(AUDIT_PAGE_SIZE, limit, |page_size, page_token| {
        let mut client = client.clone();
        let request = pb::ListAuditEventsRequest {
            page_size,
            page_token,
            ..base.clone()
        };
        async move {
            let page = client
                .list_audit_events(unary(request))
                .await
                .map_err(|status| conn.error(&status, None))?
                .into_inner();
            Ok((page.events, page.next_page_token))
        }
    })
    .await
}

/// Turns `--method` into a full gRPC method name. A name starting with `/` is taken as is;
/// `Method` or `Service/Method` is looked up (case-insensitively) among the Tether services.
fn resolve_method(name: &str) -> Result<String, CliError> {
    let name = name.trim();
    if name.is_empty() {
        return Err(CliError::Usage("--method must not be empty".to_owned()));
    }
    if name.starts_with('/') {
        return Ok(name.to_owned());
    }
    let (service, method) = match name.rsplit_once('/') {
        Some((service, method)) => (Some(service), method),
        None => (None, name),
    };
    let known = known_methods();
    let matches: Vec<&String> = known
        .iter()
        .filter(|full| {
            let Some((svc, m)) = full.trim_start_matches('/').rsplit_once('/') else {
                return false;
            };
            let short_svc = svc.rsplit('.').next().unwrap_or(svc);
            m.eq_ignore_ascii_case(method)
                && service.is_none_or(|s| {
                    s.eq_ignore_ascii_case(svc) || s.eq_ignore_ascii_case(short_svc)
                })
        })
        .collect();
    match matches.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(CliError::Usage(format!(
            "unknown method `{name}`: give a method such as CreateToken or a full name such as \
             /tether.v1.AdminService/CreateToken"
        ))),
        many => Err(CliError::Usage(format!(
            "method `{name}` is ambiguous: {}",
            many.iter()
                .map(|m| m.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// Every method of every Tether service, as full gRPC names (`/tether.v1.AdminService/…`),
/// read from the descriptor set compiled into `tether-proto`.
fn known_methods() -> Vec<String> {
    let set = prost_types::FileDescriptorSet::decode(tether_proto::FILE_DESCRIPTOR_SET)
        .expect("the descriptor set compiled into tether-proto decodes");
    let mut methods = Vec::new();
    for file in set.file {
        let package = file.package.unwrap_or_default();
        for service in file.service {
            let service_name = service.name.unwrap_or_default();
            for method in service.method {
                let method_name = method.name.unwrap_or_default();
                methods.push(if package.is_empty() {
                    format!("/{service_name}/{method_name}")
                } else {
                    format!("/{package}.{service_name}/{method_name}")
                });
            }
        }
    }
    methods
}

/// The method's name without its service: `/tether.v1.AdminService/CreateToken` →
/// `CreateToken`.
fn short_method(method: &str) -> &str {
    method.rsplit('/').next().unwrap_or(method)
}

/// Renders `audit` as a table.
pub(crate) fn render_table(events: &[AuditEventView], now: SystemTime) -> String {
    let mut table = Table::new([
        "SEQ", "TIME", "ACTOR", "ROLE", "METHOD", "TARGET", "OUTCOME", "CODE",
    ])
    .align_right(0);
    for e in events {
        let actor = e
            .actor_name
            .as_deref()
            .or(e.actor_token_id.as_deref())
            .unwrap_or(NONE);
        table.push([
            e.seq.to_string(),
            relative_time_opt(now, e.time),
            actor.to_owned(),
            e.actor_role.map_or(NONE, |r| r.as_str()).to_owned(),
            short_method(&e.method).to_owned(),
            e.target.clone().unwrap_or_else(|| NONE.to_owned()),
            e.outcome.as_str().to_owned(),
            e.code.clone(),
        ]);
    }
    table.render()
}

/// The one-line verdict of an intact chain.
pub(crate) fn render_summary(summary: &ChainSummary) -> String {
    format!(
        "audit chain OK: {} events, last seq {}, last hash {}\n",
        summary.n_events,
        summary.last_seq,
        hex::encode(&summary.last_hash)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::{AuditOutcome, Role};
    use std::time::Duration;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    /// An intact chain of `n` events, built as the server must build it.
    fn chain(n: u64) -> Vec<pb::AuditEvent> {
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

    #[test]
    fn table_shows_actor_short_method_and_code() {
        let mut denied = AuditEventView::from(chain(2).remove(1));
        denied.actor_name = None;
        denied.actor_token_id = Some("tok-9".into());
        denied.actor_role = Some(Role::Viewer);
        denied.outcome = AuditOutcome::Denied;
        denied.status_code = 7;
        denied.code = "permission_denied".into();
        denied.target = None;
        let mut anonymous = AuditEventView::from(chain(1).remove(0));
        anonymous.seq = 10;
        anonymous.actor_name = None;
        anonymous.actor_token_id = None;
        anonymous.actor_role = None;
        let events = [AuditEventView::from(chain(1).remove(0)), denied, anonymous];
        let text = render_table(&events, at(1_700_000_062));
        assert_eq!(
            text,
            "SEQ   TIME     ACTOR   ROLE     METHOD        TARGET   OUTCOME     CODE\n  \
             1   1m ago   ci      admin    CreateToken   tok-2    succeeded   ok\n  \
             2   1m ago   tok-9   viewer   CreateToken   -        denied      permission_denied\n \
             10   1m ago   -       -        CreateToken   tok-2    succeeded   ok\n"
        );
    }

    #[test]
    fn event_json_is_stable() {
        let event = chain(1).remove(0);
        let hash = hex::encode(&event.hash);
        let json = serde_json::to_value(AuditEventView::from(event)).expect("serializes");
        assert_eq!(
            json,
            serde_json::json!({
                "seq": 1,
                "org_id": "acme",
                "time": "2023-11-14T22:13:21Z",
                "actor_token_id": "tok-1",
                "actor_name": "ci",
                "actor_role": "admin",
                "method": "/tether.v1.AdminService/CreateToken",
                "target": "tok-2",
                "outcome": "succeeded",
                "status_code": 0,
                "code": "ok",
                "message": "",
                "prev_hash": "0".repeat(64),
                "hash": hash,
            })
        );
    }

    #[test]
    fn methods_resolve_to_full_names() {
        assert_eq!(
            resolve_method("CreateToken").expect("known"),
            "/tether.v1.AdminService/CreateToken"
        );
        assert_eq!(
            resolve_method("deleteagent").expect("known"),
            "/tether.v1.AdminService/DeleteAgent"
        );
        assert_eq!(
            resolve_method("AdminService/ListOrgs").expect("known"),
            "/tether.v1.AdminService/ListOrgs"
        );
        assert_eq!(resolve_method("/x.Y/Z").expect("passed through"), "/x.Y/Z");
        assert!(matches!(
            resolve_method("NoSuchMethod"),
            Err(CliError::Usage(_))
        ));
        assert!(matches!(resolve_method(" "), Err(CliError::Usage(_))));
    }

    #[test]
    fn audit_flags_parse() {
        use crate::Cli;
        use clap::Parser as _;
        let cli = Cli::try_parse_from([
            "tetherctl",
            "audit",
            "--method",
            "CreateToken",
            "--outcome",
            "denied",
            "--since",
            "1h",
            "--limit",
            "5",
            "-o",
            "json",
        ])
        .expect("parses");
        let crate::cli::Command::Audit(args) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!(args.outcome, Some(AuditOutcome::Denied));
        assert_eq!(args.since, Some(Duration::from_secs(3_600)));
        assert_eq!(args.limit, Some(5));
        assert!(args.command.is_none() && !args.verify);

        for argv in [
            &["tetherctl", "audit", "verify"][..],
            &["tetherctl", "audit", "verify", "-o", "json"],
            &["tetherctl", "audit", "--verify"],
        ] {
            Cli::try_parse_from(argv).expect("parses");
        }
        for argv in [
            &["tetherctl", "audit", "--verify", "--method", "X"][..],
            &["tetherctl", "audit", "--limit", "3", "verify"],
            &["tetherctl", "audit", "--outcome", "maybe"],
            &["tetherctl", "audit", "--limit", "0"],
        ] {
            assert!(Cli::try_parse_from(argv).is_err(), "{argv:?}");
        }
    }
}
