//! A command's way through the engine: stored, offered, run and acked in order, each
//! invocation record written once, updates not stored acked without effect, and the error
//! budget stopping a rollout.

use super::*;

#[tokio::test]
async fn a_command_is_stored_offered_run_and_acked_in_order() {
    let f = Fixture::new(&["a1", "a2"]).await;
    let (s1, _) = f.connect("a1", &[]).await;
    let (s2, _) = f.connect("a2", &[]).await;
    let command = f
        .send(new_command(&["a1", "a2"], RolloutPolicy::default()))
        .await;
    // Stored before the answer: the command, both invocations, their first events.
    assert_eq!(f.stored(&command.id).n_invocations, 2);
    let i1 = next_offer(&s1).await;
    let i2 = next_offer(&s2).await;
    assert_eq!(i1, invocation_id(&command.id, 0));
    assert_eq!(i2, invocation_id(&command.id, 1));

    f.engine
        .report(
            &s1,
            vec![
                update(&i1, 1, UpdateStep::Running, vec![]),
                update(
                    &i1,
                    2,
                    UpdateStep::Finished(InvocationState::Succeeded),
                    vec![stdout(0, b"hello\n")],
                ),
            ],
        )
        .await
        .expect("report");
    assert_eq!(next_acks(&s1).await, [(i1.clone(), 2)]);
    f.engine
        .report(
            &s2,
            vec![update(
                &i2,
                1,
                UpdateStep::Finished(InvocationState::Failed),
                vec![],
            )],
        )
        .await
        .expect("report");
    assert_eq!(next_acks(&s2).await, [(i2.clone(), 1)]);
    f.until(&command.id, "the command to fail", |c| {
        c.state == CommandState::Failed && c.finished_at.is_some()
    })
    .await;
    use InvocationState::*;
    assert_eq!(
        f.history(&command.id),
        [
            (0, Queued),
            (1, Queued),
            (0, Offered),
            (1, Offered),
            (0, Running),
            (0, Succeeded),
            (1, Failed)
        ]
    );
    let cursors: Vec<u64> = f.events(&command.id).iter().map(|(c, _)| *c).collect();
    assert_eq!(
        cursors,
        (1..=8).collect::<Vec<_>>(),
        "output has its own cursor"
    );
    assert_eq!(f.stored(&command.id).last_cursor, 8);
    f.stop().await;
}

#[tokio::test]
async fn the_creating_commit_writes_each_invocation_record_once_in_its_offered_state() {
    let f = Fixture::new(&["a1", "a2", "a3"]).await;
    let mut sessions = Vec::new();
    for agent in ["a1", "a2"] {
        sessions.push(f.connect(agent, &[]).await.0);
    }
    let command = f
        .send(new_command(&["a1", "a2", "a3"], RolloutPolicy::default()))
        .await;
    let prefix = format!("acme/i/{}/", command.id);
    let creating: Vec<Vec<u8>> = f
        .store
        .puts
        .lock()
        .expect("puts")
        .iter()
        .find(|keys| keys.iter().any(|k| k.starts_with(prefix.as_bytes())))
        .expect("the creating commit")
        .clone();
    let mut records: Vec<&Vec<u8>> = creating
        .iter()
        .filter(|k| k.starts_with(prefix.as_bytes()))
        .collect();
    assert_eq!(records.len(), 3, "one record per invocation, each once");
    records.sort();
    records.dedup();
    assert_eq!(records.len(), 3, "three distinct invocations");
    let stored: Vec<InvocationState> = f
        .store
        .invocations(&org(), &command.id, None, 10)
        .expect("invocations")
        .iter()
        .map(|r| r.state)
        .collect();
    // Online agents' records are stored OFFERED, the offline one's QUEUED; the history has
    // every state, the first included.
    assert_eq!(
        stored,
        [
            InvocationState::Offered,
            InvocationState::Offered,
            InvocationState::Queued
        ]
    );
    assert_eq!(
        f.history(&command.id),
        [
            (0, InvocationState::Queued),
            (1, InvocationState::Queued),
            (2, InvocationState::Queued),
            (0, InvocationState::Offered),
            (1, InvocationState::Offered),
        ]
    );
    drop(sessions);
    f.stop().await;
}

#[tokio::test]
async fn updates_not_stored_are_acked_at_once_and_change_nothing() {
    let f = Fixture::new(&["a1", "a2"]).await;
    let (s1, _) = f.connect("a1", &[]).await;
    let (s2, _) = f.connect("a2", &[]).await;
    let command = f.send(new_command(&["a1"], RolloutPolicy::default())).await;
    let i1 = next_offer(&s1).await;
    // Another agent reports on a1's invocation; an unknown id; garbage.
    let foreign = vec![
        update(
            &i1,
            1,
            UpdateStep::Finished(InvocationState::Succeeded),
            vec![],
        ),
        update("0123456789ab01234567-9", 3, UpdateStep::Running, vec![]),
        update("not an id", 1, UpdateStep::Running, vec![]),
    ];
    f.engine.report(&s2, foreign).await.expect("report");
    let mut acks = next_acks(&s2).await;
    acks.sort();
    assert_eq!(acks.len(), 3);
    // a1's invocation is untouched: its own agent's updates still count.
    f.engine
        .report(&s1, vec![update(&i1, 1, UpdateStep::Running, vec![])])
        .await
        .expect("report");
    assert_eq!(next_acks(&s1).await, [(i1.clone(), 1)]);
    // A re-sent update is acked with what is stored, not stored again.
    f.engine
        .report(&s1, vec![update(&i1, 1, UpdateStep::Running, vec![])])
        .await
        .expect("report");
    assert_eq!(next_acks(&s1).await, [(i1.clone(), 1)]);
    // RUNNING after RUNNING adds nothing; a terminal update ends it; later ones are settled.
    f.engine
        .report(
            &s1,
            vec![update(
                &i1,
                2,
                UpdateStep::Finished(InvocationState::Succeeded),
                vec![],
            )],
        )
        .await
        .expect("report");
    assert_eq!(next_acks(&s1).await, [(i1.clone(), 2)]);
    f.until(&command.id, "success", |c| {
        c.state == CommandState::Succeeded
    })
    .await;
    use InvocationState::*;
    assert_eq!(
        f.history(&command.id),
        [(0, Queued), (0, Offered), (0, Running), (0, Succeeded)]
    );
    f.stop().await;
}

#[tokio::test]
async fn the_error_budget_stops_the_rollout_and_skips_the_rest() {
    let agents = ["a1", "a2", "a3", "a4"];
    let f = Fixture::new(&agents).await;
    let mut sessions = Vec::new();
    for agent in agents {
        sessions.push(f.connect(agent, &[]).await.0);
    }
    let rollout = RolloutPolicy {
        max_concurrency: Some(Amount::Count(1)),
        max_errors: Some(Amount::Count(0)),
        canary: 0,
    };
    let command = f.send(new_command(&agents, rollout)).await;
    let first = next_offer(&sessions[0]).await;
    for session in &sessions[1..] {
        assert!(session.next_command_message().is_none(), "one at a time");
    }
    f.engine
        .report(
            &sessions[0],
            vec![update(
                &first,
                1,
                UpdateStep::Finished(InvocationState::Failed),
                vec![],
            )],
        )
        .await
        .expect("report");
    f.until(&command.id, "the rollout to stop", |c| c.is_finished())
        .await;
    let stored = f.stored(&command.id);
    assert_eq!((stored.counts.failed, stored.counts.skipped), (1, 3));
    assert_eq!(stored.state, CommandState::Failed);
    let page = f
        .store
        .invocations(&org(), &command.id, None, 10)
        .expect("invocations");
    assert!(
        page[1..]
            .iter()
            .all(|i| i.skip_reason == Some(SkipReason::ErrorBudget))
    );
    f.stop().await;
}
