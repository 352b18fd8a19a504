//! Reading an org's alerts: `ListAlerts`' listing and `WatchAlerts`' snapshot and feed.
//!
//! **Invariants:** a reader sees only its own org's alerts; a watch's snapshot and its feed
//! are taken under one lock, so no change falls between them; an org has at most
//! `max_watchers` watches open, each holding a [`WatchSlot`] that frees its place when dropped.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::broadcast;

use super::rule::{Alert, AlertState};
use super::{AlertEvent, Alerts};
use crate::domain::OrgId;
use crate::error::ServerError;

/// Which alerts `ListAlerts` wants.
#[derive(Clone, Debug, Default)]
pub struct AlertQuery {
    pub state: Option<AlertState>,
    pub rule: Option<String>,
    pub limit: usize,
}

/// One open watch of an org's alerts; dropping it frees its place.
pub struct WatchSlot(Arc<AtomicUsize>);

impl Drop for WatchSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Alerts {
    /// The alerts of `org` that `query` asks for: firing ones (newest first), then resolved ones
    /// (most recently resolved first), at most `query.limit`.
    pub fn list(&self, org: &OrgId, query: &AlertQuery) -> Vec<Alert> {
        let inner = self.lock();
        let Some(alerts) = inner.orgs.get(org) else {
            return Vec::new();
        };
        let rule_ok = |a: &&Alert| query.rule.as_ref().is_none_or(|r| &a.rule == r);
        let mut out: Vec<Alert> = Vec::new();
        if query.state != Some(AlertState::Resolved) {
            let mut firing: Vec<&Alert> = alerts
                .rules
                .values()
                .flat_map(|s| s.firing.values())
                .filter(rule_ok)
                .collect();
            firing.sort_unstable_by(|a, b| b.id.cmp(&a.id));
            out.extend(firing.into_iter().take(query.limit).cloned());
        }
        if query.state != Some(AlertState::Firing) {
            let room = query.limit.saturating_sub(out.len());
            out.extend(
                alerts
                    .resolved
                    .iter()
                    .rev()
                    .filter(rule_ok)
                    .take(room)
                    .cloned(),
            );
        }
        out
    }

    /// The firing alerts of `org` and a feed of its changes from that instant on, with the
    /// watch's place among the org's at most `max_watchers`.
    ///
    /// # Errors
    ///
    /// `RESOURCE_EXHAUSTED` when the org already has `max_watchers` watches open.
    pub fn subscribe(
        &self,
        org: &OrgId,
        max_watchers: usize,
    ) -> Result<(Vec<Alert>, broadcast::Receiver<AlertEvent>, WatchSlot), ServerError> {
        let mut inner = self.lock();
        let alerts = inner.org(org);
        let open = alerts.watchers.fetch_add(1, Ordering::AcqRel);
        let slot = WatchSlot(alerts.watchers.clone());
        if open >= max_watchers {
            return Err(ServerError::ResourceExhausted(format!(
                "an org may have at most {max_watchers} alert watches open"
            )));
        }
        let mut firing: Vec<Alert> = alerts
            .rules
            .values()
            .flat_map(|s| s.firing.values().cloned())
            .collect();
        firing.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        Ok((firing, alerts.feed.subscribe(), slot))
    }
}
