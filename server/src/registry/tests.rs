//! Unit tests of the registry without sockets: session replacement, the duplicate hardware id
//! flag, the order of events, and the liveness pass driven by paused time. The fixture and the
//! helpers that drain a watch are shared with the watch's own tests (`watch/tests.rs`).

use futures::FutureExt as _;

use super::*;
use crate::config::{HealthThresholds, LivenessConfig};
use crate::domain::TokenId;
use crate::testing::{agent_record, sample};
use crate::writer::WriterQueues;

pub(super) struct Fixture {
    pub(super) registry: Arc<Registry>,
    pub(super) metrics: Arc<Metrics>,
    /// Keeps the writer's queues open, as the running server does.
    _queues: WriterQueues,
    /// The store the writer's handle encodes for.
    _dir: tempfile::TempDir,
}

/// A registry holding `agents` of org `acme` as (id, hardware id), all offline.
pub(super) fn fixture(agents: &[(&str, &str)]) -> Fixture {
    fixture_with(agents, WatchLimits::default())
}

/// [`fixture`] with the watch limits `watch_limits`.
pub(super) fn fixture_with(agents: &[(&str, &str)], watch_limits: WatchLimits) -> Fixture {
    let metrics = Metrics::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(crate::store::SledStore::open(dir.path()).expect("open store"));
    let (writer, queues) = crate::writer::channel(store, &metrics, 16, 16);
    let mut registry = Registry::new(
        agents
            .iter()
            .map(|(id, hw)| (agent_record("acme", id, hw), None))
            .collect(),
        writer,
        LivenessConfig::default(),
        HealthThresholds::default(),
        watch_limits,
        metrics.clone(),
    );
    registry.clock = Clock::FollowsTokio {
        origin: tokio::time::Instant::now(),
        wall: SystemTime::now(),
    };
    Fixture {
        registry: Arc::new(registry),
        metrics,
        _queues: queues,
        _dir: dir,
    }
}

pub(super) fn org() -> OrgId {
    OrgId::new("acme")
}

pub(super) fn id(agent: &str) -> AgentId {
    AgentId::new(agent)
}

impl Fixture {
    /// Opens a session for `agent` reporting the hardware id it was enrolled with.
    pub(super) fn open(&self, agent: &str, session: &str) -> Arc<Session> {
        let info = self.view(agent).record.system_info;
        self.open_with(agent, session, info, None)
    }

    pub(super) fn open_with(
        &self,
        agent: &str,
        session: &str,
        info: SystemInfo,
        labels: Option<Labels>,
    ) -> Arc<Session> {
        let (session, _) = self
            .registry
            .open_session(&org(), &id(agent), SessionId::new(session), info, labels)
            .expect("a known agent");
        session
    }

    pub(super) fn view(&self, agent: &str) -> AgentView {
        self.registry
            .get(&org(), &id(agent))
            .expect("a known agent")
    }

    /// A watch of `acme` by token `t-1`, its snapshot read: (snapshot revision, watch).
    pub(super) fn watch(&self, include_metrics: bool) -> (u64, Subscription) {
        let mut watch = self
            .registry
            .watch(
                &org(),
                &TokenId::new("t-1"),
                AgentFilter::default(),
                include_metrics,
            )
            .expect("within the watch limits");
        let revision = drain_items(&mut watch)
            .iter()
            .find_map(|item| match item {
                WatchItem::Synced { revision } => Some(*revision),
                _ => None,
            })
            .expect("the snapshot ends with SYNCED");
        (revision, watch)
    }

    fn duplicates(&self) -> Vec<(String, bool)> {
        let all = AgentListQuery {
            page_size: 100,
            max_bytes: usize::MAX,
            ..AgentListQuery::default()
        };
        self.registry
            .list(&org(), &all)
            .agents
            .into_iter()
            .map(|a| (a.record.id.to_string(), a.duplicate_hardware_id))
            .collect()
    }
}

/// Every item `watch` has ready now (snapshot pages are read as it goes); panics if it lagged.
pub(super) fn drain_items(watch: &mut Subscription) -> Vec<WatchItem> {
    let mut items = Vec::new();
    loop {
        match watch.next().now_or_never() {
            Some(Ok(item)) => items.push(item),
            Some(Err(lagged)) => panic!("the watch lagged: {lagged:?}"),
            None => return items,
        }
    }
}

/// The events `watch` has ready now (after its snapshot).
pub(super) fn drain(watch: &mut Subscription) -> Vec<Arc<FleetEvent>> {
    drain_items(watch)
        .into_iter()
        .map(|item| match item {
            WatchItem::Event(event) => event,
            other => panic!("expected an event, got {other:?}"),
        })
        .collect()
}

pub(super) fn kinds(events: &[Arc<FleetEvent>]) -> Vec<(String, EventKind)> {
    events
        .iter()
        .map(|e| (e.agent.record.id.to_string(), e.kind))
        .collect()
}

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
    assert_eq!(f.view("a-1").reason, StatusReason::Reconnected);

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

    // A disconnected agent with the hardware id is taken over; connected ones are reported.
    assert_eq!(
        f.registry.enroll_target(&org(), "hw-x"),
        EnrollTarget::Existing(id("a-1"))
    );
    let _a = f.open("a-1", "s-a");
    let _b = f.open("b-1", "s-b");
    assert_eq!(
        f.registry.enroll_target(&org(), "hw-x"),
        EnrollTarget::New {
            duplicates: vec![id("a-1"), id("b-1")]
        }
    );

    // c-1 reports the shared hardware id in its Hello: all three are flagged.
    let mut info = f.view("c-1").record.system_info;
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
fn events_carry_increasing_revisions_in_the_order_of_the_changes() {
    let f = fixture(&[]);
    let (snapshot_revision, mut watch) = f.watch(false);

    f.registry.enrolled(agent_record("acme", "d-1", "hw-d"));
    let first = f.open("d-1", "s-1");
    let info = f.view("d-1").record.system_info;
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

#[test]
fn a_listing_page_stops_before_the_agent_that_would_exceed_its_bytes() {
    let f = fixture(&[("a-1", "hw-1"), ("a-2", "hw-2"), ("a-3", "hw-3")]);
    let one = f.registry.read().orgs[&org()][&id("a-1")].size_bytes();
    let page = |after: Option<&str>, max_bytes: usize| {
        let page = f.registry.list(
            &org(),
            &AgentListQuery {
                page_size: 100,
                max_bytes,
                after: after.map(id),
                ..AgentListQuery::default()
            },
        );
        let ids: Vec<String> = page
            .agents
            .iter()
            .map(|a| a.record.id.to_string())
            .collect();
        (ids, page.next_after.map(|a| a.to_string()), page.total)
    };
    assert_eq!(
        page(None, 2 * one + one / 2),
        (vec!["a-1".into(), "a-2".into()], Some("a-2".into()), 3)
    );
    assert_eq!(
        page(Some("a-2"), 2 * one + one / 2),
        (vec!["a-3".into()], None, 3)
    );
    // A page holds at least one agent, whatever its size.
    assert_eq!(page(None, 1), (vec!["a-1".into()], Some("a-1".into()), 3));
}
