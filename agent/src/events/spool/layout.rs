//! The spool's files: segment names, the state file `spool.meta`, and fsync of the directory.
//!
//! **Invariant:** `spool.meta` is only ever replaced whole (temporary file, fsync, rename, fsync
//! of the directory), so a crash leaves the old state or the new one; a missing or unreadable
//! state is rebuilt from the segments, never trusted half-read. A segment's name says its
//! severity and first seq (never 0); anything else in the directory is not a segment.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tracing::warn;

use super::{Spool, SpoolError};
use crate::events::types::Severity;

const META_FILE_NAME: &str = "spool.meta";
const META_VERSION: u32 = 1;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Meta {
    version: u32,
    pub(super) acked_through: u64,
    /// Highest seq ever assigned.
    pub(super) seq_floor: u64,
    pub(super) unreported: [u64; 4],
}

impl Spool {
    pub(super) fn segment_path(&self, queue_idx: usize, first_seq: u64) -> PathBuf {
        self.dir.join(format!(
            "{}-{first_seq:020}.seg",
            Severity::ALL[queue_idx].as_str()
        ))
    }

    /// Writes `spool.meta` if it would change: temporary file, fsync, rename, fsync of the
    /// directory.
    pub(super) fn persist_meta(&mut self) -> Result<(), SpoolError> {
        let meta = Meta {
            version: META_VERSION,
            acked_through: self.acked_through,
            seq_floor: self.next_seq - 1,
            unreported: self.unreported,
        };
        if meta == self.persisted {
            return Ok(());
        }
        let path = self.dir.join(META_FILE_NAME);
        let tmp = self.dir.join(format!("{META_FILE_NAME}.tmp"));
        let err = |source| SpoolError {
            path: path.clone(),
            source,
        };
        let json = serde_json::to_vec(&meta).expect("numbers always serialize");
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(err)?;
        file.write_all(&json)
            .and_then(|()| file.sync_all())
            .map_err(err)?;
        fs::rename(&tmp, &path).map_err(err)?;
        sync_dir(&self.dir)?;
        self.persisted = meta;
        Ok(())
    }
}

/// Reads `spool.meta`. A missing file is a new spool; an unreadable one is logged and
/// rebuilt from the segments (the server's `Welcome` then keeps seqs from going back).
pub(super) fn read_meta(dir: &Path) -> Meta {
    let path = dir.join(META_FILE_NAME);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Meta::default(),
        Err(err) => {
            warn!(path = %path.display(), "event spool: cannot read its state, rebuilding it from the segments: {err}");
            return Meta::default();
        }
    };
    match serde_json::from_slice::<Meta>(&bytes) {
        Ok(meta) if meta.version == META_VERSION => meta,
        Ok(meta) => {
            warn!(path = %path.display(), version = meta.version, "event spool: unknown state version, rebuilding it from the segments");
            Meta::default()
        }
        Err(err) => {
            warn!(path = %path.display(), "event spool: corrupt state, rebuilding it from the segments: {err}");
            Meta::default()
        }
    }
}

pub(super) fn parse_segment_name(name: &str) -> Option<(Severity, u64)> {
    let stem = name.strip_suffix(".seg")?;
    let (severity, seq) = stem.split_once('-')?;
    let seq: u64 = seq.parse().ok()?;
    (seq > 0).then_some(())?;
    Some((Severity::parse(severity)?, seq))
}

pub(super) fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(|source| SpoolError {
            path: dir.to_path_buf(),
            source,
        })
}
