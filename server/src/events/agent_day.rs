//! One UTC day of the hourly agent counts ([`EventTable::AgentHours`]) packed for scanning,
//! so statistics under an agent filter or a kind filter tally a month of them from memory
//! (`stats.rs`, through the day cache) instead of reading and decoding a row per (hour, agent,
//! severity, kind) from the store on every call.
//!
//! A day holds its agents and kinds once each and a 16-byte row per stored hourly row (the
//! count, the agent's index, the kind's index with the severity in its low two bits), in the
//! store's key order: by hour first, so the rows of hours `a..b` are one slice.
//!
//! Invariant: a day's rows are exactly the stored hourly rows of that day at the time of the
//! read (one scan); the day cache never keeps a day a later commit changed.

use std::collections::HashMap;

use super::keys::{self, AgentHourRow, HOUR_MS};
use super::query::Filter;
use super::rollup::DAY_MS;
use crate::domain::{AgentId, OrgId};
use crate::error::ServerError;
use crate::store::{EventTable, Store};

/// Hours in a UTC day.
const HOURS: usize = 24;
/// Kinds a day can index: the kind shares its `u32` with the severity's two bits.
const MAX_KINDS: usize = 1 << 30;

/// One day of hourly agent counts.
#[derive(Debug, Default)]
pub struct AgentDay {
    day_ms: u64,
    agents: Box<[AgentId]>,
    kinds: Box<[Box<str>]>,
    /// Where each hour's rows start; `starts[24]` is the end.
    starts: [u32; HOURS + 1],
    rows: Box<[Row]>,
}

#[derive(Clone, Copy, Debug)]
struct Row {
    count: u64,
    agent: u32,
    /// `kind << 2 | (severity - 1)`.
    kind_severity: u32,
}

impl Row {
    fn kind(self) -> usize {
        (self.kind_severity >> 2) as usize
    }

    /// 0 (info) to 3 (critical).
    fn severity(self) -> usize {
        (self.kind_severity & 3) as usize
    }
}

/// Indexes of names, in the order first seen.
struct Names<T> {
    index: HashMap<Box<str>, u32>,
    names: Vec<T>,
}

impl<T> Names<T> {
    fn new() -> Self {
        Self {
            index: HashMap::new(),
            names: Vec::new(),
        }
    }

    fn of(&mut self, name: &str, make: impl FnOnce(&str) -> T, max: usize) -> Option<u32> {
        if let Some(&i) = self.index.get(name) {
            return Some(i);
        }
        if self.names.len() >= max {
            return None;
        }
        let i = u32::try_from(self.names.len()).ok()?;
        self.index.insert(name.into(), i);
        self.names.push(make(name));
        Some(i)
    }
}

impl AgentDay {
    /// Reads the hourly agent rows of the UTC day starting at `day_ms`.
    ///
    /// # Errors
    ///
    /// The store's, or [`ServerError::Internal`] for a day of more than 2^30 kinds or 2^32
    /// agents or rows (more than a store holds in a day).
    pub fn read(store: &dyn Store, org: &OrgId, day_ms: u64) -> Result<Self, ServerError> {
        Self::read_hours(store, org, day_ms, day_ms, day_ms + DAY_MS)
    }

    /// Reads the hourly agent rows of the hours `from..to` (ms, whole hours) of the UTC day
    /// starting at `day_ms`: a day that holds those hours only.
    ///
    /// # Errors
    ///
    /// As [`AgentDay::read`].
    pub fn read_hours(
        store: &dyn Store,
        org: &OrgId,
        day_ms: u64,
        from: u64,
        to: u64,
    ) -> Result<Self, ServerError> {
        let (from, to) = (
            from.clamp(day_ms, day_ms + DAY_MS),
            to.clamp(day_ms, day_ms + DAY_MS),
        );
        let (from, to) = (keys::time_floor(from), keys::time_floor(to));
        let too_large =
            || ServerError::Internal(format!("a day of event counts of {org} is too large"));
        let mut agents = Names::new();
        let mut kinds = Names::new();
        let mut rows = Vec::new();
        let mut per_hour = [0u32; HOURS];
        let mut last_hour = 0;
        for entry in store.event_entries(org, EventTable::AgentHours, &from, Some(&to), false) {
            let (key, value) = entry?;
            let Some(row) = AgentHourRow::parse(&key, &value) else {
                tracing::warn!(org = %org, "an hourly event count does not decode; skipped");
                continue;
            };
            // The scan's range holds the day's hours only.
            let hour = (row.hour_ms.saturating_sub(day_ms) / HOUR_MS) as usize;
            let Some(in_hour) = per_hour.get_mut(hour) else {
                continue;
            };
            debug_assert!(hour >= last_hour, "hourly agent rows come in key order");
            last_hour = hour;
            *in_hour = in_hour.checked_add(1).ok_or_else(too_large)?;
            let agent = agents.of(row.agent, |a| AgentId::new(a), u32::MAX as usize);
            let kind = kinds.of(row.kind, |k| Box::from(k), MAX_KINDS);
            let (Some(agent), Some(kind)) = (agent, kind) else {
                return Err(too_large());
            };
            rows.push(Row {
                count: row.count,
                agent,
                kind_severity: kind << 2 | (row.severity as u32 - 1),
            });
        }
        // Rows come in key order, by hour first: each hour's rows follow the earlier hours'.
        let mut starts = [0u32; HOURS + 1];
        for (hour, n) in per_hour.iter().enumerate() {
            starts[hour + 1] = starts[hour].checked_add(*n).ok_or_else(too_large)?;
        }
        Ok(Self {
            day_ms,
            agents: agents.names.into(),
            kinds: kinds.names.into(),
            starts,
            rows: rows.into(),
        })
    }

    /// Bytes this day holds, about: what the day cache counts against its bound.
    pub fn bytes(&self) -> usize {
        let agents: usize = self.agents.iter().map(|a| a.as_str().len() + 48).sum();
        let kinds: usize = self.kinds.iter().map(|k| k.len() + 32).sum();
        std::mem::size_of::<Self>() + agents + kinds + self.rows.len() * size_of::<Row>()
    }

    /// The hours of this day within `from..to` (ms, whole hours): `a..b`, 0 to 24.
    fn hours(&self, from: u64, to: u64) -> std::ops::Range<usize> {
        debug_assert!(
            from.is_multiple_of(HOUR_MS) && to.is_multiple_of(HOUR_MS),
            "whole hours"
        );
        let hour = |ms: u64| {
            let ms = ms.clamp(self.day_ms, self.day_ms + DAY_MS) - self.day_ms;
            (ms / HOUR_MS) as usize
        };
        hour(from)..hour(to)
    }

    /// The rows of the day's `hour` (0 to 23).
    fn rows_of(&self, hour: usize) -> &[Row] {
        &self.rows[self.starts[hour] as usize..self.starts[hour + 1] as usize]
    }

    fn hour_ms(&self, hour: usize) -> u64 {
        self.day_ms + hour as u64 * HOUR_MS
    }
}

/// What `filter` keeps of a day: its agents and kinds, and the lowest severity slot.
struct Picks {
    agents: Vec<bool>,
    kinds: Vec<bool>,
    min: usize,
}

impl Picks {
    fn of(day: &AgentDay, filter: &Filter) -> Self {
        Self {
            agents: day.agents.iter().map(|a| filter.matches_agent(a)).collect(),
            kinds: day
                .kinds
                .iter()
                .map(|k| filter.matches_kind_name(k))
                .collect(),
            min: filter.min_severity.map_or(0, |s| s as usize - 1),
        }
    }

    fn keep(&self, row: Row) -> bool {
        self.agents[row.agent as usize] && self.kinds[row.kind()] && row.severity() >= self.min
    }
}

/// Steps of a range: where each hour's occurrences go.
#[derive(Clone, Copy)]
pub struct Steps {
    pub start_ms: u64,
    pub step_ms: u64,
    pub n: usize,
}

impl Steps {
    fn of(self, hour_ms: u64) -> Option<usize> {
        let i = usize::try_from(hour_ms.checked_sub(self.start_ms)? / self.step_ms).ok()?;
        (i < self.n).then_some(i)
    }
}

/// Occurrences that a filter keeps over a range, tallied from days: by step and severity, by
/// kind, by agent.
pub struct Tally {
    steps: Steps,
    pub by_step: Vec<[u64; 4]>,
    pub kinds: HashMap<String, u64>,
    pub agents: HashMap<String, u64>,
}

impl Tally {
    pub fn new(steps: Steps) -> Self {
        Self {
            steps,
            by_step: vec![[0; 4]; steps.n],
            kinds: HashMap::new(),
            agents: HashMap::new(),
        }
    }

    /// Adds what `filter` keeps of `day`'s hours within `from..to` (ms).
    pub fn add(&mut self, day: &AgentDay, filter: &Filter, from: u64, to: u64) {
        let picks = Picks::of(day, filter);
        let mut agents = vec![0u64; day.agents.len()];
        let mut kinds = vec![0u64; day.kinds.len()];
        for hour in day.hours(from, to) {
            let mut by_severity = [0u64; 4];
            for &row in day.rows_of(hour) {
                if picks.keep(row) {
                    agents[row.agent as usize] += row.count;
                    kinds[row.kind()] += row.count;
                    by_severity[row.severity()] += row.count;
                }
            }
            if let Some(step) = self.steps.of(day.hour_ms(hour)) {
                for (slot, n) in self.by_step[step].iter_mut().zip(by_severity) {
                    *slot += n;
                }
            }
        }
        merge(&mut self.agents, &day.agents, &agents, AgentId::as_str);
        merge(&mut self.kinds, &day.kinds, &kinds, |k| k);
    }
}

/// Occurrences of each of `kinds` by step, over `days` (each with the part of the range in
/// it): what a [`Tally`]'s top kinds add to each step.
pub fn kinds_by_step(
    days: &[(&AgentDay, u64, u64)],
    filter: &Filter,
    kinds: &[&str],
    steps: Steps,
) -> Vec<HashMap<String, u64>> {
    let mut out = vec![HashMap::new(); steps.n];
    let slots: HashMap<&str, usize> = kinds.iter().enumerate().map(|(i, k)| (*k, i)).collect();
    for &(day, from, to) in days {
        let picks = Picks::of(day, filter);
        // This day's index of each wanted kind, and its place in `kinds`.
        let wanted: Vec<Option<usize>> =
            day.kinds.iter().map(|k| slots.get(&**k).copied()).collect();
        if wanted.iter().all(Option::is_none) {
            continue;
        }
        for hour in day.hours(from, to) {
            let Some(step) = steps.of(day.hour_ms(hour)) else {
                continue;
            };
            let mut sums = vec![0u64; kinds.len()];
            for &row in day.rows_of(hour) {
                if let Some(slot) = wanted[row.kind()]
                    && picks.keep(row)
                {
                    sums[slot] += row.count;
                }
            }
            for (kind, n) in kinds.iter().zip(sums) {
                if n > 0 {
                    *out[step].entry((*kind).to_owned()).or_default() += n;
                }
            }
        }
    }
    out
}

/// Adds each nonzero local count to its name's.
fn merge<T>(
    into: &mut HashMap<String, u64>,
    names: &[T],
    counts: &[u64],
    name: impl Fn(&T) -> &str,
) {
    for (n, &c) in names.iter().zip(counts) {
        if c == 0 {
            continue;
        }
        match into.get_mut(name(n)) {
            Some(total) => *total += c,
            None => {
                into.insert(name(n).to_owned(), c);
            }
        }
    }
}
