//! Backups of a running server (`tetherctl backup`, taken while agents keep reporting),
//! restored with `tether-server restore` into a fresh data directory: a server started there
//! serves every object the first one had at the backup (agents, samples and their rollups,
//! status history, tokens, enrollment tokens, orgs, tombstones, commands, audit events), its
//! audit chain verifies; who may take one; what a client that never reads costs; and the
//! stopped server's backup.

use std::time::{Duration, SystemTime};

use tether_proto as pb;
use tether_server::backup::{BackupError, backup_stopped, restore};
use tether_tests::fill::{Filled, HISTORY_SAMPLES, fill};
use tether_tests::{
    FleetClient, TestServer, create_token, eventually, fast_config, history, list_all, list_audit,
    trace_init,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_servers_backup_restores_every_object_and_its_audit_chain() {
    trace_init();
    let root = tempfile::tempdir().expect("tempdir");
    let data = root.path().join("data");
    let server = TestServer::start(fast_config(&data)).await;
    let admin = server.admin().await;
    let commands = server.commands().await;

    let Filled {
        historic,
        history_start,
        mut live,
        command_id,
        deleted,
    } = fill(&server).await;
    let (live_2, live_2_id) = live.pop().expect("two live agents");
    let (live_1, live_1_id) = live.pop().expect("two live agents");

    // The backup, while the live agents report.
    let acked_before = [
        live_1.handle.stats.samples_acked_seq(),
        live_2.handle.stats.samples_acked_seq(),
    ];
    let file = root.path().join("tether.backup");
    let said = server
        .cli(&["backup", "--out", file.to_str().expect("utf-8 path")])
        .await
        .expect("tetherctl backup");
    assert!(said.contains("SHA-256"), "{said}");
    let reported_after = live_1.handle.stats.samples_acked_seq();
    eventually("the live agents to be acked after the backup", || async {
        (live_1.handle.stats.samples_acked_seq() > reported_after + 3).then_some(())
    })
    .await;

    // The original, once stopped, is the reference: everything but the live agents' samples
    // and status history stood still since the backup.
    // One window for both reads, on whole hours, so both answer the same buckets.
    let hour = 3600;
    let first = history_start
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
        / hour
        * hour;
    let window = (
        SystemTime::UNIX_EPOCH + Duration::from_secs(first - hour),
        SystemTime::UNIX_EPOCH + Duration::from_secs(first + 24 * hour),
    );
    let live_ids = [live_1_id.as_str(), live_2_id.as_str()];
    let original = Reference::read(&server, &historic, &live_ids, window).await;
    let original_audit = list_audit(&admin, pb::ListAuditEventsRequest::default()).await;
    let original_command = history(&commands, &command_id, 0, "").await;
    live_1.stop().await;
    live_2.stop().await;
    let admin_token = std::fs::read(data.join("admin.token")).expect("admin token");
    server.stop().await;

    let restored = root.path().join("restored");
    let summary = restore(&file, &restored).expect("restore");
    assert_eq!(summary.tombstones, 1, "{summary:?}");
    // With the old admin token file, the restored server adds no token of its own.
    std::fs::write(restored.join("admin.token"), admin_token).expect("admin token");
    let server = TestServer::start(fast_config(&restored)).await;
    let copy = Reference::read(&server, &historic, &live_ids, window).await;

    assert_eq!(copy.orgs, original.orgs);
    assert_eq!(copy.tokens, original.tokens);
    assert_eq!(copy.enrollment_tokens, original.enrollment_tokens);
    assert_eq!(copy.records, original.records, "every agent's record");
    let status = server.get_agent(&deleted).await.expect_err("deleted");
    assert_eq!(
        status.code(),
        tonic::Code::NotFound,
        "the tombstone is there"
    );
    for (id, (copied, kept)) in historic
        .iter()
        .zip(copy.history.iter().zip(&original.history))
    {
        assert!(
            copied == kept,
            "samples, rollups and status history of {id}"
        );
        assert_eq!(copied.raw.len(), HISTORY_SAMPLES as usize, "{id}");
        assert!(
            copied.five_minutes.len() > 100 && copied.hours.len() >= 10,
            "{id}"
        );
    }
    // The live agents' samples: what the original had at the backup, and at least all that
    // was acknowledged before it began.
    for ((copied, kept), acked) in copy.live.iter().zip(&original.live).zip(acked_before) {
        assert!(copied.len() as u64 >= acked, "{} < {acked}", copied.len());
        assert_eq!(
            copied[..],
            kept[..copied.len()],
            "a prefix of the original's samples"
        );
    }
    let admin = server.admin().await;
    let copy_audit = list_audit(&admin, pb::ListAuditEventsRequest::default()).await;
    assert_eq!(
        copy_audit[..],
        original_audit[..copy_audit.len()],
        "the audit trail up to the backup"
    );
    assert_eq!(
        copy_audit.last().map(|e| e.method.as_str()),
        Some("/tether.v1.AdminService/Backup"),
        "the backup is recorded in itself"
    );
    let commands = server.commands().await;
    let copy_command = history(&commands, &command_id, 0, "").await;
    assert_eq!(copy_command.cursors(), original_command.cursors());
    assert_eq!(copy_command.command(), original_command.command());
    server
        .cli(&["audit", "verify"])
        .await
        .expect("the restored audit chain verifies");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_server_admin_backs_up_and_a_reader_that_stalls_costs_nobody_else() {
    trace_init();
    let root = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(fast_config(root.path())).await;
    let mut admin = server.admin().await;
    let agent = server.spawn_agent("busy-1", &[]).await;
    let org_admin = server.create_org("beta").await.admin_secret;
    for role in [pb::Role::Viewer, pb::Role::Operator] {
        let token = create_token(&mut admin, "someone", role, None).await.secret;
        let refused = backup_status(&server, &token).await;
        assert_eq!(refused, tonic::Code::PermissionDenied, "{role:?}");
    }
    // An org's admin sees only its org; a backup holds every org.
    let refused = backup_status(&server, &org_admin).await;
    assert_eq!(refused, tonic::Code::PermissionDenied, "an org admin");

    // A backup stream that is opened and never read.
    let stalled = server
        .admin()
        .await
        .backup(pb::BackupRequest {})
        .await
        .expect("backup answered");
    let acked = agent.handle.stats.samples_acked_seq();
    eventually(
        "the agent to be acked while the backup stream waits",
        || async { (agent.handle.stats.samples_acked_seq() >= acked + 5).then_some(()) },
    )
    .await;
    let mut fleet: FleetClient = server.fleet().await;
    assert_eq!(
        list_all(&mut fleet, pb::ListAgentsRequest::default())
            .await
            .len(),
        1
    );
    drop(stalled);
    // Once it is gone, the next backup runs.
    let file = root.path().join("again.backup");
    eventually("a backup after the stalled one went", || {
        let file = file.clone();
        let server = &server;
        async move {
            server
                .cli(&["backup", "--out", file.to_str().expect("utf-8 path")])
                .await
                .ok()
        }
    })
    .await;
    agent.stop().await;
    server.stop().await;
}

/// `backup` of a stopped server, refused while it runs; `restore` refuses a truncated file and
/// a used directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_servers_backup_restores_and_bad_files_are_refused() {
    trace_init();
    let root = tempfile::tempdir().expect("tempdir");
    let data = root.path().join("data");
    let server = TestServer::start(fast_config(&data)).await;
    let agent = server.spawn_agent("kept-1", &[("env", "prod")]).await;
    let kept = agent.id().await;
    let file = root.path().join("stopped.backup");
    let refused = backup_stopped(&data, &file).expect_err("the server runs");
    assert!(matches!(refused, BackupError::DataDir(_)), "{refused}");
    agent.stop().await;
    server.stop().await;

    let taken = backup_stopped(&data, &file).expect("backup");
    let bytes = std::fs::read(&file).expect("file");
    assert_eq!(bytes.len() as u64, taken.summary.bytes);
    let cut = root.path().join("cut.backup");
    std::fs::write(&cut, &bytes[..bytes.len() - 1]).expect("write");
    let never = root.path().join("never");
    let err = restore(&cut, &never).expect_err("truncated");
    assert!(matches!(err, BackupError::Unreadable { .. }), "{err}");
    assert!(!never.exists());

    let restored = root.path().join("restored");
    restore(&file, &restored).expect("restore");
    let err = restore(&file, &restored).expect_err("used directory");
    assert!(matches!(err, BackupError::NotEmpty(_)), "{err}");
    let server = TestServer::start(fast_config(&restored)).await;
    let agent = server.get_agent(&kept).await.expect("the kept agent");
    let labels = agent.agent.expect("agent").labels;
    assert_eq!(labels.get("env").map(String::as_str), Some("prod"));
    server.stop().await;
}

/// What the tests compare between the original and the restored server.
#[derive(Debug)]
struct Reference {
    orgs: Vec<pb::Org>,
    /// Every token but its last use (which the comparison's own calls advance).
    tokens: Vec<pb::ApiToken>,
    enrollment_tokens: Vec<pb::EnrollmentToken>,
    /// Every agent's stored record: the fields a restart keeps (not its live status).
    records: Vec<pb::Agent>,
    history: Vec<Series>,
    /// The live agents' raw samples.
    live: Vec<Vec<pb::MetricsPoint>>,
}

#[derive(Debug, PartialEq)]
struct Series {
    raw: Vec<pb::MetricsPoint>,
    five_minutes: Vec<pb::MetricsPoint>,
    hours: Vec<pb::MetricsPoint>,
    transitions: Vec<pb::StatusTransition>,
}

impl Reference {
    async fn read(
        server: &TestServer,
        historic: &[String],
        live: &[&str],
        window: (SystemTime, SystemTime),
    ) -> Self {
        let mut admin = server.admin().await;
        let mut fleet = server.fleet().await;
        let orgs = admin
            .list_orgs(pb::ListOrgsRequest {})
            .await
            .expect("orgs")
            .into_inner()
            .orgs;
        let mut tokens = admin
            .list_tokens(pb::ListTokensRequest::default())
            .await
            .expect("tokens")
            .into_inner()
            .tokens;
        for token in &mut tokens {
            token.last_used_at = None;
        }
        let enrollment_tokens = admin
            .list_enrollment_tokens(pb::ListEnrollmentTokensRequest {})
            .await
            .expect("enrollment tokens")
            .into_inner()
            .tokens;
        let mut agents = list_all(
            &mut fleet,
            pb::ListAgentsRequest {
                include_expired: true,
                ..Default::default()
            },
        )
        .await;
        agents.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
        let records = agents
            .into_iter()
            .map(|agent| pb::Agent {
                status: 0,
                status_reason: 0,
                status_since: None,
                last_seen: None,
                session_id: String::new(),
                latest_metrics: None,
                health: 0,
                last_durable_seq: 0,
                ..agent
            })
            .collect();
        let mut history = Vec::new();
        for id in historic {
            let transitions = server
                .get_agent(id)
                .await
                .expect("agent")
                .recent_transitions;
            history.push(Series {
                raw: points(&mut fleet, id, window, Duration::ZERO).await,
                five_minutes: points(&mut fleet, id, window, Duration::from_secs(300)).await,
                hours: points(&mut fleet, id, window, Duration::from_secs(3600)).await,
                transitions,
            });
        }
        let mut samples = Vec::new();
        for id in live {
            samples.push(points(&mut fleet, id, window, Duration::ZERO).await);
        }
        Self {
            orgs,
            tokens,
            enrollment_tokens,
            records,
            history,
            live: samples,
        }
    }
}

/// `GetMetrics` over `window` at `step`.
async fn points(
    fleet: &mut FleetClient,
    id: &str,
    window: (SystemTime, SystemTime),
    step: Duration,
) -> Vec<pb::MetricsPoint> {
    fleet
        .get_metrics(pb::GetMetricsRequest {
            agent_id: id.to_owned(),
            start: Some(window.0.into()),
            end: Some(window.1.into()),
            step: Some(step.try_into().expect("step")),
        })
        .await
        .expect("metrics")
        .into_inner()
        .points
}

/// The code of a backup called with `token`.
async fn backup_status(server: &TestServer, token: &str) -> tonic::Code {
    match server
        .admin_as(Some(token))
        .await
        .backup(pb::BackupRequest {})
        .await
    {
        Ok(mut stream) => match stream.get_mut().message().await {
            Ok(_) => tonic::Code::Ok,
            Err(status) => status.code(),
        },
        Err(status) => status.code(),
    }
}
