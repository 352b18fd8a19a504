//! `AlertService`: the org's alert rules and alerts (`alert.rs`).
//!
//! A service of its own rather than part of `AdminService`: admin calls are for the `admin`
//! role, while alerts are read by viewers and managed by operators, like commands. Rule
//! changes are audited: a success in the commit that stores it, a failure by
//! [`answer_audited`].

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use futures::Stream;
use tether_proto as pb;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::alert::AlertEvent;
use crate::alert::rule::Alert;
use crate::auth;
use crate::convert::alert as conv;
use crate::service::{AppState, answer_audited, unless_ended};

const CREATE_RULE: &str = "/tether.v1.AlertService/CreateAlertRule";
const DELETE_RULE: &str = "/tether.v1.AlertService/DeleteAlertRule";

pub struct AlertService {
    state: Arc<AppState>,
}

impl AlertService {
    pub fn new(state: Arc<AppState>) -> Self {
        Self { state }
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchAlertsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::alert_service_server::AlertService for AlertService {
    async fn create_alert_rule(
        &self,
        request: Request<pb::CreateAlertRuleRequest>,
    ) -> Result<Response<pb::CreateAlertRuleResponse>, Status> {
        let caller = auth::caller(&request)?;
        let request = request.into_inner();
        let target = request
            .rule
            .as_ref()
            .map_or_else(String::new, |r| r.name.clone());
        let state = &self.state;
        let result = async {
            let rule = conv::create_rule_from_pb(request, caller.org.clone(), SystemTime::now())?;
            let audit = crate::audit::entry(&caller, CREATE_RULE, &rule.name, Ok(()));
            let rule = state.alerts.create_rule(rule, audit).await?;
            Ok(pb::CreateAlertRuleResponse {
                rule: Some(conv::rule_to_pb(&rule)),
            })
        }
        .await;
        answer_audited(state, &caller, CREATE_RULE, &target, result).await
    }

    async fn list_alert_rules(
        &self,
        request: Request<pb::ListAlertRulesRequest>,
    ) -> Result<Response<pb::ListAlertRulesResponse>, Status> {
        let caller = auth::caller(&request)?;
        let pb::ListAlertRulesRequest {} = request.into_inner();
        let rules = self.state.alerts.rules(&caller.org);
        Ok(Response::new(pb::ListAlertRulesResponse {
            rules: rules.iter().map(conv::rule_to_pb).collect(),
        }))
    }

    async fn delete_alert_rule(
        &self,
        request: Request<pb::DeleteAlertRuleRequest>,
    ) -> Result<Response<pb::DeleteAlertRuleResponse>, Status> {
        let caller = auth::caller(&request)?;
        let pb::DeleteAlertRuleRequest { name } = request.into_inner();
        let state = &self.state;
        let result = async {
            let audit = crate::audit::entry(&caller, DELETE_RULE, &name, Ok(()));
            state.alerts.delete_rule(&caller.org, &name, audit).await?;
            Ok(pb::DeleteAlertRuleResponse {})
        }
        .await;
        answer_audited(state, &caller, DELETE_RULE, &name, result).await
    }

    async fn list_alerts(
        &self,
        request: Request<pb::ListAlertsRequest>,
    ) -> Result<Response<pb::ListAlertsResponse>, Status> {
        let caller = auth::caller(&request)?;
        let query = conv::list_alerts_from_pb(request.into_inner())?;
        let alerts = self.state.alerts.list(&caller.org, &query);
        Ok(Response::new(pb::ListAlertsResponse {
            alerts: alerts.iter().map(conv::alert_to_pb).collect(),
        }))
    }

    type WatchAlertsStream = WatchStream;

    async fn watch_alerts(
        &self,
        request: Request<pb::WatchAlertsRequest>,
    ) -> Result<Response<Self::WatchAlertsStream>, Status> {
        let caller = auth::caller(&request)?;
        let pb::WatchAlertsRequest {} = request.into_inner();
        let max = self.state.config.limits.max_watches_per_org;
        let (snapshot, feed, slot) = self
            .state
            .alerts
            .subscribe(&caller.org, max)
            .inspect_err(|_| self.state.metrics.limit("alert_watches_per_org"))?;
        let watch = Watch {
            _slot: slot,
            snapshot: snapshot.into(),
            synced: false,
            feed,
            shutdown: self.state.shutdown.clone(),
            revoked: self.state.auth.revocation(&caller.token),
            metrics: self.state.metrics.clone(),
            done: false,
        };
        let stream = futures::stream::unfold(watch, |mut watch| async move {
            let item = watch.next().await?;
            Some((item, watch))
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

/// One `WatchAlerts` stream: the firing alerts, `SYNCED`, then the org's changes.
struct Watch {
    /// The watch's place among the org's; freed when the stream is dropped.
    _slot: crate::alert::WatchSlot,
    snapshot: VecDeque<Alert>,
    synced: bool,
    feed: broadcast::Receiver<AlertEvent>,
    shutdown: CancellationToken,
    revoked: CancellationToken,
    metrics: Arc<crate::metrics::Metrics>,
    done: bool,
}

impl Watch {
    async fn next(&mut self) -> Option<Result<pb::WatchAlertsResponse, Status>> {
        if self.done {
            return None;
        }
        if let Some(alert) = self.snapshot.pop_front() {
            return Some(Ok(conv::watch_event_to_pb(&alert, true)));
        }
        if !self.synced {
            self.synced = true;
            return Some(Ok(conv::synced_to_pb()));
        }
        let event = match unless_ended(&self.shutdown, &self.revoked, self.feed.recv()).await {
            Ok(event) => event,
            Err(status) => {
                self.done = true;
                return Some(Err(status));
            }
        };
        match event {
            Ok(AlertEvent(alert)) => Some(Ok(conv::watch_event_to_pb(&alert, false))),
            Err(broadcast::error::RecvError::Lagged(n)) => {
                self.done = true;
                self.metrics.watchers_aborted.inc();
                Some(Err(Status::aborted(format!(
                    "watcher fell behind ({n} alert events missed); call WatchAlerts again to \
                     resync"
                ))))
            }
            Err(broadcast::error::RecvError::Closed) => {
                self.done = true;
                None
            }
        }
    }
}
