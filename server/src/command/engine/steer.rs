//! `CancelCommand`, `PauseCommand`, `ResumeCommand`: an operator steering a command.
//!
//! Each takes effect before the rollout's next step: they change the command under the
//! engine's lock, where every dispatch happens. Cancel ends the queued invocations at once
//! (CANCELLED) and asks the agents of offered and running ones to stop (they report CANCELLED,
//! or the deadlines end them). Pause stops new offers; resume dispatches again. Each is audited
//! in the commit that stores it; a request that changes nothing (cancelling a finished
//! command) is audited on its own.

use super::Engine;
use super::tx::{self, Effect, Tx};
use crate::auth::Caller;
use crate::command::model::InvocationState;
use crate::command::record::CommandRecord;
use crate::domain::{AuditEntry, CommandId, Time};
use crate::error::ServerError;

/// What an operator asks of a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Steer {
    Cancel,
    Pause,
    Resume,
}

// === impl Engine ===

impl Engine {
    /// Applies `steer` to command `id` of the caller's org; returns the command as stored
    /// after it. `audit` records the request in the same commit.
    ///
    /// # Errors
    ///
    /// `NOT_FOUND` (no such command in the org), `FAILED_PRECONDITION` (pausing or resuming
    /// a finished command), `INTERNAL` (the store; the change may still be stored later).
    pub async fn steer(
        &self,
        caller: &Caller,
        id: &CommandId,
        steer: Steer,
        audit: AuditEntry,
    ) -> Result<CommandRecord, ServerError> {
        let slot = self.writer.reserve().await?;
        let Some(key) = self.lock().key_of(&caller.org, id) else {
            return self.steer_stored(caller, id, steer, audit, slot).await;
        };
        let (done, command) = {
            let mut state = self.lock();
            let now = Time::now();
            let mut tx = Tx::new(now);
            tx.audit = Some(audit);
            let ctx = self.ctx();
            // Still there: a command leaves the engine only after its last commit, and this
            // one is being queued under the lock.
            let Some(active) = state.commands.get_mut(&key) else {
                return Err(ServerError::Unavailable);
            };
            let finished = active.record.is_finished();
            if finished && steer != Steer::Cancel {
                return Err(finished_error(id));
            }
            // What was changed before an error is committed all the same: memory never holds
            // a change the store is not given.
            let mut applied = Ok(());
            match steer {
                Steer::Cancel if finished || active.record.cancel_requested => {}
                Steer::Cancel => {
                    active.record.cancel_requested = true;
                    tx.touch_command(key);
                    let (queued, started): (Vec<_>, Vec<_>) = active
                        .invs
                        .iter()
                        .filter(|inv| !inv.record.state.is_terminal())
                        .map(|inv| (inv.record.n, inv.record.state))
                        .partition(|(_, s)| *s == InvocationState::Queued);
                    for (n, _) in queued {
                        applied =
                            state.change(&ctx, &mut tx, key, n, InvocationState::Cancelled, |r| {
                                r.reason = "cancelled before it was offered".to_owned();
                                r.finished_at = Some(now);
                            });
                        if applied.is_err() {
                            break;
                        }
                    }
                    for (n, _) in started {
                        tx.effects.push(Effect::Cancel { key, n });
                    }
                }
                Steer::Pause | Steer::Resume => {
                    let paused = steer == Steer::Pause;
                    if active.record.paused != paused {
                        active.record.paused = paused;
                        tx.touch_command(key);
                        if !paused {
                            applied = state.dispatch(&ctx, &mut tx, key);
                        }
                    }
                }
            }
            let done = self.commit(&mut state, tx, slot);
            let command = state.commands.get(&key).map(|a| a.record.clone());
            applied?;
            (done, command)
        };
        tx::wait(done).await?;
        command.ok_or_else(|| ServerError::Internal("command left the engine".into()))
    }

    /// Steering a command that is not in memory: finished (cancel changes nothing; pause and
    /// resume are refused) or absent.
    async fn steer_stored(
        &self,
        caller: &Caller,
        id: &CommandId,
        steer: Steer,
        audit: AuditEntry,
        slot: crate::writer::Reservation<'_>,
    ) -> Result<CommandRecord, ServerError> {
        let store = self.store.clone();
        let (org, key) = (caller.org.clone(), id.clone());
        let stored = tokio::task::spawn_blocking(move || store.command(&org, &key))
            .await
            .map_err(|e| ServerError::Internal(e.to_string()))??;
        let Some(command) = stored else {
            return Err(ServerError::NotFound(format!("command {id}")));
        };
        if steer != Steer::Cancel {
            return Err(finished_error(id));
        }
        slot.submit(Vec::new(), Some(audit))?.wait().await?;
        Ok(command)
    }
}

fn finished_error(id: &CommandId) -> ServerError {
    ServerError::FailedPrecondition(format!("command {id} has finished"))
}
