//! Every record of the store, read at one consistent point ([`SledStore::export_records`]),
//! and a new store written from such records ([`import`]): the store side of backups.
//!
//! # What "consistent" means here
//!
//! sled 0.34 has no point-in-time snapshot: an iteration sees writes made while it runs. A
//! backup is therefore taken with the store *quiesced*: every path that changes the database
//! (a commit, with the seals its samples cause; a compaction, with its seals and checkpoint; a
//! purge) holds the store's `quiet` lock shared, and an export holds it exclusively, so it reads
//! every tree between two of those operations, never inside one (a spread checkpoint lets go
//! of it while it rests between slices: each of its writes is a single key, atomic on its own,
//! so the store between two of them is what a crash there would leave, which recovery
//! handles). The records read are then a state a crash after the last commit before the
//! export could leave (the log records, head records, chunks and rollups as a restart would
//! find them, perhaps with head records not yet flushed or the log partly truncated by a
//! resting checkpoint, both of which recovery is built for; no commit half applied, no seal
//! whose chunk is there without its rollups or its emptied head record), and opening them
//! recovers the same samples, counted once, by the same log replay as any restart. The open
//! heads' samples that no head record holds yet are in the log records, which are exported
//! too, so nothing acknowledged is missing.
//!
//! The writer waits while an export runs; it is meant to write the records to local disk
//! (`backup.rs` spools them to a file), never to a client that could hold it up.

use std::path::Path;

use super::layout::backend;
use super::open::open_waiting_for_lock;
use super::{Result, SEGMENT_SIZE_BYTES, SledStore, StoreError};

/// Records applied per batch by [`import`]: below the batch size past which sled keeps memory
/// (see `SledStore::commit`).
const IMPORT_BATCH: usize = 256;

/// One stored record: the tree it belongs to, its key and its value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub space: Vec<u8>,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

impl SledStore {
    /// Calls `visit` with every record of every tree, trees by name and records in key order,
    /// while no commit, compaction or purge runs (see the module documentation). Returns the
    /// number of records visited.
    ///
    /// # Errors
    ///
    /// `Backend` on a read failure, or with the error `visit` returned (the export stops
    /// there).
    pub fn export_records(&self, visit: &mut crate::store::Visit<'_>) -> Result<u64> {
        let _quiet = self
            .quiet
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        export_db(&self.db, visit)
    }
}

/// Every record of `db`, trees by name, records in key order. The caller keeps writers away.
pub(super) fn export_db(db: &sled::Db, visit: &mut crate::store::Visit<'_>) -> Result<u64> {
    let mut names = db.tree_names();
    names.sort();
    let mut n = 0;
    for name in names {
        let tree = db.open_tree(&name).map_err(backend)?;
        for entry in tree.iter() {
            let (key, value) = entry.map_err(backend)?;
            visit(&name, &key, &value).map_err(backend)?;
            n += 1;
        }
    }
    Ok(n)
}

/// Writes `records` into a new sled database in the directory `path` (which must not hold
/// one), with the settings [`SledStore`] opens it with, and flushes it. The result is opened
/// with [`SledStore::open`], which checks (and migrates) its schema like any other store.
///
/// # Errors
///
/// `Backend` when the database cannot be created or written, or holds data already; the
/// first error of `records`.
pub fn import(path: &Path, records: impl IntoIterator<Item = Result<Record>>) -> Result<u64> {
    let config = sled::Config::new()
        .path(path)
        .segment_size(SEGMENT_SIZE_BYTES)
        .flush_every_ms(None);
    let db = open_waiting_for_lock(&config).map_err(backend)?;
    for name in db.tree_names() {
        if !db.open_tree(&name).map_err(backend)?.is_empty() {
            return Err(StoreError::Backend(
                format!("{} already holds a database", path.display()).into(),
            ));
        }
    }
    let mut pending: Vec<Record> = Vec::with_capacity(IMPORT_BATCH);
    let mut n = 0;
    for record in records {
        pending.push(record?);
        if pending.len() == IMPORT_BATCH {
            n += apply(&db, &mut pending)?;
        }
    }
    n += apply(&db, &mut pending)?;
    db.flush().map_err(backend)?;
    Ok(n)
}

/// Applies `pending` (grouped by tree, one batch per tree) and empties it.
fn apply(db: &sled::Db, pending: &mut Vec<Record>) -> Result<u64> {
    let n = pending.len() as u64;
    let mut records = std::mem::take(pending).into_iter().peekable();
    while let Some(first) = records.next() {
        let tree = db.open_tree(&first.space).map_err(backend)?;
        let mut batch = sled::Batch::default();
        batch.insert(first.key, first.value);
        while let Some(next) = records.next_if(|r| r.space == first.space) {
            batch.insert(next.key, next.value);
        }
        tree.apply_batch(batch).map_err(backend)?;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store as _;
    use crate::store::Write;
    use crate::testing::agent_record;

    fn records(store: &SledStore) -> Vec<Record> {
        let mut out = Vec::new();
        store
            .export_records(&mut |space, key, value| {
                out.push(Record {
                    space: space.to_vec(),
                    key: key.to_vec(),
                    value: value.to_vec(),
                });
                Ok(())
            })
            .expect("export");
        out
    }

    #[test]
    fn an_imported_export_is_the_same_store() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SledStore::open(&dir.path().join("a")).expect("open");
        store
            .commit_writes(&[
                Write::PutAgent(agent_record("acme", "a-1", "hw-1")),
                Write::PutAgent(agent_record("zeta", "z-1", "hw-2")),
            ])
            .expect("commit");
        let exported = records(&store);
        assert!(exported.iter().any(|r| r.space == b"meta"), "{exported:?}");

        let copy = dir.path().join("b");
        let n = import(&copy, exported.iter().cloned().map(Ok)).expect("import");
        assert_eq!(n, exported.len() as u64);
        let restored = SledStore::open(&copy).expect("the copy opens");
        assert_eq!(restored.load().expect("load"), store.load().expect("load"));
        assert_eq!(records(&restored), exported);
        drop(restored);
        assert!(
            import(&copy, exported.into_iter().map(Ok)).is_err(),
            "never into a database that holds data"
        );
    }

    #[test]
    fn a_spread_checkpoint_lets_an_export_in_while_it_rests_and_hurries_when_asked() {
        use crate::domain::{AgentId, OrgId};
        use crate::store::{Checkpoint, Spread};
        use std::sync::mpsc;
        use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

        const AGENTS: u64 = 100;
        const PER_AGENT: u64 = 400;
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SledStore::open(&dir.path().join("a")).expect("open");
        // Heads in every shard, and more log records (one per 128 samples) than one batch of
        // removals.
        let writes: Vec<Write> = (1..=PER_AGENT)
            .flat_map(|seq| {
                (0..AGENTS).map(move |agent| Write::PutSample {
                    org: OrgId::new("acme"),
                    agent: AgentId::new(format!("a-{agent}")),
                    sample: crate::testing::sample(seq),
                })
            })
            .collect();
        store.commit_writes(&writes).expect("commit");

        // Rests long enough that the test would time out below if it waited for them.
        let spread = std::sync::Arc::new(Spread::new(u32::MAX, Duration::from_secs(600)));
        let (done_tx, done) = mpsc::channel();
        let checkpoint = {
            let (store, spread) = (store.clone(), spread.clone());
            std::thread::spawn(move || {
                let result = store.compact(UNIX_EPOCH, Checkpoint::Spread(&spread));
                done_tx.send(result).expect("the test waits");
            })
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while spread.rests() == 0 {
            assert!(Instant::now() < deadline, "the checkpoint never rested");
            std::thread::sleep(Duration::from_millis(1));
        }

        // The export gets the store's quiet lock while the checkpoint rests.
        let (exported_tx, exported) = mpsc::channel();
        std::thread::spawn({
            let store = store.clone();
            move || exported_tx.send(records(&store)).expect("the test waits")
        });
        let exported = exported
            .recv_timeout(Duration::from_secs(30))
            .expect("an export while a spread checkpoint rests");
        assert!(
            done.try_recv().is_err(),
            "the checkpoint is still resting after its first slice"
        );

        spread.hurry();
        let compacted = done
            .recv_timeout(Duration::from_secs(30))
            .expect("a hurried checkpoint ends")
            .expect("checkpoint");
        checkpoint.join().expect("checkpoint thread");
        assert!(compacted.snapshots > 0, "{compacted:?}");
        assert!(compacted.log_records_removed > 256, "{compacted:?}");
        assert_eq!(store.memory().log_bytes, 0, "the whole log was truncated");

        // What the export read mid-checkpoint, and the store after it, both hold every sample.
        let copy = dir.path().join("b");
        import(&copy, exported.into_iter().map(Ok)).expect("import");
        drop(store);
        for path in [dir.path().join("a"), copy] {
            let store = SledStore::open(&path).expect("open");
            for agent in 0..AGENTS {
                let seqs: Vec<u64> = store
                    .samples(
                        &OrgId::new("acme"),
                        &AgentId::new(format!("a-{agent}")),
                        UNIX_EPOCH,
                        SystemTime::now() + Duration::from_secs(60),
                        1_000,
                    )
                    .expect("read")
                    .iter()
                    .map(|s| s.seq)
                    .collect();
                assert_eq!(
                    seqs,
                    (1..=PER_AGENT).collect::<Vec<_>>(),
                    "{path:?} a-{agent}"
                );
            }
        }
    }

    #[test]
    fn an_export_waits_for_a_commit_in_progress_and_a_visit_error_stops_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SledStore::open(dir.path()).expect("open");
        let held = store.quiet.read().expect("shared, as a commit holds it");
        let exporter = {
            let store = store.clone();
            std::thread::spawn(move || records(&store).len())
        };
        // The export cannot start while the lock is shared; it finishes once released.
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!exporter.is_finished());
        drop(held);
        assert!(exporter.join().expect("export thread") > 0);

        let err = store
            .export_records(&mut |_, _, _| Err(std::io::Error::other("disk full")))
            .expect_err("the visitor's error");
        assert!(err.to_string().contains("disk full"), "{err}");
    }
}
