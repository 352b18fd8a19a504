//! Step 4 → 5: moves the rollups, which schema 4 kept one bucket a record
//! (`{org}/r5|rh/{agent}/{bucket start}`), into blocks (`{org}/b5|bh/{agent}/{block start}`,
//! `rollup/block.rs`).
//!
//! Invariant: idempotent and crash-safe. Each block is written in the same batch that removes
//! the buckets it took, and a bucket moved into a block *replaces* that slot (never merges into
//! it), so after a crash a run again moves the buckets left and changes no block twice. Memory
//! stays bounded by one block: a series' buckets are read in key order, which is bucket order.

use crate::store::rollup::{Resolution, Rollup, block};
use crate::store::sled::layout::{
    BUCKET_1H_V4, BUCKET_5M_V4, BUCKET_SUFFIX_LEN, backend, bucket_key, corrupt, prefix_end,
    rollup_kind, section,
};
use crate::store::sled::{DATA_TREE, Result};

/// Runs the step on `db`.
///
/// # Errors
///
/// `Backend` for a failed read or write; `Corrupt` for a bucket key without its start.
pub(crate) fn build(db: &sled::Db) -> Result<()> {
    let data = db.open_tree(DATA_TREE).map_err(backend)?;
    for org in super::event_rollups::orgs(&data)? {
        for (old, resolution) in [
            (BUCKET_5M_V4, Resolution::FiveMinutes),
            (BUCKET_1H_V4, Resolution::OneHour),
        ] {
            let from = section(&org, old);
            let mut block = Block::default();
            for entry in data.range((std::ops::Bound::Included(from.clone()), prefix_end(&from))) {
                let (key, value) = entry.map_err(backend)?;
                let (agent, start) = split(&key, from.len())?;
                if resolution.bucket_start_ms(start) != start {
                    tracing::error!(
                        key = %key.escape_ascii(),
                        "a rollup bucket key is not at a bucket's start; left where it is, out of any block"
                    );
                    continue;
                }
                let block_start = resolution.block_start_ms(start);
                if block.series.as_deref() != Some(agent) || block.start != block_start {
                    block.write(&data, &org, resolution)?;
                    block = Block {
                        series: Some(agent.to_vec()),
                        start: block_start,
                        ..Block::default()
                    };
                }
                match Rollup::decode(&value) {
                    Ok(rollup) => {
                        block.buckets.push((start, rollup));
                        block.old_keys.push(key.to_vec());
                    }
                    Err(e) => tracing::error!(
                        key = %key.escape_ascii(),
                        "a rollup bucket does not decode; left where it is, out of its block: {e}"
                    ),
                }
            }
            block.write(&data, &org, resolution)?;
        }
    }
    Ok(())
}

/// The buckets of one block being moved.
#[derive(Default)]
struct Block {
    /// The agent id, `None` before the first bucket.
    series: Option<Vec<u8>>,
    start: u64,
    buckets: Vec<(u64, Rollup)>,
    old_keys: Vec<Vec<u8>>,
}

impl Block {
    /// Writes the block (its buckets replacing the slots they take in whatever block is stored)
    /// and removes the old buckets, in one batch.
    fn write(self, data: &sled::Tree, org: &str, resolution: Resolution) -> Result<()> {
        let Some(agent) = self.series else {
            return Ok(());
        };
        let mut series = section(org, rollup_kind(resolution));
        series.extend_from_slice(&agent);
        series.push(b'/');
        let key = bucket_key(&series, self.start);
        let mut buckets = match data.get(&key).map_err(backend)? {
            None => Vec::new(),
            Some(stored) => block::decode(resolution, self.start, &stored)
                .map_err(|e| corrupt(&key, e.to_string()))?,
        };
        for (start, rollup) in self.buckets {
            match buckets.binary_search_by_key(&start, |(s, _)| *s) {
                Ok(i) => buckets[i].1 = rollup,
                Err(i) => buckets.insert(i, (start, rollup)),
            }
        }
        let mut batch = sled::Batch::default();
        if !buckets.is_empty() {
            batch.insert(key, block::encode(resolution, self.start, &buckets));
        }
        for old in self.old_keys {
            batch.remove(old);
        }
        data.apply_batch(batch).map_err(backend)
    }
}

/// The agent id and bucket start of a schema 4 bucket key, `section_len` being the length of
/// its `{org}/{kind}/`.
fn split(key: &[u8], section_len: usize) -> Result<(&[u8], u64)> {
    let rest = &key[section_len..];
    let bad = || corrupt(key, "rollup bucket key without agent and start");
    let agent_len = rest
        .len()
        .checked_sub(BUCKET_SUFFIX_LEN + 1)
        .ok_or_else(bad)?;
    if rest[agent_len] != b'/' {
        return Err(bad());
    }
    let start: [u8; 8] = rest[agent_len + 1..].try_into().map_err(|_| bad())?;
    Ok((&rest[..agent_len], u64::from_be_bytes(start)))
}
