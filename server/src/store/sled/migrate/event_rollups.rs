//! Step 3 → 4: builds the daily and per-step event counts (`crate::events::rollup`) of every
//! org from its hourly ones, which schema 3 already kept.
//!
//! Invariant: idempotent and crash-safe. Per org, the step first removes whatever derived rows
//! an earlier, interrupted run left, then rebuilds them all from the hourly rows, which it
//! never changes; until the step's stamp, a crash at any point runs it again from the start.
//! Memory stays bounded by one day's rows: the hourly tables are read in hour order and each
//! day's rows are written as soon as the next day begins.

use crate::events::rollup::{self, Rebuild};
use crate::store::sled::event::table_kind;
use crate::store::sled::layout::{
    EVENT_AGENT_HOURS, EVENT_KIND_HOURS, backend, section, successor,
};
use crate::store::sled::{DATA_TREE, Result};

/// Rows per `apply_batch` (well under sled's ~500 replaced keys a batch; see `store/sled.rs`).
const BATCH: usize = 400;

/// Runs the step on `db`.
///
/// # Errors
///
/// `Backend` for a failed read or write.
pub(crate) fn build(db: &sled::Db) -> Result<()> {
    let data = db.open_tree(DATA_TREE).map_err(backend)?;
    for org in orgs(&data)? {
        let mut out = Writer::new(&data);
        for table in rollup::DERIVED {
            for entry in data.scan_prefix(section(&org, table_kind(table))) {
                let (key, _) = entry.map_err(backend)?;
                out.remove(key.to_vec())?;
            }
        }
        out.flush()?;
        let mut rebuild = Rebuild::default();
        for (kind, agents) in [(EVENT_KIND_HOURS, false), (EVENT_AGENT_HOURS, true)] {
            let prefix = section(&org, kind);
            let mut day = None;
            for entry in data.scan_prefix(&prefix) {
                let (key, value) = entry.map_err(backend)?;
                let key = &key[prefix.len()..];
                let this_day = rollup::leading_ms(key).map(rollup::day_of);
                if this_day.is_some() && this_day != day {
                    if let Some(next) = this_day {
                        out.rows(&org, rebuild.drain(next))?;
                    }
                    day = this_day;
                }
                let parsed = if agents {
                    rebuild.agent_hour(key, &value)
                } else {
                    rebuild.kind_hour(key, &value)
                };
                if !parsed {
                    tracing::warn!(org = %org, "an hourly event count does not decode; left out of the daily counts");
                }
            }
            out.rows(&org, rebuild.drain(u64::MAX))?;
        }
        out.flush()?;
    }
    Ok(())
}

/// The orgs with any record, each found by one seek past the previous one's `{org}/`.
pub(super) fn orgs(data: &sled::Tree) -> Result<Vec<String>> {
    let mut orgs = Vec::new();
    let mut from: Vec<u8> = Vec::new();
    while let Some(entry) = data.range(from.clone()..).next() {
        let (key, _) = entry.map_err(backend)?;
        match key.iter().position(|&b| b == b'/') {
            Some(slash) => {
                let org = String::from_utf8_lossy(&key[..slash]).into_owned();
                let Some(next) = successor(&key[..=slash]) else {
                    orgs.push(org);
                    break;
                };
                orgs.push(org);
                from = next;
            }
            None => {
                from = key.to_vec();
                from.push(0);
            }
        }
    }
    Ok(orgs)
}

/// Batches of puts and removes, applied every [`BATCH`] writes.
struct Writer<'a> {
    data: &'a sled::Tree,
    batch: sled::Batch,
    pending: usize,
}

impl<'a> Writer<'a> {
    fn new(data: &'a sled::Tree) -> Self {
        Self {
            data,
            batch: sled::Batch::default(),
            pending: 0,
        }
    }

    fn remove(&mut self, key: Vec<u8>) -> Result<()> {
        self.batch.remove(key);
        self.written()
    }

    fn rows(&mut self, org: &str, rows: Vec<rollup::Row>) -> Result<()> {
        for (table, key, value) in rows {
            let mut full = section(org, table_kind(table));
            full.extend_from_slice(&key);
            self.batch.insert(full, value);
            self.written()?;
        }
        Ok(())
    }

    fn written(&mut self) -> Result<()> {
        self.pending += 1;
        if self.pending >= BATCH {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if self.pending > 0 {
            let batch = std::mem::take(&mut self.batch);
            self.data.apply_batch(batch).map_err(backend)?;
            self.pending = 0;
        }
        Ok(())
    }
}
