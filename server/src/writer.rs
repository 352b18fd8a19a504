//! The writer task: the single path by which agent streams and the registry reach the store.
//!
//! Sessions hand it samples through a bounded queue (a full queue makes the sending session
//! wait: backpressure on ingest, never unbounded memory). The registry hands it status changes
//! and agent records through an unbounded control queue (bounded in practice by the number of
//! agents, and sent from synchronous code under the registry lock, so it must not block).
//! Handlers that need a durable write before answering (enrollment, tokens) send a batch with a
//! completion channel.
//!
//! The task collects whatever is queued (lingering briefly after the first item, up to a batch
//! limit), turns it into one [`Store::commit`] (one `apply_batch` + flush), and only then acks:
//! `MetricsAck` for samples, the completion channel for handler writes. Samples at or below the
//! agent's durable high-water mark are duplicates (re-sent after a reconnect) and are dropped,
//! but still acked, since they are durable. The high-water mark advances only after the commit
//! that made it true, so a failed commit never causes a later re-send to be dropped.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::config::StorageConfig;
use crate::domain::{
    AgentId, AgentRecord, AgentStatus, AuditEntry, AuditRecord, LiveRecord, OrgId, Sample,
    StatusReason, TokenRecord, Transition,
};
use crate::error::ServerError;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::session::Session;
use crate::store::{Store, Write};

/// Least time between two progress records of one agent.
pub const PROGRESS_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Cheap to clone; every clone feeds the same writer task.
#[derive(Clone, Debug)]
pub struct WriterHandle {
    samples: mpsc::Sender<SampleBatch>,
    control: mpsc::UnboundedSender<Control>,
}

/// The receiving ends, handed to [`run`] once the registry exists.
pub struct WriterQueues {
    samples: mpsc::Receiver<SampleBatch>,
    control: mpsc::UnboundedReceiver<Control>,
}

/// The writer task has stopped (server shutting down).
#[derive(Debug, thiserror::Error)]
#[error("writer stopped")]
pub struct WriterClosed;

#[derive(Debug)]
struct SampleBatch {
    session: Arc<Session>,
    samples: Vec<Sample>,
}

#[derive(Debug)]
enum Control {
    Transition {
        transition: Box<Transition>,
        last_seen: Option<SystemTime>,
    },
    PutAgent(Box<AgentRecord>),
    PutToken(Box<TokenRecord>),
    Audit(Box<AuditEntry>),
    Commit {
        writes: Vec<Write>,
        audit: Option<Box<AuditEntry>>,
        done: oneshot::Sender<Result<(), String>>,
    },
}

/// Creates the queues. `capacity` bounds the sample queue.
pub fn channel(capacity: usize) -> (WriterHandle, WriterQueues) {
    let (samples_tx, samples_rx) = mpsc::channel(capacity);
    let (control_tx, control_rx) = mpsc::unbounded_channel();
    (
        WriterHandle {
            samples: samples_tx,
            control: control_tx,
        },
        WriterQueues {
            samples: samples_rx,
            control: control_rx,
        },
    )
}

// === impl WriterHandle ===

impl WriterHandle {
    /// Queues validated samples of `session`'s agent; waits while the queue is full. The
    /// session is acked through [`Session::acked`] after the flush.
    ///
    /// # Errors
    ///
    /// [`WriterClosed`] once the writer has stopped.
    pub async fn samples(
        &self,
        session: Arc<Session>,
        samples: Vec<Sample>,
    ) -> Result<(), WriterClosed> {
        self.samples
            .send(SampleBatch { session, samples })
            .await
            .map_err(|_| WriterClosed)
    }

    /// Queues a status change for persistence (history + live summary).
    pub fn transition(&self, transition: Transition, last_seen: Option<SystemTime>) {
        if self
            .control
            .send(Control::Transition {
                transition: Box::new(transition),
                last_seen,
            })
            .is_err()
        {
            tracing::warn!("status change not persisted: the writer has stopped");
        }
    }

    /// Queues an agent record for persistence.
    pub fn put_agent(&self, record: AgentRecord) {
        if self
            .control
            .send(Control::PutAgent(Box::new(record)))
            .is_err()
        {
            tracing::warn!("agent record not persisted: the writer has stopped");
        }
    }

    /// Queues a token record (e.g. a new last-use time) for persistence.
    pub fn put_token(&self, record: TokenRecord) {
        if self
            .control
            .send(Control::PutToken(Box::new(record)))
            .is_err()
        {
            tracing::warn!("token record not persisted: the writer has stopped");
        }
    }

    /// Queues an audit entry; the writer places it in its org's chain.
    pub fn audit(&self, entry: AuditEntry) {
        if self.control.send(Control::Audit(Box::new(entry))).is_err() {
            tracing::warn!("audit entry not persisted: the writer has stopped");
        }
    }

    /// Commits `writes` in the next batch and waits until they are durable.
    ///
    /// # Errors
    ///
    /// `Unavailable` if the writer has stopped, `Internal` if the commit failed.
    pub async fn commit(&self, writes: Vec<Write>) -> Result<(), ServerError> {
        self.commit_audited(writes, None).await
    }

    /// Commits `writes` together with the audit entry that records them: both are durable,
    /// or neither.
    ///
    /// # Errors
    ///
    /// `Unavailable` if the writer has stopped, `Internal` if the commit failed.
    pub async fn commit_audited(
        &self,
        writes: Vec<Write>,
        audit: Option<AuditEntry>,
    ) -> Result<(), ServerError> {
        self.submit(writes, audit)?.wait().await
    }

    /// Queues `writes` (and their audit entry) for the next batch without waiting, so a caller
    /// can queue under a lock that orders its writes, then wait outside it.
    ///
    /// # Errors
    ///
    /// `Unavailable` if the writer has stopped.
    pub fn submit(
        &self,
        writes: Vec<Write>,
        audit: Option<AuditEntry>,
    ) -> Result<Pending, ServerError> {
        let (done, wait) = oneshot::channel();
        self.control
            .send(Control::Commit {
                writes,
                audit: audit.map(Box::new),
                done,
            })
            .map_err(|_| ServerError::Unavailable)?;
        Ok(Pending(wait))
    }
}

/// Writes queued by [`WriterHandle::submit`], durable once [`Pending::wait`] returns `Ok`.
#[must_use = "the writes are not known to be durable until waited for"]
pub struct Pending(oneshot::Receiver<Result<(), String>>);

impl Pending {
    /// Waits until the writes are durable.
    ///
    /// # Errors
    ///
    /// `Unavailable` if the writer stopped first, `Internal` if the commit failed.
    pub async fn wait(self) -> Result<(), ServerError> {
        match self.0.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ServerError::Internal(format!("commit failed: {e}"))),
            Err(_) => Err(ServerError::Unavailable),
        }
    }
}

/// Drives the writer until `shutdown`, then commits whatever is still queued and returns.
#[allow(
    clippy::too_many_arguments,
    reason = "the writer's whole initial state, passed once"
)]
pub async fn run(
    queues: WriterQueues,
    store: Arc<dyn Store>,
    registry: Arc<Registry>,
    live: HashMap<AgentId, LiveRecord>,
    audit_heads: Vec<AuditRecord>,
    metrics: Arc<Metrics>,
    config: StorageConfig,
    shutdown: CancellationToken,
) {
    let mut writer = Writer {
        queues,
        store,
        registry,
        live,
        progress_at: HashMap::new(),
        audit_heads: audit_heads
            .into_iter()
            .map(|r| (r.entry.org.clone(), (r.seq, r.hash)))
            .collect(),
        metrics,
        config,
    };
    loop {
        let first = tokio::select! {
            biased;
            c = writer.queues.control.recv() => c.map(Item::Control),
            s = writer.queues.samples.recv() => s.map(Item::Samples),
            () = shutdown.cancelled() => None,
        };
        let Some(first) = first else { break };
        let mut batch = Batch::default();
        batch.add(first);
        writer.fill(&mut batch, &shutdown).await;
        writer.commit(batch).await;
    }
    // Drain what is already queued so nothing accepted before shutdown is lost.
    loop {
        let mut batch = Batch::default();
        while batch.len < writer.config.writer_max_batch {
            match writer.try_next() {
                Some(item) => batch.add(item),
                None => break,
            }
        }
        if batch.len == 0 {
            break;
        }
        writer.commit(batch).await;
    }
    tracing::debug!("writer stopped");
}

/// Deletes samples and status history older than the retention, every `interval`.
pub async fn run_retention(
    store: Arc<dyn Store>,
    config: StorageConfig,
    shutdown: CancellationToken,
) {
    let mut interval = tokio::time::interval(config.retention_interval);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = interval.tick() => {}
        }
        let Some(cutoff) = SystemTime::now().checked_sub(config.metrics_retention) else {
            continue;
        };
        let store = store.clone();
        match tokio::task::spawn_blocking(move || store.purge_before(cutoff)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::info!(removed = n, "retention removed old samples"),
            Ok(Err(e)) => tracing::warn!("retention failed: {e:#}"),
            Err(e) => tracing::warn!("retention task failed: {e}"),
        }
    }
}

enum Item {
    Samples(SampleBatch),
    Control(Control),
}

#[derive(Default)]
struct Batch {
    samples: Vec<SampleBatch>,
    control: Vec<Control>,
    len: usize,
}

impl Batch {
    fn add(&mut self, item: Item) {
        self.len += match &item {
            Item::Samples(s) => s.samples.len().max(1),
            Item::Control(Control::Commit { writes, .. }) => writes.len().max(1),
            Item::Control(_) => 1,
        };
        match item {
            Item::Samples(s) => self.samples.push(s),
            Item::Control(c) => self.control.push(c),
        }
    }
}

struct Writer {
    queues: WriterQueues,
    store: Arc<dyn Store>,
    registry: Arc<Registry>,
    /// Durable live summary per agent, as last committed. Only this task changes it.
    live: HashMap<AgentId, LiveRecord>,
    /// When each agent's progress record was last queued: it is written at most every
    /// [`PROGRESS_INTERVAL`] (samples carry their own seq in their key, which `load` reads).
    progress_at: HashMap<AgentId, Instant>,
    /// Where each org's audit chain continues: last committed (seq, hash).
    audit_heads: HashMap<OrgId, (u64, [u8; 32])>,
    metrics: Arc<Metrics>,
    config: StorageConfig,
}

impl Writer {
    fn try_next(&mut self) -> Option<Item> {
        if let Ok(c) = self.queues.control.try_recv() {
            return Some(Item::Control(c));
        }
        self.queues.samples.try_recv().ok().map(Item::Samples)
    }

    /// Adds queued items to `batch` until it is full, or the linger time has passed with the
    /// queues empty.
    async fn fill(&mut self, batch: &mut Batch, shutdown: &CancellationToken) {
        let deadline = tokio::time::Instant::now() + self.config.writer_linger;
        while batch.len < self.config.writer_max_batch {
            if let Some(item) = self.try_next() {
                batch.add(item);
                continue;
            }
            let next = tokio::select! {
                biased;
                c = self.queues.control.recv() => c.map(Item::Control),
                s = self.queues.samples.recv() => s.map(Item::Samples),
                () = tokio::time::sleep_until(deadline) => None,
                () = shutdown.cancelled() => None,
            };
            match next {
                Some(item) => batch.add(item),
                None => return,
            }
        }
    }

    async fn commit(&mut self, batch: Batch) {
        let mut writes = Vec::with_capacity(batch.len + 16);
        let mut pending: HashMap<AgentId, (OrgId, LiveRecord)> = HashMap::new();
        // Agents whose status or summary changed in this batch get a full `PutLive`; the rest
        // (samples only) get the small `PutProgress`.
        let mut changed: std::collections::HashSet<AgentId> = std::collections::HashSet::new();
        let mut dones = Vec::new();
        let started_batch = Instant::now();
        let mut heads: HashMap<OrgId, (u64, [u8; 32])> = HashMap::new();
        let now = SystemTime::now();

        for control in batch.control {
            match control {
                Control::Transition {
                    transition,
                    last_seen,
                } => {
                    let live = self.pending_live(
                        &mut pending,
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
                    self.pending_live(&mut pending, &record.org, &record.id, record.enrolled_at);
                    writes.push(Write::PutAgent(*record));
                }
                Control::PutToken(record) => writes.push(Write::PutToken(*record)),
                Control::Audit(entry) => writes.push(self.chain(&mut heads, *entry)),
                Control::Commit {
                    writes: mut extra,
                    audit,
                    done,
                } => {
                    if let Some(entry) = audit {
                        writes.push(self.chain(&mut heads, *entry));
                    }
                    for write in &extra {
                        if let Write::PutLive { org, agent, live } = write {
                            pending.insert(agent.clone(), (org.clone(), live.clone()));
                            changed.insert(agent.clone());
                        }
                    }
                    extra.retain(|w| !matches!(w, Write::PutLive { .. }));
                    writes.append(&mut extra);
                    dones.push(done);
                }
            }
        }

        let mut acks = Vec::with_capacity(batch.samples.len());
        // Each agent's newest new sample, as its index in `writes`: the registry gets it after
        // the commit, moved out of the batch rather than cloned per sample.
        let mut latest: HashMap<AgentId, (usize, u64)> = HashMap::new();
        let mut n_samples = 0u64;
        for SampleBatch { session, samples } in batch.samples {
            let Some(max_seq) = samples.last().map(|s| s.seq) else {
                continue;
            };
            let live = self.pending_live(&mut pending, &session.org, &session.agent, now);
            live.last_seen = live.last_seen.max(Some(session.last_seen()));
            for sample in samples {
                if sample.seq <= live.last_seq {
                    continue;
                }
                live.last_seq = sample.seq;
                if latest
                    .get(&session.agent)
                    .is_none_or(|(_, seq)| *seq < sample.seq)
                {
                    latest.insert(session.agent.clone(), (writes.len(), sample.seq));
                }
                n_samples += 1;
                writes.push(Write::PutSample {
                    org: session.org.clone(),
                    agent: session.agent.clone(),
                    sample,
                });
            }
            acks.push((session, max_seq));
        }
        for (agent, (org, live)) in &pending {
            if changed.contains(agent) {
                writes.push(Write::PutLive {
                    org: org.clone(),
                    agent: agent.clone(),
                    live: live.clone(),
                });
            } else if self
                .progress_at
                .get(agent)
                .is_none_or(|at| started_batch.saturating_duration_since(*at) >= PROGRESS_INTERVAL)
            {
                self.progress_at.insert(agent.clone(), started_batch);
                writes.push(Write::PutProgress {
                    org: org.clone(),
                    agent: agent.clone(),
                    last_seq: live.last_seq,
                    last_seen: live.last_seen.unwrap_or(now),
                });
            }
        }

        let store = self.store.clone();
        let started = Instant::now();
        let n_writes = writes.len();
        let result = tokio::task::spawn_blocking(move || {
            let result = store.commit(&writes);
            (result, writes)
        })
        .await
        .map_err(|e| format!("commit task failed: {e}"))
        .and_then(|(r, writes)| r.map(|()| writes).map_err(|e| format!("{e:#}")));
        match result {
            Ok(writes) => {
                tracing::trace!(writes = n_writes, elapsed = ?started.elapsed(), "batch committed");
                self.metrics.writer_batches.inc();
                self.metrics.samples_stored.inc_by(n_samples);
                self.audit_heads.extend(heads);
                let newest: std::collections::HashSet<usize> =
                    latest.values().map(|(index, _)| *index).collect();
                let updates: Vec<_> = writes
                    .into_iter()
                    .enumerate()
                    .filter(|(index, _)| newest.contains(index))
                    .filter_map(|(_, write)| match write {
                        Write::PutSample { org, agent, sample } => {
                            let last_seq =
                                pending.get(&agent).map_or(sample.seq, |(_, l)| l.last_seq);
                            Some((org, agent, sample, last_seq))
                        }
                        _ => None,
                    })
                    .collect();
                for (agent, (_, live)) in pending {
                    self.live.insert(agent, live);
                }
                if !updates.is_empty() {
                    self.registry.samples_committed(updates);
                }
                for (session, seq) in acks {
                    session.acked(seq);
                }
                for done in dones {
                    let _ = done.send(Ok(()));
                }
            }
            Err(e) => {
                // Nothing is acked: agents keep the samples and re-send them on their next
                // session; handlers answer INTERNAL. Audit heads stay where they were.
                tracing::error!(writes = n_writes, "failed to commit batch: {e}");
                self.metrics.writer_commit_failures.inc();
                for done in dones {
                    let _ = done.send(Err(e.clone()));
                }
            }
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
