//! Schema migrations: the numbered steps that bring a store written by an older server to the
//! schema this build reads, run at open before anything else touches the store.
//!
//! [`MIGRATIONS`] lists one step per version, step `from` turning a store of schema `from` into
//! one of `from + 1`; the oldest schema this build opens is the oldest step's `from` (schema 3;
//! version 2 is refused). At open:
//!
//! - a store of this build's schema opens as it is;
//! - a newer one is refused, untouched, with one line saying which server reads it;
//! - an older one that the steps cover is first written to a backup file beside the store
//!   (`store.schema-N.backup`, the `store/dump.rs` format `tether-server restore` reads; kept
//!   if it exists already, so a migration that crashed and runs again never replaces the copy
//!   made before its first step), then each step runs and stamps its new version with a flush.
//!
//! **Invariant:** a step is idempotent (a crash between its writes and its stamp runs it
//! again on the half-migrated store) and never reads or writes outside the sled database.

use std::path::Path;
use std::time::SystemTime;

use super::layout::backend;
use super::{META_TREE, Result, SCHEMA_VERSION_KEY, StoreError};
use crate::store::SCHEMA_VERSION;
use crate::store::dump;

/// One step: turns a store of schema `from` into one of `from + 1`.
#[derive(Clone, Copy)]
pub(crate) struct Migration {
    pub from: u32,
    /// What it changes, for the log.
    pub what: &'static str,
    pub run: fn(&sled::Db) -> Result<()>,
}

/// The schema a build opens: its version and the steps from older ones, in order, contiguous,
/// ending at `version`.
pub(crate) struct Schema {
    pub version: u32,
    pub migrations: &'static [Migration],
}

/// The steps of this build, oldest first.
pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration {
        from: 3,
        what: "build the daily and per-step event counts from the hourly ones",
        run: event_rollups::build,
    },
    Migration {
        from: 4,
        what: "move the rollup buckets into blocks of an hour (5-minute) and six hours (1-hour)",
        run: rollup_blocks::build,
    },
];

/// This build's schema.
pub(crate) const SCHEMA: Schema = Schema {
    version: SCHEMA_VERSION,
    migrations: MIGRATIONS,
};

impl Schema {
    /// The oldest stored version these steps bring to `version`.
    fn oldest(&self) -> u32 {
        self.migrations.first().map_or(self.version, |m| m.from)
    }
}

/// Checks the schema version of `db` (the store in the directory `path`), migrates an older
/// one after backing it up, or stamps `db` if it is brand new. Never writes to a database it
/// refuses (not even by creating a tree).
///
/// # Errors
///
/// [`StoreError::SchemaNewer`], [`StoreError::SchemaMismatch`] (too old, or data without a
/// version), a step's error, `Backend`.
pub(super) fn check_or_migrate(db: &sled::Db, path: &Path, schema: &Schema) -> Result<()> {
    let names = db.tree_names();
    if names.iter().any(|name| name == META_TREE.as_bytes()) {
        let meta = db.open_tree(META_TREE).map_err(backend)?;
        if let Some(raw) = meta.get(SCHEMA_VERSION_KEY).map_err(backend)? {
            let found = String::from_utf8_lossy(&raw).into_owned();
            let Ok(version) = found.parse::<u32>() else {
                return Err(mismatch(found, schema));
            };
            return match version {
                v if v == schema.version => Ok(()),
                v if v > schema.version => Err(StoreError::SchemaNewer {
                    found: v,
                    supported: schema.version,
                }),
                v if v < schema.oldest() => Err(mismatch(found, schema)),
                v => migrate(db, path, v, schema),
            };
        }
    }
    // No version: only a database without any data may be stamped as ours.
    for name in &names {
        if !db.open_tree(name).map_err(backend)?.is_empty() {
            return Err(mismatch("none".to_owned(), schema));
        }
    }
    stamp(db, schema.version)
}

/// Runs the steps from `found` to `schema.version`, after writing the store to its backup file.
fn migrate(db: &sled::Db, path: &Path, found: u32, schema: &Schema) -> Result<()> {
    let backup = backup_path(path, found);
    if backup.exists() {
        tracing::info!(path = %backup.display(), "keeping the backup made before this migration began");
    } else {
        write_backup(db, &backup, found)?;
        tracing::info!(path = %backup.display(), "store backed up before its migration");
    }
    for step in schema.migrations.iter().filter(|m| m.from >= found) {
        tracing::info!(
            from = step.from,
            to = step.from + 1,
            what = step.what,
            "migrating the store"
        );
        (step.run)(db)?;
        stamp(db, step.from + 1)?;
    }
    Ok(())
}

/// Where the copy of the store in `path` at schema `version` goes: beside it.
pub(crate) fn backup_path(path: &Path, version: u32) -> std::path::PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".schema-{version}.backup"));
    path.with_file_name(name)
}

/// Writes every record of `db` to a new file `to`, synced, under a temporary name first.
fn write_backup(db: &sled::Db, to: &Path, version: u32) -> Result<()> {
    let partial = to.with_extension("partial");
    let file = std::fs::File::create(&partial).map_err(backend)?;
    let header = dump::Header {
        schema_version: version,
        server_version: env!("CARGO_PKG_VERSION").to_owned(),
        taken_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
    };
    let mut writer = dump::Writer::new(std::io::BufWriter::new(file), &header).map_err(backend)?;
    super::export::export_db(db, &mut |space, key, value| {
        writer.record(space, key, value)
    })?;
    let (out, _) = writer.finish().map_err(backend)?;
    let file = out.into_inner().map_err(|e| backend(e.into_error()))?;
    file.sync_all().map_err(backend)?;
    std::fs::rename(&partial, to).map_err(backend)?;
    Ok(())
}

fn stamp(db: &sled::Db, version: u32) -> Result<()> {
    let meta = db.open_tree(META_TREE).map_err(backend)?;
    meta.insert(SCHEMA_VERSION_KEY, version.to_string().as_bytes())
        .map_err(backend)?;
    db.flush().map_err(backend)?;
    Ok(())
}

fn mismatch(found: String, schema: &Schema) -> StoreError {
    StoreError::SchemaMismatch {
        found,
        expected: schema.version,
    }
}

mod event_rollups;
mod rollup_blocks;
#[cfg(test)]
mod tests;
