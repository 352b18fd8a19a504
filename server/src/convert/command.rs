//! `CommandService` messages (commands, invocations, listings, the watch stream) and, in the
//! children, the spec with its bounds (`spec.rs`) and the command messages of the agent stream
//! (`stream.rs`).

use tether_proto as pb;
use tether_proto::command::{
    MAX_DELIVER_WITHIN, MAX_DESCRIPTION_BYTES, MAX_IDEMPOTENCY_KEY_BYTES, MAX_TIMEOUT,
};

use super::{id_from_pb, opt_timestamp, page_size_from_pb, text, time_from_pb, timestamp};
use crate::command::engine::Sent;
use crate::command::model::{CommandState, InvocationState, SkipReason};
use crate::command::record::{
    CommandPage, CommandQuery, CommandRecord, Counts, InvocationPage, InvocationQuery,
    InvocationRecord, NewCommand, OutputStream, invocation_id,
};
use crate::command::watch::{WatchItem, WatchRequest};
use crate::domain::{AgentId, CommandId, Time};
use crate::error::ServerError;

mod spec;
mod stream;

pub use self::spec::{
    rollout_from_pb, rollout_to_pb, span_from_pb, spec_from_pb, spec_to_pb, targets_from_pb,
    targets_to_pb,
};
pub use self::stream::{
    MAX_INVOCATION_ID_BYTES, invocation_acks_to_pb, offer_to_pb, report_from_pb,
    session_message_to_pb,
};

/// Page size of `ListCommands` and `ListInvocations` when the request leaves it at zero.
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// Largest page of `ListCommands` and `ListInvocations`.
pub const MAX_PAGE_SIZE: usize = 1000;

// === requests ===

/// # Errors
///
/// `INVALID_ARGUMENT` when `raw` is not a well-formed id.
pub fn command_id_from_pb(raw: &str) -> Result<CommandId, ServerError> {
    Ok(CommandId::new(id_from_pb(raw, "command_id")?))
}

/// # Errors
///
/// `INVALID_ARGUMENT` naming the field that breaks the contract's rules or bounds.
pub fn send_command_from_pb(req: pb::SendCommandRequest) -> Result<NewCommand, ServerError> {
    let pb::SendCommandRequest {
        spec,
        targets,
        rollout,
        timeout,
        deliver_within,
        idempotency_key,
        description,
        output_limit_bytes,
    } = req;
    Ok(NewCommand {
        spec: spec_from_pb(spec)?,
        targets: targets_from_pb(targets)?,
        rollout: rollout_from_pb(rollout)?,
        timeout: span_from_pb(timeout, "timeout", MAX_TIMEOUT)?,
        deliver_within: span_from_pb(deliver_within, "deliver_within", MAX_DELIVER_WITHIN)?,
        idempotency_key: text(
            idempotency_key,
            "idempotency_key",
            MAX_IDEMPOTENCY_KEY_BYTES,
        )?,
        description: text(description, "description", MAX_DESCRIPTION_BYTES)?,
        output_limit: output_limit_bytes,
    })
}

/// # Errors
///
/// `INVALID_ARGUMENT` for an unknown state, a bad time or page token, a negative page size.
pub fn list_commands_from_pb(req: pb::ListCommandsRequest) -> Result<CommandQuery, ServerError> {
    let pb::ListCommandsRequest {
        states,
        sender_token_id,
        since,
        until,
        page_size,
        page_token,
    } = req;
    let states = states
        .into_iter()
        .map(command_state_from_pb)
        .collect::<Result<_, _>>()?;
    let before = if page_token.is_empty() {
        None
    } else {
        Some(CommandId::new(id_from_pb(&page_token, "page_token")?))
    };
    Ok(CommandQuery {
        states,
        sender: (!sender_token_id.is_empty()).then_some(sender_token_id),
        since: since
            .map(|t| time_from_pb(t, "since"))
            .transpose()?
            .map(Time::get),
        until: until
            .map(|t| time_from_pb(t, "until"))
            .transpose()?
            .map(Time::get),
        before,
        page_size: page_size_from_pb(page_size, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)?,
    })
}

/// # Errors
///
/// `INVALID_ARGUMENT` for a malformed command id, an unknown state, a bad page token or size.
pub fn list_invocations_from_pb(
    req: pb::ListInvocationsRequest,
) -> Result<InvocationQuery, ServerError> {
    let pb::ListInvocationsRequest {
        command_id,
        states,
        page_size,
        page_token,
    } = req;
    let after = if page_token.is_empty() {
        None
    } else {
        Some(page_token.parse::<u32>().map_err(|_| {
            ServerError::invalid(
                "invalid page_token: pass the next_page_token of a previous answer",
            )
        })?)
    };
    Ok(InvocationQuery {
        command: command_id_from_pb(&command_id)?,
        states: states
            .into_iter()
            .map(invocation_state_from_pb)
            .collect::<Result<_, _>>()?,
        after,
        page_size: page_size_from_pb(page_size, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)?,
    })
}

/// # Errors
///
/// `INVALID_ARGUMENT` for a malformed command or agent id.
pub fn watch_command_from_pb(req: pb::WatchCommandRequest) -> Result<WatchRequest, ServerError> {
    let pb::WatchCommandRequest {
        command_id,
        after_cursor,
        agent_id,
        exclude_output,
    } = req;
    let agent = if agent_id.is_empty() {
        None
    } else {
        Some(AgentId::new(id_from_pb(&agent_id, "agent_id")?))
    };
    Ok(WatchRequest {
        command: command_id_from_pb(&command_id)?,
        after: after_cursor,
        agent,
        exclude_output,
    })
}

// === answers ===

pub fn send_command_to_pb(sent: &Sent) -> pb::SendCommandResponse {
    pb::SendCommandResponse {
        command: Some(command_to_pb(&sent.command)),
        existing: sent.existing,
    }
}

pub fn command_to_pb(record: &CommandRecord) -> pb::Command {
    pb::Command {
        command_id: record.id.to_string(),
        org_id: record.org.to_string(),
        spec: Some(spec_to_pb(&record.spec)),
        targets: Some(targets_to_pb(&record.targets)),
        rollout: Some(rollout_to_pb(&record.rollout)),
        timeout: Some(super::duration(record.timeout)),
        deliver_by: Some(timestamp(record.deliver_by.get())),
        idempotency_key: record.idempotency_key.clone(),
        description: record.description.clone(),
        sender_token_id: record.sender_token.to_string(),
        sender_name: record.sender_name.clone(),
        created_at: Some(timestamp(record.created_at.get())),
        state: command_state_to_pb(record.state) as i32,
        finished_at: opt_timestamp(record.finished_at.map(Time::get)),
        counts: Some(counts_to_pb(&record.counts)),
        output_limit_bytes: record.output_limit,
        cancel_requested: record.cancel_requested,
    }
}

pub fn counts_to_pb(counts: &Counts) -> pb::InvocationCounts {
    let Counts {
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
    } = *counts;
    pb::InvocationCounts {
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

pub fn invocation_to_pb(command: &CommandId, record: &InvocationRecord) -> pb::Invocation {
    pb::Invocation {
        invocation_id: invocation_id(command, record.n),
        command_id: command.to_string(),
        agent_id: record.agent.to_string(),
        agent_name: record.agent_name.clone(),
        state: invocation_state_to_pb(record.state) as i32,
        skip_reason: record
            .skip_reason
            .map_or(pb::SkipReason::Unspecified, skip_reason_to_pb) as i32,
        reason: record.reason.clone(),
        canary: record.canary,
        exit_code: record.exit_code,
        signal: record.signal,
        queued_at: Some(timestamp(record.queued_at.get())),
        offered_at: opt_timestamp(record.offered_at.map(Time::get)),
        started_at: opt_timestamp(record.started_at.map(Time::get)),
        finished_at: opt_timestamp(record.finished_at.map(Time::get)),
        stdout_bytes: record.stdout_bytes,
        stderr_bytes: record.stderr_bytes,
        dropped_bytes: record.dropped_bytes(),
    }
}

pub fn list_commands_to_pb(page: &CommandPage) -> pb::ListCommandsResponse {
    pb::ListCommandsResponse {
        commands: page.commands.iter().map(command_to_pb).collect(),
        next_page_token: page
            .next_before
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
    }
}

pub fn list_invocations_to_pb(
    command: &CommandId,
    page: &InvocationPage,
) -> pb::ListInvocationsResponse {
    pb::ListInvocationsResponse {
        invocations: page
            .invocations
            .iter()
            .map(|record| invocation_to_pb(command, record))
            .collect(),
        next_page_token: page.next_after.map(|n| n.to_string()).unwrap_or_default(),
    }
}

pub fn watch_item_to_pb(item: WatchItem) -> pb::WatchCommandResponse {
    use pb::watch_command_response::Event;
    let (cursor, event) = match item {
        WatchItem::Command(record) => (0, Event::Command(command_to_pb(&record))),
        WatchItem::Synced => (0, Event::Synced(pb::WatchSynced {})),
        WatchItem::Invocation {
            cursor,
            command,
            record,
        } => (
            cursor,
            Event::Invocation(invocation_to_pb(&command, &record)),
        ),
        WatchItem::Output {
            cursor,
            command,
            agent,
            output,
        } => (
            cursor,
            Event::Output(pb::InvocationOutput {
                invocation_id: invocation_id(&command, output.n),
                agent_id: agent.to_string(),
                chunk: Some(pb::OutputChunk {
                    stream: stream_to_pb(output.stream) as i32,
                    offset: output.offset,
                    data: output.data,
                }),
            }),
        ),
    };
    pb::WatchCommandResponse {
        cursor,
        event: Some(event),
    }
}

// === enums ===

pub fn command_state_to_pb(state: CommandState) -> pb::CommandState {
    match state {
        CommandState::Pending => pb::CommandState::Pending,
        CommandState::Running => pb::CommandState::Running,
        CommandState::Paused => pb::CommandState::Paused,
        CommandState::Succeeded => pb::CommandState::Succeeded,
        CommandState::Failed => pb::CommandState::Failed,
        CommandState::Cancelled => pb::CommandState::Cancelled,
    }
}

/// # Errors
///
/// `INVALID_ARGUMENT` for `UNSPECIFIED` or an unknown number.
pub fn command_state_from_pb(value: i32) -> Result<CommandState, ServerError> {
    use pb::CommandState as S;
    match S::try_from(value) {
        Ok(S::Pending) => Ok(CommandState::Pending),
        Ok(S::Running) => Ok(CommandState::Running),
        Ok(S::Paused) => Ok(CommandState::Paused),
        Ok(S::Succeeded) => Ok(CommandState::Succeeded),
        Ok(S::Failed) => Ok(CommandState::Failed),
        Ok(S::Cancelled) => Ok(CommandState::Cancelled),
        Ok(S::Unspecified) | Err(_) => Err(ServerError::invalid(format!(
            "unknown command state {value}"
        ))),
    }
}

pub fn invocation_state_to_pb(state: InvocationState) -> pb::InvocationState {
    use pb::InvocationState as S;
    match state {
        InvocationState::Queued => S::Queued,
        InvocationState::Offered => S::Offered,
        InvocationState::Running => S::Running,
        InvocationState::Succeeded => S::Succeeded,
        InvocationState::Failed => S::Failed,
        InvocationState::TimedOut => S::TimedOut,
        InvocationState::Cancelled => S::Cancelled,
        InvocationState::DeliveryTimedOut => S::DeliveryTimedOut,
        InvocationState::Rejected => S::Rejected,
        InvocationState::Skipped => S::Skipped,
        InvocationState::AgentDeleted => S::AgentDeleted,
        InvocationState::AgentRestarted => S::AgentRestarted,
    }
}

/// # Errors
///
/// `INVALID_ARGUMENT` for `UNSPECIFIED` or an unknown number.
pub fn invocation_state_from_pb(value: i32) -> Result<InvocationState, ServerError> {
    use pb::InvocationState as S;
    Ok(match S::try_from(value) {
        Ok(S::Queued) => InvocationState::Queued,
        Ok(S::Offered) => InvocationState::Offered,
        Ok(S::Running) => InvocationState::Running,
        Ok(S::Succeeded) => InvocationState::Succeeded,
        Ok(S::Failed) => InvocationState::Failed,
        Ok(S::TimedOut) => InvocationState::TimedOut,
        Ok(S::Cancelled) => InvocationState::Cancelled,
        Ok(S::DeliveryTimedOut) => InvocationState::DeliveryTimedOut,
        Ok(S::Rejected) => InvocationState::Rejected,
        Ok(S::Skipped) => InvocationState::Skipped,
        Ok(S::AgentDeleted) => InvocationState::AgentDeleted,
        Ok(S::AgentRestarted) => InvocationState::AgentRestarted,
        Ok(S::Unspecified) | Err(_) => {
            return Err(ServerError::invalid(format!(
                "unknown invocation state {value}"
            )));
        }
    })
}

pub fn skip_reason_to_pb(reason: SkipReason) -> pb::SkipReason {
    match reason {
        SkipReason::Offline => pb::SkipReason::Offline,
        SkipReason::ErrorBudget => pb::SkipReason::ErrorBudget,
        SkipReason::CanaryFailed => pb::SkipReason::CanaryFailed,
    }
}

pub fn stream_to_pb(stream: OutputStream) -> pb::OutputStream {
    match stream {
        OutputStream::Stdout => pb::OutputStream::Stdout,
        OutputStream::Stderr => pb::OutputStream::Stderr,
    }
}

/// # Errors
///
/// `INVALID_ARGUMENT` for `UNSPECIFIED` or an unknown number.
pub fn stream_from_pb(value: i32) -> Result<OutputStream, ServerError> {
    match pb::OutputStream::try_from(value) {
        Ok(pb::OutputStream::Stdout) => Ok(OutputStream::Stdout),
        Ok(pb::OutputStream::Stderr) => Ok(OutputStream::Stderr),
        Ok(pb::OutputStream::Unspecified) | Err(_) => Err(ServerError::invalid(format!(
            "unknown output stream {value}"
        ))),
    }
}
