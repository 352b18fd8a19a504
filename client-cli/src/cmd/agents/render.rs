//! The pure renderers of the `agents` commands: the `agents list` table and CSV, the `agents get`
//! detail page and the `agents watch` line. Each is a function of a view and the current time,
//! unit-tested without a server. Every text an agent chose goes out escaped (`format::escape`,
//! which `Table` and `key_values` apply to every cell and value).

use std::time::SystemTime;

use crate::format::{
    NONE, Table, csv_record, csv_time, escape, format_bytes, format_percent, indent, key_values,
    labels_text, long_duration, or_none, relative_time_detail, relative_time_opt, rfc3339_opt,
    usage_percent,
};
use crate::view::{
    AgentDetailView, AgentStatus, AgentView, EventKind, TransitionView, WatchEventView,
};

/// STATUS cell: the status, plus kubectl-style flags (`online,duplicate-hwid,identity-conflict`).
fn status_text(agent: &AgentView) -> String {
    let mut text = agent.status.as_str().to_owned();
    if agent.duplicate_hardware_id {
        text.push_str(",duplicate-hwid");
    }
    if agent.identity_conflict {
        text.push_str(",identity-conflict");
    }
    text
}

/// Whether an agent's latest metrics describe it now: not once it is offline or expired (its
/// last CPU and health are history then, shown as such).
pub(crate) fn metrics_current(agent: &AgentView) -> bool {
    matches!(agent.status, AgentStatus::Online | AgentStatus::Stale)
}

/// Renders `agents list` as a table; `wide` adds host, versions, uptime and labels; `headers`
/// false leaves out the header row. CPU, MEM and HEALTH show `-` for an agent that is
/// offline or expired: its last figures are not its state.
pub(crate) fn render_table(
    agents: &[AgentView],
    wide: bool,
    headers: bool,
    now: SystemTime,
) -> String {
    let mut columns = vec![
        "ID",
        "NAME",
        "STATUS",
        "LAST SEEN",
        "OS",
        "CPU",
        "MEM",
        "HEALTH",
    ];
    if wide {
        columns.extend([
            "HOSTNAME",
            "OS VERSION",
            "ARCH",
            "AGENT",
            "UPTIME",
            "LABELS",
        ]);
    }
    let mut table = Table::new(columns)
        .headers(headers)
        .align_right(5)
        .align_right(6);
    for agent in agents {
        let system = agent.system.as_ref();
        let current = metrics_current(agent);
        let metrics = agent.latest_metrics.as_ref().filter(|_| current);
        let mut row = vec![
            agent.agent_id.clone(),
            or_none(&agent.name),
            status_text(agent),
            relative_time_opt(now, agent.last_seen),
            or_none(system.map_or("", |s| s.os_name.as_str())),
            metrics.map_or_else(|| NONE.to_owned(), |m| format_percent(m.cpu_percent)),
            metrics.map_or_else(
                || NONE.to_owned(),
                |m| usage_percent(m.memory_used_bytes, m.memory_total_bytes),
            ),
            if current {
                agent.health.as_str().to_owned()
            } else {
                NONE.to_owned()
            },
        ];
        if wide {
            row.extend([
                or_none(system.map_or("", |s| s.hostname.as_str())),
                or_none(system.map_or("", |s| s.os_version.as_str())),
                or_none(system.map_or("", |s| s.architecture.as_str())),
                or_none(&agent.agent_version),
                metrics
                    .and_then(|m| m.uptime_seconds)
                    .filter(|_| current)
                    .map_or_else(|| NONE.to_owned(), long_duration),
                or_none(&labels_text(&agent.labels)),
            ]);
        }
        table.push(row);
    }
    table.render()
}

/// Renders `agents list -o csv`: raw values (RFC 3339 times, byte counts), a header row unless
/// `headers` is false.
pub(crate) fn render_csv(agents: &[AgentView], headers: bool) -> String {
    let header = csv_record([
        "agent_id",
        "name",
        "status",
        "status_reason",
        "status_since",
        "last_seen",
        "health",
        "duplicate_hardware_id",
        "identity_conflict",
        "hostname",
        "os_name",
        "os_version",
        "architecture",
        "agent_version",
        "cpu_percent",
        "memory_used_bytes",
        "memory_total_bytes",
        "labels",
    ]);
    let mut text = if headers { header } else { String::new() };
    for agent in agents {
        let system = agent.system.as_ref();
        let metrics = agent.latest_metrics.as_ref();
        let sys = |f: fn(&crate::view::SystemInfoView) -> &str| system.map_or("", f).to_owned();
        text.push_str(&csv_record([
            agent.agent_id.clone(),
            agent.name.clone(),
            agent.status.as_str().to_owned(),
            agent.status_reason.as_str().to_owned(),
            csv_time(agent.status_since),
            csv_time(agent.last_seen),
            agent.health.as_str().to_owned(),
            agent.duplicate_hardware_id.to_string(),
            agent.identity_conflict.to_string(),
            sys(|s| &s.hostname),
            sys(|s| &s.os_name),
            sys(|s| &s.os_version),
            sys(|s| &s.architecture),
            agent.agent_version.clone(),
            metrics
                .map(|m| m.cpu_percent.to_string())
                .unwrap_or_default(),
            metrics
                .map(|m| m.memory_used_bytes.to_string())
                .unwrap_or_default(),
            metrics
                .map(|m| m.memory_total_bytes.to_string())
                .unwrap_or_default(),
            labels_text(&agent.labels),
        ]));
    }
    text
}

/// Renders `agents get` for a person.
pub(crate) fn render_detail(detail: &AgentDetailView, now: SystemTime) -> String {
    let agent = &detail.agent;
    let when = |t: Option<SystemTime>| relative_time_detail(now, t);
    let mut status = format!(
        "{} ({}",
        agent.status.as_str(),
        agent.status_reason.as_str()
    );
    if agent.status_since.is_some() {
        status.push_str(&format!(
            ", since {}",
            relative_time_opt(now, agent.status_since)
        ));
    }
    status.push(')');
    let mut pairs = vec![
        ("ID", agent.agent_id.clone()),
        ("Name", agent.name.clone()),
        ("Org", agent.org_id.clone()),
        ("Status", status),
        ("Last seen", when(agent.last_seen)),
        ("Enrolled", when(agent.enrolled_at)),
        (
            "Session",
            agent
                .session_id
                .clone()
                .unwrap_or_else(|| "not connected".to_owned()),
        ),
        ("Health", agent.health.as_str().to_owned()),
        ("Agent version", or_none(&agent.agent_version)),
        ("Durable seq", agent.last_durable_seq.to_string()),
    ];
    if agent.duplicate_hardware_id {
        pairs.push((
            "Warning",
            "another agent reports this hardware id (cloned image? give each clone its own \
             with tether-agent --hardware-id)"
                .to_owned(),
        ));
    }
    if agent.identity_conflict {
        pairs.push((
            "Conflict",
            agent.identity_conflict_detail.clone().unwrap_or_else(|| {
                "two machines share this agent's credential (a copied state directory)".to_owned()
            }),
        ));
    }
    let mut text = key_values(0, &pairs);

    text.push_str("\nSystem:\n");
    match &agent.system {
        Some(s) => {
            let os = [s.os_name.as_str(), s.os_version.as_str()]
                .iter()
                .filter(|p| !p.is_empty())
                .copied()
                .collect::<Vec<_>>()
                .join(" ");
            text.push_str(&key_values(
                2,
                &[
                    ("Hostname", or_none(&s.hostname)),
                    ("OS", or_none(&os)),
                    ("Kernel", or_none(&s.kernel_version)),
                    ("Architecture", or_none(&s.architecture)),
                    (
                        "CPU",
                        format!("{} ({} cores)", or_none(&s.cpu_model), s.logical_cores),
                    ),
                    ("Memory", format_bytes(s.total_memory_bytes)),
                    ("Hardware id", or_none(&s.hardware_id)),
                    ("Booted", when(s.boot_time)),
                ],
            ));
        }
        None => text.push_str("  (not reported yet)\n"),
    }

    text.push_str("\nLabels:\n");
    if agent.labels.is_empty() {
        text.push_str("  (none)\n");
    }
    for (k, v) in &agent.labels {
        text.push_str(&format!("  {}={}\n", escape(k), escape(v)));
    }

    match &agent.latest_metrics {
        Some(m) => {
            let stale = if metrics_current(agent) {
                ""
            } else {
                // Offline or expired: the figures are the last ones it sent, not its state.
                ", last reported before it went offline"
            };
            text.push_str(&format!(
                "\nLatest metrics (seq {}, {}{stale}):\n",
                m.seq,
                relative_time_opt(now, m.time)
            ));
            let mut pairs = vec![
                ("CPU", format_percent(m.cpu_percent)),
                (
                    "Load",
                    format!("{:.2} {:.2} {:.2}", m.load_1, m.load_5, m.load_15),
                ),
                ("Memory", used_of(m.memory_used_bytes, m.memory_total_bytes)),
                ("Swap", used_of(m.swap_used_bytes, m.swap_total_bytes)),
                (
                    "Network",
                    format!(
                        "rx {}, tx {} since boot",
                        format_bytes(m.network_rx_bytes),
                        format_bytes(m.network_tx_bytes)
                    ),
                ),
                (
                    "Uptime",
                    m.uptime_seconds
                        .map_or_else(|| NONE.to_owned(), long_duration),
                ),
                ("Processes", m.process_count.to_string()),
            ];
            if m.disks.is_empty() {
                pairs.push(("Disks", NONE.to_owned()));
            }
            text.push_str(&key_values(2, &pairs));
            if !m.disks.is_empty() {
                text.push_str("  Disks:\n");
                let mut table = Table::new(["MOUNT", "USED", "TOTAL", "USE%"])
                    .align_right(1)
                    .align_right(2)
                    .align_right(3);
                for d in &m.disks {
                    table.push([
                        d.mount_point.clone(),
                        format_bytes(d.used_bytes),
                        format_bytes(d.total_bytes),
                        usage_percent(d.used_bytes, d.total_bytes),
                    ]);
                }
                text.push_str(&indent(&table.render(), 4));
            }
        }
        None => text.push_str("\nLatest metrics: none yet\n"),
    }

    text.push_str("\nRecent transitions:\n");
    if detail.recent_transitions.is_empty() {
        text.push_str("  (none)\n");
    } else {
        text.push_str(&indent(
            &render_transitions(&detail.recent_transitions, now),
            2,
        ));
    }
    text
}

fn render_transitions(transitions: &[TransitionView], now: SystemTime) -> String {
    let mut table = Table::new(["WHEN", "FROM", "TO", "REASON", "TIME"]);
    for t in transitions {
        table.push([
            relative_time_opt(now, t.time),
            t.from_status.as_str().to_owned(),
            t.to_status.as_str().to_owned(),
            t.reason.as_str().to_owned(),
            rfc3339_opt(t.time),
        ]);
    }
    table.render()
}

/// One `agents watch` line: time, event kind, agent id, name, then what changed.
pub(crate) fn render_event(event: &WatchEventView, now: SystemTime) -> String {
    let time = rfc3339_opt(event.time.or(Some(now)));
    let kind = event.kind.as_str();
    let Some(agent) = &event.agent else {
        return format!("{time}  {kind}\n");
    };
    let detail = match event.kind {
        EventKind::StatusChanged => format!(
            "{} -> {} ({})",
            event.previous_status.map_or("unknown", |s| s.as_str()),
            status_text(agent),
            agent.status_reason.as_str()
        ),
        EventKind::MetricsUpdated => match &agent.latest_metrics {
            Some(m) => format!(
                "cpu {} mem {} health {}",
                format_percent(m.cpu_percent),
                usage_percent(m.memory_used_bytes, m.memory_total_bytes),
                agent.health.as_str()
            ),
            None => format!("health {}", agent.health.as_str()),
        },
        EventKind::LabelsChanged => {
            let labels = labels_text(&agent.labels);
            if labels.is_empty() {
                "labels: (none)".to_owned()
            } else {
                format!("labels: {}", escape(&labels))
            }
        }
        EventKind::Removed => "removed".to_owned(),
        EventKind::FlagsChanged => status_text(agent),
        EventKind::Snapshot | EventKind::Registered | EventKind::Synced | EventKind::Unknown => {
            format!(
                "{}, last seen {}",
                status_text(agent),
                relative_time_opt(now, agent.last_seen)
            )
        }
    };
    let name = or_none(&agent.name);
    format!(
        "{time}  {kind:<15}  {}  {}  {detail}\n",
        escape(&agent.agent_id),
        escape(&name)
    )
}

fn used_of(used: u64, total: u64) -> String {
    format!(
        "{} / {} ({})",
        format_bytes(used),
        format_bytes(total),
        usage_percent(used, total)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::{AgentStatus, Health, MetricsSampleView, StatusReason, SystemInfoView};
    use std::collections::BTreeMap;
    use std::time::Duration;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn agent(id: &str, name: &str, status: AgentStatus, last_seen: u64) -> AgentView {
        AgentView {
            agent_id: id.into(),
            org_id: "o".into(),
            name: name.into(),
            status,
            status_reason: StatusReason::Reconnected,
            status_since: Some(at(last_seen)),
            last_seen: Some(at(last_seen)),
            enrolled_at: None,
            session_id: None,
            health: Health::Ok,
            duplicate_hardware_id: false,
            identity_conflict: false,
            identity_conflict_detail: None,
            agent_version: "0.1.0".into(),
            last_durable_seq: 0,
            labels: BTreeMap::from([("env".into(), "prod".into()), ("a".into(), "b".into())]),
            system: Some(SystemInfoView {
                hostname: format!("{name}.local"),
                os_name: "linux".into(),
                os_version: "6".into(),
                kernel_version: String::new(),
                architecture: "x86_64".into(),
                cpu_model: String::new(),
                logical_cores: 2,
                total_memory_bytes: 0,
                hardware_id: String::new(),
                boot_time: None,
                agent_version: String::new(),
            }),
            latest_metrics: Some(MetricsSampleView {
                seq: 1,
                time: Some(at(last_seen)),
                cpu_percent: 7.25,
                load_1: 0.0,
                load_5: 0.0,
                load_15: 0.0,
                memory_used_bytes: 1,
                memory_total_bytes: 4,
                swap_used_bytes: 0,
                swap_total_bytes: 0,
                disks: Vec::new(),
                network_rx_bytes: 0,
                network_tx_bytes: 0,
                uptime_seconds: Some(Duration::from_secs(7_800)),
                process_count: 9,
            }),
        }
    }

    #[test]
    fn list_table() {
        let mut dup = agent("a-22", "db", AgentStatus::Stale, 880);
        dup.duplicate_hardware_id = true;
        dup.latest_metrics = None;
        let text = render_table(
            &[agent("a-1", "web-1", AgentStatus::Online, 988), dup],
            false,
            true,
            at(1_000),
        );
        assert_eq!(
            text,
            "ID     NAME    STATUS                 LAST SEEN   OS       CPU   MEM   HEALTH\n\
             a-1    web-1   online                 12s ago     linux   7.2%   25%   ok\n\
             a-22   db      stale,duplicate-hwid   2m ago      linux      -     -   ok\n"
        );
    }

    #[test]
    fn no_headers_leaves_out_the_header_row_of_tables_and_csv() {
        let agents = [agent("a-1", "web-1", AgentStatus::Online, 988)];
        let table = render_table(&agents, false, false, at(1_000));
        assert_eq!(
            table,
            "a-1   web-1   online   12s ago   linux   7.2%   25%   ok\n"
        );
        let csv = render_csv(&agents, false);
        assert_eq!(csv.lines().count(), 1, "{csv}");
        assert!(csv.starts_with("a-1,web-1,online,"), "{csv}");
    }

    #[test]
    fn offline_and_expired_agents_show_their_last_metrics_as_history() {
        for status in [AgentStatus::Offline, AgentStatus::Expired] {
            let gone = agent("a-9", "gone", status, 100);
            let table = render_table(std::slice::from_ref(&gone), false, true, at(1_000));
            let row = table.lines().nth(1).expect("row");
            let cells: Vec<&str> = row.split_whitespace().collect();
            assert_eq!(cells[cells.len() - 3..], ["-", "-", "-"], "{row}");
            let detail = render_detail(
                &AgentDetailView {
                    agent: gone,
                    recent_transitions: Vec::new(),
                },
                at(1_000),
            );
            assert!(
                detail.contains("last reported before it went offline):"),
                "{detail}"
            );
        }
    }

    #[test]
    fn wide_table_adds_columns() {
        let text = render_table(
            &[agent("a-1", "web-1", AgentStatus::Online, 988)],
            true,
            true,
            at(1_000),
        );
        let header = text.lines().next().expect("header");
        assert!(
            header.ends_with("HOSTNAME      OS VERSION   ARCH     AGENT   UPTIME   LABELS"),
            "{header}"
        );
        assert!(text.contains("web-1.local"), "{text}");
        assert!(text.contains("2h 10m"), "{text}");
        assert!(text.contains("a=b,env=prod"), "{text}");
    }

    #[test]
    fn csv_has_header_and_quotes_labels() {
        let text = render_csv(&[agent("a-1", "web-1", AgentStatus::Online, 988)], true);
        let mut lines = text.lines();
        assert!(
            lines
                .next()
                .expect("header")
                .starts_with("agent_id,name,status,")
        );
        let row = lines.next().expect("row");
        assert!(
            row.starts_with("a-1,web-1,online,reconnected,1970-01-01T00:16:28Z,"),
            "{row}"
        );
        assert!(row.ends_with(",7.25,1,4,\"a=b,env=prod\""), "{row}");
    }

    #[test]
    fn detail_view() {
        let detail = AgentDetailView {
            agent: agent("a-1", "web-1", AgentStatus::Online, 988),
            recent_transitions: vec![TransitionView {
                time: Some(at(700)),
                from_status: AgentStatus::Offline,
                to_status: AgentStatus::Online,
                reason: StatusReason::Reconnected,
            }],
        };
        let text = render_detail(&detail, at(1_000));
        assert!(
            text.contains("Status:         online (reconnected, since 12s ago)"),
            "{text}"
        );
        assert!(text.contains("Session:        not connected"), "{text}");
        assert!(text.contains("  env=prod\n"), "{text}");
        assert!(text.contains("Latest metrics (seq 1, 12s ago):"), "{text}");
        assert!(
            text.contains("5m ago   offline   online   reconnected"),
            "{text}"
        );
    }

    #[test]
    fn event_lines() {
        let event = WatchEventView {
            kind: EventKind::StatusChanged,
            time: Some(at(1_000)),
            revision: 5,
            previous_status: Some(AgentStatus::Online),
            agent: Some(agent("a-1", "web-1", AgentStatus::Stale, 985)),
        };
        assert_eq!(
            render_event(&event, at(1_000)),
            "1970-01-01T00:16:40Z  status_changed   a-1  web-1  online -> stale (reconnected)\n"
        );
    }

    #[test]
    fn identity_flags_show_in_the_table_the_detail_and_the_watch() {
        let mut agent = agent("a-1", "web-1", AgentStatus::Online, 988);
        agent.duplicate_hardware_id = true;
        agent.identity_conflict = true;
        agent.identity_conflict_detail = Some("two machines share this agent's credential".into());
        let table = render_table(std::slice::from_ref(&agent), false, true, at(1_000));
        assert!(
            table.contains("online,duplicate-hwid,identity-conflict"),
            "{table}"
        );
        let detail = render_detail(
            &AgentDetailView {
                agent: agent.clone(),
                recent_transitions: Vec::new(),
            },
            at(1_000),
        );
        assert!(
            detail.contains("Conflict:       two machines share this agent's credential"),
            "{detail}"
        );
        assert!(detail.contains("--hardware-id"), "{detail}");
        let line = render_event(
            &WatchEventView {
                kind: EventKind::FlagsChanged,
                time: Some(at(1_000)),
                revision: 9,
                previous_status: None,
                agent: Some(agent),
            },
            at(1_000),
        );
        assert!(
            line.ends_with(
                "flags_changed    a-1  web-1  online,duplicate-hwid,identity-conflict\n"
            ),
            "{line:?}"
        );
    }
}
