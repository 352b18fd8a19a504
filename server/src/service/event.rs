//! `EventService`: list, read, acknowledge, watch and count the events of the caller's org.
//!
//! Reads come from the store; changes go through the events task (`crate::events`), which
//! commits each with its audit entry. Acknowledging, resolving and reopening are audited: a
//! success in the commit that applies it, a failure here.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use futures::Stream;
use tether_proto as pb;
use tether_proto::selector::Selector;
use tonic::{Request, Response, Status};

use crate::auth::{self, Caller, Principal};
use crate::convert;
use crate::convert::event::FilterRequest;
use crate::domain::{AgentId, OrgId};
use crate::error::ServerError;
use crate::events::watch_stream::{CursorError, EventWatch, LiveSelection, WatchError};
use crate::events::{Action, Filter, Target, query};
use crate::service::AppState;

const ACK: &str = "/tether.v1.EventService/AcknowledgeEvents";
const RESOLVE: &str = "/tether.v1.EventService/ResolveEvents";
const REOPEN: &str = "/tether.v1.EventService/ReopenEvents";
/// Most events one `ListEvents` call reads to fill a page.
const MAX_SCAN: usize = 20_000;

pub struct EventService {
    state: Arc<AppState>,
}

impl EventService {
    pub fn new(state: Arc<AppState>) -> Self {
        Self { state }
    }

    /// The agents `ids` and `selector` allow together (`None`: any agent, including deleted
    /// ones, whose events stay until retention).
    fn agents(
        &self,
        org: &OrgId,
        ids: Vec<AgentId>,
        selector: Option<&Selector>,
    ) -> Option<HashSet<AgentId>> {
        let by_id = (!ids.is_empty()).then(|| ids.into_iter().collect::<HashSet<_>>());
        let by_label = selector.map(|s| {
            self.state
                .registry
                .resolve_targets(org, &[], Some(s))
                .expect("resolving fails only for a named id, and none is named")
                .into_iter()
                .map(|t| t.id)
                .collect::<HashSet<_>>()
        });
        match (by_id, by_label) {
            (Some(a), Some(b)) => Some(a.intersection(&b).cloned().collect()),
            (a, b) => a.or(b),
        }
    }

    fn filter(&self, org: &OrgId, request: FilterRequest) -> Filter {
        let FilterRequest {
            mut filter,
            agent_ids,
            selector,
        } = request;
        filter.agents = self.agents(org, agent_ids, selector.as_ref());
        filter
    }

    async fn change(
        &self,
        caller: &Caller,
        method: &str,
        action: Action,
        ids: Vec<String>,
        filter: Option<pb::EventFilter>,
    ) -> Result<Response<u64>, Status> {
        let target_text = match (&filter, ids.len()) {
            (Some(_), _) => "events by filter".to_owned(),
            (None, 1) => format!("event {}", ids[0]),
            (None, n) => format!("{n} events"),
        };
        let result = async {
            let target = match (ids.is_empty(), filter) {
                (false, None) => Target::Ids(convert::event::event_ids_from_pb(&ids)?),
                (true, Some(filter)) => {
                    let request = convert::event::filter_from_pb(Some(filter))?;
                    Target::Filter(Box::new(self.filter(&caller.org, request)))
                }
                _ => {
                    return Err(ServerError::invalid(
                        "give event_ids or a filter, exactly one",
                    ));
                }
            };
            let by = match &caller.principal {
                Principal::User { name, .. } => format!("{} ({name})", caller.token),
                _ => caller.token.to_string(),
            };
            let audit = crate::audit::entry(caller, method, &target_text, Ok(()));
            self.state
                .events
                .change_state(caller.org.clone(), action, by, target, audit)
                .await
        }
        .await;
        crate::service::answer_audited(&self.state, caller, method, &target_text, result).await
    }
}

/// A watch's cursor (given, or reached before the watcher stopped reading) is older than the
/// retained changes: `FAILED_PRECONDITION` with the `cursor-expired` refusal (Kubernetes' 410).
fn cursor_expired(oldest: u64) -> Status {
    tether_proto::refusal::refuse(
        tonic::Code::FailedPrecondition,
        format!(
            "cursor is older than the retained events (oldest change {oldest}): list the \
             events again and watch from the listing's cursor"
        ),
        tether_proto::refusal::Refusal::CursorExpired,
    )
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchEventsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::event_service_server::EventService for EventService {
    async fn list_events(
        &self,
        request: Request<pb::ListEventsRequest>,
    ) -> Result<Response<pb::ListEventsResponse>, Status> {
        let caller = auth::caller(&request)?;
        let (filter, size, token) = convert::event::list_from_pb(request.into_inner())?;
        let filter = self.filter(&caller.org, filter);
        let events = &self.state.events;
        // Taken before the read: watching from it misses no change made after the listing.
        let cursor = events.shared.last_cursor(&*events.store, &caller.org)?;
        let page = filter.page(
            &*events.store,
            &caller.org,
            token.as_deref(),
            size,
            MAX_SCAN,
        )?;
        Ok(Response::new(pb::ListEventsResponse {
            events: page
                .events
                .iter()
                .map(|(_, record)| convert::event::event_to_pb(record))
                .collect(),
            next_page_token: convert::event::page_token_to_pb(page.next),
            cursor: convert::event::cursor_to_pb(cursor),
        }))
    }

    async fn get_event(
        &self,
        request: Request<pb::GetEventRequest>,
    ) -> Result<Response<pb::GetEventResponse>, Status> {
        let caller = auth::caller(&request)?;
        let pb::GetEventRequest { event_id } = request.into_inner();
        let key = convert::event::event_id_from_pb(&event_id)?;
        let record = query::get(&*self.state.events.store, &caller.org, &key)?;
        Ok(Response::new(pb::GetEventResponse {
            event: Some(convert::event::event_to_pb(&record)),
        }))
    }

    async fn acknowledge_events(
        &self,
        request: Request<pb::AcknowledgeEventsRequest>,
    ) -> Result<Response<pb::AcknowledgeEventsResponse>, Status> {
        let caller = auth::caller(&request)?;
        let pb::AcknowledgeEventsRequest { event_ids, filter } = request.into_inner();
        let changed = self
            .change(&caller, ACK, Action::Acknowledge, event_ids, filter)
            .await?
            .into_inner();
        Ok(Response::new(pb::AcknowledgeEventsResponse { changed }))
    }

    async fn resolve_events(
        &self,
        request: Request<pb::ResolveEventsRequest>,
    ) -> Result<Response<pb::ResolveEventsResponse>, Status> {
        let caller = auth::caller(&request)?;
        let pb::ResolveEventsRequest { event_ids, filter } = request.into_inner();
        let changed = self
            .change(&caller, RESOLVE, Action::Resolve, event_ids, filter)
            .await?
            .into_inner();
        Ok(Response::new(pb::ResolveEventsResponse { changed }))
    }

    async fn reopen_events(
        &self,
        request: Request<pb::ReopenEventsRequest>,
    ) -> Result<Response<pb::ReopenEventsResponse>, Status> {
        let caller = auth::caller(&request)?;
        let pb::ReopenEventsRequest { event_ids, filter } = request.into_inner();
        let changed = self
            .change(&caller, REOPEN, Action::Reopen, event_ids, filter)
            .await?
            .into_inner();
        Ok(Response::new(pb::ReopenEventsResponse { changed }))
    }

    type WatchEventsStream = WatchStream;

    async fn watch_events(
        &self,
        request: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        let caller = auth::caller(&request)?;
        let pb::WatchEventsRequest { filter, cursor } = request.into_inner();
        let FilterRequest {
            mut filter,
            agent_ids,
            selector,
        } = convert::event::filter_from_pb(filter)?;
        // Ids are fixed; the selector follows the fleet as it changes (`LiveSelection`).
        filter.agents = self.agents(&caller.org, agent_ids, None);
        let selection = selector.map(|s| LiveSelection::new(self.state.registry.clone(), s));
        // A watch follows changes as they happen: the time range is a listing's.
        filter.start_ms = None;
        filter.end_ms = None;
        let cursor = convert::event::cursor_from_pb(&cursor)?;
        let state = &self.state;
        let slot = state.events.watches.acquire(&caller.org, &caller.token)?;
        let watch = EventWatch::start(
            state.events.clone(),
            caller.org.clone(),
            filter,
            selection,
            cursor,
            slot,
            state.shutdown.clone(),
            state.auth.revocation(&caller.token),
        )?;
        let watch = match watch {
            Ok(watch) => watch,
            Err(CursorError::Expired { oldest }) => return Err(cursor_expired(oldest)),
            Err(CursorError::Unknown) => {
                return Err(Status::invalid_argument(
                    "cursor is ahead of every change: not one this server gave",
                ));
            }
        };
        let stream = futures::stream::unfold(watch, |mut watch| async move {
            let item = watch.next().await?;
            let item = item
                .map(convert::event::watch_item_to_pb)
                .map_err(|e| match e {
                    WatchError::Store(e) => Status::from(e),
                    WatchError::Expired { oldest } => cursor_expired(oldest),
                });
            Some((item, watch))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_event_stats(
        &self,
        request: Request<pb::GetEventStatsRequest>,
    ) -> Result<Response<pb::GetEventStatsResponse>, Status> {
        let caller = auth::caller(&request)?;
        let (mut query, ids, selector) =
            convert::event::stats_from_pb(request.into_inner(), SystemTime::now())?;
        query.filter.agents = self.agents(&caller.org, ids, selector.as_ref());
        let store = self.state.events.store.clone();
        let days = self.state.events.day_cache.clone();
        let org = caller.org.clone();
        let stats = tokio::task::spawn_blocking(move || query::stats(&*store, &days, &org, &query))
            .await
            .map_err(|e| Status::internal(format!("stats task failed: {e}")))??;
        Ok(Response::new(convert::event::stats_to_pb(stats)))
    }
}
