//! The stored form of events: the records and the byte keys of every
//! [`EventTable`](crate::store::EventTable), and the event ids and cursors clients hold.
//!
//! Invariants: every key is fixed-width big-endian where it orders (times, seqs, cursors,
//! hours), so byte order is the order scans need (time order for events, cursor order for
//! changes, hour order for counts); agent ids are `[a-z0-9-]`, so a NUL after one ends it. An
//! event id is its key written in hex and text, so reading one by id is one lookup and an id
//! can never name another org's event (the org is not in the id; every lookup is within the
//! caller's org).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::domain::{AgentId, is_valid_id};

/// How bad an event is, in increasing order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Severity {
    Info = 1,
    Warning = 2,
    Error = 3,
    Critical = 4,
}

impl Severity {
    pub const ALL: [Severity; 4] = [
        Severity::Info,
        Severity::Warning,
        Severity::Error,
        Severity::Critical,
    ];

    fn from_byte(b: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|s| *s as u8 == b)
    }
}

/// Where an event is in its lifecycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventState {
    New,
    Acknowledged,
    Resolved,
}

/// An event as an agent reported it, checked (`tether_proto::event::check_event`).
#[derive(Clone, Debug, PartialEq)]
pub struct NewEvent {
    /// 0 for an event the server itself records (`tether.rate_limited`).
    pub seq: u64,
    pub time: SystemTime,
    pub kind: String,
    pub severity: Severity,
    pub message: String,
    pub attributes: BTreeMap<String, String>,
    pub fingerprint: String,
}

/// One stored event (postcard). Times are milliseconds since the Unix epoch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    pub agent: AgentId,
    pub seq: u64,
    pub time_ms: u64,
    pub kind: String,
    pub severity: Severity,
    pub message: String,
    pub attributes: BTreeMap<String, String>,
    pub fingerprint: String,
    pub count: u64,
    pub first_seen_ms: u64,
    pub last_seen_ms: u64,
    pub state: EventState,
    pub received_at_ms: u64,
    pub state_changed_by: String,
    pub state_changed_at_ms: Option<u64>,
    pub acknowledged_by: String,
    pub acknowledged_at_ms: Option<u64>,
}

impl EventRecord {
    pub fn key(&self) -> EventKey {
        EventKey {
            time_ms: self.time_ms,
            seq: self.seq,
            agent: self.agent.clone(),
        }
    }
}

/// What happened to an event, as the change log records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    Created,
    Repeated,
    Acknowledged,
    Resolved,
    Reopened,
}

/// One entry of the change log (postcard).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChangeEntry {
    pub event: Vec<u8>,
    pub change: Change,
    pub at_ms: u64,
}

/// Where an event is stored: `{time ms BE}{seq BE}{agent}`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventKey {
    pub time_ms: u64,
    pub seq: u64,
    pub agent: AgentId,
}

impl EventKey {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut key = Vec::with_capacity(16 + self.agent.as_str().len());
        key.extend_from_slice(&self.time_ms.to_be_bytes());
        key.extend_from_slice(&self.seq.to_be_bytes());
        key.extend_from_slice(self.agent.as_str().as_bytes());
        key
    }

    pub fn from_bytes(key: &[u8]) -> Option<Self> {
        let time_ms = u64::from_be_bytes(key.get(..8)?.try_into().ok()?);
        let seq = u64::from_be_bytes(key.get(8..16)?.try_into().ok()?);
        let agent = std::str::from_utf8(key.get(16..)?).ok()?;
        is_valid_id(agent).then(|| Self {
            time_ms,
            seq,
            agent: AgentId::new(agent),
        })
    }

    /// The id clients see: the key's numbers in hex, then the agent id.
    pub fn id(&self) -> String {
        format!("{:016x}{:016x}{}", self.time_ms, self.seq, self.agent)
    }

    /// Parses an id made by [`EventKey::id`]; `None` for anything else.
    pub fn parse_id(id: &str) -> Option<Self> {
        let hex = id.get(..32)?;
        if !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return None;
        }
        let time_ms = u64::from_str_radix(&hex[..16], 16).ok()?;
        let seq = u64::from_str_radix(&hex[16..], 16).ok()?;
        let agent = &id[32..];
        is_valid_id(agent).then(|| Self {
            time_ms,
            seq,
            agent: AgentId::new(agent),
        })
    }
}

/// The first key of events at or after `ms`.
pub fn time_floor(ms: u64) -> Vec<u8> {
    ms.to_be_bytes().to_vec()
}

/// `{agent}`: an agent's settled-seq mark.
pub fn mark_key(agent: &AgentId) -> Vec<u8> {
    agent.as_str().as_bytes().to_vec()
}

/// `{agent}\0{fingerprint}`.
pub fn fingerprint_key(agent: &AgentId, fingerprint: &str) -> Vec<u8> {
    let mut key = agent.as_str().as_bytes().to_vec();
    key.push(0);
    key.extend_from_slice(fingerprint.as_bytes());
    key
}

/// A change log key: the cursor, big-endian.
pub fn cursor_key(cursor: u64) -> Vec<u8> {
    cursor.to_be_bytes().to_vec()
}

pub fn cursor_from_key(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.try_into().ok()?))
}

/// `{hour ms BE}{severity}{kind}`.
pub fn kind_hour_key(hour_ms: u64, severity: Severity, kind: &str) -> Vec<u8> {
    let mut key = hour_ms.to_be_bytes().to_vec();
    key.push(severity as u8);
    key.extend_from_slice(kind.as_bytes());
    key
}

/// `{hour ms BE}{agent}\0{severity}{kind}`.
pub fn agent_hour_key(hour_ms: u64, agent: &AgentId, severity: Severity, kind: &str) -> Vec<u8> {
    let mut key = hour_ms.to_be_bytes().to_vec();
    key.extend_from_slice(agent.as_str().as_bytes());
    key.push(0);
    key.push(severity as u8);
    key.extend_from_slice(kind.as_bytes());
    key
}

/// One hourly count, parsed from either hours table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HourCount {
    pub hour_ms: u64,
    /// `None` in the kind table.
    pub agent: Option<AgentId>,
    pub severity: Severity,
    pub kind: String,
    pub count: u64,
}

pub fn parse_kind_hour(key: &[u8], value: &[u8]) -> Option<HourCount> {
    let hour_ms = u64::from_be_bytes(key.get(..8)?.try_into().ok()?);
    let severity = Severity::from_byte(*key.get(8)?)?;
    let kind = std::str::from_utf8(key.get(9..)?).ok()?.to_owned();
    Some(HourCount {
        hour_ms,
        agent: None,
        severity,
        kind,
        count: decode_u64(value)?,
    })
}

pub fn parse_agent_hour(key: &[u8], value: &[u8]) -> Option<HourCount> {
    let row = AgentHourRow::parse(key, value)?;
    Some(HourCount {
        hour_ms: row.hour_ms,
        agent: Some(AgentId::new(row.agent)),
        severity: row.severity,
        kind: row.kind.to_owned(),
        count: row.count,
    })
}

/// One hourly agent row, borrowed from its key.
pub struct AgentHourRow<'a> {
    pub hour_ms: u64,
    pub agent: &'a str,
    pub severity: Severity,
    pub kind: &'a str,
    pub count: u64,
}

impl<'a> AgentHourRow<'a> {
    /// `None` for a key or value that is not an [`agent_hour_key`] and its count.
    pub fn parse(key: &'a [u8], value: &[u8]) -> Option<Self> {
        let hour_ms = u64::from_be_bytes(key.get(..8)?.try_into().ok()?);
        let rest = key.get(8..)?;
        let nul = rest.iter().position(|&b| b == 0)?;
        Some(Self {
            hour_ms,
            agent: std::str::from_utf8(&rest[..nul]).ok()?,
            severity: Severity::from_byte(*rest.get(nul + 1)?)?,
            kind: std::str::from_utf8(rest.get(nul + 2..)?).ok()?,
            count: decode_u64(value)?,
        })
    }
}

pub fn encode_u64(n: u64) -> Vec<u8> {
    n.to_be_bytes().to_vec()
}

pub fn decode_u64(value: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(value.try_into().ok()?))
}

pub const HOUR_MS: u64 = 3_600_000;

/// The start of the hour `ms` falls in.
pub fn hour_of(ms: u64) -> u64 {
    ms - ms % HOUR_MS
}

/// Milliseconds since the Unix epoch; earlier times clamp to 0.
pub fn millis(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

pub fn from_millis(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// Serializes a record with postcard.
///
/// # Errors
///
/// The codec's, for a value it cannot write (none of Tether's records).
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, postcard::Error> {
    postcard::to_stdvec(value)
}

/// Reads a record written by [`encode`]; `None` if it does not decode.
pub fn decode<T: for<'de> Deserialize<'de>>(value: &[u8]) -> Option<T> {
    postcard::from_bytes(value).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_order_like_keys() {
        let a = EventKey {
            time_ms: 1_700_000_000_000,
            seq: 7,
            agent: AgentId::new("ag-1"),
        };
        assert_eq!(EventKey::parse_id(&a.id()), Some(a.clone()));
        assert_eq!(EventKey::from_bytes(&a.to_bytes()), Some(a.clone()));
        let later = EventKey {
            time_ms: a.time_ms + 1,
            seq: 1,
            agent: AgentId::new("a"),
        };
        assert!(a.to_bytes() < later.to_bytes());
        for bad in ["", "xyz", &"g".repeat(32), &a.id().to_uppercase()] {
            assert_eq!(EventKey::parse_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn hour_keys_parse_back() {
        let agent = AgentId::new("ag-1");
        let key = agent_hour_key(HOUR_MS * 5, &agent, Severity::Error, "ssh.fail");
        let parsed = parse_agent_hour(&key, &encode_u64(3)).expect("parses");
        assert_eq!(
            (
                parsed.hour_ms,
                parsed.agent,
                parsed.severity,
                parsed.kind.as_str(),
                parsed.count
            ),
            (HOUR_MS * 5, Some(agent), Severity::Error, "ssh.fail", 3)
        );
        let key = kind_hour_key(HOUR_MS, Severity::Info, "a.b");
        let parsed = parse_kind_hour(&key, &encode_u64(9)).expect("parses");
        assert_eq!((parsed.kind.as_str(), parsed.count), ("a.b", 9));
    }
}
