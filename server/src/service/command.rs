//! `CommandService`: send, read, watch and steer commands of the caller's org.
//!
//! Sending, cancelling, pausing and resuming are audited with the command and its targets: a
//! success in the commit that stores it (the engine's), a failure here. Reads come from the
//! store, which holds every change once it is durable.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tether_proto as pb;
use tonic::{Request, Response, Status};

use crate::auth;
use crate::command::engine::Steer;
use crate::command::query;
use crate::command::record::{CommandRecord, Targets};
use crate::command::watch::CommandWatch;
use crate::convert;
use crate::domain::AuditEntry;
use crate::error::ServerError;
use crate::service::AppState;

const SEND: &str = "/tether.v1.CommandService/SendCommand";
const CANCEL: &str = "/tether.v1.CommandService/CancelCommand";
const PAUSE: &str = "/tether.v1.CommandService/PauseCommand";
const RESUME: &str = "/tether.v1.CommandService/ResumeCommand";

pub struct CommandService {
    state: Arc<AppState>,
}

impl CommandService {
    pub fn new(state: Arc<AppState>) -> Self {
        Self { state }
    }

    /// Audits a mutating call's failure (success is audited inside its commit) and answers.
    async fn finish<T>(
        &self,
        caller: &auth::Caller,
        method: &str,
        target: &str,
        result: Result<T, ServerError>,
    ) -> Result<Response<T>, Status> {
        crate::service::answer_audited(&self.state, caller, method, target, result).await
    }

    async fn steer(
        &self,
        request: Request<String>,
        steer: Steer,
        method: &str,
    ) -> Result<Response<pb::Command>, Status> {
        let caller = auth::caller(&request)?;
        let raw = request.into_inner();
        let result = async {
            let id = convert::command::command_id_from_pb(&raw)?;
            let audit = crate::audit::entry(&caller, method, &format!("command {id}"), Ok(()));
            let command = self
                .state
                .commands
                .steer(&caller, &id, steer, audit)
                .await?;
            Ok(convert::command::command_to_pb(&command))
        }
        .await;
        self.finish(&caller, method, &format!("command {raw}"), result)
            .await
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchCommandResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::command_service_server::CommandService for CommandService {
    async fn send_command(
        &self,
        request: Request<pb::SendCommandRequest>,
    ) -> Result<Response<pb::SendCommandResponse>, Status> {
        let caller = auth::caller(&request)?;
        let req = request.into_inner();
        let mut target = describe_raw_targets(req.targets.as_ref());
        let result = async {
            let new = convert::command::send_command_from_pb(req)?;
            target = describe_targets(None, &new.targets);
            let sent = self
                .state
                .commands
                .send(&caller, new, |record| send_audit(&caller, record))
                .await?;
            Ok(convert::command::send_command_to_pb(&sent))
        }
        .await;
        self.finish(&caller, SEND, &target, result).await
    }

    async fn get_command(
        &self,
        request: Request<pb::GetCommandRequest>,
    ) -> Result<Response<pb::GetCommandResponse>, Status> {
        let caller = auth::caller(&request)?;
        let pb::GetCommandRequest { command_id } = request.into_inner();
        let id = convert::command::command_id_from_pb(&command_id)?;
        let command = query::command(&self.state.store, &caller.org, &id).await?;
        Ok(Response::new(pb::GetCommandResponse {
            command: Some(convert::command::command_to_pb(&command)),
        }))
    }

    async fn list_commands(
        &self,
        request: Request<pb::ListCommandsRequest>,
    ) -> Result<Response<pb::ListCommandsResponse>, Status> {
        let caller = auth::caller(&request)?;
        let query = convert::command::list_commands_from_pb(request.into_inner())?;
        let page = query::commands(&self.state.store, &caller.org, query).await?;
        Ok(Response::new(convert::command::list_commands_to_pb(&page)))
    }

    async fn list_invocations(
        &self,
        request: Request<pb::ListInvocationsRequest>,
    ) -> Result<Response<pb::ListInvocationsResponse>, Status> {
        let caller = auth::caller(&request)?;
        let query = convert::command::list_invocations_from_pb(request.into_inner())?;
        let command = query.command.clone();
        let page = query::invocations(&self.state.store, &caller.org, query).await?;
        Ok(Response::new(convert::command::list_invocations_to_pb(
            &command, &page,
        )))
    }

    type WatchCommandStream = WatchStream;

    async fn watch_command(
        &self,
        request: Request<pb::WatchCommandRequest>,
    ) -> Result<Response<Self::WatchCommandStream>, Status> {
        let caller = auth::caller(&request)?;
        let watch_request = convert::command::watch_command_from_pb(request.into_inner())?;
        let state = &self.state;
        let watch = CommandWatch::start(
            state.store.clone(),
            state.commands.clone(),
            caller.org.clone(),
            watch_request,
            state.shutdown.clone(),
            state.auth.revocation(&caller.token),
        )
        .await?;
        let stream = futures::stream::unfold(watch, |mut watch| async move {
            let item = watch.next().await?;
            let item = item
                .map(convert::command::watch_item_to_pb)
                .map_err(Status::from);
            Some((item, watch))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn cancel_command(
        &self,
        request: Request<pb::CancelCommandRequest>,
    ) -> Result<Response<pb::CancelCommandResponse>, Status> {
        let (metadata, extensions, pb::CancelCommandRequest { command_id }) = request.into_parts();
        let request = Request::from_parts(metadata, extensions, command_id);
        let command = self
            .steer(request, Steer::Cancel, CANCEL)
            .await?
            .into_inner();
        Ok(Response::new(pb::CancelCommandResponse {
            command: Some(command),
        }))
    }

    async fn pause_command(
        &self,
        request: Request<pb::PauseCommandRequest>,
    ) -> Result<Response<pb::PauseCommandResponse>, Status> {
        let (metadata, extensions, pb::PauseCommandRequest { command_id }) = request.into_parts();
        let request = Request::from_parts(metadata, extensions, command_id);
        let command = self.steer(request, Steer::Pause, PAUSE).await?.into_inner();
        Ok(Response::new(pb::PauseCommandResponse {
            command: Some(command),
        }))
    }

    async fn resume_command(
        &self,
        request: Request<pb::ResumeCommandRequest>,
    ) -> Result<Response<pb::ResumeCommandResponse>, Status> {
        let (metadata, extensions, pb::ResumeCommandRequest { command_id }) = request.into_parts();
        let request = Request::from_parts(metadata, extensions, command_id);
        let command = self
            .steer(request, Steer::Resume, RESUME)
            .await?
            .into_inner();
        Ok(Response::new(pb::ResumeCommandResponse {
            command: Some(command),
        }))
    }
}

/// The audit entry of a command's creation: its id, how many agents it reached, its targets.
fn send_audit(caller: &auth::Caller, record: &CommandRecord) -> AuditEntry {
    let target = describe_targets(Some(record), &record.targets);
    crate::audit::entry(caller, SEND, &target, Ok(()))
}

/// What an audit entry names as a send's target (cut to the entry's bound by `audit::entry`).
fn describe_targets(record: Option<&CommandRecord>, targets: &Targets) -> String {
    let mut out = match record {
        Some(record) => format!("command {} to {} agents:", record.id, record.n_invocations),
        None => "command to".to_owned(),
    };
    if !targets.selector.is_empty() {
        out.push_str(&format!(" selector {}", targets.selector));
    }
    if !targets.agent_ids.is_empty() {
        let ids: Vec<&str> = targets.agent_ids.iter().map(|id| id.as_str()).collect();
        out.push_str(&format!(" agents {}", ids.join(",")));
    }
    if targets.include_offline {
        out.push_str(" (offline included)");
    }
    out
}

/// The targets of a request that did not convert, as given (for the audit of its refusal).
fn describe_raw_targets(targets: Option<&pb::CommandTargets>) -> String {
    let Some(targets) = targets else {
        return "command without targets".to_owned();
    };
    format!(
        "command to selector {:?} agents {:?}",
        targets.label_selector, targets.agent_ids
    )
}
