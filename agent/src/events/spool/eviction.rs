//! What leaves the spool: segments the server has acknowledged, and, when an event does not
//! fit, the oldest segment of the lowest severity not above it; and how drops are counted and
//! reported (`tether.events_dropped`).
//!
//! **Invariants:** `spool.meta` is written before any segment is deleted, so a seq is never
//! reused; every unacknowledged event that is dropped is counted by severity and reported
//! (never silent loss), and the counts of a drop report that is itself dropped carry over to
//! the next one.

use std::collections::VecDeque;
use std::fs::{self, File};
use std::io;

use super::{DROPPED_KIND, Segment, Spool, SpoolError};
use crate::events::record;
use crate::events::types::{Event, Severity};

impl Spool {
    /// The queue to drop from to fit an event of `severity`: the lowest severity holding
    /// segments, if it is not above `severity`.
    pub(super) fn victim(&self, severity: Severity) -> Option<usize> {
        (0..=severity.index()).find(|&idx| !self.queues[idx].is_empty())
    }

    /// Deletes the oldest segment of queue `queue_idx`, counting its unacknowledged events.
    /// A drop report among them is not itself counted: its counts carry over to the next
    /// report, so no count is lost however often reports are dropped.
    pub(super) fn drop_oldest(&mut self, queue_idx: usize) -> Result<(), SpoolError> {
        let segment = self.queues[queue_idx]
            .front()
            .cloned()
            .expect("victims hold segments");
        let path = self.segment_path(queue_idx, segment.first_seq);
        let mut n_read = 0;
        let mut n_lost = 0;
        let mut carried = [0; 4];
        if let Ok(file) = File::open(&path) {
            let mut offset = 0;
            while let Ok(Some((event, next))) = record::read_at(&file, offset, segment.bytes) {
                offset = next;
                n_read += 1;
                if event.seq <= self.acked_through {
                    continue;
                }
                match dropped_counts(&event.event) {
                    Some(counts) => add(&mut carried, &counts),
                    None => n_lost += 1,
                }
            }
        }
        // Records that could not be read count as lost events of this severity.
        n_lost += segment.n_events.saturating_sub(n_read);
        self.count_drop(Severity::ALL[queue_idx], n_lost);
        add(&mut self.unreported, &carried);
        self.delete_front(queue_idx)
    }

    pub(super) fn count_drop(&mut self, severity: Severity, n: u64) {
        self.unreported[severity.index()] += n;
        self.dropped[severity.index()] += n;
    }

    /// Deletes every segment whose events the server has all acknowledged (the newest of a
    /// queue only once it is full: new events would otherwise create a file each).
    pub(super) fn collect_acked(&mut self) -> Result<(), SpoolError> {
        let acked = |queue: &VecDeque<Segment>, segment_bytes: u64, acked_through: u64| {
            queue.front().is_some_and(|segment| {
                segment.last_seq <= acked_through
                    && (queue.len() > 1 || segment.bytes * 2 >= segment_bytes)
            })
        };
        for queue_idx in 0..4 {
            while acked(
                &self.queues[queue_idx],
                self.segment_bytes,
                self.acked_through,
            ) {
                self.delete_front(queue_idx)?;
            }
        }
        Ok(())
    }

    /// Deletes the oldest segment of a queue, recording the spool's state first.
    fn delete_front(&mut self, queue_idx: usize) -> Result<(), SpoolError> {
        self.persist_meta()?;
        let segment = self.queues[queue_idx]
            .pop_front()
            .expect("callers check the queue");
        if self.queues[queue_idx].is_empty() {
            self.writers[queue_idx] = None;
        }
        if self.cursors[queue_idx].is_some_and(|cursor| cursor.segment == segment.first_seq) {
            self.cursors[queue_idx] = None;
        }
        self.bytes -= segment.bytes;
        let path = self.segment_path(queue_idx, segment.first_seq);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(source) if source.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(SpoolError { path, source }),
        }
    }
}

pub(super) fn add(into: &mut [u64; 4], counts: &[u64; 4]) {
    for (total, n) in into.iter_mut().zip(counts) {
        *total += n;
    }
}

/// The counts a `tether.events_dropped` event carries, if `event` is one.
fn dropped_counts(event: &Event) -> Option<[u64; 4]> {
    if event.kind != DROPPED_KIND {
        return None;
    }
    let mut counts = [0; 4];
    for severity in Severity::ALL {
        let key = format!("dropped_{}", severity.as_str());
        counts[severity.index()] = event.attributes.get(&key)?.parse().ok()?;
    }
    Some(counts)
}

/// The `tether.events_dropped` event for `counts` (by severity): at least a warning, and as
/// severe as the worst event it stands for.
pub(super) fn drop_report(counts: &[u64; 4], capacity: u64) -> Event {
    let total: u64 = counts.iter().sum();
    let worst = Severity::ALL
        .into_iter()
        .rev()
        .find(|severity| counts[severity.index()] > 0)
        .unwrap_or(Severity::Warning)
        .max(Severity::Warning);
    let breakdown = Severity::ALL
        .into_iter()
        .map(|severity| format!("{} {}", severity.as_str(), counts[severity.index()]))
        .collect::<Vec<_>>()
        .join(", ");
    let mut event = Event::now(
        DROPPED_KIND,
        worst,
        format!(
            "the event spool ({capacity} bytes) was full: dropped {total} unsent events, the \
             lowest severities first ({breakdown})"
        ),
    )
    .with("dropped", total)
    .with("spool_bytes", capacity);
    for severity in Severity::ALL {
        event = event.with(
            format!("dropped_{}", severity.as_str()),
            counts[severity.index()],
        );
    }
    event
}
