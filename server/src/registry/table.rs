//! One org's agents: each entry in a slot (a small number the index refers to), found by
//! agent id through a map kept in id order (listings and pages follow it), with the index of
//! their labels, statuses and OSes and the counts of the fleet summary (`registry/index.rs`).
//!
//! **Invariant: the index and the counts are the entries'.** What the index reads of an entry
//! (its record: labels and OS; its status; its latest sample: health) is held in [`Facts`],
//! whose fields only this module writes, and every method here that changes them updates the
//! index and the counts in the same call. The registry calls them under its write lock, so a
//! reader holding the read lock finds the index, the counts and the entries in agreement: a
//! selection is exactly what testing the filter on every entry would give, and the summary
//! exactly what counting them would (the unit tests check both after random operations).
//!
//! Records and latest samples are shared (`Arc`), as kube-rs' reflector store shares its
//! objects: a view taken under the read lock copies pointers, not strings, and a change swaps
//! in a new `Arc` (views already taken keep the old one).

use std::collections::BTreeMap;
use std::collections::btree_map::Range;
use std::ops::Bound;
use std::sync::Arc;
use std::time::SystemTime;

use roaring::RoaringBitmap;

use super::index::{Index, Indexed};
use super::{AgentFilter, Entry, Summary};
use crate::config::HealthThresholds;
use crate::domain::{AgentId, AgentRecord, AgentStatus, Health, Sample, StatusReason};

/// A selection of at most one in this many agents is sorted by id to be listed; a larger one
/// is found by walking the ids in order (about page size × this many steps for a page).
const GATHER_BELOW_ONE_IN: u64 = 64;

/// The facts of an agent that the index follows (see the module docs).
pub(super) struct Facts {
    record: Arc<AgentRecord>,
    /// Lowercased name and hostname, for `query` filters without allocating per match.
    search_text: String,
    status: AgentStatus,
    latest: Option<Arc<Sample>>,
    /// Health of `latest` against the registry's thresholds, which are fixed for its life.
    health: Health,
}

/// The agents of one org.
#[derive(Default)]
pub(super) struct Agents {
    /// Entries by slot; `None` is a free slot, listed in `free` for the next insert.
    slots: Vec<Option<Entry>>,
    free: Vec<u32>,
    by_id: BTreeMap<AgentId, u32>,
    index: Index,
}

// === impl Facts ===

impl Facts {
    pub(super) fn new(
        record: Arc<AgentRecord>,
        status: AgentStatus,
        latest: Option<Arc<Sample>>,
        thresholds: &HealthThresholds,
    ) -> Self {
        Self {
            search_text: search_text(&record),
            record,
            status,
            health: health(latest.as_deref(), thresholds),
            latest,
        }
    }

    pub(super) fn record(&self) -> &Arc<AgentRecord> {
        &self.record
    }

    pub(super) fn search_text(&self) -> &str {
        &self.search_text
    }

    pub(super) fn status(&self) -> AgentStatus {
        self.status
    }

    pub(super) fn latest(&self) -> Option<&Arc<Sample>> {
        self.latest.as_ref()
    }

    pub(super) fn health(&self) -> Health {
        self.health
    }

    fn indexed(&self) -> Indexed<'_> {
        Indexed {
            record: &self.record,
            status: self.status,
            health: self.health,
        }
    }
}

fn search_text(record: &AgentRecord) -> String {
    format!(
        "{}\n{}",
        record.name.to_lowercase(),
        record.system_info.hostname.to_lowercase()
    )
}

fn health(latest: Option<&Sample>, thresholds: &HealthThresholds) -> Health {
    latest.map_or(Health::Unknown, |s| crate::health::health_of(s, thresholds))
}

// === impl Agents ===

impl Agents {
    pub(super) fn len(&self) -> usize {
        self.by_id.len()
    }

    pub(super) fn get(&self, id: &AgentId) -> Option<&Entry> {
        self.by_id.get(id).map(|slot| self.at(*slot))
    }

    /// The entry of `id`, to change what is not indexed; [`Facts`] change through the methods
    /// below.
    pub(super) fn get_mut(&mut self, id: &AgentId) -> Option<&mut Entry> {
        let slot = *self.by_id.get(id)?;
        self.slots[slot as usize].as_mut()
    }

    /// Every agent, in id order.
    #[cfg(test)]
    pub(super) fn iter(&self) -> impl Iterator<Item = (&AgentId, &Entry)> {
        self.by_id.iter().map(|(id, slot)| (id, self.at(*slot)))
    }

    /// The agents after `after` (all with `None`), in id order.
    pub(super) fn after(
        &self,
        after: Option<&AgentId>,
    ) -> impl Iterator<Item = (&AgentId, &Entry)> {
        self.ids_after(after).map(|(id, slot)| (id, self.at(*slot)))
    }

    /// Every agent, in no particular order.
    pub(super) fn values(&self) -> impl Iterator<Item = &Entry> {
        self.slots.iter().flatten()
    }

    /// The agents in slots `start` and after, in slot order, with their slots: a scan that
    /// can stop and resume (agents inserted meanwhile may or may not be met).
    pub(super) fn slots_from(&self, start: usize) -> impl Iterator<Item = (usize, &Entry)> {
        let start = start.min(self.slots.len());
        self.slots[start..]
            .iter()
            .enumerate()
            .filter_map(move |(i, entry)| entry.as_ref().map(|e| (start + i, e)))
    }

    /// Adds `entry`, replacing the agent of the same id if there is one.
    pub(super) fn insert(&mut self, entry: Entry) {
        let id = entry.facts.record.id.clone();
        self.remove(&id);
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.slots.push(None);
                u32::try_from(self.slots.len() - 1).expect("fewer than 2^32 agents in an org")
            }
        };
        self.index.add(slot, entry.facts.indexed());
        self.slots[slot as usize] = Some(entry);
        self.by_id.insert(id, slot);
    }

    pub(super) fn remove(&mut self, id: &AgentId) -> Option<Entry> {
        let slot = self.by_id.remove(id)?;
        let entry = self.slots[slot as usize].take()?;
        self.index.remove(slot, entry.facts.indexed());
        self.free.push(slot);
        Some(entry)
    }

    /// Replaces the record of `id`; `None` if there is no such agent.
    pub(super) fn set_record(&mut self, id: &AgentId, record: AgentRecord) -> Option<&Entry> {
        let slot = *self.by_id.get(id)?;
        self.change(slot, |facts| {
            facts.search_text = search_text(&record);
            facts.record = Arc::new(record);
        });
        Some(self.at(slot))
    }

    /// Sets the status of `id` (and why, and since when). Returns the previous status, or
    /// `None` if there is no such agent.
    pub(super) fn set_status(
        &mut self,
        id: &AgentId,
        status: AgentStatus,
        reason: StatusReason,
        since: SystemTime,
    ) -> Option<AgentStatus> {
        let slot = *self.by_id.get(id)?;
        let previous = self.at(slot).facts.status;
        self.change(slot, |facts| facts.status = status);
        let entry = self.slots[slot as usize].as_mut()?;
        entry.reason = reason;
        entry.since = since;
        Some(previous)
    }

    /// Records a sample of `id` the writer made durable, with the durable seq `last_seq`: the
    /// sample becomes the latest unless a newer one is. `false` if there is no such agent.
    pub(super) fn sample_committed(
        &mut self,
        id: &AgentId,
        sample: Sample,
        last_seq: u64,
        thresholds: &HealthThresholds,
    ) -> bool {
        let Some(slot) = self.by_id.get(id).copied() else {
            return false;
        };
        if let Some(entry) = self.slots[slot as usize].as_mut() {
            entry.last_seq = entry.last_seq.max(last_seq);
        }
        if self
            .at(slot)
            .facts
            .latest
            .as_ref()
            .is_none_or(|l| l.seq < sample.seq)
        {
            self.change(slot, |facts| {
                facts.health = health(Some(&sample), thresholds);
                facts.latest = Some(Arc::new(sample));
            });
        }
        true
    }

    /// The slots of the agents that pass `filter`, its substring `query` aside.
    pub(super) fn select(&self, filter: &AgentFilter) -> RoaringBitmap {
        self.index.select(filter)
    }

    /// The agents in the slots `selected`, in any order.
    pub(super) fn selected<'a>(
        &'a self,
        selected: &RoaringBitmap,
    ) -> impl Iterator<Item = &'a Entry> {
        selected.iter().map(|slot| self.at(slot))
    }

    /// The agents in the slots `selected` after `after`, in id order.
    pub(super) fn in_id_order<'a>(
        &'a self,
        selected: &'a RoaringBitmap,
        after: Option<&'a AgentId>,
    ) -> Box<dyn Iterator<Item = &'a Entry> + 'a> {
        if selected.len() * GATHER_BELOW_ONE_IN <= self.len() as u64 {
            Box::new(self.gathered(selected, after))
        } else {
            Box::new(self.walked(selected, after))
        }
    }

    /// [`Agents::in_id_order`] by sorting the selection: k log k for k agents selected.
    pub(super) fn gathered<'a>(
        &'a self,
        selected: &'a RoaringBitmap,
        after: Option<&'a AgentId>,
    ) -> impl Iterator<Item = &'a Entry> + 'a {
        let mut entries: Vec<&Entry> = self
            .selected(selected)
            .filter(|e| after.is_none_or(|after| e.facts.record.id > *after))
            .collect();
        entries.sort_unstable_by(|a, b| a.facts.record.id.cmp(&b.facts.record.id));
        entries.into_iter()
    }

    /// [`Agents::in_id_order`] by walking the ids from `after`, touching only the selected
    /// entries.
    pub(super) fn walked<'a>(
        &'a self,
        selected: &'a RoaringBitmap,
        after: Option<&'a AgentId>,
    ) -> impl Iterator<Item = &'a Entry> + 'a {
        self.ids_after(after)
            .filter(|(_, slot)| selected.contains(**slot))
            .map(|(_, slot)| self.at(*slot))
    }

    pub(super) fn summary(&self) -> Summary {
        self.index.summary()
    }

    /// The slots of `selected` whose agents have `health`.
    pub(super) fn with_health(&self, selected: &RoaringBitmap, health: Health) -> RoaringBitmap {
        self.index.with_health(selected, health)
    }

    /// How many of `selected` are in `status`.
    pub(super) fn count_status(&self, selected: &RoaringBitmap, status: AgentStatus) -> u64 {
        self.index.count_status(selected, status)
    }

    fn ids_after(&self, after: Option<&AgentId>) -> Range<'_, AgentId, u32> {
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        self.by_id.range::<AgentId, _>((start, Bound::Unbounded))
    }

    fn at(&self, slot: u32) -> &Entry {
        self.slots[slot as usize]
            .as_ref()
            .expect("the id map and the index name only slots in use")
    }

    /// Applies `change` to the facts of the agent in `slot` and brings the index and the
    /// counts up to date.
    fn change(&mut self, slot: u32, change: impl FnOnce(&mut Facts)) {
        let Some(entry) = self.slots[slot as usize].as_mut() else {
            return;
        };
        let facts = &mut entry.facts;
        let record = facts.record.clone();
        let (status, health) = (facts.status, facts.health);
        change(facts);
        let old = Indexed {
            record: &record,
            status,
            health,
        };
        self.index.update(slot, old, facts.indexed());
    }
}

#[cfg(test)]
mod tests;

/// `agents[&id]`, for tests that know the agent is there.
#[cfg(test)]
impl std::ops::Index<&AgentId> for Agents {
    type Output = Entry;

    fn index(&self, id: &AgentId) -> &Entry {
        self.get(id).expect("a known agent")
    }
}
