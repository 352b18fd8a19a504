//! The domain of alerts: rules, the alerts they raise, and the checks every rule passes before
//! it is used, whatever its source (the rules file or `CreateAlertRule`).
//!
//! Invariant: a [`Rule`] that exists has passed [`Rule::validate`]: a name that is an id, a
//! selector in the `ListAgents` grammar, a hold time above zero and, for a ratio rule, a ratio
//! in `0..=1`; a webhook with an `http` or `https` URL. Stored rules are checked again when
//! loaded, so a rule that no longer passes is reported and skipped, never evaluated.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tether_proto::selector::Selector;

use crate::domain::{AgentId, OrgId, is_valid_id};

/// Most rules one org may have (file and API together).
pub const MAX_RULES_PER_ORG: usize = 100;
/// Longest hold time a rule may ask for.
pub const MAX_FOR: Duration = Duration::from_secs(30 * 24 * 3600);
/// Most bytes of a rule's summary, and of a webhook URL.
pub const MAX_TEXT_BYTES: usize = 1024;
/// Most bytes of a webhook secret.
pub const MAX_SECRET_BYTES: usize = 256;

/// What a rule watches.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum RuleKind {
    /// Per agent: stale or offline (no message received) for the hold time.
    AgentOffline,
    /// Per agent: health critical for the hold time.
    HealthCritical,
    /// For the rule: the online share of the selected agents below `min_ratio` for the hold
    /// time.
    OnlineRatioBelow { min_ratio: f64 },
}

/// The body a webhook receives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PayloadFormat {
    /// Alertmanager's webhook payload, version 4.
    Alertmanager,
    /// Tether's own JSON.
    Json,
}

/// Where notifications go.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Webhook {
    pub url: String,
    pub format: PayloadFormat,
    /// The HMAC-SHA256 key of the `X-Tether-Signature` header; `None` sends no signature.
    pub secret: Option<String>,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("url", &self.url)
            .field("format", &self.format)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Where a rule comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RuleSource {
    /// The server's rules file: not stored, read-only over RPC.
    Config,
    /// `CreateAlertRule`: stored.
    Api,
}

/// One alert rule of one org.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rule {
    pub org: OrgId,
    pub name: String,
    pub kind: RuleKind,
    /// A label selector in the `ListAgents` grammar, as written.
    pub selector: String,
    /// How long the condition must hold before the alert fires.
    pub hold: Duration,
    /// `None`: the org's webhook, if it has one.
    pub webhook: Option<Webhook>,
    pub summary: String,
    pub source: RuleSource,
    pub created_at: SystemTime,
}

/// Firing or resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AlertState {
    Firing,
    Resolved,
}

/// One alert: a rule's condition that held for its hold time, for one agent or for the rule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub org: OrgId,
    /// `{starts_at millis, 12 hex}-{fingerprint}`: unique, in firing order within a rule.
    pub id: String,
    pub rule: String,
    pub kind: RuleKind,
    pub state: AlertState,
    pub agent: Option<AgentId>,
    pub agent_name: String,
    pub starts_at: SystemTime,
    pub ends_at: Option<SystemTime>,
    pub description: String,
    pub fingerprint: String,
}

/// Why a rule cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RuleError(pub String);

// === impl Rule ===

impl Rule {
    /// Checks the rule (see the module's invariant) and returns its parsed selector.
    ///
    /// # Errors
    ///
    /// [`RuleError`] naming what is wrong.
    pub fn validate(&self) -> Result<Selector, RuleError> {
        let bad = |m: String| Err(RuleError(m));
        if !is_valid_id(&self.name) {
            return bad(format!(
                "rule name {:?} must be 1-64 characters of [a-z0-9-]",
                self.name
            ));
        }
        let selector = Selector::parse(&self.selector)
            .map_err(|e| RuleError(format!("rule {}: selector: {e}", self.name)))?;
        if self.hold.is_zero() {
            return bad(format!(
                "rule {}: `for` must be greater than zero",
                self.name
            ));
        }
        if self.hold > MAX_FOR {
            return bad(format!("rule {}: `for` may be at most 30 days", self.name));
        }
        if let RuleKind::OnlineRatioBelow { min_ratio } = self.kind
            && !(0.0..=1.0).contains(&min_ratio)
        {
            return bad(format!(
                "rule {}: min online ratio must be within 0..1, not {min_ratio}",
                self.name
            ));
        }
        if self.summary.len() > MAX_TEXT_BYTES || self.summary.chars().any(char::is_control) {
            return bad(format!(
                "rule {}: summary must be at most {MAX_TEXT_BYTES} bytes without control characters",
                self.name
            ));
        }
        if let Some(webhook) = &self.webhook {
            webhook
                .validate()
                .map_err(|e| RuleError(format!("rule {}: {e}", self.name)))?;
        }
        Ok(selector)
    }
}

// === impl Webhook ===

impl Webhook {
    /// Checks the URL (`http://` or `https://` with a host, no spaces or control characters)
    /// and the secret's size.
    ///
    /// # Errors
    ///
    /// [`RuleError`] naming what is wrong.
    pub fn validate(&self) -> Result<(), RuleError> {
        let uri: Option<http::Uri> = self.url.parse().ok();
        let usable = uri.as_ref().is_some_and(|uri| {
            matches!(uri.scheme_str(), Some("http" | "https"))
                && uri.host().is_some_and(|h| !h.is_empty())
        });
        if !usable || self.url.len() > MAX_TEXT_BYTES {
            return Err(RuleError(format!(
                "webhook url {:?} must be an http:// or https:// URL with a host",
                self.url
            )));
        }
        if self
            .secret
            .as_ref()
            .is_some_and(|s| s.is_empty() || s.len() > MAX_SECRET_BYTES)
        {
            return Err(RuleError(format!(
                "webhook secret must be 1-{MAX_SECRET_BYTES} bytes"
            )));
        }
        Ok(())
    }
}

// === impl RuleKind ===

impl RuleKind {
    /// The name in labels, logs and the rules file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AgentOffline => "agent_offline",
            Self::HealthCritical => "health_critical",
            Self::OnlineRatioBelow { .. } => "online_ratio_below",
        }
    }

    /// Whether the rule raises one alert per agent (else one for the rule).
    pub fn per_agent(self) -> bool {
        !matches!(self, Self::OnlineRatioBelow { .. })
    }
}

impl AlertState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Firing => "firing",
            Self::Resolved => "resolved",
        }
    }
}

/// The fingerprint of a rule's alert for `agent` (or for the rule): the same every time it
/// fires, different for every org, rule and agent. 16 hex digits, as Alertmanager's.
pub fn fingerprint(org: &OrgId, rule: &str, agent: Option<&AgentId>) -> String {
    let mut hash = Sha256::new();
    for part in [org.as_str(), rule, agent.map_or("", AgentId::as_str)] {
        hash.update(part.as_bytes());
        hash.update([0]);
    }
    hex::encode(&hash.finalize()[..8])
}

/// The id of an alert that fires at `at` with `fingerprint`.
pub fn alert_id(at: SystemTime, fingerprint: &str) -> String {
    let millis = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    format!("{millis:012x}-{fingerprint}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(kind: RuleKind, selector: &str, hold: Duration) -> Rule {
        Rule {
            org: OrgId::new("o"),
            name: "lost".to_owned(),
            kind,
            selector: selector.to_owned(),
            hold,
            webhook: None,
            summary: String::new(),
            source: RuleSource::Api,
            created_at: SystemTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn bad_rules_are_refused_with_what_is_wrong() {
        let second = Duration::from_secs(1);
        let ok = rule(RuleKind::AgentOffline, "env=prod,!canary", second);
        assert!(ok.validate().is_ok());
        for (bad, why) in [
            (
                rule(RuleKind::AgentOffline, "env=prod,,x", second),
                "selector",
            ),
            (rule(RuleKind::AgentOffline, "", Duration::ZERO), "`for`"),
            (
                rule(RuleKind::OnlineRatioBelow { min_ratio: 1.5 }, "", second),
                "ratio",
            ),
            (
                rule(
                    RuleKind::OnlineRatioBelow {
                        min_ratio: f64::NAN,
                    },
                    "",
                    second,
                ),
                "ratio",
            ),
            (
                Rule {
                    name: "Bad Name".to_owned(),
                    ..ok.clone()
                },
                "name",
            ),
            (
                Rule {
                    webhook: Some(Webhook {
                        url: "ftp://example.com/".to_owned(),
                        format: PayloadFormat::Json,
                        secret: None,
                    }),
                    ..ok.clone()
                },
                "webhook",
            ),
        ] {
            let err = bad.validate().expect_err("refused");
            assert!(err.0.contains(why), "{err} should mention {why}");
        }
    }

    #[test]
    fn fingerprints_differ_by_org_rule_and_agent_and_ids_sort_by_time() {
        let (a, b) = (OrgId::new("a"), OrgId::new("b"));
        let agent = AgentId::new("x");
        let fp = fingerprint(&a, "r", Some(&agent));
        assert_eq!(fp.len(), 16);
        assert_eq!(fp, fingerprint(&a, "r", Some(&agent)));
        assert_ne!(fp, fingerprint(&b, "r", Some(&agent)));
        assert_ne!(fp, fingerprint(&a, "r2", Some(&agent)));
        assert_ne!(fp, fingerprint(&a, "r", None));
        let early = alert_id(SystemTime::UNIX_EPOCH + Duration::from_secs(1), &fp);
        let late = alert_id(SystemTime::UNIX_EPOCH + Duration::from_secs(2), &fp);
        assert!(early < late);
        assert!(is_valid_id(&early));
    }
}
