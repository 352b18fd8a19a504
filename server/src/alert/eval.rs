//! The pure rule of alert evaluation: given what a rule's state is (its pending conditions and
//! firing alerts) and what the registry shows now, which alerts fire and which resolve.
//! [`decide`] changes only the pending conditions (memory, never stored); the firing set
//! changes only once the caller has stored the changes ([`RuleState::apply`]), so an alert is
//! never announced before it is durable, and a failed commit is simply decided again.
//!
//! Invariants: an alert fires once per episode (a firing alert stays firing, untouched, while
//! its condition holds); it resolves when its condition stops holding, the agent leaves the
//! selection (comes back online, is deleted, expires, loses a label) or the rule goes. A
//! per-agent rule fires at most [`MAX_FIRING_PER_RULE`] alerts; past that, newcomers wait
//! (counted as suppressed) until firing ones resolve.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use tether_proto::selector::Selector;

use super::rule::{Alert, AlertState, Rule, RuleKind, alert_id, fingerprint};
use crate::domain::{AgentId, AgentStatus};
use crate::registry::Candidate;

/// Most alerts one rule keeps firing at once: a whole fleet going dark is one webhook call of
/// this many alerts, not a hundred thousand.
pub const MAX_FIRING_PER_RULE: usize = 1000;

/// Which alert of a rule: the agent's, or the rule's own (`None`).
pub type AlertKey = Option<AgentId>;

/// One rule with what evaluation remembers of it.
#[derive(Debug)]
pub struct RuleState {
    pub rule: Rule,
    pub selector: Selector,
    /// Conditions seen holding, not yet for the hold time, and since when (per-agent rules
    /// other than offline, whose start the registry knows, and the ratio rule).
    pub pending: HashMap<AlertKey, SystemTime>,
    pub firing: HashMap<AlertKey, Alert>,
}

/// What the registry shows for one rule.
#[derive(Clone, Debug)]
pub enum Observation {
    /// The agents the rule's per-agent condition holds for now.
    Agents(Vec<Candidate>),
    /// Online agents and all agents of the selection (expired aside).
    Ratio { online: u64, total: u64 },
}

/// What one evaluation of one rule decided.
#[derive(Debug, Default, PartialEq)]
pub struct Decision {
    pub fired: Vec<Alert>,
    pub resolved: Vec<Alert>,
    /// Alerts that would have fired but for [`MAX_FIRING_PER_RULE`].
    pub suppressed: u64,
}

/// Decides what fires and resolves for `state` given `observed` at `now`. Silence is counted
/// from `started_at` at the earliest: the server knows nothing of the time it was down, so a
/// restart longer than a rule's hold time never fires that rule for every agent at once.
pub fn decide(
    state: &mut RuleState,
    observed: &Observation,
    now: SystemTime,
    started_at: SystemTime,
) -> Decision {
    let rule = &state.rule;
    let mut decision = Decision::default();
    let held = |since: SystemTime| now.duration_since(since).unwrap_or(Duration::ZERO);
    let mut holding: HashMap<AlertKey, String> = HashMap::new();
    match (rule.kind, observed) {
        (RuleKind::AgentOffline, Observation::Agents(candidates)) => {
            state.pending.clear();
            for c in candidates {
                let quiet = held(c.since.max(started_at));
                let key = Some(c.id.clone());
                if state.firing.contains_key(&key) || quiet >= rule.hold {
                    holding.insert(key, describe_silence(c, held(c.since)));
                }
            }
        }
        (RuleKind::HealthCritical, Observation::Agents(candidates)) => {
            let seen: HashMap<AlertKey, &Candidate> =
                candidates.iter().map(|c| (Some(c.id.clone()), c)).collect();
            state.pending.retain(|key, _| seen.contains_key(key));
            for (key, c) in seen {
                let since = *state.pending.entry(key.clone()).or_insert(now);
                if state.firing.contains_key(&key) || held(since) >= rule.hold {
                    let text = format!("{} has been critical for {}", c.name, human(held(since)));
                    holding.insert(key, text);
                }
            }
        }
        (RuleKind::OnlineRatioBelow { min_ratio }, Observation::Ratio { online, total }) => {
            #[allow(
                clippy::cast_precision_loss,
                reason = "agent counts are far below 2^52"
            )]
            let ratio = (*total > 0).then(|| *online as f64 / *total as f64);
            match ratio.filter(|r| *r < min_ratio) {
                Some(ratio) => {
                    let since = *state.pending.entry(None).or_insert(now);
                    if state.firing.contains_key(&None) || held(since) >= rule.hold {
                        let text = format!(
                            "{online} of {total} selected agents online ({:.1}%, below {:.1}%)",
                            ratio * 100.0,
                            min_ratio * 100.0
                        );
                        holding.insert(None, text);
                    }
                }
                None => state.pending.clear(),
            }
        }
        // A kind and an observation that do not go together: the caller's bug; nothing holds.
        _ => {}
    }
    let names: HashMap<&AgentId, &str> = match observed {
        Observation::Agents(c) => c.iter().map(|c| (&c.id, c.name.as_str())).collect(),
        Observation::Ratio { .. } => HashMap::new(),
    };
    let mut gone: Vec<&Alert> = state
        .firing
        .iter()
        .filter(|(key, _)| !holding.contains_key(*key))
        .map(|(_, alert)| alert)
        .collect();
    gone.sort_unstable_by(|a, b| a.id.cmp(&b.id));
    decision.resolved = gone
        .into_iter()
        .map(|alert| resolve(alert, now, resolution(rule.kind)))
        .collect();
    let mut firing = state.firing.len() - decision.resolved.len();
    let mut new: Vec<(AlertKey, String)> = holding
        .into_iter()
        .filter(|(key, _)| !state.firing.contains_key(key))
        .collect();
    new.sort_unstable();
    for (key, description) in new {
        if firing >= MAX_FIRING_PER_RULE {
            decision.suppressed += 1;
            continue;
        }
        firing += 1;
        state.pending.remove(&key);
        let print = fingerprint(&rule.org, &rule.name, key.as_ref());
        let agent_name = key
            .as_ref()
            .and_then(|id| names.get(id))
            .map_or_else(String::new, |n| (*n).to_owned());
        decision.fired.push(Alert {
            org: rule.org.clone(),
            id: alert_id(now, &print),
            rule: rule.name.clone(),
            kind: rule.kind,
            state: AlertState::Firing,
            agent: key,
            agent_name,
            starts_at: now,
            ends_at: None,
            description,
            fingerprint: print,
        });
    }
    decision
}

/// `alert`, resolved at `now` for `why`.
pub fn resolve(alert: &Alert, now: SystemTime, why: &str) -> Alert {
    Alert {
        state: AlertState::Resolved,
        ends_at: Some(now),
        description: format!("{} (resolved: {why})", alert.description),
        ..alert.clone()
    }
}

// === impl RuleState ===

impl RuleState {
    /// A rule with nothing pending or firing yet.
    pub fn new(rule: Rule, selector: Selector) -> Self {
        Self {
            rule,
            selector,
            pending: HashMap::new(),
            firing: HashMap::new(),
        }
    }

    /// Applies a decision that is now stored.
    pub fn apply(&mut self, decision: &Decision) {
        for alert in &decision.resolved {
            self.firing.remove(&alert.agent);
        }
        for alert in &decision.fired {
            self.firing.insert(alert.agent.clone(), alert.clone());
        }
    }
}

fn resolution(kind: RuleKind) -> &'static str {
    match kind {
        RuleKind::AgentOffline => "back online, or no longer selected",
        RuleKind::HealthCritical => "no longer critical, or no longer selected",
        RuleKind::OnlineRatioBelow { .. } => "the online ratio is back",
    }
}

fn describe_silence(c: &Candidate, quiet: Duration) -> String {
    let status = match c.status {
        AgentStatus::Stale => "stale",
        _ => "offline",
    };
    format!("{} is {status}: no message for {}", c.name, human(quiet))
}

/// `quiet` to the second, as humans read it (`1m 5s`).
fn human(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

#[cfg(test)]
mod tests;
