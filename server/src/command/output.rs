//! How much of an invocation's output is kept: the pure rule behind `dropped_bytes`.
//!
//! The command's output limit is split in two halves. The *head* keeps the first bytes that
//! arrive (of either stream), up to its half, and never loses any. The *tail* keeps the newest
//! chunks after the head, up to the other half: when a chunk arrives and the tail would grow
//! past its half, the oldest tail chunks are dropped (their stored events deleted), and a chunk
//! larger than the whole half keeps only its last bytes. So what is kept never exceeds the
//! limit, the first and the last output are always there, and a reader sees the dropped middle
//! as a jump in a stream's offsets. The tail also keeps at most [`MAX_TAIL_CHUNKS`] chunks, so
//! an agent sending many tiny chunks cannot make the server remember many of them.

use std::collections::VecDeque;

/// Most chunks one invocation's tail keeps; older ones are dropped beyond.
pub const MAX_TAIL_CHUNKS: usize = 4096;

/// One chunk kept in a tail: the cursor of its event and its size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TailChunk {
    pub cursor: u64,
    pub len: u64,
}

/// What an invocation has kept so far.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Kept {
    pub head_bytes: u64,
    pub tail_bytes: u64,
    /// The tail's chunks, oldest first.
    pub tail: VecDeque<TailChunk>,
}

/// Where one incoming chunk of `len` bytes goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    /// Its first `head` bytes join the head.
    pub head: usize,
    /// Its last `tail` bytes join the tail (what lies between head and tail is dropped).
    pub tail: usize,
    /// How many of the oldest tail chunks to drop to make room.
    pub evict: usize,
}

// === impl Kept ===

impl Kept {
    /// Where a chunk of `len` bytes goes under `limit` (the whole limit: head and tail halves).
    pub fn place(&self, limit: u64, len: usize) -> Placement {
        let head_budget = limit / 2;
        let tail_budget = limit - head_budget;
        let room =
            usize::try_from(head_budget.saturating_sub(self.head_bytes)).unwrap_or(usize::MAX);
        let head = len.min(room);
        let tail = (len - head).min(usize::try_from(tail_budget).unwrap_or(usize::MAX));
        let mut evict = 0;
        if tail > 0 {
            let mut bytes = self.tail_bytes;
            let mut chunks = self.tail.len();
            for chunk in &self.tail {
                if bytes + tail as u64 <= tail_budget && chunks < MAX_TAIL_CHUNKS {
                    break;
                }
                bytes -= chunk.len;
                chunks -= 1;
                evict += 1;
            }
        }
        Placement { head, tail, evict }
    }

    /// Applies `placement`, whose tail part (if any) was stored under `cursor`; returns the
    /// evicted chunks, whose events must be deleted.
    pub fn apply(&mut self, placement: Placement, cursor: u64) -> Vec<TailChunk> {
        self.head_bytes += placement.head as u64;
        let evicted: Vec<TailChunk> = self.tail.drain(..placement.evict).collect();
        self.tail_bytes -= evicted.iter().map(|c| c.len).sum::<u64>();
        if placement.tail > 0 {
            self.tail.push_back(TailChunk {
                cursor,
                len: placement.tail as u64,
            });
            self.tail_bytes += placement.tail as u64;
        }
        evicted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds chunks of `sizes` through the rule; returns what is kept and the bytes dropped.
    fn feed(limit: u64, sizes: &[usize]) -> (Kept, u64) {
        let mut kept = Kept::default();
        let mut written = 0u64;
        for (i, &len) in sizes.iter().enumerate() {
            written += len as u64;
            let placement = kept.place(limit, len);
            assert!(placement.head + placement.tail <= len);
            kept.apply(placement, i as u64 + 1);
            assert!(kept.head_bytes + kept.tail_bytes <= limit, "{kept:?}");
            assert_eq!(
                kept.tail_bytes,
                kept.tail.iter().map(|c| c.len).sum::<u64>()
            );
        }
        let dropped = written - kept.head_bytes - kept.tail_bytes;
        (kept, dropped)
    }

    #[test]
    fn output_within_the_limit_is_all_kept() {
        let (kept, dropped) = feed(100, &[10, 30, 10]);
        assert_eq!((kept.head_bytes, kept.tail_bytes, dropped), (50, 0, 0));
        let (kept, dropped) = feed(100, &[60, 40]);
        assert_eq!((kept.head_bytes, kept.tail_bytes, dropped), (50, 50, 0));
    }

    #[test]
    fn past_the_limit_the_head_stays_and_the_newest_tail_is_kept() {
        let (kept, dropped) = feed(100, &[30, 30, 30, 30, 30]);
        assert_eq!(kept.head_bytes, 50);
        // Tail chunks: 10 (rest of the second), 30, 30, 30: only the newest that fit in 50.
        assert_eq!(kept.tail.iter().map(|c| c.len).collect::<Vec<_>>(), [30]);
        assert_eq!(dropped, 150 - 50 - 30);
        // The newest chunk is always kept, cut to its end when it is larger than the tail.
        let (kept, _) = feed(100, &[50, 500]);
        assert_eq!(kept.tail.iter().map(|c| c.len).collect::<Vec<_>>(), [50]);
        let placement = Kept::default().place(10, 100);
        assert_eq!(
            placement,
            Placement {
                head: 5,
                tail: 5,
                evict: 0
            }
        );
    }

    #[test]
    fn many_tiny_chunks_keep_a_bounded_tail() {
        // The head (10,000 bytes) fills first; the tail's bytes would allow 10,000 chunks.
        let sizes = vec![1; 10_000 + MAX_TAIL_CHUNKS * 2 + 100];
        let (kept, dropped) = feed(20_000, &sizes);
        assert_eq!(kept.tail.len(), MAX_TAIL_CHUNKS);
        assert_eq!(
            kept.head_bytes + kept.tail_bytes + dropped,
            sizes.len() as u64
        );
        // The newest chunks are the ones kept.
        assert_eq!(kept.tail.back().map(|c| c.cursor), Some(sizes.len() as u64));
    }

    #[test]
    fn a_zero_limit_keeps_nothing() {
        let (kept, dropped) = feed(0, &[10, 10]);
        assert_eq!((kept.head_bytes, kept.tail_bytes, dropped), (0, 0, 20));
    }
}
