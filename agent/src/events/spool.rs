//! The event spool: events on disk, in the state directory, from the moment a source reports
//! them until the server acknowledges them durable. It survives agent restarts and crashes.
//!
//! Layout: `events/` in the state directory (mode 0700) holds one queue of segment files per
//! severity, `{severity}-{first seq:020}.seg` (records: `record.rs`), and `spool.meta`, written
//! atomically, with the highest seq the server settled, the highest seq ever assigned (so a
//! seq is never reused, even after every segment was deleted) and the drops not yet reported.
//!
//! **Invariants:**
//! - An event is appended and fsync'd before its seq is handed out; seqs only grow.
//! - The spool never holds more than its capacity. Room is made by deleting, in this order,
//!   segments the server has fully acknowledged, then the oldest segment of the lowest severity
//!   not above the new event's; if only higher severities are left, the new event itself is
//!   dropped. Every drop is counted by severity and reported as one `tether.events_dropped`
//!   event appended right after (never silent loss).
//! - An event leaves the spool only after an ack covers its seq (at-least-once: the server
//!   deduplicates by (agent, seq)); `spool.meta` is written before any segment is deleted.
//! - Events are read back in seq order across the four queues, which is the order the server
//!   expects in a report and what makes a cumulative ack correct.
//!
//! Drops are by whole segments (at most [`MAX_SEGMENT_BYTES`], an eighth of the capacity for
//! small spools): cheap (one unlink), and the oldest events of the lowest severity go first.
//! The spool is synchronous and blocking; `events.rs` calls it from blocking threads.
//!
//! This module holds the spool's state, appending, reading back and acknowledging;
//! `layout` is its files (segment names, `spool.meta`) and `eviction` what leaves it and
//! how drops are reported.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use tracing::warn;

use self::eviction::{add, drop_report};
use self::layout::{Meta, parse_segment_name, read_meta, sync_dir};
use crate::events::record::{self, HEADER_BYTES};
use crate::events::types::{Event, SpooledEvent};

/// Default capacity of the spool.
pub const DEFAULT_SPOOL_BYTES: u64 = 64 << 20;
/// Smallest capacity accepted: four segments of the smallest size.
pub const MIN_SPOOL_BYTES: u64 = 4 * MIN_SEGMENT_BYTES;
/// Smallest segment file: room for the largest event `check` accepts, even with every byte
/// escaped in JSON.
pub const MIN_SEGMENT_BYTES: u64 = 64 << 10;
/// Largest segment file.
pub const MAX_SEGMENT_BYTES: u64 = 1 << 20;
/// The spool's directory inside the state directory.
pub const SPOOL_DIR_NAME: &str = "events";
/// Kind of the event that reports drops.
pub const DROPPED_KIND: &str = tether_proto::event::KIND_EVENTS_DROPPED;
/// A spool failure: the disk refused a write or a read.
#[derive(Debug, thiserror::Error)]
#[error("event spool {}: {source}", path.display())]
pub struct SpoolError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

/// What became of an appended event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// Stored with this seq.
    Stored(u64),
    /// The spool was full of more severe events: this one was dropped (and counted).
    Dropped,
}

/// The spool. See the module docs.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    capacity: u64,
    segment_bytes: u64,
    /// Segments per severity
    /// ([`Severity::index`](crate::events::types::Severity::index)), oldest first.
    queues: [VecDeque<Segment>; 4],
    /// Append handle of each queue's newest segment, opened lazily.
    writers: [Option<File>; 4],
    /// Where each queue's reading left off.
    cursors: [Option<Cursor>; 4],
    /// Every event with a seq at or below this is settled by the server.
    acked_through: u64,
    next_seq: u64,
    /// Bytes of all segment files.
    bytes: u64,
    /// Drops not yet reported, by severity.
    unreported: [u64; 4],
    /// Drops since this process opened the spool, by severity.
    dropped: [u64; 4],
    /// What `spool.meta` says now.
    persisted: Meta,
}

/// One segment file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Segment {
    first_seq: u64,
    last_seq: u64,
    n_events: u64,
    bytes: u64,
}

/// In segment `first_seq`, the records before `offset` all have seq at or below `after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cursor {
    segment: u64,
    offset: u64,
    after: u64,
}

// === impl Spool ===

impl Spool {
    /// Opens (or creates) the spool in `state_dir`, holding at most `capacity` bytes. Scans
    /// every segment, cutting torn tails (a crash mid-append) and deleting what the server
    /// already acknowledged.
    ///
    /// # Errors
    ///
    /// [`SpoolError`] when the directory or a segment cannot be read or repaired.
    pub fn open(state_dir: &Path, capacity: u64) -> Result<Self, SpoolError> {
        let dir = state_dir.join(SPOOL_DIR_NAME);
        let err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| SpoolError { path, source }
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(err(&dir))?;
        let meta = read_meta(&dir);
        let mut queues: [VecDeque<Segment>; 4] = Default::default();
        for entry in fs::read_dir(&dir).map_err(err(&dir))? {
            let entry = entry.map_err(err(&dir))?;
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.ends_with(".tmp") {
                fs::remove_file(&path).map_err(err(&path))?;
                continue;
            }
            let Some((severity, first_seq)) = parse_segment_name(&name) else {
                continue;
            };
            let scanned = record::scan(&path).map_err(err(&path))?;
            if scanned.good_len < scanned.file_len {
                warn!(
                    segment = %path.display(),
                    torn_bytes = scanned.file_len - scanned.good_len,
                    "event spool: dropping a torn record at the end of a segment (the agent \
                     stopped while writing it)"
                );
                OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .and_then(|file| {
                        file.set_len(scanned.good_len)?;
                        file.sync_all()
                    })
                    .map_err(err(&path))?;
            }
            if scanned.n_events == 0 {
                fs::remove_file(&path).map_err(err(&path))?;
                continue;
            }
            queues[severity.index()].push_back(Segment {
                first_seq,
                last_seq: scanned.last_seq,
                n_events: scanned.n_events,
                bytes: scanned.good_len,
            });
        }
        for queue in &mut queues {
            queue
                .make_contiguous()
                .sort_by_key(|segment| segment.first_seq);
        }
        let highest = queues
            .iter()
            .flatten()
            .map(|segment| segment.last_seq)
            .max()
            .unwrap_or(0)
            .max(meta.seq_floor)
            .max(meta.acked_through);
        let bytes = queues.iter().flatten().map(|segment| segment.bytes).sum();
        let mut spool = Self {
            segment_bytes: (capacity / 8).clamp(MIN_SEGMENT_BYTES, MAX_SEGMENT_BYTES),
            dir,
            capacity,
            queues,
            writers: Default::default(),
            cursors: [None; 4],
            acked_through: meta.acked_through,
            next_seq: highest + 1,
            bytes,
            unreported: meta.unreported,
            dropped: [0; 4],
            persisted: meta,
        };
        spool.collect_acked()?;
        Ok(spool)
    }

    /// Appends `event`, making room if needed (see the module docs), and then the report of
    /// whatever was dropped. Returns once the event is on disk.
    ///
    /// # Errors
    ///
    /// [`SpoolError`] when the disk refused the write; nothing was stored then.
    pub fn append(&mut self, event: &Event) -> Result<Appended, SpoolError> {
        let appended = self.append_one(event)?;
        if appended == Appended::Dropped {
            self.count_drop(event.severity, 1);
        }
        if self.unreported.iter().any(|&n| n > 0) {
            let counts = std::mem::take(&mut self.unreported);
            let report = drop_report(&counts, self.capacity);
            match self.append_one(&report) {
                // Drops made to fit the report are in `unreported` again, for the next one.
                Ok(Appended::Stored(_)) => {}
                // No room even for the report: keep its counts for the next append.
                Ok(Appended::Dropped) => add(&mut self.unreported, &counts),
                Err(error) => {
                    add(&mut self.unreported, &counts);
                    return Err(error);
                }
            }
        }
        Ok(appended)
    }

    /// Up to `max_events` events (and about `max_bytes`) with seq above `after` and above
    /// every acknowledged seq, in seq order.
    ///
    /// # Errors
    ///
    /// [`SpoolError`] when a segment cannot be opened. A record that has gone bad since the
    /// spool was opened ends its segment (logged) rather than stalling every later event.
    pub fn read(
        &mut self,
        after: u64,
        max_events: usize,
        max_bytes: u64,
    ) -> Result<Vec<SpooledEvent>, SpoolError> {
        let after = after.max(self.acked_through);
        let mut files: [Option<(u64, File)>; 4] = Default::default();
        let mut heads: [Option<(SpooledEvent, Cursor)>; 4] = Default::default();
        for (queue_idx, head) in heads.iter_mut().enumerate() {
            *head = self.next_in_queue(queue_idx, after, &mut files[queue_idx])?;
        }
        let mut batch = Vec::new();
        let mut batch_bytes = 0;
        while batch.len() < max_events && batch_bytes < max_bytes {
            let Some(queue_idx) = (0..4)
                .filter(|&idx| heads[idx].is_some())
                .min_by_key(|&idx| heads[idx].as_ref().map_or(u64::MAX, |(event, _)| event.seq))
            else {
                break;
            };
            let (event, cursor) = heads[queue_idx].take().expect("filtered on is_some");
            batch_bytes += approximate_size(&event.event);
            self.cursors[queue_idx] = Some(cursor);
            batch.push(event);
            heads[queue_idx] =
                self.next_in_queue(queue_idx, cursor.after, &mut files[queue_idx])?;
        }
        Ok(batch)
    }

    /// The server settled every event with seq at or below `durable_seq`. Segments it empties
    /// are deleted at the next append or read, or at [`Spool::close`].
    pub fn ack(&mut self, durable_seq: u64) {
        self.acked_through = self.acked_through.max(durable_seq);
    }

    /// Applies `Welcome.last_durable_event_seq`: an ack, and new events are numbered after it
    /// (how a spool that lost its files continues the server's sequence).
    pub fn resume_after(&mut self, last_durable_seq: u64) {
        self.ack(last_durable_seq);
        self.next_seq = self.next_seq.max(last_durable_seq.saturating_add(1));
    }

    /// Deletes what the server acknowledged and records the spool's state: a clean restart
    /// re-sends nothing already acknowledged.
    ///
    /// # Errors
    ///
    /// [`SpoolError`] when the state cannot be written.
    pub fn close(&mut self) -> Result<(), SpoolError> {
        self.collect_acked()?;
        self.persist_meta()
    }

    /// Bytes on disk.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The configured capacity.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// The seq the next event gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Highest seq the server settled.
    pub fn acked_through(&self) -> u64 {
        self.acked_through
    }

    /// Events dropped since the spool was opened, by severity
    /// ([`Severity::index`](crate::events::types::Severity::index)).
    pub fn dropped(&self) -> [u64; 4] {
        self.dropped
    }

    /// Events not yet acknowledged, counted from the segments (a partly acknowledged segment
    /// counts whole).
    pub fn pending(&self) -> u64 {
        self.queues
            .iter()
            .flatten()
            .filter(|segment| segment.last_seq > self.acked_through)
            .map(|segment| segment.n_events)
            .sum()
    }

    fn append_one(&mut self, event: &Event) -> Result<Appended, SpoolError> {
        let payload = record::payload(event);
        let len = HEADER_BYTES + payload.len() as u64;
        if len > self.segment_bytes {
            // `check` keeps events far below a segment; this only guards the invariant.
            return Ok(Appended::Dropped);
        }
        self.collect_acked()?;
        while self.bytes + len > self.capacity {
            match self.victim(event.severity) {
                Some(queue_idx) => self.drop_oldest(queue_idx)?,
                None => return Ok(Appended::Dropped),
            }
        }
        let seq = self.next_seq;
        self.write(event.severity.index(), seq, &record::record(seq, &payload))?;
        self.next_seq += 1;
        Ok(Appended::Stored(seq))
    }

    fn write(&mut self, queue_idx: usize, seq: u64, bytes: &[u8]) -> Result<(), SpoolError> {
        let len = bytes.len() as u64;
        let full = self.queues[queue_idx]
            .back()
            .is_none_or(|segment| segment.bytes + len > self.segment_bytes);
        if full {
            self.writers[queue_idx] = None;
            let path = self.segment_path(queue_idx, seq);
            let file = OpenOptions::new()
                .append(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(|source| SpoolError {
                    path: path.clone(),
                    source,
                })?;
            sync_dir(&self.dir)?;
            self.writers[queue_idx] = Some(file);
            self.queues[queue_idx].push_back(Segment {
                first_seq: seq,
                last_seq: 0,
                n_events: 0,
                bytes: 0,
            });
        }
        let segment = self.queues[queue_idx]
            .back()
            .cloned()
            .expect("a segment was just ensured");
        let path = self.segment_path(queue_idx, segment.first_seq);
        let err = |source| SpoolError {
            path: path.clone(),
            source,
        };
        if self.writers[queue_idx].is_none() {
            let file = OpenOptions::new().append(true).open(&path).map_err(err)?;
            self.writers[queue_idx] = Some(file);
        }
        let file = self.writers[queue_idx]
            .as_mut()
            .expect("the writer was just opened");
        if let Err(source) = file.write_all(bytes).and_then(|()| file.sync_data()) {
            // Leave no partial record behind for the next append to follow.
            if let Err(cut) = file.set_len(segment.bytes) {
                warn!(segment = %path.display(), "failed to cut a failed append: {cut}");
            }
            self.writers[queue_idx] = None;
            return Err(err(source));
        }
        let segment = self.queues[queue_idx]
            .back_mut()
            .expect("the segment is still there");
        segment.last_seq = seq;
        segment.n_events += 1;
        segment.bytes += len;
        self.bytes += len;
        Ok(())
    }

    /// The next event of queue `queue_idx` with seq above `after`, and the cursor after it.
    fn next_in_queue(
        &self,
        queue_idx: usize,
        after: u64,
        file: &mut Option<(u64, File)>,
    ) -> Result<Option<(SpooledEvent, Cursor)>, SpoolError> {
        let queue = &self.queues[queue_idx];
        let start = self.cursors[queue_idx]
            .filter(|cursor| {
                cursor.after <= after && queue.iter().any(|s| s.first_seq == cursor.segment)
            })
            .or_else(|| {
                queue.front().map(|segment| Cursor {
                    segment: segment.first_seq,
                    offset: 0,
                    after: 0,
                })
            });
        let Some(mut cursor) = start else {
            return Ok(None);
        };
        let mut segment_idx = queue
            .iter()
            .position(|segment| segment.first_seq == cursor.segment)
            .expect("the cursor names a segment of the queue");
        loop {
            let segment = &queue[segment_idx];
            // Skip whole segments the reader is already past.
            let read = if segment.last_seq <= after {
                Ok(None)
            } else {
                if file.as_ref().is_none_or(|(id, _)| *id != segment.first_seq) {
                    let path = self.segment_path(queue_idx, segment.first_seq);
                    let opened = File::open(&path).map_err(|source| SpoolError { path, source })?;
                    *file = Some((segment.first_seq, opened));
                }
                let (_, handle) = file.as_ref().expect("opened above");
                record::read_at(handle, cursor.offset, segment.bytes)
            };
            match read {
                Ok(Some((event, next))) => {
                    let seq = event.seq;
                    cursor.offset = next;
                    if seq > after {
                        cursor.after = seq;
                        return Ok(Some((event, cursor)));
                    }
                    cursor.after = seq;
                    continue;
                }
                Ok(None) => {}
                Err(error) => warn!(
                    segment = %self.segment_path(queue_idx, segment.first_seq).display(),
                    "event spool: skipping the rest of a segment that cannot be read: {error}"
                ),
            }
            segment_idx += 1;
            let Some(next) = queue.get(segment_idx) else {
                return Ok(None);
            };
            cursor = Cursor {
                segment: next.first_seq,
                offset: 0,
                after: cursor.after.max(segment.last_seq),
            };
        }
    }
}

/// About what `event` weighs in a report.
pub(super) fn approximate_size(event: &Event) -> u64 {
    let attributes: usize = event
        .attributes
        .iter()
        .map(|(key, value)| key.len() + value.len() + 4)
        .sum();
    (event.kind.len()
        + event.message.len()
        + attributes
        + event.fingerprint.as_ref().map_or(0, String::len)
        + 32) as u64
}

mod eviction;
mod layout;

#[cfg(test)]
#[path = "spool/tests.rs"]
mod tests;
