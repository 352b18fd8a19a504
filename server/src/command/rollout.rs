//! The rollout rule: given where a command's invocations stand, how many queued ones may be
//! offered now, and when the queued rest must be skipped instead.
//!
//! Pure and total: the command engine counts its invocations into a [`Progress`], asks
//! [`next`], and applies the answer; it never offers or skips on its own judgement. The rule:
//!
//! 1. A canary that did not succeed skips every queued invocation (`CanaryFailed`).
//! 2. More failures than `max_errors` skip every queued invocation (`ErrorBudget`).
//! 3. A paused command offers nothing.
//! 4. At most `max_concurrency` invocations are in flight (offered or running) at once; while
//!    canaries are queued or in flight, only canaries are offered.
//!
//! **Budget bound.** A new invocation is offered only while failures ≤ `max_errors` and only
//! into a free slot, so once the budget is exceeded at most the `max_concurrency` invocations
//! already in flight can still fail: total failures ≤ `max_errors` + `max_concurrency`. With
//! `max_errors` 0 and `max_concurrency` 1 that is one failure: the first, which stops the
//! rollout. (No rule can promise fewer: an invocation may fail the moment it starts.)

use crate::command::model::{
    Amount, CommandState, InvocationState, RolloutPolicy, SkipReason, Standing,
};

/// A [`RolloutPolicy`] resolved against the number of invocations that can run (those not
/// skipped at send time).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// In flight at once; at least 1.
    pub concurrency: u32,
    /// Failures tolerated; `None`: no limit.
    pub errors: Option<u32>,
    /// How many of the first invocations are canaries.
    pub canary: u32,
}

/// A policy that cannot be applied.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("max_concurrency must allow at least one invocation (a count or percentage above 0)")]
    ZeroConcurrency,
    #[error("{field} is {percent} %; a percentage is at most 100")]
    PercentAbove100 { field: &'static str, percent: u32 },
}

/// How one group of invocations (canaries, or the rest) stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub queued: u32,
    pub in_flight: u32,
    pub succeeded: u32,
    pub failed: u32,
    pub neutral: u32,
}

/// Where a command's invocations stand, canaries apart.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    pub canary: Tally,
    pub rest: Tally,
}

/// What the engine must do next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Offer up to `n` queued invocations (at least 1), canaries only when `canaries_only`.
    /// Fewer may be offered (e.g. their agents are offline); ask again after any change.
    Offer { n: u32, canaries_only: bool },
    /// Skip every queued invocation, canaries included, for this reason.
    SkipQueued(SkipReason),
    /// Nothing to do until something changes.
    Wait,
}

// === impl Limits ===

impl Limits {
    /// Resolves `policy` for a command with `runnable` invocations.
    ///
    /// # Errors
    ///
    /// [`PolicyError`] for a concurrency of zero or a percentage above 100.
    pub fn resolve(policy: &RolloutPolicy, runnable: u32) -> Result<Self, PolicyError> {
        let check = |field: &'static str, amount: Option<Amount>| match amount {
            Some(Amount::Percent(percent)) if percent > 100 => {
                Err(PolicyError::PercentAbove100 { field, percent })
            }
            _ => Ok(()),
        };
        check("max_concurrency", policy.max_concurrency)?;
        check("max_errors", policy.max_errors)?;
        let concurrency = match policy.max_concurrency {
            None => runnable.max(1),
            Some(Amount::Count(0) | Amount::Percent(0)) => {
                return Err(PolicyError::ZeroConcurrency);
            }
            Some(amount) => amount.of(runnable).max(1),
        };
        Ok(Self {
            concurrency,
            errors: policy.max_errors.map(|amount| amount.of(runnable)),
            canary: policy.canary.min(runnable),
        })
    }
}

// === impl Tally ===

impl Tally {
    pub fn add(&mut self, standing: Standing) {
        let slot = match standing {
            Standing::Queued => &mut self.queued,
            Standing::InFlight => &mut self.in_flight,
            Standing::Succeeded => &mut self.succeeded,
            Standing::Failed => &mut self.failed,
            Standing::Neutral => &mut self.neutral,
        };
        *slot = slot.saturating_add(1);
    }

    /// Takes back one [`Tally::add`] of `standing`.
    pub fn remove(&mut self, standing: Standing) {
        let slot = match standing {
            Standing::Queued => &mut self.queued,
            Standing::InFlight => &mut self.in_flight,
            Standing::Succeeded => &mut self.succeeded,
            Standing::Failed => &mut self.failed,
            Standing::Neutral => &mut self.neutral,
        };
        *slot = slot.saturating_sub(1);
    }

    fn total(&self) -> u32 {
        self.queued
            .saturating_add(self.in_flight)
            .saturating_add(self.succeeded)
            .saturating_add(self.failed)
            .saturating_add(self.neutral)
    }
}

/// The rollout rule (see the module docs).
pub fn next(limits: &Limits, progress: &Progress, paused: bool) -> Next {
    let Progress { canary, rest } = progress;
    let queued = canary.queued.saturating_add(rest.queued);
    if queued == 0 {
        return Next::Wait;
    }
    if canary.failed > 0 || canary.neutral > 0 {
        return Next::SkipQueued(SkipReason::CanaryFailed);
    }
    let failed = canary.failed.saturating_add(rest.failed);
    if limits.errors.is_some_and(|errors| failed > errors) {
        return Next::SkipQueued(SkipReason::ErrorBudget);
    }
    if paused {
        return Next::Wait;
    }
    let in_flight = canary.in_flight.saturating_add(rest.in_flight);
    let free = limits.concurrency.saturating_sub(in_flight);
    let canaries_only = canary.queued > 0 || canary.in_flight > 0;
    let candidates = if canaries_only {
        canary.queued
    } else {
        rest.queued
    };
    match free.min(candidates) {
        0 => Next::Wait,
        n => Next::Offer { n, canaries_only },
    }
}

/// The command's state, derived from its invocations and the operator's requests.
///
/// Terminal once every invocation is: `Cancelled` if an operator cancelled it, `Succeeded` if
/// every invocation succeeded, else `Failed` (a skipped or cancelled invocation is not a
/// success). Before that: `Paused` while paused, `Pending` until something was offered, else
/// `Running`.
pub fn command_state(
    progress: &Progress,
    paused: bool,
    cancel_requested: bool,
    offered_any: bool,
) -> CommandState {
    let all = [progress.canary, progress.rest];
    let open: u32 = all.iter().map(|t| t.queued + t.in_flight).sum();
    if open == 0 {
        let total: u32 = all.iter().map(Tally::total).sum();
        let succeeded: u32 = all.iter().map(|t| t.succeeded).sum();
        return if cancel_requested {
            CommandState::Cancelled
        } else if succeeded == total {
            CommandState::Succeeded
        } else {
            CommandState::Failed
        };
    }
    if paused {
        CommandState::Paused
    } else if offered_any {
        CommandState::Running
    } else {
        CommandState::Pending
    }
}

/// Counts invocations, given as (state, is a canary), into a [`Progress`].
pub fn progress_of(states: impl IntoIterator<Item = (InvocationState, bool)>) -> Progress {
    let mut progress = Progress::default();
    for (state, canary) in states {
        let tally = if canary {
            &mut progress.canary
        } else {
            &mut progress.rest
        };
        tally.add(state.standing());
    }
    progress
}

#[cfg(test)]
mod tests;
