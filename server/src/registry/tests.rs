//! Unit tests of the registry without sockets: session replacement, the duplicate hardware id
//! flag, the order of events, and the liveness pass driven by paused time. The fixture and the
//! helpers that drain a watch are shared with the watch's own tests (`watch/tests.rs`) and the
//! table's (`table/tests.rs`); the tests live in `tests/`: `replacement.rs`, `conflicts.rs`,
//! `liveness.rs` and `reads.rs`.

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
    let (writer, queues) = crate::writer::channel(store, &metrics, 16, 16, 16, 16);
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

mod conflicts;
mod liveness;
mod reads;
mod replacement;
