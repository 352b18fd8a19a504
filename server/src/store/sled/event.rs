//! The events tables of the sled store: `{org}/E{table}/{key}`, one section per
//! [`EventTable`]. The keys and values inside a table are `crate::events::keys`' own; this
//! module only places them under their org and table, so tenancy holds as for every record.

use std::ops::Bound;

use super::layout::*;
use super::{Encoded, Op, Result, SledStore, StoreError, Write};
use crate::domain::{OrgId, is_valid_id};
use crate::store::EventTable;

pub(super) fn table_kind(table: EventTable) -> &'static [u8] {
    match table {
        EventTable::Events => EVENTS,
        EventTable::Marks => EVENT_MARKS,
        EventTable::Fingerprints => EVENT_FINGERPRINTS,
        EventTable::Changes => EVENT_CHANGES,
        EventTable::KindHours => EVENT_KIND_HOURS,
        EventTable::AgentHours => EVENT_AGENT_HOURS,
        EventTable::HourTotals => EVENT_HOUR_TOTALS,
        EventTable::KindSeries => EVENT_KIND_SERIES,
        EventTable::DayKinds => EVENT_DAY_KINDS,
        EventTable::DayAgents => EVENT_DAY_AGENTS,
    }
}

fn entry_key(org: &OrgId, table: EventTable, key: &[u8]) -> Vec<u8> {
    let mut out = section(org.as_str(), table_kind(table));
    out.extend_from_slice(key);
    out
}

/// Encodes a `PutEventEntry` or `DeleteEventEntry`.
pub(super) fn encode(write: &Write) -> Result<Encoded> {
    let check = |org: &OrgId| {
        if is_valid_id(org.as_str()) {
            Ok(())
        } else {
            Err(StoreError::Unencodable {
                what: "event entry",
                detail: format!("invalid org id {org}"),
            })
        }
    };
    let op = match write {
        Write::PutEventEntry {
            org,
            table,
            key,
            value,
        } => {
            check(org)?;
            Op::Put(entry_key(org, *table, key), value.clone())
        }
        Write::DeleteEventEntry { org, table, key } => {
            check(org)?;
            Op::Remove(entry_key(org, *table, key))
        }
        other => {
            return Err(StoreError::Unencodable {
                what: "event entry",
                detail: format!("not an event write: {other:?}"),
            });
        }
    };
    Ok(Encoded { ops: vec![op] })
}

impl SledStore {
    pub(super) fn event_entry(
        &self,
        org: &OrgId,
        table: EventTable,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>> {
        Ok(self
            .data
            .get(entry_key(org, table, key))
            .map_err(backend)?
            .map(|value| value.to_vec()))
    }

    pub(super) fn event_entries<'a>(
        &'a self,
        org: &OrgId,
        table: EventTable,
        from: &[u8],
        to: Option<&[u8]>,
        reverse: bool,
    ) -> crate::store::EventEntries<'a> {
        let section = section(org.as_str(), table_kind(table));
        let start = entry_key(org, table, from);
        let end = match to {
            Some(to) => Bound::Excluded(entry_key(org, table, to)),
            None => prefix_end(&section),
        };
        let skip = section.len();
        let range = self.data.range((Bound::Included(start), end));
        let map = move |entry: sled::Result<(sled::IVec, sled::IVec)>| {
            let (key, value) = entry.map_err(backend)?;
            Ok((key[skip..].to_vec(), value.to_vec()))
        };
        if reverse {
            Box::new(range.rev().map(map))
        } else {
            Box::new(range.map(map))
        }
    }
}
