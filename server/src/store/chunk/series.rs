//! The coding state of a chunk's fields: what the encoder and the decoder of one chunk both
//! keep, sample after sample, so that each value is coded against the same history on both
//! sides. The byte format it implements is described in `chunk.rs`.
//!
//! Invariant: after the same samples, an encoder's and a decoder's `Series` are equal; every
//! method here changes the state exactly as its counterpart on the other side does.

use super::{Fixed, MAX_QUANTIZED};
use crate::domain::DiskUsage;
use crate::store::bits::{
    BitReader, BitWriter, DecodeError, MAX_PEEK_BITS, bit_width, unzigzag, zigzag,
};

/// The coding state of every field, identical on both sides after each sample.
#[derive(Clone, Debug, Default)]
pub(super) struct Series {
    seq: Dod,
    time: Dod,
    cpu: Delta,
    load: [Delta; 3],
    memory_used: Delta,
    memory_total: Delta,
    swap_used: Delta,
    swap_total: Delta,
    net_rx: Dod,
    net_tx: Dod,
    uptime: Dod,
    process_count: Delta,
    /// The chunk's mount-point dictionary, each entry with its own used/total state.
    dict: Vec<DiskSlot>,
    /// Dictionary indexes of the previous sample's disk list, in order.
    list: Vec<usize>,
}

#[derive(Clone, Debug, Default)]
struct DiskSlot {
    name: String,
    used: Delta,
    total: Delta,
}

impl Series {
    /// Heap bytes held: the mount-point dictionary and the disk list.
    pub(super) fn heap_bytes(&self) -> usize {
        self.dict.capacity() * std::mem::size_of::<DiskSlot>()
            + self
                .dict
                .iter()
                .map(|slot| slot.name.capacity())
                .sum::<usize>()
            + self.list.capacity() * std::mem::size_of::<usize>()
    }

    pub(super) fn encode(
        &mut self,
        w: &mut BitWriter,
        f: &Fixed,
        disks: &[DiskUsage],
        first: bool,
    ) {
        self.seq.encode(w, f.seq, first);
        self.time.encode(w, f.time_ms, first);
        self.cpu.encode(w, f.cpu as u64);
        for (state, &q) in self.load.iter_mut().zip(&f.load) {
            state.encode(w, q as u64);
        }
        self.memory_used.encode(w, f.memory_used);
        self.memory_total.encode(w, f.memory_total);
        self.swap_used.encode(w, f.swap_used);
        self.swap_total.encode(w, f.swap_total);
        self.encode_disks(w, disks);
        self.net_rx.encode(w, f.net_rx, first);
        self.net_tx.encode(w, f.net_tx, first);
        self.uptime.encode(w, f.uptime_ms, first);
        self.process_count.encode(w, u64::from(f.process_count));
    }

    fn encode_disks(&mut self, w: &mut BitWriter, disks: &[DiskUsage]) {
        let same = disks.len() == self.list.len()
            && disks
                .iter()
                .zip(&self.list)
                .all(|(d, &i)| self.dict[i].name == d.mount_point);
        w.write_bit(!same);
        if !same {
            w.write_gamma(disks.len() as u64);
            self.list.clear();
            for disk in disks {
                let name = disk.mount_point.as_str();
                let idx = match self.dict.iter().position(|slot| slot.name == name) {
                    Some(idx) => {
                        w.write_gamma(idx as u64);
                        idx
                    }
                    None => {
                        // An index equal to the dictionary's size defines the next entry.
                        w.write_gamma(self.dict.len() as u64);
                        w.write_gamma(name.len() as u64);
                        for &b in name.as_bytes() {
                            w.write_bits(u64::from(b), 8);
                        }
                        self.dict.push(DiskSlot {
                            name: name.to_owned(),
                            ..DiskSlot::default()
                        });
                        self.dict.len() - 1
                    }
                };
                self.list.push(idx);
            }
        }
        for (disk, &idx) in disks.iter().zip(&self.list) {
            let slot = &mut self.dict[idx];
            slot.used.encode(w, disk.used_bytes);
            slot.total.encode(w, disk.total_bytes);
        }
    }

    /// Decodes the next sample's fields into `f` and its disks into `disks`, as a list or as
    /// sums.
    pub(super) fn decode(
        &mut self,
        r: &mut BitReader<'_>,
        f: &mut Fixed,
        disks: Disks<'_>,
        first: bool,
    ) -> Result<(), DecodeError> {
        f.seq = self.seq.decode(r, first)?;
        f.time_ms = self.time.decode(r, first)?;
        f.cpu = self.cpu.decode(r)? as i64;
        for (state, q) in self.load.iter_mut().zip(&mut f.load) {
            *q = state.decode(r)? as i64;
        }
        if [f.cpu, f.load[0], f.load[1], f.load[2]]
            .iter()
            .any(|q| q.unsigned_abs() > MAX_QUANTIZED as u64)
        {
            return Err(DecodeError::Corrupt("quantized gauge"));
        }
        f.memory_used = self.memory_used.decode(r)?;
        f.memory_total = self.memory_total.decode(r)?;
        f.swap_used = self.swap_used.decode(r)?;
        f.swap_total = self.swap_total.decode(r)?;
        self.decode_disks(r, disks)?;
        f.net_rx = self.net_rx.decode(r, first)?;
        f.net_tx = self.net_tx.decode(r, first)?;
        f.uptime_ms = self.uptime.decode(r, first)?;
        f.process_count = u32::try_from(self.process_count.decode(r)?)
            .map_err(|_| DecodeError::Corrupt("process count"))?;
        Ok(())
    }

    fn decode_disks(&mut self, r: &mut BitReader<'_>, disks: Disks<'_>) -> Result<(), DecodeError> {
        if r.read_bit("disk list flag")? {
            let n = r.read_gamma("disk count")?;
            // Each listed disk costs at least three bits (index, used, total): a count beyond
            // that is damage, and must not size an allocation.
            if n > r.remaining() / 3 {
                return Err(DecodeError::Truncated("disk list"));
            }
            self.list.clear();
            for _ in 0..n {
                let idx = r.read_gamma("disk index")?;
                let idx = usize::try_from(idx).map_err(|_| DecodeError::Corrupt("disk index"))?;
                if idx == self.dict.len() {
                    let len = r.read_gamma("mount point length")?;
                    if len > r.remaining() / 8 {
                        return Err(DecodeError::Truncated("mount point"));
                    }
                    let mut bytes = Vec::with_capacity(len as usize);
                    for _ in 0..len {
                        bytes.push(r.read_bits(8, "mount point")? as u8);
                    }
                    let name = String::from_utf8(bytes)
                        .map_err(|_| DecodeError::Corrupt("mount point"))?;
                    self.dict.push(DiskSlot {
                        name,
                        ..DiskSlot::default()
                    });
                } else if idx > self.dict.len() {
                    return Err(DecodeError::Corrupt("disk index"));
                }
                self.list.push(idx);
            }
        }
        let disks = match disks {
            Disks::List(disks) => disks,
            Disks::Sums(sums) => {
                // Summed as decoded: a mount point listed twice counts twice.
                *sums = (0, 0);
                for &idx in &self.list {
                    let slot = &mut self.dict[idx];
                    sums.0 = sums.0.saturating_add(slot.used.decode(r)?);
                    sums.1 = sums.1.saturating_add(slot.total.decode(r)?);
                }
                return Ok(());
            }
        };
        disks.truncate(self.list.len());
        for (i, &idx) in self.list.iter().enumerate() {
            let slot = &mut self.dict[idx];
            let used_bytes = slot.used.decode(r)?;
            let total_bytes = slot.total.decode(r)?;
            match disks.get_mut(i) {
                Some(disk) => {
                    disk.mount_point.clear();
                    disk.mount_point.push_str(&slot.name);
                    disk.used_bytes = used_bytes;
                    disk.total_bytes = total_bytes;
                }
                None => disks.push(DiskUsage {
                    mount_point: slot.name.clone(),
                    used_bytes,
                    total_bytes,
                }),
            }
        }
        Ok(())
    }
}

/// Where a decode puts a sample's disks.
pub(super) enum Disks<'a> {
    /// The list, reusing the entries (and their strings) already there.
    List(&'a mut Vec<DiskUsage>),
    /// Only the used and total bytes summed over the list, each saturating at `u64::MAX`.
    Sums(&'a mut (u64, u64)),
}

/// A field coded by its change from the previous sample.
#[derive(Clone, Copy, Debug, Default)]
struct Delta {
    prev: u64,
    window: Window,
}

impl Delta {
    fn encode(&mut self, w: &mut BitWriter, v: u64) {
        self.window.encode(w, v.wrapping_sub(self.prev) as i64);
        self.prev = v;
    }

    #[inline(always)]
    fn decode(&mut self, r: &mut BitReader<'_>) -> Result<u64, DecodeError> {
        let v = self.prev.wrapping_add(self.window.decode(r)? as u64);
        self.prev = v;
        Ok(v)
    }
}

/// A field coded by the change of its change (timestamps and counters: usually 0).
#[derive(Clone, Copy, Debug, Default)]
struct Dod {
    prev: u64,
    prev_delta: u64,
    window: Window,
}

impl Dod {
    fn encode(&mut self, w: &mut BitWriter, v: u64, first: bool) {
        let delta = v.wrapping_sub(self.prev);
        self.window
            .encode(w, delta.wrapping_sub(self.prev_delta) as i64);
        self.prev = v;
        if !first {
            self.prev_delta = delta;
        }
    }

    #[inline(always)]
    fn decode(&mut self, r: &mut BitReader<'_>, first: bool) -> Result<u64, DecodeError> {
        let delta = self.prev_delta.wrapping_add(self.window.decode(r)? as u64);
        let v = self.prev.wrapping_add(delta);
        self.prev = v;
        if !first {
            self.prev_delta = delta;
        }
        Ok(v)
    }
}

/// The adaptive `(shift, width)` window of one field, with its zero context (see the format).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Window {
    shift: u32,
    /// 0 until the first non-zero value.
    width: u32,
    /// Whether the field's last coded value was non-zero: then "reuse" gets the one-bit code.
    after_nonzero: bool,
}

/// The four codes of a window-coded value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Form {
    Zero,
    Reuse,
    NewWidth,
    NewShift,
}

impl Window {
    /// The prefix bits of `form` in the current context, as `(bits, count)`.
    fn prefix(&self, form: Form) -> (u64, u32) {
        match (form, self.after_nonzero) {
            (Form::Zero, false) | (Form::Reuse, true) => (0b0, 1),
            (Form::Reuse, false) | (Form::Zero, true) => (0b10, 2),
            (Form::NewWidth, _) => (0b110, 3),
            (Form::NewShift, _) => (0b111, 3),
        }
    }

    fn encode(&mut self, w: &mut BitWriter, d: i64) {
        if d == 0 {
            let (bits, n) = self.prefix(Form::Zero);
            w.write_bits(bits, n);
            self.after_nonzero = false;
            return;
        }
        let tz = d.trailing_zeros();
        let fresh = zigzag(d >> tz);
        let fresh_width = bit_width(fresh);
        // (cost in bits, form, value, width): the cheapest valid code.
        let mut best = (3 + 12 + fresh_width, Form::NewShift, fresh, fresh_width);
        if tz >= self.shift {
            let kept = zigzag(d >> self.shift);
            let need = bit_width(kept);
            if need + 9 <= best.0 {
                best = (need + 9, Form::NewWidth, kept, need);
            }
            let reuse = self.width + self.prefix(Form::Reuse).1;
            if self.width > 0 && need <= self.width && reuse <= best.0 {
                best = (reuse, Form::Reuse, kept, self.width);
            }
        }
        let (_, form, u, width) = best;
        let (bits, n) = self.prefix(form);
        w.write_bits(bits, n);
        if form == Form::NewShift {
            w.write_bits(u64::from(tz), 6);
            self.shift = tz;
        }
        if form != Form::Reuse {
            w.write_bits(u64::from(width - 1), 6);
        }
        w.write_bits(u, width);
        self.width = width;
        self.after_nonzero = true;
    }

    #[inline(always)]
    fn decode(&mut self, r: &mut BitReader<'_>) -> Result<i64, DecodeError> {
        // One peek holds the prefix and the window that may follow it (3 + 12 bits);
        // `skip` checks that the bits used were there before anything is trusted.
        let head = r.peek_bits(15);
        let (one, two) = if self.after_nonzero {
            (Form::Reuse, Form::Zero)
        } else {
            (Form::Zero, Form::Reuse)
        };
        let (form, prefix) = match head >> 12 {
            0b000..=0b011 => (one, 1),
            0b100 | 0b101 => (two, 2),
            0b110 => (Form::NewWidth, 3),
            _ => (Form::NewShift, 3),
        };
        // The 6 bits after the first `at` of the 15.
        let field = |at: u32| ((head >> (9 - at)) & 0x3f) as u32;
        let head_len = match form {
            Form::Zero => {
                r.skip(prefix, "value")?;
                self.after_nonzero = false;
                return Ok(0);
            }
            Form::Reuse if self.width == 0 => {
                r.skip(prefix, "value")?;
                return Err(DecodeError::Corrupt("value window"));
            }
            Form::Reuse => prefix,
            Form::NewShift => {
                self.shift = field(3);
                self.width = field(9) + 1;
                prefix + 12
            }
            Form::NewWidth => {
                self.width = field(3) + 1;
                prefix + 6
            }
        };
        // Code and value in one peek when they fit it (they nearly always do), then one skip
        // that checks they were there.
        let total = head_len + self.width;
        let u = if total <= MAX_PEEK_BITS {
            let bits = r.peek_bits(total);
            r.skip(total, "value")?;
            bits & (u64::MAX >> (64 - self.width))
        } else {
            r.skip(head_len, "value window")?;
            r.read_bits(self.width, "value")?
        };
        self.after_nonzero = true;
        Ok(((unzigzag(u) as u64) << self.shift) as i64)
    }
}
