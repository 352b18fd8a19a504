//! What the sled store holds, by part, for the benchmarks' bytes per sample (and an operator's
//! curiosity): a full scan, not for a hot path.

use super::layout::{CHUNK, HEAD, ROLLUP_1H, ROLLUP_5M, backend, corrupt};
use super::{Result, SledStore};
use crate::store::chunk::ChunkHeader;
use crate::store::head::Head;

/// Records and bytes (keys and values) of each part of the store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreUsage {
    pub chunks: u64,
    pub chunk_bytes: u64,
    /// Samples in sealed chunks.
    pub chunk_samples: u64,
    /// Rollup blocks (`rollup/block.rs`), each up to an hour of 5-minute or six hours of 1-hour
    /// buckets.
    pub rollups: u64,
    pub rollup_bytes: u64,
    pub heads: u64,
    pub head_bytes: u64,
    /// Samples in head records (snapshots of open chunks).
    pub head_samples: u64,
    pub log_records: u64,
    pub log_bytes: u64,
    /// Every other record (agents, tokens, audit, ...).
    pub other_bytes: u64,
    /// What sled's files take on disk, live data and not yet reclaimed space together.
    pub size_on_disk: u64,
}

impl StoreUsage {
    /// Bytes of every record the store holds (keys and values), without sled's own overhead.
    pub fn record_bytes(&self) -> u64 {
        self.chunk_bytes + self.rollup_bytes + self.head_bytes + self.log_bytes + self.other_bytes
    }
}

impl SledStore {
    /// Scans the whole store and sums it by part.
    ///
    /// # Errors
    ///
    /// A read failure, or a chunk or head record that cannot be parsed.
    pub fn usage(&self) -> Result<StoreUsage> {
        let mut usage = StoreUsage::default();
        for entry in self.data.iter() {
            let (key, value) = entry.map_err(backend)?;
            let bytes = (key.len() + value.len()) as u64;
            let kind = key
                .iter()
                .position(|&b| b == b'/')
                .and_then(|org_len| key[org_len + 1..].split(|&b| b == b'/').next())
                .unwrap_or_default();
            match kind {
                k if k == CHUNK => {
                    let (header, _) =
                        ChunkHeader::parse(&value).map_err(|e| corrupt(&key, e.to_string()))?;
                    usage.chunks += 1;
                    usage.chunk_bytes += bytes;
                    usage.chunk_samples += u64::from(header.count);
                }
                k if k == ROLLUP_5M || k == ROLLUP_1H => {
                    usage.rollups += 1;
                    usage.rollup_bytes += bytes;
                }
                k if k == HEAD => {
                    let head = Head::decode(&value).map_err(|e| corrupt(&key, e.to_string()))?;
                    usage.heads += 1;
                    usage.head_bytes += bytes;
                    usage.head_samples += u64::from(head.header().count);
                }
                _ => usage.other_bytes += bytes,
            }
        }
        for entry in self.db.open_tree(super::LOG_TREE).map_err(backend)?.iter() {
            let (key, value) = entry.map_err(backend)?;
            usage.log_records += 1;
            usage.log_bytes += (key.len() + value.len()) as u64;
        }
        usage.size_on_disk = self.db.size_on_disk().map_err(backend)?;
        Ok(usage)
    }
}
