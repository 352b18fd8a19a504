//! The event feed: every change the registry makes, numbered by a server-wide revision and
//! broadcast to watchers, and the consistent snapshot a watch starts from.
//!
//! Events are built and sent under the registry's write lock (see [`Registry::emit`]), so a
//! watcher sees them in revision order, and a snapshot taken under the read lock holds exactly
//! the changes up to its revision.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use tokio::sync::broadcast;

use super::{AgentFilter, AgentView, Inner, Registry};
use crate::domain::{AgentId, AgentStatus, OrgId};

/// What happened to an agent, as sent to watchers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Registered,
    StatusChanged { previous: AgentStatus },
    MetricsUpdated,
    LabelsChanged,
    Removed,
}

/// One change, numbered by `revision` (server-wide, increasing).
#[derive(Clone, Debug)]
pub struct FleetEvent {
    pub revision: u64,
    pub org: OrgId,
    pub kind: EventKind,
    pub time: SystemTime,
    pub agent: AgentView,
}

/// A watcher's subscription. Dropping it releases its interest in metrics events.
pub struct WatchGuard {
    pub rx: broadcast::Receiver<Arc<FleetEvent>>,
    /// Set for watchers counted in `metrics_watchers`.
    metrics: Option<Arc<Registry>>,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        if let Some(registry) = self.metrics.take() {
            registry.metrics_watchers.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

// === impl Registry ===

impl Registry {
    /// Subscribes to events and takes a consistent snapshot of `org`'s matching agents: every
    /// event the receiver yields has a revision greater than the returned one.
    pub fn watch(
        self: &Arc<Self>,
        org: &OrgId,
        filter: &AgentFilter,
        include_metrics: bool,
    ) -> (Vec<AgentView>, u64, WatchGuard) {
        let inner = self.read();
        let rx = self.events.subscribe();
        let snapshot = inner
            .orgs
            .get(org)
            .map(|agents| {
                agents
                    .values()
                    .filter(|e| e.matches(filter))
                    .map(|e| e.view(&self.health))
                    .collect()
            })
            .unwrap_or_default();
        if include_metrics {
            self.metrics_watchers.fetch_add(1, Ordering::Relaxed);
        }
        let guard = WatchGuard {
            rx,
            metrics: include_metrics.then(|| self.clone()),
        };
        (snapshot, inner.revision, guard)
    }

    /// Numbers a change of `agent` with the next revision and sends it to watchers (if any).
    /// Called with the write lock held, so revision order is event order.
    pub(super) fn emit(
        &self,
        inner: &mut Inner,
        org: &OrgId,
        agent: &AgentId,
        kind: EventKind,
        now: SystemTime,
    ) {
        inner.revision += 1;
        if self.events.receiver_count() == 0 {
            return;
        }
        let Some(entry) = inner.orgs.get(org).and_then(|a| a.get(agent)) else {
            return;
        };
        let event = FleetEvent {
            revision: inner.revision,
            org: org.clone(),
            kind,
            time: now,
            agent: entry.view(&self.health),
        };
        // An error only means nobody is listening right now.
        let _ = self.events.send(Arc::new(event));
    }
}
