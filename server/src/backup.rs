//! Backups of a stopped server's data directory, and restoring them into a fresh one.
//!
//! [`backup`] holds the data directory's lock (`datadir.rs`) for its whole run, so no server
//! can open the store while it is copied: the copy is the store exactly as the last server
//! left it (a store left by a crash is copied as it is, and recovers the same way when it is
//! opened). The copy is then opened and loaded, as a server would, before the backup is called
//! done, and `tether-backup.json` records what it holds. [`restore`] copies a backup into a
//! data directory that holds no store (never over one), under that directory's lock, and loads
//! it again. The admin token file is not part of a backup: a restored server makes a new one.
//!
//! A backup of a running server is not offered: its store is open in that process, and a
//! consistent copy has to come from there.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::datadir::{DataDirError, DataDirLock};
use crate::store::{SCHEMA_VERSION, SledStore, Snapshot, Store as _, StoreError};

/// The directory of the store inside a data directory, and inside a backup.
pub const STORE_DIR: &str = "store";
/// The file of a backup that describes it.
pub const MANIFEST_FILE: &str = "tether-backup.json";
/// The version of the backup layout (a `store` directory beside the manifest).
pub const BACKUP_FORMAT: u32 = 1;

/// What a backup holds, as recorded in its manifest and checked by loading it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub schema_version: u32,
    /// The version of the `tether-server` that wrote it.
    pub server_version: String,
    /// RFC 3339.
    pub created_at: String,
    pub orgs: usize,
    pub agents: usize,
    pub tokens: usize,
    pub enrollment_tokens: usize,
    pub tombstones: usize,
}

/// Why a backup or a restore did not happen. Every message names the directory to look at.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    #[error("{} holds no store to back up (is it the server's --data-dir?)", .0.display())]
    NoStore(PathBuf),
    #[error("{} is not empty: back up into a new directory", .0.display())]
    NotEmpty(PathBuf),
    #[error(
        "{} already holds a store: restore into an empty data directory, or move that store \
         away first",
        .0.display()
    )]
    StoreExists(PathBuf),
    #[error("{} is not a Tether backup: {reason}", path.display())]
    NotABackup { path: PathBuf, reason: String },
    #[error("cannot copy {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the copy in {} does not load: {source}", path.display())]
    Unreadable {
        path: PathBuf,
        #[source]
        source: StoreError,
    },
}

/// Copies the store of the stopped server of `data_dir` into the new directory `to`, checks
/// that the copy loads, and writes its manifest.
///
/// # Errors
///
/// [`BackupError::DataDir`] when a server runs on `data_dir` (the lock is held);
/// [`BackupError::NoStore`], [`BackupError::NotEmpty`] for the wrong directories; `Io` and
/// `Unreadable` when the copy fails or does not load (`to` is then left for inspection).
pub fn backup(data_dir: &Path, to: &Path) -> Result<Manifest, BackupError> {
    let store = data_dir.join(STORE_DIR);
    if !store.is_dir() {
        return Err(BackupError::NoStore(data_dir.to_owned()));
    }
    let _lock = DataDirLock::acquire(data_dir)?;
    if std::fs::read_dir(to).is_ok_and(|mut entries| entries.next().is_some()) {
        return Err(BackupError::NotEmpty(to.to_owned()));
    }
    crate::server::create_private_dir(to).map_err(|source| BackupError::Io {
        path: to.to_owned(),
        source,
    })?;
    copy_tree(&store, &to.join(STORE_DIR))?;
    let snapshot = load(&to.join(STORE_DIR))?;
    let manifest = Manifest::of(&snapshot);
    let text = serde_json::to_string_pretty(&manifest).expect("a manifest serializes");
    crate::server::write_private_file(&to.join(MANIFEST_FILE), &text).map_err(|source| {
        BackupError::Io {
            path: to.join(MANIFEST_FILE),
            source,
        }
    })?;
    Ok(manifest)
}

/// Restores the backup `from` into `data_dir`, which must hold no store (it is created if
/// missing), and checks that the restored store loads.
///
/// # Errors
///
/// [`BackupError::NotABackup`] for a directory without a manifest and store of this schema
/// version; [`BackupError::StoreExists`] when `data_dir` holds a store;
/// [`BackupError::DataDir`] when a server runs on it or it is unusable; `Io`, `Unreadable`.
pub fn restore(from: &Path, data_dir: &Path) -> Result<Manifest, BackupError> {
    let manifest = read_manifest(from)?;
    crate::datadir::prepare(data_dir)?;
    let _lock = DataDirLock::acquire(data_dir)?;
    let store = data_dir.join(STORE_DIR);
    if store.exists() {
        return Err(BackupError::StoreExists(data_dir.to_owned()));
    }
    // Copied beside, then renamed: a restore cut short leaves no half store where a server
    // would open it.
    let partial = data_dir.join("store.restoring");
    if partial.exists() {
        std::fs::remove_dir_all(&partial).map_err(|source| BackupError::Io {
            path: partial.clone(),
            source,
        })?;
    }
    copy_tree(&from.join(STORE_DIR), &partial)?;
    std::fs::rename(&partial, &store).map_err(|source| BackupError::Io {
        path: store.clone(),
        source,
    })?;
    load(&store)?;
    Ok(manifest)
}

/// The manifest of the backup `dir`, checked against this build.
///
/// # Errors
///
/// [`BackupError::NotABackup`] when it is missing, unreadable, or of another format or schema.
pub fn read_manifest(dir: &Path) -> Result<Manifest, BackupError> {
    let not_a_backup = |reason: String| BackupError::NotABackup {
        path: dir.to_owned(),
        reason,
    };
    let text = std::fs::read_to_string(dir.join(MANIFEST_FILE))
        .map_err(|e| not_a_backup(format!("{MANIFEST_FILE}: {e}")))?;
    let manifest: Manifest =
        serde_json::from_str(&text).map_err(|e| not_a_backup(format!("{MANIFEST_FILE}: {e}")))?;
    if manifest.format != BACKUP_FORMAT {
        return Err(not_a_backup(format!(
            "backup format {} (this server reads {BACKUP_FORMAT})",
            manifest.format
        )));
    }
    if manifest.schema_version != SCHEMA_VERSION {
        return Err(not_a_backup(format!(
            "store schema version {} (this server reads {SCHEMA_VERSION}); restore it with the \
             server version that wrote it ({})",
            manifest.schema_version, manifest.server_version
        )));
    }
    if !dir.join(STORE_DIR).is_dir() {
        return Err(not_a_backup(format!("no {STORE_DIR} directory")));
    }
    Ok(manifest)
}

impl Manifest {
    fn of(snapshot: &Snapshot) -> Self {
        Self {
            format: BACKUP_FORMAT,
            schema_version: SCHEMA_VERSION,
            server_version: env!("CARGO_PKG_VERSION").to_owned(),
            created_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            orgs: snapshot.orgs.len(),
            agents: snapshot.agents.len(),
            tokens: snapshot.tokens.len(),
            enrollment_tokens: snapshot.enrollment_tokens.len(),
            tombstones: snapshot.tombstones.len(),
        }
    }
}

/// Opens the store at `path` and loads it, as a starting server does.
fn load(path: &Path) -> Result<Snapshot, BackupError> {
    let unreadable = |source| BackupError::Unreadable {
        path: path.to_owned(),
        source,
    };
    SledStore::open(path)
        .and_then(|store| store.load())
        .map_err(unreadable)
}

/// Copies the directory `from` to the new directory `to`: directories 0700, files with their
/// mode, each file and directory synced. Refuses anything but files and directories.
fn copy_tree(from: &Path, to: &Path) -> Result<(), BackupError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| BackupError::Io { path, source }
    };
    crate::server::create_private_dir(to).map_err(io(to))?;
    for entry in std::fs::read_dir(from).map_err(io(from))? {
        let entry = entry.map_err(io(from))?;
        let (source, target) = (entry.path(), to.join(entry.file_name()));
        let kind = entry.file_type().map_err(io(&source))?;
        if kind.is_dir() {
            copy_tree(&source, &target)?;
        } else if kind.is_file() {
            std::fs::copy(&source, &target).map_err(io(&source))?;
            std::fs::File::open(&target)
                .and_then(|f| f.sync_all())
                .map_err(io(&target))?;
        } else {
            return Err(BackupError::Io {
                path: source,
                source: std::io::Error::other("neither a file nor a directory"),
            });
        }
    }
    std::fs::File::open(to)
        .and_then(|d| d.sync_all())
        .map_err(io(to))
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

    #[test]
    fn a_backup_restores_into_a_fresh_directory_as_it_was() {
        let root = tempfile::tempdir().expect("tempdir");
        let data = root.path().join("data");
        crate::datadir::prepare(&data).expect("data dir");
        let before = store_with_an_agent(&data);

        let copy = root.path().join("backup");
        let manifest = backup(&data, &copy).expect("backup");
        assert_eq!(
            (manifest.agents, manifest.schema_version),
            (1, SCHEMA_VERSION)
        );
        assert_eq!(read_manifest(&copy).expect("manifest"), manifest);
        assert!(
            matches!(backup(&data, &copy), Err(BackupError::NotEmpty(_))),
            "never into a used directory"
        );

        let restored = root.path().join("restored");
        restore(&copy, &restored).expect("restore");
        assert_eq!(load(&restored.join(STORE_DIR)).expect("load"), before);
        assert!(
            matches!(restore(&copy, &restored), Err(BackupError::StoreExists(_))),
            "never over a store"
        );
        assert!(!restored.join("store.restoring").exists());
    }

    #[test]
    fn a_running_server_and_strange_directories_are_refused() {
        let root = tempfile::tempdir().expect("tempdir");
        let data = root.path().join("data");
        crate::datadir::prepare(&data).expect("data dir");
        assert!(matches!(
            backup(&data, &root.path().join("b")),
            Err(BackupError::NoStore(_))
        ));
        store_with_an_agent(&data);
        let running = DataDirLock::acquire(&data).expect("a server's lock");
        assert!(matches!(
            backup(&data, &root.path().join("b")),
            Err(BackupError::DataDir(DataDirError::Locked { .. }))
        ));
        drop(running);
        assert!(matches!(
            restore(&data, &root.path().join("r")),
            Err(BackupError::NotABackup { .. })
        ));
    }
}
