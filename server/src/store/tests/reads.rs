//! Range reads of the conformance suite: samples in a time range (seqs and times out of
//! order, limits), their totals, and transitions newest first.

use super::*;

pub(crate) fn check_samples_range(store: &dyn Store) {
    // Seqs increase; times do not (the agent's clock went back), over two commits.
    store
        .commit_writes(&[
            put_sample("acme", "web-1", sample(1, 3_000)),
            put_sample("acme", "web-1", sample(2, 1_000)),
        ])
        .expect("commit");
    store
        .commit_writes(&[
            put_sample("acme", "web-1", sample(3, 4_000)),
            put_sample("acme", "web-1", sample(4, 2_000)),
        ])
        .expect("commit");

    // from is inclusive, to exclusive, results in time order.
    assert_eq!(
        seqs(store, "acme", "web-1", at(2_000), at(4_000), 10),
        [4, 1]
    );
    assert_eq!(
        seqs(store, "acme", "web-1", at(1_999), at(4_001), 10),
        [4, 1, 3]
    );
    assert_eq!(all_seqs(store, "acme", "web-1"), [2, 4, 1, 3]);
    // limit keeps the oldest.
    assert_eq!(seqs(store, "acme", "web-1", at(0), at(10_000), 2), [2, 4]);
    assert_eq!(
        seqs(store, "acme", "web-1", at(0), at(10_000), 0),
        Vec::<u64>::new()
    );
    // Empty and inverted ranges.
    assert_eq!(
        seqs(store, "acme", "web-1", at(2_000), at(2_000), 10),
        Vec::<u64>::new()
    );
    assert_eq!(
        seqs(store, "acme", "web-1", at(4_000), at(1_000), 10),
        Vec::<u64>::new()
    );
    assert_eq!(
        seqs(store, "acme", "web-1", at(5_000), at(9_000), 10),
        Vec::<u64>::new()
    );
    // A range starting before the epoch is fine.
    assert_eq!(
        seqs(
            store,
            "acme",
            "web-1",
            UNIX_EPOCH - Duration::from_secs(60),
            at(1_001),
            10
        ),
        [2]
    );
    // Another agent, another org: nothing.
    assert_eq!(all_seqs(store, "acme", "web-2"), Vec::<u64>::new());
    assert_eq!(all_seqs(store, "other", "web-1"), Vec::<u64>::new());

    // Two samples in the same millisecond are both kept, in seq order.
    store
        .commit_writes(&[
            put_sample("acme", "web-1", sample(5, 6_000)),
            put_sample("acme", "web-1", sample(6, 6_000)),
        ])
        .expect("commit");
    assert_eq!(
        seqs(store, "acme", "web-1", at(6_000), at(6_001), 10),
        [5, 6]
    );

    // Times are stored in whole milliseconds (truncated), and the bounds apply to that.
    let half = at(7_000) + Duration::from_micros(500);
    store
        .commit_writes(&[put_sample("acme", "web-1", sample_at(7, half))])
        .expect("commit");
    let micro = Duration::from_micros(1);
    assert_eq!(
        seqs(store, "acme", "web-1", at(7_000), at(7_000) + micro, 10),
        [7]
    );
    assert_eq!(
        seqs(store, "acme", "web-1", at(7_000) - micro, at(7_000), 10),
        Vec::<u64>::new()
    );
    assert_eq!(
        seqs(store, "acme", "web-1", at(7_000) + micro, at(8_000), 10),
        Vec::<u64>::new()
    );
    let read = store
        .samples(&org("acme"), &agent_id("web-1"), at(7_000), at(7_001), 1)
        .expect("samples");
    assert_eq!(read[0].time.get(), at(7_000));

    // Every field survives in its stored form (`chunk.rs`, "Stored precision").
    let stored = store
        .samples(&org("acme"), &agent_id("web-1"), at(3_000), at(3_001), 1)
        .expect("samples");
    let expected = crate::store::chunk::stored(&sample(1, 3_000)).expect("storable");
    assert_eq!(stored, [expected]);
}

pub(crate) fn check_sample_totals(store: &dyn Store) {
    let with_disks = |seq: u64, ms: u64, n_disks: u64| Sample {
        disks: (0..n_disks)
            .map(|d| DiskUsage {
                mount_point: format!("/mnt/{d}"),
                used_bytes: d + 1,
                total_bytes: 10 * (d + 1),
            })
            .collect(),
        ..sample(seq, ms)
    };
    store
        .commit_writes(&[
            put_sample("acme", "web-1", with_disks(1, 1_000, 0)),
            put_sample("acme", "web-1", with_disks(2, 2_000, 3)),
            put_sample("acme", "web-1", with_disks(3, 3_000, 256)),
            put_sample("acme", "web-10", with_disks(1, 1_500, 1)),
            put_sample("other", "web-1", with_disks(1, 1_500, 1)),
        ])
        .expect("commit");
    // The same samples, the same order and the same range rules as `samples`, disks summed.
    for (from, to) in [
        (0, 10_000),
        (1_000, 3_000),
        (1_001, 3_001),
        (2_000, 2_000),
        (5, 1),
    ] {
        let (from, to) = (at(from), at(to));
        let totals: Vec<SampleTotals> = store
            .sample_totals(&org("acme"), &agent_id("web-1"), from, to)
            .collect::<Result<_, _>>()
            .expect("sample totals");
        let samples = store
            .samples(&org("acme"), &agent_id("web-1"), from, to, usize::MAX)
            .expect("samples");
        let expected: Vec<SampleTotals> = samples.iter().map(SampleTotals::of).collect();
        assert_eq!(totals, expected, "range {from:?}..{to:?}");
    }
    let all: Vec<SampleTotals> = store
        .sample_totals(&org("acme"), &agent_id("web-1"), at(0), at(10_000))
        .collect::<Result<_, _>>()
        .expect("sample totals");
    assert_eq!(all.iter().map(|t| t.seq).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(
        all.iter()
            .map(|t| (t.disk_used_bytes, t.disk_total_bytes))
            .collect::<Vec<_>>(),
        [(0, 0), (6, 60), (256 * 257 / 2, 10 * 256 * 257 / 2)]
    );
}

pub(crate) fn check_transitions_newest_first(store: &dyn Store) {
    use AgentStatus::{Offline, Online, Stale};
    // Out of time order across commits.
    store
        .commit_writes(&[
            Write::PutTransition(transition("acme", "web-1", 1_000, Offline, Online)),
            Write::PutTransition(transition("acme", "web-1", 3_000, Stale, Online)),
        ])
        .expect("commit");
    store
        .commit_writes(&[Write::PutTransition(transition(
            "acme", "web-1", 2_000, Online, Stale,
        ))])
        .expect("commit");
    // Two in the same millisecond, in one commit: commit order decides.
    store
        .commit_writes(&[
            Write::PutTransition(transition("acme", "web-1", 4_000, Online, Stale)),
            Write::PutTransition(transition("acme", "web-1", 4_000, Stale, Offline)),
        ])
        .expect("commit");
    // And a third in that millisecond, in a later commit.
    store
        .commit_writes(&[Write::PutTransition(transition(
            "acme", "web-1", 4_000, Offline, Online,
        ))])
        .expect("commit");

    let all = store
        .transitions(&org("acme"), &agent_id("web-1"), 100)
        .expect("transitions");
    let steps: Vec<_> = all.iter().map(|t| (t.time, t.from, t.to)).collect();
    assert_eq!(
        steps,
        [
            (at(4_000), Offline, Online),
            (at(4_000), Stale, Offline),
            (at(4_000), Online, Stale),
            (at(3_000), Stale, Online),
            (at(2_000), Online, Stale),
            (at(1_000), Offline, Online),
        ]
    );
    assert_eq!(all[0], transition("acme", "web-1", 4_000, Offline, Online));

    assert_eq!(
        transition_times(store, "acme", "web-1", 4),
        [4_000, 4_000, 4_000, 3_000]
    );
    assert_eq!(
        transition_times(store, "acme", "web-1", 0),
        Vec::<u128>::new()
    );
    assert_eq!(
        transition_times(store, "acme", "web-2", 10),
        Vec::<u128>::new()
    );
}
