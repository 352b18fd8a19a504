//! Alert rules made over RPC: listing an org's rules, creating and deleting them.
//!
//! **Invariants:** a rule change takes the alerts' turn and is committed, with its audit entry,
//! before any pass sees it; deleting a rule resolves its firing alerts in the same commit, so
//! none is left firing for a rule that is gone; a rule of the rules file is never deleted over
//! RPC; an org has at most [`MAX_RULES_PER_ORG`] rules.

use std::time::SystemTime;

use super::eval::{self, Decision, RuleState};
use super::rule::{Alert, MAX_RULES_PER_ORG, Rule, RuleSource};
use super::{Alerts, Outcome};
use crate::domain::{AuditEntry, OrgId};
use crate::error::ServerError;
use crate::metrics::alerts::RuleLabels;
use crate::store::Write;

impl Alerts {
    /// The rules of `org`, by name.
    pub fn rules(&self, org: &OrgId) -> Vec<Rule> {
        let inner = self.lock();
        inner
            .orgs
            .get(org)
            .map(|o| o.rules.values().map(|s| s.rule.clone()).collect())
            .unwrap_or_default()
    }

    /// Adds a rule made over RPC, stored with `audit`.
    ///
    /// # Errors
    ///
    /// `INVALID_ARGUMENT` for a rule that does not validate; `ALREADY_EXISTS` for a name in
    /// use; `RESOURCE_EXHAUSTED` past [`MAX_RULES_PER_ORG`]; a failed commit.
    pub async fn create_rule(&self, rule: Rule, audit: AuditEntry) -> Result<Rule, ServerError> {
        let selector = rule
            .validate()
            .map_err(|e| ServerError::InvalidArgument(e.0))?;
        let _turn = self.turn.lock().await;
        {
            let inner = self.lock();
            let rules = inner.orgs.get(&rule.org).map(|o| &o.rules);
            if rules.is_some_and(|r| r.contains_key(&rule.name)) {
                return Err(ServerError::AlreadyExists(format!(
                    "alert rule {}",
                    rule.name
                )));
            }
            if rules.is_some_and(|r| r.len() >= MAX_RULES_PER_ORG) {
                return Err(ServerError::ResourceExhausted(format!(
                    "an org may have at most {MAX_RULES_PER_ORG} alert rules"
                )));
            }
        }
        self.writer
            .commit_audited(
                vec![Write::PutAlertRule(Box::new(rule.clone()))],
                Some(audit),
            )
            .await?;
        let mut inner = self.lock();
        inner
            .org(&rule.org)
            .rules
            .insert(rule.name.clone(), RuleState::new(rule.clone(), selector));
        drop(inner);
        self.refresh_gauges();
        Ok(rule)
    }

    /// Deletes a rule made over RPC; its firing alerts resolve (stored, announced, delivered)
    /// in the same commit as the deletion and `audit`.
    ///
    /// # Errors
    ///
    /// `NOT_FOUND` for no such rule in `org`; `FAILED_PRECONDITION` for a rule of the rules
    /// file; a failed commit.
    pub async fn delete_rule(
        &self,
        org: &OrgId,
        name: &str,
        audit: AuditEntry,
    ) -> Result<(), ServerError> {
        let _turn = self.turn.lock().await;
        let outcome = {
            let inner = self.lock();
            let state = inner
                .orgs
                .get(org)
                .and_then(|o| o.rules.get(name))
                .ok_or_else(|| ServerError::NotFound(format!("alert rule {name}")))?;
            if state.rule.source == RuleSource::Config {
                return Err(ServerError::FailedPrecondition(format!(
                    "alert rule {name} comes from the server's rules file: edit the file instead"
                )));
            }
            let now = SystemTime::now();
            let mut resolved: Vec<Alert> = state
                .firing
                .values()
                .map(|a| eval::resolve(a, now, "the rule was deleted"))
                .collect();
            resolved.sort_unstable_by(|a, b| a.id.cmp(&b.id));
            Outcome {
                org: org.clone(),
                rule: state.rule.clone(),
                decision: Decision {
                    resolved,
                    ..Decision::default()
                },
            }
        };
        let delete = Write::DeleteAlertRule {
            org: org.clone(),
            name: name.to_owned(),
        };
        self.commit(vec![outcome], Some((audit, vec![delete])))
            .await?;
        let mut inner = self.lock();
        inner.org(org).rules.remove(name);
        drop(inner);
        self.metrics.alerts.firing.remove(&RuleLabels {
            org: org.to_string(),
            rule: name.to_owned(),
        });
        Ok(())
    }
}
