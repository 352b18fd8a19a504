//! The live fan-out of committed event changes, per org: what `WatchEvents` watchers follow once
//! they have read the stored change log through.
//!
//! The events task publishes each commit's changes here after the commit is durable, in cursor
//! order, each decoded once and shared (`Arc<EventRecord>`): the event as that change committed
//! it. Watchers join with their filter; the hub indexes them by what narrows them most (explicit
//! agent ids, else one `k=v` term of the label selector, else a minimum severity above the
//! lowest), and only watchers whose filter cannot be indexed are offered every change. A change
//! reaches the candidates its agent, its agent's current labels (from the registry, at publish
//! time) and its severity name; each candidate's whole filter is then checked, and a match is
//! queued for it. So the cost of a change follows the watchers it may concern, not all of them.
//!
//! **Invariants.** Only durable changes are published, in cursor order; the hub never blocks
//! and never waits on a watcher: each watcher has a bounded queue ([`QUEUE`]), and one whose
//! queue is full is detached (its queue ends after what it holds) and reads the store from its
//! last cursor instead (`watch_stream.rs`), costing no one else anything. An org's entry lives
//! while it has watchers; nothing here grows with the changes, only with the watchers.
//!
//! **Handoff.** [`Hub::join`] returns the org's last published cursor (`from`) with the queue:
//! every change after `from` will be queued (while the watcher stays joined) and every change up
//! to `from` is in the store. A watcher reads the store up to `from`, then its queue, skipping
//! any cursor it already has, so the switch from store to live has no gap and no duplicate.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use tether_proto::selector::{Requirement, Selector};
use tokio::sync::mpsc;

use super::Filter;
use super::keys::{Change, EventRecord, Severity};
use crate::domain::{AgentId, Labels, OrgId};
use crate::error::ServerError;
use crate::metrics::EventWatchCounters;
use crate::registry::Registry;

/// Most changes queued for one watcher before it is detached and reads the store instead.
pub const QUEUE: usize = 256;

/// One committed change, as published.
#[derive(Clone, Debug)]
pub struct Published {
    pub cursor: u64,
    pub change: Change,
    /// The event as this change committed it.
    pub event: Arc<EventRecord>,
}

/// What a watcher wants: the filter (its `agents` only the explicit ids) and the label selector
/// matched against each event's agent's labels when the change is published.
#[derive(Debug)]
pub struct Interest {
    pub filter: Filter,
    pub selector: Option<Selector>,
}

impl Interest {
    /// Whether the change's event matches, its agent holding `labels` (`None`: not in the
    /// registry, which no selector selects).
    pub fn matches(&self, event: &EventRecord, labels: Option<&Labels>) -> bool {
        self.filter.matches(event)
            && self
                .selector
                .as_ref()
                .is_none_or(|s| labels.is_some_and(|l| s.matches(l)))
    }

    /// The index entry that narrows this interest most.
    fn key(&self) -> Key {
        if let Some(agents) = &self.filter.agents {
            return Key::Agents(agents.iter().cloned().collect());
        }
        let equality = self.selector.iter().find_map(|s| {
            s.requirements.iter().find_map(|r| match r {
                Requirement::Equals(k, v) => Some((k.clone(), v.clone())),
                _ => None,
            })
        });
        if let Some((k, v)) = equality {
            return Key::Label(k, v);
        }
        match self.filter.min_severity {
            Some(min) if min > Severity::ALL[0] => Key::Severity(min),
            _ => Key::Scan,
        }
    }
}

/// The changes of every org, fanned out to the watchers that match them.
pub struct Hub {
    registry: Arc<Registry>,
    counters: EventWatchCounters,
    orgs: Mutex<HashMap<OrgId, OrgHub>>,
}

/// A watcher's place in the hub: its queue, and the last cursor published when it joined.
/// Dropping it leaves the hub.
pub struct Membership {
    hub: Arc<Hub>,
    org: OrgId,
    id: u64,
    /// Every change up to this cursor is in the store; every later one comes through `queue`
    /// until it ends.
    pub from: u64,
    queue: mpsc::Receiver<Published>,
}

/// Where the hub files a watcher.
#[derive(Clone, Debug)]
enum Key {
    Agents(Vec<AgentId>),
    Label(String, String),
    Severity(Severity),
    Scan,
}

/// One org's watchers and their index.
#[derive(Default)]
struct OrgHub {
    /// The newest cursor published (or stored when the entry was made).
    last: u64,
    next_id: u64,
    members: HashMap<u64, Member>,
    by_agent: HashMap<AgentId, HashSet<u64>>,
    by_label: HashMap<String, HashMap<String, HashSet<u64>>>,
    by_severity: BTreeMap<Severity, HashSet<u64>>,
    scan: HashSet<u64>,
}

struct Member {
    interest: Arc<Interest>,
    key: Key,
    queue: mpsc::Sender<Published>,
}

// === impl Hub ===

impl Hub {
    pub fn new(registry: Arc<Registry>, counters: EventWatchCounters) -> Arc<Self> {
        Arc::new(Self {
            registry,
            counters,
            orgs: Mutex::new(HashMap::new()),
        })
    }

    /// Joins `org`'s fan-out with `interest`. `last_stored` gives the org's newest committed
    /// cursor when the org has no watchers yet.
    ///
    /// # Errors
    ///
    /// `last_stored`'s.
    pub fn join(
        self: &Arc<Self>,
        org: &OrgId,
        interest: Arc<Interest>,
        last_stored: impl FnOnce() -> Result<u64, ServerError>,
    ) -> Result<Membership, ServerError> {
        let mut orgs = self.orgs.lock().unwrap_or_else(PoisonError::into_inner);
        let hub = match orgs.entry(org.clone()) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(OrgHub {
                last: last_stored()?,
                ..OrgHub::default()
            }),
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        let id = hub.next_id;
        hub.next_id += 1;
        let key = interest.key();
        hub.file(id, &key);
        hub.members.insert(
            id,
            Member {
                interest,
                key,
                queue: tx,
            },
        );
        Ok(Membership {
            hub: self.clone(),
            org: org.clone(),
            id,
            from: hub.last,
            queue: rx,
        })
    }

    /// Queues `changes` (durable, in cursor order per org) for the watchers they match.
    pub fn publish(&self, changes: &[(OrgId, Published)]) {
        let mut orgs = self.orgs.lock().unwrap_or_else(PoisonError::into_inner);
        let mut candidates = Vec::new();
        let mut detached = Vec::new();
        for (org, change) in changes {
            let Some(hub) = orgs.get_mut(org) else {
                continue; // no watchers: the store has it for any that come
            };
            if change.cursor <= hub.last {
                continue; // stored before the entry was made: its watchers read it there
            }
            hub.last = change.cursor;
            let event = &change.event;
            self.registry.with_labels(org, &event.agent, |labels| {
                candidates.clear();
                hub.candidates(event, labels, &mut candidates);
                self.counters.candidates.inc_by(candidates.len() as u64);
                for id in &candidates {
                    let Some(member) = hub.members.get(id) else {
                        continue;
                    };
                    if !member.interest.matches(event, labels) {
                        continue;
                    }
                    match member.queue.try_send(change.clone()) {
                        Ok(()) => {
                            self.counters.deliveries.inc();
                        }
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            self.counters.fallbacks.inc();
                            detached.push(*id);
                        }
                        // Gone: its membership's drop removes it.
                        Err(mpsc::error::TrySendError::Closed(_)) => {}
                    }
                }
            });
            for id in detached.drain(..) {
                hub.remove(id);
            }
        }
    }

    fn leave(&self, org: &OrgId, id: u64) {
        let mut orgs = self.orgs.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(hub) = orgs.get_mut(org) {
            hub.remove(id);
            if hub.members.is_empty() {
                orgs.remove(org);
            }
        }
    }

    /// Watchers joined in all orgs.
    pub fn n_members(&self) -> usize {
        let orgs = self.orgs.lock().unwrap_or_else(PoisonError::into_inner);
        orgs.values().map(|hub| hub.members.len()).sum()
    }
}

// === impl OrgHub ===

impl OrgHub {
    fn file(&mut self, id: u64, key: &Key) {
        match key {
            Key::Agents(agents) => {
                for agent in agents {
                    self.by_agent.entry(agent.clone()).or_default().insert(id);
                }
            }
            Key::Label(k, v) => {
                let values = self.by_label.entry(k.clone()).or_default();
                values.entry(v.clone()).or_default().insert(id);
            }
            Key::Severity(min) => {
                self.by_severity.entry(*min).or_default().insert(id);
            }
            Key::Scan => {
                self.scan.insert(id);
            }
        }
    }

    /// Takes watcher `id` out (its queue ends after what it holds).
    fn remove(&mut self, id: u64) {
        let Some(member) = self.members.remove(&id) else {
            return;
        };
        match &member.key {
            Key::Agents(agents) => {
                for agent in agents {
                    if let Some(ids) = self.by_agent.get_mut(agent) {
                        ids.remove(&id);
                        if ids.is_empty() {
                            self.by_agent.remove(agent);
                        }
                    }
                }
            }
            Key::Label(k, v) => {
                if let Some(values) = self.by_label.get_mut(k) {
                    if let Some(ids) = values.get_mut(v) {
                        ids.remove(&id);
                        if ids.is_empty() {
                            values.remove(v);
                        }
                    }
                    if values.is_empty() {
                        self.by_label.remove(k);
                    }
                }
            }
            Key::Severity(min) => {
                if let Some(ids) = self.by_severity.get_mut(min) {
                    ids.remove(&id);
                    if ids.is_empty() {
                        self.by_severity.remove(min);
                    }
                }
            }
            Key::Scan => {
                self.scan.remove(&id);
            }
        }
    }

    /// The watchers `event` (its agent holding `labels`) may concern, each once: a watcher is
    /// filed under one key, and an event names one agent, one value per label key and one
    /// severity.
    fn candidates(&self, event: &EventRecord, labels: Option<&Labels>, out: &mut Vec<u64>) {
        if let Some(ids) = self.by_agent.get(&event.agent) {
            out.extend(ids);
        }
        if let Some(labels) = labels {
            for (k, v) in labels {
                if let Some(ids) = self.by_label.get(k).and_then(|values| values.get(v)) {
                    out.extend(ids);
                }
            }
        }
        for ids in self
            .by_severity
            .range(..=event.severity)
            .map(|(_, ids)| ids)
        {
            out.extend(ids);
        }
        out.extend(&self.scan);
    }
}

// === impl Membership ===

impl Membership {
    /// The next queued change; `None` once the hub detached this watcher (its queue was full)
    /// and everything queued before was taken. Cancel safe.
    pub async fn recv(&mut self) -> Option<Published> {
        self.queue.recv().await
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.hub.leave(&self.org, self.id);
    }
}

#[cfg(test)]
mod tests;
