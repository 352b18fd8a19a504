//! The index of one org's agents: which agent slots (see `registry/table.rs`) carry each label,
//! each label value, each status and each OS, as compressed bitmaps, and the counts the fleet
//! summary reports. A listing filter becomes a few bitmap operations instead of a pass over the
//! org: [`Index::select`] answers everything of an [`AgentFilter`] but its substring `query`.
//!
//! Invariant: the index describes exactly the entries of its table. It is changed only by the
//! table, in the same call that changes an entry's indexed facts (labels, OS, status, health),
//! so under the registry's lock it always agrees with the entries. Empty postings are dropped,
//! so the index holds nothing for a label value no agent carries any more.

use std::collections::{BTreeMap, HashMap};

use roaring::RoaringBitmap;
use tether_proto::selector::Requirement;

use super::{AgentFilter, Summary};
use crate::domain::{AgentRecord, AgentStatus, Health, Labels};

/// What the index reads of one agent.
#[derive(Clone, Copy)]
pub(super) struct Indexed<'a> {
    pub(super) record: &'a AgentRecord,
    pub(super) status: AgentStatus,
    pub(super) health: Health,
}

#[derive(Default)]
pub(super) struct Index {
    /// Every slot in use.
    all: RoaringBitmap,
    /// By status, in [`status_idx`] order.
    status: [RoaringBitmap; 4],
    /// By health, in [`health_idx`] order (expired agents included): what health alerts select.
    health: [RoaringBitmap; 4],
    labels: HashMap<String, LabelPostings>,
    /// By OS name, ASCII-lowercased: the `os` filter compares ignoring ASCII case.
    os: HashMap<String, RoaringBitmap>,
    counts: Counts,
}

/// The agents carrying one label key.
#[derive(Default)]
struct LabelPostings {
    /// With the key, whatever its value (`k`, `!k`).
    any: RoaringBitmap,
    /// By value (`k=v`, `k!=v`).
    values: HashMap<String, RoaringBitmap>,
}

/// What `GetFleetSummary` reports, kept up to date instead of counted per call.
#[derive(Default)]
struct Counts {
    /// By status, in [`status_idx`] order.
    status: [u32; 4],
    /// Agents that are not expired, by OS name as reported.
    by_os: BTreeMap<String, u32>,
    /// Agents that are not expired, by health, in [`health_idx`] order.
    health: [u32; 4],
}

// === impl Index ===

impl Index {
    /// Adds the agent in `slot`.
    pub(super) fn add(&mut self, slot: u32, facts: Indexed<'_>) {
        self.all.insert(slot);
        self.status[status_idx(facts.status)].insert(slot);
        self.health[health_idx(facts.health)].insert(slot);
        self.add_labels(slot, &facts.record.labels);
        self.add_os(slot, facts.os_name());
        self.counts.change(facts, true);
    }

    /// Removes the agent in `slot`, whose facts are `facts`.
    pub(super) fn remove(&mut self, slot: u32, facts: Indexed<'_>) {
        self.all.remove(slot);
        self.status[status_idx(facts.status)].remove(slot);
        self.health[health_idx(facts.health)].remove(slot);
        self.remove_labels(slot, &facts.record.labels);
        self.remove_os(slot, facts.os_name());
        self.counts.change(facts, false);
    }

    /// The agent in `slot` changed from `old` to `new`. A record that is the same object
    /// (most changes: a sample, a status) is not compared.
    pub(super) fn update(&mut self, slot: u32, old: Indexed<'_>, new: Indexed<'_>) {
        let same_record = std::ptr::eq(old.record, new.record);
        let (old_labels, new_labels) = (&old.record.labels, &new.record.labels);
        if !same_record && old_labels != new_labels {
            self.remove_labels(slot, old_labels);
            self.add_labels(slot, new_labels);
        }
        let os_changed = !same_record && old.os_name() != new.os_name();
        if os_changed {
            self.remove_os(slot, old.os_name());
            self.add_os(slot, new.os_name());
        }
        if old.status != new.status {
            self.status[status_idx(old.status)].remove(slot);
            self.status[status_idx(new.status)].insert(slot);
        }
        if old.health != new.health {
            self.health[health_idx(old.health)].remove(slot);
            self.health[health_idx(new.health)].insert(slot);
        }
        if os_changed || old.status != new.status || old.health != new.health {
            self.counts.change(old, false);
            self.counts.change(new, true);
        }
    }

    /// The slots of the agents that pass `filter`, its substring `query` aside.
    pub(super) fn select(&self, filter: &AgentFilter) -> RoaringBitmap {
        let mut out = if filter.statuses.is_empty() {
            if filter.include_expired {
                self.all.clone()
            } else {
                &self.all - &self.status[status_idx(AgentStatus::Expired)]
            }
        } else {
            let mut any = RoaringBitmap::new();
            for status in &filter.statuses {
                any |= &self.status[status_idx(*status)];
            }
            any
        };
        let (none, key) = (RoaringBitmap::new(), |k: &str| self.labels.get(k));
        let value = |k: &str, v: &str| key(k).and_then(|p| p.values.get(v)).unwrap_or(&none);
        for requirement in &filter.selector.requirements {
            match requirement {
                Requirement::Equals(k, v) => out &= value(k, v),
                Requirement::NotEquals(k, v) => out -= value(k, v),
                Requirement::Exists(k) => out &= key(k).map_or(&none, |p| &p.any),
                Requirement::NotExists(k) => out -= key(k).map_or(&none, |p| &p.any),
            }
        }
        if let Some(os) = &filter.os {
            out &= self.os.get(&os.to_ascii_lowercase()).unwrap_or(&none);
        }
        out
    }

    /// The slots of `selected` whose agents have `health`.
    pub(super) fn with_health(&self, selected: &RoaringBitmap, health: Health) -> RoaringBitmap {
        selected & &self.health[health_idx(health)]
    }

    /// How many of `selected` are in `status`.
    pub(super) fn count_status(&self, selected: &RoaringBitmap, status: AgentStatus) -> u64 {
        selected.intersection_len(&self.status[status_idx(status)])
    }

    /// The fleet summary of these agents.
    pub(super) fn summary(&self) -> Summary {
        let Counts {
            status,
            by_os,
            health,
        } = &self.counts;
        let [online, stale, offline, expired] = *status;
        Summary {
            online,
            stale,
            offline,
            expired,
            by_os: by_os.clone(),
            health: [
                Health::Unknown,
                Health::Ok,
                Health::Warning,
                Health::Critical,
            ]
            .into_iter()
            .filter(|h| health[health_idx(*h)] > 0)
            .map(|h| (h, health[health_idx(h)]))
            .collect(),
        }
    }

    /// Whether the index holds no empty posting and no zero count.
    #[cfg(test)]
    pub(super) fn is_tidy(&self) -> bool {
        self.labels.values().all(|p| {
            !p.any.is_empty() && !p.values.is_empty() && p.values.values().all(|b| !b.is_empty())
        }) && self.os.values().all(|b| !b.is_empty())
            && self.counts.by_os.values().all(|n| *n > 0)
    }

    fn add_labels(&mut self, slot: u32, labels: &Labels) {
        for (k, v) in labels {
            let postings = self.labels.entry(k.clone()).or_default();
            postings.any.insert(slot);
            postings.values.entry(v.clone()).or_default().insert(slot);
        }
    }

    fn remove_labels(&mut self, slot: u32, labels: &Labels) {
        for (k, v) in labels {
            let Some(postings) = self.labels.get_mut(k) else {
                continue;
            };
            postings.any.remove(slot);
            remove_from(&mut postings.values, v, slot);
            if postings.any.is_empty() {
                self.labels.remove(k);
            }
        }
    }

    fn add_os(&mut self, slot: u32, os_name: &str) {
        self.os
            .entry(os_name.to_ascii_lowercase())
            .or_default()
            .insert(slot);
    }

    fn remove_os(&mut self, slot: u32, os_name: &str) {
        remove_from(&mut self.os, &os_name.to_ascii_lowercase(), slot);
    }
}

/// Takes `slot` out of the posting of `key`, dropping the posting once empty.
fn remove_from(postings: &mut HashMap<String, RoaringBitmap>, key: &str, slot: u32) {
    if let Some(slots) = postings.get_mut(key) {
        slots.remove(slot);
        if slots.is_empty() {
            postings.remove(key);
        }
    }
}

// === impl Indexed ===

impl Indexed<'_> {
    fn os_name(&self) -> &str {
        &self.record.system_info.os_name
    }
}

// === impl Counts ===

impl Counts {
    /// Counts an agent in (`add`) or out. Expired agents count in the status counts only, as
    /// the summary reports them.
    fn change(&mut self, facts: Indexed<'_>, add: bool) {
        let Indexed { status, health, .. } = facts;
        let os_name = facts.os_name();
        let step = |n: &mut u32| {
            debug_assert!(
                add || *n > 0,
                "an agent is counted out only after it was counted in"
            );
            *n = if add { *n + 1 } else { n.saturating_sub(1) };
        };
        step(&mut self.status[status_idx(status)]);
        if status == AgentStatus::Expired {
            return;
        }
        step(&mut self.health[health_idx(health)]);
        if add {
            match self.by_os.get_mut(os_name) {
                Some(n) => *n += 1,
                None => {
                    self.by_os.insert(os_name.to_owned(), 1);
                }
            }
        } else if let Some(n) = self.by_os.get_mut(os_name) {
            *n -= 1;
            if *n == 0 {
                self.by_os.remove(os_name);
            }
        }
    }
}

fn status_idx(status: AgentStatus) -> usize {
    match status {
        AgentStatus::Online => 0,
        AgentStatus::Stale => 1,
        AgentStatus::Offline => 2,
        AgentStatus::Expired => 3,
    }
}

fn health_idx(health: Health) -> usize {
    match health {
        Health::Unknown => 0,
        Health::Ok => 1,
        Health::Warning => 2,
        Health::Critical => 3,
    }
}
