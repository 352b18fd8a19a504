//! An agent's `CommandReport`: each update checked against what the server knows, stored, and
//! acked once durable (like `MetricsAck`).
//!
//! An update is stored only if it is the reporting agent's own invocation, unfinished on the
//! server, newer than what is stored (by seq), and a step the invocation can take (RUNNING or
//! a terminal state an agent may report, from OFFERED or RUNNING; output while OFFERED or
//! RUNNING). Anything else is acked at once and not stored, as the contract says, so the agent
//! forgets it and nothing of another agent's invocation changes; each such update is counted
//! (`tether_command_updates_ignored{kind}`). A re-sent update still on its way to the store is
//! acked when its commit is durable.
//!
//! Output is kept by the head-and-tail rule of [`crate::command::output`]: each chunk becomes
//! at most two events (its head part and its tail part), and the tail's oldest events are
//! deleted in the same commit when newer output pushes them out.

use std::sync::Arc;

use super::Engine;
use super::state::{Ctx, State};
use super::tx::{Effect, Tx};
use crate::command::model::InvocationState;
use crate::command::output::Kept;
use crate::command::record::{
    AgentUpdate, CommandEvent, OutputEvent, OutputStream, UpdateStep, parse_invocation_id,
};
use crate::domain::Time;
use crate::error::ServerError;
use crate::metrics::CommandLabels;
use crate::session::Session;
use crate::store::Write;

// === impl Engine ===

impl Engine {
    /// Stores `updates` of `session`'s agent (checked at the edge: in seq order per
    /// invocation, within the bounds); acks them once durable, and at once those it does not
    /// store.
    ///
    /// # Errors
    ///
    /// `Unavailable` when the writer has stopped; `INTERNAL` when an update cannot be encoded
    /// (the updates before it are stored and acked, it and the rest are not acked).
    pub async fn report(
        &self,
        session: &Arc<Session>,
        updates: Vec<AgentUpdate>,
    ) -> Result<(), ServerError> {
        let slot = self.writer.reserve().await?;
        let mut now_acks = Vec::new();
        let result = {
            let mut state = self.lock();
            let ctx = self.ctx();
            let mut tx = Tx::new(Time::now());
            let mut result = Ok(());
            for update in updates {
                match self.apply(&mut state, &ctx, &mut tx, session, &update) {
                    Ok(Some(ack)) => now_acks.push(ack),
                    Ok(None) => {}
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
            }
            let keys: Vec<u64> = tx.commands().collect();
            for key in keys {
                if let Err(e) = state.dispatch(&ctx, &mut tx, key) {
                    tracing::error!("a command's dispatch stopped early: {e}");
                }
            }
            // The commit's outcome reaches the agent as acks; nobody waits on it here.
            drop(self.commit(&mut state, tx, slot));
            result
        };
        session.push_acks(now_acks);
        result
    }

    /// Applies one update; returns the ack to send at once for an update not stored.
    fn apply(
        &self,
        state: &mut State,
        ctx: &Ctx<'_>,
        tx: &mut Tx,
        session: &Session,
        update: &AgentUpdate,
    ) -> Result<Option<(String, u64)>, ServerError> {
        let id = &update.invocation_id;
        let ignore = |kind: &'static str| -> Result<Option<(String, u64)>, ServerError> {
            self.metrics
                .command_updates_ignored
                .get_or_create(&CommandLabels { kind })
                .inc();
            Ok(Some((id.clone(), update.seq)))
        };
        let Some((command, n)) = parse_invocation_id(id) else {
            return ignore("unknown");
        };
        let Some(key) = state.ids.get(&command).copied() else {
            return ignore("unknown");
        };
        let Some(active) = state.commands.get(&key) else {
            return ignore("unknown");
        };
        let Some(inv) = active.invs.get(n as usize) else {
            return ignore("unknown");
        };
        if active.record.org != session.org || inv.record.agent != session.agent || !active.created
        {
            return ignore("foreign");
        }
        if update.seq <= inv.durable_seq {
            self.metrics
                .command_updates_ignored
                .get_or_create(&CommandLabels { kind: "duplicate" })
                .inc();
            return Ok(Some((id.clone(), inv.durable_seq)));
        }
        if update.seq <= inv.accepted_seq {
            // Re-sent while its first copy is on its way to the store: that commit acks it.
            return Ok(None);
        }
        let from = inv.record.state;
        if from.is_terminal() {
            return ignore("settled");
        }
        let to = match update.step {
            UpdateStep::Output => None,
            UpdateStep::Running if from == InvocationState::Running => None,
            UpdateStep::Running => Some(InvocationState::Running),
            UpdateStep::Finished(end) => Some(end),
        };
        let legal = from != InvocationState::Queued
            && to.is_none_or(|to| to == InvocationState::Running || super::agent_may_end_in(to));
        if !legal {
            tracing::debug!(invocation = %id, ?from, ?to, "update of a step the invocation cannot take");
            return ignore("illegal");
        }
        self.store_output(state, ctx, tx, key, n, update)?;
        if let Some(to) = to {
            let now = tx.now;
            state.change(ctx, tx, key, n, to, |r| {
                r.last_seq = update.seq;
                if to == InvocationState::Running {
                    r.started_at = Some(now);
                } else {
                    r.finished_at = Some(now);
                    r.reason.clone_from(&update.reason);
                    r.exit_code = update.exit_code;
                    r.signal = update.signal;
                }
            })?;
        }
        if let Some(inv) = state
            .commands
            .get_mut(&key)
            .and_then(|a| a.invs.get_mut(n as usize))
        {
            inv.accepted_seq = update.seq;
            inv.record.last_seq = update.seq;
        }
        tx.touch(key, n);
        tx.effects.push(Effect::Ack {
            key,
            n,
            seq: update.seq,
        });
        Ok(None)
    }

    /// Keeps what the output rule keeps of `update`'s chunks: every write is encoded before
    /// anything changes, so an update either is kept whole or changes nothing.
    fn store_output(
        &self,
        state: &mut State,
        ctx: &Ctx<'_>,
        tx: &mut Tx,
        key: u64,
        n: u32,
        update: &AgentUpdate,
    ) -> Result<(), ServerError> {
        let Some(active) = state.commands.get_mut(&key) else {
            return Ok(());
        };
        let limit = active.record.output_limit;
        let (org, command) = (active.record.org.clone(), active.record.id.clone());
        let Some(inv) = active.invs.get_mut(n as usize) else {
            return Ok(());
        };
        let mut kept = inv.kept.as_deref().cloned().unwrap_or_default();
        let (mut stdout, mut stderr) = (inv.record.stdout_bytes, inv.record.stderr_bytes);
        let mut cursor = active.next_cursor;
        let mut writes = Vec::new();
        for chunk in &update.output {
            let len = chunk.data.len();
            let end = chunk.offset.saturating_add(len as u64);
            match chunk.stream {
                OutputStream::Stdout => stdout = stdout.max(end),
                OutputStream::Stderr => stderr = stderr.max(end),
            }
            if len == 0 {
                continue;
            }
            let placement = kept.place(limit, len);
            let event = |offset: u64, data: &[u8], tail: bool| Write::PutCommandEvent {
                org: org.clone(),
                command: command.clone(),
                cursor: 0,
                event: Box::new(CommandEvent::Output(OutputEvent {
                    n,
                    stream: chunk.stream,
                    offset,
                    data: data.to_vec(),
                    tail,
                })),
            };
            if placement.head > 0 {
                writes.push((
                    event(chunk.offset, &chunk.data[..placement.head], false),
                    cursor,
                ));
                cursor += 1;
            }
            let tail_cursor = if placement.tail > 0 {
                let skip = len - placement.tail;
                let offset = chunk.offset.saturating_add(skip as u64);
                writes.push((event(offset, &chunk.data[skip..], true), cursor));
                cursor += 1;
                cursor - 1
            } else {
                0
            };
            for gone in kept.apply(placement, tail_cursor) {
                writes.push((
                    Write::DeleteCommandEvent {
                        org: org.clone(),
                        command: command.clone(),
                        cursor: gone.cursor,
                    },
                    0,
                ));
            }
        }
        let mut encoded = Vec::with_capacity(writes.len());
        for (mut write, cursor) in writes {
            if let Write::PutCommandEvent { cursor: slot, .. } = &mut write {
                *slot = cursor;
            }
            encoded.push((ctx.writer.encode(&write)?, write, cursor));
        }
        active.next_cursor = cursor;
        for (encoded, write, cursor) in encoded {
            if cursor == 0 {
                tx.one_off(key, encoded, write);
            } else {
                tx.event(key, cursor, encoded, write);
            }
        }
        inv.record.stdout_bytes = stdout;
        inv.record.stderr_bytes = stderr;
        inv.record.head_bytes = kept.head_bytes;
        inv.record.tail_bytes = kept.tail_bytes;
        if kept != Kept::default() {
            inv.kept = Some(Box::new(kept));
        }
        tx.touch(key, n);
        Ok(())
    }
}
