//! The reconnect loop: one session at a time for an enrolled agent, and the wait before each
//! new attempt. The real agent and every simulated agent run it alike.
//!
//! **Invariants:** every failed attempt waits before the next one (the backoff's delay, never
//! sooner than the server's retry delay, the backoff's cap for a misconfiguration), and a
//! failure that persists is logged at ERROR with what to do; a refused identity (another
//! machine holds the credential) waits the long conflict pause and never replaces the other;
//! the loop itself ends only on shutdown, a revoked or unknown credential (the caller decides
//! whether to enroll again) or a local configuration that cannot work.

use std::collections::BTreeMap;
use std::time::Duration;

use tether_proto::refusal::Refusal;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, info_span};

use super::{SharedCollector, system_info};
use crate::AgentError;
use crate::backoff::Backoff;
use crate::client::Transport;
use crate::session::{self, SessionContext, SessionEnd, Shared};
use crate::state::Enrollment;

/// What the reconnect loop needs, besides the enrollment.
pub(crate) struct Agent<'a> {
    pub(crate) transport: &'a Transport,
    pub(crate) connect_timeout: Duration,
    pub(crate) labels: &'a BTreeMap<String, String>,
    pub(crate) collector: &'a SharedCollector,
    pub(crate) shared: &'a Shared,
    pub(crate) shutdown: &'a CancellationToken,
    /// This agent process's random instance id, sent in every `Hello`.
    pub(crate) instance_id: &'a str,
    /// Wait after a session refused for an identity conflict.
    pub(crate) conflict_backoff: Duration,
}

/// Why [`hold_sessions`] returned.
#[derive(Debug)]
pub(crate) enum HoldEnd {
    /// `shutdown` was cancelled; the agent said goodbye.
    Shutdown,
    /// The server rejected the credential (`UNAUTHENTICATED`): the caller may enroll again, or
    /// else wait and retry ([`wait_to_retry`]).
    Unauthenticated(AgentError),
    /// The server revoked the credential (the agent was deleted, or its credential replaced):
    /// the caller enrolls again if it has a token, and stops otherwise.
    Revoked(AgentError),
    /// A broken local configuration: the agent stops.
    Fatal(AgentError),
}

/// Holds one session at a time for `enrollment`, reconnecting with `backoff`, until shutdown
/// or an error the loop cannot retry by itself. Sets `healthy` when a healthy session ended
/// (the backoff is then reset).
///
/// # Cancellation
///
/// Cancel through `agent.shutdown`: the live session says goodbye first.
pub(crate) async fn hold_sessions(
    agent: &Agent<'_>,
    enrollment: &Enrollment,
    backoff: &mut Backoff,
    healthy_seen: &mut bool,
) -> HoldEnd {
    loop {
        let system_info = match system_info(agent.collector).await {
            Ok(info) => info,
            Err(error) => {
                if !wait_to_retry("describing this machine", &error, backoff, agent.shutdown).await
                {
                    return HoldEnd::Shutdown;
                }
                continue;
            }
        };
        let ctx = SessionContext {
            transport: agent.transport,
            connect_timeout: agent.connect_timeout,
            enrollment,
            system_info: &system_info,
            labels: agent.labels,
            shared: agent.shared,
            shutdown: agent.shutdown,
            instance_id: agent.instance_id,
        };
        let end = session::run_session(&ctx)
            .instrument(info_span!("session", agent_id = %enrollment.agent_id))
            .await;
        match end {
            SessionEnd::Shutdown => return HoldEnd::Shutdown,
            SessionEnd::Closed {
                healthy: true,
                reason,
            } => {
                backoff.reset();
                *healthy_seen = true;
                info!(%reason, "session closed");
                let delay = backoff.next_delay();
                info!(delay = ?delay, "reconnecting after backoff");
                if !sleep_unless_shutdown(delay, agent.shutdown).await {
                    return HoldEnd::Shutdown;
                }
            }
            SessionEnd::Closed {
                healthy: false,
                reason,
            } => {
                // Closed before it was of any use: a failure like any other for the backoff.
                let error = AgentError::Protocol(format!("session closed early: {reason}"));
                if !wait_to_retry("the session", &error, backoff, agent.shutdown).await {
                    return HoldEnd::Shutdown;
                }
            }
            SessionEnd::Drained {
                healthy,
                reconnect_after,
                message,
            } => {
                if healthy {
                    backoff.reset();
                    *healthy_seen = true;
                }
                // The server's delay instead of a backoff step: it spreads the fleet's return.
                // If the server is not back by then, the next failure backs off from here.
                info!(%message, delay = ?reconnect_after, "server draining; reconnecting when it said");
                if !sleep_unless_shutdown(reconnect_after, agent.shutdown).await {
                    return HoldEnd::Shutdown;
                }
            }
            SessionEnd::Failed { healthy, error } => {
                if healthy {
                    backoff.reset();
                    *healthy_seen = true;
                }
                match error.refusal() {
                    Some(Refusal::CredentialRevoked) => return HoldEnd::Revoked(error),
                    Some(Refusal::IdentityConflict) => {
                        let delay = agent
                            .conflict_backoff
                            .mul_f64(rand::random_range(0.8..=1.2));
                        error!(
                            agent_id = %enrollment.agent_id,
                            retry_in = ?delay,
                            "the server refused this session: another machine uses this \
                             agent's credential (a copied state directory). The other keeps the \
                             identity; this agent retries after a long pause and never replaces \
                             it. {error}"
                        );
                        tokio::select! {
                            () = agent.shutdown.cancelled() => return HoldEnd::Shutdown,
                            () = tokio::time::sleep(delay) => {}
                        }
                        continue;
                    }
                    // A refusal of event watches, never of a session.
                    Some(Refusal::CursorExpired) | None => {}
                }
                if error.is_unauthenticated() {
                    return HoldEnd::Unauthenticated(error);
                }
                if !error.is_retryable() {
                    return HoldEnd::Fatal(error);
                }
                if !wait_to_retry("the session", &error, backoff, agent.shutdown).await {
                    return HoldEnd::Shutdown;
                }
            }
        }
    }
}

/// Records a failure of `what` in `backoff` and waits before the next attempt: the backoff's delay, or
/// longer if the server asked for it. Logs the failure at INFO, or at ERROR with what to do
/// once it persists; a misconfiguration ([`crate::failure::misconfiguration`]) at ERROR at
/// once, waiting the backoff's cap. Returns `false` if `shutdown` fired first.
pub(crate) async fn wait_to_retry(
    what: &str,
    error: &AgentError,
    backoff: &mut Backoff,
    shutdown: &CancellationToken,
) -> bool {
    let retry = backoff.failed(error.retry_after(), Instant::now());
    if let Some(problem) = crate::failure::misconfiguration(error) {
        // It will not fix itself: said at once, at ERROR with what to fix (then as any
        // persistent failure), and retried only at the backoff's cap.
        let delay = retry.delay.max(backoff.max());
        if retry.failures == 1 || retry.persistent {
            error!(
                error = %error,
                failures = retry.failures,
                retry_in = %humantime::format_duration(delay),
                "{what} failed: {}",
                problem.remedy()
            );
        } else {
            info!(error = %error, retry_in = %humantime::format_duration(delay), "{what} failed");
        }
        return sleep_unless_shutdown(delay, shutdown).await;
    }
    if retry.persistent {
        error!(
            error = %error,
            failures = retry.failures,
            failing_for = ?retry.failing_for,
            delay = ?retry.delay,
            "{what} keeps failing: {}",
            error.advice()
        );
    } else {
        info!(error = %error, delay = ?retry.delay, "{what} failed; retrying after backoff");
    }
    sleep_unless_shutdown(retry.delay, shutdown).await
}

/// Sleeps for `delay`; `false` if `shutdown` fired first.
async fn sleep_unless_shutdown(delay: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        () = shutdown.cancelled() => false,
        () = tokio::time::sleep(delay) => true,
    }
}
