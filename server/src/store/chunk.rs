//! A compressed chunk of one agent's samples: the unit in which the time-series store keeps
//! history (Gorilla-style, after Facebook's Gorilla paper and Prometheus' chunks).
//!
//! [`ChunkEncoder`] appends samples in seq order to a bit stream that is always readable in
//! place ([`ChunkEncoder::samples`]: the open "head" chunk is queried without a copy);
//! [`ChunkEncoder::finish`] seals it behind a small [`ChunkHeader`] that lets retention and range
//! scans skip a chunk without decoding it; [`ChunkDecoder`] reads a sealed chunk back.
//!
//! Sealed, a 720-sample chunk costs about 11 bytes per simulator sample and 15 per real-like
//! one (the `chunk_bench` example prints the current figures), against well over 100 for a
//! postcard record under its own key.
//!
//! Invariants: within a chunk seqs strictly increase (the encoder refuses anything else);
//! times may go backwards (clocks do) and round-trip exactly; a push either appends the whole
//! sample or nothing; no decode path panics, every malformed input is an error.
//!
//! # Stored precision
//!
//! A chunk stores what [`stored`] returns for a sample, and nothing finer:
//!
//! - `time`: whole milliseconds since the Unix epoch (a `u64`), truncated ([`time_to_millis`]).
//!   A sample's time is a `domain::Time` (1970–9999), so every one has a stored form; a decoded
//!   time outside that range is damage.
//! - `cpu_percent` and the three load averages: fixed point in hundredths, by the one rule
//!   [`quantize`] (`round(x * 100)`, half away from zero, read back as `q as f64 / 100.0`).
//!   Lossless f64 cannot reach the size target: an f32 CPU figure widened to f64 keeps 24
//!   significant bits, a two-decimal load average or a simulator wave all 53, so XOR coding
//!   costs about 3–7 bytes per value and 20–28 for the four, more than the whole budget of 16.
//!   Hundredths are finer than either source means anything, and load averages are reported
//!   with two decimals, so those round-trip exactly. The magnitude must stay within
//!   `MAX_QUANTIZED / 100` (about 1.1e10).
//! - `uptime`: whole milliseconds, truncated.
//! - Every other field (seq, byte gauges, counters, process count, disk names and order) is
//!   exact.
//!
//! # Format (version 1)
//!
//! A sealed chunk is a header followed by a body.
//!
//! Header, bytes; varints are unsigned LEB128 (see `bits.rs`):
//!
//! | field | encoding |
//! |---|---|
//! | version | one byte, [`CHUNK_VERSION`] |
//! | count | varint, at most `u32::MAX` |
//! | first seq | varint |
//! | last seq − first seq | varint |
//! | min time (ms) | varint |
//! | max time − min time (ms) | varint |
//!
//! With count 0 the four other fields are 0 and the body is empty. `min`/`max` time rather than
//! the first/last sample's: times may go backwards, and a range scan needs bounds.
//!
//! Body: a bit stream, most significant bit first, zero-padded to a whole byte, holding `count`
//! samples one after the other with no separator. Each sample is these fields in this order:
//!
//! | field | value coded | kind |
//! |---|---|---|
//! | seq | seq | DoD |
//! | time | time in ms | DoD |
//! | cpu, load 1, load 5, load 15 | hundredths as `i64`, two's complement in a `u64` | Δ |
//! | memory used, memory total, swap used, swap total | bytes | Δ |
//! | disks | see below | |
//! | network rx, network tx | bytes | DoD |
//! | uptime | ms | DoD |
//! | process count | count | Δ |
//!
//! All arithmetic is wrapping on `u64`. A **Δ** field codes `d = v − prev` (as `i64`), `prev`
//! being the field's value in the previous sample (0 before the first). A **DoD** field codes
//! `d = (v − prev) − prev_delta`, where `prev_delta` is the previous sample's `v − prev`,
//! except that it stays 0 after the first sample (so the second codes its plain interval).
//!
//! Each field keeps a *window* `(shift, width)`, initially `(0, 0)`, and a *context*: whether
//! the last value it coded was non-zero (initially not). It codes `d` in one of four forms,
//! whose prefix depends on the context, so that a field that keeps changing pays one bit for
//! "same window again" and a field that keeps still pays one bit for "zero":
//!
//! | form | prefix after a zero (or first) | prefix after a non-zero | then |
//! |---|---|---|---|
//! | zero | `0` | `10` | nothing: `d = 0` |
//! | reuse | `10` | `0` | `width` bits `u`; `d = unzigzag(u) << shift`; invalid while `width` is 0 |
//! | new width | `110` | `110` | 6 bits `w − 1`, `w` bits `u`; width becomes `w`, then as reuse |
//! | new window | `111` | `111` | 6 bits `s`, 6 bits `w − 1`, `w` bits `u`; window becomes `(s, w)`, then as reuse |
//!
//! `unzigzag` maps 0, 1, 2, 3, … to 0, −1, 1, −2, …. The context becomes "non-zero" after any
//! form but zero. The encoder picks the shortest valid form (on a tie: reuse, then new width);
//! the shift lets byte counts in multiples of 1 KiB or 4 KiB drop their zero low bits.
//!
//! Disks: one bit `0` means "the same mount points, in the same order, as the previous sample"
//! (the empty list before the first sample). A bit `1` is followed by the list: `n` as a gamma
//! code (`bits.rs`: `k` zeros then `n + 1` in `k + 1` bits), then `n` dictionary indexes, each a
//! gamma code. The dictionary of mount points is the chunk's own, empty at its start; an index
//! equal to its current size defines the next entry inline: the name's byte length (gamma),
//! then its UTF-8 bytes, 8 bits each. After the list (new or repeated), for each disk in list
//! order: used bytes, then total bytes, both Δ fields whose `prev` belongs to the dictionary
//! entry (a duplicated mount point therefore codes its second occurrence against its first).
//!
//! A decoder refuses, besides short input: seqs that do not increase, a quantized value beyond
//! [`MAX_QUANTIZED`], a process count beyond `u32::MAX`, a mount point that is not UTF-8, an
//! index beyond the dictionary, anything but zero padding after the last sample, and a header
//! that disagrees with the samples decoded (count, seqs, min/max time).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use self::series::{Disks, Series};
use super::bits::{BitReader, BitWriter, DecodeError};
use crate::domain::{DiskUsage, Sample, SampleTotals, Time};

mod series;

/// Format version written by this build; the only one it reads.
pub const CHUNK_VERSION: u8 = 1;

/// Largest magnitude of a quantized value (hundredths): well inside the range where `f64`
/// represents every integer and where [`quantize`] and [`dequantize`] are exact inverses.
pub const MAX_QUANTIZED: i64 = 1 << 40;

/// Most samples one chunk holds.
pub const MAX_CHUNK_SAMPLES: u32 = u32::MAX;

/// Why a sample could not be stored, or a chunk could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    /// Seqs must strictly increase within a chunk.
    #[error("seq {seq} is not above the chunk's last seq {last}")]
    SeqNotIncreasing { seq: u64, last: u64 },
    /// Times before the Unix epoch have no stored form.
    #[error("sample time is before the Unix epoch")]
    TimeBeforeEpoch,
    /// A value has no stored form (non-finite, or beyond the stored range).
    #[error("{0} is outside the range a chunk stores")]
    OutOfRange(&'static str),
    /// The chunk already holds [`MAX_CHUNK_SAMPLES`].
    #[error("chunk is full")]
    Full,
    /// The bytes are not a chunk this build can read.
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

// === Stored precision ===

/// The one quantization rule for `cpu_percent` and load averages: hundredths, rounded half away
/// from zero. `field` names the value in the error.
///
/// # Errors
///
/// [`ChunkError::OutOfRange`] for a non-finite value or one whose magnitude exceeds
/// [`MAX_QUANTIZED`] hundredths.
pub fn quantize(x: f64, field: &'static str) -> Result<i64, ChunkError> {
    let q = (x * 100.0).round();
    if q.is_finite() && q.abs() <= MAX_QUANTIZED as f64 {
        Ok(q as i64)
    } else {
        Err(ChunkError::OutOfRange(field))
    }
}

/// The value a quantized figure reads back as.
pub fn dequantize(q: i64) -> f64 {
    q as f64 / 100.0
}

/// Whole milliseconds since the Unix epoch, truncated.
///
/// # Errors
///
/// [`ChunkError::TimeBeforeEpoch`] before 1970; `OutOfRange` beyond `u64` milliseconds.
pub fn time_to_millis(time: SystemTime) -> Result<u64, ChunkError> {
    let since = time
        .duration_since(UNIX_EPOCH)
        .map_err(|_| ChunkError::TimeBeforeEpoch)?;
    duration_to_millis(since, "time")
}

/// The time `ms` milliseconds after the Unix epoch, if the platform can represent it.
pub fn millis_to_time(ms: u64) -> Option<SystemTime> {
    UNIX_EPOCH.checked_add(Duration::from_millis(ms))
}

/// Whole milliseconds of `d`, truncated.
///
/// # Errors
///
/// `OutOfRange` naming `field` beyond `u64` milliseconds.
pub fn duration_to_millis(d: Duration, field: &'static str) -> Result<u64, ChunkError> {
    u64::try_from(d.as_millis()).map_err(|_| ChunkError::OutOfRange(field))
}

/// What `sample` reads back as after storage (see "Stored precision" above).
///
/// # Errors
///
/// The errors of [`quantize`] and [`time_to_millis`] when the sample has no stored form.
pub fn stored(sample: &Sample) -> Result<Sample, ChunkError> {
    let mut out = sample.clone();
    Fixed::of(sample)?.apply(&mut out)?;
    Ok(out)
}

/// An all-zero sample at the epoch: the buffer [`ChunkDecoder::next_into`] decodes into.
pub fn blank_sample() -> Sample {
    Sample {
        seq: 0,
        time: Time::EPOCH,
        cpu_percent: 0.0,
        load: [0.0; 3],
        memory_used_bytes: 0,
        memory_total_bytes: 0,
        swap_used_bytes: 0,
        swap_total_bytes: 0,
        disks: Vec::new(),
        network_rx_bytes: 0,
        network_tx_bytes: 0,
        uptime: Duration::ZERO,
        process_count: 0,
    }
}

/// A sample's scalar fields in their stored integer form. Shared with the WAL codec so a
/// replayed sample is exactly what a chunk would hold.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Fixed {
    pub seq: u64,
    pub time_ms: u64,
    pub cpu: i64,
    pub load: [i64; 3],
    pub memory_used: u64,
    pub memory_total: u64,
    pub swap_used: u64,
    pub swap_total: u64,
    pub net_rx: u64,
    pub net_tx: u64,
    pub uptime_ms: u64,
    pub process_count: u32,
}

impl Fixed {
    /// The stored form of `sample`'s scalar fields.
    pub fn of(sample: &Sample) -> Result<Self, ChunkError> {
        Ok(Self {
            seq: sample.seq,
            time_ms: time_to_millis(sample.time.get())?,
            cpu: quantize(sample.cpu_percent, "cpu_percent")?,
            load: [
                quantize(sample.load[0], "load_1")?,
                quantize(sample.load[1], "load_5")?,
                quantize(sample.load[2], "load_15")?,
            ],
            memory_used: sample.memory_used_bytes,
            memory_total: sample.memory_total_bytes,
            swap_used: sample.swap_used_bytes,
            swap_total: sample.swap_total_bytes,
            net_rx: sample.network_rx_bytes,
            net_tx: sample.network_tx_bytes,
            uptime_ms: duration_to_millis(sample.uptime, "uptime")?,
            process_count: sample.process_count,
        })
    }

    /// The sample these fields read back as, with `disks`.
    pub fn to_sample(self, disks: Vec<DiskUsage>) -> Result<Sample, DecodeError> {
        Ok(Sample {
            seq: self.seq,
            time: self.time()?,
            cpu_percent: dequantize(self.cpu),
            load: self.load.map(dequantize),
            memory_used_bytes: self.memory_used,
            memory_total_bytes: self.memory_total,
            swap_used_bytes: self.swap_used,
            swap_total_bytes: self.swap_total,
            disks,
            network_rx_bytes: self.net_rx,
            network_tx_bytes: self.net_tx,
            uptime: Duration::from_millis(self.uptime_ms),
            process_count: self.process_count,
        })
    }

    /// The sample time these fields hold.
    fn time(&self) -> Result<Time, DecodeError> {
        millis_to_time(self.time_ms)
            .and_then(|time| Time::new(time).ok())
            .ok_or(DecodeError::Corrupt("sample time"))
    }

    /// Overwrites `out` with these fields, keeping its disk list (and its allocations).
    pub fn apply(&self, out: &mut Sample) -> Result<(), DecodeError> {
        let disks = std::mem::take(&mut out.disks);
        *out = self.to_sample(disks)?;
        Ok(())
    }
}

// === Header ===

/// What a sealed chunk says about itself before its body: enough to skip it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChunkHeader {
    pub count: u32,
    pub first_seq: u64,
    pub last_seq: u64,
    pub min_time_ms: u64,
    pub max_time_ms: u64,
}

impl ChunkHeader {
    /// Reads the header of `chunk` and returns it with the body that follows.
    ///
    /// # Errors
    ///
    /// `Decode` for an unknown version, a short input or an inconsistent header.
    pub fn parse(chunk: &[u8]) -> Result<(Self, &[u8]), ChunkError> {
        let mut r = super::bits::ByteReader::new(chunk);
        let version = r.u8("chunk version")?;
        if version != CHUNK_VERSION {
            return Err(DecodeError::Version {
                found: version,
                expected: CHUNK_VERSION,
            }
            .into());
        }
        let count = u32::try_from(r.uvarint("chunk count")?)
            .map_err(|_| DecodeError::Corrupt("chunk count"))?;
        let first_seq = r.uvarint("chunk first seq")?;
        let last_seq = first_seq
            .checked_add(r.uvarint("chunk seq span")?)
            .ok_or(DecodeError::Corrupt("chunk seq span"))?;
        let min_time_ms = r.uvarint("chunk min time")?;
        let max_time_ms = min_time_ms
            .checked_add(r.uvarint("chunk time span")?)
            .ok_or(DecodeError::Corrupt("chunk time span"))?;
        let header = Self {
            count,
            first_seq,
            last_seq,
            min_time_ms,
            max_time_ms,
        };
        let body = r.rest();
        let consistent = match count {
            0 => header == Self::default() && body.is_empty(),
            1 => first_seq == last_seq && min_time_ms == max_time_ms && !body.is_empty(),
            n => last_seq - first_seq >= u64::from(n - 1) && !body.is_empty(),
        };
        if !consistent {
            return Err(DecodeError::Corrupt("chunk header").into());
        }
        Ok((header, body))
    }

    /// Whether the chunk may hold a sample with `from_ms <= time < to_ms`.
    pub fn overlaps(&self, from_ms: u64, to_ms: u64) -> bool {
        self.count > 0 && self.min_time_ms < to_ms && from_ms <= self.max_time_ms
    }

    fn write(&self, out: &mut Vec<u8>) {
        use super::bits::put_uvarint;
        out.push(CHUNK_VERSION);
        put_uvarint(out, u64::from(self.count));
        put_uvarint(out, self.first_seq);
        put_uvarint(out, self.last_seq - self.first_seq);
        put_uvarint(out, self.min_time_ms);
        put_uvarint(out, self.max_time_ms - self.min_time_ms);
    }

    /// Accounts for one more sample (seq already checked to increase).
    fn note(&mut self, seq: u64, time_ms: u64) {
        if self.count == 0 {
            *self = Self {
                count: 1,
                first_seq: seq,
                last_seq: seq,
                min_time_ms: time_ms,
                max_time_ms: time_ms,
            };
        } else {
            self.count += 1;
            self.last_seq = seq;
            self.min_time_ms = self.min_time_ms.min(time_ms);
            self.max_time_ms = self.max_time_ms.max(time_ms);
        }
    }
}

/// Most bytes [`ChunkHeader::write`] produces: a version byte and five varints.
const MAX_HEADER_BYTES: usize = 1 + 5 + 4 * 10;

// === Encoder ===

/// Appends one agent's samples to an open chunk.
#[derive(Clone, Debug, Default)]
pub struct ChunkEncoder {
    body: BitWriter,
    header: ChunkHeader,
    series: Series,
}

impl ChunkEncoder {
    /// An empty chunk.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends `sample`. On error nothing was appended.
    ///
    /// # Errors
    ///
    /// [`ChunkError::SeqNotIncreasing`] unless `sample.seq` is above the last seq pushed;
    /// `TimeBeforeEpoch` or `OutOfRange` when the sample has no stored form; `Full` after
    /// [`MAX_CHUNK_SAMPLES`].
    pub fn push(&mut self, sample: &Sample) -> Result<(), ChunkError> {
        if self.header.count > 0 && sample.seq <= self.header.last_seq {
            return Err(ChunkError::SeqNotIncreasing {
                seq: sample.seq,
                last: self.header.last_seq,
            });
        }
        if self.header.count == MAX_CHUNK_SAMPLES {
            return Err(ChunkError::Full);
        }
        let fixed = Fixed::of(sample)?;
        self.series.encode(
            &mut self.body,
            &fixed,
            &sample.disks,
            self.header.count == 0,
        );
        self.header.note(fixed.seq, fixed.time_ms);
        Ok(())
    }

    /// Number of samples pushed.
    pub fn len(&self) -> u32 {
        self.header.count
    }

    /// Whether nothing was pushed yet.
    pub fn is_empty(&self) -> bool {
        self.header.count == 0
    }

    /// Size of the body so far, in bytes (the sealed chunk adds a header of at most 46).
    pub fn body_len(&self) -> usize {
        self.body.bytes().len()
    }

    /// The header [`finish`](Self::finish) would write now.
    pub fn header(&self) -> ChunkHeader {
        self.header
    }

    /// The samples pushed so far, decoded in place from the open body (no copy).
    pub fn samples(&self) -> ChunkDecoder<'_> {
        ChunkDecoder::from_body(self.body.bytes(), self.header)
    }

    /// Seals the chunk: header, then body.
    pub fn finish(self) -> Vec<u8> {
        self.sealed()
    }

    /// The chunk [`finish`](Self::finish) would seal, leaving this one open: for a copy of the
    /// head that outlives a lock, or a snapshot of it.
    pub fn sealed(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(MAX_HEADER_BYTES + self.body.bytes().len());
        self.header.write(&mut out);
        out.extend_from_slice(self.body.bytes());
        out
    }

    /// Reopens a sealed chunk for appending: the encoder that sealed it, with the same state,
    /// so further pushes code exactly as if it had never been sealed.
    ///
    /// # Errors
    ///
    /// The errors of [`ChunkDecoder::new`] and of decoding the chunk's samples.
    pub fn resume(chunk: &[u8]) -> Result<Self, ChunkError> {
        let mut enc = Self::new();
        for sample in ChunkDecoder::new(chunk)? {
            // Decoded samples are in their stored form and in strictly increasing seq order,
            // so pushing them back cannot fail; if it did, the chunk was not ours.
            enc.push(&sample?)?;
        }
        Ok(enc)
    }

    /// Heap bytes this encoder holds (body buffer, dictionary), for memory accounting.
    pub fn heap_bytes(&self) -> usize {
        self.body.capacity() + self.series.heap_bytes()
    }
}

// === Decoder ===

/// Reads the samples of a chunk, oldest first. After an error it yields nothing more.
#[derive(Clone, Debug)]
pub struct ChunkDecoder<'a> {
    bits: BitReader<'a>,
    /// What the chunk says it holds; checked against what was decoded after the last sample.
    expected: ChunkHeader,
    seen: ChunkHeader,
    series: Series,
    fixed: Fixed,
    done: bool,
}

impl<'a> ChunkDecoder<'a> {
    /// A decoder of the sealed chunk `chunk`.
    ///
    /// # Errors
    ///
    /// The errors of [`ChunkHeader::parse`].
    pub fn new(chunk: &'a [u8]) -> Result<Self, ChunkError> {
        let (header, body) = ChunkHeader::parse(chunk)?;
        Ok(Self::from_body(body, header))
    }

    fn from_body(body: &'a [u8], expected: ChunkHeader) -> Self {
        Self {
            bits: BitReader::new(body),
            expected,
            seen: ChunkHeader::default(),
            series: Series::default(),
            fixed: Fixed::default(),
            done: false,
        }
    }

    /// What the chunk's header says.
    pub fn header(&self) -> ChunkHeader {
        self.expected
    }

    /// `(time in ms, seq)` of the sample [`ChunkDecoder::next_into`] decoded last, as stored:
    /// what a reader orders and filters by, without converting the decoded time back.
    pub fn last_order(&self) -> (u64, u64) {
        (self.fixed.time_ms, self.fixed.seq)
    }

    /// Decodes the next sample into `out`, reusing its disk list and strings. Returns
    /// `Ok(false)` after the last sample.
    ///
    /// # Errors
    ///
    /// `Decode` when the body is short, malformed, or disagrees with the header; the decoder
    /// is finished then.
    pub fn next_into(&mut self, out: &mut Sample) -> Result<bool, ChunkError> {
        if self.done {
            return Ok(false);
        }
        let result = self.step(out);
        if !matches!(result, Ok(true)) {
            self.done = true;
        }
        result
    }

    /// Decodes the next sample's totals: its fields with its disks summed, without building
    /// its disk list. `Ok(None)` after the last sample.
    ///
    /// # Errors
    ///
    /// Those of [`ChunkDecoder::next_into`].
    pub fn next_totals(&mut self) -> Result<Option<SampleTotals>, ChunkError> {
        if self.done {
            return Ok(None);
        }
        let mut disk_sums = (0, 0);
        let result = self
            .step_with(Disks::Sums(&mut disk_sums))
            .and_then(|more| {
                if !more {
                    return Ok(None);
                }
                let f = &self.fixed;
                let (disk_used_bytes, disk_total_bytes) = disk_sums;
                Ok(Some(SampleTotals {
                    seq: f.seq,
                    time: f.time()?,
                    cpu_percent: dequantize(f.cpu),
                    load: f.load.map(dequantize),
                    memory_used_bytes: f.memory_used,
                    memory_total_bytes: f.memory_total,
                    swap_used_bytes: f.swap_used,
                    swap_total_bytes: f.swap_total,
                    disk_used_bytes,
                    disk_total_bytes,
                    network_rx_bytes: f.net_rx,
                    network_tx_bytes: f.net_tx,
                    uptime: Duration::from_millis(f.uptime_ms),
                    process_count: f.process_count,
                }))
            });
        if !matches!(result, Ok(Some(_))) {
            self.done = true;
        }
        result
    }

    fn step(&mut self, out: &mut Sample) -> Result<bool, ChunkError> {
        if !self.step_with(Disks::List(&mut out.disks))? {
            return Ok(false);
        }
        self.fixed.apply(out)?;
        Ok(true)
    }

    /// Decodes the next sample into `self.fixed` and its disks into `disks`, checking it
    /// against the header. `Ok(false)` after the last sample.
    fn step_with(&mut self, disks: Disks<'_>) -> Result<bool, ChunkError> {
        if self.seen.count == self.expected.count {
            self.bits.expect_end("chunk padding")?;
            return Ok(false);
        }
        let first = self.seen.count == 0;
        // Decoded in place: after an error the decoder is finished, whatever `fixed` holds.
        let fixed = &mut self.fixed;
        self.series.decode(&mut self.bits, fixed, disks, first)?;
        if !first && fixed.seq <= self.seen.last_seq {
            return Err(DecodeError::Corrupt("chunk seq order").into());
        }
        self.seen.note(fixed.seq, fixed.time_ms);
        if self.seen.count == self.expected.count {
            self.bits.expect_end("chunk padding")?;
            if self.seen != self.expected {
                return Err(DecodeError::Corrupt("chunk header").into());
            }
        }
        Ok(true)
    }
}

impl Iterator for ChunkDecoder<'_> {
    type Item = Result<Sample, ChunkError>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut out = blank_sample();
        match self.next_into(&mut out) {
            Ok(true) => Some(Ok(out)),
            Ok(false) => None,
            Err(e) => Some(Err(e)),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
