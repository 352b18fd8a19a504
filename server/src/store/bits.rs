//! Bit- and byte-level primitives shared by the time-series codecs (`chunk`, `rollup`, `wal`).
//!
//! Two encodings live here, both pure and allocation-free apart from the output buffer:
//!
//! - A **bit stream**: [`BitWriter`] appends bits most-significant-bit first (the first bit
//!   written is bit 7 of byte 0) and keeps every bit written so far in its byte buffer, the
//!   unused low bits of the last byte being zero. So the buffer can be read back at any moment
//!   without a flush or a copy, which is what lets readers decode an open chunk in place.
//!   [`BitReader`] reads the same order and never reads past the bits it was given.
//! - **Bytes**: unsigned LEB128 varints (7 bits per byte, least significant group first, high
//!   bit set on every byte but the last) for `u64` and `u128`, read by [`ByteReader`].
//!
//! Signed integers become unsigned by zigzag ([`zigzag`]: 0, -1, 1, -2, … ↦ 0, 1, 2, 3, …), so
//! small magnitudes of either sign stay short.
//!
//! Invariant: no decode function here panics or allocates on its input; every malformed or
//! short input is a [`DecodeError`].

/// Why stored bytes could not be decoded. Shared by every codec of the time-series store so a
/// caller can tell damage (`Truncated`, `Corrupt`, `Checksum`) from a newer format (`Version`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The input ended before the named item was complete.
    #[error("input ends inside {0}")]
    Truncated(&'static str),
    /// The input names a format version this build does not read.
    #[error("format version {found} is not supported (this build reads {expected})")]
    Version { found: u8, expected: u8 },
    /// The input is well-formed enough to parse but says something impossible.
    #[error("corrupt {0}")]
    Corrupt(&'static str),
    /// The stored checksum does not match the bytes.
    #[error("checksum mismatch")]
    Checksum,
}

/// `n` zigzagged: 0, -1, 1, -2, … ↦ 0, 1, 2, 3, ….
pub fn zigzag(n: i64) -> u64 {
    ((n << 1) ^ (n >> 63)) as u64
}

/// The inverse of [`zigzag`].
pub fn unzigzag(u: u64) -> i64 {
    ((u >> 1) as i64) ^ -((u & 1) as i64)
}

/// [`zigzag`] for `i128`.
pub fn zigzag128(n: i128) -> u128 {
    ((n << 1) ^ (n >> 127)) as u128
}

/// The inverse of [`zigzag128`].
pub fn unzigzag128(u: u128) -> i128 {
    ((u >> 1) as i128) ^ -((u & 1) as i128)
}

/// Number of significant bits of `u` (0 for 0).
pub fn bit_width(u: u64) -> u32 {
    u64::BITS - u.leading_zeros()
}

// === Bit stream ===

/// Appends bits, most significant first, to a byte buffer that always holds every bit written.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BitWriter {
    buf: Vec<u8>,
    /// Unused low bits of the last byte of `buf` (0 when `buf` is empty or its last byte is full).
    free: u32,
}

impl BitWriter {
    /// An empty writer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends the low `n` bits of `value`, most significant first. `n` is at most 64.
    pub fn write_bits(&mut self, value: u64, mut n: u32) {
        debug_assert!(n <= 64, "at most 64 bits at a time");
        while n > 0 {
            if self.free == 0 {
                self.buf.push(0);
                self.free = 8;
            }
            let take = n.min(self.free);
            let chunk = ((value >> (n - take)) & ((1u64 << take) - 1)) as u8;
            if let Some(last) = self.buf.last_mut() {
                *last |= chunk << (self.free - take);
            }
            self.free -= take;
            n -= take;
        }
    }

    /// Appends one bit.
    pub fn write_bit(&mut self, bit: bool) {
        self.write_bits(u64::from(bit), 1);
    }

    /// Appends `n` with the Elias gamma code of `n + 1`: `k` zero bits, then `n + 1` in `k + 1`
    /// bits, where `k + 1` is the bit width of `n + 1`. 0 costs one bit, 1–2 three, 3–6 five.
    /// `n` must be below `u64::MAX`; callers pass counts, indexes and lengths that fit `u32`.
    pub fn write_gamma(&mut self, n: u64) {
        let v = n.saturating_add(1);
        let width = bit_width(v);
        self.write_bits(0, width - 1);
        self.write_bits(v, width);
    }

    /// Every bit written so far; the unused low bits of the last byte are zero.
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Number of bits written so far.
    pub fn bit_len(&self) -> u64 {
        self.buf.len() as u64 * 8 - u64::from(self.free)
    }

    /// Bytes the buffer has allocated (at least [`bytes`](Self::bytes)' length).
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// The buffer, zero-padded to a whole byte.
    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }
}

/// Reads a bit stream written by [`BitWriter`].
///
/// The bits ahead of the position are held in a 64-bit word, refilled from `bytes` when a
/// peek needs more than it has: consecutive small reads then shift a register instead of
/// loading from memory at a position that each read must first compute (a chunk's decode is
/// one such chain of reads).
#[derive(Clone, Debug)]
pub struct BitReader<'a> {
    bytes: &'a [u8],
    /// Next bit to read, counted from bit 7 of byte 0.
    pos: u64,
    /// The bits from `pos` on, the next one highest; only the top `ahead` are loaded (bits
    /// past the end of `bytes` load as zeros).
    word: u64,
    ahead: u32,
}

/// Most bits [`BitReader::peek_bits`] returns: a refill loads 8 bytes, of which at most 7
/// bits were already read.
pub const MAX_PEEK_BITS: u32 = 57;

impl<'a> BitReader<'a> {
    /// A reader of every bit of `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        Self {
            bytes,
            pos: 0,
            word: 0,
            ahead: 0,
        }
    }

    /// Bits left to read.
    pub fn remaining(&self) -> u64 {
        (self.bytes.len() as u64 * 8).saturating_sub(self.pos)
    }

    /// Reads `n` bits (at most 64) as the low bits of the result.
    ///
    /// # Errors
    ///
    /// [`DecodeError::Truncated`] naming `what` if fewer than `n` bits are left; the reader
    /// does not move then.
    pub fn read_bits(&mut self, n: u32, what: &'static str) -> Result<u64, DecodeError> {
        debug_assert!(n <= 64, "at most 64 bits at a time");
        if u64::from(n) > self.remaining() {
            return Err(DecodeError::Truncated(what));
        }
        if n == 0 {
            return Ok(0);
        }
        if n <= MAX_PEEK_BITS {
            let value = self.peek_bits(n);
            self.skip(n, what)?;
            return Ok(value);
        }
        let high = self.peek_bits(n - 32);
        self.skip(n - 32, what)?;
        let low = self.peek_bits(32);
        self.skip(32, what)?;
        Ok((high << 32) | low)
    }

    /// The next `n` bits (1 to [`MAX_PEEK_BITS`]) as the low bits of the result, without
    /// moving; bits past the end read as zeros ([`BitReader::skip`] checks that they were
    /// there before a caller trusts them).
    #[inline(always)]
    pub fn peek_bits(&mut self, n: u32) -> u64 {
        debug_assert!((1..=MAX_PEEK_BITS).contains(&n), "1 to 57 bits at a time");
        if self.ahead < n {
            self.refill();
        }
        self.word >> (64 - n)
    }

    /// Loads the 8 bytes from the current one (zeros past the end) and drops the bits of it
    /// already read: at least 57 bits ahead.
    #[inline(always)]
    fn refill(&mut self) {
        let first = (self.pos / 8) as usize;
        let rest = self.bytes.get(first..).unwrap_or_default();
        let word = match rest.first_chunk::<8>() {
            Some(bytes) => u64::from_be_bytes(*bytes),
            None => {
                let mut bytes = [0u8; 8];
                bytes[..rest.len()].copy_from_slice(rest);
                u64::from_be_bytes(bytes)
            }
        };
        let used = (self.pos % 8) as u32;
        self.word = word << used;
        self.ahead = 64 - used;
    }

    /// Moves past `n` bits, as [`BitReader::read_bits`] would.
    ///
    /// # Errors
    ///
    /// [`DecodeError::Truncated`] naming `what` if fewer than `n` bits are left; the reader
    /// does not move then.
    #[inline(always)]
    pub fn skip(&mut self, n: u32, what: &'static str) -> Result<(), DecodeError> {
        if u64::from(n) > self.remaining() {
            return Err(DecodeError::Truncated(what));
        }
        self.pos += u64::from(n);
        if n < self.ahead {
            self.word <<= n;
            self.ahead -= n;
        } else {
            self.ahead = 0;
        }
        Ok(())
    }

    /// Reads one bit.
    ///
    /// # Errors
    ///
    /// [`DecodeError::Truncated`] naming `what` at the end of the input.
    pub fn read_bit(&mut self, what: &'static str) -> Result<bool, DecodeError> {
        let bit = self.peek_bits(1);
        self.skip(1, what)?;
        Ok(bit == 1)
    }

    /// Reads a value written by [`BitWriter::write_gamma`].
    ///
    /// # Errors
    ///
    /// `Truncated` at the end of the input; `Corrupt` for a code wider than 64 bits.
    pub fn read_gamma(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        let mut zeros = 0u32;
        while !self.read_bit(what)? {
            zeros += 1;
            if zeros > 63 {
                return Err(DecodeError::Corrupt(what));
            }
        }
        let rest = self.read_bits(zeros, what)?;
        // `zeros` is at most 63, so the leading one fits and `v` is at least 1.
        let v = (1u64 << zeros) | rest;
        Ok(v - 1)
    }

    /// Checks that nothing but the zero padding of the last byte is left.
    ///
    /// # Errors
    ///
    /// `Corrupt` naming `what` if a whole byte or a set bit remains.
    pub fn expect_end(&mut self, what: &'static str) -> Result<(), DecodeError> {
        let left = self.remaining();
        if left >= 8 || self.read_bits(left as u32, what)? != 0 {
            return Err(DecodeError::Corrupt(what));
        }
        Ok(())
    }
}

// === Bytes ===

/// Appends `value` as an unsigned LEB128 varint (1–10 bytes).
pub fn put_uvarint(out: &mut Vec<u8>, value: u64) {
    put_uvarint128(out, u128::from(value));
}

/// Appends `value` as an unsigned LEB128 varint (1–19 bytes).
pub fn put_uvarint128(out: &mut Vec<u8>, mut value: u128) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Appends `bytes` after their length as a varint.
pub fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_uvarint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Reads the byte encodings above from a slice, front to back.
#[derive(Clone, Debug)]
pub struct ByteReader<'a> {
    bytes: &'a [u8],
}

impl<'a> ByteReader<'a> {
    /// A reader of `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    /// Whether every byte has been read.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The bytes not read yet.
    pub fn rest(&self) -> &'a [u8] {
        self.bytes
    }

    /// Reads one byte.
    ///
    /// # Errors
    ///
    /// `Truncated` naming `what` at the end of the input.
    pub fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        let (&first, rest) = self
            .bytes
            .split_first()
            .ok_or(DecodeError::Truncated(what))?;
        self.bytes = rest;
        Ok(first)
    }

    /// Reads `n` bytes.
    ///
    /// # Errors
    ///
    /// `Truncated` naming `what` if fewer than `n` are left.
    pub fn take(&mut self, n: u64, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let n = usize::try_from(n).map_err(|_| DecodeError::Truncated(what))?;
        if n > self.bytes.len() {
            return Err(DecodeError::Truncated(what));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    /// Reads a varint written by [`put_uvarint`].
    ///
    /// # Errors
    ///
    /// `Truncated` if the input ends inside it; `Corrupt` if it does not fit a `u64`.
    pub fn uvarint(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        u64::try_from(self.uvarint128(what)?).map_err(|_| DecodeError::Corrupt(what))
    }

    /// Reads a varint written by [`put_uvarint128`].
    ///
    /// # Errors
    ///
    /// `Truncated` if the input ends inside it; `Corrupt` if it does not fit a `u128`.
    pub fn uvarint128(&mut self, what: &'static str) -> Result<u128, DecodeError> {
        let mut value = 0u128;
        let mut shift = 0u32;
        loop {
            let byte = self.u8(what)?;
            let group = u128::from(byte & 0x7f);
            if shift >= 128 || (shift > 0 && group >> (128 - shift) != 0) {
                return Err(DecodeError::Corrupt(what));
            }
            value |= group << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
            shift += 7;
        }
    }

    /// Reads bytes written by [`put_bytes`].
    ///
    /// # Errors
    ///
    /// `Truncated` if fewer bytes are left than the length says.
    pub fn bytes(&mut self, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let len = self.uvarint(what)?;
        self.take(len, what)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn zigzag_orders_small_magnitudes_first() {
        let order: Vec<u64> = [0, -1, 1, -2, 2].into_iter().map(zigzag).collect();
        assert_eq!(order, [0, 1, 2, 3, 4]);
        assert_eq!(zigzag(i64::MIN), u64::MAX);
        assert_eq!(zigzag(i64::MAX), u64::MAX - 1);
        assert_eq!(zigzag128(i128::MIN), u128::MAX);
    }

    #[test]
    fn a_written_stream_is_readable_before_it_is_finished() {
        let mut w = BitWriter::new();
        w.write_bits(0b101, 3);
        assert_eq!(w.bytes(), [0b1010_0000]);
        assert_eq!(w.bit_len(), 3);
        w.write_bits(u64::MAX, 64);
        w.write_bit(false);
        assert_eq!(w.bit_len(), 68);
        let mut r = BitReader::new(w.bytes());
        assert_eq!(r.read_bits(3, "t").expect("3 bits"), 0b101);
        assert_eq!(r.read_bits(64, "t").expect("64 bits"), u64::MAX);
        assert!(!r.read_bit("t").expect("1 bit"));
        r.expect_end("t").expect("only padding left");
    }

    #[test]
    fn reading_past_the_end_is_truncated_and_does_not_move() {
        let mut r = BitReader::new(&[0xff]);
        assert_eq!(r.read_bits(9, "x"), Err(DecodeError::Truncated("x")));
        assert_eq!(r.read_bits(8, "x"), Ok(0xff));
        assert_eq!(r.read_bit("x"), Err(DecodeError::Truncated("x")));
    }

    #[test]
    fn gamma_costs_grow_with_the_value() {
        for (n, bits) in [(0u64, 1u64), (1, 3), (2, 3), (3, 5), (6, 5), (7, 7)] {
            let mut w = BitWriter::new();
            w.write_gamma(n);
            assert_eq!(w.bit_len(), bits, "gamma({n})");
        }
    }

    #[test]
    fn a_gamma_code_of_only_zeros_is_corrupt_or_truncated() {
        assert!(BitReader::new(&[0u8; 16]).read_gamma("g").is_err());
        assert_eq!(
            BitReader::new(&[0u8; 2]).read_gamma("g"),
            Err(DecodeError::Truncated("g"))
        );
    }

    #[test]
    fn padding_with_a_set_bit_or_a_whole_byte_is_corrupt() {
        let mut r = BitReader::new(&[0b1000_0001]);
        r.read_bit("p").expect("one bit");
        assert_eq!(r.expect_end("p"), Err(DecodeError::Corrupt("p")));
        let mut r = BitReader::new(&[0, 0]);
        assert_eq!(r.expect_end("p"), Err(DecodeError::Corrupt("p")));
    }

    #[test]
    fn overlong_varints_are_corrupt_not_wrapped() {
        let mut too_big = vec![0xff; 10];
        too_big.push(0x01);
        assert_eq!(
            ByteReader::new(&too_big).uvarint("v"),
            Err(DecodeError::Corrupt("v"))
        );
        assert_eq!(
            ByteReader::new(&[0x80, 0x80]).uvarint("v"),
            Err(DecodeError::Truncated("v"))
        );
        assert!(ByteReader::new(&[0xff; 40]).uvarint128("v").is_err());
    }

    proptest! {
        #[test]
        fn zigzag_round_trips(n: i64, m: i128) {
            prop_assert_eq!(unzigzag(zigzag(n)), n);
            prop_assert_eq!(unzigzag128(zigzag128(m)), m);
        }

        #[test]
        fn bit_fields_round_trip(fields in prop::collection::vec((any::<u64>(), 0u32..=64), 0..40)) {
            let mut w = BitWriter::new();
            for &(v, n) in &fields {
                w.write_bits(v, n);
                w.write_gamma(u64::from(n));
            }
            let total: u64 = fields.iter().map(|&(_, n)| u64::from(n)).sum();
            prop_assert!(w.bit_len() >= total);
            let mut r = BitReader::new(w.bytes());
            for &(v, n) in &fields {
                let mask = if n == 64 { u64::MAX } else { (1u64 << n) - 1 };
                prop_assert_eq!(r.read_bits(n, "f")?, v & mask);
                prop_assert_eq!(r.read_gamma("g")?, u64::from(n));
            }
            prop_assert!(r.expect_end("end").is_ok());
        }

        #[test]
        fn peeks_see_what_reads_return_and_skips_move_alike(
            fields in prop::collection::vec((any::<u64>(), 1u32..=MAX_PEEK_BITS), 0..60),
        ) {
            let mut w = BitWriter::new();
            for &(v, n) in &fields {
                w.write_bits(v, n);
            }
            let mut peeked = BitReader::new(w.bytes());
            let mut read = BitReader::new(w.bytes());
            for (i, &(v, n)) in fields.iter().enumerate() {
                let mask = (1u64 << n) - 1;
                // Every other field peeked twice, wider first: a peek never moves the reader.
                if i % 2 == 0 {
                    let wide = peeked.peek_bits(MAX_PEEK_BITS);
                    prop_assert_eq!(wide >> (MAX_PEEK_BITS - n), v & mask);
                }
                prop_assert_eq!(peeked.peek_bits(n), v & mask);
                peeked.skip(n, "f")?;
                prop_assert_eq!(read.read_bits(n, "f")?, v & mask);
                prop_assert_eq!(peeked.remaining(), read.remaining());
            }
            let left = u32::try_from(peeked.remaining()).expect("under a byte");
            prop_assert_eq!(peeked.skip(left + 1, "end"), Err(DecodeError::Truncated("end")));
            prop_assert!(peeked.expect_end("end").is_ok());
        }

        #[test]
        fn varints_round_trip(a: u64, b: u128, raw in prop::collection::vec(any::<u8>(), 0..20)) {
            let mut out = Vec::new();
            put_uvarint(&mut out, a);
            put_uvarint128(&mut out, b);
            put_bytes(&mut out, &raw);
            let mut r = ByteReader::new(&out);
            prop_assert_eq!(r.uvarint("a")?, a);
            prop_assert_eq!(r.uvarint128("b")?, b);
            prop_assert_eq!(r.bytes("raw")?, &raw[..]);
            prop_assert!(r.is_empty());
        }

        #[test]
        fn random_bytes_never_panic_the_readers(raw in prop::collection::vec(any::<u8>(), 0..64)) {
            let mut bits = BitReader::new(&raw);
            while bits.read_gamma("g").is_ok() {}
            let mut bytes = ByteReader::new(&raw);
            while bytes.bytes("b").is_ok() {}
        }
    }
}
