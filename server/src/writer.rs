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
//! that made it true, so a failed commit never causes a later re-send to be dropped. That step
//! (plan, execute, apply) is `writer/batch.rs`; this file holds the queues and the task loop.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::config::StorageConfig;
use crate::domain::{
    AgentId, AgentRecord, AuditEntry, AuditRecord, LiveRecord, Sample, TokenRecord, Transition,
};
use crate::error::ServerError;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::session::Session;
use crate::store::{Store, StoreError, Write};

mod batch;

use self::batch::{WriterState, commit_batch};

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

/// Why a batch was not committed. Every handler waiting on the batch gets a clone.
#[derive(Clone, Debug, thiserror::Error)]
pub enum CommitError {
    /// The store refused or failed the commit.
    #[error(transparent)]
    Store(Arc<StoreError>),
    /// The blocking task running the commit panicked or was cancelled.
    #[error("commit task failed: {0}")]
    Task(String),
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
        done: oneshot::Sender<Result<(), CommitError>>,
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
pub struct Pending(oneshot::Receiver<Result<(), CommitError>>);

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
        state: WriterState::new(live, audit_heads),
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

/// The task's resources and state. [`Writer::commit`] is plan, execute, apply (`batch.rs`).
struct Writer {
    queues: WriterQueues,
    store: Arc<dyn Store>,
    registry: Arc<Registry>,
    state: WriterState,
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
        commit_batch(
            &mut self.state,
            &self.store,
            &self.registry,
            &self.metrics,
            batch,
        )
        .await;
    }
}
