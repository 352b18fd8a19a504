//! Numbered updates not yet acknowledged by the server, in the order they were made.
//!
//! Every update gets an outbox index (1, 2, 3, … for the life of the agent process) when it is
//! numbered. A session remembers the highest index it has written ("sent through"), so a new
//! session re-sends everything still here, in order, exactly as the sample buffer does for
//! metrics. Updates leave only when acked (`CommandAck`, or `Welcome.invocation_acks`).
//!
//! Invariant: the updates of one invocation are in increasing seq order here, so any report cut
//! from the outbox carries them in order.

use std::collections::BTreeMap;

use crate::command::types::Update;

/// Most bytes (estimated, encoded) of one `CommandReport`: far below the server's 1 MiB message
/// limit, so several full output chunks still fit.
pub const MAX_REPORT_BYTES: usize = 256 << 10;
/// Most updates in one `CommandReport`.
pub const MAX_UPDATES_PER_REPORT: usize = tether_proto::command::MAX_UPDATES_PER_REPORT;

/// The unacknowledged updates of every invocation.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    updates: BTreeMap<u64, Update>,
    /// Index of the most recent update (0: none yet).
    last_index: u64,
}

/// Updates cut from the outbox for one report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Report {
    pub(crate) updates: Vec<Update>,
    /// Outbox index of the last update in `updates`.
    pub(crate) last_index: u64,
    /// Whether more updates after `last_index` wait (the report hit its size cap).
    pub(crate) more: bool,
}

// === impl Outbox ===

impl Outbox {
    /// Adds a numbered update; returns its index.
    pub(crate) fn push(&mut self, update: Update) -> u64 {
        self.last_index += 1;
        self.updates.insert(self.last_index, update);
        self.last_index
    }

    /// Forgets the update at `index` (acked). Returns it.
    pub(crate) fn remove(&mut self, index: u64) -> Option<Update> {
        self.updates.remove(&index)
    }

    /// Clones the updates after `index`, oldest first, up to [`MAX_REPORT_BYTES`] (at least
    /// one) and [`MAX_UPDATES_PER_REPORT`]. `None` when nothing waits.
    pub(crate) fn report_after(&self, index: u64) -> Option<Report> {
        let mut updates = Vec::new();
        let mut bytes = 0;
        let mut last_index = index;
        let mut more = false;
        for (&update_index, update) in self.updates.range(index + 1..) {
            let size = update.encoded_size_estimate();
            if !updates.is_empty()
                && (bytes + size > MAX_REPORT_BYTES || updates.len() == MAX_UPDATES_PER_REPORT)
            {
                more = true;
                break;
            }
            bytes += size;
            updates.push(update.clone());
            last_index = update_index;
        }
        (!updates.is_empty()).then_some(Report {
            updates,
            last_index,
            more,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::command::types::{OutputChunk, OutputStream, Step};

    fn update(id: &str, seq: u64, n_bytes: usize) -> Update {
        Update {
            invocation_id: id.to_owned(),
            seq,
            step: Step::Output,
            output: vec![OutputChunk {
                stream: OutputStream::Stdout,
                offset: 0,
                data: vec![b'x'; n_bytes],
            }],
            time: SystemTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn reports_resume_after_the_last_index_sent() {
        let mut outbox = Outbox::default();
        let first = outbox.push(update("a", 1, 10));
        let second = outbox.push(update("b", 1, 10));
        let report = outbox.report_after(0).expect("two updates");
        assert_eq!(report.updates.len(), 2);
        assert_eq!(report.last_index, second);
        assert!(!report.more);
        assert_eq!(outbox.report_after(second), None);
        // A new session starts from 0 again and gets what is not acked.
        outbox.remove(first);
        let again = outbox.report_after(0).expect("one left");
        assert_eq!(again.updates, [update("b", 1, 10)]);
    }

    #[test]
    fn reports_are_capped_in_bytes_but_never_empty() {
        let mut outbox = Outbox::default();
        for seq in 1..=6 {
            outbox.push(update("a", seq, 64 << 10));
        }
        let report = outbox.report_after(0).expect("updates");
        assert_eq!(report.updates.len(), 3);
        assert!(report.more);
        let total: usize = report
            .updates
            .iter()
            .map(Update::encoded_size_estimate)
            .sum();
        assert!(total <= MAX_REPORT_BYTES);
        // One update above the cap still goes out, alone.
        let mut big = Outbox::default();
        big.push(update("b", 1, MAX_REPORT_BYTES + 1));
        assert_eq!(big.report_after(0).expect("one").updates.len(), 1);
    }
}
