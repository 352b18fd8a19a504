//! The views of alerts and alert rules (`tetherctl alerts …`), and their conversions from the
//! wire. Kinds, states and sources are lowercase strings; an unknown value from a newer server
//! reads `unknown`.

use std::time::{Duration, SystemTime};

use serde::Serialize;
use tether_proto as pb;

use super::convert::{duration, time};

/// One alert.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlertView {
    pub alert_id: String,
    pub rule: String,
    /// `agent_offline`, `health_critical` or `online_ratio_below`.
    pub kind: &'static str,
    /// `firing` or `resolved`.
    pub state: &'static str,
    /// The agent, for per-agent rules.
    pub agent_id: Option<String>,
    pub agent_name: Option<String>,
    #[serde(with = "super::json::rfc3339")]
    pub starts_at: Option<SystemTime>,
    #[serde(with = "super::json::rfc3339")]
    pub ends_at: Option<SystemTime>,
    pub description: String,
    pub fingerprint: String,
}

/// Where a rule's notifications go (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WebhookView {
    pub url: String,
    /// `alertmanager` or `json`.
    pub format: &'static str,
    pub has_secret: bool,
}

/// One alert rule.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlertRuleView {
    pub name: String,
    pub kind: &'static str,
    pub selector: String,
    #[serde(with = "super::json::seconds")]
    pub for_seconds: Option<Duration>,
    /// For `online_ratio_below` rules.
    pub min_online_ratio: Option<f64>,
    /// `None`: the org's webhook from the server's rules file, if any.
    pub webhook: Option<WebhookView>,
    pub summary: String,
    /// `config` (the server's rules file) or `api`.
    pub source: &'static str,
    #[serde(with = "super::json::rfc3339")]
    pub created_at: Option<SystemTime>,
}

/// One line of `alerts watch -o json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlertEventView {
    /// `snapshot`, `synced`, `fired` or `resolved`.
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alert: Option<AlertView>,
}

fn kind_name(kind: i32) -> &'static str {
    match pb::AlertRuleKind::try_from(kind) {
        Ok(pb::AlertRuleKind::AgentOffline) => "agent_offline",
        Ok(pb::AlertRuleKind::HealthCritical) => "health_critical",
        Ok(pb::AlertRuleKind::OnlineRatioBelow) => "online_ratio_below",
        Ok(pb::AlertRuleKind::Unspecified) | Err(_) => "unknown",
    }
}

fn non_empty(text: String) -> Option<String> {
    (!text.is_empty()).then_some(text)
}

impl From<pb::Alert> for AlertView {
    fn from(alert: pb::Alert) -> Self {
        let pb::Alert {
            alert_id,
            rule,
            kind,
            state,
            agent_id,
            agent_name,
            starts_at,
            ends_at,
            description,
            fingerprint,
        } = alert;
        Self {
            alert_id,
            rule,
            kind: kind_name(kind),
            state: match pb::AlertState::try_from(state) {
                Ok(pb::AlertState::Firing) => "firing",
                Ok(pb::AlertState::Resolved) => "resolved",
                Ok(pb::AlertState::Unspecified) | Err(_) => "unknown",
            },
            agent_id: non_empty(agent_id),
            agent_name: non_empty(agent_name),
            starts_at: time(starts_at),
            ends_at: time(ends_at),
            description,
            fingerprint,
        }
    }
}

impl From<pb::AlertRule> for AlertRuleView {
    fn from(rule: pb::AlertRule) -> Self {
        let pb::AlertRule {
            name,
            kind,
            selector,
            for_duration,
            min_online_ratio,
            webhook,
            summary,
            source,
            created_at,
        } = rule;
        let ratio_rule = kind == pb::AlertRuleKind::OnlineRatioBelow as i32;
        Self {
            name,
            kind: kind_name(kind),
            selector,
            for_seconds: duration(for_duration),
            min_online_ratio: ratio_rule.then_some(min_online_ratio),
            webhook: webhook.map(|w| WebhookView {
                url: w.url,
                format: match pb::WebhookFormat::try_from(w.format) {
                    Ok(pb::WebhookFormat::Json) => "json",
                    Ok(pb::WebhookFormat::Alertmanager | pb::WebhookFormat::Unspecified) => {
                        "alertmanager"
                    }
                    Err(_) => "unknown",
                },
                has_secret: w.has_secret,
            }),
            summary,
            source: match pb::AlertRuleSource::try_from(source) {
                Ok(pb::AlertRuleSource::Config) => "config",
                Ok(pb::AlertRuleSource::Api) => "api",
                Ok(pb::AlertRuleSource::Unspecified) | Err(_) => "unknown",
            },
            created_at: time(created_at),
        }
    }
}

impl From<pb::WatchAlertsResponse> for AlertEventView {
    fn from(event: pb::WatchAlertsResponse) -> Self {
        let pb::WatchAlertsResponse { kind, alert } = event;
        Self {
            kind: match pb::AlertEventKind::try_from(kind) {
                Ok(pb::AlertEventKind::Snapshot) => "snapshot",
                Ok(pb::AlertEventKind::Synced) => "synced",
                Ok(pb::AlertEventKind::Fired) => "fired",
                Ok(pb::AlertEventKind::Resolved) => "resolved",
                Ok(pb::AlertEventKind::Unspecified) | Err(_) => "unknown",
            },
            alert: alert.map(AlertView::from),
        }
    }
}
