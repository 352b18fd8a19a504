//! Flushes that make sled's blob files durable too.
//!
//! sled 0.34 writes a page or a log message larger than a quarter of a segment to a file of its
//! own under `blobs/` (`pagecache/blob_io.rs`, `write_blob`) and never fsyncs it; `Db::flush`
//! fsyncs only the log segments, whose entry then points at a blob that may still be only in
//! the page cache. A killed process loses nothing that way, a power failure could: the entry
//! survives and the page it points at does not.
//!
//! [`Flusher::flush`] is sled's flush followed by an fsync of every blob file it has not synced
//! before, then of the directory (the files are new entries in it). A blob is written in full
//! before the log entry naming it is reserved, so every blob a flushed entry names exists when
//! the flush returns. Invariant: when `flush` returns `Ok`, every blob file present then has
//! been fsynced, and so has the directory listing that names it.
//!
//! Listing the directory takes a file descriptor, and a server out of descriptors (a flood of
//! connections) must still commit. So a flush first reads the directory's modification time
//! (`stat`, no descriptor) and lists it only when that time differs from the one seen at the
//! last listing, or when that listing came less than [`MTIME_SLACK`] after it (a file made in
//! the same clock tick as a listing could leave the time unchanged). Creating or removing a
//! blob file changes the directory's time, so a flush without a new blob file opens nothing.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use super::backend;
use crate::store::Result;

/// sled's database with a flush that includes its blob files. Cheap to clone.
#[derive(Clone)]
pub(super) struct Flusher {
    db: sled::Db,
    blobs: PathBuf,
    synced: Arc<Mutex<Synced>>,
}

/// How long after the directory's modification time a listing must come for that time to
/// stand for it: far above any file system's timestamp granularity.
const MTIME_SLACK: Duration = Duration::from_secs(1);

#[derive(Default)]
struct Synced {
    /// Names of the blob files already fsynced (and still present at the last listing).
    names: HashSet<OsString>,
    /// The directory's modification time at the last listing, when that listing came at
    /// least [`MTIME_SLACK`] after it: while the time is unchanged, nothing new is there.
    settled_mtime: Option<SystemTime>,
}

impl Flusher {
    /// For the database opened at `path` (sled keeps its blobs in `path/blobs`).
    pub(super) fn new(db: sled::Db, path: &Path) -> Self {
        Self {
            db,
            blobs: path.join("blobs"),
            synced: Arc::default(),
        }
    }

    /// sled's flush, then the blob files it may have left unsynced; returns how many blob
    /// files this call fsynced.
    ///
    /// # Errors
    ///
    /// [`StoreError::Backend`](crate::store::StoreError::Backend) for sled's flush or an I/O error while syncing a blob file or
    /// the directory: what was flushed is then not known to be durable.
    pub(super) fn flush(&self) -> Result<usize> {
        self.db.flush().map_err(backend)?;
        self.sync_blobs().map_err(|e| {
            backend(io::Error::new(
                e.kind(),
                format!("syncing sled's blob files: {e}"),
            ))
        })
    }

    fn sync_blobs(&self) -> io::Result<usize> {
        let mut synced = self.synced.lock().unwrap_or_else(PoisonError::into_inner);
        let mtime = match std::fs::metadata(&self.blobs) {
            Ok(meta) => meta.modified()?,
            // sled creates the directory with the database; none means no blob yet.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        if synced.settled_mtime == Some(mtime) {
            return Ok(0);
        }
        let listed_at = SystemTime::now();
        let mut present = HashSet::new();
        let mut new = 0;
        for entry in std::fs::read_dir(&self.blobs)? {
            let entry = entry?;
            let name = entry.file_name();
            if !synced.names.contains(&name) {
                match File::open(entry.path()) {
                    Ok(file) => file.sync_all()?,
                    // Removed since the listing (its page was rewritten): nothing to keep.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                }
                synced.names.insert(name.clone());
                new += 1;
            }
            present.insert(name);
        }
        synced.names.retain(|name| present.contains(name));
        if new > 0 {
            File::open(&self.blobs)?.sync_all()?;
        }
        synced.settled_mtime = listed_at
            .duration_since(mtime)
            .is_ok_and(|after| after >= MTIME_SLACK)
            .then_some(mtime);
        Ok(new)
    }

    /// How many blob files are known synced (tests).
    #[cfg(test)]
    pub(super) fn synced(&self) -> usize {
        self.synced
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .names
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh sled database in `dir`, its flusher, a tree, and a value large enough to be a
    /// blob file.
    fn blob_store(dir: &Path) -> (Flusher, sled::Tree, Vec<u8>) {
        let db = crate::store::sled::raw_db(dir).expect("open sled");
        let flusher = Flusher::new(db.clone(), dir);
        let tree = db.open_tree("t").expect("tree");
        (
            flusher,
            tree,
            vec![7u8; 4 * crate::store::sled::SEGMENT_SIZE_BYTES],
        )
    }

    /// Whether the flusher knows exactly the blob files in the directory as synced.
    fn synced_matches_the_directory(flusher: &Flusher, dir: &Path) -> bool {
        let on_disk = std::fs::read_dir(dir.join("blobs"))
            .expect("blobs dir")
            .count();
        flusher.synced() == on_disk
    }

    /// A value over a quarter of a segment is a blob file; the flush fsyncs it once, syncs the
    /// next one, and keeps the set of synced files equal to the directory's listing.
    #[test]
    fn a_flush_syncs_each_new_blob_file_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (flusher, tree, big) = blob_store(dir.path());
        tree.insert(b"small", vec![1u8; 64]).expect("insert");
        assert_eq!(
            flusher.flush().expect("flush"),
            0,
            "a small value is no blob"
        );

        tree.insert(b"big", big.clone()).expect("insert");
        let first = flusher.flush().expect("flush");
        assert!(first >= 1, "the big value's blob is synced");
        assert!(
            synced_matches_the_directory(&flusher, dir.path()),
            "every blob present is known synced"
        );
        assert_eq!(
            flusher.flush().expect("flush"),
            0,
            "nothing new: nothing synced again"
        );

        tree.insert(b"big2", big).expect("insert");
        assert!(
            flusher.flush().expect("flush") >= 1,
            "the next blob is synced"
        );
        tree.remove(b"big").expect("remove");
        tree.remove(b"big2").expect("remove");
        flusher.flush().expect("flush");
        assert!(
            synced_matches_the_directory(&flusher, dir.path()),
            "the known-synced set follows the directory: removed blobs are forgotten"
        );
    }

    /// Once a listing has seen the directory's time settle, flushes skip the listing (no file
    /// descriptor) until a blob file is made or removed, and then sync the new one.
    #[test]
    fn a_settled_directory_is_not_listed_again_until_a_blob_comes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (flusher, tree, big) = blob_store(dir.path());
        tree.insert(b"big", big.clone()).expect("insert");
        assert!(
            flusher.flush().expect("flush") >= 1,
            "the first blob is synced"
        );
        let an_hour_ago = SystemTime::now() - Duration::from_secs(3_600);
        File::open(dir.path().join("blobs"))
            .and_then(|blobs| blobs.set_modified(an_hour_ago))
            .expect("age the directory");
        assert_eq!(flusher.flush().expect("flush"), 0, "nothing new");
        let settled = || {
            flusher
                .synced
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .settled_mtime
        };
        assert!(settled().is_some(), "an old time stands for the listing");
        assert_eq!(flusher.flush().expect("flush"), 0, "still nothing new");

        tree.insert(b"big2", big).expect("insert");
        assert!(
            flusher.flush().expect("flush") >= 1,
            "a new blob file changes the directory's time and is synced"
        );
        assert!(
            settled().is_none(),
            "a time just set does not stand for a listing"
        );
        assert!(
            synced_matches_the_directory(&flusher, dir.path()),
            "every blob present is known synced"
        );
    }

    /// At open, blob files that no page refers to (left by sled 0.34.7 as published, which
    /// kept the blob of a page that was one blob alone when the page was replaced) are removed;
    /// every blob a page refers to stays, so every value reads back, open after open.
    #[test]
    fn opening_removes_the_blob_files_no_page_refers_to_and_keeps_the_rest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let big = |n: u8| vec![n; crate::store::sled::SEGMENT_SIZE_BYTES / 2];
        let mut expected = std::collections::BTreeMap::new();
        {
            let db = crate::store::sled::raw_db(dir.path()).expect("open sled");
            let tree = db.open_tree("t").expect("tree");
            for n in 0..40u8 {
                tree.insert([n], big(n)).expect("insert");
                expected.insert(n, big(n));
            }
            for n in (0..40u8).step_by(3) {
                tree.insert([n], big(n + 100)).expect("overwrite");
                expected.insert(n, big(n + 100));
            }
            for n in (1..40u8).step_by(7) {
                tree.remove([n]).expect("remove");
                expected.remove(&n);
            }
            // A leaf is split on the next access after it grew over its size: read every key
            // once, so that no split is left for the reads after an open.
            for n in 0..40u8 {
                tree.get([n]).expect("read");
            }
            db.flush().expect("flush");
        }
        let blobs = dir.path().join("blobs");
        let names = |dir: &Path| -> std::collections::BTreeSet<String> {
            std::fs::read_dir(dir)
                .expect("blobs dir")
                .map(|entry| {
                    entry
                        .expect("entry")
                        .file_name()
                        .into_string()
                        .expect("utf-8")
                })
                .collect()
        };
        let before = names(&blobs);
        assert!(before.len() >= 20, "the values are blob files: {before:?}");
        // Files as sled 0.34.7 left them: a copy of a real blob under an old number.
        let any = blobs.join(before.iter().next().expect("a blob"));
        for orphan in ["1", "2"] {
            std::fs::copy(&any, blobs.join(orphan)).expect("plant an orphan");
        }
        // Not sled's spelling of a blob id: not sled's file, so left alone.
        std::fs::copy(&any, blobs.join("0003")).expect("plant a stranger");
        for round in 0..3 {
            let db = crate::store::sled::raw_db(dir.path()).expect("reopen sled");
            let tree = db.open_tree("t").expect("tree");
            let stored: std::collections::BTreeMap<u8, Vec<u8>> = tree
                .iter()
                .map(|entry| {
                    let (key, value) = entry.expect("read");
                    (key[0], value.to_vec())
                })
                .collect();
            assert!(
                stored == expected,
                "every value reads back after open {round}"
            );
            let now = names(&blobs);
            assert!(
                !now.contains("1") && !now.contains("2"),
                "orphans removed: {now:?}"
            );
            assert!(
                now.contains("0003"),
                "a name sled never writes is kept: {now:?}"
            );
            let sled_files: std::collections::BTreeSet<String> =
                now.into_iter().filter(|name| name != "0003").collect();
            assert!(
                sled_files.is_subset(&before),
                "nothing new kept: {sled_files:?}"
            );
        }
    }
}
