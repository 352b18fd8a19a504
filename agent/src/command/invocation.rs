//! The life of one invocation, as tasks of the command subsystem.
//!
//! [`start`] spawns a run: journal `accept` (durable) → `RUNNING` → the kind (`sleep`,
//! `collect` or `exec`) until it ends, times out or is cancelled → [`finish`]. [`settle`]
//! handles an invocation that ends without running (rejected, late, noop, cancelled while
//! queued): straight to [`finish`]. [`finish`] numbers the remaining output, reserves the
//! terminal seq, journals the result (durable), and only then numbers the terminal update.
//! A run frees its slot at the end, which starts the next queued offer.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info};

use crate::command::config::DEFAULT_KILL_GRACE;
use crate::command::exec::{self, ExecLimits, RunEnd, StopSignals};
use crate::command::journal::JournaledResult;
use crate::command::manager::{Inner, Live, Phase, State, server_now};
use crate::command::types::{CommandSpec, Offer, Outcome, OutputStream, Step, Terminal};

/// Starts `offer` in a free slot (the caller checked there is one).
pub(super) fn start(inner: &Arc<Inner>, state: &mut State, offer: Offer) {
    let cancel = CancellationToken::new();
    let mut live = Live::new(
        offer.command_id.clone(),
        Phase::Running {
            cancel: cancel.clone(),
        },
        0,
    );
    if matches!(offer.spec, CommandSpec::Exec(_)) {
        live.open_output(inner.output_limit(offer.output_limit_bytes));
    }
    state.live.insert(offer.invocation_id.clone(), live);
    state.n_running += 1;
    let guard = inner.task_started(state);
    let inner = inner.clone();
    tokio::spawn(async move {
        let _guard = guard;
        run(&inner, &offer, &cancel).await;
        release_slot(&inner);
    });
}

/// Ends an invocation the agent will not run, with `outcome`.
pub(super) fn settle(
    inner: &Arc<Inner>,
    state: &mut State,
    id: String,
    command_id: String,
    outcome: Outcome,
) {
    state.live.insert(
        id.clone(),
        Live::new(command_id.clone(), Phase::Finishing, 0),
    );
    finish_later(inner, state, id, command_id, outcome);
}

/// Runs [`finish`] on a task of its own (journaling blocks).
pub(super) fn finish_later(
    inner: &Arc<Inner>,
    state: &mut State,
    id: String,
    command_id: String,
    outcome: Outcome,
) {
    let guard = inner.task_started(state);
    let inner = inner.clone();
    tokio::spawn(async move {
        let _guard = guard;
        finish(&inner, &id, &command_id, outcome).await;
    });
}

/// One run, from journaling the accept to journaling and reporting the end (unless the agent
/// stops first: then nothing more is journaled).
async fn run(inner: &Arc<Inner>, offer: &Offer, cancel: &CancellationToken) {
    let id = offer.invocation_id.as_str();
    let command_id = offer.command_id.as_str();
    if let Err(err) = accept(inner, id, command_id).await {
        error!(invocation = %id, "failed to journal a command: {err}");
        let reason =
            format!("the agent cannot write its command journal, so it runs nothing: {err}");
        finish(
            inner,
            id,
            command_id,
            Outcome::new(Terminal::Rejected, reason),
        )
        .await;
        return;
    }
    if inner.stopping.is_cancelled() {
        return;
    }
    if cancel.is_cancelled() {
        let outcome = Outcome::new(Terminal::Cancelled, "cancelled before it started");
        finish(inner, id, command_id, outcome).await;
        return;
    }
    // `decide` let only kinds with a timeout through.
    let timeout = offer.timeout.unwrap_or(Duration::ZERO);
    let signals = StopSignals {
        cancel,
        stopping: &inner.stopping,
    };
    info!(invocation = %id, command = %command_id, spec = ?offer.spec, "invocation starting");
    let end = match &offer.spec {
        CommandSpec::Exec(spec) => {
            let limits = ExecLimits {
                timeout,
                kill_grace: offer.kill_grace.unwrap_or(DEFAULT_KILL_GRACE),
            };
            let sink = |stream: OutputStream, bytes: &[u8]| output(inner, id, stream, bytes);
            exec::run(spec, limits, signals, || started(inner, id), &sink).await
        }
        CommandSpec::Sleep(duration) => {
            started(inner, id);
            sleep(*duration, timeout, signals).await
        }
        CommandSpec::Collect => {
            started(inner, id);
            collect(inner, timeout, signals).await
        }
        CommandSpec::Noop => RunEnd::Finished(Outcome::new(Terminal::Succeeded, "")),
    };
    match end {
        RunEnd::Finished(outcome) => finish(inner, id, command_id, outcome).await,
        RunEnd::Abandoned => info!(invocation = %id, "the agent is stopping: invocation killed"),
    }
}

async fn sleep(duration: Duration, timeout: Duration, signals: StopSignals<'_>) -> RunEnd {
    let (wait, ends) = if duration <= timeout {
        (duration, Outcome::new(Terminal::Succeeded, ""))
    } else {
        (
            timeout,
            Outcome::new(
                Terminal::TimedOut,
                format!(
                    "ran past its timeout of {}",
                    humantime::format_duration(timeout)
                ),
            ),
        )
    };
    tokio::select! {
        () = tokio::time::sleep(wait) => RunEnd::Finished(ends),
        () = signals.cancel.cancelled() => RunEnd::Finished(Outcome::new(Terminal::Cancelled, "cancelled")),
        () = signals.stopping.cancelled() => RunEnd::Abandoned,
    }
}

async fn collect(inner: &Inner, timeout: Duration, signals: StopSignals<'_>) -> RunEnd {
    let taken = inner.sampler.request();
    tokio::select! {
        seq = taken => match seq {
            Ok(seq) => RunEnd::Finished(Outcome::new(
                Terminal::Succeeded,
                format!("metrics sample {seq} queued for the server"),
            )),
            Err(_) => RunEnd::Finished(Outcome::new(Terminal::Failed, "the sampler stopped")),
        },
        () = tokio::time::sleep(timeout) => RunEnd::Finished(Outcome::new(
            Terminal::TimedOut,
            "no sample was taken within the timeout",
        )),
        () = signals.cancel.cancelled() => RunEnd::Finished(Outcome::new(Terminal::Cancelled, "cancelled")),
        () = signals.stopping.cancelled() => RunEnd::Abandoned,
    }
}

/// The process exists: report `RUNNING`.
fn started(inner: &Inner, id: &str) {
    inner.stats.invocation_started();
    inner.state().number(id, Step::Running, Vec::new());
    inner.ready.notify_one();
}

/// Output read from the process: into the pending buffer, never waiting.
fn output(inner: &Inner, id: &str, stream: OutputStream, bytes: &[u8]) {
    let mut state = inner.state();
    let Some(streams) = state.live.get_mut(id).and_then(|live| live.output.as_mut()) else {
        return;
    };
    match stream {
        OutputStream::Stdout => streams.stdout.push(bytes),
        OutputStream::Stderr => streams.stderr.push(bytes),
    }
    drop(state);
    inner.ready.notify_one();
}

/// Ends an invocation: remaining output numbered, result journaled, terminal update numbered.
async fn finish(inner: &Arc<Inner>, id: &str, command_id: &str, outcome: Outcome) {
    let result = {
        let mut state = inner.state();
        state.number_output(id, true);
        let Some(live) = state.live.get_mut(id) else {
            return;
        };
        let (stdout_bytes, stderr_bytes, dropped) = live.output.take().map_or((0, 0, 0), |s| {
            (
                s.stdout.written(),
                s.stderr.written(),
                s.stdout.dropped() + s.stderr.dropped(),
            )
        });
        if dropped > 0 {
            debug!(invocation = %id, dropped, "output beyond the buffer was dropped (head and tail kept)");
        }
        live.phase = Phase::Finishing;
        // Reserved: nothing else is numbered for a finishing invocation.
        let seq = live.next_seq.max(1);
        JournaledResult {
            outcome,
            seq,
            stdout_bytes,
            stderr_bytes,
        }
    };
    let journaled = journal_result(inner, id, command_id, &result).await;
    if let Err(err) = journaled {
        // Reported anyway: the accept (if any) is journaled, so a crash now cannot make it run
        // again; it would end AGENT_RESTARTED instead of with this result.
        error!(invocation = %id, "failed to journal a command result: {err}");
    }
    info!(
        invocation = %id,
        state = ?result.outcome.state,
        reason = %result.outcome.reason,
        exit_code = result.outcome.exit_code,
        signal = result.outcome.signal,
        "invocation ended"
    );
    let mut state = inner.state();
    if let Some(live) = state.live.get_mut(id) {
        live.next_seq = result.seq;
    }
    state.number(id, Step::Finished(result.outcome), Vec::new());
    drop(state);
    inner.stats.invocation_finished();
    inner.ready.notify_one();
}

/// Frees a slot and starts queued offers while slots are free (or settles those whose
/// delivery deadline passed while they waited).
fn release_slot(inner: &Arc<Inner>) {
    let mut state = inner.state();
    state.n_running -= 1;
    if inner.stopping.is_cancelled() {
        return;
    }
    while state.n_running < inner.limits.max_concurrent {
        let Some(offer) = state.queue.pop_front() else {
            return;
        };
        if offer
            .deliver_by
            .is_some_and(|deliver_by| server_now(inner, &state) > deliver_by)
        {
            let outcome = Outcome::new(
                Terminal::DeliveryTimedOut,
                format!(
                    "its delivery deadline passed while it waited for a free slot \
                     (commands.max_concurrent = {})",
                    inner.limits.max_concurrent
                ),
            );
            if let Some(live) = state.live.get_mut(&offer.invocation_id) {
                live.phase = Phase::Finishing;
            }
            finish_later(
                inner,
                &mut state,
                offer.invocation_id,
                offer.command_id,
                outcome,
            );
            continue;
        }
        start(inner, &mut state, offer);
    }
}

async fn accept(inner: &Arc<Inner>, id: &str, command_id: &str) -> std::io::Result<()> {
    inner.stats.invocation_accepted();
    if !inner.journal.is_durable() {
        return inner.journal.accept(id, command_id);
    }
    let (inner, id, command_id) = (inner.clone(), id.to_owned(), command_id.to_owned());
    tokio::task::spawn_blocking(move || inner.journal.accept(&id, &command_id))
        .await
        .unwrap_or_else(|err| Err(std::io::Error::other(err)))
}

async fn journal_result(
    inner: &Arc<Inner>,
    id: &str,
    command_id: &str,
    result: &JournaledResult,
) -> std::io::Result<()> {
    if !inner.journal.is_durable() {
        return inner.journal.finish(id, command_id, result);
    }
    let (inner, id, command_id, result) = (
        inner.clone(),
        id.to_owned(),
        command_id.to_owned(),
        result.clone(),
    );
    tokio::task::spawn_blocking(move || inner.journal.finish(&id, &command_id, &result))
        .await
        .unwrap_or_else(|err| Err(std::io::Error::other(err)))
}
