use std::os::unix::fs::PermissionsExt as _;

use super::*;
use crate::events::types::Severity;

fn event(severity: Severity, n: usize) -> Event {
    Event::now("test.spool", severity, format!("event number {n}")).with("n", n)
}

fn seqs(events: &[SpooledEvent]) -> Vec<u64> {
    events.iter().map(|event| event.seq).collect()
}

fn stored(appended: Appended) -> u64 {
    match appended {
        Appended::Stored(seq) => seq,
        Appended::Dropped => panic!("the event was dropped"),
    }
}

#[test]
fn events_come_back_in_seq_order_across_severities() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut spool = Spool::open(dir.path(), DEFAULT_SPOOL_BYTES).expect("open");
    let order = [
        Severity::Info,
        Severity::Critical,
        Severity::Warning,
        Severity::Info,
        Severity::Error,
        Severity::Critical,
    ];
    for (n, severity) in order.iter().enumerate() {
        assert_eq!(
            stored(spool.append(&event(*severity, n)).expect("append")),
            n as u64 + 1
        );
    }
    let all = spool.read(0, 100, u64::MAX).expect("read");
    assert_eq!(seqs(&all), [1, 2, 3, 4, 5, 6]);
    assert_eq!(all[1].event.severity, Severity::Critical);
    assert_eq!(all[4].event.message, "event number 4");
    // Reading goes on from where it left off, in small batches.
    assert_eq!(seqs(&spool.read(0, 2, u64::MAX).expect("read")), [1, 2]);
    assert_eq!(seqs(&spool.read(2, 2, u64::MAX).expect("read")), [3, 4]);
    assert_eq!(seqs(&spool.read(4, 2, u64::MAX).expect("read")), [5, 6]);
    assert!(spool.read(6, 2, u64::MAX).expect("read").is_empty());
    // An ack hides what it covers, even from a reader starting over (a new session).
    spool.ack(3);
    assert_eq!(
        seqs(&spool.read(0, 100, u64::MAX).expect("read")),
        [4, 5, 6]
    );
    assert_eq!(
        spool.dir.metadata().expect("dir").permissions().mode() & 0o777,
        0o700
    );
}

#[test]
fn a_restart_keeps_unacknowledged_events_and_never_reuses_a_seq() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let mut spool = Spool::open(dir.path(), DEFAULT_SPOOL_BYTES).expect("open");
        for n in 0..5 {
            spool.append(&event(Severity::Warning, n)).expect("append");
        }
        spool.ack(2);
        spool.close().expect("close");
    }
    let mut spool = Spool::open(dir.path(), DEFAULT_SPOOL_BYTES).expect("reopen");
    assert_eq!(
        seqs(&spool.read(0, 100, u64::MAX).expect("read")),
        [3, 4, 5]
    );
    assert_eq!(spool.next_seq(), 6);
    // Everything acknowledged, and the segments gone: the seq still goes on.
    spool.ack(5);
    spool.close().expect("close");
    let mut spool = Spool::open(dir.path(), DEFAULT_SPOOL_BYTES).expect("reopen");
    assert!(spool.read(0, 100, u64::MAX).expect("read").is_empty());
    assert_eq!(
        stored(spool.append(&event(Severity::Info, 9)).expect("append")),
        6
    );
    // The server knows more than the spool (its files were lost): numbering follows it.
    spool.resume_after(40);
    assert!(spool.read(0, 100, u64::MAX).expect("read").is_empty());
    assert_eq!(
        stored(spool.append(&event(Severity::Info, 10)).expect("append")),
        41
    );
}

#[test]
fn a_crash_without_close_resends_but_loses_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let mut spool = Spool::open(dir.path(), DEFAULT_SPOOL_BYTES).expect("open");
        for n in 0..4 {
            spool.append(&event(Severity::Error, n)).expect("append");
        }
        spool.ack(4);
        // Dropped without `close`: the ack was never written down.
    }
    let mut spool = Spool::open(dir.path(), DEFAULT_SPOOL_BYTES).expect("reopen");
    assert_eq!(
        seqs(&spool.read(0, 100, u64::MAX).expect("read")),
        [1, 2, 3, 4]
    );
    assert_eq!(spool.next_seq(), 5);
}

#[test]
fn a_torn_tail_is_cut_and_the_rest_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let mut spool = Spool::open(dir.path(), DEFAULT_SPOOL_BYTES).expect("open");
        for n in 0..3 {
            spool.append(&event(Severity::Critical, n)).expect("append");
        }
    }
    let segment = dir
        .path()
        .join(SPOOL_DIR_NAME)
        .join(format!("critical-{:020}.seg", 1));
    let len = segment.metadata().expect("segment").len();
    let file = OpenOptions::new().write(true).open(&segment).expect("open");
    file.set_len(len - 5).expect("tear the last record");
    drop(file);
    // And a stray temporary file from a crash mid-rename.
    fs::write(dir.path().join(SPOOL_DIR_NAME).join("spool.meta.tmp"), b"{").expect("write");

    let mut spool = Spool::open(dir.path(), DEFAULT_SPOOL_BYTES).expect("reopen");
    assert_eq!(seqs(&spool.read(0, 100, u64::MAX).expect("read")), [1, 2]);
    assert!(
        segment.metadata().expect("segment").len() < len - 5,
        "the tail was cut"
    );
    assert_eq!(
        stored(spool.append(&event(Severity::Info, 7)).expect("append")),
        3
    );
    assert_eq!(
        seqs(&spool.read(0, 100, u64::MAX).expect("read")),
        [1, 2, 3]
    );
    assert!(
        !dir.path()
            .join(SPOOL_DIR_NAME)
            .join("spool.meta.tmp")
            .exists()
    );
}

#[test]
fn garbage_in_the_spool_directory_is_survived() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool_dir = dir.path().join(SPOOL_DIR_NAME);
    fs::create_dir_all(&spool_dir).expect("mkdir");
    fs::write(spool_dir.join("spool.meta"), b"not json").expect("write");
    fs::write(
        spool_dir.join("info-00000000000000000001.seg"),
        vec![0xff; 100],
    )
    .expect("write");
    fs::write(spool_dir.join("README"), b"hello").expect("write");
    let mut spool = Spool::open(dir.path(), DEFAULT_SPOOL_BYTES).expect("open");
    assert!(spool.read(0, 10, u64::MAX).expect("read").is_empty());
    assert!(!spool_dir.join("info-00000000000000000001.seg").exists());
    assert_eq!(
        stored(spool.append(&event(Severity::Info, 1)).expect("append")),
        1
    );
}

#[test]
fn overflow_drops_the_lowest_severity_first_and_reports_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut spool = Spool::open(dir.path(), MIN_SPOOL_BYTES).expect("open");
    let mut n = 0;
    // Fill half with info, then keep adding errors until info had to go.
    while spool.bytes() < MIN_SPOOL_BYTES / 2 {
        spool.append(&event(Severity::Info, n)).expect("append");
        n += 1;
    }
    let n_info = n;
    let mut errors = Vec::new();
    while spool.dropped()[Severity::Info.index()] == 0 {
        errors.push(stored(
            spool.append(&event(Severity::Error, n)).expect("append"),
        ));
        n += 1;
        assert!(n < 100_000, "info never dropped");
    }
    assert!(spool.bytes() <= MIN_SPOOL_BYTES);
    assert_eq!(spool.dropped()[Severity::Error.index()], 0);
    let all = spool.read(0, usize::MAX, u64::MAX).expect("read");
    // Every error is still there, in order; info events were dropped oldest first.
    let kept_errors: Vec<u64> = all
        .iter()
        .filter(|event| event.event.severity == Severity::Error)
        .map(|event| event.seq)
        .collect();
    assert_eq!(kept_errors, errors);
    let kept_info: Vec<u64> = all
        .iter()
        .filter(|event| event.event.severity == Severity::Info)
        .map(|event| event.seq)
        .collect();
    let n_dropped = spool.dropped()[Severity::Info.index()];
    assert_eq!(kept_info.len() as u64 + n_dropped, n_info as u64);
    assert_eq!(
        kept_info.first(),
        Some(&(n_dropped + 1)),
        "the oldest went first"
    );
    // The drop was reported, with its counts, and the report is in the spool too.
    let report = all
        .iter()
        .find(|event| event.event.kind == DROPPED_KIND)
        .expect("a drop report");
    assert_eq!(report.event.severity, Severity::Warning);
    assert_eq!(
        report.event.attributes["dropped_info"],
        n_dropped.to_string()
    );
    assert_eq!(report.event.attributes["dropped_error"], "0");
    assert!(seqs(&all).windows(2).all(|pair| pair[0] < pair[1]));
}

#[test]
fn a_spool_full_of_severe_events_drops_the_new_minor_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut spool = Spool::open(dir.path(), MIN_SPOOL_BYTES).expect("open");
    let mut n = 0;
    while spool.bytes() + 1000 < MIN_SPOOL_BYTES {
        spool.append(&event(Severity::Critical, n)).expect("append");
        n += 1;
    }
    let n_critical = spool.read(0, usize::MAX, u64::MAX).expect("read").len();
    // A large info event does not fit, and nothing below it can go.
    let mut large = event(Severity::Info, n);
    large.message = "x".repeat(1500);
    let mut outcome = Appended::Stored(0);
    for _ in 0..10 {
        outcome = spool.append(&large).expect("append");
    }
    assert_eq!(outcome, Appended::Dropped);
    assert!(spool.dropped()[Severity::Info.index()] >= 1);
    let all = spool.read(0, usize::MAX, u64::MAX).expect("read");
    assert_eq!(
        all.iter()
            .filter(|event| event.event.severity == Severity::Critical)
            .count(),
        n_critical,
        "no critical event made room for info"
    );
    // Every dropped info event is counted: in a report that fitted, or waiting (in
    // `spool.meta`) for room to report it.
    let reported: u64 = all
        .iter()
        .filter(|event| event.event.kind == DROPPED_KIND)
        .map(|event| {
            event.event.attributes["dropped_info"]
                .parse::<u64>()
                .expect("a count")
        })
        .sum();
    assert_eq!(reported + spool.unreported[Severity::Info.index()], 10);
    assert!(all.iter().all(
        |event| event.event.severity == Severity::Critical || event.event.kind == DROPPED_KIND
    ));
}

#[test]
fn acknowledged_segments_are_deleted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut spool = Spool::open(dir.path(), MIN_SPOOL_BYTES).expect("open");
    // Far more than the spool holds, acknowledged as it goes: nothing is dropped.
    for n in 0..5_000 {
        let seq = stored(spool.append(&event(Severity::Info, n)).expect("append"));
        if n % 100 == 99 {
            let batch = spool.read(0, usize::MAX, u64::MAX).expect("read");
            assert_eq!(batch.last().map(|event| event.seq), Some(seq));
            spool.ack(seq);
        }
    }
    assert_eq!(spool.dropped(), [0; 4]);
    assert!(spool.bytes() <= MIN_SPOOL_BYTES);
    spool.close().expect("close");
    let n_files = fs::read_dir(dir.path().join(SPOOL_DIR_NAME))
        .expect("ls")
        .count();
    assert!(n_files <= 3, "{n_files} files left");
}
