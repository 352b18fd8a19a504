//! The alert families: what fires, by rule, and what becomes of each notification.
//!
//! Cardinality: `tether_alerts_firing` has one series per rule (at most
//! [`MAX_RULES_PER_ORG`](crate::alert::rule::MAX_RULES_PER_ORG) per org, removed with their
//! rule); every other family has labels from closed sets.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// One rule of one org.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleLabels {
    pub org: String,
    pub rule: String,
}

/// What became of a notification: `delivered`, `failed` (out of attempts, or refused with a
/// 4xx), `dropped` (its queue was full: the oldest waiting one goes).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

#[derive(Clone, Debug)]
pub struct AlertMetrics {
    pub firing: Family<RuleLabels, Gauge>,
    pub deliveries: Family<OutcomeLabels, Counter>,
    /// Attempts that failed and were tried again later.
    pub delivery_retries: Counter,
    /// Notifications waiting in every webhook's queue.
    pub delivery_queue: Gauge,
    /// Alerts that did not fire because their rule already fired its maximum.
    pub suppressed: Counter,
    /// How long one evaluation pass over every rule took.
    pub evaluation_seconds: Histogram,
    /// Evaluation passes finished.
    pub evaluations: Counter,
}

impl AlertMetrics {
    /// Creates the families and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            firing: Family::default(),
            deliveries: Family::default(),
            delivery_retries: Counter::default(),
            delivery_queue: Gauge::default(),
            suppressed: Counter::default(),
            evaluation_seconds: Histogram::new(exponential_buckets(0.0001, 4.0, 9)),
            evaluations: Counter::default(),
        };
        registry.register(
            "alerts_firing",
            "Alerts firing, by org and rule",
            metrics.firing.clone(),
        );
        registry.register(
            "alert_deliveries",
            "Webhook notifications by outcome: delivered, failed (out of attempts or refused), \
             dropped (queue full, oldest first)",
            metrics.deliveries.clone(),
        );
        registry.register(
            "alert_delivery_retries",
            "Webhook attempts that failed and were tried again after a backoff",
            metrics.delivery_retries.clone(),
        );
        registry.register(
            "alert_delivery_queue_depth",
            "Webhook notifications waiting to be sent",
            metrics.delivery_queue.clone(),
        );
        registry.register(
            "alerts_suppressed",
            "Alerts that did not fire because their rule had its maximum firing",
            metrics.suppressed.clone(),
        );
        registry.register_with_unit(
            "alert_evaluation",
            "How long one evaluation pass over every alert rule took",
            Unit::Seconds,
            metrics.evaluation_seconds.clone(),
        );
        registry.register(
            "alert_evaluations",
            "Evaluation passes over every alert rule",
            metrics.evaluations.clone(),
        );
        metrics
    }

    /// Counts a notification's outcome.
    pub fn outcome(&self, outcome: &'static str) {
        self.deliveries
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }
}
