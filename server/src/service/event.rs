//! `EventService`: list, read, acknowledge, watch and count the events of the caller's org.
//!
//! Not served yet: every call answers `UNIMPLEMENTED`, after the gate has applied the access
//! table like for every other service.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tether_proto as pb;
use tonic::{Request, Response, Status};

use crate::service::AppState;

pub struct EventService {
    state: Arc<AppState>,
}

impl EventService {
    pub fn new(state: Arc<AppState>) -> Self {
        Self { state }
    }

    /// A mutating call's refusal, audited like every failed mutating call.
    async fn refuse_audited<T, R>(&self, request: &Request<R>, method: &str) -> Result<T, Status> {
        let caller = crate::auth::caller(request)?;
        let status = Status::unimplemented("this server does not serve events yet");
        self.state
            .writer
            .audit(crate::audit::entry(&caller, method, "events", Err(&status)))
            .await;
        Err(status)
    }
}

fn not_yet<T>() -> Result<T, Status> {
    Err(Status::unimplemented(
        "this server does not serve events yet",
    ))
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchEventsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::event_service_server::EventService for EventService {
    async fn list_events(
        &self,
        _request: Request<pb::ListEventsRequest>,
    ) -> Result<Response<pb::ListEventsResponse>, Status> {
        not_yet()
    }

    async fn get_event(
        &self,
        _request: Request<pb::GetEventRequest>,
    ) -> Result<Response<pb::GetEventResponse>, Status> {
        not_yet()
    }

    async fn acknowledge_events(
        &self,
        request: Request<pb::AcknowledgeEventsRequest>,
    ) -> Result<Response<pb::AcknowledgeEventsResponse>, Status> {
        self.refuse_audited(&request, "/tether.v1.EventService/AcknowledgeEvents")
            .await
    }

    async fn resolve_events(
        &self,
        request: Request<pb::ResolveEventsRequest>,
    ) -> Result<Response<pb::ResolveEventsResponse>, Status> {
        self.refuse_audited(&request, "/tether.v1.EventService/ResolveEvents")
            .await
    }

    async fn reopen_events(
        &self,
        request: Request<pb::ReopenEventsRequest>,
    ) -> Result<Response<pb::ReopenEventsResponse>, Status> {
        self.refuse_audited(&request, "/tether.v1.EventService/ReopenEvents")
            .await
    }

    type WatchEventsStream = WatchStream;

    async fn watch_events(
        &self,
        _request: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        not_yet()
    }

    async fn get_event_stats(
        &self,
        _request: Request<pb::GetEventStatsRequest>,
    ) -> Result<Response<pb::GetEventStatsResponse>, Status> {
        not_yet()
    }
}
