//! `SendCommand`: the idempotency key, the targets resolved once, the command and its
//! invocations built, and the one commit that creates them with their first offers.
//!
//! Everything that needs no lock happens first: the stored idempotency key is looked up, the
//! targets are resolved through the registry (the caller's org only), and every record and
//! first event is built and encoded. Under the lock come only what must be decided together
//! with other commands: a racing send with the same key, the per-org and per-agent limits, and
//! the rollout's first offers. The command exists for anyone else only once that commit is
//! durable.

use std::sync::Arc;
use std::time::SystemTime;

use tether_proto::command::IDEMPOTENCY_WINDOW;
use tether_proto::selector::Selector;

use super::Engine;
use super::state::Inv;
use super::tx::{self, Tx};
use crate::auth::{Caller, Principal};
use crate::command::model::{CommandState, InvocationState, SkipReason};
use crate::command::record::{
    CommandEvent, CommandRecord, Counts, InvocationRecord, NewCommand, new_command_id,
};
use crate::command::rollout::Limits;
use crate::domain::{AuditEntry, OrgId, Time};
use crate::error::ServerError;
use crate::store::{Encoded, Write};

/// What `SendCommand` answers.
#[derive(Clone, Debug, PartialEq)]
pub struct Sent {
    pub command: CommandRecord,
    /// The idempotency key named an earlier command, returned unchanged.
    pub existing: bool,
}

/// A command ready to be created: its records and its first writes, encoded.
struct Plan {
    record: CommandRecord,
    limits: Limits,
    invocations: Vec<InvocationRecord>,
    /// Its idempotency key's entry and its invocations' first events, in order (the records
    /// themselves are written from the engine's memory by the commit).
    writes: Vec<(Encoded, Write, Option<u64>)>,
}

// === impl Engine ===

impl Engine {
    /// Creates command `new` in the caller's org and starts its rollout, or returns the command
    /// its idempotency key already names. `audit` records the creation in the same commit.
    ///
    /// # Errors
    ///
    /// `INVALID_ARGUMENT` (an output limit above the server's maximum, a bad selector or
    /// budget), `NOT_FOUND` (an agent id not in the org), `FAILED_PRECONDITION` (no agent
    /// matches), `RESOURCE_EXHAUSTED` (the org's commands in flight or an agent's unfinished
    /// invocations at their limit), `INTERNAL` (the store).
    pub async fn send(
        &self,
        caller: &Caller,
        new: NewCommand,
        audit: impl FnOnce(&CommandRecord) -> AuditEntry,
    ) -> Result<Sent, ServerError> {
        let org = &caller.org;
        if !new.idempotency_key.is_empty()
            && let Some(command) = self.remembered(org, &new.idempotency_key).await?
        {
            return Ok(Sent {
                command,
                existing: true,
            });
        }
        let now = Time::now();
        let Plan {
            record,
            limits,
            invocations,
            writes,
        } = self.plan(caller, new, now)?;
        let audit = audit(&record);
        let slot = self.writer.reserve().await?;
        let (done, command) = {
            let mut state = self.lock();
            let index = (org.clone(), record.idempotency_key.clone());
            if !record.idempotency_key.is_empty()
                && let Some((id, _)) = state.keys.get(&index)
                && let Some(key) = state.ids.get(id)
                && let Some(active) = state.commands.get(key)
            {
                // A send with the same key won the race a moment ago.
                return Ok(Sent {
                    command: active.record.clone(),
                    existing: true,
                });
            }
            let in_flight = state.in_flight.get(org).copied().unwrap_or(0);
            if in_flight >= self.settings.max_in_flight_per_org {
                self.metrics.limit("commands_in_flight");
                return Err(ServerError::ResourceExhausted(format!(
                    "org {org} has {in_flight} unfinished commands, its limit; wait for some to \
                     end or cancel them"
                )));
            }
            for inv in invocations
                .iter()
                .filter(|i| i.state == InvocationState::Queued)
            {
                let open = super::open_per_agent(&state.agents, &inv.agent);
                if open >= self.settings.max_queued_per_agent {
                    self.metrics.limit("invocations_per_agent");
                    return Err(ServerError::ResourceExhausted(format!(
                        "agent {} has {open} unfinished invocations, its limit",
                        inv.agent
                    )));
                }
            }
            let n_invocations = record.n_invocations;
            let invs = invocations.into_iter().map(Inv::new).collect();
            if !record.idempotency_key.is_empty() {
                state.keys.insert(index, (record.id.clone(), now));
            }
            let key = state.install(record, limits, invs, u64::from(n_invocations) + 1, false);
            let mut tx = Tx::new(now);
            tx.creates = Some(key);
            tx.audit = Some(audit);
            for (encoded, write, cursor) in writes {
                match cursor {
                    Some(cursor) => tx.event(key, cursor, encoded, write),
                    None => tx.one_off(key, encoded, write),
                }
            }
            for n in 0..n_invocations {
                tx.touch(key, n);
            }
            let ctx = self.ctx();
            if let Err(e) = state.dispatch(&ctx, &mut tx, key) {
                // Offers made before the error stay in the commit; the rest wait for the next
                // change of the command.
                tracing::error!("the first dispatch of a command stopped early: {e}");
            }
            let done = self.commit(&mut state, tx, slot);
            let command = state.commands.get(&key).map(|a| a.record.clone());
            (done, command)
        };
        tx::wait(done).await?;
        self.metrics.commands_sent.inc();
        let command = command.ok_or_else(|| {
            ServerError::Internal("a new command left the engine before it was stored".into())
        })?;
        tracing::info!(
            command = %command.id,
            org = %command.org,
            invocations = command.n_invocations,
            by = %caller.token,
            "command sent"
        );
        Ok(Sent {
            command,
            existing: false,
        })
    }

    /// The command `key` named within the idempotency window, if any: from memory for a
    /// command sent since start, else from the store.
    async fn remembered(
        &self,
        org: &OrgId,
        key: &str,
    ) -> Result<Option<CommandRecord>, ServerError> {
        let since = SystemTime::now()
            .checked_sub(IDEMPOTENCY_WINDOW)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        {
            let state = self.lock();
            if let Some((id, at)) = state.keys.get(&(org.clone(), key.to_owned()))
                && at.get() >= since
                && let Some(active) = state.ids.get(id).and_then(|k| state.commands.get(k))
            {
                return Ok(Some(active.record.clone()));
            }
        }
        let store = self.store.clone();
        let (org, key) = (org.clone(), key.to_owned());
        tokio::task::spawn_blocking(move || match store.idempotent_command(&org, &key, since)? {
            Some(id) => store.command(&org, &id),
            None => Ok(None),
        })
        .await
        .map_err(|e| ServerError::Internal(e.to_string()))?
        .map_err(ServerError::from)
    }

    /// Resolves the targets and builds the command, its invocations and their first events,
    /// encoded, without touching the engine's state.
    fn plan(&self, caller: &Caller, new: NewCommand, now: Time) -> Result<Plan, ServerError> {
        let NewCommand {
            spec,
            targets,
            rollout,
            timeout,
            deliver_within,
            idempotency_key,
            description,
            output_limit,
        } = new;
        let settings = &self.settings;
        let output_limit = match output_limit {
            0 => settings.default_output_limit,
            n if n > settings.max_output_limit => {
                return Err(ServerError::invalid(format!(
                    "output_limit_bytes is {n}; this server keeps at most {} per invocation",
                    settings.max_output_limit
                )));
            }
            n => n,
        };
        let selector = if targets.selector.is_empty() {
            None
        } else {
            Some(
                Selector::parse(&targets.selector)
                    .map_err(|e| ServerError::InvalidArgument(e.to_string()))?,
            )
        };
        let resolved = self
            .registry
            .resolve_targets(&caller.org, &targets.agent_ids, selector.as_ref())
            .map_err(|id| ServerError::NotFound(format!("agent {id}")))?;
        if resolved.is_empty() {
            return Err(ServerError::FailedPrecondition(
                "no agent of this org matches the command's targets".to_owned(),
            ));
        }
        let n_invocations =
            u32::try_from(resolved.len()).map_err(|_| ServerError::invalid("too many targets"))?;
        let runnable = resolved
            .iter()
            .filter(|t| t.online || targets.include_offline)
            .count();
        let runnable = u32::try_from(runnable).unwrap_or(u32::MAX);
        let limits = Limits::resolve(&rollout, runnable)
            .map_err(|e| ServerError::InvalidArgument(e.to_string()))?;
        let deliver_by = super::later(
            now,
            deliver_within.unwrap_or(settings.default_deliver_within),
        );
        let id = new_command_id(now.get());
        let mut canaries = limits.canary;
        let invocations: Vec<InvocationRecord> = resolved
            .into_iter()
            .zip(0..)
            .map(|(target, n)| {
                let runnable = target.online || targets.include_offline;
                let canary = runnable && canaries > 0;
                canaries -= u32::from(canary);
                InvocationRecord {
                    n,
                    agent: target.id,
                    agent_name: target.name,
                    canary,
                    state: if runnable {
                        InvocationState::Queued
                    } else {
                        InvocationState::Skipped
                    },
                    skip_reason: (!runnable).then_some(SkipReason::Offline),
                    reason: if runnable {
                        String::new()
                    } else {
                        super::state::skip_text(SkipReason::Offline).to_owned()
                    },
                    exit_code: None,
                    signal: None,
                    queued_at: now,
                    offered_at: None,
                    started_at: None,
                    finished_at: (!runnable).then_some(now),
                    stdout_bytes: 0,
                    stderr_bytes: 0,
                    head_bytes: 0,
                    tail_bytes: 0,
                    last_seq: 0,
                }
            })
            .collect();
        let record = CommandRecord {
            id,
            org: caller.org.clone(),
            spec: Arc::new(spec),
            targets,
            rollout,
            timeout: timeout.unwrap_or(settings.default_timeout),
            deliver_by,
            kill_grace: settings.kill_grace,
            idempotency_key,
            description,
            sender_token: caller.token.clone(),
            sender_name: sender_name(caller),
            created_at: now,
            output_limit,
            n_invocations,
            runnable,
            paused: false,
            cancel_requested: false,
            offered_any: false,
            state: CommandState::Pending,
            counts: Counts::of(invocations.iter().map(|i| i.state)),
            finished_at: None,
            last_cursor: u64::from(n_invocations),
        };
        let mut writes = Vec::with_capacity(invocations.len() + 1);
        let mut push = |write: Write, cursor: Option<u64>| -> Result<(), ServerError> {
            writes.push((self.writer.encode(&write)?, write, cursor));
            Ok(())
        };
        if !record.idempotency_key.is_empty() {
            push(
                Write::PutIdempotencyKey {
                    org: record.org.clone(),
                    key: record.idempotency_key.clone(),
                    command: record.id.clone(),
                    created_at: now,
                },
                None,
            )?;
        }
        // The command's record itself is written by the commit, with its state after the
        // first dispatch; it must be storable too.
        self.writer
            .encode(&Write::PutCommand(Box::new(record.clone())))?;
        // Each invocation's record is written by the commit too (`Tx::touch`), once, in its
        // state after the first dispatch: writing the QUEUED record here as well would store
        // every record twice in one commit. The event carries the same record, encoded the
        // same way, so encoding it proves the record storable.
        for invocation in &invocations {
            let cursor = u64::from(invocation.n) + 1;
            push(
                Write::PutCommandEvent {
                    org: record.org.clone(),
                    command: record.id.clone(),
                    cursor,
                    event: Box::new(CommandEvent::Invocation(invocation.clone())),
                },
                Some(cursor),
            )?;
        }
        Ok(Plan {
            record,
            limits,
            invocations,
            writes,
        })
    }
}

/// The name a command shows for who sent it: the token's name.
fn sender_name(caller: &Caller) -> String {
    match &caller.principal {
        Principal::User { name, .. } => name.clone(),
        Principal::Agent { agent } => format!("agent {agent}"),
        Principal::Enrollment => caller.token.to_string(),
    }
}
