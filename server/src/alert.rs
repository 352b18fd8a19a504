//! Alerts: rules over the fleet (an agent silent for a while, an agent critical for a while, too
//! few of a selection online), the alerts they raise, and their delivery to webhooks.
//!
//! [`Alerts`] holds every org's rules and firing alerts in memory, with a bounded history of
//! resolved ones; [`Alerts::run`] evaluates every rule each `interval` (`alert/eval.rs`, a pure
//! rule over what the registry answers from its index, `registry/alerts.rs`), stores what
//! fired and resolved through the writer, then tells watchers and queues one notification per
//! rule for its webhook (`alert/deliver.rs`). Rules come from the rules file (`alert/file.rs`,
//! never stored) and from `AlertService` (stored; `alert/manage.rs` creates and deletes them),
//! which also reads alerts through `alert/read.rs`.
//!
//! # Invariants
//!
//! - **Stored, then announced.** An alert's change is committed before the in-memory state,
//!   watchers or webhooks see it; a failed commit changes nothing and the next pass decides
//!   again. After a restart the stored firing alerts are firing again, unchanged, so a
//!   condition that still holds is not announced twice; silence is counted from the start at
//!   the earliest, so downtime never fires every agent's alert at once.
//! - **One turn at a time.** Evaluation passes and rule changes take turns (`turn`), so a rule
//!   deleted mid-pass never gets an alert after its resolution.
//! - **Tenancy.** Rules, alerts and watch feeds are per org; a rule's selector is applied to
//!   its own org's agents only.
//! - **Nobody waits for a webhook.** Queuing a notification never waits; each webhook has its
//!   own bounded queue and worker.
//! - **Bounded.** At most `MAX_RULES_PER_ORG` rules per org, `MAX_FIRING_PER_RULE` firing
//!   alerts per rule, `max_resolved` resolved alerts per org (the oldest are deleted), and
//!   [`WATCH_BUFFER`] events per watcher (past it the watcher ends with `ABORTED`), and as many
//!   alert watches per org as agent watches (`max_watches_per_org`).
//!
//! # Cost
//!
//! A pass costs, per rule, one read lock of the registry and a few bitmap operations on the
//! org's label index, plus the agents in the answer: the silent or critical agents the
//! selector picks (none for a ratio rule). A healthy fleet of 100,000 agents therefore costs
//! microseconds per rule per pass; a fleet that has gone dark costs a pass over the dark
//! agents, at most once per `interval` (default [`DEFAULT_ALERT_INTERVAL`]).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::domain::{AuditEntry, OrgId};
use crate::error::ServerError;
use crate::metrics::Metrics;
use crate::metrics::alerts::RuleLabels;
use crate::registry::Registry;
use crate::store::Write;
use crate::writer::WriterHandle;

pub mod deliver;
pub mod eval;
pub mod file;
mod manage;
pub mod payload;
mod post;
mod read;
pub mod rule;

pub use self::read::{AlertQuery, WatchSlot};

use self::deliver::{Deliveries, DeliverySettings, Notification};
use self::eval::{Decision, Observation, RuleState, decide};
use self::rule::{Alert, AlertState, Rule, RuleKind, RuleSource, Webhook};

/// How often every rule is evaluated.
pub const DEFAULT_ALERT_INTERVAL: Duration = Duration::from_secs(5);
/// Longest one webhook attempt may take.
pub const DEFAULT_WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);
/// Wait before a webhook's second attempt (doubled before each further one).
pub const DEFAULT_WEBHOOK_RETRY_FIRST: Duration = Duration::from_secs(1);
/// Longest wait between two attempts.
pub const DEFAULT_WEBHOOK_RETRY_MAX: Duration = Duration::from_secs(60);
/// Attempts per notification: with the defaults, about two minutes of retries.
pub const DEFAULT_WEBHOOK_MAX_ATTEMPTS: u32 = 8;
/// Notifications waiting per webhook.
pub const DEFAULT_WEBHOOK_QUEUE: usize = 256;
/// Resolved alerts kept per org.
pub const DEFAULT_MAX_RESOLVED: usize = 1000;
/// Events one `WatchAlerts` watcher may fall behind by before it is ended.
pub const WATCH_BUFFER: usize = 4096;

/// The alert settings of a server.
#[derive(Clone, Debug, PartialEq)]
pub struct AlertSettings {
    pub interval: Duration,
    pub delivery: DeliverySettings,
    pub max_resolved: usize,
    /// The rules of the rules file, already validated.
    pub rules: Vec<Rule>,
    /// Each org's webhook from the rules file: where rules without their own send.
    pub org_webhooks: Vec<(OrgId, Webhook)>,
}

impl Default for AlertSettings {
    fn default() -> Self {
        Self {
            interval: DEFAULT_ALERT_INTERVAL,
            delivery: DeliverySettings {
                timeout: DEFAULT_WEBHOOK_TIMEOUT,
                retry_first: DEFAULT_WEBHOOK_RETRY_FIRST,
                retry_max: DEFAULT_WEBHOOK_RETRY_MAX,
                max_attempts: DEFAULT_WEBHOOK_MAX_ATTEMPTS,
                queue: DEFAULT_WEBHOOK_QUEUE,
            },
            max_resolved: DEFAULT_MAX_RESOLVED,
            rules: Vec::new(),
            org_webhooks: Vec::new(),
        }
    }
}

/// A change a watcher sees.
#[derive(Clone, Debug)]
pub struct AlertEvent(pub Arc<Alert>);

/// Every org's rules and alerts.
pub struct Alerts {
    inner: Mutex<Inner>,
    /// Taken by each evaluation pass and rule change for its whole decide-commit-apply.
    turn: tokio::sync::Mutex<()>,
    registry: Arc<Registry>,
    writer: WriterHandle,
    settings: AlertSettings,
    metrics: Arc<Metrics>,
    /// Silence before this is not counted (see the invariants).
    started_at: SystemTime,
    deliveries: Deliveries,
}

#[derive(Default)]
struct Inner {
    orgs: HashMap<OrgId, OrgAlerts>,
}

struct OrgAlerts {
    rules: BTreeMap<String, RuleState>,
    /// Resolved alerts, oldest first, at most `max_resolved`.
    resolved: VecDeque<Alert>,
    /// Firing alerts loaded from the store whose rule no longer exists: resolved by the first
    /// pass.
    orphans: Vec<Alert>,
    webhook: Option<Webhook>,
    feed: broadcast::Sender<AlertEvent>,
    /// Open `WatchAlerts` streams of the org (each holds a [`WatchSlot`]).
    watchers: Arc<AtomicUsize>,
}

/// One rule's changes of a turn, with where they go.
struct Outcome {
    org: OrgId,
    rule: Rule,
    decision: Decision,
}

// === impl Alerts ===

impl Alerts {
    /// The alert state at start: the file's rules (`settings.rules`), the stored rules and
    /// alerts. A stored rule that no longer validates, or whose name a file rule took, is
    /// skipped with a warning (its alerts resolve at the first pass).
    #[allow(
        clippy::too_many_arguments,
        reason = "the parts the alert task works with"
    )]
    pub fn load(
        settings: AlertSettings,
        stored_rules: Vec<Rule>,
        stored_alerts: Vec<Alert>,
        registry: Arc<Registry>,
        writer: WriterHandle,
        metrics: Arc<Metrics>,
        tasks: TaskTracker,
        cancel: CancellationToken,
    ) -> Self {
        let mut inner = Inner::default();
        for (org, webhook) in &settings.org_webhooks {
            inner.org(org).webhook = Some(webhook.clone());
        }
        for rule in settings.rules.iter().cloned().chain(stored_rules) {
            let org = inner.org(&rule.org);
            if org.rules.contains_key(&rule.name) {
                tracing::warn!(org = %rule.org, rule = %rule.name, "a stored alert rule has the name of a rule of the rules file; the file's is used");
                continue;
            }
            match rule.validate() {
                Ok(selector) => {
                    org.rules
                        .insert(rule.name.clone(), RuleState::new(rule, selector));
                }
                Err(e) => tracing::warn!(org = %rule.org, "stored alert rule skipped: {e}"),
            }
        }
        for alert in stored_alerts {
            let org = inner.org(&alert.org);
            match (alert.state, org.rules.get_mut(&alert.rule)) {
                (AlertState::Firing, Some(state)) => {
                    state.firing.insert(alert.agent.clone(), alert);
                }
                (AlertState::Firing, None) => org.orphans.push(alert),
                (AlertState::Resolved, _) => org.resolved.push_back(alert),
            }
        }
        for org in inner.orgs.values_mut() {
            org.resolved
                .make_contiguous()
                .sort_by(|a, b| (a.ends_at, &a.id).cmp(&(b.ends_at, &b.id)));
        }
        let deliveries = Deliveries::new(
            settings.delivery.clone(),
            metrics.alerts.clone(),
            tasks,
            cancel,
        );
        let alerts = Self {
            inner: Mutex::new(inner),
            turn: tokio::sync::Mutex::new(()),
            registry,
            writer,
            settings,
            metrics,
            started_at: SystemTime::now(),
            deliveries,
        };
        alerts.refresh_gauges();
        alerts
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic under the lock left each org's state whole (changes are applied one by one).
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Evaluates every rule each `interval` until `cancel`.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(self.settings.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = tick.tick() => self.evaluate().await,
            }
        }
    }

    /// One evaluation pass over every rule of every org.
    pub async fn evaluate(&self) {
        let _turn = self.turn.lock().await;
        let started = std::time::Instant::now();
        let now = SystemTime::now();
        let work: Vec<(OrgId, String, RuleKind, tether_proto::selector::Selector)> = {
            let inner = self.lock();
            inner
                .orgs
                .iter()
                .flat_map(|(org, alerts)| {
                    alerts.rules.values().map(|s| {
                        (
                            org.clone(),
                            s.rule.name.clone(),
                            s.rule.kind,
                            s.selector.clone(),
                        )
                    })
                })
                .collect()
        };
        // The registry is read without the alerts' lock held.
        let observed: Vec<(OrgId, String, Observation)> = work
            .into_iter()
            .map(|(org, name, kind, selector)| {
                let seen = match kind {
                    RuleKind::AgentOffline => {
                        Observation::Agents(self.registry.silent_agents(&org, &selector))
                    }
                    RuleKind::HealthCritical => {
                        Observation::Agents(self.registry.critical_agents(&org, &selector))
                    }
                    RuleKind::OnlineRatioBelow { .. } => {
                        let (online, total) = self.registry.online_count(&org, &selector);
                        Observation::Ratio { online, total }
                    }
                };
                (org, name, seen)
            })
            .collect();
        let mut outcomes = Vec::new();
        {
            let mut inner = self.lock();
            for (org, name, seen) in observed {
                let Some(state) = inner
                    .orgs
                    .get_mut(&org)
                    .and_then(|o| o.rules.get_mut(&name))
                else {
                    continue;
                };
                let decision = decide(state, &seen, now, self.started_at);
                if decision.suppressed > 0 {
                    self.metrics.alerts.suppressed.inc_by(decision.suppressed);
                    tracing::warn!(%org, rule = %name, suppressed = decision.suppressed, max = eval::MAX_FIRING_PER_RULE, "alert rule at its maximum of firing alerts");
                }
                if !decision.fired.is_empty() || !decision.resolved.is_empty() {
                    outcomes.push(Outcome {
                        org,
                        rule: state.rule.clone(),
                        decision,
                    });
                }
            }
            for (org, alerts) in &mut inner.orgs {
                let orphans = std::mem::take(&mut alerts.orphans);
                if !orphans.is_empty() {
                    outcomes.extend(orphan_outcomes(org, orphans, now));
                }
            }
        }
        if !outcomes.is_empty()
            && let Err(e) = self.commit(outcomes, None).await
        {
            tracing::warn!("alert changes not stored, decided again next pass: {e}");
        }
        self.metrics
            .alerts
            .evaluation_seconds
            .observe(started.elapsed().as_secs_f64());
        self.metrics.alerts.evaluations.inc();
    }

    /// Stores `outcomes` (with `audit` and `extra` writes), then applies them: state,
    /// watchers, gauges, webhooks. The caller holds the turn.
    async fn commit(
        &self,
        outcomes: Vec<Outcome>,
        audit: Option<(AuditEntry, Vec<Write>)>,
    ) -> Result<(), ServerError> {
        let evicted = self.evictions(&outcomes);
        let mut writes: Vec<Write> = outcomes
            .iter()
            .flat_map(|o| o.decision.fired.iter().chain(&o.decision.resolved))
            .map(|alert| Write::PutAlert(Box::new(alert.clone())))
            .collect();
        writes.extend(evicted.iter().map(|(org, id)| Write::DeleteAlert {
            org: org.clone(),
            id: id.clone(),
        }));
        let entry = match audit {
            Some((entry, extra)) => {
                writes.extend(extra);
                Some(entry)
            }
            None => None,
        };
        self.writer.commit_audited(writes, entry).await?;
        self.apply(&outcomes);
        for outcome in &outcomes {
            self.notify(outcome);
        }
        Ok(())
    }

    /// The resolved alerts that leave each org's history once `outcomes` are applied.
    fn evictions(&self, outcomes: &[Outcome]) -> Vec<(OrgId, String)> {
        let inner = self.lock();
        let mut added: HashMap<&OrgId, usize> = HashMap::new();
        for o in outcomes {
            *added.entry(&o.org).or_default() += o.decision.resolved.len();
        }
        let mut out = Vec::new();
        for (org, n) in added {
            let Some(alerts) = inner.orgs.get(org) else {
                continue;
            };
            let over = (alerts.resolved.len() + n).saturating_sub(self.settings.max_resolved);
            // Oldest stored first; beyond them, the oldest of this turn's own.
            out.extend(
                alerts
                    .resolved
                    .iter()
                    .take(over)
                    .map(|a| (org.clone(), a.id.clone())),
            );
            let own = over.saturating_sub(alerts.resolved.len());
            out.extend(
                outcomes
                    .iter()
                    .filter(|o| &o.org == org)
                    .flat_map(|o| &o.decision.resolved)
                    .take(own)
                    .map(|a| (org.clone(), a.id.clone())),
            );
        }
        out
    }

    fn apply(&self, outcomes: &[Outcome]) {
        let mut inner = self.lock();
        for outcome in outcomes {
            let alerts = inner.org(&outcome.org);
            if let Some(state) = alerts.rules.get_mut(&outcome.rule.name) {
                state.apply(&outcome.decision);
            }
            for alert in &outcome.decision.resolved {
                alerts.resolved.push_back(alert.clone());
            }
            while alerts.resolved.len() > self.settings.max_resolved {
                alerts.resolved.pop_front();
            }
            for alert in outcome
                .decision
                .resolved
                .iter()
                .chain(&outcome.decision.fired)
            {
                // No receiver is no watcher: nothing to do.
                let _ = alerts.feed.send(AlertEvent(Arc::new(alert.clone())));
            }
        }
        drop(inner);
        self.refresh_gauges();
    }

    /// Queues the notification of one rule's changes, if it has a webhook.
    fn notify(&self, outcome: &Outcome) {
        let webhook = outcome.rule.webhook.clone().or_else(|| {
            let inner = self.lock();
            inner.orgs.get(&outcome.org).and_then(|o| o.webhook.clone())
        });
        let Some(webhook) = webhook else {
            return;
        };
        let alerts: Vec<Alert> = outcome
            .decision
            .resolved
            .iter()
            .chain(&outcome.decision.fired)
            .cloned()
            .collect();
        let body = payload::body(webhook.format, &outcome.rule, &alerts);
        let id = format!(
            "{}-{}",
            alerts.first().map_or("", |a| a.id.as_str()),
            hex::encode(rand::random::<[u8; 4]>())
        );
        self.deliveries.send(
            &webhook,
            Notification {
                body,
                id,
                about: format!("{}/{}", outcome.org, outcome.rule.name),
            },
        );
    }

    fn refresh_gauges(&self) {
        let inner = self.lock();
        for (org, alerts) in &inner.orgs {
            for (name, state) in &alerts.rules {
                let labels = RuleLabels {
                    org: org.to_string(),
                    rule: name.clone(),
                };
                let n = i64::try_from(state.firing.len()).unwrap_or(i64::MAX);
                self.metrics.alerts.firing.get_or_create(&labels).set(n);
            }
        }
    }
}

// === impl Inner ===

impl Inner {
    fn org(&mut self, org: &OrgId) -> &mut OrgAlerts {
        self.orgs.entry(org.clone()).or_insert_with(|| OrgAlerts {
            rules: BTreeMap::new(),
            resolved: VecDeque::new(),
            orphans: Vec::new(),
            webhook: None,
            feed: broadcast::channel(WATCH_BUFFER).0,
            watchers: Arc::new(AtomicUsize::new(0)),
        })
    }
}

/// The resolutions of firing alerts whose rule is gone, one outcome per rule.
fn orphan_outcomes(org: &OrgId, orphans: Vec<Alert>, now: SystemTime) -> Vec<Outcome> {
    let mut by_rule: BTreeMap<String, Vec<Alert>> = BTreeMap::new();
    for alert in orphans {
        by_rule
            .entry(alert.rule.clone())
            .or_default()
            .push(eval::resolve(&alert, now, "the rule no longer exists"));
    }
    by_rule
        .into_iter()
        .filter_map(|(name, resolved)| {
            let first = resolved.first()?;
            Some(Outcome {
                org: org.clone(),
                rule: Rule {
                    org: org.clone(),
                    name,
                    kind: first.kind,
                    selector: String::new(),
                    hold: Duration::ZERO,
                    webhook: None,
                    summary: String::new(),
                    source: RuleSource::Api,
                    created_at: now,
                },
                decision: Decision {
                    resolved,
                    ..Decision::default()
                },
            })
        })
        .collect()
}
