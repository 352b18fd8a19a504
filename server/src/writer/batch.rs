//! One batch of the writer: plan, execute, then apply or fail.
//!
//! [`WriterState::plan`] turns a batch into the encoded writes of one commit and what to do
//! after it, without changing anything; [`execute`] is the only step that touches the store;
//! [`WriterState::apply`] runs only after the commit succeeded, and only it changes what the
//! writer remembers (high-water marks, audit heads, progress times) and acks. A failed commit
//! ([`Outcome::fail`]) remembers nothing and acks nothing: it tells waiting handlers, ends the
//! sessions whose samples were in it, and keeps the writes nobody waits for (audit entries,
//! live changes) for the next batch, in order. So a re-sent sample is never dropped as a
//! duplicate of one that was not stored, no later ack covers a sample that was not written,
//! and an audit entry is retried with the seq and hash it would have had.
//!
//! Writes that callers queued are encoded already. The writes the writer builds itself (status
//! history, live summaries, progress, chained audit records) are encoded here, each on its own:
//! one that cannot be encoded is left out alone, logged and counted, never failing the batch.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::oneshot;

use super::live::{LiveChanges, Pending};
use super::{
    Admission, Batch, Commit, CommitError, Control, PROGRESS_INTERVAL, SampleBatch, stall,
};
use crate::domain::{
    AgentId, AgentStatus, AuditEntry, AuditRecord, LiveRecord, OrgId, Sample, StatusReason,
};
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::session::Session;
use crate::store::{Encoded, Store, Write};

/// What the writer remembers between batches: durable facts, changed only after the commit
/// that made them true, and what a failed commit left to retry.
#[derive(Debug, Default)]
pub(super) struct WriterState {
    /// Durable live summary per agent, as last committed; its `last_seq` is the agent's
    /// deduplication high-water mark.
    live: HashMap<AgentId, LiveRecord>,
    /// When each agent's progress record was last committed: it is written at most every
    /// [`PROGRESS_INTERVAL`] (the store reads each agent's last seq from its samples).
    progress_at: HashMap<AgentId, Instant>,
    /// Where each org's audit chain continues: last committed (seq, hash).
    audit_heads: HashMap<OrgId, (u64, [u8; 32])>,
    /// Audit entries of a failed commit, placed first in the next one, in their order.
    retry_audits: Vec<AuditEntry>,
}

/// One batch turned into writes, with what to do once they are durable (or not).
#[derive(Debug)]
struct Plan {
    writes: Vec<Encoded>,
    outcome: Outcome,
}

/// The part of a [`Plan`] that waits for the commit's result.
#[derive(Debug, Default)]
struct Outcome {
    /// Sessions to ack, each with the highest seq it sent in this batch (duplicates included:
    /// they are durable already).
    acks: Vec<(Arc<Session>, u64)>,
    /// Handlers waiting for this batch.
    dones: Vec<oneshot::Sender<Result<(), CommitError>>>,
    /// Every agent this batch touches, with its live summary as it is once committed.
    live: HashMap<AgentId, (OrgId, LiveRecord)>,
    /// Each agent's newest sample in this batch, for the registry.
    latest: HashMap<AgentId, (OrgId, Sample)>,
    /// The audit chain heads this batch advances to.
    heads: HashMap<OrgId, (u64, [u8; 32])>,
    /// Audit entries no handler waits for: retried if the commit fails.
    audits: Vec<AuditEntry>,
    /// The live changes this batch writes: given back if the commit fails.
    taken: Pending,
    /// Agents whose progress record this batch writes, and when the batch was planned.
    progress: Vec<AgentId>,
    planned_at: Option<Instant>,
    n_samples: u64,
    /// The ingest budget the batch's reports hold: given back after the acks, or after the
    /// failure, never before the commit's outcome is known.
    admitted: Option<Admission>,
}

/// Plans `batch` with the live changes `taken`, commits it, then applies or fails the outcome;
/// returns whether it committed. A commit still running after `stall_limit` ends the process
/// (`writer/stall.rs`).
#[allow(
    clippy::too_many_arguments,
    reason = "the writer's parts a batch uses, passed by reference"
)]
pub(super) async fn commit_batch(
    state: &mut WriterState,
    store: &Arc<dyn Store>,
    registry: &Registry,
    metrics: &Metrics,
    live_changes: &LiveChanges,
    batch: Batch,
    taken: Pending,
    stall_limit: Duration,
) -> bool {
    let retries = std::mem::take(&mut state.retry_audits);
    let encoder = Encoder { store, metrics };
    let Plan { writes, outcome } = state.plan(
        batch,
        taken,
        retries,
        &encoder,
        Instant::now(),
        SystemTime::now(),
    );
    if writes.is_empty() && outcome.acks.is_empty() && outcome.dones.is_empty() {
        return true;
    }
    let n_writes = writes.len();
    let started = Instant::now();
    match execute(store, writes, metrics, stall_limit).await {
        Ok(()) => {
            let elapsed = started.elapsed();
            tracing::trace!(writes = n_writes, ?elapsed, "batch committed");
            metrics.observe_commit(n_writes, elapsed);
            state.apply(outcome, registry, metrics);
            true
        }
        Err(e) => {
            tracing::error!(writes = n_writes, "failed to commit batch: {e}");
            metrics.writer_commit_failures.inc();
            outcome.fail(&e, state, live_changes);
            false
        }
    }
}

/// Commits `writes` (one `apply_batch` + flush) on the blocking pool, watched for a stall
/// (`writer/stall.rs`): past `stall_limit` the process ends, for a restart to recover the store.
async fn execute(
    store: &Arc<dyn Store>,
    writes: Vec<Encoded>,
    metrics: &Metrics,
    stall_limit: Duration,
) -> Result<(), CommitError> {
    let commit = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || store.commit(writes))
    };
    stall::watch(
        commit,
        stall_limit,
        metrics,
        || store.stall_detail(),
        stall::exit_for_restart,
    )
    .await
    .map_err(|e| CommitError::Task(e.to_string()))?
    .map_err(|e| CommitError::Store(Arc::new(e)))
}

/// Encodes the writes the writer builds itself; one that fails is logged, counted and left out.
struct Encoder<'a> {
    store: &'a Arc<dyn Store>,
    metrics: &'a Metrics,
}

impl Encoder<'_> {
    fn encode(&self, write: &Write) -> Option<Encoded> {
        match self.store.encode(write) {
            Ok(encoded) => Some(encoded),
            Err(e) => {
                tracing::error!(?write, "write left out of the batch: {e}");
                self.metrics.writer_unencodable_writes.inc();
                None
            }
        }
    }
}

// === impl WriterState ===

impl WriterState {
    pub(super) fn new(live: HashMap<AgentId, LiveRecord>, audit_heads: Vec<AuditRecord>) -> Self {
        Self {
            live,
            audit_heads: audit_heads
                .into_iter()
                .map(|r| (r.entry.org.clone(), (r.seq, r.hash)))
                .collect(),
            ..Self::default()
        }
    }

    /// Whether a failed commit left writes to retry.
    pub(super) fn has_retries(&self) -> bool {
        !self.retry_audits.is_empty()
    }

    /// Turns `batch`, the live changes `taken` and the audit entries to retry into the writes
    /// of one commit and what to do after it, without changing anything. In order: live
    /// changes, retried then new audit entries and handler commits (as queued), samples (those
    /// at or below an agent's mark are dropped but acked; those of a session whose writes
    /// failed are dropped unacked), then each touched agent's full `PutLive` if its status or
    /// summary changed, else a `PutProgress` at most every [`PROGRESS_INTERVAL`] since
    /// `planned_at`. `now` stamps agents seen for the first time.
    fn plan(
        &self,
        batch: Batch,
        taken: Pending,
        retries: Vec<AuditEntry>,
        encoder: &Encoder<'_>,
        planned_at: Instant,
        now: SystemTime,
    ) -> Plan {
        let mut writes = Vec::with_capacity(batch.len + 16);
        let mut out = Outcome {
            acks: Vec::with_capacity(batch.samples.len()),
            planned_at: Some(planned_at),
            ..Outcome::default()
        };
        // Agents whose status or summary changed in this batch get a full `PutLive`; the rest
        // (samples only) get the small `PutProgress`.
        let mut changed: HashSet<AgentId> = HashSet::new();

        for (agent, changes) in &taken.agents {
            for (transition, last_seen) in &changes.transitions {
                let live = self.pending_live(&mut out.live, &changes.org, agent, transition.time);
                changed.insert(agent.clone());
                live.status = transition.to;
                live.reason = transition.reason;
                live.since = transition.time;
                live.last_seen = live.last_seen.max(*last_seen);
                writes.extend(encoder.encode(&Write::PutTransition(transition.clone())));
            }
            if let Some(record) = &changes.record {
                self.pending_live(&mut out.live, &changes.org, agent, record.enrolled_at);
                writes.extend(encoder.encode(&Write::PutAgent(record.clone())));
            }
        }
        for (id, (org, at)) in &taken.tokens {
            writes.extend(encoder.encode(&Write::PutTokenUse {
                org: org.clone(),
                id: id.clone(),
                at: *at,
            }));
        }
        out.taken = taken;

        let retries = retries
            .into_iter()
            .map(|entry| Control::Audit(Box::new(entry)));
        for control in retries.chain(batch.control) {
            match control {
                Control::Audit(entry) => {
                    if let Some(write) = self.chain(&mut out.heads, &entry, encoder) {
                        writes.push(write);
                        out.audits.push(*entry);
                    }
                }
                Control::Commit(commit) => {
                    let Commit {
                        writes: extra,
                        live,
                        audit,
                        done,
                    } = *commit;
                    if let Some(entry) = audit {
                        let Some(write) = self.chain(&mut out.heads, &entry, encoder) else {
                            // Both durable or neither: the handler learns its writes failed.
                            let error = std::io::Error::other("its audit entry cannot be stored");
                            let error = crate::store::StoreError::Backend(Box::new(error));
                            let _ = done.send(Err(CommitError::Store(Arc::new(error))));
                            continue;
                        };
                        writes.push(write);
                    }
                    for (org, agent, record) in live {
                        changed.insert(agent.clone());
                        out.live.insert(agent, (org, record));
                    }
                    writes.extend(extra);
                    out.dones.push(done);
                }
            }
        }

        for SampleBatch {
            session,
            samples,
            newest,
            admission,
        } in batch.samples
        {
            match &mut out.admitted {
                Some(admitted) => admitted.merge(admission),
                None => out.admitted = Some(admission),
            }
            if session.writes_failed() {
                // An earlier batch of this session failed: storing these would let a later ack
                // cover the samples that were not written. The agent re-sends them all.
                continue;
            }
            let max_seq = newest.seq;
            let live = self.pending_live(&mut out.live, &session.org, &session.agent, now);
            live.last_seen = live.last_seen.max(Some(session.last_seen()));
            for (seq, write) in samples {
                if seq <= live.last_seq {
                    continue;
                }
                live.last_seq = seq;
                out.n_samples += 1;
                writes.push(write);
            }
            match out.latest.get(&session.agent) {
                Some((_, latest)) if latest.seq >= newest.seq => {}
                _ => {
                    out.latest
                        .insert(session.agent.clone(), (session.org.clone(), newest));
                }
            }
            out.acks.push((session, max_seq));
        }
        for (agent, (org, live)) in &out.live {
            if changed.contains(agent) {
                writes.extend(encoder.encode(&Write::PutLive {
                    org: org.clone(),
                    agent: agent.clone(),
                    live: live.clone(),
                }));
            } else if self
                .progress_at
                .get(agent)
                .is_none_or(|at| planned_at.saturating_duration_since(*at) >= PROGRESS_INTERVAL)
            {
                out.progress.push(agent.clone());
                writes.extend(encoder.encode(&Write::PutProgress {
                    org: org.clone(),
                    agent: agent.clone(),
                    last_seq: live.last_seq,
                    last_seen: live.last_seen.unwrap_or(now),
                }));
            }
        }
        Plan {
            writes,
            outcome: out,
        }
    }

    /// After the plan's writes were committed: remembers the new marks, audit heads and
    /// progress times, hands the registry each agent's newest sample, then acks sessions and
    /// handlers, in that order, so an ack never runs ahead of what the server knows.
    fn apply(&mut self, out: Outcome, registry: &Registry, metrics: &Metrics) {
        let Outcome {
            acks,
            dones,
            live,
            latest,
            heads,
            progress,
            planned_at,
            n_samples,
            admitted,
            audits: _,
            taken: _,
        } = out;
        metrics.writer_batches.inc();
        metrics.samples_stored.inc_by(n_samples);
        self.audit_heads.extend(heads);
        if let Some(at) = planned_at {
            for agent in progress {
                self.progress_at.insert(agent, at);
            }
        }
        let updates: Vec<_> = latest
            .into_iter()
            .map(|(agent, (org, sample))| {
                let last_seq = live.get(&agent).map_or(sample.seq, |(_, l)| l.last_seq);
                (org, agent, sample, last_seq)
            })
            .collect();
        for (agent, (_, live)) in live {
            self.live.insert(agent, live);
        }
        if !updates.is_empty() {
            registry.samples_committed(updates);
        }
        for (session, seq) in acks {
            session.acked(seq);
        }
        for done in dones {
            // A handler that stopped waiting (its call was cancelled) needs no answer.
            let _ = done.send(Ok(()));
        }
        // The budget goes back only now, so the sessions that were waiting for it read their
        // next reports after these acks left.
        drop(admitted);
    }

    /// Places `entry` after its org's chain head (as committed, or as advanced earlier in this
    /// batch) and encodes it; the head advances only if it encodes.
    fn chain(
        &self,
        heads: &mut HashMap<OrgId, (u64, [u8; 32])>,
        entry: &AuditEntry,
        encoder: &Encoder<'_>,
    ) -> Option<Encoded> {
        let (seq, hash) = heads
            .get(&entry.org)
            .or_else(|| self.audit_heads.get(&entry.org))
            .copied()
            .unwrap_or((0, crate::audit::GENESIS));
        let record = crate::audit::chain(seq, hash, entry.clone());
        let head = (record.seq, record.hash);
        let encoded = encoder.encode(&Write::PutAudit(record))?;
        heads.insert(entry.org.clone(), head);
        Some(encoded)
    }

    /// The batch's copy of `agent`'s live summary: the committed one, or a fresh offline one
    /// stamped `since`.
    fn pending_live<'a>(
        &self,
        pending: &'a mut HashMap<AgentId, (OrgId, LiveRecord)>,
        org: &OrgId,
        agent: &AgentId,
        since: SystemTime,
    ) -> &'a mut LiveRecord {
        &mut pending
            .entry(agent.clone())
            .or_insert_with(|| {
                let live = self.live.get(agent).cloned().unwrap_or(LiveRecord {
                    status: AgentStatus::Offline,
                    reason: StatusReason::Enrolled,
                    since,
                    last_seen: None,
                    last_seq: 0,
                });
                (org.clone(), live)
            })
            .1
    }
}

// === impl Outcome ===

impl Outcome {
    /// The commit failed. Handlers learn why (INTERNAL); every session with samples in the
    /// batch is ended, so no later batch acks past what was not written; audit entries and
    /// live changes wait for the next batch, in order. Marks and heads stay where they were.
    fn fail(self, error: &CommitError, state: &mut WriterState, live_changes: &LiveChanges) {
        for done in self.dones {
            // A handler that stopped waiting (its call was cancelled) needs no answer.
            let _ = done.send(Err(error.clone()));
        }
        for (session, _) in &self.acks {
            session.fail_writes();
        }
        state.retry_audits = self.audits;
        live_changes.restore(self.taken);
        // Dropped last, with the rest of `self.admitted`: the ended sessions' budget frees up.
    }
}

#[cfg(test)]
mod tests;
