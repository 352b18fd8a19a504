//! A backup of a stopped server, restored into a fresh data directory: every record the
//! server had (agents, samples, history, tokens, enrollment tokens, tombstones, audit events)
//! is there, byte for byte, and a server started on it serves them, its audit chain intact.

use tether_proto as pb;
use tether_server::backup::{BackupError, backup, restore};
use tether_server::store::sled::test_support::RawStore;
use tether_tests::{TestServer, create_token, eventually, fast_config, trace_init};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_backup_holds_every_record_and_serves_them() {
    trace_init();
    let root = tempfile::tempdir().expect("tempdir");
    let data = root.path().join("data");
    let server = TestServer::start(fast_config(&data)).await;

    // A fleet with some of everything: a real agent with samples, a deleted agent (its
    // tombstone), a token, an enrollment token, and the audit events of all that.
    let agent = server.spawn_agent("kept-1", &[("env", "prod")]).await;
    let kept = agent.id().await;
    let stats = agent.handle.stats.clone();
    eventually("a few acked samples", || async {
        (stats.samples_acked_seq() >= 3).then_some(())
    })
    .await;
    let (deleted, _) = server.enroll("deleted-1", &[]).await;
    let mut admin = server.admin().await;
    admin
        .delete_agent(pb::DeleteAgentRequest {
            agent_id: deleted.clone(),
        })
        .await
        .expect("delete agent");
    create_token(&mut admin, "ci", pb::Role::Viewer, None).await;
    server.enrollment_token().await;
    agent.stop().await;
    server.stop().await;

    // The server's lock is gone with it; a backup is refused only while a server runs.
    let copy = root.path().join("backup");
    let manifest = backup(&data, &copy).expect("backup");
    assert_eq!(
        (manifest.agents, manifest.tombstones),
        (1, 1),
        "{manifest:?}"
    );
    let restored = root.path().join("restored");
    restore(&copy, &restored).expect("restore");
    assert!(matches!(
        restore(&copy, &restored),
        Err(BackupError::StoreExists(_))
    ));

    let original = RawStore::open(data.join("store"))
        .expect("original store")
        .dump()
        .expect("dump");
    let copied = RawStore::open(restored.join("store"))
        .expect("restored store")
        .dump()
        .expect("dump");
    assert!(
        original.len() > 20,
        "a store with records: {}",
        original.len()
    );
    assert!(original == copied, "every record, byte for byte");
    assert!(
        !restored.join("admin.token").exists(),
        "no admin token in a backup"
    );

    // A server on the restored directory serves what the first one had.
    let server = TestServer::start(fast_config(&restored)).await;
    let agent = server.get_agent(&kept).await.expect("the kept agent");
    let labels = agent.agent.expect("agent").labels;
    assert_eq!(labels.get("env").map(String::as_str), Some("prod"));
    let deleted_status = server.get_agent(&deleted).await.expect_err("deleted");
    assert_eq!(deleted_status.code(), tonic::Code::NotFound);
    let metrics = server
        .fleet()
        .await
        .get_metrics(pb::GetMetricsRequest {
            agent_id: kept.clone(),
            ..Default::default()
        })
        .await
        .expect("metrics")
        .into_inner();
    assert!(!metrics.points.is_empty(), "the samples are there");
    server
        .cli(&["audit", "verify"])
        .await
        .expect("the restored audit chain verifies");
    server.stop().await;
}
