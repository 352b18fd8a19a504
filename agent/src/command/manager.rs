//! [`Commands`]: the agent's command subsystem, shared by the runner and every session.
//!
//! It outlives sessions (like the sample buffer): invocations keep running and their updates
//! keep accumulating while the agent is disconnected, and the next session re-sends what the
//! server has not acknowledged. A session only calls in: `offer`, `cancel`, `ack`,
//! `on_welcome`, `next_report`, and waits on [`Commands::ready`]. Locks are held for
//! microseconds and never across `.await`; journal writes happen in the invocation tasks.
//!
//! Invariants:
//! - an invocation id is run at most once per journal: an offer for an id that is live or
//!   journaled is never started again;
//! - a state change is numbered (and so reported) only after the journal holds it: `accept`
//!   before `RUNNING`, the result before the terminal update;
//! - per invocation, numbered but unacknowledged output stays under half its buffer limit, and
//!   pending output (not yet numbered) under the other half, whatever the server does.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::command::config::{CommandConfig, MIN_OUTPUT_BUFFER_BYTES};
use crate::command::invocation;
use crate::command::journal::{Entry, Journal, JournaledResult};
use crate::command::outbox::{Outbox, Report};
use crate::command::output::OutputBuffer;
use crate::command::policy::CommandPolicy;
use crate::command::sample::SampleTrigger;
use crate::command::types::{
    CommandSpec, InvalidOffer, Offer, Outcome, OutputChunk, OutputStream, Step, Terminal, Update,
};
use crate::session::signed_micros;
use crate::{AgentError, AgentStats};

/// Most output bytes in one update (and so in one chunk).
pub const MAX_UPDATE_OUTPUT_BYTES: usize = tether_proto::command::MAX_UPDATE_OUTPUT_BYTES;
/// How long [`Commands::stop`] waits for invocations to be killed and journaled.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// An update is formed from pending output only if the window has at least this much room (or
/// all of the pending output fits), so a slow ack does not splinter output into tiny updates.
const MIN_UPDATE_OUTPUT_BYTES: usize = 4 << 10;

/// The command subsystem. Cheap to clone; every clone is the same subsystem.
#[derive(Debug, Clone)]
pub struct Commands {
    inner: Arc<Inner>,
}

/// State shared with the invocation tasks.
#[derive(Debug)]
pub(super) struct Inner {
    pub(super) policy: Arc<CommandPolicy>,
    pub(super) limits: Limits,
    pub(super) journal: Journal,
    state: Mutex<State>,
    /// Signalled whenever there is something to report (an update or new output).
    pub(super) ready: Notify,
    /// Signalled when the last invocation task ends.
    idle: Notify,
    pub(super) sampler: SampleTrigger,
    pub(super) stats: Arc<AgentStats>,
    /// Cancelled when the agent stops: running processes are killed, nothing new starts.
    pub(super) stopping: CancellationToken,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    pub(super) max_concurrent: usize,
    pub(super) max_queued: usize,
    pub(super) max_output_bytes: u64,
}

#[derive(Debug, Default)]
pub(super) struct State {
    /// Invocations queued, running, or ended with updates not yet acknowledged.
    pub(super) live: HashMap<String, Live>,
    /// Offers waiting for a slot, in the order they came.
    pub(super) queue: VecDeque<Offer>,
    /// Slots in use.
    pub(super) n_running: usize,
    /// Invocation tasks alive (running or journaling).
    n_tasks: usize,
    pub(super) outbox: Outbox,
    /// Server clock minus agent clock from the last `Welcome`, until a pong measures it.
    welcome_offset_micros: Option<i64>,
}

/// One invocation the agent is busy with.
#[derive(Debug)]
pub(super) struct Live {
    pub(super) command_id: String,
    pub(super) phase: Phase,
    /// Seq of the next update; 0 while a journaled result waits for `Welcome` to be numbered.
    pub(super) next_seq: u64,
    /// Numbered updates not yet acknowledged, oldest first.
    unacked: VecDeque<Sent>,
    /// Output bytes in `unacked`.
    inflight_output: u64,
    /// Most output bytes in `unacked` before new output waits in `output`.
    window: u64,
    /// Output not yet numbered, while a process runs.
    pub(super) output: Option<Box<Streams>>,
    /// Seq of the terminal update, once numbered.
    terminal_seq: Option<u64>,
    /// A journaled result from before a restart, numbered at the next `Welcome`.
    restored: Option<JournaledResult>,
}

#[derive(Debug)]
pub(super) enum Phase {
    Queued,
    Running {
        cancel: CancellationToken,
    },
    /// Its result is being journaled; nothing else is numbered for it.
    Finishing,
    Finished,
}

#[derive(Debug)]
pub(super) struct Streams {
    pub(super) stdout: OutputBuffer,
    pub(super) stderr: OutputBuffer,
}

#[derive(Debug, Clone, Copy)]
struct Sent {
    seq: u64,
    index: u64,
    output_bytes: u64,
}

// === impl Commands ===

impl Commands {
    /// The subsystem of a real agent: the journal in `state_dir`. Invocations the journal holds
    /// without an acknowledged end are reported again after the first `Welcome` (those that
    /// were running when the agent stopped end `AGENT_RESTARTED`).
    ///
    /// # Errors
    ///
    /// [`AgentError::Config`] for an invalid allowlist, [`AgentError::StateIo`] or
    /// [`AgentError::StateCorrupt`] when the journal cannot be opened.
    pub fn open(
        config: &CommandConfig,
        state_dir: &Path,
        stats: Arc<AgentStats>,
    ) -> Result<Self, AgentError> {
        let policy = Arc::new(CommandPolicy::new(config)?);
        let journal = Journal::open(state_dir)?;
        let commands = Self::new(policy, config, journal, stats);
        let restored = commands.inner.journal.unacked();
        if !restored.is_empty() {
            info!(
                n_invocations = restored.len(),
                "reporting journaled command results again"
            );
        }
        let mut state = commands.inner.state();
        for (id, entry) in restored {
            let Entry {
                command_id, result, ..
            } = entry;
            let mut live = Live::new(command_id, Phase::Finished, 0);
            live.next_seq = 0;
            live.restored = result;
            state.live.insert(id, live);
        }
        drop(state);
        Ok(commands)
    }

    /// A subsystem whose journal lives in memory only: **not durable**, for the fleet simulator
    /// (many agents in one process, none of which may fsync a file of its own).
    pub fn in_memory(
        policy: Arc<CommandPolicy>,
        config: &CommandConfig,
        stats: Arc<AgentStats>,
    ) -> Self {
        Self::new(policy, config, Journal::in_memory(), stats)
    }

    fn new(
        policy: Arc<CommandPolicy>,
        config: &CommandConfig,
        journal: Journal,
        stats: Arc<AgentStats>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                policy,
                limits: Limits {
                    max_concurrent: config.max_concurrent.max(1),
                    max_queued: config.max_queued,
                    max_output_bytes: config.max_output_buffer_bytes.max(MIN_OUTPUT_BUFFER_BYTES),
                },
                journal,
                state: Mutex::new(State::default()),
                ready: Notify::new(),
                idle: Notify::new(),
                sampler: SampleTrigger::default(),
                stats,
                stopping: CancellationToken::new(),
            }),
        }
    }

    /// Signalled whenever a report may have something to carry.
    pub(crate) fn ready(&self) -> &Notify {
        &self.inner.ready
    }

    /// The sampler's side of `collect`.
    pub(crate) fn sampler(&self) -> &SampleTrigger {
        &self.inner.sampler
    }

    /// Invocations journaled as accepted whose end the server has not acknowledged: what
    /// `Hello.journaled_invocation_ids` lists.
    pub(crate) fn journaled_ids(&self) -> Vec<String> {
        self.inner
            .journal
            .unacked()
            .into_iter()
            .map(|(id, _)| id)
            .collect()
    }

    /// Applies a `Welcome`: the durable seq of each journaled invocation acks what the server
    /// holds, and results journaled before a restart are numbered right after it.
    pub(crate) fn on_welcome(&self, acks: &[(String, u64)], server_time: Option<SystemTime>) {
        let acks: HashMap<&str, u64> = acks.iter().map(|(id, seq)| (id.as_str(), *seq)).collect();
        let mut state = self.inner.state();
        state.welcome_offset_micros =
            server_time.map(|server| signed_micros(server, SystemTime::now()));
        let ids: Vec<String> = state.live.keys().cloned().collect();
        for id in ids {
            let durable = acks.get(id.as_str()).copied().unwrap_or(0);
            let Some(live) = state.live.get_mut(&id) else {
                continue;
            };
            let Some(result) = live.restored.take() else {
                self.apply_ack(&mut state, &id, durable);
                continue;
            };
            if result.seq > 0 && durable >= result.seq {
                // Stored before the restart; only the ack was lost.
                state.live.remove(&id);
                self.inner.journal.mark_acked(&id);
                continue;
            }
            live.next_seq = durable + 1;
            let update = journaled_terminal(&id, &result);
            state.number(&id, update.step, update.output);
        }
        drop(state);
        self.inner.ready.notify_one();
    }

    /// Handles an offer: runs it, queues it, settles it at once (rejected, noop, late), or, for
    /// an invocation already known, reports what the agent knows instead of running it again.
    pub(crate) fn offer(&self, offer: Result<Offer, InvalidOffer>) {
        let (id, command_id) = match &offer {
            Ok(offer) => (offer.invocation_id.clone(), offer.command_id.clone()),
            Err(invalid) => (invalid.invocation_id.clone(), invalid.command_id.clone()),
        };
        if id.is_empty() {
            warn!("ignoring a command offer without an invocation id");
            return;
        }
        let mut state = self.inner.state();
        if state.live.contains_key(&id) {
            debug!(invocation = %id, "offer of a known invocation: its updates follow");
            return;
        }
        if let Some(entry) = self.inner.journal.get(&id) {
            self.report_again(&mut state, &id, entry);
            return;
        }
        let offer = match offer {
            Ok(offer) => offer,
            Err(invalid) => {
                invocation::settle(
                    &self.inner,
                    &mut state,
                    id,
                    command_id,
                    Outcome::new(Terminal::Rejected, invalid.reason),
                );
                return;
            }
        };
        match self.decide(&state, &offer) {
            Err(outcome) => invocation::settle(&self.inner, &mut state, id, command_id, outcome),
            Ok(()) if state.n_running < self.inner.limits.max_concurrent => {
                invocation::start(&self.inner, &mut state, offer);
            }
            Ok(()) if state.queue.len() < self.inner.limits.max_queued => {
                debug!(invocation = %id, "all command slots busy: queued");
                state
                    .live
                    .insert(id, Live::new(command_id, Phase::Queued, 0));
                state.queue.push_back(offer);
            }
            Ok(()) => {
                let outcome = Outcome::new(
                    Terminal::Rejected,
                    format!(
                        "the agent already has {} invocations waiting for a free slot \
                         (commands.max_queued)",
                        state.queue.len()
                    ),
                );
                invocation::settle(&self.inner, &mut state, id, command_id, outcome);
            }
        }
    }

    /// Stops `id` (SIGTERM, then SIGKILL after its grace) or drops it from the queue; it ends
    /// `CANCELLED`. Unknown or ended invocations are ignored.
    pub(crate) fn cancel(&self, id: &str) {
        let mut state = self.inner.state();
        let Some(live) = state.live.get_mut(id) else {
            debug!(invocation = %id, "cancel of an unknown invocation ignored");
            return;
        };
        match &live.phase {
            Phase::Running { cancel } => {
                info!(invocation = %id, "cancelling");
                cancel.cancel();
            }
            Phase::Queued => {
                live.phase = Phase::Finishing;
                let command_id = live.command_id.clone();
                state.queue.retain(|offer| offer.invocation_id != id);
                let outcome = Outcome::new(Terminal::Cancelled, "cancelled before it started");
                invocation::finish_later(
                    &self.inner,
                    &mut state,
                    id.to_owned(),
                    command_id,
                    outcome,
                );
            }
            Phase::Finishing | Phase::Finished => {
                debug!(invocation = %id, "cancel of an ended invocation ignored");
            }
        }
    }

    /// Applies `CommandAck`s: acknowledged updates are forgotten; an acknowledged end is
    /// journaled (lazily) and the invocation forgotten.
    pub(crate) fn ack(&self, acks: &[(String, u64)]) {
        let mut state = self.inner.state();
        for (id, seq) in acks {
            self.apply_ack(&mut state, id, *seq);
        }
        drop(state);
        // Acked output frees window room for output that waits.
        self.inner.ready.notify_one();
    }

    /// The next report for a session that has sent the outbox through `after`: first numbers
    /// waiting output (within each invocation's window), then cuts the report.
    pub(crate) fn next_report(&self, after: u64) -> Option<Report> {
        let mut state = self.inner.state();
        let with_output: Vec<String> = state
            .live
            .iter()
            .filter(|(_, live)| {
                live.pending_output() > 0 && matches!(live.phase, Phase::Running { .. })
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in with_output {
            state.number_output(&id, false);
        }
        state.outbox.report_after(after)
    }

    /// Stops the subsystem when the agent stops: queued offers are dropped (never journaled,
    /// so the server offers them again), running processes are killed without journaling a
    /// result (so they end `AGENT_RESTARTED` when the agent starts again), and journaled acks
    /// are written.
    pub async fn stop(&self) {
        self.inner.stopping.cancel();
        {
            let mut state = self.inner.state();
            let queued: Vec<Offer> = state.queue.drain(..).collect();
            for offer in queued {
                state.live.remove(&offer.invocation_id);
            }
        }
        let deadline = tokio::time::Instant::now() + STOP_TIMEOUT;
        loop {
            let idle = self.inner.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if self.inner.state().n_tasks == 0 {
                break;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                warn!("command invocations did not stop within {STOP_TIMEOUT:?}");
                break;
            }
        }
        let journal = self.inner.clone();
        let flushed = if journal.journal.is_durable() {
            tokio::task::spawn_blocking(move || journal.journal.flush())
                .await
                .unwrap_or_else(|err| Err(std::io::Error::other(err)))
        } else {
            Ok(())
        };
        if let Err(err) = flushed {
            warn!("failed to write command acknowledgements to the journal: {err}");
        }
    }

    /// What the agent knows about an invocation it has seen before, reported again.
    fn report_again(&self, state: &mut State, id: &str, entry: Entry) {
        let Some(result) = entry.result else {
            warn!(invocation = %id, "offer of an invocation journaled as running elsewhere ignored");
            return;
        };
        info!(invocation = %id, state = ?result.outcome.state, "offer of a finished invocation: reporting its result again");
        let mut live = Live::new(entry.command_id, Phase::Finished, 0);
        live.next_seq = result.seq.max(1);
        state.live.insert(id.to_owned(), live);
        let update = journaled_terminal(id, &result);
        state.number(id, update.step, update.output);
        self.inner.ready.notify_one();
    }

    /// Checks an offer against the policy, its delivery deadline and its fields.
    fn decide(&self, state: &State, offer: &Offer) -> Result<(), Outcome> {
        self.inner
            .policy
            .check(&offer.spec)
            .map_err(|reason| Outcome::new(Terminal::Rejected, reason))?;
        if let Some(deliver_by) = offer.deliver_by
            && server_now(&self.inner, state) > deliver_by
        {
            return Err(Outcome::new(
                Terminal::DeliveryTimedOut,
                "the offer reached the agent after its delivery deadline",
            ));
        }
        match offer.spec {
            CommandSpec::Noop => Err(Outcome::new(Terminal::Succeeded, "")),
            CommandSpec::Exec(_) | CommandSpec::Collect | CommandSpec::Sleep(_)
                if offer.timeout.is_none() =>
            {
                Err(Outcome::new(
                    Terminal::Rejected,
                    "the offer carries no timeout",
                ))
            }
            CommandSpec::Exec(_) | CommandSpec::Collect | CommandSpec::Sleep(_) => Ok(()),
        }
    }

    fn apply_ack(&self, state: &mut State, id: &str, seq: u64) {
        let State { live, outbox, .. } = state;
        let Some(invocation) = live.get_mut(id) else {
            return;
        };
        while let Some(sent) = invocation.unacked.front().copied()
            && sent.seq <= seq
        {
            outbox.remove(sent.index);
            invocation.inflight_output -= sent.output_bytes;
            invocation.unacked.pop_front();
        }
        if invocation.restored.is_none() {
            // A server that holds more than this process numbered: never reuse those seqs.
            invocation.next_seq = invocation.next_seq.max(seq.saturating_add(1));
        }
        if matches!(invocation.phase, Phase::Finished)
            && invocation
                .terminal_seq
                .is_some_and(|terminal| terminal <= seq)
        {
            live.remove(id);
            self.inner.journal.mark_acked(id);
        }
    }

    #[cfg(test)]
    pub(super) fn inner(&self) -> &Arc<Inner> {
        &self.inner
    }
}

// === impl Inner ===

impl Inner {
    pub(super) fn state(&self) -> MutexGuard<'_, State> {
        // Every change under this lock is a handful of field updates that never panic midway.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Effective output buffer for an offer's limit (0: the agent's own).
    pub(super) fn output_limit(&self, offered: u64) -> u64 {
        let max = self.limits.max_output_bytes;
        if offered == 0 {
            max
        } else {
            offered.clamp(MIN_OUTPUT_BUFFER_BYTES, max)
        }
    }

    /// Counts an invocation task in; the returned guard counts it out when dropped.
    pub(super) fn task_started(self: &Arc<Self>, state: &mut State) -> TaskGuard {
        state.n_tasks += 1;
        TaskGuard(self.clone())
    }
}

/// The server's clock now, as far as the agent knows it (pong offset, else `Welcome`'s).
pub(super) fn server_now(inner: &Inner, state: &State) -> SystemTime {
    let offset = inner
        .stats
        .last_clock_offset()
        .or(state.welcome_offset_micros)
        .unwrap_or(0);
    let now = SystemTime::now();
    let shift = Duration::from_micros(offset.unsigned_abs());
    if offset >= 0 {
        now + shift
    } else {
        now.checked_sub(shift).unwrap_or(now)
    }
}

/// Counts an invocation task out when dropped (also when it panics).
pub(super) struct TaskGuard(Arc<Inner>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        let mut state = self.0.state();
        state.n_tasks -= 1;
        if state.n_tasks == 0 {
            self.0.idle.notify_waiters();
        }
    }
}

// === impl State ===

impl State {
    /// Numbers the next update of `id` and puts it in the outbox. Returns its seq.
    pub(super) fn number(&mut self, id: &str, step: Step, output: Vec<OutputChunk>) -> Option<u64> {
        let live = self.live.get_mut(id)?;
        let seq = live.next_seq.max(1);
        live.next_seq = seq + 1;
        if matches!(step, Step::Finished(_)) {
            live.terminal_seq = Some(seq);
            live.phase = Phase::Finished;
        }
        let update = Update {
            invocation_id: id.to_owned(),
            seq,
            step,
            output,
            time: SystemTime::now(),
        };
        let output_bytes = update.output_bytes() as u64;
        let index = self.outbox.push(update);
        live.unacked.push_back(Sent {
            seq,
            index,
            output_bytes,
        });
        live.inflight_output += output_bytes;
        Some(seq)
    }

    /// Numbers `id`'s pending output as output-only updates of at most
    /// [`MAX_UPDATE_OUTPUT_BYTES`]: within its window, or all of it when `all`.
    pub(super) fn number_output(&mut self, id: &str, all: bool) {
        loop {
            let Some(live) = self.live.get_mut(id) else {
                return;
            };
            let pending = live.pending_output();
            let room = if all {
                MAX_UPDATE_OUTPUT_BYTES
            } else {
                let room = live.window.saturating_sub(live.inflight_output);
                usize::try_from(room)
                    .unwrap_or(usize::MAX)
                    .min(MAX_UPDATE_OUTPUT_BYTES)
            };
            if pending == 0 || room < pending.min(MIN_UPDATE_OUTPUT_BYTES) {
                return;
            }
            let Some(streams) = live.output.as_mut() else {
                return;
            };
            let mut chunks = Vec::new();
            let mut left = room;
            for (stream, buffer) in [
                (OutputStream::Stdout, &mut streams.stdout),
                (OutputStream::Stderr, &mut streams.stderr),
            ] {
                for taken in buffer.take(left) {
                    left -= taken.data.len();
                    chunks.push(OutputChunk {
                        stream,
                        offset: taken.offset,
                        data: taken.data,
                    });
                }
            }
            self.number(id, Step::Output, chunks);
        }
    }
}

// === impl Live ===

impl Live {
    /// A live invocation with an output buffer of `output_limit` bytes (0: none needed).
    pub(super) fn new(command_id: String, phase: Phase, output_limit: u64) -> Self {
        Self {
            command_id,
            phase,
            next_seq: 1,
            unacked: VecDeque::new(),
            inflight_output: 0,
            window: output_limit / 2,
            output: None,
            terminal_seq: None,
            restored: None,
        }
    }

    /// Creates the pending-output buffers: a quarter of the limit per stream (head and tail),
    /// the other half being the window of numbered output.
    pub(super) fn open_output(&mut self, output_limit: u64) {
        let eighth = usize::try_from(output_limit / 8).unwrap_or(usize::MAX);
        self.window = output_limit / 2;
        self.output = Some(Box::new(Streams {
            stdout: OutputBuffer::new(eighth, eighth),
            stderr: OutputBuffer::new(eighth, eighth),
        }));
    }

    fn pending_output(&self) -> usize {
        self.output.as_ref().map_or(0, |streams| {
            streams.stdout.pending() + streams.stderr.pending()
        })
    }
}

/// The terminal update of a journaled result. Output lost in a crash is not resent, but an
/// empty chunk at each stream's final offset tells the server how much there was.
fn journaled_terminal(id: &str, result: &JournaledResult) -> Update {
    let output = [
        (OutputStream::Stdout, result.stdout_bytes),
        (OutputStream::Stderr, result.stderr_bytes),
    ]
    .into_iter()
    .filter(|(_, written)| *written > 0)
    .map(|(stream, written)| OutputChunk {
        stream,
        offset: written,
        data: Vec::new(),
    })
    .collect();
    Update {
        invocation_id: id.to_owned(),
        seq: result.seq,
        step: Step::Finished(result.outcome.clone()),
        output,
        time: SystemTime::now(),
    }
}
