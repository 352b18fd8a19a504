//! The event feed: every change the registry makes, numbered by a server-wide revision and
//! queued to the watchers of the agent's org, and the snapshot a watch starts from, read in
//! pages.
//!
//! **Per org, per watcher, bounded.** Each org with watchers has a [`Feed`]; each watcher has its
//! own queue, bounded in events and in bytes ([`WatchLimits`]). [`Registry::emit`] (called with
//! the write lock held, so revision order is event order) builds an event only if some watcher
//! of that org wants it, and shares it between them (`Arc`). A watcher whose queue would go over
//! its bound is taken out of the feed at once, its queue freed, and its stream ends with
//! `ABORTED` ([`Lagged`]): nobody else waits for it, and another org's load never reaches it.
//! Whether metrics events are built at all is decided per org too.
//!
//! **The snapshot is read lazily, in pages, by agent id.** A page is read under the read lock
//! (at most [`PAGE_AGENTS`] agents and [`PAGE_BYTES`] bytes, scanning at most [`PAGE_SCAN`]
//! entries) and the lock is released between pages, so a watch never copies its org at once
//! and a watcher that stops reading holds one page. Consistency comes from the cursor: while
//! the snapshot is read, the watcher's queue takes only events of agents at or before the last
//! id read; an event of a later agent is skipped, because the page that reads that agent (later,
//! under the read lock) already shows it. Queued events are delivered before the next page is
//! read. So the stream is ordered by revision, and when `SYNCED` arrives (with the revision of
//! the last page), the snapshot plus the events before it are exactly the state at that
//! revision. (Copying cheap `Arc`s of every entry instead, as kube-rs' reflector store does,
//! would let a watcher that never reads pin a whole old copy of its org once the agents change.)

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use tokio::sync::Notify;

use super::{AgentFilter, AgentView, Inner, Registry};
use crate::config::Limits;
use crate::domain::{AgentId, AgentRecord, AgentStatus, OrgId, TokenId};

/// Most agents in one snapshot page.
pub const PAGE_AGENTS: usize = 100;
/// Most bytes (see `registry/size.rs`) in one snapshot page; a page always holds at least one
/// agent.
pub const PAGE_BYTES: usize = 64 * 1024;
/// Most registry entries one page read scans (matching or not), so that a selective watch of
/// a large org also releases the lock often.
pub const PAGE_SCAN: usize = 4096;

/// What happened to an agent, as sent to watchers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Registered,
    StatusChanged {
        previous: AgentStatus,
    },
    MetricsUpdated,
    LabelsChanged,
    Removed,
    /// `duplicate_hardware_id` or `identity_conflict` changed.
    FlagsChanged,
}

/// One change, numbered by `revision` (server-wide, increasing).
#[derive(Clone, Debug)]
pub struct FleetEvent {
    pub revision: u64,
    pub org: OrgId,
    pub kind: EventKind,
    pub time: SystemTime,
    pub agent: AgentView,
}

/// The bounds of watches (see `config::Limits`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WatchLimits {
    pub max_per_token: usize,
    pub max_per_org: usize,
    /// Events one watcher may have queued.
    pub buffer_events: usize,
    /// Bytes (see `registry/size.rs`) one watcher may have queued.
    pub buffer_bytes: usize,
}

/// What a watch yields, in this order: the snapshot's agents, `Synced`, then events. Events
/// of agents already sent may come between snapshot pages (see the module docs).
#[derive(Clone, Debug)]
pub enum WatchItem {
    /// One agent of the snapshot, as it was at `revision`.
    Snapshot {
        agent: Box<AgentView>,
        revision: u64,
    },
    /// The snapshot is complete: with the events before it, it is the state at `revision`.
    /// Every later event has a greater revision.
    Synced {
        revision: u64,
    },
    Event(Arc<FleetEvent>),
}

/// A watch refused at subscription.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WatchRefused {
    #[error("this token already has {max} watches open, the most allowed; close one first")]
    PerToken { max: usize },
    #[error("this org already has {max} watches open, the most allowed; close one first")]
    PerOrg { max: usize },
}

/// A watcher whose queue went over its bound: it was taken out of the feed and must
/// subscribe again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lagged {
    /// Events that were queued, and their bytes, when the bound was hit.
    pub events: usize,
    pub bytes: usize,
}

/// One watch: the snapshot still to send, and the watcher's place in its org's feed.
/// Dropping it leaves the feed.
pub struct Subscription {
    registry: Arc<Registry>,
    org: OrgId,
    token: TokenId,
    watcher: Arc<Watcher>,
    /// The current snapshot page, read at `page_revision`.
    page: VecDeque<AgentView>,
    page_revision: u64,
    /// Set once the last page was read: `SYNCED` follows that page.
    synced: Option<u64>,
}

/// The watchers of one org.
#[derive(Default)]
pub(super) struct Feed {
    /// Watchers that receive events; a lagged one is taken out at once.
    watchers: Vec<Arc<Watcher>>,
    /// How many of `watchers` want metrics events.
    n_metrics: usize,
    /// Open subscriptions (lagged ones included until dropped), per token and in all.
    by_token: HashMap<TokenId, usize>,
    n_open: usize,
}

/// A watcher's filter and queue, shared by its [`Subscription`] and its org's [`Feed`].
pub(super) struct Watcher {
    filter: AgentFilter,
    include_metrics: bool,
    queue: Mutex<Queue>,
    /// Woken when the queue gets an event or the watcher lagged.
    ready: Notify,
}

struct Queue {
    events: VecDeque<(Arc<FleetEvent>, usize)>,
    bytes: usize,
    phase: Phase,
    lagged: Option<Lagged>,
}

#[derive(Debug)]
enum Phase {
    /// Reading the snapshot; `after` is the last agent id read (`None`: nothing yet). Events of
    /// later agents are skipped: their page will show them.
    Snapshot { after: Option<AgentId> },
    /// The snapshot was read: every wanted event is queued.
    Live,
}

// === impl Registry ===

impl Registry {
    /// Subscribes `token` to the changes of `org`'s agents that match `filter` (the selector;
    /// status filters apply to the snapshot only), starting with a snapshot read in pages.
    ///
    /// # Errors
    ///
    /// [`WatchRefused`] when the token or the org already holds the most watches allowed.
    pub fn watch(
        self: &Arc<Self>,
        org: &OrgId,
        token: &TokenId,
        filter: AgentFilter,
        include_metrics: bool,
    ) -> Result<Subscription, WatchRefused> {
        let limits = self.watch_limits;
        let watcher = Arc::new(Watcher {
            filter,
            include_metrics,
            queue: Mutex::new(Queue {
                events: VecDeque::new(),
                bytes: 0,
                phase: Phase::Snapshot { after: None },
                lagged: None,
            }),
            ready: Notify::new(),
        });
        {
            let mut inner = self.write();
            let feed = inner.feeds.entry(org.clone()).or_default();
            let held = feed.by_token.get(token).copied().unwrap_or(0);
            if held >= limits.max_per_token {
                return Err(WatchRefused::PerToken {
                    max: limits.max_per_token,
                });
            }
            if feed.n_open >= limits.max_per_org {
                return Err(WatchRefused::PerOrg {
                    max: limits.max_per_org,
                });
            }
            *feed.by_token.entry(token.clone()).or_default() += 1;
            feed.n_open += 1;
            feed.n_metrics += usize::from(include_metrics);
            feed.watchers.push(watcher.clone());
        }
        Ok(Subscription {
            registry: self.clone(),
            org: org.clone(),
            token: token.clone(),
            watcher,
            page: VecDeque::new(),
            page_revision: 0,
            synced: None,
        })
    }

    /// Numbers a change of `agent` with the next revision and queues it to the watchers of
    /// `org` that want it. Called with the write lock held, so revision order is event order.
    pub(super) fn emit(
        &self,
        inner: &mut Inner,
        org: &OrgId,
        agent: &AgentId,
        kind: EventKind,
        now: SystemTime,
    ) {
        inner.revision += 1;
        if matches!(
            kind,
            EventKind::Registered | EventKind::LabelsChanged | EventKind::Removed
        ) {
            self.selection_epoch.fetch_add(1, Ordering::Release);
        }
        let Inner {
            orgs,
            feeds,
            revision,
            ..
        } = inner;
        let Some(feed) = feeds.get_mut(org) else {
            return;
        };
        let Some(entry) = orgs.get(org).and_then(|a| a.get(agent)) else {
            return;
        };
        let mut event: Option<(Arc<FleetEvent>, usize)> = None;
        let mut any_lagged = false;
        for watcher in &feed.watchers {
            let mut queue = watcher.lock();
            if !watcher.wants(&queue, kind, entry.record()) {
                continue;
            }
            let (event, bytes) = event.get_or_insert_with(|| {
                let agent = entry.view();
                let bytes = entry.size_bytes() + std::mem::size_of::<FleetEvent>();
                let event = FleetEvent {
                    revision: *revision,
                    org: org.clone(),
                    kind,
                    time: now,
                    agent,
                };
                (Arc::new(event), bytes)
            });
            any_lagged |= !queue.push(event, *bytes, &self.watch_limits);
            drop(queue);
            watcher.ready.notify_one();
        }
        if any_lagged {
            feed.remove_lagged();
        }
    }

    /// Reads the next snapshot page of `sub` under the read lock, unless events are queued
    /// (they go first, to keep the stream in revision order).
    fn read_page(&self, sub: &mut Subscription) {
        let inner = self.read();
        let mut queue = sub.watcher.lock();
        if !queue.events.is_empty() || queue.lagged.is_some() {
            return;
        }
        let Phase::Snapshot { after } = &queue.phase else {
            return;
        };
        let mut last = after.clone();
        let mut complete = true;
        let mut bytes = 0;
        let agents = inner.orgs.get(&sub.org).into_iter();
        let range = agents.flat_map(|a| a.after(after.as_ref()));
        for (scanned, (id, entry)) in range.enumerate() {
            if scanned == PAGE_SCAN || sub.page.len() == PAGE_AGENTS {
                complete = false;
                break;
            }
            if entry.matches(&sub.watcher.filter) {
                let size = entry.size_bytes();
                if !sub.page.is_empty() && bytes + size > PAGE_BYTES {
                    complete = false;
                    break;
                }
                bytes += size;
                sub.page.push_back(entry.view());
            }
            last = Some(id.clone());
        }
        sub.page_revision = inner.revision;
        queue.phase = if complete {
            sub.synced = Some(inner.revision);
            Phase::Live
        } else {
            Phase::Snapshot { after: last }
        };
    }

    /// Takes a dropped subscription out of its org's feed.
    fn unsubscribe(&self, sub: &Subscription) {
        let mut inner = self.write();
        let Some(feed) = inner.feeds.get_mut(&sub.org) else {
            return;
        };
        if let Some(at) = feed
            .watchers
            .iter()
            .position(|w| Arc::ptr_eq(w, &sub.watcher))
        {
            feed.watchers.swap_remove(at);
            feed.n_metrics -= usize::from(sub.watcher.include_metrics);
        }
        if let Some(held) = feed.by_token.get_mut(&sub.token) {
            *held -= 1;
            if *held == 0 {
                feed.by_token.remove(&sub.token);
            }
        }
        feed.n_open -= 1;
        if feed.n_open == 0 {
            inner.feeds.remove(&sub.org);
        }
    }
}

// === impl Inner ===

impl Inner {
    /// Whether some watcher of `org` wants metrics events: without one, none are built.
    pub(super) fn wants_metrics(&self, org: &OrgId) -> bool {
        self.feeds.get(org).is_some_and(|feed| feed.n_metrics > 0)
    }
}

// === impl Subscription ===

impl Subscription {
    /// The next item of the watch, waiting for the next event once the snapshot is sent.
    ///
    /// # Errors
    ///
    /// [`Lagged`] once the watcher's queue went over its bound; the watch is over.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: it waits only while nothing is ready, and an item is taken from the queue
    /// only when it is returned.
    pub async fn next(&mut self) -> Result<WatchItem, Lagged> {
        loop {
            if let Some(agent) = self.page.pop_front() {
                return Ok(WatchItem::Snapshot {
                    agent: Box::new(agent),
                    revision: self.page_revision,
                });
            }
            if let Some(revision) = self.synced.take() {
                return Ok(WatchItem::Synced { revision });
            }
            let reading_snapshot = {
                let mut queue = self.watcher.lock();
                if let Some(lagged) = queue.lagged {
                    return Err(lagged);
                }
                if let Some((event, bytes)) = queue.events.pop_front() {
                    queue.bytes -= bytes;
                    return Ok(WatchItem::Event(event));
                }
                matches!(queue.phase, Phase::Snapshot { .. })
            };
            if reading_snapshot {
                let registry = self.registry.clone();
                registry.read_page(self);
            } else {
                self.watcher.ready.notified().await;
            }
        }
    }

    /// Events and bytes queued for this watcher right now.
    #[cfg(test)]
    fn queued(&self) -> (usize, usize) {
        let queue = self.watcher.lock();
        (queue.events.len(), queue.bytes)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.registry.clone().unsubscribe(self);
    }
}

// === impl Feed ===

impl Feed {
    fn remove_lagged(&mut self) {
        self.watchers.retain(|w| w.lock().lagged.is_none());
        self.n_metrics = self.watchers.iter().filter(|w| w.include_metrics).count();
    }
}

// === impl Watcher ===

impl super::Inner {
    /// Open watches, the events queued for them in all, and the most queued for one.
    pub(super) fn watch_census(&self) -> (u64, u64, u64) {
        let (mut open, mut queued, mut most) = (0u64, 0u64, 0u64);
        for feed in self.feeds.values() {
            open += feed.n_open as u64;
            for watcher in &feed.watchers {
                let n = watcher.lock().events.len() as u64;
                queued += n;
                most = most.max(n);
            }
        }
        (open, queued, most)
    }
}

impl Watcher {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // The queue is consistent after every statement; a panic elsewhere must not stop
        // the feed.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether this watcher takes an event of `kind` about `record` now.
    fn wants(&self, queue: &Queue, kind: EventKind, record: &AgentRecord) -> bool {
        if queue.lagged.is_some() {
            return false;
        }
        let sent = match &queue.phase {
            Phase::Live => true,
            Phase::Snapshot { after } => after.as_ref().is_some_and(|after| record.id <= *after),
        };
        sent && (kind != EventKind::MetricsUpdated || self.include_metrics)
            && (kind == EventKind::Removed || self.filter.selector.matches(&record.labels))
    }
}

impl Queue {
    /// Queues `event` of `bytes`, or marks the queue lagged (and frees it) if that would go
    /// over `limits`. Returns whether it was queued.
    fn push(&mut self, event: &Arc<FleetEvent>, bytes: usize, limits: &WatchLimits) -> bool {
        if self.events.len() >= limits.buffer_events || self.bytes + bytes > limits.buffer_bytes {
            self.lagged = Some(Lagged {
                events: self.events.len(),
                bytes: self.bytes,
            });
            self.events = VecDeque::new();
            self.bytes = 0;
            return false;
        }
        self.events.push_back((event.clone(), bytes));
        self.bytes += bytes;
        true
    }
}

// === impl WatchLimits ===

impl WatchLimits {
    pub fn from_config(limits: &Limits) -> Self {
        Self {
            max_per_token: limits.max_watches_per_token,
            max_per_org: limits.max_watches_per_org,
            buffer_events: limits.watch_buffer,
            buffer_bytes: limits.watch_buffer_bytes,
        }
    }
}

impl Default for WatchLimits {
    fn default() -> Self {
        Self::from_config(&Limits::default())
    }
}

#[cfg(test)]
mod tests;
