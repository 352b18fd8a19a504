//! The command journal: which invocations this agent accepted, how they ended, and whether the
//! server has acknowledged that end. It is what makes execution exactly-once across
//! redeliveries and agent crashes.
//!
//! On disk it is `commands.journal` in the state directory (mode 0600): JSON lines, the first a
//! header (`{"op":"header","version":1}`), then one record per step:
//!
//! - `accept` (id, command id, time): written and fsync'd **before** the process starts;
//! - `result` (state, reason, exit code, signal, the terminal update's seq, bytes written per
//!   stream, time): written and fsync'd **before** the terminal update is reported (a result
//!   without an earlier `accept` is an invocation that ended at once: rejected, noop, …);
//! - `acked` (id, time): the server acknowledged the terminal update. Not fsync'd on its own:
//!   it rides along with the next durable write (or the flush at shutdown); losing it only
//!   means one more re-send, which the server deduplicates.
//!
//! At open, a torn last record (a crash mid-append) is dropped; an accepted invocation with no
//! result ended while the agent was down, so it gets the result `agent_restarted` (its seq is 0:
//! it is numbered after the server's `Welcome` tells what it stored). The file is then
//! rewritten compactly (one line per invocation, through a temporary file, fsync and rename),
//! as it is whenever appends grew it by [`COMPACT_AFTER_BYTES`]. Entries are kept for
//! [`JOURNAL_RETENTION`] after their last change, and at most [`MAX_ENTRIES`] (the oldest
//! acknowledged ones go first beyond that).
//!
//! [`Journal::in_memory`] keeps the same state without a file. It is **not durable** and exists
//! only for the fleet simulator, which must not fsync a file per simulated agent.
//!
//! Locking: `file` (held across write and fsync, on a blocking thread) is always taken before
//! `entries` (held for microseconds, never across I/O). The in-memory state changes while the
//! file lock is held, so a compaction, which also holds it, never misses a written record.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::AgentError;
use crate::command::types::{Outcome, Terminal};

/// Name of the journal inside the state directory.
pub const JOURNAL_FILE_NAME: &str = "commands.journal";
/// How long an entry is kept after its last change.
pub const JOURNAL_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// Most entries kept (the oldest acknowledged ones are dropped first).
pub const MAX_ENTRIES: usize = tether_proto::command::MAX_JOURNALED_INVOCATIONS;
/// Appended bytes after which the file is rewritten compactly.
pub const COMPACT_AFTER_BYTES: u64 = 256 << 10;
/// Most entries an in-memory journal keeps: one journal per simulated agent, and a simulated
/// agent's memory must stay small however many commands the benchmark sends.
const MAX_ENTRIES_IN_MEMORY: usize = 16;
const FORMAT_VERSION: u32 = 1;

/// What the journal knows about one invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) command_id: String,
    /// Time of the last change; retention counts from here.
    pub(crate) updated_at: SystemTime,
    /// `None`: accepted and (in this process) running.
    pub(crate) result: Option<JournaledResult>,
    /// The server acknowledged the terminal update.
    pub(crate) acked: bool,
}

/// How an invocation ended, as journaled before it was reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct JournaledResult {
    pub(crate) outcome: Outcome,
    /// Seq of the terminal update; 0 when not numbered yet (found unfinished at start-up).
    pub(crate) seq: u64,
    pub(crate) stdout_bytes: u64,
    pub(crate) stderr_bytes: u64,
}

/// The journal: durable (a file) or, for the simulator only, in memory.
#[derive(Debug)]
pub(crate) struct Journal {
    entries: Mutex<Entries>,
    /// `None`: in-memory journal.
    file: Option<Mutex<FileSlot>>,
    max_entries: usize,
}

#[derive(Debug, Default)]
struct Entries {
    map: HashMap<String, Entry>,
    /// Ids marked acked in memory but not yet written.
    unsaved_acks: Vec<String>,
}

/// The journal's file, created by the first record: an agent that never ran a command has
/// none (and touches none of this code while idle).
#[derive(Debug)]
struct FileSlot {
    path: PathBuf,
    open: Option<JournalFile>,
}

#[derive(Debug)]
struct JournalFile {
    path: PathBuf,
    file: File,
    /// Current length of the file.
    len: u64,
    /// Bytes appended since the last compaction.
    appended: u64,
}

/// One line of the file.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
enum Record {
    Header {
        version: u32,
    },
    Accept {
        id: String,
        command_id: String,
        at_ms: u64,
    },
    Result {
        id: String,
        command_id: String,
        at_ms: u64,
        state: String,
        reason: String,
        exit_code: Option<i32>,
        signal: Option<i32>,
        seq: u64,
        stdout_bytes: u64,
        stderr_bytes: u64,
    },
    Acked {
        id: String,
        at_ms: u64,
    },
}

// === impl Record ===

impl Record {
    fn result(id: &str, command_id: &str, at_ms: u64, result: &JournaledResult) -> Self {
        let JournaledResult {
            outcome,
            seq,
            stdout_bytes,
            stderr_bytes,
        } = result;
        Self::Result {
            id: id.to_owned(),
            command_id: command_id.to_owned(),
            at_ms,
            state: outcome.state.as_str().to_owned(),
            reason: outcome.reason.clone(),
            exit_code: outcome.exit_code,
            signal: outcome.signal,
            seq: *seq,
            stdout_bytes: *stdout_bytes,
            stderr_bytes: *stderr_bytes,
        }
    }
}

// === impl Journal ===

impl Journal {
    /// Opens the journal in `dir`, settles invocations that were running when the agent
    /// stopped (`agent_restarted`), and rewrites the file compactly. Without a file (or with an
    /// empty one), nothing is written until the first record.
    ///
    /// # Errors
    ///
    /// [`AgentError::StateIo`] when the file cannot be read or written,
    /// [`AgentError::StateCorrupt`] when a record other than the last is unreadable or the
    /// format version is unknown.
    pub(crate) fn open(dir: &Path) -> Result<Self, AgentError> {
        let path = dir.join(JOURNAL_FILE_NAME);
        let io_err = |source| AgentError::StateIo {
            path: path.clone(),
            source,
        };
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(source) => return Err(io_err(source)),
        };
        let mut entries = Entries {
            map: parse(&path, &bytes)?,
            unsaved_acks: Vec::new(),
        };
        let now = SystemTime::now();
        for entry in entries.map.values_mut() {
            if entry.result.is_none() {
                entry.result = Some(JournaledResult {
                    outcome: Outcome::new(
                        Terminal::AgentRestarted,
                        "the agent stopped while this invocation ran; its outcome is unknown",
                    ),
                    seq: 0,
                    stdout_bytes: 0,
                    stderr_bytes: 0,
                });
                entry.updated_at = now;
            }
        }
        prune(&mut entries.map, MAX_ENTRIES, now);
        let open = if bytes.is_empty() {
            None
        } else {
            Some(JournalFile::rewrite(&path, &entries.map).map_err(io_err)?)
        };
        Ok(Self {
            entries: Mutex::new(entries),
            file: Some(Mutex::new(FileSlot { path, open })),
            max_entries: MAX_ENTRIES,
        })
    }

    /// A journal that lives in memory only. **Not durable**: for the fleet simulator, whose
    /// thousands of agents must not each fsync a file. A real agent always uses [`Journal::open`].
    pub(crate) fn in_memory() -> Self {
        Self {
            entries: Mutex::new(Entries::default()),
            file: None,
            max_entries: MAX_ENTRIES_IN_MEMORY,
        }
    }

    /// Whether writes go to disk (and so block: call them from a blocking thread).
    pub(crate) fn is_durable(&self) -> bool {
        self.file.is_some()
    }

    /// What the journal knows about `id`.
    pub(crate) fn get(&self, id: &str) -> Option<Entry> {
        self.entries().map.get(id).cloned()
    }

    /// Invocations whose terminal update the server has not acknowledged, with their entries.
    pub(crate) fn unacked(&self) -> Vec<(String, Entry)> {
        let entries = self.entries();
        let mut unacked: Vec<(String, Entry)> = entries
            .map
            .iter()
            .filter(|(_, entry)| !entry.acked)
            .map(|(id, entry)| (id.clone(), entry.clone()))
            .collect();
        unacked.sort_by(|a, b| a.1.updated_at.cmp(&b.1.updated_at).then(a.0.cmp(&b.0)));
        unacked
    }

    /// Records that `id` was accepted. Durable when this returns (blocking).
    ///
    /// # Errors
    ///
    /// The I/O error; the invocation must then not start.
    pub(crate) fn accept(&self, id: &str, command_id: &str) -> io::Result<()> {
        let now = SystemTime::now();
        let record = Record::Accept {
            id: id.to_owned(),
            command_id: command_id.to_owned(),
            at_ms: unix_ms(now),
        };
        self.append(&record, |entries| {
            entries.map.insert(
                id.to_owned(),
                Entry {
                    command_id: command_id.to_owned(),
                    updated_at: now,
                    result: None,
                    acked: false,
                },
            );
        })
    }

    /// Records how `id` ended. Durable when this returns (blocking).
    ///
    /// # Errors
    ///
    /// The I/O error.
    pub(crate) fn finish(
        &self,
        id: &str,
        command_id: &str,
        result: &JournaledResult,
    ) -> io::Result<()> {
        let now = SystemTime::now();
        let record = Record::result(id, command_id, unix_ms(now), result);
        self.append(&record, |entries| {
            entries.map.insert(
                id.to_owned(),
                Entry {
                    command_id: command_id.to_owned(),
                    updated_at: now,
                    result: Some(result.clone()),
                    acked: false,
                },
            );
        })
    }

    /// Records, in memory, that the server acknowledged the terminal update of `id`; written
    /// with the next durable record or [`Journal::flush`]. Never blocks on I/O.
    pub(crate) fn mark_acked(&self, id: &str) {
        let durable = self.is_durable();
        let mut entries = self.entries();
        let Some(entry) = entries.map.get_mut(id) else {
            return;
        };
        if entry.acked || entry.result.is_none() {
            return;
        }
        entry.acked = true;
        entry.updated_at = SystemTime::now();
        if durable {
            entries.unsaved_acks.push(id.to_owned());
        }
    }

    /// Writes acknowledgements still only in memory (blocking).
    ///
    /// # Errors
    ///
    /// The I/O error.
    pub(crate) fn flush(&self) -> io::Result<()> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        let mut slot = lock(file);
        let Some(file) = slot.open.as_mut() else {
            // No record was ever written, so nothing can have been acknowledged.
            return Ok(());
        };
        let mut buf = Vec::new();
        let ids = std::mem::take(&mut self.entries().unsaved_acks);
        encode_acks(&mut buf, &ids);
        file.append(&buf)
    }

    fn append(&self, record: &Record, apply: impl FnOnce(&mut Entries)) -> io::Result<()> {
        let Some(file) = &self.file else {
            let mut entries = self.entries();
            apply(&mut entries);
            if entries.map.len() > self.max_entries {
                prune(&mut entries.map, self.max_entries, SystemTime::now());
            }
            return Ok(());
        };
        let mut slot = lock(file);
        let FileSlot { path, open } = &mut *slot;
        let file = match open {
            Some(file) => file,
            None => {
                let map = self.entries().map.clone();
                open.insert(JournalFile::rewrite(path, &map)?)
            }
        };
        let ids = std::mem::take(&mut self.entries().unsaved_acks);
        let mut buf = Vec::new();
        encode_acks(&mut buf, &ids);
        encode(&mut buf, record);
        if let Err(err) = file.append(&buf) {
            // The acknowledgements are written again with the next record.
            self.entries().unsaved_acks.extend(ids);
            return Err(err);
        }
        let snapshot = {
            let mut entries = self.entries();
            apply(&mut entries);
            let compact =
                file.appended >= COMPACT_AFTER_BYTES || entries.map.len() > self.max_entries;
            compact.then(|| {
                prune(&mut entries.map, self.max_entries, SystemTime::now());
                entries.map.clone()
            })
        };
        // Rewritten from a snapshot, outside the entries lock: an ack marked meanwhile is in
        // `unsaved_acks` and goes out with the next record.
        if let Some(map) = snapshot {
            match JournalFile::rewrite(&file.path, &map) {
                Ok(compacted) => *file = compacted,
                Err(err) => warn!("failed to compact the command journal: {err}"),
            }
        }
        Ok(())
    }

    fn entries(&self) -> MutexGuard<'_, Entries> {
        lock(&self.entries)
    }
}

// === impl JournalFile ===

impl JournalFile {
    /// Writes `map` as a new file (temporary file, fsync, rename, fsync of the directory) and
    /// opens it for appending.
    fn rewrite(path: &Path, map: &HashMap<String, Entry>) -> io::Result<Self> {
        let mut buf = Vec::new();
        encode(
            &mut buf,
            &Record::Header {
                version: FORMAT_VERSION,
            },
        );
        let mut ids: Vec<&String> = map.keys().collect();
        ids.sort_by_key(|id| (map[*id].updated_at, *id));
        for id in ids {
            encode_entry(&mut buf, id, &map[id]);
        }
        let tmp_path = path.with_extension("journal.tmp");
        match fs::remove_file(&tmp_path) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(err),
        }
        let mut tmp = private_file(OpenOptions::new().write(true).create_new(true), &tmp_path)?;
        tmp.write_all(&buf)?;
        tmp.sync_all()?;
        drop(tmp);
        fs::rename(&tmp_path, path)?;
        if let Some(dir) = path.parent() {
            File::open(dir)?.sync_all()?;
        }
        let file = private_file(OpenOptions::new().append(true), path)?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
            len: buf.len() as u64,
            appended: 0,
        })
    }

    /// Appends `buf` and makes it durable. On failure the file is cut back to its previous
    /// length, so a half-written record never sits in the middle of the file.
    fn append(&mut self, buf: &[u8]) -> io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let written = self
            .file
            .write_all(buf)
            .and_then(|()| self.file.sync_data());
        if let Err(err) = written {
            if let Err(truncate) = self.file.set_len(self.len) {
                warn!("failed to cut a partial record from the command journal: {truncate}");
            }
            return Err(err);
        }
        self.len += buf.len() as u64;
        self.appended += buf.len() as u64;
        Ok(())
    }
}

/// Reads the records of a journal file into entries.
fn parse(path: &Path, bytes: &[u8]) -> Result<HashMap<String, Entry>, AgentError> {
    let corrupt = |message: String| AgentError::StateCorrupt {
        path: path.to_path_buf(),
        source: serde::de::Error::custom(message),
    };
    let mut lines: Vec<&[u8]> = bytes.split(|byte| *byte == b'\n').collect();
    // The piece after the last newline is empty, or a record torn by a crash mid-append.
    if lines.pop().is_some_and(|torn| !torn.is_empty()) {
        warn!(path = %path.display(), "dropping a torn record at the end of the command journal");
    }
    let mut records = Vec::with_capacity(lines.len());
    let mut bad_tail: Option<(usize, serde_json::Error)> = None;
    for (line_idx, line) in lines.iter().enumerate() {
        match serde_json::from_slice::<Record>(line) {
            Ok(record) => {
                if let Some((bad_idx, err)) = bad_tail.take() {
                    return Err(corrupt(format!("line {}: {err}", bad_idx + 1)));
                }
                records.push(record);
            }
            Err(err) => {
                bad_tail.get_or_insert((line_idx, err));
            }
        }
    }
    if let Some((bad_idx, err)) = bad_tail {
        // Only unreadable lines follow: an append torn by a crash.
        warn!(
            path = %path.display(),
            line = bad_idx + 1,
            "dropping unreadable records at the end of the command journal: {err}"
        );
    }
    let mut records = records.into_iter();
    match records.next() {
        None => return Ok(HashMap::new()),
        Some(Record::Header { version }) if version == FORMAT_VERSION => {}
        Some(Record::Header { version }) => {
            return Err(corrupt(format!(
                "unsupported command journal version {version} (this agent reads \
                 {FORMAT_VERSION})"
            )));
        }
        Some(_) => return Err(corrupt("the command journal has no header".into())),
    }
    let mut map: HashMap<String, Entry> = HashMap::new();
    for record in records {
        match record {
            Record::Header { .. } => return Err(corrupt("a second header".into())),
            Record::Accept {
                id,
                command_id,
                at_ms,
            } => {
                map.entry(id).or_insert(Entry {
                    command_id,
                    updated_at: from_unix_ms(at_ms),
                    result: None,
                    acked: false,
                });
            }
            Record::Result {
                id,
                command_id,
                at_ms,
                state,
                reason,
                exit_code,
                signal,
                seq,
                stdout_bytes,
                stderr_bytes,
            } => {
                let state = Terminal::parse(&state)
                    .ok_or_else(|| corrupt(format!("unknown state {state:?} for {id}")))?;
                map.insert(
                    id,
                    Entry {
                        command_id,
                        updated_at: from_unix_ms(at_ms),
                        result: Some(JournaledResult {
                            outcome: Outcome {
                                state,
                                reason,
                                exit_code,
                                signal,
                            },
                            seq,
                            stdout_bytes,
                            stderr_bytes,
                        }),
                        acked: false,
                    },
                );
            }
            Record::Acked { id, at_ms } => {
                if let Some(entry) = map.get_mut(&id)
                    && entry.result.is_some()
                {
                    entry.acked = true;
                    entry.updated_at = from_unix_ms(at_ms);
                }
            }
        }
    }
    Ok(map)
}

/// Drops entries older than the retention, then the oldest acknowledged ones beyond `max`.
fn prune(map: &mut HashMap<String, Entry>, max: usize, now: SystemTime) {
    let expired = |entry: &Entry| {
        now.duration_since(entry.updated_at)
            .is_ok_and(|age| age > JOURNAL_RETENTION)
    };
    let n_unacked_expired = map
        .values()
        .filter(|entry| !entry.acked && expired(entry))
        .count();
    if n_unacked_expired > 0 {
        warn!(
            n_invocations = n_unacked_expired,
            "forgetting journaled invocations whose end the server never acknowledged"
        );
    }
    map.retain(|_, entry| !expired(entry));
    if map.len() <= max {
        return;
    }
    let mut acked: Vec<(SystemTime, String)> = map
        .iter()
        .filter(|(_, entry)| entry.acked)
        .map(|(id, entry)| (entry.updated_at, id.clone()))
        .collect();
    acked.sort();
    let excess = map.len() - max;
    for (_, id) in acked.into_iter().take(excess) {
        map.remove(&id);
    }
}

fn encode_entry(buf: &mut Vec<u8>, id: &str, entry: &Entry) {
    let at_ms = unix_ms(entry.updated_at);
    match &entry.result {
        None => encode(
            buf,
            &Record::Accept {
                id: id.to_owned(),
                command_id: entry.command_id.clone(),
                at_ms,
            },
        ),
        Some(result) => {
            encode(buf, &Record::result(id, &entry.command_id, at_ms, result));
            if entry.acked {
                encode(
                    buf,
                    &Record::Acked {
                        id: id.to_owned(),
                        at_ms,
                    },
                );
            }
        }
    }
}

fn encode_acks(buf: &mut Vec<u8>, ids: &[String]) {
    let at_ms = unix_ms(SystemTime::now());
    for id in ids {
        encode(
            buf,
            &Record::Acked {
                id: id.clone(),
                at_ms,
            },
        );
    }
}

fn encode(buf: &mut Vec<u8>, record: &Record) {
    // Serializing a plain struct of strings and integers into a Vec cannot fail.
    serde_json::to_writer(&mut *buf, record).expect("journal records always serialize");
    buf.push(b'\n');
}

fn private_file(options: &mut OpenOptions, path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    options.mode(0o600).open(path)
}

fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map(|since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn from_unix_ms(ms: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every change under these locks is one assignment or insert: a poisoned lock still holds
    // consistent data.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests;
