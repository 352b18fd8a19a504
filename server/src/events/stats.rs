//! `GetEventStats` from the counts tables (`rollup.rs`, `keys.rs`), reading the coarsest rows
//! that answer each part exactly:
//!
//! - **Steps** (counts by severity, and by kind for the top kinds): [`EventTable::HourTotals`]
//!   without a kind filter, else [`EventTable::KindSeries`] for each matching kind (one seek
//!   per kind): a row per hour of the range, not per (hour, kind, agent).
//! - **Kinds and the total**: [`EventTable::DayKinds`] for the range's whole UTC days,
//!   [`EventTable::KindHours`] for the partial days at its edges.
//! - **Top agents**: [`EventTable::DayAgents`] for the whole days and the hourly agent counts
//!   ([`EventTable::AgentHours`]) for the edges, unless a kind filter is set: the daily rows do
//!   not know kinds, so top agents under a kind filter tally the hourly agent counts of the
//!   whole range.
//! - **The rate**: [`EventTable::HourTotals`] without a kind filter, else
//!   [`EventTable::KindHours`], over the two windows.
//!
//! A filter on agents (ids or a label selector) tallies everything from the hourly agent
//! counts, the one table that knows agents by hour.
//!
//! Whole days come from the day cache (`day_cache.rs`) when it holds them: each day is read
//! from the store once, decoded (the daily tables) or packed (the hourly agent counts,
//! [`AgentDay`]), then tallied from memory until a commit changes it.
//!
//! Invariant: every answer equals what the hourly tables alone give (a daily row is the sum of
//! its hours, `rollup.rs`); only the rows read differ.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use super::agent_day::{self, AgentDay, Steps};
use super::day_cache::{Day, DayCache, DayRows};
use super::keys::{self, HourCount, Severity};
use super::query::{Filter, Stats, StatsQuery, StatsStep};
use super::rollup::{self, Counts, DAY_MS};
use crate::domain::{AgentId, OrgId};
use crate::error::ServerError;
use crate::store::{EventTable, Store};

/// Answers `GetEventStats`, whole days from `days` when it holds them.
///
/// # Errors
///
/// The store's.
pub fn stats(
    store: &dyn Store,
    days: &DayCache,
    org: &OrgId,
    q: &StatsQuery,
) -> Result<Stats, ServerError> {
    if q.filter.agents.is_some() {
        return by_agent_days((store, days), org, q);
    }
    let filter = &q.filter;
    let min = filter.min_severity;
    let kind_filtered = filter.kind.is_some() || filter.kind_prefix.is_some();
    let mut steps = empty_steps(q);
    let step_of = |hour_ms: u64| usize::try_from((hour_ms - q.start_ms) / q.step_ms).ok();

    // Kinds over the range: whole days from the daily rows, the edges from the hourly ones.
    let mut kinds: HashMap<String, u64> = HashMap::new();
    let spans = Spans::of(q.start_ms, q.end_ms);
    if let Some(span) = spans.days {
        let counts = Tally {
            into: &mut kinds,
            min,
        };
        let source = (store, days);
        day_rows(source, org, EventTable::DayKinds, span, counts, |k| {
            filter.matches_kind_name(k)
        })?;
    }
    for (from, to) in spans.hours() {
        for count in kind_hours(store, org, filter, from, to) {
            let count = count?;
            tally(&mut kinds, &count.kind, count.count);
        }
    }
    let total = kinds.values().sum();
    let top_kinds = top(kinds.clone(), q.top);
    let top_set: BTreeSet<&str> = top_kinds.iter().map(|(k, _)| k.as_str()).collect();

    // Steps: the hourly totals, or each matching kind's own hours.
    if !kind_filtered {
        let (from, to) = (q.start_ms, q.end_ms);
        hour_rows(
            store,
            org,
            EventTable::HourTotals,
            from,
            to,
            |hour, counts| {
                if let Some(step) = step_of(hour).and_then(|i| steps.get_mut(i)) {
                    add_severities(&mut step.by_severity, &counts.masked(min));
                }
            },
        )?;
    }
    for kind in kinds.keys() {
        let in_top = top_set.contains(kind.as_str());
        if !in_top && !kind_filtered {
            continue;
        }
        let (from, to) = (q.start_ms, q.end_ms);
        let series = EventTable::KindSeries;
        hour_rows_of(store, org, series, Some(kind), from, to, |hour, counts| {
            let Some(step) = step_of(hour).and_then(|i| steps.get_mut(i)) else {
                return;
            };
            let masked = counts.masked(min);
            if kind_filtered {
                add_severities(&mut step.by_severity, &masked);
            }
            let n = masked.at_least(None);
            if in_top && n > 0 {
                *step.by_kind.entry(kind.clone()).or_default() += n;
            }
        })?;
    }

    // Agents: whole days from the daily rows unless a kind filter needs the hourly ones.
    let mut agents: HashMap<String, u64> = HashMap::new();
    let agent_spans = match spans.days {
        Some(span) if !kind_filtered => {
            let counts = Tally {
                into: &mut agents,
                min,
            };
            let source = (store, days);
            day_rows(source, org, EventTable::DayAgents, span, counts, |_| true)?;
            spans.hours()
        }
        _ if kind_filtered => vec![(q.start_ms, q.end_ms)],
        _ => spans.hours(),
    };
    let no_steps = Steps {
        start_ms: q.start_ms,
        step_ms: q.step_ms,
        n: 0,
    };
    let mut by_agent = agent_day::Tally::new(no_steps);
    for (from, to) in agent_spans {
        for (day, from, to) in agent_days((store, days), org, from, to)? {
            by_agent.add(&day, filter, from, to);
        }
    }
    for (agent, n) in by_agent.agents {
        *agents.entry(agent).or_default() += n;
    }

    let rate = if kind_filtered {
        rate_counts(store, org, q)?
    } else {
        let (window_start, previous_start, end) = rate_windows(q);
        let mut rate = (0, 0);
        hour_rows(
            store,
            org,
            EventTable::HourTotals,
            previous_start,
            end,
            |hour, counts| {
                if hour >= window_start {
                    rate.0 += counts.at_least(min);
                } else {
                    rate.1 += counts.at_least(min);
                }
            },
        )?;
        rate
    };
    let top_agents = top_named(agents, q.top);
    Ok(finish(q, steps, top_kinds, top_agents, total, rate))
}

/// Where daily rows add their counts: at or above `min`.
struct Tally<'a> {
    into: &'a mut HashMap<String, u64>,
    min: Option<Severity>,
}

/// Adds the daily rows of `table` over the whole days `from..to` whose name (kind or agent)
/// `keep` picks: each day from the cache, or read from the store and offered to the cache.
fn day_rows(
    (store, cache): (&dyn Store, &DayCache),
    org: &OrgId,
    table: EventTable,
    (from, to): (u64, u64),
    counts: Tally<'_>,
    keep: impl Fn(&str) -> bool,
) -> Result<(), ServerError> {
    let Some((first, last)) = data_days(store, org, table, from, to)? else {
        return Ok(());
    };
    let mut day = from.max(first);
    while day < to.min(last) {
        let key = (org.clone(), table, day);
        let rows = match cache.lookup(&key) {
            Ok(Day::Rows(rows)) => rows,
            hit_or_miss => {
                let rows = read_day(store, org, table, day)?;
                if let Err(version) = hit_or_miss {
                    cache.insert(key, version, Day::Rows(rows.clone()));
                }
                rows
            }
        };
        for (name, n) in rows.iter() {
            if keep(name) {
                tally(counts.into, name, n.at_least(counts.min));
            }
        }
        day += DAY_MS;
    }
    Ok(())
}

/// The rows of `table` for the UTC day starting at `day`, decoded.
fn read_day(
    store: &dyn Store,
    org: &OrgId,
    table: EventTable,
    day: u64,
) -> Result<DayRows, ServerError> {
    let (from, to) = (keys::time_floor(day), keys::time_floor(day + DAY_MS));
    let mut rows = Vec::new();
    for row in scan(store, org, table, &from, &to) {
        let (key, value) = row?;
        let (Some(name), Some(n)) = (rollup::day_key_name(&key), Counts::decode(&value)) else {
            tracing::warn!(org = %org, ?table, "a daily event count does not decode; skipped");
            continue;
        };
        rows.push((name.into(), n));
    }
    Ok(rows.into())
}

/// How recently a commit must have changed a day for a reader to treat it as still being
/// written (`agent_days`).
const HOT_DAY: std::time::Duration = std::time::Duration::from_secs(10);

/// Each UTC day that `from..to` (ms) overlaps, packed, with the part of the range in it: from
/// the cache, or read from the store and offered to the cache; of a day a commit changed in
/// the last [`HOT_DAY`], only the part, kept by no one.
fn agent_days(
    (store, cache): (&dyn Store, &DayCache),
    org: &OrgId,
    from: u64,
    to: u64,
) -> Result<Vec<(Arc<AgentDay>, u64, u64)>, ServerError> {
    let mut days = Vec::new();
    let Some((first, last)) = data_days(store, org, EventTable::AgentHours, from, to)? else {
        return Ok(days);
    };
    let mut day = rollup::day_of(from).max(first);
    while day < to.min(last) {
        let key = (org.clone(), EventTable::AgentHours, day);
        let (part_from, part_to) = (from.max(day), to.min(day + DAY_MS));
        let whole = (part_from, part_to) == (day, day + DAY_MS);
        let packed = match cache.lookup(&key) {
            Ok(Day::Agents(packed)) => packed,
            // A day still being written (today's, under ingest) would be dropped again by
            // the next commit: read only the hours asked for, and keep nothing.
            Err(_) if !whole && cache.written_within(&key, HOT_DAY) => {
                Arc::new(AgentDay::read_hours(store, org, day, part_from, part_to)?)
            }
            hit_or_miss => {
                let packed = Arc::new(AgentDay::read(store, org, day)?);
                if let Err(version) = hit_or_miss {
                    cache.insert(key, version, Day::Agents(packed.clone()));
                }
                packed
            }
        };
        days.push((packed, part_from, part_to));
        day += DAY_MS;
    }
    Ok(days)
}

/// The UTC days `first..last` from the first to the last that hold rows of `table` within
/// `from..to` (ms; both tables' keys lead with their hour or day), or `None` without any: two
/// seeks, so that a range of centuries costs what its days with data cost, and the cache is
/// never filled with days that cannot hold a row.
fn data_days(
    store: &dyn Store,
    org: &OrgId,
    table: EventTable,
    from: u64,
    to: u64,
) -> Result<Option<(u64, u64)>, ServerError> {
    let (lo, hi) = (keys::time_floor(from), keys::time_floor(to));
    let edge = |reverse| -> Result<Option<u64>, ServerError> {
        let entry = store
            .event_entries(org, table, &lo, Some(&hi), reverse)
            .next();
        let Some(entry) = entry else {
            return Ok(None);
        };
        let (key, _) = entry?;
        Ok(rollup::leading_ms(&key).map(rollup::day_of))
    };
    match (edge(false)?, edge(true)?) {
        (Some(first), Some(last)) => Ok(Some((first, last + DAY_MS))),
        _ => Ok(None),
    }
}

/// Calls `f` with each hourly total of `from..to`.
fn hour_rows(
    store: &dyn Store,
    org: &OrgId,
    table: EventTable,
    from: u64,
    to: u64,
    f: impl FnMut(u64, Counts),
) -> Result<(), ServerError> {
    hour_rows_of(store, org, table, None, from, to, f)
}

/// How an hourly table's key names its hour.
type HourOfKey = fn(&[u8]) -> Option<u64>;

/// Calls `f` with each hourly row of `from..to`: of the totals, or of `kind`'s series.
fn hour_rows_of(
    store: &dyn Store,
    org: &OrgId,
    table: EventTable,
    kind: Option<&str>,
    from: u64,
    to: u64,
    mut f: impl FnMut(u64, Counts),
) -> Result<(), ServerError> {
    let (from, to, hour_of): (_, _, HourOfKey) = match kind {
        Some(kind) => (
            rollup::kind_series_key(kind, from),
            rollup::kind_series_key(kind, to),
            rollup::kind_series_hour,
        ),
        None => (
            rollup::hour_total_key(from),
            rollup::hour_total_key(to),
            rollup::leading_ms,
        ),
    };
    for row in scan(store, org, table, &from, &to) {
        let (key, value) = row?;
        let (Some(hour), Some(counts)) = (hour_of(&key), Counts::decode(&value)) else {
            tracing::warn!(org = %org, ?table, "an hourly event count does not decode; skipped");
            continue;
        };
        f(hour, counts);
    }
    Ok(())
}

/// The range `[start, end)` cut at UTC days: the whole days inside it, if any, and the hours
/// before and after them.
struct Spans {
    start: u64,
    end: u64,
    days: Option<(u64, u64)>,
}

impl Spans {
    fn of(start: u64, end: u64) -> Self {
        let first = start.div_ceil(DAY_MS).saturating_mul(DAY_MS);
        let last = rollup::day_of(end);
        Self {
            start,
            end,
            days: (first < last).then_some((first, last)),
        }
    }

    /// The spans the hourly rows answer: all of it without whole days, else the edges.
    fn hours(&self) -> Vec<(u64, u64)> {
        match self.days {
            None => vec![(self.start, self.end)],
            Some((first, last)) => [(self.start, first), (last, self.end)]
                .into_iter()
                .filter(|(a, b)| a < b)
                .collect(),
        }
    }
}

/// The rows of `table` from `from` to `to` (exclusive), in key order.
fn scan<'a>(
    store: &'a dyn Store,
    org: &OrgId,
    table: EventTable,
    from: &[u8],
    to: &[u8],
) -> impl Iterator<Item = Result<(Vec<u8>, Vec<u8>), ServerError>> + use<'a> {
    store
        .event_entries(org, table, from, Some(to), false)
        .map(|row| row.map_err(ServerError::from))
}

/// Adds `n` to `name`'s count, unless it is 0 (a name is listed only with occurrences).
fn tally(counts: &mut HashMap<String, u64>, name: &str, n: u64) {
    if n == 0 {
        return;
    }
    match counts.get_mut(name) {
        Some(c) => *c += n,
        None => {
            counts.insert(name.to_owned(), n);
        }
    }
}

fn add_severities(into: &mut [u64; 4], counts: &Counts) {
    for (slot, n) in into.iter_mut().zip(counts.0) {
        *slot += n;
    }
}

fn empty_steps(q: &StatsQuery) -> Vec<StatsStep> {
    let n_steps = (q.end_ms - q.start_ms).div_ceil(q.step_ms);
    (0..n_steps)
        .map(|i| StatsStep {
            start_ms: q.start_ms + i * q.step_ms,
            ..StatsStep::default()
        })
        .collect()
}

/// The rate's window start, the previous window's start, and the end of both: the window's
/// whole hours before the current one, plus the current hour so far.
fn rate_windows(q: &StatsQuery) -> (u64, u64, u64) {
    let current_hour = keys::hour_of(q.now_ms);
    let window_start = (current_hour + keys::HOUR_MS).saturating_sub(q.rate_window_ms);
    let previous_start = window_start.saturating_sub(q.rate_window_ms);
    (window_start, previous_start, current_hour + keys::HOUR_MS)
}

/// Occurrences in the rate's window and in the one before, from the hourly kind table.
fn rate_counts(store: &dyn Store, org: &OrgId, q: &StatsQuery) -> Result<(u64, u64), ServerError> {
    let (window_start, previous_start, end) = rate_windows(q);
    let mut counts = (0, 0);
    for count in kind_hours(store, org, &q.filter, previous_start, end) {
        let count = count?;
        if count.hour_ms >= window_start {
            counts.0 += count.count;
        } else {
            counts.1 += count.count;
        }
    }
    Ok(counts)
}

fn finish(
    q: &StatsQuery,
    mut steps: Vec<StatsStep>,
    top_kinds: Vec<(String, u64)>,
    top_agents: Vec<(AgentId, u64)>,
    total: u64,
    (in_window, in_previous): (u64, u64),
) -> Stats {
    for step in &mut steps {
        step.by_kind.retain(|_, n| *n > 0);
    }
    let (window_start, _, _) = rate_windows(q);
    let window_minutes = (q.now_ms - window_start).max(1) as f64 / 60_000.0;
    let previous_minutes = q.rate_window_ms as f64 / 60_000.0;
    Stats {
        steps,
        top_kinds,
        top_agents,
        total,
        rate_per_minute: in_window as f64 / window_minutes,
        previous_rate_per_minute: in_previous as f64 / previous_minutes,
    }
}

/// Counts over hours `from..to` (ms, whole hours) that `filter` matches, yielded one by one
/// from the hourly kind table.
fn kind_hours<'a>(
    store: &'a dyn Store,
    org: &OrgId,
    filter: &'a Filter,
    from: u64,
    to: u64,
) -> impl Iterator<Item = Result<HourCount, ServerError>> + 'a {
    let table = EventTable::KindHours;
    scan(
        store,
        org,
        table,
        &keys::time_floor(from),
        &keys::time_floor(to),
    )
    .filter_map(move |entry| {
        let (key, value) = match entry {
            Ok(kv) => kv,
            Err(e) => return Some(Err(e)),
        };
        let Some(count) = keys::parse_kind_hour(&key, &value) else {
            tracing::warn!("an hourly event count does not decode; skipped");
            return None;
        };
        let wanted = filter.matches_kind(&count.kind, count.severity);
        wanted.then_some(Ok(count))
    })
}

/// Everything from the hourly agent counts: the one table that knows agents by hour.
fn by_agent_days(
    source: (&dyn Store, &DayCache),
    org: &OrgId,
    q: &StatsQuery,
) -> Result<Stats, ServerError> {
    let mut steps = empty_steps(q);
    let shape = Steps {
        start_ms: q.start_ms,
        step_ms: q.step_ms,
        n: steps.len(),
    };
    let days = agent_days(source, org, q.start_ms, q.end_ms)?;
    let mut tally = agent_day::Tally::new(shape);
    for (day, from, to) in &days {
        tally.add(day, &q.filter, *from, *to);
    }
    let total = tally.kinds.values().sum();
    let top_kinds = top(tally.kinds, q.top);
    let names: Vec<&str> = top_kinds.iter().map(|(k, _)| k.as_str()).collect();
    let parts: Vec<_> = days.iter().map(|(d, a, b)| (&**d, *a, *b)).collect();
    let by_kind = agent_day::kinds_by_step(&parts, &q.filter, &names, shape);
    for ((step, by_severity), by_kind) in steps.iter_mut().zip(tally.by_step).zip(by_kind) {
        step.by_severity = by_severity;
        step.by_kind = by_kind.into_iter().collect();
    }

    // The rate's two windows as two steps: the previous one, then the current one.
    let (window_start, previous_start, end) = rate_windows(q);
    let windows = Steps {
        start_ms: previous_start,
        step_ms: q.rate_window_ms,
        n: 2,
    };
    let mut rate = agent_day::Tally::new(windows);
    for (day, from, to) in agent_days(source, org, previous_start, end)? {
        rate.add(&day, &q.filter, from, to);
    }
    let [previous, current] = [0, 1].map(|i| rate.by_step[i].iter().sum::<u64>());
    debug_assert_eq!(window_start, previous_start + q.rate_window_ms);
    Ok(finish(
        q,
        steps,
        top_kinds,
        top_named(tally.agents, q.top),
        total,
        (current, previous),
    ))
}

/// The `n` largest counts, largest first, ties by name.
fn top(counts: HashMap<String, u64>, n: usize) -> Vec<(String, u64)> {
    let mut all: Vec<_> = counts.into_iter().collect();
    all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    all.truncate(n);
    all
}

fn top_named(counts: HashMap<String, u64>, n: usize) -> Vec<(AgentId, u64)> {
    top(counts, n)
        .into_iter()
        .map(|(agent, count)| (AgentId::new(agent), count))
        .collect()
}

#[cfg(test)]
mod tests;
