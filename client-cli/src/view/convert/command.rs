//! Conversions of `CommandService` answers into the command views, and of the `--state` flags
//! and budgets into wire values. Same rules as the parent: exhaustive destructuring, unknown
//! enum values degrade to `Unknown`.

use std::collections::BTreeMap;

use tether_proto as pb;

use super::{duration, time};
use crate::view::{
    BudgetView, CommandEventKind, CommandEventView, CommandKind, CommandSpecView, CommandState,
    CommandView, InvocationCountsView, InvocationState, InvocationView, OutputChunkView,
    OutputStream, RolloutView, SkipReason, TargetsView,
};

impl CommandState {
    /// The wire value, for request filters.
    pub fn to_pb(self) -> pb::CommandState {
        use pb::CommandState as S;
        match self {
            Self::Pending => S::Pending,
            Self::Running => S::Running,
            Self::Paused => S::Paused,
            Self::Succeeded => S::Succeeded,
            Self::Failed => S::Failed,
            Self::Cancelled => S::Cancelled,
            Self::Unknown => S::Unspecified,
        }
    }

    /// Decodes a wire value; unknown values become [`CommandState::Unknown`].
    pub fn from_pb(value: i32) -> Self {
        use pb::CommandState as S;
        match S::try_from(value) {
            Ok(S::Pending) => Self::Pending,
            Ok(S::Running) => Self::Running,
            Ok(S::Paused) => Self::Paused,
            Ok(S::Succeeded) => Self::Succeeded,
            Ok(S::Failed) => Self::Failed,
            Ok(S::Cancelled) => Self::Cancelled,
            Ok(S::Unspecified) | Err(_) => Self::Unknown,
        }
    }
}

impl InvocationState {
    /// The wire value, for request filters.
    pub fn to_pb(self) -> pb::InvocationState {
        use pb::InvocationState as S;
        match self {
            Self::Queued => S::Queued,
            Self::Offered => S::Offered,
            Self::Running => S::Running,
            Self::Succeeded => S::Succeeded,
            Self::Failed => S::Failed,
            Self::TimedOut => S::TimedOut,
            Self::Cancelled => S::Cancelled,
            Self::DeliveryTimedOut => S::DeliveryTimedOut,
            Self::Rejected => S::Rejected,
            Self::Skipped => S::Skipped,
            Self::AgentDeleted => S::AgentDeleted,
            Self::AgentRestarted => S::AgentRestarted,
            Self::Unknown => S::Unspecified,
        }
    }

    /// Decodes a wire value; unknown values become [`InvocationState::Unknown`].
    pub fn from_pb(value: i32) -> Self {
        use pb::InvocationState as S;
        match S::try_from(value) {
            Ok(S::Queued) => Self::Queued,
            Ok(S::Offered) => Self::Offered,
            Ok(S::Running) => Self::Running,
            Ok(S::Succeeded) => Self::Succeeded,
            Ok(S::Failed) => Self::Failed,
            Ok(S::TimedOut) => Self::TimedOut,
            Ok(S::Cancelled) => Self::Cancelled,
            Ok(S::DeliveryTimedOut) => Self::DeliveryTimedOut,
            Ok(S::Rejected) => Self::Rejected,
            Ok(S::Skipped) => Self::Skipped,
            Ok(S::AgentDeleted) => Self::AgentDeleted,
            Ok(S::AgentRestarted) => Self::AgentRestarted,
            Ok(S::Unspecified) | Err(_) => Self::Unknown,
        }
    }
}

impl SkipReason {
    /// Decodes a wire value; `None` for `SKIP_REASON_UNSPECIFIED`, [`SkipReason::Unknown`] for
    /// values this CLI does not know.
    pub fn from_pb(value: i32) -> Option<Self> {
        use pb::SkipReason as R;
        match R::try_from(value) {
            Ok(R::Unspecified) => None,
            Ok(R::Offline) => Some(Self::Offline),
            Ok(R::ErrorBudget) => Some(Self::ErrorBudget),
            Ok(R::CanaryFailed) => Some(Self::CanaryFailed),
            Err(_) => Some(Self::Unknown),
        }
    }
}

impl OutputStream {
    /// Decodes a wire value; unknown values become [`OutputStream::Unknown`].
    pub fn from_pb(value: i32) -> Self {
        match pb::OutputStream::try_from(value) {
            Ok(pb::OutputStream::Stdout) => Self::Stdout,
            Ok(pb::OutputStream::Stderr) => Self::Stderr,
            Ok(pb::OutputStream::Unspecified) | Err(_) => Self::Unknown,
        }
    }
}

impl BudgetView {
    /// The wire value, for `SendCommand`.
    pub fn to_pb(self) -> pb::Budget {
        pb::Budget {
            value: Some(match self {
                Self::Count(n) => pb::budget::Value::Count(n),
                Self::Percent(p) => pb::budget::Value::Percent(p),
            }),
        }
    }

    /// Decodes a wire budget; `None` when it is absent or empty (no limit).
    pub fn from_pb(budget: Option<pb::Budget>) -> Option<Self> {
        let pb::Budget { value } = budget?;
        match value? {
            pb::budget::Value::Count(n) => Some(Self::Count(n)),
            pb::budget::Value::Percent(p) => Some(Self::Percent(p)),
        }
    }
}

impl From<pb::Command> for CommandView {
    fn from(command: pb::Command) -> Self {
        let pb::Command {
            command_id,
            org_id,
            spec,
            targets,
            rollout,
            timeout,
            deliver_by,
            idempotency_key,
            description,
            sender_token_id,
            sender_name,
            created_at,
            state,
            finished_at,
            counts,
            output_limit_bytes,
            cancel_requested,
        } = command;
        Self {
            command_id,
            org_id,
            spec: CommandSpecView::from(spec.unwrap_or_default()),
            targets: targets.unwrap_or_default().into(),
            rollout: rollout.unwrap_or_default().into(),
            timeout_seconds: duration(timeout),
            deliver_by: time(deliver_by),
            idempotency_key,
            description,
            sender_token_id,
            sender_name,
            created_at: time(created_at),
            state: CommandState::from_pb(state),
            finished_at: time(finished_at),
            counts: counts.unwrap_or_default().into(),
            output_limit_bytes,
            cancel_requested,
        }
    }
}

impl From<pb::CommandSpec> for CommandSpecView {
    fn from(spec: pb::CommandSpec) -> Self {
        use pb::command_spec::Kind;
        let pb::CommandSpec { kind } = spec;
        let mut view = Self {
            kind: CommandKind::Unknown,
            argv: Vec::new(),
            env: BTreeMap::new(),
            working_dir: String::new(),
            stdin_bytes: 0,
            sleep_seconds: None,
        };
        match kind {
            Some(Kind::Exec(pb::ExecSpec {
                argv,
                env,
                working_dir,
                stdin,
            })) => {
                view.kind = CommandKind::Exec;
                view.argv = argv;
                view.env = env.into_iter().collect();
                view.working_dir = working_dir;
                view.stdin_bytes = stdin.len() as u64;
            }
            Some(Kind::Noop(pb::NoopSpec {})) => view.kind = CommandKind::Noop,
            Some(Kind::Collect(pb::CollectSpec {})) => view.kind = CommandKind::Collect,
            Some(Kind::Sleep(pb::SleepSpec { duration: d })) => {
                view.kind = CommandKind::Sleep;
                view.sleep_seconds = duration(d);
            }
            None => {}
        }
        view
    }
}

impl From<pb::CommandTargets> for TargetsView {
    fn from(targets: pb::CommandTargets) -> Self {
        let pb::CommandTargets {
            agent_ids,
            label_selector,
            include_offline,
        } = targets;
        Self {
            agent_ids,
            label_selector,
            include_offline,
        }
    }
}

impl From<pb::RolloutPolicy> for RolloutView {
    fn from(rollout: pb::RolloutPolicy) -> Self {
        let pb::RolloutPolicy {
            max_concurrency,
            max_errors,
            canary,
        } = rollout;
        Self {
            max_concurrency: BudgetView::from_pb(max_concurrency),
            max_errors: BudgetView::from_pb(max_errors),
            canary,
        }
    }
}

impl From<pb::InvocationCounts> for InvocationCountsView {
    fn from(counts: pb::InvocationCounts) -> Self {
        let pb::InvocationCounts {
            total,
            queued,
            offered,
            running,
            succeeded,
            failed,
            timed_out,
            cancelled,
            delivery_timed_out,
            rejected,
            skipped,
            agent_deleted,
            agent_restarted,
        } = counts;
        Self {
            total,
            queued,
            offered,
            running,
            succeeded,
            failed,
            timed_out,
            cancelled,
            delivery_timed_out,
            rejected,
            skipped,
            agent_deleted,
            agent_restarted,
        }
    }
}

impl From<pb::Invocation> for InvocationView {
    fn from(invocation: pb::Invocation) -> Self {
        let pb::Invocation {
            invocation_id,
            command_id,
            agent_id,
            agent_name,
            state,
            skip_reason,
            reason,
            canary,
            exit_code,
            signal,
            queued_at,
            offered_at,
            started_at,
            finished_at,
            stdout_bytes,
            stderr_bytes,
            dropped_bytes,
        } = invocation;
        let state = InvocationState::from_pb(state);
        let (started_at, finished_at) = (time(started_at), time(finished_at));
        Self {
            invocation_id,
            command_id,
            agent_id,
            agent_name,
            state,
            skip_reason: SkipReason::from_pb(skip_reason)
                .filter(|_| state == InvocationState::Skipped),
            reason,
            canary,
            exit_code,
            signal,
            queued_at: time(queued_at),
            offered_at: time(offered_at),
            started_at,
            finished_at,
            duration_seconds: started_at
                .zip(finished_at)
                .and_then(|(start, end)| end.duration_since(start).ok()),
            stdout_bytes,
            stderr_bytes,
            dropped_bytes,
        }
    }
}

impl From<pb::InvocationOutput> for OutputChunkView {
    fn from(output: pb::InvocationOutput) -> Self {
        let pb::InvocationOutput {
            invocation_id,
            agent_id,
            chunk,
        } = output;
        let pb::OutputChunk {
            stream,
            offset,
            data,
        } = chunk.unwrap_or_default();
        Self {
            invocation_id,
            agent_id,
            stream: OutputStream::from_pb(stream),
            offset,
            data,
        }
    }
}

impl From<pb::WatchCommandResponse> for CommandEventView {
    fn from(event: pb::WatchCommandResponse) -> Self {
        use pb::watch_command_response::Event;
        let pb::WatchCommandResponse { cursor, event } = event;
        let mut view = Self {
            cursor,
            kind: CommandEventKind::Unknown,
            command: None,
            invocation: None,
            output: None,
        };
        match event {
            Some(Event::Command(command)) => {
                view.kind = CommandEventKind::Command;
                view.command = Some(command.into());
            }
            Some(Event::Invocation(invocation)) => {
                view.kind = CommandEventKind::Invocation;
                view.invocation = Some(invocation.into());
            }
            Some(Event::Output(output)) => {
                view.kind = CommandEventKind::Output;
                view.output = Some(output.into());
            }
            Some(Event::Synced(pb::WatchSynced {})) => view.kind = CommandEventKind::Synced,
            None => {}
        }
        view
    }
}
