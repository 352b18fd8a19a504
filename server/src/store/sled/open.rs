//! Opening the sled database: waiting for a just-dropped store's lock. The schema check that
//! follows is `migrate.rs`.

/// How long [`SledStore::open`](super::SledStore::open) waits for a just-dropped store's lock
/// to be released.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Opens the sled database under `path` directly, with the settings
/// [`SledStore`](super::SledStore) uses (sled refuses to reopen a database with another segment
/// size). For the unit tests and [`test_support`](super::test_support), which examine or tamper
/// with stored bytes; the server itself only goes through [`SledStore`](super::SledStore).
///
/// # Errors
///
/// sled's, e.g. when the directory is locked by an open store.
#[cfg(any(test, feature = "test-support"))]
pub(crate) fn raw_db(path: impl AsRef<std::path::Path>) -> sled::Result<sled::Db> {
    open_waiting_for_lock(
        &sled::Config::new()
            .path(path.as_ref())
            .segment_size(super::SEGMENT_SIZE_BYTES)
            .flush_every_ms(None),
    )
}

/// Opens `config`, waiting up to [`LOCK_WAIT`] for the directory lock: sled's worker threads
/// release it shortly after a database is dropped, not at once, so a restart in the same
/// process waits for that instead of failing.
pub(super) fn open_waiting_for_lock(config: &sled::Config) -> sled::Result<sled::Db> {
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match config.open() {
            Err(e) if is_lock_held(&e) && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            result => return result,
        }
    }
}

/// Whether `err`, from opening a database, may mean that another handle holds its lock. sled
/// 0.34 reports a failed `flock` as `Error::Io` of kind `Other`, with no source to inspect
/// (`Config::try_lock`); opening files fails with the OS's own kinds. Another `Other` error
/// during open is retried until [`LOCK_WAIT`] like a lock, then reported unchanged.
fn is_lock_held(err: &sled::Error) -> bool {
    matches!(err, sled::Error::Io(e) if e.kind() == std::io::ErrorKind::Other)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SledStore;
    use crate::store::sled::SEGMENT_SIZE_BYTES;

    #[test]
    fn a_held_lock_is_recognised_and_other_failures_are_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let _held = SledStore::open(dir.path()).expect("open");
        let config = sled::Config::new()
            .path(dir.path())
            .segment_size(SEGMENT_SIZE_BYTES);
        let err = config.open().expect_err("the directory is locked");
        assert!(is_lock_held(&err), "{err:?}");

        let file = dir.path().join("not-a-directory");
        std::fs::write(&file, b"x").expect("write");
        let err = sled::Config::new()
            .path(file.join("db"))
            .open()
            .expect_err("a path under a file");
        assert!(!is_lock_held(&err), "{err:?}");
    }
}
