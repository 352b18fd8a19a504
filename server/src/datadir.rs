//! The data directory: the store and the bootstrap admin token, private to the server's user.
//!
//! [`prepare`] runs before anything is opened. A missing directory is created with mode 0700.
//! An existing one that group or others may enter (a plain `mkdir` gives 0755) is made 0700,
//! and the server logs that it did. A directory that other users may write to (world-writable
//! or sticky, like `/tmp`) is shared by design: it is refused, with a message naming it, rather
//! than taken away from its other users.
//!
//! What Tether writes inside is its own, so [`tighten_store`] and [`tighten_file`] make it
//! private on every start: the store's files 0600 and its directories 0700, the admin token
//! file 0600. (Files the store creates later get the process umask, but they sit in 0700
//! directories, which nobody else may enter.)
//!
//! One server per directory: [`DataDirLock::acquire`] takes an advisory lock on
//! [`LOCK_FILE`] (which also records the holder's pid) before the store is opened, and keeps it
//! for the server's life; the operating system releases it when the process ends, however it
//! ends, so a stale file never blocks a start. A second server is refused in one line naming
//! the first one's pid, and [`ensure_unlocked`] lets the binary say the same before it binds or
//! writes anything.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

/// The file in the data directory that a running server holds locked, with its pid inside.
pub const LOCK_FILE: &str = "tether-server.lock";

/// Why the data directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error("cannot use data directory {} (--data-dir): {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "data directory {} is shared with other users (mode {mode:04o}) and would hold the store \
         and the admin token: choose a directory of the server's own with --data-dir",
        path.display()
    )]
    Shared { path: PathBuf, mode: u32 },
    #[error(
        "another tether-server{} is running with data dir {}: stop it first, or give this one \
         its own --data-dir",
        pid.map(|pid| format!(" (pid {pid})")).unwrap_or_default(),
        path.display()
    )]
    Locked { path: PathBuf, pid: Option<u32> },
}

/// The lock a running server holds on its data directory; released when dropped (or when the
/// process ends).
#[derive(Debug)]
pub struct DataDirLock {
    /// Open for the lock's lifetime: closing it releases the lock.
    _file: File,
}

// === impl DataDirLock ===

impl DataDirLock {
    /// Locks `dir` (which [`prepare`] made) for this process and writes its pid into the lock
    /// file.
    ///
    /// # Errors
    ///
    /// [`DataDirError::Locked`] when another process holds the lock, [`DataDirError::Io`] when
    /// the lock file cannot be created or written.
    pub fn acquire(dir: &Path) -> Result<Self, DataDirError> {
        use std::io::Write as _;
        let path = dir.join(LOCK_FILE);
        let io_err = |source| DataDirError::Io {
            path: path.clone(),
            source,
        };
        let mut options = std::fs::OpenOptions::new();
        // Not truncated on open: the pid inside belongs to the holder until the lock is ours.
        options.read(true).write(true).create(true).truncate(false);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.mode(0o600);
        }
        let mut file = options.open(&path).map_err(io_err)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(DataDirError::Locked {
                    path: dir.to_owned(),
                    pid: read_pid(&mut file),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io_err(e)),
        }
        file.set_len(0).map_err(io_err)?;
        writeln!(file, "{}", std::process::id()).map_err(io_err)?;
        file.sync_data().map_err(io_err)?;
        Ok(Self { _file: file })
    }
}

/// Fails when another server holds `dir`, as [`DataDirLock::acquire`] would. Creates and
/// changes nothing, so the binary may ask before it binds or writes anything (a missing lock
/// file means nobody holds the directory).
///
/// # Errors
///
/// [`DataDirError::Locked`] when a server holds it, [`DataDirError::Io`] when the lock file
/// exists but cannot be opened or examined.
pub fn ensure_unlocked(dir: &Path) -> Result<(), DataDirError> {
    let path = dir.join(LOCK_FILE);
    let mut file = match File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        // A file where the directory should be: name the directory, not the lock file.
        Err(source) if source.kind() == io::ErrorKind::NotADirectory => {
            return Err(DataDirError::Io {
                path: dir.to_owned(),
                source,
            });
        }
        Err(source) => return Err(DataDirError::Io { path, source }),
    };
    match file.try_lock_shared() {
        // Free: dropping the file releases this probe's own lock at once.
        Ok(()) => Ok(()),
        Err(std::fs::TryLockError::WouldBlock) => Err(DataDirError::Locked {
            path: dir.to_owned(),
            pid: read_pid(&mut file),
        }),
        Err(std::fs::TryLockError::Error(source)) => Err(DataDirError::Io { path, source }),
    }
}

/// The pid written in a lock file, if it holds one.
fn read_pid(file: &mut File) -> Option<u32> {
    use std::io::Read as _;
    let mut text = String::new();
    file.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

/// Creates `dir` with mode 0700 if it is missing, or makes an existing one 0700. Returns the
/// mode it had when that changed it.
///
/// # Errors
///
/// [`DataDirError::Shared`] for a directory other users may write to (left as it is),
/// [`DataDirError::Io`] when it cannot be created, examined or made private (e.g. it belongs
/// to another user).
pub fn prepare(dir: &Path) -> Result<Option<u32>, DataDirError> {
    let io_err = |source| DataDirError::Io {
        path: dir.to_owned(),
        source,
    };
    crate::server::create_private_dir(dir).map_err(io_err)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir).map_err(io_err)?.permissions().mode() & 0o7777;
        if mode & 0o077 == 0 {
            return Ok(None);
        }
        if mode & 0o1002 != 0 {
            return Err(DataDirError::Shared {
                path: dir.to_owned(),
                mode,
            });
        }
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io_err)?;
        Ok(Some(mode))
    }
    #[cfg(not(unix))]
    Ok(None)
}

/// Makes everything under `store` private: directories 0700, files 0600. Symbolic links are
/// left alone (and not followed).
///
/// # Errors
///
/// The first directory that cannot be read or entry whose mode cannot be set.
pub fn tighten_store(store: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let meta = std::fs::symlink_metadata(store)?;
        if meta.is_dir() {
            set_mode(store, &meta, 0o700)?;
            for entry in std::fs::read_dir(store)? {
                tighten_store(&entry?.path())?;
            }
        } else if meta.is_file() {
            set_mode(store, &meta, 0o600)?;
        }
        fn set_mode(path: &Path, meta: &std::fs::Metadata, mode: u32) -> io::Result<()> {
            if meta.permissions().mode() & 0o777 == mode {
                return Ok(());
            }
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        }
    }
    #[cfg(not(unix))]
    let _ = store;
    Ok(())
}

/// Makes the file `path` private (0600), if it exists.
///
/// # Errors
///
/// Its mode cannot be set.
pub fn tighten_file(path: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.is_file() && meta.permissions().mode() & 0o777 != 0o600 => {
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).expect("stat").permissions().mode() & 0o777
    }

    fn chmod(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }

    #[test]
    fn a_missing_directory_is_created_private() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("a/b");
        assert_eq!(prepare(&dir).expect("created"), None);
        assert_eq!(mode(&dir), 0o700);
    }

    #[test]
    fn a_directory_others_may_enter_is_made_private() {
        let root = tempfile::tempdir().expect("tempdir");
        for open in [0o755, 0o750, 0o701] {
            chmod(root.path(), open);
            assert_eq!(prepare(root.path()).expect("tightened"), Some(open));
            assert_eq!(mode(root.path()), 0o700);
        }
        assert_eq!(prepare(root.path()).expect("private"), None);
    }

    #[test]
    fn a_directory_others_may_write_to_is_refused_and_left_as_it_is() {
        let root = tempfile::tempdir().expect("tempdir");
        for shared in [0o777, 0o1777, 0o703] {
            chmod(root.path(), shared);
            let err = prepare(root.path()).expect_err("shared");
            assert!(matches!(err, DataDirError::Shared { mode, .. } if mode == shared));
            let text = err.to_string();
            assert!(!text.contains('\n'), "{text}");
            assert!(text.contains(&root.path().display().to_string()), "{text}");
            let now = std::fs::metadata(root.path())
                .expect("stat")
                .permissions()
                .mode();
            assert_eq!(now & 0o7777, shared, "not changed");
        }
        chmod(root.path(), 0o700);
    }

    #[test]
    fn one_lock_holder_at_a_time_and_the_probe_names_it() {
        let root = tempfile::tempdir().expect("tempdir");
        ensure_unlocked(root.path()).expect("no lock file: free");
        assert!(
            !root.path().join(LOCK_FILE).exists(),
            "the probe creates nothing"
        );
        let held = DataDirLock::acquire(root.path()).expect("first");
        assert_eq!(mode(&root.path().join(LOCK_FILE)), 0o600);
        let pid = Some(std::process::id());
        let second = DataDirLock::acquire(root.path()).expect_err("held");
        assert!(
            matches!(&second, DataDirError::Locked { pid: p, .. } if *p == pid),
            "{second:?}"
        );
        let text = second.to_string();
        assert!(
            text.contains(&format!(
                "another tether-server (pid {})",
                std::process::id()
            )) && text.contains(&root.path().display().to_string())
                && !text.contains('\n'),
            "{text}"
        );
        let probed = ensure_unlocked(root.path()).expect_err("held");
        assert!(matches!(probed, DataDirError::Locked { pid: p, .. } if p == pid));
        drop(held);
        ensure_unlocked(root.path()).expect("released");
        let _again =
            DataDirLock::acquire(root.path()).expect("free again: a stale file never blocks");
    }

    #[test]
    fn the_store_and_the_token_file_are_made_private() {
        let root = tempfile::tempdir().expect("tempdir");
        let store = root.path().join("store");
        std::fs::create_dir_all(store.join("blobs")).expect("mkdir");
        for file in [
            store.join("db"),
            store.join("blobs/1"),
            root.path().join("t"),
        ] {
            std::fs::write(&file, b"x").expect("write");
            chmod(&file, 0o644);
        }
        chmod(&store.join("blobs"), 0o755);
        chmod(&store, 0o755);
        tighten_store(&store).expect("tighten");
        tighten_file(&root.path().join("t")).expect("tighten");
        tighten_file(&root.path().join("absent")).expect("nothing to do");
        assert_eq!(mode(&store), 0o700);
        assert_eq!(mode(&store.join("blobs")), 0o700);
        assert_eq!(mode(&store.join("db")), 0o600);
        assert_eq!(mode(&store.join("blobs/1")), 0o600);
        assert_eq!(mode(&root.path().join("t")), 0o600);
    }
}
