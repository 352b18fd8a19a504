//! Hardware ids and conflicts: agents sharing a hardware id are flagged (and announced) until
//! they no longer share it, a deleted agent never comes back, and restarts are not conflicts
//! while two processes fighting over one agent are flagged, then refused.

use super::*;

#[test]
fn agents_sharing_a_hardware_id_are_flagged_until_they_no_longer_share_it() {
    let f = fixture(&[("a-1", "hw-x"), ("b-1", "hw-x"), ("c-1", "hw-y")]);
    let flags = |a: bool, b: bool, c: bool| {
        vec![
            ("a-1".to_owned(), a),
            ("b-1".to_owned(), b),
            ("c-1".to_owned(), c),
        ]
    };
    assert_eq!(f.duplicates(), flags(true, true, false));

    // Enrollment sees every agent with the hardware id and whether it is connected.
    let connected = |f: &Fixture| -> Vec<(String, bool)> {
        f.registry
            .hardware_mates(&org(), "hw-x")
            .into_iter()
            .map(|m| (m.id.to_string(), m.connected))
            .collect()
    };
    assert_eq!(
        connected(&f),
        [("a-1".to_owned(), false), ("b-1".to_owned(), false)]
    );
    let _a = f.open("a-1", "s-a");
    let _b = f.open("b-1", "s-b");
    assert_eq!(
        connected(&f),
        [("a-1".to_owned(), true), ("b-1".to_owned(), true)]
    );
    assert!(f.registry.hardware_mates(&org(), "").is_empty());

    // c-1 reports the shared hardware id in its Hello: all three are flagged.
    let mut info = f.view("c-1").record.system_info.clone();
    info.hardware_id = "hw-x".to_owned();
    let _c = f.open_with("c-1", "s-c", info, None);
    assert_eq!(f.duplicates(), flags(true, true, true));

    // Re-enrolled with its own hardware id, it no longer shares it.
    f.registry.enrolled(agent_record("acme", "c-1", "hw-z"));
    assert_eq!(f.duplicates(), flags(true, true, false));

    // Deleting b-1 leaves a-1 alone with hw-x.
    f.registry.remove(&org(), &id("b-1")).expect("b-1 existed");
    assert_eq!(
        f.duplicates(),
        vec![("a-1".to_owned(), false), ("c-1".to_owned(), false)]
    );
}

#[test]
fn sharing_a_hardware_id_is_announced_and_a_deleted_agent_never_comes_back() {
    let f = fixture(&[("a-1", "hw-x")]);
    let (_, mut watch) = f.watch(false);
    f.registry.enrolled(agent_record("acme", "b-1", "hw-x"));
    let events = drain(&mut watch);
    assert_eq!(
        kinds(&events),
        [
            ("b-1".to_owned(), EventKind::Registered),
            ("a-1".to_owned(), EventKind::FlagsChanged),
        ]
    );
    assert!(events[0].agent.duplicate_hardware_id, "registered flagged");
    assert!(events[1].agent.duplicate_hardware_id);

    let view = f.registry.remove(&org(), &id("b-1")).expect("b-1 existed");
    assert_eq!(
        kinds(&drain(&mut watch)),
        [
            ("b-1".to_owned(), EventKind::Removed),
            ("a-1".to_owned(), EventKind::FlagsChanged),
        ]
    );
    assert!(!f.view("a-1").duplicate_hardware_id);
    assert!(f.registry.is_deleted(&org(), &id("b-1")));

    // Whatever races with the deletion, the id is not inserted again.
    assert!(!f.registry.enrolled(agent_record("acme", "b-1", "hw-x")));
    assert!(f.registry.get(&org(), &id("b-1")).is_none());
    assert!(drain(&mut watch).is_empty());

    // A deletion that could not be made durable is undone.
    f.registry.restore(view);
    assert!(!f.registry.is_deleted(&org(), &id("b-1")));
    assert!(f.view("b-1").duplicate_hardware_id);
    assert!(f.view("a-1").duplicate_hardware_id);
}

#[tokio::test(start_paused = true)]
async fn restarts_are_not_conflicts_but_two_processes_fighting_are_flagged_then_refused() {
    let f = fixture(&[("a-1", "hw-1")]);
    let info = f.view("a-1").record.system_info.clone();
    let open =
        |session: &str, instance: &str| f.open_as("a-1", session, info.clone(), None, instance);
    // Restarts: each new process replaces the previous one's session, which never comes back.
    for (n, instance) in ["p1", "p2", "p3", "p4"].into_iter().enumerate() {
        let opened = open(&format!("r-{n}"), instance).expect("opens");
        assert_eq!(opened.conflict, None, "{instance}");
    }
    let (_, mut watch) = f.watch(false);

    // p5 replaces p4, and p4 comes back: two live processes share the credential.
    open("s-1", "p5").expect("opens");
    let conflict = open("s-2", "p4")
        .expect("allowed, flagged")
        .conflict
        .expect("a conflict");
    assert!(conflict.first && conflict.audit, "{conflict:?}");
    assert!(
        conflict.detail.contains("two agent processes"),
        "{conflict:?}"
    );
    let view = f.view("a-1");
    assert_eq!(
        view.identity_conflict.as_deref(),
        Some(conflict.detail.as_str())
    );
    assert_eq!(
        kinds(&drain(&mut watch)),
        [("a-1".to_owned(), EventKind::FlagsChanged)]
    );
    let again = open("s-3", "p5")
        .expect("allowed")
        .conflict
        .expect("conflict");
    assert!(!again.first && !again.audit, "audited once per interval");

    // Past the allowed replacements the newcomer is refused; the incumbent keeps its session.
    let refused = open("s-4", "p4").expect_err("refused");
    assert!(
        matches!(refused, OpenRefused::Conflict(ref c) if !c.first && !c.audit),
        "refusals are audited by the refusal budget, not here: {refused:?}"
    );
    assert_eq!(f.view("a-1").session, Some(SessionId::new("s-3")));
    assert!(drain(&mut watch).is_empty());

    // Nothing for a whole window: the flag clears, and watchers hear of it (besides the
    // silent session's status changes, which paused time also brings).
    tokio::time::advance(Duration::from_secs(59)).await;
    f.registry.liveness_pass();
    assert!(f.view("a-1").identity_conflict.is_some());
    tokio::time::advance(Duration::from_secs(1)).await;
    f.registry.liveness_pass();
    assert_eq!(f.view("a-1").identity_conflict, None);
    let flags: Vec<_> = drain(&mut watch)
        .into_iter()
        .filter(|e| e.kind == EventKind::FlagsChanged)
        .collect();
    assert_eq!(flags.len(), 1);
    assert!(flags[0].agent.identity_conflict.is_none());
}
