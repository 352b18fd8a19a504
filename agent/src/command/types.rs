//! The command subsystem's domain types: what the server offers, what the agent reports.
//!
//! These are the agent's own types; `crate::convert` is the only place that maps them to and
//! from `tether.v1`. An [`Offer`] has been validated on the way in (a malformed one arrives as
//! an [`InvalidOffer`] and is rejected with its reason), so the rest of the subsystem never
//! checks wire-level details again.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

/// The server asks the agent to run one invocation.
#[derive(Debug, Clone, PartialEq)]
pub struct Offer {
    /// Never empty.
    pub invocation_id: String,
    pub command_id: String,
    pub spec: CommandSpec,
    /// Run time allowed once started. `None` only for `noop`, which needs none.
    pub timeout: Option<Duration>,
    /// Server time after which the invocation must not start.
    pub deliver_by: Option<SystemTime>,
    /// Output the server keeps (0: the agent's own limit).
    pub output_limit_bytes: u64,
    /// Between SIGTERM and SIGKILL (`None`: the agent's default).
    pub kill_grace: Option<Duration>,
}

/// An offer the agent cannot even read: it is rejected with `reason` (or, without an id to
/// report on, dropped with a warning).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidOffer {
    pub invocation_id: String,
    pub command_id: String,
    pub reason: String,
}

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandSpec {
    /// A program from the allowlist.
    Exec(ExecSpec),
    /// Built-in: succeeds at once.
    Noop,
    /// Built-in: takes a metrics sample now.
    Collect,
    /// Built-in: waits this long.
    Sleep(Duration),
}

/// A program, its arguments, environment, working directory and standard input.
#[derive(Clone, PartialEq, Eq)]
pub struct ExecSpec {
    /// Never empty; `argv[0]` is the program.
    pub argv: Vec<String>,
    /// The whole environment of the process (the agent's own is not inherited).
    pub env: BTreeMap<String, String>,
    /// `None`: the agent's working directory.
    pub working_dir: Option<PathBuf>,
    /// Written to standard input, which is then closed.
    pub stdin: Vec<u8>,
}

/// How an invocation ended, from the agent's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Terminal {
    Succeeded,
    Failed,
    TimedOut,
    Cancelled,
    DeliveryTimedOut,
    Rejected,
    AgentRestarted,
}

/// A terminal state with its detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub state: Terminal,
    /// Why it was rejected or failed, or what ended it; empty for a plain success.
    pub reason: String,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
}

/// Which output stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutputStream {
    Stdout,
    Stderr,
}

/// Bytes of one stream starting at `offset` (bytes written to that stream before them). A jump
/// in offset between consecutive chunks of a stream is output that was not kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputChunk {
    pub stream: OutputStream,
    pub offset: u64,
    pub data: Vec<u8>,
}

/// What an update says besides its output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Output only; the state is unchanged.
    Output,
    /// The invocation started.
    Running,
    /// The invocation ended.
    Finished(Outcome),
}

/// One numbered step of one invocation, as reported to the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    pub invocation_id: String,
    /// 1, 2, 3, … per invocation.
    pub seq: u64,
    pub step: Step,
    pub output: Vec<OutputChunk>,
    /// Agent time of the step, or when the output was taken.
    pub time: SystemTime,
}

// === impl ExecSpec ===

impl fmt::Debug for ExecSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Environment values and standard input may hold secrets: show only their shape.
        f.debug_struct("ExecSpec")
            .field("argv", &self.argv)
            .field("env_keys", &self.env.keys().collect::<Vec<_>>())
            .field("working_dir", &self.working_dir)
            .field("stdin_bytes", &self.stdin.len())
            .finish()
    }
}

// === impl Terminal ===

impl Terminal {
    /// The journal's name for the state (stable: it is stored on disk).
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::TimedOut => "timed_out",
            Self::Cancelled => "cancelled",
            Self::DeliveryTimedOut => "delivery_timed_out",
            Self::Rejected => "rejected",
            Self::AgentRestarted => "agent_restarted",
        }
    }

    /// The inverse of [`Terminal::as_str`].
    pub(crate) fn parse(name: &str) -> Option<Self> {
        [
            Self::Succeeded,
            Self::Failed,
            Self::TimedOut,
            Self::Cancelled,
            Self::DeliveryTimedOut,
            Self::Rejected,
            Self::AgentRestarted,
        ]
        .into_iter()
        .find(|state| state.as_str() == name)
    }
}

// === impl Outcome ===

impl Outcome {
    /// A terminal state with a reason and no exit status.
    pub fn new(state: Terminal, reason: impl Into<String>) -> Self {
        Self {
            state,
            reason: reason.into(),
            exit_code: None,
            signal: None,
        }
    }
}

// === impl Update ===

impl Update {
    /// Bytes of output carried.
    pub(crate) fn output_bytes(&self) -> usize {
        self.output.iter().map(|chunk| chunk.data.len()).sum()
    }

    /// A generous estimate of the encoded size, used to cap report messages.
    pub(crate) fn encoded_size_estimate(&self) -> usize {
        let reason = match &self.step {
            Step::Finished(outcome) => outcome.reason.len(),
            Step::Output | Step::Running => 0,
        };
        64 + self.invocation_id.len() + reason + self.output_bytes() + 24 * self.output.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_names_round_trip() {
        for state in [
            Terminal::Succeeded,
            Terminal::Failed,
            Terminal::TimedOut,
            Terminal::Cancelled,
            Terminal::DeliveryTimedOut,
            Terminal::Rejected,
            Terminal::AgentRestarted,
        ] {
            assert_eq!(Terminal::parse(state.as_str()), Some(state));
        }
        assert_eq!(Terminal::parse("running"), None);
    }

    #[test]
    fn exec_spec_debug_hides_env_values_and_stdin() {
        let spec = ExecSpec {
            argv: vec!["/bin/echo".into()],
            env: BTreeMap::from([("TOKEN".to_owned(), "s3cret".to_owned())]),
            working_dir: None,
            stdin: b"password".to_vec(),
        };
        let debug = format!("{spec:?}");
        assert!(debug.contains("TOKEN"));
        assert!(!debug.contains("s3cret"));
        assert!(!debug.contains("password"));
    }
}
