//! The key layout and value encodings of the sled store (the table in `store/sled.rs`): key
//! builders and parsers, the record kinds, and the codecs of stored values and their errors.
//! Byte order of keys is the order scans rely on: time (or seq) order within a series.

use std::ops::Bound;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Result, StoreError};
use crate::domain::{AgentId, OrgId};
use crate::store::rollup::Resolution;
use crate::store::wal::AgentKey;

/// The kinds of record: what follows `{org}/` in a key, up to the next `/`.
pub(super) const AGENT: &[u8] = b"a";
pub(super) const LIVE: &[u8] = b"l";
pub(super) const TRANSITION: &[u8] = b"x";
pub(super) const TOKEN: &[u8] = b"t";
pub(super) const ENROLLMENT_TOKEN: &[u8] = b"e";
pub(super) const ORG: &[u8] = b"o";
pub(super) const TOMBSTONE: &[u8] = b"d";
pub(super) const AUDIT: &[u8] = b"u";
pub(super) const PROGRESS: &[u8] = b"q";
/// A token's last use: `{org}/n/{token}`.
pub(super) const TOKEN_USE: &[u8] = b"n";
pub(super) const COMMAND: &[u8] = b"c";
pub(super) const ACTIVE_COMMAND: &[u8] = b"r";
pub(super) const INVOCATION: &[u8] = b"i";
pub(super) const COMMAND_EVENT: &[u8] = b"v";
pub(super) const IDEMPOTENCY: &[u8] = b"k";
/// Alert rules created over RPC: `{org}/ar/{rule}`.
pub(super) const ALERT_RULE: &[u8] = b"ar";
/// Alerts, firing and resolved: `{org}/al/{alert id}`.
pub(super) const ALERT: &[u8] = b"al";
/// Sealed chunks of samples: `{org}/s/{agent}/{max time ms BE}{first seq BE}`.
pub(super) const CHUNK: &[u8] = b"s";
/// Head records: `{org}/hd/{agent}`.
pub(super) const HEAD: &[u8] = b"hd";
/// Rollup blocks (`rollup/block.rs`): `{org}/b5/{agent}/{block start ms BE}` (an hour of
/// 5-minute buckets) and `{org}/bh/...` (six hours of 1-hour buckets).
pub(super) const ROLLUP_5M: &[u8] = b"b5";
pub(super) const ROLLUP_1H: &[u8] = b"bh";
/// Rollups one bucket a record, as schema 4 kept them (`{org}/r5/{agent}/{bucket start ms BE}`
/// and `{org}/rh/...`): read only by the migration to schema 5.
pub(super) const BUCKET_5M_V4: &[u8] = b"r5";
pub(super) const BUCKET_1H_V4: &[u8] = b"rh";
/// Events tables (`event.rs`): `{org}/E{table}/...`.
pub(super) const EVENTS: &[u8] = b"Ee";
pub(super) const EVENT_MARKS: &[u8] = b"Em";
pub(super) const EVENT_FINGERPRINTS: &[u8] = b"Ef";
pub(super) const EVENT_CHANGES: &[u8] = b"Ec";
pub(super) const EVENT_KIND_HOURS: &[u8] = b"Ek";
pub(super) const EVENT_AGENT_HOURS: &[u8] = b"Ea";
pub(super) const EVENT_HOUR_TOTALS: &[u8] = b"Et";
pub(super) const EVENT_KIND_SERIES: &[u8] = b"Es";
pub(super) const EVENT_DAY_KINDS: &[u8] = b"EK";
pub(super) const EVENT_DAY_AGENTS: &[u8] = b"EA";
/// Every kind above, for the test that no two share a key prefix.
#[cfg(test)]
pub(super) const KINDS: &[&[u8]] = &[
    AGENT,
    LIVE,
    TRANSITION,
    TOKEN,
    ENROLLMENT_TOKEN,
    ORG,
    TOMBSTONE,
    AUDIT,
    PROGRESS,
    TOKEN_USE,
    COMMAND,
    ACTIVE_COMMAND,
    INVOCATION,
    COMMAND_EVENT,
    IDEMPOTENCY,
    ALERT_RULE,
    ALERT,
    CHUNK,
    HEAD,
    ROLLUP_5M,
    ROLLUP_1H,
    BUCKET_5M_V4,
    BUCKET_1H_V4,
    EVENTS,
    EVENT_MARKS,
    EVENT_FINGERPRINTS,
    EVENT_CHANGES,
    EVENT_KIND_HOURS,
    EVENT_AGENT_HOURS,
    EVENT_HOUR_TOTALS,
    EVENT_KIND_SERIES,
    EVENT_DAY_KINDS,
    EVENT_DAY_AGENTS,
];
/// Id of the one org record under `{org}/o/`.
pub(super) const ORG_RECORD_ID: &str = "info";

/// Length of the `{millis}{seq or counter}` suffix of a series key.
pub(super) const SERIES_SUFFIX_LEN: usize = 16;

// === keys ===

/// `{org}/{kind}/`: the prefix of every record of one kind in one org.
pub(super) fn section(org: &str, kind: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(org.len() + kind.len() + 2);
    key.extend_from_slice(org.as_bytes());
    key.push(b'/');
    key.extend_from_slice(kind);
    key.push(b'/');
    key
}

/// `{org}/{kind}/{id}`.
pub(super) fn record_key(org: &str, kind: &[u8], id: &str) -> Vec<u8> {
    let mut key = section(org, kind);
    key.extend_from_slice(id.as_bytes());
    key
}

/// `{org}/u/{seq}`: one audit record.
pub(super) fn audit_key(org: &str, seq: u64) -> Vec<u8> {
    let mut key = section(org, AUDIT);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// `{org}/{kind}/{agent}/`: the prefix of one agent's series (chunks, rollups, transitions).
pub(super) fn series_prefix(org: &OrgId, kind: &[u8], agent: &AgentId) -> Vec<u8> {
    let mut key = record_key(org.as_str(), kind, agent.as_str());
    key.push(b'/');
    key
}

/// The id a record's key names after `prefix` (its section).
pub(super) fn key_id<'k>(prefix: &[u8], key: &'k [u8]) -> Result<&'k str> {
    std::str::from_utf8(&key[prefix.len()..])
        .map_err(|e| corrupt(key, format!("id is not utf-8: {e}")))
}

/// `{series}{millis BE}{n BE}`: a transition (`n` a counter) or a chunk (`millis` its newest
/// sample's time, `n` its first seq).
pub(super) fn series_key(series: &[u8], millis: u64, n: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(series.len() + SERIES_SUFFIX_LEN);
    key.extend_from_slice(series);
    key.extend_from_slice(&millis.to_be_bytes());
    key.extend_from_slice(&n.to_be_bytes());
    key
}

/// The exclusive upper bound of the keys that start with `prefix`.
pub(super) fn prefix_end(prefix: &[u8]) -> Bound<Vec<u8>> {
    successor(prefix).map_or(Bound::Unbounded, Bound::Excluded)
}

/// The smallest key greater than every key that starts with `prefix`: for `{org}/`, `{org}0`.
/// `None` if there is none (`prefix` is all `0xff`, which no key of this store is).
pub(super) fn successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut next = prefix.to_vec();
    while let Some(last) = next.pop() {
        if last < u8::MAX {
            next.push(last + 1);
            return Some(next);
        }
    }
    None
}

/// The millisecond stamped first in a key of `series` that is `suffix_len` bytes longer.
pub(super) fn series_millis(series: &[u8], key: &[u8], suffix_len: usize) -> Result<u64> {
    key.get(series.len()..series.len() + 8)
        .filter(|_| key.len() == series.len() + suffix_len)
        .and_then(|bytes| <[u8; 8]>::try_from(bytes).ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| corrupt(key, "malformed series key"))
}

/// `{org}/hd/{agent}`: an agent's head record.
pub(super) fn head_key(key: &AgentKey) -> Vec<u8> {
    record_key(key.org.as_str(), HEAD, key.agent.as_str())
}

/// `{org}/s/{agent}/`.
pub(super) fn chunk_series(key: &AgentKey) -> Vec<u8> {
    series_prefix(&key.org, CHUNK, &key.agent)
}

/// The section of `resolution`'s rollups.
pub(super) fn rollup_kind(resolution: Resolution) -> &'static [u8] {
    match resolution {
        Resolution::FiveMinutes => ROLLUP_5M,
        Resolution::OneHour => ROLLUP_1H,
    }
}

/// `{org}/b5/{agent}/` or `{org}/bh/{agent}/`.
pub(super) fn rollup_series(key: &AgentKey, resolution: Resolution) -> Vec<u8> {
    series_prefix(&key.org, rollup_kind(resolution), &key.agent)
}

/// `{series}{millis BE}`: a rollup block's key (its start), or where a series' records stamped
/// at `start_ms` begin.
pub(super) fn bucket_key(series: &[u8], start_ms: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(series.len() + 8);
    key.extend_from_slice(series);
    key.extend_from_slice(&start_ms.to_be_bytes());
    key
}

/// Length of the `{millis}` suffix of a rollup block's key.
pub(super) const BUCKET_SUFFIX_LEN: usize = 8;

/// Milliseconds since the Unix epoch; earlier times clamp to 0, later than `u64::MAX` to that.
pub(super) fn millis(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |since| {
        u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
    })
}

// === values and errors ===

/// `last_seq` then `last_seen` in milliseconds, both big-endian u64.
pub(super) fn encode_progress(last_seq: u64, last_seen: SystemTime) -> Vec<u8> {
    let mut value = Vec::with_capacity(16);
    value.extend_from_slice(&last_seq.to_be_bytes());
    value.extend_from_slice(&millis(last_seen).to_be_bytes());
    value
}

/// A token's last use: milliseconds since the epoch, big-endian `u64`.
pub(super) fn encode_token_use(at: SystemTime) -> Vec<u8> {
    millis(at).to_be_bytes().to_vec()
}

pub(super) fn decode_token_use(key: &[u8], value: &[u8]) -> Result<SystemTime> {
    let bytes: [u8; 8] = value.try_into().map_err(|_| {
        corrupt(
            key,
            format!("token use record is {} bytes, not 8", value.len()),
        )
    })?;
    Ok(UNIX_EPOCH + Duration::from_millis(u64::from_be_bytes(bytes)))
}

pub(super) fn decode_progress(key: &[u8], value: &[u8]) -> Result<(u64, SystemTime)> {
    let bytes: [u8; 16] = value.try_into().map_err(|_| {
        corrupt(
            key,
            format!("progress record is {} bytes, not 16", value.len()),
        )
    })?;
    let (seq, ms) = bytes.split_at(8);
    let seq = u64::from_be_bytes(seq.try_into().map_err(|_| corrupt(key, "progress seq"))?);
    let ms = u64::from_be_bytes(ms.try_into().map_err(|_| corrupt(key, "progress time"))?);
    Ok((seq, UNIX_EPOCH + Duration::from_millis(ms)))
}

/// Serializes a record (`what`, for the error) with postcard: command records, whose specs may
/// carry up to 256 KiB of standard input and whose events carry output bytes.
pub(super) fn encode_compact<T: Serialize>(value: &T, what: &'static str) -> Result<Vec<u8>> {
    postcard::to_stdvec(value).map_err(|e| unencodable(what, e))
}

pub(super) fn decode_compact<T: DeserializeOwned>(key: &[u8], value: &[u8]) -> Result<T> {
    postcard::from_bytes(value).map_err(|e| corrupt(key, e.to_string()))
}

/// Serializes a record (`what`, for the error) as JSON.
pub(super) fn encode<T: Serialize>(value: &T, what: &'static str) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| unencodable(what, e))
}

fn unencodable(what: &'static str, err: impl std::fmt::Display) -> StoreError {
    StoreError::Unencodable {
        what,
        detail: err.to_string(),
    }
}

pub(super) fn decode<T: DeserializeOwned>(key: &[u8], value: &[u8]) -> Result<T> {
    serde_json::from_slice(value).map_err(|e| corrupt(key, e.to_string()))
}

/// Refuses a record whose own org or id disagrees with the key it is stored under.
pub(super) fn check_owner(
    org: &str,
    id: &str,
    record_org: &OrgId,
    record_id: &str,
    kind: &[u8],
) -> Result<()> {
    if record_org.as_str() == org && record_id == id {
        return Ok(());
    }
    Err(corrupt(
        &record_key(org, kind, id),
        format!("record belongs to {record_org}/{record_id}"),
    ))
}

pub(super) fn corrupt(key: &[u8], detail: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        key: key.escape_ascii().to_string(),
        detail: detail.into(),
    }
}

pub(super) fn backend(err: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Backend(Box::new(err))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys are `{org}/{kind}/...`: distinct kinds without a `/` never share a section.
    #[test]
    fn every_kind_of_record_has_its_own_section() {
        let mut seen = std::collections::HashSet::new();
        for kind in KINDS {
            let shown = kind.escape_ascii().to_string();
            assert!(!kind.is_empty() && !kind.contains(&b'/'), "kind {shown:?}");
            assert!(seen.insert(kind), "two kinds of record share {shown:?}");
        }
    }
}
