//! The views of commands: `cmd get`, `cmd list`, `cmd invocations`, `cmd logs` and `cmd watch`
//! print these, and the `cmd` tables read them.
//!
//! Output bytes are the user's data and may be anything: in JSON they are a string under `text`
//! when they are valid UTF-8, and lowercase hex under `data_hex` otherwise (exactly one of the
//! two is set), so nothing is lost or altered.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use serde::Serialize;

/// A command's state, derived by the server from its invocations and the operator's requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum CommandState {
    /// Nothing offered yet.
    Pending,
    /// Invocations are being offered or running.
    Running,
    /// Paused: no new invocation is offered.
    Paused,
    /// Every invocation succeeded.
    Succeeded,
    /// Every invocation is terminal and at least one did not succeed.
    Failed,
    /// Cancelled; every invocation is terminal.
    Cancelled,
    /// A state this CLI does not know (a newer server), or none.
    #[value(skip)]
    Unknown,
}

/// One agent's invocation state. `queued`, `offered` and `running` are the only non-terminal
/// states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum InvocationState {
    /// Waiting for its turn or for the agent.
    Queued,
    /// Sent to the agent, no answer yet.
    Offered,
    /// Started by the agent.
    Running,
    /// Exit code 0 (built-ins: done).
    Succeeded,
    /// Non-zero exit, a signal, or the program could not start.
    Failed,
    /// Ran past its timeout and was killed.
    #[value(alias = "timed_out")]
    TimedOut,
    /// Cancelled by an operator.
    Cancelled,
    /// Not started before its delivery deadline.
    #[value(alias = "delivery_timed_out")]
    DeliveryTimedOut,
    /// The agent's own configuration refused it.
    Rejected,
    /// Never offered (see the skip reason).
    Skipped,
    /// The agent was deleted first.
    #[value(alias = "agent_deleted")]
    AgentDeleted,
    /// The agent process died while it ran, and no result was journaled.
    #[value(alias = "agent_restarted")]
    AgentRestarted,
    /// A state this CLI does not know (a newer server), or none.
    #[value(skip)]
    Unknown,
}

/// Why an invocation was skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    /// The agent was offline at send time and offline agents were not included.
    Offline,
    /// More invocations failed than `max_errors` allows.
    ErrorBudget,
    /// A canary invocation did not succeed.
    CanaryFailed,
    /// A reason this CLI does not know (a newer server).
    Unknown,
}

/// What a command runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandKind {
    /// A program from the agent's allowlist.
    Exec,
    /// Built-in: succeeds at once.
    Noop,
    /// Built-in: takes and sends a metrics sample.
    Collect,
    /// Built-in: waits.
    Sleep,
    /// A kind this CLI does not know (a newer server), or none.
    Unknown,
}

/// A standard stream of an invocation's process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
    /// A stream this CLI does not know.
    Unknown,
}

/// An amount given as a count or as a percentage of the command's invocations. In JSON,
/// `{"count": 3}` or `{"percent": 10}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetView {
    /// A number of invocations.
    Count(u32),
    /// A percentage of the command's invocations, rounded up.
    Percent(u32),
}

/// One command.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CommandView {
    /// Command id.
    pub command_id: String,
    /// Owning org.
    pub org_id: String,
    /// What it runs.
    pub spec: CommandSpecView,
    /// The targets as given when it was sent.
    pub targets: TargetsView,
    /// Rollout budgets.
    pub rollout: RolloutView,
    /// How long each invocation may run once started.
    #[serde(with = "super::json::seconds")]
    pub timeout_seconds: Option<Duration>,
    /// Invocations not started by then end `delivery_timed_out`.
    #[serde(with = "super::json::rfc3339")]
    pub deliver_by: Option<SystemTime>,
    /// The key that makes re-sending return this command; empty when none was given.
    pub idempotency_key: String,
    /// Free text.
    pub description: String,
    /// Id of the token that sent it.
    pub sender_token_id: String,
    /// Name of the token that sent it.
    pub sender_name: String,
    /// When it was sent.
    #[serde(with = "super::json::rfc3339")]
    pub created_at: Option<SystemTime>,
    /// Its state.
    pub state: CommandState,
    /// When it became terminal.
    #[serde(with = "super::json::rfc3339")]
    pub finished_at: Option<SystemTime>,
    /// Invocations per state.
    pub counts: InvocationCountsView,
    /// Output kept per invocation (head and tail).
    pub output_limit_bytes: u64,
    /// An operator asked to cancel it.
    pub cancel_requested: bool,
}

/// What a command runs. Fields of other kinds are empty (`argv`, `env`) or `null`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CommandSpecView {
    /// The kind.
    pub kind: CommandKind,
    /// `exec`: the program and its arguments.
    pub argv: Vec<String>,
    /// `exec`: the whole environment of the process.
    pub env: BTreeMap<String, String>,
    /// `exec`: the working directory; empty means the agent's own.
    pub working_dir: String,
    /// `exec`: bytes written to the process's standard input.
    pub stdin_bytes: u64,
    /// `sleep`: how long.
    #[serde(with = "super::json::seconds")]
    pub sleep_seconds: Option<Duration>,
}

/// Which agents a command targets, as given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TargetsView {
    /// Agent ids named one by one.
    pub agent_ids: Vec<String>,
    /// Label selector; empty when none.
    pub label_selector: String,
    /// Offline agents were queued rather than skipped.
    pub include_offline: bool,
}

/// A command's rollout budgets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RolloutView {
    /// Invocations offered or running at once; `null`: all at once.
    pub max_concurrency: Option<BudgetView>,
    /// Failures tolerated before the rest is skipped; `null`: no limit.
    pub max_errors: Option<BudgetView>,
    /// Invocations that must succeed before the others are offered; 0: none.
    pub canary: u32,
}

/// How many of a command's invocations are in each state: `total`, then one count per
/// [`InvocationState`], named after it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct InvocationCountsView {
    pub total: u32,
    pub queued: u32,
    pub offered: u32,
    pub running: u32,
    pub succeeded: u32,
    pub failed: u32,
    pub timed_out: u32,
    pub cancelled: u32,
    pub delivery_timed_out: u32,
    pub rejected: u32,
    pub skipped: u32,
    pub agent_deleted: u32,
    pub agent_restarted: u32,
}

/// One agent's invocation of a command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InvocationView {
    /// Invocation id.
    pub invocation_id: String,
    /// The command.
    pub command_id: String,
    /// The agent.
    pub agent_id: String,
    /// The agent's name when the command was sent.
    pub agent_name: String,
    /// Its state.
    pub state: InvocationState,
    /// For `skipped`: why; `null` otherwise.
    pub skip_reason: Option<SkipReason>,
    /// Why it was rejected, failed or timed out; empty when there is nothing to say.
    pub reason: String,
    /// One of the canary invocations.
    pub canary: bool,
    /// The process's exit code, when it exited.
    pub exit_code: Option<i32>,
    /// The signal that ended the process, when one did.
    pub signal: Option<i32>,
    /// When it was queued.
    #[serde(with = "super::json::rfc3339")]
    pub queued_at: Option<SystemTime>,
    /// When it was offered to the agent.
    #[serde(with = "super::json::rfc3339")]
    pub offered_at: Option<SystemTime>,
    /// When the agent started it.
    #[serde(with = "super::json::rfc3339")]
    pub started_at: Option<SystemTime>,
    /// When it ended.
    #[serde(with = "super::json::rfc3339")]
    pub finished_at: Option<SystemTime>,
    /// From start to end; `null` unless both are known.
    #[serde(with = "super::json::seconds")]
    pub duration_seconds: Option<Duration>,
    /// Bytes the process wrote to standard output, kept or not.
    pub stdout_bytes: u64,
    /// Bytes the process wrote to standard error, kept or not.
    pub stderr_bytes: u64,
    /// Bytes not kept (the middle of output longer than the command's limit).
    pub dropped_bytes: u64,
}

/// Output an invocation's process wrote to one stream, as `cmd watch -o json` prints it:
/// `invocation_id`, `agent_id`, `stream`, `offset`, `length`, and the bytes as `text` or
/// `data_hex` (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputChunkView {
    /// The invocation.
    pub invocation_id: String,
    /// Its agent.
    pub agent_id: String,
    /// Which stream.
    pub stream: OutputStream,
    /// Bytes written to the stream before this chunk; a jump is output that was not kept.
    pub offset: u64,
    /// The bytes, exactly as the process wrote them.
    pub data: Vec<u8>,
}

/// What a `cmd watch` event reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandEventKind {
    /// The command (first, and whenever its state or counts change).
    Command,
    /// An invocation changed state.
    Invocation,
    /// An invocation's output.
    Output,
    /// Stored events are replayed; what follows is live.
    Synced,
    /// An event this CLI does not know (a newer server).
    Unknown,
}

/// One line of `cmd watch -o json` (and of `cmd run -o json` while it follows).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CommandEventView {
    /// Position in the command's history; 0 for `command` and `synced`.
    pub cursor: u64,
    /// What happened.
    pub kind: CommandEventKind,
    /// For `command`.
    pub command: Option<CommandView>,
    /// For `invocation`.
    pub invocation: Option<InvocationView>,
    /// For `output`.
    pub output: Option<OutputChunkView>,
}

/// The stored output of one stream of one invocation, as `cmd logs` assembles it. In JSON:
/// `written_bytes`, `gaps`, and the kept bytes as `text` or `data_hex`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamLogView {
    /// Bytes written to the stream, kept or not (the end of the last chunk).
    pub written_bytes: u64,
    /// Bytes not kept, with where each gap starts.
    pub gaps: Vec<GapView>,
    /// The kept bytes, in order, gaps closed up.
    pub data: Vec<u8>,
}

/// Output that was not kept: `length` bytes starting at `offset` of the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct GapView {
    /// Where the missing bytes start.
    pub offset: u64,
    /// How many are missing.
    pub length: u64,
}

/// `cmd logs -o json`: one agent's invocation and its stored output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InvocationLogView {
    /// The invocation, as stored when the log was read.
    pub invocation: InvocationView,
    /// Standard output.
    pub stdout: StreamLogView,
    /// Standard error.
    pub stderr: StreamLogView,
}

// === impl CommandState ===

impl CommandState {
    /// Whether the command has ended (succeeded, failed or cancelled).
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }

    /// The name used in tables: `RUNNING`, `SUCCEEDED`, …
    pub fn label(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Running => "RUNNING",
            Self::Paused => "PAUSED",
            Self::Succeeded => "SUCCEEDED",
            Self::Failed => "FAILED",
            Self::Cancelled => "CANCELLED",
            Self::Unknown => "UNKNOWN",
        }
    }
}

// === impl InvocationState ===

impl InvocationState {
    /// Whether the invocation has ended.
    pub fn is_terminal(self) -> bool {
        !matches!(
            self,
            Self::Queued | Self::Offered | Self::Running | Self::Unknown
        )
    }

    /// The name used in tables: `QUEUED`, `TIMED_OUT`, …
    pub fn label(self) -> &'static str {
        match self {
            Self::Queued => "QUEUED",
            Self::Offered => "OFFERED",
            Self::Running => "RUNNING",
            Self::Succeeded => "SUCCEEDED",
            Self::Failed => "FAILED",
            Self::TimedOut => "TIMED_OUT",
            Self::Cancelled => "CANCELLED",
            Self::DeliveryTimedOut => "DELIVERY_TIMED_OUT",
            Self::Rejected => "REJECTED",
            Self::Skipped => "SKIPPED",
            Self::AgentDeleted => "AGENT_DELETED",
            Self::AgentRestarted => "AGENT_RESTARTED",
            Self::Unknown => "UNKNOWN",
        }
    }
}

// === impl SkipReason ===

impl SkipReason {
    /// The suffix of `SKIPPED_…` in tables.
    pub fn label(self) -> &'static str {
        match self {
            Self::Offline => "OFFLINE",
            Self::ErrorBudget => "ERROR_BUDGET",
            Self::CanaryFailed => "CANARY_FAILED",
            Self::Unknown => "UNKNOWN",
        }
    }
}

// === impl CommandKind ===

impl CommandKind {
    /// The lowercase name used in tables and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Exec => "exec",
            Self::Noop => "noop",
            Self::Collect => "collect",
            Self::Sleep => "sleep",
            Self::Unknown => "unknown",
        }
    }
}

// === impl OutputStream ===

impl OutputStream {
    /// The lowercase name used in messages and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
            Self::Unknown => "unknown",
        }
    }
}

// === impl InvocationCountsView ===

impl InvocationCountsView {
    /// Invocations in a terminal state.
    pub fn finished(&self) -> u32 {
        self.succeeded
            + self.failed
            + self.timed_out
            + self.cancelled
            + self.delivery_timed_out
            + self.rejected
            + self.skipped
            + self.agent_deleted
            + self.agent_restarted
    }

    /// Invocations that ended without succeeding.
    pub fn unsuccessful(&self) -> u32 {
        self.finished() - self.succeeded
    }
}

// === impl InvocationView ===

impl InvocationView {
    /// The name shown for its agent: the agent's name, or its id when it has none.
    pub fn display_name(&self) -> &str {
        if self.agent_name.is_empty() {
            &self.agent_id
        } else {
            &self.agent_name
        }
    }

    /// The state as tables show it, with the skip reason: `SKIPPED_OFFLINE`.
    pub fn state_label(&self) -> String {
        match (self.state, self.skip_reason) {
            (InvocationState::Skipped, Some(reason)) => format!("SKIPPED_{}", reason.label()),
            (state, _) => state.label().to_owned(),
        }
    }
}

// === JSON of output bytes ===

/// Bytes as JSON carries them: `text` when valid UTF-8, `data_hex` otherwise.
#[derive(Serialize)]
struct BytesJson {
    text: Option<String>,
    data_hex: Option<String>,
}

impl BytesJson {
    fn new(bytes: &[u8]) -> Self {
        match std::str::from_utf8(bytes) {
            Ok(text) => Self {
                text: Some(text.to_owned()),
                data_hex: None,
            },
            Err(_) => Self {
                text: None,
                data_hex: Some(hex::encode(bytes)),
            },
        }
    }
}

impl Serialize for OutputChunkView {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Json<'a> {
            invocation_id: &'a str,
            agent_id: &'a str,
            stream: OutputStream,
            offset: u64,
            length: u64,
            #[serde(flatten)]
            data: BytesJson,
        }
        Json {
            invocation_id: &self.invocation_id,
            agent_id: &self.agent_id,
            stream: self.stream,
            offset: self.offset,
            length: self.data.len() as u64,
            data: BytesJson::new(&self.data),
        }
        .serialize(serializer)
    }
}

impl Serialize for StreamLogView {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Json<'a> {
            written_bytes: u64,
            gaps: &'a [GapView],
            #[serde(flatten)]
            data: BytesJson,
        }
        Json {
            written_bytes: self.written_bytes,
            gaps: &self.gaps,
            data: BytesJson::new(&self.data),
        }
        .serialize(serializer)
    }
}
