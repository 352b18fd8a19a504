//! `FleetService`: listings, lookups, the watch stream, metrics and the server's configuration.
//! Every call sees only the caller's org (who may call is `access.rs`'s).
//!
//! Every read answers within `limits.max_response_bytes`, below the 4 MiB that gRPC clients
//! accept by default, whatever agents report: listings page by bytes as well as by count,
//! `GetAgent` trims its history to fit, `GetMetrics` keeps at most the points that fit and
//! aggregates from disk totals without reading disk lists. A watch reads its snapshot in pages
//! and queues at most its bound (`registry/watch.rs`).
//!
//! `GetMetrics` chooses the resolution it reads from its step ([`resolution_for`]): raw samples
//! below 5 minutes, 5-minute rollups from 5 minutes, 1-hour rollups from 1 hour. From rollups,
//! the range is rounded out to whole buckets (a bucket that overlaps it counts whole), and a
//! point is the merge of the buckets whose start (or the range's start, for the first one)
//! falls in its step; it covers every stored sample of those buckets.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::Stream;
use tether_proto as pb;
use tonic::{Request, Response, Status};

use crate::auth;
use crate::convert;
use crate::domain::{AgentId, MetricsPoint, MetricsQuery, OrgId, Transition};
use crate::error::ServerError;
use crate::registry::{AgentView, Subscription, WatchRefused};
use crate::service::AppState;

mod points;

pub use self::points::{
    Aggregator, MAX_METRICS_SAMPLES_READ, PointRange, RollupAggregator, bucket_start, read_points,
    resolution_for,
};

/// Default range of `GetMetrics` when `start` is unset.
pub const DEFAULT_METRICS_RANGE: Duration = Duration::from_secs(3600);
/// Most points one `GetMetrics` answer may hold.
pub const MAX_METRICS_POINTS: u64 = 10_000;
/// Status changes `GetAgent` returns with the agent.
pub const RECENT_TRANSITIONS: usize = 20;
/// How far before its last activity `GetAgent` looks for the stored latest sample of an agent
/// not heard from since the server started (shorter when a thousand metrics intervals are,
/// never under four).
pub const LATEST_SAMPLE_LOOKBACK: Duration = Duration::from_secs(15 * 60);
/// Most samples read to find that latest one.
const LATEST_SAMPLE_SCAN: usize = 2_000;

pub struct FleetService {
    state: Arc<AppState>,
}

impl FleetService {
    pub fn new(state: Arc<AppState>) -> Self {
        Self { state }
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchAgentsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::fleet_service_server::FleetService for FleetService {
    async fn list_agents(
        &self,
        request: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        let caller = auth::caller(&request)?;
        let budget = self.state.config.limits.max_response_bytes;
        let query = convert::fleet::list_agents_from_pb(request.into_inner(), budget)?;
        let page = self.state.registry.list(&caller.org, &query);
        Ok(Response::new(convert::fleet::list_agents_to_pb(&page)))
    }

    async fn get_agent(
        &self,
        request: Request<pb::GetAgentRequest>,
    ) -> Result<Response<pb::GetAgentResponse>, Status> {
        let caller = auth::caller(&request)?;
        let id = convert::fleet::get_agent_from_pb(request.into_inner())?;
        let (view, transitions) = get_agent(&self.state, &caller.org, id).await?;
        Ok(Response::new(convert::fleet::get_agent_to_pb(
            &view,
            &transitions,
            self.state.config.limits.max_response_bytes,
        )))
    }

    type WatchAgentsStream = WatchStream;

    async fn watch_agents(
        &self,
        request: Request<pb::WatchAgentsRequest>,
    ) -> Result<Response<Self::WatchAgentsStream>, Status> {
        let caller = auth::caller(&request)?;
        let (filter, include_metrics) = convert::fleet::watch_agents_from_pb(request.into_inner())?;
        let subscription = self
            .state
            .registry
            .watch(&caller.org, &caller.token, filter, include_metrics)
            .map_err(|refused| {
                self.state.metrics.limit(match refused {
                    WatchRefused::PerToken { .. } => "watches_per_token",
                    WatchRefused::PerOrg { .. } => "watches_per_org",
                });
                ServerError::ResourceExhausted(refused.to_string())
            })?;
        let watch = Watch {
            subscription,
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

    async fn get_metrics(
        &self,
        request: Request<pb::GetMetricsRequest>,
    ) -> Result<Response<pb::GetMetricsResponse>, Status> {
        let caller = auth::caller(&request)?;
        let query = convert::fleet::get_metrics_from_pb(request.into_inner())?;
        let points = metrics(&self.state, &caller.org, query).await?;
        Ok(Response::new(convert::fleet::get_metrics_to_pb(&points)))
    }

    async fn get_fleet_summary(
        &self,
        request: Request<pb::GetFleetSummaryRequest>,
    ) -> Result<Response<pb::GetFleetSummaryResponse>, Status> {
        let caller = auth::caller(&request)?;
        let summary = self.state.registry.summary(&caller.org);
        Ok(Response::new(convert::fleet::summary_to_pb(&summary)))
    }

    async fn get_server_config(
        &self,
        request: Request<pb::GetServerConfigRequest>,
    ) -> Result<Response<pb::GetServerConfigResponse>, Status> {
        auth::caller(&request)?;
        Ok(Response::new(convert::fleet::server_config_to_pb(
            &self.state.config,
        )))
    }
}

/// One agent of `org` with its most recent status changes.
///
/// # Errors
///
/// `NOT_FOUND` for an agent not in `org`, `INTERNAL` if the store fails.
pub async fn get_agent(
    state: &AppState,
    org: &OrgId,
    id: AgentId,
) -> Result<(AgentView, Vec<Transition>), ServerError> {
    let mut view = state
        .registry
        .get(org, &id)
        .ok_or_else(|| ServerError::NotFound(format!("agent {id}")))?;
    let store = state.store.clone();
    let org = org.clone();
    // The registry holds the latest sample of agents heard from since the server started;
    // for the others (a restart), the newest stored one near their last activity.
    let latest_window = match (&view.latest, view.last_seen) {
        (None, Some(last_seen)) if view.last_seq > 0 => {
            // About a thousand samples at most, and four intervals at least.
            let interval = state.config.liveness.metrics_interval;
            let lookback = LATEST_SAMPLE_LOOKBACK
                .min(interval.saturating_mul(1_000))
                .max(interval.saturating_mul(4));
            let to = last_seen + state.config.limits.max_clock_skew + Duration::from_secs(1);
            Some((last_seen.checked_sub(lookback).unwrap_or(last_seen), to))
        }
        _ => None,
    };
    let (transitions, latest) = tokio::task::spawn_blocking(move || {
        let transitions = store.transitions(&org, &id, RECENT_TRANSITIONS)?;
        let latest = match latest_window {
            Some((from, to)) => store
                .samples(&org, &id, from, to, LATEST_SAMPLE_SCAN)?
                .pop(),
            None => None,
        };
        Ok::<_, crate::store::StoreError>((transitions, latest))
    })
    .await
    .map_err(|e| ServerError::Internal(e.to_string()))??;
    if view.latest.is_none() {
        view.latest = latest.map(Arc::new);
    }
    Ok((view, transitions))
}

/// The points of `query` for an agent of `org`: at most [`MAX_METRICS_POINTS`] and at most
/// what fits in the read budget, the newest kept. Reads disk totals only, one sample at a time.
///
/// # Errors
///
/// `NOT_FOUND` for an agent not in `org`; `INVALID_ARGUMENT` for a start after the end or a
/// step that would give too many points; `INTERNAL` if the store fails.
pub async fn metrics(
    state: &AppState,
    org: &OrgId,
    query: MetricsQuery,
) -> Result<Vec<MetricsPoint>, ServerError> {
    let MetricsQuery {
        agent: id,
        start,
        end,
        step,
    } = query;
    if state.registry.get(org, &id).is_none() {
        return Err(ServerError::NotFound(format!("agent {id}")));
    }
    let end = end.unwrap_or_else(SystemTime::now);
    let start = start.unwrap_or_else(|| {
        end.checked_sub(DEFAULT_METRICS_RANGE)
            .unwrap_or(SystemTime::UNIX_EPOCH)
    });
    let range = end
        .duration_since(start)
        .map_err(|_| ServerError::invalid("start must be before end"))?;
    if !step.is_zero() {
        let n_points = range.as_millis() / step.as_millis().max(1);
        if n_points > u128::from(MAX_METRICS_POINTS) {
            return Err(ServerError::invalid(format!(
                "range / step gives {n_points} points; at most {MAX_METRICS_POINTS} are allowed: use a larger step"
            )));
        }
    }
    let max_points = usize::try_from(MAX_METRICS_POINTS)
        .unwrap_or(usize::MAX)
        .min(convert::fleet::metrics_points_within(
            state.config.limits.max_response_bytes,
        ));
    let store = state.store.clone();
    let org = org.clone();
    let range = PointRange {
        start,
        end,
        step,
        max_points,
    };
    tokio::task::spawn_blocking(move || read_points(store.as_ref(), &org, &id, &range))
        .await
        .map_err(|e| ServerError::Internal(e.to_string()))?
        .map_err(ServerError::from)
}

/// State of one `WatchAgents` stream.
struct Watch {
    subscription: Subscription,
    shutdown: tokio_util::sync::CancellationToken,
    /// Cancelled when the caller's token is revoked.
    revoked: tokio_util::sync::CancellationToken,
    metrics: Arc<crate::metrics::Metrics>,
    done: bool,
}

impl Watch {
    async fn next(&mut self) -> Option<Result<pb::WatchAgentsResponse, Status>> {
        if self.done {
            return None;
        }
        let next = self.subscription.next();
        let item = match super::unless_ended(&self.shutdown, &self.revoked, next).await {
            Ok(item) => item,
            Err(status) => {
                self.done = true;
                return Some(Err(status));
            }
        };
        match item {
            Ok(item) => Some(Ok(convert::fleet::watch_item_to_pb(
                &item,
                SystemTime::now(),
            ))),
            Err(lagged) => {
                self.done = true;
                self.metrics.watchers_aborted.inc();
                Some(Err(Status::aborted(format!(
                    "watcher fell behind ({} events, {} bytes queued); call WatchAgents again \
                     to resync",
                    lagged.events, lagged.bytes
                ))))
            }
        }
    }
}
