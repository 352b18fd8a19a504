//! A bounded in-memory cache of whole days of the count tables that statistics read in bulk
//! (`stats.rs`): the daily tables ([`EventTable::DayKinds`], [`EventTable::DayAgents`]),
//! decoded, and the hourly agent counts ([`EventTable::AgentHours`]), packed
//! ([`AgentDay`]), so statistics over long ranges read each day from the store once, then
//! from memory.
//!
//! An entry is one (org, table, UTC day). The cache holds at most [`MAX_BYTES`] (about: each
//! entry's size is estimated when it is inserted) and evicts the least recently used days past
//! that, so its memory never grows with history.
//!
//! # Invariant: never a day that changed
//!
//! The events task is the one writer of these tables while the server serves. After each
//! commit that wrote or deleted a row of them is durable (or failed: it is then treated as
//! written), the task calls [`DayCache::invalidate`] with the (org, table, day) of every such
//! row, before any job of the commit is answered. Invalidation drops the entry and bumps the
//! day's version. A reader that misses takes the day's [`Version`] before it scans the store
//! and inserts what it read only if the version is unchanged at insert time, so a scan that
//! may predate a commit is never kept after that commit's invalidation.
//!
//! Versions are kept only for days invalidated, at most [`MAX_VERSIONS`] of them: past that
//! the map is cleared and an epoch, part of every [`Version`], is bumped, so every reader in
//! flight then inserts nothing (a rare lost insert, never a stale one).
//!
//! The schema migration that builds the daily rows runs before the server serves, and the
//! bulk loader writes into a store no server runs on: neither can meet a cache holding days.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::agent_day::AgentDay;
use super::rollup::{self, Counts};
use crate::domain::OrgId;
use crate::metrics::DayCacheCounters;
use crate::store::{EventTable, Write};

/// Most bytes all cached days hold together, about.
pub const MAX_BYTES: usize = 256 << 20;
/// Most days whose version is kept before the versions are cleared (and the epoch bumped).
pub const MAX_VERSIONS: usize = 65_536;

/// One day of one table of one org: (org, table, day start ms).
pub type DayKey = (OrgId, EventTable, u64);
/// A daily table's day, decoded: the kind or agent, and its counts.
pub type DayRows = Arc<[(Box<str>, Counts)]>;

/// A cached day.
#[derive(Clone, Debug)]
pub enum Day {
    /// Of a daily table.
    Rows(DayRows),
    /// Of the hourly agent counts.
    Agents(Arc<AgentDay>),
}

/// What an entry costs besides its day, about: its key twice (the map and the LRU order, each
/// with the org's name), the two maps' slots and the `Arc`'s header.
const ENTRY_BYTES: usize = 192;

impl Day {
    /// What the day counts against the bound under `key`, in bytes: an empty day too.
    fn weight(&self, key: &DayKey) -> usize {
        let day = match self {
            Day::Rows(rows) => {
                let names: usize = rows.iter().map(|(name, _)| name.len()).sum();
                names + rows.len() * size_of::<(Box<str>, Counts)>()
            }
            Day::Agents(day) => day.bytes(),
        };
        day + ENTRY_BYTES + 2 * key.0.as_str().len()
    }
}

/// What a reader that missed holds while it scans: an insert is kept only if it still holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Version {
    day: u64,
    epoch: u64,
}

/// The cache; shared by the statistics readers and the events task.
pub struct DayCache {
    max_bytes: usize,
    max_versions: usize,
    inner: Mutex<Inner>,
    counters: DayCacheCounters,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<DayKey, Entry>,
    /// Each entry by its last use, oldest first.
    lru: BTreeMap<u64, DayKey>,
    tick: u64,
    bytes: usize,
    /// Days invalidated since the last clear, with their version (0 when absent).
    versions: HashMap<DayKey, u64>,
    /// When each of them was last invalidated.
    written: HashMap<DayKey, Instant>,
    next_version: u64,
    epoch: u64,
}

struct Entry {
    day: Day,
    weight: usize,
    used: u64,
}

impl Default for DayCache {
    fn default() -> Self {
        Self::new(MAX_BYTES, MAX_VERSIONS)
    }
}

impl DayCache {
    pub fn new(max_bytes: usize, max_versions: usize) -> Self {
        Self {
            max_bytes,
            max_versions,
            inner: Mutex::new(Inner::default()),
            counters: DayCacheCounters::default(),
        }
    }

    /// The cache, counting its hits and misses in `counters`.
    pub fn counted(self, counters: DayCacheCounters) -> Self {
        Self { counters, ..self }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The day's rows if cached (now its most recent use), else its version to insert with.
    pub fn lookup(&self, key: &DayKey) -> Result<Day, Version> {
        let mut inner = self.lock();
        inner.tick += 1;
        let tick = inner.tick;
        let Inner { entries, lru, .. } = &mut *inner;
        if let Some(entry) = entries.get_mut(key) {
            lru.remove(&entry.used);
            entry.used = tick;
            lru.insert(tick, key.clone());
            self.counters.hits.inc();
            return Ok(entry.day.clone());
        }
        self.counters.misses.inc();
        Err(Version {
            day: inner.versions.get(key).copied().unwrap_or(0),
            epoch: inner.epoch,
        })
    }

    /// Keeps `day` as the key's, read after `version` was taken, unless the day was
    /// invalidated since (or it alone exceeds the bound); evicts the least recently used days
    /// to stay within the bound. Returns whether it was kept.
    pub fn insert(&self, key: DayKey, version: Version, day: Day) -> bool {
        let weight = day.weight(&key);
        let mut inner = self.lock();
        let now = Version {
            day: inner.versions.get(&key).copied().unwrap_or(0),
            epoch: inner.epoch,
        };
        if now != version || weight > self.max_bytes {
            return false;
        }
        inner.remove(&key);
        while inner.bytes + weight > self.max_bytes {
            let Some((_, oldest)) = inner.lru.pop_first() else {
                break;
            };
            inner.remove(&oldest);
        }
        inner.tick += 1;
        let used = inner.tick;
        inner.bytes += weight;
        inner.lru.insert(used, key.clone());
        inner.entries.insert(key, Entry { day, weight, used });
        true
    }

    /// Drops the days of `keys` and bumps their versions: call once the commit that wrote
    /// them is durable (or failed).
    pub fn invalidate(&self, keys: impl IntoIterator<Item = DayKey>) {
        let mut inner = self.lock();
        for key in keys {
            inner.remove(&key);
            inner.next_version += 1;
            let version = inner.next_version;
            inner.written.insert(key.clone(), Instant::now());
            inner.versions.insert(key, version);
        }
        if inner.versions.len() > self.max_versions {
            inner.versions.clear();
            inner.written.clear();
            inner.epoch += 1;
        }
    }

    /// Whether a commit changed the day within the last `window`: a day still being written
    /// (today's, under ingest), which a reader had better not read whole to cache, as the
    /// next commit drops it again.
    pub fn written_within(&self, key: &DayKey, window: Duration) -> bool {
        let inner = self.lock();
        inner
            .written
            .get(key)
            .is_some_and(|at| at.elapsed() < window)
    }

    /// Bytes cached (about), and days cached.
    pub fn size(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.bytes, inner.entries.len())
    }
}

impl Inner {
    fn remove(&mut self, key: &DayKey) {
        if let Some(entry) = self.entries.remove(key) {
            self.lru.remove(&entry.used);
            self.bytes -= entry.weight;
        }
    }
}

/// The days of the cached tables that `writes` put or delete rows of.
pub fn touched(writes: &[Write]) -> Vec<DayKey> {
    // Borrowed while deduplicating: a commit writes an hourly agent row per event, most of
    // them of the same few days; only each distinct day's key is owned.
    let mut seen = std::collections::HashSet::new();
    let mut days = Vec::new();
    for write in writes {
        let (Write::PutEventEntry {
            org, table, key, ..
        }
        | Write::DeleteEventEntry { org, table, key }) = write
        else {
            continue;
        };
        if !matches!(
            table,
            EventTable::DayKinds | EventTable::DayAgents | EventTable::AgentHours
        ) {
            continue;
        }
        // A daily key leads with its day, an hourly one with its hour.
        match rollup::leading_ms(key).map(rollup::day_of) {
            Some(day) => {
                if seen.insert((org, *table, day)) {
                    days.push((org.clone(), *table, day));
                }
            }
            None => tracing::warn!(org = %org, ?table, "a count key has no time"),
        }
    }
    days
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::AgentId;
    use crate::events::keys::{self, HOUR_MS, Severity};

    fn key(day: u64) -> DayKey {
        (OrgId::new("acme"), EventTable::DayAgents, day)
    }

    fn rows(n: usize) -> Day {
        Day::Rows(
            (0..n)
                .map(|i| (format!("ag-{i}").into(), Counts::one(Severity::Info)))
                .collect(),
        )
    }

    fn len(day: Day) -> usize {
        match day {
            Day::Rows(rows) => rows.len(),
            Day::Agents(_) => panic!("a daily table's day"),
        }
    }

    #[test]
    fn a_read_that_an_invalidation_overtook_is_not_kept() {
        let counters = DayCacheCounters::default();
        let cache = DayCache::default().counted(counters.clone());
        let version = cache.lookup(&key(1)).expect_err("empty");
        cache.invalidate([key(1)]);
        assert!(!cache.insert(key(1), version, rows(3)));
        assert!(cache.lookup(&key(1)).is_err());
        // Read again after the invalidation: kept, and served.
        let version = cache.lookup(&key(1)).expect_err("not kept");
        assert!(cache.insert(key(1), version, rows(3)));
        assert_eq!(len(cache.lookup(&key(1)).expect("cached")), 3);
        // Another day's invalidation leaves it; its own drops it.
        cache.invalidate([key(2)]);
        assert!(cache.lookup(&key(1)).is_ok());
        cache.invalidate([key(1)]);
        assert!(cache.lookup(&key(1)).is_err());
        assert_eq!((counters.hits.get(), counters.misses.get()), (2, 4));
    }

    #[test]
    fn clearing_the_versions_refuses_every_read_in_flight() {
        let cache = DayCache::new(MAX_BYTES, 2);
        cache.invalidate([key(1)]);
        let version = cache.lookup(&key(1)).expect_err("empty");
        // Past the versions' bound: day 1's version is forgotten, the epoch moves on.
        cache.invalidate([key(2), key(3)]);
        assert!(!cache.insert(key(1), version, rows(1)));
        let version = cache.lookup(&key(1)).expect_err("empty");
        assert!(cache.insert(key(1), version, rows(1)));
    }

    #[test]
    fn past_the_byte_bound_the_least_recently_used_days_go() {
        let w = rows(3).weight(&key(1));
        let cache = DayCache::new(3 * w + w / 2, MAX_VERSIONS);
        for day in 1..=3 {
            let version = cache.lookup(&key(day)).expect_err("empty");
            assert!(cache.insert(key(day), version, rows(3)));
        }
        assert_eq!(cache.size(), (3 * w, 3));
        // Day 1 used again: day 2 is now the least recently used.
        assert!(cache.lookup(&key(1)).is_ok());
        let version = cache.lookup(&key(4)).expect_err("empty");
        assert!(cache.insert(key(4), version, rows(3)));
        assert_eq!(cache.size(), (3 * w, 3));
        assert!(
            cache.lookup(&key(2)).is_err(),
            "the least recently used day"
        );
        for day in [1, 3, 4] {
            assert!(cache.lookup(&key(day)).is_ok(), "day {day}");
        }
        // A day larger than the whole bound is not kept, and evicts nothing.
        let version = cache.lookup(&key(5)).expect_err("empty");
        assert!(!cache.insert(key(5), version, rows(40)));
        assert_eq!(cache.size(), (3 * w, 3));
    }

    #[test]
    fn the_days_a_commit_touched_are_those_of_its_cached_tables_only() {
        let org = OrgId::new("acme");
        let put = |table, key: Vec<u8>| Write::PutEventEntry {
            org: org.clone(),
            table,
            key,
            value: Vec::new(),
        };
        let day = 5 * rollup::DAY_MS;
        let ag = AgentId::new("ag-1");
        let writes = [
            put(EventTable::DayKinds, rollup::day_kind_key(day, "disk.full")),
            put(EventTable::DayKinds, rollup::day_kind_key(day, "ssh.root")),
            put(EventTable::HourTotals, rollup::hour_total_key(day)),
            // Two hours of the day before, one row each: one day.
            put(
                EventTable::AgentHours,
                keys::agent_hour_key(day - 3 * HOUR_MS, &ag, Severity::Info, "ssh.root"),
            ),
            put(
                EventTable::AgentHours,
                keys::agent_hour_key(day - HOUR_MS, &ag, Severity::Error, "disk.full"),
            ),
            Write::DeleteEventEntry {
                org: org.clone(),
                table: EventTable::DayAgents,
                key: rollup::day_kind_key(day - rollup::DAY_MS, "ag-1"),
            },
        ];
        assert_eq!(
            touched(&writes),
            [
                (org.clone(), EventTable::DayKinds, day),
                (org.clone(), EventTable::AgentHours, day - rollup::DAY_MS),
                (org.clone(), EventTable::DayAgents, day - rollup::DAY_MS),
            ]
        );
    }
}
