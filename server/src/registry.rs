//! The in-memory view of the fleet: every agent's facts and live state, the live sessions, and
//! the event feed watchers subscribe to.
//!
//! The registry is the only writer of live state. Sessions report open/activity/close, the
//! liveness pass reports silence and expiry, the writer reports committed samples; each change is
//! applied under one short write lock, numbered with a revision, handed to the writer (its live
//! table, which keeps each agent's changes in order and never makes the registry wait), and
//! queued to the watchers of its org, all while the lock is held so that revision order, store
//! order and event order agree for each agent. Queries take the read lock and copy out
//! [`AgentView`]s (sharing the record and the latest sample, see `registry/table.rs`), within
//! a byte budget where they copy many; filters and the fleet summary are answered from an index
//! and counts kept with the agents of each org (`registry/index.rs`), not from a pass over them.
//!
//! Nothing here awaits while holding a lock. Identity changes (enrollment, deletion and the
//! tombstones that keep a deleted id from coming back, reclaim permissions, the identity
//! conflict check of a replacing session) are in `registry/identity.rs`.
//! Sessions (opening, activity, close, the drain at shutdown) are in `registry/sessions.rs`.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, SystemTime};

use crate::config::{HealthThresholds, LivenessConfig};
use crate::domain::{
    AgentId, AgentRecord, AgentStatus, Health, LiveRecord, OrgId, Sample, SessionId, StatusReason,
    Transition,
};
use crate::identity::{ConflictPolicy, IdentityWatch};
use crate::liveness;
use crate::metrics::{Metrics, TransitionLabels};
use crate::session::{CloseReason, Session};
use crate::writer::WriterHandle;

mod alerts;
mod census;
mod identity;
mod index;
mod query;
mod sessions;
mod size;
mod table;
mod watch;

pub use self::alerts::Candidate;
pub use self::census::{Census, STATUSES};
use self::table::{Agents, Facts};

pub use self::identity::{OpenRefused, OpenedSession, SessionConflict};
pub use self::query::{AgentFilter, AgentListQuery, Page, Summary, Target};
#[cfg(test)]
pub(crate) use self::size::agent_bytes;
pub use self::watch::{
    EventKind, FleetEvent, Lagged, Subscription, WatchItem, WatchLimits, WatchRefused,
};

/// A copy of one agent's state, taken under the read lock. The record and the latest sample are
/// shared with the registry, which replaces them rather than changing them.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentView {
    pub record: Arc<AgentRecord>,
    pub status: AgentStatus,
    pub reason: StatusReason,
    pub since: SystemTime,
    pub last_seen: Option<SystemTime>,
    pub session: Option<SessionId>,
    pub latest: Option<Arc<Sample>>,
    pub last_seq: u64,
    pub health: Health,
    pub duplicate_hardware_id: bool,
    /// What the identity conflict is about; `None` when the agent is not flagged.
    pub identity_conflict: Option<String>,
}

/// Registry entries one read of the liveness pass scans before it releases the read lock.
pub const LIVENESS_SCAN_CHUNK: usize = 1024;
/// Agents the liveness pass or [`Registry::samples_committed`] changes under one write lock: a
/// burst (a fleet going silent at once, a large writer batch) holds the lock in short spells,
/// so that the queries waiting for it get in between.
pub const CHANGES_PER_LOCK: usize = 256;

pub struct Registry {
    inner: RwLock<Inner>,
    /// Where wall-clock times come from (status `since`, expiry).
    clock: Clock,
    watch_limits: WatchLimits,
    writer: WriterHandle,
    liveness: LivenessConfig,
    health: HealthThresholds,
    metrics: Arc<Metrics>,
    /// When sessions replacing each other are an identity conflict.
    conflict: ConflictPolicy,
    /// Bumped, under the write lock, whenever which agents a label selector selects may have
    /// changed (labels changed, an agent registered or removed), so that selector matches
    /// can be cached until it moves.
    selection_epoch: AtomicU64,
}

/// The registry's wall clock: the system's, or in unit tests one that follows tokio's (paused)
/// clock, so that a test can drive the liveness pass through a fleet TTL in an instant. Silence
/// is measured on tokio's monotonic clock either way (see `Session`).
#[derive(Clone, Copy, Debug)]
enum Clock {
    System,
    #[cfg(test)]
    FollowsTokio {
        origin: tokio::time::Instant,
        wall: SystemTime,
    },
}

impl Clock {
    fn now(self) -> SystemTime {
        match self {
            Self::System => SystemTime::now(),
            #[cfg(test)]
            Self::FollowsTokio { origin, wall } => wall + origin.elapsed(),
        }
    }
}

struct Inner {
    orgs: HashMap<OrgId, Agents>,
    /// Agents by (org, hardware id), so enrollment and the duplicate flag cost one lookup
    /// instead of a pass over the org.
    hardware: HashMap<(OrgId, String), BTreeSet<AgentId>>,
    /// The watchers of each org that has some.
    feeds: HashMap<OrgId, watch::Feed>,
    /// Deleted agents (tombstones): an id here is never inserted again.
    deleted: HashSet<(OrgId, AgentId)>,
    revision: u64,
}

struct Entry {
    /// Record, status and latest sample: what the org's index follows, changed only through
    /// [`Agents`] (see `registry/table.rs`).
    facts: Facts,
    reason: StatusReason,
    since: SystemTime,
    last_seen: Option<SystemTime>,
    session: Option<Arc<Session>>,
    last_seq: u64,
    duplicate_hardware_id: bool,
    /// Instance id of the agent process holding the live session (empty if it sent none).
    instance_id: Box<str>,
    /// Processes that recently lost this agent's session to another one, and the conflicts
    /// seen; `None` for almost every agent.
    identity: Option<Box<IdentityWatch>>,
}

// === impl Registry ===

impl Registry {
    /// Builds the registry from the stored agents. Agents stored as online or stale were cut off
    /// by the restart: they start offline (reason `server_restart`, last seen preserved), and the
    /// transition is persisted.
    pub fn new(
        stored: Vec<(AgentRecord, Option<LiveRecord>)>,
        writer: WriterHandle,
        liveness: LivenessConfig,
        health: HealthThresholds,
        watch_limits: WatchLimits,
        metrics: Arc<Metrics>,
    ) -> Self {
        let now = SystemTime::now();
        let mut orgs: HashMap<OrgId, Agents> = HashMap::new();
        for (record, live) in stored {
            let live = live.unwrap_or(LiveRecord {
                status: AgentStatus::Offline,
                reason: StatusReason::Enrolled,
                since: record.enrolled_at,
                last_seen: None,
                last_seq: 0,
            });
            let cut_off = matches!(live.status, AgentStatus::Online | AgentStatus::Stale);
            let (status, reason, since) = if cut_off {
                (AgentStatus::Offline, StatusReason::ServerRestart, now)
            } else {
                (live.status, live.reason, live.since)
            };
            let mut entry = Entry::new(Arc::new(record), status, reason, since, None, &health);
            entry.last_seen = live.last_seen;
            entry.last_seq = live.last_seq;
            let record = entry.record().clone();
            if cut_off {
                writer.transition(
                    Transition {
                        org: record.org.clone(),
                        agent: record.id.clone(),
                        time: now,
                        from: live.status,
                        to: AgentStatus::Offline,
                        reason: StatusReason::ServerRestart,
                    },
                    entry.last_seen,
                );
            }
            orgs.entry(record.org.clone()).or_default().insert(entry);
        }
        let mut inner = Inner {
            orgs,
            hardware: HashMap::new(),
            feeds: HashMap::new(),
            deleted: HashSet::new(),
            revision: 0,
        };
        let ids: Vec<(OrgId, AgentId, String)> = inner
            .orgs
            .iter()
            .flat_map(|(org, agents)| {
                agents.values().map(|e| {
                    (
                        org.clone(),
                        e.record().id.clone(),
                        e.record().system_info.hardware_id.clone(),
                    )
                })
            })
            .collect();
        for (org, id, hw) in ids {
            inner.index(&org, &hw, &id, true);
        }
        Self {
            inner: RwLock::new(inner),
            clock: Clock::System,
            watch_limits,
            writer,
            liveness,
            health,
            metrics,
            conflict: ConflictPolicy {
                window: crate::config::DEFAULT_IDENTITY_CONFLICT_WINDOW,
                max_replacements: crate::config::DEFAULT_IDENTITY_CONFLICT_REPLACEMENTS,
            },
            selection_epoch: AtomicU64::new(0),
        }
    }

    /// Sets the identity rules: the deleted agents (which never come back) and when sessions
    /// replacing each other count as a conflict.
    #[must_use]
    pub fn with_identity(
        mut self,
        tombstones: impl IntoIterator<Item = (OrgId, AgentId)>,
        conflict: ConflictPolicy,
    ) -> Self {
        self.conflict = conflict;
        let inner = self.inner.get_mut().unwrap_or_else(|e| e.into_inner());
        inner.deleted.extend(tombstones);
        self
    }

    pub fn liveness_config(&self) -> &LivenessConfig {
        &self.liveness
    }

    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        // A panic while holding the lock is a bug that already aborted its task; the data is
        // still consistent entry by entry, so keep serving rather than poisoning every caller.
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    // --- liveness ---

    /// One liveness pass over the fleet: silent sessions turn stale, then offline (their
    /// stream is ended); offline agents past the fleet TTL expire; identity conflicts older
    /// than their window are forgotten. Reads under the read lock, released every
    /// [`LIVENESS_SCAN_CHUNK`] agents, and takes the write lock only when something changes,
    /// for at most [`CHANGES_PER_LOCK`] agents at a time (each decided again under it), so a
    /// pass over a large fleet never holds back the writer, nor the queries queued behind it,
    /// for longer than one chunk. Returns how many transitions it made.
    pub fn liveness_pass(&self) -> usize {
        let now = tokio::time::Instant::now();
        let wall = self.clock.now();
        let mut due = Vec::new();
        let mut identity_due = Vec::new();
        let orgs: Vec<OrgId> = self.read().orgs.keys().cloned().collect();
        for org in orgs {
            let mut start = 0;
            loop {
                let inner = self.read();
                let Some(agents) = inner.orgs.get(&org) else {
                    break;
                };
                let mut chunk = agents.slots_from(start);
                for (_, entry) in chunk.by_ref().take(LIVENESS_SCAN_CHUNK) {
                    let silent = entry.session.as_ref().map(|s| s.silent_for(now));
                    let offline_for = wall.duration_since(entry.since).unwrap_or(Duration::ZERO);
                    let status = entry.status();
                    if liveness::decide(status, silent, offline_for, &self.liveness).is_some() {
                        due.push((org.clone(), entry.record().id.clone()));
                    }
                    if entry.identity_due(now, &self.conflict) {
                        identity_due.push((org.clone(), entry.record().id.clone()));
                    }
                }
                match chunk.next() {
                    Some((slot, _)) => start = slot,
                    None => break,
                }
            }
        }
        // Agents change in id order within an org, whatever their slots.
        due.sort_unstable();
        self.expire_identity_conflicts(identity_due, now, wall);
        let mut n = 0;
        for chunk in due.chunks(CHANGES_PER_LOCK) {
            let mut inner = self.write();
            for (org, id) in chunk {
                let Some(entry) = inner.orgs.get_mut(org).and_then(|a| a.get_mut(id)) else {
                    continue;
                };
                let silent = entry.session.as_ref().map(|s| s.silent_for(now));
                let offline_for = wall.duration_since(entry.since).unwrap_or(Duration::ZERO);
                let Some((to, reason)) =
                    liveness::decide(entry.status(), silent, offline_for, &self.liveness)
                else {
                    continue;
                };
                match to {
                    AgentStatus::Stale => {
                        if let Some(session) = &entry.session {
                            session.stale.store(true, Ordering::Release);
                        }
                    }
                    AgentStatus::Offline => {
                        // The session is kept until its stream really ends, so a late message
                        // from a half-open connection cannot resurrect it: the loop ends it now.
                        if let Some(session) = entry.session.take() {
                            self.metrics.sessions.dec();
                            entry.last_seen = entry.live_last_seen();
                            session.close(CloseReason::Silent);
                        }
                    }
                    AgentStatus::Online | AgentStatus::Expired => {}
                }
                self.transition(&mut inner, org, id, to, reason, wall);
                n += 1;
            }
        }
        n
    }

    // --- metrics ---

    /// Records samples the writer made durable: latest sample and durable seq per agent,
    /// [`CHANGES_PER_LOCK`] agents per write lock (a writer batch can hold thousands).
    pub fn samples_committed(&self, updates: Vec<(OrgId, AgentId, Sample, u64)>) {
        let now = self.clock.now();
        let mut updates = updates.into_iter().peekable();
        while updates.peek().is_some() {
            self.apply_samples(updates.by_ref().take(CHANGES_PER_LOCK), now);
        }
    }

    fn apply_samples(
        &self,
        updates: impl Iterator<Item = (OrgId, AgentId, Sample, u64)>,
        now: SystemTime,
    ) {
        let mut inner = self.write();
        for (org, agent, sample, last_seq) in updates {
            let want_events = inner.wants_metrics(&org);
            let Some(agents) = inner.orgs.get_mut(&org) else {
                continue;
            };
            if !agents.sample_committed(&agent, sample, last_seq, &self.health) {
                continue;
            }
            if want_events {
                self.emit(&mut inner, &org, &agent, EventKind::MetricsUpdated, now);
            }
        }
    }

    // --- internals ---

    fn transition(
        &self,
        inner: &mut Inner,
        org: &OrgId,
        agent: &AgentId,
        to: AgentStatus,
        reason: StatusReason,
        now: SystemTime,
    ) {
        let Some(agents) = inner.orgs.get_mut(org) else {
            return;
        };
        let Some(from) = agents.set_status(agent, to, reason, now) else {
            return;
        };
        self.metrics
            .transitions
            .get_or_create(&TransitionLabels {
                to: to.as_str(),
                reason: reason.as_str(),
            })
            .inc();
        let last_seen = agents.get(agent).and_then(Entry::live_last_seen);
        tracing::debug!(%agent, from = from.as_str(), to = to.as_str(), reason = reason.as_str(), "status changed");
        self.writer.transition(
            Transition {
                org: org.clone(),
                agent: agent.clone(),
                time: now,
                from,
                to,
                reason,
            },
            last_seen,
        );
        self.emit(
            inner,
            org,
            agent,
            EventKind::StatusChanged { previous: from },
            now,
        );
    }
}

// === impl Inner ===

impl Inner {
    /// Adds (`present`) or removes `agent` under `(org, hardware)` and refreshes the
    /// duplicate flag of every agent sharing that hardware id. Returns the agents whose flag
    /// changed (for their `FLAGS_CHANGED` events).
    fn index(
        &mut self,
        org: &OrgId,
        hardware: &str,
        agent: &AgentId,
        present: bool,
    ) -> Vec<AgentId> {
        if hardware.is_empty() {
            return Vec::new();
        }
        let key = (org.clone(), hardware.to_owned());
        let same = self.hardware.entry(key.clone()).or_default();
        if present {
            same.insert(agent.clone());
        } else {
            same.remove(agent);
        }
        let duplicate = same.len() > 1;
        let ids: Vec<AgentId> = same.iter().cloned().collect();
        if ids.is_empty() {
            self.hardware.remove(&key);
        }
        let mut flipped = Vec::new();
        if let Some(agents) = self.orgs.get_mut(org) {
            for id in ids {
                if let Some(entry) = agents.get_mut(&id)
                    && entry.duplicate_hardware_id != duplicate
                {
                    entry.duplicate_hardware_id = duplicate;
                    flipped.push(id);
                }
            }
            if let Some(entry) = agents.get_mut(agent).filter(|_| !present)
                && entry.duplicate_hardware_id
            {
                entry.duplicate_hardware_id = false;
                flipped.push(agent.clone());
            }
        }
        flipped
    }
}

// === impl Entry ===

impl Entry {
    fn new(
        record: Arc<AgentRecord>,
        status: AgentStatus,
        reason: StatusReason,
        since: SystemTime,
        latest: Option<Arc<Sample>>,
        thresholds: &HealthThresholds,
    ) -> Self {
        Self {
            facts: Facts::new(record, status, latest, thresholds),
            reason,
            since,
            last_seen: None,
            session: None,
            last_seq: 0,
            duplicate_hardware_id: false,
            instance_id: Box::default(),
            identity: None,
        }
    }

    fn record(&self) -> &Arc<AgentRecord> {
        self.facts.record()
    }

    fn status(&self) -> AgentStatus {
        self.facts.status()
    }

    /// An upper bound of this agent's size, in memory and on the wire (see `registry/size.rs`).
    fn size_bytes(&self) -> usize {
        size::agent_bytes(
            self.record(),
            self.facts.latest().map(Arc::as_ref),
            self.session.as_ref().map(|s| &s.id),
            self.identity_conflict(),
        )
    }

    /// Last inbound activity: from the live session if any, else the stored value.
    fn live_last_seen(&self) -> Option<SystemTime> {
        match &self.session {
            Some(session) => Some(session.last_seen()),
            None => self.last_seen,
        }
    }

    fn view(&self) -> AgentView {
        AgentView {
            record: self.record().clone(),
            status: self.status(),
            reason: self.reason,
            since: self.since,
            last_seen: self.live_last_seen(),
            session: self.session.as_ref().map(|s| s.id.clone()),
            latest: self.facts.latest().cloned(),
            last_seq: self.last_seq,
            health: self.facts.health(),
            duplicate_hardware_id: self.duplicate_hardware_id,
            identity_conflict: self.identity_conflict().map(str::to_owned),
        }
    }

    /// What the identity conflict is about, while the agent is flagged.
    fn identity_conflict(&self) -> Option<&str> {
        self.identity
            .as_ref()
            .filter(|watch| watch.is_flagged())
            .map(|watch| watch.detail.as_str())
    }
}

#[cfg(test)]
mod tests;
