//! `WatchEvents` through the hub: live changes reach only the watchers they match, a watcher
//! that stops reading falls back to the store and misses nothing, and the switch from the
//! store to live changes has no gap and no duplicate.

use super::watch::{Stream, next, until_caught_up, watch};
use super::*;

/// A server whose agents may report far more events than the default rate allows.
async fn busy_world() -> World {
    World::with(|config| config.events.rate_per_minute = 1_000_000).await
}

/// Reads changes (skipping none) until `n` have arrived; returns their (cursor, seq).
async fn changes(stream: &mut Stream, n: usize) -> Vec<(u64, u64)> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let message = next(stream).await;
        if message.change == pb::EventChangeKind::CaughtUp as i32 {
            continue;
        }
        out.push(cursor_and_seq(&message));
    }
    out
}

fn cursor_and_seq(message: &pb::WatchEventsResponse) -> (u64, u64) {
    let cursor = message.cursor.parse().expect("a numeric cursor");
    (cursor, message.event.as_ref().expect("event").seq)
}

/// Events `first..=last` of kind `app.busy`, each carrying a message of `size` bytes.
fn batch(first: u64, last: u64, size: usize) -> Vec<pb::AgentEvent> {
    (first..=last)
        .map(|seq| pb::AgentEvent {
            message: "x".repeat(size),
            ..agent_event(seq, "app.busy", pb::EventSeverity::Info)
        })
        .collect()
}

fn watch_filter(selector: &str) -> pb::EventFilter {
    pb::EventFilter {
        label_selector: selector.into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_that_stops_reading_falls_back_to_the_store_and_later_gets_every_change_in_order()
{
    let world = busy_world().await;
    let fallbacks = world.server.metrics.event_watch.fallbacks.clone();
    let (_, _, mut session, _) = world.agent("busy").await;
    // Each on its own connection, so the stalled one's unread bytes hold up no one else.
    let mut slow = watch(&world.events().await, pb::EventFilter::default(), "")
        .await
        .expect("slow watch");
    until_caught_up(&mut slow).await;
    let mut reader = watch(&world.events().await, pb::EventFilter::default(), "")
        .await
        .expect("reader watch");
    until_caught_up(&mut reader).await;

    // Far more than the slow watcher's queue and its connection's buffers hold.
    let (reports, per_report, size) = (20, 100, 4000);
    for report in 0..reports {
        let first = report * per_report + 1;
        let ack = tokio::time::timeout(
            Duration::from_secs(5),
            session.report_events(batch(first, first + per_report - 1, size)),
        )
        .await
        .expect("each ack comes promptly with a stalled watcher around")
        .expect("ack");
        assert_eq!(ack.durable_seq, first + per_report - 1);
        // The reader keeps up: every change of this report arrives before the next is sent.
        let got = changes(&mut reader, per_report as usize).await;
        let seqs: Vec<u64> = got.iter().map(|(_, seq)| *seq).collect();
        assert_eq!(seqs, (first..first + per_report).collect::<Vec<_>>());
    }
    let n = reports * per_report;
    assert!(
        fallbacks.get() >= 1,
        "the stalled watcher's queue filled and it was detached"
    );

    // Reading again: every change, in cursor order, none missing, none twice.
    let got = changes(&mut slow, n as usize).await;
    let seqs: Vec<u64> = got.iter().map(|(_, seq)| *seq).collect();
    assert_eq!(seqs, (1..=n).collect::<Vec<_>>());
    assert!(
        got.windows(2).all(|w| w[1].0 == w[0].0 + 1),
        "consecutive cursors: the log has only these changes"
    );
    // And live again once caught up.
    session
        .report_events(batch(n + 1, n + 1, 10))
        .await
        .expect("ack");
    assert_eq!(changes(&mut slow, 1).await[0].1, n + 1);
    assert_eq!(changes(&mut reader, 1).await[0].1, n + 1);
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_watcher_whose_missed_changes_fell_out_of_retention_gets_the_resync_status() {
    let world = World::with(|config| {
        config.events.rate_per_minute = 1_000_000;
        config.events.retention = Duration::from_secs(2);
        config.storage.retention_interval = Duration::from_millis(100);
    })
    .await;
    let fallbacks = world.server.metrics.event_watch.fallbacks.clone();
    let (_, _, mut session, _) = world.agent("busy").await;
    let client = world.events().await;
    let mut slow = watch(&world.events().await, pb::EventFilter::default(), "")
        .await
        .expect("slow watch");
    until_caught_up(&mut slow).await;
    let (reports, per_report, size) = (20, 100, 4000);
    for report in 0..reports {
        let first = report * per_report + 1;
        session
            .report_events(batch(first, first + per_report - 1, size))
            .await
            .expect("ack");
    }
    assert!(fallbacks.get() >= 1, "the stalled watcher was detached");
    // Retention removes the whole change log but its newest entry: resuming after the one
    // before the last but one is refused.
    let n = reports * per_report;
    let before_last = (n - 2).to_string();
    eventually("the change log to be purged", || {
        let (client, cursor) = (client.clone(), before_last.clone());
        async move {
            watch(&client, pb::EventFilter::default(), &cursor)
                .await
                .err()
        }
    })
    .await;

    // What reached the watcher before it was detached comes in order; then the resync status,
    // never a silent gap.
    let mut seqs = Vec::new();
    let status = loop {
        match tokio::time::timeout(Duration::from_secs(10), slow.message())
            .await
            .expect("a watch message within 10 s")
        {
            Ok(Some(message)) => seqs.push(cursor_and_seq(&message).1),
            Ok(None) => panic!("the watch ended without a status"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_eq!(
        tether_proto::refusal::refusal(&status),
        Some(tether_proto::refusal::Refusal::CursorExpired)
    );
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    assert!(seqs.len() < n as usize);
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_resuming_during_live_ingest_gets_the_missed_changes_then_live_ones_once_each() {
    let world = busy_world().await;
    let (_, _, mut session, _) = world.agent("steady").await;
    let client = world.events().await;
    let mut first = watch(&client, pb::EventFilter::default(), "")
        .await
        .expect("watch");
    until_caught_up(&mut first).await;

    let (reports, per_report) = (60u64, 10u64);
    let n = reports * per_report;
    let ingest = tokio::spawn(async move {
        for report in 0..reports {
            let from = report * per_report + 1;
            session
                .report_events(batch(from, from + per_report - 1, 10))
                .await
                .expect("ack");
        }
        session
    });

    // Part of the way in, the watcher goes away and comes back from its last cursor while
    // the agent keeps reporting.
    let before = changes(&mut first, 95).await;
    drop(first);
    let cursor = before.last().expect("changes").0;
    let mut resumed = watch(&client, pb::EventFilter::default(), &cursor.to_string())
        .await
        .expect("resume");
    let mut after = Vec::new();
    let mut caught_up_at = None;
    while (before.len() + after.len()) < n as usize {
        let message = next(&mut resumed).await;
        if message.change == pb::EventChangeKind::CaughtUp as i32 {
            assert!(caught_up_at.is_none(), "one caught-up marker");
            caught_up_at = Some(message.cursor.parse::<u64>().expect("cursor"));
            continue;
        }
        after.push(cursor_and_seq(&message));
    }
    let session = ingest.await.expect("ingest task");
    let caught_up_at = caught_up_at.expect("the resumed watch caught up");
    assert!(
        caught_up_at >= cursor,
        "caught up at or past where it resumed"
    );

    let all: Vec<(u64, u64)> = before.into_iter().chain(after).collect();
    let seqs: Vec<u64> = all.iter().map(|(_, seq)| *seq).collect();
    assert_eq!(seqs, (1..=n).collect::<Vec<_>>(), "no gap, no duplicate");
    assert!(all.windows(2).all(|w| w[1].0 == w[0].0 + 1));
    // Nothing more: the next message is the next live change.
    let mut session = session;
    session
        .report_events(batch(n + 1, n + 1, 10))
        .await
        .expect("ack");
    assert_eq!(changes(&mut resumed, 1).await, vec![(n + 1, n + 1)]);
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_selector_watch_follows_an_agent_relabelled_into_and_out_of_its_selection() {
    let world = World::new().await;
    let (s1_id, s1_credential) = world.server.enroll("s1-box", &[("site", "s1")]).await;
    let (mut s1, _) = RawSession::hello_with(
        &world.server,
        &s1_credential,
        tether_tests::hello(&s1_id, "s1-box", &[("site", "s1")]),
    )
    .await
    .expect("s1 session");
    let (mover_id, mover_credential) = world.server.enroll("mover", &[("site", "s2")]).await;
    let hello_at = |site: &'static str| {
        let (server, id, credential) = (&world.server, mover_id.clone(), mover_credential.clone());
        async move {
            RawSession::hello_with(
                server,
                &credential,
                tether_tests::hello(&id, "mover", &[("site", site)]),
            )
            .await
            .expect("mover session")
            .0
        }
    };
    let client = world.events().await;
    let mut site1 = watch(&client, watch_filter("site=s1"), "")
        .await
        .expect("watch");
    until_caught_up(&mut site1).await;
    let kind_of = |m: pb::WatchEventsResponse| {
        let event = m.event.expect("event");
        (event.agent_id, event.kind)
    };

    // Outside the selection: not delivered (the s1 agent's next event is).
    let mut mover = hello_at("s2").await;
    mover
        .report_events(vec![agent_event(1, "app.in-s2", pb::EventSeverity::Info)])
        .await
        .expect("ack");
    s1.report_events(vec![agent_event(1, "app.mark-1", pb::EventSeverity::Info)])
        .await
        .expect("ack");
    assert_eq!(
        kind_of(next(&mut site1).await),
        (s1_id.clone(), "app.mark-1".to_owned())
    );

    // Relabelled into the selection after the watch opened: followed.
    drop(mover);
    let mut mover = hello_at("s1").await;
    mover
        .report_events(vec![agent_event(2, "app.in-s1", pb::EventSeverity::Info)])
        .await
        .expect("ack");
    assert_eq!(
        kind_of(next(&mut site1).await),
        (mover_id.clone(), "app.in-s1".to_owned())
    );

    // And out again: no longer.
    drop(mover);
    let mut mover = hello_at("s2").await;
    mover
        .report_events(vec![agent_event(
            3,
            "app.back-in-s2",
            pb::EventSeverity::Info,
        )])
        .await
        .expect("ack");
    s1.report_events(vec![agent_event(2, "app.mark-2", pb::EventSeverity::Info)])
        .await
        .expect("ack");
    assert_eq!(
        kind_of(next(&mut site1).await),
        (s1_id.clone(), "app.mark-2".to_owned())
    );
    drop((s1, mover));
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_whose_filters_do_not_match_are_never_offered_the_change() {
    let world = World::with(|config| {
        config.limits.max_watches_per_token = 64;
        config.limits.max_watches_per_org = 64;
    })
    .await;
    let counters = world.server.metrics.event_watch.clone();
    let (id, credential) = world.server.enroll("s1-box", &[("site", "s1")]).await;
    let (mut session, _) = RawSession::hello_with(
        &world.server,
        &credential,
        tether_tests::hello(&id, "s1-box", &[("site", "s1")]),
    )
    .await
    .expect("session");
    let client = world.events().await;
    // Watchers of other sites, of other agents and of critical events only.
    let mut others = Vec::new();
    for i in 0..40 {
        let filter = match i % 3 {
            0 => watch_filter(&format!("site=other-{i}")),
            1 => pb::EventFilter {
                agent_ids: vec![format!("not-{i}")],
                ..Default::default()
            },
            _ => pb::EventFilter {
                min_severity: pb::EventSeverity::Critical as i32,
                ..Default::default()
            },
        };
        let mut stream = watch(&client, filter, "").await.expect("watch");
        until_caught_up(&mut stream).await;
        others.push(stream);
    }
    let mut matching = watch(&client, watch_filter("site=s1"), "")
        .await
        .expect("watch");
    until_caught_up(&mut matching).await;
    let (candidates, deliveries) = (counters.candidates.get(), counters.deliveries.get());

    let n = 20;
    let events: Vec<_> = (1..=n)
        .map(|seq| agent_event(seq, "app.site", pb::EventSeverity::Info))
        .collect();
    session.report_events(events).await.expect("ack");
    let got: Vec<u64> = changes(&mut matching, n as usize)
        .await
        .into_iter()
        .map(|(_, seq)| seq)
        .collect();
    assert_eq!(got, (1..=n).collect::<Vec<_>>());
    assert_eq!(
        counters.candidates.get() - candidates,
        n,
        "each change was offered to the one watcher of its site, none of the other 40"
    );
    assert_eq!(counters.deliveries.get() - deliveries, n);
    drop((others, session));
    world.stop().await;
}
