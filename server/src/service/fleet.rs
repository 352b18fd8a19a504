//! `FleetService`: listings, lookups, the watch stream, metrics and the server's configuration.
//! Every call sees only the caller's org (who may call is `access.rs`'s).

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::{Stream, StreamExt};
use tether_proto as pb;
use tokio::sync::broadcast::error::RecvError;
use tonic::{Request, Response, Status};

use crate::auth;
use crate::convert;
use crate::domain::{AgentId, MetricsPoint, MetricsQuery, OrgId, Sample, Transition};
use crate::error::ServerError;
use crate::registry::{AgentFilter, AgentView, EventKind, FleetEvent};
use crate::service::AppState;

/// Default range of `GetMetrics` when `start` is unset.
pub const DEFAULT_METRICS_RANGE: Duration = Duration::from_secs(3600);
/// Most points one `GetMetrics` answer may hold.
pub const MAX_METRICS_POINTS: u64 = 10_000;
/// Most samples one `GetMetrics` call reads to compute its points.
pub const MAX_METRICS_SAMPLES_READ: usize = 500_000;
/// Status changes `GetAgent` returns with the agent.
pub const RECENT_TRANSITIONS: usize = 20;

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
        let query = convert::fleet::list_agents_from_pb(request.into_inner())?;
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
        )))
    }

    type WatchAgentsStream = WatchStream;

    async fn watch_agents(
        &self,
        request: Request<pb::WatchAgentsRequest>,
    ) -> Result<Response<Self::WatchAgentsStream>, Status> {
        let caller = auth::caller(&request)?;
        let (filter, include_metrics) = convert::fleet::watch_agents_from_pb(request.into_inner())?;
        let (snapshot, revision, guard) =
            self.state
                .registry
                .watch(&caller.org, &filter, include_metrics);
        let initial = convert::fleet::watch_snapshot_to_pb(&snapshot, revision, SystemTime::now());
        let watch = Watch {
            org: caller.org,
            filter,
            include_metrics,
            revision,
            guard,
            shutdown: self.state.shutdown.clone(),
            revoked: self.state.auth.revocation(&caller.token),
            metrics: self.state.metrics.clone(),
            done: false,
        };
        let live = futures::stream::unfold(watch, |mut watch| async move {
            let item = watch.next().await?;
            Some((item, watch))
        });
        let stream = futures::stream::iter(initial.into_iter().map(Ok)).chain(live);
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
    let view = state
        .registry
        .get(org, &id)
        .ok_or_else(|| ServerError::NotFound(format!("agent {id}")))?;
    let store = state.store.clone();
    let org = org.clone();
    let transitions =
        tokio::task::spawn_blocking(move || store.transitions(&org, &id, RECENT_TRANSITIONS))
            .await
            .map_err(|e| ServerError::Internal(e.to_string()))??;
    Ok((view, transitions))
}

/// The points of `query` for an agent of `org`: at most [`MAX_METRICS_POINTS`], the newest
/// kept.
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
    let store = state.store.clone();
    let org = org.clone();
    let samples = tokio::task::spawn_blocking(move || {
        store.samples(&org, &id, start, end, MAX_METRICS_SAMPLES_READ)
    })
    .await
    .map_err(|e| ServerError::Internal(e.to_string()))??;
    let mut points = aggregate(&samples, start, step);
    let max = usize::try_from(MAX_METRICS_POINTS).unwrap_or(usize::MAX);
    if points.len() > max {
        points.drain(..points.len() - max);
    }
    Ok(points)
}

/// State of one `WatchAgents` stream after its snapshot.
struct Watch {
    org: OrgId,
    filter: AgentFilter,
    include_metrics: bool,
    /// Revision of the snapshot: older events are already reflected in it.
    revision: u64,
    guard: crate::registry::WatchGuard,
    shutdown: tokio_util::sync::CancellationToken,
    /// Cancelled when the caller's token is revoked.
    revoked: tokio_util::sync::CancellationToken,
    metrics: Arc<crate::metrics::Metrics>,
    done: bool,
}

impl Watch {
    async fn next(&mut self) -> Option<Result<pb::WatchAgentsResponse, Status>> {
        loop {
            if self.done {
                return None;
            }
            let received = tokio::select! {
                () = self.shutdown.cancelled() => {
                    self.done = true;
                    return Some(Err(Status::unavailable("server is shutting down")));
                }
                () = self.revoked.cancelled() => {
                    self.done = true;
                    return Some(Err(Status::unauthenticated("token has been revoked")));
                }
                r = self.guard.rx.recv() => r,
            };
            let event = match received {
                Ok(event) => event,
                Err(RecvError::Lagged(n)) => {
                    self.done = true;
                    self.metrics.watchers_aborted.inc();
                    return Some(Err(Status::aborted(format!(
                        "watcher fell behind by {n} events; call WatchAgents again to resync"
                    ))));
                }
                Err(RecvError::Closed) => return None,
            };
            if let Some(out) = self.convert(&event) {
                return Some(Ok(out));
            }
        }
    }

    fn convert(&self, event: &FleetEvent) -> Option<pb::WatchAgentsResponse> {
        if event.org != self.org || event.revision <= self.revision {
            return None;
        }
        if event.kind == EventKind::MetricsUpdated && !self.include_metrics {
            return None;
        }
        if event.kind != EventKind::Removed
            && !self.filter.selector.matches(&event.agent.record.labels)
        {
            return None;
        }
        Some(convert::fleet::fleet_event_to_pb(event))
    }
}

/// Averages samples into points of width `step` starting at `start`; `step` zero makes each
/// sample its own point. Network rates come from the counter delta to the previous sample
/// (skipped across a counter reset). Empty steps produce no point.
pub fn aggregate(samples: &[Sample], start: SystemTime, step: Duration) -> Vec<MetricsPoint> {
    #[derive(Default)]
    struct Acc {
        n: u32,
        cpu: f64,
        load: [f64; 3],
        mem_used: u128,
        mem_total: u128,
        swap_used: u128,
        swap_total: u128,
        disk_used: u128,
        disk_total: u128,
        rx_rate: f64,
        tx_rate: f64,
        n_rates: u32,
        processes: u64,
    }
    let mut points = Vec::new();
    let mut current: Option<(u128, SystemTime, Acc)> = None;
    let step_ms = step.as_millis();
    let finish = |time: SystemTime, acc: Acc| {
        let n = u128::from(acc.n.max(1));
        let nf = f64::from(acc.n.max(1));
        let rates = f64::from(acc.n_rates.max(1));
        let avg = |v: u128| u64::try_from(v / n).unwrap_or(u64::MAX);
        MetricsPoint {
            time,
            sample_count: acc.n,
            cpu_percent: acc.cpu / nf,
            load: acc.load.map(|sum| sum / nf),
            memory_used_bytes: avg(acc.mem_used),
            memory_total_bytes: avg(acc.mem_total),
            swap_used_bytes: avg(acc.swap_used),
            swap_total_bytes: avg(acc.swap_total),
            disk_used_bytes: avg(acc.disk_used),
            disk_total_bytes: avg(acc.disk_total),
            network_rx_bytes_per_second: acc.rx_rate / rates,
            network_tx_bytes_per_second: acc.tx_rate / rates,
            process_count: u32::try_from(acc.processes / u64::from(acc.n.max(1)))
                .unwrap_or(u32::MAX),
        }
    };
    let mut previous: Option<&Sample> = None;
    for sample in samples {
        let offset = sample
            .time
            .get()
            .duration_since(start)
            .unwrap_or_default()
            .as_millis();
        let (bucket, bucket_time) = match offset.checked_div(step_ms) {
            None => (u128::from(sample.seq), sample.time.get()),
            Some(bucket) => {
                let millis = u64::try_from(bucket * step_ms).unwrap_or(u64::MAX);
                (bucket, start + Duration::from_millis(millis))
            }
        };
        if current.as_ref().is_none_or(|(b, _, _)| *b != bucket) {
            if let Some((_, time, acc)) = current.take() {
                points.push(finish(time, acc));
            }
            current = Some((bucket, bucket_time, Acc::default()));
        }
        let Some((_, _, acc)) = current.as_mut() else {
            continue;
        };
        acc.n += 1;
        acc.cpu += sample.cpu_percent;
        for (sum, v) in acc.load.iter_mut().zip(sample.load) {
            *sum += v;
        }
        acc.mem_used += u128::from(sample.memory_used_bytes);
        acc.mem_total += u128::from(sample.memory_total_bytes);
        acc.swap_used += u128::from(sample.swap_used_bytes);
        acc.swap_total += u128::from(sample.swap_total_bytes);
        acc.disk_used += sample
            .disks
            .iter()
            .map(|d| u128::from(d.used_bytes))
            .sum::<u128>();
        acc.disk_total += sample
            .disks
            .iter()
            .map(|d| u128::from(d.total_bytes))
            .sum::<u128>();
        acc.processes += u64::from(sample.process_count);
        if let Some(prev) = previous {
            let dt = sample
                .time
                .get()
                .duration_since(prev.time.get())
                .unwrap_or_default()
                .as_secs_f64();
            if dt > 0.0
                && sample.network_rx_bytes >= prev.network_rx_bytes
                && sample.network_tx_bytes >= prev.network_tx_bytes
            {
                acc.rx_rate += (sample.network_rx_bytes - prev.network_rx_bytes) as f64 / dt;
                acc.tx_rate += (sample.network_tx_bytes - prev.network_tx_bytes) as f64 / dt;
                acc.n_rates += 1;
            }
        }
        previous = Some(sample);
    }
    if let Some((_, time, acc)) = current {
        points.push(finish(time, acc));
    }
    points
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(seq: u64, secs: u64, cpu: f64, rx: u64) -> Sample {
        Sample {
            seq,
            time: crate::domain::Time::new(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
                .expect("a time after 1970"),
            cpu_percent: cpu,
            load: [0.0; 3],
            memory_used_bytes: 100,
            memory_total_bytes: 200,
            swap_used_bytes: 0,
            swap_total_bytes: 0,
            disks: vec![],
            network_rx_bytes: rx,
            network_tx_bytes: 0,
            uptime: Duration::ZERO,
            process_count: 10,
        }
    }

    #[test]
    fn aggregate_averages_into_steps() {
        let samples = vec![
            sample(1, 0, 10.0, 0),
            sample(2, 10, 20.0, 1000),
            sample(3, 60, 30.0, 1600),
        ];
        let points = aggregate(&samples, SystemTime::UNIX_EPOCH, Duration::from_secs(60));
        assert_eq!(points.len(), 2);
        assert_eq!(points[0].sample_count, 2);
        assert!((points[0].cpu_percent - 15.0).abs() < 1e-9);
        assert!((points[0].network_rx_bytes_per_second - 100.0).abs() < 1e-9);
        assert_eq!(points[1].sample_count, 1);
        assert!((points[1].network_rx_bytes_per_second - 12.0).abs() < 1e-9);
    }

    #[test]
    fn zero_step_returns_every_sample() {
        let samples = vec![sample(1, 0, 10.0, 0), sample(2, 1, 20.0, 0)];
        let points = aggregate(&samples, SystemTime::UNIX_EPOCH, Duration::ZERO);
        assert_eq!(points.len(), 2);
    }
}
