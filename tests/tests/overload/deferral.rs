//! Deferred reports: when the line for ingest budget is full (`--ingest-queue`), the report of
//! an agent that accepts it is answered `MetricsDeferred` instead of waiting behind the line;
//! nothing of it is stored, the agent sends the samples again later, and nothing is lost or
//! stored twice. Agents that did not accept deferrals wait in line as before.

use std::collections::BTreeMap;
use std::time::Duration;

use tether_proto as pb;
use tether_server::store::sled::test_support::RawStore;
use tether_tests::{
    EVENTUALLY, Healthy, RawSession, TestServer, eventually, fast_config, hello, sample, trace_init,
};

/// Samples waiting in line for ingest budget (`tether_writer_queue_depth{queue="waiting_samples"}`).
fn waiting_in_line(server: &TestServer) -> i64 {
    server
        .metrics
        .writer_queue_depth
        .get_or_create(&tether_server::metrics::QueueLabels {
            queue: "waiting_samples",
        })
        .get()
}

/// Sends a metrics report of `seqs` that answers the deferral of `deferred_seq` (0: none).
async fn send_report(session: &RawSession, seqs: impl IntoIterator<Item = u64>, deferred_seq: u64) {
    session
        .send(pb::connect_request::Message::Metrics(pb::MetricsReport {
            samples: seqs.into_iter().map(sample).collect(),
            previous_ack_latency: None,
            deferred_seq,
        }))
        .await;
}

/// The next message, which must be a `MetricsDeferred`.
async fn deferral(session: &mut RawSession) -> pb::MetricsDeferred {
    match session.recv().await {
        Ok(Some(pb::connect_response::Message::MetricsDeferred(deferred))) => deferred,
        other => panic!("expected MetricsDeferred, got {other:?}"),
    }
}

/// The seqs stored for `agent` of the default org by the stopped server of `data_dir`.
fn stored_seqs(data_dir: &std::path::Path, agent: &str) -> Vec<u64> {
    RawStore::open(data_dir.join("store"))
        .expect("open the stopped server's store")
        .sample_seqs("default", agent)
        .expect("read sample keys")
}

/// A server whose writer commits one sample at a time, one holding the budget and one in line
/// at most, with two sessions: `old`, of an agent without deferrals, and `new`, of one that
/// accepts them.
struct OneInLine {
    server: TestServer,
    store: std::sync::Arc<tether_server::testing::FailingStore>,
    old_id: String,
    old: RawSession,
    new_id: String,
    new: RawSession,
}

impl OneInLine {
    /// Starts it.
    async fn start(dir: &std::path::Path) -> Self {
        let mut config = fast_config(dir);
        config.storage.writer_max_batch = 1;
        config.storage.ingest_budget = 1;
        config.storage.ingest_queue = 1;
        let (server, store) = TestServer::start_failing(config).await;
        let (old_id, credential) = server.enroll("old", &[]).await;
        let (old, _) = RawSession::hello(&server, &old_id, &credential, "old")
            .await
            .expect("the session of an agent without deferrals opens");
        let (new_id, credential) = server.enroll("new", &[]).await;
        let (new, _) = RawSession::hello_with(
            &server,
            &credential,
            pb::Hello {
                accepts_deferred_reports: true,
                ..hello(&new_id, "new", &[])
            },
        )
        .await
        .expect("the session of an agent that accepts deferrals opens");
        Self {
            server,
            store,
            old_id,
            old,
            new_id,
            new,
        }
    }

    /// Makes each commit take a second and has the agent without deferrals send `reports`
    /// reports of one sample (seqs 1, 2, …), one commit each: it keeps the budget taken and a
    /// report in line. Returns once a report waits in line.
    async fn fill_line(&mut self, reports: u64) {
        self.store.slow(Duration::from_secs(1));
        for seq in 1..=reports {
            self.old.send_samples([seq]).await;
        }
        eventually("a report waiting in line for budget", || async {
            (waiting_in_line(&self.server) >= 1).then_some(())
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_line_defers_the_reports_of_agents_that_accept_it_and_loses_nothing() {
    trace_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let OneInLine {
        server,
        store,
        old_id,
        mut old,
        new_id,
        mut new,
    } = {
        let mut line = OneInLine::start(dir.path()).await;
        line.fill_line(4).await;
        line
    };

    // The other agent's report finds the line full and is deferred.
    send_report(&new, [1], 0).await;
    let first = deferral(&mut new).await;
    assert_eq!(first.last_seq, 1);
    let retry = first
        .retry_after
        .expect("a deferral says when to send again");
    assert!(
        retry.seconds > 0 || retry.nanos > 0,
        "retry after {retry:?}"
    );
    assert_eq!(server.metrics.reports_deferred.get(), 1);

    // The agent without deferrals was never deferred (`wait_ack` fails on a deferral): its
    // reports are acked once the writer is fast again, and the line empties.
    store.slow(Duration::ZERO);
    assert_eq!(old.wait_ack(4).await.expect("its reports are acked"), 4);
    assert_eq!(waiting_in_line(&server), 0);

    // A report written before the agent read the deferral (it names none) is deferred although
    // the line has room: stored, it would go ahead of the deferred sample.
    send_report(&new, [2], 0).await;
    assert_eq!(deferral(&mut new).await.last_seq, 2);
    assert_eq!(server.metrics.reports_deferred.get(), 2);
    // The resend names the deferral the agent read, and is stored.
    send_report(&new, [1, 2], first.last_seq).await;
    assert_eq!(new.wait_ack(2).await.expect("the resend is acked"), 2);
    assert_eq!(server.metrics.reports_deferred.get(), 2);

    drop((old.close(), new.close()));
    let data_dir = server.data_dir.clone();
    server.stop().await;
    drop(store);
    assert_eq!(stored_seqs(&data_dir, &old_id), vec![1, 2, 3, 4]);
    assert_eq!(stored_seqs(&data_dir, &new_id), vec![1, 2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_behind_a_full_line_send_their_deferred_samples_again_and_each_is_stored_once() {
    trace_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = fast_config(dir.path());
    // A writer of 4 samples a commit, slowed below: ten agents sampling every 200 ms offer
    // 50 samples a second, more than it commits, and more than the line (4 samples) holds.
    config.storage.writer_max_batch = 4;
    config.storage.ingest_budget = 4;
    config.storage.ingest_queue = 4;
    let (server, store) = TestServer::start_failing(config).await;
    let mut agents = Vec::new();
    for i in 0..10 {
        agents.push(server.spawn_agent(&format!("deferred-{i}"), &[]).await);
    }
    for agent in &agents {
        let stats = agent.handle.stats.clone();
        eventually("every agent's first ack", || async {
            (stats.samples_acked_seq() >= 1).then_some(())
        })
        .await;
    }
    store.slow(Duration::from_millis(200));
    eventually("reports deferred at several agents", || async {
        let deferred = agents
            .iter()
            .filter(|agent| agent.handle.stats.reports_deferred() >= 2)
            .count();
        (deferred >= 3).then_some(())
    })
    .await;

    // The writer catches up: every agent's samples, deferred ones included, are acked.
    store.slow(Duration::ZERO);
    let mut acked = BTreeMap::new();
    for agent in &agents {
        let stats = agent.handle.stats.clone();
        let taken = stats.samples_taken();
        let seq = eventually("the agent's samples up to now acked", || async {
            let seq = stats.samples_acked_seq();
            (seq >= taken).then_some(seq)
        })
        .await;
        assert_eq!(
            stats.samples_dropped(),
            0,
            "no sample left the buffer unacked"
        );
        assert_eq!(stats.sessions_started(), 1, "the agent kept its session");
        acked.insert(agent.id().await, seq);
    }
    for agent in agents {
        agent.stop().await;
    }
    let data_dir = server.data_dir.clone();
    server.stop().await;
    drop(store);
    for (id, acked) in acked {
        let stored = stored_seqs(&data_dir, &id);
        let expected: Vec<u64> = (1..=acked).collect();
        assert_eq!(
            stored.get(..expected.len()),
            Some(expected.as_slice()),
            "agent {id}: each acked sample stored once, in order (stored {stored:?})"
        );
        assert!(
            stored.windows(2).all(|pair| pair[0] < pair[1]),
            "agent {id}: no sample stored twice ({stored:?})"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_ignores_its_deferrals_stores_nothing_more_and_costs_the_others_nothing() {
    trace_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut line = OneInLine::start(dir.path()).await;
    let healthy = Healthy::start(&line.server).await;
    // A full line gets the agent that accepts deferrals, the hostile one here, its first.
    line.fill_line(3).await;
    let OneInLine {
        server,
        store,
        old_id,
        mut old,
        new_id: hostile_id,
        new: mut hostile,
    } = line;
    send_report(&hostile, [1], 0).await;
    assert_eq!(deferral(&mut hostile).await.last_seq, 1);
    store.slow(Duration::ZERO);
    assert_eq!(old.wait_ack(3).await.expect("its reports are acked"), 3);
    assert_eq!(waiting_in_line(&server), 0);

    // It never answers it: with the line empty, it floods reports that name no deferral,
    // without reading a thing.
    for seq in 2..=400 {
        let report = pb::ConnectRequest {
            message: Some(pb::connect_request::Message::Metrics(pb::MetricsReport {
                samples: vec![sample(seq)],
                previous_ack_latency: None,
                deferred_seq: 0,
            })),
        };
        match tokio::time::timeout(EVENTUALLY, hostile.tx.send(report)).await {
            Ok(Ok(())) => {}
            // The server ended the stream and tonic dropped its request body.
            Ok(Err(_)) => break,
            Err(_) => panic!("the hostile agent's stream neither took a report nor ended"),
        }
    }
    // Every report it sent is deferred until the per-stream message rate ends its stream.
    let mut deferred = 1;
    let status = loop {
        match hostile.recv().await {
            Ok(Some(pb::connect_response::Message::MetricsDeferred(_))) => deferred += 1,
            Ok(Some(other)) => panic!("the hostile agent got {other:?}"),
            Ok(None) => panic!("the hostile agent's stream ended cleanly"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(deferred > 1, "its flood was deferred ({deferred})");

    // The others keep everything.
    healthy.assert_unaffected(&server).await;
    drop(old.close());
    let data_dir = server.data_dir.clone();
    server.stop().await;
    drop(store);
    assert_eq!(stored_seqs(&data_dir, &old_id), vec![1, 2, 3]);
    assert_eq!(
        stored_seqs(&data_dir, &hostile_id),
        Vec::<u64>::new(),
        "nothing of a report it never sent again was stored"
    );
}
