//! Persistence: the one narrow interface every durable write and read goes through.
//!
//! Handlers never touch a backend directly: they update the in-memory registry and hand writes
//! to the writer task, which commits them through [`Store::commit`]. A write is encoded
//! ([`Store::encode`]) on its own, when it is queued, so a write that cannot be stored fails
//! alone, to its own caller; a commit applies writes that are already encoded, and fails only
//! as a whole (disk, lock), never because of one write's content. `store/sled.rs` is the
//! embedded default and, with its test-support submodule, the only code that imports `sled`; a
//! distributed backend (etcd, for several servers) implements the same trait and runs the same
//! conformance suite (`store/tests.rs`).
//!
//! Every key a backend writes for an object starts with the object's org id, so tenancy lives in
//! the data model itself. Methods are blocking; async callers use `spawn_blocking` or the writer
//! task.
//!
//! # Samples: a time-series engine behind the same trait
//!
//! Samples are the bulk of what is stored and of the ingest path's work, so the contract for
//! them is that of a time-series store (after Prometheus' head block and WAL, and Facebook's
//! Gorilla): a commit makes a batch's samples durable in one write (the embedded backend logs
//! them in one write-ahead record per batch); each agent's newest samples stay in an open,
//! compressed head chunk (`head.rs`, `chunk.rs`) until it is sealed into history together with
//! its rollups (`rollup.rs`: 5-minute and 1-hour min/max/sum/count, kept longer than samples);
//! [`Store::compact`] seals what is due and bounds the log; [`Store::purge`] drops whole
//! chunks and whole blocks of rollup buckets past their retention. The rules every backend keeps:
//!
//! - A sample of an agent whose seq is at or below the highest seq stored for that agent is a
//!   duplicate and is dropped, across restarts (the writer deduplicates first; this is the
//!   store's own guarantee).
//! - Every stored sample is counted in the rollups exactly once: [`Store::rollups`] gives the
//!   same totals whether the samples are sealed or still open.
//! - Samples are stored in their stored form (`chunk.rs`, "Stored precision": whole
//!   milliseconds, gauges in hundredths), and read back in `(time, seq)` order.
//! - The memory a backend holds for samples is bounded by its configuration
//!   ([`SeriesConfig`]), whatever the history; [`Store::memory`] reports it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use crate::alert::rule::{Alert, Rule};
use crate::command::record::{
    CommandEvent, CommandPage, CommandQuery, CommandRecord, InvocationRecord,
};
use crate::domain::{
    AgentId, AgentRecord, AgentTombstone, AuditRecord, CommandId, EnrollmentTokenRecord,
    LiveRecord, OrgId, OrgRecord, Sample, SampleTotals, Time, TokenId, TokenRecord, Transition,
};

pub mod bits;
pub mod chunk;
pub mod dump;
pub mod fault;
pub mod head;
mod merge;
pub mod rollup;
pub mod sled;
pub mod wal;

pub use self::rollup::{Resolution, Rollup};
pub use self::sled::SledStore;

/// Version of the on-disk layout this build reads and writes. A store of an older version is
/// migrated at open, after a backup, by the steps of `store/sled/migrate.rs`; one those steps
/// do not cover, or a newer one, is refused, never reinterpreted. Version 3 keeps samples as compressed
/// chunks, rollups and a write-ahead log; version 2 kept one record per sample and is refused
/// (no migration: start version 3 on a fresh data directory). Version 4 adds the daily and
/// per-step event counts (`crate::events::rollup`), built from the hourly ones when a version 3
/// store is opened. Version 5 keeps rollups a block of buckets per record (`rollup/block.rs`)
/// instead of one bucket per record; a version 4 store's buckets are moved into blocks at open.
pub const SCHEMA_VERSION: u32 = 5;

/// Most samples in one chunk.
pub const DEFAULT_HEAD_MAX_SAMPLES: u32 = 720;
/// Body bytes at which an agent's open chunk is sealed. Bounds the memory of one agent's head
/// (about this much plus ~1 KiB of coding state at most, half of it on average), against the
/// fleet's budget of 32 KiB per connected agent; the `chunk_bench` example gives the cost in
/// bytes per sample of shorter chunks.
pub const DEFAULT_HEAD_MAX_BYTES: usize = 2048;
/// Longest a chunk stays open, and widest span of sample times one chunk covers.
pub const DEFAULT_CHUNK_MAX_SPAN: Duration = Duration::from_secs(2 * 3600);
/// Most memory all open heads together may hold; past it, heads are sealed early.
pub const DEFAULT_HEADS_BUDGET_BYTES: usize = 128 * 1024 * 1024;

/// How the time-series engine keeps samples: when heads are sealed and how much memory they
/// may hold.
#[derive(Clone, Debug, PartialEq)]
pub struct SeriesConfig {
    pub head_max_samples: u32,
    pub head_max_bytes: usize,
    pub chunk_max_span: Duration,
    pub heads_budget_bytes: usize,
}

impl Default for SeriesConfig {
    fn default() -> Self {
        Self {
            head_max_samples: DEFAULT_HEAD_MAX_SAMPLES,
            head_max_bytes: DEFAULT_HEAD_MAX_BYTES,
            chunk_max_span: DEFAULT_CHUNK_MAX_SPAN,
            heads_budget_bytes: DEFAULT_HEADS_BUDGET_BYTES,
        }
    }
}

/// What [`Store::purge`] removes: everything older than each cutoff, in whole units.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    /// Sealed chunks whose newest sample is older go, whole; so do status changes older.
    pub samples: SystemTime,
    /// 5-minute rollup buckets that start before it go, a block (an hour of them) at a time:
    /// a block goes once its last bucket starts before it.
    pub five_minutes: SystemTime,
    /// 1-hour rollup buckets that start before it go, a block (six hours of them) at a time.
    pub one_hour: SystemTime,
}

/// What one [`Store::purge`] removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Purged {
    pub chunks: u64,
    /// Samples in the chunks removed.
    pub samples: u64,
    /// Rollup blocks removed.
    pub rollups: u64,
    pub transitions: u64,
}

/// What one [`Store::compact`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Compacted {
    /// Heads sealed into chunks.
    pub sealed: u64,
    /// Heads written as snapshots (with `checkpoint`).
    pub snapshots: u64,
    /// Write-ahead records removed (with `checkpoint`).
    pub log_records_removed: u64,
}

/// Whether, and how, a [`Store::compact`] pass also checkpoints.
#[derive(Clone, Copy, Debug)]
pub enum Checkpoint<'a> {
    /// No checkpoint: only seal the heads that are due.
    No,
    /// Checkpoint at full speed: at shutdown, and for tools and tests.
    Now,
    /// Checkpoint in slices, resting between them as `Spread` says: the server's periodic
    /// passes, whose work would otherwise come out of the sessions' CPU in one burst.
    Spread(&'a Spread),
}

impl Checkpoint<'_> {
    /// [`Checkpoint::Now`] if `due`, else [`Checkpoint::No`].
    #[must_use]
    pub fn now_if(due: bool) -> Self {
        if due { Self::Now } else { Self::No }
    }

    /// Whether the pass checkpoints at all.
    #[must_use]
    pub fn wanted(self) -> bool {
        !matches!(self, Self::No)
    }
}

/// How a spread checkpoint rests: after each slice of its work (one shard's head snapshots,
/// one batch of log removals), for `ratio` times the slice's wall time, at most `longest` a
/// rest, until [`Spread::hurry`] is called (the server stopping), after which it rests no more.
/// A slice's wall time grows when the CPU is busy, so a checkpoint yields more on a loaded
/// machine; without rests a checkpoint of a large fleet is a second of CPU taken at once from
/// the acks (the capacity benchmark with the server on one core).
#[derive(Debug)]
pub struct Spread {
    ratio: u32,
    longest: Duration,
    hurry: AtomicBool,
    rests: AtomicU64,
}

impl Spread {
    /// Granularity at which a rest notices [`Spread::hurry`].
    const NOTICE: Duration = Duration::from_millis(20);

    #[must_use]
    pub fn new(ratio: u32, longest: Duration) -> Self {
        Self {
            ratio,
            longest,
            hurry: AtomicBool::new(false),
            rests: AtomicU64::new(0),
        }
    }

    /// Ends the current rest and every later one.
    pub fn hurry(&self) {
        self.hurry.store(true, Ordering::Relaxed);
    }

    /// Rests started so far (a test waits on it).
    #[must_use]
    pub fn rests(&self) -> u64 {
        self.rests.load(Ordering::Relaxed)
    }

    /// Blocks the calling thread for the rest due after a slice that took `took`.
    pub fn rest_after(&self, took: Duration) {
        let hurried = || self.hurry.load(Ordering::Relaxed);
        let mut left = took.saturating_mul(self.ratio).min(self.longest);
        if left.is_zero() || hurried() {
            return;
        }
        self.rests.fetch_add(1, Ordering::Relaxed);
        while !left.is_zero() && !hurried() {
            let step = left.min(Self::NOTICE);
            std::thread::sleep(step);
            left -= step;
        }
    }
}

/// The memory a store holds for samples, for the server's gauges.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreMemory {
    /// Agents with an open head.
    pub heads: u64,
    /// Bytes the open heads hold (their chunks and coding state, and their map entries).
    pub heads_bytes: u64,
    /// The configured bound of `heads_bytes` ([`SeriesConfig::heads_budget_bytes`]).
    pub heads_budget_bytes: u64,
    /// The configured bound of the backend's page cache.
    pub cache_bytes: u64,
    /// Bytes of the write-ahead log (on disk, not memory): reported here because the server
    /// checkpoints, which truncates it, once it passes a bound, and a long log is a long replay
    /// at start-up.
    pub log_bytes: u64,
}

/// One rollup bucket of an agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RollupBucket {
    /// The bucket's start (a multiple of its width since the Unix epoch).
    pub start: Time,
    pub rollup: Rollup,
}

/// A table of the events keyspace: an ordered map of byte keys to byte values within one org,
/// whose keys and values `crate::events::keys` defines. Backends store each table under its
/// own section after the org, so tables never mix and every org's events stay apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventTable {
    /// Stored events, in time order.
    Events,
    /// Per agent: the highest event seq settled.
    Marks,
    /// Per agent and fingerprint: the event that counts repeats.
    Fingerprints,
    /// The org's change log, by cursor: what `WatchEvents` replays.
    Changes,
    /// Hourly counts by kind and severity.
    KindHours,
    /// Hourly counts by agent, kind and severity.
    AgentHours,
    /// Hourly counts by severity (`crate::events::rollup`, as the three below).
    HourTotals,
    /// Hourly counts by severity per kind, kind first.
    KindSeries,
    /// Daily counts by severity per kind.
    DayKinds,
    /// Daily counts by severity per agent.
    DayAgents,
}

/// Entries of an events table, `(key, value)`, as [`Store::event_entries`] yields them.
pub type EventEntries<'a> = Box<dyn Iterator<Item = Result<(Vec<u8>, Vec<u8>)>> + 'a>;

/// One durable write. A batch of them commits atomically-enough for Tether's needs: after
/// [`Store::commit`] returns `Ok`, every write in it survives a crash.
#[derive(Clone, Debug, PartialEq)]
pub enum Write {
    /// Insert or replace an agent's facts.
    PutAgent(AgentRecord),
    /// Insert or replace an agent's live summary.
    PutLive {
        org: OrgId,
        agent: AgentId,
        live: LiveRecord,
    },
    /// Record how far an agent's samples are durable: the deduplication high-water mark and
    /// the time of its last message. Small and fixed-size; the writer writes it at most every
    /// [`PROGRESS_INTERVAL`](crate::writer::PROGRESS_INTERVAL) per agent, and `load` also
    /// takes each agent's last stored seq from its samples, so the mark is exact after a
    /// restart without a write per sample.
    PutProgress {
        org: OrgId,
        agent: AgentId,
        last_seq: u64,
        last_seen: SystemTime,
    },
    /// Store a sample. The caller has already deduplicated by (agent, seq); a sample at or
    /// below the agent's highest stored seq is dropped all the same.
    PutSample {
        org: OrgId,
        agent: AgentId,
        sample: Sample,
    },
    /// Append a status change to the agent's history.
    PutTransition(Transition),
    PutToken(TokenRecord),
    /// Records when a token was last used, apart from its record: authentication reads a
    /// token's record before it queues this, and a copy of that record written later could undo
    /// a revocation committed in between. `load` sets `TokenRecord::last_used_at` from it.
    PutTokenUse {
        org: OrgId,
        id: TokenId,
        at: SystemTime,
    },
    /// Removes a token record: a superseded agent credential, which nothing needs to remember.
    DeleteToken {
        org: OrgId,
        id: TokenId,
    },
    PutEnrollmentToken(EnrollmentTokenRecord),
    PutOrg(OrgRecord),
    /// Removes the agent's record and live summary and leaves a tombstone. Samples and history
    /// stay until retention removes them.
    DeleteAgent(AgentTombstone),
    /// Appends an audit record; the caller has chained it.
    PutAudit(AuditRecord),
    /// Insert or replace a command. An unfinished command is also listed among the active
    /// ones ([`Store::active_commands`]); a finished one leaves that list.
    PutCommand(Box<CommandRecord>),
    /// Insert or replace one invocation of a command.
    PutInvocation {
        org: OrgId,
        command: CommandId,
        record: Box<InvocationRecord>,
    },
    /// Store event `cursor` of a command's history (replacing one with the same cursor).
    PutCommandEvent {
        org: OrgId,
        command: CommandId,
        cursor: u64,
        event: Box<CommandEvent>,
    },
    /// Remove event `cursor` of a command's history (output dropped from a tail).
    DeleteCommandEvent {
        org: OrgId,
        command: CommandId,
        cursor: u64,
    },
    /// Remember that `key` sent `command` at `created_at` ([`Store::idempotent_command`]).
    PutIdempotencyKey {
        org: OrgId,
        key: String,
        command: CommandId,
        created_at: Time,
    },
    /// Insert or replace one entry of an events table.
    PutEventEntry {
        org: OrgId,
        table: EventTable,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    /// Remove one entry of an events table.
    DeleteEventEntry {
        org: OrgId,
        table: EventTable,
        key: Vec<u8>,
    },
    /// Remove a command with everything stored under it: its record, its `n_invocations`
    /// invocations, its events up to `last_cursor`, and its idempotency key's entry.
    DeleteCommand {
        org: OrgId,
        command: CommandId,
        n_invocations: u32,
        last_cursor: u64,
        idempotency_key: String,
    },
    /// Insert or replace an alert rule created over RPC (rules of the rules file are not
    /// stored).
    PutAlertRule(Box<Rule>),
    DeleteAlertRule {
        org: OrgId,
        name: String,
    },
    /// Insert or replace an alert (it fired, or resolved).
    PutAlert(Box<Alert>),
    /// Remove a resolved alert the history no longer keeps.
    DeleteAlert {
        org: OrgId,
        id: String,
    },
}

/// A [`Write`] in the form its backend applies it, made by [`Store::encode`]: keys built, values
/// serialized, so nothing about its content can fail any more. Opaque outside `store/`: only
/// backends look inside.
#[derive(Debug)]
pub struct Encoded {
    ops: Vec<Op>,
}

#[cfg(test)]
impl Encoded {
    /// The keys and values this write puts, for tests that look at a planned batch.
    pub(crate) fn puts(&self) -> Vec<(&[u8], &[u8])> {
        self.ops
            .iter()
            .filter_map(|op| match op {
                Op::Put(key, value) => Some((key.as_slice(), value.as_slice())),
                Op::Remove(_) | Op::Sample(_) => None,
            })
            .collect()
    }

    /// The seqs of the samples this write stores.
    pub(crate) fn sample_seqs(&self) -> Vec<u64> {
        self.ops
            .iter()
            .filter_map(|op| match op {
                Op::Sample(logged) => Some(logged.1.seq),
                Op::Put(..) | Op::Remove(_) => None,
            })
            .collect()
    }
}

/// One operation of an [`Encoded`] write, in order.
#[derive(Debug)]
enum Op {
    Put(Vec<u8>, Vec<u8>),
    Remove(Vec<u8>),
    /// A sample, already in its stored form and checked to be loggable.
    Sample(Box<(wal::AgentKey, Sample)>),
}

/// Everything the server rebuilds its in-memory state from at start-up.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// Agents with their live summary (absent if none was ever written). The summary's
    /// `last_seq` and `last_seen` already include the latest `PutProgress`.
    pub agents: Vec<(AgentRecord, Option<LiveRecord>)>,
    pub tokens: Vec<TokenRecord>,
    pub enrollment_tokens: Vec<EnrollmentTokenRecord>,
    pub orgs: Vec<OrgRecord>,
    /// The last audit record of every org that has one: where its chain continues.
    pub audit_heads: Vec<AuditRecord>,
    /// Every deleted agent: an id here never comes back.
    pub tombstones: Vec<AgentTombstone>,
    /// Alert rules created over RPC.
    pub alert_rules: Vec<Rule>,
    /// Every stored alert, firing or resolved, in id order within each org.
    pub alerts: Vec<Alert>,
}

/// Errors of every backend. Backend detail is boxed inside so callers branch on the kind only.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The data directory was written by another schema version.
    #[error(
        "store schema version {found} is not supported by this server (expected {expected}); \
         use a matching server version or a fresh data directory"
    )]
    SchemaMismatch { found: String, expected: u32 },
    /// The data directory was written by a newer server (after its migrations ran).
    #[error(
        "store schema version {found} is newer than this server reads ({supported}): run the \
         tether-server that wrote it, or restore a backup taken before the upgrade"
    )]
    SchemaNewer { found: u32, supported: u32 },
    /// A value cannot be stored as it is (e.g. a time its encoding cannot represent). Only
    /// [`Store::encode`] reports it, for the one write concerned.
    #[error("cannot encode {what}: {detail}")]
    Unencodable { what: &'static str, detail: String },
    /// A stored value could not be decoded.
    #[error("corrupt record under key {key}: {detail}")]
    Corrupt { key: String, detail: String },
    /// The backend failed (I/O, lock, ...).
    #[error("storage backend error: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// What [`Store::export`] calls with each record: (space, key, value).
pub type Visit<'a> = dyn FnMut(&[u8], &[u8], &[u8]) -> std::io::Result<()> + 'a;

/// The storage interface. Implementations must be safe to call from many threads.
pub trait Store: Send + Sync + 'static {
    /// Reads everything needed to rebuild the in-memory registry and token cache.
    fn load(&self) -> Result<Snapshot>;

    /// Encodes one write for a later [`Store::commit`]. Cheap enough for the caller's own task
    /// (no I/O beyond what a backend needs to number records).
    ///
    /// # Errors
    ///
    /// [`StoreError::Unencodable`] if the write's content cannot be stored; the write is lost
    /// alone. [`StoreError::Backend`] if numbering it failed.
    fn encode(&self, write: &Write) -> Result<Encoded>;

    /// Applies `writes`, in order, atomically (all or none), and makes them durable before
    /// returning.
    ///
    /// # Errors
    ///
    /// [`StoreError::Backend`] if the backend could not apply or flush them.
    fn commit(&self, writes: Vec<Encoded>) -> Result<()>;

    /// Calls `visit` with every stored record as (space, key, value), read at one consistent
    /// point: no commit, compaction or purge makes a change while it runs (a spread checkpoint
    /// may be resting between two of its writes, each atomic on its own), and none starts
    /// until it returns (so `visit` must not wait on anything but local I/O). Returns the
    /// number of records. A store built from these records ([`sled::import`]) opens as this
    /// one would after a restart.
    ///
    /// # Errors
    ///
    /// [`StoreError::Backend`] on a read failure or with `visit`'s error.
    fn export(&self, visit: &mut Visit<'_>) -> Result<u64>;

    /// Encodes and commits `writes` together: for start-up and tests, where the first write
    /// that cannot be encoded may fail them all.
    ///
    /// # Errors
    ///
    /// As [`Store::encode`] and [`Store::commit`].
    fn commit_writes(&self, writes: &[Write]) -> Result<()> {
        let encoded = writes
            .iter()
            .map(|write| self.encode(write))
            .collect::<Result<Vec<_>>>()?;
        self.commit(encoded)
    }

    /// Samples of one agent with `from <= time < to`, in `(time, seq)` order, at most `limit`
    /// (the oldest).
    fn samples(
        &self,
        org: &OrgId,
        agent: &AgentId,
        from: SystemTime,
        to: SystemTime,
        limit: usize,
    ) -> Result<Vec<Sample>>;

    /// The samples of [`Store::samples`] without their per-disk detail: each with its disks
    /// summed, so that reading a range costs the same whatever the agent lists. Yielded one by
    /// one in time order, so that a caller aggregating a long range holds only its result.
    fn sample_totals<'a>(
        &'a self,
        org: &OrgId,
        agent: &AgentId,
        from: SystemTime,
        to: SystemTime,
    ) -> Box<dyn Iterator<Item = Result<SampleTotals>> + 'a>;

    /// The most recent status changes of one agent, newest first, at most `limit`.
    fn transitions(&self, org: &OrgId, agent: &AgentId, limit: usize) -> Result<Vec<Transition>>;

    /// Audit records of `org` with `seq > after`, in seq order, at most `limit`.
    fn audit_records(&self, org: &OrgId, after: u64, limit: usize) -> Result<Vec<AuditRecord>>;

    /// The rollups of one agent at `resolution` whose bucket starts in `from..to`, in bucket
    /// order, each covering every stored sample of its bucket exactly once (sealed or open).
    fn rollups<'a>(
        &'a self,
        org: &OrgId,
        agent: &AgentId,
        resolution: Resolution,
        from: SystemTime,
        to: SystemTime,
    ) -> Box<dyn Iterator<Item = Result<RollupBucket>> + 'a>;

    /// Seals the heads that are due at `now` (open for the longest span, or past the memory
    /// budget); with a `checkpoint`, also makes every open head durable on its own and drops
    /// the write-ahead records nothing needs any more. Run periodically by the server. A
    /// [`Checkpoint::Spread`] pass rests between slices without holding anything a commit or
    /// an export needs.
    ///
    /// # Errors
    ///
    /// [`StoreError::Backend`] if a write failed; what was not done is retried next time.
    fn compact(&self, now: SystemTime, checkpoint: Checkpoint<'_>) -> Result<Compacted>;

    /// Removes history past `retention`, in whole units: sealed chunks whose newest sample is
    /// older than `retention.samples`, rollup buckets that start before their cutoff, status
    /// changes older than `retention.samples`. Open heads are never purged (they are sealed
    /// within [`SeriesConfig::chunk_max_span`], then purged like any chunk).
    ///
    /// # Errors
    ///
    /// [`StoreError::Backend`] or `Corrupt`; what was removed before stays removed.
    fn purge(&self, retention: &Retention) -> Result<Purged>;

    /// The memory the store holds for samples now, and its configured bounds.
    fn memory(&self) -> StoreMemory;

    /// What the backend can tell about its own state when a commit does not return, for the
    /// writer's stall reports (`writer/stall.rs`); empty if nothing.
    fn stall_detail(&self) -> String {
        String::new()
    }

    /// Every unfinished command of every org: what the command engine resumes at start.
    fn active_commands(&self) -> Result<Vec<CommandRecord>>;

    /// One command of `org`.
    fn command(&self, org: &OrgId, id: &CommandId) -> Result<Option<CommandRecord>>;

    /// One page of `org`'s commands matching `query`, newest first. Reads at most `max_scan`
    /// commands: a filter that matches rarely ends the page early, with `next_before` set.
    fn commands(&self, org: &OrgId, query: &CommandQuery, max_scan: usize) -> Result<CommandPage>;

    /// Invocations of one command numbered after `after` (all with `None`), in order, at most
    /// `limit`.
    fn invocations(
        &self,
        org: &OrgId,
        command: &CommandId,
        after: Option<u32>,
        limit: usize,
    ) -> Result<Vec<InvocationRecord>>;

    /// Events of one command with `after < cursor <= until`, in cursor order: at most `limit`,
    /// and no more than `max_bytes` of output (at least one event, whatever its size).
    fn command_events(
        &self,
        org: &OrgId,
        command: &CommandId,
        after: u64,
        until: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<(u64, CommandEvent)>>;

    /// The newest command of `org` sent with idempotency `key` at or after `since`.
    fn idempotent_command(
        &self,
        org: &OrgId,
        key: &str,
        since: SystemTime,
    ) -> Result<Option<CommandId>>;

    /// Finished commands (of every org) that finished before `cutoff`, oldest first, at most
    /// `limit`.
    fn expired_commands(&self, cutoff: SystemTime, limit: usize) -> Result<Vec<CommandRecord>>;

    /// One entry of an events table.
    fn event_entry(&self, org: &OrgId, table: EventTable, key: &[u8]) -> Result<Option<Vec<u8>>>;

    /// The entries of an events table with `from <= key < to` (`to` unset: to the table's end),
    /// in key order or, with `reverse`, in reverse key order; yielded one by one, so a caller
    /// reads only what it uses.
    fn event_entries<'a>(
        &'a self,
        org: &OrgId,
        table: EventTable,
        from: &[u8],
        to: Option<&[u8]>,
        reverse: bool,
    ) -> EventEntries<'a>;
}

#[cfg(test)]
mod tests;
