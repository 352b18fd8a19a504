//! Agents' sessions and the engine: what a connecting agent is told about the invocations it
//! journaled (`Welcome.invocation_acks`), what becomes of its unfinished invocations when its
//! session opens, and what becomes of them when the agent is deleted.
//!
//! When a session opens, for each unfinished invocation of the agent:
//! - OFFERED and not in `Hello.journaled_invocation_ids`: the offer never reached the agent's
//!   journal, so it is offered again (or, if the command was cancelled, ends CANCELLED);
//! - RUNNING and not listed: the agent no longer knows it, so it ends AGENT_RESTARTED;
//! - OFFERED or RUNNING and listed: its updates follow (re-sent after `Welcome`); if the
//!   command was cancelled, the cancel is sent again;
//! - QUEUED: the rollout may offer it now.
//!
//! Listed invocations the server has already settled are cancelled on the agent (which ignores
//! the cancel of one it has finished), so no process outlives the end the server recorded.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use super::Engine;
use super::tx::Tx;
use crate::command::model::InvocationState;
use crate::command::record::{invocation_id, parse_invocation_id};
use crate::domain::{AgentId, CommandId, OrgId, Time};
use crate::error::ServerError;
use crate::session::Session;

/// What the server knows of the invocations an agent listed in its `Hello`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Journaled {
    /// For each listed id, the highest update seq stored (0: none, unknown, or another
    /// agent's).
    pub acks: Vec<(String, u64)>,
    /// Listed ids the server has already settled.
    settled: Vec<String>,
    listed: HashSet<String>,
}

// === impl Engine ===

impl Engine {
    /// What to tell `agent` of org `org` about the invocations it journaled: its `Welcome`'s
    /// acks. Looks up finished commands in the store.
    ///
    /// # Errors
    ///
    /// `INTERNAL` if the store fails.
    pub async fn journaled(
        &self,
        org: &OrgId,
        agent: &AgentId,
        ids: Vec<String>,
    ) -> Result<Journaled, ServerError> {
        let mut out = Journaled::default();
        // Ids of commands no longer in memory: (index in `acks`, command, number).
        let mut stored: Vec<(usize, CommandId, u32)> = Vec::new();
        {
            let state = self.lock();
            for id in ids {
                let parsed = parse_invocation_id(&id);
                let mut ack = 0;
                match &parsed {
                    None => {}
                    Some((command, n)) => match state.find(org, command) {
                        Some(active) => {
                            if let Some(inv) = active.invs.get(*n as usize)
                                && inv.record.agent == *agent
                            {
                                ack = inv.durable_seq;
                                if inv.record.state.is_terminal() {
                                    out.settled.push(id.clone());
                                }
                            }
                        }
                        None if !state.ids.contains_key(command) => {
                            stored.push((out.acks.len(), command.clone(), *n));
                        }
                        None => {}
                    },
                }
                out.listed.insert(id.clone());
                out.acks.push((id, ack));
            }
        }
        if stored.is_empty() {
            return Ok(out);
        }
        let store = self.store.clone();
        let (org, agent) = (org.clone(), agent.clone());
        let found = tokio::task::spawn_blocking(move || {
            let mut found = Vec::new();
            for (index, command, n) in stored {
                let record = store
                    .invocations(&org, &command, n.checked_sub(1), 1)?
                    .into_iter()
                    .find(|r| r.n == n && r.agent == agent);
                if let Some(record) = record {
                    found.push((index, record.last_seq, record.state.is_terminal()));
                }
            }
            Ok::<_, crate::store::StoreError>(found)
        })
        .await
        .map_err(|e| ServerError::Internal(e.to_string()))??;
        for (index, seq, terminal) in found {
            if let Some((id, ack)) = out.acks.get_mut(index) {
                *ack = seq;
                if terminal {
                    out.settled.push(id.clone());
                }
            }
        }
        Ok(out)
    }

    /// `session` opened, its agent having journaled `journaled`: re-offers what never reached
    /// it, ends what it lost, cancels again what was cancelled, and lets the rollout offer its
    /// queued invocations. Failures are logged: the session goes on, and the deadlines settle
    /// what could not be settled now.
    pub async fn session_opened(&self, session: &Arc<Session>, journaled: &Journaled) {
        let Ok(slot) = self.writer.reserve().await else {
            return;
        };
        let mut state = self.lock();
        let ctx = self.ctx();
        let now = Time::now();
        let mut tx = Tx::new(now);
        let mut dispatch = BTreeSet::new();
        let open = state
            .agents
            .get(&session.agent)
            .cloned()
            .unwrap_or_default();
        for (key, n) in open {
            let Some(active) = state.commands.get(&key) else {
                continue;
            };
            if !active.created || active.record.org != session.org {
                continue;
            }
            let Some(inv) = active.invs.get(n as usize) else {
                continue;
            };
            let id = invocation_id(&active.record.id, n);
            let listed = journaled.listed.contains(&id);
            let cancelled = active.record.cancel_requested;
            let step = match (inv.record.state, listed) {
                (InvocationState::Queued, _) => {
                    dispatch.insert(key);
                    None
                }
                (InvocationState::Offered, false) if cancelled => Some((
                    InvocationState::Cancelled,
                    "cancelled before the agent received it",
                )),
                (InvocationState::Offered, false) => {
                    if !inv.offering {
                        session.push_offer(active.record.offer(n));
                    }
                    None
                }
                (InvocationState::Running, false) => Some((
                    InvocationState::AgentRestarted,
                    "the agent no longer knew this invocation when it reconnected (it restarted \
                     without its journal entry)",
                )),
                (InvocationState::Offered | InvocationState::Running, true) => {
                    if cancelled {
                        session.push_cancel(id);
                    }
                    None
                }
                _ => None,
            };
            if let Some((to, why)) = step {
                let result = state.change(&ctx, &mut tx, key, n, to, |r| {
                    r.reason = why.to_owned();
                    r.finished_at = Some(now);
                });
                if let Err(e) = result {
                    tracing::error!(invocation = %invocation_id_of(&state, key, n), "{e}");
                }
            }
        }
        for id in &journaled.settled {
            session.push_cancel(id.clone());
        }
        let keys: BTreeSet<u64> = tx.commands().chain(dispatch).collect();
        for key in keys {
            if let Err(e) = state.dispatch(&ctx, &mut tx, key) {
                tracing::error!("a command's dispatch stopped early: {e}");
            }
        }
        drop(self.commit(&mut state, tx, slot));
    }

    /// Agent `agent` of `org` was deleted: its unfinished invocations end AGENT_DELETED.
    pub async fn agent_deleted(&self, org: &OrgId, agent: &AgentId) {
        let Ok(slot) = self.writer.reserve().await else {
            return;
        };
        let mut state = self.lock();
        let ctx = self.ctx();
        let now = Time::now();
        let mut tx = Tx::new(now);
        let open = state.agents.get(agent).cloned().unwrap_or_default();
        let mut by_command: HashMap<u64, Vec<u32>> = HashMap::new();
        for (key, n) in open {
            if state
                .commands
                .get(&key)
                .is_some_and(|a| a.created && a.record.org == *org)
            {
                by_command.entry(key).or_default().push(n);
            }
        }
        for (key, numbers) in by_command {
            for n in numbers {
                let result =
                    state.change(&ctx, &mut tx, key, n, InvocationState::AgentDeleted, |r| {
                        r.reason = "the agent was deleted".to_owned();
                        r.finished_at = Some(now);
                    });
                if let Err(e) = result {
                    tracing::error!("{e}");
                }
            }
            if let Err(e) = state.dispatch(&ctx, &mut tx, key) {
                tracing::error!("a command's dispatch stopped early: {e}");
            }
        }
        drop(self.commit(&mut state, tx, slot));
    }
}

fn invocation_id_of(state: &super::state::State, key: u64, n: u32) -> String {
    state
        .commands
        .get(&key)
        .map(|a| invocation_id(&a.record.id, n))
        .unwrap_or_default()
}
