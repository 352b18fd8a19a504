//! The embedded default [`Store`]: one sled database in the server's data directory.
//!
//! # Layout
//!
//! Two trees. `meta` holds `schema_version` (decimal text), written when the database is created
//! and checked at every open. `data` holds every record under a key that starts with its org id:
//!
//! | key | value |
//! |---|---|
//! | `{org}/a/{agent}` | [`AgentRecord`] |
//! | `{org}/l/{agent}` | [`LiveRecord`] |
//! | `{org}/q/{agent}` | progress: last seq, last seen millis (`encode_progress`) |
//! | `{org}/m/{agent}/{millis}{seq}` | [`Sample`] (postcard, see `encode_sample`) |
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
//!
//! Values are `serde_json` unless the table says otherwise. Command ids start with their
//! creation time in fixed-width hex, so `{org}/c/` is in creation order (`store/sled/command.rs`).
//! `n` is a big-endian `u32`, `cursor` a big-endian `u64`. `millis` (since the Unix epoch,
//! earlier times clamp to 0), `seq` and `counter` are big-endian `u64`s, so byte order is time
//! (or seq) order. `counter` comes from sled's `generate_id`, which never repeats, even across
//! restarts: two transitions of one agent in the same millisecond keep their commit order. Ids
//! are `[a-z0-9-]` (checked at the edge), so `/` is a safe separator, and every scan prefix ends
//! with it: agent `ab` never sees the records of `abc`.
//!
//! # Cost
//!
//! [`SledStore::commit`] is one `apply_batch` plus one blocking `flush` (an fsync), so its cost is
//! dominated by the flush, not by the number of writes: the caller (the writer task) must batch.
//! Scans that cover every org ([`Store::load`], [`Store::purge_before`]) skip from one org to the
//! next by seeking past `{org}/`, and from one agent's series to the next the same way, so they
//! cost one seek per org (and per agent with samples) plus the records they return or delete,
//! never a pass over every stored sample.

use std::collections::HashMap;
use std::ops::Bound;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;

use super::{Encoded, Op, Result, SCHEMA_VERSION, Snapshot, Store, StoreError, Write};
use crate::command::record::{
    CommandEvent, CommandPage, CommandQuery, CommandRecord, InvocationRecord,
};
use crate::domain::{
    AgentId, AgentRecord, AgentTombstone, AuditRecord, CommandId, EnrollmentTokenRecord,
    LiveRecord, OrgId, OrgRecord, Sample, SampleTotals, TokenRecord, Transition,
};

mod command;
mod layout;
#[cfg(feature = "test-support")]
pub mod test_support;

use self::layout::*;

/// Default bound of sled's page cache. sled's own default (1 GiB) is more than a server that
/// holds its registry in memory needs; reads are mostly recent samples.
pub const CACHE_CAPACITY_BYTES: u64 = 64 * 1024 * 1024;

/// sled's log segment size. With sled's default (512 KiB) the process kept ~4 KiB of memory per
/// sample written under sustained ingest (4.2 GB after 1M samples, cache size irrelevant); at
/// 128 KiB it stays near 270 MB after 2M samples at the same throughput (store_bench example).
/// Segments at or below 128 KiB behaved the same; 256 KiB already grew like the default.
pub const SEGMENT_SIZE_BYTES: usize = 128 * 1024;

/// How many removals [`Store::purge_before`] applies per batch: bounds its memory and the time it
/// holds up concurrent writers, whatever the amount of expired data.
const PURGE_BATCH: usize = 10_000;

/// How long [`SledStore::open`] waits for a just-dropped store's lock to be released.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

const META_TREE: &str = "meta";
const DATA_TREE: &str = "data";
const SCHEMA_VERSION_KEY: &[u8] = b"schema_version";

/// A [`Store`] backed by one sled database.
///
/// Cloning is cheap (sled handles are reference counted) and every method may be called from
/// many threads at once.
#[derive(Clone, Debug)]
pub struct SledStore {
    /// The database, for flushes and the transition counter. A flush covers every tree.
    db: sled::Db,
    /// Every record, keyed as the module documentation describes.
    data: sled::Tree,
}

// === impl SledStore ===

/// Opens the sled database under `path` directly, with the settings [`SledStore`] uses (sled
/// refuses to reopen a database with another segment size). For the unit tests here and
/// [`test_support`], which examine or tamper with stored bytes; the server itself only goes
/// through [`SledStore`].
///
/// # Errors
///
/// sled's, e.g. when the directory is locked by an open store.
#[cfg(any(test, feature = "test-support"))]
pub(crate) fn raw_db(path: impl AsRef<Path>) -> sled::Result<sled::Db> {
    open_waiting_for_lock(
        &sled::Config::new()
            .path(path.as_ref())
            .segment_size(SEGMENT_SIZE_BYTES)
            .flush_every_ms(None),
    )
}

/// Opens `config`, waiting up to [`LOCK_WAIT`] for the directory lock: sled's worker threads
/// release it shortly after a database is dropped, not at once, so a restart in the same
/// process waits for that instead of failing.
fn open_waiting_for_lock(config: &sled::Config) -> sled::Result<sled::Db> {
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match config.open() {
            Err(e) if is_lock_held(&e) && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            result => return result,
        }
    }
}

/// Whether `err`, from opening a database, may mean that another handle holds its lock. sled
/// 0.34 reports a failed `flock` as `Error::Io` of kind `Other`, with no source to inspect
/// (`Config::try_lock`); opening files fails with the OS's own kinds. Another `Other` error
/// during open is retried until [`LOCK_WAIT`] like a lock, then reported unchanged.
fn is_lock_held(err: &sled::Error) -> bool {
    matches!(err, sled::Error::Io(e) if e.kind() == std::io::ErrorKind::Other)
}

impl SledStore {
    /// Opens the sled database in the directory `path`, creating it if it does not exist.
    ///
    /// A new, empty database is stamped with [`SCHEMA_VERSION`] (and flushed) before anything
    /// else is written. An existing one must carry exactly that version; otherwise it is refused
    /// without being modified.
    ///
    /// # Errors
    ///
    /// [`StoreError::SchemaMismatch`] if the database holds data but no schema version, or a
    /// version other than [`SCHEMA_VERSION`] (`found` is the stored text, or `none`).
    /// [`StoreError::Backend`] if sled cannot open the directory (I/O, or another process holds
    /// its lock).
    pub fn open(path: &Path) -> Result<SledStore> {
        Self::open_with_cache(path, CACHE_CAPACITY_BYTES)
    }

    /// [`SledStore::open`] with a page cache of `cache_capacity_bytes`.
    ///
    /// # Errors
    ///
    /// As [`SledStore::open`].
    pub fn open_with_cache(path: &Path, cache_capacity_bytes: u64) -> Result<SledStore> {
        let config = sled::Config::new()
            .path(path)
            .cache_capacity(cache_capacity_bytes)
            .segment_size(SEGMENT_SIZE_BYTES)
            // Every commit flushes itself; the background flusher would only add work.
            .flush_every_ms(None);
        let db = open_waiting_for_lock(&config).map_err(backend)?;
        check_or_stamp_schema(&db)?;
        let data = db.open_tree(DATA_TREE).map_err(backend)?;
        Ok(SledStore { db, data })
    }

    /// Every org that owns at least one key, in key order, found with one seek per org.
    fn orgs(&self) -> Result<Vec<String>> {
        let mut orgs = Vec::new();
        let mut from = Bound::Unbounded;
        while let Some(entry) = self
            .data
            .range::<Vec<u8>, _>((from, Bound::Unbounded))
            .next()
        {
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

    /// Decodes every record of one kind in one org, with the id its key names.
    fn scan_section<T: DeserializeOwned>(&self, org: &str, kind: u8) -> Result<Vec<(String, T)>> {
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

    /// Deletes the records older than `cutoff` in every series (one per agent) of one kind in
    /// one org; returns how many went.
    fn purge_section(
        &self,
        org: &str,
        kind: u8,
        cutoff: SystemTime,
        time_of: fn(&[u8], &[u8]) -> Result<SystemTime>,
    ) -> Result<u64> {
        let section = section(org, kind);
        let section_end = prefix_end(&section);
        let mut removed = 0;
        let mut from = Bound::Included(section.clone());
        while let Some(entry) = self.data.range((from, section_end.clone())).next() {
            let (key, _) = entry.map_err(backend)?;
            let agent_len = key[section.len()..]
                .iter()
                .position(|&b| b == b'/')
                .ok_or_else(|| corrupt(&key, "series key has no agent id"))?;
            let series = &key[..section.len() + agent_len + 1];
            removed += self.purge_series(series, cutoff, time_of)?;
            match successor(series) {
                Some(next) => from = Bound::Included(next),
                None => break,
            }
        }
        Ok(removed)
    }

    /// Deletes the records of one series (keys under `series`) older than `cutoff`, in batches of
    /// [`PURGE_BATCH`]; returns how many went.
    ///
    /// Keys in a millisecond before the cutoff's go without being read; those in the cutoff's
    /// own millisecond are decoded, so the boundary is exact (`time < cutoff`).
    fn purge_series(
        &self,
        series: &[u8],
        cutoff: SystemTime,
        time_of: fn(&[u8], &[u8]) -> Result<SystemTime>,
    ) -> Result<u64> {
        let cutoff_ms = millis(cutoff);
        let end = after_millis(series, cutoff_ms);
        let mut removed = 0;
        let mut from = Bound::Included(series.to_vec());
        loop {
            let mut batch = sled::Batch::default();
            let mut n_batch = 0;
            let mut last_key = None;
            for entry in self.data.range((from.clone(), end.clone())) {
                let (key, value) = entry.map_err(backend)?;
                let key_ms = series_millis(series, &key)?;
                if key_ms < cutoff_ms || time_of(&key, &value)? < cutoff {
                    batch.remove(key.clone());
                    n_batch += 1;
                }
                last_key = Some(key);
                if n_batch == PURGE_BATCH {
                    break;
                }
            }
            if n_batch > 0 {
                self.data.apply_batch(batch).map_err(backend)?;
                removed += n_batch as u64;
            }
            match last_key {
                Some(key) if n_batch == PURGE_BATCH => from = Bound::Excluded(key.to_vec()),
                _ => return Ok(removed),
            }
        }
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
                let series = series_prefix(&agent.org, SAMPLE, &agent.id);
                if let (Some(live), Some(entry)) =
                    (live.as_mut(), self.data.scan_prefix(&series).next_back())
                {
                    let (key, _) = entry.map_err(backend)?;
                    let (millis, seq) = series_suffix(&series, &key)?;
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
            let audit = section(&org, AUDIT);
            if let Some(entry) = self.data.scan_prefix(&audit).next_back() {
                let (key, value) = entry.map_err(backend)?;
                let record: AuditRecord = decode(&key, &value)?;
                snapshot.audit_heads.push(record);
            }
        }
        Ok(snapshot)
    }

    /// Builds the key and serializes the value of one write. A transition takes its key's
    /// counter here, so transitions keep the order in which they were encoded.
    fn encode(&self, write: &Write) -> Result<Encoded> {
        let put = |key: Vec<u8>, value: Vec<u8>| Encoded {
            ops: vec![Op::Put(key, value)],
        };
        Ok(match write {
            Write::PutAgent(agent) => put(
                record_key(agent.org.as_str(), AGENT, agent.id.as_str()),
                encode(agent, "agent record")?,
            ),
            Write::PutLive { org, agent, live } => put(
                record_key(org.as_str(), LIVE, agent.as_str()),
                encode(live, "live record")?,
            ),
            Write::PutProgress {
                org,
                agent,
                last_seq,
                last_seen,
            } => put(
                record_key(org.as_str(), PROGRESS, agent.as_str()),
                encode_progress(*last_seq, *last_seen),
            ),
            Write::PutSample { org, agent, sample } => put(
                series_key(
                    &series_prefix(org, SAMPLE, agent),
                    millis(sample.time.get()),
                    sample.seq,
                ),
                encode_sample(sample)?,
            ),
            Write::PutTransition(transition) => {
                let value = encode(transition, "transition")?;
                let counter = self.db.generate_id().map_err(backend)?;
                let series = series_prefix(&transition.org, TRANSITION, &transition.agent);
                put(series_key(&series, millis(transition.time), counter), value)
            }
            Write::PutToken(token) => put(
                record_key(token.org.as_str(), TOKEN, token.id.as_str()),
                encode(token, "token")?,
            ),
            Write::PutTokenUse { org, id, at } => put(
                record_key(org.as_str(), TOKEN_USE, id.as_str()),
                encode_token_use(*at),
            ),
            Write::DeleteToken { org, id } => Encoded {
                ops: vec![
                    Op::Remove(record_key(org.as_str(), TOKEN, id.as_str())),
                    Op::Remove(record_key(org.as_str(), TOKEN_USE, id.as_str())),
                ],
            },
            Write::PutEnrollmentToken(token) => put(
                record_key(token.org.as_str(), ENROLLMENT_TOKEN, token.id.as_str()),
                encode(token, "enrollment token")?,
            ),
            Write::PutOrg(org) => put(
                record_key(org.id.as_str(), ORG, ORG_RECORD_ID),
                encode(org, "org")?,
            ),
            Write::DeleteAgent(tombstone) => {
                let org = tombstone.org.as_str();
                let agent = tombstone.agent.as_str();
                let value = encode(tombstone, "tombstone")?;
                Encoded {
                    ops: vec![
                        Op::Remove(record_key(org, AGENT, agent)),
                        Op::Remove(record_key(org, LIVE, agent)),
                        Op::Remove(record_key(org, PROGRESS, agent)),
                        Op::Put(record_key(org, TOMBSTONE, agent), value),
                    ],
                }
            }
            Write::PutAudit(record) => put(
                audit_key(record.entry.org.as_str(), record.seq),
                encode(record, "audit record")?,
            ),
            Write::PutCommand(_)
            | Write::PutInvocation { .. }
            | Write::PutCommandEvent { .. }
            | Write::DeleteCommandEvent { .. }
            | Write::PutIdempotencyKey { .. }
            | Write::DeleteCommand { .. } => return command::encode(write),
        })
    }

    /// Applies every write in one sled batch, then flushes (blocking, fsync) before returning.
    /// The flush dominates the cost, so callers batch many writes per commit.
    fn commit(&self, writes: Vec<Encoded>) -> Result<()> {
        if writes.is_empty() {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        for op in writes.into_iter().flat_map(|write| write.ops) {
            match op {
                Op::Put(key, value) => batch.insert(key, value),
                Op::Remove(key) => batch.remove(key),
            }
        }
        self.data.apply_batch(batch).map_err(backend)?;
        self.db.flush().map_err(backend)?;
        Ok(())
    }

    fn samples(
        &self,
        org: &OrgId,
        agent: &AgentId,
        from: SystemTime,
        to: SystemTime,
        limit: usize,
    ) -> Result<Vec<Sample>> {
        if limit == 0 || from >= to {
            return Ok(Vec::new());
        }
        let series = series_prefix(org, SAMPLE, agent);
        let start = Bound::Included(series_key(&series, millis(from), 0));
        // Keys carry whole milliseconds: scan the millisecond of `to` too and filter exactly.
        let end = after_millis(&series, millis(to));
        let mut samples = Vec::new();
        for entry in self.data.range((start, end)) {
            let (key, value) = entry.map_err(backend)?;
            let sample = decode_sample(&key, &value)?;
            if from <= sample.time.get() && sample.time.get() < to {
                samples.push(sample);
                if samples.len() == limit {
                    break;
                }
            }
        }
        Ok(samples)
    }

    fn sample_totals<'a>(
        &'a self,
        org: &OrgId,
        agent: &AgentId,
        from: SystemTime,
        to: SystemTime,
    ) -> Box<dyn Iterator<Item = Result<SampleTotals>> + 'a> {
        if from >= to {
            return Box::new(std::iter::empty());
        }
        let series = series_prefix(org, SAMPLE, agent);
        let start = Bound::Included(series_key(&series, millis(from), 0));
        let end = after_millis(&series, millis(to));
        Box::new(self.data.range((start, end)).filter_map(move |entry| {
            let totals = entry
                .map_err(backend)
                .and_then(|(key, value)| decode_sample_totals(&key, &value));
            match totals {
                Ok(t) if !(from <= t.time.get() && t.time.get() < to) => None,
                other => Some(other),
            }
        }))
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

    /// Finds series by skipping from org to org and, within an org's sample and transition
    /// sections, from agent to agent (one seek each), so the work grows with the number of
    /// deleted records plus orgs and agents, not with the samples that stay. Series are found
    /// from their keys rather than from agent records, so the samples of an agent whose record is
    /// gone are purged too. Removals go in batches of `PURGE_BATCH`, flushed once at the end.
    fn purge_before(&self, cutoff: SystemTime) -> Result<u64> {
        let mut removed = 0;
        for org in self.orgs()? {
            removed += self.purge_section(&org, SAMPLE, cutoff, |key, value| {
                decode_sample(key, value).map(|sample| sample.time.get())
            })?;
            removed += self.purge_section(&org, TRANSITION, cutoff, |key, value| {
                decode::<Transition>(key, value).map(|transition| transition.time)
            })?;
        }
        if removed > 0 {
            self.db.flush().map_err(backend)?;
        }
        Ok(removed)
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
}

/// Decodes one JSON record as a scan yields it.
fn decode_entry<T: DeserializeOwned>(entry: sled::Result<(sled::IVec, sled::IVec)>) -> Result<T> {
    let (key, value) = entry.map_err(backend)?;
    decode(&key, &value)
}

// === schema ===

/// Checks the schema version of `db`, or stamps it if `db` is brand new. Never writes to a
/// database it refuses (not even by creating a tree).
fn check_or_stamp_schema(db: &sled::Db) -> Result<()> {
    let names = db.tree_names();
    if names.iter().any(|name| name == META_TREE.as_bytes()) {
        let meta = db.open_tree(META_TREE).map_err(backend)?;
        if let Some(raw) = meta.get(SCHEMA_VERSION_KEY).map_err(backend)? {
            let found = String::from_utf8_lossy(&raw);
            return match found.parse::<u32>() {
                Ok(version) if version == SCHEMA_VERSION => Ok(()),
                _ => Err(schema_mismatch(found.into_owned())),
            };
        }
    }
    // No version: only a database without any data may be stamped as ours.
    for name in &names {
        if !db.open_tree(name).map_err(backend)?.is_empty() {
            return Err(schema_mismatch("none".to_owned()));
        }
    }
    let meta = db.open_tree(META_TREE).map_err(backend)?;
    meta.insert(SCHEMA_VERSION_KEY, SCHEMA_VERSION.to_string().as_bytes())
        .map_err(backend)?;
    db.flush().map_err(backend)?;
    Ok(())
}

fn schema_mismatch(found: String) -> StoreError {
    StoreError::SchemaMismatch {
        found,
        expected: SCHEMA_VERSION,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_lock_is_recognised_and_other_failures_are_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let _held = SledStore::open(dir.path()).expect("open");
        let config = sled::Config::new()
            .path(dir.path())
            .segment_size(SEGMENT_SIZE_BYTES);
        let err = config.open().expect_err("the directory is locked");
        assert!(is_lock_held(&err), "{err:?}");

        let file = dir.path().join("not-a-directory");
        std::fs::write(&file, b"x").expect("write");
        let err = sled::Config::new()
            .path(file.join("db"))
            .open()
            .expect_err("a path under a file");
        assert!(!is_lock_held(&err), "{err:?}");
    }
}
