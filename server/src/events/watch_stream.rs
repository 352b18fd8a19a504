//! `WatchEvents`: an org's change log after a cursor, read from the store, then live changes
//! from the hub (`hub.rs`).
//!
//! A watch joins the org's hub first (`hub.rs`), which tells it the cursor it starts from (every
//! change up to it is stored), then reads the stored change log itself from its own cursor up to
//! that one, a page at a time ([`PAGE`]), sends `CAUGHT_UP`, and from then on takes the changes
//! the hub queues for it, skipping any cursor it already has: no gap and no duplicate at the
//! switch. The hub queues only changes the watch's filter matches, so a watch costs the server
//! in proportion to what it receives. A watch whose queue fills (a slow reader) is detached by
//! the hub; once it reads again it takes what its queue held, joins again and reads the store
//! from its last cursor up to where the hub then starts: it misses nothing and slows no one.
//! One that resumes from its last cursor gets exactly the changes after it still retained; one
//! whose next change was purged before it read it (it stopped reading for longer than the
//! retention) ends with [`WatchError::Expired`], the status of an expired cursor, never a gap.
//!
//! **What a change carries.** A change delivered live carries the event as that change
//! committed it. A change replayed from the store carries the event as stored when read (a later
//! state, whose own change follows it; one purged since is skipped): the log keeps which event
//! changed, not each version of it. Either way the last change of an event carries its state
//! now. A label selector is matched against the registry's labels of each event's agent: as the
//! change is published (live) or read (store, [`LiveSelection`]), so agents enrolled or
//! relabelled after the watch opened are followed.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use tether_proto::selector::Selector;
use tokio_util::sync::CancellationToken;

use super::hub::{Interest, Membership};
use super::keys::{self, Change, ChangeEntry, EventRecord};
use super::{Events, Filter};
use crate::domain::{AgentId, OrgId, TokenId};
use crate::error::ServerError;
use crate::registry::Registry;
use crate::store::EventTable;

/// Most agents a watch's [`LiveSelection`] remembers (about 100 KiB).
const SELECTION_CACHE: usize = 2048;

/// Most changes one read of the store returns.
pub const PAGE: usize = 64;

/// The open event watches per org and per token, against their caps (the server's
/// `max_watches_per_token` and `max_watches_per_org`, counted apart from agent watches).
pub struct WatchSlots {
    max_per_token: usize,
    max_per_org: usize,
    held: Mutex<HashMap<OrgId, Held>>,
}

/// One org's open watches: in all, and per token.
type Held = (usize, HashMap<TokenId, usize>);

/// One open watch's place; dropping it frees the place.
pub struct WatchSlot {
    slots: Arc<WatchSlots>,
    org: OrgId,
    token: TokenId,
}

impl WatchSlots {
    pub fn new(max_per_token: usize, max_per_org: usize) -> Arc<Self> {
        Arc::new(Self {
            max_per_token,
            max_per_org,
            held: Mutex::new(HashMap::new()),
        })
    }

    /// Takes a place for a watch of `token` in `org`.
    ///
    /// # Errors
    ///
    /// `ResourceExhausted` when the token or the org holds the most watches allowed.
    pub fn acquire(
        self: &Arc<Self>,
        org: &OrgId,
        token: &TokenId,
    ) -> Result<WatchSlot, ServerError> {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let (in_org, by_token) = held.entry(org.clone()).or_default();
        let of_token = by_token.get(token).copied().unwrap_or(0);
        if of_token >= self.max_per_token {
            return Err(ServerError::ResourceExhausted(format!(
                "this token already has {} event watches open, the most allowed; close one first",
                self.max_per_token
            )));
        }
        if *in_org >= self.max_per_org {
            return Err(ServerError::ResourceExhausted(format!(
                "this org already has {} event watches open, the most allowed; close one first",
                self.max_per_org
            )));
        }
        *in_org += 1;
        *by_token.entry(token.clone()).or_default() += 1;
        Ok(WatchSlot {
            slots: self.clone(),
            org: org.clone(),
            token: token.clone(),
        })
    }
}

impl Drop for WatchSlot {
    fn drop(&mut self) {
        let mut held = self
            .slots
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some((in_org, by_token)) = held.get_mut(&self.org) {
            *in_org = in_org.saturating_sub(1);
            if let Some(n) = by_token.get_mut(&self.token) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    by_token.remove(&self.token);
                }
            }
            if *in_org == 0 {
                held.remove(&self.org);
            }
        }
    }
}

/// One message of a watch.
#[derive(Clone, Debug, PartialEq)]
pub enum WatchItem {
    Change {
        cursor: u64,
        change: Change,
        event: Arc<EventRecord>,
    },
    /// Every stored change up to `cursor` was sent.
    CaughtUp { cursor: u64 },
}

/// A watch's label selector, matched against the registry's labels of each event's agent when
/// the event is delivered. Answers are cached per agent until the registry's selection epoch
/// moves (labels changed, an agent registered or removed), so a steady fleet costs one map
/// lookup per event; at most [`SELECTION_CACHE`] agents are remembered per watch.
pub struct LiveSelection {
    registry: Arc<Registry>,
    selector: Selector,
    epoch: u64,
    cache: HashMap<AgentId, bool>,
}

impl LiveSelection {
    pub fn new(registry: Arc<Registry>, selector: Selector) -> Self {
        let epoch = registry.selection_epoch();
        Self {
            registry,
            selector,
            epoch,
            cache: HashMap::new(),
        }
    }

    /// The selector this selection matches.
    pub fn selector(&self) -> &Selector {
        &self.selector
    }

    fn selects(&mut self, org: &OrgId, agent: &AgentId) -> bool {
        let epoch = self.registry.selection_epoch();
        if epoch != self.epoch {
            self.cache.clear();
            self.epoch = epoch;
        }
        if let Some(&selected) = self.cache.get(agent) {
            return selected;
        }
        let (selected, at) = self.registry.selects(org, agent, &self.selector);
        if at == self.epoch {
            if self.cache.len() >= SELECTION_CACHE {
                // Bounded per watch, whatever the org's size: start over rather than grow.
                self.cache.clear();
            }
            self.cache.insert(agent.clone(), selected);
        }
        selected
    }
}

/// Why a watch ended with an error.
#[derive(Debug)]
pub enum WatchError {
    /// The store failed.
    Store(ServerError),
    /// Retention removed changes after the watch's cursor before it read them (it stopped
    /// reading for longer than the retention): the client must list and watch again.
    Expired { oldest: u64 },
}

impl From<ServerError> for WatchError {
    fn from(e: ServerError) -> Self {
        Self::Store(e)
    }
}

impl From<crate::store::StoreError> for WatchError {
    fn from(e: crate::store::StoreError) -> Self {
        Self::Store(e.into())
    }
}

/// Why a cursor cannot be resumed.
#[derive(Debug)]
pub enum CursorError {
    /// Older than the oldest retained change: the client must list and watch again.
    Expired { oldest: u64 },
    /// Ahead of the newest change, or not a number: never given by this server.
    Unknown,
}

/// One `WatchEvents` stream: the store's change log after its cursor, then the hub's live
/// changes, switching back to the store whenever the hub detaches it.
pub struct EventWatch {
    events: Arc<Events>,
    org: OrgId,
    /// What the watch matches, shared with the hub while joined.
    interest: Arc<Interest>,
    /// The selector as the store path matches it (the registry's labels when read).
    selection: Option<LiveSelection>,
    /// The cursor of the last change considered (sent or filtered out).
    after: u64,
    /// The hub's queue while joined; `None` while reading the store.
    member: Option<Membership>,
    queue: VecDeque<WatchItem>,
    caught_up: bool,
    shutdown: CancellationToken,
    revoked: CancellationToken,
    _slot: WatchSlot,
}

impl EventWatch {
    /// Starts after `cursor` (`None`: after the newest change), delivering the changes of
    /// events that `filter` and `selection` (if any) both match.
    ///
    /// # Errors
    ///
    /// [`CursorError`] for a cursor that cannot be resumed; the store's errors.
    #[allow(clippy::too_many_arguments)] // One per independent part of a watch; built in one place.
    pub fn start(
        events: Arc<Events>,
        org: OrgId,
        filter: Filter,
        selection: Option<LiveSelection>,
        cursor: Option<u64>,
        slot: WatchSlot,
        shutdown: CancellationToken,
        revoked: CancellationToken,
    ) -> Result<Result<Self, CursorError>, ServerError> {
        let newest = events.shared.last_cursor(&*events.store, &org)?;
        let after = match cursor {
            None => newest,
            Some(c) if c > newest => return Ok(Err(CursorError::Unknown)),
            Some(c) => {
                let oldest = match events
                    .store
                    .event_entries(&org, EventTable::Changes, &[], None, false)
                    .next()
                {
                    Some(entry) => keys::cursor_from_key(&entry?.0).unwrap_or(0),
                    None => newest + 1,
                };
                // Resuming after `c` needs change `c + 1` (unless nothing came after it).
                if c < newest && c + 1 < oldest {
                    return Ok(Err(CursorError::Expired { oldest }));
                }
                c
            }
        };
        let interest = Arc::new(Interest {
            filter,
            selector: selection.as_ref().map(|s| s.selector().clone()),
        });
        Ok(Ok(Self {
            events,
            org,
            interest,
            selection,
            after,
            member: None,
            queue: VecDeque::new(),
            caught_up: false,
            shutdown,
            revoked,
            _slot: slot,
        }))
    }

    /// The next message; `None` once the watch is over (shutdown, revoked token). Cancel safe.
    pub async fn next(&mut self) -> Option<Result<WatchItem, WatchError>> {
        loop {
            if let Some(item) = self.queue.pop_front() {
                return Some(Ok(item));
            }
            // Joined first, then the store read up to where the hub starts: no change falls
            // between the two.
            let from = match &self.member {
                Some(member) => member.from,
                None => match self.join() {
                    Ok(from) => from,
                    Err(e) => return Some(Err(e.into())),
                },
            };
            if self.after < from {
                match self.read(from) {
                    Ok(true) => continue,
                    // Nothing left up to `from`: every change up to it is stored, and any gone
                    // was purged.
                    Ok(false) => self.after = from,
                    Err(e) => return Some(Err(e)),
                }
            }
            if !self.caught_up {
                self.caught_up = true;
                return Some(Ok(WatchItem::CaughtUp { cursor: self.after }));
            }
            let member = self.member.as_mut().expect("joined above");
            tokio::select! {
                published = member.recv() => match published {
                    // A cursor at or before `after` was read from the store already.
                    Some(p) if p.cursor <= self.after => {}
                    Some(p) => {
                        self.after = p.cursor;
                        self.queue.push_back(WatchItem::Change {
                            cursor: p.cursor,
                            change: p.change,
                            event: p.event,
                        });
                    }
                    // Detached for a full queue: the store has every change after `after`; the
                    // next turn joins again and reads it up to where the hub then starts.
                    None => self.member = None,
                },
                () = self.shutdown.cancelled() => return None,
                () = self.revoked.cancelled() => return None,
            }
        }
    }

    /// Joins the hub; returns the cursor it starts after.
    fn join(&mut self) -> Result<u64, ServerError> {
        let events = &self.events;
        let member = events.hub.join(&self.org, self.interest.clone(), || {
            events.shared.last_cursor(&*events.store, &self.org)
        })?;
        let from = member.from;
        self.member = Some(member);
        Ok(from)
    }

    /// Reads the next page of changes after `after`, up to `to` (inclusive); whether there was
    /// any.
    ///
    /// # Errors
    ///
    /// [`WatchError::Expired`] when the change after `after` was purged (cursors follow each
    /// other, and retention removes the oldest first); the store's.
    fn read(&mut self, to: u64) -> Result<bool, WatchError> {
        let store = &*self.events.store;
        let from = keys::cursor_key(self.after.saturating_add(1));
        let to = keys::cursor_key(to.saturating_add(1));
        let mut any = false;
        for entry in store
            .event_entries(&self.org, EventTable::Changes, &from, Some(&to), false)
            .take(PAGE)
        {
            let (key, value) = entry?;
            any = true;
            let Some(cursor) = keys::cursor_from_key(&key) else {
                continue;
            };
            if cursor > self.after + 1 {
                return Err(WatchError::Expired { oldest: cursor });
            }
            self.after = cursor;
            let Some(change) = keys::decode::<ChangeEntry>(&value) else {
                tracing::warn!(org = %self.org, cursor, "an event change does not decode; skipped");
                continue;
            };
            // The event as it is now; one purged since is skipped.
            let Some(event) = store
                .event_entry(&self.org, EventTable::Events, &change.event)?
                .and_then(|raw| keys::decode::<EventRecord>(&raw))
            else {
                continue;
            };
            let selected = |s: &mut LiveSelection| s.selects(&self.org, &event.agent);
            if self.interest.filter.matches(&event) && self.selection.as_mut().is_none_or(selected)
            {
                self.queue.push_back(WatchItem::Change {
                    cursor,
                    change: change.change,
                    event: Arc::new(event),
                });
            }
        }
        Ok(any)
    }
}
