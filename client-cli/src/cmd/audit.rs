//! `audit` and `audit verify`: the org's audit events through `AdminService` (admin role), and a
//! check of their hash chain.
//!
//! The chain check itself is the pure [`verify_chain`] in the child module `chain`; this module
//! fetches the events, resolves `--method` names, and renders events and verdicts.

mod chain;

use std::future::Future;
use std::io::Write;
use std::pin::Pin;
use std::time::SystemTime;

use prost::Message as _;
use tether_proto as pb;
pub use tether_proto::audit::event_hash;

pub use chain::{ChainError, ChainSummary, verify_chain};

use crate::cli::{AuditArgs, AuditCommand, ObjectFormat};
use crate::client::Connection;
use crate::config::Settings;
use crate::format::{NONE, Table, relative_time_opt};
use crate::view::{AuditChainView, AuditEventView};
use crate::{CliError, write_json};

use super::{fetch_last_pages, fetch_pages, print_list, since_time, write_text};

/// Events requested per page (the server's maximum).
pub const AUDIT_PAGE_SIZE: u32 = 1_000;

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

/// `audit`: the matching events, newest first (only the newest `--limit` with it).
async fn list(
    args: AuditArgs,
    settings: &Settings,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let method = args.method.as_deref().map(resolve_method).transpose()?;
    let since = args.since.map(since_time).transpose()?;
    let base = pb::ListAuditEventsRequest {
        method: method.unwrap_or_default(),
        actor_token_id: args.actor.map(|a| a.trim().to_owned()).unwrap_or_default(),
        outcome: args.outcome.map_or(0, |o| o.to_pb() as i32),
        since: since.map(Into::into),
        page_size: 0,
        page_token: String::new(),
    };
    let conn = Connection::connect(settings).await?;
    // The server lists oldest first: read every matching page, keep the newest `--limit`.
    let newest = fetch_last_pages(AUDIT_PAGE_SIZE, args.limit, pages(&conn, base)).await?;
    let events: Vec<AuditEventView> = newest.into_iter().rev().map(AuditEventView::from).collect();
    print_list(out, args.output, &events, "audit events", |events| {
        render_table(events, SystemTime::now())
    })
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
        ObjectFormat::Table => write_text(out, &render_summary(&summary))?,
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
    fetch_pages(AUDIT_PAGE_SIZE, limit, pages(conn, base)).await
}

/// One page of audit events.
type AuditPage = Result<(Vec<pb::AuditEvent>, String), CliError>;

/// Fetches the page of `ListAuditEvents` from `base` of a size and token, for
/// [`fetch_pages`] and [`fetch_last_pages`].
#[allow(
    clippy::needless_lifetimes,
    reason = "the futures borrow `conn`; elided, the boxed future's bound cannot name that"
)]
fn pages<'a>(
    conn: &'a Connection,
    base: pb::ListAuditEventsRequest,
) -> impl FnMut(i32, String) -> Pin<Box<dyn Future<Output = AuditPage> + Send + 'a>> {
    let client = conn.admin();
    move |page_size, page_token| {
        let mut client = client.clone();
        let request = pb::ListAuditEventsRequest {
            page_size,
            page_token,
            ..base.clone()
        };
        Box::pin(async move {
            let page = client
                .list_audit_events(request)
                .await
                .map_err(|status| conn.error(&status, None))?
                .into_inner();
            Ok((page.events, page.next_page_token))
        })
    }
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
    use super::chain::tests::chain;
    use super::*;
    use crate::view::{AuditOutcome, Role};
    use std::time::Duration;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
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
