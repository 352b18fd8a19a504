use std::time::{Duration, UNIX_EPOCH};

use proptest::prelude::*;

use super::*;
use crate::domain::{DiskUsage, Sample};

pub(crate) fn disk(mount: &str, used: u64, total: u64) -> DiskUsage {
    DiskUsage {
        mount_point: mount.to_owned(),
        used_bytes: used,
        total_bytes: total,
    }
}

/// The time `ms` milliseconds after the Unix epoch (within `Time`'s range).
pub(crate) fn at(ms: u64) -> Time {
    Time::new(UNIX_EPOCH + Duration::from_millis(ms)).expect("a time within 1970..=9999")
}

/// A plausible sample: `seq` at `ms` after the epoch, values moving a little with `seq`.
pub(crate) fn sample(seq: u64, ms: u64) -> Sample {
    Sample {
        seq,
        time: at(ms),
        cpu_percent: 10.0 + (seq % 7) as f64 * 1.25,
        load: [0.5, 0.42, 0.3],
        memory_used_bytes: (2 << 30) + seq * 4096,
        memory_total_bytes: 8 << 30,
        swap_used_bytes: 0,
        swap_total_bytes: 1 << 30,
        disks: vec![
            disk("/", 20 << 30, 100 << 30),
            disk("/boot", 1 << 28, 1 << 30),
        ],
        network_rx_bytes: 1_000_000 + seq * 1_500,
        network_tx_bytes: 500_000 + seq * 700,
        uptime: Duration::from_secs(3_600)
            + Duration::from_millis(ms.saturating_sub(1_700_000_000_000)),
        process_count: 200 + (seq % 3) as u32,
    }
}

fn series(n: u64) -> Vec<Sample> {
    (1..=n)
        .map(|seq| sample(seq, 1_700_000_000_000 + seq * 10_000 + seq % 3))
        .collect()
}

fn encode(samples: &[Sample]) -> Vec<u8> {
    let mut enc = ChunkEncoder::new();
    for s in samples {
        enc.push(s).expect("valid sample");
    }
    enc.finish()
}

fn decode(chunk: &[u8]) -> Result<Vec<Sample>, ChunkError> {
    ChunkDecoder::new(chunk)?.collect()
}

fn stored_all(samples: &[Sample]) -> Vec<Sample> {
    samples
        .iter()
        .map(|s| stored(s).expect("storable"))
        .collect()
}

#[test]
fn a_sealed_chunk_decodes_to_the_stored_form_of_every_sample() {
    let samples = series(300);
    let chunk = encode(&samples);
    assert_eq!(decode(&chunk).expect("valid chunk"), stored_all(&samples));
}

#[test]
fn the_header_summarises_the_chunk_without_decoding_it() {
    let mut samples = series(5);
    samples[3].time = at(1_600_000_000_000);
    let chunk = encode(&samples);
    let (header, body) = ChunkHeader::parse(&chunk).expect("valid header");
    assert_eq!(header.count, 5);
    assert_eq!((header.first_seq, header.last_seq), (1, 5));
    assert_eq!(header.min_time_ms, 1_600_000_000_000);
    assert_eq!(header.max_time_ms, 1_700_000_050_002);
    assert!(!body.is_empty());
    assert!(header.overlaps(1_600_000_000_000, 1_600_000_000_001));
    assert!(!header.overlaps(0, 1_600_000_000_000));
    assert!(!header.overlaps(1_700_000_050_003, u64::MAX));
}

#[test]
fn a_seq_not_above_the_last_is_refused_and_appends_nothing() {
    let mut enc = ChunkEncoder::new();
    enc.push(&sample(5, 1_700_000_000_000)).expect("first");
    let before = enc.clone().finish();
    for seq in [5, 4, 0] {
        assert_eq!(
            enc.push(&sample(seq, 1_700_000_010_000)),
            Err(ChunkError::SeqNotIncreasing { seq, last: 5 })
        );
    }
    assert_eq!(enc.clone().finish(), before);
    enc.push(&sample(6, 1_700_000_010_000)).expect("next seq");
    assert_eq!(enc.len(), 2);
}

#[test]
fn a_sample_without_a_stored_form_is_refused_and_appends_nothing() {
    let mut enc = ChunkEncoder::new();
    enc.push(&sample(1, 1_700_000_000_000)).expect("first");
    let before = enc.clone().finish();
    let mut bad = Vec::new();
    for cpu in [f64::NAN, f64::INFINITY, 1e300, -1e300] {
        bad.push(Sample {
            cpu_percent: cpu,
            ..sample(2, 1_700_000_010_000)
        });
    }
    bad.push(Sample {
        load: [0.0, f64::NEG_INFINITY, 0.0],
        ..sample(2, 1_700_000_010_000)
    });
    bad.push(Sample {
        uptime: Duration::MAX,
        ..sample(2, 1_700_000_010_000)
    });
    for s in &bad {
        assert!(
            matches!(enc.push(s), Err(ChunkError::OutOfRange(_))),
            "{s:?}"
        );
    }
    assert_eq!(enc.clone().finish(), before);
    enc.push(&sample(2, 1_700_000_010_000))
        .expect("a good sample after the bad ones");
    assert_eq!(decode(&enc.finish()).expect("valid").len(), 2);
}

#[test]
fn times_going_backwards_and_jumping_round_trip() {
    let times = [
        1_700_000_000_000,
        1_699_999_999_000,
        1_700_000_000_500,
        0,
        u64::from(u32::MAX) * 1_000,
        1_700_000_001_000,
    ];
    let samples: Vec<Sample> = times
        .iter()
        .enumerate()
        .map(|(i, &ms)| Sample {
            time: at(ms),
            ..sample(i as u64 + 1, 1_700_000_000_000)
        })
        .collect();
    let chunk = encode(&samples);
    assert_eq!(decode(&chunk).expect("valid"), stored_all(&samples));
    let (header, _) = ChunkHeader::parse(&chunk).expect("valid");
    assert_eq!(
        (header.min_time_ms, header.max_time_ms),
        (0, u64::from(u32::MAX) * 1_000)
    );
}

#[test]
fn time_and_uptime_are_truncated_to_whole_milliseconds() {
    let mut s = sample(1, 1_700_000_000_000);
    s.time = Time::new(s.time.get() + Duration::from_nanos(999_999)).expect("in range");
    s.uptime += Duration::from_nanos(1_999_999);
    let out = stored(&s).expect("storable");
    assert_eq!(out.time, at(1_700_000_000_000));
    assert_eq!(
        out.uptime,
        Duration::from_millis(s.uptime.as_millis() as u64)
    );
    assert_eq!(time_to_millis(UNIX_EPOCH), Ok(0));
    assert_eq!(
        time_to_millis(UNIX_EPOCH - Duration::from_nanos(1)),
        Err(ChunkError::TimeBeforeEpoch)
    );
}

#[test]
fn gauges_are_stored_in_hundredths_by_the_one_quantize_rule() {
    assert_eq!(quantize(12.345_678, "x"), Ok(1235));
    assert_eq!(quantize(0.004_999, "x"), Ok(0));
    assert_eq!(quantize(0.005, "x"), Ok(1));
    assert_eq!(quantize(-0.005, "x"), Ok(-1));
    assert_eq!(quantize(-0.0, "x"), Ok(0));
    let max = MAX_QUANTIZED as f64 / 100.0;
    assert_eq!(quantize(max, "x"), Ok(MAX_QUANTIZED));
    assert_eq!(quantize(-max, "x"), Ok(-MAX_QUANTIZED));
    assert_eq!(quantize(max + 1.0, "x"), Err(ChunkError::OutOfRange("x")));
    let mut s = sample(1, 1_700_000_000_000);
    s.cpu_percent = f64::from(37.123_45_f32);
    s.load = [1.005, 2.0 / 3.0, 7.777];
    let out = stored(&s).expect("storable");
    assert_eq!(out.cpu_percent, 37.12);
    // 1.005 is stored in binary just below 1.005, so its hundredths round down.
    assert_eq!(out.load, [1.0, 0.67, 7.78]);
}

#[test]
fn two_decimal_figures_round_trip_exactly() {
    // Load averages as the kernel prints them, and anything else with two decimals.
    for k in 0..200_000i64 {
        let text = format!("{}.{:02}", k / 100, k % 100);
        let x: f64 = text.parse().expect("decimal");
        assert_eq!(quantize(x, "x"), Ok(k), "{text}");
        assert_eq!(dequantize(k), x, "{text}");
    }
}

#[test]
fn the_open_chunk_reads_back_every_prefix_in_place() {
    let samples = series(50);
    let mut enc = ChunkEncoder::new();
    assert_eq!(enc.samples().count(), 0);
    for (i, s) in samples.iter().enumerate() {
        enc.push(s).expect("valid");
        let head: Vec<Sample> = enc.samples().collect::<Result<_, _>>().expect("valid head");
        assert_eq!(head, stored_all(&samples[..=i]));
    }
    assert_eq!(enc.samples().header(), enc.header());
}

#[test]
fn a_resumed_chunk_codes_exactly_as_one_never_sealed() {
    let samples = series(60);
    for split in [0, 1, 2, 30, 59, 60] {
        let mut whole = ChunkEncoder::new();
        for s in &samples {
            whole.push(s).expect("valid");
        }
        let mut first = ChunkEncoder::new();
        for s in &samples[..split] {
            first.push(s).expect("valid");
        }
        let mut resumed = ChunkEncoder::resume(&first.sealed()).expect("a chunk just sealed");
        assert_eq!(resumed.header(), first.header());
        for s in &samples[split..] {
            resumed.push(s).expect("valid");
        }
        assert_eq!(resumed.finish(), whole.sealed(), "split at {split}");
    }
    let mut damaged = encode(&samples);
    damaged.truncate(damaged.len() - 3);
    assert!(ChunkEncoder::resume(&damaged).is_err());
}

#[test]
fn heap_bytes_follow_the_body() {
    let mut enc = ChunkEncoder::new();
    let empty = enc.heap_bytes();
    for s in &series(100) {
        enc.push(s).expect("valid");
    }
    assert!(
        enc.heap_bytes() >= empty + enc.body_len(),
        "{}",
        enc.heap_bytes()
    );
}

#[test]
fn an_empty_chunk_seals_and_decodes_to_nothing() {
    let chunk = ChunkEncoder::new().finish();
    let (header, body) = ChunkHeader::parse(&chunk).expect("valid");
    assert_eq!(header, ChunkHeader::default());
    assert!(body.is_empty());
    assert!(!header.overlaps(0, u64::MAX));
    assert_eq!(decode(&chunk).expect("valid"), Vec::<Sample>::new());
}

#[test]
fn disk_list_changes_round_trip_with_order_and_duplicates() {
    let lists = [
        vec![disk("/", 1, 10), disk("/home", 2, 20)],
        vec![disk("/", 1, 10), disk("/home", 2, 20)],
        vec![disk("/home", 3, 20), disk("/", 1, 10)],
        vec![],
        vec![disk("/mnt/ünïcødé", 5, 50)],
        vec![disk("/", 9, 10), disk("/", 8, 10), disk("/", 9, 10)],
        vec![disk("", 0, 0), disk("/", u64::MAX, 0)],
        vec![disk("/home", 2, 20), disk("/", 1, 10)],
        vec![disk("/home", 2, 20), disk("/", 1, 10)],
    ];
    let samples: Vec<Sample> = lists
        .iter()
        .enumerate()
        .map(|(i, disks)| Sample {
            disks: disks.clone(),
            ..sample(i as u64 + 1, 1_700_000_000_000 + i as u64 * 1_000)
        })
        .collect();
    let chunk = encode(&samples);
    let decoded = decode(&chunk).expect("valid");
    for (got, want) in decoded.iter().zip(&lists) {
        assert_eq!(&got.disks, want);
    }
    // The same decoder state, reused across samples whose lists shrink and grow.
    let mut dec = ChunkDecoder::new(&chunk).expect("valid");
    let mut out = stored(&samples[0]).expect("storable");
    for want in &lists {
        assert!(dec.next_into(&mut out).expect("valid"));
        assert_eq!(&out.disks, want);
    }
    assert!(!dec.next_into(&mut out).expect("end"));
    // Totals without the lists: every listed disk counted once, a repeated mount point too.
    let mut dec = ChunkDecoder::new(&chunk).expect("valid");
    for want in &samples {
        let want = SampleTotals::of(&stored(want).expect("storable"));
        assert_eq!(dec.next_totals().expect("valid"), Some(want));
    }
    assert_eq!(dec.next_totals().expect("end"), None);
}

#[test]
fn extreme_integers_and_counter_resets_round_trip() {
    let mut samples = series(6);
    samples[1].network_rx_bytes = u64::MAX;
    samples[2].network_rx_bytes = 0;
    samples[3].memory_used_bytes = u64::MAX;
    samples[3].process_count = u32::MAX;
    samples[4].seq = u64::MAX - 1;
    samples[5].seq = u64::MAX;
    samples[5].network_tx_bytes = 1;
    samples[5].cpu_percent = -(MAX_QUANTIZED as f64) / 100.0;
    let chunk = encode(&samples);
    assert_eq!(decode(&chunk).expect("valid"), stored_all(&samples));
    let mut enc = ChunkEncoder::new();
    enc.push(&samples[5]).expect("first");
    assert!(matches!(
        enc.push(&samples[5]),
        Err(ChunkError::SeqNotIncreasing { .. })
    ));
}

#[test]
fn regular_samples_cost_a_few_bytes_each() {
    let samples = series(720);
    let chunk = encode(&samples);
    let per_sample = chunk.len() as f64 / samples.len() as f64;
    assert!(per_sample < 8.0, "{per_sample} bytes per sample");
    // Multiples of 4 KiB drop their zero low bits: the same steps in odd bytes cost more.
    let odd: Vec<Sample> = samples
        .iter()
        .map(|s| Sample {
            memory_used_bytes: s.memory_used_bytes + s.seq * 3,
            ..s.clone()
        })
        .collect();
    assert!(encode(&odd).len() > chunk.len());
}

#[test]
fn every_strict_prefix_of_a_chunk_is_an_error() {
    let chunk = encode(&series(40));
    for len in 0..chunk.len() {
        assert!(decode(&chunk[..len]).is_err(), "prefix of {len} bytes");
    }
}

#[test]
fn trailing_bytes_and_a_wrong_header_are_errors() {
    let mut chunk = encode(&series(3));
    chunk.push(0);
    assert!(decode(&chunk).is_err());
    chunk.pop();
    let mut newer = chunk.clone();
    newer[0] = CHUNK_VERSION + 1;
    assert_eq!(
        ChunkDecoder::new(&newer).err(),
        Some(ChunkError::Decode(DecodeError::Version {
            found: CHUNK_VERSION + 1,
            expected: CHUNK_VERSION
        }))
    );
    // Count 3 but a seq span of 1 cannot hold three increasing seqs.
    let mut lying = vec![CHUNK_VERSION, 3, 1, 1, 0, 0];
    lying.push(0);
    assert_eq!(
        ChunkHeader::parse(&lying).err(),
        Some(ChunkError::Decode(DecodeError::Corrupt("chunk header")))
    );
    // A header claiming a different last seq than the body holds.
    let mut header_lies = chunk.clone();
    header_lies[3] += 1;
    assert!(decode(&header_lies).is_err());
}

// === Properties ===

fn arb_gauge() -> impl Strategy<Value = f64> {
    prop_oneof![
        (0i64..1_000_000).prop_map(|k| k as f64 / 100.0),
        any::<f32>()
            .prop_filter("finite", |x| x.is_finite() && x.abs() < 1e9)
            .prop_map(f64::from),
        -1e10f64..1e10,
    ]
}

fn arb_disks() -> impl Strategy<Value = Vec<DiskUsage>> {
    let name = prop::sample::select(vec!["/", "/boot", "/home", "/var/lib/docker", "", "é"]);
    prop::collection::vec(
        (name, any::<u64>(), any::<u64>()).prop_map(|(n, u, t)| disk(n, u, t)),
        0..5,
    )
}

prop_compose! {
    pub(crate) fn arb_sample()(
        gap in 1u64..1_000,
        time_ms in 0u64..=Time::LATEST_SECS * 1_000,
        gauges in (arb_gauge(), arb_gauge(), arb_gauge(), arb_gauge()),
        memory in (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>()),
        disks in arb_disks(),
        counters in (any::<u64>(), any::<u64>(), 0u64..(1 << 50), any::<u32>()),
        nanos in 0u32..1_000_000,
    ) -> Sample {
        Sample {
            seq: gap,
            time: Time::new(
                UNIX_EPOCH + Duration::from_millis(time_ms) + Duration::from_nanos(u64::from(nanos)),
            )
            .expect("within Time's range"),
            cpu_percent: gauges.0,
            load: [gauges.1, gauges.2, gauges.3],
            memory_used_bytes: memory.0,
            memory_total_bytes: memory.1,
            swap_used_bytes: memory.2,
            swap_total_bytes: memory.3,
            disks,
            network_rx_bytes: counters.0,
            network_tx_bytes: counters.1,
            uptime: Duration::from_millis(counters.2) + Duration::from_nanos(u64::from(nanos)),
            process_count: counters.3,
        }
    }
}

/// Samples whose seqs strictly increase (the strategy's `seq` is the gap to the previous).
pub(crate) fn arb_series(max: usize) -> impl Strategy<Value = Vec<Sample>> {
    (any::<u32>(), prop::collection::vec(arb_sample(), 0..max)).prop_map(|(start, mut samples)| {
        let mut seq = u64::from(start);
        for s in &mut samples {
            seq += s.seq;
            s.seq = seq;
        }
        samples
    })
}

proptest! {
    #[test]
    fn any_series_round_trips_sealed_and_open(samples in arb_series(40)) {
        let mut enc = ChunkEncoder::new();
        for s in &samples {
            enc.push(s).expect("storable");
        }
        let want = stored_all(&samples);
        let head: Vec<Sample> = enc.samples().collect::<Result<_, _>>().expect("valid head");
        prop_assert_eq!(&head, &want);
        let chunk = enc.finish();
        prop_assert_eq!(decode(&chunk).expect("valid chunk"), want);
    }

    #[test]
    fn quantize_and_dequantize_are_exact_inverses(q in -MAX_QUANTIZED..=MAX_QUANTIZED) {
        prop_assert_eq!(quantize(dequantize(q), "q"), Ok(q));
    }

    #[test]
    fn quantized_values_are_within_half_a_hundredth(x in -1e10f64..1e10) {
        let back = dequantize(quantize(x, "x").expect("in range"));
        prop_assert!((back - x).abs() <= 0.005 + x.abs() * 1e-15, "{x} -> {back}");
    }

    #[test]
    fn random_bytes_never_panic_the_decoder(raw in prop::collection::vec(any::<u8>(), 0..200)) {
        if let Ok(dec) = ChunkDecoder::new(&raw) {
            for item in dec.take(1_000) {
                if item.is_err() {
                    break;
                }
            }
        }
    }

    #[test]
    fn flipped_bits_never_panic_the_decoder(
        samples in arb_series(20),
        flips in prop::collection::vec(any::<prop::sample::Index>(), 1..4),
    ) {
        let mut chunk = encode(&samples);
        for flip in flips {
            let bit = flip.index(chunk.len() * 8);
            chunk[bit / 8] ^= 1 << (bit % 8);
        }
        let _outcome = decode(&chunk);
    }
}

#[test]
fn now_is_storable() {
    let s = Sample {
        time: Time::now(),
        ..sample(1, 1_700_000_000_000)
    };
    assert!(stored(&s).is_ok());
}
