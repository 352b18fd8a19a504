//! `AlertService` messages ↔ the alert domain (`alert/rule.rs`). Requests are destructured
//! exhaustively; a rule from the wire is checked by [`Rule::validate`] by its use case, the
//! one check every source of rules passes.

use std::time::SystemTime;

use tether_proto as pb;

use super::{duration, duration_from_pb, opt_timestamp, timestamp};
use crate::alert::AlertQuery;
use crate::alert::rule::{Alert, AlertState, PayloadFormat, Rule, RuleKind, RuleSource, Webhook};
use crate::domain::OrgId;
use crate::error::ServerError;

/// Most alerts one `ListAlerts` answers.
pub const MAX_LIST_ALERTS: usize = 1000;
/// Alerts `ListAlerts` answers when it names no limit.
pub const DEFAULT_LIST_ALERTS: usize = 100;

/// The rule `CreateAlertRule` asks for, in `org`, created `now`. Not yet validated.
///
/// # Errors
///
/// `INVALID_ARGUMENT` for a missing rule, kind or hold time, or a webhook without a format.
pub fn create_rule_from_pb(
    request: pb::CreateAlertRuleRequest,
    org: OrgId,
    now: SystemTime,
) -> Result<Rule, ServerError> {
    let pb::CreateAlertRuleRequest { rule } = request;
    let pb::AlertRule {
        name,
        kind,
        selector,
        for_duration,
        min_online_ratio,
        webhook,
        summary,
        source: _,
        created_at: _,
    } = rule.ok_or_else(|| ServerError::invalid("rule is required"))?;
    let hold = duration_from_pb(
        for_duration.ok_or_else(|| ServerError::invalid("for_duration is required"))?,
        "for_duration",
    )?;
    let kind = match pb::AlertRuleKind::try_from(kind) {
        Ok(pb::AlertRuleKind::AgentOffline) => RuleKind::AgentOffline,
        Ok(pb::AlertRuleKind::HealthCritical) => RuleKind::HealthCritical,
        Ok(pb::AlertRuleKind::OnlineRatioBelow) => RuleKind::OnlineRatioBelow {
            min_ratio: min_online_ratio,
        },
        Ok(pb::AlertRuleKind::Unspecified) | Err(_) => {
            return Err(ServerError::invalid("kind is required"));
        }
    };
    if kind.per_agent() && min_online_ratio != 0.0 {
        return Err(ServerError::invalid(
            "min_online_ratio is for ONLINE_RATIO_BELOW rules only",
        ));
    }
    let webhook = webhook.map(webhook_from_pb).transpose()?;
    Ok(Rule {
        org,
        name,
        kind,
        selector,
        hold,
        webhook,
        summary,
        source: RuleSource::Api,
        created_at: now,
    })
}

fn webhook_from_pb(webhook: pb::Webhook) -> Result<Webhook, ServerError> {
    let pb::Webhook {
        url,
        format,
        secret,
        has_secret: _,
    } = webhook;
    let format = match pb::WebhookFormat::try_from(format) {
        Ok(pb::WebhookFormat::Alertmanager | pb::WebhookFormat::Unspecified) => {
            PayloadFormat::Alertmanager
        }
        Ok(pb::WebhookFormat::Json) => PayloadFormat::Json,
        Err(_) => return Err(ServerError::invalid("unknown webhook format")),
    };
    Ok(Webhook {
        url,
        format,
        secret: (!secret.is_empty()).then_some(secret),
    })
}

/// A rule as clients see it: never its webhook's secret.
pub fn rule_to_pb(rule: &Rule) -> pb::AlertRule {
    let (kind, min_online_ratio) = kind_to_pb(rule.kind);
    pb::AlertRule {
        name: rule.name.clone(),
        kind: kind.into(),
        selector: rule.selector.clone(),
        for_duration: Some(duration(rule.hold)),
        min_online_ratio,
        webhook: rule.webhook.as_ref().map(|w| pb::Webhook {
            url: w.url.clone(),
            format: match w.format {
                PayloadFormat::Alertmanager => pb::WebhookFormat::Alertmanager,
                PayloadFormat::Json => pb::WebhookFormat::Json,
            }
            .into(),
            secret: String::new(),
            has_secret: w.secret.is_some(),
        }),
        summary: rule.summary.clone(),
        source: match rule.source {
            RuleSource::Config => pb::AlertRuleSource::Config,
            RuleSource::Api => pb::AlertRuleSource::Api,
        }
        .into(),
        created_at: Some(timestamp(rule.created_at)),
    }
}

fn kind_to_pb(kind: RuleKind) -> (pb::AlertRuleKind, f64) {
    match kind {
        RuleKind::AgentOffline => (pb::AlertRuleKind::AgentOffline, 0.0),
        RuleKind::HealthCritical => (pb::AlertRuleKind::HealthCritical, 0.0),
        RuleKind::OnlineRatioBelow { min_ratio } => {
            (pb::AlertRuleKind::OnlineRatioBelow, min_ratio)
        }
    }
}

pub fn alert_to_pb(alert: &Alert) -> pb::Alert {
    pb::Alert {
        alert_id: alert.id.clone(),
        rule: alert.rule.clone(),
        kind: kind_to_pb(alert.kind).0.into(),
        state: state_to_pb(alert.state).into(),
        agent_id: alert
            .agent
            .as_ref()
            .map_or_else(String::new, ToString::to_string),
        agent_name: alert.agent_name.clone(),
        starts_at: Some(timestamp(alert.starts_at)),
        ends_at: opt_timestamp(alert.ends_at),
        description: alert.description.clone(),
        fingerprint: alert.fingerprint.clone(),
    }
}

fn state_to_pb(state: AlertState) -> pb::AlertState {
    match state {
        AlertState::Firing => pb::AlertState::Firing,
        AlertState::Resolved => pb::AlertState::Resolved,
    }
}

/// # Errors
///
/// `INVALID_ARGUMENT` for an unknown state or a negative limit.
pub fn list_alerts_from_pb(request: pb::ListAlertsRequest) -> Result<AlertQuery, ServerError> {
    let pb::ListAlertsRequest { state, rule, limit } = request;
    let state = match pb::AlertState::try_from(state) {
        Ok(pb::AlertState::Unspecified) => None,
        Ok(pb::AlertState::Firing) => Some(AlertState::Firing),
        Ok(pb::AlertState::Resolved) => Some(AlertState::Resolved),
        Err(_) => return Err(ServerError::invalid("unknown alert state")),
    };
    let limit = super::page_size_from_pb(limit, DEFAULT_LIST_ALERTS, MAX_LIST_ALERTS)?;
    Ok(AlertQuery {
        state,
        rule: (!rule.is_empty()).then_some(rule),
        limit,
    })
}

pub fn watch_event_to_pb(alert: &Alert, snapshot: bool) -> pb::WatchAlertsResponse {
    let kind = match (snapshot, alert.state) {
        (true, _) => pb::AlertEventKind::Snapshot,
        (false, AlertState::Firing) => pb::AlertEventKind::Fired,
        (false, AlertState::Resolved) => pb::AlertEventKind::Resolved,
    };
    pb::WatchAlertsResponse {
        kind: kind.into(),
        alert: Some(alert_to_pb(alert)),
    }
}

pub fn synced_to_pb() -> pb::WatchAlertsResponse {
    pb::WatchAlertsResponse {
        kind: pb::AlertEventKind::Synced.into(),
        alert: None,
    }
}
