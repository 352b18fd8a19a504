//! Admission control for agent sessions: when the server is behind, a new `Connect` is refused
//! at once, before its `Hello` is read or any registry work is done, instead of being accepted
//! and then timed out.
//!
//! The signals are cheap to read on every `Connect`: how many sessions are being set up right
//! now (from the handler's start to its `Welcome`), and whether this agent already has one in
//! setup. Sessions leave setup at the pace the server works, so the places turn over and every
//! agent gets its turn. (The writer's queue is deliberately not a signal: under sustained ingest
//! it stays full, its backpressure already slows each session, and refusing new sessions while
//! it is full kept reconnecting agents out for good in the benchmark.) A refusal is
//! `UNAVAILABLE` with a retry delay ([`ServerError::Busy`], written as `tether_proto::refusal`
//! writes every retry delay) spread with jitter over `[retry_after, 2 × retry_after]`, so a
//! reconnect storm turned away together does not come back together.
//!
//! Invariant: every admitted session holds one [`SetupPermit`] until its setup ends, however it
//! ends (Welcome, refusal, error, cancellation); the permit's `Drop` is the one place the
//! counts go down.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rand::Rng as _;

use crate::config::AdmissionConfig;
use crate::domain::AgentId;
use crate::error::ServerError;
use crate::metrics::Metrics;

/// Why a session was refused as busy: the `reason` label of `tether_sessions_refused`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Busy {
    /// [`AdmissionConfig::max_sessions_in_setup`] sessions are being set up.
    SetupFull,
    /// This agent already has a session in setup.
    AgentInSetup,
    /// The agent did not send `Hello` within [`AdmissionConfig::hello_timeout`].
    HelloTimeout,
}

/// The server-wide admission state, shared by every `Connect`.
pub struct Admission {
    config: AdmissionConfig,
    metrics: Arc<Metrics>,
    in_setup: AtomicUsize,
    /// Agents with a session in setup. Locked for a lookup and an insert per `Connect`.
    agents: Mutex<HashSet<AgentId>>,
}

/// One session's place in setup; dropping it gives the place back.
pub struct SetupPermit {
    admission: Arc<Admission>,
    agent: AgentId,
}

// === impl Busy ===

impl Busy {
    pub fn label(self) -> &'static str {
        match self {
            Self::SetupFull => "setup_full",
            Self::AgentInSetup => "agent_in_setup",
            Self::HelloTimeout => "hello_timeout",
        }
    }

    fn message(self, config: &AdmissionConfig) -> String {
        match self {
            Self::SetupFull => format!(
                "server busy: {} sessions are being set up; retry later",
                config.max_sessions_in_setup
            ),
            Self::AgentInSetup => {
                "server busy: another session of this agent is being set up; retry later".to_owned()
            }
            Self::HelloTimeout => format!(
                "no Hello within {} of opening the stream (the server may be busy); retry later",
                humantime::format_duration(config.hello_timeout)
            ),
        }
    }
}

// === impl Admission ===

impl Admission {
    pub fn new(config: AdmissionConfig, metrics: Arc<Metrics>) -> Self {
        Self {
            config,
            metrics,
            in_setup: AtomicUsize::new(0),
            agents: Mutex::new(HashSet::new()),
        }
    }

    /// How long a new stream may take to send its `Hello`.
    pub fn hello_timeout(&self) -> Duration {
        self.config.hello_timeout
    }

    /// Sessions being set up right now.
    pub fn in_setup(&self) -> usize {
        self.in_setup.load(Ordering::Acquire)
    }

    /// Admits a new session of `agent` into setup, or refuses it.
    ///
    /// # Errors
    ///
    /// [`ServerError::Busy`] (`UNAVAILABLE` with a retry delay) when the server is behind.
    pub fn admit(self: &Arc<Self>, agent: &AgentId) -> Result<SetupPermit, ServerError> {
        let max = self.config.max_sessions_in_setup;
        if self
            .in_setup
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_err()
        {
            return Err(self.refuse(Busy::SetupFull));
        }
        let inserted = self
            .agents
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(agent.clone());
        if !inserted {
            self.in_setup.fetch_sub(1, Ordering::AcqRel);
            return Err(self.refuse(Busy::AgentInSetup));
        }
        self.metrics.sessions_in_setup.inc();
        Ok(SetupPermit {
            admission: self.clone(),
            agent: agent.clone(),
        })
    }

    /// Counts a refusal for `reason` and builds its answer.
    pub fn refuse(&self, reason: Busy) -> ServerError {
        self.metrics.session_refused(reason.label());
        ServerError::Busy {
            message: reason.message(&self.config),
            after: spread(self.config.retry_after, rand::rng().random()),
        }
    }
}

// === impl SetupPermit ===

impl Drop for SetupPermit {
    fn drop(&mut self) {
        self.admission
            .agents
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.agent);
        self.admission.in_setup.fetch_sub(1, Ordering::AcqRel);
        self.admission.metrics.sessions_in_setup.dec();
    }
}

/// `base` spread over `[base, 2 × base]` by `unit` in `[0, 1)`.
fn spread(base: Duration, unit: f64) -> Duration {
    base.mul_f64(1.0 + unit.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(max_in_setup: usize) -> Arc<Admission> {
        let config = AdmissionConfig {
            max_sessions_in_setup: max_in_setup,
            ..AdmissionConfig::default()
        };
        Arc::new(Admission::new(config, Metrics::new()))
    }

    fn busy_delay(err: ServerError) -> Duration {
        match err {
            ServerError::Busy { after, .. } => after,
            other => panic!("expected Busy, got {other:?}"),
        }
    }

    #[test]
    fn setup_is_bounded_and_permits_give_their_place_back() {
        let admission = admission(2);
        let a = admission.admit(&AgentId::new("a")).expect("first");
        let _b = admission.admit(&AgentId::new("b")).expect("second");
        assert_eq!(admission.in_setup(), 2);
        let refused = admission
            .admit(&AgentId::new("c"))
            .err()
            .expect("third refused");
        let delay = busy_delay(refused);
        let base = AdmissionConfig::default().retry_after;
        assert!(delay >= base && delay <= base * 2, "{delay:?}");
        drop(a);
        assert_eq!(admission.in_setup(), 1);
        admission
            .admit(&AgentId::new("c"))
            .expect("a place is free again");
    }

    #[test]
    fn one_agent_has_at_most_one_session_in_setup() {
        let admission = admission(8);
        let first = admission.admit(&AgentId::new("a")).expect("first");
        assert!(admission.admit(&AgentId::new("a")).is_err());
        assert_eq!(admission.in_setup(), 1, "a refusal holds no place");
        drop(first);
        admission
            .admit(&AgentId::new("a"))
            .expect("after the first ended");
    }

    #[test]
    fn retry_delays_are_spread() {
        let base = Duration::from_secs(2);
        assert_eq!(spread(base, 0.0), base);
        assert_eq!(spread(base, 0.5), Duration::from_secs(3));
        assert_eq!(spread(base, 7.0), base * 2);
    }
}
