//! The command messages of the agent stream: `CommandReport` in, with the format rules of the
//! contract; `CommandOffer`, `CommandCancel` and `CommandAck` out.

use std::collections::HashMap;

use tether_proto as pb;
use tether_proto::command::{
    MAX_CHUNKS_PER_UPDATE, MAX_REASON_BYTES, MAX_UPDATE_OUTPUT_BYTES, MAX_UPDATES_PER_REPORT,
};

use super::super::{duration, timestamp};
use super::spec::spec_to_pb;
use super::stream_from_pb;
use crate::command::model::InvocationState;
use crate::command::record::{AgentUpdate, Chunk, Offer, UpdateStep};
use crate::error::ServerError;
use crate::session::CommandMessage;

/// Longest invocation id an update may name (ids the server makes are far shorter; a longer
/// one is answered as unknown, but its text is not worth keeping).
pub const MAX_INVOCATION_ID_BYTES: usize = 128;

/// The updates of a report, checked against the format rules of `CommandUpdate`. Nothing is
/// stored unless the whole report passes.
///
/// # Errors
///
/// `INVALID_ARGUMENT` (the stream ends): too many updates, chunks or output bytes, a seq of 0
/// or out of order within the report, a state or stream that is not one an agent reports, an
/// invocation id longer than [`MAX_INVOCATION_ID_BYTES`].
pub fn report_from_pb(report: pb::CommandReport) -> Result<Vec<AgentUpdate>, ServerError> {
    let pb::CommandReport { updates } = report;
    if updates.len() > MAX_UPDATES_PER_REPORT {
        return Err(ServerError::invalid(format!(
            "command report holds {} updates; at most {MAX_UPDATES_PER_REPORT} are allowed",
            updates.len()
        )));
    }
    let mut last_seq: HashMap<String, u64> = HashMap::new();
    let mut out = Vec::with_capacity(updates.len());
    for update in updates {
        let pb::CommandUpdate {
            invocation_id,
            seq,
            state,
            reason,
            exit_code,
            signal,
            output,
            // The agent's clock; the server records its own (deadlines and durations must not
            // depend on an agent's clock).
            time: _,
        } = update;
        if invocation_id.len() > MAX_INVOCATION_ID_BYTES {
            return Err(ServerError::invalid(format!(
                "command update names an invocation id of {} bytes; at most \
                 {MAX_INVOCATION_ID_BYTES}",
                invocation_id.len()
            )));
        }
        if seq == 0 {
            return Err(ServerError::invalid("command update seq must start at 1"));
        }
        let previous = last_seq.entry(invocation_id.clone()).or_insert(0);
        if seq <= *previous {
            return Err(ServerError::invalid(format!(
                "command update seq {seq} of one invocation is not greater than {} before it in \
                 the same report",
                *previous
            )));
        }
        *previous = seq;
        let step = step_from_pb(state)?;
        if output.len() > MAX_CHUNKS_PER_UPDATE {
            return Err(ServerError::invalid(format!(
                "command update holds {} output chunks; at most {MAX_CHUNKS_PER_UPDATE}",
                output.len()
            )));
        }
        let mut bytes = 0;
        let mut chunks = Vec::with_capacity(output.len());
        for chunk in output {
            let pb::OutputChunk {
                stream,
                offset,
                data,
            } = chunk;
            bytes += data.len();
            chunks.push(Chunk {
                stream: stream_from_pb(stream)?,
                offset,
                data,
            });
        }
        if bytes > MAX_UPDATE_OUTPUT_BYTES {
            return Err(ServerError::invalid(format!(
                "command update carries {bytes} output bytes; at most {MAX_UPDATE_OUTPUT_BYTES}"
            )));
        }
        out.push(AgentUpdate {
            invocation_id,
            seq,
            step,
            // Cleaned rather than refused: a result is never lost for its wording.
            reason: tether_proto::text::clean(&reason, MAX_REASON_BYTES),
            exit_code,
            signal,
            output: chunks,
        });
    }
    Ok(out)
}

fn step_from_pb(state: i32) -> Result<UpdateStep, ServerError> {
    use pb::InvocationState as S;
    let end = |state| Ok(UpdateStep::Finished(state));
    match S::try_from(state) {
        Ok(S::Unspecified) => Ok(UpdateStep::Output),
        Ok(S::Running) => Ok(UpdateStep::Running),
        Ok(S::Succeeded) => end(InvocationState::Succeeded),
        Ok(S::Failed) => end(InvocationState::Failed),
        Ok(S::TimedOut) => end(InvocationState::TimedOut),
        Ok(S::Cancelled) => end(InvocationState::Cancelled),
        Ok(S::DeliveryTimedOut) => end(InvocationState::DeliveryTimedOut),
        Ok(S::Rejected) => end(InvocationState::Rejected),
        Ok(S::AgentRestarted) => end(InvocationState::AgentRestarted),
        Ok(S::Queued | S::Offered | S::Skipped | S::AgentDeleted) | Err(_) => {
            Err(ServerError::invalid(format!(
                "command update state {state} is not one an agent reports"
            )))
        }
    }
}

/// The message the session sends for `message`.
pub fn session_message_to_pb(message: CommandMessage) -> pb::connect_response::Message {
    use pb::connect_response::Message as Out;
    match message {
        CommandMessage::Acks(acks) => Out::CommandAck(pb::CommandAck {
            acks: acks
                .into_iter()
                .map(|(invocation_id, seq)| pb::InvocationAck { invocation_id, seq })
                .collect(),
        }),
        CommandMessage::Offer(offer) => Out::CommandOffer(offer_to_pb(&offer)),
        CommandMessage::Cancel(invocation_id) => {
            Out::CommandCancel(pb::CommandCancel { invocation_id })
        }
    }
}

pub fn offer_to_pb(offer: &Offer) -> pb::CommandOffer {
    pb::CommandOffer {
        invocation_id: offer.invocation_id.clone(),
        command_id: offer.command_id.to_string(),
        spec: Some(spec_to_pb(&offer.spec)),
        timeout: Some(duration(offer.timeout)),
        deliver_by: Some(timestamp(offer.deliver_by.get())),
        output_limit_bytes: offer.output_limit,
        kill_grace: Some(duration(offer.kill_grace)),
    }
}

/// The acks of `Welcome.invocation_acks`.
pub fn invocation_acks_to_pb(acks: &[(String, u64)]) -> Vec<pb::InvocationAck> {
    acks.iter()
        .map(|(invocation_id, seq)| pb::InvocationAck {
            invocation_id: invocation_id.clone(),
            seq: *seq,
        })
        .collect()
}
