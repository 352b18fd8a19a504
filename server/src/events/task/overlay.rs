//! The overlay of one commit of the events task: reads go through to the store, and what the
//! commit's jobs wrote so far is read back from here, so each job sees every change before it.
//!
//! Invariant: a key written twice keeps one write, the last, in the place of the first; nothing
//! reaches the store until the task commits `writes`.

use std::collections::HashMap;

use super::super::hub::Published;
use super::super::keys::{self, Severity};
use super::super::rollup::Counts;
use crate::domain::OrgId;
use crate::error::ServerError;
use crate::store::{EventTable, Store, Write};

/// Where an entry lives: its org, table and key.
type Slot = (OrgId, EventTable, Vec<u8>);

/// Reads through to the store and keeps what the jobs of one commit wrote. A key written twice
/// keeps one write, the last (a count several events of a commit add to is written once).
pub(super) struct Overlay<'a> {
    store: &'a dyn Store,
    /// Each key written: its value now (`None`: deleted) and its write's place in `writes`.
    values: HashMap<Slot, (Option<Vec<u8>>, usize)>,
    pub(super) writes: Vec<Write>,
    /// The last cursor given in this commit, per org.
    pub(super) cursors: HashMap<OrgId, u64>,
    /// The changes logged, in cursor order, for the hub once durable (`None`: not kept, for a
    /// bulk load that no watcher follows).
    pub(super) published: Option<Vec<(OrgId, Published)>>,
}

impl<'a> Overlay<'a> {
    pub(super) fn new(store: &'a dyn Store) -> Self {
        Self {
            store,
            values: HashMap::new(),
            writes: Vec::new(),
            cursors: HashMap::new(),
            published: Some(Vec::new()),
        }
    }

    pub(super) fn get(
        &self,
        org: &OrgId,
        table: EventTable,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>, ServerError> {
        if let Some((value, _)) = self.values.get(&(org.clone(), table, key.to_vec())) {
            return Ok(value.clone());
        }
        Ok(self.store.event_entry(org, table, key)?)
    }

    /// Records `write` (of `key`, now `value`), replacing an earlier write of the same key.
    fn record(&mut self, slot: Slot, value: Option<Vec<u8>>, write: Write) {
        match self.values.get_mut(&slot) {
            Some((now, at)) => {
                *now = value;
                self.writes[*at] = write;
            }
            None => {
                self.values.insert(slot, (value, self.writes.len()));
                self.writes.push(write);
            }
        }
    }

    pub(super) fn put(&mut self, org: &OrgId, table: EventTable, key: Vec<u8>, value: Vec<u8>) {
        let write = Write::PutEventEntry {
            org: org.clone(),
            table,
            key: key.clone(),
            value: value.clone(),
        };
        self.record((org.clone(), table, key), Some(value), write);
    }

    pub(super) fn delete(&mut self, org: &OrgId, table: EventTable, key: Vec<u8>) {
        let write = Write::DeleteEventEntry {
            org: org.clone(),
            table,
            key: key.clone(),
        };
        self.record((org.clone(), table, key), None, write);
    }

    pub(super) fn add(
        &mut self,
        org: &OrgId,
        table: EventTable,
        key: Vec<u8>,
    ) -> Result<(), ServerError> {
        let now = self
            .get(org, table, &key)?
            .and_then(|v| keys::decode_u64(&v))
            .unwrap_or(0);
        self.put(org, table, key, keys::encode_u64(now + 1));
        Ok(())
    }

    /// Adds one occurrence of `severity` to a [`Counts`] row.
    pub(super) fn add_counts(
        &mut self,
        org: &OrgId,
        table: EventTable,
        key: Vec<u8>,
        severity: Severity,
    ) -> Result<(), ServerError> {
        let mut counts = match self.get(org, table, &key)? {
            Some(raw) => Counts::decode(&raw).unwrap_or_else(|| {
                tracing::warn!(org = %org, ?table, "an event count does not decode; counted afresh");
                Counts::default()
            }),
            None => Counts::default(),
        };
        counts.add(severity, 1);
        self.put(org, table, key, counts.encode());
        Ok(())
    }
}
