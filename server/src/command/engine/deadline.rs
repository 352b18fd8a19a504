//! The deadlines that make every invocation terminal, whatever happens to its agent, its
//! connection or the server: the pure rule [`due`] and the engine's tick that applies it.
//!
//! | state | ends | when (server clock) |
//! |---|---|---|
//! | QUEUED | DELIVERY_TIMED_OUT | `deliver_by` |
//! | OFFERED | DELIVERY_TIMED_OUT (and a cancel to the agent) | `deliver_by` + [`OFFER_ANSWER_GRACE`] |
//! | RUNNING | TIMED_OUT (and a cancel to the agent) | min(started, `deliver_by`) + timeout + [`RESULT_GRACE`] |
//!
//! Every line is at or before `deliver_by + timeout + RESULT_GRACE`: that is the bound the
//! contract promises. The agent itself kills a process at its timeout and reports TIMED_OUT;
//! the server's deadline is for an agent that cannot report (gone, disconnected, silent).
//! After a restart the tick applies the rule to whatever the store says, so deadlines that
//! passed while the server was down are settled at the first tick.

use std::collections::BTreeSet;

use super::tx::{Effect, Tx};
use super::{Engine, OFFER_ANSWER_GRACE, RESULT_GRACE, later};
use crate::command::model::InvocationState;
use crate::command::record::{CommandRecord, InvocationRecord};
use crate::domain::Time;

/// How often the idempotency keys remembered in memory are swept.
const KEY_SWEEP: std::time::Duration = std::time::Duration::from_secs(60);

/// How an invocation ends at its deadline, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Expiry {
    pub(super) to: InvocationState,
    pub(super) reason: &'static str,
    /// The agent may be running it: it is asked to stop.
    pub(super) cancel: bool,
}

/// When `invocation` of `command` must end, if it is unfinished.
pub(super) fn deadline(command: &CommandRecord, invocation: &InvocationRecord) -> Option<Time> {
    let result = |start: Time| later(later(start, command.timeout), RESULT_GRACE);
    match invocation.state {
        InvocationState::Queued => Some(command.deliver_by),
        InvocationState::Offered => Some(later(command.deliver_by, OFFER_ANSWER_GRACE)),
        InvocationState::Running => {
            let started = invocation.started_at.unwrap_or(command.deliver_by);
            Some(result(started.min(command.deliver_by)))
        }
        _ => None,
    }
}

/// How `invocation` ends if its deadline is at or before `now`.
pub(super) fn due(
    command: &CommandRecord,
    invocation: &InvocationRecord,
    now: Time,
) -> Option<Expiry> {
    if deadline(command, invocation)? > now {
        return None;
    }
    Some(match invocation.state {
        InvocationState::Queued => Expiry {
            to: InvocationState::DeliveryTimedOut,
            reason: "not delivered before its deadline (the agent was not connected)",
            cancel: false,
        },
        InvocationState::Offered => Expiry {
            to: InvocationState::DeliveryTimedOut,
            reason: "the agent did not start it before its deadline",
            cancel: true,
        },
        _ => Expiry {
            to: InvocationState::TimedOut,
            reason: "no result from the agent within the timeout and its grace",
            cancel: true,
        },
    })
}

// === impl Engine ===

impl Engine {
    /// One pass of the deadline rule over every unfinished command whose earliest deadline has
    /// come; takes a writer slot only when something is due.
    pub(super) async fn tick(&self) {
        let now = Time::now();
        self.forget_old_keys(now);
        if !self.anything_due(now) {
            return;
        }
        let Ok(slot) = self.writer.reserve().await else {
            return;
        };
        let mut state = self.lock();
        let ctx = self.ctx();
        let mut tx = Tx::new(now);
        let mut touched = BTreeSet::new();
        let keys: Vec<u64> = state.commands.keys().copied().collect();
        for key in keys {
            let Some(active) = state.commands.get(&key) else {
                continue;
            };
            if !active.created || active.next_deadline.is_some_and(|at| at > now) {
                continue;
            }
            let expired: Vec<(u32, Expiry)> = active
                .invs
                .iter()
                .filter_map(|inv| Some((inv.record.n, due(&active.record, &inv.record, now)?)))
                .collect();
            for (n, expiry) in expired {
                let result = state.change(&ctx, &mut tx, key, n, expiry.to, |r| {
                    r.reason = expiry.reason.to_owned();
                    r.finished_at = Some(now);
                });
                if let Err(e) = result {
                    tracing::error!("a deadline could not be recorded: {e}");
                    continue;
                }
                if expiry.cancel {
                    tx.effects.push(Effect::Cancel { key, n });
                }
                touched.insert(key);
            }
            if let Some(active) = state.commands.get_mut(&key) {
                // Without an unfinished invocation the command is finished: look again in an
                // hour at the latest, should anything change it back (nothing does).
                let earliest = active
                    .invs
                    .iter()
                    .filter_map(|inv| deadline(&active.record, &inv.record))
                    .min()
                    .unwrap_or_else(|| later(now, std::time::Duration::from_secs(3600)));
                active.next_deadline = Some(earliest);
            }
        }
        for key in touched {
            if let Err(e) = state.dispatch(&ctx, &mut tx, key) {
                tracing::error!("a command's dispatch stopped early: {e}");
            }
        }
        drop(self.commit(&mut state, tx, slot));
    }

    /// Forgets the idempotency keys older than their window (the store answers for them), at
    /// most once per [`KEY_SWEEP`].
    fn forget_old_keys(&self, now: Time) {
        let mut state = self.lock();
        if state.swept_keys.is_some_and(|at| at.elapsed() < KEY_SWEEP) {
            return;
        }
        state.swept_keys = Some(std::time::Instant::now());
        let window = now
            .get()
            .checked_sub(tether_proto::command::IDEMPOTENCY_WINDOW)
            .unwrap_or(std::time::SystemTime::UNIX_EPOCH);
        state.keys.retain(|_, (_, at)| at.get() >= window);
    }

    /// Whether any command's earliest deadline has come (or is not known yet).
    fn anything_due(&self, now: Time) -> bool {
        let state = self.lock();
        state
            .commands
            .values()
            .any(|a| a.created && a.next_deadline.is_none_or(|at| at <= now))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::command::model::{CommandState, RolloutPolicy};
    use crate::command::record::{CommandSpec, Counts, Targets};
    use crate::domain::{AgentId, CommandId, OrgId, TokenId};

    fn t(secs: u64) -> Time {
        Time::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + secs)).expect("time")
    }

    fn command() -> CommandRecord {
        CommandRecord {
            id: CommandId::new("c"),
            org: OrgId::new("o"),
            spec: Arc::new(CommandSpec::Noop),
            targets: Targets::default(),
            rollout: RolloutPolicy::default(),
            timeout: Duration::from_secs(30),
            deliver_by: t(600),
            kill_grace: Duration::from_secs(10),
            idempotency_key: String::new(),
            description: String::new(),
            sender_token: TokenId::new("t"),
            sender_name: String::new(),
            created_at: t(0),
            output_limit: 0,
            n_invocations: 1,
            runnable: 1,
            paused: false,
            cancel_requested: false,
            offered_any: false,
            state: CommandState::Pending,
            counts: Counts::default(),
            finished_at: None,
            last_cursor: 1,
        }
    }

    fn invocation(state: InvocationState, started: Option<u64>) -> InvocationRecord {
        InvocationRecord {
            n: 0,
            agent: AgentId::new("a"),
            agent_name: String::new(),
            canary: false,
            state,
            skip_reason: None,
            reason: String::new(),
            exit_code: None,
            signal: None,
            queued_at: t(0),
            offered_at: None,
            started_at: started.map(t),
            finished_at: None,
            stdout_bytes: 0,
            stderr_bytes: 0,
            head_bytes: 0,
            tail_bytes: 0,
            last_seq: 0,
        }
    }

    #[test]
    fn each_state_has_its_deadline() {
        let c = command();
        let queued = invocation(InvocationState::Queued, None);
        assert_eq!(due(&c, &queued, t(599)), None);
        assert_eq!(
            due(&c, &queued, t(600)).map(|e| (e.to, e.cancel)),
            Some((InvocationState::DeliveryTimedOut, false))
        );
        let offered = invocation(InvocationState::Offered, None);
        assert_eq!(due(&c, &offered, t(604)), None);
        assert_eq!(
            due(&c, &offered, t(605)).map(|e| (e.to, e.cancel)),
            Some((InvocationState::DeliveryTimedOut, true))
        );
        let running = invocation(InvocationState::Running, Some(100));
        assert_eq!(due(&c, &running, t(189)), None);
        assert_eq!(
            due(&c, &running, t(190)).map(|e| (e.to, e.cancel)),
            Some((InvocationState::TimedOut, true))
        );
        assert_eq!(
            due(&c, &invocation(InvocationState::Succeeded, None), t(9999)),
            None
        );
    }

    #[test]
    fn no_invocation_outlives_deliver_by_plus_timeout_plus_the_grace() {
        let c = command();
        let bound = later(later(c.deliver_by, c.timeout), RESULT_GRACE);
        // Started late (its RUNNING arrived after deliver_by), or never said when.
        for started in [Some(700), Some(10_000), None] {
            let running = invocation(InvocationState::Running, started);
            assert!(
                deadline(&c, &running).expect("unfinished") <= bound,
                "{started:?}"
            );
        }
        for state in [InvocationState::Queued, InvocationState::Offered] {
            assert!(deadline(&c, &invocation(state, None)).expect("unfinished") <= bound);
        }
    }
}
