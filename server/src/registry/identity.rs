//! The registry's side of machine identity: enrolling (a new agent or a take-over), deleting
//! (the in-memory tombstones that keep a deleted id from coming back), reclaim permissions,
//! the events of the `duplicate_hardware_id` and `identity_conflict` flags, and the check a
//! session makes when it replaces one of another agent process.
//!
//! The rules themselves are in `crate::identity`; this file applies them under the registry's
//! lock. Callers serialize identity changes with `IdentityLocks` (see `service/enroll.rs`).

use std::sync::Arc;
use std::time::SystemTime;

use tokio::time::Instant;

use super::{AgentView, Agents, Entry, EventKind, Registry};
use crate::domain::{AgentId, AgentRecord, AgentStatus, OrgId, StatusReason, SystemInfo};
use crate::identity::{
    ConflictPolicy, HardwareMate, Host, Replacement, conflict_detail, conflict_remedy,
};
use crate::session::{CloseReason, Session};

/// A session opened by [`Registry::open_session`].
#[derive(Debug)]
pub struct OpenedSession {
    pub session: Arc<Session>,
    /// Highest durable seq of the agent, for the `Welcome`.
    pub last_seq: u64,
    /// Set when this session replaced the one of a process that had replaced it.
    pub conflict: Option<SessionConflict>,
}

/// An identity conflict seen while opening a session.
#[derive(Clone, Debug, PartialEq)]
pub struct SessionConflict {
    /// The machines (or processes) involved.
    pub detail: String,
    /// What an operator should do about it.
    pub remedy: &'static str,
    /// Whether this conflict raised the agent's flag.
    pub first: bool,
    /// Whether to audit a conflict that was let in (at most once per
    /// `identity::AUDIT_INTERVAL` per agent; every one is counted). Always `false` for a
    /// refusal: refusals are audited within the credential's refusal budget.
    pub audit: bool,
}

/// Why [`Registry::open_session`] opened nothing.
#[derive(Clone, Debug, PartialEq)]
pub enum OpenRefused {
    /// The agent is not in the org.
    Unknown,
    /// The newcomer keeps fighting another process for the session: refused.
    Conflict(SessionConflict),
}

// === impl Registry ===

impl Registry {
    /// The agents of `org` that report `hardware_id`, for the enrollment decision. None for
    /// an empty hardware id (it identifies nothing).
    pub fn hardware_mates(&self, org: &OrgId, hardware_id: &str) -> Vec<HardwareMate> {
        if hardware_id.is_empty() {
            return Vec::new();
        }
        let inner = self.read();
        let (Some(agents), Some(same)) = (
            inner.orgs.get(org),
            inner.hardware.get(&(org.clone(), hardware_id.to_owned())),
        ) else {
            return Vec::new();
        };
        same.iter()
            .filter_map(|id| agents.get(id))
            .map(|entry| HardwareMate {
                id: entry.record().id.clone(),
                connected: entry.session.is_some(),
                reclaim_until: entry.record().reclaim_until,
            })
            .collect()
    }

    /// Whether some agent of `org` reports `hardware_id` (an enrollment with it is a
    /// re-enrollment, which is rate-limited).
    pub fn knows_hardware(&self, org: &OrgId, hardware_id: &str) -> bool {
        !hardware_id.is_empty()
            && self
                .read()
                .hardware
                .contains_key(&(org.clone(), hardware_id.to_owned()))
    }

    /// Whether `agent` of `org` was deleted.
    pub fn is_deleted(&self, org: &OrgId, agent: &AgentId) -> bool {
        self.read().deleted.contains(&(org.clone(), agent.clone()))
    }

    /// Number of agents enrolled in `org`.
    pub fn n_agents(&self, org: &OrgId) -> usize {
        self.read().orgs.get(org).map_or(0, Agents::len)
    }

    /// Inserts a newly enrolled agent, or applies a take-over of an existing one, after the
    /// enrollment was made durable. A take-over ends the agent's live session with
    /// `Goodbye(REVOKED)` (it used a credential that no longer exists), clears its identity
    /// conflict (the shared credential is gone) and queues the record again, so that it is the
    /// last one written whatever a concurrent `Hello` queued. Returns `false`, changing
    /// nothing, for a deleted agent (callers hold its identity lock, so this is a bug).
    pub fn enrolled(&self, record: AgentRecord) -> bool {
        let now = self.clock.now();
        let mut inner = self.write();
        let org = record.org.clone();
        let id = record.id.clone();
        if inner.deleted.contains(&(org.clone(), id.clone())) {
            tracing::error!(agent = %id, %org, "refusing to bring back a deleted agent");
            return false;
        }
        let agents = inner.orgs.entry(org.clone()).or_default();
        let mut flipped = Vec::new();
        let mut events = Vec::new();
        let mut went_offline = false;
        let old_hardware = match agents.get_mut(&id) {
            Some(entry) => {
                if entry.record().labels != record.labels {
                    events.push(EventKind::LabelsChanged);
                }
                if entry.identity.take().is_some_and(|w| w.is_flagged()) {
                    flipped.push(id.clone());
                }
                let old = entry.record().system_info.hardware_id.clone();
                let session = entry.session.take();
                if let Some(session) = &session {
                    entry.last_seen = Some(session.last_seen());
                    went_offline = entry.status() != AgentStatus::Offline;
                }
                agents.set_record(&id, record.clone());
                self.writer.put_agent(record.clone());
                if let Some(session) = session {
                    self.metrics.sessions.dec();
                    session.close(CloseReason::Revoked);
                }
                Some(old)
            }
            None => {
                let entry = Entry::new(
                    Arc::new(record.clone()),
                    AgentStatus::Offline,
                    StatusReason::Enrolled,
                    now,
                    None,
                    &self.health,
                );
                agents.insert(entry);
                events.push(EventKind::Registered);
                None
            }
        };
        let new_hardware = &record.system_info.hardware_id;
        if let Some(old) = old_hardware.as_ref().filter(|old| *old != new_hardware) {
            flipped.extend(inner.index(&org, old, &id, false));
        }
        if old_hardware.as_ref() != Some(new_hardware) {
            flipped.extend(inner.index(&org, new_hardware, &id, true));
        }
        for kind in events {
            self.emit(&mut inner, &org, &id, kind, now);
        }
        let registered = old_hardware.is_none();
        flipped.sort();
        flipped.dedup();
        for mate in flipped.iter().filter(|m| !(registered && **m == id)) {
            self.emit(&mut inner, &org, mate, EventKind::FlagsChanged, now);
        }
        if went_offline {
            self.transition(
                &mut inner,
                &org,
                &id,
                AgentStatus::Offline,
                StatusReason::Enrolled,
                now,
            );
        }
        true
    }

    /// Removes a deleted agent: its live session ends with `Goodbye(REVOKED)`, watchers get
    /// `REMOVED`, and its id is remembered as deleted so that nothing brings it back. Returns
    /// the agent as it was, or `None` if it is not in `org`.
    pub fn remove(&self, org: &OrgId, agent: &AgentId) -> Option<AgentView> {
        let now = self.clock.now();
        let mut inner = self.write();
        let entry = inner.orgs.get(org)?.get(agent)?;
        let view = entry.view();
        if let Some(session) = &entry.session {
            session.close(CloseReason::Revoked);
        }
        // Emit while the entry still exists, so the event carries the agent.
        self.emit(&mut inner, org, agent, EventKind::Removed, now);
        inner.deleted.insert((org.clone(), agent.clone()));
        let mut flipped = Vec::new();
        if let Some(removed) = inner.orgs.get_mut(org).and_then(|a| a.remove(agent)) {
            if removed.session.is_some() {
                self.metrics.sessions.dec();
            }
            let hardware = &removed.record().system_info.hardware_id;
            flipped = inner.index(org, hardware, agent, false);
        }
        for mate in flipped.iter().filter(|m| *m != agent) {
            self.emit(&mut inner, org, mate, EventKind::FlagsChanged, now);
        }
        Some(view)
    }

    /// Puts back an agent [`Registry::remove`] took out, when its deletion could not be made
    /// durable: offline (its session was ended), with its durable progress and latest sample.
    pub fn restore(&self, view: AgentView) {
        let now = self.clock.now();
        let mut inner = self.write();
        let org = view.record.org.clone();
        let id = view.record.id.clone();
        inner.deleted.remove(&(org.clone(), id.clone()));
        let hardware = view.record.system_info.hardware_id.clone();
        let mut entry = Entry::new(
            view.record,
            view.status,
            view.reason,
            view.since,
            view.latest,
            &self.health,
        );
        entry.last_seen = view.last_seen;
        entry.last_seq = view.last_seq;
        let was = entry.status();
        inner.orgs.entry(org.clone()).or_default().insert(entry);
        let flipped = inner.index(&org, &hardware, &id, true);
        self.emit(&mut inner, &org, &id, EventKind::Registered, now);
        for mate in flipped.iter().filter(|m| **m != id) {
            self.emit(&mut inner, &org, mate, EventKind::FlagsChanged, now);
        }
        if matches!(was, AgentStatus::Online | AgentStatus::Stale) {
            self.transition(
                &mut inner,
                &org,
                &id,
                AgentStatus::Offline,
                StatusReason::StreamClosed,
                now,
            );
        }
    }

    /// Sets (or with `None` clears) the admin's reclaim permission of `agent` and, still under
    /// the registry's lock, hands the updated record to `queue` (which queues its write, so
    /// that no older copy of the record can be written after it). `None` if the agent is not
    /// in `org`.
    pub fn set_reclaim<R>(
        &self,
        org: &OrgId,
        agent: &AgentId,
        until: Option<SystemTime>,
        queue: impl FnOnce(&AgentRecord) -> R,
    ) -> Option<R> {
        let mut inner = self.write();
        let agents = inner.orgs.get_mut(org)?;
        let mut record = AgentRecord::clone(agents.get(agent)?.record());
        record.reclaim_until = until;
        let entry = agents.set_record(agent, record)?;
        Some(queue(entry.record()))
    }

    /// Forgets what the identity watches of `due` agents hold beyond the conflict window at
    /// `now`; an agent whose flag clears gets a `FLAGS_CHANGED` event.
    pub(super) fn expire_identity_conflicts(
        &self,
        due: Vec<(OrgId, AgentId)>,
        now: Instant,
        wall: SystemTime,
    ) {
        if due.is_empty() {
            return;
        }
        let mut inner = self.write();
        for (org, id) in due {
            let Some(entry) = inner.orgs.get_mut(&org).and_then(|a| a.get_mut(&id)) else {
                continue;
            };
            let Some(watch) = entry.identity.as_mut() else {
                continue;
            };
            let cleared = watch.expire(now, &self.conflict);
            if watch.is_empty() {
                entry.identity = None;
            }
            if cleared {
                self.emit(&mut inner, &org, &id, EventKind::FlagsChanged, wall);
            }
        }
    }
}

// === impl Entry ===

impl Entry {
    /// Checks a new session of the process `instance_id` on the machine `info` against the
    /// live session, if another process holds it. See `identity::IdentityWatch`.
    pub(super) fn check_replacement(
        &mut self,
        instance_id: &str,
        info: &SystemInfo,
        policy: &ConflictPolicy,
    ) -> Result<Option<SessionConflict>, OpenRefused> {
        if self.session.is_none() {
            return Ok(None);
        }
        let old = Host::new(&self.instance_id, &self.record().system_info);
        let new = Host::new(instance_id, info);
        let (old_key, new_key) = (old.key(), new.key());
        if old_key == new_key {
            return Ok(None);
        }
        let now = Instant::now();
        let watch = self.identity.get_or_insert_with(Box::default);
        let replacement = watch.on_replace(old_key, new_key, now, policy);
        let (first, refused) = match replacement {
            Replacement::Ordinary => return Ok(None),
            Replacement::Conflict { first } => (first, false),
            Replacement::Refused => (false, true),
        };
        watch.detail = conflict_detail(&old, &new);
        let conflict = SessionConflict {
            detail: watch.detail.clone(),
            remedy: conflict_remedy(&old, &new),
            first,
            audit: !refused && watch.audit_due(now),
        };
        if refused {
            Err(OpenRefused::Conflict(conflict))
        } else {
            Ok(Some(conflict))
        }
    }

    /// Whether the identity watch holds something older than the window at `now`.
    pub(super) fn identity_due(&self, now: Instant, policy: &ConflictPolicy) -> bool {
        self.identity
            .as_ref()
            .is_some_and(|watch| watch.needs_expiry(now, policy))
    }
}
