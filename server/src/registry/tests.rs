//! Unit tests of the registry without sockets: session replacement, the duplicate hardware id
//! flag, the order of events, and the liveness pass driven by paused time. The fixture and the
//! helpers that drain a watch are shared with the watch's own tests (`watch/tests.rs`).

use futures::FutureExt as _;
use tether_proto::selector::Selector;

use super::*;
use crate::config::{HealthThresholds, LivenessConfig};
use crate::domain::{Labels, SystemInfo, TokenId};
use crate::identity::ConflictPolicy;
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

/// [`fixture`] of `agents` given as owned strings.
pub(super) fn fixture_owned(agents: &[(String, String)]) -> Fixture {
    let refs: Vec<(&str, &str)> = agents
        .iter()
        .map(|(a, h)| (a.as_str(), h.as_str()))
        .collect();
    fixture(&refs)
}

/// [`fixture`] with the watch limits `watch_limits`.
pub(super) fn fixture_with(agents: &[(&str, &str)], watch_limits: WatchLimits) -> Fixture {
    let metrics = Metrics::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(crate::store::SledStore::open(dir.path()).expect("open store"));
    let (writer, queues) = crate::writer::channel(store, &metrics, 16, 16, 16);
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
    )
    .with_identity(
        [],
        ConflictPolicy {
            window: Duration::from_secs(60),
            max_replacements: 2,
        },
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

/// A small deterministic generator, so a failure replays from its seed.
pub(super) struct Lcg(pub(super) u64);

impl Lcg {
    pub(super) fn below(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        usize::try_from(self.0 >> 33).expect("31 bits") % n
    }
}

pub(super) fn org() -> OrgId {
    OrgId::new("acme")
}

pub(super) fn id(agent: &str) -> AgentId {
    AgentId::new(agent)
}

impl Fixture {
    /// Opens a session for `agent` reporting the hardware id it was enrolled with, from the
    /// agent process `instance` (one per agent unless a test says otherwise).
    pub(super) fn open(&self, agent: &str, session: &str) -> Arc<Session> {
        let info = self.view(agent).record.system_info.clone();
        self.open_with(agent, session, info, None)
    }

    pub(super) fn open_with(
        &self,
        agent: &str,
        session: &str,
        info: SystemInfo,
        labels: Option<Labels>,
    ) -> Arc<Session> {
        self.open_as(agent, session, info, labels, agent)
            .expect("a known agent")
            .session
    }

    fn open_as(
        &self,
        agent: &str,
        session: &str,
        info: SystemInfo,
        labels: Option<Labels>,
        instance: &str,
    ) -> Result<OpenedSession, OpenRefused> {
        self.registry.open_session(
            &org(),
            &id(agent),
            SessionId::new(session),
            info,
            labels,
            instance,
        )
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

#[test]
fn alert_reads_select_silent_critical_and_online_agents_through_the_index() {
    let f = fixture(&[("a-1", "hw-1"), ("a-2", "hw-2"), ("a-3", "hw-3")]);
    let all = Selector::default();
    let none = Selector::parse("env=dev").expect("selector");
    let ids = |c: Vec<Candidate>| c.into_iter().map(|c| c.id.to_string()).collect::<Vec<_>>();
    assert_eq!(
        ids(f.registry.silent_agents(&OrgId::new("acme"), &all)).len(),
        3
    );
    assert!(
        f.registry
            .silent_agents(&OrgId::new("acme"), &none)
            .is_empty()
    );
    assert!(
        f.registry
            .silent_agents(&OrgId::new("other"), &all)
            .is_empty()
    );
    f.open("a-1", "s-1");
    f.open("a-2", "s-2");
    assert_eq!(
        ids(f.registry.silent_agents(&OrgId::new("acme"), &all)),
        ["a-3"]
    );
    assert_eq!(f.registry.online_count(&OrgId::new("acme"), &all), (2, 3));
    assert_eq!(f.registry.online_count(&OrgId::new("acme"), &none), (0, 0));
    assert!(
        f.registry
            .critical_agents(&OrgId::new("acme"), &all)
            .is_empty()
    );
    let mut hot = sample(1);
    hot.cpu_percent = 99.0;
    f.registry
        .samples_committed(vec![(OrgId::new("acme"), AgentId::new("a-2"), hot, 1)]);
    assert_eq!(
        ids(f.registry.critical_agents(&OrgId::new("acme"), &all)),
        ["a-2"]
    );
    f.registry.samples_committed(vec![(
        OrgId::new("acme"),
        AgentId::new("a-2"),
        sample(2),
        2,
    )]);
    assert!(
        f.registry
            .critical_agents(&OrgId::new("acme"), &all)
            .is_empty()
    );
}
