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

use std::io;
use std::path::{Path, PathBuf};

/// Why the data directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error("cannot use data directory {}: {source}", path.display())]
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
