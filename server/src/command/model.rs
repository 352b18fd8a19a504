//! Domain types of commands: no proto, no store.

use serde::{Deserialize, Serialize};

/// The state of one agent's invocation. `Queued`, `Offered` and `Running` are the only states
/// that are not terminal; a terminal state never changes again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InvocationState {
    Queued,
    Offered,
    Running,
    Succeeded,
    Failed,
    TimedOut,
    Cancelled,
    DeliveryTimedOut,
    Rejected,
    Skipped,
    AgentDeleted,
    AgentRestarted,
}

/// Why an invocation was never offered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    /// The agent was not online at send time and offline agents were not included.
    Offline,
    /// More invocations failed than the command's `max_errors` allows.
    ErrorBudget,
    /// A canary invocation did not succeed.
    CanaryFailed,
}

/// The command's state, derived from its invocations and the operator's requests by
/// [`crate::command::rollout::command_state`]; never stored on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandState {
    Pending,
    Running,
    Paused,
    Succeeded,
    Failed,
    Cancelled,
}

/// How an invocation counts for the rollout rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standing {
    /// Waiting to be offered.
    Queued,
    /// Offered or running: it occupies a slot of `max_concurrency`.
    InFlight,
    Succeeded,
    /// Counts against `max_errors` (and fails a canary).
    Failed,
    /// Ended without running and without failing: cancelled, or skipped.
    Neutral,
}

// === impl CommandState ===

impl CommandState {
    /// Whether every invocation has ended: SUCCEEDED, FAILED or CANCELLED.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }
}

// === impl InvocationState ===

impl InvocationState {
    pub fn is_terminal(self) -> bool {
        !matches!(self, Self::Queued | Self::Offered | Self::Running)
    }

    /// How the rollout rule counts this state. Every terminal state but `Succeeded`,
    /// `Cancelled` and `Skipped` is an error: the command did not happen on that agent, whether
    /// its program failed, it was refused, it never reached the agent in time, or the agent
    /// went away.
    pub fn standing(self) -> Standing {
        match self {
            Self::Queued => Standing::Queued,
            Self::Offered | Self::Running => Standing::InFlight,
            Self::Succeeded => Standing::Succeeded,
            Self::Cancelled | Self::Skipped => Standing::Neutral,
            Self::Failed
            | Self::TimedOut
            | Self::DeliveryTimedOut
            | Self::Rejected
            | Self::AgentDeleted
            | Self::AgentRestarted => Standing::Failed,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Offered => "offered",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::TimedOut => "timed_out",
            Self::Cancelled => "cancelled",
            Self::DeliveryTimedOut => "delivery_timed_out",
            Self::Rejected => "rejected",
            Self::Skipped => "skipped",
            Self::AgentDeleted => "agent_deleted",
            Self::AgentRestarted => "agent_restarted",
        }
    }
}

/// An amount given as a count, or as a percentage of a command's invocations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Amount {
    Count(u32),
    Percent(u32),
}

// === impl Amount ===

impl Amount {
    /// The count this amount stands for among `total` invocations: a percentage is rounded up,
    /// so any percentage above zero is at least one invocation.
    pub fn of(self, total: u32) -> u32 {
        match self {
            Self::Count(n) => n,
            Self::Percent(p) => {
                let scaled = u64::from(p.min(100)) * u64::from(total);
                u32::try_from(scaled.div_ceil(100)).unwrap_or(u32::MAX)
            }
        }
    }
}

/// How a command rolls out, as the operator gave it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutPolicy {
    /// Invocations offered or running at once; `None`: all at once.
    pub max_concurrency: Option<Amount>,
    /// Failed invocations tolerated; `None`: no limit.
    pub max_errors: Option<Amount>,
    /// The first `canary` invocations must all succeed before the others are offered.
    pub canary: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_round_up_and_counts_stay() {
        assert_eq!(Amount::Percent(10).of(100), 10);
        assert_eq!(Amount::Percent(10).of(5), 1);
        assert_eq!(Amount::Percent(1).of(1), 1);
        assert_eq!(Amount::Percent(0).of(1000), 0);
        assert_eq!(Amount::Percent(100).of(7), 7);
        assert_eq!(Amount::Percent(250).of(7), 7, "above 100 % means all");
        assert_eq!(Amount::Count(3).of(1), 3);
        assert_eq!(Amount::Percent(50).of(u32::MAX), u32::MAX.div_ceil(2));
    }

    #[test]
    fn only_queued_offered_and_running_are_not_terminal() {
        use InvocationState::*;
        for state in [
            Queued,
            Offered,
            Running,
            Succeeded,
            Failed,
            TimedOut,
            Cancelled,
            DeliveryTimedOut,
            Rejected,
            Skipped,
            AgentDeleted,
            AgentRestarted,
        ] {
            assert_eq!(
                state.is_terminal(),
                !matches!(state, Queued | Offered | Running),
                "{state:?}"
            );
            assert_eq!(
                state.is_terminal(),
                !matches!(state.standing(), Standing::Queued | Standing::InFlight),
                "{state:?}"
            );
        }
    }
}
