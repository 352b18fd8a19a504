//! The command engine: the in-memory state of every unfinished command and the only code that
//! changes an invocation's state.
//!
//! It holds each unfinished command with its invocations, the unfinished invocations of each
//! agent, and the commits it has queued and not yet seen durable; it is rebuilt from the store
//! at start (`load.rs`), so a restart loses nothing and resumes every rollout. Operations come
//! from handlers (send, cancel, pause, resume: `send.rs`, `steer.rs`), from agent sessions
//! (updates, a session opening, an agent deleted: `report.rs`, `sessions.rs`) and from its own
//! ticker (deadlines: `deadline.rs`). Each runs under the one lock, applies its changes, asks
//! the rollout rule ([`rollout::next`](crate::command::rollout::next)) what to offer or skip
//! next, and queues everything as one commit (`tx.rs`).
//!
//! Invariants:
//! - **Encoded before applied.** Every change is encoded for the store before it touches
//!   memory; one that cannot be stored fails alone and changes nothing.
//! - **Numbered in commit order.** Events of a command are numbered (cursor) and queued to the
//!   writer under the lock, so a command's history is stored in cursor order.
//! - **Durable before anyone acts on it.** Offers, acks of agents' updates, answers to
//!   handlers, and the events watchers see follow only the commit that stored them: the engine
//!   task awaits commits in order and only then applies their effects. An invocation is stored
//!   OFFERED before its offer leaves, so the rollout's count of invocations in flight is never
//!   behind what agents were asked to run.
//! - **A failed commit is not lost.** A command's creation that fails is withdrawn (nothing of
//!   it was offered, and its caller gets INTERNAL); any other commit is queued again with the
//!   same events and the invocations' current records until it is stored; watchers never read
//!   past the first event not yet stored.
//! - **Always terminal.** Every invocation ends by `deliver_by + timeout + 60 s`, whatever the
//!   agent, its connection or the server do (`deadline.rs`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::command::model::InvocationState;
use crate::command::record::InvocationRecord;
use crate::config::CommandSettings;
use crate::domain::{AgentId, CommandId, OrgId, Time};
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::store::{Store, StoreError};
use crate::writer::WriterHandle;

mod deadline;
mod load;
mod report;
mod send;
mod sessions;
mod state;
mod steer;
mod tx;

#[cfg(test)]
mod tests;

pub use self::send::Sent;
pub use self::sessions::Journaled;
pub use self::steer::Steer;

use self::state::{Ctx, State};
use self::tx::PendingTx;

/// Time an agent has, after an invocation's timeout, to report its end before the server
/// records TIMED_OUT (it kills the process group at the timeout, after the kill grace).
pub const RESULT_GRACE: std::time::Duration = std::time::Duration::from_secs(60);
/// Time an agent has, after `deliver_by`, to answer an offer it received before: its RUNNING
/// may be on the way. Within [`RESULT_GRACE`], so the terminal bound holds.
pub const OFFER_ANSWER_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// The command engine. Shared by handlers, sessions and its own task.
pub struct Engine {
    state: Mutex<State>,
    writer: WriterHandle,
    store: Arc<dyn Store>,
    registry: Arc<Registry>,
    settings: CommandSettings,
    metrics: Arc<Metrics>,
    /// Wakes the engine task when a commit is queued.
    wake: Notify,
}

/// What a watcher of an unfinished command follows: the cursor up to which its events are all
/// stored, bumped (even unchanged) after every commit that touched the command.
pub type CursorWatch = watch::Receiver<u64>;

// === impl Engine ===

impl Engine {
    /// Rebuilds the engine from the store: every unfinished command with its invocations, its
    /// history's last cursor and its output tails. Blocking: call it off the async threads.
    ///
    /// # Errors
    ///
    /// The store's, when a record cannot be read.
    pub fn load(
        store: Arc<dyn Store>,
        writer: WriterHandle,
        registry: Arc<Registry>,
        settings: CommandSettings,
        metrics: Arc<Metrics>,
    ) -> Result<Self, StoreError> {
        let state = load::load(store.as_ref())?;
        Ok(Self {
            state: Mutex::new(state),
            writer,
            store,
            registry,
            settings,
            metrics,
            wake: Notify::new(),
        })
    }

    /// How many commands are unfinished.
    pub fn n_active(&self) -> usize {
        self.lock().commands.len()
    }

    /// The engine task: applies the effects of commits as they become durable (in the order
    /// they were queued), queues failed ones again, and checks deadlines every tick, until
    /// `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.settings.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut current: Option<PendingTx> = None;
        loop {
            if current.is_none() {
                current = self.lock().pending.pop_front();
            }
            let waiting = current.is_some();
            let settled = async {
                match current.as_mut() {
                    Some(tx) => tx.pending.settled().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                result = settled, if waiting => {
                    if let Some(tx) = current.take() {
                        self.complete(tx, result).await;
                    }
                }
                _ = tick.tick() => self.tick().await,
                () = self.wake.notified(), if !waiting => {}
            }
        }
        tracing::debug!("command engine stopped");
    }

    /// A receiver of the stored-cursor of `id`, while it is unfinished (`None` once it is
    /// finished: everything of it is stored).
    pub fn watch(&self, org: &OrgId, id: &CommandId) -> Option<CursorWatch> {
        let state = self.lock();
        let active = state.find(org, id)?;
        Some(active.watch.subscribe())
    }

    /// The invocation of `agent` in unfinished command `id`, as the engine holds it (its
    /// latest state, stored or about to be).
    pub fn invocation_of(
        &self,
        org: &OrgId,
        id: &CommandId,
        agent: &AgentId,
    ) -> Option<InvocationRecord> {
        let state = self.lock();
        let active = state.find(org, id)?;
        active
            .invs
            .iter()
            .find(|inv| inv.record.agent == *agent)
            .map(|inv| inv.record.clone())
    }

    /// The cursor of the terminal event of invocation `n` of unfinished command `id`, once it
    /// has one.
    pub fn ended_at(&self, org: &OrgId, id: &CommandId, n: u32) -> Option<u64> {
        let state = self.lock();
        let inv = state.find(org, id)?.invs.get(n as usize)?;
        (inv.terminal_cursor > 0).then_some(inv.terminal_cursor)
    }

    fn ctx(&self) -> Ctx<'_> {
        Ctx {
            writer: &self.writer,
            registry: &self.registry,
            metrics: &self.metrics,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic under this lock is a bug that already failed its operation; the state is a
        // set of records, each changed whole, so keep serving rather than poisoning every call.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Counts of unfinished invocations of each agent, for the per-agent limit.
pub(super) fn open_per_agent(agents: &HashMap<AgentId, Vec<(u64, u32)>>, agent: &AgentId) -> usize {
    agents.get(agent).map_or(0, Vec::len)
}

/// Whether `state` is one an agent may report as an invocation's end.
pub(super) fn agent_may_end_in(state: InvocationState) -> bool {
    matches!(
        state,
        InvocationState::Succeeded
            | InvocationState::Failed
            | InvocationState::TimedOut
            | InvocationState::Cancelled
            | InvocationState::DeliveryTimedOut
            | InvocationState::Rejected
            | InvocationState::AgentRestarted
    )
}

/// `time + span`, within the range of [`Time`].
pub(super) fn later(time: Time, span: std::time::Duration) -> Time {
    Time::clamped(time.get().checked_add(span).unwrap_or(time.get()))
}
