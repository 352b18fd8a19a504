//! What sled's files take next to the records they hold, under a day of a small fleet kept as
//! the server keeps it. The figures over months are `disk_bench`'s (bench/results/store.md);
//! these are the checks that the faults fixed in the vendored sled
//! (`vendor/sled/TETHER-PATCH.md`) stay fixed.

use super::*;
use crate::store::SledStore;

/// A day of a small fleet kept as the server keeps it (commits of 100 samples, compaction
/// after each, a checkpoint every 5 minutes): sled keeps its chunk leaves of more than a
/// quarter of a segment as blob files, and splits, rewrites and frees them as chunks come.
/// The files of leaves no longer there are removed, so the blob files stay well below the
/// records, and sled's files within a few times the records. (sled 0.34 as published kept
/// the blob file of every leaf split right after its rewrite, and its cleaner drained one
/// segment per round: after this day, blob files of 56 % of the records' bytes and files 5.2
/// times the records; 4-8 % and 1.4-1.6 times now, varying with the cleaner's timing. Over
/// months, with segments cleaned at 65 % live, `disk_bench` finds 1.3 times.)
#[test]
fn a_day_of_a_fleet_keeps_sled_files_near_the_records() {
    const AGENTS: u64 = 20;
    const INTERVAL_MS: u64 = 10_000;
    const HOURS: u64 = 24;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SledStore::open(dir.path()).expect("open sled store");
    let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let agents: Vec<String> = (0..AGENTS).map(|a| format!("agent-{a:02}")).collect();
    let per_commit = 100 / AGENTS;
    let steps = HOURS * 3_600_000 / INTERVAL_MS;
    let start = 1_700_000_000_000;
    let mut last_checkpoint = 0;
    for first in (1..=steps).step_by(per_commit as usize) {
        let mut writes = Vec::new();
        for agent in &agents {
            for seq in first..first + per_commit {
                let mut sample = sample(seq, start + seq * INTERVAL_MS);
                sample.cpu_percent = (next() % 10_000) as f64 / 100.0;
                sample.load = [0, 1, 2].map(|_| (next() % 400) as f64 / 100.0);
                sample.memory_used_bytes = (1 << 30) + (next() % (1 << 28));
                sample.network_rx_bytes = seq * 1_000 + next() % 1_000;
                sample.network_tx_bytes = seq * 500 + next() % 500;
                writes.push(put_sample("acme", agent, sample));
            }
        }
        store.commit_writes(&writes).expect("commit");
        let now = start + (first + per_commit - 1) * INTERVAL_MS;
        let checkpoint = now - last_checkpoint >= 300_000;
        if checkpoint {
            last_checkpoint = now;
        }
        store
            .compact(at(now), Checkpoint::now_if(checkpoint))
            .expect("compact");
    }
    let usage = store.usage().expect("usage");
    let records = usage.record_bytes();
    let (_, blobs) = blob_files(dir.path());
    assert!(
        blobs < records / 4,
        "blob files {blobs} B against {records} B of records"
    );
    assert!(
        usage.size_on_disk < 4 * records,
        "sled's files {} B against {records} B of records",
        usage.size_on_disk
    );
}

/// A writer's batch under load (a thousand agents' samples in one commit) is a few write-ahead
/// records of about 10 KB each, appended to one leaf of the log. sled splits leaves at 16
/// items, so a leaf of them serialized whole took over a quarter of a segment, and each rewrite
/// of it was a blob file of its own: about ten files created, synced and removed a commit
/// (`store_bench 4096 200`: 2,100 of them, half the store's system time). Leaves are now split
/// by size as well, so the log's pages are written inline and no blob file is made.
#[test]
fn a_writers_large_batches_make_no_blob_files() {
    const AGENTS: u64 = 1_024;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SledStore::open(dir.path()).expect("open sled store");
    let agents: Vec<String> = (0..AGENTS).map(|a| format!("agent-{a:04}")).collect();
    let start = 1_700_000_000_000;
    let mut most = 0;
    for seq in 1..=24 {
        let writes: Vec<Write> = agents
            .iter()
            .map(|agent| put_sample("acme", agent, sample(seq, start + seq * 10_000)))
            .collect();
        store.commit_writes(&writes).expect("commit");
        most = most.max(blob_files(dir.path()).0);
    }
    let log = store.usage().expect("usage").log_bytes;
    assert!(
        log > 512 << 10,
        "the log holds {log} B: the batches were not written"
    );
    assert_eq!(most, 0, "blob files beside a log of {log} B");
}

/// How many blob files sled's directory holds, and their bytes.
fn blob_files(dir: &std::path::Path) -> (usize, u64) {
    match std::fs::read_dir(dir.join("blobs")) {
        // sled's flusher may remove a blob file between the listing and its metadata.
        Ok(entries) => entries
            .filter_map(|entry| match entry.and_then(|e| e.metadata()) {
                Ok(meta) => Some(meta.len()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => panic!("read a blob file: {e}"),
            })
            .fold((0, 0), |(n, bytes), len| (n + 1, bytes + len)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (0, 0),
        Err(e) => panic!("read sled's blob directory: {e}"),
    }
}
