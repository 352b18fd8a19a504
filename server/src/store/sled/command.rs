//! The command records of the sled store: their keys (the table in `store/sled.rs`), how their
//! writes are encoded, and the scans behind the command methods of [`Store`](super::Store).
//!
//! Every key starts with the org. Ids are checked at the edge (`[a-z0-9-]`), so `/` ends a
//! command id in a key; invocation numbers and cursors are fixed-width big-endian, so byte order
//! is number order. An idempotency key is stored as its SHA-256 (any text, fixed length), with
//! the command id after it, so that a key sent again after its window names a second entry and
//! each entry leaves with its own command.

use std::ops::Bound;
use std::time::SystemTime;

use sha2::{Digest as _, Sha256};

use super::layout::*;
use super::{Encoded, Op, Result, SledStore, StoreError, Write};
use crate::command::record::{
    CommandEvent, CommandPage, CommandQuery, CommandRecord, InvocationRecord, id_floor, id_millis,
};
use crate::domain::{CommandId, OrgId};

// === keys ===

fn command_key(org: &OrgId, id: &CommandId) -> Vec<u8> {
    record_key(org.as_str(), COMMAND, id.as_str())
}

fn active_key(org: &OrgId, id: &CommandId) -> Vec<u8> {
    record_key(org.as_str(), ACTIVE_COMMAND, id.as_str())
}

/// `{org}/{kind}/{command}/`: where one command's invocations or events are.
fn under_command(org: &OrgId, kind: &[u8], id: &CommandId) -> Vec<u8> {
    let mut key = record_key(org.as_str(), kind, id.as_str());
    key.push(b'/');
    key
}

fn invocation_key(org: &OrgId, id: &CommandId, n: u32) -> Vec<u8> {
    let mut key = under_command(org, INVOCATION, id);
    key.extend_from_slice(&n.to_be_bytes());
    key
}

fn event_key(org: &OrgId, id: &CommandId, cursor: u64) -> Vec<u8> {
    let mut key = under_command(org, COMMAND_EVENT, id);
    key.extend_from_slice(&cursor.to_be_bytes());
    key
}

/// `{org}/k/{sha256(key) hex}/`: every command sent with one idempotency key.
fn idempotency_prefix(org: &OrgId, key: &str) -> Vec<u8> {
    let mut out = section(org.as_str(), IDEMPOTENCY);
    out.extend_from_slice(hex::encode(Sha256::digest(key.as_bytes())).as_bytes());
    out.push(b'/');
    out
}

// === writes ===

/// Encodes a command write (the caller routes only those here).
pub(super) fn encode(write: &Write) -> Result<Encoded> {
    let ops = match write {
        Write::PutCommand(record) => {
            let value = encode_compact(record, "command")?;
            let active = active_key(&record.org, &record.id);
            vec![
                Op::Put(command_key(&record.org, &record.id), value),
                if record.is_finished() {
                    Op::Remove(active)
                } else {
                    Op::Put(active, Vec::new())
                },
            ]
        }
        Write::PutInvocation {
            org,
            command,
            record,
        } => vec![Op::Put(
            invocation_key(org, command, record.n),
            encode_compact(record, "invocation")?,
        )],
        Write::PutCommandEvent {
            org,
            command,
            cursor,
            event,
        } => vec![Op::Put(
            event_key(org, command, *cursor),
            encode_compact(event, "command event")?,
        )],
        Write::DeleteCommandEvent {
            org,
            command,
            cursor,
        } => vec![Op::Remove(event_key(org, command, *cursor))],
        Write::PutIdempotencyKey {
            org,
            key,
            command,
            created_at,
        } => {
            let mut entry = idempotency_prefix(org, key);
            entry.extend_from_slice(command.as_str().as_bytes());
            vec![Op::Put(
                entry,
                millis(created_at.get()).to_be_bytes().to_vec(),
            )]
        }
        Write::DeleteCommand {
            org,
            command,
            n_invocations,
            last_cursor,
            idempotency_key,
        } => {
            let mut ops = vec![
                Op::Remove(command_key(org, command)),
                Op::Remove(active_key(org, command)),
            ];
            if !idempotency_key.is_empty() {
                let mut entry = idempotency_prefix(org, idempotency_key);
                entry.extend_from_slice(command.as_str().as_bytes());
                ops.push(Op::Remove(entry));
            }
            ops.extend((0..*n_invocations).map(|n| Op::Remove(invocation_key(org, command, n))));
            ops.extend((1..=*last_cursor).map(|c| Op::Remove(event_key(org, command, c))));
            ops
        }
        _ => {
            return Err(StoreError::Unencodable {
                what: "write",
                detail: "not a command write".to_owned(),
            });
        }
    };
    Ok(Encoded { ops })
}

// === reads ===

impl SledStore {
    pub(super) fn active_commands(&self) -> Result<Vec<CommandRecord>> {
        let mut out = Vec::new();
        for org in self.orgs()? {
            let org = OrgId::new(org);
            let prefix = section(org.as_str(), ACTIVE_COMMAND);
            for entry in self.data.scan_prefix(&prefix) {
                let (key, _) = entry.map_err(backend)?;
                let id = CommandId::new(key_id(&prefix, &key)?);
                match self.command(&org, &id)? {
                    Some(record) => out.push(record),
                    None => tracing::warn!(%org, command = %id, "active marker without a command"),
                }
            }
        }
        Ok(out)
    }

    pub(super) fn command(&self, org: &OrgId, id: &CommandId) -> Result<Option<CommandRecord>> {
        let key = command_key(org, id);
        let Some(value) = self.data.get(&key).map_err(backend)? else {
            return Ok(None);
        };
        let record: CommandRecord = decode_compact(&key, &value)?;
        check_owner(
            org.as_str(),
            id.as_str(),
            &record.org,
            record.id.as_str(),
            COMMAND,
        )?;
        Ok(Some(record))
    }

    pub(super) fn commands(
        &self,
        org: &OrgId,
        query: &CommandQuery,
        max_scan: usize,
    ) -> Result<CommandPage> {
        let prefix = section(org.as_str(), COMMAND);
        let bound = |id: &str| {
            let mut key = prefix.clone();
            key.extend_from_slice(id.as_bytes());
            key
        };
        let low = match query.since {
            Some(since) => Bound::Included(bound(&id_floor(since))),
            None => Bound::Included(prefix.clone()),
        };
        let mut high = match query.until {
            Some(until) => Bound::Excluded(bound(&id_floor(until))),
            None => prefix_end(&prefix),
        };
        if let Some(before) = &query.before {
            let before = bound(before.as_str());
            high = match high {
                Bound::Excluded(end) if end <= before => Bound::Excluded(end),
                _ => Bound::Excluded(before),
            };
        }
        let mut page = CommandPage::default();
        let mut last = None;
        for (scanned, entry) in self.data.range((low, high)).rev().enumerate() {
            if page.commands.len() == query.page_size || scanned == max_scan {
                page.next_before = last;
                break;
            }
            let (key, value) = entry.map_err(backend)?;
            let record: CommandRecord = decode_compact(&key, &value)?;
            last = Some(record.id.clone());
            let keep = (query.states.is_empty() || query.states.contains(&record.state))
                && query
                    .sender
                    .as_ref()
                    .is_none_or(|s| record.sender_token.as_str() == s);
            if keep {
                page.commands.push(record);
            }
        }
        Ok(page)
    }

    pub(super) fn invocations(
        &self,
        org: &OrgId,
        command: &CommandId,
        after: Option<u32>,
        limit: usize,
    ) -> Result<Vec<InvocationRecord>> {
        let prefix = under_command(org, INVOCATION, command);
        let low = match after {
            Some(n) => match n.checked_add(1) {
                Some(next) => Bound::Included(invocation_key(org, command, next)),
                None => return Ok(Vec::new()),
            },
            None => Bound::Included(prefix.clone()),
        };
        self.data
            .range((low, prefix_end(&prefix)))
            .take(limit)
            .map(|entry| {
                let (key, value) = entry.map_err(backend)?;
                decode_compact(&key, &value)
            })
            .collect()
    }

    pub(super) fn command_events(
        &self,
        org: &OrgId,
        command: &CommandId,
        after: u64,
        until: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<(u64, CommandEvent)>> {
        let (Some(first), true) = (after.checked_add(1), after < until) else {
            return Ok(Vec::new());
        };
        let low = Bound::Included(event_key(org, command, first));
        let high = Bound::Included(event_key(org, command, until));
        let prefix_len = under_command(org, COMMAND_EVENT, command).len();
        let mut out = Vec::new();
        let mut bytes = 0;
        for entry in self.data.range((low, high)) {
            if out.len() == limit {
                break;
            }
            let (key, value) = entry.map_err(backend)?;
            if !out.is_empty() && bytes + value.len() > max_bytes {
                break;
            }
            bytes += value.len();
            let cursor = key
                .get(prefix_len..)
                .and_then(|raw| <[u8; 8]>::try_from(raw).ok())
                .map(u64::from_be_bytes)
                .ok_or_else(|| corrupt(&key, "malformed event key"))?;
            out.push((cursor, decode_compact(&key, &value)?));
        }
        Ok(out)
    }

    pub(super) fn idempotent_command(
        &self,
        org: &OrgId,
        key: &str,
        since: SystemTime,
    ) -> Result<Option<CommandId>> {
        let prefix = idempotency_prefix(org, key);
        let since = millis(since);
        let mut newest: Option<(u64, CommandId)> = None;
        for entry in self.data.scan_prefix(&prefix) {
            let (key, value) = entry.map_err(backend)?;
            let created = <[u8; 8]>::try_from(value.as_ref())
                .map(u64::from_be_bytes)
                .map_err(|_| corrupt(&key, "idempotency entry is not 8 bytes"))?;
            let id = CommandId::new(key_id(&prefix, &key)?);
            if created >= since && newest.as_ref().is_none_or(|(at, _)| created >= *at) {
                newest = Some((created, id));
            }
        }
        Ok(newest.map(|(_, id)| id))
    }

    /// Scans each org's commands from the oldest, while they were created before `cutoff`
    /// (ids carry their creation time): a command finishes after it is created.
    pub(super) fn expired_commands(
        &self,
        cutoff: SystemTime,
        limit: usize,
    ) -> Result<Vec<CommandRecord>> {
        let cutoff_ms = millis(cutoff);
        let mut out = Vec::new();
        for org in self.orgs()? {
            let prefix = section(&org, COMMAND);
            for entry in self.data.scan_prefix(&prefix) {
                if out.len() == limit {
                    return Ok(out);
                }
                let (key, value) = entry.map_err(backend)?;
                let id = key_id(&prefix, &key)?;
                if id_millis(id).is_none_or(|created| created >= cutoff_ms) {
                    break;
                }
                let record: CommandRecord = decode_compact(&key, &value)?;
                if record.finished_at.is_some_and(|at| at.get() < cutoff) {
                    out.push(record);
                }
            }
        }
        Ok(out)
    }
}
