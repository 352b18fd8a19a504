//! Output of one stream (stdout or stderr) that is not yet in a numbered update.
//!
//! [`OutputBuffer`] keeps a bounded amount: the oldest pending bytes (the head) and the newest
//! (a tail ring). When both are full, the bytes between them are dropped; the offsets of the
//! chunks it hands out then jump, which is how the server learns that output was cut and how
//! much. Writing never waits, so a chatty process is never blocked on a full pipe because the
//! server is slow or unreachable.
//!
//! Invariant: every byte of the stream is, exactly once, either handed out by
//! [`OutputBuffer::take`] (at its true offset) or counted in [`OutputBuffer::dropped`].

use std::collections::VecDeque;

/// Pending bytes of one stream: head, then (after a possible gap) the tail ring.
#[derive(Debug)]
pub(crate) struct OutputBuffer {
    /// Stream offset of `head[0]`.
    head_offset: u64,
    head: Vec<u8>,
    head_cap: usize,
    /// The newest bytes; they end at `written`.
    tail: VecDeque<u8>,
    tail_cap: usize,
    /// Bytes written to the stream so far: the offset of the next byte.
    written: u64,
    /// Bytes dropped from the middle so far.
    dropped: u64,
}

/// Bytes handed out by [`OutputBuffer::take`], at their stream offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Taken {
    pub(crate) offset: u64,
    pub(crate) data: Vec<u8>,
}

// === impl OutputBuffer ===

impl OutputBuffer {
    /// Keeps at most `head_cap` + `tail_cap` pending bytes (each at least 1).
    pub(crate) fn new(head_cap: usize, tail_cap: usize) -> Self {
        Self {
            head_offset: 0,
            head: Vec::new(),
            head_cap: head_cap.max(1),
            tail: VecDeque::new(),
            tail_cap: tail_cap.max(1),
            written: 0,
            dropped: 0,
        }
    }

    /// Appends what the process wrote, dropping from the middle if the buffer is full.
    pub(crate) fn push(&mut self, mut data: &[u8]) {
        self.written += data.len() as u64;
        // Bytes go to the head only while nothing waits in the tail, so the order holds.
        if self.tail.is_empty() {
            let room = self.head_cap.saturating_sub(self.head.len());
            let (into_head, rest) = data.split_at(room.min(data.len()));
            self.head.extend_from_slice(into_head);
            data = rest;
        }
        if data.is_empty() {
            return;
        }
        if data.len() >= self.tail_cap {
            // The ring is replaced entirely by the newest bytes.
            let skip = data.len() - self.tail_cap;
            self.dropped += (self.tail.len() + skip) as u64;
            self.tail.clear();
            self.tail.extend(&data[skip..]);
            return;
        }
        let overflow = (self.tail.len() + data.len()).saturating_sub(self.tail_cap);
        self.tail.drain(..overflow);
        self.dropped += overflow as u64;
        self.tail.extend(data);
    }

    /// Hands out up to `max` pending bytes, oldest first: at most two pieces (the head's, then
    /// the tail's, whose offset jumps past any dropped middle).
    pub(crate) fn take(&mut self, max: usize) -> Vec<Taken> {
        let mut taken = Vec::new();
        let mut budget = max;
        if budget > 0 && !self.head.is_empty() {
            let n = budget.min(self.head.len());
            let data: Vec<u8> = self.head.drain(..n).collect();
            taken.push(Taken {
                offset: self.head_offset,
                data,
            });
            self.head_offset += n as u64;
            budget -= n;
        }
        if budget > 0 && self.head.is_empty() && !self.tail.is_empty() {
            let offset = self.written - self.tail.len() as u64;
            let n = budget.min(self.tail.len());
            let data: Vec<u8> = self.tail.drain(..n).collect();
            taken.push(Taken { offset, data });
        }
        if self.head.is_empty() {
            // Whatever comes next is contiguous with what was handed out (or dropped).
            self.head_offset = self.written - self.tail.len() as u64;
            if self.tail.is_empty() {
                self.head = Vec::new();
                self.tail = VecDeque::new();
            }
        }
        taken
    }

    /// Bytes waiting to be handed out.
    pub(crate) fn pending(&self) -> usize {
        self.head.len() + self.tail.len()
    }

    /// Bytes the process wrote to this stream.
    pub(crate) fn written(&self) -> u64 {
        self.written
    }

    /// Bytes dropped from the middle.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(buffer: &mut OutputBuffer) -> Vec<Taken> {
        buffer.take(usize::MAX)
    }

    #[test]
    fn small_output_passes_whole() {
        let mut buffer = OutputBuffer::new(8, 8);
        buffer.push(b"hello ");
        buffer.push(b"world");
        assert_eq!(
            drain(&mut buffer),
            [
                Taken {
                    offset: 0,
                    data: b"hello wo".to_vec()
                },
                Taken {
                    offset: 8,
                    data: b"rld".to_vec()
                }
            ]
        );
        assert_eq!(buffer.dropped(), 0);
        buffer.push(b"!");
        assert_eq!(
            drain(&mut buffer),
            [Taken {
                offset: 11,
                data: b"!".to_vec()
            }]
        );
    }

    #[test]
    fn the_middle_is_dropped_and_offsets_jump() {
        let mut buffer = OutputBuffer::new(4, 4);
        // 0123 go to the head; 4..=9 pass through the tail ring, which keeps 6789.
        buffer.push(b"0123456789");
        assert_eq!(buffer.pending(), 8);
        assert_eq!(buffer.dropped(), 2);
        let taken = drain(&mut buffer);
        assert_eq!(
            taken,
            [
                Taken {
                    offset: 0,
                    data: b"0123".to_vec()
                },
                Taken {
                    offset: 6,
                    data: b"6789".to_vec()
                }
            ]
        );
        // Every byte is handed out or counted as dropped.
        let handed_out: usize = taken.iter().map(|t| t.data.len()).sum();
        assert_eq!(handed_out as u64 + buffer.dropped(), buffer.written());
    }

    #[test]
    fn drops_accumulate_across_small_writes() {
        let mut buffer = OutputBuffer::new(2, 3);
        for byte in b"abcdefghij" {
            buffer.push(std::slice::from_ref(byte));
        }
        assert_eq!(buffer.dropped(), 5);
        assert_eq!(
            drain(&mut buffer),
            [
                Taken {
                    offset: 0,
                    data: b"ab".to_vec()
                },
                Taken {
                    offset: 7,
                    data: b"hij".to_vec()
                }
            ]
        );
    }

    #[test]
    fn take_respects_its_budget_and_keeps_order() {
        let mut buffer = OutputBuffer::new(4, 4);
        buffer.push(b"0123456789");
        assert_eq!(
            buffer.take(3),
            [Taken {
                offset: 0,
                data: b"012".to_vec()
            }]
        );
        // The head still holds `3`: new bytes must not jump ahead of the tail.
        buffer.push(b"AB");
        assert_eq!(
            buffer.take(3),
            [
                Taken {
                    offset: 3,
                    data: b"3".to_vec()
                },
                Taken {
                    offset: 8,
                    data: b"89".to_vec()
                }
            ]
        );
        assert_eq!(buffer.dropped(), 4);
        assert_eq!(
            drain(&mut buffer),
            [Taken {
                offset: 10,
                data: b"AB".to_vec()
            }]
        );
        // Drained: the next bytes start a new head at the right offset.
        buffer.push(b"xyz");
        assert_eq!(
            drain(&mut buffer),
            [Taken {
                offset: 12,
                data: b"xyz".to_vec()
            }]
        );
    }

    #[test]
    fn a_write_larger_than_the_ring_keeps_its_newest_bytes() {
        let mut buffer = OutputBuffer::new(2, 3);
        buffer.push(b"ab");
        buffer.push(b"cd");
        buffer.push(b"0123456789");
        assert_eq!(buffer.dropped(), 9);
        assert_eq!(
            drain(&mut buffer),
            [
                Taken {
                    offset: 0,
                    data: b"ab".to_vec()
                },
                Taken {
                    offset: 11,
                    data: b"789".to_vec()
                }
            ]
        );
    }
}
