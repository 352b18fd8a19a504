//! The hub's index and queues, without a server: which watchers a change is offered to, and
//! what a full queue does.

use std::collections::{BTreeMap, HashSet};

use super::*;
use crate::config::{HealthThresholds, LivenessConfig};
use crate::events::keys::EventState;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::testing::agent_record;

/// A hub over a registry of `acme` agents: `a1` and `a2` labelled `site=s1`, `b1` `site=s2`.
fn hub() -> (Arc<Hub>, Arc<Metrics>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let metrics = Metrics::new();
    let store: Arc<dyn Store> =
        Arc::new(crate::store::SledStore::open(dir.path()).expect("open store"));
    let (writer, _queues) = crate::writer::channel(store, &metrics, 8, 8, 8, 8);
    let agents = [("a1", "s1"), ("a2", "s1"), ("b1", "s2")]
        .into_iter()
        .map(|(id, site)| {
            let mut record = agent_record("acme", id, &format!("hw-{id}"));
            record.labels = [("site".to_owned(), site.to_owned())].into();
            (record, None)
        })
        .collect();
    let registry = Arc::new(Registry::new(
        agents,
        writer,
        LivenessConfig::default(),
        HealthThresholds::default(),
        crate::registry::WatchLimits::default(),
        metrics.clone(),
    ));
    let hub = Hub::new(registry, metrics.event_watch.clone());
    (hub, metrics, dir)
}

fn org() -> OrgId {
    OrgId::new("acme")
}

fn change(cursor: u64, agent: &str, kind: &str, severity: Severity) -> (OrgId, Published) {
    let event = EventRecord {
        agent: AgentId::new(agent),
        seq: cursor,
        time_ms: 1,
        kind: kind.to_owned(),
        severity,
        message: String::new(),
        attributes: BTreeMap::new(),
        fingerprint: String::new(),
        count: 1,
        first_seen_ms: 1,
        last_seen_ms: 1,
        state: EventState::New,
        received_at_ms: 1,
        state_changed_by: String::new(),
        state_changed_at_ms: None,
        acknowledged_by: String::new(),
        acknowledged_at_ms: None,
    };
    (
        org(),
        Published {
            cursor,
            change: Change::Created,
            event: Arc::new(event),
        },
    )
}

fn interest(filter: Filter, selector: Option<&str>) -> Arc<Interest> {
    Arc::new(Interest {
        filter,
        selector: selector.map(|s| Selector::parse(s).expect("selector")),
    })
}

fn join(hub: &Arc<Hub>, interest: Arc<Interest>) -> Membership {
    hub.join(&org(), interest, || Ok(0)).expect("join")
}

/// Everything queued now, without waiting.
fn drain(member: &mut Membership) -> Vec<u64> {
    let mut out = Vec::new();
    while let Ok(p) = member.queue.try_recv() {
        out.push(p.cursor);
    }
    out
}

#[test]
fn a_change_is_offered_only_to_the_watchers_its_agent_labels_and_severity_name() {
    let (hub, metrics, _dir) = hub();
    let counters = &metrics.event_watch;
    let by_id = Filter {
        agents: Some(HashSet::from([AgentId::new("a1")])),
        ..Filter::default()
    };
    let mut of_a1 = join(&hub, interest(by_id, None));
    let mut site1 = join(&hub, interest(Filter::default(), Some("site=s1")));
    let critical = Filter {
        min_severity: Some(Severity::Critical),
        ..Filter::default()
    };
    let mut critical = join(&hub, interest(critical, None));
    let mut everything = join(&hub, interest(Filter::default(), None));
    // Many watchers of another site: never offered a change of site s1.
    let mut others: Vec<_> = (0..50)
        .map(|_| join(&hub, interest(Filter::default(), Some("site=s2"))))
        .collect();

    hub.publish(&[change(1, "a1", "app.x", Severity::Info)]);
    assert_eq!(counters.candidates.get(), 3, "a1's, site s1's and the scan");
    assert_eq!(counters.deliveries.get(), 3);
    hub.publish(&[change(2, "a2", "app.x", Severity::Critical)]);
    assert_eq!(
        counters.candidates.get(),
        6,
        "site s1's, critical's and the scan"
    );
    assert_eq!(drain(&mut of_a1), vec![1]);
    assert_eq!(drain(&mut site1), vec![1, 2]);
    assert_eq!(drain(&mut critical), vec![2]);
    assert_eq!(drain(&mut everything), vec![1, 2]);
    assert!(others.iter_mut().all(|o| drain(o).is_empty()));

    hub.publish(&[change(3, "b1", "app.x", Severity::Info)]);
    assert_eq!(counters.candidates.get(), 6 + 51, "site s2's and the scan");
    assert!(others.iter_mut().all(|o| drain(o) == vec![3]));
}

#[test]
fn the_whole_filter_is_checked_after_the_index() {
    let (hub, metrics, _dir) = hub();
    let app_only = Filter {
        kind_prefix: Some("app".into()),
        ..Filter::default()
    };
    let mut member = join(&hub, interest(app_only, Some("site=s1,tier!=db")));
    hub.publish(&[
        change(1, "a1", "app.x", Severity::Info),
        change(2, "a1", "ssh.x", Severity::Info),
        change(3, "gone", "app.x", Severity::Info),
    ]);
    assert_eq!(drain(&mut member), vec![1]);
    assert_eq!(metrics.event_watch.deliveries.get(), 1);
}

#[test]
fn changes_at_or_before_the_cursor_a_watcher_joined_at_are_left_to_the_store() {
    let (hub, _metrics, _dir) = hub();
    let mut member = hub
        .join(&org(), interest(Filter::default(), None), || Ok(5))
        .expect("join");
    assert_eq!(member.from, 5);
    hub.publish(&[
        change(5, "a1", "app.x", Severity::Info),
        change(6, "a1", "app.x", Severity::Info),
    ]);
    assert_eq!(drain(&mut member), vec![6]);
    // A second watcher joins at the newest published cursor.
    let second = hub
        .join(&org(), interest(Filter::default(), None), || {
            panic!("the org's entry exists: the store is not read")
        })
        .expect("join");
    assert_eq!(second.from, 6);
}

#[tokio::test]
async fn a_full_queue_detaches_its_watcher_and_ends_after_what_it_holds() {
    let (hub, metrics, _dir) = hub();
    let mut slow = join(&hub, interest(Filter::default(), None));
    let mut fast = join(&hub, interest(Filter::default(), None));
    let n = QUEUE as u64 + 10;
    for cursor in 1..=n {
        hub.publish(&[change(cursor, "a1", "app.x", Severity::Info)]);
        if cursor <= QUEUE as u64 {
            // The fast one reads as it goes.
            assert_eq!(fast.recv().await.map(|p| p.cursor), Some(cursor));
        }
    }
    assert_eq!(metrics.event_watch.fallbacks.get(), 1);
    assert_eq!(hub.n_members(), 1, "only the fast watcher is still joined");
    let mut held = Vec::new();
    while let Some(p) = slow.recv().await {
        held.push(p.cursor);
    }
    assert_eq!(held, (1..=QUEUE as u64).collect::<Vec<_>>());
    assert_eq!(drain(&mut fast), (QUEUE as u64 + 1..=n).collect::<Vec<_>>());
    drop((slow, fast));
    assert_eq!(hub.n_members(), 0);
    assert!(
        hub.orgs.lock().expect("lock").is_empty(),
        "an org without watchers keeps no entry"
    );
}
