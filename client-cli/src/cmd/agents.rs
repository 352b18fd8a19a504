//! `agents list`, `agents get`, `agents watch` and `agents delete`.
//!
//! Each command validates its arguments, connects, calls `FleetService`, converts the answer into
//! [`crate::view`] types and hands them to a pure renderer (`render_*`), which the unit tests
//! exercise without a server.
//!
//! The renderers live in `render`, this module's child: commands fetch, renderers format.

pub(crate) mod lookup;
pub(super) mod render;

use std::io::Write;
use std::time::SystemTime;

use tether_proto as pb;

use crate::cli::{
    AllowReclaimArgs, DeleteArgs, GetArgs, LIST_PAGE_SIZE, ListArgs, ListFormat, ObjectFormat,
    SortKey, WatchArgs,
};
use crate::client::Connection;
use crate::config::Settings;
use crate::selector::parse_selector;
use crate::view::{AgentDetailView, AgentStatus, AgentView, EventKind, Health, WatchEventView};
use crate::{CliError, write_json, write_json_line};

use super::resume::{self, Seen};
use super::{fetch_pages, print_object, required_id, write_text};
use render::{render_csv, render_detail, render_event, render_table};

/// `agents list`: fetches every page (or `--limit` agents) and prints them.
pub(crate) async fn list(
    args: ListArgs,
    settings: &Settings,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let label_selector = normalize_selector(args.selector.as_deref())?;
    let base = pb::ListAgentsRequest {
        statuses: args.statuses.iter().map(|s| s.to_pb() as i32).collect(),
        label_selector,
        os: args.os.unwrap_or_default(),
        query: args.query.unwrap_or_default(),
        page_size: 0,
        page_token: String::new(),
        include_expired: args.include_expired,
        id_prefix: String::new(),
    };

    let conn = Connection::connect(settings).await?;
    let client = conn.fleet();
    let mut agents: Vec<AgentView> =
        fetch_pages(LIST_PAGE_SIZE, args.limit, |page_size, page_token| {
            let mut client = client.clone();
            let request = pb::ListAgentsRequest {
                page_size,
                page_token,
                ..base.clone()
            };
            let conn = &conn;
            async move {
                let page = client
                    .list_agents(request)
                    .await
                    .map_err(|status| conn.error(&status, None))?
                    .into_inner();
                Ok((page.agents, page.next_page_token))
            }
        })
        .await?
        .into_iter()
        .map(AgentView::from)
        .collect();

    if let Some(key) = args.sort_by {
        sort_agents(&mut agents, key);
    }

    let now = SystemTime::now();
    let headers = !args.no_headers;
    match args.output {
        ListFormat::Table | ListFormat::Wide if agents.is_empty() => {
            if headers {
                writeln!(out, "No agents found.")?;
            }
        }
        ListFormat::Table => write_text(out, &render_table(&agents, false, headers, now))?,
        ListFormat::Wide => write_text(out, &render_table(&agents, true, headers, now))?,
        ListFormat::Json => write_json(out, &agents)?,
        ListFormat::Csv => write_text(out, &render_csv(&agents, headers))?,
        ListFormat::Name => {
            for agent in &agents {
                writeln!(out, "{}", crate::format::escape(&agent.agent_id))?;
            }
        }
    }
    Ok(())
}

/// Orders `agents` by `key`, ascending, ties by id.
pub(crate) fn sort_agents(agents: &mut [AgentView], key: SortKey) {
    fn status_rank(status: AgentStatus) -> u8 {
        match status {
            AgentStatus::Online => 0,
            AgentStatus::Stale => 1,
            AgentStatus::Offline => 2,
            AgentStatus::Expired => 3,
            AgentStatus::Unknown => 4,
        }
    }
    fn health_rank(health: Health) -> u8 {
        match health {
            Health::Ok => 0,
            Health::Warning => 1,
            Health::Critical => 2,
            Health::Unknown => 3,
        }
    }
    let cpu = |a: &AgentView| a.latest_metrics.as_ref().map(|m| m.cpu_percent);
    #[allow(clippy::cast_precision_loss, reason = "a ratio for ordering only")]
    let mem = |a: &AgentView| {
        a.latest_metrics
            .as_ref()
            .filter(|m| m.memory_total_bytes > 0)
            .map(|m| m.memory_used_bytes as f64 / m.memory_total_bytes as f64)
    };
    let by_float = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => a.total_cmp(&b),
        (a, b) => a.is_some().cmp(&b.is_some()),
    };
    agents.sort_by(|a, b| {
        let os = |x: &AgentView| {
            x.system
                .as_ref()
                .map(|s| s.os_name.to_lowercase())
                .unwrap_or_default()
        };
        let order = match key {
            SortKey::Id => std::cmp::Ordering::Equal,
            SortKey::Name => a.name.to_lowercase().cmp(&b.name.to_lowercase()),
            SortKey::Status => status_rank(a.status).cmp(&status_rank(b.status)),
            SortKey::LastSeen => a.last_seen.cmp(&b.last_seen),
            SortKey::Os => os(a).cmp(&os(b)),
            SortKey::Cpu => by_float(cpu(a), cpu(b)),
            SortKey::Mem => by_float(mem(a), mem(b)),
            SortKey::Health => health_rank(a.health).cmp(&health_rank(b.health)),
        };
        order.then_with(|| a.agent_id.cmp(&b.agent_id))
    });
}

/// `agents get`: one agent in detail.
pub(crate) async fn get(
    args: GetArgs,
    settings: &Settings,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let conn = Connection::connect(settings).await?;
    let (id, response) = lookup::call_with_agent(&conn, &args.id, |agent_id| {
        let mut fleet = conn.fleet();
        async move { fleet.get_agent(pb::GetAgentRequest { agent_id }).await }
    })
    .await?;
    let response = response.into_inner();
    let pb::GetAgentResponse {
        agent,
        recent_transitions,
    } = response;
    let agent = agent.ok_or_else(|| CliError::Server {
        code: "Internal".to_owned(),
        message: format!("the server answered without agent {id}"),
    })?;
    let detail = AgentDetailView {
        agent: agent.into(),
        recent_transitions: recent_transitions.into_iter().map(Into::into).collect(),
    };
    print_object(out, args.output, &detail, |detail| {
        render_detail(detail, SystemTime::now())
    })
}

/// `agents watch`: the snapshot, then one line per event, resumed as `cmd/resume.rs` says.
/// Each (re)subscription starts with a fresh snapshot, ended by the `synced` marker (a JSON
/// line, or a comment line in tables). Returns after `--max-events`, or with the error that no
/// retry can fix (a revoked token, say).
pub(crate) async fn watch(
    args: WatchArgs,
    settings: &Settings,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let request = pb::WatchAgentsRequest {
        label_selector: normalize_selector(args.selector.as_deref())?,
        include_metrics: args.metrics,
        include_expired: args.include_expired,
    };
    if args.max_events == Some(0) {
        return Ok(());
    }
    let conn = Connection::connect(settings).await?;
    let client = conn.fleet();
    let open = || {
        let (mut client, request) = (client.clone(), request.clone());
        async move { client.watch_agents(request).await }
    };
    resume::follow(&conn, args.max_events, open, |event| {
        let event = WatchEventView::from(event);
        let seen = match event.kind {
            EventKind::Synced => Seen::Marker,
            _ => Seen::Event,
        };
        match (args.output, &seen) {
            (ObjectFormat::Table, Seen::Marker) => {
                writeln!(out, "# snapshot complete, watching for changes")?;
            }
            (ObjectFormat::Table, Seen::Event) => {
                write_text(out, &render_event(&event, SystemTime::now()))?;
            }
            (ObjectFormat::Json, _) => write_json_line(out, &event)?,
        }
        out.flush()?;
        Ok(seen)
    })
    .await
}

/// `agents delete ID --yes`: `AdminService.DeleteAgent`. Without `--yes` nothing is sent and
/// the error says what deleting would do and how to confirm.
pub(crate) async fn delete(
    args: DeleteArgs,
    settings: &Settings,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let named = required_id(&args.id, "agent")?;
    if !args.yes {
        return Err(CliError::NotConfirmed(unconfirmed_delete_message(&named)));
    }
    let conn = Connection::connect(settings).await?;
    let (id, _) = lookup::call_with_agent(&conn, &named, |agent_id| {
        let mut admin = conn.admin();
        async move {
            admin
                .delete_agent(pb::DeleteAgentRequest { agent_id })
                .await
        }
    })
    .await?;
    writeln!(
        out,
        "Agent {id} deleted: its credential is revoked and its session ended. An agent started \
         with an enrollment token enrolls again, as a new agent; revoke that token to keep the \
         machine out."
    )?;
    Ok(())
}

/// `agents allow-reclaim ID [--ttl D]`: `AdminService.AllowAgentReclaim`.
pub(crate) async fn allow_reclaim(
    args: AllowReclaimArgs,
    settings: &Settings,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let ttl = prost_types::Duration::try_from(args.ttl)
        .map_err(|_| CliError::Usage("--ttl is too long".to_owned()))?;
    let conn = Connection::connect(settings).await?;
    let (id, response) = lookup::call_with_agent(&conn, &args.id, |agent_id| {
        let mut admin = conn.admin();
        async move {
            let request = pb::AllowAgentReclaimRequest {
                agent_id,
                ttl: Some(ttl),
            };
            admin.allow_agent_reclaim(request).await
        }
    })
    .await?;
    let response = response.into_inner();
    write_text(out, &render_reclaim_allowed(&id, response.expires_at))
}

/// What `agents allow-reclaim` prints: until when the server allows the take-over.
pub(crate) fn render_reclaim_allowed(
    id: &str,
    expires_at: Option<prost_types::Timestamp>,
) -> String {
    format!(
        "Agent {} may be reclaimed until {}: the next enrollment that reports its hardware id \
         takes it over (its id, history and pinned labels), once.\n",
        crate::format::escape(id),
        crate::format::rfc3339_opt(crate::view::time(expires_at))
    )
}

/// Why `agents delete ID` without `--yes` did nothing, and how to confirm.
fn unconfirmed_delete_message(id: &str) -> String {
    format!(
        "not deleting agent {id} without confirmation: deleting revokes its credential, ends its \
         open session and keeps it from reconnecting; the machine must enroll again with an \
         enrollment token to come back (as a new agent); run `tetherctl agents delete {id} \
         --yes` to confirm"
    )
}

/// Checks a `-l` selector locally and returns it normalised (empty when absent).
fn normalize_selector(selector: Option<&str>) -> Result<String, CliError> {
    Ok(selector
        .map(parse_selector)
        .transpose()?
        .map(|s| s.to_string())
        .unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delete_without_yes_explains_and_sends_nothing() {
        let text = unconfirmed_delete_message("a-1");
        for what in [
            "revokes its credential",
            "ends its",
            "enroll again",
            "--yes",
        ] {
            assert!(text.contains(what), "{what}: {text}");
        }
        assert!(text.contains("tetherctl agents delete a-1 --yes"), "{text}");
        // No server is contacted without --yes: an unreachable one does not matter.
        let settings = Settings {
            server: "http://127.0.0.1:1".to_owned(),
            token: crate::config::Secret::new("t"),
            tls: Default::default(),
            timeout: crate::client::DEFAULT_TIMEOUT,
        };
        let args = DeleteArgs {
            id: "a-1".into(),
            yes: false,
        };
        let mut out = Vec::new();
        let err = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(delete(args, &settings, &mut out))
            .expect_err("refused");
        assert!(matches!(err, CliError::NotConfirmed(_)), "{err:?}");
        assert_eq!(err.exit_code(), crate::error::EXIT_USAGE);
        assert!(out.is_empty());
    }

    #[test]
    fn selectors_are_normalised() {
        assert_eq!(
            normalize_selector(Some(" env = prod ")).expect("ok"),
            "env=prod"
        );
        assert_eq!(normalize_selector(None).expect("ok"), "");
        assert!(normalize_selector(Some("=x")).is_err());
    }
}
