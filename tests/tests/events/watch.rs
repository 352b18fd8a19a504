//! `WatchEvents`: realtime changes, resuming from a cursor, an expired cursor, slow watchers.

use super::*;

pub(super) type Stream = tonic::Streaming<pb::WatchEventsResponse>;

pub(super) async fn watch(
    client: &EventClient,
    filter: pb::EventFilter,
    cursor: &str,
) -> Result<Stream, tonic::Status> {
    client
        .clone()
        .watch_events(pb::WatchEventsRequest {
            filter: Some(filter),
            cursor: cursor.to_owned(),
        })
        .await
        .map(tonic::Response::into_inner)
}

pub(super) async fn next(stream: &mut Stream) -> pb::WatchEventsResponse {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("a watch message within 10 s")
        .expect("watch stream")
        .expect("watch open")
}

/// Reads until the caught-up marker; returns the changes before it.
pub(super) async fn until_caught_up(stream: &mut Stream) -> (Vec<pb::WatchEventsResponse>, String) {
    let mut changes = Vec::new();
    loop {
        let message = next(stream).await;
        if message.change == pb::EventChangeKind::CaughtUp as i32 {
            return (changes, message.cursor);
        }
        changes.push(message);
    }
}

pub(super) fn seqs(changes: &[pb::WatchEventsResponse]) -> Vec<u64> {
    changes
        .iter()
        .map(|c| c.event.as_ref().expect("event").seq)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_resuming_from_its_cursor_gets_exactly_what_it_missed() {
    let world = World::new().await;
    let (_, _, mut session, _) = world.agent("watched").await;
    let client = world.events().await;
    let only_app = pb::EventFilter {
        kind_prefix: "app".into(),
        ..Default::default()
    };
    let mut live = watch(&client, only_app.clone(), "").await.expect("watch");
    let (replayed, _) = until_caught_up(&mut live).await;
    assert!(
        replayed.is_empty(),
        "a watch without cursor starts at the present"
    );

    session
        .report_events(vec![
            agent_event(1, "app.one", pb::EventSeverity::Info),
            agent_event(2, "other.one", pb::EventSeverity::Info),
            agent_event(3, "app.two", pb::EventSeverity::Info),
        ])
        .await
        .expect("ack");
    let first = next(&mut live).await;
    let second = next(&mut live).await;
    assert_eq!(seqs(&[first.clone(), second.clone()]), vec![1, 3]);
    assert_eq!(first.change, pb::EventChangeKind::Created as i32);
    let cursor = second.cursor.clone();
    drop(live);

    // Missed while away: two creations and an acknowledgement.
    session
        .report_events(vec![
            agent_event(4, "app.three", pb::EventSeverity::Info),
            agent_event(5, "other.two", pb::EventSeverity::Info),
            agent_event(6, "app.four", pb::EventSeverity::Info),
        ])
        .await
        .expect("ack");
    client
        .clone()
        .acknowledge_events(pb::AcknowledgeEventsRequest {
            event_ids: vec![first.event.as_ref().expect("event").event_id.clone()],
            filter: None,
        })
        .await
        .expect("acknowledge");

    let mut resumed = watch(&client, only_app, &cursor).await.expect("resume");
    let (missed, caught_up_at) = until_caught_up(&mut resumed).await;
    let kinds: Vec<(u64, i32)> = missed
        .iter()
        .map(|c| (c.event.as_ref().expect("event").seq, c.change))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (4, pb::EventChangeKind::Created as i32),
            (6, pb::EventChangeKind::Created as i32),
            (1, pb::EventChangeKind::Acknowledged as i32),
        ]
    );
    assert_eq!(missed.last().map(|c| c.cursor.clone()), Some(caught_up_at));

    // And live again from there.
    session
        .report_events(vec![agent_event(7, "app.five", pb::EventSeverity::Info)])
        .await
        .expect("ack");
    assert_eq!(seqs(&[next(&mut resumed).await]), vec![7]);
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_past_retention_is_refused_with_a_resync_status_and_raw_events_go_but_counts_stay()
{
    let world = World::with(|config| {
        config.events.retention = Duration::from_secs(2);
        config.storage.retention_interval = Duration::from_millis(100);
    })
    .await;
    let (_, _, mut session, _) = world.agent("old").await;
    let client = world.events().await;
    let batch: Vec<_> = (1..=3)
        .map(|seq| agent_event(seq, "app.old", pb::EventSeverity::Error))
        .collect();
    session.report_events(batch).await.expect("ack");
    let before = list_all(&client, pb::EventFilter::default()).await;
    assert_eq!(before.len(), 3);

    eventually("retention to remove the raw events", || {
        let client = client.clone();
        async move {
            list_all(&client, pb::EventFilter::default())
                .await
                .is_empty()
                .then_some(())
        }
    })
    .await;
    let stats = client
        .clone()
        .get_event_stats(pb::GetEventStatsRequest::default())
        .await
        .expect("stats")
        .into_inner();
    assert_eq!(stats.total, 3, "hourly counts outlive raw events");
    let status = client
        .clone()
        .get_event(pb::GetEventRequest {
            event_id: before[0].event_id.clone(),
        })
        .await
        .expect_err("purged");
    assert_eq!(status.code(), Code::NotFound);

    eventually("the change log to be purged", || {
        let client = client.clone();
        async move { watch(&client, pb::EventFilter::default(), "0").await.err() }
    })
    .await;
    let status = watch(&client, pb::EventFilter::default(), "0")
        .await
        .expect_err("expired cursor");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_eq!(
        tether_proto::refusal::refusal(&status),
        Some(tether_proto::refusal::Refusal::CursorExpired)
    );
    // The newest cursor stays valid: a watcher that was caught up misses nothing.
    let mut fresh = watch(&client, pb::EventFilter::default(), "3")
        .await
        .expect("newest cursor");
    let (changes, _) = until_caught_up(&mut fresh).await;
    assert!(changes.is_empty());
    let status = watch(&client, pb::EventFilter::default(), "99")
        .await
        .expect_err("a cursor ahead");
    assert_eq!(status.code(), Code::InvalidArgument);
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_that_never_reads_costs_reporting_agents_nothing() {
    let world = World::new().await;
    let client = world.events().await;
    // Opened and never read again.
    let stalled: Vec<Stream> = {
        let mut out = Vec::new();
        for _ in 0..8 {
            out.push(
                watch(&client, pb::EventFilter::default(), "")
                    .await
                    .expect("watch"),
            );
        }
        out
    };
    let mut reader = watch(&client, pb::EventFilter::default(), "")
        .await
        .expect("watch");
    until_caught_up(&mut reader).await;
    let (_, _, mut session, _) = world.agent("busy").await;
    let n = 40;
    for report in 0..n {
        let batch: Vec<_> = (1..=10)
            .map(|i| agent_event(report * 10 + i, "app.busy", pb::EventSeverity::Info))
            .collect();
        let ack = tokio::time::timeout(Duration::from_secs(5), session.report_events(batch))
            .await
            .expect("each ack comes promptly with stalled watchers around")
            .expect("ack");
        assert_eq!(ack.durable_seq, report * 10 + 10);
    }
    let mut got = 0;
    while got < n * 10 {
        let message = next(&mut reader).await;
        if message.change == pb::EventChangeKind::Created as i32 {
            got += 1;
        }
    }
    drop(stalled);
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_watches_are_capped_per_token_and_a_closed_one_frees_its_place() {
    let world = World::with(|config| config.limits.max_watches_per_token = 2).await;
    let client = world.events().await;
    let mut first = watch(&client, pb::EventFilter::default(), "")
        .await
        .expect("first");
    until_caught_up(&mut first).await;
    let mut second = watch(&client, pb::EventFilter::default(), "")
        .await
        .expect("second");
    until_caught_up(&mut second).await;
    let status = watch(&client, pb::EventFilter::default(), "")
        .await
        .expect_err("a third watch");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    drop(first);
    let mut third = eventually("the closed watch to free its place", || {
        let client = client.clone();
        async move { watch(&client, pb::EventFilter::default(), "").await.ok() }
    })
    .await;
    until_caught_up(&mut third).await;
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_selector_watch_follows_agents_enrolled_and_relabelled_after_it_opened() {
    let world = World::new().await;
    let (dev_id, dev_credential, mut dev, _) = world.agent("dev-box").await;
    let client = world.events().await;
    let prod_only = pb::EventFilter {
        label_selector: "env=prod".into(),
        ..Default::default()
    };
    let mut live = watch(&client, prod_only, "").await.expect("watch");
    let (replayed, _) = until_caught_up(&mut live).await;
    assert!(replayed.is_empty());

    // Enrolled after the watch opened, labelled prod: followed.
    let (prod_id, prod_credential) = world.server.enroll("prod-box", &[("env", "prod")]).await;
    let (mut prod, _) = RawSession::hello_with(
        &world.server,
        &prod_credential,
        tether_tests::hello(&prod_id, "prod-box", &[("env", "prod")]),
    )
    .await
    .expect("prod session");
    dev.report_events(vec![agent_event(1, "app.dev", pb::EventSeverity::Info)])
        .await
        .expect("ack");
    prod.report_events(vec![agent_event(1, "app.prod", pb::EventSeverity::Info)])
        .await
        .expect("ack");
    let first = next(&mut live).await;
    let event = first.event.expect("event");
    assert_eq!(
        (event.agent_id.as_str(), event.kind.as_str()),
        (prod_id.as_str(), "app.prod"),
        "the dev agent's event is not one the selector selects"
    );

    // The dev agent comes back labelled prod: its events follow from then on.
    drop(dev);
    let (mut relabelled, _) = RawSession::hello_with(
        &world.server,
        &dev_credential,
        tether_tests::hello(&dev_id, "dev-box", &[("env", "prod")]),
    )
    .await
    .expect("relabelled session");
    relabelled
        .report_events(vec![agent_event(
            2,
            "app.now-prod",
            pb::EventSeverity::Info,
        )])
        .await
        .expect("ack");
    let second = next(&mut live).await.event.expect("event");
    assert_eq!(
        (second.agent_id.as_str(), second.kind.as_str()),
        (dev_id.as_str(), "app.now-prod")
    );
    drop((prod, relabelled));
    world.stop().await;
}
