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
//! the flush returns. Invariant: when `flush` returns `Ok`, every blob file present when sled's
//! flush returned has been fsynced since it was last written, and so has the directory
//! listing that names it.
//!
//! A blob file can be listed while sled is still writing it (its entry not yet flushed), so a
//! file is remembered as synced only when it was last modified at least [`MTIME_SLACK`]
//! before it was fsynced (sled writes a blob once, right after creating it, and never again);
//! a younger one is fsynced again at the next listing.
//!
//! A server out of descriptors (a flood of connections, a limit lowered under it) must still
//! commit, so a flush opens no descriptor for the directory: it holds `blobs/` open from the
//! start, lists it through that descriptor (`getdents`), and fsyncs the directory through it.
//! It lists only when the directory's modification time (`stat`, no descriptor) differs from
//! the one seen at the last listing, or when that listing came less than [`MTIME_SLACK`]
//! after it (a file made in the same clock tick as a listing could leave the time unchanged).
//! A new blob file is opened to be fsynced; when that open finds the process out of
//! descriptors, `syncfs` on the held descriptor makes every file of that file system durable
//! instead (the directory and the new blob files among them), and nothing is remembered, so
//! the next flush lists and tries again.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use rustix::fs::{Dir, Mode, OFlags};
use rustix::io::Errno;

use super::backend;
use crate::store::Result;

/// sled's database with a flush that includes its blob files. Cheap to clone.
#[derive(Clone)]
pub(super) struct Flusher {
    db: sled::Db,
    blobs: PathBuf,
    synced: Arc<Mutex<Synced>>,
}

/// How long after a modification time a listing (of the directory) or an fsync (of a file)
/// must come for that time to stand for a settled state: far above any file system's
/// timestamp granularity and any pause between sled's creating a blob file and writing it.
const MTIME_SLACK: Duration = Duration::from_secs(1);

struct Synced {
    /// `blobs/`, open for the life of the store: listed and fsynced without a new descriptor.
    dir: Dir,
    /// Names of the blob files fsynced after they settled (and still present at the last
    /// listing).
    names: HashSet<OsString>,
    /// The directory's modification time at the last listing, when that listing came at
    /// least [`MTIME_SLACK`] after it and found every file settled: while the time is
    /// unchanged, nothing new is there.
    settled_mtime: Option<SystemTime>,
    /// Tests: opening a blob file fails as if the process were out of descriptors.
    #[cfg(test)]
    out_of_descriptors: bool,
}

/// What syncing one blob file not yet known synced did.
enum Durable {
    /// Fsynced; `settled` when it had not been modified for [`MTIME_SLACK`] before.
    File { settled: bool },
    /// Gone since the listing (its page was rewritten): nothing to keep.
    Gone,
    /// Out of descriptors: the whole file system was synced through the held directory.
    FileSystem,
}

impl Flusher {
    /// For the database opened at `path` (sled keeps its blobs in `path/blobs`, which it
    /// creates when it opens the database).
    ///
    /// # Errors
    ///
    /// [`StoreError::Backend`](crate::store::StoreError::Backend) when `blobs/` cannot be
    /// opened.
    pub(super) fn new(db: sled::Db, path: &Path) -> Result<Self> {
        let blobs = path.join("blobs");
        let dir = rustix::fs::open(
            &blobs,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .and_then(Dir::new)
        .map_err(|e| {
            let e = io::Error::from(e);
            backend(io::Error::new(
                e.kind(),
                format!("opening sled's blob directory {}: {e}", blobs.display()),
            ))
        })?;
        Ok(Self {
            db,
            blobs,
            synced: Arc::new(Mutex::new(Synced {
                dir,
                names: HashSet::new(),
                settled_mtime: None,
                #[cfg(test)]
                out_of_descriptors: false,
            })),
        })
    }

    /// sled's flush, then the blob files it may have left unsynced; returns how many blob
    /// files this call fsynced (each, or with the whole file system when out of descriptors).
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
        let mut guard = self.synced.lock().unwrap_or_else(PoisonError::into_inner);
        let synced = &mut *guard;
        let mtime = match std::fs::metadata(&self.blobs) {
            Ok(meta) => meta.modified()?,
            // Removed from under the store: no blob to sync there.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        if synced.settled_mtime == Some(mtime) {
            return Ok(0);
        }
        let listed_at = SystemTime::now();
        let mut present = HashSet::new();
        let mut fsynced = 0;
        let mut unsettled = false;
        synced.dir.rewind();
        while let Some(entry) = synced.dir.read() {
            let entry = entry?;
            let name = entry.file_name().to_bytes();
            if matches!(name, b"." | b"..") {
                continue;
            }
            let name = OsStr::from_bytes(name).to_owned();
            if !synced.names.contains(&name) {
                match synced.sync_file(&name)? {
                    Durable::Gone => continue,
                    Durable::File { settled } => {
                        fsynced += 1;
                        if settled {
                            synced.names.insert(name.clone());
                        } else {
                            unsettled = true;
                        }
                    }
                    Durable::FileSystem => {
                        // Everything is durable; the listing is left unfinished, so nothing
                        // is remembered and the next flush lists again.
                        synced.settled_mtime = None;
                        return Ok(fsynced + 1);
                    }
                }
            }
            present.insert(name);
        }
        synced.names.retain(|name| present.contains(name));
        if fsynced > 0 {
            rustix::fs::fsync(synced.dir.fd()?)?;
        }
        synced.settled_mtime = (!unsettled
            && listed_at
                .duration_since(mtime)
                .is_ok_and(|after| after >= MTIME_SLACK))
        .then_some(mtime);
        Ok(fsynced)
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

impl Synced {
    /// Makes the blob file `name` durable: fsyncs it, or, out of descriptors, the file system.
    fn sync_file(&self, name: &OsStr) -> io::Result<Durable> {
        let dir = self.dir.fd()?;
        let opened = self.open_blob(dir, name);
        match opened {
            Ok(file) => {
                rustix::fs::fsync(&file)?;
                let modified = std::fs::File::from(file).metadata()?.modified()?;
                let settled = SystemTime::now()
                    .duration_since(modified)
                    .is_ok_and(|quiet| quiet >= MTIME_SLACK);
                Ok(Durable::File { settled })
            }
            Err(Errno::NOENT) => Ok(Durable::Gone),
            Err(Errno::MFILE | Errno::NFILE) => {
                rustix::fs::syncfs(dir)?;
                Ok(Durable::FileSystem)
            }
            Err(e) => Err(e.into()),
        }
    }

    fn open_blob(
        &self,
        dir: rustix::fd::BorrowedFd<'_>,
        name: &OsStr,
    ) -> rustix::io::Result<rustix::fd::OwnedFd> {
        #[cfg(test)]
        if self.out_of_descriptors {
            return Err(Errno::MFILE);
        }
        rustix::fs::openat(dir, name, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh sled database in `dir`, its flusher, a tree, and a value large enough to be a
    /// blob file.
    fn blob_store(dir: &Path) -> (Flusher, sled::Tree, Vec<u8>) {
        let db = crate::store::sled::raw_db(dir).expect("open sled");
        let flusher = Flusher::new(db.clone(), dir).expect("flusher");
        let tree = db.open_tree("t").expect("tree");
        (
            flusher,
            tree,
            vec![7u8; 4 * crate::store::sled::SEGMENT_SIZE_BYTES],
        )
    }

    /// Sets the modification time of the blob directory and every file in it an hour back,
    /// as if they had been written long before.
    fn age(dir: &Path) {
        let blobs = dir.join("blobs");
        let an_hour_ago = SystemTime::now() - Duration::from_secs(3_600);
        for entry in std::fs::read_dir(&blobs).expect("blobs dir") {
            std::fs::File::options()
                .write(true)
                .open(entry.expect("entry").path())
                .and_then(|file| file.set_modified(an_hour_ago))
                .expect("age a blob file");
        }
        std::fs::File::open(&blobs)
            .and_then(|blobs| blobs.set_modified(an_hour_ago))
            .expect("age the directory");
    }

    /// Whether the flusher knows exactly the blob files in the directory as synced.
    fn synced_matches_the_directory(flusher: &Flusher, dir: &Path) -> bool {
        let on_disk = std::fs::read_dir(dir.join("blobs"))
            .expect("blobs dir")
            .count();
        flusher.synced() == on_disk
    }

    /// Ages the files, flushes, and asserts that the flusher then knows exactly the blob
    /// files present as synced.
    fn settle(flusher: &Flusher, dir: &Path, why: &str) {
        age(dir);
        flusher.flush().expect("flush");
        assert!(synced_matches_the_directory(flusher, dir), "{why}");
    }

    fn settled(flusher: &Flusher) -> Option<SystemTime> {
        flusher
            .synced
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .settled_mtime
    }

    /// A value over a quarter of a segment is a blob file; the flush fsyncs it, again while
    /// it may still be being written (modified less than a second before), and not once it
    /// settled; then syncs the next one, and keeps the set of synced files equal to the
    /// directory's listing.
    #[test]
    fn a_flush_syncs_each_new_blob_file_until_it_settled() {
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
        assert_eq!(flusher.synced(), 0, "a blob just written is not settled");
        assert!(
            flusher.flush().expect("flush") >= 1,
            "an unsettled blob is synced again"
        );
        age(dir.path());
        assert!(
            flusher.flush().expect("flush") >= 1,
            "a settled blob is synced a last time"
        );
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
        settle(
            &flusher,
            dir.path(),
            "the known-synced set follows the directory: removed blobs are forgotten",
        );
    }

    /// Once a listing has seen the directory's time settle, flushes skip the listing until a
    /// blob file is made or removed, and then sync the new one.
    #[test]
    fn a_settled_directory_is_not_listed_again_until_a_blob_comes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (flusher, tree, big) = blob_store(dir.path());
        tree.insert(b"big", big.clone()).expect("insert");
        assert!(
            flusher.flush().expect("flush") >= 1,
            "the first blob is synced"
        );
        age(dir.path());
        assert!(flusher.flush().expect("flush") >= 1, "synced once settled");
        assert!(
            settled(&flusher).is_some(),
            "an old time stands for the listing"
        );
        assert_eq!(flusher.flush().expect("flush"), 0, "nothing new");

        tree.insert(b"big2", big).expect("insert");
        assert!(
            flusher.flush().expect("flush") >= 1,
            "a new blob file changes the directory's time and is synced"
        );
        assert!(
            settled(&flusher).is_none(),
            "a time just set does not stand for a listing"
        );
        settle(&flusher, dir.path(), "every blob present is known synced");
    }

    /// Out of descriptors, a flush still succeeds: it syncs the whole file system through the
    /// directory it holds open, remembers nothing, and syncs each file once descriptors are
    /// back.
    #[test]
    fn out_of_descriptors_a_flush_syncs_the_file_system_and_tries_again_later() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (flusher, tree, big) = blob_store(dir.path());
        tree.insert(b"big", big).expect("insert");
        age(dir.path());
        let out = |out: bool| {
            flusher
                .synced
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .out_of_descriptors = out;
        };
        out(true);
        for _ in 0..2 {
            assert_eq!(
                flusher.flush().expect("a flush out of descriptors"),
                1,
                "the file system was synced"
            );
            assert_eq!(flusher.synced(), 0, "nothing remembered");
            assert!(settled(&flusher).is_none(), "the next flush lists again");
        }
        out(false);
        settle(
            &flusher,
            dir.path(),
            "each file synced once descriptors are back",
        );
    }

    /// A blob file sled cannot write (its directory gone here; out of descriptors or space in
    /// production) fails the one write that needed it: later writes and flushes go on (the
    /// vendored sled cancels the log slot it had claimed instead of leaving its log buffer
    /// unwritten for good), and once blob files can be written again, so can big values;
    /// every acknowledged value reads back after a reopen, the failed one nowhere.
    #[test]
    fn a_blob_file_that_cannot_be_written_fails_its_write_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let blobs = dir.path().join("blobs");
        let aside = dir.path().join("blobs-aside");
        {
            let (flusher, tree, big) = blob_store(dir.path());
            tree.insert(b"before", vec![1u8; 64]).expect("insert");
            flusher.flush().expect("flush");
            std::fs::rename(&blobs, &aside).expect("move blobs/ away");
            assert!(
                tree.insert(b"big", big.clone()).is_err(),
                "a value whose blob file cannot be written is not stored"
            );
            // On a thread with a deadline: a log left with a buffer that is never written
            // makes the next flush wait forever.
            let (done, finished) = std::sync::mpsc::channel();
            let worker = {
                let (flusher, tree) = (flusher.clone(), tree.clone());
                std::thread::spawn(move || {
                    let after = tree
                        .insert(b"after", vec![2u8; 64])
                        .and_then(|_| tree.flush());
                    let flushed = flusher.flush();
                    done.send((after.is_ok(), flushed.is_ok())).ok();
                })
            };
            let (after, flushed) = finished
                .recv_timeout(Duration::from_secs(30))
                .expect("the log is not stuck: a write and a flush returned");
            worker.join().expect("writer thread");
            assert!(after && flushed, "the next write and flush succeed");
            assert!(tree.get(b"big").expect("read").is_none(), "nothing stored");
            std::fs::rename(&aside, &blobs).expect("blobs/ back");
            tree.insert(b"big2", big)
                .expect("a big value once blobs can be written");
            flusher.flush().expect("flush");
        }
        let db = crate::store::sled::raw_db(dir.path()).expect("reopen sled");
        let tree = db.open_tree("t").expect("tree");
        for key in [&b"before"[..], b"after", b"big2"] {
            assert!(tree.get(key).expect("read").is_some(), "{key:?} kept");
        }
        assert!(
            tree.get(b"big").expect("read").is_none(),
            "the failed write is nowhere"
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
