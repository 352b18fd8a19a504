//! Live-state writes waiting for the writer: status changes and records of agents, last uses
//! of tokens, coalesced per agent and per token.
//!
//! The registry queues these from synchronous code under its lock, and the gate's
//! authentication path queues last-use records; neither may wait for the writer. So instead of
//! a queue they go into this table, whose size is bounded by what exists, not by how fast it
//! changes: per agent at most [`MAX_PENDING_TRANSITIONS`] status changes and the newest record,
//! per token its newest use. A change to an agent already waiting joins it (the newest agent
//! or token record replaces the older; past the bound, the newest status change replaces the
//! last one waiting, and the history keeps the first ones and the latest). The writer takes the
//! whole table at the start of each batch, and gives it back in front of newer changes if the
//! commit fails, so nothing is lost and order per agent is kept.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::SystemTime;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::Notify;

use crate::domain::{AgentId, AgentRecord, OrgId, TokenId, Transition};

/// Most status changes of one agent waiting for the writer. An agent changes status a few
/// times per connection; more than this waiting means the writer is far behind, and the
/// in-between changes are left out of the history (counted in
/// `tether_writer_transitions_coalesced`).
pub const MAX_PENDING_TRANSITIONS: usize = 16;

/// The table, shared by every [`super::WriterHandle`] and the writer task.
#[derive(Debug)]
pub(super) struct LiveChanges {
    pending: Mutex<Pending>,
    /// Wakes the writer when the table turns non-empty.
    pub(super) wake: Notify,
    /// Agents and tokens with changes waiting (`tether_writer_queue_depth{queue="live"}`).
    depth: Gauge,
    /// Status changes left out of the history (`tether_writer_transitions_coalesced`).
    coalesced: Counter,
}

/// What the writer takes for one batch.
#[derive(Debug, Default)]
pub(super) struct Pending {
    pub(super) agents: HashMap<AgentId, AgentChanges>,
    /// Each token's newest use, with its org. Only the time is written (`Write::PutTokenUse`),
    /// never the token's record, which a revocation may have changed since it was read.
    pub(super) tokens: HashMap<TokenId, (OrgId, SystemTime)>,
}

/// One agent's changes, in the order they were made.
#[derive(Debug)]
pub(super) struct AgentChanges {
    pub(super) org: OrgId,
    /// Status changes with the agent's last activity at the time.
    pub(super) transitions: Vec<(Transition, Option<SystemTime>)>,
    pub(super) record: Option<AgentRecord>,
}

impl LiveChanges {
    pub(super) fn new(depth: Gauge, coalesced: Counter) -> Self {
        Self {
            pending: Mutex::default(),
            wake: Notify::new(),
            depth,
            coalesced,
        }
    }

    pub(super) fn transition(&self, transition: Transition, last_seen: Option<SystemTime>) {
        let agent = transition.agent.clone();
        let org = transition.org.clone();
        self.change(|pending| {
            let changes = pending.agent(org, agent);
            push_bounded(
                &mut changes.transitions,
                (transition, last_seen),
                &self.coalesced,
            );
        });
    }

    pub(super) fn agent(&self, record: AgentRecord) {
        self.change(|pending| {
            let (org, id) = (record.org.clone(), record.id.clone());
            pending.agent(org, id).record = Some(record);
        });
    }

    pub(super) fn token_use(&self, org: OrgId, id: TokenId, at: SystemTime) {
        self.change(|pending| {
            let newest = pending.tokens.entry(id).or_insert((org, at));
            newest.1 = newest.1.max(at);
        });
    }

    /// Takes everything waiting.
    pub(super) fn take(&self) -> Pending {
        let taken = std::mem::take(&mut *self.lock());
        self.depth.set(0);
        taken
    }

    /// Puts back `older` (taken for a commit that failed) in front of what arrived since.
    pub(super) fn restore(&self, older: Pending) {
        if older.is_empty() {
            return;
        }
        self.change(|pending| {
            for (id, mut old) in older.agents {
                match pending.agents.remove(&id) {
                    None => {
                        pending.agents.insert(id, old);
                    }
                    Some(newer) => {
                        for transition in newer.transitions {
                            push_bounded(&mut old.transitions, transition, &self.coalesced);
                        }
                        old.record = newer.record.or(old.record);
                        pending.agents.insert(id, old);
                    }
                }
            }
            for (id, token) in older.tokens {
                pending.tokens.entry(id).or_insert(token);
            }
        });
    }

    pub(super) fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    fn change(&self, f: impl FnOnce(&mut Pending)) {
        let mut pending = self.lock();
        let was_empty = pending.is_empty();
        f(&mut pending);
        let depth = pending.agents.len() + pending.tokens.len();
        drop(pending);
        self.depth.set(i64::try_from(depth).unwrap_or(i64::MAX));
        if was_empty {
            self.wake.notify_one();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        // Each change is applied whole under the lock; a panic elsewhere leaves it consistent.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Appends `change`, or past [`MAX_PENDING_TRANSITIONS`] replaces the last one (counted).
fn push_bounded<T>(changes: &mut Vec<T>, change: T, coalesced: &Counter) {
    if changes.len() < MAX_PENDING_TRANSITIONS {
        changes.push(change);
    } else if let Some(last) = changes.last_mut() {
        *last = change;
        coalesced.inc();
    }
}

impl Pending {
    pub(super) fn is_empty(&self) -> bool {
        self.agents.is_empty() && self.tokens.is_empty()
    }

    fn agent(&mut self, org: OrgId, agent: AgentId) -> &mut AgentChanges {
        self.agents.entry(agent).or_insert_with(|| AgentChanges {
            org,
            transitions: Vec::new(),
            record: None,
        })
    }
}
