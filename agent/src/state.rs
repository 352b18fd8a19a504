//! The agent's state directory: who this agent is and the secret that proves it.
//!
//! One JSON file, `state.json`, holds the agent id, org id and credential. The directory is
//! created with mode 0700 and the file is written with mode 0600, atomically (temporary file,
//! fsync, rename), so a crash never leaves a half-written credential behind.

use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::AgentError;

/// Name of the state file inside the state directory.
pub const STATE_FILE_NAME: &str = "state.json";
/// Version of the state file's format; a newer or unknown one is refused.
pub const STATE_FORMAT_VERSION: u32 = 1;

/// The agent credential: a secret sent as `authorization: Bearer <credential>` on `Connect`.
///
/// `Debug` and `Display` redact it; [`Credential::expose_secret`] is the only way to read it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Credential(String);

/// What enrollment produced, and what the state file stores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enrollment {
    /// The agent's id, assigned by the server.
    pub agent_id: String,
    /// The org the agent belongs to.
    pub org_id: String,
    /// The long-lived agent credential.
    pub credential: Credential,
}

/// Handle on the state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
}

/// On-disk layout of `state.json`.
#[derive(Serialize, Deserialize)]
struct StateFile {
    version: u32,
    agent_id: String,
    org_id: String,
    credential: Credential,
}

// === impl Credential ===

impl Credential {
    /// Wraps a secret.
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }

    /// The secret itself. Never log it.
    pub fn expose_secret(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Credential(<redacted>)")
    }
}

impl fmt::Display for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

// === impl StateDir ===

impl StateDir {
    /// Opens the state directory, creating it (mode 0700) if needed.
    ///
    /// An existing directory keeps its permissions (it may be shared), but a warning is logged
    /// when other users can read it.
    ///
    /// # Errors
    ///
    /// [`AgentError::StateIo`] when the directory cannot be created or inspected.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, AgentError> {
        let dir = dir.into();
        let io_err = |source| AgentError::StateIo {
            path: dir.clone(),
            source,
        };
        if dir.exists() {
            let metadata = fs::metadata(&dir).map_err(io_err)?;
            if !metadata.is_dir() {
                return Err(io_err(std::io::Error::other("not a directory")));
            }
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = metadata.permissions().mode();
                if mode & 0o077 != 0 {
                    tracing::warn!(
                        dir = %dir.display(),
                        mode = format_args!("{:o}", mode & 0o777),
                        "state directory is accessible to other users"
                    );
                }
            }
        } else {
            let mut builder = fs::DirBuilder::new();
            builder.recursive(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::DirBuilderExt;
                builder.mode(0o700);
            }
            builder.create(&dir).map_err(io_err)?;
        }
        Ok(Self { dir })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Path of the state file.
    pub fn file_path(&self) -> PathBuf {
        self.dir.join(STATE_FILE_NAME)
    }

    /// Reads the stored enrollment, if any.
    ///
    /// # Errors
    ///
    /// [`AgentError::StateIo`] when the file exists but cannot be read,
    /// [`AgentError::StateCorrupt`] when it cannot be parsed or has an unknown format version.
    pub fn load(&self) -> Result<Option<Enrollment>, AgentError> {
        let path = self.file_path();
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(AgentError::StateIo { path, source }),
        };
        let file: StateFile =
            serde_json::from_slice(&bytes).map_err(|source| AgentError::StateCorrupt {
                path: path.clone(),
                source,
            })?;
        if file.version != STATE_FORMAT_VERSION {
            return Err(AgentError::StateCorrupt {
                path,
                source: serde::de::Error::custom(format!(
                    "unsupported state format version {} (this agent reads {})",
                    file.version, STATE_FORMAT_VERSION
                )),
            });
        }
        if file.agent_id.is_empty() || file.credential.expose_secret().is_empty() {
            return Err(AgentError::StateCorrupt {
                path,
                source: serde::de::Error::custom("agent id or credential is empty"),
            });
        }
        Ok(Some(Enrollment {
            agent_id: file.agent_id,
            org_id: file.org_id,
            credential: file.credential,
        }))
    }

    /// Stores `enrollment`, replacing any previous one atomically. The file has mode 0600.
    ///
    /// # Errors
    ///
    /// [`AgentError::StateIo`] when writing, syncing or renaming fails.
    pub fn save(&self, enrollment: &Enrollment) -> Result<(), AgentError> {
        let file = StateFile {
            version: STATE_FORMAT_VERSION,
            agent_id: enrollment.agent_id.clone(),
            org_id: enrollment.org_id.clone(),
            credential: enrollment.credential.clone(),
        };
        let mut json = serde_json::to_vec_pretty(&file).map_err(|err| AgentError::StateIo {
            path: self.file_path(),
            source: std::io::Error::other(err),
        })?;
        json.push(b'\n');

        let tmp_path = self.dir.join(format!("{STATE_FILE_NAME}.tmp"));
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| AgentError::StateIo { path, source }
        };
        // A leftover temporary file from a crash may have other permissions: start afresh.
        match fs::remove_file(&tmp_path) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(io_err(&tmp_path)(source)),
        }
        let mut options = fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut tmp = options.open(&tmp_path).map_err(io_err(&tmp_path))?;
        tmp.write_all(&json).map_err(io_err(&tmp_path))?;
        tmp.sync_all().map_err(io_err(&tmp_path))?;
        drop(tmp);

        let path = self.file_path();
        fs::rename(&tmp_path, &path).map_err(io_err(&path))?;
        // Make the rename itself durable.
        #[cfg(unix)]
        fs::File::open(&self.dir)
            .and_then(|dir| dir.sync_all())
            .map_err(io_err(&self.dir))?;
        Ok(())
    }
}

impl StateDir {
    /// Removes the stored enrollment (a revoked credential), so that the agent enrolls again.
    /// Removing a state that is not there is not an error.
    ///
    /// # Errors
    ///
    /// [`AgentError::StateIo`] when the file cannot be removed or the removal synced.
    pub fn discard(&self) -> Result<(), AgentError> {
        let path = self.file_path();
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(source) => return Err(AgentError::StateIo { path, source }),
        }
        #[cfg(unix)]
        fs::File::open(&self.dir)
            .and_then(|dir| dir.sync_all())
            .map_err(|source| AgentError::StateIo {
                path: self.dir.clone(),
                source,
            })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enrollment() -> Enrollment {
        Enrollment {
            agent_id: "agent-1".into(),
            org_id: "org-1".into(),
            credential: Credential::new("tcred_very_secret"),
        }
    }

    #[test]
    fn round_trip() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let state = StateDir::open(tmp.path().join("state")).expect("open");
        assert_eq!(state.load().expect("load"), None);
        state.save(&enrollment()).expect("save");
        assert_eq!(state.load().expect("load"), Some(enrollment()));

        // Saving again replaces the enrollment.
        let mut next = enrollment();
        next.credential = Credential::new("rotated");
        state.save(&next).expect("save again");
        let reopened = StateDir::open(tmp.path().join("state")).expect("reopen");
        assert_eq!(reopened.load().expect("load"), Some(next));
    }

    #[test]
    fn a_discarded_state_is_gone() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let state = StateDir::open(tmp.path()).expect("open");
        state.discard().expect("nothing to discard is fine");
        state.save(&enrollment()).expect("save");
        state.discard().expect("discard");
        assert_eq!(state.load().expect("load"), None);
    }

    #[cfg(unix)]
    #[test]
    fn permissions_are_private() {
        use std::os::unix::fs::PermissionsExt;

        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("nested").join("state");
        let state = StateDir::open(&dir).expect("open");
        state.save(&enrollment()).expect("save");
        let dir_mode = fs::metadata(&dir)
            .expect("dir metadata")
            .permissions()
            .mode();
        let file_mode = fs::metadata(state.file_path())
            .expect("file metadata")
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        assert_eq!(file_mode & 0o777, 0o600);
    }

    #[test]
    fn corrupt_file_is_a_clear_error() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let state = StateDir::open(tmp.path()).expect("open");
        fs::write(state.file_path(), b"{ not json").expect("write");
        assert!(matches!(state.load(), Err(AgentError::StateCorrupt { .. })));

        fs::write(
            state.file_path(),
            br#"{"version": 99, "agent_id": "a", "org_id": "o", "credential": "c"}"#,
        )
        .expect("write");
        assert!(matches!(state.load(), Err(AgentError::StateCorrupt { .. })));
    }

    #[test]
    fn credential_is_redacted() {
        let credential = Credential::new("tcred_very_secret");
        assert!(!format!("{credential:?}").contains("secret"));
        assert!(!format!("{credential}").contains("secret"));
        assert!(!format!("{:?}", enrollment()).contains("very_secret"));
        assert_eq!(credential.expose_secret(), "tcred_very_secret");
    }
}
