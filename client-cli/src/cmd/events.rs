//! `events list|watch|ack|resolve|reopen|stats`: the events of the caller's org through
//! `EventService`. Rendering is pure (`render_*`), tested without a server.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::SystemTime;

use serde::Serialize;
use tether_proto as pb;

use crate::cli::{
    ChangeEventsArgs, EventSelectors, EventStatsArgs, EventsCommand, ListEventsArgs, SeriesFormat,
    SeverityArg, StateArg, StoredSelectors, WatchEventsArgs,
};
use crate::client::Connection;
use crate::config::Settings;
use crate::format::{Table, csv_record, escape, rfc3339_opt};
use crate::{CliError, write_json, write_json_line};

use super::write_text;

/// Page size `events list` asks for.
const PAGE: i32 = 500;

pub(crate) async fn dispatch(
    command: EventsCommand,
    settings: &Settings,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    match command {
        EventsCommand::List(args) => list(args, settings, out).await,
        EventsCommand::Watch(args) => watch(args, settings, out).await,
        EventsCommand::Ack(args) => change(args, Change::Ack, settings, out).await,
        EventsCommand::Resolve(args) => change(args, Change::Resolve, settings, out).await,
        EventsCommand::Reopen(args) => change(args, Change::Reopen, settings, out).await,
        EventsCommand::Stats(args) => stats(args, settings, out).await,
    }
}

/// One event as `-o json` prints it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct EventView {
    pub id: String,
    pub agent_id: String,
    pub seq: u64,
    pub time: String,
    pub kind: String,
    pub severity: &'static str,
    pub state: &'static str,
    pub count: u64,
    pub first_seen: String,
    pub last_seen: String,
    pub message: String,
    pub attributes: BTreeMap<String, String>,
    pub fingerprint: String,
    pub acknowledged_by: String,
    pub state_changed_by: String,
    pub state_changed_at: String,
}

fn time(ts: Option<prost_types::Timestamp>) -> String {
    rfc3339_opt(ts.and_then(|t| SystemTime::try_from(t).ok()))
}

fn severity_name(raw: i32) -> &'static str {
    pb::EventSeverity::try_from(raw).map_or("unknown", tether_proto::event::severity_name)
}

fn state_name(raw: i32) -> &'static str {
    match pb::EventState::try_from(raw) {
        Ok(pb::EventState::New) => "new",
        Ok(pb::EventState::Acknowledged) => "acknowledged",
        Ok(pb::EventState::Resolved) => "resolved",
        _ => "unknown",
    }
}

impl From<pb::Event> for EventView {
    fn from(e: pb::Event) -> Self {
        Self {
            id: e.event_id,
            agent_id: e.agent_id,
            seq: e.seq,
            time: time(e.time),
            kind: e.kind,
            severity: severity_name(e.severity),
            state: state_name(e.state),
            count: e.count,
            first_seen: time(e.first_seen),
            last_seen: time(e.last_seen),
            message: e.message,
            attributes: e.attributes.into_iter().collect(),
            fingerprint: e.fingerprint,
            acknowledged_by: e.acknowledged_by,
            state_changed_by: e.state_changed_by,
            state_changed_at: time(e.state_changed_at),
        }
    }
}

fn severity_to_pb(s: SeverityArg) -> pb::EventSeverity {
    match s {
        SeverityArg::Info => pb::EventSeverity::Info,
        SeverityArg::Warning => pb::EventSeverity::Warning,
        SeverityArg::Error => pb::EventSeverity::Error,
        SeverityArg::Critical => pb::EventSeverity::Critical,
    }
}

/// `ssh.*` → prefix `ssh`; anything else → exact kind.
fn kind_fields(kind: Option<&str>) -> (String, String) {
    match kind {
        Some(k) => match k.strip_suffix(".*") {
            Some(prefix) => (String::new(), prefix.to_owned()),
            None => (k.to_owned(), String::new()),
        },
        None => (String::new(), String::new()),
    }
}

fn common_filter(s: &EventSelectors) -> pb::EventFilter {
    let (kind, kind_prefix) = kind_fields(s.kind.as_deref());
    pb::EventFilter {
        agent_ids: s.agents.clone(),
        label_selector: s.selector.clone().unwrap_or_default(),
        kind,
        kind_prefix,
        min_severity: s.min_severity.map_or(0, |m| severity_to_pb(m) as i32),
        ..Default::default()
    }
}

fn stored_filter(s: &StoredSelectors) -> Result<pb::EventFilter, CliError> {
    let mut filter = common_filter(&s.common);
    if let Some(since) = s.since {
        filter.start = SystemTime::now().checked_sub(since).map(Into::into);
    }
    filter.states = s
        .states
        .iter()
        .map(|st| match st {
            StateArg::New => pb::EventState::New as i32,
            StateArg::Acknowledged => pb::EventState::Acknowledged as i32,
            StateArg::Resolved => pb::EventState::Resolved as i32,
        })
        .collect();
    for pair in &s.attributes {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| CliError::Usage(format!("--attr {pair:?}: expected KEY=VALUE")))?;
        filter.attributes.insert(k.to_owned(), v.to_owned());
    }
    Ok(filter)
}

fn is_empty(s: &StoredSelectors) -> bool {
    s.common.agents.is_empty()
        && s.common.selector.is_none()
        && s.common.kind.is_none()
        && s.common.min_severity.is_none()
        && s.since.is_none()
        && s.states.is_empty()
        && s.attributes.is_empty()
}

async fn list(
    args: ListEventsArgs,
    settings: &Settings,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let filter = stored_filter(&args.select)?;
    let conn = Connection::connect(settings).await?;
    let mut client = conn.events();
    let limit = args.limit.map_or(usize::MAX, |n| n as usize);
    let mut events = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_events(pb::ListEventsRequest {
                filter: Some(filter.clone()),
                page_size: PAGE,
                page_token: token,
            })
            .await
            .map_err(|status| conn.error(&status, None))?
            .into_inner();
        events.extend(page.events.into_iter().map(EventView::from));
        if page.next_page_token.is_empty() || events.len() >= limit {
            break;
        }
        token = page.next_page_token;
    }
    events.truncate(limit);
    match args.output {
        SeriesFormat::Table => write_text(out, &render_table(&events)),
        SeriesFormat::Json => write_json(out, &events),
        SeriesFormat::Csv => write_text(out, &render_csv(&events)),
    }
}

pub(crate) fn render_table(events: &[EventView]) -> String {
    if events.is_empty() {
        return "No events.\n".to_owned();
    }
    let mut table = Table::new([
        "ID", "TIME", "AGENT", "SEVERITY", "KIND", "STATE", "COUNT", "MESSAGE",
    ])
    .align_right(6);
    for e in events {
        let message = e.message.lines().next().unwrap_or("");
        table.push([
            escape(&e.id).into_owned(),
            e.time.clone(),
            escape(&e.agent_id).into_owned(),
            e.severity.to_owned(),
            escape(&e.kind).into_owned(),
            e.state.to_owned(),
            e.count.to_string(),
            escape(message).into_owned(),
        ]);
    }
    table.render()
}

pub(crate) fn render_csv(events: &[EventView]) -> String {
    let mut out = csv_record([
        "id",
        "time",
        "agent_id",
        "seq",
        "severity",
        "kind",
        "state",
        "count",
        "first_seen",
        "last_seen",
        "message",
        "attributes",
        "fingerprint",
        "acknowledged_by",
    ]);
    for e in events {
        let attributes: Vec<String> = e
            .attributes
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        out.push_str(&csv_record([
            e.id.as_str(),
            &e.time,
            &e.agent_id,
            &e.seq.to_string(),
            e.severity,
            &e.kind,
            e.state,
            &e.count.to_string(),
            &e.first_seen,
            &e.last_seen,
            &e.message,
            &attributes.join(";"),
            &e.fingerprint,
            &e.acknowledged_by,
        ]));
    }
    out
}

/// One watch line as `-o json` prints it.
#[derive(Serialize)]
struct ChangeView {
    change: &'static str,
    cursor: String,
    event: Option<EventView>,
}

fn change_name(raw: i32) -> &'static str {
    match pb::EventChangeKind::try_from(raw) {
        Ok(pb::EventChangeKind::Created) => "created",
        Ok(pb::EventChangeKind::Repeated) => "repeated",
        Ok(pb::EventChangeKind::Acknowledged) => "acknowledged",
        Ok(pb::EventChangeKind::Resolved) => "resolved",
        Ok(pb::EventChangeKind::Reopened) => "reopened",
        Ok(pb::EventChangeKind::CaughtUp) => "caught-up",
        _ => "unknown",
    }
}

async fn watch(
    args: WatchEventsArgs,
    settings: &Settings,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let conn = Connection::connect(settings).await?;
    let mut stream = conn
        .events()
        .watch_events(pb::WatchEventsRequest {
            filter: Some(common_filter(&args.select)),
            cursor: args.cursor.unwrap_or_default(),
        })
        .await
        .map_err(|status| conn.error(&status, None))?
        .into_inner();
    while let Some(message) = stream
        .message()
        .await
        .map_err(|status| conn.error(&status, None))?
    {
        let view = ChangeView {
            change: change_name(message.change),
            cursor: message.cursor,
            event: message.event.map(EventView::from),
        };
        match args.output {
            SeriesFormat::Json => write_json_line(out, &view)?,
            SeriesFormat::Table | SeriesFormat::Csv => write_text(out, &render_change(&view))?,
        }
        out.flush()?;
    }
    Ok(())
}

fn render_change(view: &ChangeView) -> String {
    match &view.event {
        None => format!("-- {} (cursor {})\n", view.change, view.cursor),
        Some(e) => format!(
            "{} {:<12} {:<8} {} {} {} ×{} (cursor {})\n",
            e.time,
            view.change,
            e.severity,
            escape(&e.agent_id),
            escape(&e.kind),
            escape(e.message.lines().next().unwrap_or("")),
            e.count,
            view.cursor
        ),
    }
}

#[derive(Clone, Copy)]
enum Change {
    Ack,
    Resolve,
    Reopen,
}

async fn change(
    args: ChangeEventsArgs,
    what: Change,
    settings: &Settings,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let by_filter = args.ids.is_empty();
    if by_filter && is_empty(&args.select) && !args.all {
        return Err(CliError::Usage(
            "give event ids, a selector (--agent, -l, --kind, --min-severity, --since, --state, \
             --attr), or --all"
                .to_owned(),
        ));
    }
    let filter = by_filter.then(|| stored_filter(&args.select)).transpose()?;
    let ids = args.ids;
    let conn = Connection::connect(settings).await?;
    let mut client = conn.events();
    let changed = match what {
        Change::Ack => client
            .acknowledge_events(pb::AcknowledgeEventsRequest {
                event_ids: ids,
                filter,
            })
            .await
            .map(|r| r.into_inner().changed),
        Change::Resolve => client
            .resolve_events(pb::ResolveEventsRequest {
                event_ids: ids,
                filter,
            })
            .await
            .map(|r| r.into_inner().changed),
        Change::Reopen => client
            .reopen_events(pb::ReopenEventsRequest {
                event_ids: ids,
                filter,
            })
            .await
            .map(|r| r.into_inner().changed),
    }
    .map_err(|status| conn.error(&status, Some("event")))?;
    let verb = match what {
        Change::Ack => "acknowledged",
        Change::Resolve => "resolved",
        Change::Reopen => "reopened",
    };
    write_text(out, &format!("{changed} events {verb}\n"))
}

/// `events stats` as `-o json` prints it.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub(crate) struct StatsView {
    pub total: u64,
    pub rate_per_minute: f64,
    pub previous_rate_per_minute: f64,
    pub rate_change_percent: Option<f64>,
    pub steps: Vec<StepView>,
    pub top_kinds: Vec<(String, u64)>,
    pub top_agents: Vec<(String, u64)>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub(crate) struct StepView {
    pub time: String,
    pub total: u64,
    pub info: u64,
    pub warning: u64,
    pub error: u64,
    pub critical: u64,
}

impl From<pb::GetEventStatsResponse> for StatsView {
    fn from(s: pb::GetEventStatsResponse) -> Self {
        Self {
            total: s.total,
            rate_per_minute: s.rate_per_minute,
            previous_rate_per_minute: s.previous_rate_per_minute,
            rate_change_percent: s.rate_change_percent,
            steps: s
                .steps
                .into_iter()
                .map(|st| StepView {
                    time: time(st.time),
                    total: st.total,
                    info: st.info,
                    warning: st.warning,
                    error: st.error,
                    critical: st.critical,
                })
                .collect(),
            top_kinds: s.top_kinds.into_iter().map(|k| (k.kind, k.count)).collect(),
            top_agents: s
                .top_agents
                .into_iter()
                .map(|a| (a.agent_id, a.count))
                .collect(),
        }
    }
}

async fn stats(
    args: EventStatsArgs,
    settings: &Settings,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let filter = common_filter(&args.select);
    let now = SystemTime::now();
    let request = pb::GetEventStatsRequest {
        agent_ids: filter.agent_ids,
        label_selector: filter.label_selector,
        kind: filter.kind,
        kind_prefix: filter.kind_prefix,
        min_severity: filter.min_severity,
        start: now.checked_sub(args.since).map(Into::into),
        end: Some(now.into()),
        step: prost_types::Duration::try_from(args.step).ok(),
        top: args.top,
        rate_window: None,
    };
    let conn = Connection::connect(settings).await?;
    let view = StatsView::from(
        conn.events()
            .get_event_stats(request)
            .await
            .map_err(|status| conn.error(&status, None))?
            .into_inner(),
    );
    match args.output {
        SeriesFormat::Table => write_text(out, &render_stats(&view)),
        SeriesFormat::Json => write_json(out, &view),
        SeriesFormat::Csv => write_text(out, &render_stats_csv(&view)),
    }
}

pub(crate) fn render_stats(view: &StatsView) -> String {
    let change = view
        .rate_change_percent
        .map_or_else(|| "n/a".to_owned(), |p| format!("{p:+.1}%"));
    let mut out = format!(
        "Total: {}   Rate: {:.2}/min (previous {:.2}/min, {change})\n\n",
        view.total, view.rate_per_minute, view.previous_rate_per_minute
    );
    let mut steps = Table::new(["STEP", "TOTAL", "INFO", "WARNING", "ERROR", "CRITICAL"]);
    for i in 1..=5 {
        steps = steps.align_right(i);
    }
    for s in &view.steps {
        steps.push([
            s.time.clone(),
            s.total.to_string(),
            s.info.to_string(),
            s.warning.to_string(),
            s.error.to_string(),
            s.critical.to_string(),
        ]);
    }
    out.push_str(&steps.render());
    for (title, rows) in [("KIND", &view.top_kinds), ("AGENT", &view.top_agents)] {
        let mut table = Table::new([format!("TOP {title}"), "COUNT".to_owned()]).align_right(1);
        for (name, n) in rows {
            table.push([escape(name).into_owned(), n.to_string()]);
        }
        out.push('\n');
        out.push_str(&table.render());
    }
    out
}

pub(crate) fn render_stats_csv(view: &StatsView) -> String {
    let mut out = csv_record(["time", "total", "info", "warning", "error", "critical"]);
    for s in &view.steps {
        out.push_str(&csv_record([
            s.time.clone(),
            s.total.to_string(),
            s.info.to_string(),
            s.warning.to_string(),
            s.error.to_string(),
            s.critical.to_string(),
        ]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> EventView {
        EventView {
            id: "00000000000000010000000000000001ag-1".into(),
            agent_id: "ag-1".into(),
            seq: 1,
            time: "2026-11-30T09:00:00Z".into(),
            kind: "ssh.login_failed".into(),
            severity: "warning",
            state: "new",
            count: 3,
            first_seen: "2026-11-30T09:00:00Z".into(),
            last_seen: "2026-11-30T09:05:00Z".into(),
            message: "failed password\nsecond line".into(),
            attributes: BTreeMap::from([("user".into(), "root".into())]),
            fingerprint: "fp".into(),
            acknowledged_by: String::new(),
            state_changed_by: String::new(),
            state_changed_at: "-".into(),
        }
    }

    #[test]
    fn a_table_row_shows_the_first_line_and_the_count() {
        let text = render_table(&[event()]);
        assert!(text.contains("ssh.login_failed"), "{text}");
        assert!(text.contains("failed password"), "{text}");
        assert!(!text.contains("second line"), "{text}");
        assert!(
            text.lines().nth(1).is_some_and(|l| l.contains(" 3 ")),
            "{text}"
        );
        assert_eq!(render_table(&[]), "No events.\n");
    }

    #[test]
    fn csv_keeps_every_field_quoted_and_attributes_joined() {
        let text = render_csv(&[event()]);
        let mut lines = text.lines();
        assert!(
            lines
                .next()
                .is_some_and(|h| h.starts_with("id,time,agent_id"))
        );
        assert!(text.contains("user=root"), "{text}");
        assert!(text.contains("\"failed password\nsecond line\""), "{text}");
    }

    #[test]
    fn a_kind_ending_in_star_is_a_prefix() {
        assert_eq!(
            kind_fields(Some("ssh.*")),
            (String::new(), "ssh".to_owned())
        );
        assert_eq!(
            kind_fields(Some("ssh.root")),
            ("ssh.root".to_owned(), String::new())
        );
    }

    #[test]
    fn stats_render_rates_steps_and_tops() {
        let view = StatsView {
            total: 5,
            rate_per_minute: 1.5,
            previous_rate_per_minute: 1.0,
            rate_change_percent: Some(50.0),
            steps: vec![StepView {
                time: "2026-11-30T09:00:00Z".into(),
                total: 5,
                warning: 5,
                ..StepView::default()
            }],
            top_kinds: vec![("disk.full".into(), 5)],
            top_agents: vec![("ag-1".into(), 5)],
        };
        let text = render_stats(&view);
        assert!(text.contains("+50.0%"), "{text}");
        assert!(text.contains("disk.full"), "{text}");
        assert!(render_stats_csv(&view).lines().count() == 2);
    }
}
