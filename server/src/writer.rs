//! The writer task: the single path by which agent streams, handlers and the registry reach the
//! store.
//!
//! # What an ack means
//!
//! `MetricsAck(n)` and a handler's `Ok` mean durable: the task collects what is queued
//! (lingering briefly after the first item, up to a batch limit), turns it into one
//! [`Store::commit`] (one `apply_batch` + flush), and only then acks. Samples at or below the
//! agent's durable high-water mark are duplicates (re-sent after a reconnect) and are dropped,
//! but still acked, since they are durable. The mark advances only after the commit that made
//! it true. That step (plan, execute, apply or fail) is `writer/batch.rs`.
//!
//! # Fate isolation
//!
//! A write is encoded ([`Store::encode`]) when it enters a queue, by the [`WriterHandle`] method
//! its caller calls, so a write that cannot be stored fails there, to that caller alone, and a
//! batch holds only writes that can be stored. A commit can then fail only as a whole (disk,
//! injected failure); when it does, nothing in it is acked and nothing is remembered: handlers
//! waiting on it get INTERNAL, sessions whose samples were in it are ended with UNAVAILABLE (the
//! agent reconnects and re-sends from its Welcome's durable seq, and no later batch may ack a
//! seq of theirs past the unwritten ones), and the writes nobody waits for (audit entries,
//! status changes, agent and token records) are retried, in order, in front of the next batch.
//! An audit entry therefore either is committed with its seq and hash or is retried with the
//! same ones: the chain never skips.
//!
//! # Queues and their bounds
//!
//! - Samples: a report first takes its samples' share of the ingest budget (`ingest_budget`
//!   samples in all, `writer/admission.rs`), held until its batch is acked or failed; a session
//!   without budget stops reading its stream (`session.rs`). The line for budget is bounded
//!   for the agents that accept a deferral (`ingest_queue` samples): past it their report is
//!   answered `MetricsDeferred` and its samples wait in the agent's buffer. The reports then
//!   wait in a bounded queue (`writer_queue`).
//! - Control (handler commits and audit entries): a bounded queue (`writer_control_queue`);
//!   callers wait for a slot before queueing ([`WriterHandle::audit`], [`WriterHandle::reserve`])
//!   and never queue while holding a lock they cannot hold across a wait, so a full queue slows
//!   callers down and drops nothing.
//! - Live state (status changes, agent records from the registry, token last-use records from
//!   authentication): queued from synchronous code under locks, so they may not wait; they go
//!   into a table coalesced per agent and per token (`writer/live.rs`), bounded by the number
//!   of agents and tokens rather than by how fast they change.
//!
//! Queue depths are exported as `tether_writer_queue_depth{queue="samples"|"control"|"live"}`.
//!
//! # A commit that does not return
//!
//! Is reported every 10 s (log, `tether_writer_commit_running_seconds`) and, past
//! `commit_stall_limit` (`--store-stall-limit`), ends the process with
//! [`STORE_STALLED_EXIT_CODE`] so that its supervisor restarts it: the store cannot recover
//! in the process, and nothing of the stuck commit was acked (`writer/stall.rs`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::config::StorageConfig;
use crate::domain::{
    AgentId, AgentRecord, AuditEntry, AuditRecord, LiveRecord, OrgId, Sample, TokenId, Transition,
};
use crate::error::ServerError;
use crate::metrics::{Metrics, QueueLabels};
use crate::registry::Registry;
use crate::session::Session;
use crate::store::{Encoded, Store, StoreError, Write};

mod admission;
mod batch;
mod live;
mod maintenance;
mod stall;

use self::admission::observe_budget;
pub use self::admission::{Admission, Admitting};
use self::batch::{WriterState, commit_batch};
use self::live::LiveChanges;

pub use self::live::MAX_PENDING_TRANSITIONS;
pub use self::maintenance::{run_compaction, run_retention};
pub use self::stall::{REPORT_EVERY as STALL_REPORT_EVERY, STORE_STALLED_EXIT_CODE};

/// Least time between two progress records of one agent. The store knows each agent's last
/// seq from its samples (its head and log), so a progress record only keeps `last_seen` (the
/// server's clock) for a restart after a crash, which also takes the newest sample's time;
/// and every record rewritten costs sled memory (see `store/sled.rs`), so it is rare.
pub const PROGRESS_INTERVAL: Duration = Duration::from_secs(60);

/// Wait after a failed commit before the next one, doubled after each further failure up to
/// [`MAX_RETRY_DELAY`]: a broken disk is not hammered, and queues fill up to their bounds
/// (backpressure) instead.
pub const FIRST_RETRY_DELAY: Duration = Duration::from_millis(50);
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(2);

/// Cheap to clone; every clone feeds the same writer task.
#[derive(Clone)]
pub struct WriterHandle {
    samples: mpsc::Sender<SampleBatch>,
    control: mpsc::Sender<Control>,
    live: Arc<LiveChanges>,
    /// The ingest budget, in samples: taken by a session before it hands a report over,
    /// released when the batch holding the report is done.
    admission: Arc<Semaphore>,
    /// The ingest budget's size.
    budget: u32,
    /// Samples that may wait in that line before a report of an agent that accepts it is
    /// deferred instead ([`WriterHandle::has_room`]).
    ingest_queue: usize,
    /// Encodes writes as they are queued.
    store: Arc<dyn Store>,
    depth: QueueGauges,
}

impl std::fmt::Debug for WriterHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriterHandle").finish_non_exhaustive()
    }
}

/// The receiving ends, handed to [`run`] once the registry exists.
pub struct WriterQueues {
    samples: mpsc::Receiver<SampleBatch>,
    control: mpsc::Receiver<Control>,
    live: Arc<LiveChanges>,
    admission: Arc<Semaphore>,
    budget: u32,
    depth: QueueGauges,
}

/// The depth gauges of the two bounded queues and of the ingest budget in use.
#[derive(Clone, Debug)]
struct QueueGauges {
    samples: Gauge,
    control: Gauge,
    admitted: Gauge,
    /// Samples of the reports waiting in line for ingest budget (`admission.rs`'s count, which
    /// decides deferrals).
    waiting: Gauge,
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

/// One report's samples, encoded, with the newest sample itself for the registry.
#[derive(Debug)]
struct SampleBatch {
    session: Arc<Session>,
    /// `(seq, encoded write)`, in seq order.
    samples: Vec<(u64, Encoded)>,
    newest: Sample,
    /// Given back once the batch holding these samples is done.
    admission: Admission,
}

#[derive(Debug)]
enum Control {
    Audit(Box<AuditEntry>),
    Commit(Box<Commit>),
}

/// A handler's writes: encoded, except live summaries, which the writer merges with what it
/// knows of the agent before writing them.
#[derive(Debug)]
struct Commit {
    writes: Vec<Encoded>,
    live: Vec<(OrgId, AgentId, LiveRecord)>,
    audit: Option<AuditEntry>,
    done: oneshot::Sender<Result<(), CommitError>>,
}

/// Creates the queues: `samples` reports and `control` handler commits and audit entries at
/// most, an ingest budget of `ingest_budget` samples (at least 1, at most `u32::MAX`), and a
/// line for that budget that a deferrable report joins only while fewer than `ingest_queue`
/// samples wait in it. Writes are encoded by `store`, which the writer task must commit to.
pub fn channel(
    store: Arc<dyn Store>,
    metrics: &Metrics,
    samples: usize,
    control: usize,
    ingest_budget: usize,
    ingest_queue: usize,
) -> (WriterHandle, WriterQueues) {
    let budget = u32::try_from(ingest_budget.max(1)).unwrap_or(u32::MAX);
    let (samples_tx, samples_rx) = mpsc::channel(samples);
    let (control_tx, control_rx) = mpsc::channel(control);
    let gauge = |queue: &'static str| {
        metrics
            .writer_queue_depth
            .get_or_create(&QueueLabels { queue })
            .clone()
    };
    let depth = QueueGauges {
        samples: gauge("samples"),
        control: gauge("control"),
        admitted: gauge("admitted_samples"),
        waiting: gauge("waiting_samples"),
    };
    let live = Arc::new(LiveChanges::new(
        gauge("live"),
        metrics.writer_transitions_coalesced.clone(),
    ));
    let admission = Arc::new(Semaphore::new(budget as usize));
    (
        WriterHandle {
            samples: samples_tx,
            control: control_tx,
            live: live.clone(),
            admission: admission.clone(),
            budget,
            ingest_queue,
            store,
            depth: depth.clone(),
        },
        WriterQueues {
            samples: samples_rx,
            control: control_rx,
            live,
            admission,
            budget,
            depth,
        },
    )
}

/// Sets `gauge` to what `sender`'s queue holds (slots taken, reservations included).
fn observe<T>(gauge: &Gauge, sender: &mpsc::Sender<T>) {
    let held = sender.max_capacity() - sender.capacity();
    gauge.set(i64::try_from(held).unwrap_or(i64::MAX));
}

// === impl WriterHandle ===

impl WriterHandle {
    /// Encodes and queues validated samples (in seq order) of `session`'s agent, holding
    /// `admission` until the batch holding them is done; waits while the queue is full. The
    /// session is acked through [`Session::acked`] after the flush.
    ///
    /// # Errors
    ///
    /// `Store` (INTERNAL) if a sample cannot be encoded: nothing of the report is queued.
    /// `Unavailable` once the writer has stopped.
    pub async fn samples(
        &self,
        session: Arc<Session>,
        samples: Vec<Sample>,
        admission: Admission,
    ) -> Result<(), ServerError> {
        let mut encoded = Vec::with_capacity(samples.len());
        let mut newest = None;
        for sample in samples {
            let seq = sample.seq;
            let write = Write::PutSample {
                org: session.org.clone(),
                agent: session.agent.clone(),
                sample,
            };
            encoded.push((seq, self.store.encode(&write)?));
            if let Write::PutSample { sample, .. } = write {
                newest = Some(sample);
            }
        }
        let Some(newest) = newest else {
            return Ok(());
        };
        let batch = SampleBatch {
            session,
            samples: encoded,
            newest,
            admission,
        };
        self.samples
            .send(batch)
            .await
            .map_err(|_| ServerError::Unavailable)?;
        observe(&self.depth.samples, &self.samples);
        Ok(())
    }

    /// Queues a status change for persistence (history + live summary). Never waits: see
    /// `writer/live.rs` for how the changes waiting are bounded.
    pub fn transition(&self, transition: Transition, last_seen: Option<SystemTime>) {
        self.live.transition(transition, last_seen);
    }

    /// Queues an agent record for persistence (the newest one waiting wins). Never waits.
    pub fn put_agent(&self, record: AgentRecord) {
        self.live.agent(record);
    }

    /// Queues the time token `id` of `org` was last used (the newest one waiting wins). Never
    /// waits. Only the time is stored: never a copy of the token's record, which a revocation
    /// committed after authentication read it would otherwise undo.
    pub fn token_used(&self, org: OrgId, id: TokenId, at: SystemTime) {
        self.live.token_use(org, id, at);
    }

    /// Queues an audit entry, waiting while the control queue is full; the writer places it in
    /// its org's chain, retrying until it is committed.
    pub async fn audit(&self, entry: AuditEntry) {
        if self
            .control
            .send(Control::Audit(Box::new(entry)))
            .await
            .is_err()
        {
            tracing::warn!("audit entry not persisted: the writer has stopped");
        }
        observe(&self.depth.control, &self.control);
    }

    /// Commits `writes` in the next batch and waits until they are durable.
    ///
    /// # Errors
    ///
    /// As [`Reservation::submit`] and [`Pending::wait`].
    pub async fn commit(&self, writes: Vec<Write>) -> Result<(), ServerError> {
        self.commit_audited(writes, None).await
    }

    /// Commits `writes` together with the audit entry that records them: both are durable,
    /// or neither.
    ///
    /// # Errors
    ///
    /// As [`Reservation::submit`] and [`Pending::wait`].
    pub async fn commit_audited(
        &self,
        writes: Vec<Write>,
        audit: Option<AuditEntry>,
    ) -> Result<(), ServerError> {
        self.reserve().await?.submit(writes, audit)?.wait().await
    }

    /// Encodes one write for [`Reservation::submit_encoded`].
    ///
    /// # Errors
    ///
    /// `Store` (INTERNAL) if the write cannot be stored.
    pub fn encode(&self, write: &Write) -> Result<Encoded, ServerError> {
        Ok(self.store.encode(write)?)
    }

    /// Waits for a slot in the control queue, for a caller that must queue its writes under a
    /// lock that orders them (and may not wait while holding it).
    ///
    /// # Errors
    ///
    /// `Unavailable` if the writer has stopped.
    pub async fn reserve(&self) -> Result<Reservation<'_>, ServerError> {
        let permit = self
            .control
            .reserve()
            .await
            .map_err(|_| ServerError::Unavailable)?;
        Ok(Reservation {
            permit,
            handle: self,
        })
    }
}

/// A slot in the control queue, taken by [`WriterHandle::reserve`]; dropping it frees it.
pub struct Reservation<'a> {
    permit: mpsc::Permit<'a, Control>,
    handle: &'a WriterHandle,
}

impl Reservation<'_> {
    /// Encodes `writes` (and their audit entry) and queues them for the next batch without
    /// waiting.
    ///
    /// # Errors
    ///
    /// `Store` (INTERNAL) if a write cannot be encoded: nothing is queued.
    pub fn submit(
        self,
        writes: Vec<Write>,
        audit: Option<AuditEntry>,
    ) -> Result<Pending, ServerError> {
        let mut encoded = Vec::with_capacity(writes.len());
        let mut live = Vec::new();
        for write in writes {
            match write {
                Write::PutLive {
                    org,
                    agent,
                    live: record,
                } => live.push((org, agent, record)),
                write => encoded.push(self.handle.store.encode(&write)?),
            }
        }
        Ok(self.send(encoded, live, audit))
    }

    /// Queues writes its caller encoded itself ([`Store::encode`], through
    /// [`WriterHandle::encode`]) one by one, each as the change it records was made, so that a
    /// write that cannot be encoded fails before its change is applied, alone (the command
    /// engine does). Never fails.
    pub fn submit_encoded(self, writes: Vec<Encoded>, audit: Option<AuditEntry>) -> Pending {
        self.send(writes, Vec::new(), audit)
    }

    fn send(
        self,
        writes: Vec<Encoded>,
        live: Vec<(OrgId, AgentId, LiveRecord)>,
        audit: Option<AuditEntry>,
    ) -> Pending {
        let (done, wait) = oneshot::channel();
        self.permit.send(Control::Commit(Box::new(Commit {
            writes,
            live,
            audit,
            done,
        })));
        observe(&self.handle.depth.control, &self.handle.control);
        Pending(wait)
    }
}

/// Writes queued by [`Reservation::submit`], durable once [`Pending::wait`] returns `Ok`.
#[must_use = "the writes are not known to be durable until waited for"]
pub struct Pending(oneshot::Receiver<Result<(), CommitError>>);

impl Pending {
    /// Waits until the writes are durable.
    ///
    /// # Errors
    ///
    /// `Unavailable` if the writer stopped first, `Internal` (logged with the store's detail)
    /// if the commit failed.
    pub async fn wait(mut self) -> Result<(), ServerError> {
        self.settled().await
    }

    /// [`Pending::wait`] by reference, for a caller that selects on it among other things.
    ///
    /// # Errors
    ///
    /// As [`Pending::wait`]. Once it has returned, it returns `Unavailable`.
    ///
    /// # Cancellation
    ///
    /// Cancel safe: dropping the future before it returns loses nothing.
    pub async fn settled(&mut self) -> Result<(), ServerError> {
        match (&mut self.0).await {
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
        retry_delay: Duration::ZERO,
    };
    loop {
        if !writer.retry_delay.is_zero() {
            tokio::select! {
                () = tokio::time::sleep(writer.retry_delay) => {}
                () = shutdown.cancelled() => break,
            }
        }
        let mut batch = Batch::default();
        if !writer.state.has_retries() {
            let Some(first) = writer.next(shutdown.cancelled()).await else {
                break;
            };
            batch.add(first);
        }
        writer.fill(&mut batch, &shutdown).await;
        writer.commit(batch).await;
    }
    // Drain what is already queued so nothing accepted before shutdown is lost. A commit that
    // fails now is not retried: the server is stopping, and its log says what was lost.
    loop {
        let mut batch = Batch::default();
        while batch.len < writer.config.writer_max_batch {
            match writer.try_next() {
                Some(item) => batch.add(item),
                None => break,
            }
        }
        if batch.len == 0 && writer.queues.live.is_empty() && !writer.state.has_retries() {
            break;
        }
        if !writer.commit(batch).await {
            tracing::error!("writer stopped with writes it could not commit");
            break;
        }
    }
    tracing::debug!("writer stopped");
}

enum Item {
    Samples(SampleBatch),
    Control(Control),
    /// The live table turned non-empty.
    Live,
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
            Item::Control(Control::Commit(commit)) => commit.writes.len().max(1),
            Item::Control(Control::Audit(_)) => 1,
            Item::Live => 0,
        };
        match item {
            Item::Samples(s) => self.samples.push(s),
            Item::Control(c) => self.control.push(c),
            Item::Live => {}
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
    /// Wait before the next commit: zero after a success.
    retry_delay: Duration,
}

impl Writer {
    fn try_next(&mut self) -> Option<Item> {
        if let Ok(c) = self.queues.control.try_recv() {
            return Some(Item::Control(c));
        }
        self.queues.samples.try_recv().ok().map(Item::Samples)
    }

    /// Waits for the next item of either queue, or for live changes; `None` once `stop` is
    /// done (shutdown, or the linger deadline).
    async fn next(&mut self, stop: impl std::future::Future<Output = ()>) -> Option<Item> {
        tokio::select! {
            biased;
            c = self.queues.control.recv() => c.map(Item::Control),
            s = self.queues.samples.recv() => s.map(Item::Samples),
            () = self.queues.live.wake.notified() => Some(Item::Live),
            () = stop => None,
        }
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
            let stop = async {
                tokio::select! {
                    () = tokio::time::sleep_until(deadline) => {}
                    () = shutdown.cancelled() => {}
                }
            };
            match self.next(stop).await {
                Some(item) => batch.add(item),
                None => return,
            }
        }
    }

    /// Commits `batch` with the live changes waiting; returns whether it committed.
    async fn commit(&mut self, batch: Batch) -> bool {
        observe_receiver(&self.queues.depth.samples, &self.queues.samples);
        observe_receiver(&self.queues.depth.control, &self.queues.control);
        let live = self.queues.live.take();
        let committed = commit_batch(
            &mut self.state,
            &self.store,
            &self.registry,
            &self.metrics,
            &self.queues.live,
            batch,
            live,
            self.config.commit_stall_limit,
        )
        .await;
        observe_budget(
            &self.queues.depth.admitted,
            &self.queues.admission,
            self.queues.budget,
        );
        self.retry_delay = if committed {
            Duration::ZERO
        } else {
            (self.retry_delay * 2).clamp(FIRST_RETRY_DELAY, MAX_RETRY_DELAY)
        };
        committed
    }
}

/// Sets `gauge` to what `receiver`'s queue holds.
fn observe_receiver<T>(gauge: &Gauge, receiver: &mpsc::Receiver<T>) {
    gauge.set(i64::try_from(receiver.len()).unwrap_or(i64::MAX));
}
