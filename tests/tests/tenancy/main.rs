//! The cross-tenant matrix: every RPC of the role table × every kind of caller, and the isolation
//! of one org's objects from another org's callers.
//!
//! The matrix iterates `tether_server::access::RPC_ACCESS`, so a new RPC gets a row there and a
//! request in [`invoke`] (`requests.rs`, which panics for a method it does not know) before this
//! test passes.

use std::collections::BTreeMap;
use std::time::Duration;

use tether_proto as pb;
use tether_server::access::RPC_ACCESS;
use tether_server::domain::Role;
use tether_tests::{
    AdminClient, RawSession, TestServer, create_token, eventually, fast_config, system_info,
    token_id, trace_init,
};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Status};

mod isolation;
mod matrix;
mod requests;

use requests::invoke;

const ACME: &str = "acme";
const GLOBEX: &str = "globex";
/// Longest wait for one message of a stream the matrix opens.
const STREAM_WAIT: Duration = Duration::from_secs(5);

/// Sets `authorization` to exactly this value (or leaves it out), so that a test can send
/// headers `Bearer` never would.
#[derive(Clone)]
struct Header(Option<String>);

impl tonic::service::Interceptor for Header {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(value) = &self.0 {
            let value = value.parse().expect("header value is ASCII");
            request.metadata_mut().insert("authorization", value);
        }
        Ok(request)
    }
}

type Raw = InterceptedService<Channel, Header>;

/// Clients of the four services sending one `authorization` header.
#[derive(Clone)]
struct Clients {
    agent: pb::agent_service_client::AgentServiceClient<Raw>,
    fleet: pb::fleet_service_client::FleetServiceClient<Raw>,
    admin: pb::admin_service_client::AdminServiceClient<Raw>,
    commands: pb::command_service_client::CommandServiceClient<Raw>,
    alerts: pb::alert_service_client::AlertServiceClient<Raw>,
    events: pb::event_service_client::EventServiceClient<Raw>,
}

impl Clients {
    fn new(channel: &Channel, header: Option<String>) -> Self {
        let with = |h: &Option<String>| InterceptedService::new(channel.clone(), Header(h.clone()));
        Self {
            agent: pb::agent_service_client::AgentServiceClient::new(with(&header)),
            fleet: pb::fleet_service_client::FleetServiceClient::new(with(&header)),
            admin: pb::admin_service_client::AdminServiceClient::new(with(&header)),
            commands: pb::command_service_client::CommandServiceClient::new(with(&header)),
            alerts: pb::alert_service_client::AlertServiceClient::new(with(&header)),
            events: pb::event_service_client::EventServiceClient::new(with(&header)),
        }
    }
}

/// What the server should make of a caller.
#[derive(Clone, Debug, PartialEq)]
enum Who {
    /// No usable token: missing, malformed, unknown, expired or revoked.
    Nobody,
    /// A revoked agent credential (refused with `PERMISSION_DENIED`, so the agent stops).
    RevokedAgent,
    User {
        org: &'static str,
        role: Role,
        server_admin: bool,
    },
    Agent,
    Enrollment,
}

/// One column of the matrix.
struct Caller {
    name: &'static str,
    who: Who,
    /// The org whose audit trail records this caller's calls (`None`: no token to identify).
    org: Option<&'static str>,
    /// The id of its token, as audit events name it.
    token_id: Option<String>,
    clients: Clients,
}

/// One org's tokens and objects.
struct Org {
    /// The first admin token, from `CreateOrg`.
    first_admin: String,
    admin: String,
    operator: String,
    viewer: String,
    expired: String,
    /// The expired token's id, to find its refusal in the audit trail.
    expired_id: String,
    revoked: String,
    enrollment: String,
    /// Connects in the matrix and is read by `GetAgent` / `GetMetrics`.
    subject: (String, String),
    /// An event the subject reported, read and changed by the matrix's `EventService` calls.
    subject_event: String,
    /// Deleted by the matrix's `DeleteAgent`.
    victim_agent: String,
    /// Revoked by the matrix's `RevokeToken`.
    victim_token: String,
    /// Revoked by the matrix's `RevokeEnrollmentToken`.
    victim_enrollment: String,
    /// The credential of an agent deleted before the matrix.
    revoked_agent_credential: String,
    /// Commands sent to the subject: one the matrix cancels, one it pauses and resumes.
    cancel_command: String,
    steer_command: String,
    agents: Vec<String>,
    tokens: Vec<String>,
    enrollment_tokens: Vec<String>,
}

struct World {
    server: TestServer,
    channel: Channel,
    acme: Org,
    globex: Org,
    _dir: tempfile::TempDir,
}

async fn enroll(server: &TestServer, token: &str, hostname: &str) -> pb::EnrollResponse {
    server
        .agent_client(Some(token))
        .await
        .enroll(pb::EnrollRequest {
            system_info: Some(system_info(hostname)),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("enroll {hostname}: {e}"))
        .into_inner()
}

async fn create_enrollment_token(admin: &mut AdminClient) -> pb::CreateEnrollmentTokenResponse {
    admin
        .create_enrollment_token(pb::CreateEnrollmentTokenRequest::default())
        .await
        .expect("create enrollment token")
        .into_inner()
}

/// Creates org `id` with its tokens, enrollment tokens and agents.
async fn org(server: &TestServer, id: &'static str) -> Org {
    let created = server.create_org(id).await;
    assert_eq!(created.org.as_ref().map(|o| o.org_id.as_str()), Some(id));
    let first_admin = created.admin_secret;
    let mut admin = server.admin_as(Some(&first_admin)).await;
    let ttl = Some(Duration::from_secs(1));
    let expired = create_token(&mut admin, "expired", pb::Role::Admin, ttl).await;
    let new = |name: &'static str, role: pb::Role| {
        let mut admin = admin.clone();
        async move { create_token(&mut admin, name, role, None).await }
    };
    let admin_token = new("admin", pb::Role::Admin).await;
    let operator = new("operator", pb::Role::Operator).await;
    let viewer = new("viewer", pb::Role::Viewer).await;
    let revoked = new("revoked", pb::Role::Admin).await;
    let victim_token = new("victim", pb::Role::Viewer).await;
    let revoked_id = revoked.token.as_ref().expect("token").token_id.clone();
    admin
        .revoke_token(pb::RevokeTokenRequest {
            token_id: revoked_id,
        })
        .await
        .expect("revoke token");

    let enrollment = create_enrollment_token(&mut admin).await;
    let victim_enrollment = create_enrollment_token(&mut admin).await;
    let subject = enroll(server, &enrollment.secret, &format!("{id}-subject")).await;
    let victim = enroll(server, &enrollment.secret, &format!("{id}-victim")).await;
    // An agent deleted before the matrix: its credential is revoked.
    let retired = enroll(server, &enrollment.secret, &format!("{id}-retired")).await;
    admin
        .delete_agent(pb::DeleteAgentRequest {
            agent_id: retired.agent_id.clone(),
        })
        .await
        .expect("delete the retired agent");
    // Enrolling the same machine again with its credential keeps the agent.
    let first = enroll(server, &enrollment.secret, &format!("{id}-reenrolled")).await;
    let again = server
        .agent_client(Some(&enrollment.secret))
        .await
        .enroll(pb::EnrollRequest {
            system_info: Some(system_info(&format!("{id}-reenrolled"))),
            previous_credential: first.agent_credential.clone(),
            ..Default::default()
        })
        .await
        .expect("re-enroll")
        .into_inner();
    assert_eq!(first.agent_id, again.agent_id);
    assert_eq!(subject.org_id, id);

    let tokens = [
        &created.admin_token,
        &expired.token,
        &admin_token.token,
        &operator.token,
        &viewer.token,
        &revoked.token,
        &victim_token.token,
    ]
    .into_iter()
    .map(|t| t.as_ref().expect("token").token_id.clone())
    .collect();
    let commands = server.commands_as(Some(&admin_token.secret)).await;
    let queued = || {
        let mut request = tether_tests::exec_request(
            vec!["/bin/true".into()],
            tether_tests::command_agent(&[&subject.agent_id]),
        );
        if let Some(targets) = request.targets.as_mut() {
            targets.include_offline = true;
        }
        request
    };
    let cancel_command = tether_tests::send(&commands, queued()).await.command_id;
    let steer_command = tether_tests::send(&commands, queued()).await.command_id;
    let subject_event = subject_event(server, id, &subject, &admin_token.secret).await;
    let enrollment_id = |t: &pb::CreateEnrollmentTokenResponse| {
        t.token.as_ref().expect("enrollment token").token_id.clone()
    };
    Org {
        first_admin,
        admin: admin_token.secret,
        operator: operator.secret,
        viewer: viewer.secret,
        expired: expired.secret,
        expired_id: expired.token.as_ref().expect("token").token_id.clone(),
        revoked: revoked.secret,
        victim_token: victim_token.token.expect("token").token_id,
        victim_enrollment: enrollment_id(&victim_enrollment),
        enrollment_tokens: vec![
            enrollment_id(&enrollment),
            enrollment_id(&victim_enrollment),
        ],
        enrollment: enrollment.secret,
        agents: vec![
            subject.agent_id.clone(),
            victim.agent_id.clone(),
            again.agent_id.clone(),
        ],
        cancel_command,
        steer_command,
        subject: (subject.agent_id, subject.agent_credential),
        subject_event,
        victim_agent: victim.agent_id,
        revoked_agent_credential: retired.agent_credential,
        tokens,
    }
}

/// Has the subject report one event over its stream and returns the event's id.
async fn subject_event(
    server: &TestServer,
    org: &str,
    subject: &pb::EnrollResponse,
    admin: &str,
) -> String {
    let (mut session, _) = RawSession::hello(
        server,
        &subject.agent_id,
        &subject.agent_credential,
        &format!("{org}-subject"),
    )
    .await
    .expect("subject session");
    let event = tether_tests::agent_event(1, "matrix.subject", pb::EventSeverity::Warning);
    let ack = session.report_events(vec![event]).await.expect("event ack");
    assert_eq!((ack.durable_seq, ack.rejected.len()), (1, 0));
    session
        .send(pb::connect_request::Message::Goodbye(pb::AgentGoodbye {
            reason: "set-up done".into(),
        }))
        .await;
    let mut rest = session.close();
    while let Ok(Some(_)) = rest.message().await {}
    let listed = server
        .events_as(Some(admin))
        .await
        .list_events(pb::ListEventsRequest::default())
        .await
        .expect("list events")
        .into_inner();
    assert_eq!(listed.events.len(), 1, "{listed:?}");
    listed.events[0].event_id.clone()
}

impl World {
    async fn new() -> Self {
        trace_init();
        let dir = tempfile::tempdir().expect("tempdir");
        let server = TestServer::start(fast_config(dir.path())).await;
        let acme = org(&server, ACME).await;
        let globex = org(&server, GLOBEX).await;
        // The expired tokens were created first; wait until the server refuses them.
        for org in [&acme, &globex] {
            let fleet = server.fleet_as(Some(&org.expired)).await;
            eventually("the 1 s token to expire", || {
                let mut fleet = fleet.clone();
                async move {
                    let result = fleet.list_agents(pb::ListAgentsRequest::default()).await;
                    match result {
                        Err(status) if status.code() == Code::Unauthenticated => Some(()),
                        Ok(_) => None,
                        Err(status) => panic!("expired token: unexpected {status:?}"),
                    }
                }
            })
            .await;
            // Its refusal is audited after it is answered: wait for the record, so that it
            // does not land among the matrix's own.
            let admin = server.admin_as(Some(&org.first_admin)).await;
            eventually("the expired token's refusal to be audited", || {
                let admin = admin.clone();
                async move {
                    all_audit(&admin)
                        .await
                        .iter()
                        .any(|e| e.actor_token_id == org.expired_id)
                        .then_some(())
                }
            })
            .await;
        }
        let channel = server.channel().await;
        Self {
            server,
            channel,
            acme,
            globex,
            _dir: dir,
        }
    }

    /// The matrix's columns: callers of every kind, seen from org acme.
    fn callers(&self) -> Vec<Caller> {
        let a = &self.acme;
        let unknown = format!("tether_0123456789abcdef_{}", "5a".repeat(32));
        // A caller presenting `token` as `Bearer`, audited in `org`.
        let with = |name, who, org: &'static str, token: &str| Caller {
            name,
            who,
            org: Some(org),
            token_id: Some(token_id(token).to_owned()),
            clients: Clients::new(&self.channel, Some(format!("Bearer {token}"))),
        };
        // A caller sending `header` as is, whom the server cannot identify.
        let anonymous = |name, header: Option<String>| Caller {
            name,
            who: Who::Nobody,
            org: None,
            token_id: None,
            clients: Clients::new(&self.channel, header),
        };
        let user = |org: &'static str, role: Role, server_admin: bool| Who::User {
            org,
            role,
            server_admin,
        };
        vec![
            with("own admin", user(ACME, Role::Admin, false), ACME, &a.admin),
            with(
                "own operator",
                user(ACME, Role::Operator, false),
                ACME,
                &a.operator,
            ),
            with(
                "own viewer",
                user(ACME, Role::Viewer, false),
                ACME,
                &a.viewer,
            ),
            with(
                "other-org admin",
                user(GLOBEX, Role::Admin, false),
                GLOBEX,
                &self.globex.admin,
            ),
            with(
                "server admin",
                user("default", Role::Admin, true),
                "default",
                &self.server.admin_token,
            ),
            anonymous("no token", None),
            anonymous("malformed header", Some("Basic x".to_owned())),
            anonymous("unknown token", Some(format!("Bearer {unknown}"))),
            with("expired", Who::Nobody, ACME, &a.expired),
            with("revoked", Who::Nobody, ACME, &a.revoked),
            with("agent credential", Who::Agent, ACME, &a.subject.1),
            with(
                "revoked agent cred",
                Who::RevokedAgent,
                ACME,
                &a.revoked_agent_credential,
            ),
            with("enrollment token", Who::Enrollment, ACME, &a.enrollment),
        ]
    }
}

/// Ids of org acme's objects that requests name.
struct Targets {
    cancel_command: String,
    steer_command: String,
    subject: String,
    victim_agent: String,
    victim_token: String,
    victim_enrollment: String,
    /// Callers of the matrix: a caller's column is `serial % n_callers`, which names the alert
    /// rule it creates, then deletes, in its own org.
    n_callers: usize,
    /// An event of the subject agent.
    subject_event: String,
}

/// An audit event reduced to what a call determines.
type AuditKey = (String, String, i32, i32);

/// Every audit event of `org` after `after`, as (method, actor token id, outcome, status).
async fn audit_after(admin: &AdminClient, after: u64) -> Vec<AuditKey> {
    all_audit(admin)
        .await
        .into_iter()
        .filter(|e| e.seq > after)
        .map(|e| (e.method, e.actor_token_id, e.outcome, e.status_code))
        .collect()
}

async fn all_audit(admin: &AdminClient) -> Vec<pb::AuditEvent> {
    let filter = pb::ListAuditEventsRequest {
        page_size: 1000,
        ..Default::default()
    };
    tether_tests::list_audit(admin, filter).await
}

async fn server_stop(world: World) {
    let World {
        server, channel, ..
    } = world;
    drop(channel);
    server.stop().await;
}

/// A message with every occurrence of `id` replaced, to compare messages about different ids.
fn shape(status: &Status, id: &str) -> (Code, String) {
    (status.code(), status.message().replace(id, "<id>"))
}
