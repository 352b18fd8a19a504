//! Liveness: the rules that turn a stream's activity into online / stale / offline / expired,
//! and the task that applies them.
//!
//! Events that the server sees happen (a Hello, a message from a stale agent, a stream's end)
//! change status immediately through the registry. Silence and expiry have no event, so one
//! pass per tick ([`Registry::liveness_pass`]) checks every agent against [`decide`]. The
//! per-message cost is one relaxed atomic store ([`crate::session::Session::touch`]); the pass
//! costs one read of that atomic per connected agent per tick, independent of message rate.
//!
//! Silence is measured from the last inbound message: an agent is stale after `stale_after` of
//! silence and offline after `offline_after` of silence (not `offline_after` after turning
//! stale). An offline agent expires `fleet_ttl` after it went offline.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::LivenessConfig;
use crate::domain::{AgentStatus, StatusReason};
use crate::registry::Registry;

/// The transition an agent is due for, if any.
///
/// `silent_for` is how long its live session has been silent (`None` without a session);
/// `in_status_for` is how long it has held its current status.
pub fn decide(
    status: AgentStatus,
    silent_for: Option<Duration>,
    in_status_for: Duration,
    config: &LivenessConfig,
) -> Option<(AgentStatus, StatusReason)> {
    match (status, silent_for) {
        (AgentStatus::Online, Some(silent)) if silent >= config.offline_after => {
            Some((AgentStatus::Offline, StatusReason::Silent))
        }
        (AgentStatus::Online, Some(silent)) if silent >= config.stale_after => {
            Some((AgentStatus::Stale, StatusReason::Silent))
        }
        (AgentStatus::Stale, Some(silent)) if silent >= config.offline_after => {
            Some((AgentStatus::Offline, StatusReason::Silent))
        }
        // A live status without a session cannot last: the session's end already moved it to
        // offline. Treat it as closed rather than leave it hanging.
        (AgentStatus::Online | AgentStatus::Stale, None) => {
            Some((AgentStatus::Offline, StatusReason::StreamClosed))
        }
        (AgentStatus::Offline, None) if in_status_for >= config.fleet_ttl => {
            Some((AgentStatus::Expired, StatusReason::Ttl))
        }
        _ => None,
    }
}

/// Runs [`Registry::liveness_pass`] every `tick` until `shutdown`.
pub async fn run(registry: Arc<Registry>, tick: Duration, shutdown: CancellationToken) {
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = interval.tick() => {
                let n = registry.liveness_pass();
                if n > 0 {
                    tracing::debug!(transitions = n, "liveness pass");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> LivenessConfig {
        LivenessConfig {
            heartbeat_interval: Duration::from_secs(5),
            metrics_interval: Duration::from_secs(10),
            stale_after: Duration::from_secs(15),
            offline_after: Duration::from_secs(45),
            fleet_ttl: Duration::from_secs(3600),
            tick: Duration::from_millis(250),
            drain: LivenessConfig::default().drain,
        }
    }

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn online_stays_online_while_talking() {
        assert_eq!(
            decide(AgentStatus::Online, Some(S(14)), S(100), &config()),
            None
        );
    }

    #[test]
    fn silence_makes_stale_then_offline() {
        let c = config();
        assert_eq!(
            decide(AgentStatus::Online, Some(S(15)), S(100), &c),
            Some((AgentStatus::Stale, StatusReason::Silent))
        );
        assert_eq!(decide(AgentStatus::Stale, Some(S(44)), S(29), &c), None);
        assert_eq!(
            decide(AgentStatus::Stale, Some(S(45)), S(30), &c),
            Some((AgentStatus::Offline, StatusReason::Silent))
        );
    }

    #[test]
    fn long_silence_seen_late_goes_straight_offline() {
        assert_eq!(
            decide(AgentStatus::Online, Some(S(60)), S(60), &config()),
            Some((AgentStatus::Offline, StatusReason::Silent))
        );
    }

    #[test]
    fn offline_expires_after_ttl() {
        let c = config();
        assert_eq!(decide(AgentStatus::Offline, None, S(3599), &c), None);
        assert_eq!(
            decide(AgentStatus::Offline, None, S(3600), &c),
            Some((AgentStatus::Expired, StatusReason::Ttl))
        );
        assert_eq!(decide(AgentStatus::Expired, None, S(99_999), &c), None);
    }

    #[test]
    fn live_status_without_session_is_closed() {
        assert_eq!(
            decide(AgentStatus::Online, None, S(1), &config()),
            Some((AgentStatus::Offline, StatusReason::StreamClosed))
        );
    }
}
