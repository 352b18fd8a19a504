use super::*;
use crate::store::chunk::tests::{at, sample};
use crate::store::chunk::{self, ChunkDecoder};

const T0: u64 = 1_700_000_000_000;
const HOUR: u64 = 3_600_000;

fn limits() -> HeadLimits {
    HeadLimits {
        max_samples: 5,
        max_body_bytes: 1 << 20,
        max_span_ms: 2 * HOUR,
    }
}

fn pushed(head: &mut Head, samples: impl IntoIterator<Item = Sample>) -> Vec<bool> {
    samples
        .into_iter()
        .map(|s| head.push(&s, T0).expect("storable"))
        .collect()
}

fn seqs(head: &Head) -> Vec<u64> {
    head.samples()
        .map(|s| s.expect("valid").seq)
        .collect::<Vec<_>>()
}

#[test]
fn duplicates_are_skipped_across_seals_and_records() {
    let mut head = Head::new();
    assert_eq!(
        pushed(
            &mut head,
            [sample(1, T0), sample(2, T0 + 10), sample(2, T0 + 20)]
        ),
        [true, true, false]
    );
    assert_eq!(pushed(&mut head, [sample(1, T0)]), [false]);
    let sealed = head.seal().expect("seal");
    assert_eq!(Head::summary(&sealed.next.encode()), Ok((2, T0 + 10)));
    let mut next = Head::decode(&sealed.next.encode()).expect("a record just written");
    assert_eq!((next.last_seq(), next.sealed_seq()), (2, 2));
    assert!(next.is_empty());
    assert_eq!(
        pushed(&mut next, [sample(2, T0 + 30), sample(3, T0 + 40)]),
        [false, true]
    );
    assert_eq!(seqs(&next), [3]);
}

#[test]
fn a_record_round_trips_and_resumes_appending() {
    let mut head = Head::new();
    pushed(&mut head, (1..=3).map(|seq| sample(seq, T0 + seq * 10_000)));
    let record = head.encode();
    assert_eq!(Head::summary(&record), Ok((3, T0 + 30_000)));
    let mut back = Head::decode(&record).expect("valid");
    assert_eq!(back.encode(), record);
    assert_eq!(back.header(), head.header());
    assert_eq!(back.last_time_ms(), T0 + 30_000);
    pushed(&mut back, [sample(4, T0 + 40_000)]);
    pushed(&mut head, [sample(4, T0 + 40_000)]);
    assert_eq!(back.encode(), head.encode());
}

#[test]
fn damaged_records_are_errors() {
    let mut head = Head::new();
    pushed(&mut head, (1..=3).map(|seq| sample(seq, T0 + seq)));
    let record = head.encode();
    for len in 0..record.len() {
        assert!(Head::decode(&record[..len]).is_err(), "prefix of {len}");
    }
    let mut newer = record.clone();
    newer[0] = HEAD_VERSION + 1;
    assert!(Head::decode(&newer).is_err());
    // An open chunk whose seqs are not above the sealed seq is not a head this build wrote.
    let mut sealed_past = Head {
        sealed_seq: 5,
        ..head.clone()
    }
    .encode();
    assert!(Head::decode(&sealed_past).is_err());
    sealed_past[1] = 0;
    assert!(Head::decode(&sealed_past).is_ok());
}

#[test]
fn a_head_is_due_by_count_bytes_or_age() {
    let limits = limits();
    let mut head = Head::new();
    assert!(!head.due(u64::MAX, &limits), "an empty head is never due");
    pushed(&mut head, (1..=4).map(|seq| sample(seq, T0 + seq)));
    assert!(!head.due(T0, &limits));
    assert!(head.due(T0 + 2 * HOUR, &limits), "open for the whole span");
    pushed(&mut head, [sample(5, T0 + 5)]);
    assert!(head.due(T0, &limits), "full by count");
    let by_bytes = HeadLimits {
        max_samples: u32::MAX,
        max_body_bytes: 8,
        ..limits
    };
    let mut one = Head::new();
    pushed(&mut one, [sample(1, T0)]);
    assert!(one.due(T0, &by_bytes), "full by bytes");
    assert!(!one.due(T0, &limits));
}

#[test]
fn a_sample_that_would_stretch_the_span_starts_a_new_chunk() {
    let limits = limits();
    let mut head = Head::new();
    assert!(!head.must_seal_before(&sample(1, T0), &limits));
    pushed(&mut head, [sample(1, T0)]);
    assert!(!head.must_seal_before(&sample(2, T0 + 2 * HOUR), &limits));
    assert!(head.must_seal_before(&sample(2, T0 + 2 * HOUR + 1), &limits));
    assert!(head.must_seal_before(&sample(2, T0 - 2 * HOUR - 1), &limits));
}

#[test]
fn sealing_rolls_up_every_sample_once_and_rates_continue_across_chunks() {
    let five = Resolution::FiveMinutes;
    let samples: Vec<Sample> = (1..=60).map(|seq| sample(seq, T0 + seq * 10_000)).collect();
    // One head for everything, against two chunks split mid-bucket.
    let mut whole = Head::new();
    pushed(&mut whole, samples.clone());
    let expected = whole.rollups(five).expect("rollups");

    let mut first = Head::new();
    pushed(&mut first, samples[..25].to_vec());
    let sealed = first.seal().expect("seal");
    let mut second = sealed.next;
    pushed(&mut second, samples[25..].to_vec());
    let mut merged: BTreeMap<u64, Rollup> = BTreeMap::new();
    for (resolution, start, rollup) in sealed.rollups {
        if resolution == five {
            merged.entry(start).or_default().merge(&rollup);
        }
    }
    for (start, rollup) in second.rollups(five).expect("rollups") {
        merged.entry(start).or_default().merge(&rollup);
    }
    assert_eq!(merged, expected);
    assert_eq!(merged.values().map(|r| r.count).sum::<u64>(), 60);
    assert_eq!(merged.values().map(|r| r.rate_count).sum::<u64>(), 59);

    // The sealed chunk holds exactly the first chunk's samples.
    let decoded: Vec<Sample> = ChunkDecoder::new(&sealed.chunk)
        .expect("valid")
        .collect::<Result<_, _>>()
        .expect("valid");
    let stored: Vec<Sample> = samples[..25]
        .iter()
        .map(|s| chunk::stored(s).expect("storable"))
        .collect();
    assert_eq!(decoded, stored);
    assert_eq!(sealed.header.count, 25);
    assert_eq!(second.sealed_seq(), 25);
}

#[test]
fn the_clock_stamps_when_a_chunk_opened() {
    let limits = limits();
    let mut head = Head::new();
    head.push(&sample(1, T0), 10).expect("storable");
    head.push(&sample(2, T0 + 1), 20 * HOUR).expect("storable");
    assert!(head.due(10 + 2 * HOUR, &limits), "opened at the first push");
    let next = head.seal().expect("seal").next;
    assert!(!next.due(u64::MAX, &limits));
    assert_eq!(
        at(next.last_time_ms()),
        at(T0 + 1),
        "the newest sample's time outlives the seal"
    );
}
