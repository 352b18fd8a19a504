//! Retention of the sled store ([`Store::purge`](crate::store::Store::purge)): whole chunks,
//! whole rollup blocks (once their last bucket is past the cutoff) and status changes past
//! their cutoffs, found by seeking from series to series so the work grows with what is
//! removed, not with what stays.

use std::ops::Bound;
use std::time::{SystemTime, UNIX_EPOCH};

use super::layout::*;
use super::{Result, SledStore};
use crate::domain::Transition;
use crate::store::chunk::ChunkHeader;
use crate::store::rollup::Resolution;
use crate::store::{Purged, Retention, fault};

/// How many removals [`Store::purge`](crate::store::Store::purge) applies per batch: bounds
/// the time it holds up concurrent writers, whatever the amount of expired data, and stays
/// below the batch size past which sled keeps memory (see `SledStore::commit`).
const PURGE_BATCH: usize = 256;

/// Whether a record of a series (key, value) has expired, and if so its weight (the samples of
/// a chunk, 1 for anything else).
type Expiry<'a> = dyn Fn(&[u8], &[u8]) -> Result<Option<u64>> + 'a;

impl SledStore {
    /// Finds series by skipping from org to org and, within an org's chunk, rollup and
    /// transition sections, from agent to agent (one seek each), so the work grows with the
    /// number of deleted records plus orgs and agents, not with what stays. Series are found
    /// from their keys rather than from agent records, so the history of an agent whose record
    /// is gone is purged too. Chunks and rollup blocks go by their key alone (a chunk's key is
    /// its newest sample's time); a transition in the cutoff's own millisecond is decoded, so its
    /// boundary is exact. Removals go in batches of `PURGE_BATCH`, flushed once at the end.
    pub(super) fn purge_history(&self, retention: &Retention) -> Result<Purged> {
        let mut purged = Purged::default();
        // Stored times are whole milliseconds: `t < cutoff` is `t_ms < ceil(cutoff)`.
        let whole_ms = |cutoff: SystemTime| {
            let ms = millis(cutoff);
            ms + u64::from(UNIX_EPOCH + std::time::Duration::from_millis(ms) < cutoff)
        };
        let chunk_end = whole_ms(retention.samples);
        let chunk_samples = |key: &[u8], value: &[u8]| -> Result<Option<u64>> {
            let (header, _) = ChunkHeader::parse(value).map_err(|e| corrupt(key, e.to_string()))?;
            Ok(Some(u64::from(header.count)))
        };
        let bucket = |_: &[u8], _: &[u8]| -> Result<Option<u64>> { Ok(Some(1)) };
        let transition_cutoff = retention.samples;
        let transition = move |key: &[u8], value: &[u8]| -> Result<Option<u64>> {
            let transition: Transition = decode(key, value)?;
            Ok((transition.time < transition_cutoff).then_some(1))
        };
        for org in self.orgs()? {
            // A chunk whose newest sample is at `chunk_end - 1` ms or earlier is wholly older.
            if let Some(end) = chunk_end.checked_sub(1) {
                let (n, samples) = self.purge_section(&org, CHUNK, end, &chunk_samples)?;
                purged.chunks += n;
                purged.samples += samples;
            }
            for (resolution, cutoff) in [
                (Resolution::FiveMinutes, retention.five_minutes),
                (Resolution::OneHour, retention.one_hour),
            ] {
                // A block goes once its last bucket starts before the cutoff: its key (its
                // start) is at most `cutoff - 1 - (block - bucket)`.
                let kept_past_start = resolution.block_ms() - resolution.width_ms();
                if let Some(end) = whole_ms(cutoff).checked_sub(1 + kept_past_start) {
                    let kind = rollup_kind(resolution);
                    purged.rollups += self.purge_section(&org, kind, end, &bucket)?.0;
                }
            }
            purged.transitions += self
                .purge_section(&org, TRANSITION, millis(transition_cutoff), &transition)?
                .0;
        }
        if purged != Purged::default() {
            self.flusher.flush()?;
        }
        Ok(purged)
    }

    /// Deletes, in every series (one per agent) of one kind in one org, the records below
    /// `end_ms` in key order that `expired` (given the key and value) says have expired;
    /// returns how many went and the sum of `expired`'s weights (e.g. a chunk's samples).
    fn purge_section(
        &self,
        org: &str,
        kind: &[u8],
        end_ms: u64,
        expired: &Expiry<'_>,
    ) -> Result<(u64, u64)> {
        let section = section(org, kind);
        let section_end = prefix_end(&section);
        let (mut removed, mut weight) = (0, 0);
        let mut from = Bound::Included(section.clone());
        while let Some(entry) = self.data.range((from, section_end.clone())).next() {
            let (key, _) = entry.map_err(backend)?;
            let agent_len = key[section.len()..]
                .iter()
                .position(|&b| b == b'/')
                .ok_or_else(|| corrupt(&key, "series key has no agent id"))?;
            let series = &key[..section.len() + agent_len + 1];
            let (n, w) = self.purge_series(series, end_ms, expired)?;
            removed += n;
            weight += w;
            match successor(series) {
                Some(next) => from = Bound::Included(next),
                None => break,
            }
        }
        Ok((removed, weight))
    }

    /// Deletes the expired records of one series stamped before `end_ms` (keys under `series`,
    /// in key order), in batches of [`PURGE_BATCH`]; returns how many went, and their weight.
    fn purge_series(&self, series: &[u8], end_ms: u64, expired: &Expiry<'_>) -> Result<(u64, u64)> {
        // Keys stamped at `end_ms` or before, whatever follows the stamp.
        let end = match end_ms.checked_add(1) {
            Some(next) => Bound::Excluded(bucket_key(series, next)),
            None => prefix_end(series),
        };
        let (mut removed, mut weight) = (0, 0);
        let mut from = Bound::Included(series.to_vec());
        loop {
            let mut batch = sled::Batch::default();
            let mut n_batch = 0;
            let mut last_key = None;
            for entry in self.data.range((from.clone(), end.clone())) {
                let (key, value) = entry.map_err(backend)?;
                if let Some(w) = expired(&key, &value)? {
                    batch.remove(key.clone());
                    n_batch += 1;
                    weight += w;
                }
                last_key = Some(key);
                if n_batch == PURGE_BATCH {
                    break;
                }
            }
            if n_batch > 0 {
                self.data.apply_batch(batch).map_err(backend)?;
                fault::point("retention-batch");
                removed += n_batch as u64;
            }
            match last_key {
                Some(key) if n_batch == PURGE_BATCH => from = Bound::Excluded(key.to_vec()),
                _ => return Ok((removed, weight)),
            }
        }
    }
}
