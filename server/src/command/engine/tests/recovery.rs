//! What the engine recovers from: a restart (resumed from the store), reconnecting agents,
//! agents that never come (deadlines), failed commits (stored later, acked only then) and
//! sends that cannot be stored (withdrawn; an idempotency key returns the first).

use super::*;

#[tokio::test]
async fn a_restart_resumes_from_the_store_and_an_agent_gets_its_invocation_on_reconnect() {
    let f = Fixture::new(&["a1"]).await;
    let command = f.send(new_command(&["a1"], RolloutPolicy::default())).await;
    assert_eq!(
        f.stored(&command.id).counts.queued,
        1,
        "queued for the offline agent"
    );
    let dir = f.stop().await;

    let f = Fixture::open(dir, &[]).await;
    assert_eq!(f.engine.n_active(), 1);
    // The registry of this fixture is empty; enroll a1 again so it can connect.
    f.registry.enrolled(agent_record("acme", "a1", "hw-a1"));
    let (s1, _) = f.connect("a1", &[]).await;
    let offered = next_offer(&s1).await;
    assert_eq!(offered, invocation_id(&command.id, 0));
    f.stop().await;
}

#[tokio::test]
async fn a_reconnecting_agent_is_reoffered_what_it_never_journaled_and_loses_what_it_forgot() {
    let f = Fixture::new(&["a1"]).await;
    let (s1, _) = f.connect("a1", &[]).await;
    let one = f.send(new_command(&["a1"], RolloutPolicy::default())).await;
    let two = f.send(new_command(&["a1"], RolloutPolicy::default())).await;
    let i1 = next_offer(&s1).await;
    let i2 = next_offer(&s1).await;
    f.engine
        .report(&s1, vec![update(&i2, 1, UpdateStep::Running, vec![])])
        .await
        .expect("report");
    assert_eq!(next_acks(&s1).await, [(i2.clone(), 1)]);
    // It comes back having journaled nothing: the offer is made again, the run is lost.
    let (s1, journaled) = f.connect("a1", &[]).await;
    assert!(journaled.acks.is_empty());
    assert_eq!(next_offer(&s1).await, i1);
    f.until(&two.id, "the lost run to end", |c| c.is_finished())
        .await;
    assert_eq!(f.stored(&two.id).counts.agent_restarted, 1);
    // Listing an invocation gets its durable seq in the Welcome.
    let (_, journaled) = f.connect("a1", std::slice::from_ref(&i1)).await;
    assert_eq!(journaled.acks, [(i1.clone(), 0)]);
    assert!(!f.stored(&one.id).is_finished());
    f.stop().await;
}

#[tokio::test]
async fn deadlines_settle_invocations_whose_agent_never_comes() {
    let f = Fixture::new(&["a1"]).await;
    let mut new = new_command(&["a1"], RolloutPolicy::default());
    new.deliver_within = Some(Duration::from_millis(50));
    let command = f.send(new).await;
    f.until(&command.id, "the delivery deadline", |c| c.is_finished())
        .await;
    assert_eq!(f.stored(&command.id).counts.delivery_timed_out, 1);
    f.stop().await;
}

#[tokio::test]
async fn a_failed_commit_is_stored_later_and_acked_only_then() {
    let f = Fixture::new(&["a1"]).await;
    let (s1, _) = f.connect("a1", &[]).await;
    let command = f.send(new_command(&["a1"], RolloutPolicy::default())).await;
    let id = next_offer(&s1).await;
    f.store.fail(true);
    f.engine
        .report(&s1, vec![update(&id, 1, UpdateStep::Running, vec![])])
        .await
        .expect("report");
    let deadline = tokio::time::Instant::now() + WAIT;
    while f.metrics.command_commit_retries.get() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the commit was not retried"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        s1.next_command_message().is_none(),
        "nothing acked while not stored"
    );
    f.store.fail(false);
    assert_eq!(next_acks(&s1).await, [(id.clone(), 1)]);
    f.until(&command.id, "running", |c| c.counts.running == 1)
        .await;
    f.stop().await;
}

#[tokio::test]
async fn a_send_that_cannot_be_stored_is_withdrawn_and_an_idempotency_key_returns_the_first() {
    let f = Fixture::new(&["a1"]).await;
    let (s1, _) = f.connect("a1", &[]).await;
    f.store.fail(true);
    let err = f
        .engine
        .send(
            &caller(),
            new_command(&["a1"], RolloutPolicy::default()),
            audit,
        )
        .await
        .expect_err("not stored");
    assert!(matches!(err, ServerError::Internal(_)), "{err:?}");
    f.store.fail(false);
    assert_eq!(f.engine.n_active(), 0);
    assert!(s1.next_command_message().is_none(), "nothing was offered");

    let mut new = new_command(&["a1"], RolloutPolicy::default());
    new.idempotency_key = "deploy-1".into();
    let first = f
        .engine
        .send(&caller(), new.clone(), audit)
        .await
        .expect("send");
    let again = f.engine.send(&caller(), new, audit).await.expect("send");
    assert!(!first.existing && again.existing);
    assert_eq!(first.command.id, again.command.id);
    f.stop().await;
}
