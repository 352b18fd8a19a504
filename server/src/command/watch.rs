//! `WatchCommand`: a command's history from a cursor, then its live events, read from the store.
//!
//! A watcher never receives events pushed into a buffer it shares with anyone: it reads the
//! stored history itself, a page at a time ([`WATCH_PAGE_EVENTS`], [`WATCH_PAGE_BYTES`]), up to
//! the cursor the engine reports as stored (the first event of a commit not yet durable is never
//! passed), and waits for that cursor to move. So a slow watcher holds one page and costs no
//! one else anything, never misses an event (output dropped from a tail meanwhile is a jump in
//! its stream's offsets, as for everyone), and needs no resync. A command that has left the
//! engine (finished, everything stored) is read to its last cursor from the store alone.
//!
//! The stream: the command; the stored events after the start cursor; `synced`; then live
//! events, with the command again whenever its record changed. It ends once the command is
//! finished and every event up to its last cursor was sent (with an agent filter: once that
//! agent's invocation reached a terminal state and that event was sent).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::command::engine::{CursorWatch, Engine};
use crate::command::record::{CommandEvent, CommandRecord, InvocationRecord, OutputEvent};
use crate::domain::{AgentId, CommandId, OrgId};
use crate::error::ServerError;
use crate::store::Store;

/// Most events one read of the store returns.
pub const WATCH_PAGE_EVENTS: usize = 256;
/// Most bytes of events one read of the store returns (at least one event).
pub const WATCH_PAGE_BYTES: usize = 1 << 20;
/// How long a watcher of a command the engine does not report on waits before reading again
/// (only in the instant a command leaves the engine).
const STORE_POLL: Duration = Duration::from_millis(200);

/// What a watch asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchRequest {
    pub command: CommandId,
    pub after: u64,
    pub agent: Option<AgentId>,
    pub exclude_output: bool,
}

/// One message of a watch.
#[derive(Clone, Debug, PartialEq)]
pub enum WatchItem {
    Command(Box<CommandRecord>),
    Invocation {
        cursor: u64,
        command: CommandId,
        record: Box<InvocationRecord>,
    },
    Output {
        cursor: u64,
        command: CommandId,
        agent: AgentId,
        output: OutputEvent,
    },
    Synced,
}

/// One watcher's state.
pub struct CommandWatch {
    store: Arc<dyn Store>,
    engine: Arc<Engine>,
    org: OrgId,
    request: WatchRequest,
    /// The invocation the agent filter names.
    only: Option<u32>,
    /// The engine's stored cursor of the command, while it is unfinished.
    cursor: Option<CursorWatch>,
    /// The command as last sent.
    sent: Option<CommandRecord>,
    synced: bool,
    /// The filtered invocation's terminal event was sent.
    ended: bool,
    /// Agents of invocations, learned as needed, for output events.
    agents: HashMap<u32, AgentId>,
    queue: VecDeque<WatchItem>,
    /// Set once the last item is queued: the stream ends when the queue is empty.
    closing: bool,
    shutdown: CancellationToken,
    revoked: CancellationToken,
}

// === impl CommandWatch ===

impl CommandWatch {
    /// Starts watching command `request.command` of `org`.
    ///
    /// # Errors
    ///
    /// `NOT_FOUND` for a command not in `org`, or an agent that is not one of its targets;
    /// `INTERNAL` if the store fails.
    pub async fn start(
        store: Arc<dyn Store>,
        engine: Arc<Engine>,
        org: OrgId,
        request: WatchRequest,
        shutdown: CancellationToken,
        revoked: CancellationToken,
    ) -> Result<Self, ServerError> {
        // Subscribed before the first read, so no change after it is missed.
        let cursor = engine.watch(&org, &request.command);
        let command = crate::command::query::command(&store, &org, &request.command).await?;
        let only = match &request.agent {
            None => None,
            Some(agent) => Some(find_agent(&store, &engine, &org, &command, agent).await?),
        };
        let mut agents = HashMap::new();
        if let (Some(n), Some(agent)) = (only, &request.agent) {
            agents.insert(n, agent.clone());
        }
        let mut watch = Self {
            store,
            engine,
            org,
            request,
            only,
            cursor,
            sent: None,
            synced: false,
            ended: false,
            agents,
            queue: VecDeque::new(),
            closing: false,
            shutdown,
            revoked,
        };
        watch.send_command(command);
        Ok(watch)
    }

    /// The next message; `None` once the watch is over.
    pub async fn next(&mut self) -> Option<Result<WatchItem, ServerError>> {
        loop {
            if let Some(item) = self.queue.pop_front() {
                return Some(Ok(item));
            }
            if self.closing {
                return None;
            }
            match self.advance().await {
                Ok(()) => {}
                Err(e) => {
                    self.closing = true;
                    return Some(Err(e));
                }
            }
        }
    }

    /// Queues the next page of events, or what follows a caught-up read (synced, the command,
    /// the end), or waits for more.
    async fn advance(&mut self) -> Result<(), ServerError> {
        let command =
            crate::command::query::command(&self.store, &self.org, &self.request.command).await?;
        let until = match self.cursor.as_mut() {
            Some(cursor) => *cursor.borrow_and_update(),
            None => command.last_cursor,
        };
        let events = self.read(until).await?;
        if !events.is_empty() {
            for (cursor, event) in events {
                self.request.after = cursor;
                self.queue_event(cursor, event).await?;
            }
            return Ok(());
        }
        if !self.synced {
            self.synced = true;
            self.queue.push_back(WatchItem::Synced);
        }
        let read_all = command.is_finished() && self.request.after >= command.last_cursor;
        let done = read_all
            || self.ended
            || self.only.is_some_and(|n| {
                // Resumed after the invocation's end: nothing of it is left to send.
                self.engine
                    .ended_at(&self.org, &self.request.command, n)
                    .is_some_and(|at| at <= self.request.after)
            });
        self.send_command(command);
        if done {
            self.closing = true;
            return Ok(());
        }
        if !self.queue.is_empty() {
            return Ok(());
        }
        self.wait().await
    }

    /// Waits until the command's stored cursor moves (or it leaves the engine), the server
    /// shuts down, or the caller's token is revoked.
    async fn wait(&mut self) -> Result<(), ServerError> {
        let moved = async {
            match self.cursor.as_mut() {
                Some(cursor) => cursor.changed().await.is_ok(),
                None => {
                    tokio::time::sleep(STORE_POLL).await;
                    true
                }
            }
        };
        tokio::select! {
            () = self.shutdown.cancelled() => Err(ServerError::Unavailable),
            () = self.revoked.cancelled() => {
                Err(ServerError::Unauthenticated("token has been revoked".to_owned()))
            }
            still = moved => {
                if !still {
                    // The command left the engine: everything of it is stored.
                    self.cursor = None;
                }
                Ok(())
            }
        }
    }

    async fn read(&self, until: u64) -> Result<Vec<(u64, CommandEvent)>, ServerError> {
        let (store, org, command, after) = (
            self.store.clone(),
            self.org.clone(),
            self.request.command.clone(),
            self.request.after,
        );
        tokio::task::spawn_blocking(move || {
            store.command_events(
                &org,
                &command,
                after,
                until,
                WATCH_PAGE_EVENTS,
                WATCH_PAGE_BYTES,
            )
        })
        .await
        .map_err(|e| ServerError::Internal(e.to_string()))?
        .map_err(ServerError::from)
    }

    async fn queue_event(&mut self, cursor: u64, event: CommandEvent) -> Result<(), ServerError> {
        let command = self.request.command.clone();
        match event {
            CommandEvent::Invocation(record) => {
                if self.only.is_some_and(|n| n != record.n) {
                    return Ok(());
                }
                self.agents.insert(record.n, record.agent.clone());
                if self.only.is_some() && record.state.is_terminal() {
                    self.ended = true;
                }
                self.queue.push_back(WatchItem::Invocation {
                    cursor,
                    command,
                    record: Box::new(record),
                });
            }
            CommandEvent::Output(output) => {
                if self.request.exclude_output || self.only.is_some_and(|n| n != output.n) {
                    return Ok(());
                }
                let agent = self.agent_of(output.n).await?;
                self.queue.push_back(WatchItem::Output {
                    cursor,
                    command,
                    agent,
                    output,
                });
            }
        }
        Ok(())
    }

    /// The agent of invocation `n`, from what was seen or from the store.
    async fn agent_of(&mut self, n: u32) -> Result<AgentId, ServerError> {
        if let Some(agent) = self.agents.get(&n) {
            return Ok(agent.clone());
        }
        let (store, org, command) = (
            self.store.clone(),
            self.org.clone(),
            self.request.command.clone(),
        );
        let record = tokio::task::spawn_blocking(move || {
            store.invocations(&org, &command, n.checked_sub(1), 1)
        })
        .await
        .map_err(|e| ServerError::Internal(e.to_string()))??
        .into_iter()
        .find(|r| r.n == n)
        .ok_or_else(|| ServerError::Internal(format!("output of unknown invocation {n}")))?;
        self.agents.insert(n, record.agent.clone());
        Ok(record.agent)
    }

    /// Queues the command if it changed since it was last sent.
    fn send_command(&mut self, command: CommandRecord) {
        if self.sent.as_ref() != Some(&command) {
            self.sent = Some(command.clone());
            self.queue.push_back(WatchItem::Command(Box::new(command)));
        }
    }
}

/// The number of `agent`'s invocation in `command`.
async fn find_agent(
    store: &Arc<dyn Store>,
    engine: &Engine,
    org: &OrgId,
    command: &CommandRecord,
    agent: &AgentId,
) -> Result<u32, ServerError> {
    if let Some(invocation) = engine.invocation_of(org, &command.id, agent) {
        return Ok(invocation.n);
    }
    let (store, org, id, wanted) = (
        store.clone(),
        org.clone(),
        command.id.clone(),
        agent.clone(),
    );
    let found = tokio::task::spawn_blocking(move || {
        let mut after = None;
        loop {
            let page = store.invocations(&org, &id, after, 1000)?;
            let Some(last) = page.last() else {
                return Ok::<_, crate::store::StoreError>(None);
            };
            after = Some(last.n);
            if let Some(found) = page.into_iter().find(|r| r.agent == wanted) {
                return Ok(Some(found.n));
            }
        }
    })
    .await
    .map_err(|e| ServerError::Internal(e.to_string()))?
    .map_err(ServerError::from)?;
    found.ok_or_else(|| {
        ServerError::NotFound(format!(
            "agent {agent} as a target of command {}",
            command.id
        ))
    })
}
