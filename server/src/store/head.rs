//! An agent's head: the open chunk of its newest samples, with what the store remembers from
//! one chunk to the next, and the record that persists it.
//!
//! A [`Head`] appends samples in seq order to a [`ChunkEncoder`]; a sample at or below the
//! agent's last seq is a duplicate and is skipped, never an error, so a sample logged twice
//! (re-sent after a failed commit, or replayed from the write-ahead log over a snapshot) is
//! stored once. [`Head::seal`] turns the open chunk into a sealed chunk plus the rollups of its
//! samples, and the empty head that follows it; the backend writes all three in one atomic
//! batch, so every sample is counted in the rollups exactly once. Rates continue across chunks:
//! the head keeps the counter point of the last sealed sample.
//!
//! Invariants: `last_seq` is the highest seq ever pushed (sealed or open), so dedupe holds
//! across seals and restarts; an empty head's record says exactly what was sealed; a head is
//! pure data, with no I/O and no clock of its own (callers pass `now`).
//!
//! # Record format (version 1)
//!
//! | field | encoding |
//! |---|---|
//! | version | one byte, [`HEAD_VERSION`] |
//! | sealed seq | varint: the last seq in a sealed chunk, 0 for none |
//! | last time | varint: ms since the Unix epoch of the sample with the highest seq, 0 for none |
//! | opened | varint: the server's clock (ms) when the open chunk got its first sample |
//! | previous point | `0`, or `1` then time (ms), rx, tx as varints: the last sealed sample's counters |
//! | open chunk | every remaining byte: a sealed chunk (`chunk.rs`), count 0 when empty |

use std::collections::BTreeMap;

use super::bits::{ByteReader, DecodeError, put_uvarint};
use super::chunk::{self, ChunkDecoder, ChunkEncoder, ChunkError, ChunkHeader};
use super::rollup::{CounterPoint, Resolution, Rollup, RollupBuilder, RollupError};
use crate::domain::Sample;

/// Format version of a head record written by this build; the only one it reads.
pub const HEAD_VERSION: u8 = 1;

/// When a head is sealed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeadLimits {
    /// Most samples in one chunk.
    pub max_samples: u32,
    /// Body bytes at or above which the chunk is sealed: bounds a head's memory.
    pub max_body_bytes: usize,
    /// Longest a chunk stays open (server clock), and widest span of sample times it covers.
    pub max_span_ms: u64,
}

/// One agent's open chunk and what it continues from.
#[derive(Clone, Debug, Default)]
pub struct Head {
    enc: ChunkEncoder,
    sealed_seq: u64,
    last_time_ms: u64,
    opened_ms: u64,
    prev: Option<CounterPoint>,
}

/// What sealing a head produces, to be written together.
#[derive(Debug)]
pub struct Sealed {
    /// The sealed chunk.
    pub chunk: Vec<u8>,
    pub header: ChunkHeader,
    /// The rollups of the chunk's samples, one per (resolution, bucket start ms), to merge into
    /// what is stored for those buckets.
    pub rollups: Vec<(Resolution, u64, Rollup)>,
    /// The empty head that follows the chunk.
    pub next: Head,
}

/// Why a head could not take a sample or be sealed or read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error(transparent)]
    Chunk(#[from] ChunkError),
    #[error(transparent)]
    Rollup(#[from] RollupError),
}

impl From<DecodeError> for HeadError {
    fn from(e: DecodeError) -> Self {
        Self::Chunk(e.into())
    }
}

impl Head {
    /// The head of an agent with nothing stored.
    pub fn new() -> Self {
        Self::default()
    }

    /// The highest seq pushed, sealed or open; 0 for none.
    pub fn last_seq(&self) -> u64 {
        if self.enc.is_empty() {
            self.sealed_seq
        } else {
            self.enc.header().last_seq
        }
    }

    /// The last seq in a sealed chunk; 0 for none.
    pub fn sealed_seq(&self) -> u64 {
        self.sealed_seq
    }

    /// The time (ms since the Unix epoch) of the sample with the highest seq; 0 for none.
    pub fn last_time_ms(&self) -> u64 {
        self.last_time_ms
    }

    /// Whether the open chunk holds no sample.
    pub fn is_empty(&self) -> bool {
        self.enc.is_empty()
    }

    /// What the open chunk's header says (count, seqs, time bounds).
    pub fn header(&self) -> ChunkHeader {
        self.enc.header()
    }

    /// Appends `sample` (in its stored form or not: the chunk stores it by `chunk.rs`'s rule).
    /// `now_ms` is the server's clock, which stamps when the open chunk got its first sample.
    /// Returns `false` for a duplicate (seq at or below [`Head::last_seq`]), which changes
    /// nothing.
    ///
    /// # Errors
    ///
    /// The sample has no stored form, or the chunk is full; nothing changed.
    pub fn push(&mut self, sample: &Sample, now_ms: u64) -> Result<bool, HeadError> {
        if sample.seq <= self.last_seq() {
            return Ok(false);
        }
        let time_ms = chunk::time_to_millis(sample.time.get())?;
        let opened = self.enc.is_empty();
        self.enc.push(sample)?;
        self.last_time_ms = time_ms;
        if opened {
            self.opened_ms = now_ms;
        }
        Ok(true)
    }

    /// Whether `sample` must start a new chunk: appended, it would stretch the open chunk's
    /// span of sample times past `limits.max_span_ms` (a clock jump, a backfill of old samples).
    pub fn must_seal_before(&self, sample: &Sample, limits: &HeadLimits) -> bool {
        let Ok(time_ms) = chunk::time_to_millis(sample.time.get()) else {
            return false;
        };
        let h = self.enc.header();
        !self.enc.is_empty()
            && time_ms.max(h.max_time_ms) - time_ms.min(h.min_time_ms) > limits.max_span_ms
    }

    /// Whether the open chunk is full by count or bytes, or has been open for
    /// `limits.max_span_ms` at `now_ms`.
    pub fn due(&self, now_ms: u64, limits: &HeadLimits) -> bool {
        !self.enc.is_empty()
            && (self.enc.len() >= limits.max_samples
                || self.enc.body_len() >= limits.max_body_bytes
                || now_ms.saturating_sub(self.opened_ms) >= limits.max_span_ms)
    }

    /// Seals the open chunk (which must not be empty), without changing `self`: the backend
    /// replaces this head with [`Sealed::next`] once everything is written.
    ///
    /// # Errors
    ///
    /// A sample of the open chunk cannot be decoded or rolled up (damage: never for a head this
    /// build filled).
    pub fn seal(&self) -> Result<Sealed, HeadError> {
        let chunk = self.enc.sealed();
        let header = self.enc.header();
        let (rollups, prev) = self.rollups_with_previous()?;
        let rollups = rollups
            .into_iter()
            .map(|((resolution, start), rollup)| (resolution, start, rollup))
            .collect();
        let next = Head {
            enc: ChunkEncoder::new(),
            sealed_seq: self.last_seq(),
            last_time_ms: self.last_time_ms,
            opened_ms: 0,
            prev,
        };
        Ok(Sealed {
            chunk,
            header,
            rollups,
            next,
        })
    }

    /// The rollups of the open chunk's samples at `resolution`, by bucket start (ms), with the
    /// open bucket: what a read adds to the stored rollups.
    ///
    /// # Errors
    ///
    /// As [`Head::seal`].
    pub fn rollups(&self, resolution: Resolution) -> Result<BTreeMap<u64, Rollup>, HeadError> {
        Ok(self
            .rollups_with_previous()?
            .0
            .into_iter()
            .filter(|((r, _), _)| *r == resolution)
            .map(|((_, start), rollup)| (start, rollup))
            .collect())
    }

    /// Every rollup of the open chunk by (resolution, bucket start), merged per bucket, and the
    /// counter point of its last sample (or the previous one if it is empty).
    #[allow(clippy::type_complexity, reason = "a private helper's pair of results")]
    fn rollups_with_previous(
        &self,
    ) -> Result<(BTreeMap<(Resolution, u64), Rollup>, Option<CounterPoint>), HeadError> {
        let mut builders = Resolution::ALL.map(|r| RollupBuilder::after(r, self.prev));
        let mut out: BTreeMap<(Resolution, u64), Rollup> = BTreeMap::new();
        let mut fold = |resolution, (start, rollup): (u64, Rollup)| {
            out.entry((resolution, start)).or_default().merge(&rollup);
        };
        let mut sample = chunk::blank_sample();
        let mut samples = self.enc.samples();
        while samples.next_into(&mut sample)? {
            for builder in &mut builders {
                if let Some(closed) = builder.push(&sample)? {
                    fold(builder.resolution(), closed);
                }
            }
        }
        let prev = builders[0].previous();
        for builder in &mut builders {
            if let Some(open) = builder.close() {
                fold(builder.resolution(), open);
            }
        }
        Ok((out, prev))
    }

    /// The open chunk's samples, decoded in place.
    pub fn samples(&self) -> ChunkDecoder<'_> {
        self.enc.samples()
    }

    /// The open chunk, sealed into a copy (for a read that outlives a lock).
    pub fn chunk_copy(&self) -> Vec<u8> {
        self.enc.sealed()
    }

    /// Heap bytes held, for memory accounting.
    pub fn heap_bytes(&self) -> usize {
        self.enc.heap_bytes()
    }

    /// The head's record (see the module documentation).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32 + self.enc.body_len());
        out.push(HEAD_VERSION);
        put_uvarint(&mut out, self.sealed_seq);
        put_uvarint(&mut out, self.last_time_ms);
        put_uvarint(&mut out, self.opened_ms);
        match self.prev {
            None => out.push(0),
            Some(p) => {
                out.push(1);
                put_uvarint(&mut out, p.time_ms);
                put_uvarint(&mut out, p.rx);
                put_uvarint(&mut out, p.tx);
            }
        }
        out.extend_from_slice(&self.enc.sealed());
        out
    }

    /// The server's clock (ms) when the open chunk got its first sample.
    pub fn opened_ms(&self) -> u64 {
        self.opened_ms
    }

    /// `(last seq, last time ms)` of a record written by [`Head::encode`], without resuming
    /// its open chunk: what a start-up needs of every agent.
    ///
    /// # Errors
    ///
    /// As [`Head::decode`], except that the open chunk's body is not checked.
    pub fn summary(bytes: &[u8]) -> Result<(u64, u64), HeadError> {
        let (fields, chunk) = Self::decode_fields(bytes)?;
        let (header, _) = ChunkHeader::parse(chunk)?;
        let last_seq = if header.count == 0 {
            fields.sealed_seq
        } else {
            header.last_seq
        };
        Ok((last_seq, fields.last_time_ms))
    }

    /// Reads a record written by [`Head::encode`]; the open chunk is resumed for appending.
    ///
    /// # Errors
    ///
    /// Another version, short or inconsistent input, a damaged open chunk.
    pub fn decode(bytes: &[u8]) -> Result<Self, HeadError> {
        let (fields, chunk) = Self::decode_fields(bytes)?;
        let enc = ChunkEncoder::resume(chunk)?;
        if !enc.is_empty() && enc.header().first_seq <= fields.sealed_seq {
            return Err(DecodeError::Corrupt("head seqs").into());
        }
        Ok(Self { enc, ..fields })
    }

    /// The fields of a record before its open chunk, and the chunk's bytes.
    fn decode_fields(bytes: &[u8]) -> Result<(Self, &[u8]), HeadError> {
        let mut r = ByteReader::new(bytes);
        let version = r.u8("head version")?;
        if version != HEAD_VERSION {
            return Err(DecodeError::Version {
                found: version,
                expected: HEAD_VERSION,
            }
            .into());
        }
        let sealed_seq = r.uvarint("head sealed seq")?;
        let last_time_ms = r.uvarint("head last time")?;
        let opened_ms = r.uvarint("head opened")?;
        let prev = match r.u8("head previous point")? {
            0 => None,
            1 => Some(CounterPoint {
                time_ms: r.uvarint("head previous time")?,
                rx: r.uvarint("head previous rx")?,
                tx: r.uvarint("head previous tx")?,
            }),
            _ => return Err(DecodeError::Corrupt("head previous point").into()),
        };
        let fields = Self {
            enc: ChunkEncoder::new(),
            sealed_seq,
            last_time_ms,
            opened_ms,
            prev,
        };
        Ok((fields, r.rest()))
    }
}

#[cfg(test)]
mod tests;
