//! The coarser event counts kept beside the hourly ones, so statistics over weeks read
//! thousands of rows instead of millions: their keys, their one fixed-size value, and the
//! rebuild of all of them from the hourly tables (what the schema 4 migration runs).
//!
//! | table | key | value |
//! |---|---|---|
//! | [`HourTotals`](EventTable::HourTotals) | `{hour ms BE}` | [`Counts`] |
//! | [`KindSeries`](EventTable::KindSeries) | `{kind}\0{hour ms BE}` | [`Counts`] |
//! | [`DayKinds`](EventTable::DayKinds) | `{day ms BE}{kind}` | [`Counts`] |
//! | [`DayAgents`](EventTable::DayAgents) | `{day ms BE}{agent}` | [`Counts`] |
//!
//! Days are UTC days (multiples of 24 h since the Unix epoch).
//!
//! Invariant: every row is the sum, by severity, of the hourly rows
//! ([`KindHours`](EventTable::KindHours), [`AgentHours`](EventTable::AgentHours)) it covers.
//! The events task keeps it so by adding each occurrence to its hourly and coarser rows in the
//! same commit (a late event lands in its own hour and day); retention removes a day's rows
//! only once the whole day is past the counts' retention, so a day row never covers less than
//! the hourly rows still kept.

use std::collections::{BTreeMap, HashMap};

use super::keys::{self, HOUR_MS, Severity};
use crate::domain::AgentId;
use crate::store::EventTable;

pub const DAY_MS: u64 = 24 * HOUR_MS;

/// The tables this module derives from the hourly ones.
pub const DERIVED: [EventTable; 4] = [
    EventTable::HourTotals,
    EventTable::KindSeries,
    EventTable::DayKinds,
    EventTable::DayAgents,
];

/// The start of the UTC day `ms` falls in.
pub fn day_of(ms: u64) -> u64 {
    ms - ms % DAY_MS
}

/// Occurrences by severity, info first: a row of every table here, stored as four big-endian
/// `u64`s (32 bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts(pub [u64; 4]);

impl Counts {
    pub const BYTES: usize = 32;

    pub fn one(severity: Severity) -> Self {
        let mut counts = Self::default();
        counts.add(severity, 1);
        counts
    }

    pub fn add(&mut self, severity: Severity, n: u64) {
        let slot = &mut self.0[severity as usize - 1];
        *slot = slot.saturating_add(n);
    }

    pub fn merge(&mut self, other: &Counts) {
        for (mine, theirs) in self.0.iter_mut().zip(other.0) {
            *mine = mine.saturating_add(theirs);
        }
    }

    /// The sum of the severities at or above `min` (all with `None`).
    pub fn at_least(&self, min: Option<Severity>) -> u64 {
        let from = min.map_or(0, |s| s as usize - 1);
        self.0[from..].iter().sum()
    }

    /// The counts with the severities below `min` zeroed.
    pub fn masked(&self, min: Option<Severity>) -> Counts {
        let from = min.map_or(0, |s| s as usize - 1);
        let mut out = *self;
        out.0[..from].fill(0);
        out
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::BYTES);
        for n in self.0 {
            out.extend_from_slice(&n.to_be_bytes());
        }
        out
    }

    /// `None` for a value that is not 32 bytes.
    pub fn decode(value: &[u8]) -> Option<Counts> {
        let bytes: &[u8; Self::BYTES] = value.try_into().ok()?;
        let mut out = [0; 4];
        for (slot, chunk) in out.iter_mut().zip(bytes.chunks_exact(8)) {
            *slot = u64::from_be_bytes(chunk.try_into().ok()?);
        }
        Some(Counts(out))
    }
}

/// `{hour ms BE}`.
pub fn hour_total_key(hour_ms: u64) -> Vec<u8> {
    hour_ms.to_be_bytes().to_vec()
}

/// `{kind}\0{hour ms BE}`: kinds are dotted lowercase names, so a NUL ends one.
pub fn kind_series_key(kind: &str, hour_ms: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(kind.len() + 9);
    key.extend_from_slice(kind.as_bytes());
    key.push(0);
    key.extend_from_slice(&hour_ms.to_be_bytes());
    key
}

/// `{day ms BE}{kind}`.
pub fn day_kind_key(day_ms: u64, kind: &str) -> Vec<u8> {
    let mut key = day_ms.to_be_bytes().to_vec();
    key.extend_from_slice(kind.as_bytes());
    key
}

/// `{day ms BE}{agent}`.
pub fn day_agent_key(day_ms: u64, agent: &AgentId) -> Vec<u8> {
    let mut key = day_ms.to_be_bytes().to_vec();
    key.extend_from_slice(agent.as_str().as_bytes());
    key
}

/// The leading big-endian `u64` of a key (an hour or a day).
pub fn leading_ms(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.get(..8)?.try_into().ok()?))
}

/// The text after the leading `u64` of a day key: its kind or agent.
pub fn day_key_name(key: &[u8]) -> Option<&str> {
    std::str::from_utf8(key.get(8..)?).ok()
}

/// The hour of a [`kind_series_key`].
pub fn kind_series_hour(key: &[u8]) -> Option<u64> {
    let at = key.len().checked_sub(8)?;
    Some(u64::from_be_bytes(key.get(at..)?.try_into().ok()?))
}

/// Rebuilds the derived rows from the hourly rows, fed in key order (hour order), one table
/// at a time: what fresh ingest would have written for the same occurrences.
#[derive(Default)]
pub struct Rebuild {
    hour_totals: BTreeMap<u64, Counts>,
    kind_series: HashMap<(String, u64), Counts>,
    day_kinds: HashMap<(u64, String), Counts>,
    day_agents: HashMap<(u64, String), Counts>,
}

/// One derived row: its table, key and value.
pub type Row = (EventTable, Vec<u8>, Vec<u8>);

impl Rebuild {
    /// Adds one [`KindHours`](EventTable::KindHours) row; `false` if it does not parse.
    pub fn kind_hour(&mut self, key: &[u8], value: &[u8]) -> bool {
        let Some(row) = keys::parse_kind_hour(key, value) else {
            return false;
        };
        self.hour_totals
            .entry(row.hour_ms)
            .or_default()
            .add(row.severity, row.count);
        self.day_kinds
            .entry((day_of(row.hour_ms), row.kind.clone()))
            .or_default()
            .add(row.severity, row.count);
        self.kind_series
            .entry((row.kind, row.hour_ms))
            .or_default()
            .add(row.severity, row.count);
        true
    }

    /// Adds one [`AgentHours`](EventTable::AgentHours) row; `false` if it does not parse.
    pub fn agent_hour(&mut self, key: &[u8], value: &[u8]) -> bool {
        let Some(row) = keys::parse_agent_hour(key, value) else {
            return false;
        };
        let Some(agent) = row.agent else {
            return false;
        };
        self.day_agents
            .entry((day_of(row.hour_ms), agent.as_str().to_owned()))
            .or_default()
            .add(row.severity, row.count);
        true
    }

    /// How many rows [`Rebuild::drain`] would give now.
    pub fn pending(&self) -> usize {
        self.hour_totals.len()
            + self.kind_series.len()
            + self.day_kinds.len()
            + self.day_agents.len()
    }

    /// The rows gathered so far, complete for every day strictly before `before_day` (rows of
    /// later days stay, to be completed by later hourly rows). `u64::MAX`: everything.
    pub fn drain(&mut self, before_day: u64) -> Vec<Row> {
        let mut rows = Vec::new();
        let done = |ms: u64| before_day == u64::MAX || day_of(ms) < before_day;
        let closed = if before_day == u64::MAX {
            std::mem::take(&mut self.hour_totals)
        } else {
            let later = self.hour_totals.split_off(&before_day);
            std::mem::replace(&mut self.hour_totals, later)
        };
        for (hour, counts) in closed {
            rows.push((
                EventTable::HourTotals,
                hour_total_key(hour),
                counts.encode(),
            ));
        }
        for ((kind, hour), counts) in self.kind_series.extract_if(|(_, h), _| done(*h)) {
            rows.push((
                EventTable::KindSeries,
                kind_series_key(&kind, hour),
                counts.encode(),
            ));
        }
        for ((day, kind), counts) in self.day_kinds.extract_if(|(d, _), _| done(*d)) {
            rows.push((
                EventTable::DayKinds,
                day_kind_key(day, &kind),
                counts.encode(),
            ));
        }
        for ((day, agent), counts) in self.day_agents.extract_if(|(d, _), _| done(*d)) {
            rows.push((
                EventTable::DayAgents,
                day_agent_key(day, &AgentId::new(&agent)),
                counts.encode(),
            ));
        }
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_round_trip_and_mask_by_severity() {
        let mut counts = Counts::one(Severity::Warning);
        counts.add(Severity::Critical, 5);
        counts.add(Severity::Info, 2);
        assert_eq!(Counts::decode(&counts.encode()), Some(counts));
        assert_eq!(counts.encode().len(), Counts::BYTES);
        assert_eq!(counts.at_least(None), 8);
        assert_eq!(counts.at_least(Some(Severity::Warning)), 6);
        assert_eq!(counts.masked(Some(Severity::Error)).0, [0, 0, 0, 5]);
        assert_eq!(Counts::decode(&[0; 8]), None);
    }

    #[test]
    fn derived_keys_parse_back_and_order_by_time() {
        let key = kind_series_key("ssh.fail", 7 * HOUR_MS);
        assert_eq!(kind_series_hour(&key), Some(7 * HOUR_MS));
        assert!(key < kind_series_key("ssh.fail", 8 * HOUR_MS));
        assert!(kind_series_key("ssh", u64::MAX) < kind_series_key("ssh.fail", 0));
        let key = day_agent_key(3 * DAY_MS, &AgentId::new("ag-1"));
        assert_eq!(leading_ms(&key), Some(3 * DAY_MS));
        assert_eq!(day_key_name(&key), Some("ag-1"));
        assert_eq!(day_of(3 * DAY_MS + 5 * HOUR_MS), 3 * DAY_MS);
    }

    #[test]
    fn a_rebuild_sums_hours_into_days_and_keeps_open_days() {
        let mut rebuild = Rebuild::default();
        let agent = AgentId::new("a");
        for (hour, severity) in [
            (DAY_MS - HOUR_MS, Severity::Info),
            (DAY_MS + HOUR_MS, Severity::Error),
        ] {
            assert!(rebuild.agent_hour(
                &keys::agent_hour_key(hour, &agent, severity, "x.y"),
                &keys::encode_u64(2)
            ));
            assert!(rebuild.kind_hour(
                &keys::kind_hour_key(hour, severity, "x.y"),
                &keys::encode_u64(2)
            ));
        }
        let closed = rebuild.drain(DAY_MS);
        assert!(closed.contains(&(
            EventTable::DayAgents,
            day_agent_key(0, &agent),
            Counts([2, 0, 0, 0]).encode()
        )));
        assert_eq!(closed.len(), 4, "{closed:?}");
        let rest = rebuild.drain(u64::MAX);
        assert!(rest.contains(&(
            EventTable::DayKinds,
            day_kind_key(DAY_MS, "x.y"),
            Counts([0, 0, 2, 0]).encode()
        )));
        assert_eq!(rest.len(), 4);
        assert_eq!(rebuild.pending(), 0);
        assert!(!rebuild.kind_hour(b"short", b"x"));
    }
}
