//! The alert rules file (`--alert-rules`, or `alert-rules = "…"` in the server's config
//! file): a TOML file of rules and per-org webhooks, read once at start, as Prometheus reads
//! its `rule_files`. The server's config file names it rather than holding the rules because
//! its keys are the binary's flags, one value each; rules are tables.
//!
//! ```toml
//! [[webhook]]                      # where an org's rules without a webhook of their own send
//! org = "default"
//! url = "https://hooks.example.com/tether"
//! format = "alertmanager"          # or "json"
//! secret_file = "webhook.secret"   # or secret = "…"; relative to this file's directory
//!
//! [[rule]]
//! org = "default"
//! name = "lost-prod"
//! kind = "agent_offline"           # or "health_critical", "online_ratio_below"
//! selector = "env=prod"            # ListAgents' grammar; empty selects every agent
//! for = "5m"
//! # min_online_ratio = 0.9         # online_ratio_below only
//! summary = "a production machine stopped reporting"
//! # webhook = { url = "…", format = "json", secret = "…" }
//! ```
//!
//! Every rule passes [`Rule::validate`] and every webhook [`Webhook::validate`]; the first that
//! does not fails the start in one line naming the file.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Deserialize;

use super::rule::{PayloadFormat, Rule, RuleKind, RuleSource, Webhook};
use crate::domain::{OrgId, is_valid_id};

/// What the rules file holds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RulesFile {
    pub rules: Vec<Rule>,
    pub org_webhooks: Vec<(OrgId, Webhook)>,
}

/// Why the rules file cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("alert rules file {}: {reason}", path.display())]
pub struct RulesFileError {
    pub path: PathBuf,
    pub reason: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileToml {
    #[serde(default)]
    webhook: Vec<WebhookToml>,
    #[serde(default)]
    rule: Vec<RuleToml>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WebhookToml {
    #[serde(default)]
    org: Option<String>,
    url: String,
    #[serde(default)]
    format: Option<String>,
    #[serde(default)]
    secret: Option<String>,
    #[serde(default)]
    secret_file: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleToml {
    org: String,
    name: String,
    kind: String,
    #[serde(default)]
    selector: String,
    #[serde(rename = "for")]
    hold: String,
    #[serde(default)]
    min_online_ratio: Option<f64>,
    #[serde(default)]
    summary: String,
    #[serde(default)]
    webhook: Option<WebhookToml>,
}

/// Reads and checks the rules file at `path`.
///
/// # Errors
///
/// [`RulesFileError`]: unreadable, not TOML of this shape, or a rule or webhook that does not
/// validate.
pub fn read(path: &Path) -> Result<RulesFile, RulesFileError> {
    let fail = |reason: String| RulesFileError {
        path: path.to_owned(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    parse(&text, path.parent().unwrap_or(Path::new("."))).map_err(fail)
}

/// Parses a rules file's `text`; relative secret files are under `dir`.
///
/// # Errors
///
/// What is wrong, in one line.
pub fn parse(text: &str, dir: &Path) -> Result<RulesFile, String> {
    let file: FileToml = toml::from_str(text).map_err(|e| e.to_string().replace('\n', " "))?;
    let now = SystemTime::now();
    let mut out = RulesFile::default();
    for w in file.webhook {
        let org = w
            .org
            .clone()
            .ok_or_else(|| "every [[webhook]] needs an `org`".to_owned())?;
        let org = org_id(&org)?;
        if out.org_webhooks.iter().any(|(o, _)| o == &org) {
            return Err(format!("org {org} has two webhooks"));
        }
        out.org_webhooks.push((org, webhook(w, dir)?));
    }
    for r in file.rule {
        let hold: Duration = humantime::parse_duration(&r.hold)
            .map_err(|e| format!("rule {}: `for` {:?}: {e}", r.name, r.hold))?;
        let kind = match (r.kind.as_str(), r.min_online_ratio) {
            ("agent_offline", None) => RuleKind::AgentOffline,
            ("health_critical", None) => RuleKind::HealthCritical,
            ("online_ratio_below", Some(min_ratio)) => RuleKind::OnlineRatioBelow { min_ratio },
            ("online_ratio_below", None) => {
                return Err(format!(
                    "rule {}: online_ratio_below needs min_online_ratio",
                    r.name
                ));
            }
            ("agent_offline" | "health_critical", Some(_)) => {
                return Err(format!(
                    "rule {}: min_online_ratio is for online_ratio_below only",
                    r.name
                ));
            }
            (other, _) => {
                return Err(format!(
                    "rule {}: unknown kind {other:?} (agent_offline, health_critical, \
                     online_ratio_below)",
                    r.name
                ));
            }
        };
        let rule = Rule {
            org: org_id(&r.org)?,
            name: r.name,
            kind,
            selector: r.selector,
            hold,
            webhook: r.webhook.map(|w| webhook(w, dir)).transpose()?,
            summary: r.summary,
            source: RuleSource::Config,
            created_at: now,
        };
        rule.validate().map_err(|e| e.0)?;
        if out
            .rules
            .iter()
            .any(|x| x.org == rule.org && x.name == rule.name)
        {
            return Err(format!(
                "rule {} appears twice in org {}",
                rule.name, rule.org
            ));
        }
        out.rules.push(rule);
    }
    Ok(out)
}

fn org_id(org: &str) -> Result<OrgId, String> {
    if is_valid_id(org) {
        Ok(OrgId::new(org))
    } else {
        Err(format!("org {org:?} is not an org id ([a-z0-9-])"))
    }
}

fn webhook(w: WebhookToml, dir: &Path) -> Result<Webhook, String> {
    let format = match w.format.as_deref() {
        None | Some("alertmanager") => PayloadFormat::Alertmanager,
        Some("json") => PayloadFormat::Json,
        Some(other) => return Err(format!("webhook format {other:?}: alertmanager or json")),
    };
    let secret = match (w.secret, w.secret_file) {
        (Some(_), Some(_)) => {
            return Err("a webhook takes secret or secret_file, not both".to_owned());
        }
        (Some(secret), None) => Some(secret),
        (None, Some(file)) => {
            let file = dir.join(file);
            let text = std::fs::read_to_string(&file)
                .map_err(|e| format!("webhook secret file {}: {e}", file.display()))?;
            Some(text.trim_end_matches(['\n', '\r']).to_owned())
        }
        (None, None) => None,
    };
    let webhook = Webhook {
        url: w.url,
        format,
        secret,
    };
    webhook.validate().map_err(|e| e.0)?;
    Ok(webhook)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rules_file_with_every_kind_and_webhooks_parses() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("s"), "sekret\n").expect("write");
        let file = parse(
            r#"
            [[webhook]]
            org = "default"
            url = "http://127.0.0.1:9/hook"
            secret_file = "s"

            [[rule]]
            org = "default"
            name = "lost"
            kind = "agent_offline"
            selector = "env=prod"
            for = "5m"

            [[rule]]
            org = "default"
            name = "ratio"
            kind = "online_ratio_below"
            for = "1m"
            min_online_ratio = 0.9
            webhook = { url = "https://example.com/x", format = "json" }
            "#,
            dir.path(),
        )
        .expect("parses");
        assert_eq!(file.org_webhooks[0].1.secret.as_deref(), Some("sekret"));
        assert_eq!(file.rules.len(), 2);
        assert_eq!(file.rules[0].hold, Duration::from_secs(300));
        assert_eq!(
            file.rules[1].kind,
            RuleKind::OnlineRatioBelow { min_ratio: 0.9 }
        );
        assert_eq!(file.rules[1].source, RuleSource::Config);
    }

    #[test]
    fn bad_rules_files_are_refused_in_one_line() {
        let dir = Path::new(".");
        for (text, why) in [
            (
                "[[rule]]\norg='o'\nname='x'\nkind='agent_offline'\nfor='0s'",
                "greater than zero",
            ),
            (
                "[[rule]]\norg='o'\nname='x'\nkind='agent_offline'\nselector='a=1,,b'\nfor='1m'",
                "selector",
            ),
            (
                "[[rule]]\norg='o'\nname='x'\nkind='online_ratio_below'\nmin_online_ratio=2.0\nfor='1m'",
                "ratio",
            ),
            (
                "[[rule]]\norg='o'\nname='x'\nkind='nope'\nfor='1m'",
                "unknown kind",
            ),
            (
                "[[rule]]\norg='O'\nname='x'\nkind='agent_offline'\nfor='1m'",
                "org",
            ),
            ("[[webhook]]\norg='o'\nurl='file:///etc/passwd'", "http"),
            (
                "[[rule]]\norg='o'\nname='x'\nkind='agent_offline'\nfor='1m'\nextra=1",
                "unknown field",
            ),
        ] {
            let err = parse(text, dir).expect_err(text);
            assert!(err.contains(why), "{err} should mention {why}");
            assert!(!err.contains('\n'), "one line: {err}");
        }
    }
}
