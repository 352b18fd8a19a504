use std::time::{Duration, UNIX_EPOCH};

use super::*;
use crate::store::chunk::tests::sample;

fn open(dir: &std::path::Path) -> Series {
    let db = crate::store::sled::raw_db(dir).expect("open sled");
    let data = db.open_tree("data").expect("data tree");
    let log = db.open_tree("log").expect("log tree");
    let flusher = crate::store::sled::blobs::Flusher::new(db, dir).expect("flusher");
    Series::open(flusher, data, log, &SeriesConfig::default(), &[]).expect("open series")
}

fn logged(agent: &str, seqs: std::ops::RangeInclusive<u64>) -> Vec<(AgentKey, Sample)> {
    let key = AgentKey {
        org: OrgId::new("acme"),
        agent: AgentId::new(agent),
    };
    seqs.map(|seq| (key.clone(), sample(seq, 1_700_000_000_000 + seq)))
        .collect()
}

fn commit(series: &Series, samples: &[(AgentKey, Sample)]) {
    let records = series.log(samples).expect("log");
    series.append(samples, records);
}

/// The truncation bound keeps every record a commit has logged but not yet appended, and every
/// record an open head has samples of without a durable head record; a checkpoint or a seal
/// releases them.
#[test]
fn the_log_is_kept_for_commits_in_flight_and_for_open_heads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let series = open(dir.path());
    assert_eq!(series.truncation_bound(), 1, "an empty log");

    let a = logged("a", 1..=3);
    let records = series.log(&a).expect("log");
    assert_eq!(series.truncation_bound(), 1, "logged, not appended");
    series.append(&a, records);
    assert_eq!(
        series.truncation_bound(),
        1,
        "appended, in an open head only"
    );

    // 200 samples of another agent: two records (2, 3).
    commit(&series, &logged("b", 1..=200));
    assert_eq!(series.truncation_bound(), 1);

    assert!(series.memory().3 > 0, "the log's bytes are counted");
    let done = series
        .compact(UNIX_EPOCH, true, &mut || {})
        .expect("checkpoint");
    assert_eq!((done.snapshots, done.log_records_removed), (2, 3));
    assert_eq!(series.truncation_bound(), 4, "nothing needed");
    assert_eq!(series.log.len(), 0);
    assert_eq!(series.memory().3, 0, "and uncounted once truncated");

    commit(&series, &logged("a", 4..=5));
    assert_eq!(series.truncation_bound(), 4, "a needs its new record");
    // Sealing `a` (due at the end of time) makes its record unneeded, not `b`'s state.
    let far = UNIX_EPOCH + Duration::from_millis(u64::MAX / 2);
    let done = series.compact(far, false, &mut || {}).expect("seal");
    assert_eq!(done.sealed, 2);
    assert_eq!(series.truncation_bound(), 5);
    let (heads, bytes, _, _) = series.memory();
    assert_eq!((heads, bytes), (0, 0));
}

/// A log replayed over a head record that already holds some of its samples, and over a seal
/// that holds others, adds only what neither holds.
#[test]
fn replay_skips_what_head_records_and_seals_hold() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let series = open(dir.path());
        commit(&series, &logged("a", 1..=10));
        // A snapshot of 1..=10; the log still holds them (no truncation below a later record).
        series
            .compact(UNIX_EPOCH, true, &mut || {})
            .expect("checkpoint");
        commit(&series, &logged("a", 11..=20));
        // The same samples logged again, as after a commit that failed after its log write.
        let again = logged("a", 15..=25);
        let records = series.log(&again).expect("log");
        drop(records);
        series.db.flush().expect("flush");
    }
    let series = open(dir.path());
    let key = AgentKey {
        org: OrgId::new("acme"),
        agent: AgentId::new("a"),
    };
    assert_eq!(
        series.last(&key).expect("last").map(|(seq, _)| seq),
        Some(25)
    );
    let seqs: Vec<u64> = series
        .samples(
            &key,
            UNIX_EPOCH,
            UNIX_EPOCH + Duration::from_secs(1 << 40),
            |s| s.seq,
        )
        .collect::<Result<_>>()
        .expect("read");
    assert_eq!(seqs, (1..=25).collect::<Vec<_>>());
}
