//! The samples part of the conformance suite (see `store/tests.rs`): duplicates, rollups that
//! count every sample once whether it is sealed or open, reads across sealed chunks and the
//! open head in time order, retention in whole units, memory, and recovery after a reopen.
//!
//! `compact(at(u64::MAX), Checkpoint::Now)` seals every open head (each has been open "long enough") and
//! checkpoints: the way a check puts samples into sealed history on purpose.

use std::collections::BTreeMap;

use super::*;
use crate::store::rollup::RollupBuilder;
use crate::store::{DEFAULT_HEAD_MAX_SAMPLES, Resolution, Rollup, RollupBucket};

/// An hour boundary, so 5-minute and 1-hour buckets line up with the checks' arithmetic.
const T0: u64 = 1_699_999_200_000;
const MINUTE: u64 = 60_000;

/// A sample whose gauges and counters move with `seq`.
fn varied(seq: u64, ms: u64) -> Sample {
    Sample {
        cpu_percent: (seq % 7) as f64 * 1.5 + 0.25,
        load: [(seq % 3) as f64, 0.5, 0.25],
        memory_used_bytes: (1 << 30) + seq * 4096,
        network_rx_bytes: 10_000 * seq + seq * seq,
        ..sample(seq, ms)
    }
}

fn seal_all(store: &dyn Store) {
    store
        .compact(at(u64::MAX), Checkpoint::Now)
        .expect("compact");
}

fn commit_samples(store: &dyn Store, agent: &str, samples: &[Sample]) {
    let writes: Vec<Write> = samples
        .iter()
        .map(|s| put_sample("acme", agent, s.clone()))
        .collect();
    store.commit_writes(&writes).expect("commit");
}

fn buckets(
    store: &dyn Store,
    agent: &str,
    resolution: Resolution,
    from: SystemTime,
    to: SystemTime,
) -> Vec<RollupBucket> {
    store
        .rollups(&org("acme"), &agent_id(agent), resolution, from, to)
        .collect::<Result<_, _>>()
        .expect("rollups")
}

fn all_buckets(store: &dyn Store, agent: &str, resolution: Resolution) -> Vec<RollupBucket> {
    buckets(store, agent, resolution, at(0), at(u64::MAX))
}

fn count(buckets: &[RollupBucket]) -> u64 {
    buckets.iter().map(|b| b.rollup.count).sum()
}

fn starts(buckets: &[RollupBucket]) -> Vec<u64> {
    buckets
        .iter()
        .map(|b| {
            let since = b
                .start
                .get()
                .duration_since(UNIX_EPOCH)
                .expect("after 1970");
            u64::try_from(since.as_millis()).expect("fits") - T0
        })
        .collect()
}

/// The rollups of `samples` (one agent, in seq order) computed in one pass: what the store
/// must give, however it split them into chunks.
fn reference(samples: &[Sample], resolution: Resolution) -> Vec<RollupBucket> {
    let mut builder = RollupBuilder::new(resolution);
    let mut out: BTreeMap<u64, Rollup> = BTreeMap::new();
    for s in samples {
        if let Some((start, rollup)) = builder.push(s).expect("storable") {
            out.entry(start).or_default().merge(&rollup);
        }
    }
    if let Some((start, rollup)) = builder.close() {
        out.entry(start).or_default().merge(&rollup);
    }
    out.into_iter()
        .map(|(start, rollup)| RollupBucket {
            start: Time::new(at(start)).expect("after 1970"),
            rollup,
        })
        .collect()
}

/// A sample at or below the highest seq stored for its agent is dropped, before and after a
/// seal; the first one stored wins.
pub(crate) fn check_duplicates_are_dropped(store: &dyn Store) {
    commit_samples(store, "web-1", &[sample(3, 3_000)]);
    commit_samples(
        store,
        "web-1",
        &[sample(2, 2_000), sample(3, 3_500), sample(4, 4_000)],
    );
    assert_eq!(all_seqs(store, "acme", "web-1"), [3, 4]);
    assert_eq!(seqs(store, "acme", "web-1", at(3_000), at(3_001), 9), [3]);
    seal_all(store);
    commit_samples(store, "web-1", &[sample(4, 4_500), sample(5, 5_000)]);
    assert_eq!(all_seqs(store, "acme", "web-1"), [3, 4, 5]);
    assert_eq!(count(&all_buckets(store, "web-1", Resolution::OneHour)), 3);
    // Another agent's seqs are its own.
    commit_samples(store, "web-2", &[sample(1, 1_000)]);
    assert_eq!(all_seqs(store, "acme", "web-2"), [1]);
}

/// Rollups equal those of all samples in one pass, whether the samples are sealed, open, or
/// split between the two (mid-bucket), at both resolutions.
pub(crate) fn check_rollups_count_every_sample_once(store: &dyn Store) {
    let samples: Vec<Sample> = (1..=100)
        .map(|seq| varied(seq, T0 + seq * 30_000))
        .collect();
    commit_samples(store, "web-1", &samples[..40]);
    for resolution in Resolution::ALL {
        assert_eq!(
            all_buckets(store, "web-1", resolution),
            reference(&samples[..40], resolution),
            "{resolution:?}, all open"
        );
    }
    seal_all(store);
    commit_samples(store, "web-1", &samples[40..]);
    for resolution in Resolution::ALL {
        let stored = all_buckets(store, "web-1", resolution);
        assert_eq!(
            stored,
            reference(&samples, resolution),
            "{resolution:?}, split"
        );
        assert_eq!(count(&stored), 100);
        // The rate of the first sample after the seal comes from the last one before it.
        let rates: u64 = stored.iter().map(|b| b.rollup.rate_count).sum();
        assert_eq!(rates, 99);
    }
    seal_all(store);
    for resolution in Resolution::ALL {
        assert_eq!(
            all_buckets(store, "web-1", resolution),
            reference(&samples, resolution),
            "{resolution:?}, all sealed"
        );
    }
    assert!(all_buckets(store, "web-2", Resolution::FiveMinutes).is_empty());
}

/// A bucket is returned when its start is in `from..to`.
pub(crate) fn check_rollup_ranges(store: &dyn Store) {
    let samples: Vec<Sample> = (1..=180)
        .map(|seq| varied(seq, T0 + (seq - 1) * MINUTE))
        .collect();
    commit_samples(store, "web-1", &samples[..100]);
    seal_all(store);
    commit_samples(store, "web-1", &samples[100..]);
    let five = Resolution::FiveMinutes;
    let range =
        |from: u64, to: u64| starts(&buckets(store, "web-1", five, at(T0 + from), at(T0 + to)));
    let m = MINUTE;
    assert_eq!(range(10 * m, 30 * m), [10 * m, 15 * m, 20 * m, 25 * m]);
    assert_eq!(
        range(10 * m + 1, 30 * m + 1),
        [15 * m, 20 * m, 25 * m, 30 * m]
    );
    assert_eq!(range(10 * m, 10 * m), Vec::<u64>::new());
    assert_eq!(range(30 * m, 10 * m), Vec::<u64>::new());
    let sub_ms = buckets(
        store,
        "web-1",
        five,
        at(T0 + 10 * m) + Duration::from_micros(1),
        at(T0 + 15 * m) + Duration::from_micros(1),
    );
    assert_eq!(starts(&sub_ms), [15 * m]);
    let hours = all_buckets(store, "web-1", Resolution::OneHour);
    assert_eq!(starts(&hours), [0, 60 * m, 120 * m]);
    assert_eq!(
        hours.iter().map(|b| b.rollup.count).collect::<Vec<_>>(),
        [60, 60, 60]
    );
    let fives = all_buckets(store, "web-1", five);
    assert_eq!(fives.len(), 36);
    assert!(fives.iter().all(|b| b.rollup.count == 5));
    assert!(all_buckets(store, "web-10", five).is_empty());
    assert!(
        store
            .rollups(&org("other"), &agent_id("web-1"), five, at(0), at(u64::MAX))
            .next()
            .is_none()
    );
}

/// Reads cover sealed chunks and the open head, in `(time, seq)` order even where the agent's
/// clock went back across them; `sample_totals` reads the same.
pub(crate) fn check_reads_merge_sealed_and_open(store: &dyn Store) {
    commit_samples(
        store,
        "web-1",
        &[sample(1, 10_000), sample(2, 20_000), sample(3, 30_000)],
    );
    seal_all(store);
    commit_samples(
        store,
        "web-1",
        &[sample(4, 5_000), sample(5, 25_000), sample(6, 40_000)],
    );
    let expected = [4, 1, 2, 5, 3, 6];
    for stage in ["sealed and open", "all sealed"] {
        assert_eq!(all_seqs(store, "acme", "web-1"), expected, "{stage}");
        assert_eq!(
            seqs(store, "acme", "web-1", at(6_000), at(30_000), 10),
            [1, 2, 5],
            "{stage}"
        );
        let totals: Vec<u64> = store
            .sample_totals(&org("acme"), &agent_id("web-1"), at(0), at(u64::MAX))
            .map(|t| t.expect("totals").seq)
            .collect();
        assert_eq!(totals, expected, "{stage}");
        seal_all(store);
    }
}

/// Retention drops whole sealed chunks whose newest sample is older than the cutoff, never a
/// sample at or after it, never an open head, and leaves the rollups to their own cutoffs.
pub(crate) fn check_purge_drops_whole_chunks(store: &dyn Store) {
    let keep_rollups = Retention {
        samples: at(0),
        five_minutes: at(0),
        one_hour: at(0),
    };
    let samples = |cutoff| Retention {
        samples: cutoff,
        ..keep_rollups
    };
    commit_samples(store, "web-1", &[sample(1, 1_000), sample(2, 2_000)]);
    seal_all(store);
    commit_samples(
        store,
        "web-1",
        &[sample(3, 3_000), sample(4, 4_000), sample(5, 5_000)],
    );
    store
        .commit_writes(&[put_sample("beta", "web-1", sample(1, 1_000))])
        .expect("commit");
    seal_all(store);
    // Open, and older than every cutoff below.
    commit_samples(store, "web-1", &[sample(6, 500)]);
    commit_samples(store, "web-2", &[sample(1, 100)]);

    let purged = store.purge(&samples(at(3_000))).expect("purge");
    assert_eq!((purged.chunks, purged.samples), (2, 3), "{purged:?}");
    assert_eq!(all_seqs(store, "acme", "web-1"), [6, 3, 4, 5]);
    assert_eq!(all_seqs(store, "beta", "web-1"), Vec::<u64>::new());
    assert_eq!(all_seqs(store, "acme", "web-2"), [1], "open heads stay");
    // A chunk goes only once its newest sample is older than the cutoff.
    assert_eq!(
        store.purge(&samples(at(5_000))).expect("purge"),
        Purged::default()
    );
    assert_eq!(all_seqs(store, "acme", "web-1"), [6, 3, 4, 5]);
    let purged = store
        .purge(&samples(at(5_000) + Duration::from_micros(1)))
        .expect("purge");
    assert_eq!((purged.chunks, purged.samples), (1, 3), "{purged:?}");
    assert_eq!(all_seqs(store, "acme", "web-1"), [6]);
    // Rollups outlive their samples.
    assert_eq!(
        count(&all_buckets(store, "web-1", Resolution::FiveMinutes)),
        6
    );
    assert_eq!(count(&all_buckets(store, "web-1", Resolution::OneHour)), 6);
}

/// More expired samples in one series than one purge batch of any reasonable backend holds:
/// all but the unit that straddles the cutoff go, and nothing at or after it.
pub(crate) fn check_purge_many(store: &dyn Store) {
    const N_OLD: u64 = 25_000;
    const N_NEW: u64 = 10;
    let writes: Vec<Write> = (1..N_OLD + N_NEW)
        .map(|seq| put_sample("acme", "web-1", sample(seq, 1_000 + seq)))
        .collect();
    for chunk in writes.chunks(5_000) {
        store.commit_writes(chunk).expect("commit");
    }
    seal_all(store);
    let cutoff = Retention {
        samples: at(1_000 + N_OLD),
        five_minutes: at(0),
        one_hour: at(0),
    };
    let purged = store.purge(&cutoff).expect("purge");
    assert!(
        purged.samples + u64::from(DEFAULT_HEAD_MAX_SAMPLES) >= N_OLD,
        "{purged:?}"
    );
    let left = all_seqs(store, "acme", "web-1");
    assert_eq!(
        left,
        (purged.samples + 1..N_OLD + N_NEW).collect::<Vec<_>>()
    );
}

/// Rollup buckets go a block at a time (an hour of 5-minute buckets, six hours of 1-hour ones),
/// once the block's last bucket starts before their cutoff; status changes older than the
/// samples' cutoff go, exactly (below a millisecond too).
pub(crate) fn check_purge_rollups_and_transitions(store: &dyn Store) {
    use AgentStatus::{Offline, Online};
    // Three hours from T0, 22:00 of its day: the 1-hour buckets of 22:00 and 23:00 share a
    // block, the one of 00:00 starts the next.
    let samples: Vec<Sample> = (1..=180)
        .map(|seq| varied(seq, T0 + (seq - 1) * MINUTE))
        .collect();
    commit_samples(store, "web-1", &samples);
    seal_all(store);
    let mut writes = Vec::new();
    for seq in 1..=5 {
        writes.push(Write::PutTransition(transition(
            "acme",
            "web-1",
            1_000 * seq,
            Offline,
            Online,
        )));
    }
    let half = at(6_000) + Duration::from_micros(500);
    writes.push(Write::PutTransition(Transition {
        time: half,
        ..transition("acme", "web-1", 6_000, Offline, Online)
    }));
    store.commit_writes(&writes).expect("commit");
    let purged = store
        .purge(&Retention {
            samples: at(3_000),
            five_minutes: at(T0 + 60 * MINUTE),
            one_hour: at(T0 + 60 * MINUTE),
        })
        .expect("purge");
    assert_eq!(
        (purged.rollups, purged.transitions, purged.chunks),
        (1, 2, 0),
        "the first hour of 5-minute buckets; the block of 1-hour ones from 18:00 stays, its 23:00 \
         bucket is not older than the cutoff"
    );
    let fives = all_buckets(store, "web-1", Resolution::FiveMinutes);
    assert_eq!(starts(&fives).first(), Some(&(60 * MINUTE)));
    assert_eq!(fives.len(), 24);
    assert_eq!(
        starts(&all_buckets(store, "web-1", Resolution::OneHour)),
        [0, 60 * MINUTE, 120 * MINUTE]
    );
    let purged = store
        .purge(&Retention {
            samples: at(3_000),
            five_minutes: at(0),
            one_hour: at(T0 + 60 * MINUTE) + Duration::from_micros(1),
        })
        .expect("purge");
    assert_eq!(purged.rollups, 1, "{purged:?}");
    assert_eq!(
        starts(&all_buckets(store, "web-1", Resolution::OneHour)),
        [120 * MINUTE]
    );
    assert_eq!(
        transition_times(store, "acme", "web-1", 10),
        [6_000, 5_000, 4_000, 3_000]
    );
    let purged = store
        .purge(&Retention {
            samples: half + Duration::from_micros(1),
            five_minutes: at(0),
            one_hour: at(0),
        })
        .expect("purge");
    assert_eq!(purged.transitions, 4);
    assert_eq!(
        transition_times(store, "acme", "web-1", 10),
        Vec::<u128>::new()
    );
    assert_eq!(
        all_seqs(store, "acme", "web-1").len(),
        180,
        "samples are newer"
    );
}

/// The memory reported is that of the open heads: some while samples are open, none once all
/// are sealed, within the budget throughout.
pub(crate) fn check_memory_follows_the_open_heads(store: &dyn Store) {
    let empty = store.memory();
    assert_eq!((empty.heads, empty.heads_bytes), (0, 0));
    assert!(empty.heads_budget_bytes > 0);
    for agent in ["web-1", "web-2", "web-3"] {
        commit_samples(store, agent, &[sample(1, 1_000), sample(2, 2_000)]);
    }
    let open = store.memory();
    assert_eq!(open.heads, 3);
    assert!(open.heads_bytes > 0 && open.heads_bytes <= open.heads_budget_bytes);
    store
        .compact(at(0), Checkpoint::Now)
        .expect("a checkpoint seals nothing");
    assert_eq!(store.memory().heads, 3);
    seal_all(store);
    let sealed = store.memory();
    assert_eq!((sealed.heads, sealed.heads_bytes), (0, 0));
    assert_eq!(all_seqs(store, "acme", "web-2"), [1, 2]);
}

/// Samples survive a reopen whether they were only logged, checkpointed (the log truncated),
/// or sealed; dedupe and rollups hold across reopens. `open` opens the same store each time.
pub(crate) fn check_samples_survive_reopening(open: &dyn Fn() -> Box<dyn Store>) {
    let samples: Vec<Sample> = (1..=15).map(|seq| varied(seq, T0 + seq * 30_000)).collect();
    {
        let store = open();
        store
            .commit_writes(&[
                Write::PutAgent(agent("acme", "web-1", "web one")),
                put_live("acme", "web-1", live(AgentStatus::Online, 0)),
            ])
            .expect("commit");
        commit_samples(&*store, "web-1", &samples[..10]);
    }
    {
        let store = open();
        assert_eq!(
            all_seqs(&*store, "acme", "web-1"),
            (1..=10).collect::<Vec<_>>()
        );
        commit_samples(&*store, "web-1", &samples[4..12]);
        assert_eq!(
            all_seqs(&*store, "acme", "web-1"),
            (1..=12).collect::<Vec<_>>()
        );
        store.compact(at(0), Checkpoint::Now).expect("checkpoint");
    }
    {
        let store = open();
        assert_eq!(
            all_seqs(&*store, "acme", "web-1"),
            (1..=12).collect::<Vec<_>>()
        );
        // Replayed after a checkpoint and a restart, they are still duplicates.
        commit_samples(&*store, "web-1", &samples[..12]);
        assert_eq!(
            all_seqs(&*store, "acme", "web-1"),
            (1..=12).collect::<Vec<_>>()
        );
        seal_all(&*store);
        commit_samples(&*store, "web-1", &samples[12..]);
    }
    let store = open();
    assert_eq!(
        all_seqs(&*store, "acme", "web-1"),
        (1..=15).collect::<Vec<_>>()
    );
    for resolution in Resolution::ALL {
        assert_eq!(
            all_buckets(&*store, "web-1", resolution),
            reference(&samples, resolution)
        );
    }
    let (_, live) = &load_sorted(&*store).agents[0];
    let live = live.as_ref().expect("live record");
    assert_eq!(live.last_seq, 15);
    assert_eq!(live.last_seen, Some(at(T0 + 15 * 30_000)));
    commit_samples(&*store, "web-1", &samples);
    assert_eq!(all_seqs(&*store, "acme", "web-1").len(), 15);
}
