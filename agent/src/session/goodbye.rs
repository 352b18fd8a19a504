//! How a session ends from its side: the server's goodbye, a closed outbound stream, and the
//! agent's own goodbye at shutdown.
//!
//! **Invariant:** once the stream is open, a shutting-down agent says goodbye (after its stop
//! event, if the stream takes it in time), closes its side, and waits at most
//! [`SHUTDOWN_GRACE`] for the server to end the stream, still applying the acks that arrive.

use tether_proto as pb;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::codec::Streaming;
use tracing::{debug, info};

use super::{GoodbyeReason, SHUTDOWN_GRACE, ServerGoodbye, ServerMessage, Session, SessionEnd};
use crate::AgentError;
use crate::convert;

impl Session<'_> {
    pub(super) fn on_goodbye(&self, goodbye: ServerGoodbye) -> Result<SessionEnd, AgentError> {
        let ServerGoodbye {
            reason,
            message,
            reconnect_after,
        } = goodbye;
        match (reason, reconnect_after) {
            (GoodbyeReason::Revoked, _) => Err(AgentError::Revoked(message)),
            (GoodbyeReason::ServerDraining, Some(reconnect_after)) => {
                info!(?reconnect_after, %message, "server draining");
                Ok(SessionEnd::Drained {
                    healthy: self.healthy,
                    reconnect_after,
                    message,
                })
            }
            (reason, _) => {
                info!(?reason, %message, "server said goodbye");
                Ok(SessionEnd::Closed {
                    healthy: self.healthy,
                    reason: format!("server said goodbye ({reason:?}): {message}"),
                })
            }
        }
    }

    /// The outbound stream went away: the inbound side says why.
    pub(super) async fn outbound_closed(
        &mut self,
        mut inbound: Streaming<pb::ConnectResponse>,
    ) -> Result<SessionEnd, AgentError> {
        match tokio::time::timeout(SHUTDOWN_GRACE, inbound.message()).await {
            Ok(Err(status)) => Err(status.into()),
            _ => Ok(SessionEnd::Closed {
                healthy: self.healthy,
                reason: "outbound stream closed".into(),
            }),
        }
    }

    /// Clean shutdown: `Goodbye`, close the outbound stream, then wait up to
    /// [`SHUTDOWN_GRACE`] for the server to end the stream, still applying acks.
    pub(super) async fn say_goodbye(
        &mut self,
        mut inbound: Streaming<pb::ConnectResponse>,
    ) -> Result<SessionEnd, AgentError> {
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        // The stop is an event too: recorded and sent (if the stream takes it in time) before
        // the goodbye; otherwise it waits in the spool for the next start.
        if let Some(events) = &self.ctx.shared.events {
            events.stopping("shutdown").await;
            let sent = tokio::time::timeout_at(deadline, self.flush_events_unless_closed()).await;
            if sent.is_err() {
                info!("could not send the last events before the deadline");
            }
        }
        self.send_paced_samples_unless_closed(deadline).await;
        let goodbye = convert::goodbye("shutdown");
        if tokio::time::timeout_at(deadline, self.tx.send(goodbye))
            .await
            .is_err()
        {
            info!("could not queue goodbye before the deadline");
        }
        // Dropping the last sender ends the request stream: the server sees end-of-stream.
        let (closed_tx, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.tx, closed_tx));
        loop {
            match tokio::time::timeout_at(deadline, inbound.message()).await {
                Err(_) => {
                    info!("server did not end the stream within the shutdown grace period");
                    break;
                }
                Ok(Ok(None)) => break,
                Ok(Err(status)) => {
                    debug!(code = ?status.code(), "stream ended with an error during shutdown");
                    break;
                }
                Ok(Ok(Some(response))) => match ServerMessage::try_from(response) {
                    Ok(ServerMessage::MetricsAck { durable_seq, .. }) => {
                        self.ctx.shared.apply_ack(durable_seq);
                    }
                    Ok(ServerMessage::CommandAck(acks)) => self.ctx.shared.commands.ack(&acks),
                    Ok(ServerMessage::EventAck(ack)) => self.on_event_ack(&ack),
                    _ => {}
                },
            }
        }
        info!("session closed for shutdown");
        Ok(SessionEnd::Shutdown)
    }
}
