//! The fleet as a scrape sees it: agents by status, fleet-wide and per org, and the watchers
//! with the events queued for them, counted from the registry when scraped
//! ([`crate::registry::Registry::census`]).
//!
//! **Invariant (bounded cardinality):** orgs are created by admins, so their number has no
//! fixed bound; the per-org family holds at most [`MAX_ORG_SERIES`] orgs (those with the most
//! agents, ties by id) plus one `org="_other"` series summing the rest. `_other` cannot be an
//! org id (ids are `[a-z0-9-]`). At most `(MAX_ORG_SERIES + 1) × 4` series, whatever the fleet.

use std::sync::{OnceLock, Weak};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;

use crate::domain::OrgId;
use crate::registry::{Census, Registry, STATUSES};

/// Most orgs with series of their own in `tether_org_agents`.
pub const MAX_ORG_SERIES: usize = 50;

/// The `org` label of the series summing the orgs past [`MAX_ORG_SERIES`].
pub const OTHER_ORGS: &str = "_other";

/// The registry the collector counts, set once it exists (it is built after the metrics).
#[derive(Default)]
pub(super) struct FleetSource(OnceLock<Weak<Registry>>);

impl std::fmt::Debug for FleetSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetSource")
            .field("set", &self.0.get().is_some())
            .finish()
    }
}

impl FleetSource {
    pub(super) fn set(&self, registry: Weak<Registry>) {
        if self.0.set(registry).is_err() {
            tracing::warn!("the fleet's metrics already count another registry; kept it");
        }
    }

    fn census(&self) -> Option<Census> {
        Some(self.0.get()?.upgrade()?.census())
    }
}

/// Encodes the fleet families on every scrape.
#[derive(Debug)]
pub(super) struct FleetCollector(pub(super) std::sync::Arc<FleetSource>);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OrgStatusLabels {
    org: String,
    status: &'static str,
}

impl Collector for FleetCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(census) = self.0.census() else {
            return Ok(());
        };
        let series = org_series(&census.orgs, MAX_ORG_SERIES);
        let mut fleet = [0u64; 4];
        for (_, counts) in &series {
            for (total, n) in fleet.iter_mut().zip(counts) {
                *total += n;
            }
        }

        let mut family = encoder.encode_descriptor(
            "agents",
            "Agents by status (expired ones included).",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (status, n) in STATUSES.iter().zip(fleet) {
            let labels = StatusLabels {
                status: status.as_str(),
            };
            gauge(n).encode(family.encode_family(&labels)?)?;
        }

        let mut family = encoder.encode_descriptor(
            "org_agents",
            "Agents by org and status: the orgs with the most agents, the rest summed under \
             org=_other.",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (org, counts) in series {
            for (status, n) in STATUSES.iter().zip(counts) {
                let labels = OrgStatusLabels {
                    org: org.clone(),
                    status: status.as_str(),
                };
                gauge(n).encode(family.encode_family(&labels)?)?;
            }
        }

        for (name, help, value) in [
            ("watchers", "Open WatchAgents streams.", census.watchers),
            (
                "watch_queued_events",
                "Events queued for watchers and not yet read by their clients.",
                census.queued_events,
            ),
            (
                "watch_max_queued_events",
                "Events queued for the watcher furthest behind (its lag).",
                census.max_queued_events,
            ),
        ] {
            let metric = gauge(value);
            metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)?;
        }
        Ok(())
    }
}

fn gauge(n: u64) -> ConstGauge<i64> {
    ConstGauge::new(i64::try_from(n).unwrap_or(i64::MAX))
}

/// The per-org series: the `max` orgs with the most agents (ties by id), then the rest summed
/// under [`OTHER_ORGS`] if there is a rest.
pub(super) fn org_series(orgs: &[(OrgId, [u64; 4])], max: usize) -> Vec<(String, [u64; 4])> {
    let mut sorted: Vec<&(OrgId, [u64; 4])> = orgs.iter().collect();
    sorted.sort_by(|(a_id, a), (b_id, b)| {
        let (a_total, b_total) = (a.iter().sum::<u64>(), b.iter().sum::<u64>());
        b_total
            .cmp(&a_total)
            .then_with(|| a_id.as_str().cmp(b_id.as_str()))
    });
    let mut series: Vec<(String, [u64; 4])> = sorted
        .iter()
        .take(max)
        .map(|(org, counts)| (org.as_str().to_owned(), *counts))
        .collect();
    if sorted.len() > max {
        let mut rest = [0u64; 4];
        for (_, counts) in &sorted[max..] {
            for (total, n) in rest.iter_mut().zip(counts) {
                *total += n;
            }
        }
        series.push((OTHER_ORGS.to_owned(), rest));
    }
    series
}
