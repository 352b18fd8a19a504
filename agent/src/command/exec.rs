//! Runs one `exec` invocation: a program in its own process group, never through a shell.
//!
//! The process gets exactly the command's environment (the agent's own is cleared), the
//! command's working directory, and its standard input (written, then closed; nothing when
//! empty). Standard output and error are read concurrently, as they come, and handed to a sink
//! that never blocks (see `output.rs`), so the child is never stalled on a full pipe.
//!
//! Stopping (timeout, cancel, agent shutdown) signals the whole process group: SIGTERM, then,
//! once the group is empty or the grace is over, SIGKILL to whatever is left, so a grandchild
//! that ignores SIGTERM dies too. A process that ends by itself leaves its group alone: output
//! is read until it closes, or for [`OUTPUT_DRAIN`] at most when a background process keeps it
//! open.
//!
//! Signals go through `nix::sys::signal::killpg` (the workspace forbids `unsafe`).

use std::io;
use std::os::unix::process::ExitStatusExt as _;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::process::{Child, ChildStdin};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::command::types::{ExecSpec, Outcome, OutputStream, Terminal};

/// How long output is still read after the process ended, when something else holds it open.
pub const OUTPUT_DRAIN: Duration = Duration::from_secs(1);
/// Grace between SIGTERM and SIGKILL when the agent itself is stopping.
pub const SHUTDOWN_KILL_GRACE: Duration = Duration::from_secs(2);
/// How often a stopping process group is checked for being empty.
const GROUP_POLL: Duration = Duration::from_millis(20);
/// Bytes read from a pipe at once.
const READ_CHUNK: usize = 16 << 10;

/// Time limits of one run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ExecLimits {
    pub(crate) timeout: Duration,
    pub(crate) kill_grace: Duration,
}

/// What can stop a run early.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StopSignals<'a> {
    /// The server cancelled this invocation.
    pub(crate) cancel: &'a CancellationToken,
    /// The agent is stopping.
    pub(crate) stopping: &'a CancellationToken,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RunEnd {
    Finished(Outcome),
    /// The agent stopped and killed the process: no result is journaled, so the invocation ends
    /// `AGENT_RESTARTED` when the agent starts again.
    Abandoned,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopReason {
    Timeout,
    Cancel,
    Shutdown,
}

/// Runs `spec`. Calls `on_started` once the process exists and `sink` with every piece of
/// output. A program that cannot be started is `FAILED` with the OS error.
pub(crate) async fn run(
    spec: &ExecSpec,
    limits: ExecLimits,
    signals: StopSignals<'_>,
    on_started: impl FnOnce(),
    sink: &(dyn Fn(OutputStream, &[u8]) + Sync),
) -> RunEnd {
    let Some((program, args)) = spec.argv.split_first() else {
        return RunEnd::Finished(Outcome::new(Terminal::Failed, "argv is empty"));
    };
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .env_clear()
        .envs(&spec.env)
        .process_group(0)
        .kill_on_drop(true)
        .stdin(if spec.stdin.is_empty() {
            Stdio::null()
        } else {
            Stdio::piped()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(dir) = &spec.working_dir {
        command.current_dir(dir);
    }
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(err) => {
            return RunEnd::Finished(Outcome::new(
                Terminal::Failed,
                format!("cannot start {program}: {err}"),
            ));
        }
    };
    // The child leads its own group: its pid is the group id.
    let group = child
        .id()
        .and_then(|pid| i32::try_from(pid).ok())
        .map(Pid::from_raw);
    on_started();

    let (stdin, stdout, stderr) = (child.stdin.take(), child.stdout.take(), child.stderr.take());
    let io = async {
        tokio::join!(
            write_stdin(stdin, &spec.stdin),
            read_output(stdout, OutputStream::Stdout, sink),
            read_output(stderr, OutputStream::Stderr, sink),
        );
    };
    tokio::pin!(io);
    let mut io_done = false;
    let (status, stopped) = {
        let wait = wait_or_stop(&mut child, group, limits, signals);
        tokio::pin!(wait);
        loop {
            tokio::select! {
                ended = &mut wait => break ended,
                () = &mut io, if !io_done => io_done = true,
            }
        }
    };
    if !io_done && tokio::time::timeout(OUTPUT_DRAIN, &mut io).await.is_err() {
        debug!(%program, "output still open after the process ended; stopped reading it");
    }
    end(program, &status, stopped, limits)
}

/// Waits for the process, or stops its group on timeout, cancel or shutdown.
async fn wait_or_stop(
    child: &mut Child,
    group: Option<Pid>,
    limits: ExecLimits,
    signals: StopSignals<'_>,
) -> (io::Result<ExitStatus>, Option<StopReason>) {
    let reason = tokio::select! {
        status = child.wait() => return (status, None),
        () = tokio::time::sleep(limits.timeout) => StopReason::Timeout,
        () = signals.cancel.cancelled() => StopReason::Cancel,
        () = signals.stopping.cancelled() => StopReason::Shutdown,
    };
    let grace = match reason {
        StopReason::Shutdown => limits.kill_grace.min(SHUTDOWN_KILL_GRACE),
        StopReason::Timeout | StopReason::Cancel => limits.kill_grace,
    };
    (stop_group(child, group, grace).await, Some(reason))
}

/// SIGTERM to the group; SIGKILL to what is left once the leader and the rest of the group are
/// gone or `grace` is over. Returns the leader's exit status.
async fn stop_group(
    child: &mut Child,
    group: Option<Pid>,
    grace: Duration,
) -> io::Result<ExitStatus> {
    let Some(group) = group else {
        // No pid: the process was already reaped.
        child.start_kill()?;
        return child.wait().await;
    };
    signal_group(group, Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    let status = tokio::time::timeout_at(deadline, child.wait()).await.ok();
    // The leader is gone or out of time; other members of its group may still be there.
    while status.is_some() && Instant::now() < deadline && group_exists(group) {
        tokio::time::sleep(GROUP_POLL).await;
    }
    if group_exists(group) {
        signal_group(group, Signal::SIGKILL);
    }
    match status {
        Some(status) => status,
        None => child.wait().await,
    }
}

fn signal_group(group: Pid, signal: Signal) {
    match killpg(group, signal) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(err) => warn!(%group, ?signal, "failed to signal a command's process group: {err}"),
    }
}

fn group_exists(group: Pid) -> bool {
    // Signal `None` only checks; a group of zombies still exists until they are reaped.
    !matches!(killpg(group, None), Err(Errno::ESRCH))
}

async fn write_stdin(stdin: Option<ChildStdin>, data: &[u8]) {
    let Some(mut stdin) = stdin else {
        return;
    };
    match stdin.write_all(data).await {
        Ok(()) => {}
        // The process closed its input or ended before reading everything: its choice.
        Err(err) if err.kind() == io::ErrorKind::BrokenPipe => {}
        Err(err) => debug!("failed to write a command's standard input: {err}"),
    }
    // Dropping `stdin` closes the pipe: the process sees end of input.
}

async fn read_output(
    pipe: Option<impl AsyncRead + Unpin>,
    stream: OutputStream,
    sink: &(dyn Fn(OutputStream, &[u8]) + Sync),
) {
    let Some(mut pipe) = pipe else {
        return;
    };
    let mut buf = vec![0; READ_CHUNK];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) => return,
            Ok(n) => sink(stream, &buf[..n]),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => {
                debug!(?stream, "failed to read a command's output: {err}");
                return;
            }
        }
    }
}

/// The outcome of a run from the leader's status and why it was stopped.
fn end(
    program: &str,
    status: &io::Result<ExitStatus>,
    stopped: Option<StopReason>,
    limits: ExecLimits,
) -> RunEnd {
    let (exit_code, signal, how) = match status {
        Ok(status) => (status.code(), status.signal(), describe(*status)),
        Err(err) => (None, None, format!("its status is unknown: {err}")),
    };
    let (state, reason) = match stopped {
        None => match status {
            Ok(status) if status.success() => (Terminal::Succeeded, String::new()),
            Ok(_) => (Terminal::Failed, format!("{program} {how}")),
            Err(err) => (
                Terminal::Failed,
                format!("cannot wait for {program}: {err}"),
            ),
        },
        Some(StopReason::Timeout) => (
            Terminal::TimedOut,
            format!(
                "ran past its timeout of {}; its process group was stopped ({how})",
                humantime::format_duration(limits.timeout)
            ),
        ),
        Some(StopReason::Cancel) => (
            Terminal::Cancelled,
            format!("cancelled; its process group was stopped ({how})"),
        ),
        Some(StopReason::Shutdown) => return RunEnd::Abandoned,
    };
    RunEnd::Finished(Outcome {
        state,
        reason,
        exit_code,
        signal,
    })
}

fn describe(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exited with code {code}");
    }
    if let Some(signal) = status.signal() {
        return match Signal::try_from(signal) {
            Ok(name) => format!("was killed by signal {signal} ({name})"),
            Err(_) => format!("was killed by signal {signal}"),
        };
    }
    "ended without an exit code or signal".to_owned()
}
