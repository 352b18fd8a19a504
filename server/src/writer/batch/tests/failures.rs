//! Failed commits and writes: a failed commit acks nothing and changes no mark or head, its
//! session is never acked again, its audit entries and live changes are retried in order, and
//! one write that cannot be stored fails alone.

use super::*;

#[tokio::test]
async fn a_failed_commit_acks_nothing_and_leaves_marks_and_heads_unchanged() {
    let mut f = fixture();
    let a1 = AgentId::new("a-1");
    let s = session("a-1", "s-1");
    assert!(
        f.commit(batch([f.samples(&s, 1..=3), audit("acme", "one")]))
            .await
    );
    let head = f.state.audit_heads[&org()];
    let progress = f.state.progress_at.clone();

    f.store.fail(true);
    let (commit, mut waiting) = f.handler_commit(vec![], entry("acme", "two"));
    assert!(!f.commit(batch([f.samples(&s, 4..=6), commit])).await);
    assert_eq!(s.durable_seq(), 3, "nothing acked");
    assert!(
        matches!(waiting.try_recv(), Ok(Err(CommitError::Store(_)))),
        "the handler learns the commit failed"
    );
    assert_eq!(f.state.live[&a1].last_seq, 3, "the mark did not advance");
    assert_eq!(
        f.state.audit_heads[&org()],
        head,
        "the head did not advance"
    );
    assert_eq!(f.state.progress_at, progress);
    assert_eq!(f.latest_seq("a-1"), Some(3));
    assert_eq!(f.metrics.writer_commit_failures.get(), 1);

    // The session is ended; the agent reconnects and re-sends: nothing is dropped as a
    // duplicate, and the chain goes on from the head.
    assert_eq!(s.close_reason(), CloseReason::WriteFailed);
    f.store.fail(false);
    let again = session("a-1", "s-2");
    let plan = f.plan(batch([f.samples(&again, 4..=6)]));
    assert_eq!(sample_seqs(&plan.writes), [4, 5, 6]);
    f.apply(plan).await;
    assert_eq!(again.durable_seq(), 6);
    assert_eq!(f.stored_seqs("a-1"), [1, 2, 3, 4, 5, 6]);
}

#[tokio::test]
async fn after_a_failed_commit_the_session_is_never_acked_again() {
    let mut f = fixture();
    let s = session("a-1", "s-1");
    let other = session("b-1", "s-2");
    assert!(f.commit(batch([f.samples(&s, 1..=3)])).await);

    f.store.fail(true);
    assert!(!f.commit(batch([f.samples(&s, 4..=6)])).await);
    assert!(s.writes_failed());
    assert_eq!(s.close_reason(), CloseReason::WriteFailed);

    // Samples the session had already queued behind the failed batch are neither stored nor
    // acked: an ack of 9 would cover 4..=6, which are not on disk. Another agent, in the same
    // batch, is unaffected.
    f.store.fail(false);
    assert!(
        f.commit(batch([f.samples(&s, 7..=9), f.samples(&other, 1..=2)]))
            .await
    );
    assert_eq!(s.durable_seq(), 3, "no ack past the unwritten samples");
    assert_eq!(f.stored_seqs("a-1"), [1, 2, 3]);
    assert_eq!(f.state.live[&AgentId::new("a-1")].last_seq, 3);
    assert_eq!(other.durable_seq(), 2);
    assert_eq!(f.stored_seqs("b-1"), [1, 2]);
}

#[tokio::test]
async fn audit_entries_of_a_failed_commit_are_retried_with_their_seq_and_hash() {
    let mut f = fixture();
    assert!(f.commit(batch([audit("acme", "one")])).await);

    f.store.fail(true);
    let (commit, mut waiting) = f.handler_commit(vec![], entry("acme", "handler"));
    assert!(
        !f.commit(batch([
            audit("acme", "two"),
            commit,
            audit("acme", "three")
        ]))
        .await
    );
    assert!(f.state.has_retries());
    assert!(
        matches!(waiting.try_recv(), Ok(Err(_))),
        "the handler learns its call failed (and audits that itself)"
    );
    // Failing again changes nothing: the same entries wait, in order.
    assert!(!f.commit(batch([])).await);

    f.store.fail(false);
    assert!(f.commit(batch([audit("acme", "four")])).await);
    assert!(!f.state.has_retries());
    let stored = f.stored_audit();
    let targets: Vec<(u64, &str)> = stored.iter().map(|(s, t)| (*s, t.as_str())).collect();
    assert_eq!(
        targets,
        [(1, "one"), (2, "two"), (3, "three"), (4, "four")],
        "no gap, no fork, the handler's success not recorded"
    );
    let records = f.store.audit_records(&org(), 0, 10).expect("read audit");
    for pair in records.windows(2) {
        assert_eq!(pair[1].prev_hash, pair[0].hash, "seq {}", pair[1].seq);
        let again = crate::audit::chain(pair[0].seq, pair[0].hash, pair[1].entry.clone());
        assert_eq!(again.hash, pair[1].hash, "seq {}", pair[1].seq);
    }
}

#[tokio::test]
async fn live_changes_of_a_failed_commit_are_written_before_newer_ones() {
    let mut f = fixture();
    let t0 = SystemTime::now();
    let a1 = AgentId::new("a-1");
    f.handle.transition(
        transition("a-1", AgentStatus::Offline, AgentStatus::Online, t0),
        Some(t0),
    );
    f.store.fail(true);
    assert!(!f.commit(batch([])).await);

    let t1 = t0 + Duration::from_secs(1);
    f.handle.transition(
        transition("a-1", AgentStatus::Online, AgentStatus::Offline, t1),
        Some(t1),
    );
    f.store.fail(false);
    assert!(f.commit(batch([])).await);
    let history: Vec<_> = f
        .store
        .transitions(&org(), &a1, 10)
        .expect("read history")
        .into_iter()
        .map(|t| (t.from, t.to))
        .collect();
    assert_eq!(
        history,
        [
            (AgentStatus::Online, AgentStatus::Offline),
            (AgentStatus::Offline, AgentStatus::Online),
        ],
        "newest first: both kept, in order"
    );
    assert_eq!(f.state.live[&a1].status, AgentStatus::Offline);
}

#[tokio::test]
async fn a_write_that_cannot_be_stored_fails_alone() {
    let mut f = fixture();
    let s = session("a-1", "s-1");
    // A record the store cannot encode (a time before 1970): its caller learns at once, and
    // nothing is queued.
    let mut token = TokenRecord {
        id: TokenId::new("t-2"),
        org: org(),
        role: Role::Viewer,
        name: "bad".into(),
        digest: [0; 32],
        created_at: UNIX_EPOCH - Duration::from_secs(1),
        expires_at: None,
        revoked: false,
        agent: None,
        server_admin: false,
        last_used_at: None,
    };
    let slot = f.handle.reserve().await.expect("a slot");
    let refused = slot.submit(vec![Write::PutToken(token.clone())], None);
    assert!(
        matches!(
            refused,
            Err(ServerError::Store(
                crate::store::StoreError::Unencodable { .. }
            ))
        ),
        "{:?}",
        refused.err()
    );
    assert!(f.queues.control.try_recv().is_err(), "nothing queued");

    // Writes the writer builds itself: an audit entry that cannot be encoded is left out alone
    // (the head does not move), a handler whose audit entry cannot be encoded fails alone, and
    // everything else in the batch commits.
    let mut bad = entry("acme", "bad");
    bad.time = UNIX_EPOCH - Duration::from_secs(1);
    let (doomed, mut doomed_wait) = f.handler_commit(vec![], bad.clone());
    token.created_at = SystemTime::now();
    let (fine, mut fine_wait) =
        f.handler_commit(vec![Write::PutToken(token)], entry("acme", "fine"));
    let items = [
        audit("acme", "one"),
        Item::Control(Control::Audit(Box::new(bad))),
        doomed,
        f.samples(&s, 1..=2),
        fine,
    ];
    assert!(f.commit(batch(items)).await);
    assert!(matches!(doomed_wait.try_recv(), Ok(Err(_))));
    assert!(matches!(fine_wait.try_recv(), Ok(Ok(()))));
    assert_eq!(s.durable_seq(), 2);
    assert_eq!(f.stored_seqs("a-1"), [1, 2]);
    let stored = f.stored_audit();
    let targets: Vec<(u64, &str)> = stored.iter().map(|(s, t)| (*s, t.as_str())).collect();
    assert_eq!(targets, [(1, "one"), (2, "fine")]);
    assert_eq!(f.metrics.writer_unencodable_writes.get(), 2);
}
