//! The matrix's requests of `EventService`: minimal valid requests naming org acme's objects.

use super::*;

/// The call of an `EventService` method, or `None` for a method of another service.
pub(super) async fn invoke(
    method: &str,
    t: &Targets,
    c: &Clients,
) -> Option<(bool, Result<(), Status>)> {
    let mut events = c.events.clone();
    let ids = || vec![t.subject_event.clone()];
    Some(match method {
        "/tether.v1.EventService/ListEvents" => (
            false,
            drop_ok(events.list_events(pb::ListEventsRequest::default()).await),
        ),
        "/tether.v1.EventService/GetEvent" => (
            true,
            drop_ok(
                events
                    .get_event(pb::GetEventRequest {
                        event_id: t.subject_event.clone(),
                    })
                    .await,
            ),
        ),
        "/tether.v1.EventService/AcknowledgeEvents" => (
            true,
            drop_ok(
                events
                    .acknowledge_events(pb::AcknowledgeEventsRequest {
                        event_ids: ids(),
                        filter: None,
                    })
                    .await,
            ),
        ),
        "/tether.v1.EventService/ResolveEvents" => (
            true,
            drop_ok(
                events
                    .resolve_events(pb::ResolveEventsRequest {
                        event_ids: ids(),
                        filter: None,
                    })
                    .await,
            ),
        ),
        "/tether.v1.EventService/ReopenEvents" => (
            true,
            drop_ok(
                events
                    .reopen_events(pb::ReopenEventsRequest {
                        event_ids: ids(),
                        filter: None,
                    })
                    .await,
            ),
        ),
        "/tether.v1.EventService/WatchEvents" => {
            let result = async {
                let mut stream = events
                    .watch_events(pb::WatchEventsRequest::default())
                    .await?
                    .into_inner();
                match tokio::time::timeout(STREAM_WAIT, stream.message()).await {
                    Ok(Ok(Some(_))) => Ok(()),
                    Ok(Err(status)) => Err(status),
                    other => panic!("WatchEvents: expected the caught-up marker, got {other:?}"),
                }
            }
            .await;
            (false, result)
        }
        "/tether.v1.EventService/GetEventStats" => (
            false,
            drop_ok(
                events
                    .get_event_stats(pb::GetEventStatsRequest::default())
                    .await,
            ),
        ),
        _ => return None,
    })
}
