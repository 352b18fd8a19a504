//! Following a command with `WatchCommand` until it ends: what `cmd run` does after sending
//! and what `cmd watch` does.
//!
//! [`Tracker`] is the pure part: it remembers the last cursor, skips an event it has already
//! seen, knows each invocation's agent name, and turns events into printed bytes (agents'
//! lines, or one JSON object per event). [`follow`] drives it over the network:
//!
//! - a stream that breaks (a server restart, a lost connection) is resumed after the last
//!   cursor, after a jittered exponential [`Backoff`]; after [`RESUME_GIVE_UP`] without a
//!   single new event it gives up with the last error. A refusal (not found, permission) ends at
//!   once.
//! - ctrl-c (or SIGTERM): `cmd run` on a terminal asks whether to cancel the command or to
//!   detach; elsewhere, and on a second ctrl-c, it detaches at once. Detaching leaves the
//!   command running.
//!
//! Every unfinished output line is printed before returning, whatever the ending.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher as _, Hasher as _};
use std::io::Write;
use std::time::{Duration, Instant};

use tether_proto as pb;
use tokio::sync::oneshot;
use tonic::Code;

use crate::CliError;
use crate::client::Connection;
use crate::console::Console;
use crate::view::{CommandEventKind, CommandEventView, CommandView};

use super::Steer;
use super::stream::{LinePrinter, Printed};

/// First pause before resuming a broken watch.
pub(super) const RESUME_BACKOFF_INITIAL: Duration = Duration::from_millis(250);
/// Longest pause between attempts to resume.
pub(super) const RESUME_BACKOFF_MAX: Duration = Duration::from_secs(8);
/// How long resuming may fail in a row (no new event received) before following gives up.
pub(super) const RESUME_GIVE_UP: Duration = Duration::from_secs(300);

/// What to follow and how.
#[derive(Debug, Clone, Copy)]
pub(super) struct Follow<'a> {
    /// The server.
    pub conn: &'a Connection,
    /// The command.
    pub command_id: &'a str,
    /// One JSON object per event instead of agents' lines.
    pub json: bool,
    /// Colours and questions.
    pub console: Console,
    /// ctrl-c offers to cancel the command (`cmd run`) instead of detaching at once.
    pub offer_cancel: bool,
}

/// How following ended.
#[derive(Debug)]
pub(super) enum Ending {
    /// The command ended; its last state as the watch reported it (`None` if it never did).
    Ended(Option<Box<CommandView>>),
    /// The person interrupted; the command keeps running.
    Detached,
}

/// The answer to ctrl-c's question.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Decision {
    /// Cancel the command and keep following it to its end.
    Cancel,
    /// Stop following; leave the command running.
    Detach,
}

/// What the events seen so far mean.
#[derive(Debug)]
pub(super) struct Tracker {
    json: bool,
    /// The last non-zero cursor applied; events at or below it were seen already.
    cursor: u64,
    command: Option<CommandView>,
    /// The display name of each invocation's agent.
    names: HashMap<String, String>,
    printer: LinePrinter,
}

// === impl Tracker ===

impl Tracker {
    /// A tracker printing JSON lines, or agents' lines coloured when `color`.
    pub(super) fn new(json: bool, color: bool) -> Self {
        Self {
            json,
            cursor: 0,
            command: None,
            names: HashMap::new(),
            printer: LinePrinter::new(color),
        }
    }

    /// The request that resumes right after the last event seen.
    pub(super) fn request(&self, command_id: &str) -> pb::WatchCommandRequest {
        pb::WatchCommandRequest {
            command_id: command_id.to_owned(),
            after_cursor: self.cursor,
            agent_id: String::new(),
            exclude_output: false,
        }
    }

    /// Applies one event, adding what it prints to `printed`; `true` when it was a stored event
    /// not seen before (progress). An event whose cursor was seen already (a replay) changes
    /// nothing and prints nothing.
    pub(super) fn apply(&mut self, event: CommandEventView, printed: &mut Printed) -> bool {
        let progress = event.cursor > self.cursor;
        if event.cursor != 0 {
            if !progress {
                return false;
            }
            self.cursor = event.cursor;
        }
        if self.json {
            serde_json::to_writer(&mut printed.stdout, &event)
                .expect("views serialize to a Vec without error");
            printed.stdout.push(b'\n');
        }
        match event.kind {
            CommandEventKind::Command => self.command = event.command,
            CommandEventKind::Invocation => {
                let Some(invocation) = event.invocation else {
                    return progress;
                };
                self.names.insert(
                    invocation.invocation_id.clone(),
                    invocation.display_name().to_owned(),
                );
                if invocation.state.is_terminal() && !self.json {
                    self.printer.finish(&invocation.invocation_id, printed);
                }
            }
            CommandEventKind::Output if !self.json => {
                let Some(chunk) = event.output else {
                    return progress;
                };
                let name = self
                    .names
                    .get(&chunk.invocation_id)
                    .map_or(chunk.agent_id.as_str(), String::as_str)
                    .to_owned();
                self.printer.chunk(&name, &chunk, printed);
            }
            CommandEventKind::Output | CommandEventKind::Synced | CommandEventKind::Unknown => {}
        }
        progress
    }

    /// Whether the command has ended.
    pub(super) fn is_done(&self) -> bool {
        self.command.as_ref().is_some_and(|c| c.state.is_terminal())
    }

    /// Ends the follow: prints every unfinished line and hands back the last command seen.
    fn finish(mut self, printed: &mut Printed) -> Option<CommandView> {
        self.printer.finish_all(printed);
        self.command
    }
}

/// Whether a watch that ended with `code` may be resumed: the connection or the server went
/// away, or the server shed load. Refusals (`NOT_FOUND`, `PERMISSION_DENIED`, …) are final.
pub(super) fn is_transient(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::Unknown
            | Code::Internal
            | Code::Aborted
            | Code::Cancelled
            | Code::DeadlineExceeded
            | Code::ResourceExhausted
    )
}

/// Reads ctrl-c's answer: `c`/`cancel` or `d`/`detach`; an empty line detaches (the default,
/// which changes nothing). `None` for anything else.
pub(super) fn parse_answer(line: &str) -> Option<Decision> {
    match line.trim().to_ascii_lowercase().as_str() {
        "c" | "cancel" => Some(Decision::Cancel),
        "" | "d" | "detach" => Some(Decision::Detach),
        _ => None,
    }
}

/// Follows `f.command_id` until it ends or the person detaches, writing agents' output (or JSON
/// events) to `out` and their stderr lines and notices to `err`.
///
/// # Errors
///
/// The watch refused, resuming failing for [`RESUME_GIVE_UP`], or writing failing.
pub(super) async fn follow(
    f: Follow<'_>,
    out: &mut (dyn Write + Send),
    err: &mut (dyn Write + Send),
) -> Result<Ending, CliError> {
    let mut tracker = Tracker::new(f.json, f.console.color);
    let mut interrupts = Interrupts::new();
    let mut backoff = Backoff::new();
    let mut cancel_sent = false;
    let mut failing_since: Option<Instant> = None;
    let mut client = f.conn.commands();
    let what = format!("command {}", f.command_id);
    let outcome = 'follow: loop {
        let opened = tokio::select! {
            opened = client.watch_command(tracker.request(f.command_id)) => Some(opened),
            () = interrupts.recv() => None,
        };
        let ended = match opened {
            None => {
                if interrupted(f, &mut interrupts, &mut cancel_sent, err).await? {
                    break 'follow Ok(Ending::Detached);
                }
                continue;
            }
            Some(Err(status)) => Some(status),
            Some(Ok(response)) => {
                let mut stream = response.into_inner();
                loop {
                    let message = tokio::select! {
                        message = stream.message() => message,
                        () = interrupts.recv() => {
                            if interrupted(f, &mut interrupts, &mut cancel_sent, err).await? {
                                break 'follow Ok(Ending::Detached);
                            }
                            continue;
                        }
                    };
                    match message {
                        Ok(Some(event)) => {
                            let mut printed = Printed::default();
                            // Only new stored events count as a healthy watch: a server that
                            // ends every watch after its snapshot must not be retried at full
                            // speed forever.
                            if tracker.apply(event.into(), &mut printed) {
                                failing_since = None;
                                backoff.reset();
                            }
                            write_printed(&printed, out, err)?;
                        }
                        Ok(None) => break None,
                        Err(status) => break Some(status),
                    }
                }
            }
        };
        let reason = match &ended {
            None if tracker.is_done() => break 'follow Ok(Ending::Ended(None)),
            None => "the server ended the watch early".to_owned(),
            Some(status) if !is_transient(status.code()) => {
                break 'follow Err(f.conn.error(status, Some(&what)));
            }
            Some(status) => f.conn.error(status, Some(&what)).to_string(),
        };
        let since = *failing_since.get_or_insert_with(Instant::now);
        if since.elapsed() >= RESUME_GIVE_UP {
            break 'follow Err(match ended {
                Some(status) => f.conn.error(&status, Some(&what)),
                None => CliError::Server {
                    code: "Unavailable".to_owned(),
                    message: format!("the watch of {what} kept ending before the command did"),
                },
            });
        }
        let delay = backoff.next_delay();
        writeln!(
            err,
            "tetherctl: lost the watch of {what} ({reason}); resuming in {:.1}s",
            delay.as_secs_f64()
        )?;
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = interrupts.recv() => {
                if interrupted(f, &mut interrupts, &mut cancel_sent, err).await? {
                    break 'follow Ok(Ending::Detached);
                }
            }
        }
    };
    // Whatever the ending, no line an agent wrote stays unprinted.
    let mut printed = Printed::default();
    let command = tracker.finish(&mut printed);
    write_printed(&printed, out, err)?;
    Ok(match outcome? {
        Ending::Ended(_) => Ending::Ended(command.map(Box::new)),
        Ending::Detached => Ending::Detached,
    })
}

/// Handles ctrl-c; `true` when following should stop (detach).
async fn interrupted(
    f: Follow<'_>,
    interrupts: &mut Interrupts,
    cancel_sent: &mut bool,
    err: &mut (dyn Write + Send),
) -> Result<bool, CliError> {
    if !f.offer_cancel || !f.console.interactive || *cancel_sent {
        return Ok(true);
    }
    if ask(f.command_id, interrupts, err).await? == Decision::Detach {
        return Ok(true);
    }
    match Steer::Cancel
        .send(f.conn.commands(), f.command_id.to_owned())
        .await
    {
        Ok(_) => {
            *cancel_sent = true;
            writeln!(
                err,
                "Cancelling command {}; following it to its end (ctrl-c again to detach).",
                f.command_id
            )?;
        }
        Err(status) => {
            let failure = f
                .conn
                .error(&status, Some(&format!("command {}", f.command_id)));
            writeln!(err, "tetherctl: the command was not cancelled: {failure}")?;
        }
    }
    Ok(false)
}

/// Asks on the terminal whether to cancel or detach, until the answer is understood; a second
/// ctrl-c, or the end of stdin, detaches.
async fn ask(
    command_id: &str,
    interrupts: &mut Interrupts,
    err: &mut (dyn Write + Send),
) -> Result<Decision, CliError> {
    loop {
        write!(
            err,
            "\nCommand {command_id} is still running. Cancel it on every agent, or detach and \
             leave it running? [c/D] "
        )?;
        err.flush()?;
        // A plain thread, not the runtime's blocking pool: a read left waiting (a second
        // ctrl-c) must not keep the process from exiting.
        let (answer_tx, answer_rx) = oneshot::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let read = std::io::stdin().read_line(&mut line);
            // The receiver is gone after a second ctrl-c; nobody needs the answer then.
            let _ = answer_tx.send(read.map(|n| (n, line)));
        });
        let answer = tokio::select! {
            answer = answer_rx => answer,
            () = interrupts.recv() => return Ok(Decision::Detach),
        };
        match answer {
            Ok(Ok((n, line))) if n > 0 => {
                if let Some(decision) = parse_answer(&line) {
                    return Ok(decision);
                }
            }
            // End of input, an unreadable stdin, or the reader gone: nobody can answer.
            _ => return Ok(Decision::Detach),
        }
    }
}

fn write_printed(
    printed: &Printed,
    out: &mut (dyn Write + Send),
    err: &mut (dyn Write + Send),
) -> std::io::Result<()> {
    if printed.is_empty() {
        return Ok(());
    }
    out.write_all(&printed.stdout)?;
    out.flush()?;
    err.write_all(&printed.stderr)?;
    err.flush()
}

/// ctrl-c and SIGTERM, registered once for the whole follow so that none is missed between
/// two waits.
struct Interrupts {
    #[cfg(unix)]
    signals: [Option<tokio::signal::unix::Signal>; 2],
}

// === impl Interrupts ===

impl Interrupts {
    #[cfg(unix)]
    fn new() -> Self {
        use tokio::signal::unix::{SignalKind, signal};
        // Without a handler the default disposition applies: the signal ends the process.
        Self {
            signals: [
                signal(SignalKind::interrupt()).ok(),
                signal(SignalKind::terminate()).ok(),
            ],
        }
    }

    #[cfg(not(unix))]
    fn new() -> Self {
        Self {}
    }

    /// Waits for the next interrupt. Cancel-safe.
    #[cfg(unix)]
    async fn recv(&mut self) {
        let [interrupt, terminate] = &mut self.signals;
        tokio::select! {
            Some(()) = recv_signal(interrupt) => {}
            Some(()) = recv_signal(terminate) => {}
        }
    }

    #[cfg(not(unix))]
    async fn recv(&mut self) {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(unix)]
async fn recv_signal(signal: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match signal {
        Some(signal) => signal.recv().await,
        None => std::future::pending().await,
    }
}

/// Exponential pauses from [`RESUME_BACKOFF_INITIAL`] to [`RESUME_BACKOFF_MAX`], each varied by
/// up to ±20 % so that many watchers of a restarted server do not return in step.
#[derive(Debug)]
pub(super) struct Backoff {
    next: Duration,
}

// === impl Backoff ===

impl Backoff {
    pub(super) fn new() -> Self {
        Self {
            next: RESUME_BACKOFF_INITIAL,
        }
    }

    /// The pause before the next attempt; each is twice the last, up to the maximum.
    pub(super) fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (base * 2).min(RESUME_BACKOFF_MAX);
        // A per-process random factor in [0.8, 1.2), from the standard library's hash seed.
        let random = RandomState::new().build_hasher().finish();
        #[allow(
            clippy::cast_precision_loss,
            reason = "a jitter factor needs no precision"
        )]
        let unit = (random % 1_000) as f64 / 1_000.0;
        base.mul_f64(0.8 + 0.4 * unit)
    }

    /// Back to the first pause, after an event arrived.
    pub(super) fn reset(&mut self) {
        self.next = RESUME_BACKOFF_INITIAL;
    }
}

#[cfg(test)]
mod tests;
