//! The engine's bounds: output past its limit keeps head and tail, retention deletes
//! finished commands with everything they own, and the per-org and per-agent limits refuse a
//! send and store nothing.

use super::*;

#[tokio::test]
async fn output_past_the_limit_keeps_its_head_and_tail() {
    let f = Fixture::new(&["a1"]).await;
    let (s1, _) = f.connect("a1", &[]).await;
    let mut new = new_command(&["a1"], RolloutPolicy::default());
    new.output_limit = 100;
    let command = f.send(new).await;
    let id = next_offer(&s1).await;
    let mut updates = vec![update(&id, 1, UpdateStep::Running, vec![])];
    for seq in 0..10u64 {
        updates.push(update(
            &id,
            seq + 2,
            UpdateStep::Output,
            vec![stdout(seq * 40, &[b'a' + seq as u8; 40])],
        ));
    }
    updates.push(update(
        &id,
        12,
        UpdateStep::Finished(InvocationState::Succeeded),
        vec![],
    ));
    f.engine.report(&s1, updates).await.expect("report");
    f.until(&command.id, "success", |c| c.is_finished()).await;
    let invocation = f
        .store
        .invocations(&org(), &command.id, None, 1)
        .expect("invocation")
        .remove(0);
    assert_eq!(invocation.stdout_bytes, 400);
    assert_eq!(invocation.head_bytes, 50);
    assert!(invocation.tail_bytes <= 50 && invocation.tail_bytes >= 40);
    assert_eq!(invocation.dropped_bytes(), 400 - 50 - invocation.tail_bytes);
    let kept: Vec<(u64, Vec<u8>)> = f
        .events(&command.id)
        .into_iter()
        .filter_map(|(_, e)| match e {
            CommandEvent::Output(o) => Some((o.offset, o.data)),
            CommandEvent::Invocation(_) => None,
        })
        .collect();
    assert_eq!(kept[0], (0, vec![b'a'; 40]), "the head");
    assert_eq!(kept[1], (40, vec![b'b'; 10]));
    assert_eq!(
        kept.last().map(|k| k.0),
        Some(360),
        "the newest output is the tail"
    );
    f.stop().await;
}

#[tokio::test]
async fn retention_deletes_finished_commands_with_everything_they_own() {
    let f = Fixture::new(&["a1"]).await;
    let mut new = new_command(&["a1"], RolloutPolicy::default());
    // Offline and not included: skipped at once, so the command is finished when sent.
    new.targets.include_offline = false;
    new.idempotency_key = "gone-soon".into();
    let command = f.send(new).await;
    f.until(&command.id, "the command to finish", |c| c.is_finished())
        .await;
    assert!(!f.events(&command.id).is_empty());
    let stop = CancellationToken::new();
    let retention = tokio::spawn(crate::command::retention::run(
        f.store.clone(),
        f.engine.writer.clone(),
        Duration::from_millis(1),
        Duration::from_millis(10),
        stop.clone(),
    ));
    let deadline = tokio::time::Instant::now() + WAIT;
    while Store::command(f.store.as_ref(), &org(), &command.id)
        .expect("read")
        .is_some()
    {
        assert!(tokio::time::Instant::now() < deadline, "not deleted");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(f.events(&command.id).is_empty());
    assert!(
        f.store
            .invocations(&org(), &command.id, None, 10)
            .expect("read")
            .is_empty()
    );
    assert_eq!(
        f.store
            .idempotent_command(&org(), "gone-soon", std::time::SystemTime::UNIX_EPOCH)
            .expect("read"),
        None
    );
    stop.cancel();
    retention.await.expect("retention task");
    f.stop().await;
}

#[tokio::test]
async fn the_per_org_and_per_agent_limits_refuse_a_send_and_store_nothing() {
    let f = Fixture::with(&["a1", "a2", "a3"], |settings| {
        settings.max_queued_per_agent = 1;
        settings.max_in_flight_per_org = 2;
    })
    .await;
    let exhausted = |result: Result<_, ServerError>| {
        assert!(
            matches!(result, Err(ServerError::ResourceExhausted(_))),
            "{result:?}"
        );
    };
    f.send(new_command(&["a1"], RolloutPolicy::default())).await;
    exhausted(
        f.engine
            .send(
                &caller(),
                new_command(&["a1"], RolloutPolicy::default()),
                audit,
            )
            .await,
    );
    f.send(new_command(&["a2"], RolloutPolicy::default())).await;
    exhausted(
        f.engine
            .send(
                &caller(),
                new_command(&["a3"], RolloutPolicy::default()),
                audit,
            )
            .await,
    );
    assert_eq!(f.engine.n_active(), 2);
    let stored = f
        .store
        .commands(
            &org(),
            &crate::command::record::CommandQuery {
                page_size: 10,
                ..Default::default()
            },
            100,
        )
        .expect("list");
    assert_eq!(
        stored.commands.len(),
        2,
        "nothing of the refused sends was stored"
    );
    f.stop().await;
}
