//! Rollups: per-agent aggregates over fixed time buckets (5 minutes, 1 hour), kept longer than
//! raw samples so long ranges are answered without decoding chunks.
//!
//! A [`Rollup`] holds, for the samples of one (agent, [`Resolution`], bucket), their `count` and
//! the min, max and sum of each metric, in the stored units of `chunk.rs`, so a rollup computed
//! from raw samples equals one computed from their stored form:
//!
//! | metric | unit |
//! |---|---|
//! | `cpu`, `load[0..3]` | hundredths ([`chunk::quantize`]) |
//! | `memory_used`, `memory_total`, `swap_used`, `swap_total` | bytes |
//! | `disk_used`, `disk_total` | bytes, summed over the sample's disk list as reported (saturating) |
//! | `process_count` | processes |
//! | `net_rx_rate`, `net_tx_rate` | bytes per second, rounded down |
//!
//! A network rate comes from two consecutive samples of the agent (the caller passes the
//! previous one's [`CounterPoint`]): counter delta over time delta, counted in the bucket of
//! the later sample. The interval is skipped (no rate, `rate_count` unchanged) when either
//! counter went down (a reboot or a counter reset) or the time did not advance.
//!
//! Buckets are aligned to the Unix epoch: a bucket starts at a multiple of its width in
//! milliseconds, so every 1-hour bucket is exactly twelve 5-minute ones and merging them
//! ([`Rollup::merge`]) gives the 1-hour rollup exactly. Merge is also how a late sample or a
//! recomputation joins a stored rollup: it is commutative and associative.
//!
//! Invariant: with `count == 0` (or `rate_count == 0` for the rates) every [`Stat`] is the
//! merge identity (`min = T::MAX`, `max = T::MIN`, `sum = 0`). Sums are `i128` and saturate
//! (unreachable in practice: it takes 2^63 samples of `u64::MAX`).
//!
//! # Format (version 1)
//!
//! Bytes; varints are unsigned LEB128, `zz` is zigzag (see `bits.rs`):
//!
//! | field | encoding |
//! |---|---|
//! | version | one byte, [`ROLLUP_VERSION`] |
//! | count | varint |
//! | if count > 0: cpu, load 1, load 5, load 15 | each a signed stat |
//! | if count > 0: memory used, memory total, swap used, swap total, disk used, disk total, process count | each an unsigned stat |
//! | rate count | varint, at most count |
//! | if rate count > 0: rx rate, tx rate | each an unsigned stat |
//!
//! A signed stat is `varint zz(min)`, `varint (max − min)`, `varint128 zz(sum − min·n)`; an
//! unsigned stat is `varint min`, `varint (max − min)`, `varint128 zz(sum − min·n)`, where `n`
//! is the count the stat belongs to. Nothing may follow.

use super::bits::{
    ByteReader, DecodeError, put_uvarint, put_uvarint128, unzigzag, unzigzag128, zigzag, zigzag128,
};
use super::chunk::{self, ChunkError};
use crate::domain::Sample;

/// Format version written by this build; the only one it reads.
pub const ROLLUP_VERSION: u8 = 1;

/// Why a rollup could not take a sample or be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RollupError {
    /// The sample has no stored form (see `chunk.rs`).
    #[error("sample cannot be rolled up: {0}")]
    Sample(#[from] ChunkError),
    /// The bytes are not a rollup this build can read.
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

/// The width of a rollup bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Resolution {
    FiveMinutes,
    OneHour,
}

impl Resolution {
    /// Every resolution, finest first.
    pub const ALL: [Self; 2] = [Self::FiveMinutes, Self::OneHour];

    /// The bucket width in milliseconds.
    pub const fn width_ms(self) -> u64 {
        match self {
            Self::FiveMinutes => 5 * 60 * 1_000,
            Self::OneHour => 60 * 60 * 1_000,
        }
    }

    /// Start (ms since the Unix epoch) of the bucket holding `time_ms`.
    pub const fn bucket_start_ms(self, time_ms: u64) -> u64 {
        time_ms - time_ms % self.width_ms()
    }

    /// The span of one stored block of buckets ([`block`]): an hour of 5-minute buckets, six
    /// hours of 1-hour ones (a day's would be rewritten whole by every seal, all day).
    pub const fn block_ms(self) -> u64 {
        match self {
            Self::FiveMinutes => 60 * 60 * 1_000,
            Self::OneHour => 6 * 60 * 60 * 1_000,
        }
    }

    /// Buckets in one block.
    pub const fn block_slots(self) -> u32 {
        (self.block_ms() / self.width_ms()) as u32
    }

    /// Start (ms since the Unix epoch) of the block holding `time_ms`; blocks are aligned to
    /// the epoch like buckets.
    pub const fn block_start_ms(self, time_ms: u64) -> u64 {
        time_ms - time_ms % self.block_ms()
    }
}

/// Min, max and sum of one metric over the samples (or rate intervals) of a rollup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat<T> {
    pub min: T,
    pub max: T,
    pub sum: i128,
}

/// The integer types a [`Stat`] holds.
pub trait StatValue: Copy + Ord + Into<i128> {
    /// The merge identity's `min`.
    const MAX: Self;
    /// The merge identity's `max`.
    const MIN: Self;
    #[doc(hidden)]
    fn put(self, out: &mut Vec<u8>);
    #[doc(hidden)]
    fn get(r: &mut ByteReader<'_>) -> Result<Self, DecodeError>;
    #[doc(hidden)]
    fn from_i128(v: i128) -> Option<Self>;
}

impl StatValue for i64 {
    const MAX: Self = i64::MAX;
    const MIN: Self = i64::MIN;

    fn put(self, out: &mut Vec<u8>) {
        put_uvarint(out, zigzag(self));
    }

    fn get(r: &mut ByteReader<'_>) -> Result<Self, DecodeError> {
        Ok(unzigzag(r.uvarint("rollup min")?))
    }

    fn from_i128(v: i128) -> Option<Self> {
        Self::try_from(v).ok()
    }
}

impl StatValue for u64 {
    const MAX: Self = u64::MAX;
    const MIN: Self = u64::MIN;

    fn put(self, out: &mut Vec<u8>) {
        put_uvarint(out, self);
    }

    fn get(r: &mut ByteReader<'_>) -> Result<Self, DecodeError> {
        r.uvarint("rollup min")
    }

    fn from_i128(v: i128) -> Option<Self> {
        Self::try_from(v).ok()
    }
}

impl<T: StatValue> Default for Stat<T> {
    fn default() -> Self {
        Self {
            min: T::MAX,
            max: T::MIN,
            sum: 0,
        }
    }
}

impl<T: StatValue> Stat<T> {
    /// The mean over `n` observations, in the stat's unit; `None` for none.
    pub fn mean(&self, n: u64) -> Option<f64> {
        (n > 0).then(|| self.sum as f64 / n as f64)
    }

    fn add(&mut self, v: T) {
        self.min = self.min.min(v);
        self.max = self.max.max(v);
        self.sum = self.sum.saturating_add(v.into());
    }

    fn merge(&mut self, other: &Self) {
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.sum = self.sum.saturating_add(other.sum);
    }

    fn encode(&self, n: u64, out: &mut Vec<u8>) {
        let (min, max): (i128, i128) = (self.min.into(), self.max.into());
        self.min.put(out);
        put_uvarint128(out, (max - min) as u128);
        let base = min.saturating_mul(i128::from(n));
        put_uvarint128(out, zigzag128(self.sum.saturating_sub(base)));
    }

    fn decode(n: u64, r: &mut ByteReader<'_>) -> Result<Self, DecodeError> {
        let min = T::get(r)?;
        let span = i128::try_from(r.uvarint128("rollup range")?)
            .map_err(|_| DecodeError::Corrupt("rollup range"))?;
        let max = min
            .into()
            .checked_add(span)
            .and_then(T::from_i128)
            .ok_or(DecodeError::Corrupt("rollup range"))?;
        let offset = unzigzag128(r.uvarint128("rollup sum")?);
        let sum = min
            .into()
            .checked_mul(i128::from(n))
            .and_then(|base| base.checked_add(offset))
            .ok_or(DecodeError::Corrupt("rollup sum"))?;
        Ok(Self { min, max, sum })
    }
}

/// The time and network counters of one sample: what the next sample needs for its rates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CounterPoint {
    pub time_ms: u64,
    pub rx: u64,
    pub tx: u64,
}

impl CounterPoint {
    /// The counter point of `sample`.
    ///
    /// # Errors
    ///
    /// `Sample` when the sample's time has no stored form.
    pub fn of(sample: &Sample) -> Result<Self, RollupError> {
        Ok(Self {
            time_ms: chunk::time_to_millis(sample.time.get())?,
            rx: sample.network_rx_bytes,
            tx: sample.network_tx_bytes,
        })
    }

    /// Bytes per second (rx, tx) from `prev` to `self`, rounded down; `None` if the time did
    /// not advance or either counter went down.
    pub fn rates_since(&self, prev: &Self) -> Option<(u64, u64)> {
        let dt = self
            .time_ms
            .checked_sub(prev.time_ms)
            .filter(|&dt| dt > 0)?;
        let rate = |now: u64, before: u64| {
            let bytes = now.checked_sub(before)?;
            let per_second = u128::from(bytes) * 1_000 / u128::from(dt);
            Some(u64::try_from(per_second).unwrap_or(u64::MAX))
        };
        Some((rate(self.rx, prev.rx)?, rate(self.tx, prev.tx)?))
    }
}

/// Aggregates of one agent's samples in one bucket of one resolution.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rollup {
    /// Samples aggregated.
    pub count: u64,
    pub cpu: Stat<i64>,
    pub load: [Stat<i64>; 3],
    pub memory_used: Stat<u64>,
    pub memory_total: Stat<u64>,
    pub swap_used: Stat<u64>,
    pub swap_total: Stat<u64>,
    pub disk_used: Stat<u64>,
    pub disk_total: Stat<u64>,
    pub process_count: Stat<u64>,
    /// Intervals with a network rate (at most `count`).
    pub rate_count: u64,
    pub net_rx_rate: Stat<u64>,
    pub net_tx_rate: Stat<u64>,
}

impl Rollup {
    /// Adds `sample`; `prev` is the counter point of the agent's previous sample, if known.
    /// On error nothing was added.
    ///
    /// # Errors
    ///
    /// `Sample` when the sample has no stored form.
    pub fn add(&mut self, sample: &Sample, prev: Option<CounterPoint>) -> Result<(), RollupError> {
        let cpu = chunk::quantize(sample.cpu_percent, "cpu_percent")?;
        let load = [
            chunk::quantize(sample.load[0], "load_1")?,
            chunk::quantize(sample.load[1], "load_5")?,
            chunk::quantize(sample.load[2], "load_15")?,
        ];
        let point = CounterPoint::of(sample)?;
        self.count = self.count.saturating_add(1);
        self.cpu.add(cpu);
        for (stat, q) in self.load.iter_mut().zip(load) {
            stat.add(q);
        }
        self.memory_used.add(sample.memory_used_bytes);
        self.memory_total.add(sample.memory_total_bytes);
        self.swap_used.add(sample.swap_used_bytes);
        self.swap_total.add(sample.swap_total_bytes);
        let (used, total) = sample.disks.iter().fold((0u64, 0u64), |(u, t), d| {
            (
                u.saturating_add(d.used_bytes),
                t.saturating_add(d.total_bytes),
            )
        });
        self.disk_used.add(used);
        self.disk_total.add(total);
        self.process_count.add(u64::from(sample.process_count));
        if let Some((rx, tx)) = prev.and_then(|prev| point.rates_since(&prev)) {
            self.rate_count = self.rate_count.saturating_add(1);
            self.net_rx_rate.add(rx);
            self.net_tx_rate.add(tx);
        }
        Ok(())
    }

    /// Folds `other` (the same agent and bucket) into `self`.
    pub fn merge(&mut self, other: &Self) {
        self.count = self.count.saturating_add(other.count);
        self.cpu.merge(&other.cpu);
        for (stat, o) in self.load.iter_mut().zip(&other.load) {
            stat.merge(o);
        }
        self.memory_used.merge(&other.memory_used);
        self.memory_total.merge(&other.memory_total);
        self.swap_used.merge(&other.swap_used);
        self.swap_total.merge(&other.swap_total);
        self.disk_used.merge(&other.disk_used);
        self.disk_total.merge(&other.disk_total);
        self.process_count.merge(&other.process_count);
        self.rate_count = self.rate_count.saturating_add(other.rate_count);
        self.net_rx_rate.merge(&other.net_rx_rate);
        self.net_tx_rate.merge(&other.net_tx_rate);
    }

    /// The encoded rollup (see the format above).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        self.encode_into(&mut out);
        out
    }

    /// Appends the encoded rollup to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.push(ROLLUP_VERSION);
        put_uvarint(out, self.count);
        if self.count > 0 {
            for stat in [&self.cpu, &self.load[0], &self.load[1], &self.load[2]] {
                stat.encode(self.count, out);
            }
            for stat in self.unsigned_stats() {
                stat.encode(self.count, out);
            }
        }
        put_uvarint(out, self.rate_count);
        if self.rate_count > 0 {
            self.net_rx_rate.encode(self.rate_count, out);
            self.net_tx_rate.encode(self.rate_count, out);
        }
    }

    /// Reads a rollup written by [`encode`](Self::encode).
    ///
    /// # Errors
    ///
    /// `Decode` for another version, short, inconsistent or trailing input.
    pub fn decode(bytes: &[u8]) -> Result<Self, RollupError> {
        let mut r = ByteReader::new(bytes);
        let version = r.u8("rollup version")?;
        if version != ROLLUP_VERSION {
            return Err(DecodeError::Version {
                found: version,
                expected: ROLLUP_VERSION,
            }
            .into());
        }
        let mut rollup = Self {
            count: r.uvarint("rollup count")?,
            ..Self::default()
        };
        let n = rollup.count;
        if n > 0 {
            rollup.cpu = Stat::decode(n, &mut r)?;
            for stat in &mut rollup.load {
                *stat = Stat::decode(n, &mut r)?;
            }
            rollup.memory_used = Stat::decode(n, &mut r)?;
            rollup.memory_total = Stat::decode(n, &mut r)?;
            rollup.swap_used = Stat::decode(n, &mut r)?;
            rollup.swap_total = Stat::decode(n, &mut r)?;
            rollup.disk_used = Stat::decode(n, &mut r)?;
            rollup.disk_total = Stat::decode(n, &mut r)?;
            rollup.process_count = Stat::decode(n, &mut r)?;
        }
        rollup.rate_count = r.uvarint("rollup rate count")?;
        if rollup.rate_count > n {
            return Err(DecodeError::Corrupt("rollup rate count").into());
        }
        if rollup.rate_count > 0 {
            rollup.net_rx_rate = Stat::decode(rollup.rate_count, &mut r)?;
            rollup.net_tx_rate = Stat::decode(rollup.rate_count, &mut r)?;
        }
        if !r.is_empty() {
            return Err(DecodeError::Corrupt("rollup trailing bytes").into());
        }
        Ok(rollup)
    }

    fn unsigned_stats(&self) -> [&Stat<u64>; 7] {
        [
            &self.memory_used,
            &self.memory_total,
            &self.swap_used,
            &self.swap_total,
            &self.disk_used,
            &self.disk_total,
            &self.process_count,
        ]
    }
}

/// Rolls one agent's samples, fed in seq order, into consecutive buckets of one resolution.
///
/// Holds the open bucket and the previous sample's [`CounterPoint`] (for rates across bucket
/// and chunk boundaries). A sample in another bucket than the open one closes it: `push`
/// returns it for the caller to merge into what is stored for that bucket (a late sample whose
/// time goes back into an earlier bucket therefore yields a small rollup for that bucket).
#[derive(Clone, Debug)]
pub struct RollupBuilder {
    resolution: Resolution,
    open: Option<(u64, Rollup)>,
    prev: Option<CounterPoint>,
}

impl RollupBuilder {
    /// A builder with nothing open and no previous sample.
    pub fn new(resolution: Resolution) -> Self {
        Self {
            resolution,
            open: None,
            prev: None,
        }
    }

    /// A builder with nothing open that continues after a sample whose counter point was
    /// `prev` (the last sample of the agent's previous chunk), so the first rate is kept.
    pub fn after(resolution: Resolution, prev: Option<CounterPoint>) -> Self {
        Self {
            prev,
            ..Self::new(resolution)
        }
    }

    /// The resolution of the buckets this builder fills.
    pub fn resolution(&self) -> Resolution {
        self.resolution
    }

    /// The counter point of the last sample pushed (or the one given to [`after`](Self::after)).
    pub fn previous(&self) -> Option<CounterPoint> {
        self.prev
    }

    /// Adds the agent's next sample. Returns `(bucket start ms, rollup)` of the bucket it
    /// closed, if any. On error nothing changed.
    ///
    /// # Errors
    ///
    /// `Sample` when the sample has no stored form.
    pub fn push(&mut self, sample: &Sample) -> Result<Option<(u64, Rollup)>, RollupError> {
        let point = CounterPoint::of(sample)?;
        let bucket = self.resolution.bucket_start_ms(point.time_ms);
        let mut rollup = match self.open {
            Some((start, rollup)) if start == bucket => rollup,
            _ => Rollup::default(),
        };
        rollup.add(sample, self.prev)?;
        self.prev = Some(point);
        let closed = match self.open.replace((bucket, rollup)) {
            Some((start, rollup)) if start != bucket => Some((start, rollup)),
            _ => None,
        };
        Ok(closed)
    }

    /// The open bucket, if any, without closing it.
    pub fn open(&self) -> Option<(u64, Rollup)> {
        self.open
    }

    /// Closes and returns the open bucket; the previous sample is kept for the next rate.
    pub fn close(&mut self) -> Option<(u64, Rollup)> {
        self.open.take()
    }
}

pub mod block;
#[cfg(test)]
mod tests;
