//! What a batch plans to write: samples at or below the high-water mark dropped but acked,
//! progress records at most every interval, and audit entries chained within and across
//! batches.

use super::*;

#[tokio::test]
async fn samples_at_or_below_the_high_water_mark_are_dropped_but_acked() {
    let mut f = fixture();
    let first = session("a-1", "s-1");
    let plan = f.plan(batch([f.samples(&first, 1..=3)]));
    assert_eq!(sample_seqs(&plan.writes), [1, 2, 3]);
    assert!(f.state.live.is_empty(), "planning changes nothing");
    assert!(f.commit(batch([f.samples(&first, 1..=3)])).await);
    assert_eq!(first.durable_seq(), 3);

    // After a reconnect the agent re-sends 2..=5: 2 and 3 are durable already.
    let second = session("a-1", "s-2");
    let plan = f.plan(batch([f.samples(&second, 2..=5)]));
    assert_eq!(sample_seqs(&plan.writes), [4, 5]);
    assert!(f.commit(batch([f.samples(&second, 2..=5)])).await);
    assert_eq!(second.durable_seq(), 5, "duplicates are acked too");
    assert_eq!(f.state.live[&AgentId::new("a-1")].last_seq, 5);

    // A batch holding only duplicates writes no sample and still acks.
    let third = session("a-1", "s-3");
    assert!(f.commit(batch([f.samples(&third, 1..=5)])).await);
    assert_eq!(third.durable_seq(), 5);

    // The mark is per agent: another agent's seq 1 is new.
    let other = session("b-1", "s-4");
    let plan = f.plan(batch([f.samples(&other, 1..=1)]));
    assert_eq!(sample_seqs(&plan.writes), [1]);

    assert_eq!(
        f.stored_seqs("a-1"),
        [1, 2, 3, 4, 5],
        "each sample stored once"
    );
    assert_eq!(f.latest_seq("a-1"), Some(5), "the registry has the newest");
    assert_eq!(
        f.registry
            .get(&org(), &AgentId::new("a-1"))
            .expect("agent")
            .last_seq,
        5
    );
}

#[tokio::test]
async fn progress_records_are_written_at_most_every_interval() {
    let mut f = fixture();
    let s = session("a-1", "s-1");
    let t0 = Instant::now();
    let now = SystemTime::now();

    let plan = f.plan_at(batch([f.samples(&s, 1..=1)]), t0, now);
    assert_eq!(n_progress(&plan.writes), 1, "first batch of an agent");
    assert_eq!(lives(&plan.writes).len(), 0);
    f.apply(plan).await;

    let plan = f.plan_at(
        batch([f.samples(&s, 2..=2)]),
        t0 + Duration::from_secs(1),
        now,
    );
    assert_eq!(n_progress(&plan.writes), 0, "within the interval");
    f.apply(plan).await;

    let plan = f.plan_at(batch([f.samples(&s, 3..=3)]), t0 + PROGRESS_INTERVAL, now);
    assert_eq!(n_progress(&plan.writes), 1, "the interval has passed");
    f.apply(plan).await;

    // An agent whose status changed gets its full live summary instead, at any time.
    f.handle.transition(
        transition("a-1", AgentStatus::Offline, AgentStatus::Online, now),
        Some(now),
    );
    let plan = f.plan_with(
        batch([f.samples(&s, 4..=4)]),
        f.queues.live.take(),
        t0 + PROGRESS_INTERVAL + Duration::from_secs(1),
        now,
    );
    assert_eq!(n_progress(&plan.writes), 0);
    let lives = lives(&plan.writes);
    assert_eq!(lives.len(), 1);
    assert_eq!(
        (lives[0].status, lives[0].last_seq),
        (AgentStatus::Online, 4)
    );
}

#[tokio::test]
async fn audit_entries_chain_within_a_batch_and_across_batches() {
    let mut f = fixture();
    let (commit, mut waiting) = f.handler_commit(vec![], entry("acme", "two"));
    let plan = f.plan(batch([
        audit("acme", "one"),
        commit,
        audit("beta", "three"),
    ]));
    let records = audit_records(&plan.writes);
    let chain: Vec<_> = records
        .iter()
        .map(|r| (r.entry.org.as_str(), r.seq, r.entry.target.as_str()))
        .collect();
    assert_eq!(
        chain,
        [("acme", 1, "one"), ("acme", 2, "two"), ("beta", 1, "three")]
    );
    assert_eq!(records[0].prev_hash, crate::audit::GENESIS);
    assert_eq!(records[1].prev_hash, records[0].hash);
    assert_eq!(
        records[2].prev_hash,
        crate::audit::GENESIS,
        "chains are per org"
    );
    let acme_head = (records[1].seq, records[1].hash);
    assert!(f.state.audit_heads.is_empty(), "planning changes nothing");

    f.apply(plan).await;
    assert!(
        matches!(waiting.try_recv(), Ok(Ok(()))),
        "the handler learns it is durable"
    );
    assert_eq!(f.state.audit_heads[&org()], acme_head);
    let stored: Vec<u64> = f
        .store
        .audit_records(&org(), 0, 10)
        .expect("read audit")
        .iter()
        .map(|r| r.seq)
        .collect();
    assert_eq!(stored, [1, 2]);

    let plan = f.plan(batch([audit("acme", "four")]));
    let next = &audit_records(&plan.writes)[0];
    assert_eq!((next.seq, next.prev_hash), (3, acme_head.1));
}
