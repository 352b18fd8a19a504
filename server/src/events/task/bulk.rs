//! The bulk loader: reports planned by the events task's own `Planner` and committed straight
//! into a store no server runs on.
//!
//! Invariant: what it stores is exactly what the task would store for the same reports.

use std::sync::Arc;

use super::{Overlay, Planner, Report};
use crate::error::ServerError;
use crate::events::{EventsConfig, Shared};
use crate::store::Store;

/// Stores reports exactly as the task does (dedupe marks, fingerprint repeats, hourly counts,
/// the change log), one commit per call, straight into a store that no server runs on: a bulk
/// load of history, such as the fleet benchmark's 30-day backfill. Nothing else may write the
/// events of the same store meanwhile (the task's own invariant: one writer of events).
pub struct BulkLoader {
    store: Arc<dyn Store>,
    shared: Shared,
    config: EventsConfig,
}

/// What one [`BulkLoader::load`] did.
#[derive(Debug)]
pub struct Loaded {
    /// Each report's settled mark, or why it was refused (nothing of it stored).
    pub settled: Vec<Result<u64, ServerError>>,
    /// Entries the commit wrote.
    pub writes: usize,
    /// Time spent planning (reading the store) and committing (applying and flushing).
    pub planned_in: std::time::Duration,
    pub committed_in: std::time::Duration,
}

impl BulkLoader {
    pub fn new(store: Arc<dyn Store>, config: EventsConfig) -> Self {
        Self {
            store,
            shared: Shared::default(),
            config,
        }
    }

    /// Plans `reports` in order as one commit of the task would (received at `now_ms`), then
    /// commits the writes directly with the store and flushes them.
    ///
    /// # Errors
    ///
    /// The store's, planning or committing; a failed commit stores nothing.
    pub fn load(&self, reports: &[Report], now_ms: u64) -> Result<Loaded, ServerError> {
        let started = std::time::Instant::now();
        let planner = Planner {
            store: &*self.store,
            shared: &self.shared,
            config: &self.config,
        };
        let mut overlay = Overlay::new(&*self.store);
        overlay.published = None;
        let settled = reports
            .iter()
            .map(|report| planner.report(&mut overlay, report, now_ms))
            .collect();
        let Overlay {
            writes, cursors, ..
        } = overlay;
        let planned_in = started.elapsed();
        self.store.commit_writes(&writes)?;
        for (org, cursor) in cursors {
            self.shared.publish(&org, cursor);
        }
        Ok(Loaded {
            settled,
            writes: writes.len(),
            planned_in,
            committed_in: started.elapsed() - planned_in,
        })
    }
}
