//! `metrics`, `summary` and `config`: read-only views of one agent's history and of the fleet.

use std::io::Write;
use std::time::{Duration, SystemTime};

use tether_proto as pb;

use crate::cli::{MetricsArgs, ObjectOutput, SeriesFormat, VersionArgs};
use crate::client::Connection;
use crate::config::Settings;
use crate::format::{
    NONE, Table, csv_record, csv_time, escape, format_bytes, format_percent, format_rate, indent,
    key_values, long_duration, or_none, rfc3339_opt, usage_percent,
};
use crate::view::{MetricsPointView, ServerConfigView, SummaryView};
use crate::{CliError, write_json};

use super::{print_object, required_id, write_text};

/// Most points [`auto_step`] aims for: a screenful of rows, far below the server's cap.
pub(crate) const AUTO_STEP_POINTS: u32 = 300;

/// Steps [`auto_step`] chooses from: round widths a person reads easily.
const NICE_STEPS: [Duration; 11] = [
    Duration::from_secs(60),
    Duration::from_secs(5 * 60),
    Duration::from_secs(10 * 60),
    Duration::from_secs(15 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(3_600),
    Duration::from_secs(3 * 3_600),
    Duration::from_secs(6 * 3_600),
    Duration::from_secs(12 * 3_600),
    Duration::from_secs(86_400),
    Duration::from_secs(7 * 86_400),
];

/// The step for `--since` when none is given: the smallest round step (at least a minute)
/// that gives at most [`AUTO_STEP_POINTS`] points, so `--since 30d` works as `--since 1h`
/// does.
pub(crate) fn auto_step(since: Duration) -> Duration {
    let fine_enough =
        |step: &&Duration| since.as_secs() / step.as_secs() <= u64::from(AUTO_STEP_POINTS);
    NICE_STEPS
        .iter()
        .find(fine_enough)
        .copied()
        .unwrap_or_else(|| since / AUTO_STEP_POINTS)
}

/// `metrics AGENT`: points from `now - since` to now, one per `step` (default
/// [`auto_step`]).
pub(crate) async fn metrics(
    args: MetricsArgs,
    settings: &Settings,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    required_id(&args.id, "agent")?;
    if args.since.is_zero() {
        return Err(CliError::Usage(
            "--since must be longer than zero".to_owned(),
        ));
    }
    let end = SystemTime::now();
    let start = end
        .checked_sub(args.since)
        .ok_or_else(|| CliError::Usage("--since reaches too far back".to_owned()))?;
    let step = args.step.unwrap_or_else(|| auto_step(args.since));
    let step = prost_types::Duration::try_from(step)
        .map_err(|_| CliError::Usage("--step is too long".to_owned()))?;
    let conn = Connection::connect(settings).await?;
    let (id, response) = super::agents::lookup::call_with_agent(&conn, &args.id, |agent_id| {
        let mut fleet = conn.fleet();
        let request = pb::GetMetricsRequest {
            agent_id,
            start: Some(start.into()),
            end: Some(end.into()),
            step: Some(step),
        };
        async move { fleet.get_metrics(request).await }
    })
    .await?;
    let points: Vec<MetricsPointView> = response
        .into_inner()
        .points
        .into_iter()
        .map(Into::into)
        .collect();
    match args.output {
        SeriesFormat::Table if points.is_empty() => {
            let line = format!(
                "No metrics for agent {} in the last {}.\n",
                escape(&id),
                long_duration(args.since)
            );
            write_text(out, &line)?;
        }
        SeriesFormat::Table => write_text(out, &render_points_table(&points))?,
        SeriesFormat::Json => write_json(out, &points)?,
        SeriesFormat::Csv => write_text(out, &render_points_csv(&points))?,
    }
    Ok(())
}

/// `summary`: counts by status, health and OS.
pub(crate) async fn summary(
    args: ObjectOutput,
    settings: &Settings,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let conn = Connection::connect(settings).await?;
    let summary: SummaryView = conn
        .fleet()
        .get_fleet_summary(pb::GetFleetSummaryRequest {})
        .await
        .map_err(|status| conn.error(&status, None))?
        .into_inner()
        .into();
    print_object(out, args.output, &summary, render_summary)
}

/// `config`: what the server has in force.
pub(crate) async fn config(
    args: ObjectOutput,
    settings: &Settings,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let conn = Connection::connect(settings).await?;
    let config: ServerConfigView = conn
        .fleet()
        .get_server_config(pb::GetServerConfigRequest {})
        .await
        .map_err(|status| conn.error(&status, None))?
        .into_inner()
        .into();
    print_object(out, args.output, &config, render_config)
}

/// What `version` prints: this client's version and, unless `--client`, the server's.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub(crate) struct VersionView {
    pub client_version: String,
    /// The server's URL, when it was asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_version: Option<String>,
}

/// This client's version (the workspace's).
pub(crate) fn client_version() -> VersionView {
    VersionView {
        client_version: env!("CARGO_PKG_VERSION").to_owned(),
        server: None,
        server_version: None,
    }
}

/// `version`: the client's version, then the server's (from `GetServerConfig`), unless
/// `settings` is `None` (`--client`).
pub(crate) async fn version(
    args: &VersionArgs,
    settings: Option<&Settings>,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let mut view = client_version();
    if let Some(settings) = settings {
        let conn = Connection::connect(settings).await?;
        let config = conn
            .fleet()
            .get_server_config(pb::GetServerConfigRequest {})
            .await
            .map_err(|status| conn.error(&status, None))?
            .into_inner();
        view.server = Some(conn.server().to_owned());
        view.server_version = Some(config.server_version);
    }
    print_object(out, args.output, &view, render_version)
}

/// Renders `version` for a person.
pub(crate) fn render_version(v: &VersionView) -> String {
    let mut pairs = vec![("Client version", v.client_version.clone())];
    if let (Some(server), Some(version)) = (&v.server, &v.server_version) {
        pairs.push(("Server version", format!("{} ({server})", or_none(version))));
    }
    key_values(0, &pairs)
}

/// Renders metric points as a table.
pub(crate) fn render_points_table(points: &[MetricsPointView]) -> String {
    let mut table = Table::new([
        "TIME", "SAMPLES", "CPU", "LOAD1", "MEM", "MEM%", "SWAP", "DISK", "DISK%", "RX/S", "TX/S",
        "PROCS",
    ]);
    for idx in 1..12 {
        table = table.align_right(idx);
    }
    for p in points {
        table.push([
            rfc3339_opt(p.time),
            p.sample_count.to_string(),
            format_percent(p.cpu_percent),
            format!("{:.2}", p.load_1),
            format_bytes(p.memory_used_bytes),
            usage_percent(p.memory_used_bytes, p.memory_total_bytes),
            format_bytes(p.swap_used_bytes),
            format_bytes(p.disk_used_bytes),
            usage_percent(p.disk_used_bytes, p.disk_total_bytes),
            format_rate(p.network_rx_bytes_per_second),
            format_rate(p.network_tx_bytes_per_second),
            p.process_count.to_string(),
        ]);
    }
    table.render()
}

/// Renders metric points as CSV with raw numbers.
pub(crate) fn render_points_csv(points: &[MetricsPointView]) -> String {
    let mut text = csv_record([
        "time",
        "sample_count",
        "cpu_percent",
        "load_1",
        "load_5",
        "load_15",
        "memory_used_bytes",
        "memory_total_bytes",
        "swap_used_bytes",
        "swap_total_bytes",
        "disk_used_bytes",
        "disk_total_bytes",
        "network_rx_bytes_per_second",
        "network_tx_bytes_per_second",
        "process_count",
    ]);
    for p in points {
        text.push_str(&csv_record([
            csv_time(p.time),
            p.sample_count.to_string(),
            p.cpu_percent.to_string(),
            p.load_1.to_string(),
            p.load_5.to_string(),
            p.load_15.to_string(),
            p.memory_used_bytes.to_string(),
            p.memory_total_bytes.to_string(),
            p.swap_used_bytes.to_string(),
            p.swap_total_bytes.to_string(),
            p.disk_used_bytes.to_string(),
            p.disk_total_bytes.to_string(),
            p.network_rx_bytes_per_second.to_string(),
            p.network_tx_bytes_per_second.to_string(),
            p.process_count.to_string(),
        ]));
    }
    text
}

/// Renders the fleet summary for a person.
pub(crate) fn render_summary(s: &SummaryView) -> String {
    let mut text = String::from("Agents:\n");
    text.push_str(&key_values(
        2,
        &[
            ("Total", format!("{} (not expired)", s.total)),
            ("Online", s.online.to_string()),
            ("Stale", s.stale.to_string()),
            ("Offline", s.offline.to_string()),
            ("Expired", s.expired.to_string()),
        ],
    ));
    text.push_str("\nHealth:\n");
    text.push_str(&key_values(
        2,
        &[
            ("OK", s.health.ok.to_string()),
            ("Warning", s.health.warning.to_string()),
            ("Critical", s.health.critical.to_string()),
            ("Unknown", s.health.unknown.to_string()),
        ],
    ));
    text.push_str("\nBy OS:\n");
    if s.by_os.is_empty() {
        text.push_str("  (none)\n");
    } else {
        let mut table = Table::new(["OS", "AGENTS"]).align_right(1);
        let mut by_count: Vec<_> = s.by_os.iter().collect();
        by_count.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        for (os, n) in by_count {
            let os = if os.is_empty() { "(unknown)" } else { os };
            table.push([os.to_owned(), n.to_string()]);
        }
        text.push_str(&indent(&table.render(), 2));
    }
    text
}

/// Renders the server's configuration for a person.
pub(crate) fn render_config(c: &ServerConfigView) -> String {
    let dur = |d: Option<Duration>| d.map_or_else(|| NONE.to_owned(), long_duration);
    let thresholds = c.health_thresholds.as_ref().map_or_else(
        || NONE.to_owned(),
        |t| {
            format!(
                "cpu {:.0}%/{:.0}%, memory {:.0}%/{:.0}%, disk {:.0}%/{:.0}% (warning/critical)",
                t.cpu_warning_percent,
                t.cpu_critical_percent,
                t.memory_warning_percent,
                t.memory_critical_percent,
                t.disk_warning_percent,
                t.disk_critical_percent
            )
        },
    );
    let features = or_none(&c.features.join(", "));
    let (agent_limits, api_limits) = c.limits.as_ref().map_or_else(
        || (NONE.to_owned(), NONE.to_owned()),
        |l| {
            (
                format!(
                    "{} agents per org, {} samples per report, {}/s (burst {}) messages per \
                     stream",
                    l.max_agents_per_org,
                    l.max_samples_per_report,
                    l.stream_messages_per_second,
                    l.stream_message_burst
                ),
                format!(
                    "{}/s (burst {}) requests per token, {} watches per token and {} per org, \
                     responses ≤ {}, {} streams per connection",
                    l.token_requests_per_second,
                    l.token_request_burst,
                    l.max_watches_per_token,
                    l.max_watches_per_org,
                    format_bytes(l.max_response_bytes),
                    l.max_concurrent_streams
                ),
            )
        },
    );
    let commands = c.commands.as_ref().map_or_else(
        || NONE.to_owned(),
        |cmd| {
            format!(
                "timeout {}, delivered within {}, output kept {} (at most {}), kept {} after \
                 they end, {} unfinished per org, {} queued per agent",
                dur(cmd.default_timeout_seconds),
                dur(cmd.default_deliver_within_seconds),
                format_bytes(cmd.default_output_limit_bytes),
                format_bytes(cmd.max_output_limit_bytes),
                dur(cmd.retention_seconds),
                cmd.max_in_flight_per_org,
                cmd.max_queued_per_agent
            )
        },
    );
    key_values(
        0,
        &[
            ("Server version", c.server_version.clone()),
            ("Heartbeat interval", dur(c.heartbeat_interval_seconds)),
            ("Metrics interval", dur(c.metrics_interval_seconds)),
            ("Stale after", dur(c.stale_after_seconds)),
            ("Offline after", dur(c.offline_after_seconds)),
            ("Fleet TTL", dur(c.fleet_ttl_seconds)),
            ("Metrics retention", dur(c.metrics_retention_seconds)),
            ("5-minute rollups kept", dur(c.rollup_5m_retention_seconds)),
            ("1-hour rollups kept", dur(c.rollup_1h_retention_seconds)),
            ("Event retention", dur(c.events_retention_seconds)),
            ("Event counts kept", dur(c.event_stats_retention_seconds)),
            (
                "Event fingerprint window",
                dur(c.event_fingerprint_window_seconds),
            ),
            ("Health thresholds", thresholds),
            ("Max message size", format_bytes(c.max_message_bytes)),
            (
                "Label limits",
                format!(
                    "{} labels, key ≤ {} B, value ≤ {} B",
                    c.max_labels, c.max_label_key_bytes, c.max_label_value_bytes
                ),
            ),
            ("Agent limits", agent_limits),
            ("API limits", api_limits),
            ("Commands", commands),
            ("Features", features),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::HealthCounts;
    use std::collections::BTreeMap;

    #[test]
    fn the_automatic_step_keeps_long_ranges_within_a_screenful() {
        let hour = Duration::from_secs(3_600);
        let day = 24 * hour;
        assert_eq!(auto_step(hour), Duration::from_secs(60));
        assert_eq!(auto_step(5 * hour), Duration::from_secs(60));
        assert_eq!(auto_step(6 * hour), Duration::from_secs(5 * 60));
        assert_eq!(auto_step(day), Duration::from_secs(5 * 60));
        assert_eq!(auto_step(30 * day), 3 * hour);
        assert_eq!(auto_step(365 * day), 7 * day);
        for since in [
            hour,
            day,
            7 * day,
            30 * day,
            90 * day,
            365 * day,
            3_650 * day,
        ] {
            let step = auto_step(since);
            assert!(step >= Duration::from_secs(60), "{since:?}");
            let points = since.as_secs() / step.as_secs();
            assert!(points <= u64::from(AUTO_STEP_POINTS), "{since:?}: {points}");
        }
    }

    #[test]
    fn summary_sorts_os_by_count() {
        let s = SummaryView {
            total: 3,
            online: 2,
            stale: 0,
            offline: 1,
            expired: 4,
            by_os: BTreeMap::from([("linux".into(), 1), ("windows".into(), 2)]),
            health: HealthCounts {
                ok: 1,
                warning: 1,
                critical: 0,
                unknown: 1,
            },
        };
        let text = render_summary(&s);
        assert!(text.contains("  Total:    3 (not expired)\n"), "{text}");
        let windows = text.find("windows").expect("windows");
        let linux = text.find("linux").expect("linux");
        assert!(windows < linux, "{text}");
    }

    #[test]
    fn points_table_and_csv() {
        let p = MetricsPointView {
            time: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(60)),
            sample_count: 6,
            cpu_percent: 12.5,
            load_1: 0.5,
            load_5: 0.4,
            load_15: 0.3,
            memory_used_bytes: 1024,
            memory_total_bytes: 4096,
            swap_used_bytes: 0,
            swap_total_bytes: 0,
            disk_used_bytes: 0,
            disk_total_bytes: 0,
            network_rx_bytes_per_second: 2048.0,
            network_tx_bytes_per_second: 0.0,
            process_count: 100,
        };
        let table = render_points_table(std::slice::from_ref(&p));
        let row = table.lines().nth(1).expect("row");
        assert!(
            row.starts_with("1970-01-01T00:01:00Z         6   12.5%"),
            "{row}"
        );
        assert!(row.contains("2.0 KiB/s"), "{row}");
        let csv = render_points_csv(&[p]);
        assert_eq!(
            csv.lines().nth(1),
            Some("1970-01-01T00:01:00Z,6,12.5,0.5,0.4,0.3,1024,4096,0,0,0,0,2048,0,100")
        );
    }
}
