//! Lifecycle: NEW → ACKNOWLEDGED → RESOLVED and back, by ids or by filter, recorded and audited.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledging_by_filter_changes_exactly_the_matching_events_and_is_audited() {
    let world = World::new().await;
    let (a, _, mut session_a, _) = world.agent("life-a").await;
    let (_, _, mut session_b, _) = world.agent("life-b").await;
    let kinds = [
        "ssh.login_failed",
        "ssh.root",
        "ssh.login_failed",
        "disk.full",
        "sshd.crash",
    ];
    let batch: Vec<_> = kinds
        .iter()
        .zip(1..)
        .map(|(kind, seq)| agent_event(seq, kind, pb::EventSeverity::Warning))
        .collect();
    session_a.report_events(batch).await.expect("ack a");
    session_b
        .report_events(vec![
            agent_event(1, "ssh.login_failed", pb::EventSeverity::Warning),
            agent_event(2, "ssh.root", pb::EventSeverity::Critical),
        ])
        .await
        .expect("ack b");

    let mut admin = world.server.admin().await;
    let operator = tether_tests::create_token(&mut admin, "op", pb::Role::Operator, None).await;
    let operator_id = operator.token.as_ref().expect("token").token_id.clone();
    let client = world.server.events_as(Some(&operator.secret)).await;
    let ssh_of_a = pb::EventFilter {
        agent_ids: vec![a.clone()],
        kind_prefix: "ssh".into(),
        ..Default::default()
    };
    let changed = client
        .clone()
        .acknowledge_events(pb::AcknowledgeEventsRequest {
            event_ids: vec![],
            filter: Some(ssh_of_a.clone()),
        })
        .await
        .expect("acknowledge by filter")
        .into_inner()
        .changed;
    assert_eq!(changed, 3, "ssh and below, not sshd; only agent a");

    let new = pb::EventFilter {
        states: vec![pb::EventState::New as i32],
        ..Default::default()
    };
    let still_new = list_all(&client, new.clone()).await;
    assert_eq!(still_new.len(), 4, "{still_new:#?}");
    let acked = list_all(
        &client,
        pb::EventFilter {
            states: vec![pb::EventState::Acknowledged as i32],
            ..Default::default()
        },
    )
    .await;
    assert_eq!(acked.len(), 3);
    for event in &acked {
        assert_eq!(event.agent_id, a);
        assert!(event.kind.starts_with("ssh."), "{}", event.kind);
        assert!(event.acknowledged_by.contains(&operator_id), "{event:?}");
        assert!(event.acknowledged_at.is_some());
        assert_eq!(event.state_changed_by, event.acknowledged_by);
    }

    // Again: nothing left to change.
    let again = client
        .clone()
        .acknowledge_events(pb::AcknowledgeEventsRequest {
            event_ids: vec![],
            filter: Some(ssh_of_a),
        })
        .await
        .expect("acknowledge again")
        .into_inner();
    assert_eq!(again.changed, 0);

    // Resolve one by id; the acknowledgement stays on record.
    let target = acked[0].event_id.clone();
    let resolved = client
        .clone()
        .resolve_events(pb::ResolveEventsRequest {
            event_ids: vec![target.clone()],
            filter: None,
        })
        .await
        .expect("resolve")
        .into_inner();
    assert_eq!(resolved.changed, 1);
    let event = client
        .clone()
        .get_event(pb::GetEventRequest {
            event_id: target.clone(),
        })
        .await
        .expect("get")
        .into_inner()
        .event
        .expect("event");
    assert_eq!(event.state, pb::EventState::Resolved as i32);
    assert!(event.acknowledged_by.contains(&operator_id));

    // Reopen what is resolved: back to NEW, the acknowledgement cleared.
    let reopened = client
        .clone()
        .reopen_events(pb::ReopenEventsRequest {
            event_ids: vec![],
            filter: Some(pb::EventFilter {
                states: vec![pb::EventState::Resolved as i32],
                ..Default::default()
            }),
        })
        .await
        .expect("reopen")
        .into_inner();
    assert_eq!(reopened.changed, 1);
    let event = client
        .clone()
        .get_event(pb::GetEventRequest { event_id: target })
        .await
        .expect("get")
        .into_inner()
        .event
        .expect("event");
    assert_eq!(event.state, pb::EventState::New as i32);
    assert!(event.acknowledged_by.is_empty() && event.acknowledged_at.is_none());

    // An unknown id changes nothing; ids and a filter together are refused.
    let unknown = format!("{}{}", "0".repeat(32), a);
    let status = client
        .clone()
        .acknowledge_events(pb::AcknowledgeEventsRequest {
            event_ids: vec![still_new[0].event_id.clone(), unknown],
            filter: None,
        })
        .await
        .expect_err("unknown id");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert_eq!(
        list_all(&client, new.clone()).await.len(),
        5,
        "nothing changed"
    );
    let status = client
        .clone()
        .acknowledge_events(pb::AcknowledgeEventsRequest {
            event_ids: vec![still_new[0].event_id.clone()],
            filter: Some(pb::EventFilter::default()),
        })
        .await
        .expect_err("both");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    // Every call is in the audit trail: successes and failures.
    let ok = pb::AuditOutcome::Succeeded as i32;
    let failed = pb::AuditOutcome::Failed as i32;
    let want = vec![
        ("AcknowledgeEvents".to_owned(), ok),
        ("AcknowledgeEvents".to_owned(), ok),
        ("ResolveEvents".to_owned(), ok),
        ("ReopenEvents".to_owned(), ok),
        ("AcknowledgeEvents".to_owned(), failed),
        ("AcknowledgeEvents".to_owned(), failed),
    ];
    // Failures are audited after their answer; wait for the trail to hold them.
    eventually("the audit trail to record every lifecycle call", || {
        let (admin, want) = (admin.clone(), want.clone());
        async move {
            let trail =
                tether_tests::list_audit(&admin, pb::ListAuditEventsRequest::default()).await;
            let calls: Vec<(String, i32)> = trail
                .iter()
                .filter(|e| e.method.starts_with("/tether.v1.EventService/"))
                .map(|e| {
                    (
                        e.method.rsplit('/').next().unwrap_or("").to_owned(),
                        e.outcome,
                    )
                })
                .collect();
            (calls == want).then_some(())
        }
    })
    .await;

    // A viewer reads but may not acknowledge.
    let viewer = tether_tests::create_token(&mut admin, "viewer", pb::Role::Viewer, None).await;
    let viewer_client = world.server.events_as(Some(&viewer.secret)).await;
    assert_eq!(list_all(&viewer_client, new).await.len(), 5);
    let status = viewer_client
        .clone()
        .acknowledge_events(pb::AcknowledgeEventsRequest {
            event_ids: vec![],
            filter: Some(pb::EventFilter::default()),
        })
        .await
        .expect_err("viewer");
    assert_eq!(status.code(), Code::PermissionDenied);
    world.stop().await;
}
