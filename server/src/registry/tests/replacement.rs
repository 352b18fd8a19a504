//! Sessions replacing one another: a second session replaces the first without a status event,
//! a take-over ends the live session of the old credential, and an agent's first session reads
//! connected, later ones reconnected.

use super::*;

#[test]
fn a_second_session_replaces_the_first_without_a_status_event() {
    let f = fixture(&[("a-1", "hw-1")]);
    let (_, mut watch) = f.watch(false);
    let first = f.open("a-1", "s-1");
    assert_eq!(
        kinds(&drain(&mut watch)),
        [(
            "a-1".to_owned(),
            EventKind::StatusChanged {
                previous: AgentStatus::Offline
            }
        )]
    );
    assert_eq!(f.view("a-1").reason, StatusReason::Connected);

    let second = f.open("a-1", "s-2");
    assert_eq!(first.close_reason(), CloseReason::Replaced);
    assert_eq!(second.close_reason(), CloseReason::None);
    assert!(
        drain(&mut watch).is_empty(),
        "online to online is no status change"
    );
    let view = f.view("a-1");
    assert_eq!(view.status, AgentStatus::Online);
    assert_eq!(view.session, Some(SessionId::new("s-2")));
    assert_eq!(f.metrics.sessions.get(), 1);

    // The replaced session's stream ends later: nothing changes for the agent.
    f.registry
        .session_closed(&first, StatusReason::StreamClosed);
    assert!(drain(&mut watch).is_empty());
    assert_eq!(f.view("a-1").status, AgentStatus::Online);
    assert_eq!(f.metrics.sessions.get(), 1);

    // The live one's end takes the agent offline.
    f.registry
        .session_closed(&second, StatusReason::StreamClosed);
    let view = f.view("a-1");
    assert_eq!(
        (view.status, view.reason),
        (AgentStatus::Offline, StatusReason::StreamClosed)
    );
    assert_eq!(view.session, None);
    assert_eq!(f.metrics.sessions.get(), 0);
}

#[test]
fn a_take_over_ends_the_live_session_of_the_old_credential() {
    let f = fixture(&[("a-1", "hw-1")]);
    let session = f.open("a-1", "s-1");
    let (_, mut watch) = f.watch(false);
    let mut record = agent_record("acme", "a-1", "hw-1");
    record.labels.insert("role".to_owned(), "db".to_owned());
    assert!(f.registry.enrolled(record));
    assert_eq!(session.close_reason(), CloseReason::Revoked);
    let view = f.view("a-1");
    assert_eq!(
        (view.status, view.reason, view.session),
        (AgentStatus::Offline, StatusReason::Enrolled, None)
    );
    assert_eq!(f.metrics.sessions.get(), 0);
    assert_eq!(
        kinds(&drain(&mut watch)),
        [
            ("a-1".to_owned(), EventKind::LabelsChanged),
            (
                "a-1".to_owned(),
                EventKind::StatusChanged {
                    previous: AgentStatus::Online
                }
            ),
        ]
    );
    // The ended session's stream closes later: nothing changes.
    f.registry
        .session_closed(&session, StatusReason::StreamClosed);
    assert!(drain(&mut watch).is_empty());
}

#[test]
fn an_agents_first_session_reads_connected_and_later_ones_reconnected() {
    let f = fixture(&[("a-1", "hw-1")]);
    let first = f.open("a-1", "s-1");
    assert_eq!(f.view("a-1").reason, StatusReason::Connected);
    f.registry
        .session_closed(&first, StatusReason::StreamClosed);
    assert_eq!(f.view("a-1").status, AgentStatus::Offline);
    f.open("a-1", "s-2");
    assert_eq!(f.view("a-1").reason, StatusReason::Reconnected);
}
