//! Reads of the time-series engine: an agent's samples in a time range, and its rollups.
//!
//! Samples: the sealed chunks whose header overlaps the range, merged with a copy of the open
//! head in `(time, seq)` order (`store/merge.rs`). No lock is held across sled: the head is
//! copied under its shard's lock, with the last seq sealed before the copy, and a chunk whose
//! first seq is above that was sealed after the copy, so its samples are already in the copy
//! and the chunk is skipped. Each chunk is read again by key when it is decoded, so a read
//! holds one chunk's samples at a time (more only where the agent's clock went back). A long
//! read (by its chunks' headers, [`READ_AHEAD_MIN_SAMPLES`] or more) decodes on
//! [`READ_AHEAD_THREADS`] threads of its own, in batches of whole chunks dealt to them in turn
//! and merged in the same order, so it yields exactly what a read in line does and holds a
//! few batches' samples at most; its threads end with the read, or at its first error. All
//! reads together run at most [`READ_AHEAD_MAX_THREADS`] such threads; past them, a read
//! decodes in line.
//!
//! Rollups: the stored buckets of the range (read a block at a time, `rollup/block.rs`) merged
//! with the open head's rollups. Rollups carry no seqs, so a read holds its shard's `seals` lock
//! (shared) from the head's rollups to its last stored block; a seal in between would count the
//! head's samples in both.

use std::collections::{BTreeMap, VecDeque};
use std::iter::Peekable;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::sync::{PoisonError, RwLockReadGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::super::layout::{
    BUCKET_SUFFIX_LEN, backend, bucket_key, chunk_series, corrupt, head_key, millis, prefix_end,
    rollup_series, series_key, series_millis,
};
use super::{Series, lock};
use crate::domain::Time;
use crate::store::chunk::{self, ChunkDecoder, ChunkHeader};
use crate::store::head::Head;
use crate::store::merge::{Source, TimeMerge};
use crate::store::rollup::{Resolution, Rollup, block};
use crate::store::wal::AgentKey;
use crate::store::{Result, RollupBucket, StoreError};

/// How a read decodes the next sample of a chunk into what it yields (`Ok(None)` after the
/// last): the whole sample, or its totals without the per-disk detail.
pub(in crate::store::sled) type Decode<T> =
    fn(&mut ChunkDecoder<'_>) -> std::result::Result<Option<T>, chunk::ChunkError>;

/// A part of a sample read, found before it is decoded.
struct Found {
    /// The earliest sample time the part's header gives.
    min_ms: u64,
    /// Samples the part holds, by its header.
    count: u64,
    part: Part,
}

/// What the merge opens: a sealed chunk by key, or the head's copy.
enum Part {
    Chunk(Vec<u8>),
    Head(Box<Head>),
}

/// A sample read of at least this many samples (by its chunks' headers) decodes them on
/// [`READ_AHEAD_THREADS`] threads of its own, ahead of the merge that consumes them, so that a
/// long read (30 days of an agent are 259,200 samples at 10 s) uses more than one core: the
/// decode is about 60 % of a `GetMetrics` aggregation's work. The range is split into batches
/// of whole parts, dealt to the threads in turn and consumed in order, so the samples, and
/// everything computed from them, are exactly those of a read in line.
pub(super) const READ_AHEAD_MIN_SAMPLES: u64 = 8 * READ_AHEAD_BATCH;

/// Threads a long read decodes on.
pub(super) const READ_AHEAD_THREADS: usize = 2;

/// Samples per batch, about: one hand-over (a thread woken) per batch, not per chunk.
const READ_AHEAD_BATCH: u64 = 4096;

/// Batches a thread keeps decoded ahead of the merge, besides the one it is decoding: what a
/// long read holds is a few batches' samples, never the range.
const READ_AHEAD: usize = 1;

type Decoded<T> = Vec<((u64, u64), T)>;

/// Samples reserved at most for a part before it is decoded (a sealed chunk holds a few
/// hundred).
const MAX_PART_RESERVE: usize = 1 << 14;

/// What decodes a part of a sample read: everything it needs, owned, so that it can run on a
/// thread of its own.
struct PartReader<T> {
    data: sled::Tree,
    head_key: Vec<u8>,
    from_ms: u64,
    to_ms: u64,
    decode: Decode<T>,
}

impl<T: Send + 'static> PartReader<T> {
    /// `part`'s samples with `from_ms <= time < to_ms`, appended to `out`.
    fn read(&self, part: Part, mut out: Decoded<T>) -> Result<Decoded<T>> {
        let mut read = |key: &[u8], mut samples: ChunkDecoder<'_>| -> Result<()> {
            let damaged = |e: chunk::ChunkError| corrupt(key, e.to_string());
            // A damaged header may claim any count: the reservation is bounded, the rest
            // grows as samples actually decode.
            out.reserve((samples.header().count as usize).min(MAX_PART_RESERVE));
            while let Some(sample) = (self.decode)(&mut samples).map_err(damaged)? {
                let order = samples.last_order();
                if (self.from_ms..self.to_ms).contains(&order.0) {
                    out.push((order, sample));
                }
            }
            Ok(())
        };
        match part {
            Part::Head(head) => read(&self.head_key, head.samples())?,
            Part::Chunk(chunk_key) => {
                // Gone since the range was read: retention removed it.
                let Some(value) = self.data.get(&chunk_key).map_err(backend)? else {
                    return Ok(out);
                };
                let samples =
                    ChunkDecoder::new(&value).map_err(|e| corrupt(&chunk_key, e.to_string()))?;
                read(&chunk_key, samples)?;
            }
        }
        Ok(out)
    }
}

/// Read-ahead threads running at most, all reads together: past them, a long read decodes in
/// line (as every read did before reads went ahead), so that concurrent long reads cost the
/// server a bounded number of threads, and no more than its cores can run.
pub(super) const READ_AHEAD_MAX_THREADS: usize = 2 * READ_AHEAD_THREADS;

pub(super) static READ_AHEAD_RUNNING: AtomicUsize = AtomicUsize::new(0);

/// One of the [`READ_AHEAD_MAX_THREADS`], held by a read-ahead thread (or the attempt to start
/// one) and given back when dropped.
struct ThreadSlot;

impl ThreadSlot {
    fn take() -> Option<Self> {
        READ_AHEAD_RUNNING
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |running| {
                (running < READ_AHEAD_MAX_THREADS).then_some(running + 1)
            })
            .ok()
            .map(|_| Self)
    }
}

impl Drop for ThreadSlot {
    fn drop(&mut self) {
        READ_AHEAD_RUNNING.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Starts the threads of a read ahead of `parts` (in the merge's order, with their sample
/// `counts`), on as many of [`READ_AHEAD_THREADS`] as there are slots and threads for. Gives the
/// parts back if none could be started.
fn read_ahead<T: Send + 'static>(
    reader: &Arc<PartReader<T>>,
    parts: Vec<Part>,
    counts: &[u64],
) -> std::result::Result<ReadAhead<T>, Vec<Part>> {
    let mut lanes = Vec::new();
    let mut starts = Vec::new();
    for _ in 0..READ_AHEAD_THREADS {
        let Some(slot) = ThreadSlot::take() else {
            break;
        };
        let (decoded, receive) = mpsc::sync_channel(READ_AHEAD);
        let (recycle, spares) = mpsc::channel::<Decoded<T>>();
        // A thread takes its batches once all threads are known: how many decides who
        // decodes which.
        let (hand, take) = mpsc::sync_channel::<Vec<Vec<Part>>>(1);
        let reader = Arc::clone(reader);
        let started = std::thread::Builder::new()
            .name("tether-read-ahead".to_owned())
            .spawn(move || {
                let _slot = slot;
                let Ok(batches) = take.recv() else {
                    return;
                };
                for batch in batches {
                    let mut out = Vec::with_capacity(batch.len());
                    for part in batch {
                        // A buffer the merge has emptied, or a new one while none has come back
                        // (`try_recv` fails only for that, or once the read is gone).
                        let buffer = spares.try_recv().unwrap_or_default();
                        let result = reader.read(part, buffer);
                        let failed = result.is_err();
                        out.push(result);
                        if failed {
                            break;
                        }
                    }
                    let failed = out.last().is_some_and(Result::is_err);
                    // Sending fails once the read is dropped: then nothing is left to do.
                    if decoded.send(out).is_err() || failed {
                        return;
                    }
                }
            });
        match started {
            Ok(_) => {
                lanes.push(Lane { receive, recycle });
                starts.push(hand);
            }
            Err(e) => {
                tracing::debug!(error = %e, "a read-ahead thread did not start");
                break;
            }
        }
    }
    if starts.is_empty() {
        return Err(parts);
    }
    let mut dealt: Vec<Vec<Vec<Part>>> = starts.iter().map(|_| Vec::new()).collect();
    let mut batch = Vec::new();
    let mut samples = 0;
    let mut n_batches = 0;
    let n_parts = parts.len();
    for (i, (part, count)) in parts.into_iter().zip(counts).enumerate() {
        batch.push(part);
        samples += count;
        if samples >= READ_AHEAD_BATCH || i + 1 == n_parts {
            dealt[n_batches % starts.len()].push(std::mem::take(&mut batch));
            samples = 0;
            n_batches += 1;
        }
    }
    for (hand, batches) in starts.into_iter().zip(dealt) {
        // Each thread waits on its `take` until it has its batches, so this cannot fail; if it
        // did, that lane would end at once and the read report it where its batches were due.
        if hand.send(batches).is_err() {
            tracing::warn!("a read-ahead thread ended before it had its batches");
        }
    }
    Ok(ReadAhead {
        lanes,
        next: 0,
        ready: VecDeque::new(),
    })
}

/// One thread of a read ahead, seen from the merge.
struct Lane<T> {
    receive: mpsc::Receiver<Vec<Result<Decoded<T>>>>,
    /// Buffers the merge has emptied, for the thread to fill again.
    recycle: mpsc::Sender<Decoded<T>>,
}

/// The merge's end of a read ahead: the parts in order, batch by batch from thread to thread.
struct ReadAhead<T> {
    lanes: Vec<Lane<T>>,
    /// The batch to receive next; batch `i` comes from lane `i % lanes.len()`.
    next: usize,
    /// The rest of the last batch received.
    ready: VecDeque<Result<Decoded<T>>>,
}

impl<T> ReadAhead<T> {
    /// The next part's samples; `spare` (empty) goes back to a thread for a later part.
    fn next(&mut self, spare: Decoded<T>) -> Result<Decoded<T>> {
        let n = self.lanes.len();
        if self.ready.is_empty() {
            let lane = &self.lanes[self.next % n];
            if let Ok(batch) = lane.receive.recv() {
                self.ready.extend(batch);
            }
            self.next += 1;
        }
        if spare.capacity() > 0 {
            // A thread that has ended needs no buffer.
            let _ = self.lanes[(self.next + n - 1) % n].recycle.send(spare);
        }
        self.ready.pop_front().unwrap_or_else(|| {
            Err(StoreError::Backend(
                "a read-ahead thread ended before the read".into(),
            ))
        })
    }
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
    /// `key`'s samples with `from <= time < to` in `(time, seq)` order, each decoded as a `T`
    /// by `decode` (a sample, or its totals). A caller that takes at most `most` of them says
    /// so: a read ahead of fewer than [`READ_AHEAD_MIN_SAMPLES`] is not worth its threads.
    pub(in crate::store::sled) fn samples<'a, T: Send + 'static>(
        &'a self,
        key: &AgentKey,
        from: SystemTime,
        to: SystemTime,
        decode: Decode<T>,
        most: usize,
    ) -> Box<dyn Iterator<Item = Result<T>> + 'a> {
        let ahead_from = match u64::try_from(most) {
            Ok(most) if most < READ_AHEAD_MIN_SAMPLES => u64::MAX,
            _ => READ_AHEAD_MIN_SAMPLES,
        };
        self.samples_with(key, from, to, decode, ahead_from).0
    }

    /// [`Series::samples`], read ahead on threads from `ahead_from` samples on; with whether
    /// it is.
    pub(super) fn samples_with<'a, T: Send + 'static>(
        &'a self,
        key: &AgentKey,
        from: SystemTime,
        to: SystemTime,
        decode: Decode<T>,
        ahead_from: u64,
    ) -> (Box<dyn Iterator<Item = Result<T>> + 'a>, bool) {
        if from >= to {
            return (Box::new(std::iter::empty()), false);
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
            sources.push(Found {
                min_ms: head.header().min_time_ms,
                count: u64::from(head.header().count),
                part: Part::Head(Box::new(head)),
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
                Err(e) => return (once(backend(e)), false),
            };
            let header = match ChunkHeader::parse(&value) {
                Ok((header, _)) => header,
                Err(e) => return (once(corrupt(&chunk_key, e.to_string())), false),
            };
            if header.first_seq <= sealed_before && header.overlaps(from_ms, to_ms) {
                sources.push(Found {
                    min_ms: header.min_time_ms,
                    count: u64::from(header.count),
                    part: Part::Chunk(chunk_key.to_vec()),
                });
            }
        }
        let reader = Arc::new(PartReader {
            data: self.data.clone(),
            head_key: head_key(key),
            from_ms,
            to_ms,
            decode,
        });
        sources.sort_by_key(|source| source.min_ms);
        let counts: Vec<u64> = sources.iter().map(|source| source.count).collect();
        let (bounds, parts): (Vec<u64>, Vec<Part>) = sources
            .into_iter()
            .map(|source| (source.min_ms, source.part))
            .unzip();
        let parts = if counts.iter().sum::<u64>() >= ahead_from {
            match read_ahead(&reader, parts, &counts) {
                Ok(mut ahead) => {
                    let sources = bounds
                        .into_iter()
                        .map(|min_ms| Source { min_ms, key: () })
                        .collect();
                    let merge = TimeMerge::new(sources, move |(), spare| ahead.next(spare));
                    return (Box::new(merge), true);
                }
                // No thread to spare: the merge decodes each part itself.
                Err(parts) => parts,
            }
        } else {
            parts
        };
        let sources = bounds
            .into_iter()
            .zip(parts)
            .map(|(min_ms, key)| Source { min_ms, key })
            .collect();
        let merge = TimeMerge::new(sources, move |part, out| reader.read(part, out));
        (Box::new(merge), false)
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
