//! The engine's memory: unfinished commands, their invocations, each agent's unfinished
//! invocations; and the two steps every operation is made of: [`State::change`] (one
//! invocation reaches a state, with its event) and [`State::dispatch`] (the rollout rule
//! applied to one command).
//!
//! Invariant: an invocation's tallies (`counts`, `progress`, `queued`, the agent index) change
//! only in [`State::change`], together with its state, so they always agree with it.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use tokio::sync::watch;

use super::tx::{Effect, PendingTx, Tx};
use crate::command::model::{InvocationState, SkipReason};
use crate::command::output::Kept;
use crate::command::record::{CommandEvent, CommandRecord, InvocationRecord};
use crate::command::rollout::{self, Limits, Next, Progress};
use crate::domain::{AgentId, CommandId, OrgId, Time};
use crate::error::ServerError;
use crate::metrics::{CommandLabels, Metrics};
use crate::registry::Registry;
use crate::store::Write;
use crate::writer::WriterHandle;

/// Everything the engine holds, under its one lock.
#[derive(Default)]
pub(super) struct State {
    /// Unfinished commands (and finished ones whose last commit is not yet durable), by key.
    pub(super) commands: HashMap<u64, Active>,
    pub(super) ids: HashMap<CommandId, u64>,
    next_key: u64,
    /// Each agent's unfinished invocations: (command key, number).
    pub(super) agents: HashMap<AgentId, Vec<(u64, u32)>>,
    /// Unfinished commands per org.
    pub(super) in_flight: HashMap<OrgId, usize>,
    /// Idempotency keys of the commands this process created, with their creation time: a send
    /// racing another with the same key finds it here before its commit is stored.
    pub(super) keys: HashMap<(OrgId, String), (CommandId, Time)>,
    /// When `keys` was last swept of keys older than their window.
    pub(super) swept_keys: Option<std::time::Instant>,
    /// Commits queued and not yet seen durable, in the order they were queued.
    pub(super) pending: VecDeque<PendingTx>,
}

/// One unfinished command.
pub(super) struct Active {
    pub(super) record: CommandRecord,
    pub(super) limits: Limits,
    pub(super) progress: Progress,
    pub(super) invs: Vec<Inv>,
    /// Numbers of the QUEUED invocations, in order (canaries have the lowest runnable ones).
    pub(super) queued: BTreeSet<u32>,
    /// Cursor of the next event.
    pub(super) next_cursor: u64,
    /// Cursor ranges (first → last) of commits queued and not yet durable.
    pub(super) unsettled: BTreeMap<u64, u64>,
    /// Whether the commit that created the command is durable. Until then nothing but that
    /// commit touches it, and nobody outside the engine sees it.
    pub(super) created: bool,
    /// Commits touching the command not yet durable; it leaves memory when finished and 0.
    pub(super) commits: u32,
    /// The cursor up to which every event is stored, for watchers.
    pub(super) watch: watch::Sender<u64>,
    /// The earliest deadline of its unfinished invocations; `None`: not known (look again).
    pub(super) next_deadline: Option<Time>,
}

/// One invocation of an unfinished command.
pub(super) struct Inv {
    pub(super) record: InvocationRecord,
    /// Highest agent update seq applied (stored, or in a commit on its way).
    pub(super) accepted_seq: u64,
    /// Highest agent update seq known stored: what acks and `Welcome` say.
    pub(super) durable_seq: u64,
    /// Cursor of its terminal event (0 while unfinished).
    pub(super) terminal_cursor: u64,
    /// OFFERED in a commit not yet durable: its offer leaves with that commit's effects.
    pub(super) offering: bool,
    /// Output kept, once it has some.
    pub(super) kept: Option<Box<Kept>>,
}

/// The parts of the engine a step needs besides its state.
pub(super) struct Ctx<'a> {
    pub(super) writer: &'a WriterHandle,
    pub(super) registry: &'a Registry,
    pub(super) metrics: &'a Metrics,
}

// === impl State ===

impl State {
    /// Adds a command (its creation commit is being queued) with its invocations; `next_cursor`
    /// is the cursor after its history so far.
    pub(super) fn install(
        &mut self,
        record: CommandRecord,
        limits: Limits,
        invs: Vec<Inv>,
        next_cursor: u64,
        created: bool,
    ) -> u64 {
        self.next_key += 1;
        let key = self.next_key;
        let mut progress = Progress::default();
        let mut queued = BTreeSet::new();
        for inv in &invs {
            let record = &inv.record;
            tally(&mut progress, record.canary).add(record.state.standing());
            if record.state == InvocationState::Queued {
                queued.insert(record.n);
            }
            if !record.state.is_terminal() {
                self.agents
                    .entry(record.agent.clone())
                    .or_default()
                    .push((key, record.n));
            }
        }
        if !record.is_finished() {
            *self.in_flight.entry(record.org.clone()).or_default() += 1;
        }
        self.ids.insert(record.id.clone(), key);
        let (watch, _) = watch::channel(next_cursor - 1);
        self.commands.insert(
            key,
            Active {
                record,
                limits,
                progress,
                invs,
                queued,
                next_cursor,
                unsettled: BTreeMap::new(),
                created,
                commits: 0,
                watch,
                next_deadline: None,
            },
        );
        key
    }

    /// Forgets a command: finished and stored, or withdrawn because its creation failed.
    pub(super) fn remove(&mut self, key: u64) {
        let Some(active) = self.commands.remove(&key) else {
            return;
        };
        self.ids.remove(&active.record.id);
        for inv in &active.invs {
            if !inv.record.state.is_terminal() {
                unindex(&mut self.agents, &inv.record.agent, key, inv.record.n);
            }
        }
        if !active.record.is_finished() {
            leave_in_flight(&mut self.in_flight, &active.record.org);
        }
    }

    /// The created command `id` of `org`.
    pub(super) fn find(&self, org: &OrgId, id: &CommandId) -> Option<&Active> {
        let active = self.commands.get(self.ids.get(id)?)?;
        (active.record.org == *org && active.created).then_some(active)
    }

    /// The key of the created command `id` of `org`.
    pub(super) fn key_of(&self, org: &OrgId, id: &CommandId) -> Option<u64> {
        let key = *self.ids.get(id)?;
        let active = self.commands.get(&key)?;
        (active.record.org == *org && active.created).then_some(key)
    }

    /// Moves invocation `n` of command `key` to `to`, `edit` filling in its details, and
    /// records the event, in `tx`. The event is encoded first: if it cannot be stored, nothing
    /// changes.
    ///
    /// # Errors
    ///
    /// `Store` (INTERNAL) if the event cannot be encoded.
    pub(super) fn change(
        &mut self,
        ctx: &Ctx<'_>,
        tx: &mut Tx,
        key: u64,
        n: u32,
        to: InvocationState,
        edit: impl FnOnce(&mut InvocationRecord),
    ) -> Result<(), ServerError> {
        let Some(active) = self.commands.get_mut(&key) else {
            return Ok(());
        };
        let Some(inv) = active.invs.get_mut(n as usize) else {
            return Ok(());
        };
        let from = inv.record.state;
        let mut record = inv.record.clone();
        record.state = to;
        edit(&mut record);
        let cursor = active.next_cursor;
        let event = Write::PutCommandEvent {
            org: active.record.org.clone(),
            command: active.record.id.clone(),
            cursor,
            event: Box::new(CommandEvent::Invocation(record.clone())),
        };
        let encoded = ctx.writer.encode(&event)?;
        tx.event(key, cursor, encoded, event);
        tx.touch(key, n);
        active.next_cursor += 1;
        active.next_deadline = None;
        if to == InvocationState::Offered {
            active.record.offered_any = true;
        }
        let canary = record.canary;
        let agent = record.agent.clone();
        inv.record = record;
        active.record.counts.count(from, false);
        active.record.counts.count(to, true);
        tally(&mut active.progress, canary).remove(from.standing());
        tally(&mut active.progress, canary).add(to.standing());
        if from == InvocationState::Queued {
            active.queued.remove(&n);
        }
        if to == InvocationState::Queued {
            active.queued.insert(n);
        }
        if to.is_terminal() && !from.is_terminal() {
            inv.terminal_cursor = cursor;
            unindex(&mut self.agents, &agent, key, n);
            ctx.metrics
                .invocations_finished
                .get_or_create(&CommandLabels { kind: to.as_str() })
                .inc();
        }
        Ok(())
    }

    /// Applies the rollout rule to command `key` until it has nothing more to do: skips the
    /// queued invocations when the rule says so, offers what it allows to agents that have a
    /// live session. Offers leave once `tx` is durable.
    ///
    /// # Errors
    ///
    /// As [`State::change`]; what was done before the error stays done.
    pub(super) fn dispatch(
        &mut self,
        ctx: &Ctx<'_>,
        tx: &mut Tx,
        key: u64,
    ) -> Result<(), ServerError> {
        loop {
            let Some(active) = self.commands.get(&key) else {
                return Ok(());
            };
            if !active.created && tx.creates != Some(key) {
                return Ok(());
            }
            let record = &active.record;
            let hold = record.paused || record.cancel_requested;
            match rollout::next(&active.limits, &active.progress, hold) {
                Next::Wait => return Ok(()),
                Next::SkipQueued(reason) => {
                    let queued: Vec<u32> = active.queued.iter().copied().collect();
                    let (why, now) = (skip_text(reason), tx.now);
                    for n in queued {
                        self.change(ctx, tx, key, n, InvocationState::Skipped, |r| {
                            r.skip_reason = Some(reason);
                            r.reason = why.to_owned();
                            r.finished_at = Some(now);
                        })?;
                    }
                }
                Next::Offer { n, canaries_only } => {
                    let org = record.org.clone();
                    let chosen: Vec<u32> = active
                        .queued
                        .iter()
                        .map(|&i| &active.invs[i as usize].record)
                        .filter(|r| !canaries_only || r.canary)
                        .filter(|r| ctx.registry.session(&org, &r.agent).is_some())
                        .take(n as usize)
                        .map(|r| r.n)
                        .collect();
                    let now = tx.now;
                    for i in chosen {
                        self.change(ctx, tx, key, i, InvocationState::Offered, |r| {
                            r.offered_at = Some(now);
                        })?;
                        if let Some(inv) = self
                            .commands
                            .get_mut(&key)
                            .and_then(|a| a.invs.get_mut(i as usize))
                        {
                            inv.offering = true;
                        }
                        tx.effects.push(Effect::Offer { key, n: i });
                    }
                    // Fewer may have been offered than allowed (agents offline): the rule is
                    // asked again after the next change.
                    return Ok(());
                }
            }
        }
    }
}

// === impl Inv ===

impl Inv {
    /// An invocation as stored; its seqs are what the store holds.
    pub(super) fn new(record: InvocationRecord) -> Self {
        Self {
            accepted_seq: record.last_seq,
            durable_seq: record.last_seq,
            terminal_cursor: 0,
            offering: false,
            kept: None,
            record,
        }
    }
}

/// The tally of canaries or of the rest.
fn tally(progress: &mut Progress, canary: bool) -> &mut rollout::Tally {
    if canary {
        &mut progress.canary
    } else {
        &mut progress.rest
    }
}

fn unindex(agents: &mut HashMap<AgentId, Vec<(u64, u32)>>, agent: &AgentId, key: u64, n: u32) {
    if let Some(open) = agents.get_mut(agent) {
        open.retain(|&entry| entry != (key, n));
        if open.is_empty() {
            agents.remove(agent);
        }
    }
}

pub(super) fn leave_in_flight(in_flight: &mut HashMap<OrgId, usize>, org: &OrgId) {
    if let Some(n) = in_flight.get_mut(org) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            in_flight.remove(org);
        }
    }
}

/// The reason recorded with a skip.
pub(super) fn skip_text(reason: SkipReason) -> &'static str {
    match reason {
        SkipReason::Offline => "the agent was not online when the command was sent",
        SkipReason::ErrorBudget => "more invocations failed than max_errors allows",
        SkipReason::CanaryFailed => "a canary invocation did not succeed",
    }
}
