//! `AgentService`: enrollment and the agent's session stream.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::Stream;
use tether_proto as pb;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::{self, Principal, Secret};
use crate::convert;
use crate::domain::{
    AgentHello, AgentId, AgentRecord, AgentStatus, Enrollment, Labels, LiveRecord, OrgId, Role,
    SessionId, StatusReason, TokenRecord,
};
use crate::error::ServerError;
use crate::metrics::MtlsLabels;
use crate::registry::EnrollTarget;
use crate::service::AppState;
use crate::session::{SessionLimits, SessionLoop};
use crate::store::Write;

const ENROLL: &str = "/tether.v1.AgentService/Enroll";
const CONNECT: &str = "/tether.v1.AgentService/Connect";

/// How long a new stream may take to send its `Hello`.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

pub struct AgentService {
    state: Arc<AppState>,
}

impl AgentService {
    pub fn new(state: Arc<AppState>) -> Self {
        Self { state }
    }

    async fn enroll_inner(
        &self,
        caller: auth::Caller,
        req: pb::EnrollRequest,
    ) -> Result<(AgentId, OrgId, Secret), ServerError> {
        let enrollment =
            convert::agent::enroll_from_pb(req, &self.state.config.limits, SystemTime::now())?;
        let token = self.state.auth.reserve_enrollment(&caller.token)?;
        let result = self.enroll_reserved(&caller, &token, enrollment).await;
        if result.is_err() {
            self.state.auth.release_enrollment(&caller.token);
        }
        result
    }

    /// Enrolls with a use of `token` already reserved; returns the agent's id, org and new
    /// credential.
    async fn enroll_reserved(
        &self,
        caller: &auth::Caller,
        token: &crate::domain::EnrollmentTokenRecord,
        enrollment: Enrollment,
    ) -> Result<(AgentId, OrgId, Secret), ServerError> {
        let Enrollment {
            system_info: info,
            labels: asked,
            name,
        } = enrollment;
        let state = &self.state;
        let org = caller.org.clone();
        let labels = merge_labels(asked, &token.labels);
        if labels.len() > state.config.limits.max_labels {
            return Err(ServerError::invalid(format!(
                "the agent's and the enrollment token's labels together exceed {} labels",
                state.config.limits.max_labels
            )));
        }
        let now = SystemTime::now();
        let (agent_id, enrolled_at, old_credentials) = match state
            .registry
            .enroll_target(&org, &info.hardware_id)
        {
            EnrollTarget::Existing(id) => {
                let enrolled_at = state
                    .registry
                    .get(&org, &id)
                    .map_or(now, |a| a.record.enrolled_at);
                let old = state.auth.agent_credentials(&id);
                (id, enrolled_at, old)
            }
            EnrollTarget::New { duplicates } => {
                let max = state.config.limits.max_agents_per_org;
                if state.registry.n_agents(&org) >= max {
                    state.metrics.limit("max_agents_per_org");
                    return Err(ServerError::ResourceExhausted(format!(
                        "org {org} has reached its limit of {max} agents"
                    )));
                }
                let id = AgentId::new(random_id());
                if !duplicates.is_empty() {
                    tracing::warn!(
                        agent = %id,
                        ?duplicates,
                        "hardware id already in use by a connected agent; enrolling as a new agent"
                    );
                }
                (id, now, Vec::new())
            }
        };
        let name = if name.is_empty() {
            info.hostname.clone()
        } else {
            name
        };
        let record = AgentRecord {
            id: agent_id.clone(),
            org: org.clone(),
            name,
            labels,
            system_info: info,
            enrolled_at,
            pinned_labels: token.labels.clone(),
        };
        let (mut credential_record, credential) =
            auth::issue(org.clone(), Role::Agent, format!("agent {agent_id}"), now);
        credential_record.agent = Some(agent_id.clone());
        let revoked: Vec<TokenRecord> = old_credentials
            .into_iter()
            .map(|mut t| {
                t.revoked = true;
                t
            })
            .collect();

        let mut writes = vec![
            Write::PutAgent(record.clone()),
            Write::PutToken(credential_record.clone()),
        ];
        writes.extend(revoked.iter().cloned().map(Write::PutToken));
        if state.registry.get(&org, &agent_id).is_none() {
            writes.push(Write::PutLive {
                org: org.clone(),
                agent: agent_id.clone(),
                live: LiveRecord {
                    status: AgentStatus::Offline,
                    reason: StatusReason::Enrolled,
                    since: now,
                    last_seen: None,
                    last_seq: 0,
                },
            });
        }
        let audit = crate::audit::entry(caller, ENROLL, agent_id.as_str(), Ok(()));
        // The token's current record (with every use reserved so far) is queued under the
        // cache lock, so writes of its count reach the store in order; the queue slot is taken
        // before, since nothing may wait under that lock.
        let slot = state.writer.reserve().await?;
        let pending = state.auth.with_enrollment(&token.id, |current| {
            if let Some(current) = current {
                writes.push(Write::PutEnrollmentToken(current.clone()));
            }
            slot.submit(writes, Some(audit))
        })?;
        pending.wait().await?;

        state.auth.insert_token(credential_record);
        for t in revoked {
            state.auth.insert_token(t);
        }
        state.registry.enrolled(record);
        tracing::info!(agent = %agent_id, org = %org, enrollment_token = %token.id, "agent enrolled");
        Ok((agent_id, org, credential))
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
            presented = ?presented,
            peer = ?request.remote_addr(),
            "refused an agent stream: client certificate"
        );
        if let Some(entry) = self.state.refusals.refused(
            caller,
            CONNECT,
            agent.as_str(),
            &status,
            crate::audit::RefusalKind::Other,
        ) {
            self.state.refusals.record(entry).await;
        }
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
        match self
            .enroll_inner(caller.clone(), request.into_inner())
            .await
        {
            Ok((agent, org, credential)) => Ok(Response::new(convert::agent::enroll_to_pb(
                &agent,
                &org,
                &credential,
            ))),
            Err(err) => {
                let status = Status::from(err);
                self.state
                    .writer
                    .audit(crate::audit::entry(&caller, ENROLL, "", Err(&status)))
                    .await;
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
        let mut inbound = request.into_inner();
        let first = match tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await {
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "no Hello within {}s of opening the stream",
                    HELLO_TIMEOUT.as_secs()
                )));
            }
            Ok(Err(status)) => {
                return Err(crate::session::inbound_error(status, &self.state.metrics));
            }
            Ok(Ok(None)) => {
                return Err(Status::invalid_argument("stream closed before Hello"));
            }
            Ok(Ok(Some(first))) => first,
        };
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
        } = convert::agent::hello_from_pb(hello, &state.config.limits, SystemTime::now())?;
        let pinned = state
            .registry
            .get(&caller.org, &agent)
            .map(|a| a.record.pinned_labels)
            .ok_or(ServerError::NotFound(format!("agent {agent}")))?;
        let labels = merge_labels(labels, &pinned);
        if labels.len() > state.config.limits.max_labels {
            return Err(Status::invalid_argument(format!(
                "the agent's and its pinned labels together exceed {} labels",
                state.config.limits.max_labels
            )));
        }

        let session_id = SessionId::new(random_id());
        let (session, last_seq) = state
            .registry
            .open_session(&caller.org, &agent, session_id.clone(), info, Some(labels))
            .ok_or(ServerError::NotFound(format!("agent {agent}")))?;
        tracing::info!(agent = %agent, session = %session_id, org = %caller.org, "session opened");

        let welcome = convert::agent::welcome_to_pb(
            &session_id,
            last_seq,
            state.registry.liveness_config(),
            SystemTime::now(),
        );
        let limits = SessionLimits {
            max_samples_per_report: state.config.limits.max_samples_per_report,
            max_seq_jump: state.config.limits.max_seq_jump,
            report: convert::ReportLimits::of(&state.config.limits),
            messages_per_second: f64::from(state.config.limits.stream_messages_per_second),
            message_burst: f64::from(state.config.limits.stream_message_burst),
            metrics: state.metrics.clone(),
        };
        let stream = SessionLoop::new(
            inbound,
            session,
            state.registry.clone(),
            state.writer.clone(),
            limits,
            welcome,
        )
        .into_stream();
        Ok(Response::new(Box::pin(stream)))
    }
}
