//! Unit tests of the watch feed: the paged snapshot stays consistent while the fleet changes
//! under it, pages and queues stay within their bounds, a watcher over its bound is dropped
//! alone, watches are capped per token and per org, and the metrics switch is per org.

use std::collections::BTreeMap;

use futures::FutureExt as _;

use super::*;
use crate::domain::{Labels, StatusReason};
use crate::registry::AgentListQuery;
use crate::registry::tests::{
    Fixture, Lcg, drain, drain_items, fixture, fixture_owned, fixture_with, id, org,
};
use crate::session::Session;
use crate::testing::{agent_record, sample};

/// What a watcher knows of each agent: its status, labels and duplicate hardware id flag. (A
/// session replaced by another is no event, so the session id is not something a watcher can
/// follow.)
type Known = BTreeMap<String, (AgentStatus, Labels, bool)>;

fn known(view: &AgentView) -> (String, (AgentStatus, Labels, bool)) {
    (
        view.record.id.to_string(),
        (
            view.status,
            view.record.labels.clone(),
            view.duplicate_hardware_id,
        ),
    )
}

/// The registry's own view of `acme`, as a watcher should know it.
fn truth(f: &Fixture) -> Known {
    let all = AgentListQuery {
        page_size: usize::MAX,
        max_bytes: usize::MAX,
        ..AgentListQuery::default()
    };
    f.registry
        .list(&org(), &all)
        .agents
        .iter()
        .map(known)
        .collect()
}

fn subscribe(f: &Fixture, org: &str, token: &str, metrics: bool) -> Subscription {
    f.registry
        .watch(
            &OrgId::new(org),
            &TokenId::new(token),
            AgentFilter::default(),
            metrics,
        )
        .expect("within the watch limits")
}

/// One random change to the fleet: sessions open and close, agents enroll (with ids that land
/// before and after any cursor; half of them sharing another agent's hardware id, which flags
/// both), get relabelled and are removed.
fn change(f: &Fixture, rng: &mut Lcg, sessions: &mut Vec<Arc<Session>>, step: usize) {
    let ids: Vec<String> = truth(f).into_keys().collect();
    let pick = |rng: &mut Lcg| ids[rng.below(ids.len())].clone();
    match rng.below(5) {
        0 => sessions.push(f.open(&pick(rng), &format!("s-{step}"))),
        1 if !sessions.is_empty() => {
            let session = sessions.swap_remove(rng.below(sessions.len()));
            f.registry
                .session_closed(&session, StatusReason::StreamClosed);
        }
        2 => {
            let mate = pick(rng);
            let new = format!("{mate}-{step}");
            let hardware = if rng.below(2) == 0 {
                f.view(&mate).record.system_info.hardware_id.clone()
            } else {
                format!("hw-{new}")
            };
            f.registry.enrolled(agent_record("acme", &new, &hardware));
        }
        3 => {
            let agent = pick(rng);
            let info = f.view(&agent).record.system_info.clone();
            let labels = Labels::from([("step".to_owned(), step.to_string())]);
            sessions.push(f.open_with(&agent, &format!("s-{step}"), info, Some(labels)));
        }
        _ => {
            f.registry.remove(&org(), &id(&pick(rng)));
        }
    }
}

fn apply(model: &mut Known, item: &WatchItem) {
    match item {
        WatchItem::Snapshot { agent, .. } => {
            let (id, state) = known(agent);
            assert!(
                model.insert(id.clone(), state).is_none(),
                "{id} twice in the snapshot"
            );
        }
        WatchItem::Event(event) if event.kind == EventKind::Removed => {
            model.remove(event.agent.record.id.as_str());
        }
        WatchItem::Event(event) => {
            let (id, state) = known(&event.agent);
            model.insert(id, state);
        }
        WatchItem::Synced { .. } => {}
    }
}

fn revision(item: &WatchItem) -> u64 {
    match item {
        WatchItem::Snapshot { revision, .. } | WatchItem::Synced { revision } => *revision,
        WatchItem::Event(event) => event.revision,
    }
}

#[test]
fn a_paged_snapshot_is_the_state_at_its_revision_while_the_fleet_changes() {
    let agents: Vec<(String, String)> = (0..3 * PAGE_AGENTS + 7)
        .map(|i| (format!("a-{i:04}"), format!("hw-{i}")))
        .collect();
    let f = fixture_owned(&agents);
    let mut rng = Lcg(7);
    let mut sessions = Vec::new();
    // The registry's state after every change, by revision.
    let mut history = BTreeMap::new();
    history.insert(f.registry.read().revision, truth(&f));
    let mut watch = subscribe(&f, "acme", "t-1", false);
    let mut model = Known::new();
    let mut last_revision = 0;
    let mut synced = None;
    let mut step = 0;
    // A change before every few items, through the snapshot and beyond. A change queues at
    // most two events, so taking three items per change lets the snapshot progress.
    while synced.is_none() || step < 600 {
        change(&f, &mut rng, &mut sessions, step);
        step += 1;
        history.insert(f.registry.read().revision, truth(&f));
        for _ in 0..3 {
            let Some(item) = watch.next().now_or_never() else {
                break;
            };
            let item = item.expect("within its bounds");
            assert!(revision(&item) >= last_revision, "out of order: {item:?}");
            last_revision = revision(&item);
            apply(&mut model, &item);
            match (&item, synced) {
                (WatchItem::Synced { revision }, None) => {
                    let (_, expected) = history
                        .range(..=*revision)
                        .next_back()
                        .expect("the history starts before the watch");
                    assert_eq!(&model, expected, "the snapshot is the state at SYNCED");
                    synced = Some(*revision);
                }
                (WatchItem::Event(event), Some(synced)) => assert!(event.revision > synced),
                (WatchItem::Event(_), None) => {}
                (other, _) => assert!(synced.is_none(), "{other:?} after SYNCED"),
            }
            assert!(
                watch.page.len() < PAGE_AGENTS,
                "at most {PAGE_AGENTS} a page"
            );
        }
    }
    for item in drain_items(&mut watch) {
        apply(&mut model, &item);
    }
    assert_eq!(
        model,
        truth(&f),
        "the events keep the watcher's state exact"
    );
}

#[test]
fn snapshot_pages_stop_at_their_byte_budget() {
    let f = fixture(&[]);
    let big: Labels = (0..64)
        .map(|i| (format!("label-{i:02}"), "v".repeat(255)))
        .collect();
    for i in 0..40 {
        let mut record = agent_record("acme", &format!("big-{i:02}"), &format!("hw-{i}"));
        record.labels = big.clone();
        f.registry.enrolled(record);
    }
    let one = f.registry.read().orgs[&org()][&id("big-00")].size_bytes();
    assert!(one > 10_000, "a big agent weighs {one} bytes");
    let mut watch = subscribe(&f, "acme", "t-1", false);
    let first = watch.next().now_or_never().expect("ready").expect("ok");
    assert!(matches!(first, WatchItem::Snapshot { .. }));
    let page = watch.page.len() + 1;
    assert_eq!(page, PAGE_BYTES / one, "the first page is cut by bytes");
    let rest = drain_items(&mut watch);
    assert_eq!(rest.len(), 40, "the 39 other agents, then SYNCED");
    assert!(matches!(rest.last(), Some(WatchItem::Synced { .. })));
}

#[test]
fn a_watcher_over_its_bound_is_dropped_alone_and_its_queue_freed() {
    let limits = WatchLimits {
        buffer_events: 4,
        ..WatchLimits::default()
    };
    let f = fixture_with(&[("a-1", "hw-1")], limits);
    let mut fast = subscribe(&f, "acme", "t-1", true);
    let mut slow = subscribe(&f, "acme", "t-2", true);
    let mut elsewhere = subscribe(&f, "globex", "t-3", true);
    for watch in [&mut fast, &mut slow, &mut elsewhere] {
        drain_items(watch);
    }
    let mut seen = 0;
    for seq in 1..=10 {
        f.registry
            .samples_committed(vec![(org(), id("a-1"), sample(seq), seq)]);
        seen += drain(&mut fast).len();
    }
    assert_eq!(seen, 10, "the reading watcher saw every event");
    let lagged = slow
        .next()
        .now_or_never()
        .expect("ready")
        .expect_err("lagged");
    assert_eq!(
        lagged,
        Lagged {
            events: 4,
            bytes: slow_bytes(&f, 4)
        }
    );
    assert_eq!(slow.queued(), (0, 0), "the lagged queue is freed");
    assert_eq!(f.registry.read().feeds[&org()].watchers.len(), 1);
    assert!(drain(&mut elsewhere).is_empty(), "another org sees nothing");

    // A bound in bytes: three events of this agent do not fit.
    let each = slow_bytes(&f, 1);
    let limits = WatchLimits {
        buffer_bytes: 3 * each - 1,
        ..WatchLimits::default()
    };
    let f = fixture_with(&[("a-1", "hw-1")], limits);
    let mut slow = subscribe(&f, "acme", "t-2", true);
    drain_items(&mut slow);
    for seq in 1..=3 {
        f.registry
            .samples_committed(vec![(org(), id("a-1"), sample(seq), seq)]);
    }
    let lagged = slow
        .next()
        .now_or_never()
        .expect("ready")
        .expect_err("lagged");
    assert_eq!(lagged.events, 2);
    assert!(
        !f.registry.read().wants_metrics(&org()),
        "nobody wants them"
    );
}

/// What `n` metrics events of agent `a-1` of `f` weigh in a queue.
fn slow_bytes(f: &Fixture, n: usize) -> usize {
    let entry = f.registry.read().orgs[&org()][&id("a-1")].size_bytes();
    n * (entry + std::mem::size_of::<FleetEvent>())
}

#[test]
fn watches_are_capped_per_token_and_per_org() {
    let limits = WatchLimits {
        max_per_token: 2,
        max_per_org: 3,
        ..WatchLimits::default()
    };
    let f = fixture_with(&[], limits);
    let watch = |org: &str, token: &str| {
        f.registry.watch(
            &OrgId::new(org),
            &TokenId::new(token),
            AgentFilter::default(),
            false,
        )
    };
    let first = watch("acme", "t-1").expect("first");
    let _second = watch("acme", "t-1").expect("second");
    assert_eq!(
        watch("acme", "t-1").err(),
        Some(WatchRefused::PerToken { max: 2 })
    );
    let _third = watch("acme", "t-2").expect("another token");
    assert_eq!(
        watch("acme", "t-3").err(),
        Some(WatchRefused::PerOrg { max: 3 })
    );
    let _other_org = watch("globex", "t-9").expect("another org");
    drop(first);
    let _again = watch("acme", "t-1").expect("a closed watch frees its place");
    drop(_other_org);
    assert!(!f.registry.read().feeds.contains_key(&OrgId::new("globex")));
}

#[test]
fn metrics_events_are_built_for_the_orgs_that_want_them() {
    let f = fixture(&[("a-1", "hw-1")]);
    let mut acme = subscribe(&f, "acme", "t-1", false);
    let _globex = subscribe(&f, "globex", "t-2", true);
    drain_items(&mut acme);
    assert!(f.registry.read().wants_metrics(&OrgId::new("globex")));
    assert!(!f.registry.read().wants_metrics(&org()));
    f.registry
        .samples_committed(vec![(org(), id("a-1"), sample(1), 1)]);
    assert!(drain(&mut acme).is_empty());
    assert_eq!(f.view("a-1").last_seq, 1);
}
