//! Rollup blocks: the stored form of rollups. One record holds every bucket of one agent at one
//! [`Resolution`] within a fixed span of time ([`Resolution::block_ms`]: an hour of 5-minute
//! buckets, six hours of 1-hour buckets), each bucket coded against the one before it.
//!
//! Neighbouring buckets of a machine are alike (the same memory total, a memory figure that
//! moved by a few MB, a disk that grew by a few blocks), and byte counts are mostly multiples
//! of a page, so a block codes each stat's minimum as a difference from the previous bucket's
//! and drops the low zero bits every value of a stat in the block shares. One record per block
//! instead of per bucket also spares the store a key and an insert per bucket.
//!
//! # Format (version 1)
//!
//! Bytes; varints are unsigned LEB128, `zz` is zigzag (see `bits.rs`):
//!
//! | field | encoding |
//! |---|---|
//! | version | one byte, [`BLOCK_VERSION`] |
//! | slots | varint: bit `i` set when the bucket `i` of the block is present; not 0, no bit at or past the resolution's [`Resolution::block_slots`] |
//! | shifts | 13 bytes, one per stat in the order below, each at most 64 |
//! | buckets | one per set bit, in slot order |
//!
//! A bucket is `varint zz(count − c)`, `varint zz(rate count − r)` (`c`, `r`: the previous
//! bucket's, 0 for the first), then `varint still`, then the stats whose own count is not 0
//! (`count` for the first eleven, `rate count` for the two rates) in the order below, each
//! either *still* (bit `i` of `still` set: nothing follows; its min and max are its previous
//! minimum in the block and its sum is that times its count) or, with `s` the stat's shift, `m`
//! its previous minimum in the block (0 before the first) and `n` its count:
//! `varint zz((min − m) >> s)`, `varint R` where `R = (max − min) >> s`, and
//! `varint zz(((sum − min·n) >> s) − ⌊R·n / 2⌋)` (the sum's offset from `min·n` lies between
//! 0 and `R·n`, so it is coded from the middle of that span). A bit of `still` for a stat whose
//! count is 0, or at or past 13, is an error.
//! The stats, in order: cpu, load 1, load 5, load 15, memory used, memory total, swap used,
//! swap total, disk used, disk total, process count, rx rate, tx rate (units as in
//! `rollup.rs`). Every value a shift applies to is a multiple of `2^s`, so the shift is exact.
//! Nothing may follow the last bucket.
//!
//! A decoder refuses, besides short input: another version, an empty or out-of-range slot set,
//! a bucket whose start would pass `u64::MAX` (a damaged key),
//! a shift over 64, a rate count above the count, a minimum or maximum outside its stat's type,
//! and trailing bytes.

use super::{Resolution, Rollup, RollupError, Stat, StatValue};
use crate::store::bits::{ByteReader, DecodeError, put_uvarint128, unzigzag128, zigzag128};

/// Format version written by this build; the only one it reads.
pub const BLOCK_VERSION: u8 = 1;

/// Stats per bucket: eleven over the samples, two over the rate intervals.
const STATS: usize = 13;
/// The first stat counted by `rate_count` instead of `count`.
const FIRST_RATE: usize = 11;
/// Largest shift a block records.
const MAX_SHIFT: u32 = 64;

/// A stat's (min, max, sum).
type Triple = (i128, i128, i128);

/// Encodes `buckets` (bucket start in ms, rollup), which must be in bucket order, distinct, and
/// all within the block of `resolution` starting at `block_start_ms`.
///
/// # Panics
///
/// If a bucket lies outside the block or is out of order (a caller bug, not input).
pub fn encode(resolution: Resolution, block_start_ms: u64, buckets: &[(u64, Rollup)]) -> Vec<u8> {
    let mut slots = 0u64;
    let mut last = None;
    for &(start, _) in buckets {
        let slot =
            slot_of(resolution, block_start_ms, start).expect("a bucket within its block, aligned");
        assert!(last < Some(slot), "buckets in order, each once");
        last = Some(slot);
        slots |= 1 << slot;
    }
    // What each stat of each bucket codes before its shift: against the previous minimum of
    // that stat in the block.
    let mut prev_min = [0i128; STATS];
    let coded: Vec<[Option<[i128; 3]>; STATS]> = buckets
        .iter()
        .map(|(_, rollup)| {
            let triples = triples(rollup);
            std::array::from_fn(|i| {
                triples[i].map(|(min, max, sum)| {
                    let c = coded(min, max, sum, stat_count(rollup, i), prev_min[i]);
                    prev_min[i] = min;
                    c
                })
            })
        })
        .collect();
    // The low zero bits every such value of a stat shares.
    let mut shifts = [MAX_SHIFT; STATS];
    for stats in &coded {
        for (shift, c) in shifts.iter_mut().zip(stats) {
            for v in c.iter().flatten() {
                *shift = (*shift).min(v.trailing_zeros());
            }
        }
    }
    let mut out = Vec::with_capacity(16 + buckets.len() * 80);
    out.push(BLOCK_VERSION);
    put_uvarint128(&mut out, u128::from(slots));
    out.extend(shifts.iter().map(|&s| s as u8));
    let (mut prev_count, mut prev_rates) = (0i128, 0i128);
    for ((_, rollup), stats) in buckets.iter().zip(&coded) {
        let (count, rates) = (i128::from(rollup.count), i128::from(rollup.rate_count));
        put_uvarint128(&mut out, zigzag128(count - prev_count));
        put_uvarint128(&mut out, zigzag128(rates - prev_rates));
        (prev_count, prev_rates) = (count, rates);
        let still = stats.iter().enumerate().fold(0u128, |bits, (i, c)| {
            bits | u128::from(*c == Some([0, 0, 0])) << i
        });
        put_uvarint128(&mut out, still);
        for (i, c) in stats.iter().enumerate() {
            if let Some([delta, range, offset]) = *c
                && still >> i & 1 == 0
            {
                let s = shifts[i];
                let (range, offset) = (range >> s, offset >> s);
                put_uvarint128(&mut out, zigzag128(delta >> s));
                put_uvarint128(&mut out, range as u128);
                let center = range.saturating_mul(stat_count(rollup, i)) / 2;
                put_uvarint128(&mut out, zigzag128(offset.saturating_sub(center)));
            }
        }
    }
    out
}

/// Reads a block written by [`encode`] for the same resolution and block start: its buckets
/// (start in ms, rollup), in bucket order.
///
/// # Errors
///
/// `Decode` for another version, short, inconsistent or trailing input.
pub fn decode(
    resolution: Resolution,
    block_start_ms: u64,
    bytes: &[u8],
) -> Result<Vec<(u64, Rollup)>, RollupError> {
    let mut r = ByteReader::new(bytes);
    let version = r.u8("rollup block version")?;
    if version != BLOCK_VERSION {
        return Err(DecodeError::Version {
            found: version,
            expected: BLOCK_VERSION,
        }
        .into());
    }
    let slots = r.uvarint("rollup block slots")?;
    if slots == 0 || slots >> resolution.block_slots() != 0 {
        return Err(DecodeError::Corrupt("rollup block slots").into());
    }
    let mut shifts = [0u32; STATS];
    for s in &mut shifts {
        *s = u32::from(r.u8("rollup block shift")?);
        if *s > MAX_SHIFT {
            return Err(DecodeError::Corrupt("rollup block shift").into());
        }
    }
    let mut out = Vec::with_capacity(slots.count_ones() as usize);
    let (mut count, mut rates) = (0i128, 0i128);
    let mut prev_min = [0i128; STATS];
    for slot in (0..resolution.block_slots()).filter(|i| slots >> i & 1 == 1) {
        count = add(count, unzigzag128(r.uvarint128("rollup count")?))?;
        rates = add(rates, unzigzag128(r.uvarint128("rollup rate count")?))?;
        let count_u = u64::try_from(count).map_err(|_| DecodeError::Corrupt("rollup count"))?;
        let rates_u =
            u64::try_from(rates).map_err(|_| DecodeError::Corrupt("rollup rate count"))?;
        if rates_u > count_u {
            return Err(DecodeError::Corrupt("rollup rate count").into());
        }
        let still = r.uvarint128("rollup still stats")?;
        if still >> STATS != 0 {
            return Err(DecodeError::Corrupt("rollup still stats").into());
        }
        let mut read = [None; STATS];
        for (i, slot_triple) in read.iter_mut().enumerate() {
            let n = if i < FIRST_RATE { count } else { rates };
            let is_still = still >> i & 1 == 1;
            if n == 0 {
                if is_still {
                    return Err(DecodeError::Corrupt("rollup still stats").into());
                }
                continue;
            }
            if is_still {
                *slot_triple = Some((prev_min[i], prev_min[i], add_mul(prev_min[i], n, 0)?));
                continue;
            }
            let s = shifts[i];
            let unit = 1i128 << s;
            let scaled = |v: i128| {
                v.checked_mul(unit)
                    .ok_or(DecodeError::Corrupt("rollup stat"))
            };
            let delta = scaled(unzigzag128(r.uvarint128("rollup min")?))?;
            let range = i128::try_from(r.uvarint128("rollup range")?)
                .map_err(|_| DecodeError::Corrupt("rollup range"))?;
            let center = range.saturating_mul(n) / 2;
            let offset = unzigzag128(r.uvarint128("rollup sum")?)
                .checked_add(center)
                .ok_or(DecodeError::Corrupt("rollup sum"))
                .and_then(scaled)?;
            let min = add(prev_min[i], delta)?;
            let max = add(min, scaled(range)?)?;
            let sum = add_mul(min, n, offset)?;
            prev_min[i] = min;
            *slot_triple = Some((min, max, sum));
        }
        let mut rollup = Rollup {
            count: count_u,
            rate_count: rates_u,
            ..Rollup::default()
        };
        set_triples(&mut rollup, &read)?;
        let start = block_start_ms
            .checked_add(u64::from(slot) * resolution.width_ms())
            .ok_or(DecodeError::Corrupt("rollup block start"))?;
        out.push((start, rollup));
    }
    if !r.is_empty() {
        return Err(DecodeError::Corrupt("rollup block trailing bytes").into());
    }
    Ok(out)
}

/// Folds `more` (buckets of the same block, any order) into `buckets` (in bucket order), merging
/// a bucket present in both; the result stays in bucket order.
pub fn merge_into(buckets: &mut Vec<(u64, Rollup)>, more: impl IntoIterator<Item = (u64, Rollup)>) {
    for (start, rollup) in more {
        match buckets.binary_search_by_key(&start, |(s, _)| *s) {
            Ok(i) => buckets[i].1.merge(&rollup),
            Err(i) => buckets.insert(i, (start, rollup)),
        }
    }
}

/// The slot of the bucket starting at `start` in the block starting at `block_start_ms`, if it
/// is an aligned bucket inside that block.
fn slot_of(resolution: Resolution, block_start_ms: u64, start: u64) -> Option<u32> {
    let offset = start.checked_sub(block_start_ms)?;
    let width = resolution.width_ms();
    let slot = u32::try_from(offset / width).ok()?;
    (offset % width == 0 && slot < resolution.block_slots()).then_some(slot)
}

fn add(a: i128, b: i128) -> Result<i128, DecodeError> {
    a.checked_add(b).ok_or(DecodeError::Corrupt("rollup stat"))
}

/// `min·n + offset`: a sum from what a block codes.
fn add_mul(min: i128, n: i128, offset: i128) -> Result<i128, DecodeError> {
    min.checked_mul(n)
        .and_then(|base| base.checked_add(offset))
        .ok_or(DecodeError::Corrupt("rollup sum"))
}

/// What a stat codes before its shift: the minimum's change, the range, the sum's offset from
/// `min·n` (saturating, as `Stat::encode` does; the shift is then found on these very values,
/// so it stays exact).
fn coded(min: i128, max: i128, sum: i128, n: i128, prev_min: i128) -> [i128; 3] {
    [
        min.saturating_sub(prev_min),
        max.saturating_sub(min),
        sum.saturating_sub(min.saturating_mul(n)),
    ]
}

/// The count stat `i` of `rollup` belongs to: `count`, or `rate_count` for the rates.
fn stat_count(rollup: &Rollup, i: usize) -> i128 {
    i128::from(if i < FIRST_RATE {
        rollup.count
    } else {
        rollup.rate_count
    })
}

/// `rollup`'s stats as (min, max, sum), `None` for a stat whose count is 0.
fn triples(rollup: &Rollup) -> [Option<Triple>; STATS] {
    fn t<T: StatValue>(stat: &Stat<T>, n: u64) -> Option<Triple> {
        (n > 0).then(|| (stat.min.into(), stat.max.into(), stat.sum))
    }
    let (n, rates) = (rollup.count, rollup.rate_count);
    [
        t(&rollup.cpu, n),
        t(&rollup.load[0], n),
        t(&rollup.load[1], n),
        t(&rollup.load[2], n),
        t(&rollup.memory_used, n),
        t(&rollup.memory_total, n),
        t(&rollup.swap_used, n),
        t(&rollup.swap_total, n),
        t(&rollup.disk_used, n),
        t(&rollup.disk_total, n),
        t(&rollup.process_count, n),
        t(&rollup.net_rx_rate, rates),
        t(&rollup.net_tx_rate, rates),
    ]
}

/// Sets `rollup`'s stats from `triples` (a `None` leaves the merge identity).
fn set_triples(rollup: &mut Rollup, triples: &[Option<Triple>; STATS]) -> Result<(), DecodeError> {
    fn set<T: StatValue>(stat: &mut Stat<T>, triple: Option<Triple>) -> Result<(), DecodeError> {
        if let Some((min, max, sum)) = triple {
            let min = T::from_i128(min).ok_or(DecodeError::Corrupt("rollup min"))?;
            let max = T::from_i128(max).ok_or(DecodeError::Corrupt("rollup range"))?;
            *stat = Stat { min, max, sum };
        }
        Ok(())
    }
    let [cpu, l1, l5, l15, mu, mt, su, st, du, dt, pc, rx, tx] = *triples;
    set(&mut rollup.cpu, cpu)?;
    set(&mut rollup.load[0], l1)?;
    set(&mut rollup.load[1], l5)?;
    set(&mut rollup.load[2], l15)?;
    set(&mut rollup.memory_used, mu)?;
    set(&mut rollup.memory_total, mt)?;
    set(&mut rollup.swap_used, su)?;
    set(&mut rollup.swap_total, st)?;
    set(&mut rollup.disk_used, du)?;
    set(&mut rollup.disk_total, dt)?;
    set(&mut rollup.process_count, pc)?;
    set(&mut rollup.net_rx_rate, rx)?;
    set(&mut rollup.net_tx_rate, tx)?;
    Ok(())
}

#[cfg(test)]
mod tests;
