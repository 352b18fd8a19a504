//! The bodies webhooks receive and their signature.
//!
//! - Alertmanager's webhook payload (`version: "4"`, as `webhook_config` receivers get it):
//!   one group per rule (`groupKey`, `groupLabels: {alertname}`), `status` firing while any
//!   alert in it fires, each alert with `labels` (`alertname`, `org`, `rule_kind`, and
//!   `agent_id`/`agent_name` for per-agent rules), `annotations` (`summary`, `description`),
//!   `startsAt`/`endsAt` (RFC 3339; `0001-01-01T00:00:00Z` while firing, as Alertmanager
//!   writes it) and `fingerprint`. At most [`MAX_ALERTS_PER_BODY`] alerts, the rest counted in
//!   `truncatedAlerts`.
//! - Tether's JSON: `{version: "tether.alerts.v1", org, rule, status, alerts: [...]}`, the
//!   alerts as `ListAlerts` shows them.
//!
//! A body carries the alerts of one rule that fired or resolved in one evaluation pass. With a
//! secret, `X-Tether-Signature: sha256=<hex>` is the HMAC-SHA256 of the exact body bytes under
//! it, so a receiver checks the body it read before parsing it.

use std::collections::BTreeMap;
use std::time::SystemTime;

use bytes::Bytes;
use hmac::{Hmac, Mac as _};
use serde::Serialize;
use sha2::Sha256;

use super::rule::{Alert, AlertState, PayloadFormat, Rule};

/// Most alerts in one body (a rule fires at most this many at once anyway).
pub const MAX_ALERTS_PER_BODY: usize = super::eval::MAX_FIRING_PER_RULE;
/// The header that carries the signature.
pub const SIGNATURE_HEADER: &str = "x-tether-signature";
/// The header that names a notification: the same on every attempt, so receivers can drop
/// repeats.
pub const DELIVERY_HEADER: &str = "x-tether-delivery";

/// How Alertmanager writes "not ended yet".
const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// The body of one notification of `rule`'s `alerts` (not empty).
pub fn body(format: PayloadFormat, rule: &Rule, alerts: &[Alert]) -> Bytes {
    let kept = &alerts[..alerts.len().min(MAX_ALERTS_PER_BODY)];
    let firing = kept.iter().any(|a| a.state == AlertState::Firing);
    let status = if firing { "firing" } else { "resolved" };
    let encoded = match format {
        PayloadFormat::Alertmanager => {
            serde_json::to_vec(&alertmanager(rule, kept, alerts.len(), status))
        }
        PayloadFormat::Json => serde_json::to_vec(&TetherBody {
            version: "tether.alerts.v1",
            org: rule.org.as_str(),
            rule: &rule.name,
            status,
            truncated_alerts: alerts.len() - kept.len(),
            alerts: kept.iter().map(JsonAlert::from).collect(),
        }),
    };
    // Only strings, numbers and maps of strings: serializing them cannot fail.
    Bytes::from(encoded.expect("the payload types serialize infallibly"))
}

/// `sha256=<hex HMAC-SHA256 of body under secret>`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

// === Alertmanager ===

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AmBody<'a> {
    version: &'static str,
    group_key: String,
    truncated_alerts: usize,
    status: &'static str,
    receiver: String,
    group_labels: BTreeMap<&'static str, String>,
    common_labels: BTreeMap<&'static str, String>,
    common_annotations: BTreeMap<&'static str, String>,
    #[serde(rename = "externalURL")]
    external_url: &'static str,
    alerts: Vec<AmAlert<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AmAlert<'a> {
    status: &'static str,
    labels: BTreeMap<&'static str, String>,
    annotations: BTreeMap<&'static str, String>,
    starts_at: String,
    ends_at: String,
    #[serde(rename = "generatorURL")]
    generator_url: &'static str,
    fingerprint: &'a str,
}

fn alertmanager<'a>(
    rule: &Rule,
    alerts: &'a [Alert],
    total: usize,
    status: &'static str,
) -> AmBody<'a> {
    let common_labels = BTreeMap::from([
        ("alertname", rule.name.clone()),
        ("org", rule.org.to_string()),
        ("rule_kind", rule.kind.as_str().to_owned()),
    ]);
    let mut common_annotations = BTreeMap::new();
    if !rule.summary.is_empty() {
        common_annotations.insert("summary", rule.summary.clone());
    }
    AmBody {
        version: "4",
        group_key: format!("{{}}:{{alertname=\"{}\", org=\"{}\"}}", rule.name, rule.org),
        truncated_alerts: total - alerts.len(),
        status,
        receiver: format!("tether/{}/{}", rule.org, rule.name),
        group_labels: BTreeMap::from([("alertname", rule.name.clone())]),
        common_labels: common_labels.clone(),
        common_annotations: common_annotations.clone(),
        external_url: "",
        alerts: alerts
            .iter()
            .map(|alert| {
                let mut labels = common_labels.clone();
                if let Some(agent) = &alert.agent {
                    labels.insert("agent_id", agent.to_string());
                    labels.insert("agent_name", alert.agent_name.clone());
                }
                let mut annotations = common_annotations.clone();
                annotations.insert("description", alert.description.clone());
                AmAlert {
                    status: alert.state.as_str(),
                    labels,
                    annotations,
                    starts_at: rfc3339(alert.starts_at),
                    ends_at: alert.ends_at.map_or_else(|| ZERO_TIME.to_owned(), rfc3339),
                    generator_url: "",
                    fingerprint: &alert.fingerprint,
                }
            })
            .collect(),
    }
}

// === Tether JSON ===

#[derive(Serialize)]
struct TetherBody<'a> {
    version: &'static str,
    org: &'a str,
    rule: &'a str,
    status: &'static str,
    truncated_alerts: usize,
    alerts: Vec<JsonAlert<'a>>,
}

#[derive(Serialize)]
struct JsonAlert<'a> {
    alert_id: &'a str,
    rule: &'a str,
    kind: &'static str,
    state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    agent_id: Option<&'a str>,
    #[serde(skip_serializing_if = "str::is_empty")]
    agent_name: &'a str,
    starts_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    ends_at: Option<String>,
    description: &'a str,
    fingerprint: &'a str,
}

impl<'a> From<&'a Alert> for JsonAlert<'a> {
    fn from(alert: &'a Alert) -> Self {
        Self {
            alert_id: &alert.id,
            rule: &alert.rule,
            kind: alert.kind.as_str(),
            state: alert.state.as_str(),
            agent_id: alert.agent.as_ref().map(crate::domain::AgentId::as_str),
            agent_name: &alert.agent_name,
            starts_at: rfc3339(alert.starts_at),
            ends_at: alert.ends_at.map(rfc3339),
            description: &alert.description,
            fingerprint: &alert.fingerprint,
        }
    }
}

fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::alert::rule::{RuleKind, RuleSource};
    use crate::domain::{AgentId, OrgId};

    fn rule() -> Rule {
        Rule {
            org: OrgId::new("acme"),
            name: "lost".to_owned(),
            kind: RuleKind::AgentOffline,
            selector: "env=prod".to_owned(),
            hold: Duration::from_secs(60),
            webhook: None,
            summary: "a machine is lost".to_owned(),
            source: RuleSource::Api,
            created_at: SystemTime::UNIX_EPOCH,
        }
    }

    fn alert(state: AlertState) -> Alert {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        Alert {
            org: OrgId::new("acme"),
            id: "x".to_owned(),
            rule: "lost".to_owned(),
            kind: RuleKind::AgentOffline,
            state,
            agent: Some(AgentId::new("a-1")),
            agent_name: "web-1".to_owned(),
            starts_at: start,
            ends_at: (state == AlertState::Resolved).then(|| start + Duration::from_secs(90)),
            description: "web-1 is offline".to_owned(),
            fingerprint: "0123456789abcdef".to_owned(),
        }
    }

    #[test]
    fn alertmanager_body_has_the_webhook_config_fields() {
        let firing = body(
            PayloadFormat::Alertmanager,
            &rule(),
            &[alert(AlertState::Firing)],
        );
        let v: serde_json::Value = serde_json::from_slice(&firing).expect("json");
        assert_eq!(v["version"], "4");
        assert_eq!(v["status"], "firing");
        assert_eq!(v["truncatedAlerts"], 0);
        assert_eq!(v["groupLabels"]["alertname"], "lost");
        assert!(
            v["groupKey"]
                .as_str()
                .is_some_and(|k| k.contains("alertname=\"lost\""))
        );
        let a = &v["alerts"][0];
        assert_eq!(a["status"], "firing");
        assert_eq!(a["labels"]["alertname"], "lost");
        assert_eq!(a["labels"]["agent_id"], "a-1");
        assert_eq!(a["annotations"]["summary"], "a machine is lost");
        assert_eq!(a["startsAt"], "2023-11-14T22:13:20.000Z");
        assert_eq!(a["endsAt"], ZERO_TIME);
        assert_eq!(a["fingerprint"], "0123456789abcdef");

        let resolved = body(
            PayloadFormat::Alertmanager,
            &rule(),
            &[alert(AlertState::Resolved)],
        );
        let v: serde_json::Value = serde_json::from_slice(&resolved).expect("json");
        assert_eq!(v["status"], "resolved");
        assert_eq!(v["alerts"][0]["endsAt"], "2023-11-14T22:14:50.000Z");
    }

    #[test]
    fn json_body_carries_the_alerts_as_listed() {
        let json = body(PayloadFormat::Json, &rule(), &[alert(AlertState::Resolved)]);
        let v: serde_json::Value = serde_json::from_slice(&json).expect("json");
        assert_eq!(v["version"], "tether.alerts.v1");
        assert_eq!(v["org"], "acme");
        assert_eq!(v["alerts"][0]["state"], "resolved");
        assert_eq!(v["alerts"][0]["agent_id"], "a-1");
        assert_eq!(v["alerts"][0]["kind"], "agent_offline");
    }

    #[test]
    fn signature_is_the_hmac_sha256_of_the_body() {
        // RFC 4231, test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
