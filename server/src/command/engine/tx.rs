//! One operation's commit ([`Tx`]): its writes, the records of what it touched, and the
//! effects that wait until it is durable; and what the engine task does once a commit is
//! durable ([`Engine::complete`]) or failed.
//!
//! The history events of a commit (and its other one-off writes: deletions, an idempotency
//! key) are kept until it is durable, so a failed commit is queued again with exactly the same
//! events (a command's creation excepted: it is withdrawn when it fails, so nothing of it is
//! kept); the records are encoded again from memory, so a retried commit never writes a state
//! older than one a later commit already stored.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use tokio::sync::oneshot;

use super::Engine;
use super::state::{State, leave_in_flight};
use crate::command::record::invocation_id;
use crate::command::rollout;
use crate::domain::{AgentId, AuditEntry, OrgId, Time};
use crate::error::ServerError;
use crate::store::{Encoded, Write};
use crate::writer::{Pending, Reservation};

/// What a commit's caller learns: `Ok` once durable.
pub(super) type Done = oneshot::Receiver<Result<(), ServerError>>;

/// The writes and effects of one operation, gathered under the engine's lock.
pub(super) struct Tx {
    /// The server's clock for every step of the operation.
    pub(super) now: Time,
    writes: Vec<Encoded>,
    /// The one-off writes (events, event deletions, idempotency keys), kept for a retry.
    retry: Vec<Write>,
    /// Invocations whose records this commit carries.
    touched: BTreeSet<(u64, u32)>,
    /// Commands whose records this commit carries.
    commands: BTreeSet<u64>,
    /// The cursors this commit assigns, per command: (first, last).
    cursors: BTreeMap<u64, (u64, u64)>,
    pub(super) effects: Vec<Effect>,
    pub(super) audit: Option<AuditEntry>,
    /// The command this commit creates.
    pub(super) creates: Option<u64>,
}

/// What to do once a commit is durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Effect {
    /// Tell the invocation's agent that its updates up to `seq` are stored.
    Ack { key: u64, n: u32, seq: u64 },
    /// Send the invocation to its agent (it was stored OFFERED).
    Offer { key: u64, n: u32 },
    /// Ask the invocation's agent to stop it.
    Cancel { key: u64, n: u32 },
}

/// A queued commit the engine task waits for.
pub(super) struct PendingTx {
    pub(super) pending: Pending,
    retry: Vec<Write>,
    touched: BTreeSet<(u64, u32)>,
    commands: BTreeSet<u64>,
    cursors: BTreeMap<u64, (u64, u64)>,
    effects: Vec<Effect>,
    audit: Option<AuditEntry>,
    creates: Option<u64>,
    done: Option<oneshot::Sender<Result<(), ServerError>>>,
}

// === impl Tx ===

impl Tx {
    pub(super) fn new(now: Time) -> Self {
        Self {
            now,
            writes: Vec::new(),
            retry: Vec::new(),
            touched: BTreeSet::new(),
            commands: BTreeSet::new(),
            cursors: BTreeMap::new(),
            effects: Vec::new(),
            audit: None,
            creates: None,
        }
    }

    /// Adds event `cursor` of command `key`, encoded.
    pub(super) fn event(&mut self, key: u64, cursor: u64, encoded: Encoded, write: Write) {
        self.cursors
            .entry(key)
            .and_modify(|(_, last)| *last = cursor)
            .or_insert((cursor, cursor));
        self.one_off(key, encoded, write);
    }

    /// Adds a one-off write of command `key` (not a record), encoded. The write itself is kept
    /// for a retry, except in the commit that creates `key`: a creation that fails is
    /// withdrawn, never retried, so its writes (an event per invocation, each with its whole
    /// record) are not held until it is durable.
    pub(super) fn one_off(&mut self, key: u64, encoded: Encoded, write: Write) {
        self.writes.push(encoded);
        if self.creates != Some(key) {
            self.retry.push(write);
        }
        self.commands.insert(key);
    }

    /// Carries the record of invocation `n` of command `key` (and the command's).
    pub(super) fn touch(&mut self, key: u64, n: u32) {
        self.touched.insert((key, n));
        self.commands.insert(key);
    }

    /// Carries the record of command `key`.
    pub(super) fn touch_command(&mut self, key: u64) {
        self.commands.insert(key);
    }

    /// The commands this commit touches.
    pub(super) fn commands(&self) -> impl Iterator<Item = u64> + '_ {
        self.commands.iter().copied()
    }
}

// === impl Engine ===

impl Engine {
    /// Queues `tx` in `slot` with the current records of what it touched (each command's
    /// derived state, counts and last cursor brought up to date first); returns what its
    /// caller may wait on. A commit with nothing to write is done at once.
    pub(super) fn commit(&self, state: &mut State, tx: Tx, slot: Reservation<'_>) -> Done {
        let (done, wait) = oneshot::channel();
        let Tx {
            now,
            mut writes,
            retry,
            touched,
            commands,
            cursors,
            effects,
            audit,
            creates,
        } = tx;
        if writes.is_empty() && audit.is_none() && commands.is_empty() {
            let _ = done.send(Ok(()));
            return wait;
        }
        for &key in &commands {
            self.conclude(state, key, now);
        }
        writes.extend(self.records(state, &touched, &commands));
        let pending = slot.submit_encoded(writes, audit.clone());
        for &key in &commands {
            if let Some(active) = state.commands.get_mut(&key) {
                active.commits += 1;
            }
        }
        for (key, (first, last)) in &cursors {
            if let Some(active) = state.commands.get_mut(key) {
                active.unsettled.insert(*first, *last);
            }
        }
        state.pending.push_back(PendingTx {
            pending,
            retry,
            touched,
            commands,
            cursors,
            effects,
            audit,
            creates,
            done: Some(done),
        });
        self.wake.notify_one();
        wait
    }

    /// Brings command `key`'s derived state up to date: its state from its invocations, its
    /// end once every invocation is terminal, its last cursor.
    fn conclude(&self, state: &mut State, key: u64, now: Time) {
        let Some(active) = state.commands.get_mut(&key) else {
            return;
        };
        let record = &mut active.record;
        record.state = rollout::command_state(
            &active.progress,
            record.paused,
            record.cancel_requested,
            record.offered_any,
        );
        record.last_cursor = active.next_cursor - 1;
        if record.state.is_terminal() && record.finished_at.is_none() {
            record.finished_at = Some(now);
            let org = record.org.clone();
            leave_in_flight(&mut state.in_flight, &org);
        }
    }

    /// The current records of `touched` invocations and of `commands`, encoded. A record that
    /// cannot be encoded is left out (logged and counted): the events are what matter, and the
    /// next change writes the record again.
    fn records(
        &self,
        state: &State,
        touched: &BTreeSet<(u64, u32)>,
        commands: &BTreeSet<u64>,
    ) -> Vec<Encoded> {
        let mut out = Vec::with_capacity(touched.len() + commands.len());
        let mut encode = |write: Write| match self.writer.encode(&write) {
            Ok(encoded) => out.push(encoded),
            Err(e) => {
                tracing::error!("command record left out of its commit: {e}");
                self.metrics.writer_unencodable_writes.inc();
            }
        };
        for (key, n) in touched {
            let Some(active) = state.commands.get(key) else {
                continue;
            };
            if let Some(inv) = active.invs.get(*n as usize) {
                encode(Write::PutInvocation {
                    org: active.record.org.clone(),
                    command: active.record.id.clone(),
                    record: Box::new(inv.record.clone()),
                });
            }
        }
        for key in commands {
            if let Some(active) = state.commands.get(key) {
                encode(Write::PutCommand(Box::new(active.record.clone())));
            }
        }
        out
    }

    /// What the engine task does with a commit once the writer answered.
    pub(super) async fn complete(&self, mut tx: PendingTx, result: Result<(), ServerError>) {
        let err = match result {
            Ok(()) => return self.settle(tx),
            Err(err) => err,
        };
        if let Some(key) = tx.creates {
            tracing::error!("a command could not be stored; it is withdrawn: {err}");
            let mut state = self.lock();
            if let Some(active) = state.commands.get(&key) {
                let index = (
                    active.record.org.clone(),
                    active.record.idempotency_key.clone(),
                );
                state.keys.remove(&index);
            }
            state.remove(key);
            drop(state);
            if let Some(done) = tx.done.take() {
                let _ = done.send(Err(err));
            }
            return;
        }
        tracing::warn!("a command commit failed; queuing it again: {err}");
        self.metrics.command_commit_retries.inc();
        if let Some(done) = tx.done.take() {
            // The caller learns of the failure; the change is stored later all the same.
            let _ = done.send(Err(err));
        }
        let Ok(slot) = self.writer.reserve().await else {
            tracing::error!("the writer stopped: a command commit is lost");
            return;
        };
        let mut state = self.lock();
        let mut writes = Vec::with_capacity(tx.retry.len());
        for write in &tx.retry {
            match self.writer.encode(write) {
                Ok(encoded) => writes.push(encoded),
                Err(e) => tracing::error!("command write left out of its retry: {e}"),
            }
        }
        writes.extend(self.records(&state, &tx.touched, &tx.commands));
        tx.pending = slot.submit_encoded(writes, tx.audit.clone());
        state.pending.push_back(tx);
        drop(state);
        self.wake.notify_one();
    }

    /// Applies the effects of a durable commit: watchers learn the stored cursor, offers,
    /// cancels and acks go to the agents' live sessions, the caller learns it is done, and a
    /// finished command with nothing more on its way leaves memory.
    fn settle(&self, mut tx: PendingTx) {
        let mut state = self.lock();
        for key in &tx.commands {
            if let Some(active) = state.commands.get_mut(key) {
                active.commits = active.commits.saturating_sub(1);
                if tx.creates == Some(*key) {
                    active.created = true;
                }
            }
        }
        for (key, (first, _)) in &tx.cursors {
            if let Some(active) = state.commands.get_mut(key) {
                active.unsettled.remove(first);
            }
        }
        for key in &tx.commands {
            if let Some(active) = state.commands.get(key) {
                let stored = active
                    .unsettled
                    .keys()
                    .next()
                    .map_or(active.next_cursor - 1, |first| first - 1);
                active.watch.send_replace(stored);
            }
        }
        let mut acks: HashMap<(OrgId, AgentId), Vec<(String, u64)>> = HashMap::new();
        for effect in &tx.effects {
            let (Effect::Ack { key, n, .. } | Effect::Offer { key, n } | Effect::Cancel { key, n }) =
                *effect;
            let Some(active) = state.commands.get_mut(&key) else {
                continue;
            };
            let Some(inv) = active.invs.get_mut(n as usize) else {
                continue;
            };
            let (org, agent) = (&active.record.org, &inv.record.agent);
            match *effect {
                Effect::Ack { seq, .. } => {
                    inv.durable_seq = inv.durable_seq.max(seq);
                    acks.entry((org.clone(), agent.clone()))
                        .or_default()
                        .push((invocation_id(&active.record.id, n), seq));
                }
                Effect::Offer { .. } => {
                    inv.offering = false;
                    let wanted = inv.record.state
                        == crate::command::model::InvocationState::Offered
                        && !active.record.cancel_requested;
                    if wanted && let Some(session) = self.registry.session(org, agent) {
                        session.push_offer(active.record.offer(n));
                    }
                }
                Effect::Cancel { .. } => {
                    if let Some(session) = self.registry.session(org, agent) {
                        session.push_cancel(invocation_id(&active.record.id, n));
                    }
                }
            }
        }
        for ((org, agent), list) in acks {
            if let Some(session) = self.registry.session(&org, &agent) {
                session.push_acks(list);
            }
        }
        let finished: Vec<u64> = tx
            .commands
            .iter()
            .copied()
            .filter(|key| {
                state
                    .commands
                    .get(key)
                    .is_some_and(|a| a.record.is_finished() && a.commits == 0)
            })
            .collect();
        for key in finished {
            state.remove(key);
        }
        drop(state);
        if let Some(done) = tx.done.take() {
            let _ = done.send(Ok(()));
        }
    }
}

/// Waits for a commit's outcome.
///
/// # Errors
///
/// The commit's (INTERNAL when it failed), `Unavailable` if the engine stopped first.
pub(super) async fn wait(done: Done) -> Result<(), ServerError> {
    done.await.unwrap_or(Err(ServerError::Unavailable))
}
