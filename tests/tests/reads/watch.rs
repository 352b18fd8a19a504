//! `WatchAgents` under attack: a watcher that never reads, more watches than allowed, and a
//! snapshot larger than a page read while the fleet changes.

use tether_server::config::MIN_RESPONSE_BYTES;
use tether_tests::{create_token, limit_violations};
use tokio::task::JoinHandle;

use super::*;

/// Reads `events` until agent `agent` of `org` reports sample `last`; returns the latest seq of
/// every `METRICS_UPDATED` of that agent, or the status the watch ended with. Every agent it
/// sees must belong to `org`.
fn read_until(
    mut events: Events,
    org: &'static str,
    agent: String,
    last: u64,
) -> JoinHandle<Result<Vec<u64>, tonic::Status>> {
    tokio::spawn(async move {
        let mut seqs = Vec::new();
        loop {
            let event = next(&mut events).await?;
            let Some(seen) = &event.agent else { continue };
            assert_eq!(seen.org_id, org, "another org's agent: {event:?}");
            if event.kind() == pb::AgentEventKind::MetricsUpdated && seen.agent_id == agent {
                let seq = seen.latest_metrics.as_ref().map_or(0, |m| m.seq);
                seqs.push(seq);
                if seq == last {
                    return Ok(seqs);
                }
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_that_never_reads_is_aborted_alone_while_healthy_watchers_see_every_event() {
    trace_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = config(dir.path());
    config.limits.watch_buffer_bytes = 2 * MIN_RESPONSE_BYTES;
    let server = TestServer::start(config).await;
    let globex = server.create_org("globex").await.admin_secret;
    // One agent with a record as large as allowed (about 30 KB an event) in each org.
    let acme_agent = heavy_agents(&server, &server.admin_token, 0..1, 0, 0).await;
    let globex_agent = heavy_agents(&server, &globex, 1..2, 0, 0).await;
    let (acme_id, acme_credential) = acme_agent[0].clone();
    let (globex_id, globex_credential) = globex_agent[0].clone();

    // The victim-to-be of nobody: a watcher of acme that never reads.
    let mut slow_client = own_connection(&server, &server.admin_token).await;
    let mut slow = watch(&mut slow_client, true).await.expect("slow watch");
    // Healthy watchers, each reading on its own connection: one of the same org, one of
    // another org.
    const REPORTS: u64 = 150;
    let mut acme_client = own_connection(&server, &server.admin_token).await;
    let acme_watch = watch(&mut acme_client, true).await.expect("acme watch");
    let acme_reader = read_until(acme_watch, "default", acme_id.clone(), REPORTS);
    let mut globex_client = own_connection(&server, &globex).await;
    let globex_watch = watch(&mut globex_client, true).await.expect("globex watch");
    let globex_reader = read_until(globex_watch, "globex", globex_id.clone(), REPORTS);

    // Both agents report, one sample per commit, so one event per report.
    let (mut acme_session, _) =
        RawSession::hello_with(&server, &acme_credential, heavy_hello(&acme_id, 0))
            .await
            .expect("acme hello");
    let (mut globex_session, _) =
        RawSession::hello_with(&server, &globex_credential, heavy_hello(&globex_id, 1))
            .await
            .expect("globex hello");
    for seq in 1..=REPORTS {
        acme_session.send_samples([seq]).await;
        globex_session.send_samples([seq]).await;
        acme_session.wait_ack(seq).await.expect("acme ack");
        globex_session.wait_ack(seq).await.expect("globex ack");
    }

    let every: Vec<u64> = (1..=REPORTS).collect();
    let acme_seen = acme_reader.await.expect("acme reader");
    assert_eq!(
        acme_seen.expect("never aborted"),
        every,
        "same org, healthy"
    );
    let globex_seen = globex_reader.await.expect("globex reader");
    assert_eq!(
        globex_seen.expect("never aborted"),
        every,
        "other org, healthy"
    );

    // The slow watcher held at most its bound, then was ended.
    let mut received = 0;
    let status = loop {
        match next(&mut slow).await {
            Ok(_) => received += 1,
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    assert!(
        received < REPORTS,
        "the slow watcher received {received} messages: it was never behind"
    );
    assert_eq!(
        server.metrics.watchers_aborted.get(),
        1,
        "only the slow one"
    );
    drop((acme_session, globex_session));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_beyond_the_token_and_org_caps_are_refused_and_the_others_keep_watching() {
    trace_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = config(dir.path());
    config.limits.max_watches_per_token = 3;
    config.limits.max_watches_per_org = 5;
    let server = TestServer::start(config).await;
    let globex = server.create_org("globex").await.admin_secret;
    let mut admin = server.admin().await;
    let mut viewers = Vec::new();
    for _ in 0..3 {
        let token = create_token(&mut admin, "viewer", pb::Role::Viewer, None).await;
        viewers.push(token.secret);
    }
    let [a, b, c] = <[String; 3]>::try_from(viewers).expect("three viewers");

    // Token a holds its three watches and never reads them.
    let mut fleet_a = server.fleet_as(Some(&a)).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(
            watch(&mut fleet_a, true)
                .await
                .expect("within the token cap"),
        );
    }
    let refused = watch(&mut fleet_a, false)
        .await
        .expect_err("over the token cap");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    // Another token of the org fills the org.
    let mut fleet_b = server.fleet_as(Some(&b)).await;
    let _b1 = watch(&mut fleet_b, false).await.expect("b's first");
    let _b2 = watch(&mut fleet_b, false).await.expect("b's second");
    let mut fleet_c = server.fleet_as(Some(&c)).await;
    let refused = watch(&mut fleet_c, false)
        .await
        .expect_err("over the org cap");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    // Another org is not affected.
    let mut fleet_globex = server.fleet_as(Some(&globex)).await;
    let mut other = watch(&mut fleet_globex, false).await.expect("another org");
    let synced = next(&mut other).await.expect("globex's snapshot");
    assert_eq!(
        synced.kind(),
        pb::AgentEventKind::Synced,
        "globex has no agents"
    );

    // Closing one watch gives its place back.
    drop(held.pop());
    let mut events = tether_tests::eventually("a place in the org", || {
        let mut fleet = fleet_c.clone();
        async move { watch(&mut fleet, false).await.ok() }
    })
    .await;
    let synced = next(&mut events).await.expect("c's snapshot");
    assert_eq!(synced.kind(), pb::AgentEventKind::Synced);
    assert_eq!(limit_violations(&server.metrics, "watches_per_token"), 1);
    assert!(limit_violations(&server.metrics, "watches_per_org") >= 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_of_many_pages_arrives_whole_and_consistent_while_the_fleet_changes() {
    trace_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(config(dir.path())).await;
    // About 30 KB each: the snapshot takes several pages.
    let heavy = heavy_agents(&server, &server.admin_token, 0..24, 1, 0).await;
    let mut admin = server.admin().await;
    let mut fleet = server.fleet().await;
    let mut events = watch(&mut fleet, false).await.expect("watch");

    // The watcher's view: agent id -> status.
    let mut model: BTreeMap<String, i32> = BTreeMap::new();
    let mut last_revision = 0;
    let mut apply = |event: &pb::WatchAgentsResponse, model: &mut BTreeMap<String, i32>| {
        assert!(event.revision >= last_revision, "out of order: {event:?}");
        last_revision = event.revision;
        let Some(agent) = &event.agent else { return };
        if event.kind() == pb::AgentEventKind::Removed {
            model.remove(&agent.agent_id);
        } else {
            model.insert(agent.agent_id.clone(), agent.status);
        }
    };
    // While the snapshot is read: agents enroll (their random ids fall before and after the
    // snapshot's cursor) and heavy agents are deleted.
    let mut changes = 0;
    loop {
        let event = next(&mut events).await.expect("snapshot");
        apply(&event, &mut model);
        if event.kind() == pb::AgentEventKind::Synced {
            break;
        }
        if changes < 12 {
            server.enroll(&format!("late-{changes}"), &[]).await;
            if changes % 3 == 0 {
                admin
                    .delete_agent(pb::DeleteAgentRequest {
                        agent_id: heavy[changes].0.clone(),
                    })
                    .await
                    .expect("delete agent");
            }
            changes += 1;
        }
    }
    assert_eq!(changes, 12, "the snapshot outlasted the changes");
    // Events come in revision order: once the sentinel's arrives, every earlier change did.
    let (sentinel, _) = server.enroll("sentinel", &[]).await;
    loop {
        let event = next(&mut events).await.expect("event");
        apply(&event, &mut model);
        if event.agent.as_ref().is_some_and(|a| a.agent_id == sentinel) {
            break;
        }
    }
    let listed: BTreeMap<String, i32> = tether_tests::list_all(&mut fleet, Default::default())
        .await
        .into_iter()
        .map(|a| (a.agent_id, a.status))
        .collect();
    assert_eq!(listed.len(), 24 - 4 + 12 + 1);
    assert_eq!(model, listed, "the watcher's view is the fleet");
    server.stop().await;
}
