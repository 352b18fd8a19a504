//! The registry's side of live sessions: opening one for a known agent (replacing the live
//! one, a replacement by another agent process first checked for an identity conflict), a
//! stale agent's activity, a stream's end, and the drain at shutdown.
//!
//! **Invariant:** an agent has at most one live session, and what a session reports after
//! another replaced it changes nothing (`lookup` matches the session's id).

use std::sync::Arc;

use super::{Agents, Entry, EventKind, Inner, OpenRefused, OpenedSession, Registry};
use crate::domain::{
    AgentId, AgentRecord, AgentStatus, Labels, OrgId, SessionId, StatusReason, SystemInfo,
};
use crate::session::{CloseReason, Session};

// === impl Registry ===

impl Registry {
    /// Opens a session for a known agent, replacing a live one if any. `instance_id` names the
    /// agent process (see [`crate::identity::Host::key`]): a replacement by another process is checked for an
    /// identity conflict first.
    ///
    /// # Errors
    ///
    /// [`OpenRefused::Unknown`] if the agent is not in `org`; [`OpenRefused::Conflict`] if
    /// the newcomer is a process whose session keeps being replaced by (and replacing) another
    /// one past the allowed number: the live session stays, nothing else changes.
    pub fn open_session(
        &self,
        org: &OrgId,
        agent: &AgentId,
        session_id: SessionId,
        system_info: SystemInfo,
        labels: Option<Labels>,
        instance_id: &str,
    ) -> Result<OpenedSession, OpenRefused> {
        let now = self.clock.now();
        let mut inner = self.write();
        let agents = inner.orgs.get_mut(org).ok_or(OpenRefused::Unknown)?;
        let entry = agents.get_mut(agent).ok_or(OpenRefused::Unknown)?;
        let conflict = entry.check_replacement(instance_id, &system_info, &self.conflict)?;
        let first_session = entry.last_seen.is_none() && entry.session.is_none();
        let session = Arc::new(Session::new(
            session_id,
            org.clone(),
            agent.clone(),
            entry.last_seq,
        ));
        session.touch();
        let replaced = entry.session.replace(session.clone());
        if replaced.is_none() {
            self.metrics.sessions.inc();
        }
        entry.instance_id = instance_id.into();
        entry.last_seen = Some(now);
        let last_seq = entry.last_seq;
        let previous = entry.status();

        let current = entry.record();
        let labels_changed = labels.as_ref().is_some_and(|l| *l != current.labels);
        let record_changed = labels_changed || system_info != current.system_info;
        let hardware_change =
            (current.system_info.hardware_id != system_info.hardware_id).then(|| {
                (
                    current.system_info.hardware_id.clone(),
                    system_info.hardware_id.clone(),
                )
            });
        if record_changed {
            let mut record = AgentRecord::clone(current);
            record.system_info = system_info;
            if let Some(labels) = labels {
                record.labels = labels;
            }
            agents.set_record(agent, record.clone());
            self.writer.put_agent(record);
        }

        let reason = if replaced.is_some() {
            StatusReason::Replaced
        } else if first_session {
            StatusReason::Connected
        } else {
            StatusReason::Reconnected
        };
        if let Some(old) = replaced {
            old.close(CloseReason::Replaced);
        }
        let mut flipped = Vec::new();
        if let Some((old, new)) = hardware_change {
            flipped.extend(inner.index(org, &old, agent, false));
            flipped.extend(inner.index(org, &new, agent, true));
        }
        if conflict.as_ref().is_some_and(|c| c.first) && !flipped.contains(agent) {
            flipped.push(agent.clone());
        }
        for id in flipped {
            self.emit(&mut inner, org, &id, EventKind::FlagsChanged, now);
        }
        if labels_changed {
            self.emit(&mut inner, org, agent, EventKind::LabelsChanged, now);
        }
        if previous != AgentStatus::Online {
            self.transition(&mut inner, org, agent, AgentStatus::Online, reason, now);
        }
        Ok(OpenedSession {
            session,
            last_seq,
            conflict,
        })
    }

    /// A stale agent's session delivered a message again.
    pub fn session_active(&self, session: &Session) {
        let now = self.clock.now();
        let mut inner = self.write();
        let Some(entry) = lookup(&mut inner, session) else {
            return;
        };
        if entry.status() == AgentStatus::Stale {
            self.transition(
                &mut inner,
                &session.org,
                &session.agent,
                AgentStatus::Online,
                StatusReason::Activity,
                now,
            );
        }
    }

    /// A session's stream ended. Ignored if a newer session already replaced it.
    pub fn session_closed(&self, session: &Session, reason: StatusReason) {
        let now = self.clock.now();
        let mut inner = self.write();
        let Some(entry) = lookup(&mut inner, session) else {
            return;
        };
        entry.last_seen = entry.live_last_seen();
        entry.session = None;
        self.metrics.sessions.dec();
        // A session ended by the server's own shutdown is recorded as what it is, with the
        // session's real last activity, before the writer stops.
        let reason = if session.close_reason() == CloseReason::Draining {
            StatusReason::ServerRestart
        } else {
            reason
        };
        if entry.status() != AgentStatus::Offline {
            self.transition(
                &mut inner,
                &session.org,
                &session.agent,
                AgentStatus::Offline,
                reason,
                now,
            );
        }
    }

    /// Ends every live session because the server shuts down: each is told to reconnect after
    /// its own delay, spread by the drain policy (`drain.rs`). Returns how many it ended.
    pub fn drain_sessions(&self) -> usize {
        let inner = self.read();
        let sessions: Vec<&Arc<Session>> = inner
            .orgs
            .values()
            .flat_map(Agents::values)
            .filter_map(|entry| entry.session.as_ref())
            .collect();
        let delays = self.liveness.drain.delays(sessions.len(), &mut rand::rng());
        for (session, delay) in sessions.iter().zip(delays) {
            session.drain(delay);
        }
        sessions.len()
    }
}

fn lookup<'a>(inner: &'a mut Inner, session: &Session) -> Option<&'a mut Entry> {
    let entry = inner.orgs.get_mut(&session.org)?.get_mut(&session.agent)?;
    match &entry.session {
        Some(current) if current.id == session.id => Some(entry),
        _ => None,
    }
}
