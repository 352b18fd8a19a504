//! Events and the liveness pass: events carry increasing revisions in the order of the changes,
//! a silent agent turns stale, then offline, then expired, and a pass or batch longer than one
//! lock spell reaches every agent in id order.

use super::*;

#[test]
fn events_carry_increasing_revisions_in_the_order_of_the_changes() {
    let f = fixture(&[]);
    let (snapshot_revision, mut watch) = f.watch(false);

    f.registry.enrolled(agent_record("acme", "d-1", "hw-d"));
    let first = f.open("d-1", "s-1");
    let info = f.view("d-1").record.system_info.clone();
    let relabelled = Labels::from([("env".to_owned(), "staging".to_owned())]);
    f.open_with("d-1", "s-2", info, Some(relabelled));
    f.registry
        .samples_committed(vec![(org(), id("d-1"), sample(1), 1)]);
    f.registry
        .session_closed(&first, StatusReason::StreamClosed);
    f.registry.remove(&org(), &id("d-1")).expect("d-1 existed");

    let events = drain(&mut watch);
    let d = |kind| ("d-1".to_owned(), kind);
    assert_eq!(
        kinds(&events),
        [
            d(EventKind::Registered),
            d(EventKind::StatusChanged {
                previous: AgentStatus::Offline
            }),
            d(EventKind::LabelsChanged),
            d(EventKind::Removed),
        ],
        "no metrics event without a metrics watcher; the replaced session's end is no event"
    );
    let revisions: Vec<u64> = events.iter().map(|e| e.revision).collect();
    assert!(
        revisions[0] > snapshot_revision,
        "{revisions:?} after {snapshot_revision}"
    );
    assert!(revisions.windows(2).all(|w| w[0] < w[1]), "{revisions:?}");
    assert_eq!(events[3].agent.session, Some(SessionId::new("s-2")));

    // Once a watcher asks for metrics, committed samples are events too, numbered in line
    // with the others; only the watchers that asked for them get them.
    let (_, mut with_metrics) = f.watch(true);
    f.registry.enrolled(agent_record("acme", "e-1", "hw-e"));
    f.registry
        .samples_committed(vec![(org(), id("e-1"), sample(7), 7)]);
    let seen = |events: &[Arc<FleetEvent>]| -> Vec<(EventKind, u64)> {
        events.iter().map(|e| (e.kind, e.revision)).collect()
    };
    let last = revisions[3];
    assert_eq!(
        seen(&drain(&mut watch)),
        [(EventKind::Registered, last + 1)]
    );
    let events = drain(&mut with_metrics);
    assert_eq!(
        seen(&events),
        [
            (EventKind::Registered, last + 1),
            (EventKind::MetricsUpdated, last + 2)
        ]
    );
    assert_eq!(events[1].agent.latest.as_ref().map(|s| s.seq), Some(7));
}

#[tokio::test(start_paused = true)]
async fn the_liveness_pass_turns_a_silent_agent_stale_then_offline_then_expired() {
    let f = fixture(&[("a-1", "hw-1")]);
    let config = LivenessConfig::default();
    let (_, mut watch) = f.watch(false);
    let session = f.open("a-1", "s-1");
    drain(&mut watch);
    let status = || {
        let view = f.view("a-1");
        (view.status, view.reason)
    };

    tokio::time::advance(config.stale_after - Duration::from_millis(1)).await;
    assert_eq!(f.registry.liveness_pass(), 0, "not silent long enough");
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(f.registry.liveness_pass(), 1);
    assert_eq!(status(), (AgentStatus::Stale, StatusReason::Silent));
    assert!(
        session.stale.load(std::sync::atomic::Ordering::Acquire),
        "the session knows"
    );
    assert_eq!(session.close_reason(), CloseReason::None);

    tokio::time::advance(config.offline_after - config.stale_after).await;
    assert_eq!(f.registry.liveness_pass(), 1);
    assert_eq!(status(), (AgentStatus::Offline, StatusReason::Silent));
    assert_eq!(
        session.close_reason(),
        CloseReason::Silent,
        "its stream ends"
    );
    assert_eq!(f.view("a-1").session, None);
    assert_eq!(f.metrics.sessions.get(), 0);

    tokio::time::advance(config.fleet_ttl - Duration::from_secs(1)).await;
    assert_eq!(f.registry.liveness_pass(), 0, "not offline for the TTL yet");
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(f.registry.liveness_pass(), 1);
    assert_eq!(status(), (AgentStatus::Expired, StatusReason::Ttl));
    assert_eq!(f.registry.liveness_pass(), 0, "expired is final");

    let previous: Vec<EventKind> = drain(&mut watch).iter().map(|e| e.kind).collect();
    assert_eq!(
        previous,
        [
            EventKind::StatusChanged {
                previous: AgentStatus::Online
            },
            EventKind::StatusChanged {
                previous: AgentStatus::Stale
            },
            EventKind::StatusChanged {
                previous: AgentStatus::Offline
            },
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_pass_and_a_batch_longer_than_one_lock_spell_reach_every_agent_in_id_order() {
    let n = 2 * LIVENESS_SCAN_CHUNK + CHANGES_PER_LOCK + 1;
    // Enrolled in reverse id order, so that slot order is not id order.
    let agents: Vec<(String, String)> = (0..n)
        .rev()
        .map(|i| (format!("a-{i:05}"), format!("hw-{i}")))
        .collect();
    let f = fixture_owned(&agents);
    let _sessions: Vec<Arc<Session>> = agents
        .iter()
        .map(|(agent, _)| f.open(agent, &format!("s-{agent}")))
        .collect();
    let (_, mut watch) = f.watch(false);

    let mut busy = sample(1);
    busy.cpu_percent = 99.0;
    let updates = agents
        .iter()
        .map(|(agent, _)| (org(), id(agent), busy.clone(), 1))
        .collect();
    f.registry.samples_committed(updates);
    let n_u32 = u32::try_from(n).expect("small");
    assert_eq!(
        f.registry.summary(&org()).health,
        [(Health::Critical, n_u32)].into()
    );

    tokio::time::advance(LivenessConfig::default().stale_after).await;
    assert_eq!(f.registry.liveness_pass(), n);
    assert_eq!(f.registry.summary(&org()).stale, n_u32);
    let stale: Vec<String> = kinds(&drain(&mut watch))
        .into_iter()
        .map(|(agent, kind)| {
            assert_eq!(
                kind,
                EventKind::StatusChanged {
                    previous: AgentStatus::Online
                }
            );
            agent
        })
        .collect();
    assert_eq!(stale.len(), n, "one event per agent");
    assert!(stale.windows(2).all(|w| w[0] < w[1]), "in id order");
}
