//! Backups as files, and restoring them into a fresh data directory.
//!
//! A backup is one file in the `store/dump.rs` format: every record of the store at one
//! consistent point, with its schema version and a SHA-256 of the whole file. It is written by
//! [`write`] from a store that is open, the running server's own (`AdminService.Backup`, which
//! `tetherctl backup` saves) or a stopped server's ([`backup_stopped`], under the data
//! directory's lock). "Consistent" is the store's word (`Store::export`): no commit,
//! compaction or purge makes a change while the records are read, so the file holds a state a
//! crash after one commit could leave, and a server started on its restore recovers it as it
//! would after a restart there: every acknowledged sample once, rollups included, the audit
//! chains intact.
//!
//! A running server writes the file to a spool in its data directory first (unlinked at once,
//! so it goes with the handle whatever happens) and streams it afterwards: the store is quiet
//! only for the local copy, never for as long as a client takes to read.
//!
//! [`restore`] checks the whole file (length and checksum) before it writes anything, imports
//! the records beside the data directory's store and renames them into place only once they
//! load, into a data directory that holds nothing else (never over a store). The admin token
//! file is not part of a backup: a restored server makes a new one at its first start.

use std::fs::File;
use std::io::{BufReader, BufWriter, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::datadir::{DataDirError, DataDirLock, LOCK_FILE};
use crate::store::dump::{self, DumpError, Header, Summary};
use crate::store::{SCHEMA_VERSION, SledStore, Snapshot, Store, StoreError};

/// The directory of the store inside a data directory.
pub const STORE_DIR: &str = "store";
/// Where a restore builds the store before renaming it into place.
const PARTIAL_DIR: &str = "store.restoring";

/// What a restored backup holds, counted by loading it as a server would.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Restored {
    pub header: Header,
    pub records: u64,
    pub orgs: usize,
    pub agents: usize,
    pub tokens: usize,
    pub enrollment_tokens: usize,
    pub tombstones: usize,
}

/// A backup file just written: what it says about itself and what it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Taken {
    pub header: Header,
    pub summary: Summary,
}

/// Why a backup or a restore did not happen. Every message names the file or directory.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    #[error("{} holds no store to back up (is it the server's --data-dir?)", .0.display())]
    NoStore(PathBuf),
    #[error("{} exists: back up into a new file", .0.display())]
    Exists(PathBuf),
    #[error(
        "{} is not empty: restore into a new or empty data directory (move what it holds away \
         first)",
        .0.display()
    )]
    NotEmpty(PathBuf),
    #[error("{} cannot be restored: {source}", path.display())]
    Unreadable {
        path: PathBuf,
        #[source]
        source: DumpError,
    },
    #[error(
        "{} holds store schema version {found}, newer than this server reads ({SCHEMA_VERSION}): \
         restore it with tether-server {server} or newer",
        path.display()
    )]
    Newer {
        path: PathBuf,
        found: u32,
        server: String,
    },
    #[error("cannot write {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the store in {} {action}: {source}", path.display())]
    Store {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: StoreError,
    },
}

/// Writes every record of `store`, read at one consistent point, to `out` as a backup file,
/// synced. `out` is written from its current position.
///
/// # Errors
///
/// The store's read error or `out`'s write error, as [`StoreError::Backend`].
pub fn write(store: &dyn Store, out: File) -> Result<(File, Taken), StoreError> {
    let header = Header {
        schema_version: SCHEMA_VERSION,
        server_version: env!("CARGO_PKG_VERSION").to_owned(),
        taken_at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
    };
    let backend = |e: std::io::Error| StoreError::Backend(Box::new(e));
    let mut writer = dump::Writer::new(BufWriter::new(out), &header).map_err(backend)?;
    store.export(&mut |space, key, value| writer.record(space, key, value))?;
    let (out, summary) = writer.finish().map_err(backend)?;
    let out = out.into_inner().map_err(|e| backend(e.into_error()))?;
    out.sync_all().map_err(backend)?;
    Ok((out, Taken { header, summary }))
}

/// A file in `dir` that no other name reaches: created, then unlinked at once, so its space
/// goes back when the handle is dropped, whatever ends its use.
///
/// # Errors
///
/// I/O.
pub fn spool_in(dir: &Path) -> std::io::Result<File> {
    let path = dir.join(format!(
        "backup-spool.{}.{}",
        std::process::id(),
        rand::random::<u64>()
    ));
    let mut options = std::fs::OpenOptions::new();
    options.read(true).write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let file = options.open(&path)?;
    std::fs::remove_file(&path)?;
    Ok(file)
}

/// Backs up the store of the stopped server of `data_dir` into the new file `to` (0600), under
/// the data directory's lock, so no server starts on it meanwhile.
///
/// # Errors
///
/// [`BackupError::DataDir`] when a server runs on `data_dir`; [`BackupError::NoStore`],
/// [`BackupError::Exists`]; `Store` when the store does not open; `Io`.
pub fn backup_stopped(data_dir: &Path, to: &Path) -> Result<Taken, BackupError> {
    let store_path = data_dir.join(STORE_DIR);
    if !store_path.is_dir() {
        return Err(BackupError::NoStore(data_dir.to_owned()));
    }
    let _lock = DataDirLock::acquire(data_dir)?;
    let io = |source| BackupError::Io {
        path: to.to_owned(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let file = options.open(to).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => BackupError::Exists(to.to_owned()),
        _ => io(e),
    })?;
    let store = SledStore::open(&store_path).map_err(|source| BackupError::Store {
        path: store_path.clone(),
        action: "does not open",
        source,
    })?;
    let result = write(&store, file);
    if result.is_err() {
        // Best effort: a half-written file must not pass for a backup (restore would refuse it
        // anyway, by its checksum).
        if let Err(e) = std::fs::remove_file(to) {
            tracing::warn!(path = %to.display(), "cannot remove the incomplete backup: {e}");
        }
    }
    let (_, taken) = result.map_err(|source| BackupError::Store {
        path: store_path,
        action: "cannot be read",
        source,
    })?;
    Ok(taken)
}

/// Restores the backup file `file` into `data_dir`, which must be missing or empty, and checks
/// that the restored store loads.
///
/// # Errors
///
/// [`BackupError::Unreadable`] for a file that is not a whole backup (truncated, damaged, not
/// a backup at all), before anything is written; [`BackupError::Newer`] for a backup of a
/// newer schema; [`BackupError::NotEmpty`]; [`BackupError::DataDir`] when a server runs on
/// `data_dir` or it is unusable; `Store`, `Io`.
pub fn restore(file: &Path, data_dir: &Path) -> Result<Restored, BackupError> {
    let unreadable = |source| BackupError::Unreadable {
        path: file.to_owned(),
        source,
    };
    let mut input = File::open(file).map_err(|e| unreadable(e.into()))?;
    dump::verify(&mut input).map_err(unreadable)?;
    input
        .seek(SeekFrom::Start(0))
        .map_err(|e| unreadable(e.into()))?;
    let (mut reader, header) = dump::Reader::new(BufReader::new(input)).map_err(unreadable)?;
    if header.schema_version > SCHEMA_VERSION {
        return Err(BackupError::Newer {
            path: file.to_owned(),
            found: header.schema_version,
            server: header.server_version,
        });
    }

    crate::datadir::prepare(data_dir)?;
    let _lock = DataDirLock::acquire(data_dir)?;
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| BackupError::Io { path, source }
    };
    for entry in std::fs::read_dir(data_dir).map_err(io(data_dir))? {
        let name = entry.map_err(io(data_dir))?.file_name();
        if name != LOCK_FILE && name != PARTIAL_DIR {
            return Err(BackupError::NotEmpty(data_dir.to_owned()));
        }
    }
    // Built beside, then renamed: a restore cut short leaves no half store where a server
    // would open it (and the next restore clears it).
    let partial = data_dir.join(PARTIAL_DIR);
    if partial.exists() {
        std::fs::remove_dir_all(&partial).map_err(io(&partial))?;
    }
    let store_error = |action| {
        let path = partial.clone();
        move |source| BackupError::Store {
            path,
            action,
            source,
        }
    };
    let mut failure = None;
    let records = std::iter::from_fn(|| match reader.next_record() {
        Ok(Some((space, key, value))) => Some(Ok(crate::store::sled::Record { space, key, value })),
        Ok(None) => None,
        Err(e) => {
            let detail = e.to_string();
            failure = Some(e);
            Some(Err(StoreError::Corrupt {
                key: String::new(),
                detail,
            }))
        }
    });
    let imported = crate::store::sled::import(&partial, records);
    if let Some(e) = failure {
        return Err(unreadable(e));
    }
    let n_records = imported.map_err(store_error("cannot be written"))?;
    // Opening checks the schema (and migrates an older one) and recovers the samples.
    let snapshot = SledStore::open(&partial)
        .and_then(|store| store.load())
        .map_err(store_error("does not load"))?;
    let store = data_dir.join(STORE_DIR);
    std::fs::rename(&partial, &store).map_err(io(&store))?;
    for dir in [data_dir, data_dir.parent().unwrap_or(data_dir)] {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io(dir))?;
    }
    Ok(Restored::of(header, n_records, &snapshot))
}

impl Restored {
    fn of(header: Header, records: u64, snapshot: &Snapshot) -> Self {
        Self {
            header,
            records,
            orgs: snapshot.orgs.len(),
            agents: snapshot.agents.len(),
            tokens: snapshot.tokens.len(),
            enrollment_tokens: snapshot.enrollment_tokens.len(),
            tombstones: snapshot.tombstones.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Write;
    use crate::testing::agent_record;

    fn store_with_an_agent(data_dir: &Path) -> Snapshot {
        let store = SledStore::open(&data_dir.join(STORE_DIR)).expect("open");
        store
            .commit_writes(&[Write::PutAgent(agent_record("acme", "a-1", "hw-1"))])
            .expect("commit");
        store.load().expect("load")
    }

    fn load(data_dir: &Path) -> Snapshot {
        SledStore::open(&data_dir.join(STORE_DIR))
            .and_then(|s| s.load())
            .expect("load")
    }

    #[test]
    fn a_backup_restores_into_a_fresh_directory_as_it_was() {
        let root = tempfile::tempdir().expect("tempdir");
        let data = root.path().join("data");
        crate::datadir::prepare(&data).expect("data dir");
        let before = store_with_an_agent(&data);

        let file = root.path().join("backup.tbk");
        let taken = backup_stopped(&data, &file).expect("backup");
        assert_eq!(taken.header.schema_version, SCHEMA_VERSION);
        assert_eq!(
            taken.summary.bytes,
            std::fs::metadata(&file).expect("file").len()
        );
        assert!(
            matches!(backup_stopped(&data, &file), Err(BackupError::Exists(_))),
            "never over a file"
        );

        let restored = root.path().join("restored");
        let summary = restore(&file, &restored).expect("restore");
        assert_eq!(
            (summary.agents, summary.records),
            (1, taken.summary.records)
        );
        assert_eq!(load(&restored), before);
        assert!(
            matches!(restore(&file, &restored), Err(BackupError::NotEmpty(_))),
            "never over a store"
        );
        assert!(!restored.join(PARTIAL_DIR).exists());
    }

    #[test]
    fn a_damaged_or_truncated_file_is_refused_before_anything_is_written() {
        let root = tempfile::tempdir().expect("tempdir");
        let data = root.path().join("data");
        crate::datadir::prepare(&data).expect("data dir");
        store_with_an_agent(&data);
        let file = root.path().join("backup.tbk");
        backup_stopped(&data, &file).expect("backup");
        let bytes = std::fs::read(&file).expect("read");

        let cut = root.path().join("cut.tbk");
        std::fs::write(&cut, &bytes[..bytes.len() - 100]).expect("write");
        let flipped = root.path().join("flipped.tbk");
        let mut damaged = bytes.clone();
        damaged[bytes.len() / 2] ^= 0x10;
        std::fs::write(&flipped, &damaged).expect("write");
        for (bad, why) in [
            (&cut, "checksum"),
            (&flipped, "checksum"),
            (&data, "cannot read"),
        ] {
            let target = root.path().join("never");
            let err = restore(bad, &target).expect_err("refused");
            assert!(matches!(err, BackupError::Unreadable { .. }), "{err}");
            assert!(err.to_string().contains(why), "{err}");
            assert!(!target.exists(), "nothing written for {}", bad.display());
        }
    }

    #[test]
    fn a_running_server_and_used_directories_are_refused() {
        let root = tempfile::tempdir().expect("tempdir");
        let data = root.path().join("data");
        crate::datadir::prepare(&data).expect("data dir");
        assert!(matches!(
            backup_stopped(&data, &root.path().join("b")),
            Err(BackupError::NoStore(_))
        ));
        store_with_an_agent(&data);
        let running = DataDirLock::acquire(&data).expect("a server's lock");
        assert!(matches!(
            backup_stopped(&data, &root.path().join("b")),
            Err(BackupError::DataDir(DataDirError::Locked { .. }))
        ));
        drop(running);
        let file = root.path().join("b");
        backup_stopped(&data, &file).expect("backup");
        let used = root.path().join("used");
        std::fs::create_dir(&used).expect("dir");
        std::fs::write(used.join("admin.token"), "x").expect("file");
        assert!(matches!(
            restore(&file, &used),
            Err(BackupError::NotEmpty(_))
        ));
    }
}
