//! The cross-tenant matrix: every RPC of the role table × every kind of caller, and the isolation
//! of one org's objects from another org's callers.
//!
//! The matrix iterates `tether_server::access::RPC_ACCESS`, so a new RPC gets a row there and a
//! request in [`invoke`] (which panics for a method it does not know) before this test passes.

use std::collections::BTreeMap;
use std::time::Duration;

use tether_proto as pb;
use tether_server::access::{Access, RPC_ACCESS};
use tether_server::domain::Role;
use tether_tests::{
    AdminClient, RawSession, TestServer, create_token, eventually, fast_config, system_info,
    token_id, trace_init,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Status};

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

/// Clients of the three services sending one `authorization` header.
#[derive(Clone)]
struct Clients {
    agent: pb::agent_service_client::AgentServiceClient<Raw>,
    fleet: pb::fleet_service_client::FleetServiceClient<Raw>,
    admin: pb::admin_service_client::AdminServiceClient<Raw>,
}

impl Clients {
    fn new(channel: &Channel, header: Option<String>) -> Self {
        let with = |h: &Option<String>| InterceptedService::new(channel.clone(), Header(h.clone()));
        Self {
            agent: pb::agent_service_client::AgentServiceClient::new(with(&header)),
            fleet: pb::fleet_service_client::FleetServiceClient::new(with(&header)),
            admin: pb::admin_service_client::AdminServiceClient::new(with(&header)),
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
    revoked: String,
    enrollment: String,
    /// Connects in the matrix and is read by `GetAgent` / `GetMetrics`.
    subject: (String, String),
    /// Deleted by the matrix's `DeleteAgent`.
    victim_agent: String,
    /// Revoked by the matrix's `RevokeToken`.
    victim_token: String,
    /// Revoked by the matrix's `RevokeEnrollmentToken`.
    victim_enrollment: String,
    /// A credential replaced by a re-enrollment of its agent.
    revoked_agent_credential: String,
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
    // Enrolling the same machine again replaces (revokes) its first credential.
    let first = enroll(server, &enrollment.secret, &format!("{id}-reenrolled")).await;
    let again = enroll(server, &enrollment.secret, &format!("{id}-reenrolled")).await;
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
    let enrollment_id = |t: &pb::CreateEnrollmentTokenResponse| {
        t.token.as_ref().expect("enrollment token").token_id.clone()
    };
    Org {
        first_admin,
        admin: admin_token.secret,
        operator: operator.secret,
        viewer: viewer.secret,
        expired: expired.secret,
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
        subject: (subject.agent_id, subject.agent_credential),
        victim_agent: victim.agent_id,
        revoked_agent_credential: first.agent_credential,
        tokens,
    }
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

/// Whether a token with `have` passes `AtLeast(need)`: admin ⊇ operator ⊇ viewer.
fn covers(have: Role, need: Role) -> bool {
    let rank = |r: Role| match r {
        Role::Agent => 0,
        Role::Viewer => 1,
        Role::Operator => 2,
        Role::Admin => 3,
    };
    rank(have) >= rank(need)
}

/// The answer the spec prescribes for `who` calling a method with rule `access` on org acme's
/// objects (`names_object`: the request names one object by id).
fn expected(access: Access, who: &Who, names_object: bool) -> Code {
    let allowed = match (access, who) {
        (_, Who::Nobody) => return Code::Unauthenticated,
        (_, Who::RevokedAgent) => return Code::PermissionDenied,
        (Access::Enrollment, Who::Enrollment) | (Access::Agent, Who::Agent) => true,
        (Access::AtLeast(need), Who::User { role, .. }) => covers(*role, need),
        (Access::ServerAdmin, Who::User { server_admin, .. }) => *server_admin,
        _ => false,
    };
    match who {
        _ if !allowed => Code::PermissionDenied,
        Who::User { org, .. } if names_object && *org != ACME => Code::NotFound,
        _ => Code::Ok,
    }
}

/// Ids of org acme's objects that requests name.
struct Targets {
    subject: String,
    victim_agent: String,
    victim_token: String,
    victim_enrollment: String,
}

/// Calls `method` with a minimal valid request naming acme's objects. Returns whether the
/// request names one object by id, and the call's outcome (streams count as `Ok` once they
/// deliver their first message).
async fn invoke(
    method: &str,
    t: &Targets,
    c: &Clients,
    serial: usize,
) -> (bool, Result<(), Status>) {
    let (mut agent, mut fleet, mut admin) = (c.agent.clone(), c.fleet.clone(), c.admin.clone());
    match method {
        "/tether.v1.AgentService/Enroll" => (
            false,
            drop_ok(
                agent
                    .enroll(pb::EnrollRequest {
                        system_info: Some(system_info("matrix-enrolled")),
                        ..Default::default()
                    })
                    .await,
            ),
        ),
        "/tether.v1.AgentService/Connect" => {
            let (tx, rx) = mpsc::channel(4);
            let hello = pb::connect_request::Message::Hello(tether_tests::hello(
                &t.subject,
                "acme-subject",
                &[],
            ));
            tx.send(pb::ConnectRequest {
                message: Some(hello),
            })
            .await
            .expect("queue Hello");
            let result = async {
                let mut stream = agent.connect(ReceiverStream::new(rx)).await?.into_inner();
                match tokio::time::timeout(STREAM_WAIT, stream.message()).await {
                    Ok(Ok(Some(pb::ConnectResponse {
                        message: Some(pb::connect_response::Message::Welcome(_)),
                    }))) => Ok(()),
                    Ok(Err(status)) => Err(status),
                    other => panic!("Connect: expected Welcome, got {other:?}"),
                }
            }
            .await;
            drop(tx);
            (false, result)
        }
        "/tether.v1.FleetService/ListAgents" => (
            false,
            drop_ok(fleet.list_agents(pb::ListAgentsRequest::default()).await),
        ),
        "/tether.v1.FleetService/GetAgent" => (
            true,
            drop_ok(
                fleet
                    .get_agent(pb::GetAgentRequest {
                        agent_id: t.subject.clone(),
                    })
                    .await,
            ),
        ),
        "/tether.v1.FleetService/WatchAgents" => {
            let result = async {
                let mut stream = fleet
                    .watch_agents(pb::WatchAgentsRequest::default())
                    .await?
                    .into_inner();
                match tokio::time::timeout(STREAM_WAIT, stream.message()).await {
                    Ok(Ok(Some(_))) => Ok(()),
                    Ok(Err(status)) => Err(status),
                    other => panic!("WatchAgents: expected an event, got {other:?}"),
                }
            }
            .await;
            (false, result)
        }
        "/tether.v1.FleetService/GetMetrics" => (
            true,
            drop_ok(
                fleet
                    .get_metrics(pb::GetMetricsRequest {
                        agent_id: t.subject.clone(),
                        ..Default::default()
                    })
                    .await,
            ),
        ),
        "/tether.v1.FleetService/GetFleetSummary" => (
            false,
            drop_ok(
                fleet
                    .get_fleet_summary(pb::GetFleetSummaryRequest::default())
                    .await,
            ),
        ),
        "/tether.v1.FleetService/GetServerConfig" => (
            false,
            drop_ok(
                fleet
                    .get_server_config(pb::GetServerConfigRequest::default())
                    .await,
            ),
        ),
        "/tether.v1.AdminService/CreateOrg" => (
            false,
            drop_ok(
                admin
                    .create_org(pb::CreateOrgRequest {
                        org_id: format!("matrix-{serial}"),
                        display_name: String::new(),
                    })
                    .await,
            ),
        ),
        "/tether.v1.AdminService/ListOrgs" => (
            false,
            drop_ok(admin.list_orgs(pb::ListOrgsRequest::default()).await),
        ),
        "/tether.v1.AdminService/CreateToken" => (
            false,
            drop_ok(
                admin
                    .create_token(pb::CreateTokenRequest {
                        name: format!("matrix-{serial}"),
                        role: pb::Role::Viewer as i32,
                        ttl: None,
                    })
                    .await,
            ),
        ),
        "/tether.v1.AdminService/ListTokens" => (
            false,
            drop_ok(admin.list_tokens(pb::ListTokensRequest::default()).await),
        ),
        "/tether.v1.AdminService/RevokeToken" => (
            true,
            drop_ok(
                admin
                    .revoke_token(pb::RevokeTokenRequest {
                        token_id: t.victim_token.clone(),
                    })
                    .await,
            ),
        ),
        "/tether.v1.AdminService/DeleteAgent" => (
            true,
            drop_ok(
                admin
                    .delete_agent(pb::DeleteAgentRequest {
                        agent_id: t.victim_agent.clone(),
                    })
                    .await,
            ),
        ),
        "/tether.v1.AdminService/ListAuditEvents" => (
            false,
            drop_ok(
                admin
                    .list_audit_events(pb::ListAuditEventsRequest::default())
                    .await,
            ),
        ),
        "/tether.v1.AdminService/CreateEnrollmentToken" => (
            false,
            drop_ok(
                admin
                    .create_enrollment_token(pb::CreateEnrollmentTokenRequest::default())
                    .await,
            ),
        ),
        "/tether.v1.AdminService/ListEnrollmentTokens" => (
            false,
            drop_ok(
                admin
                    .list_enrollment_tokens(pb::ListEnrollmentTokensRequest::default())
                    .await,
            ),
        ),
        "/tether.v1.AdminService/RevokeEnrollmentToken" => (
            true,
            drop_ok(
                admin
                    .revoke_enrollment_token(pb::RevokeEnrollmentTokenRequest {
                        token_id: t.victim_enrollment.clone(),
                    })
                    .await,
            ),
        ),
        other => panic!(
            "add a case for {other} to tests/tests/tenancy.rs `invoke`: a minimal valid \
             request naming org acme's objects"
        ),
    }
}

/// A unary answer without its body.
fn drop_ok<T>(result: Result<tonic::Response<T>, Status>) -> Result<(), Status> {
    result.map(drop)
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
    let mut admin = admin.clone();
    let mut events = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = admin
            .list_audit_events(pb::ListAuditEventsRequest {
                page_size: 1000,
                page_token: page_token.clone(),
                ..Default::default()
            })
            .await
            .expect("list audit events")
            .into_inner();
        events.extend(page.events);
        if page.next_page_token.is_empty() {
            return events;
        }
        page_token = page.next_page_token;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_answers_every_caller_as_the_role_table_says() {
    let world = World::new().await;
    let server = &world.server;
    let callers = world.callers();
    let targets = Targets {
        subject: world.acme.subject.0.clone(),
        victim_agent: world.acme.victim_agent.clone(),
        victim_token: world.acme.victim_token.clone(),
        victim_enrollment: world.acme.victim_enrollment.clone(),
    };

    // Audit trails before the matrix, to check afterwards what the matrix's calls added.
    let trail_admins = [
        (ACME, server.admin_as(Some(&world.acme.first_admin)).await),
        (
            GLOBEX,
            server.admin_as(Some(&world.globex.first_admin)).await,
        ),
        ("default", server.admin().await),
    ];
    let mut baselines = BTreeMap::new();
    for (org, admin) in &trail_admins {
        let last = all_audit(admin).await.last().map_or(0, |e| e.seq);
        baselines.insert(*org, last);
    }

    let mut cells = Vec::new();
    let mut expected_audit: BTreeMap<&str, Vec<AuditKey>> = BTreeMap::new();
    for (serial, (method, access, mutating)) in RPC_ACCESS.iter().enumerate() {
        for (column, caller) in callers.iter().enumerate() {
            let (names_object, result) = invoke(
                method,
                &targets,
                &caller.clients,
                serial * callers.len() + column,
            )
            .await;
            let want = expected(*access, &caller.who, names_object);
            let got = result.as_ref().err().map_or(Code::Ok, Status::code);
            cells.push((*method, caller.name, want, got, result.err()));

            // What the audit trail of the caller's org must record for this call: every denial
            // of an identifiable token, and every mutating call that got past the gate.
            let outcome = match got {
                Code::Unauthenticated | Code::PermissionDenied | Code::ResourceExhausted => {
                    Some(pb::AuditOutcome::Denied)
                }
                Code::Ok if *mutating => Some(pb::AuditOutcome::Succeeded),
                _ if *mutating => Some(pb::AuditOutcome::Failed),
                _ => None,
            };
            if let (Some(outcome), Some(org), Some(id)) = (outcome, caller.org, &caller.token_id) {
                expected_audit.entry(org).or_default().push((
                    (*method).to_owned(),
                    id.clone(),
                    outcome as i32,
                    got as i32,
                ));
            }
        }
    }

    let wrong: Vec<_> = cells
        .iter()
        .filter(|(_, _, want, got, _)| want != got)
        .collect();
    if !wrong.is_empty() {
        let mut table = format!(
            "{} of {} cells differ from the role table:\n{:<46} {:<20} {:<18} {:<18} message\n",
            wrong.len(),
            cells.len(),
            "method",
            "caller",
            "expected",
            "got"
        );
        for (method, caller, want, got, status) in &wrong {
            table.push_str(&format!(
                "{method:<46} {caller:<20} {:<18} {:<18} {}\n",
                format!("{want:?}"),
                format!("{got:?}"),
                status.as_ref().map_or("", Status::message)
            ));
        }
        panic!("{table}");
    }
    assert_eq!(cells.len(), RPC_ACCESS.len() * callers.len());

    // Every denial and every mutating call is in its org's audit trail, once; nothing else is.
    for (org, admin) in &trail_admins {
        let mut want = expected_audit.remove(org).unwrap_or_default();
        want.sort();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let mut got = audit_after(admin, baselines[org]).await;
            got.sort();
            if got == want || tokio::time::Instant::now() >= deadline {
                assert_eq!(
                    got, want,
                    "audit trail of org {org}: (method, actor, outcome, status) of the matrix's calls"
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    server_stop(world).await;
}

/// The role table has a row for every method of the proto's services, and no other.
#[test]
fn the_role_table_covers_every_rpc_of_the_proto() {
    use prost::Message as _;
    let fds = prost_types::FileDescriptorSet::decode(tether_proto::FILE_DESCRIPTOR_SET)
        .expect("descriptor set decodes");
    let mut methods: Vec<String> = fds
        .file
        .iter()
        .filter(|f| f.package() == "tether.v1")
        .flat_map(|f| {
            f.service.iter().flat_map(|s| {
                s.method
                    .iter()
                    .map(move |m| format!("/tether.v1.{}/{}", s.name(), m.name()))
            })
        })
        .collect();
    methods.sort();
    let mut rows: Vec<String> = RPC_ACCESS.iter().map(|(m, _, _)| (*m).to_owned()).collect();
    rows.sort();
    assert_eq!(rows, methods);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_orgs_objects_are_invisible_and_untouchable() {
    let world = World::new().await;
    let server = &world.server;
    let (acme, globex) = (&world.acme, &world.globex);
    // Acme has more agents than globex, so that counts tell the orgs apart.
    let extra = enroll(server, &acme.enrollment, "acme-extra").await;
    let mut acme_agents = acme.agents.clone();
    acme_agents.push(extra.agent_id.clone());
    let acme_ids: Vec<&String> = acme_agents
        .iter()
        .chain(&acme.tokens)
        .chain(&acme.enrollment_tokens)
        .collect();
    let is_acme = |id: &str| acme_ids.iter().any(|a| a.as_str() == id);

    let mut fleet = server.fleet_as(Some(&globex.viewer)).await;
    let mut admin = server.admin_as(Some(&globex.admin)).await;
    let mut acme_fleet = server.fleet_as(Some(&acme.viewer)).await;

    // Lists.
    let agents = fleet
        .list_agents(pb::ListAgentsRequest::default())
        .await
        .expect("list agents")
        .into_inner();
    let mut got: Vec<&str> = agents.agents.iter().map(|a| a.agent_id.as_str()).collect();
    got.sort_unstable();
    let mut want: Vec<&str> = globex.agents.iter().map(String::as_str).collect();
    want.sort_unstable();
    assert_eq!(got, want, "globex lists exactly its own agents");
    assert_eq!(agents.total_size as usize, globex.agents.len());
    assert!(agents.agents.iter().all(|a| a.org_id == GLOBEX));

    let summary = fleet
        .get_fleet_summary(pb::GetFleetSummaryRequest::default())
        .await
        .expect("summary")
        .into_inner();
    assert_eq!(summary.total as usize, globex.agents.len());
    let acme_summary = acme_fleet
        .get_fleet_summary(pb::GetFleetSummaryRequest::default())
        .await
        .expect("acme summary")
        .into_inner();
    assert_eq!(acme_summary.total as usize, acme_agents.len());

    let tokens = admin
        .list_tokens(pb::ListTokensRequest {
            include_revoked: true,
        })
        .await
        .expect("list tokens")
        .into_inner()
        .tokens;
    assert!(!tokens.is_empty());
    for token in &tokens {
        assert_eq!(token.org_id, GLOBEX, "{token:?}");
        assert!(!is_acme(&token.token_id), "acme's token listed: {token:?}");
    }
    let enrollment_tokens = admin
        .list_enrollment_tokens(pb::ListEnrollmentTokensRequest::default())
        .await
        .expect("list enrollment tokens")
        .into_inner()
        .tokens;
    assert_eq!(enrollment_tokens.len(), globex.enrollment_tokens.len());
    for token in &enrollment_tokens {
        assert_eq!(token.org_id, GLOBEX, "{token:?}");
        assert!(!is_acme(&token.token_id), "{token:?}");
    }
    let events = all_audit(&admin).await;
    assert!(!events.is_empty(), "globex's own trail is not empty");
    for event in &events {
        assert_eq!(event.org_id, GLOBEX, "{event:?}");
        assert!(
            !is_acme(&event.actor_token_id) && !is_acme(&event.target),
            "acme's object in globex's audit trail: {event:?}"
        );
    }

    // The watch: a snapshot of globex's agents only, then no event of acme's.
    let mut watch = fleet
        .watch_agents(pb::WatchAgentsRequest::default())
        .await
        .expect("watch")
        .into_inner();
    let mut snapshot = Vec::new();
    loop {
        let event = tokio::time::timeout(STREAM_WAIT, watch.message())
            .await
            .expect("a watch event in time")
            .expect("watch event")
            .expect("the watch stays open");
        if event.kind == pb::AgentEventKind::Synced as i32 {
            break;
        }
        snapshot.push(event.agent.expect("snapshot agent").agent_id);
    }
    snapshot.sort();
    let mut want: Vec<String> = globex.agents.clone();
    want.sort();
    assert_eq!(snapshot, want);
    // An acme agent connects (and acme enrolls a new one), then a globex agent connects: the
    // globex event comes after the acme ones in revision order, so reaching it proves the acme
    // events were filtered out rather than late.
    let (acme_session, _) =
        RawSession::hello(server, &acme.subject.0, &acme.subject.1, "acme-subject")
            .await
            .expect("acme agent connects");
    enroll(server, &acme.enrollment, "acme-late").await;
    let (globex_session, _) = RawSession::hello(
        server,
        &globex.subject.0,
        &globex.subject.1,
        "globex-subject",
    )
    .await
    .expect("globex agent connects");
    loop {
        let event = tokio::time::timeout(STREAM_WAIT, watch.message())
            .await
            .expect("the globex agent's event in time")
            .expect("watch event")
            .expect("the watch stays open");
        let agent = event.agent.expect("event agent");
        assert_eq!(
            agent.org_id, GLOBEX,
            "acme's event reached globex: {agent:?}"
        );
        if agent.agent_id == globex.subject.0 {
            break;
        }
    }
    drop((acme_session, globex_session));

    // Acme's ids answer exactly like ids that do not exist.
    let absent = "0123456789abcdef";
    let get_agent = |id: &str| {
        let mut fleet = fleet.clone();
        let id = id.to_owned();
        async move {
            fleet
                .get_agent(pb::GetAgentRequest { agent_id: id })
                .await
                .expect_err("not visible")
        }
    };
    let get_metrics = |id: &str| {
        let mut fleet = fleet.clone();
        let id = id.to_owned();
        async move {
            fleet
                .get_metrics(pb::GetMetricsRequest {
                    agent_id: id,
                    ..Default::default()
                })
                .await
                .expect_err("not visible")
        }
    };
    let delete_agent = |id: &str| {
        let mut admin = admin.clone();
        let id = id.to_owned();
        async move {
            admin
                .delete_agent(pb::DeleteAgentRequest { agent_id: id })
                .await
                .expect_err("not visible")
        }
    };
    let revoke_token = |id: &str| {
        let mut admin = admin.clone();
        let id = id.to_owned();
        async move {
            admin
                .revoke_token(pb::RevokeTokenRequest { token_id: id })
                .await
                .expect_err("not visible")
        }
    };
    let revoke_enrollment = |id: &str| {
        let mut admin = admin.clone();
        let id = id.to_owned();
        async move {
            admin
                .revoke_enrollment_token(pb::RevokeEnrollmentTokenRequest { token_id: id })
                .await
                .expect_err("not visible")
        }
    };
    let acme_token = token_id(&acme.admin).to_owned();
    let acme_enrollment = token_id(&acme.enrollment).to_owned();
    let cases: Vec<(&str, Status, Status, &str)> = vec![
        (
            "GetAgent",
            get_agent(&acme.victim_agent).await,
            get_agent(absent).await,
            &acme.victim_agent,
        ),
        (
            "GetMetrics",
            get_metrics(&acme.victim_agent).await,
            get_metrics(absent).await,
            &acme.victim_agent,
        ),
        (
            "DeleteAgent",
            delete_agent(&acme.victim_agent).await,
            delete_agent(absent).await,
            &acme.victim_agent,
        ),
        (
            "RevokeToken",
            revoke_token(&acme_token).await,
            revoke_token(absent).await,
            &acme_token,
        ),
        (
            "RevokeEnrollmentToken",
            revoke_enrollment(&acme_enrollment).await,
            revoke_enrollment(absent).await,
            &acme_enrollment,
        ),
    ];
    for (rpc, theirs, missing, id) in &cases {
        assert_eq!(
            theirs.code(),
            Code::NotFound,
            "{rpc} on acme's {id}: {theirs:?}"
        );
        assert_eq!(
            shape(theirs, id),
            shape(missing, absent),
            "{rpc}: acme's object must look exactly like an absent one"
        );
    }
    // ... and acme's objects are untouched.
    let mut acme_admin = server.admin_as(Some(&acme.admin)).await;
    acme_fleet
        .get_agent(pb::GetAgentRequest {
            agent_id: acme.victim_agent.clone(),
        })
        .await
        .expect("acme's agent still exists");
    acme_fleet
        .list_agents(pb::ListAgentsRequest::default())
        .await
        .expect("acme's viewer still lists its fleet");
    let enrollment = acme_admin
        .list_enrollment_tokens(pb::ListEnrollmentTokensRequest::default())
        .await
        .expect("list")
        .into_inner()
        .tokens;
    assert!(
        enrollment
            .iter()
            .any(|t| t.token_id == acme_enrollment && !t.revoked)
    );

    // Orgs are the server admin's: an org admin may neither create nor list them.
    let mut org_admin = server.admin_as(Some(&acme.first_admin)).await;
    let err = org_admin
        .create_org(pb::CreateOrgRequest {
            org_id: "initech".to_owned(),
            display_name: String::new(),
        })
        .await
        .expect_err("org admins cannot create orgs");
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = org_admin
        .list_orgs(pb::ListOrgsRequest::default())
        .await
        .expect_err("org admins cannot list orgs");
    assert_eq!(err.code(), Code::PermissionDenied);
    let mut server_admin = server.admin().await;
    let err = server_admin
        .create_org(pb::CreateOrgRequest {
            org_id: ACME.to_owned(),
            display_name: "again".to_owned(),
        })
        .await
        .expect_err("duplicate org");
    assert_eq!(err.code(), Code::AlreadyExists);
    // The default org (the bootstrap admin's) exists from the first start on, like any other.
    let again = server_admin
        .create_org(pb::CreateOrgRequest {
            org_id: "default".to_owned(),
            display_name: String::new(),
        })
        .await;
    match again {
        Err(err) => assert_eq!(err.code(), Code::AlreadyExists, "{err:?}"),
        Ok(created) => panic!(
            "CreateOrg(\"default\") answered OK on the server's first start: it replaced the \
             default org's record and minted admin token {:?} in the org that already holds the \
             bootstrap admin; expected ALREADY_EXISTS",
            created.into_inner().admin_token.map(|t| t.token_id)
        ),
    }
    let orgs: Vec<String> = server_admin
        .list_orgs(pb::ListOrgsRequest::default())
        .await
        .expect("list orgs")
        .into_inner()
        .orgs
        .into_iter()
        .map(|o| o.org_id)
        .collect();
    for org in ["default", ACME, GLOBEX] {
        assert!(orgs.iter().any(|o| o == org), "{org} in {orgs:?}");
    }
    assert!(!orgs.iter().any(|o| o == "initech"));
    drop(acme_admin);
    server_stop(world).await;
}
