use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::domain::{DiskUsage, Sample};

pub(super) const T0: u64 = 1_700_000_120_000; // 20 s into a 5-minute bucket

pub(super) fn sample(seq: u64, ms: u64, cpu: f64, rx: u64, tx: u64) -> Sample {
    Sample {
        seq,
        time: crate::store::chunk::tests::at(ms),
        cpu_percent: cpu,
        load: [0.5, 0.4, 0.3],
        memory_used_bytes: 1_000 + seq,
        memory_total_bytes: 8_000,
        swap_used_bytes: 0,
        swap_total_bytes: 0,
        disks: vec![
            DiskUsage {
                mount_point: "/".to_owned(),
                used_bytes: 10,
                total_bytes: 100,
            },
            DiskUsage {
                mount_point: "/home".to_owned(),
                used_bytes: 5,
                total_bytes: 50,
            },
        ],
        network_rx_bytes: rx,
        network_tx_bytes: tx,
        uptime: Duration::from_secs(60),
        process_count: 100 + seq as u32,
    }
}

fn fold(samples: &[Sample], mut prev: Option<CounterPoint>) -> Rollup {
    let mut rollup = Rollup::default();
    for s in samples {
        rollup.add(s, prev).expect("storable");
        prev = Some(CounterPoint::of(s).expect("storable"));
    }
    rollup
}

#[test]
fn buckets_are_aligned_to_the_epoch() {
    let five = Resolution::FiveMinutes;
    let hour = Resolution::OneHour;
    assert_eq!(five.bucket_start_ms(0), 0);
    assert_eq!(five.bucket_start_ms(299_999), 0);
    assert_eq!(five.bucket_start_ms(300_000), 300_000);
    assert_eq!(hour.bucket_start_ms(3_600_000 * 5 + 1), 3_600_000 * 5);
    assert_eq!(five.bucket_start_ms(T0), T0 - 20_000);
    assert_eq!(hour.width_ms() % five.width_ms(), 0);
    assert_eq!(five.bucket_start_ms(u64::MAX) % five.width_ms(), 0);
}

#[test]
fn a_rollup_holds_count_min_max_and_sum_in_stored_units() {
    let samples = [
        sample(1, T0, 10.004, 0, 0),
        sample(2, T0 + 10_000, 30.0, 10_000, 5_000),
        sample(3, T0 + 20_000, 20.006, 30_000, 5_000),
    ];
    let r = fold(&samples, None);
    assert_eq!(r.count, 3);
    assert_eq!((r.cpu.min, r.cpu.max, r.cpu.sum), (1000, 3000, 6001));
    assert_eq!(r.cpu.mean(r.count), Some(6001.0 / 3.0));
    assert_eq!((r.load[0].min, r.load[2].max), (50, 30));
    assert_eq!((r.memory_used.min, r.memory_used.max), (1_001, 1_003));
    assert_eq!((r.memory_total.min, r.memory_total.sum), (8_000, 24_000));
    assert_eq!(r.swap_total.sum, 0);
    assert_eq!(r.disk_used.sum, 3 * 15);
    assert_eq!(r.disk_total.max, 150);
    assert_eq!(r.process_count.sum, 101 + 102 + 103);
    assert_eq!(r.rate_count, 2);
    assert_eq!((r.net_rx_rate.min, r.net_rx_rate.max), (1_000, 2_000));
    assert_eq!((r.net_tx_rate.min, r.net_tx_rate.max), (0, 500));
    assert_eq!(Rollup::default().cpu.mean(0), None);
}

#[test]
fn rates_skip_resets_and_intervals_where_time_does_not_advance() {
    let prev = CounterPoint {
        time_ms: 10_000,
        rx: 5_000,
        tx: 5_000,
    };
    let at = |time_ms, rx, tx| CounterPoint { time_ms, rx, tx };
    assert_eq!(
        at(12_000, 7_000, 5_001).rates_since(&prev),
        Some((1_000, 0))
    );
    assert_eq!(at(12_000, 4_999, 6_000).rates_since(&prev), None);
    assert_eq!(at(12_000, 6_000, 4_000).rates_since(&prev), None);
    assert_eq!(at(10_000, 6_000, 6_000).rates_since(&prev), None);
    assert_eq!(at(9_000, 6_000, 6_000).rates_since(&prev), None);
    assert_eq!(
        at(10_001, u64::MAX, u64::MAX).rates_since(&at(10_000, 0, 0)),
        Some((u64::MAX, u64::MAX))
    );
    // A reboot in the middle of a bucket: the interval across it has no rate.
    let samples = [
        sample(1, T0, 1.0, 9_000, 9_000),
        sample(2, T0 + 1_000, 1.0, 100, 100),
        sample(3, T0 + 2_000, 1.0, 1_100, 600),
    ];
    let r = fold(&samples, None);
    assert_eq!(r.rate_count, 1);
    assert_eq!((r.net_rx_rate.sum, r.net_tx_rate.sum), (1_000, 500));
}

#[test]
fn a_sample_without_a_stored_form_is_refused_and_changes_nothing() {
    let mut r = fold(&[sample(1, T0, 5.0, 0, 0)], None);
    let before = r;
    let bad = sample(2, T0 + 1_000, f64::NAN, 1, 1);
    assert!(matches!(r.add(&bad, None), Err(RollupError::Sample(_))));
    assert_eq!(r, before);
    let mut builder = RollupBuilder::new(Resolution::FiveMinutes);
    builder.push(&sample(1, T0, 5.0, 0, 0)).expect("storable");
    let open = builder.open();
    assert!(builder.push(&bad).is_err());
    assert_eq!(builder.open(), open);
}

#[test]
fn the_builder_closes_a_bucket_when_a_sample_leaves_it() {
    let mut b = RollupBuilder::new(Resolution::FiveMinutes);
    let start = Resolution::FiveMinutes.bucket_start_ms(T0);
    assert_eq!(b.push(&sample(1, T0, 1.0, 0, 0)).expect("ok"), None);
    assert_eq!(
        b.push(&sample(2, T0 + 10_000, 2.0, 1, 1)).expect("ok"),
        None
    );
    let next = start + 300_000;
    let (closed_at, closed) = b
        .push(&sample(3, next, 3.0, 2, 2))
        .expect("ok")
        .expect("the first bucket closes");
    assert_eq!((closed_at, closed.count), (start, 2));
    // A late sample goes back to the first bucket: the second closes, a small one opens.
    let (at, r) = b
        .push(&sample(4, T0 + 20_000, 4.0, 3, 3))
        .expect("ok")
        .expect("the second bucket closes");
    assert_eq!((at, r.count, r.rate_count), (next, 1, 1));
    let (at, late) = b.close().expect("open bucket");
    assert_eq!((at, late.count), (start, 1));
    let mut merged = closed;
    merged.merge(&late);
    assert_eq!(merged.count, 3);
    assert_eq!(b.close(), None);
}

#[test]
fn a_builder_after_a_previous_chunk_keeps_the_first_rate() {
    let first = sample(1, T0, 1.0, 1_000, 0);
    let second = sample(2, T0 + 10_000, 2.0, 11_000, 0);
    let mut fresh = RollupBuilder::new(Resolution::FiveMinutes);
    fresh.push(&second).expect("ok");
    assert_eq!(fresh.open().expect("open").1.rate_count, 0);
    let prev = CounterPoint::of(&first).expect("storable");
    let mut after = RollupBuilder::after(Resolution::FiveMinutes, Some(prev));
    assert_eq!(after.previous(), Some(prev));
    after.push(&second).expect("ok");
    let (_, rollup) = after.open().expect("open");
    assert_eq!((rollup.rate_count, rollup.net_rx_rate.max), (1, 1_000));
    assert_eq!(
        after.previous(),
        Some(CounterPoint::of(&second).expect("storable"))
    );
}

#[test]
fn an_encoded_rollup_is_compact() {
    let samples: Vec<Sample> = (0..30)
        .map(|i| {
            let mut s = sample(
                i + 1,
                T0 + i * 10_000,
                10.0 + i as f64,
                i * 300_000,
                i * 90_000,
            );
            s.memory_used_bytes = (3 << 30) + i * 1_048_576;
            s.disks[0].used_bytes = 40 << 30;
            s.disks[0].total_bytes = 500 << 30;
            s
        })
        .collect();
    let bytes = fold(&samples, None).encode();
    assert!(bytes.len() < 110, "{} bytes", bytes.len());
    assert_eq!(Rollup::default().encode(), [ROLLUP_VERSION, 0, 0]);
}

#[test]
fn malformed_rollups_are_errors() {
    let good = fold(
        &[sample(1, T0, 1.0, 0, 0), sample(2, T0 + 1, 2.0, 5, 5)],
        None,
    )
    .encode();
    for len in 0..good.len() {
        assert!(Rollup::decode(&good[..len]).is_err(), "prefix {len}");
    }
    let mut trailing = good.clone();
    trailing.push(0);
    assert!(Rollup::decode(&trailing).is_err());
    let mut newer = good.clone();
    newer[0] = ROLLUP_VERSION + 1;
    assert_eq!(
        Rollup::decode(&newer),
        Err(RollupError::Decode(DecodeError::Version {
            found: ROLLUP_VERSION + 1,
            expected: ROLLUP_VERSION
        }))
    );
    // More rate intervals than samples.
    assert!(Rollup::decode(&[ROLLUP_VERSION, 0, 1]).is_err());
    // A u64 stat whose max overflows u64.
    let mut overflow = vec![ROLLUP_VERSION, 1];
    for _ in 0..4 {
        overflow.extend([0, 0, 0]);
    }
    overflow.extend([
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 1, 0,
    ]);
    assert!(Rollup::decode(&overflow).is_err());
}

// === Properties ===

prop_compose! {
    pub(super) fn arb_series()(steps in prop::collection::vec(
        (1u64..200_000, 0u32..10_000, 0u64..1_000_000, 0u64..1_000_000, any::<bool>(), any::<u64>()),
        1..60,
    ), start in 0u64..(1 << 45)) -> Vec<Sample> {
        let mut time = start;
        let (mut rx, mut tx) = (0u64, 0u64);
        steps.into_iter().enumerate().map(|(i, (gap, cpu, drx, dtx, reset, mem))| {
            time += gap;
            if reset { rx = drx; tx = dtx; } else { rx += drx; tx += dtx; }
            let mut s = sample(i as u64 + 1, time, f64::from(cpu) / 100.0, rx, tx);
            s.memory_used_bytes = mem;
            s
        }).collect()
    }
}

proptest! {
    #[test]
    fn merging_the_rollups_of_parts_equals_the_rollup_of_the_whole(
        samples in arb_series(),
        split in any::<prop::sample::Index>(),
    ) {
        let at = split.index(samples.len() + 1);
        let (a, b) = samples.split_at(at);
        let prev_b = a.last().map(|s| CounterPoint::of(s).expect("storable"));
        let mut left = fold(a, None);
        let right = fold(b, prev_b);
        let whole = fold(&samples, None);
        let mut right_first = right;
        right_first.merge(&left);
        left.merge(&right);
        prop_assert_eq!(left, whole);
        prop_assert_eq!(right_first, whole);
    }

    #[test]
    fn an_hour_is_the_merge_of_its_twelve_five_minute_rollups(samples in arb_series()) {
        let mut hours = RollupBuilder::new(Resolution::OneHour);
        let mut fives = RollupBuilder::new(Resolution::FiveMinutes);
        let mut by_hour: Vec<(u64, Rollup)> = Vec::new();
        let mut from_fives: Vec<(u64, Rollup)> = Vec::new();
        let mut fold_five = |(start, r): (u64, Rollup)| {
            let hour = Resolution::OneHour.bucket_start_ms(start);
            match from_fives.last_mut() {
                Some((h, acc)) if *h == hour => acc.merge(&r),
                _ => from_fives.push((hour, r)),
            }
        };
        for s in &samples {
            by_hour.extend(hours.push(s).expect("storable"));
            if let Some(closed) = fives.push(s).expect("storable") {
                fold_five(closed);
            }
        }
        by_hour.extend(hours.close());
        if let Some(closed) = fives.close() {
            fold_five(closed);
        }
        prop_assert_eq!(by_hour, from_fives);
    }

    #[test]
    fn rollups_round_trip_and_ignore_sub_hundredth_noise(samples in arb_series()) {
        let r = fold(&samples, None);
        prop_assert_eq!(Rollup::decode(&r.encode()), Ok(r));
        let stored: Vec<Sample> = samples
            .iter()
            .map(|s| crate::store::chunk::stored(s).expect("storable"))
            .collect();
        prop_assert_eq!(fold(&stored, None), r);
    }

    #[test]
    fn random_bytes_never_panic_the_decoder(raw in prop::collection::vec(any::<u8>(), 0..120)) {
        let _outcome = Rollup::decode(&raw);
        let mut versioned = vec![ROLLUP_VERSION];
        versioned.extend(&raw);
        let _outcome = Rollup::decode(&versioned);
    }
}
