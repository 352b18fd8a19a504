//! Reads of the time-series engine: an agent's samples in a time range, and its rollups.
//!
//! Samples: the sealed chunks whose header overlaps the range, merged with a copy of the open
//! head in `(time, seq)` order (`store/merge.rs`). No lock is held across sled: the head is
//! copied under its shard's lock, with the last seq sealed before the copy, and a chunk whose
//! first seq is above that was sealed after the copy, so its samples are already in the copy
//! and the chunk is skipped. Each chunk is read again by key when the merge reaches it, so a
//! read holds one chunk's samples at a time (more only where the agent's clock went back).
//!
//! Rollups: the stored buckets of the range (read a block at a time, `rollup/block.rs`) merged
//! with the open head's rollups. Rollups carry no seqs, so a read holds its shard's `seals` lock
//! (shared) from the head's rollups to its last stored block; a seal in between would count the
//! head's samples in both.

use std::collections::BTreeMap;
use std::iter::Peekable;
use std::sync::{PoisonError, RwLockReadGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::super::layout::{
    BUCKET_SUFFIX_LEN, backend, bucket_key, chunk_series, corrupt, head_key, millis, prefix_end,
    rollup_series, series_key, series_millis,
};
use super::{Series, lock};
use crate::domain::{Sample, Time};
use crate::store::chunk::{self, ChunkDecoder, ChunkHeader};
use crate::store::head::Head;
use crate::store::merge::{Source, TimeMerge};
use crate::store::rollup::{Resolution, Rollup, block};
use crate::store::wal::AgentKey;
use crate::store::{Result, RollupBucket, StoreError};

/// What the merge opens: a sealed chunk by key, or the head's copy.
enum Part {
    Chunk(Vec<u8>),
    Head(Box<Head>),
}

/// The first whole millisecond at or after `time` (0 before the epoch).
fn ceil_millis(time: SystemTime) -> u64 {
    let floor = millis(time);
    let exact = UNIX_EPOCH.checked_add(Duration::from_millis(floor));
    match exact {
        Some(exact) if exact < time => floor.saturating_add(1),
        _ => floor,
    }
}

fn once<'a, T: 'a>(err: StoreError) -> Box<dyn Iterator<Item = Result<T>> + 'a> {
    Box::new(std::iter::once(Err(err)))
}

impl Series {
    /// `key`'s samples with `from <= time < to` in `(time, seq)` order, each turned into a `T`
    /// by `convert` as it is decoded.
    pub(in crate::store::sled) fn samples<'a, T: 'a>(
        &'a self,
        key: &AgentKey,
        from: SystemTime,
        to: SystemTime,
        convert: fn(&Sample) -> T,
    ) -> Box<dyn Iterator<Item = Result<T>> + 'a> {
        if from >= to {
            return Box::new(std::iter::empty());
        }
        // Stored times are whole milliseconds: `from <= time < to` is
        // `ceil(from) <= time_ms < ceil(to)`.
        let (from_ms, to_ms) = (ceil_millis(from), ceil_millis(to));
        let head = lock(&self.shard(key).heads)
            .get(key)
            .map(|entry| entry.head.clone());
        let sealed_before = head.as_ref().map_or(u64::MAX, Head::sealed_seq);
        let mut sources = Vec::new();
        if let Some(head) = head.filter(|h| h.header().overlaps(from_ms, to_ms)) {
            sources.push(Source {
                min_ms: head.header().min_time_ms,
                key: Part::Head(Box::new(head)),
            });
        }
        // Chunks are keyed by their newest sample's time: those newer than `from` may overlap.
        let series = chunk_series(key);
        let range = (
            std::ops::Bound::Included(series_key(&series, from_ms, 0)),
            prefix_end(&series),
        );
        for entry in self.data.range(range) {
            let (chunk_key, value) = match entry {
                Ok(entry) => entry,
                Err(e) => return once(backend(e)),
            };
            let header = match ChunkHeader::parse(&value) {
                Ok((header, _)) => header,
                Err(e) => return once(corrupt(&chunk_key, e.to_string())),
            };
            if header.first_seq <= sealed_before && header.overlaps(from_ms, to_ms) {
                sources.push(Source {
                    min_ms: header.min_time_ms,
                    key: Part::Chunk(chunk_key.to_vec()),
                });
            }
        }
        let head_key = head_key(key);
        let open = move |part: Part, mut out: Vec<((u64, u64), T)>| -> Result<Vec<_>> {
            let mut sample = chunk::blank_sample();
            let keep = |out: &mut Vec<_>, order: (u64, u64), sample: &Sample| {
                if (from_ms..to_ms).contains(&order.0) {
                    out.push((order, convert(sample)));
                }
            };
            match part {
                Part::Head(head) => {
                    out.reserve(head.header().count as usize);
                    let mut samples = head.samples();
                    let damaged = |e: chunk::ChunkError| corrupt(&head_key, e.to_string());
                    while samples.next_into(&mut sample).map_err(damaged)? {
                        keep(&mut out, samples.last_order(), &sample);
                    }
                }
                Part::Chunk(chunk_key) => {
                    // Gone since the range was read: retention removed it.
                    let Some(value) = self.data.get(&chunk_key).map_err(backend)? else {
                        return Ok(out);
                    };
                    let damaged = |e: chunk::ChunkError| corrupt(&chunk_key, e.to_string());
                    let mut samples = ChunkDecoder::new(&value).map_err(damaged)?;
                    out.reserve(samples.header().count as usize);
                    while samples.next_into(&mut sample).map_err(damaged)? {
                        keep(&mut out, samples.last_order(), &sample);
                    }
                }
            }
            Ok(out)
        };
        Box::new(TimeMerge::new(sources, open))
    }

    /// `key`'s rollups at `resolution` whose bucket starts in `from..to`, in bucket order.
    pub(in crate::store::sled) fn rollups<'a>(
        &'a self,
        key: &AgentKey,
        resolution: Resolution,
        from: SystemTime,
        to: SystemTime,
    ) -> Box<dyn Iterator<Item = Result<RollupBucket>> + 'a> {
        if from >= to {
            return Box::new(std::iter::empty());
        }
        let (from_ms, to_ms) = (ceil_millis(from), ceil_millis(to));
        let shard = self.shard(key);
        let guard = shard.seals.read().unwrap_or_else(PoisonError::into_inner);
        let head = lock(&shard.heads)
            .get(key)
            .map(|entry| entry.head.rollups(resolution));
        let head = match head {
            None => BTreeMap::new(),
            Some(Ok(buckets)) => buckets,
            Some(Err(e)) => return once(corrupt(&head_key(key), e.to_string())),
        };
        let head: BTreeMap<u64, Rollup> =
            head.range(from_ms..to_ms).map(|(k, v)| (*k, *v)).collect();
        let series = rollup_series(key, resolution);
        // Blocks from the one holding `from` to the last starting before `to`; each yields its
        // buckets inside `from..to`.
        let first_block = resolution.block_start_ms(from_ms);
        let stored = self
            .data
            .range(bucket_key(&series, first_block)..bucket_key(&series, to_ms));
        Box::new(RollupMerge {
            _reading: guard,
            stored: stored
                .flat_map(move |entry| {
                    let buckets = entry.map_err(backend).and_then(|(block_key, value)| {
                        let start = series_millis(&series, &block_key, BUCKET_SUFFIX_LEN)?;
                        block::decode(resolution, start, &value)
                            .map_err(|e| corrupt(&block_key, e.to_string()))
                    });
                    match buckets {
                        Ok(buckets) => buckets
                            .into_iter()
                            .filter(|(start, _)| (from_ms..to_ms).contains(start))
                            .map(Ok)
                            .collect(),
                        Err(e) => vec![Err(e)],
                    }
                })
                .peekable(),
            head: head.into_iter().peekable(),
            failed: false,
        })
    }
}

/// Stored buckets merged with the open head's, holding the shard's `seals` lock while it lives.
struct RollupMerge<'a, S: Iterator<Item = Result<(u64, Rollup)>>> {
    _reading: RwLockReadGuard<'a, ()>,
    stored: Peekable<S>,
    head: Peekable<std::collections::btree_map::IntoIter<u64, Rollup>>,
    failed: bool,
}

impl<S: Iterator<Item = Result<(u64, Rollup)>>> Iterator for RollupMerge<'_, S> {
    type Item = Result<RollupBucket>;

    fn next(&mut self) -> Option<Result<RollupBucket>> {
        if self.failed {
            return None;
        }
        let stored_start = match self.stored.peek() {
            Some(Ok((start, _))) => Some(*start),
            Some(Err(_)) => {
                self.failed = true;
                return match self.stored.next() {
                    Some(Err(e)) => Some(Err(e)),
                    _ => None,
                };
            }
            None => None,
        };
        let head_start = self.head.peek().map(|(start, _)| *start);
        let (start, rollup) = match (stored_start, head_start) {
            (None, None) => return None,
            (Some(s), Some(h)) if h < s => self.head.next()?,
            (Some(s), Some(h)) if h == s => {
                let (_, mut rollup) = self.head.next()?;
                if let Some(Ok((_, stored))) = self.stored.next() {
                    rollup.merge(&stored);
                }
                (s, rollup)
            }
            (Some(_), _) => match self.stored.next()? {
                Ok(bucket) => bucket,
                Err(e) => {
                    self.failed = true;
                    return Some(Err(e));
                }
            },
            (None, Some(_)) => self.head.next()?,
        };
        let start = Time::clamped(UNIX_EPOCH + Duration::from_millis(start));
        Some(Ok(RollupBucket { start, rollup }))
    }
}
