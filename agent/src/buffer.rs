//! The bounded buffer of samples not yet acknowledged as durable by the server.
//!
//! The buffer also owns sequence numbering: [`SampleBuffer::push`] gives each sample the next
//! `seq` (1, 2, 3, … per agent). Samples leave the buffer only when the server reports them
//! durable ([`SampleBuffer::ack`], from `MetricsAck` or `Welcome.last_durable_seq`) or when the
//! buffer is full and the oldest one makes room; those drops are counted. The buffer outlives
//! sessions, which is how samples taken while disconnected are re-sent on reconnect.

use std::collections::VecDeque;

use crate::collector::Sample;

/// A sample with its sequence number.
#[derive(Debug, Clone, PartialEq)]
pub struct SeqSample {
    /// Per-agent sequence number, starting at 1.
    pub seq: u64,
    /// The measurement.
    pub sample: Sample,
}

/// Bounded FIFO of unacknowledged samples, in increasing `seq` order.
#[derive(Debug)]
pub struct SampleBuffer {
    entries: VecDeque<SeqSample>,
    capacity: usize,
    /// Sequence number the next pushed sample gets.
    next_seq: u64,
    /// Samples dropped unacknowledged because the buffer was full.
    dropped: u64,
    /// The first `seq` whose push should wake the session: 0 while it waits for samples,
    /// higher while it will come back to the buffer anyway (see [`SampleBuffer::wake_from`]).
    wake_seq: u64,
}

impl SampleBuffer {
    /// An empty buffer holding at most `capacity` samples (at least one).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            // Grow lazily: most agents never have more than a few samples in flight, and a
            // sample is ~160 bytes, so 64 pre-allocated slots would cost 10 KiB per agent
            // (a megabyte per hundred simulated agents).
            entries: VecDeque::with_capacity(capacity.min(4)),
            capacity,
            next_seq: 1,
            dropped: 0,
            wake_seq: 0,
        }
    }

    /// Sets the first `seq` whose push wakes the session ([`SampleBuffer::wakes`]): the
    /// session says, under the buffer's lock, from which sample on it needs to hear of new
    /// ones (e.g. not while a report awaits its ack, which sends what waits), so that a push
    /// cannot fall between its look at the buffer and its say.
    pub fn wake_from(&mut self, seq: u64) {
        self.wake_seq = seq;
    }

    /// Whether the push that numbered `seq` should wake the session.
    pub fn wakes(&self, seq: u64) -> bool {
        seq >= self.wake_seq
    }

    /// Numbers `sample` and appends it, dropping the oldest sample if the buffer is full.
    /// Returns the sample's `seq`.
    pub fn push(&mut self, sample: Sample) -> u64 {
        if self.entries.len() >= self.capacity {
            self.entries.pop_front();
            self.dropped += 1;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.entries.push_back(SeqSample { seq, sample });
        seq
    }

    /// Forgets every sample with `seq <= durable_seq`. Returns how many were removed.
    pub fn ack(&mut self, durable_seq: u64) -> usize {
        let n_durable = self
            .entries
            .partition_point(|entry| entry.seq <= durable_seq);
        self.entries.drain(..n_durable);
        n_durable
    }

    /// Applies a `Welcome`: forgets samples the server already holds and makes sure new samples
    /// are numbered after `last_durable_seq` (how a fresh agent process continues the sequence).
    pub fn resume_after(&mut self, last_durable_seq: u64) {
        self.ack(last_durable_seq);
        self.next_seq = self.next_seq.max(last_durable_seq.saturating_add(1));
    }

    /// Clones up to `limit` samples with `seq > after`, in order.
    pub fn after(&self, after: u64, limit: usize) -> Vec<SeqSample> {
        self.map_after(after, limit, SeqSample::clone)
    }

    /// [`SampleBuffer::after`], each sample passed through `f` instead of cloned.
    pub fn map_after<T>(&self, after: u64, limit: usize, f: impl FnMut(&SeqSample) -> T) -> Vec<T> {
        let start = self.entries.partition_point(|entry| entry.seq <= after);
        self.entries.range(start..).take(limit).map(f).collect()
    }

    /// Number of buffered samples with seq greater than `after`.
    pub fn count_after(&self, after: u64) -> usize {
        self.entries.len() - self.entries.partition_point(|entry| entry.seq <= after)
    }

    /// Number of buffered samples.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no sample is buffered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The configured capacity.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Sequence number the next pushed sample gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Samples dropped unacknowledged because the buffer was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;

    fn sample(cpu: f64) -> Sample {
        Sample {
            time: SystemTime::UNIX_EPOCH,
            cpu_percent: cpu,
            ..Sample::default()
        }
    }

    fn seqs(entries: &[SeqSample]) -> Vec<u64> {
        entries.iter().map(|entry| entry.seq).collect()
    }

    #[test]
    fn numbers_from_one() {
        let mut buffer = SampleBuffer::new(10);
        assert_eq!(buffer.push(sample(1.0)), 1);
        assert_eq!(buffer.push(sample(2.0)), 2);
        assert_eq!(buffer.len(), 2);
        assert_eq!(buffer.next_seq(), 3);
    }

    #[test]
    fn drops_oldest_when_full_and_counts() {
        let mut buffer = SampleBuffer::new(3);
        for i in 0..5 {
            buffer.push(sample(f64::from(i)));
        }
        assert_eq!(buffer.len(), 3);
        assert_eq!(buffer.dropped(), 2);
        assert_eq!(seqs(&buffer.after(0, usize::MAX)), vec![3, 4, 5]);
    }

    #[test]
    fn ack_removes_durable_prefix() {
        let mut buffer = SampleBuffer::new(10);
        for i in 0..5 {
            buffer.push(sample(f64::from(i)));
        }
        assert_eq!(buffer.ack(3), 3);
        assert_eq!(seqs(&buffer.after(0, usize::MAX)), vec![4, 5]);
        // Stale or repeated acks are harmless.
        assert_eq!(buffer.ack(2), 0);
        assert_eq!(buffer.ack(100), 2);
        assert!(buffer.is_empty());
        assert_eq!(buffer.dropped(), 0);
    }

    #[test]
    fn after_respects_cursor_and_limit() {
        let mut buffer = SampleBuffer::new(10);
        for i in 0..6 {
            buffer.push(sample(f64::from(i)));
        }
        assert_eq!(seqs(&buffer.after(2, 2)), vec![3, 4]);
        assert_eq!(seqs(&buffer.after(4, 10)), vec![5, 6]);
        assert!(buffer.after(6, 10).is_empty());
        assert_eq!(
            [0, 2, 4, 6, 7].map(|after| buffer.count_after(after)),
            [6, 4, 2, 0, 0]
        );
    }

    #[test]
    fn resume_continues_server_sequence() {
        // A fresh process: nothing buffered, the server already holds 41 samples.
        let mut buffer = SampleBuffer::new(10);
        buffer.resume_after(41);
        assert_eq!(buffer.push(sample(0.0)), 42);

        // A reconnect: the server holds up to 43; 44 and 45 must be re-sent, numbering goes on.
        buffer.push(sample(0.0));
        buffer.push(sample(0.0));
        buffer.push(sample(0.0));
        buffer.resume_after(43);
        assert_eq!(seqs(&buffer.after(0, usize::MAX)), vec![44, 45]);
        assert_eq!(buffer.push(sample(0.0)), 46);
    }

    #[test]
    fn zero_capacity_is_clamped() {
        let mut buffer = SampleBuffer::new(0);
        buffer.push(sample(0.0));
        buffer.push(sample(0.0));
        assert_eq!(buffer.capacity(), 1);
        assert_eq!(buffer.len(), 1);
        assert_eq!(buffer.dropped(), 1);
    }
}
