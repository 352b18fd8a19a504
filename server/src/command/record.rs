//! The records of commands: what the store keeps, what the engine holds while a command runs,
//! and what an operator asks for. No proto, no store.
//!
//! A command is one [`CommandRecord`] plus one [`InvocationRecord`] per target agent (numbered
//! `0..n` in the order of their agent ids), and a history of [`CommandEvent`]s numbered per
//! command by a *cursor* (1, 2, 3, …): every state an invocation reaches (its first, QUEUED or
//! SKIPPED, included) and every output chunk kept. Ids carry their order: a command id starts
//! with the hex milliseconds of its creation, so ids sort by age, and an invocation id is its
//! command's id and its number, so an invocation leads to its command without an index.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::command::model::{CommandState, InvocationState, RolloutPolicy, SkipReason};
use crate::domain::{AgentId, CommandId, OrgId, Time, TokenId};

/// Hex digits of the creation time (milliseconds since the Unix epoch) that start a command id:
/// 12 cover the years 1970 to 10889.
pub const ID_TIME_DIGITS: usize = 12;

/// What to run on each target.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandSpec {
    /// A program from the agent's allowlist.
    Exec(ExecSpec),
    /// Built-in: succeeds at once.
    Noop,
    /// Built-in: takes and sends a metrics sample now.
    Collect,
    /// Built-in: waits this long.
    Sleep(Duration),
}

/// A program, its arguments, environment, working directory and standard input, checked
/// against the bounds of `tether_proto::command` at the edge.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecSpec {
    /// Never empty; `argv[0]` is an absolute path.
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// Empty: the agent's own working directory.
    pub working_dir: String,
    pub stdin: Vec<u8>,
}

/// Which agents a command targets, as the operator gave them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Targets {
    pub agent_ids: Vec<AgentId>,
    /// Empty: none (agent ids only).
    pub selector: String,
    pub include_offline: bool,
}

/// How many of a command's invocations are in each state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
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

/// A command as stored. `state`, `counts` and `last_cursor` are rewritten with every change of
/// its invocations, in the same commit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CommandRecord {
    pub id: CommandId,
    pub org: OrgId,
    pub spec: Arc<CommandSpec>,
    pub targets: Targets,
    pub rollout: RolloutPolicy,
    /// Run time allowed once started.
    pub timeout: Duration,
    /// Invocations not started by then end DELIVERY_TIMED_OUT.
    pub deliver_by: Time,
    /// Between SIGTERM and SIGKILL, as offered to agents.
    pub kill_grace: Duration,
    /// Empty: none.
    pub idempotency_key: String,
    pub description: String,
    pub sender_token: TokenId,
    pub sender_name: String,
    pub created_at: Time,
    /// Output kept per invocation (head and tail).
    pub output_limit: u64,
    pub n_invocations: u32,
    /// Invocations not skipped when the command was sent: what the budgets resolve against.
    pub runnable: u32,
    pub paused: bool,
    pub cancel_requested: bool,
    /// Whether any invocation was ever offered (the command is no longer PENDING).
    pub offered_any: bool,
    pub state: CommandState,
    pub counts: Counts,
    /// Set once every invocation is terminal.
    pub finished_at: Option<Time>,
    /// Cursor of the command's newest event.
    pub last_cursor: u64,
}

/// One agent's invocation of a command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvocationRecord {
    /// Its number within the command.
    pub n: u32,
    pub agent: AgentId,
    /// The agent's name when the command was sent.
    pub agent_name: String,
    pub canary: bool,
    pub state: InvocationState,
    pub skip_reason: Option<SkipReason>,
    /// Why it was rejected, failed or timed out (empty: nothing to say).
    pub reason: String,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// When the server recorded each step.
    pub queued_at: Time,
    pub offered_at: Option<Time>,
    pub started_at: Option<Time>,
    pub finished_at: Option<Time>,
    /// Bytes the process wrote to each stream, whether kept or not.
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
    /// Output bytes kept at the start (the head) and at the end (the tail).
    pub head_bytes: u64,
    pub tail_bytes: u64,
    /// Highest `CommandUpdate.seq` of the agent stored for this invocation.
    pub last_seq: u64,
}

/// One numbered step of a command's history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandEvent {
    /// An invocation reached this state (the record as it was then).
    Invocation(InvocationRecord),
    /// Output of an invocation, kept.
    Output(OutputEvent),
}

/// Bytes one invocation's process wrote to one stream, from `offset` on.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputEvent {
    /// The invocation's number.
    pub n: u32,
    pub stream: OutputStream,
    /// Bytes written to this stream before these.
    pub offset: u64,
    pub data: Vec<u8>,
    /// Part of the tail: may be dropped when newer output arrives (the head never is).
    pub tail: bool,
}

/// Which output stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum OutputStream {
    Stdout,
    Stderr,
}

/// A command as an operator asks for it, checked at the edge.
#[derive(Clone, Debug, PartialEq)]
pub struct NewCommand {
    pub spec: CommandSpec,
    pub targets: Targets,
    pub rollout: RolloutPolicy,
    /// `None`: the server's default.
    pub timeout: Option<Duration>,
    /// `None`: the server's default.
    pub deliver_within: Option<Duration>,
    pub idempotency_key: String,
    pub description: String,
    /// 0: the server's default.
    pub output_limit: u64,
}

/// What an agent is asked to run: one invocation, with its command's settings.
#[derive(Clone, Debug, PartialEq)]
pub struct Offer {
    pub invocation_id: String,
    pub command_id: CommandId,
    pub spec: Arc<CommandSpec>,
    pub timeout: Duration,
    pub deliver_by: Time,
    pub output_limit: u64,
    pub kill_grace: Duration,
}

/// One step of one invocation, as its agent reported it (checked at the edge).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentUpdate {
    pub invocation_id: String,
    /// At least 1.
    pub seq: u64,
    pub step: UpdateStep,
    /// Why it was rejected or failed, or what ended it (cleaned and bounded).
    pub reason: String,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub output: Vec<Chunk>,
}

/// What an update says besides its output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpdateStep {
    /// Output only.
    Output,
    Running,
    /// A terminal state an agent may report.
    Finished(InvocationState),
}

/// Output of one stream from `offset` on.
#[derive(Clone, PartialEq, Eq)]
pub struct Chunk {
    pub stream: OutputStream,
    pub offset: u64,
    pub data: Vec<u8>,
}

impl fmt::Debug for Chunk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Chunk")
            .field("stream", &self.stream)
            .field("offset", &self.offset)
            .field("bytes", &self.data.len())
            .finish()
    }
}

/// What `ListCommands` asks for.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CommandQuery {
    /// Empty: any state.
    pub states: Vec<CommandState>,
    pub sender: Option<String>,
    /// Created at or after.
    pub since: Option<SystemTime>,
    /// Created before.
    pub until: Option<SystemTime>,
    /// Only commands older than this one (the previous page's last).
    pub before: Option<CommandId>,
    pub page_size: usize,
}

/// One page of `ListCommands`, newest first.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CommandPage {
    pub commands: Vec<CommandRecord>,
    /// Where the next page starts (older commands may follow); `None` at the end.
    pub next_before: Option<CommandId>,
}

/// What `ListInvocations` asks for.
#[derive(Clone, Debug, PartialEq)]
pub struct InvocationQuery {
    pub command: CommandId,
    /// Empty: any state.
    pub states: Vec<InvocationState>,
    /// Only invocations numbered after this one (the previous page's last).
    pub after: Option<u32>,
    pub page_size: usize,
}

/// One page of `ListInvocations`, by number (the order of agent ids).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct InvocationPage {
    pub invocations: Vec<InvocationRecord>,
    pub next_after: Option<u32>,
}

// === ids ===

/// A new command id for a command created at `now`: its creation time then 32 random bits, all
/// lowercase hex, so that ids sort by creation time.
pub fn new_command_id(now: SystemTime) -> CommandId {
    let millis = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let millis = millis.min((1 << (4 * ID_TIME_DIGITS)) - 1);
    CommandId::new(format!(
        "{millis:0width$x}{:08x}",
        rand::random::<u32>(),
        width = ID_TIME_DIGITS
    ))
}

/// The creation time a command id starts with (milliseconds since the Unix epoch), or `None`
/// for an id not made by [`new_command_id`].
pub fn id_millis(id: &str) -> Option<u64> {
    let digits = id.get(..ID_TIME_DIGITS)?;
    u64::from_str_radix(digits, 16).ok()
}

/// The smallest command id of a command created at or after `time` (a bound for scans by
/// creation time).
pub fn id_floor(time: SystemTime) -> String {
    let millis = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    format!(
        "{:0width$x}",
        millis.min((1 << (4 * ID_TIME_DIGITS)) - 1),
        width = ID_TIME_DIGITS
    )
}

/// The id of invocation `n` of `command`.
pub fn invocation_id(command: &CommandId, n: u32) -> String {
    format!("{command}-{n}")
}

/// The command and number an invocation id names, or `None` for an id no server made.
pub fn parse_invocation_id(id: &str) -> Option<(CommandId, u32)> {
    let (command, n) = id.rsplit_once('-')?;
    if !crate::domain::is_valid_id(command) || command.contains('-') {
        return None;
    }
    if n.is_empty() || (n.len() > 1 && n.starts_with('0')) {
        return None;
    }
    let n = n.parse().ok()?;
    Some((CommandId::new(command), n))
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

impl fmt::Debug for OutputEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutputEvent")
            .field("n", &self.n)
            .field("stream", &self.stream)
            .field("offset", &self.offset)
            .field("bytes", &self.data.len())
            .field("tail", &self.tail)
            .finish()
    }
}

// === impl Counts ===

impl Counts {
    /// Counts one more (`up`) or one fewer invocation in `state`.
    pub fn count(&mut self, state: InvocationState, up: bool) {
        let slot = match state {
            InvocationState::Queued => &mut self.queued,
            InvocationState::Offered => &mut self.offered,
            InvocationState::Running => &mut self.running,
            InvocationState::Succeeded => &mut self.succeeded,
            InvocationState::Failed => &mut self.failed,
            InvocationState::TimedOut => &mut self.timed_out,
            InvocationState::Cancelled => &mut self.cancelled,
            InvocationState::DeliveryTimedOut => &mut self.delivery_timed_out,
            InvocationState::Rejected => &mut self.rejected,
            InvocationState::Skipped => &mut self.skipped,
            InvocationState::AgentDeleted => &mut self.agent_deleted,
            InvocationState::AgentRestarted => &mut self.agent_restarted,
        };
        *slot = if up {
            slot.saturating_add(1)
        } else {
            slot.saturating_sub(1)
        };
    }

    /// The counts of `states`.
    pub fn of(states: impl IntoIterator<Item = InvocationState>) -> Self {
        let mut counts = Self::default();
        for state in states {
            counts.total += 1;
            counts.count(state, true);
        }
        counts
    }
}

// === impl InvocationRecord ===

impl InvocationRecord {
    /// Output bytes written but not kept: the middle of an output longer than the limit.
    pub fn dropped_bytes(&self) -> u64 {
        (self.stdout_bytes.saturating_add(self.stderr_bytes))
            .saturating_sub(self.head_bytes.saturating_add(self.tail_bytes))
    }

    /// How long the process ran, once it ended.
    pub fn duration(&self) -> Option<Duration> {
        let (start, end) = (self.started_at?, self.finished_at?);
        end.get().duration_since(start.get()).ok()
    }
}

// === impl CommandRecord ===

impl CommandRecord {
    pub fn is_finished(&self) -> bool {
        self.finished_at.is_some()
    }

    /// The offer of invocation `n` of this command.
    pub fn offer(&self, n: u32) -> Offer {
        Offer {
            invocation_id: invocation_id(&self.id, n),
            command_id: self.id.clone(),
            spec: self.spec.clone(),
            timeout: self.timeout,
            deliver_by: self.deliver_by,
            output_limit: self.output_limit,
            kill_grace: self.kill_grace,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_ids_sort_by_creation_time_and_carry_it() {
        let t = |ms: u64| SystemTime::UNIX_EPOCH + Duration::from_millis(ms);
        let (a, b) = (
            new_command_id(t(1_700_000_000_000)),
            new_command_id(t(1_700_000_000_001)),
        );
        assert!(a < b, "{a} < {b}");
        assert!(crate::domain::is_valid_id(a.as_str()));
        assert_eq!(a.as_str().len(), ID_TIME_DIGITS + 8);
        assert_eq!(id_millis(a.as_str()), Some(1_700_000_000_000));
        assert!(id_floor(t(1_700_000_000_000)).as_str() <= a.as_str());
        assert!(id_floor(t(1_700_000_000_001)).as_str() > a.as_str());
    }

    #[test]
    fn invocation_ids_name_their_command_and_number() {
        let command = new_command_id(SystemTime::now());
        let id = invocation_id(&command, 42);
        assert!(crate::domain::is_valid_id(&id));
        assert_eq!(parse_invocation_id(&id), Some((command.clone(), 42)));
        for bad in [
            "",
            "-1",
            "abc",
            "abc-",
            "abc-01",
            "abc--1",
            "a-b-1",
            "ABC-1",
            "abc-99999999999",
        ] {
            assert_eq!(parse_invocation_id(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn counts_follow_states_and_dropped_bytes_never_underflow() {
        let mut counts = Counts::of([InvocationState::Queued, InvocationState::Queued]);
        assert_eq!((counts.total, counts.queued), (2, 2));
        counts.count(InvocationState::Queued, false);
        counts.count(InvocationState::Running, true);
        assert_eq!((counts.queued, counts.running), (1, 1));
        let record = InvocationRecord {
            n: 0,
            agent: AgentId::new("a"),
            agent_name: String::new(),
            canary: false,
            state: InvocationState::Running,
            skip_reason: None,
            reason: String::new(),
            exit_code: None,
            signal: None,
            queued_at: Time::EPOCH,
            offered_at: None,
            started_at: None,
            finished_at: None,
            stdout_bytes: 10,
            stderr_bytes: 5,
            head_bytes: 8,
            tail_bytes: 4,
            last_seq: 0,
        };
        assert_eq!(record.dropped_bytes(), 3);
        let kept_more = InvocationRecord {
            head_bytes: 100,
            ..record
        };
        assert_eq!(kept_more.dropped_bytes(), 0);
    }
}
