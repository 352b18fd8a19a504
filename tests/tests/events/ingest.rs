//! Ingest: dedupe by (agent, seq), fingerprints, bad events and the per-agent rate.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resent_report_adds_nothing_and_the_welcome_says_how_far_events_are_stored() {
    let world = World::new().await;
    let (id, credential, mut session, _) = world.agent("resend").await;
    let batch: Vec<_> = (1..=3)
        .map(|seq| agent_event(seq, "app.step", pb::EventSeverity::Info))
        .collect();
    let ack = session.report_events(batch.clone()).await.expect("ack");
    assert_eq!(ack.durable_seq, 3);
    drop(session);

    // Reconnected, the agent learns seq 3 is stored, yet re-sends everything plus one more.
    let (mut session, welcome) = RawSession::hello(&world.server, &id, &credential, "resend")
        .await
        .expect("session again");
    assert_eq!(welcome.last_durable_event_seq, 3);
    let mut again = batch.clone();
    again.push(agent_event(4, "app.step", pb::EventSeverity::Info));
    let ack = session.report_events(again).await.expect("ack");
    assert_eq!((ack.durable_seq, ack.rejected.len()), (4, 0));
    let ack = session.report_events(batch).await.expect("ack of a replay");
    assert_eq!(ack.durable_seq, 4, "a replay never lowers the mark");

    let client = world.events().await;
    let stored = list_all(&client, pb::EventFilter::default()).await;
    let mut seqs: Vec<u64> = stored.iter().map(|e| e.seq).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, vec![1, 2, 3, 4]);
    let stats = client
        .clone()
        .get_event_stats(pb::GetEventStatsRequest::default())
        .await
        .expect("stats")
        .into_inner();
    assert_eq!(stats.total, 4, "replays are not counted again");
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_fingerprint_grows_one_event_and_every_occurrence_is_counted() {
    let world = World::new().await;
    let (_, _, mut session, _) = world.agent("fingerprint").await;
    // Whole milliseconds: the stored precision of event times.
    let base = SystemTime::UNIX_EPOCH
        + Duration::from_millis(
            u64::try_from(
                (SystemTime::now() - Duration::from_secs(120))
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .expect("after 1970")
                    .as_millis(),
            )
            .expect("fits"),
        );
    let occurrence = |seq: u64, offset: u64| pb::AgentEvent {
        fingerprint: "disk-full:/var".into(),
        ..event_at(
            seq,
            "disk.full",
            pb::EventSeverity::Error,
            base + Duration::from_secs(offset),
        )
    };
    // Out of order within the window: first_seen and last_seen still span them.
    let ack = session
        .report_events(vec![occurrence(1, 30), occurrence(2, 0), occurrence(3, 60)])
        .await
        .expect("ack");
    assert_eq!(ack.durable_seq, 3);
    let ack = session
        .report_events(vec![
            occurrence(4, 90),
            agent_event(5, "disk.full", pb::EventSeverity::Error),
        ])
        .await
        .expect("ack");
    assert_eq!(ack.durable_seq, 5);

    let client = world.events().await;
    let stored = list_all(&client, pb::EventFilter::default()).await;
    assert_eq!(stored.len(), 2, "{stored:#?}");
    let repeated = stored
        .iter()
        .find(|e| !e.fingerprint.is_empty())
        .expect("the fingerprinted event");
    assert_eq!(repeated.count, 4);
    assert_eq!(repeated.seq, 1, "the first occurrence names the event");
    assert_eq!(repeated.first_seen, Some(base.into()));
    assert_eq!(
        repeated.last_seen,
        Some((base + Duration::from_secs(90)).into())
    );
    let stats = client
        .clone()
        .get_event_stats(pb::GetEventStatsRequest::default())
        .await
        .expect("stats")
        .into_inner();
    assert_eq!(stats.total, 5, "every occurrence counts");
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_events_are_rejected_alone_and_bad_reports_end_the_stream() {
    let world = World::new().await;
    let (_, _, mut session, _) = world.agent("bad").await;
    let mut too_many = agent_event(3, "app.attrs", pb::EventSeverity::Info);
    too_many.attributes = (0..=tether_proto::event::MAX_ATTRIBUTES)
        .map(|i| (format!("k{i}"), "v".to_owned()))
        .collect();
    let mut unspecified = agent_event(4, "app.sev", pb::EventSeverity::Info);
    unspecified.severity = pb::EventSeverity::Unspecified as i32;
    let future = event_at(
        5,
        "app.future",
        pb::EventSeverity::Info,
        SystemTime::now() + Duration::from_secs(3600),
    );
    let ack = session
        .report_events(vec![
            agent_event(1, "Bad Kind", pb::EventSeverity::Info),
            agent_event(2, "app.good", pb::EventSeverity::Info),
            too_many,
            unspecified,
            future,
        ])
        .await
        .expect("ack");
    assert_eq!(ack.durable_seq, 5, "rejected events are settled too");
    let rejected: Vec<(u64, i32)> = ack.rejected.iter().map(|r| (r.seq, r.code)).collect();
    let invalid = Code::InvalidArgument as i32;
    assert_eq!(
        rejected,
        vec![(1, invalid), (3, invalid), (4, invalid), (5, invalid)]
    );
    assert!(
        ack.rejected[0].reason.contains("kind"),
        "{:?}",
        ack.rejected[0]
    );
    let client = world.events().await;
    let stored = list_all(&client, pb::EventFilter::default()).await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].kind, "app.good");

    // A report out of seq order is an agent bug: the stream ends, nothing of it is stored.
    session
        .send_events(vec![
            agent_event(7, "app.late", pb::EventSeverity::Info),
            agent_event(6, "app.late", pb::EventSeverity::Info),
        ])
        .await;
    let status = session.event_ack().await.expect_err("stream ends");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    let (_, _, mut empty, _) = world.agent("empty").await;
    empty.send_events(vec![]).await;
    let status = empty.event_ack().await.expect_err("stream ends");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    let (_, _, mut jump, _) = world.agent("jump").await;
    jump.send_events(vec![agent_event(
        u64::MAX / 2,
        "app.jump",
        pb::EventSeverity::Info,
    )])
    .await;
    let status = jump.event_ack().await.expect_err("stream ends");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    assert_eq!(list_all(&client, pb::EventFilter::default()).await.len(), 1);
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_of_an_hour_spooled_at_the_rate_is_stored_whole() {
    // The default rate (600 a minute); an agent back from an hour's outage sends what it
    // spooled meanwhile, 3,000 events a little over a second apart, all at once.
    let world = World::with(|_| {}).await;
    let (_, _, mut session, _) = world.agent("returning").await;
    let now = std::time::SystemTime::now();
    let spooled: Vec<_> = (1..=3_000u64)
        .map(|seq| {
            let mut event = agent_event(seq, "app.job_done", pb::EventSeverity::Info);
            let ago = Duration::from_millis(1_200) * u32::try_from(3_000 - seq).expect("small");
            event.time = Some((now - ago).into());
            event
        })
        .collect();
    for report in spooled.chunks(tether_proto::event::MAX_EVENTS_PER_REPORT) {
        let ack = session.report_events(report.to_vec()).await.expect("ack");
        assert_eq!(ack.rejected, Vec::new(), "nothing refused");
    }
    let client = world.events().await;
    assert_eq!(
        list_all(&client, pb::EventFilter::default()).await.len(),
        3_000
    );
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_over_the_agents_rate_are_rejected_counted_and_reported_once_per_window() {
    let world = World::with(|config| {
        config.events.rate_per_minute = 5;
        config.events.rate_window = Duration::from_millis(300);
    })
    .await;
    let (id, _, mut session, _) = world.agent("flood").await;
    let flood: Vec<_> = (1..=8)
        .map(|seq| agent_event(seq, "app.flood", pb::EventSeverity::Info))
        .collect();
    let ack = session.report_events(flood).await.expect("ack");
    assert_eq!(ack.durable_seq, 8);
    let limited: Vec<(u64, i32)> = ack.rejected.iter().map(|r| (r.seq, r.code)).collect();
    let exhausted = Code::ResourceExhausted as i32;
    assert_eq!(
        limited,
        vec![(6, exhausted), (7, exhausted), (8, exhausted)]
    );

    // The next report after the window carries the count, stored as one event.
    let client = world.events().await;
    let only_rate = pb::EventFilter {
        kind: tether_proto::event::KIND_RATE_LIMITED.into(),
        ..Default::default()
    };
    // Each probe is another report: the one after the window carries the count.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    // Probes dropped before the window closed count in it too.
    let mut seq = 8;
    let mut dropped = 3;
    let reported = loop {
        seq += 1;
        let probe = agent_event(seq, "app.flood", pb::EventSeverity::Info);
        let ack = session.report_events(vec![probe]).await.expect("ack");
        if let Some(found) = list_all(&client, only_rate.clone())
            .await
            .into_iter()
            .next()
        {
            break found;
        }
        dropped += ack.rejected.len();
        assert!(
            tokio::time::Instant::now() < deadline,
            "no tether.rate_limited event after {seq} reports"
        );
    };
    assert_eq!(reported.agent_id, id);
    assert_eq!(
        reported.attributes.get("dropped"),
        Some(&dropped.to_string()),
        "every event dropped in the window is counted"
    );
    assert_eq!(reported.severity, pb::EventSeverity::Warning as i32);
    let flood_seqs: Vec<u64> = list_all(&client, pb::EventFilter::default())
        .await
        .iter()
        .filter(|e| e.kind == "app.flood")
        .map(|e| e.seq)
        .collect();
    for seq in 1..=5 {
        assert!(flood_seqs.contains(&seq), "admitted event {seq} is stored");
    }
    for seq in 6..=8 {
        assert!(
            !flood_seqs.contains(&seq),
            "dropped event {seq} is not stored"
        );
    }
    world.stop().await;
}
