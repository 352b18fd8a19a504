//! The write-ahead log record codec: the samples of one writer batch, for many agents, in one
//! checksummed byte string, written once per batch and replayed after a crash.
//!
//! A record holds samples exactly as a chunk stores them ([`chunk::stored`](super::chunk::stored):
//! whole milliseconds, gauges in hundredths), so replaying a record into head chunks gives the
//! same bytes as if the samples had never left memory. Agent keys, orgs and mount points are
//! interned per record: each is spelled once, then referred to by index. It is written at
//! ingest rate, so it is compact: with every sample of a batch from a different agent (the
//! usual case), about 51 bytes for a simulator sample with one disk and 91 for a real-like one
//! with three disks (the `chunk_bench` example), against 90–128 for the postcard encoding.
//! Without state carried between records, each one spells out every value in full; that, not
//! the framing, is what a sample costs here.
//!
//! Invariants: a record is self-contained (no state carries from one record to the next); the
//! checksum covers every byte but itself, so a torn or corrupted record is detected before
//! anything in it is believed; no decode path panics.
//!
//! # Format (version 1)
//!
//! | bytes | content |
//! |---|---|
//! | 0 | version, [`WAL_VERSION`] |
//! | 1..5 | CRC-32 (IEEE 802.3, as `crc32fast` computes it), little-endian, of byte 0 followed by bytes 5.. |
//! | 5.. | payload |
//!
//! The first five bytes keep this meaning in every version, so a reader checks the checksum
//! first (damage) and the version second (a newer writer). The payload is empty for a record
//! without samples; otherwise it is `varint base` (the first entry's time in ms since the Unix
//! epoch) followed by entries until its end. Varints are unsigned LEB128 and `zz` is zigzag
//! (see `bits.rs`). An entry:
//!
//! | field | encoding |
//! |---|---|
//! | key | `varint k`: below the number of keys defined so far, that key; equal to it, a new key follows: `varint o` (an org defined so far, or equal to their number: a new org id follows), then the agent id |
//! | seq | varint |
//! | time | `varint zz(time_ms − base)`, the difference taken wrapping as `i64` |
//! | cpu, load 1, load 5, load 15 | `varint zz(hundredths)` each |
//! | memory used | varint |
//! | memory total | scaled |
//! | swap used | varint |
//! | swap total | scaled |
//! | disks | `varint n`, then `n` times: `varint m` (a mount point defined so far, or equal to their number: `varint len` and the UTF-8 bytes follow), scaled used, scaled total |
//! | network rx, network tx | varint each |
//! | uptime | varint, ms |
//! | process count | varint, at most `u32::MAX` |
//!
//! An id (org or agent, `[a-z0-9-]{1,64}`) is `varint (len << 1 | packed)` then, if `packed`,
//! `len / 2` bytes whose lowercase hex spelling is the id (the server's generated agent ids are
//! hex, so they take half the room), else the `len` bytes of the id.
//!
//! *Scaled* is `varint128 ((v >> z) << 6 | z)` with `z` the number of trailing zero bits of `v`
//! (0 for 0): totals and disk usage are often multiples of large powers of two.

use std::collections::HashMap;

use super::bits::{
    ByteReader, DecodeError, put_bytes, put_uvarint, put_uvarint128, unzigzag, zigzag,
};
use super::chunk::{ChunkError, Fixed};
use crate::domain::{AgentId, DiskUsage, OrgId, Sample, is_valid_id};

/// Format version written by this build; the only one it reads.
pub const WAL_VERSION: u8 = 1;

/// Bytes before the payload: version and checksum.
const PREFIX_LEN: usize = 5;

/// The agent a logged sample belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AgentKey {
    pub org: OrgId,
    pub agent: AgentId,
}

/// Why a record could not be written or read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WalError {
    /// A sample has no stored form (see `chunk.rs`).
    #[error("sample {seq} cannot be logged: {source}")]
    Sample {
        seq: u64,
        #[source]
        source: ChunkError,
    },
    /// An org or agent id is not `[a-z0-9-]{1,64}`.
    #[error("invalid id {0:?}")]
    InvalidId(String),
    /// The bytes are not an intact record this build can read.
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

/// A decoded record: its interned keys and its samples in logged order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WalRecord {
    pub keys: Vec<AgentKey>,
    /// `(index into keys, sample)`.
    pub entries: Vec<(usize, Sample)>,
}

impl WalRecord {
    /// Each sample with its agent, in logged order.
    pub fn iter(&self) -> impl Iterator<Item = (&AgentKey, &Sample)> {
        self.entries
            .iter()
            .filter_map(|(k, s)| Some((self.keys.get(*k)?, s)))
    }
}

/// Encodes the samples of one batch as a record.
///
/// # Errors
///
/// `Sample` when a sample has no stored form, `InvalidId` for an id that is not
/// `[a-z0-9-]{1,64}`.
pub fn encode<'a, I>(entries: I) -> Result<Vec<u8>, WalError>
where
    I: IntoIterator<Item = (&'a OrgId, &'a AgentId, &'a Sample)>,
{
    let mut out = Vec::new();
    encode_into(&mut out, entries)?;
    Ok(out)
}

/// Appends the record of `entries` to `out` (a reused buffer). On error `out` is left as it was.
///
/// # Errors
///
/// As [`encode`].
pub fn encode_into<'a, I>(out: &mut Vec<u8>, entries: I) -> Result<(), WalError>
where
    I: IntoIterator<Item = (&'a OrgId, &'a AgentId, &'a Sample)>,
{
    let start = out.len();
    let result = write_record(out, start, entries);
    if result.is_err() {
        out.truncate(start);
    }
    result
}

fn write_record<'a, I>(out: &mut Vec<u8>, start: usize, entries: I) -> Result<(), WalError>
where
    I: IntoIterator<Item = (&'a OrgId, &'a AgentId, &'a Sample)>,
{
    out.push(WAL_VERSION);
    out.extend_from_slice(&[0; 4]);
    let mut orgs: HashMap<&'a str, usize> = HashMap::new();
    let mut keys: HashMap<(&'a str, &'a str), usize> = HashMap::new();
    let mut mounts: HashMap<&'a str, usize> = HashMap::new();
    let mut base = None;
    for (org, agent, sample) in entries {
        let fixed = Fixed::of(sample).map_err(|source| WalError::Sample {
            seq: sample.seq,
            source,
        })?;
        let base = *base.get_or_insert_with(|| {
            put_uvarint(out, fixed.time_ms);
            fixed.time_ms
        });
        let n_keys = keys.len();
        let key = *keys.entry((org.as_str(), agent.as_str())).or_insert(n_keys);
        put_uvarint(out, key as u64);
        if key == n_keys {
            let n_orgs = orgs.len();
            let org_ref = *orgs.entry(org.as_str()).or_insert(n_orgs);
            put_uvarint(out, org_ref as u64);
            if org_ref == n_orgs {
                put_id(out, org.as_str())?;
            }
            put_id(out, agent.as_str())?;
        }
        put_uvarint(out, fixed.seq);
        put_uvarint(out, zigzag(fixed.time_ms.wrapping_sub(base) as i64));
        for q in [fixed.cpu, fixed.load[0], fixed.load[1], fixed.load[2]] {
            put_uvarint(out, zigzag(q));
        }
        put_uvarint(out, fixed.memory_used);
        put_scaled(out, fixed.memory_total);
        put_uvarint(out, fixed.swap_used);
        put_scaled(out, fixed.swap_total);
        put_uvarint(out, sample.disks.len() as u64);
        for disk in &sample.disks {
            let n_mounts = mounts.len();
            let mount = *mounts.entry(disk.mount_point.as_str()).or_insert(n_mounts);
            put_uvarint(out, mount as u64);
            if mount == n_mounts {
                put_bytes(out, disk.mount_point.as_bytes());
            }
            put_scaled(out, disk.used_bytes);
            put_scaled(out, disk.total_bytes);
        }
        put_uvarint(out, fixed.net_rx);
        put_uvarint(out, fixed.net_tx);
        put_uvarint(out, fixed.uptime_ms);
        put_uvarint(out, u64::from(fixed.process_count));
    }
    let crc = checksum(out[start], &out[start + PREFIX_LEN..]);
    out[start + 1..start + PREFIX_LEN].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// Decodes a record written by [`encode`].
///
/// # Errors
///
/// `Decode`: `Checksum` for a torn or damaged record, `Version` for one written by a newer
/// format, `Truncated` or `Corrupt` for a payload that passes the checksum but is malformed.
pub fn decode(bytes: &[u8]) -> Result<WalRecord, WalError> {
    let (prefix, payload) = bytes
        .split_at_checked(PREFIX_LEN)
        .ok_or(DecodeError::Truncated("wal record prefix"))?;
    let stored = u32::from_le_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]);
    if checksum(prefix[0], payload) != stored {
        return Err(DecodeError::Checksum.into());
    }
    if prefix[0] != WAL_VERSION {
        return Err(DecodeError::Version {
            found: prefix[0],
            expected: WAL_VERSION,
        }
        .into());
    }
    let mut r = ByteReader::new(payload);
    let mut record = WalRecord::default();
    if r.is_empty() {
        return Ok(record);
    }
    let base = r.uvarint("wal base time")?;
    let mut orgs: Vec<OrgId> = Vec::new();
    let mut mounts: Vec<String> = Vec::new();
    while !r.is_empty() {
        let key = read_ref(&mut r, record.keys.len(), "wal key")?;
        if key == record.keys.len() {
            let org = read_ref(&mut r, orgs.len(), "wal org")?;
            if org == orgs.len() {
                orgs.push(OrgId::new(read_id(&mut r)?));
            }
            record.keys.push(AgentKey {
                org: orgs[org].clone(),
                agent: AgentId::new(read_id(&mut r)?),
            });
        }
        let sample = read_sample(&mut r, base, &mut mounts)?;
        record.entries.push((key, sample));
    }
    Ok(record)
}

fn read_sample(
    r: &mut ByteReader<'_>,
    base: u64,
    mounts: &mut Vec<String>,
) -> Result<Sample, DecodeError> {
    let seq = r.uvarint("wal seq")?;
    let time_ms = base.wrapping_add(unzigzag(r.uvarint("wal time")?) as u64);
    let mut quantized = [0i64; 4];
    for q in &mut quantized {
        *q = unzigzag(r.uvarint("wal gauge")?);
        if q.unsigned_abs() > super::chunk::MAX_QUANTIZED as u64 {
            return Err(DecodeError::Corrupt("wal gauge"));
        }
    }
    let memory_used = r.uvarint("wal memory used")?;
    let memory_total = read_scaled(r, "wal memory total")?;
    let swap_used = r.uvarint("wal swap used")?;
    let swap_total = read_scaled(r, "wal swap total")?;
    let n_disks = r.uvarint("wal disk count")?;
    // A disk takes at least three bytes: a count beyond that must not size an allocation.
    if n_disks > r.rest().len() as u64 / 3 {
        return Err(DecodeError::Truncated("wal disks"));
    }
    let mut disks = Vec::with_capacity(n_disks as usize);
    for _ in 0..n_disks {
        let mount = read_ref(r, mounts.len(), "wal mount point")?;
        if mount == mounts.len() {
            let name = std::str::from_utf8(r.bytes("wal mount point")?)
                .map_err(|_| DecodeError::Corrupt("wal mount point"))?;
            mounts.push(name.to_owned());
        }
        disks.push(DiskUsage {
            mount_point: mounts[mount].clone(),
            used_bytes: read_scaled(r, "wal disk used")?,
            total_bytes: read_scaled(r, "wal disk total")?,
        });
    }
    let fixed = Fixed {
        seq,
        time_ms,
        cpu: quantized[0],
        load: [quantized[1], quantized[2], quantized[3]],
        memory_used,
        memory_total,
        swap_used,
        swap_total,
        net_rx: r.uvarint("wal network rx")?,
        net_tx: r.uvarint("wal network tx")?,
        uptime_ms: r.uvarint("wal uptime")?,
        process_count: u32::try_from(r.uvarint("wal process count")?)
            .map_err(|_| DecodeError::Corrupt("wal process count"))?,
    };
    fixed.to_sample(disks)
}

fn checksum(version: u8, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&[version]);
    hasher.update(payload);
    hasher.finalize()
}

/// A reference to an interned item: below `defined`, or equal to it for a new one.
fn read_ref(
    r: &mut ByteReader<'_>,
    defined: usize,
    what: &'static str,
) -> Result<usize, DecodeError> {
    let idx = r.uvarint(what)?;
    match usize::try_from(idx) {
        Ok(idx) if idx <= defined => Ok(idx),
        _ => Err(DecodeError::Corrupt(what)),
    }
}

fn put_id(out: &mut Vec<u8>, id: &str) -> Result<(), WalError> {
    if !is_valid_id(id) {
        return Err(WalError::InvalidId(id.to_owned()));
    }
    let packed =
        id.len().is_multiple_of(2) && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    put_uvarint(out, (id.len() as u64) << 1 | u64::from(packed));
    if packed {
        let decoded = hex::decode(id).map_err(|_| WalError::InvalidId(id.to_owned()))?;
        out.extend_from_slice(&decoded);
    } else {
        out.extend_from_slice(id.as_bytes());
    }
    Ok(())
}

fn read_id(r: &mut ByteReader<'_>) -> Result<String, DecodeError> {
    let tag = r.uvarint("wal id")?;
    let (len, packed) = (tag >> 1, tag & 1 == 1);
    if len > 64 || (packed && !len.is_multiple_of(2)) {
        return Err(DecodeError::Corrupt("wal id"));
    }
    let id = if packed {
        hex::encode(r.take(len / 2, "wal id")?)
    } else {
        std::str::from_utf8(r.take(len, "wal id")?)
            .map_err(|_| DecodeError::Corrupt("wal id"))?
            .to_owned()
    };
    if !is_valid_id(&id) {
        return Err(DecodeError::Corrupt("wal id"));
    }
    Ok(id)
}

fn put_scaled(out: &mut Vec<u8>, v: u64) {
    let shift = if v == 0 { 0 } else { v.trailing_zeros() };
    put_uvarint128(out, (u128::from(v >> shift) << 6) | u128::from(shift));
}

fn read_scaled(r: &mut ByteReader<'_>, what: &'static str) -> Result<u64, DecodeError> {
    let raw = r.uvarint128(what)?;
    let shift = (raw & 63) as u32;
    let mantissa = u64::try_from(raw >> 6).map_err(|_| DecodeError::Corrupt(what))?;
    let v = mantissa << shift;
    if v >> shift != mantissa {
        return Err(DecodeError::Corrupt(what));
    }
    Ok(v)
}

#[cfg(test)]
mod tests;
