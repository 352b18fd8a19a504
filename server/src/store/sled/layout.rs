//! The key layout and value encodings of the sled store (the table in `store/sled.rs`): key
//! builders and parsers, the record kinds, and the codecs of stored values and their errors.
//! Byte order of keys is the order scans rely on: time (or seq) order within a series.

use std::fmt;
use std::ops::Bound;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::de::{DeserializeOwned, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use super::{Result, StoreError};
use crate::domain::{AgentId, OrgId, Sample, SampleTotals, Time};

/// The kinds of record: the byte after `{org}/` in a key.
pub(super) const AGENT: u8 = b'a';
pub(super) const LIVE: u8 = b'l';
pub(super) const SAMPLE: u8 = b'm';
pub(super) const TRANSITION: u8 = b'x';
pub(super) const TOKEN: u8 = b't';
pub(super) const ENROLLMENT_TOKEN: u8 = b'e';
pub(super) const ORG: u8 = b'o';
pub(super) const TOMBSTONE: u8 = b'd';
pub(super) const AUDIT: u8 = b'u';
pub(super) const PROGRESS: u8 = b'q';
pub(super) const TOKEN_USE: u8 = b'n';
pub(super) const COMMAND: u8 = b'c';
pub(super) const ACTIVE_COMMAND: u8 = b'r';
pub(super) const INVOCATION: u8 = b'i';
pub(super) const COMMAND_EVENT: u8 = b'v';
pub(super) const IDEMPOTENCY: u8 = b'k';
/// Every kind above, for the test that no two share a byte.
#[cfg(test)]
pub(super) const KINDS: &[u8] = &[
    AGENT,
    LIVE,
    SAMPLE,
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
];
/// Id of the one org record under `{org}/o/`.
pub(super) const ORG_RECORD_ID: &str = "info";

/// Length of the `{millis}{seq or counter}` suffix of a series key.
pub(super) const SERIES_SUFFIX_LEN: usize = 16;

// === keys ===

/// `{org}/{kind}/`: the prefix of every record of one kind in one org.
pub(super) fn section(org: &str, kind: u8) -> Vec<u8> {
    let mut key = Vec::with_capacity(org.len() + 3);
    key.extend_from_slice(org.as_bytes());
    key.extend_from_slice(&[b'/', kind, b'/']);
    key
}

/// `{org}/{kind}/{id}`.
pub(super) fn record_key(org: &str, kind: u8, id: &str) -> Vec<u8> {
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

/// `{org}/{kind}/{agent}/`: the prefix of one agent's series (samples or transitions).
pub(super) fn series_prefix(org: &OrgId, kind: u8, agent: &AgentId) -> Vec<u8> {
    let mut key = record_key(org.as_str(), kind, agent.as_str());
    key.push(b'/');
    key
}

/// The id a record's key names after `prefix` (its section).
pub(super) fn key_id<'k>(prefix: &[u8], key: &'k [u8]) -> Result<&'k str> {
    std::str::from_utf8(&key[prefix.len()..])
        .map_err(|e| corrupt(key, format!("id is not utf-8: {e}")))
}

/// The `(millis, n)` of a key built by [`series_key`].
pub(super) fn series_suffix(series: &[u8], key: &[u8]) -> Result<(u64, u64)> {
    let suffix: [u8; SERIES_SUFFIX_LEN] =
        key.get(series.len()..)
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| corrupt(key, "series key has no time and counter"))?;
    let (millis, n) = suffix.split_at(8);
    let to_u64 = |b: &[u8]| b.try_into().map(u64::from_be_bytes);
    Ok((
        to_u64(millis).map_err(|_| corrupt(key, "series time"))?,
        to_u64(n).map_err(|_| corrupt(key, "series counter"))?,
    ))
}

/// `{series}{millis BE}{n BE}`.
pub(super) fn series_key(series: &[u8], millis: u64, n: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(series.len() + SERIES_SUFFIX_LEN);
    key.extend_from_slice(series);
    key.extend_from_slice(&millis.to_be_bytes());
    key.extend_from_slice(&n.to_be_bytes());
    key
}

/// The exclusive upper bound of the keys of `series` stamped at or before `millis`.
pub(super) fn after_millis(series: &[u8], millis: u64) -> Bound<Vec<u8>> {
    match millis.checked_add(1) {
        Some(next) => Bound::Excluded(series_key(series, next, 0)),
        None => prefix_end(series),
    }
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

/// The millisecond stamped in a key of `series`.
pub(super) fn series_millis(series: &[u8], key: &[u8]) -> Result<u64> {
    key.get(series.len()..series.len() + 8)
        .filter(|_| key.len() == series.len() + SERIES_SUFFIX_LEN)
        .and_then(|bytes| <[u8; 8]>::try_from(bytes).ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| corrupt(key, "malformed series key"))
}

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
    Ok((seq, UNIX_EPOCH + std::time::Duration::from_millis(ms)))
}

/// Samples are the bulk of the store and of the ingest path's work: they use postcard, a compact
/// binary serde format (about a third of the JSON size, several times cheaper to encode).
pub(super) fn encode_sample(sample: &Sample) -> Result<Vec<u8>> {
    postcard::to_stdvec(sample).map_err(|e| unencodable("sample", e))
}

pub(super) fn decode_sample(key: &[u8], value: &[u8]) -> Result<Sample> {
    postcard::from_bytes(value).map_err(|e| corrupt(key, e.to_string()))
}

/// Decodes a stored sample with its disks summed, without building the disk list: see
/// [`StoredTotals`].
pub(super) fn decode_sample_totals(key: &[u8], value: &[u8]) -> Result<SampleTotals> {
    postcard::from_bytes::<StoredTotals>(value)
        .map(SampleTotals::from)
        .map_err(|e| corrupt(key, e.to_string()))
}

/// A stored [`Sample`] read field by field in its serde order (postcard is not self-describing:
/// the order is the format), with the disk list walked instead of built: each mount point is
/// borrowed from the stored bytes, never copied, and only the counters are summed. A unit test
/// decodes the encoding of a fully populated `Sample` both ways, so a field added to `Sample`
/// fails it until it is added here too.
#[derive(Deserialize)]
struct StoredTotals {
    seq: u64,
    time: Time,
    cpu_percent: f64,
    load: [f64; 3],
    memory_used_bytes: u64,
    memory_total_bytes: u64,
    swap_used_bytes: u64,
    swap_total_bytes: u64,
    #[serde(deserialize_with = "sum_disks")]
    disks: DiskSums,
    network_rx_bytes: u64,
    network_tx_bytes: u64,
    uptime: Duration,
    process_count: u32,
}

#[derive(Default)]
struct DiskSums {
    used: u64,
    total: u64,
}

/// One stored `DiskUsage`, its mount point borrowed.
#[derive(Deserialize)]
struct DiskRef<'a> {
    #[serde(borrow, rename = "mount_point")]
    _mount_point: &'a str,
    used_bytes: u64,
    total_bytes: u64,
}

fn sum_disks<'de, D: Deserializer<'de>>(deserializer: D) -> Result<DiskSums, D::Error> {
    struct Sums;
    impl<'de> Visitor<'de> for Sums {
        type Value = DiskSums;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a list of disks")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut disks: A) -> Result<DiskSums, A::Error> {
            let mut sums = DiskSums::default();
            while let Some(disk) = disks.next_element::<DiskRef<'de>>()? {
                sums.used = sums.used.saturating_add(disk.used_bytes);
                sums.total = sums.total.saturating_add(disk.total_bytes);
            }
            Ok(sums)
        }
    }
    deserializer.deserialize_seq(Sums)
}

impl From<StoredTotals> for SampleTotals {
    fn from(stored: StoredTotals) -> Self {
        let StoredTotals {
            seq,
            time,
            cpu_percent,
            load,
            memory_used_bytes,
            memory_total_bytes,
            swap_used_bytes,
            swap_total_bytes,
            disks,
            network_rx_bytes,
            network_tx_bytes,
            uptime,
            process_count,
        } = stored;
        Self {
            seq,
            time,
            cpu_percent,
            load,
            memory_used_bytes,
            memory_total_bytes,
            swap_used_bytes,
            swap_total_bytes,
            disk_used_bytes: disks.used,
            disk_total_bytes: disks.total,
            network_rx_bytes,
            network_tx_bytes,
            uptime,
            process_count,
        }
    }
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
    kind: u8,
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
    use crate::domain::DiskUsage;

    #[test]
    fn every_kind_of_record_has_its_own_byte() {
        let mut seen = std::collections::HashSet::new();
        for kind in KINDS {
            assert!(
                seen.insert(kind),
                "two kinds of record share {:?}",
                *kind as char
            );
        }
    }

    /// Every field set to a distinct value, so a field read out of order shows.
    fn full_sample() -> Sample {
        Sample {
            seq: 7,
            time: Time::new(UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789))
                .expect("in range"),
            cpu_percent: 12.5,
            load: [0.5, 1.5, 2.5],
            memory_used_bytes: 11,
            memory_total_bytes: 12,
            swap_used_bytes: 13,
            swap_total_bytes: 14,
            disks: vec![
                DiskUsage {
                    mount_point: "/".repeat(300),
                    used_bytes: 100,
                    total_bytes: 1000,
                },
                DiskUsage {
                    mount_point: "/data".to_owned(),
                    used_bytes: u64::MAX,
                    total_bytes: 2000,
                },
            ],
            network_rx_bytes: 15,
            network_tx_bytes: 16,
            uptime: Duration::new(17, 18),
            process_count: 19,
        }
    }

    #[test]
    fn totals_decode_the_stored_sample_with_its_disks_summed() {
        let sample = full_sample();
        let value = encode_sample(&sample).expect("encode");
        let totals = decode_sample_totals(b"k", &value).expect("decode totals");
        assert_eq!(totals, SampleTotals::of(&sample));
        assert_eq!(totals.disk_used_bytes, u64::MAX, "sums saturate");
        assert_eq!(totals.disk_total_bytes, 3000);
        let without_disks = Sample {
            disks: vec![],
            ..sample
        };
        let value = encode_sample(&without_disks).expect("encode");
        assert_eq!(
            decode_sample_totals(b"k", &value).expect("decode totals"),
            SampleTotals::of(&without_disks)
        );
    }

    #[test]
    fn a_truncated_sample_is_corrupt_not_a_panic() {
        let value = encode_sample(&full_sample()).expect("encode");
        for len in [0, 1, value.len() / 2, value.len() - 1] {
            let err = decode_sample_totals(b"k", &value[..len]).expect_err("truncated");
            assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
        }
    }
}
