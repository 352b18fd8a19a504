use proptest::prelude::*;

use super::*;
use crate::store::rollup::RollupBuilder;
use crate::store::rollup::tests::{T0, arb_series, sample};

const FIVE: Resolution = Resolution::FiveMinutes;
const HOUR: Resolution = Resolution::OneHour;

/// The buckets of `resolution` that `samples` fill, grouped by block, in order.
fn blocks(
    resolution: Resolution,
    samples: &[crate::domain::Sample],
) -> Vec<(u64, Vec<(u64, Rollup)>)> {
    let mut builder = RollupBuilder::new(resolution);
    let mut buckets = Vec::new();
    for s in samples {
        buckets.extend(builder.push(s).expect("storable"));
    }
    buckets.extend(builder.close());
    let mut out: Vec<(u64, Vec<(u64, Rollup)>)> = Vec::new();
    for (start, rollup) in buckets {
        let block = resolution.block_start_ms(start);
        match out.iter_mut().find(|(b, _)| *b == block) {
            Some((_, of_block)) => merge_into(of_block, [(start, rollup)]),
            None => out.push((block, vec![(start, rollup)])),
        }
    }
    out
}

/// An hour of a machine at 10 s: memory in KiB pages, a disk growing in 4 KiB blocks.
fn an_hour() -> Vec<crate::domain::Sample> {
    (0..360u64)
        .map(|i| {
            let mut s = sample(
                i + 1,
                HOUR.block_start_ms(T0) + i * 10_000 + i % 3,
                10.0 + (i * 7 % 23) as f64,
                i * 400_000 + (i * i * 37) % 90_000,
                i * 120_000 + (i * 53) % 30_000,
            );
            s.memory_used_bytes = ((3 << 20) + (i * 7_919) % 40_000) * 1024;
            s.memory_total_bytes = 16_318_412 * 1024;
            s.disks[0].used_bytes = (40 << 30) + i * 12 * 4096;
            s.disks[0].total_bytes = 500 << 30;
            s
        })
        .collect()
}

#[test]
fn blocks_hold_an_hour_of_five_minute_buckets_or_a_day_of_hours() {
    assert_eq!(FIVE.block_slots(), 12);
    assert_eq!(HOUR.block_slots(), 6);
    for resolution in Resolution::ALL {
        assert_eq!(resolution.block_ms() % resolution.width_ms(), 0);
        let start = resolution.block_start_ms(T0);
        assert_eq!(start % resolution.block_ms(), 0);
        assert!(start <= T0 && T0 < start + resolution.block_ms());
    }
}

#[test]
fn a_block_is_much_smaller_than_its_buckets_one_by_one() {
    let samples = an_hour();
    let [(start, buckets)] = &blocks(FIVE, &samples)[..] else {
        panic!("an hour aligned to its block is one block");
    };
    assert_eq!(buckets.len(), 12);
    let block = encode(FIVE, *start, buckets);
    let one_by_one: usize = buckets.iter().map(|(_, r)| r.encode().len()).sum();
    assert_eq!(decode(FIVE, *start, &block).as_ref(), Ok(buckets));
    assert!(
        block.len() * 10 < one_by_one * 8,
        "block {} bytes, buckets one by one {one_by_one}",
        block.len()
    );
}

#[test]
fn merging_into_a_block_keeps_bucket_order_and_merges_a_bucket_present_in_both() {
    let samples = an_hour();
    let (first, second) = samples.split_at(100);
    let mut left = blocks(FIVE, first).remove(0).1;
    let prev = crate::store::rollup::CounterPoint::of(&first[99]).expect("storable");
    let mut builder = RollupBuilder::after(FIVE, Some(prev));
    let mut right = Vec::new();
    for s in second {
        right.extend(builder.push(s).expect("storable"));
    }
    right.extend(builder.close());
    right.reverse();
    merge_into(&mut left, right);
    assert_eq!(left, blocks(FIVE, &samples).remove(0).1);
}

#[test]
fn malformed_blocks_are_errors() {
    let samples = an_hour();
    let (start, buckets) = blocks(FIVE, &samples).remove(0);
    let good = encode(FIVE, start, &buckets);
    for len in 0..good.len() {
        assert!(decode(FIVE, start, &good[..len]).is_err(), "prefix {len}");
    }
    let mut trailing = good.clone();
    trailing.push(0);
    assert!(decode(FIVE, start, &trailing).is_err());
    let mut newer = good.clone();
    newer[0] = BLOCK_VERSION + 1;
    assert_eq!(
        decode(FIVE, start, &newer),
        Err(RollupError::Decode(DecodeError::Version {
            found: BLOCK_VERSION + 1,
            expected: BLOCK_VERSION
        }))
    );
    let shifts = [0u8; STATS];
    let with = |slots: &[u8], shifts: &[u8], rest: &[u8]| {
        let mut bytes = vec![BLOCK_VERSION];
        bytes.extend(slots);
        bytes.extend(shifts);
        bytes.extend(rest);
        bytes
    };
    // An empty block, a slot past the block's twelve, a shift past 64.
    assert!(decode(FIVE, start, &with(&[0], &shifts, &[])).is_err());
    assert!(decode(FIVE, start, &with(&[0x80, 0x20], &shifts, &[0, 0])).is_err());
    let mut wide = shifts;
    wide[0] = 65;
    assert!(decode(FIVE, start, &with(&[1], &wide, &[0, 0, 0])).is_err());
    // An empty bucket decodes; more rate intervals than samples do not; nor a still stat
    // without samples, or past the thirteen.
    assert_eq!(
        decode(FIVE, start, &with(&[1], &shifts, &[0, 0, 0])),
        Ok(vec![(start, Rollup::default())])
    );
    assert!(decode(FIVE, start, &with(&[1], &shifts, &[0, 2, 0])).is_err());
    assert!(decode(FIVE, start, &with(&[1], &shifts, &[0, 0, 1])).is_err());
    let mut still_rates = vec![2, 0, 0x80, 0x10];
    still_rates.extend([0; 33]);
    assert!(decode(FIVE, start, &with(&[1], &shifts, &still_rates)).is_err());
    let mut still_past = vec![2, 2, 0x80, 0x40];
    still_past.extend([0; 39]);
    assert!(decode(FIVE, start, &with(&[1], &shifts, &still_past)).is_err());
    // All thirteen still, against minima of 0: decodes.
    let mut all_still = vec![2, 2, 0xff, 0x3f];
    assert!(decode(FIVE, start, &with(&[1], &shifts, &all_still)).is_ok());
    all_still.push(0);
    assert!(decode(FIVE, start, &with(&[1], &shifts, &all_still)).is_err());
    // A block whose last bucket would start past u64::MAX (a damaged key).
    let near_end = u64::MAX - FIVE.width_ms();
    assert!(decode(FIVE, near_end, &with(&[1], &shifts, &[0, 0, 0])).is_ok());
    assert!(decode(FIVE, near_end, &with(&[0x80, 0x10], &shifts, &[0, 0, 0])).is_err());
    // A u64 stat whose minimum is negative.
    let mut negative = vec![2, 0, 0];
    negative.extend([0; 12]);
    negative.extend([1, 0, 0]);
    negative.extend([0; 18]);
    assert!(decode(FIVE, start, &with(&[1], &shifts, &negative)).is_err());
}

prop_compose! {
    fn arb_stat()(a in any::<u64>(), b in any::<u64>(), sum in any::<i128>()) -> Stat<u64> {
        Stat { min: a.min(b), max: a.max(b), sum: sum >> 8 }
    }
}

prop_compose! {
    fn arb_signed()(a in any::<i64>(), b in any::<i64>(), sum in any::<i128>()) -> Stat<i64> {
        Stat { min: a.min(b), max: a.max(b), sum: sum >> 8 }
    }
}

prop_compose! {
    /// Any rollup the type allows, whether or not samples could make it: the codec must be
    /// exact for all of them.
    fn arb_rollup()(
        count in 0u64..1_000_000,
        rates in any::<prop::sample::Index>(),
        signed in prop::array::uniform4(arb_signed()),
        unsigned in prop::array::uniform9(arb_stat()),
        shift in 0u32..40,
    ) -> Rollup {
        let rate_count = rates.index(count as usize + 1) as u64;
        let low = |s: Stat<u64>| Stat { min: s.min >> shift << shift, max: s.max >> shift << shift, sum: s.sum >> shift << shift };
        let mut r = Rollup { count, rate_count, ..Rollup::default() };
        if count > 0 {
            [r.cpu, r.load[0], r.load[1], r.load[2]] = signed;
            r.memory_used = low(unsigned[0]);
            r.memory_total = unsigned[1];
            r.swap_used = low(unsigned[2]);
            r.swap_total = unsigned[3];
            r.disk_used = low(unsigned[4]);
            r.disk_total = unsigned[5];
            r.process_count = unsigned[6];
        }
        if rate_count > 0 {
            r.net_rx_rate = unsigned[7];
            r.net_tx_rate = unsigned[8];
        }
        r
    }
}

proptest! {
    #[test]
    fn any_buckets_round_trip(
        rollups in prop::collection::vec(arb_rollup(), 24),
        present in any::<u32>(),
        block in 0u64..1_000_000,
    ) {
        for resolution in Resolution::ALL {
            let start = block * resolution.block_ms();
            let buckets: Vec<(u64, Rollup)> = rollups
                .iter()
                .take(resolution.block_slots() as usize)
                .enumerate()
                .filter(|(i, _)| present >> i & 1 == 1)
                .map(|(i, r)| (start + i as u64 * resolution.width_ms(), *r))
                .collect();
            if buckets.is_empty() {
                continue;
            }
            let bytes = encode(resolution, start, &buckets);
            prop_assert_eq!(decode(resolution, start, &bytes), Ok(buckets));
        }
    }

    #[test]
    fn the_buckets_of_samples_round_trip(samples in arb_series()) {
        for resolution in Resolution::ALL {
            for (start, buckets) in blocks(resolution, &samples) {
                let bytes = encode(resolution, start, &buckets);
                prop_assert_eq!(decode(resolution, start, &bytes), Ok(buckets));
            }
        }
    }

    #[test]
    fn random_bytes_never_panic_the_block_decoder(
        raw in prop::collection::vec(any::<u8>(), 0..200),
        start in any::<u64>(),
    ) {
        let _outcome = decode(FIVE, start, &raw);
        let mut versioned = vec![BLOCK_VERSION];
        versioned.extend(&raw);
        let _outcome = decode(HOUR, start, &versioned);
    }
}
