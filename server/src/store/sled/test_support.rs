//! Inspection and tampering of a stopped server's store, for end-to-end tests (feature
//! `test-support`): what a crash left on disk, what a schema check refuses, what an edited or
//! deleted audit record does to the chain.
//!
//! The key layout stays here, beside the code that writes it, and no sled type crosses this
//! module's boundary: tests see bytes, seqs and `StoreError`s. Nothing in the server uses it.

use std::collections::BTreeMap;
use std::path::Path;

use super::{DATA_TREE, LOG_TREE, META_TREE, Result, SCHEMA_VERSION_KEY};
use super::{audit_key, backend, chunk_series, corrupt, head_key, millis, raw_db};
use crate::domain::{AgentId, OrgId};
use crate::store::chunk::ChunkDecoder;
use crate::store::head::Head;
use crate::store::wal::{self, AgentKey};

/// Every stored record: (tree name, key) → value.
pub type Dump = BTreeMap<(Vec<u8>, Vec<u8>), Vec<u8>>;

/// The sled database of a store directory, opened directly. Fails while a server holds it.
pub struct RawStore {
    db: ::sled::Db,
}

impl RawStore {
    /// Opens the store in `path` (a server's `data_dir/store`).
    ///
    /// # Errors
    ///
    /// `StoreError::Backend` if it cannot be opened, e.g. while a server holds its lock.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        raw_db(path.as_ref()).map(|db| Self { db }).map_err(backend)
    }

    /// The seqs of the samples stored for `agent` in `org`, in `(time, seq)` order: those in
    /// its sealed chunks, its head record, and the write-ahead log (which a start-up would
    /// replay), each seq once.
    ///
    /// # Errors
    ///
    /// A read failure or a damaged record.
    pub fn sample_seqs(&self, org: &str, agent: &str) -> Result<Vec<u64>> {
        let key = AgentKey {
            org: OrgId::new(org),
            agent: AgentId::new(agent),
        };
        let data = self.data()?;
        // seq → time in ms.
        let mut seqs: BTreeMap<u64, u64> = BTreeMap::new();
        for entry in data.scan_prefix(chunk_series(&key)) {
            let (chunk_key, value) = entry.map_err(backend)?;
            let samples =
                ChunkDecoder::new(&value).map_err(|e| corrupt(&chunk_key, e.to_string()))?;
            for sample in samples {
                let sample = sample.map_err(|e| corrupt(&chunk_key, e.to_string()))?;
                seqs.insert(sample.seq, millis(sample.time.get()));
            }
        }
        let record_key = head_key(&key);
        if let Some(value) = data.get(&record_key).map_err(backend)? {
            let head = Head::decode(&value).map_err(|e| corrupt(&record_key, e.to_string()))?;
            for sample in head.samples() {
                let sample = sample.map_err(|e| corrupt(&record_key, e.to_string()))?;
                seqs.insert(sample.seq, millis(sample.time.get()));
            }
        }
        for entry in self.log()?.iter() {
            let (log_key, value) = entry.map_err(backend)?;
            let record = wal::decode(&value).map_err(|e| corrupt(&log_key, e.to_string()))?;
            for (logged, sample) in record.iter() {
                if *logged == key {
                    seqs.entry(sample.seq)
                        .or_insert_with(|| millis(sample.time.get()));
                }
            }
        }
        let mut ordered: Vec<(u64, u64)> = seqs.into_iter().map(|(seq, ms)| (ms, seq)).collect();
        ordered.sort_unstable();
        Ok(ordered.into_iter().map(|(_, seq)| seq).collect())
    }

    /// How many records the write-ahead log holds.
    ///
    /// # Errors
    ///
    /// A read failure.
    pub fn log_records(&self) -> Result<usize> {
        Ok(self.log()?.len())
    }

    /// Every record of every tree: (tree name, key) → value.
    ///
    /// # Errors
    ///
    /// A read failure.
    pub fn dump(&self) -> Result<Dump> {
        let mut out = BTreeMap::new();
        for name in self.db.tree_names() {
            let tree = self.db.open_tree(&name).map_err(backend)?;
            for entry in tree.iter() {
                let (key, value) = entry.map_err(backend)?;
                out.insert((name.to_vec(), key.to_vec()), value.to_vec());
            }
        }
        Ok(out)
    }

    /// Replaces the stored schema version with `version` (any text) and flushes.
    ///
    /// # Errors
    ///
    /// A write failure.
    pub fn set_schema_version(&self, version: &str) -> Result<()> {
        let meta = self.db.open_tree(META_TREE).map_err(backend)?;
        meta.insert(SCHEMA_VERSION_KEY, version.as_bytes())
            .map_err(backend)?;
        self.flush()
    }

    /// The stored bytes of audit record `seq` of `org` (JSON), if there is one.
    ///
    /// # Errors
    ///
    /// A read failure.
    pub fn audit_record(&self, org: &str, seq: u64) -> Result<Option<Vec<u8>>> {
        Ok(self
            .data()?
            .get(audit_key(org, seq))
            .map_err(backend)?
            .map(|value| value.to_vec()))
    }

    /// Overwrites audit record `seq` of `org` with `value` and flushes.
    ///
    /// # Errors
    ///
    /// A write failure.
    pub fn put_audit_record(&self, org: &str, seq: u64, value: &[u8]) -> Result<()> {
        self.data()?
            .insert(audit_key(org, seq), value)
            .map_err(backend)?;
        self.flush()
    }

    /// Deletes audit record `seq` of `org` and flushes; returns whether it existed.
    ///
    /// # Errors
    ///
    /// A write failure.
    pub fn remove_audit_record(&self, org: &str, seq: u64) -> Result<bool> {
        let existed = self
            .data()?
            .remove(audit_key(org, seq))
            .map_err(backend)?
            .is_some();
        self.flush()?;
        Ok(existed)
    }

    fn data(&self) -> Result<::sled::Tree> {
        self.db.open_tree(DATA_TREE).map_err(backend)
    }

    fn log(&self) -> Result<::sled::Tree> {
        self.db.open_tree(LOG_TREE).map_err(backend)
    }

    fn flush(&self) -> Result<()> {
        self.db.flush().map_err(backend).map(drop)
    }
}

impl std::fmt::Debug for RawStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RawStore")
    }
}
