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

use std::time::SystemTime;

use crate::command::record::{
    CommandEvent, CommandPage, CommandQuery, CommandRecord, InvocationRecord,
};
use crate::domain::{
    AgentId, AgentRecord, AgentTombstone, AuditRecord, CommandId, EnrollmentTokenRecord,
    LiveRecord, OrgId, OrgRecord, Sample, SampleTotals, Time, TokenId, TokenRecord, Transition,
};

pub mod bits;
pub mod chunk;
pub mod head;
pub mod rollup;
pub mod sled;
pub mod wal;

pub use self::sled::SledStore;

/// Version of the on-disk layout this build reads and writes. A store created by another
/// version is refused at open, never reinterpreted.
pub const SCHEMA_VERSION: u32 = 2;

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
    /// few seconds per agent, and `load` also reads each agent's newest sample key, so the
    /// mark is exact after a restart without a write per sample.
    PutProgress {
        org: OrgId,
        agent: AgentId,
        last_seq: u64,
        last_seen: SystemTime,
    },
    /// Store a sample. The caller has already deduplicated by (agent, seq).
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
    /// Remove a command with everything stored under it: its record, its `n_invocations`
    /// invocations, its events up to `last_cursor`, and its idempotency key's entry.
    DeleteCommand {
        org: OrgId,
        command: CommandId,
        n_invocations: u32,
        last_cursor: u64,
        idempotency_key: String,
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
                Op::Remove(_) => None,
            })
            .collect()
    }
}

/// One key-value operation of an [`Encoded`] write, in order.
#[derive(Debug)]
enum Op {
    Put(Vec<u8>, Vec<u8>),
    Remove(Vec<u8>),
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

    /// Samples of one agent with `from <= time < to`, in time order, at most `limit`.
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

    /// Deletes samples and transitions older than `cutoff`; returns how many records went.
    fn purge_before(&self, cutoff: SystemTime) -> Result<u64>;

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
}

#[cfg(test)]
mod tests;
