//! One batch of the writer: plan, execute, apply.
//!
//! [`WriterState::plan`] turns a batch into the writes of one commit and what to do after it,
//! without changing anything; [`execute`] is the only step that touches the store;
//! [`WriterState::apply`] runs only after the commit succeeded, and only it changes what the
//! writer remembers (high-water marks, audit heads, progress times) and acks. A failed commit
//! ([`Outcome::fail`]) tells waiting handlers and changes nothing, so a re-sent sample is never
//! dropped as a duplicate of one that was not stored.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use tokio::sync::oneshot;

use super::{Batch, CommitError, Control, PROGRESS_INTERVAL, SampleBatch};
use crate::domain::{
    AgentId, AgentStatus, AuditEntry, AuditRecord, LiveRecord, OrgId, StatusReason,
};
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::session::Session;
use crate::store::{Store, Write};

/// What the writer remembers between batches: durable facts, changed only after the commit
/// that made them true.
#[derive(Debug, Default)]
pub(super) struct WriterState {
    /// Durable live summary per agent, as last committed; its `last_seq` is the agent's
    /// deduplication high-water mark.
    live: HashMap<AgentId, LiveRecord>,
    /// When each agent's progress record was last committed: it is written at most every
    /// [`PROGRESS_INTERVAL`] (samples carry their own seq in their key, which `load` reads).
    progress_at: HashMap<AgentId, Instant>,
    /// Where each org's audit chain continues: last committed (seq, hash).
    audit_heads: HashMap<OrgId, (u64, [u8; 32])>,
}

/// One batch turned into writes, with what to do once they are durable (or not).
#[derive(Debug)]
struct Plan {
    writes: Vec<Write>,
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
    /// Each agent's newest new sample, as its index in the writes: the registry gets it after
    /// the commit, moved out of the batch rather than cloned per sample.
    latest: HashMap<AgentId, (usize, u64)>,
    /// The audit chain heads this batch advances to.
    heads: HashMap<OrgId, (u64, [u8; 32])>,
    /// Agents whose progress record this batch writes, and when the batch was planned.
    progress: Vec<AgentId>,
    planned_at: Option<Instant>,
    n_samples: u64,
}

/// Plans `batch`, commits it, then applies or fails the outcome; returns whether it committed.
pub(super) async fn commit_batch(
    state: &mut WriterState,
    store: &Arc<dyn Store>,
    registry: &Registry,
    metrics: &Metrics,
    batch: Batch,
) -> bool {
    let Plan { writes, outcome } = state.plan(batch, Instant::now(), SystemTime::now());
    let n_writes = writes.len();
    let started = Instant::now();
    match execute(store, writes).await {
        Ok(writes) => {
            tracing::trace!(writes = n_writes, elapsed = ?started.elapsed(), "batch committed");
            state.apply(outcome, writes, registry, metrics);
            true
        }
        Err(e) => {
            // Nothing is acked: agents keep the samples and re-send them on their next
            // session; handlers answer INTERNAL. Marks and audit heads stay where they were.
            tracing::error!(writes = n_writes, "failed to commit batch: {e}");
            metrics.writer_commit_failures.inc();
            outcome.fail(&e);
            false
        }
    }
}

/// Commits `writes` (one `apply_batch` + flush) on the blocking pool; hands them back once
/// durable, for the registry's newest samples.
async fn execute(store: &Arc<dyn Store>, writes: Vec<Write>) -> Result<Vec<Write>, CommitError> {
    let store = store.clone();
    let (result, writes) = tokio::task::spawn_blocking(move || {
        let result = store.commit(&writes);
        (result, writes)
    })
    .await
    .map_err(|e| CommitError::Task(e.to_string()))?;
    result
        .map(|()| writes)
        .map_err(|e| CommitError::Store(Arc::new(e)))
}

// === impl WriterState ===

impl WriterState {
    pub(super) fn new(live: HashMap<AgentId, LiveRecord>, audit_heads: Vec<AuditRecord>) -> Self {
        Self {
            live,
            progress_at: HashMap::new(),
            audit_heads: audit_heads
                .into_iter()
                .map(|r| (r.entry.org.clone(), (r.seq, r.hash)))
                .collect(),
        }
    }

    /// Turns `batch` into the writes of one commit and what to do after it, without changing
    /// anything: samples at or below an agent's mark are dropped (but acked), audit entries
    /// are chained after the committed heads (and each other), agents whose status or summary
    /// changed get a full `PutLive`, the others a `PutProgress` at most every
    /// [`PROGRESS_INTERVAL`] since `planned_at`. `now` stamps agents seen for the first time.
    fn plan(&self, batch: Batch, planned_at: Instant, now: SystemTime) -> Plan {
        let mut writes = Vec::with_capacity(batch.len + 16);
        let mut out = Outcome {
            acks: Vec::with_capacity(batch.samples.len()),
            planned_at: Some(planned_at),
            ..Outcome::default()
        };
        // Agents whose status or summary changed in this batch get a full `PutLive`; the rest
        // (samples only) get the small `PutProgress`.
        let mut changed: std::collections::HashSet<AgentId> = std::collections::HashSet::new();

        for control in batch.control {
            match control {
                Control::Transition {
                    transition,
                    last_seen,
                } => {
                    let live = self.pending_live(
                        &mut out.live,
                        &transition.org,
                        &transition.agent,
                        transition.time,
                    );
                    changed.insert(transition.agent.clone());
                    live.status = transition.to;
                    live.reason = transition.reason;
                    live.since = transition.time;
                    live.last_seen = live.last_seen.max(last_seen);
                    writes.push(Write::PutTransition(*transition));
                }
                Control::PutAgent(record) => {
                    self.pending_live(&mut out.live, &record.org, &record.id, record.enrolled_at);
                    writes.push(Write::PutAgent(*record));
                }
                Control::PutToken(record) => writes.push(Write::PutToken(*record)),
                Control::Audit(entry) => writes.push(self.chain(&mut out.heads, *entry)),
                Control::Commit {
                    writes: mut extra,
                    audit,
                    done,
                } => {
                    if let Some(entry) = audit {
                        writes.push(self.chain(&mut out.heads, *entry));
                    }
                    for write in &extra {
                        if let Write::PutLive { org, agent, live } = write {
                            out.live.insert(agent.clone(), (org.clone(), live.clone()));
                            changed.insert(agent.clone());
                        }
                    }
                    extra.retain(|w| !matches!(w, Write::PutLive { .. }));
                    writes.append(&mut extra);
                    out.dones.push(done);
                }
            }
        }

        for SampleBatch { session, samples } in batch.samples {
            let Some(max_seq) = samples.last().map(|s| s.seq) else {
                continue;
            };
            let live = self.pending_live(&mut out.live, &session.org, &session.agent, now);
            live.last_seen = live.last_seen.max(Some(session.last_seen()));
            for sample in samples {
                if sample.seq <= live.last_seq {
                    continue;
                }
                live.last_seq = sample.seq;
                if out
                    .latest
                    .get(&session.agent)
                    .is_none_or(|(_, seq)| *seq < sample.seq)
                {
                    out.latest
                        .insert(session.agent.clone(), (writes.len(), sample.seq));
                }
                out.n_samples += 1;
                writes.push(Write::PutSample {
                    org: session.org.clone(),
                    agent: session.agent.clone(),
                    sample,
                });
            }
            out.acks.push((session, max_seq));
        }
        for (agent, (org, live)) in &out.live {
            if changed.contains(agent) {
                writes.push(Write::PutLive {
                    org: org.clone(),
                    agent: agent.clone(),
                    live: live.clone(),
                });
            } else if self
                .progress_at
                .get(agent)
                .is_none_or(|at| planned_at.saturating_duration_since(*at) >= PROGRESS_INTERVAL)
            {
                out.progress.push(agent.clone());
                writes.push(Write::PutProgress {
                    org: org.clone(),
                    agent: agent.clone(),
                    last_seq: live.last_seq,
                    last_seen: live.last_seen.unwrap_or(now),
                });
            }
        }
        Plan {
            writes,
            outcome: out,
        }
    }

    /// After `writes` (the plan's) were committed: remembers the new marks, audit heads and
    /// progress times, hands the registry each agent's newest sample, then acks sessions and
    /// handlers, in that order, so an ack never runs ahead of what the server knows.
    fn apply(&mut self, out: Outcome, writes: Vec<Write>, registry: &Registry, metrics: &Metrics) {
        let Outcome {
            acks,
            dones,
            live,
            latest,
            heads,
            progress,
            planned_at,
            n_samples,
        } = out;
        metrics.writer_batches.inc();
        metrics.samples_stored.inc_by(n_samples);
        self.audit_heads.extend(heads);
        if let Some(at) = planned_at {
            for agent in progress {
                self.progress_at.insert(agent, at);
            }
        }
        let newest: std::collections::HashSet<usize> =
            latest.values().map(|(index, _)| *index).collect();
        let updates: Vec<_> = writes
            .into_iter()
            .enumerate()
            .filter(|(index, _)| newest.contains(index))
            .filter_map(|(_, write)| match write {
                Write::PutSample { org, agent, sample } => {
                    let last_seq = live.get(&agent).map_or(sample.seq, |(_, l)| l.last_seq);
                    Some((org, agent, sample, last_seq))
                }
                _ => None,
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
    }

    /// Places `entry` after its org's chain head (as committed, or as advanced earlier in this
    /// batch).
    fn chain(&self, heads: &mut HashMap<OrgId, (u64, [u8; 32])>, entry: AuditEntry) -> Write {
        let (seq, hash) = heads
            .get(&entry.org)
            .or_else(|| self.audit_heads.get(&entry.org))
            .copied()
            .unwrap_or((0, crate::audit::GENESIS));
        let record = crate::audit::chain(seq, hash, entry);
        heads.insert(record.entry.org.clone(), (record.seq, record.hash));
        Write::PutAudit(record)
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
    /// The commit failed: handlers learn why; nothing is acked and nothing is remembered.
    fn fail(self, error: &CommitError) {
        for done in self.dones {
            // A handler that stopped waiting (its call was cancelled) needs no answer.
            let _ = done.send(Err(error.clone()));
        }
    }
}

#[cfg(test)]
mod tests;
