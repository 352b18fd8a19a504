//! Events: things that happen on this machine (a failed login, a crashed service, a disk
//! filling up), reported to the server and acknowledged after its durable write.
//!
//! [`Events`] is the agent's event subsystem, owned by the runner and shared with sessions:
//! every source appends to the spool through it, and the live session reads the spool and
//! applies the server's acks through it. It outlives sessions, so events are kept while
//! disconnected and across restarts.
//!
//! - [`types`]: [`Event`], [`Severity`] and the numbered [`SpooledEvent`];
//! - [`check`]: the contract's grammar and bounds, checked before anything is spooled;
//! - [`spool`]: the bounded, crash-safe on-disk spool that owns event seqs and keeps every
//!   event until the server acknowledges it; `record`: one record on disk; [`memory`]: the
//!   same contract in memory, for the fleet simulator's agents only;
//! - [`socket`]: the local socket programs report events through, and `emit`'s client;
//! - [`rate`]: the per-agent rate limit of socket events; [`builtin`]: the agent's own
//!   events (started, stopped, usage thresholds); [`config`]: their settings.
//!
//! **Invariant:** the spool's I/O runs only on blocking threads (`spawn_blocking`): it fsyncs,
//! and the agent's runtime has one thread. Acks and `Welcome` only update the spool's memory
//! (the file deletions they allow happen at the next append, read or close).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::collector::Sample;
use crate::{AgentError, AgentStats};

pub mod builtin;
pub mod check;
pub mod config;
pub mod memory;
pub mod rate;
mod record;
pub mod socket;
pub mod spool;
pub mod types;

pub use self::config::EventsConfig;
pub use self::memory::{MemoryCounts, MemoryQueue};
pub use self::socket::{EmitError, EmitRequest, emit};
pub use self::spool::{Appended, Spool, SpoolError};
pub use self::types::{Event, Severity, SpooledEvent};

/// Most events in one `EventReport` (the contract's bound).
pub const MAX_EVENTS_PER_REPORT: usize = tether_proto::event::MAX_EVENTS_PER_REPORT;
/// About the most bytes of events in one `EventReport`, far below the server's message limit.
pub const MAX_REPORT_BYTES: u64 = 1 << 20;

/// The event subsystem: the spool, the rate limit and the built-in thresholds. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Events {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    /// Signalled after each append and ack: the live session reads the spool again.
    ready: Notify,
    limiter: Mutex<rate::RateLimiter>,
    /// Signalled when the rate limit drops an event: a report will be due.
    rate_limited: Notify,
    thresholds: Mutex<builtin::Thresholds>,
    stats: Arc<AgentStats>,
    /// Set once `tether.agent_stopped` was recorded.
    stopped: AtomicBool,
}

/// Where the events wait for their ack.
#[expect(
    clippy::large_enum_variant,
    reason = "one per agent: boxing the spool would cost the agent an allocation to save the \
              simulator a few hundred bytes per simulated agent"
)]
enum Store {
    /// The agent's spool; locked only on blocking threads.
    Disk(Mutex<Spool>),
    /// The simulator's queue: no I/O, so used in place.
    Memory(Mutex<MemoryQueue>),
}

// === impl Events ===

impl Events {
    /// Opens the spool in `state_dir`.
    ///
    /// # Errors
    ///
    /// [`AgentError::StateIo`] when the spool cannot be opened or repaired.
    pub(crate) fn open(
        config: &EventsConfig,
        state_dir: &std::path::Path,
        stats: Arc<AgentStats>,
    ) -> Result<Self, AgentError> {
        let spool =
            Spool::open(state_dir, config.spool_bytes).map_err(|err| AgentError::StateIo {
                path: err.path,
                source: err.source,
            })?;
        stats.set_events(spool.pending(), spool.bytes());
        Ok(Self::with_store(
            config,
            Store::Disk(Mutex::new(spool)),
            stats,
            false,
        ))
    }

    /// The fleet simulator's event subsystem: a [`MemoryQueue`] of at most `capacity` events,
    /// and no built-in events (a simulated agent's stop would add one event per agent at
    /// every stop of the simulator, all at once).
    pub(crate) fn in_memory(capacity: usize, stats: Arc<AgentStats>) -> Self {
        let store = Store::Memory(Mutex::new(MemoryQueue::new(capacity)));
        Self::with_store(&EventsConfig::default(), store, stats, true)
    }

    fn with_store(
        config: &EventsConfig,
        store: Store,
        stats: Arc<AgentStats>,
        stopped: bool,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                ready: Notify::new(),
                limiter: Mutex::new(rate::RateLimiter::new(
                    config.rate_limit,
                    config.rate_window,
                    Instant::now(),
                )),
                rate_limited: Notify::new(),
                thresholds: Mutex::new(builtin::Thresholds::new(config)),
                stats,
                stopped: AtomicBool::new(stopped),
            }),
        }
    }

    /// The counts of the simulator's queue; `None` for the agent's spool.
    pub(crate) fn memory_counts(&self) -> Option<MemoryCounts> {
        match &self.inner.store {
            Store::Disk(_) => None,
            Store::Memory(queue) => Some(lock(queue).counts()),
        }
    }

    /// Signalled when there may be events to send.
    pub(crate) fn ready(&self) -> &Notify {
        &self.inner.ready
    }

    /// Appends one of the agent's own events (not rate limited).
    ///
    /// # Errors
    ///
    /// [`SpoolError`] when the disk refused it.
    pub(crate) async fn record(&self, event: Event) -> Result<Appended, SpoolError> {
        let appended = match &self.inner.store {
            Store::Disk(_) => {
                let inner = self.inner.clone();
                tokio::task::spawn_blocking(move || inner.append(&event))
                    .await
                    .map_err(join_error)??
            }
            Store::Memory(queue) => {
                let mut queue = lock(queue);
                let appended = queue.append(event);
                match appended {
                    Appended::Stored(_) => self.inner.stats.event_spooled(),
                    Appended::Dropped => self.inner.stats.add_events_dropped(1),
                }
                self.inner.stats.set_events(queue.pending(), 0);
                appended
            }
        };
        self.inner.ready.notify_one();
        Ok(appended)
    }

    /// Appends an event from the socket: rate limited, and answered with its seq.
    ///
    /// # Errors
    ///
    /// [`socket::EmitError::Exhausted`] when the rate limit or a spool full of more severe
    /// events dropped it (counted), [`socket::EmitError::Unavailable`] when the disk refused.
    pub(crate) async fn submit(&self, event: Event) -> Result<u64, EmitError> {
        let (admitted, report) = lock(&self.inner.limiter).admit(Instant::now());
        if let Some(report) = report {
            self.record_logged(report).await;
        }
        if !admitted {
            self.inner.stats.event_rate_limited();
            self.inner.rate_limited.notify_one();
            return Err(EmitError::Exhausted(
                "over the agent's event rate limit; dropped and counted (reported as \
                 tether.rate_limited)"
                    .into(),
            ));
        }
        match self.record(event).await {
            Ok(Appended::Stored(seq)) => Ok(seq),
            Ok(Appended::Dropped) => Err(EmitError::Exhausted(
                "the event spool is full of more severe events; dropped and counted (reported \
                 as tether.events_dropped)"
                    .into(),
            )),
            Err(err) => {
                warn!("failed to spool an event: {err}");
                Err(EmitError::Unavailable(format!(
                    "the agent cannot store events: {err}"
                )))
            }
        }
    }

    /// Appends `event`, logging a failure instead of returning it (built-in events).
    pub(crate) async fn record_logged(&self, event: Event) {
        let kind = event.kind.clone();
        if let Err(err) = self.record(event).await {
            warn!(kind, "failed to spool an event: {err}");
        }
    }

    /// Waits until the rate limit's window with drops ends and records its report. Never
    /// returns: it runs beside the socket and stops when dropped.
    pub(crate) async fn report_rate_limits(&self) -> std::convert::Infallible {
        loop {
            let due = lock(&self.inner.limiter).report_due();
            match due {
                Some(due) => tokio::time::sleep_until(due).await,
                None => {
                    self.inner.rate_limited.notified().await;
                    continue;
                }
            }
            let report = lock(&self.inner.limiter).roll(Instant::now());
            if let Some(report) = report {
                self.record_logged(report).await;
            }
        }
    }

    /// Judges a new sample against the built-in thresholds and records what it raises or
    /// clears.
    pub(crate) async fn observe(&self, sample: &Sample) {
        let raised = lock(&self.inner.thresholds).observe(sample, Instant::now());
        for event in raised {
            info!(kind = %event.kind, "{}", event.message);
            self.record_logged(event).await;
        }
    }

    /// Records `tether.agent_stopped` once.
    pub(crate) async fn stopping(&self, reason: &str) {
        if !self.inner.stopped.swap(true, Ordering::SeqCst) {
            self.record_logged(builtin::stopped(reason)).await;
        }
    }

    /// Up to [`MAX_EVENTS_PER_REPORT`] events after seq `after` (and after every ack).
    ///
    /// # Errors
    ///
    /// [`SpoolError`] when a segment cannot be read.
    pub(crate) async fn read(&self, after: u64) -> Result<Vec<SpooledEvent>, SpoolError> {
        match &self.inner.store {
            Store::Disk(_) => {
                let inner = self.inner.clone();
                tokio::task::spawn_blocking(move || {
                    inner
                        .spool()
                        .read(after, MAX_EVENTS_PER_REPORT, MAX_REPORT_BYTES)
                })
                .await
                .map_err(join_error)?
            }
            Store::Memory(queue) => {
                Ok(lock(queue).read(after, MAX_EVENTS_PER_REPORT, MAX_REPORT_BYTES))
            }
        }
    }

    /// Applies an `EventAck`. Cheap: the files it frees are deleted by the next append, read
    /// or [`Events::close`].
    pub(crate) fn ack(&self, durable_seq: u64) {
        match &self.inner.store {
            Store::Disk(spool) => {
                let mut spool = lock(spool);
                spool.ack(durable_seq);
                self.inner.stats.set_events(spool.pending(), spool.bytes());
            }
            Store::Memory(queue) => {
                let mut queue = lock(queue);
                queue.ack(durable_seq);
                self.inner.stats.set_events(queue.pending(), 0);
            }
        }
        self.inner.stats.events_acked(durable_seq);
    }

    /// Applies `Welcome.last_durable_event_seq`.
    pub(crate) fn resume_after(&self, last_durable_seq: u64) {
        match &self.inner.store {
            Store::Disk(spool) => lock(spool).resume_after(last_durable_seq),
            Store::Memory(queue) => lock(queue).resume_after(last_durable_seq),
        }
        self.inner.stats.events_acked(last_durable_seq);
    }

    /// Writes the spool's state down (the agent is stopping); nothing to write for the
    /// simulator's queue.
    pub(crate) async fn close(&self) {
        if let Store::Memory(_) = self.inner.store {
            return;
        }
        let inner = self.inner.clone();
        let closed = tokio::task::spawn_blocking(move || inner.spool().close()).await;
        match closed {
            Ok(Ok(())) => {}
            Ok(Err(err)) => warn!("failed to close the event spool: {err}"),
            Err(err) => warn!("failed to close the event spool: {err}"),
        }
    }
}

// === impl Inner ===

impl Inner {
    /// The agent's spool.
    ///
    /// # Panics
    ///
    /// For the simulator's queue: only the [`Store::Disk`] paths of [`Events`] call it.
    fn spool(&self) -> MutexGuard<'_, Spool> {
        match &self.store {
            Store::Disk(spool) => lock(spool),
            Store::Memory(_) => unreachable!("only the agent's spool is read on blocking threads"),
        }
    }

    fn append(&self, event: &Event) -> Result<Appended, SpoolError> {
        let mut spool = self.spool();
        let dropped_before: u64 = spool.dropped().iter().sum();
        let appended = spool.append(event)?;
        let dropped: u64 = spool.dropped().iter().sum();
        if dropped > dropped_before {
            warn!(
                dropped = dropped - dropped_before,
                spool_bytes = spool.capacity(),
                "event spool full: dropped unsent events, the lowest severity first"
            );
            self.stats.add_events_dropped(dropped - dropped_before);
        }
        if let Appended::Stored(_) = appended {
            self.stats.event_spooled();
        }
        self.stats.set_events(spool.pending(), spool.bytes());
        Ok(appended)
    }
}

/// A blocking task that did not finish, as a spool error.
fn join_error(err: tokio::task::JoinError) -> SpoolError {
    SpoolError {
        path: "events".into(),
        source: std::io::Error::other(err.to_string()),
    }
}

/// Locks `mutex`; a poisoned lock still holds consistent data (every update is one call).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests;
