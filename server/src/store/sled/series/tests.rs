use std::time::{Duration, UNIX_EPOCH};

use super::read::{
    READ_AHEAD_MAX_THREADS, READ_AHEAD_MIN_SAMPLES, READ_AHEAD_RUNNING, READ_AHEAD_THREADS,
};
use super::*;
use crate::domain::SampleTotals;
use crate::store::chunk::tests::sample;
use crate::store::chunk::{ChunkDecoder, ChunkError, ChunkHeader};
use std::sync::atomic::Ordering;

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
            |s| Ok(s.next().transpose()?.map(|sample| sample.seq)),
            usize::MAX,
        )
        .collect::<Result<_>>()
        .expect("read");
    assert_eq!(seqs, (1..=25).collect::<Vec<_>>());
}

/// A series with [`READ_AHEAD_MIN_SAMPLES`] and 5,000 more samples of agent `agent`, committed
/// in reports of 100, 10 s apart from seq 1; from seq `back` on, the agent's clock is an hour
/// behind (chunks then overlap in time). Returns the samples as written.
fn long_series(agent: &str, back: u64) -> (tempfile::TempDir, Series, AgentKey, Vec<Sample>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let series = open(dir.path());
    let key = AgentKey {
        org: OrgId::new("acme"),
        agent: AgentId::new(agent),
    };
    let samples: Vec<(AgentKey, Sample)> = (1..=READ_AHEAD_MIN_SAMPLES + 5_000)
        .map(|seq| {
            let behind = if seq >= back { 3_600_000 } else { 0 };
            let ms = 1_700_000_000_000 + seq * 10_000 - behind;
            (key.clone(), sample(seq, ms))
        })
        .collect();
    for report in samples.chunks(100) {
        commit(&series, report);
    }
    let samples = samples.into_iter().map(|(_, sample)| sample).collect();
    (dir, series, key, samples)
}

fn totals(samples: &mut ChunkDecoder<'_>) -> std::result::Result<Option<SampleTotals>, ChunkError> {
    samples.next_totals()
}

/// Held by each test that reads ahead: the threads a read may start are bounded for the whole
/// process, so those tests count them one at a time.
fn reading_ahead() -> std::sync::MutexGuard<'static, ()> {
    static READS_AHEAD: std::sync::Mutex<()> = std::sync::Mutex::new(());
    READS_AHEAD
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Waits until no read-ahead thread is left, for at most 30 s.
fn until_no_read_ahead_thread() {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while read_ahead_threads() > 0 || READ_AHEAD_RUNNING.load(Ordering::Acquire) > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "read-ahead threads outlive their read"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Names of this process's threads that are reading ahead.
fn read_ahead_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .expect("threads")
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|name| name.trim_end() == "tether-read-ahe")
        .count()
}

/// A read long enough to decode ahead on threads yields exactly what the same read decodes in
/// line, every sample in `(time, seq)` order, across chunks that the clock made overlap; and a
/// read dropped part-way ends its threads.
#[test]
fn a_long_read_decodes_ahead_exactly_as_in_line_and_ends_its_threads_when_dropped() {
    let _one_at_a_time = reading_ahead();
    let (_dir, series, key, mut expected) = long_series("a", 20_000);
    let n = expected.len();
    expected.sort_by_key(|sample| (sample.time, sample.seq));
    let expected: Vec<SampleTotals> = expected.iter().map(SampleTotals::of).collect();
    let (from, to) = (UNIX_EPOCH, UNIX_EPOCH + Duration::from_secs(1 << 40));

    let (read, ahead) = series.samples_with(&key, from, to, totals, READ_AHEAD_MIN_SAMPLES);
    assert!(ahead, "{n} samples are read ahead");
    let read: Vec<SampleTotals> = read.collect::<Result<_>>().expect("read ahead");
    assert_eq!(read.len(), expected.len());
    assert!(
        read == expected,
        "read ahead as written, in (time, seq) order"
    );

    let (inline, ahead) = series.samples_with(&key, from, to, totals, u64::MAX);
    assert!(!ahead);
    let inline: Vec<SampleTotals> = inline.collect::<Result<_>>().expect("read in line");
    assert!(inline == read, "the same samples either way");

    // Through the `samples` the store calls, whole samples: the same order.
    let seqs: Vec<u64> = series
        .samples(
            &key,
            from,
            to,
            |s| Ok(s.next().transpose()?.map(|sample| sample.seq)),
            usize::MAX,
        )
        .collect::<Result<_>>()
        .expect("read");
    assert!(seqs.iter().eq(expected.iter().map(|t| &t.seq)));

    let (mut dropped, ahead) = series.samples_with(&key, from, to, totals, 0);
    assert!(ahead);
    assert_eq!(
        dropped.next().expect("a sample").expect("read"),
        expected[0]
    );
    drop(dropped);
    until_no_read_ahead_thread();
}

/// Long reads at once share at most `READ_AHEAD_MAX_THREADS` threads; a read past them decodes
/// in line and misses nothing, and the threads of reads that end are free for the next.
#[test]
fn long_reads_at_once_share_a_bounded_number_of_threads() {
    let _one_at_a_time = reading_ahead();
    until_no_read_ahead_thread();
    let (_dir, series, key, samples) = long_series("c", u64::MAX);
    let (from, to) = (UNIX_EPOCH, UNIX_EPOCH + Duration::from_secs(1 << 40));
    let mut reading = Vec::new();
    for _ in 0..READ_AHEAD_MAX_THREADS / READ_AHEAD_THREADS {
        let (mut read, ahead) = series.samples_with(&key, from, to, totals, 0);
        assert!(ahead);
        read.next().expect("a sample").expect("read");
        reading.push(read);
    }
    assert_eq!(
        READ_AHEAD_RUNNING.load(Ordering::Acquire),
        READ_AHEAD_MAX_THREADS
    );
    let (read, ahead) = series.samples_with(&key, from, to, totals, 0);
    assert!(!ahead, "past the bound, a read decodes in line");
    assert_eq!(read.count(), samples.len());
    drop(reading);
    until_no_read_ahead_thread();
    let (read, ahead) = series.samples_with(&key, from, to, totals, 0);
    assert!(ahead, "the threads are free again");
    assert_eq!(read.count(), samples.len());
}

/// A damaged chunk in the middle of a long read ends it with `Corrupt` where the chunk is,
/// after every sample before it, as a read in line does.
#[test]
fn a_damaged_chunk_ends_a_read_ahead_where_it_is() {
    let _one_at_a_time = reading_ahead();
    let (_dir, series, key, samples) = long_series("b", u64::MAX);
    let chunks: Vec<(sled::IVec, sled::IVec)> = series
        .data
        .scan_prefix(chunk_series(&key))
        .collect::<std::result::Result<_, _>>()
        .expect("chunks");
    assert!(chunks.len() > 10, "{} chunks", chunks.len());
    // A chunk past the first batches: its header stays whole, its body is all ones.
    let (damaged_key, value) = &chunks[chunks.len() * 2 / 3];
    let (header, body) = ChunkHeader::parse(value).expect("a chunk");
    let mut damaged = value[..value.len() - body.len()].to_vec();
    damaged.resize(value.len(), 0xff);
    series
        .data
        .insert(damaged_key, damaged)
        .expect("damage the chunk");
    let before = samples
        .iter()
        .take_while(|sample| sample.seq < header.first_seq)
        .map(SampleTotals::of);

    let (from, to) = (UNIX_EPOCH, UNIX_EPOCH + Duration::from_secs(1 << 40));
    for ahead_from in [0, u64::MAX] {
        let (mut read, ahead) = series.samples_with(&key, from, to, totals, ahead_from);
        assert_eq!(ahead, ahead_from == 0);
        for expected in before.clone() {
            assert_eq!(read.next().expect("a sample").expect("read"), expected);
        }
        assert!(
            matches!(read.next(), Some(Err(StoreError::Corrupt { .. }))),
            "the damaged chunk is reported where it is"
        );
        assert!(read.next().is_none(), "and nothing follows");
    }
}

/// A chunk whose header claims four billion samples (a consistent header, a body of a few
/// bytes) is damage reported as such: the read reserves for what it decodes, not for what the
/// header says.
#[test]
fn a_header_claiming_billions_of_samples_is_corrupt_not_an_allocation() {
    let _one_at_a_time = reading_ahead();
    let dir = tempfile::tempdir().expect("tempdir");
    let series = open(dir.path());
    let key = AgentKey {
        org: OrgId::new("acme"),
        agent: AgentId::new("d"),
    };
    let (first_seq, min_ms) = (1, 1_700_000_000_000);
    let mut chunk = vec![crate::store::chunk::CHUNK_VERSION];
    for field in [
        u64::from(u32::MAX),
        first_seq,
        u64::from(u32::MAX),
        min_ms,
        10,
    ] {
        crate::store::bits::put_uvarint(&mut chunk, field);
    }
    chunk.extend_from_slice(&[0x55; 8]);
    let (header, _) = ChunkHeader::parse(&chunk).expect("a consistent header");
    assert_eq!(header.count, u32::MAX);
    series
        .data
        .insert(
            series_key(&chunk_series(&key), min_ms + 10, first_seq),
            chunk,
        )
        .expect("insert");
    let (from, to) = (UNIX_EPOCH, UNIX_EPOCH + Duration::from_secs(1 << 40));
    for ahead_from in [0, u64::MAX] {
        let (mut read, ahead) = series.samples_with(&key, from, to, totals, ahead_from);
        assert_eq!(ahead, ahead_from == 0, "the header's count decides");
        assert!(matches!(read.next(), Some(Err(StoreError::Corrupt { .. }))));
        assert!(read.next().is_none());
    }
}
