//! The time-series engine of the sled store: the write-ahead log, the open heads, sealing,
//! checkpoints and recovery. Reads are `series/read.rs`.
//!
//! # Write path
//!
//! A commit's samples go to the `log` tree as self-contained `wal.rs` records (one per
//! [`LOG_PART_SAMPLES`] samples, keyed by a big-endian record number), applied before the
//! commit's other writes and flushed with them: one flush per batch, after which the commit
//! returns and the writer acks. Only then are the samples appended to their agents' heads
//! (memory), so a head holds only samples whose record is durable. A head that is full (count or
//! bytes), open for `chunk_max_span`, about to span more than that, or over the heads' memory
//! budget is sealed: its chunk, its rollups merged into the stored blocks of buckets, and its
//! empty head record go in one `apply_batch`, so rollups count each sample once. A sealed head
//! leaves memory; its record tells the next sample what was sealed.
//!
//! # Recovery invariants
//!
//! - Every acknowledged sample is in a durable log record, a durable head record, or a durable
//!   sealed chunk. A log record is removed only below the *truncation bound*: the smallest
//!   record that an open head holds a sample of without a durable record of its own
//!   (`needs_from`), or that a commit has logged but not yet appended (in flight), computed
//!   *before* the flush that makes the snapshots and seals it relies on durable.
//! - Recovery loads the non-empty head records, then replays the log in record order through
//!   the same append as the write path: a sample at or below its head's last seq (sealed or
//!   open) is a duplicate and is skipped, so replaying a record twice, or over a snapshot or a
//!   seal that already holds it, changes nothing. Rollups are only ever computed when a head is
//!   sealed, never from the log.
//! - A checkpoint applies its head snapshots under the shard's lock, the lock every seal holds,
//!   so a snapshot taken before a seal never overwrites the sealed head's record (a restart
//!   would otherwise load sealed samples again and count them twice in the rollups).
//! - sled recovers a prefix of its log, so a crash between the log's `apply_batch` and the data
//!   tree's keeps the samples without the commit's other writes (harmless: those are idempotent
//!   puts, retried by the writer), never the reverse.
//! - The store's sample memory is the heads' (bounded by `heads_budget_bytes`, past which heads
//!   are sealed early, smallest chunks first being the price) plus sled's page cache.
//!
//! A seal needs the agent shard's `seals` lock, which it only *tries*: a rollup read holds it
//! (shared) from copying the head to its last stored bucket, so it never counts a seal's
//! samples twice, and a seal that finds it taken waits for the next push or compaction instead
//! of making the writer wait for a reader.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, RwLock, TryLockError};
use std::time::SystemTime;

use super::layout::{
    HEAD, backend, bucket_key, chunk_series, corrupt, head_key, millis, rollup_series, section,
    series_key,
};
use super::{Result, StoreError};
use crate::domain::{AgentId, OrgId, Sample};
use crate::store::head::{Head, HeadError, HeadLimits};
use crate::store::rollup::{Resolution, Rollup, block};
use crate::store::wal::{self, AgentKey};
use crate::store::{Compacted, SeriesConfig, fault};

mod read;

/// Samples per log record: keeps each record well under sled's blob threshold (a quarter of
/// its segment), so records stay in the log instead of files of their own.
pub(super) const LOG_PART_SAMPLES: usize = 128;

/// Shards of the heads map: one lock each, so pushes, reads and seals of different agents
/// rarely meet.
const N_SHARDS: usize = 32;

/// Most writes in one batch the engine applies on its own (snapshots, truncation): below the
/// batch size past which sled keeps memory (see `SledStore::commit`).
const STORE_BATCH: usize = 256;

/// Fixed cost of one head in the map, beyond its heap: the entry, the map's control byte and
/// slack.
const ENTRY_OVERHEAD: u64 = (std::mem::size_of::<(AgentKey, Entry)>() + 16) as u64;

/// The engine: open heads by agent and the log's numbering.
pub(super) struct Series {
    /// Flushes the database, blob files included.
    db: super::blobs::Flusher,
    data: sled::Tree,
    log: sled::Tree,
    limits: HeadLimits,
    budget: u64,
    shards: Box<[Shard]>,
    n_heads: AtomicU64,
    heads_bytes: AtomicU64,
    /// Bytes of the log's records (keys and values): what a checkpoint bounds.
    log_bytes: AtomicU64,
    numbers: Mutex<Numbers>,
}

struct Shard {
    heads: Mutex<HashMap<AgentKey, Entry>>,
    /// Taken shared by a rollup read for its duration, and tried exclusively by a seal.
    seals: RwLock<()>,
}

/// One open head.
struct Entry {
    head: Head,
    /// The oldest log record with a sample of this head that no durable head record holds.
    needs_from: Option<u64>,
    /// What this entry is counted for in `heads_bytes`.
    bytes: u64,
}

/// The log's record numbers.
struct Numbers {
    next: u64,
    /// Records logged by a commit whose samples are not yet in their heads, and records whose
    /// samples could not be appended (kept until a restart replays them).
    held: BTreeSet<u64>,
}

/// Records a commit logged; releases them from the in-flight set when dropped, except those
/// whose samples could not be appended (`kept`, held until a restart replays them).
pub(super) struct Logged<'a> {
    series: &'a Series,
    first: u64,
    parts: u64,
    kept: BTreeSet<u64>,
}

impl Drop for Logged<'_> {
    fn drop(&mut self) {
        let mut numbers = lock(&self.series.numbers);
        for record in self.first..self.first + self.parts {
            if !self.kept.contains(&record) {
                numbers.held.remove(&record);
            }
        }
    }
}

/// Locks `mutex`, going on with its data if a panicking thread poisoned it: every mutation here
/// leaves the data consistent before anything that can panic.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn head_error(key: &AgentKey, err: HeadError) -> StoreError {
    corrupt(&head_key(key), err.to_string())
}

impl Series {
    /// Opens the engine on `data` and `log`, then recovers: loads every non-empty head record
    /// and replays the log (see the module documentation).
    ///
    /// # Errors
    ///
    /// `Backend` on I/O; `Corrupt` for a damaged head record or log record.
    pub(super) fn open(
        db: super::blobs::Flusher,
        data: sled::Tree,
        log: sled::Tree,
        config: &SeriesConfig,
        orgs: &[String],
    ) -> Result<Self> {
        let next = match log.last().map_err(backend)? {
            Some((key, _)) => record_number(&key)? + 1,
            None => 1,
        };
        let mut log_bytes = 0;
        for entry in log.iter() {
            let (key, value) = entry.map_err(backend)?;
            log_bytes += (key.len() + value.len()) as u64;
        }
        let series = Self {
            db,
            data,
            log,
            limits: HeadLimits {
                max_samples: config.head_max_samples.max(1),
                max_body_bytes: config.head_max_bytes,
                max_span_ms: u64::try_from(config.chunk_max_span.as_millis()).unwrap_or(u64::MAX),
            },
            budget: config.heads_budget_bytes as u64,
            shards: (0..N_SHARDS)
                .map(|_| Shard {
                    heads: Mutex::new(HashMap::new()),
                    seals: RwLock::new(()),
                })
                .collect(),
            n_heads: AtomicU64::new(0),
            heads_bytes: AtomicU64::new(0),
            log_bytes: AtomicU64::new(log_bytes),
            numbers: Mutex::new(Numbers {
                next,
                held: BTreeSet::new(),
            }),
        };
        series.recover(orgs)?;
        Ok(series)
    }

    fn recover(&self, orgs: &[String]) -> Result<()> {
        for org in orgs {
            let prefix = section(org, HEAD);
            for entry in self.data.scan_prefix(&prefix) {
                let (key, value) = entry.map_err(backend)?;
                let agent = super::layout::key_id(&prefix, &key)?;
                let agent_key = AgentKey {
                    org: OrgId::new(org.as_str()),
                    agent: AgentId::new(agent),
                };
                let head = Head::decode(&value).map_err(|e| corrupt(&key, e.to_string()))?;
                if head.is_empty() {
                    // Stays on disk: the next sample of its agent loads it.
                    continue;
                }
                let shard = self.shard(&agent_key);
                let mut heads = lock(&shard.heads);
                self.insert(&mut heads, agent_key, head);
            }
        }
        let now_ms = millis(SystemTime::now());
        let mut replayed = 0u64;
        for entry in self.log.iter() {
            let (key, value) = entry.map_err(backend)?;
            let record_no = record_number(&key)?;
            let record = wal::decode(&value).map_err(|e| corrupt(&key, e.to_string()))?;
            for (agent_key, sample) in record.iter() {
                let shard = self.shard(agent_key);
                let mut heads = lock(&shard.heads);
                if self.push(shard, &mut heads, agent_key, sample, record_no, now_ms)? {
                    replayed += 1;
                }
            }
        }
        tracing::info!(
            heads = self.n_heads.load(Ordering::Relaxed),
            replayed,
            "time-series heads recovered"
        );
        Ok(())
    }

    fn shard(&self, key: &AgentKey) -> &Shard {
        let mut hasher = std::hash::DefaultHasher::new();
        key.hash(&mut hasher);
        &self.shards[(hasher.finish() % N_SHARDS as u64) as usize]
    }

    // === write path ===

    /// Logs `samples` (stored form, checked loggable) as records in the log tree, not yet
    /// flushed. The records stay in flight (never truncated) until the returned guard drops.
    ///
    /// # Errors
    ///
    /// `Backend` if the log tree cannot be written.
    pub(super) fn log(&self, samples: &[(AgentKey, Sample)]) -> Result<Logged<'_>> {
        let parts = samples.len().div_ceil(LOG_PART_SAMPLES) as u64;
        let first = {
            let mut numbers = lock(&self.numbers);
            let first = numbers.next;
            numbers.next += parts;
            numbers.held.extend(first..first + parts);
            first
        };
        let logged = Logged {
            series: self,
            first,
            parts,
            kept: BTreeSet::new(),
        };
        let mut batch = sled::Batch::default();
        let mut record = Vec::new();
        let mut bytes = 0;
        for (number, part) in (first..).zip(samples.chunks(LOG_PART_SAMPLES)) {
            record.clear();
            wal::encode_into(
                &mut record,
                part.iter().map(|(key, s)| (&key.org, &key.agent, s)),
            )
            .map_err(|e| StoreError::Unencodable {
                what: "sample",
                detail: e.to_string(),
            })?;
            bytes += (8 + record.len()) as u64;
            batch.insert(&number.to_be_bytes(), record.as_slice());
        }
        self.log.apply_batch(batch).map_err(backend)?;
        self.log_bytes.fetch_add(bytes, Ordering::Relaxed);
        Ok(logged)
    }

    /// Appends samples whose records (`logged`) are durable to their heads, sealing what is
    /// due. Never fails the commit: a sample that cannot be appended is logged as an error and
    /// its record is kept (never truncated) until a restart replays it.
    pub(super) fn append(&self, samples: &[(AgentKey, Sample)], mut logged: Logged<'_>) {
        let now_ms = millis(SystemTime::now());
        for (i, (key, sample)) in samples.iter().enumerate() {
            let record = logged.first + (i / LOG_PART_SAMPLES) as u64;
            let shard = self.shard(key);
            let mut heads = lock(&shard.heads);
            if let Err(e) = self.push(shard, &mut heads, key, sample, record, now_ms) {
                tracing::error!(
                    org = %key.org,
                    agent = %key.agent,
                    seq = sample.seq,
                    "failed to add a logged sample to its head (kept in the log): {e}"
                );
                logged.kept.insert(record);
            }
        }
    }

    /// Appends one sample of record `record` to its head (loading the head's record if it is
    /// not in memory), sealing before and after as due. Returns whether it was appended (not
    /// a duplicate).
    fn push(
        &self,
        shard: &Shard,
        heads: &mut HashMap<AgentKey, Entry>,
        key: &AgentKey,
        sample: &Sample,
        record: u64,
        now_ms: u64,
    ) -> Result<bool> {
        if !heads.contains_key(key) {
            let head = self.stored_head(key)?;
            self.insert(heads, key.clone(), head);
        }
        let Some(entry) = heads.get_mut(key) else {
            return Ok(false);
        };
        if entry.head.must_seal_before(sample, &self.limits) {
            self.seal(shard, key, entry)?;
        }
        let appended = entry
            .head
            .push(sample, now_ms)
            .map_err(|e| head_error(key, e))?;
        if appended {
            entry.needs_from = Some(entry.needs_from.map_or(record, |n| n.min(record)));
        }
        let over_budget = self.heads_bytes.load(Ordering::Relaxed) > self.budget;
        if entry.head.due(now_ms, &self.limits) || over_budget {
            self.seal(shard, key, entry)?;
        }
        self.settle(heads, key);
        Ok(appended)
    }

    /// The head of `key` as stored: its record, or a new head.
    fn stored_head(&self, key: &AgentKey) -> Result<Head> {
        let record_key = head_key(key);
        match self.data.get(&record_key).map_err(backend)? {
            Some(value) => Head::decode(&value).map_err(|e| corrupt(&record_key, e.to_string())),
            None => Ok(Head::new()),
        }
    }

    fn insert(&self, heads: &mut HashMap<AgentKey, Entry>, key: AgentKey, head: Head) {
        let bytes = entry_bytes(&key, &head);
        self.n_heads.fetch_add(1, Ordering::Relaxed);
        self.heads_bytes.fetch_add(bytes, Ordering::Relaxed);
        heads.insert(
            key,
            Entry {
                head,
                needs_from: None,
                bytes,
            },
        );
    }

    /// Brings `key`'s accounting up to date and drops its entry if it holds nothing that is
    /// not durable elsewhere (an empty head: what was sealed is in its record).
    fn settle(&self, heads: &mut HashMap<AgentKey, Entry>, key: &AgentKey) {
        let Some(entry) = heads.get_mut(key) else {
            return;
        };
        if entry.head.is_empty() && entry.needs_from.is_none() {
            let bytes = entry.bytes;
            heads.remove(key);
            self.n_heads.fetch_sub(1, Ordering::Relaxed);
            self.heads_bytes.fetch_sub(bytes, Ordering::Relaxed);
            return;
        }
        let bytes = entry_bytes(key, &entry.head);
        if bytes >= entry.bytes {
            self.heads_bytes
                .fetch_add(bytes - entry.bytes, Ordering::Relaxed);
        } else {
            self.heads_bytes
                .fetch_sub(entry.bytes - bytes, Ordering::Relaxed);
        }
        entry.bytes = bytes;
    }

    /// Seals `entry`'s open chunk: chunk, rollups merged into the stored blocks, and the empty
    /// head record, in one batch (not flushed: the log still holds the samples). Returns
    /// whether it sealed; `false` if the head is empty or a rollup read holds the shard.
    fn seal(&self, shard: &Shard, key: &AgentKey, entry: &mut Entry) -> Result<bool> {
        if entry.head.is_empty() {
            return Ok(false);
        }
        let _exclusive = match shard.seals.try_write() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => return Ok(false),
        };
        let sealed = entry.head.seal().map_err(|e| head_error(key, e))?;
        let mut batch = sled::Batch::default();
        let chunk = series_key(
            &chunk_series(key),
            sealed.header.max_time_ms,
            sealed.header.first_seq,
        );
        batch.insert(chunk, sealed.chunk);
        let mut blocks: BTreeMap<(Resolution, u64), Vec<(u64, Rollup)>> = BTreeMap::new();
        for (resolution, start, rollup) in sealed.rollups {
            let of_block = blocks
                .entry((resolution, resolution.block_start_ms(start)))
                .or_default();
            block::merge_into(of_block, [(start, rollup)]);
        }
        for ((resolution, block_start), sealed) in blocks {
            let block_key = bucket_key(&rollup_series(key, resolution), block_start);
            let mut buckets = match self.data.get(&block_key).map_err(backend)? {
                None => Vec::new(),
                Some(stored) => block::decode(resolution, block_start, &stored).unwrap_or_else(
                    // Unreadable already; the new samples' aggregates replace it.
                    |e| {
                        tracing::error!(
                            key = %block_key.escape_ascii(),
                            "replacing a corrupt rollup block: {e}"
                        );
                        Vec::new()
                    },
                ),
            };
            block::merge_into(&mut buckets, sealed);
            batch.insert(block_key, block::encode(resolution, block_start, &buckets));
        }
        batch.insert(head_key(key), sealed.next.encode());
        self.data.apply_batch(batch).map_err(backend)?;
        fault::point("sealed");
        entry.head = sealed.next;
        entry.needs_from = None;
        Ok(true)
    }

    // === compaction ===

    /// See [`crate::store::Store::compact`].
    /// With `checkpoint`, calls `between` after each slice of the checkpoint's work (one
    /// shard's snapshots, one batch of log removals), holding no lock of its own.
    pub(super) fn compact(
        &self,
        now: SystemTime,
        checkpoint: bool,
        between: &mut dyn FnMut(),
    ) -> Result<Compacted> {
        let now_ms = millis(now);
        let mut done = Compacted::default();
        for shard in &self.shards {
            let mut heads = lock(&shard.heads);
            let due: Vec<AgentKey> = heads
                .iter()
                .filter(|(_, e)| e.head.due(now_ms, &self.limits))
                .map(|(k, _)| k.clone())
                .collect();
            for key in due {
                if let Some(entry) = heads.get_mut(&key)
                    && self.seal(shard, &key, entry)?
                {
                    done.sealed += 1;
                }
                self.settle(&mut heads, &key);
            }
        }
        if self.heads_bytes.load(Ordering::Relaxed) > self.budget {
            done.sealed += self.seal_oldest()?;
        }
        if checkpoint {
            let (snapshots, removed) = self.checkpoint(between)?;
            done.snapshots = snapshots;
            done.log_records_removed = removed;
        }
        Ok(done)
    }

    /// Seals the heads opened longest ago until the heads are within their budget.
    fn seal_oldest(&self) -> Result<u64> {
        let mut open: Vec<(u64, usize, AgentKey)> = Vec::new();
        for (idx, shard) in self.shards.iter().enumerate() {
            let heads = lock(&shard.heads);
            open.extend(
                heads
                    .iter()
                    .filter(|(_, e)| !e.head.is_empty())
                    .map(|(k, e)| (e.head.opened_ms(), idx, k.clone())),
            );
        }
        open.sort();
        let mut sealed = 0;
        for (_, idx, key) in open {
            if self.heads_bytes.load(Ordering::Relaxed) <= self.budget {
                break;
            }
            let shard = &self.shards[idx];
            let mut heads = lock(&shard.heads);
            if let Some(entry) = heads.get_mut(&key)
                && self.seal(shard, &key, entry)?
            {
                sealed += 1;
            }
            self.settle(&mut heads, &key);
        }
        Ok(sealed)
    }

    /// Writes every head holding samples without a durable record of its own, flushes, then
    /// removes the log records below the truncation bound computed before that flush. Returns
    /// (snapshots written, log records removed). On failure the heads keep their marks, so
    /// nothing they need is truncated later.
    fn checkpoint(&self, between: &mut dyn FnMut()) -> Result<(u64, u64)> {
        let mut written: Vec<(usize, AgentKey, u64)> = Vec::new();
        let result = (|| {
            // A head record is atomic on its own, so each is inserted alone: a batch would take
            // sled's global write lock, and every commit would wait behind a checkpoint of a
            // large fleet.
            // The records are written under the shard's lock: a seal (which writes the sealed
            // head's empty record under the same lock) must never be overwritten by a snapshot
            // taken before it, or a restart would load samples already sealed and count them
            // twice in the rollups.
            for (idx, shard) in self.shards.iter().enumerate() {
                let mut heads = lock(&shard.heads);
                for (key, entry) in heads.iter_mut() {
                    if let Some(needs_from) = entry.needs_from.take() {
                        written.push((idx, key.clone(), needs_from));
                        let snapshot = entry.head.encode();
                        fault::race_point("snapshot-encoded");
                        self.data.insert(head_key(key), snapshot).map_err(backend)?;
                    }
                }
                drop(heads);
                between();
            }
            if written.is_empty() && self.nothing_to_truncate()? {
                // Idle: no snapshot to make durable, no record to remove, so no flush.
                return Ok(0);
            }
            fault::point("snapshots-written");
            let bound = self.truncation_bound();
            self.db.flush()?;
            fault::point("checkpoint-flushed");
            let removed = self.truncate_log(bound, between)?;
            fault::point("log-truncated");
            Ok(removed)
        })();
        match result {
            Ok(removed) => Ok((written.len() as u64, removed)),
            Err(e) => {
                // Nothing written here is known durable: the heads keep needing their records.
                for (idx, key, needs_from) in written {
                    let mut heads = lock(&self.shards[idx].heads);
                    if let Some(entry) = heads.get_mut(&key) {
                        entry.needs_from =
                            Some(entry.needs_from.map_or(needs_from, |n| n.min(needs_from)));
                    }
                }
                Err(e)
            }
        }
    }

    /// The smallest log record something still needs: held by a commit (or a failed append),
    /// or holding a sample of an open head that no durable head record has.
    fn truncation_bound(&self) -> u64 {
        let mut bound = {
            let numbers = lock(&self.numbers);
            numbers.held.first().copied().unwrap_or(numbers.next)
        };
        for shard in &self.shards {
            let heads = lock(&shard.heads);
            for entry in heads.values() {
                if let Some(needs_from) = entry.needs_from {
                    bound = bound.min(needs_from);
                }
            }
        }
        bound
    }

    /// Whether no log record lies below the current truncation bound.
    fn nothing_to_truncate(&self) -> Result<bool> {
        let bound = self.truncation_bound();
        Ok(self
            .log
            .range(..bound.to_be_bytes())
            .next()
            .transpose()
            .map_err(backend)?
            .is_none())
    }

    /// Removes the log records below `bound`, calling `between` after each batch; returns how
    /// many.
    fn truncate_log(&self, bound: u64, between: &mut dyn FnMut()) -> Result<u64> {
        let mut removed = 0;
        loop {
            // Nothing needs a record below the bound, so each is removed alone, oldest first
            // (a crash midway leaves a shorter prefix to replay, all duplicates): a batch would
            // take sled's global write lock, and every commit would wait behind the truncation.
            let keys = self
                .log
                .range(..bound.to_be_bytes())
                .keys()
                .take(STORE_BATCH)
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(backend)?;
            let last = keys.len() < STORE_BATCH;
            for key in keys {
                if let Some(value) = self.log.remove(&key).map_err(backend)? {
                    self.log_bytes
                        .fetch_sub((key.len() + value.len()) as u64, Ordering::Relaxed);
                    removed += 1;
                }
            }
            if last {
                return Ok(removed);
            }
            between();
        }
    }

    // === what the rest of the store asks ===

    /// `(last seq, time ms of that sample)` of an agent's samples, if any are stored.
    ///
    /// # Errors
    ///
    /// `Backend` on I/O, `Corrupt` for a damaged head record.
    pub(super) fn last(&self, key: &AgentKey) -> Result<Option<(u64, u64)>> {
        {
            let heads = lock(&self.shard(key).heads);
            if let Some(entry) = heads.get(key) {
                return Ok(Some((entry.head.last_seq(), entry.head.last_time_ms())));
            }
        }
        let record_key = head_key(key);
        match self.data.get(&record_key).map_err(backend)? {
            Some(value) => Head::summary(&value)
                .map(Some)
                .map_err(|e| corrupt(&record_key, e.to_string())),
            None => Ok(None),
        }
    }

    /// (open heads, bytes they hold, their budget, bytes of the log).
    pub(super) fn memory(&self) -> (u64, u64, u64, u64) {
        (
            self.n_heads.load(Ordering::Relaxed),
            self.heads_bytes.load(Ordering::Relaxed),
            self.budget,
            self.log_bytes.load(Ordering::Relaxed),
        )
    }
}

/// What `head` costs in memory, with its key and map entry.
fn entry_bytes(key: &AgentKey, head: &Head) -> u64 {
    ENTRY_OVERHEAD
        + (key.org.as_str().len() + key.agent.as_str().len()) as u64
        + head.heap_bytes() as u64
}

/// The record number a log key holds.
fn record_number(key: &[u8]) -> Result<u64> {
    <[u8; 8]>::try_from(key)
        .map(u64::from_be_bytes)
        .map_err(|_| corrupt(key, "log key is not a record number"))
}

#[cfg(test)]
mod tests;
