//! The store's periodic maintenance, run as tasks of their own beside the writer: retention
//! ([`run_retention`]: history past its age removed every `retention_interval`) and compaction
//! ([`run_compaction`]: heads that are due sealed, and checkpoints that bound the log).
//!
//! **Invariant:** both call the store directly (each pass on a blocking thread), never through
//! the writer's queues, and ack nothing: what is durable is the writer's business alone. A
//! failed pass is logged and the next interval tries again.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use crate::config::StorageConfig;
use crate::metrics::Metrics;
use crate::store::{Checkpoint, Purged, Retention, Spread, Store};

/// Removes history past its retention (chunks, rollup buckets, status changes), every
/// `retention_interval`.
pub async fn run_retention(
    store: Arc<dyn Store>,
    config: StorageConfig,
    shutdown: CancellationToken,
) {
    let mut interval = tokio::time::interval(config.retention_interval);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = interval.tick() => {}
        }
        let now = SystemTime::now();
        let cutoff = |keep: Duration| now.checked_sub(keep).unwrap_or(SystemTime::UNIX_EPOCH);
        let retention = Retention {
            samples: cutoff(config.metrics_retention),
            five_minutes: cutoff(config.rollup_5m_retention),
            one_hour: cutoff(config.rollup_1h_retention),
        };
        let store = store.clone();
        match tokio::task::spawn_blocking(move || store.purge(&retention)).await {
            Ok(Ok(purged)) if purged == Purged::default() => {}
            Ok(Ok(purged)) => tracing::info!(
                chunks = purged.chunks,
                samples = purged.samples,
                rollups = purged.rollups,
                transitions = purged.transitions,
                "retention removed old history"
            ),
            Ok(Err(e)) => tracing::warn!("retention failed: {e:#}"),
            Err(e) => tracing::warn!("retention task failed: {e}"),
        }
    }
}

/// Compacts the store every `compaction_interval` (sealing heads that are due), with a
/// checkpoint (head snapshots, log truncation) every `checkpoint_interval`, as soon as the
/// log holds `checkpoint_log_bytes`, and once more at shutdown; reports the store's memory
/// after each pass. The periodic checkpoints are spread (`CHECKPOINT_REST_RATIO`); the one at
/// shutdown, and one resting when shutdown comes, run at full speed.
pub async fn run_compaction(
    store: Arc<dyn Store>,
    config: StorageConfig,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let mut interval = tokio::time::interval(config.compaction_interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_checkpoint = tokio::time::Instant::now();
    let spread = Arc::new(Spread::new(CHECKPOINT_REST_RATIO, CHECKPOINT_LONGEST_REST));
    // A checkpoint resting when the server stops finishes at full speed.
    tokio::spawn({
        let spread = spread.clone();
        let shutdown = shutdown.clone();
        async move {
            shutdown.cancelled().await;
            spread.hurry();
        }
    });
    loop {
        let stopping = tokio::select! {
            () = shutdown.cancelled() => true,
            _ = interval.tick() => false,
        };
        let checkpoint = stopping
            || checkpoint_due(&config, last_checkpoint.elapsed(), store.memory().log_bytes);
        let began = std::time::Instant::now();
        let pass = {
            let store = store.clone();
            let spread = spread.clone();
            tokio::task::spawn_blocking(move || {
                let how = match (checkpoint, stopping) {
                    (false, _) => Checkpoint::No,
                    (true, true) => Checkpoint::Now,
                    (true, false) => Checkpoint::Spread(&spread),
                };
                let done = store.compact(SystemTime::now(), how);
                (done, store.memory())
            })
        };
        match pass.await {
            Ok((done, memory)) => {
                metrics.set_store_memory(&memory);
                match done {
                    Ok(done) => {
                        if checkpoint {
                            last_checkpoint = tokio::time::Instant::now();
                        }
                        tracing::debug!(
                            sealed = done.sealed,
                            snapshots = done.snapshots,
                            log_records_removed = done.log_records_removed,
                            heads = memory.heads,
                            heads_bytes = memory.heads_bytes,
                            took_ms = began.elapsed().as_millis(),
                            "store compacted"
                        );
                    }
                    Err(e) => tracing::warn!("store compaction failed: {e:#}"),
                }
            }
            Err(e) => tracing::warn!("compaction task failed: {e}"),
        }
        if stopping {
            return;
        }
    }
}

/// A periodic checkpoint rests this many times the wall time of each slice of its work (one
/// shard's head snapshots, one batch of log removals) before the next: at most a quarter of a
/// core while it runs, and less on a busy one, whose slices take longer.
const CHECKPOINT_REST_RATIO: u32 = 3;

/// Longest rest after one slice, however long the slice took.
const CHECKPOINT_LONGEST_REST: Duration = Duration::from_millis(500);

/// Whether a compaction pass also checkpoints: its interval has passed since the last one, or
/// the log holds `checkpoint_log_bytes` already (under heavy ingest, well before the interval),
/// which bounds the log on disk and the replay at start-up.
fn checkpoint_due(config: &StorageConfig, since_last: Duration, log_bytes: u64) -> bool {
    since_last >= config.checkpoint_interval || log_bytes >= config.checkpoint_log_bytes
}

#[cfg(test)]
mod tests;
