//! `AgentService`: enrollment and the agent's session stream.

use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use futures::Stream;
use tether_proto as pb;
use tonic::{Request, Response, Status, Streaming};

use crate::admission::Busy;
use crate::audit::RefusalKind;
use crate::auth::{self, Principal};
use crate::convert;
use crate::domain::{AgentHello, AgentId, Labels, SessionId};
use crate::error::ServerError;
use crate::metrics::MtlsLabels;
use crate::registry::{OpenRefused, OpenedSession, SessionConflict};
use crate::service::AppState;
use crate::session::{CloseReason, SessionLimits, SessionLoop};

pub(crate) const ENROLL: &str = "/tether.v1.AgentService/Enroll";
const CONNECT: &str = "/tether.v1.AgentService/Connect";

pub struct AgentService {
    state: Arc<AppState>,
}

impl AgentService {
    pub fn new(state: Arc<AppState>) -> Self {
        Self { state }
    }

    /// Counts, logs and (at most once per interval per agent) audits a conflicting session that
    /// was let in: two agent processes share the credential.
    async fn note_conflict(
        &self,
        caller: &auth::Caller,
        agent: &AgentId,
        conflict: &SessionConflict,
    ) {
        self.state.metrics.identity_conflict("flagged");
        tracing::warn!(%agent, org = %caller.org, detail = %conflict.detail, "identity conflict: {}", conflict.remedy);
        if conflict.audit {
            let mut entry = crate::audit::entry(caller, CONNECT, agent.as_str(), Ok(()));
            entry.message = crate::audit::bounded(
                &format!("identity_conflict: {}", conflict.detail),
                crate::audit::MAX_MESSAGE_BYTES,
            );
            self.state.writer.audit(entry).await;
        }
    }

    /// The answer to a session refused for an identity conflict: counted, logged, and audited
    /// within the credential's refusal budget.
    async fn refuse_conflict(
        &self,
        caller: &auth::Caller,
        agent: &AgentId,
        conflict: &SessionConflict,
    ) -> Status {
        self.state.metrics.identity_conflict("refused");
        let status = tether_proto::refusal::refuse(
            tonic::Code::FailedPrecondition,
            format!(
                "{}; this session was refused so that the other keeps working. To fix it: {}",
                conflict.detail, conflict.remedy
            ),
            tether_proto::refusal::Refusal::IdentityConflict,
        );
        tracing::warn!(%agent, org = %caller.org, detail = %conflict.detail, "identity conflict: session refused");
        self.state
            .refusals
            .audit(caller, CONNECT, agent.as_str(), &status, RefusalKind::Other)
            .await;
        status
    }
}

/// The agent's labels with the token's pinned labels on top.
pub fn merge_labels(mut asked: Labels, pinned: &Labels) -> Labels {
    asked.extend(pinned.iter().map(|(k, v)| (k.clone(), v.clone())));
    asked
}

/// 64 random bits, hex-encoded: ids of agents and sessions.
pub fn random_id() -> String {
    hex::encode(rand::random::<[u8; 8]>())
}

type ConnectStream = Pin<Box<dyn Stream<Item = Result<pb::ConnectResponse, Status>> + Send>>;

impl AgentService {
    /// The refusal of `agent`'s stream for its client certificate (`identity`, `None` when it
    /// presented none): counted, logged, and audited in the agent's org within the
    /// credential's refusal budget.
    async fn refuse_certificate<T>(
        &self,
        caller: &auth::Caller,
        agent: &AgentId,
        identity: Option<String>,
        request: &Request<T>,
    ) -> Status {
        let (reason, status) = match &identity {
            Some(_) => (
                "wrong_agent",
                Status::permission_denied("the client certificate was issued for another agent"),
            ),
            None => (
                "no_certificate",
                Status::permission_denied(
                    "this server requires agents to present a client certificate",
                ),
            ),
        };
        self.state
            .metrics
            .mtls_refusals
            .get_or_create(&MtlsLabels { reason })
            .inc();
        // The certificate's name is the peer's choice: bounded and quoted in the log.
        let presented = identity.map(|i| crate::audit::bounded(&i, crate::audit::MAX_FIELD_BYTES));
        tracing::warn!(
            %agent,
            org = %caller.org,
            reason,
            presented = presented.as_deref().map(tracing::field::debug),
            peer = crate::conn::remote_addr(request).map(tracing::field::display),
            "refused an agent stream: client certificate"
        );
        self.state
            .refusals
            .audit(caller, CONNECT, agent.as_str(), &status, RefusalKind::Other)
            .await;
        status
    }
}

#[tonic::async_trait]
impl pb::agent_service_server::AgentService for AgentService {
    async fn enroll(
        &self,
        request: Request<pb::EnrollRequest>,
    ) -> Result<Response<pb::EnrollResponse>, Status> {
        let caller = auth::caller(&request)?;
        let result = match convert::agent::enroll_from_pb(
            request.into_inner(),
            &self.state.config.limits,
            SystemTime::now(),
        ) {
            Ok(enrollment) => {
                crate::service::enroll::enroll(&self.state, &caller, enrollment).await
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(enrolled) => Ok(Response::new(convert::agent::enroll_to_pb(
                &enrolled.agent,
                &enrolled.org,
                &enrolled.credential,
            ))),
            Err(err) => {
                // A re-enrollment over its rate is a rate refusal: audited at most once per
                // interval per token, like the gate's; every other failure is audited.
                let rate = matches!(err, ServerError::RetryLater { .. });
                let status = Status::from(err);
                if rate {
                    self.state
                        .refusals
                        .audit(&caller, ENROLL, "", &status, RefusalKind::Rate)
                        .await;
                } else {
                    self.state
                        .writer
                        .audit(crate::audit::entry(&caller, ENROLL, "", Err(&status)))
                        .await;
                }
                Err(status)
            }
        }
    }

    type ConnectStream = ConnectStream;

    async fn connect(
        &self,
        request: Request<Streaming<pb::ConnectRequest>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let caller = auth::caller(&request)?;
        // The gate admits only agent credentials here; this takes the agent the credential is
        // bound to, which the Hello must name (identity, not role).
        let Principal::Agent { agent } = caller.principal.clone() else {
            return Err(ServerError::PermissionDenied(
                "Connect requires an agent credential".to_owned(),
            )
            .into());
        };
        // Admission first: when the server is behind, a new session costs it nothing more than
        // this answer. The permit is held until the session's setup ends (this function returns).
        let _setup = self.state.admission.admit(&agent)?;
        if self.state.config.mtls() {
            // With a client CA configured, an agent proves its identity twice: the credential
            // and a client certificate issued for its agent id.
            let identity = crate::tls::peer_identity(&request);
            if identity.as_deref() != Some(agent.as_str()) {
                return Err(self
                    .refuse_certificate(&caller, &agent, identity, &request)
                    .await);
            }
        }
        let admission = &self.state.admission;
        let peer = crate::conn::remote_addr(&request);
        let mut inbound = request.into_inner();
        let first = match tokio::time::timeout(admission.hello_timeout(), inbound.message()).await {
            // The server may be the slow one: the agent is told to come back, not blamed.
            Err(_) => return Err(admission.refuse(Busy::HelloTimeout).into()),
            Ok(Err(status)) => {
                return Err(crate::session::inbound_error(status, &self.state.metrics));
            }
            Ok(Ok(None)) => {
                return Err(Status::invalid_argument("stream closed before Hello"));
            }
            Ok(Ok(Some(first))) => first,
        };
        crate::session::count_message(&self.state.metrics, &first);
        let Some(pb::connect_request::Message::Hello(hello)) = first.message else {
            return Err(Status::invalid_argument(
                "the first message of a session must be Hello",
            ));
        };
        if hello.agent_id != agent.as_str() {
            return Err(Status::permission_denied(
                "an agent credential may only connect as its own agent",
            ));
        }
        let state = &self.state;
        let AgentHello {
            system_info: info,
            labels,
            instance_id,
            journaled_invocations,
            accepts_deferred_reports,
        } = convert::agent::hello_from_pb(hello, &state.config.limits, SystemTime::now())?;
        let pinned = state
            .registry
            .get(&caller.org, &agent)
            .map(|a| a.record.pinned_labels.clone())
            .ok_or(ServerError::NotFound(format!("agent {agent}")))?;
        let labels = merge_labels(labels, &pinned);
        if labels.len() > state.config.limits.max_labels {
            return Err(Status::invalid_argument(format!(
                "the agent's and its pinned labels together exceed {} labels",
                state.config.limits.max_labels
            )));
        }

        // Before the session opens (a store failure here must not leave a session behind):
        // what the server stored of the invocations the agent journaled, for its Welcome. A
        // read only: a session refused below changes nothing of them.
        let journaled = state
            .commands
            .journaled(&caller.org, &agent, journaled_invocations)
            .await?;
        let session_id = SessionId::new(random_id());
        let opened = state.registry.open_session(
            &caller.org,
            &agent,
            session_id.clone(),
            info,
            Some(labels),
            &instance_id,
        );
        let OpenedSession {
            session,
            last_seq,
            conflict,
        } = match opened {
            Ok(opened) => opened,
            Err(OpenRefused::Unknown) => {
                return Err(ServerError::NotFound(format!("agent {agent}")).into());
            }
            Err(OpenRefused::Conflict(conflict)) => {
                return Err(self.refuse_conflict(&caller, &agent, &conflict).await);
            }
        };
        if !state.auth.is_active(&caller.token) {
            // The credential was superseded or revoked while the session opened: the registry
            // may have applied that before this session existed, so end it here.
            session.close(CloseReason::Revoked);
            return Err(tether_proto::refusal::refuse(
                tonic::Code::PermissionDenied,
                "agent credential has been revoked (the agent was deleted or re-enrolled)",
                tether_proto::refusal::Refusal::CredentialRevoked,
            ));
        }
        if let Some(conflict) = &conflict {
            self.note_conflict(&caller, &agent, conflict).await;
        }
        tracing::info!(
            agent = %agent,
            org = %caller.org,
            session = %session_id,
            peer = peer.map(tracing::field::display),
            "session opened"
        );

        let event_seq = state.events.settled_seq(&caller.org, &agent)?;
        let welcome = convert::agent::welcome_to_pb(
            &session_id,
            last_seq,
            event_seq,
            &journaled.acks,
            state.registry.liveness_config(),
            SystemTime::now(),
        );
        let limits = SessionLimits {
            max_samples_per_report: state.config.limits.max_samples_per_report,
            max_seq_jump: state.config.limits.max_seq_jump,
            report: convert::ReportLimits::of(&state.config.limits),
            messages_per_second: f64::from(state.config.limits.stream_messages_per_second),
            message_burst: f64::from(state.config.limits.stream_message_burst),
            reports_in_flight: state.config.storage.session_reports_in_flight,
            min_report_interval: state.config.storage.min_report_interval,
            max_report_interval: state.config.storage.max_report_interval,
            metrics: state.metrics.clone(),
        };
        let session_loop = SessionLoop::new(
            inbound,
            session.clone(),
            peer,
            state.registry.clone(),
            state.writer.clone(),
            state.commands.clone(),
            state.events.clone(),
            limits,
            welcome,
            accepts_deferred_reports,
        );
        // With the loop (and its guard) in place: re-offers, settlements and offers of queued
        // invocations, sent after the Welcome.
        state.commands.session_opened(&session, &journaled).await;
        Ok(Response::new(Box::pin(session_loop.into_stream())))
    }
}
