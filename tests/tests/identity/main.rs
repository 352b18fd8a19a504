//! Machine identity over real sockets: the attacks and mistakes around which agent a machine
//! is, each asserting what the victim keeps.
//!
//! - `takeover.rs`: a hardware id is never proof (takeover by hardware id, cloned images);
//!   proof and an admin's permission are (reclaim, pinned labels kept).
//! - `conflict.rs`: two machines holding one credential (a copied state directory) are
//!   flagged, then refused; restarts are not conflicts.
//! - `races.rs`: deletion racing enrollment, concurrent re-enrollments, tombstones across a
//!   restart.
//! - `reenroll.rs`: re-enrolling keeps one credential and is rate-limited.
//! - `agent.rs`: the real agent after a deletion, with and without an enrollment token.

use std::collections::BTreeSet;
use std::time::Duration;

use tether_proto as pb;
use tether_server::config::Config;
use tether_server::metrics::{ConflictLabels, EnrollmentLabels};
use tether_tests::{
    AdminClient, RawSession, TestAgent, TestServer, agent_config, eventually, fast_config, labels,
    list_all, system_info, trace_init,
};
use tonic::{Code, Status};

mod agent;
mod conflict;
mod races;
mod reenroll;
mod takeover;

/// `fast_config`, with sessions that stay online while a test drives them by hand.
fn config(dir: &std::path::Path) -> Config {
    let mut config = fast_config(dir);
    config.liveness.stale_after = Duration::from_secs(60);
    config.liveness.offline_after = Duration::from_secs(120);
    config
}

async fn start() -> (TestServer, tempfile::TempDir) {
    trace_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(config(dir.path())).await;
    (server, dir)
}

/// A synthetic machine `hostname` whose hardware id is `hardware_id`.
fn machine(hostname: &str, hardware_id: &str) -> pb::SystemInfo {
    pb::SystemInfo {
        hardware_id: hardware_id.to_owned(),
        ..system_info(hostname)
    }
}

/// The `Hello` of agent process `instance` of agent `agent_id` on `info`'s machine.
fn hello(agent_id: &str, info: &pb::SystemInfo, instance: &str) -> pb::Hello {
    pb::Hello {
        accepts_deferred_reports: false,
        agent_id: agent_id.to_owned(),
        agent_version: "test".to_owned(),
        system_info: Some(info.clone()),
        labels: Default::default(),
        instance_id: instance.to_owned(),
        journaled_invocation_ids: Vec::new(),
    }
}

/// Creates an enrollment token stamping `pairs`, allowing reclaim or not; returns its secret.
async fn token(server: &TestServer, pairs: &[(&str, &str)], allow_reclaim: bool) -> String {
    server
        .admin()
        .await
        .create_enrollment_token(pb::CreateEnrollmentTokenRequest {
            labels: labels(pairs),
            allow_reclaim,
            ..Default::default()
        })
        .await
        .expect("create enrollment token")
        .into_inner()
        .secret
}

/// Enrolls `info`'s machine with `token`, presenting `previous` as its old credential.
async fn enroll(
    server: &TestServer,
    token: &str,
    info: &pb::SystemInfo,
    previous: Option<&str>,
) -> Result<pb::EnrollResponse, Status> {
    server
        .agent_client(Some(token))
        .await
        .enroll(pb::EnrollRequest {
            system_info: Some(info.clone()),
            previous_credential: previous.unwrap_or_default().to_owned(),
            ..Default::default()
        })
        .await
        .map(tonic::Response::into_inner)
}

/// Opens a session of `enrolled` as agent process `instance` on `info`'s machine.
async fn connect(
    server: &TestServer,
    enrolled: &pb::EnrollResponse,
    info: &pb::SystemInfo,
    instance: &str,
) -> Result<(RawSession, pb::Welcome), Status> {
    RawSession::hello_with(
        server,
        &enrolled.agent_credential,
        hello(&enrolled.agent_id, info, instance),
    )
    .await
}

/// The status a session of `enrolled` as `instance` on `info`'s machine is refused with.
async fn refused(
    server: &TestServer,
    enrolled: &pb::EnrollResponse,
    info: &pb::SystemInfo,
    instance: &str,
) -> Status {
    match connect(server, enrolled, info, instance).await {
        Ok(_) => panic!("the session of {} opened", enrolled.agent_id),
        Err(status) => status,
    }
}

async fn get(server: &TestServer, id: &str) -> Result<pb::Agent, Status> {
    Ok(server
        .get_agent(id)
        .await?
        .agent
        .expect("GetAgent returns the agent"))
}

/// Every audit event of the default org.
async fn audit(admin: &AdminClient) -> Vec<pb::AuditEvent> {
    tether_tests::list_audit(admin, pb::ListAuditEventsRequest::default()).await
}

/// How many enrollments ended as `outcome` (`tether_enrollments`).
fn enrollments(server: &TestServer, outcome: &'static str) -> u64 {
    server
        .metrics
        .enrollments
        .get_or_create(&EnrollmentLabels { outcome })
        .get()
}

/// How many identity conflicts the server answered with `outcome`
/// (`tether_identity_conflicts`).
fn conflicts(server: &TestServer, outcome: &'static str) -> u64 {
    server
        .metrics
        .identity_conflicts
        .get_or_create(&ConflictLabels { outcome })
        .get()
}

/// Reads `watch` until `want` holds for the events seen so far; returns them.
async fn watch_until(
    watch: &mut tonic::Streaming<pb::WatchAgentsResponse>,
    what: &str,
    want: impl Fn(&[pb::WatchAgentsResponse]) -> bool,
) -> Vec<pb::WatchAgentsResponse> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + tether_tests::EVENTUALLY;
    while !want(&seen) {
        let event = tokio::time::timeout_at(deadline, watch.message())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}; saw {seen:?}"))
            .expect("watch stream")
            .expect("watch open");
        seen.push(event);
    }
    seen
}

/// A watch of the default org, read past its snapshot.
async fn watch(server: &TestServer) -> tonic::Streaming<pb::WatchAgentsResponse> {
    let mut watch = server
        .fleet()
        .await
        .watch_agents(pb::WatchAgentsRequest::default())
        .await
        .expect("watch")
        .into_inner();
    watch_until(&mut watch, "the snapshot", |seen| {
        seen.iter()
            .any(|e| e.kind == pb::AgentEventKind::Synced as i32)
    })
    .await;
    watch
}

/// Whether `event` is of `kind` for agent `id`.
fn is_event(event: &pb::WatchAgentsResponse, kind: pb::AgentEventKind, id: &str) -> bool {
    event.kind == kind as i32 && event.agent.as_ref().is_some_and(|a| a.agent_id == id)
}
