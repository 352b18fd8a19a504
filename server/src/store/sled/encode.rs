//! How each [`Write`] becomes the operations of a commit: the key (the table in
//! `store/sled.rs`) and the serialized value of every record, commands' and events' records
//! excepted (`command.rs`, `event.rs`, to which those writes are handed).
//!
//! **Invariant:** encoding stores nothing. A write that cannot be stored (an id that cannot be
//! part of a key, a value that does not serialize, a sample its log record cannot hold) fails
//! here, alone, before it joins a commit (the writer's fate isolation, `writer.rs`). The one
//! thing taken from sled is a transition's counter, so transitions keep the order in which they
//! were encoded.

use super::layout::*;
use super::{Encoded, Op, Result, SledStore, StoreError, Write, command, event};
use crate::domain::is_valid_id;
use crate::store::chunk;
use crate::store::wal::AgentKey;

impl SledStore {
    /// Builds the key and serializes the value of one write. A transition takes its key's
    /// counter here, so transitions keep the order in which they were encoded.
    pub(super) fn encode_write(&self, write: &Write) -> Result<Encoded> {
        let put = |key: Vec<u8>, value: Vec<u8>| Encoded {
            ops: vec![Op::Put(key, value)],
        };
        let remove = |key: Vec<u8>| Encoded {
            ops: vec![Op::Remove(key)],
        };
        Ok(match write {
            Write::PutAgent(agent) => put(
                record_key(agent.org.as_str(), AGENT, agent.id.as_str()),
                encode(agent, "agent record")?,
            ),
            Write::PutLive { org, agent, live } => put(
                record_key(org.as_str(), LIVE, agent.as_str()),
                encode(live, "live record")?,
            ),
            Write::PutProgress {
                org,
                agent,
                last_seq,
                last_seen,
            } => put(
                record_key(org.as_str(), PROGRESS, agent.as_str()),
                encode_progress(*last_seq, *last_seen),
            ),
            Write::PutSample { org, agent, sample } => {
                // Everything the log record of this sample can fail on, checked here, alone.
                let stored = chunk::stored(sample).map_err(|e| StoreError::Unencodable {
                    what: "sample",
                    detail: e.to_string(),
                })?;
                if !is_valid_id(org.as_str()) || !is_valid_id(agent.as_str()) {
                    return Err(StoreError::Unencodable {
                        what: "sample",
                        detail: format!("invalid agent key {org}/{agent}"),
                    });
                }
                let key = AgentKey {
                    org: org.clone(),
                    agent: agent.clone(),
                };
                Encoded {
                    ops: vec![Op::Sample(Box::new((key, stored)))],
                }
            }
            Write::PutTransition(transition) => {
                let value = encode(transition, "transition")?;
                let counter = self.db.generate_id().map_err(backend)?;
                let series = series_prefix(&transition.org, TRANSITION, &transition.agent);
                put(series_key(&series, millis(transition.time), counter), value)
            }
            Write::PutToken(token) => put(
                record_key(token.org.as_str(), TOKEN, token.id.as_str()),
                encode(token, "token")?,
            ),
            Write::PutTokenUse { org, id, at } => put(
                record_key(org.as_str(), TOKEN_USE, id.as_str()),
                encode_token_use(*at),
            ),
            Write::DeleteToken { org, id } => Encoded {
                ops: vec![
                    Op::Remove(record_key(org.as_str(), TOKEN, id.as_str())),
                    Op::Remove(record_key(org.as_str(), TOKEN_USE, id.as_str())),
                ],
            },
            Write::PutEnrollmentToken(token) => put(
                record_key(token.org.as_str(), ENROLLMENT_TOKEN, token.id.as_str()),
                encode(token, "enrollment token")?,
            ),
            Write::PutOrg(org) => put(
                record_key(org.id.as_str(), ORG, ORG_RECORD_ID),
                encode(org, "org")?,
            ),
            Write::DeleteAgent(tombstone) => {
                let org = tombstone.org.as_str();
                let agent = tombstone.agent.as_str();
                let value = encode(tombstone, "tombstone")?;
                Encoded {
                    ops: vec![
                        Op::Remove(record_key(org, AGENT, agent)),
                        Op::Remove(record_key(org, LIVE, agent)),
                        Op::Remove(record_key(org, PROGRESS, agent)),
                        Op::Put(record_key(org, TOMBSTONE, agent), value),
                    ],
                }
            }
            Write::PutAudit(record) => put(
                audit_key(record.entry.org.as_str(), record.seq),
                encode(record, "audit record")?,
            ),
            Write::PutCommand(_)
            | Write::PutInvocation { .. }
            | Write::PutCommandEvent { .. }
            | Write::DeleteCommandEvent { .. }
            | Write::PutIdempotencyKey { .. }
            | Write::DeleteCommand { .. } => return command::encode(write),
            Write::PutAlertRule(rule) => put(
                record_key(
                    rule.org.as_str(),
                    ALERT_RULE,
                    checked_id(&rule.name, "alert rule")?,
                ),
                encode(rule, "alert rule")?,
            ),
            Write::DeleteAlertRule { org, name } => remove(record_key(
                org.as_str(),
                ALERT_RULE,
                checked_id(name, "alert rule")?,
            )),
            Write::PutAlert(alert) => put(
                record_key(alert.org.as_str(), ALERT, checked_id(&alert.id, "alert")?),
                encode(alert, "alert")?,
            ),
            Write::DeleteAlert { org, id } => {
                remove(record_key(org.as_str(), ALERT, checked_id(id, "alert")?))
            }
            Write::PutEventEntry { .. } | Write::DeleteEventEntry { .. } => {
                return event::encode(write);
            }
        })
    }
}

/// `id`, if it may name a record in a key (`[a-z0-9-]`, see the module's docs).
fn checked_id<'a>(id: &'a str, what: &'static str) -> Result<&'a str> {
    if is_valid_id(id) {
        Ok(id)
    } else {
        Err(StoreError::Unencodable {
            what,
            detail: format!("invalid id {id:?}"),
        })
    }
}
