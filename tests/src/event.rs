//! Events over the real agent stream and `EventService`: what the tests build and wait for.

use std::time::SystemTime;

use tether_proto as pb;

use crate::{Authed, Bearer, RawSession, TestServer};

pub type EventClient = pb::event_service_client::EventServiceClient<Authed>;

/// A well-formed event of `kind` at `severity`, now.
pub fn agent_event(seq: u64, kind: &str, severity: pb::EventSeverity) -> pb::AgentEvent {
    pb::AgentEvent {
        seq,
        time: Some(SystemTime::now().into()),
        kind: kind.to_owned(),
        severity: severity as i32,
        message: format!("{kind} #{seq}"),
        attributes: Default::default(),
        fingerprint: String::new(),
    }
}

impl TestServer {
    pub async fn events(&self) -> EventClient {
        self.events_as(Some(&self.admin_token)).await
    }

    /// An `EventService` client presenting `token` (none when `None`).
    pub async fn events_as(&self, token: Option<&str>) -> EventClient {
        pb::event_service_client::EventServiceClient::with_interceptor(
            self.channel().await,
            Bearer(token.map(str::to_owned)),
        )
        .max_decoding_message_size(64 << 20)
    }
}

impl RawSession {
    pub async fn send_events(&self, events: Vec<pb::AgentEvent>) {
        self.send(pb::connect_request::Message::Events(pb::EventReport {
            events,
        }))
        .await;
    }

    /// Reads until an `EventAck` arrives (skipping other messages) and returns it.
    ///
    /// # Errors
    ///
    /// The status the stream ended with.
    pub async fn event_ack(&mut self) -> Result<pb::EventAck, tonic::Status> {
        loop {
            match self.recv().await? {
                Some(pb::connect_response::Message::EventAck(ack)) => return Ok(ack),
                Some(_) => {}
                None => return Err(tonic::Status::unknown("stream ended before the ack")),
            }
        }
    }

    /// Sends `events` and returns their ack.
    ///
    /// # Errors
    ///
    /// The status the stream ended with.
    pub async fn report_events(
        &mut self,
        events: Vec<pb::AgentEvent>,
    ) -> Result<pb::EventAck, tonic::Status> {
        self.send_events(events).await;
        self.event_ack().await
    }
}
