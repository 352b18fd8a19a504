//! One spool record on disk, and reading a segment file back.
//!
//! A record is a 16-byte header and a JSON payload:
//!
//! ```text
//! len: u32 LE (payload bytes) | crc32: u32 LE (of seq and payload) | seq: u64 LE | payload
//! ```
//!
//! **Invariant:** a record is accepted only whole: its length in bounds, its checksum right,
//! its seq above the previous record's. Whatever fails that at the end of a file (a crash
//! mid-append, a zero-filled tail) is a torn tail: [`scan`] reports where the good part ends
//! and the spool cuts the file there. Nothing read from disk is trusted enough to panic on.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read as _};
use std::os::unix::fs::FileExt as _;
use std::path::Path;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::events::types::{Event, Severity, SpooledEvent};

/// Bytes before a record's payload.
pub(crate) const HEADER_BYTES: u64 = 16;
/// Largest payload a reader accepts: a sanity bound well above what `check` lets through, so
/// a corrupted length is never taken for an allocation size.
pub(crate) const MAX_PAYLOAD_BYTES: u32 = 256 << 10;

/// The payload, with short keys: the spool may hold hundreds of thousands of them.
#[derive(Serialize, Deserialize)]
struct Payload {
    /// Unix time in microseconds (negative before 1970).
    t: i64,
    k: String,
    s: Severity,
    m: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    a: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    f: Option<String>,
}

/// What [`scan`] found in a segment file.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Scanned {
    /// Bytes of whole, valid records from the start.
    pub(crate) good_len: u64,
    /// Length of the file; more than `good_len` means a torn tail.
    pub(crate) file_len: u64,
    pub(crate) n_events: u64,
    /// Seq of the last valid record (0 if none).
    pub(crate) last_seq: u64,
}

/// Why a record could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error("corrupt record: {0}")]
    Corrupt(&'static str),
}

/// The payload of `event` (without header).
pub(crate) fn payload(event: &Event) -> Vec<u8> {
    let t = match event.time.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_micros()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_micros()).map_or(i64::MIN, |m| -m),
    };
    let payload = Payload {
        t,
        k: event.kind.clone(),
        s: event.severity,
        m: event.message.clone(),
        a: event.attributes.clone(),
        f: event.fingerprint.clone(),
    };
    serde_json::to_vec(&payload).expect("a struct of strings and numbers always serializes")
}

/// The whole record: header for `seq`, then `payload`.
pub(crate) fn record(seq: u64, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("payloads are checked to be small");
    let mut out = Vec::with_capacity(payload.len() + 16);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&checksum(seq, payload).to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Reads the record at `offset` of `file` (whose valid part ends at `end`). Returns the event
/// and the offset of the next record, or `None` at `end`.
///
/// # Errors
///
/// I/O errors, and [`ReadError::Corrupt`] for a record that fails its checks.
pub(crate) fn read_at(
    file: &File,
    offset: u64,
    end: u64,
) -> Result<Option<(SpooledEvent, u64)>, ReadError> {
    if offset >= end {
        return Ok(None);
    }
    let (len, crc, seq) = read_header(file, offset, end)?;
    let mut payload = vec![0; len as usize];
    file.read_exact_at(&mut payload, offset + HEADER_BYTES)?;
    if checksum(seq, &payload) != crc {
        return Err(ReadError::Corrupt("checksum mismatch"));
    }
    let event = decode(&payload)?;
    Ok(Some((
        SpooledEvent { seq, event },
        offset + HEADER_BYTES + u64::from(len),
    )))
}

/// Reads a whole segment file and reports where its valid records end.
///
/// # Errors
///
/// Only I/O errors opening or reading the file; bad records end the scan.
pub(crate) fn scan(path: &Path) -> io::Result<Scanned> {
    let mut file = io::BufReader::with_capacity(64 << 10, File::open(path)?);
    let file_len = file.get_ref().metadata()?.len();
    let mut scanned = Scanned {
        file_len,
        ..Scanned::default()
    };
    let mut header = [0u8; HEADER_BYTES as usize];
    let mut payload = Vec::new();
    loop {
        if scanned.good_len + HEADER_BYTES > file_len {
            return Ok(scanned);
        }
        file.read_exact(&mut header)?;
        let (len, crc, seq) = parse_header(&header);
        if len > MAX_PAYLOAD_BYTES
            || scanned.good_len + HEADER_BYTES + u64::from(len) > file_len
            || seq <= scanned.last_seq
        {
            return Ok(scanned);
        }
        payload.resize(len as usize, 0);
        file.read_exact(&mut payload)?;
        if checksum(seq, &payload) != crc || decode(&payload).is_err() {
            return Ok(scanned);
        }
        scanned.good_len += HEADER_BYTES + u64::from(len);
        scanned.n_events += 1;
        scanned.last_seq = seq;
    }
}

fn read_header(file: &File, offset: u64, end: u64) -> Result<(u32, u32, u64), ReadError> {
    if offset + HEADER_BYTES > end {
        return Err(ReadError::Corrupt("header past the end"));
    }
    let mut header = [0u8; HEADER_BYTES as usize];
    file.read_exact_at(&mut header, offset)?;
    let (len, crc, seq) = parse_header(&header);
    if len > MAX_PAYLOAD_BYTES || offset + HEADER_BYTES + u64::from(len) > end || seq == 0 {
        return Err(ReadError::Corrupt("length or seq out of bounds"));
    }
    Ok((len, crc, seq))
}

fn parse_header(header: &[u8; HEADER_BYTES as usize]) -> (u32, u32, u64) {
    let word = |range: std::ops::Range<usize>| {
        let mut bytes = [0u8; 4];
        bytes.copy_from_slice(&header[range]);
        u32::from_le_bytes(bytes)
    };
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&header[8..16]);
    (word(0..4), word(4..8), u64::from_le_bytes(seq))
}

fn checksum(seq: u64, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&seq.to_le_bytes());
    hasher.update(payload);
    hasher.finalize()
}

fn decode(payload: &[u8]) -> Result<Event, ReadError> {
    let Payload { t, k, s, m, a, f } =
        serde_json::from_slice(payload).map_err(|_| ReadError::Corrupt("payload is not JSON"))?;
    let micros = Duration::from_micros(t.unsigned_abs());
    let time = if t >= 0 {
        SystemTime::UNIX_EPOCH.checked_add(micros)
    } else {
        SystemTime::UNIX_EPOCH.checked_sub(micros)
    }
    .ok_or(ReadError::Corrupt("time out of range"))?;
    Ok(Event {
        time,
        kind: k,
        severity: s,
        message: m,
        attributes: a,
        fingerprint: f,
    })
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    fn event(n: u32) -> Event {
        Event::now("test.event", Severity::Error, format!("event {n}"))
            .with("n", n)
            .fingerprint("fp")
    }

    #[test]
    fn records_round_trip_and_torn_tails_are_found() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("seg");
        let mut file = File::create(&path).expect("create");
        let mut ends = Vec::new();
        let mut len = 0;
        for n in 1..=3 {
            let bytes = record(u64::from(n) * 10, &payload(&event(n)));
            len += bytes.len() as u64;
            ends.push(len);
            file.write_all(&bytes).expect("write");
        }
        let whole = scan(&path).expect("scan");
        assert_eq!(whole.n_events, 3);
        assert_eq!(whole.last_seq, 30);
        assert_eq!(whole.good_len, whole.file_len);

        let file = File::open(&path).expect("open");
        let (first, next) = read_at(&file, 0, len).expect("read").expect("a record");
        assert_eq!(first.seq, 10);
        assert_eq!(first.event.message, "event 1");
        assert_eq!(first.event.attributes["n"], "1");
        assert_eq!(first.event.fingerprint.as_deref(), Some("fp"));
        assert_eq!(next, ends[0]);
        let (second, after_second) = read_at(&file, next, len).expect("read").expect("a record");
        assert_eq!((second.seq, after_second), (20, ends[1]));
        assert!(read_at(&file, len, len).expect("end").is_none());

        // Every cut inside the last record is a torn tail: the first two records survive.
        for cut in ends[1] + 1..ends[2] {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .expect("open");
            file.set_len(cut).expect("truncate");
            let torn = scan(&path).expect("scan");
            assert_eq!((torn.n_events, torn.good_len), (2, ends[1]), "cut at {cut}");
        }
    }

    #[test]
    fn flipped_bytes_and_zero_fill_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("seg");
        let good = record(1, &payload(&event(1)));
        for at in 0..good.len() {
            let mut bad = good.clone();
            bad[at] ^= 0x40;
            std::fs::write(&path, &bad).expect("write");
            assert_eq!(scan(&path).expect("scan").n_events, 0, "flip at {at}");
        }
        let mut zeros = good.clone();
        zeros.extend_from_slice(&[0; 64]);
        std::fs::write(&path, &zeros).expect("write");
        let scanned = scan(&path).expect("scan");
        assert_eq!((scanned.n_events, scanned.good_len), (1, good.len() as u64));
    }
}
