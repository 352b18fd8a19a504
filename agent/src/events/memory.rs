//! The event queue of the fleet simulator's agents: the spool's contract (numbered events kept
//! until an ack covers them, read back in seq order) in memory, without a disk or a restart to
//! survive. A simulated agent with a file fsync'd per event would measure the disk, not the
//! server; the real agent always uses the on-disk [`super::Spool`].
//!
//! **Invariants:** seqs only grow; an event leaves the queue only when an ack covers its seq;
//! the queue holds at most its capacity, and an event that finds it full is dropped and
//! counted (never silently). A queue starts numbering at 1, so the first `Welcome` (whose
//! `last_durable_event_seq` may come from an earlier run of the same agent) renumbers what waits
//! to follow the server's sequence: nothing the server has not stored is mistaken for a
//! re-send.

use std::collections::VecDeque;

use super::spool::{Appended, approximate_size};
use super::types::{Event, SpooledEvent};

/// The queue. See the module docs.
#[derive(Debug)]
pub struct MemoryQueue {
    events: VecDeque<SpooledEvent>,
    capacity: usize,
    next_seq: u64,
    acked_through: u64,
    /// Whether a `Welcome` set the sequence yet.
    resumed: bool,
    counts: MemoryCounts,
}

/// What a [`MemoryQueue`] saw since it was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryCounts {
    /// Events appended (stored or dropped).
    pub offered: u64,
    /// Events an ack covered (stored by the server, or rejected by it).
    pub settled: u64,
    /// Events dropped because the queue was full.
    pub dropped: u64,
}

// === impl MemoryQueue ===

impl MemoryQueue {
    /// An empty queue holding at most `capacity` events.
    pub fn new(capacity: usize) -> Self {
        Self {
            events: VecDeque::new(),
            capacity,
            next_seq: 1,
            acked_through: 0,
            resumed: false,
            counts: MemoryCounts::default(),
        }
    }

    /// Numbers and keeps `event`, or drops it (counted) when the queue is full.
    pub fn append(&mut self, event: Event) -> Appended {
        self.counts.offered += 1;
        if self.events.len() >= self.capacity {
            self.counts.dropped += 1;
            return Appended::Dropped;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.events.push_back(SpooledEvent { seq, event });
        Appended::Stored(seq)
    }

    /// Up to `max_events` events (and about `max_bytes`) with seq above `after`, in seq order.
    pub fn read(&self, after: u64, max_events: usize, max_bytes: u64) -> Vec<SpooledEvent> {
        let mut batch = Vec::new();
        let mut bytes = 0;
        for event in self.events.iter().filter(|event| event.seq > after) {
            if batch.len() >= max_events || bytes >= max_bytes {
                break;
            }
            bytes += approximate_size(&event.event);
            batch.push(event.clone());
        }
        batch
    }

    /// The server settled every event with seq at or below `durable_seq`.
    pub fn ack(&mut self, durable_seq: u64) {
        self.acked_through = self.acked_through.max(durable_seq);
        while self
            .events
            .front()
            .is_some_and(|event| event.seq <= self.acked_through)
        {
            self.events.pop_front();
            self.counts.settled += 1;
        }
    }

    /// Applies `Welcome.last_durable_event_seq`. The first time, what waits is renumbered to
    /// follow it (see the module docs); after that it is an ack.
    pub fn resume_after(&mut self, last_durable_seq: u64) {
        if !self.resumed {
            self.resumed = true;
            let first = self.events.front().map_or(self.next_seq, |event| event.seq);
            if first <= last_durable_seq {
                let shift = last_durable_seq + 1 - first;
                for event in &mut self.events {
                    event.seq += shift;
                }
                self.next_seq += shift;
            }
            self.acked_through = self.acked_through.max(last_durable_seq);
            return;
        }
        self.ack(last_durable_seq);
    }

    /// Events waiting for an ack.
    pub fn pending(&self) -> u64 {
        self.events.len() as u64
    }

    pub fn counts(&self) -> MemoryCounts {
        self.counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Severity;

    fn event(n: usize) -> Event {
        Event::now("test.event", Severity::Info, format!("event {n}"))
    }

    #[test]
    fn acks_settle_in_order_and_a_full_queue_drops_the_new_event() {
        let mut queue = MemoryQueue::new(3);
        let seqs: Vec<Appended> = (0..4).map(|n| queue.append(event(n))).collect();
        assert_eq!(
            seqs,
            [
                Appended::Stored(1),
                Appended::Stored(2),
                Appended::Stored(3),
                Appended::Dropped
            ]
        );
        let read: Vec<u64> = queue.read(1, 10, u64::MAX).iter().map(|e| e.seq).collect();
        assert_eq!(read, [2, 3]);
        assert_eq!(queue.read(0, 1, u64::MAX).len(), 1);
        queue.ack(2);
        assert_eq!(queue.pending(), 1);
        assert_eq!(
            queue.counts(),
            MemoryCounts {
                offered: 4,
                settled: 2,
                dropped: 1
            }
        );
    }

    #[test]
    fn the_first_welcome_renumbers_what_waits_after_the_servers_mark() {
        let mut queue = MemoryQueue::new(10);
        queue.append(event(0));
        queue.append(event(1));
        // An earlier run of this agent reached seq 40 on the server.
        queue.resume_after(40);
        let read: Vec<u64> = queue.read(0, 10, u64::MAX).iter().map(|e| e.seq).collect();
        assert_eq!(read, [41, 42]);
        assert_eq!(queue.append(event(2)), Appended::Stored(43));
        // A later Welcome is an ack, never a renumbering.
        queue.resume_after(42);
        let read: Vec<u64> = queue.read(0, 10, u64::MAX).iter().map(|e| e.seq).collect();
        assert_eq!(read, [43]);
        assert_eq!(queue.counts().settled, 2);

        let mut fresh = MemoryQueue::new(10);
        fresh.resume_after(0);
        assert_eq!(fresh.append(event(0)), Appended::Stored(1));
    }
}
