//! The embedded default [`Store`]: one sled database in the server's data directory.
//!
//! # Layout
//!
//! Three trees. `meta` holds `schema_version` (decimal text), written when the database is
//! created and checked at every open. `log` is the samples' write-ahead log: keys are
//! big-endian `u64` record numbers, values `wal.rs` records (each names its agents' orgs, so
//! tenancy holds there too; it is the one tree whose keys do not start with an org). `data`
//! holds every other record under a key that starts with its org id:
//!
//! | key | value |
//! |---|---|
//! | `{org}/a/{agent}` | [`AgentRecord`] |
//! | `{org}/l/{agent}` | [`LiveRecord`] |
//! | `{org}/q/{agent}` | progress: last seq, last seen millis (`encode_progress`) |
//! | `{org}/s/{agent}/{max time}{first seq}` | a sealed chunk of samples (`chunk.rs`) |
//! | `{org}/hd/{agent}` | the agent's head: snapshot of its open chunk, or what was sealed (`head.rs`) |
//! | `{org}/r5/{agent}/{bucket start}` | 5-minute [`Rollup`](crate::store::Rollup) (`rollup.rs`) |
//! | `{org}/rh/{agent}/{bucket start}` | 1-hour rollup |
//! | `{org}/x/{agent}/{millis}{counter}` | [`Transition`] |
//! | `{org}/t/{token}` | [`TokenRecord`] (its `last_used_at` is the newer of its own and the next row) |
//! | `{org}/n/{token}` | the token's last use, millis (`encode_token_use`): apart from the record, so no use can undo a revocation |
//! | `{org}/e/{token}` | [`EnrollmentTokenRecord`] |
//! | `{org}/o/info` | [`OrgRecord`] |
//! | `{org}/d/{agent}` | [`AgentTombstone`] |
//! | `{org}/u/{seq}` | [`AuditRecord`] |
//! | `{org}/c/{command}` | [`CommandRecord`](crate::command::record::CommandRecord) (postcard) |
//! | `{org}/r/{command}` | empty: the command is not finished |
//! | `{org}/i/{command}/{n}` | [`InvocationRecord`](crate::command::record::InvocationRecord) (postcard) |
//! | `{org}/v/{command}/{cursor}` | [`CommandEvent`](crate::command::record::CommandEvent) (postcard) |
//! | `{org}/k/{sha256(key)}/{command}` | creation millis of a command sent with an idempotency key |
//! | `{org}/ar/{rule}` | an alert [`Rule`](crate::alert::rule::Rule) created over RPC |
//! | `{org}/al/{alert}` | an [`Alert`](crate::alert::rule::Alert), firing or resolved (ids start with their firing time) |
//! | `{org}/E{table}/{key}` | an entry of an [`EventTable`](crate::store::EventTable): keys and values are `crate::events::keys`' (`store/sled/event.rs`) |
//!
//! Values are `serde_json` unless the table says otherwise. Command ids start with their
//! creation time in fixed-width hex, so `{org}/c/` is in creation order (`store/sled/command.rs`).
//! `n` is a big-endian `u32`, `cursor` a big-endian `u64`. `millis` (since the Unix epoch,
//! earlier times clamp to 0), times, bucket starts, seqs and counters in keys are big-endian
//! `u64`s, so byte order is time (or seq) order. A chunk is keyed by its newest sample's time,
//! so retention drops every key below a cutoff without reading it, and a range read starts at
//! its `from`. `counter` comes from sled's `generate_id`, which never repeats, even across
//! restarts: two transitions of one agent in the same millisecond keep their commit order. Ids
//! are `[a-z0-9-]` (checked at the edge), so `/` is a safe separator, and every scan prefix
//! ends with it: agent `ab` never sees the records of `abc`.
//!
//! Samples live in `series.rs` (write path, seals, checkpoints, recovery, and their
//! invariants) and `series/read.rs`.
//!
//! # Cost
//!
//! [`SledStore::commit`] is one `apply_batch` on the log (a record per 128 samples), one on
//! `data`, and one blocking `flush` (an fsync), so its cost is dominated by the flush, not by
//! the number of writes: the caller (the writer task) must batch. Scans that cover every org
//! ([`Store::load`], [`Store::purge`]) skip from one org to the next by seeking past `{org}/`,
//! and from one agent's series to the next the same way, so they cost one seek per org (and
//! per agent with history) plus the records they return or delete.

use std::collections::HashMap;
use std::ops::Bound;
use std::path::Path;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;

use super::{
    Checkpoint, Compacted, Encoded, Op, Purged, Resolution, Result, Retention, RollupBucket,
    SeriesConfig, Snapshot, Store, StoreError, StoreMemory, Write,
};
use crate::command::record::{
    CommandEvent, CommandPage, CommandQuery, CommandRecord, InvocationRecord,
};
use crate::domain::{
    AgentId, AgentRecord, AgentTombstone, AuditRecord, CommandId, EnrollmentTokenRecord,
    LiveRecord, OrgId, OrgRecord, Sample, SampleTotals, TokenRecord, Transition,
};
use crate::store::fault;
use crate::store::wal::AgentKey;

mod blobs;
mod command;
mod encode;
mod event;
mod export;
mod layout;
pub(crate) mod migrate;
mod open;
mod retention;
mod series;
#[cfg(feature = "test-support")]
pub mod test_support;
mod usage;

pub use self::export::{Record, import};
use self::layout::*;
use self::migrate::{SCHEMA, Schema, check_or_migrate};
use self::open::open_waiting_for_lock;
#[cfg(any(test, feature = "test-support"))]
pub(crate) use self::open::raw_db;
use self::series::Series;
pub use self::usage::StoreUsage;

/// Default bound of sled's page cache. sled's own default (1 GiB) is more than a server that
/// holds its registry in memory needs; reads are mostly recent samples.
pub const CACHE_CAPACITY_BYTES: u64 = 64 * 1024 * 1024;

/// sled's log segment size. With sled's default (512 KiB) the process kept ~4 KiB of memory per
/// sample written under sustained ingest (4.2 GB after 1M samples, cache size irrelevant); at
/// 128 KiB it stays near 270 MB after 2M samples at the same throughput (store_bench example).
/// Segments at or below 128 KiB behaved the same; 256 KiB already grew like the default. With
/// the samples' log and [`GC_INTERVAL_MS`], 512 KiB again took more disk (95-143 B a sample in
/// store_bench against 21-26) and no less memory.
pub const SEGMENT_SIZE_BYTES: usize = 128 * 1024;

/// How often sled's background thread runs: it writes out what is buffered (commits flush
/// themselves anyway), fsyncs, and then relocates the live pages of mostly-dead segments so
/// they can be reused, for up to half the interval. sled 0.34 does that relocation only in
/// this thread: without it a segment is reused only once every page in it has died, so a
/// segment holding one long-lived page (a chunk kept for 30 days) among rewritten ones (log
/// records, head snapshots, rollups) is kept, with its accounting in memory. store_bench
/// (4,096 agents, 200 batches) with the thread every 50 ms against none: RSS 84-160 MB against
/// 440-477 MB, 21-26 B a sample on disk against 46-53, ingest within the run-to-run noise;
/// every 200 ms or 1 s it made no difference within such a run, every 20 ms none beyond 50.
pub const GC_INTERVAL_MS: u64 = 50;

const META_TREE: &str = "meta";
const DATA_TREE: &str = "data";
const LOG_TREE: &str = "log";
const SCHEMA_VERSION_KEY: &[u8] = b"schema_version";

/// A [`Store`] backed by one sled database.
///
/// Cloning is cheap (sled handles are reference counted) and every method may be called from
/// many threads at once.
#[derive(Clone)]
pub struct SledStore {
    /// The database, for the transition counter. A flush covers every tree.
    db: sled::Db,
    /// Flushes, blob files included (`blobs.rs`).
    flusher: blobs::Flusher,
    /// Every record but the log, keyed as the module documentation describes.
    data: sled::Tree,
    /// Samples: the log and the open heads.
    series: std::sync::Arc<Series>,
    /// Serializes commits, so an agent's samples reach its head in the order their log
    /// records were written (a later record appended first would make an earlier one's
    /// samples look like duplicates). The server has one writer; this is for other callers.
    commits: std::sync::Arc<std::sync::Mutex<()>>,
    /// Held shared by everything that changes the database (commits, compactions, purges) and
    /// exclusively by an export, which so reads a state between two of them (`export.rs`).
    quiet: std::sync::Arc<std::sync::RwLock<()>>,
    /// The page cache's bound, for [`Store::memory`].
    cache_bytes: u64,
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore").finish_non_exhaustive()
    }
}

// === impl SledStore ===

impl SledStore {
    /// Opens the sled database in the directory `path`, creating it if it does not exist.
    ///
    /// A new, empty database is stamped with [`SCHEMA_VERSION`](crate::store::SCHEMA_VERSION)
    /// (and flushed) before anything else is written. An existing one of an older version that
    /// the migrations cover is backed up beside `path`, then migrated (`sled/migrate.rs`); any
    /// other version is refused without being modified.
    ///
    /// # Errors
    ///
    /// [`StoreError::SchemaNewer`] for a store written by a newer server;
    /// [`StoreError::SchemaMismatch`] if the database holds data but no schema version, or a
    /// version no migration covers (`found` is the stored text, or `none`); a migration's
    /// error.
    /// [`StoreError::Backend`] if sled cannot open the directory (I/O, or another process holds
    /// its lock).
    pub fn open(path: &Path) -> Result<SledStore> {
        Self::open_with(path, CACHE_CAPACITY_BYTES, &SeriesConfig::default())
    }

    /// [`SledStore::open`] with a page cache of `cache_capacity_bytes` and samples kept as
    /// `series` says. Opening recovers the samples: the open heads are loaded and the log is
    /// replayed (`series.rs`).
    ///
    /// # Errors
    ///
    /// As [`SledStore::open`]; `Corrupt` for a damaged head or log record.
    pub fn open_with(
        path: &Path,
        cache_capacity_bytes: u64,
        series: &SeriesConfig,
    ) -> Result<SledStore> {
        Self::open_schema(path, cache_capacity_bytes, series, &SCHEMA)
    }

    /// [`SledStore::open_with`] for a build whose schema is `schema`: the migration tests
    /// open stores as a later build would.
    pub(crate) fn open_schema(
        path: &Path,
        cache_capacity_bytes: u64,
        series: &SeriesConfig,
        schema: &Schema,
    ) -> Result<SledStore> {
        let config = sled::Config::new()
            .path(path)
            .cache_capacity(cache_capacity_bytes)
            .segment_size(SEGMENT_SIZE_BYTES)
            .flush_every_ms(Some(GC_INTERVAL_MS));
        let db = open_waiting_for_lock(&config).map_err(backend)?;
        check_or_migrate(&db, path, schema)?;
        let data = db.open_tree(DATA_TREE).map_err(backend)?;
        let log = db.open_tree(LOG_TREE).map_err(backend)?;
        let orgs = orgs(&data)?;
        let flusher = blobs::Flusher::new(db.clone(), path)?;
        let series = Series::open(flusher.clone(), data.clone(), log, series, &orgs)?;
        Ok(SledStore {
            db,
            flusher,
            data,
            series: std::sync::Arc::new(series),
            commits: std::sync::Arc::default(),
            quiet: std::sync::Arc::default(),
            cache_bytes: cache_capacity_bytes,
        })
    }

    fn orgs(&self) -> Result<Vec<String>> {
        orgs(&self.data)
    }

    /// The `quiet` lock, shared: taken by every operation that changes the database.
    fn quiet_shared(&self) -> std::sync::RwLockReadGuard<'_, ()> {
        self.quiet
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Every org that owns at least one key of `data`, in key order, found with one seek per org.
fn orgs(data: &sled::Tree) -> Result<Vec<String>> {
    {
        let mut orgs = Vec::new();
        let mut from = Bound::Unbounded;
        while let Some(entry) = data.range::<Vec<u8>, _>((from, Bound::Unbounded)).next() {
            let (key, _) = entry.map_err(backend)?;
            let org_len = key
                .iter()
                .position(|&b| b == b'/')
                .ok_or_else(|| corrupt(&key, "key has no org prefix"))?;
            let org = std::str::from_utf8(&key[..org_len])
                .map_err(|e| corrupt(&key, format!("org id is not utf-8: {e}")))?;
            orgs.push(org.to_owned());
            match successor(&key[..=org_len]) {
                Some(next) => from = Bound::Included(next),
                None => break,
            }
        }
        Ok(orgs)
    }
}

impl SledStore {
    /// Decodes every record of one kind in one org, with the id its key names.
    fn scan_section<T: DeserializeOwned>(
        &self,
        org: &str,
        kind: &[u8],
    ) -> Result<Vec<(String, T)>> {
        let prefix = section(org, kind);
        self.data
            .scan_prefix(&prefix)
            .map(|entry| {
                let (key, value) = entry.map_err(backend)?;
                let id = key_id(&prefix, &key)?;
                Ok((id.to_owned(), decode(&key, &value)?))
            })
            .collect()
    }
}

impl Store for SledStore {
    fn load(&self) -> Result<Snapshot> {
        let mut snapshot = Snapshot::default();
        for org in self.orgs()? {
            let mut lives: HashMap<String, LiveRecord> =
                self.scan_section(&org, LIVE)?.into_iter().collect();
            let prefix = section(&org, PROGRESS);
            for entry in self.data.scan_prefix(&prefix) {
                let (key, value) = entry.map_err(backend)?;
                let id = key_id(&prefix, &key)?;
                let (last_seq, last_seen) = decode_progress(&key, &value)?;
                if let Some(live) = lives.get_mut(id) {
                    live.last_seq = live.last_seq.max(last_seq);
                    live.last_seen = live.last_seen.max(Some(last_seen));
                }
            }
            for (id, agent) in self.scan_section::<AgentRecord>(&org, AGENT)? {
                check_owner(&org, &id, &agent.org, agent.id.as_str(), AGENT)?;
                let mut live = lives.remove(&id);
                // Progress records are written at intervals; the newest sample covers the rest.
                let key = AgentKey {
                    org: agent.org.clone(),
                    agent: agent.id.clone(),
                };
                if let (Some(live), Some((seq, millis))) = (live.as_mut(), self.series.last(&key)?)
                {
                    live.last_seq = live.last_seq.max(seq);
                    live.last_seen = live
                        .last_seen
                        .max(Some(UNIX_EPOCH + std::time::Duration::from_millis(millis)));
                }
                snapshot.agents.push((agent, live));
            }
            if !lives.is_empty() {
                // Harmless (nothing reads them without their agent) but worth knowing about.
                tracing::warn!(
                    org,
                    n_orphans = lives.len(),
                    "live records without an agent"
                );
            }
            let mut uses = HashMap::new();
            let prefix = section(&org, TOKEN_USE);
            for entry in self.data.scan_prefix(&prefix) {
                let (key, value) = entry.map_err(backend)?;
                let id = key_id(&prefix, &key)?;
                uses.insert(id.to_owned(), decode_token_use(&key, &value)?);
            }
            for (id, mut token) in self.scan_section::<TokenRecord>(&org, TOKEN)? {
                check_owner(&org, &id, &token.org, token.id.as_str(), TOKEN)?;
                if let Some(at) = uses.remove(&id) {
                    token.last_used_at = token.last_used_at.max(Some(at));
                }
                snapshot.tokens.push(token);
            }
            for (id, token) in self.scan_section::<EnrollmentTokenRecord>(&org, ENROLLMENT_TOKEN)? {
                check_owner(&org, &id, &token.org, token.id.as_str(), ENROLLMENT_TOKEN)?;
                snapshot.enrollment_tokens.push(token);
            }
            for (id, tombstone) in self.scan_section::<AgentTombstone>(&org, TOMBSTONE)? {
                check_owner(
                    &org,
                    &id,
                    &tombstone.org,
                    tombstone.agent.as_str(),
                    TOMBSTONE,
                )?;
                snapshot.tombstones.push(tombstone);
            }
            for (_, record) in self.scan_section::<OrgRecord>(&org, ORG)? {
                check_owner(&org, ORG_RECORD_ID, &record.id, ORG_RECORD_ID, ORG)?;
                snapshot.orgs.push(record);
            }
            for (id, rule) in self.scan_section::<crate::alert::rule::Rule>(&org, ALERT_RULE)? {
                check_owner(&org, &id, &rule.org, &rule.name, ALERT_RULE)?;
                snapshot.alert_rules.push(rule);
            }
            for (id, alert) in self.scan_section::<crate::alert::rule::Alert>(&org, ALERT)? {
                check_owner(&org, &id, &alert.org, &alert.id, ALERT)?;
                snapshot.alerts.push(alert);
            }
            let audit = section(&org, AUDIT);
            if let Some(entry) = self.data.scan_prefix(&audit).next_back() {
                let (key, value) = entry.map_err(backend)?;
                let record: AuditRecord = decode(&key, &value)?;
                snapshot.audit_heads.push(record);
            }
        }
        Ok(snapshot)
    }

    /// See `sled/encode.rs`.
    fn encode(&self, write: &Write) -> Result<Encoded> {
        self.encode_write(write)
    }

    /// Logs the samples (one log `apply_batch`), applies every other write in one `data`
    /// batch, then flushes (blocking, fsync) before returning; only then are the samples added
    /// to their heads. The flush dominates the cost, so callers batch many writes per commit.
    ///
    /// Memory: sled 0.34 keeps some memory for every key an `apply_batch` replaces or removes
    /// once a batch holds more than about 500 such writes (about 80 bytes a write at 1,024 and
    /// 1 KiB at 4,096, never given back; 256 or fewer kept nothing measurable). Samples reach
    /// sled as log records of 128 (a few per batch), and the store's own batches (seals,
    /// snapshots by shard, truncation, retention) stay at 256 writes or fewer; a commit of
    /// thousands of rewritten records (a fleet changing status at once) still pays it once.
    fn commit(&self, writes: Vec<Encoded>) -> Result<()> {
        if writes.is_empty() {
            return Ok(());
        }
        let _quiet = self.quiet_shared();
        let _serial = self
            .commits
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut batch = sled::Batch::default();
        let mut n_data = 0;
        let mut samples = Vec::new();
        for op in writes.into_iter().flat_map(|write| write.ops) {
            match op {
                Op::Put(key, value) => batch.insert(key, value),
                Op::Remove(key) => batch.remove(key),
                Op::Sample(logged) => {
                    samples.push(*logged);
                    continue;
                }
            }
            n_data += 1;
        }
        // The log first: a crash in between keeps the samples without the rest, never the
        // reverse (a progress record ahead of its samples would claim them durable).
        let logged = match samples.is_empty() {
            true => None,
            false => Some(self.series.log(&samples)?),
        };
        if n_data > 0 {
            self.data.apply_batch(batch).map_err(backend)?;
        }
        self.flusher.flush()?;
        if let Some(logged) = logged {
            fault::point("log-flushed");
            self.series.append(&samples, logged);
        }
        Ok(())
    }

    /// See `sled/export.rs`.
    fn export(&self, visit: &mut crate::store::Visit<'_>) -> Result<u64> {
        self.export_records(visit)
    }

    fn samples(
        &self,
        org: &OrgId,
        agent: &AgentId,
        from: SystemTime,
        to: SystemTime,
        limit: usize,
    ) -> Result<Vec<Sample>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let key = agent_key(org, agent);
        self.series
            .samples(&key, from, to, |samples| samples.next().transpose(), limit)
            .take(limit)
            .collect()
    }

    fn sample_totals<'a>(
        &'a self,
        org: &OrgId,
        agent: &AgentId,
        from: SystemTime,
        to: SystemTime,
    ) -> Box<dyn Iterator<Item = Result<SampleTotals>> + 'a> {
        self.series.samples(
            &agent_key(org, agent),
            from,
            to,
            |samples| samples.next_totals(),
            usize::MAX,
        )
    }

    fn rollups<'a>(
        &'a self,
        org: &OrgId,
        agent: &AgentId,
        resolution: Resolution,
        from: SystemTime,
        to: SystemTime,
    ) -> Box<dyn Iterator<Item = Result<RollupBucket>> + 'a> {
        self.series
            .rollups(&agent_key(org, agent), resolution, from, to)
    }

    fn transitions(&self, org: &OrgId, agent: &AgentId, limit: usize) -> Result<Vec<Transition>> {
        self.data
            .scan_prefix(series_prefix(org, TRANSITION, agent))
            .rev()
            .take(limit)
            .map(decode_entry)
            .collect()
    }

    fn audit_records(&self, org: &OrgId, after: u64, limit: usize) -> Result<Vec<AuditRecord>> {
        let section = section(org.as_str(), AUDIT);
        let mut from = section.clone();
        from.extend_from_slice(&after.saturating_add(1).to_be_bytes());
        self.data
            .range((Bound::Included(from), prefix_end(&section)))
            .take(limit)
            .map(decode_entry)
            .collect()
    }

    /// See `sled/retention.rs`.
    fn purge(&self, retention: &Retention) -> Result<Purged> {
        let _quiet = self.quiet_shared();
        self.purge_history(retention)
    }

    fn compact(&self, now: SystemTime, checkpoint: Checkpoint<'_>) -> Result<Compacted> {
        let mut quiet = Some(self.quiet_shared());
        let mut slice_began = Instant::now();
        // Between two slices the store is as a crash there would leave it (every write of a
        // checkpoint is atomic on its own), so a spread pass lets an export in while it rests.
        let mut between = || {
            if let Checkpoint::Spread(spread) = checkpoint {
                let took = slice_began.elapsed();
                drop(quiet.take());
                spread.rest_after(took);
                quiet = Some(self.quiet_shared());
                slice_began = Instant::now();
            }
        };
        self.series.compact(now, checkpoint.wanted(), &mut between)
    }

    fn memory(&self) -> StoreMemory {
        let (heads, heads_bytes, heads_budget_bytes, log_bytes) = self.series.memory();
        StoreMemory {
            heads,
            heads_bytes,
            heads_budget_bytes,
            cache_bytes: self.cache_bytes,
            log_bytes,
        }
    }

    /// How many of sled's I/O threads are alive: sled starts [`SLED_IO_THREADS`] that never
    /// end, except when a task on one of them panics, which leaves that task's log buffer
    /// unwritten and every later flush waiting for it.
    fn stall_detail(&self) -> String {
        match sled_io_threads() {
            Some(alive) => format!(
                "sled I/O threads alive: {alive} (it starts {SLED_IO_THREADS}; fewer means a \
                 write task panicked and its log buffer will never be written)"
            ),
            None => String::new(),
        }
    }

    fn active_commands(&self) -> Result<Vec<CommandRecord>> {
        SledStore::active_commands(self)
    }

    fn command(&self, org: &OrgId, id: &CommandId) -> Result<Option<CommandRecord>> {
        SledStore::command(self, org, id)
    }

    fn commands(&self, org: &OrgId, query: &CommandQuery, max_scan: usize) -> Result<CommandPage> {
        SledStore::commands(self, org, query, max_scan)
    }

    fn invocations(
        &self,
        org: &OrgId,
        command: &CommandId,
        after: Option<u32>,
        limit: usize,
    ) -> Result<Vec<InvocationRecord>> {
        SledStore::invocations(self, org, command, after, limit)
    }

    fn command_events(
        &self,
        org: &OrgId,
        command: &CommandId,
        after: u64,
        until: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<(u64, CommandEvent)>> {
        SledStore::command_events(self, org, command, after, until, limit, max_bytes)
    }

    fn idempotent_command(
        &self,
        org: &OrgId,
        key: &str,
        since: SystemTime,
    ) -> Result<Option<CommandId>> {
        SledStore::idempotent_command(self, org, key, since)
    }

    fn expired_commands(&self, cutoff: SystemTime, limit: usize) -> Result<Vec<CommandRecord>> {
        SledStore::expired_commands(self, cutoff, limit)
    }

    fn event_entry(
        &self,
        org: &OrgId,
        table: crate::store::EventTable,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>> {
        SledStore::event_entry(self, org, table, key)
    }

    fn event_entries<'a>(
        &'a self,
        org: &OrgId,
        table: crate::store::EventTable,
        from: &[u8],
        to: Option<&[u8]>,
        reverse: bool,
    ) -> crate::store::EventEntries<'a> {
        SledStore::event_entries(self, org, table, from, to, reverse)
    }
}

/// The I/O threads sled 0.34 starts (`sled-io-0` to `sled-io-6`), which never end unless a
/// task panics on them; it may add temporary ones under load.
pub const SLED_IO_THREADS: usize = 7;

/// How many threads named `sled-io-*` this process has (Linux `/proc`; `None` elsewhere).
fn sled_io_threads() -> Option<usize> {
    let tasks = std::fs::read_dir("/proc/self/task").ok()?;
    Some(
        tasks
            .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
            .filter(|name| name.starts_with("sled-io-"))
            .count(),
    )
}

fn agent_key(org: &OrgId, agent: &AgentId) -> AgentKey {
    AgentKey {
        org: org.clone(),
        agent: agent.clone(),
    }
}

/// Decodes one JSON record as a scan yields it.
fn decode_entry<T: DeserializeOwned>(entry: sled::Result<(sled::IVec, sled::IVec)>) -> Result<T> {
    let (key, value) = entry.map_err(backend)?;
    decode(&key, &value)
}
