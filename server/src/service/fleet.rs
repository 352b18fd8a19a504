//! `FleetService`: listings, lookups, the watch stream, metrics and the server's configuration.
//! Every call needs at least the `viewer` role and sees only the caller's org.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::{Stream, StreamExt};
use tether_proto as pb;
use tokio::sync::broadcast::error::RecvError;
use tonic::{Request, Response, Status};

use crate::auth;
use crate::convert;
use crate::domain::{AgentId, Health, OrgId, Role, Sample};
use crate::error::ServerError;
use crate::registry::{AgentFilter, EventKind, FleetEvent};
use crate::service::AppState;
use tether_proto::selector::Selector;

pub const DEFAULT_PAGE_SIZE: usize = 100;
pub const MAX_PAGE_SIZE: usize = 1000;
/// Default range of `GetMetrics` when `start` is unset.
pub const DEFAULT_METRICS_RANGE: Duration = Duration::from_secs(3600);
/// Most points one `GetMetrics` answer may hold.
pub const MAX_METRICS_POINTS: u64 = 10_000;
/// Most samples one `GetMetrics` call reads to compute its points.
pub const MAX_METRICS_SAMPLES_READ: usize = 500_000;

const PAGE_TOKEN_VERSION: &str = "1:";

pub struct FleetService {
    state: Arc<AppState>,
}

impl FleetService {
    pub fn new(state: Arc<AppState>) -> Self {
        Self { state }
    }
}

fn viewer<T>(request: &Request<T>) -> Result<auth::Caller, Status> {
    let caller = auth::caller(request)?;
    caller.require(Role::Viewer)?;
    Ok(caller)
}

fn agent_id(raw: &str) -> Result<AgentId, ServerError> {
    if crate::domain::is_valid_id(raw) {
        Ok(AgentId::new(raw))
    } else if raw.is_empty() {
        Err(ServerError::invalid("agent_id is required"))
    } else {
        Err(ServerError::invalid(format!(
            "malformed agent_id {:?}",
            raw.chars().take(80).collect::<String>()
        )))
    }
}

/// Encodes the position after `last` as an opaque page token.
pub fn encode_page_token(last: &AgentId) -> String {
    hex::encode(format!("{PAGE_TOKEN_VERSION}{last}"))
}

/// # Errors
///
/// `INVALID_ARGUMENT` for anything that [`encode_page_token`] did not produce.
pub fn decode_page_token(token: &str) -> Result<Option<AgentId>, ServerError> {
    if token.is_empty() {
        return Ok(None);
    }
    let invalid = || {
        ServerError::invalid("invalid page_token: pass the next_page_token of a previous answer")
    };
    let bytes = hex::decode(token).map_err(|_| invalid())?;
    let text = String::from_utf8(bytes).map_err(|_| invalid())?;
    let id = text.strip_prefix(PAGE_TOKEN_VERSION).ok_or_else(invalid)?;
    if !crate::domain::is_valid_id(id) {
        return Err(invalid());
    }
    Ok(Some(AgentId::new(id)))
}

fn filter_from(
    statuses: Vec<i32>,
    selector: &str,
    os: String,
    query: String,
    include_expired: bool,
) -> Result<AgentFilter, ServerError> {
    let statuses = statuses
        .into_iter()
        .map(convert::status_from_pb)
        .collect::<Result<Vec<_>, _>>()?;
    let selector =
        Selector::parse(selector).map_err(|e| ServerError::InvalidArgument(e.to_string()))?;
    let os = os.trim();
    let query = query.trim();
    Ok(AgentFilter {
        statuses,
        include_expired,
        selector,
        os: (!os.is_empty()).then(|| os.to_lowercase()),
        query: (!query.is_empty()).then(|| query.to_lowercase()),
    })
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchAgentsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::fleet_service_server::FleetService for FleetService {
    async fn list_agents(
        &self,
        request: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        let caller = viewer(&request)?;
        let pb::ListAgentsRequest {
            statuses,
            label_selector,
            os,
            query,
            page_size,
            page_token,
            include_expired,
        } = request.into_inner();
        let page_size = match page_size {
            0 => DEFAULT_PAGE_SIZE,
            n if n < 0 => {
                return Err(ServerError::invalid("page_size must not be negative").into());
            }
            n => usize::try_from(n)
                .unwrap_or(MAX_PAGE_SIZE)
                .min(MAX_PAGE_SIZE),
        };
        let after = decode_page_token(&page_token)?;
        let filter = filter_from(statuses, &label_selector, os, query, include_expired)?;
        let page = self
            .state
            .registry
            .list(&caller.org, &filter, after.as_ref(), page_size);
        Ok(Response::new(pb::ListAgentsResponse {
            agents: page.agents.iter().map(convert::agent_to_pb).collect(),
            next_page_token: page
                .next_after
                .as_ref()
                .map(encode_page_token)
                .unwrap_or_default(),
            total_size: u32::try_from(page.total).unwrap_or(u32::MAX),
        }))
    }

    async fn get_agent(
        &self,
        request: Request<pb::GetAgentRequest>,
    ) -> Result<Response<pb::GetAgentResponse>, Status> {
        let caller = viewer(&request)?;
        let id = agent_id(&request.into_inner().agent_id)?;
        let view = self
            .state
            .registry
            .get(&caller.org, &id)
            .ok_or_else(|| ServerError::NotFound(format!("agent {id}")))?;
        let store = self.state.store.clone();
        let org = caller.org.clone();
        let transitions = tokio::task::spawn_blocking(move || store.transitions(&org, &id, 20))
            .await
            .map_err(|e| ServerError::Internal(e.to_string()))?
            .map_err(ServerError::from)?;
        Ok(Response::new(pb::GetAgentResponse {
            agent: Some(convert::agent_to_pb(&view)),
            recent_transitions: transitions.iter().map(convert::transition_to_pb).collect(),
        }))
    }

    type WatchAgentsStream = WatchStream;

    async fn watch_agents(
        &self,
        request: Request<pb::WatchAgentsRequest>,
    ) -> Result<Response<Self::WatchAgentsStream>, Status> {
        let caller = viewer(&request)?;
        let pb::WatchAgentsRequest {
            label_selector,
            include_metrics,
            include_expired,
        } = request.into_inner();
        let filter = filter_from(
            vec![],
            &label_selector,
            String::new(),
            String::new(),
            include_expired,
        )?;
        let (snapshot, revision, guard) =
            self.state
                .registry
                .watch(&caller.org, &filter, include_metrics);
        let now = SystemTime::now();
        let mut initial: Vec<pb::WatchAgentsResponse> = snapshot
            .iter()
            .map(|view| pb::WatchAgentsResponse {
                kind: pb::AgentEventKind::Snapshot as i32,
                agent: Some(convert::agent_to_pb(view)),
                previous_status: 0,
                time: Some(convert::timestamp(now)),
                revision,
            })
            .collect();
        initial.push(pb::WatchAgentsResponse {
            kind: pb::AgentEventKind::Synced as i32,
            agent: None,
            previous_status: 0,
            time: Some(convert::timestamp(now)),
            revision,
        });
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
        let caller = viewer(&request)?;
        let pb::GetMetricsRequest {
            agent_id: raw_id,
            start,
            end,
            step,
        } = request.into_inner();
        let id = agent_id(&raw_id)?;
        if self.state.registry.get(&caller.org, &id).is_none() {
            return Err(ServerError::NotFound(format!("agent {id}")).into());
        }
        let end = match end {
            Some(t) => convert::time_from_pb(t, "end")?,
            None => SystemTime::now(),
        };
        let start = match start {
            Some(t) => convert::time_from_pb(t, "start")?,
            None => end
                .checked_sub(DEFAULT_METRICS_RANGE)
                .unwrap_or(SystemTime::UNIX_EPOCH),
        };
        let range = end
            .duration_since(start)
            .map_err(|_| ServerError::invalid("start must be before end"))?;
        let step = step
            .map(|d| convert::duration_from_pb(d, "step"))
            .transpose()?
            .unwrap_or_default();
        if !step.is_zero() {
            let n_points = range.as_millis() / step.as_millis().max(1);
            if n_points > u128::from(MAX_METRICS_POINTS) {
                return Err(ServerError::invalid(format!(
                    "range / step gives {n_points} points; at most {MAX_METRICS_POINTS} are allowed: use a larger step"
                ))
                .into());
            }
        }
        let store = self.state.store.clone();
        let org = caller.org.clone();
        let samples = tokio::task::spawn_blocking(move || {
            store.samples(&org, &id, start, end, MAX_METRICS_SAMPLES_READ)
        })
        .await
        .map_err(|e| ServerError::Internal(e.to_string()))?
        .map_err(ServerError::from)?;
        let mut points = aggregate(&samples, start, step);
        let max = usize::try_from(MAX_METRICS_POINTS).unwrap_or(usize::MAX);
        if points.len() > max {
            points.drain(..points.len() - max);
        }
        Ok(Response::new(pb::GetMetricsResponse { points }))
    }

    async fn get_fleet_summary(
        &self,
        request: Request<pb::GetFleetSummaryRequest>,
    ) -> Result<Response<pb::GetFleetSummaryResponse>, Status> {
        let caller = viewer(&request)?;
        let s = self.state.registry.summary(&caller.org);
        let health = |h: Health| s.health.get(&h).copied().unwrap_or(0);
        Ok(Response::new(pb::GetFleetSummaryResponse {
            total: s.online + s.stale + s.offline,
            online: s.online,
            stale: s.stale,
            offline: s.offline,
            expired: s.expired,
            by_os: s.by_os.clone().into_iter().collect(),
            health_ok: health(Health::Ok),
            health_warning: health(Health::Warning),
            health_critical: health(Health::Critical),
            health_unknown: health(Health::Unknown),
        }))
    }

    async fn get_server_config(
        &self,
        request: Request<pb::GetServerConfigRequest>,
    ) -> Result<Response<pb::GetServerConfigResponse>, Status> {
        viewer(&request)?;
        Ok(Response::new(server_config(&self.state.config)))
    }
}

/// The configuration in force, as served to every client.
pub fn server_config(config: &crate::config::Config) -> pb::GetServerConfigResponse {
    let l = &config.liveness;
    let h = &config.health;
    let to_u32 = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    pb::GetServerConfigResponse {
        server_version: env!("CARGO_PKG_VERSION").to_owned(),
        heartbeat_interval: Some(convert::duration(l.heartbeat_interval)),
        metrics_interval: Some(convert::duration(l.metrics_interval)),
        stale_after: Some(convert::duration(l.stale_after)),
        offline_after: Some(convert::duration(l.offline_after)),
        fleet_ttl: Some(convert::duration(l.fleet_ttl)),
        metrics_retention: Some(convert::duration(config.storage.metrics_retention)),
        health_thresholds: Some(pb::HealthThresholds {
            cpu_warning_percent: h.cpu_warning,
            cpu_critical_percent: h.cpu_critical,
            memory_warning_percent: h.memory_warning,
            memory_critical_percent: h.memory_critical,
            disk_warning_percent: h.disk_warning,
            disk_critical_percent: h.disk_critical,
        }),
        max_message_bytes: config.limits.max_message_bytes as u64,
        max_labels: to_u32(config.limits.max_labels),
        max_label_key_bytes: to_u32(config.limits.max_label_key_bytes),
        max_label_value_bytes: to_u32(config.limits.max_label_value_bytes),
        features: FEATURES
            .iter()
            .copied()
            .chain(config.tls.is_some().then_some("tls"))
            .chain(config.mtls().then_some("mtls"))
            .map(str::to_owned)
            .collect(),
    }
}

/// Capabilities this server offers, for clients to check instead of guessing from versions.
/// Always on; `tls` and `mtls` are added when configured.
pub const FEATURES: &[&str] = &[
    "enrollment",
    "metrics",
    "watch",
    "liveness",
    "orgs",
    "audit",
];

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
        let (kind, previous) = match event.kind {
            EventKind::Registered => (pb::AgentEventKind::Registered, None),
            EventKind::StatusChanged { previous } => {
                (pb::AgentEventKind::StatusChanged, Some(previous))
            }
            EventKind::MetricsUpdated if self.include_metrics => {
                (pb::AgentEventKind::MetricsUpdated, None)
            }
            EventKind::MetricsUpdated => return None,
            EventKind::LabelsChanged => (pb::AgentEventKind::LabelsChanged, None),
            EventKind::Removed => (pb::AgentEventKind::Removed, None),
        };
        let record = &event.agent.record;
        if event.kind != EventKind::Removed && !self.filter.selector.matches(&record.labels) {
            return None;
        }
        Some(pb::WatchAgentsResponse {
            kind: kind as i32,
            agent: Some(convert::agent_to_pb(&event.agent)),
            previous_status: previous.map_or(0, |p| convert::status_to_pb(p) as i32),
            time: Some(convert::timestamp(event.time)),
            revision: event.revision,
        })
    }
}

/// Averages samples into points of width `step` starting at `start`; `step` zero makes each
/// sample its own point. Network rates come from the counter delta to the previous sample
/// (skipped across a counter reset). Empty steps produce no point.
pub fn aggregate(samples: &[Sample], start: SystemTime, step: Duration) -> Vec<pb::MetricsPoint> {
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
        pb::MetricsPoint {
            time: Some(convert::timestamp(time)),
            sample_count: acc.n,
            cpu_percent: acc.cpu / nf,
            load_1: acc.load[0] / nf,
            load_5: acc.load[1] / nf,
            load_15: acc.load[2] / nf,
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
            .duration_since(start)
            .unwrap_or_default()
            .as_millis();
        let (bucket, bucket_time) = match offset.checked_div(step_ms) {
            None => (u128::from(sample.seq), sample.time),
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
                .duration_since(prev.time)
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
            time: SystemTime::UNIX_EPOCH + Duration::from_secs(secs),
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
    fn page_tokens_round_trip_and_reject_garbage() {
        let id = AgentId::new("abc-1");
        assert_eq!(
            decode_page_token(&encode_page_token(&id)).expect("valid"),
            Some(id)
        );
        assert_eq!(decode_page_token("").expect("empty"), None);
        for garbage in ["zz", "00", &hex::encode("2:abc"), &hex::encode("1:AB C")] {
            assert!(decode_page_token(garbage).is_err(), "{garbage}");
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
