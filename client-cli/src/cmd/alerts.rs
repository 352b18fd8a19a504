//! `alerts list|watch` and `alerts rules list|create|delete` through `AlertService`. Rendering
//! is done by the pure `render_*` functions below, tested without a server.

use std::io::Write;
use std::time::SystemTime;

use tether_proto as pb;

use crate::CliError;
use crate::cli::{
    AlertStateArg, CreateAlertRuleArgs, DeleteAlertRuleArgs, ListAlertsArgs, ObjectFormat,
    ObjectOutput, RuleKindArg, WatchAlertsArgs, WebhookFormatArg,
};
use crate::client::Connection;
use crate::config::Settings;
use crate::format::{Table, key_values, long_duration, or_none, relative_time_opt};
use crate::view::{AlertEventView, AlertRuleView, AlertView};
use crate::write_json_line;

use super::resume::{self, Seen};
use super::{print_list, print_object, write_text};

/// `alerts list`.
pub(crate) async fn list(
    args: ListAlertsArgs,
    settings: &Settings,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let request = pb::ListAlertsRequest {
        state: match args.state {
            None => pb::AlertState::Unspecified,
            Some(AlertStateArg::Firing) => pb::AlertState::Firing,
            Some(AlertStateArg::Resolved) => pb::AlertState::Resolved,
        } as i32,
        rule: args.rule.unwrap_or_default(),
        limit: i32::try_from(args.limit).unwrap_or(i32::MAX),
    };
    let conn = Connection::connect(settings).await?;
    let alerts: Vec<AlertView> = conn
        .alerts()
        .list_alerts(request)
        .await
        .map_err(|status| conn.error(&status, None))?
        .into_inner()
        .alerts
        .into_iter()
        .map(AlertView::from)
        .collect();
    print_list(out, args.output, &alerts, "alerts", |alerts| {
        render_alerts(alerts, SystemTime::now())
    })
}

/// `alerts watch`: the firing alerts, a `synced` marker, then one line per alert that fires or
/// resolves; resumed after a server restart with a fresh snapshot (`cmd/resume.rs`). Returns
/// after `--max-events`, or with the error that no retry can fix.
pub(crate) async fn watch(
    args: WatchAlertsArgs,
    settings: &Settings,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let conn = Connection::connect(settings).await?;
    let client = conn.alerts();
    let open = || {
        let mut client = client.clone();
        async move { client.watch_alerts(pb::WatchAlertsRequest {}).await }
    };
    resume::follow(&conn, args.max_events, open, |event| {
        let event = AlertEventView::from(event);
        let seen = match event.kind {
            "synced" => Seen::Marker,
            _ => Seen::Event,
        };
        match (args.output, &seen) {
            (ObjectFormat::Table, Seen::Marker) => {
                writeln!(out, "# firing alerts listed, watching for changes")?;
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

/// `alerts rules list`.
pub(crate) async fn rules(
    args: ObjectOutput,
    settings: &Settings,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let conn = Connection::connect(settings).await?;
    let rules: Vec<AlertRuleView> = conn
        .alerts()
        .list_alert_rules(pb::ListAlertRulesRequest {})
        .await
        .map_err(|status| conn.error(&status, None))?
        .into_inner()
        .rules
        .into_iter()
        .map(AlertRuleView::from)
        .collect();
    print_list(out, args.output, &rules, "alert rules", render_rules)
}

/// `alerts rules create NAME`.
pub(crate) async fn create(
    args: CreateAlertRuleArgs,
    settings: &Settings,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let request = create_request(&args)?;
    let conn = Connection::connect(settings).await?;
    let rule = conn
        .alerts()
        .create_alert_rule(request)
        .await
        .map_err(|status| conn.error(&status, Some("alert rule")))?
        .into_inner()
        .rule
        .map(AlertRuleView::from)
        .ok_or_else(|| CliError::Server {
            code: "Internal".to_owned(),
            message: "the server answered without the rule".to_owned(),
        })?;
    print_object(out, args.output, &rule, |rule| {
        format!("Alert rule {} created.\n\n{}", rule.name, render_rule(rule))
    })
}

/// `alerts rules delete NAME`.
pub(crate) async fn delete(
    args: DeleteAlertRuleArgs,
    settings: &Settings,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let conn = Connection::connect(settings).await?;
    conn.alerts()
        .delete_alert_rule(pb::DeleteAlertRuleRequest {
            name: args.name.clone(),
        })
        .await
        .map_err(|status| conn.error(&status, Some("alert rule")))?;
    write_text(out, &format!("Alert rule {} deleted.\n", args.name))
}

/// The request `alerts rules create` sends. The server checks the rule (selector, duration,
/// ratio, URL); only what the flags alone decide is checked here.
fn create_request(args: &CreateAlertRuleArgs) -> Result<pb::CreateAlertRuleRequest, CliError> {
    let kind = match args.kind {
        RuleKindArg::Offline => pb::AlertRuleKind::AgentOffline,
        RuleKindArg::Critical => pb::AlertRuleKind::HealthCritical,
        RuleKindArg::OnlineRatio => pb::AlertRuleKind::OnlineRatioBelow,
    };
    let min_online_ratio = match (args.kind, args.min_online_ratio) {
        (RuleKindArg::OnlineRatio, Some(ratio)) => ratio,
        (RuleKindArg::OnlineRatio, None) => {
            return Err(CliError::Usage(
                "--kind online-ratio needs --min-online-ratio".to_owned(),
            ));
        }
        (_, Some(_)) => {
            return Err(CliError::Usage(
                "--min-online-ratio is for --kind online-ratio only".to_owned(),
            ));
        }
        (_, None) => 0.0,
    };
    let secret = match &args.webhook_secret_file {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| CliError::Usage(format!("--webhook-secret-file {}: {e}", path.display())))?
            .trim_end_matches(['\n', '\r'])
            .to_owned(),
        None => String::new(),
    };
    if args.webhook.is_none() && !secret.is_empty() {
        return Err(CliError::Usage(
            "--webhook-secret-file needs --webhook".to_owned(),
        ));
    }
    let webhook = args.webhook.as_ref().map(|url| pb::Webhook {
        url: url.clone(),
        format: match args.webhook_format {
            WebhookFormatArg::Alertmanager => pb::WebhookFormat::Alertmanager,
            WebhookFormatArg::Json => pb::WebhookFormat::Json,
        } as i32,
        secret: secret.clone(),
        has_secret: false,
    });
    Ok(pb::CreateAlertRuleRequest {
        rule: Some(pb::AlertRule {
            name: args.name.clone(),
            kind: kind as i32,
            selector: args.selector.clone(),
            for_duration: Some(
                prost_types::Duration::try_from(args.hold)
                    .map_err(|e| CliError::Usage(format!("--for: {e}")))?,
            ),
            min_online_ratio,
            webhook,
            summary: args.summary.clone(),
            source: 0,
            created_at: None,
        }),
    })
}

/// `alerts list` as a table.
pub(crate) fn render_alerts(alerts: &[AlertView], now: SystemTime) -> String {
    let mut table = Table::new(["STATE", "RULE", "AGENT", "STARTED", "ENDED", "DESCRIPTION"]);
    for a in alerts {
        table.push([
            a.state.to_owned(),
            a.rule.clone(),
            a.agent_name
                .clone()
                .or(a.agent_id.clone())
                .unwrap_or_else(|| "-".to_owned()),
            relative_time_opt(now, a.starts_at),
            a.ends_at
                .map_or_else(|| "-".to_owned(), |t| relative_time_opt(now, Some(t))),
            a.description.clone(),
        ]);
    }
    table.render()
}

/// `alerts rules list` as a table.
pub(crate) fn render_rules(rules: &[AlertRuleView]) -> String {
    let mut table = Table::new(["NAME", "KIND", "SELECTOR", "FOR", "WEBHOOK", "SOURCE"]);
    for r in rules {
        table.push([
            r.name.clone(),
            kind_text(r),
            or_none(&r.selector),
            r.for_seconds.map_or_else(|| "-".to_owned(), long_duration),
            webhook_text(r),
            r.source.to_owned(),
        ]);
    }
    table.render()
}

/// One rule as key/value lines.
pub(crate) fn render_rule(rule: &AlertRuleView) -> String {
    key_values(
        2,
        &[
            ("Name", rule.name.clone()),
            ("Kind", kind_text(rule)),
            ("Selector", or_none(&rule.selector)),
            (
                "For",
                rule.for_seconds
                    .map_or_else(|| "-".to_owned(), long_duration),
            ),
            ("Webhook", webhook_text(rule)),
            ("Summary", or_none(&rule.summary)),
            ("Source", rule.source.to_owned()),
        ],
    )
}

/// One `alerts watch` line.
pub(crate) fn render_event(event: &AlertEventView, now: SystemTime) -> String {
    let Some(a) = &event.alert else {
        return format!("{}\n", event.kind);
    };
    let agent = a
        .agent_name
        .as_deref()
        .or(a.agent_id.as_deref())
        .unwrap_or("-");
    let when = match event.kind {
        "resolved" => relative_time_opt(now, a.ends_at),
        _ => relative_time_opt(now, a.starts_at),
    };
    format!(
        "{:<9} {} {} {} {}\n",
        event.kind.to_uppercase(),
        crate::format::escape(&a.rule),
        crate::format::escape(agent),
        when,
        crate::format::escape(&a.description)
    )
}

fn kind_text(rule: &AlertRuleView) -> String {
    match rule.min_online_ratio {
        Some(ratio) => format!("{} < {ratio}", rule.kind),
        None => rule.kind.to_owned(),
    }
}

fn webhook_text(rule: &AlertRuleView) -> String {
    match &rule.webhook {
        Some(w) if w.has_secret => format!("{} ({}, signed)", w.url, w.format),
        Some(w) => format!("{} ({})", w.url, w.format),
        None => "(org default)".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::view::WebhookView;

    fn alert(state: &'static str) -> AlertView {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        AlertView {
            alert_id: "x".to_owned(),
            rule: "lost".to_owned(),
            kind: "agent_offline",
            state,
            agent_id: Some("a-1".to_owned()),
            agent_name: Some("web-\u{1b}[31m1".to_owned()),
            starts_at: Some(t),
            ends_at: (state == "resolved").then(|| t + Duration::from_secs(60)),
            description: "web-1 is offline".to_owned(),
            fingerprint: "f".to_owned(),
        }
    }

    #[test]
    fn alerts_render_as_a_table_with_agents_escaped() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_120);
        let text = render_alerts(&[alert("firing"), alert("resolved")], now);
        assert!(text.starts_with("STATE"), "{text}");
        assert!(text.contains("firing"), "{text}");
        assert!(text.contains("2m ago"), "{text}");
        assert!(text.contains("1m ago"), "{text}");
        assert!(!text.contains('\u{1b}'), "{text}");
        let line = render_event(
            &AlertEventView {
                kind: "fired",
                alert: Some(alert("firing")),
            },
            now,
        );
        assert!(line.starts_with("FIRED"), "{line}");
        assert!(!line.contains('\u{1b}'), "{line}");
    }

    #[test]
    fn rules_render_with_their_webhook_but_never_a_secret() {
        let rule = AlertRuleView {
            name: "ratio".to_owned(),
            kind: "online_ratio_below",
            selector: "env=prod".to_owned(),
            for_seconds: Some(Duration::from_secs(300)),
            min_online_ratio: Some(0.9),
            webhook: Some(WebhookView {
                url: "https://hooks.example.com/x".to_owned(),
                format: "alertmanager",
                has_secret: true,
            }),
            summary: String::new(),
            source: "api",
            created_at: None,
        };
        let text = render_rules(std::slice::from_ref(&rule));
        assert!(text.contains("online_ratio_below < 0.9"), "{text}");
        assert!(text.contains("(alertmanager, signed)"), "{text}");
        assert!(render_rule(&rule).contains("5m"), "{}", render_rule(&rule));
    }

    #[test]
    fn a_ratio_rule_needs_its_ratio_and_others_refuse_one() {
        let args = |kind, ratio| CreateAlertRuleArgs {
            name: "r".to_owned(),
            kind,
            selector: String::new(),
            hold: Duration::from_secs(60),
            min_online_ratio: ratio,
            webhook: None,
            webhook_format: WebhookFormatArg::Json,
            webhook_secret_file: None,
            summary: String::new(),
            output: ObjectFormat::Table,
        };
        assert!(create_request(&args(RuleKindArg::OnlineRatio, None)).is_err());
        assert!(create_request(&args(RuleKindArg::Offline, Some(0.5))).is_err());
        let ok = create_request(&args(RuleKindArg::OnlineRatio, Some(0.5))).expect("ok");
        assert_eq!(ok.rule.expect("rule").min_online_ratio, 0.5);
    }
}
