//! Unit tests of the writer's batch handling against a real [`SledStore`] in a tempdir:
//! planning is pure, applying happens only after a commit, a failed commit remembers and acks
//! nothing but keeps what nobody waits for, and one write that cannot be stored fails alone.
//!
//! This file holds the fixture and the readers of encoded writes the tests share; the tests live
//! in `tests/`: `planning.rs`, `failures.rs` and `queues.rs`.

use std::ops::RangeInclusive;
use std::time::{Duration, UNIX_EPOCH};

use futures::FutureExt as _;

use super::super::{Item, MAX_PENDING_TRANSITIONS, WriterHandle, WriterQueues, channel};
use super::*;
use crate::config::{HealthThresholds, LivenessConfig};
use crate::domain::{AuditOutcome, Role, SessionId, TokenId, TokenRecord, Transition};
use crate::error::ServerError;
use crate::session::CloseReason;
use crate::store::SledStore;
use crate::testing::{FailingStore, agent_record, sample};

struct Fixture {
    _dir: tempfile::TempDir,
    store: Arc<FailingStore>,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    handle: WriterHandle,
    /// The receiving ends: the live table the registry feeds, and the queues (what they hold
    /// is not under test here, except where a test reads them).
    queues: WriterQueues,
    state: WriterState,
}

/// The fixture's ingest budget, in samples.
const BUDGET: usize = 64;

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(FailingStore::new(
        SledStore::open(dir.path()).expect("open store"),
    ));
    let metrics = Metrics::new();
    let (handle, queues) = channel(store.clone(), &metrics, 16, 2, BUDGET, BUDGET);
    let registry = Arc::new(Registry::new(
        vec![
            (agent_record("acme", "a-1", "hw-1"), None),
            (agent_record("acme", "b-1", "hw-2"), None),
        ],
        handle.clone(),
        LivenessConfig::default(),
        HealthThresholds::default(),
        crate::registry::WatchLimits::default(),
        metrics.clone(),
    ));
    Fixture {
        _dir: dir,
        store,
        registry,
        metrics,
        handle,
        queues,
        state: WriterState::default(),
    }
}

impl Fixture {
    /// Plans, executes and applies (or fails) `batch`, with the live changes waiting, as the
    /// writer task does.
    async fn commit(&mut self, batch: Batch) -> bool {
        let store: Arc<dyn Store> = self.store.clone();
        let taken = self.queues.live.take();
        commit_batch(
            &mut self.state,
            &store,
            &self.registry,
            &self.metrics,
            &self.queues.live,
            batch,
            taken,
            crate::config::DEFAULT_STORE_STALL_LIMIT,
        )
        .await
    }

    /// Plans `batch` (with no live changes and no retries) at `planned_at` and `now`.
    fn plan_at(&self, batch: Batch, planned_at: Instant, now: SystemTime) -> Plan {
        self.plan_with(batch, Pending::default(), planned_at, now)
    }

    fn plan_with(
        &self,
        batch: Batch,
        taken: Pending,
        planned_at: Instant,
        now: SystemTime,
    ) -> Plan {
        let store: Arc<dyn Store> = self.store.clone();
        let encoder = Encoder {
            store: &store,
            metrics: &self.metrics,
        };
        self.state
            .plan(batch, taken, Vec::new(), &encoder, planned_at, now)
    }

    fn plan(&self, batch: Batch) -> Plan {
        self.plan_at(batch, Instant::now(), SystemTime::now())
    }

    /// Executes and applies `plan`, which must commit.
    async fn apply(&mut self, plan: Plan) {
        let store: Arc<dyn Store> = self.store.clone();
        let Plan { writes, outcome } = plan;
        execute(
            &store,
            writes,
            &self.metrics,
            crate::config::DEFAULT_STORE_STALL_LIMIT,
        )
        .await
        .expect("commit");
        self.state.apply(outcome, &self.registry, &self.metrics);
    }

    fn stored_seqs(&self, agent: &str) -> Vec<u64> {
        let end = SystemTime::now() + Duration::from_secs(3600);
        self.store
            .samples(&org(), &AgentId::new(agent), UNIX_EPOCH, end, 1000)
            .expect("read samples")
            .iter()
            .map(|s| s.seq)
            .collect()
    }

    fn stored_audit(&self) -> Vec<(u64, String)> {
        self.store
            .audit_records(&org(), 0, 100)
            .expect("read audit")
            .into_iter()
            .map(|r| (r.seq, r.entry.target))
            .collect()
    }

    fn latest_seq(&self, agent: &str) -> Option<u64> {
        let view = self.registry.get(&org(), &AgentId::new(agent))?;
        view.latest.map(|s| s.seq)
    }

    /// A report of `seqs` from `session`, encoded as [`WriterHandle::samples`] does.
    fn samples(&self, session: &Arc<Session>, seqs: RangeInclusive<u64>) -> Item {
        let samples: Vec<(u64, Encoded)> = seqs
            .clone()
            .map(|seq| {
                let write = Write::PutSample {
                    org: session.org.clone(),
                    agent: session.agent.clone(),
                    sample: sample(seq),
                };
                (seq, self.store.encode(&write).expect("encode"))
            })
            .collect();
        let admission = self
            .handle
            .try_admit(samples.len())
            .expect("the tests' ingest budget is given back after each batch");
        Item::Samples(SampleBatch {
            session: session.clone(),
            samples,
            newest: sample(*seqs.end()),
            admission,
        })
    }

    /// A handler's writes with their audit entry; the receiver gets the commit's result.
    fn handler_commit(
        &self,
        writes: Vec<Write>,
        audit: AuditEntry,
    ) -> (Item, oneshot::Receiver<Result<(), CommitError>>) {
        let (done, wait) = oneshot::channel();
        let writes = writes
            .iter()
            .map(|w| self.store.encode(w).expect("encode"))
            .collect();
        let item = Item::Control(Control::Commit(Box::new(Commit {
            writes,
            live: Vec::new(),
            audit: Some(audit),
            done,
        })));
        (item, wait)
    }
}

fn org() -> OrgId {
    OrgId::new("acme")
}

fn session(agent: &str, id: &str) -> Arc<Session> {
    Arc::new(Session::new(
        SessionId::new(id),
        org(),
        AgentId::new(agent),
        0,
    ))
}

fn batch(items: impl IntoIterator<Item = Item>) -> Batch {
    let mut batch = Batch::default();
    for item in items {
        batch.add(item);
    }
    batch
}

fn audit(org: &str, target: &str) -> Item {
    Item::Control(Control::Audit(Box::new(entry(org, target))))
}

fn entry(org: &str, target: &str) -> AuditEntry {
    AuditEntry {
        org: OrgId::new(org),
        time: SystemTime::now(),
        actor_token: Some(TokenId::new("t-1")),
        actor_name: "ops".to_owned(),
        actor_role: Some(Role::Admin),
        method: "/tether.v1.AdminService/CreateToken".to_owned(),
        target: target.to_owned(),
        outcome: AuditOutcome::Succeeded,
        status_code: 0,
        message: String::new(),
    }
}

fn transition(agent: &str, from: AgentStatus, to: AgentStatus, time: SystemTime) -> Transition {
    Transition {
        org: org(),
        agent: AgentId::new(agent),
        time,
        from,
        to,
        reason: StatusReason::Reconnected,
    }
}

/// The kind of record a sled key names: the byte after `{org}/`.
fn kind(key: &[u8]) -> Option<u8> {
    let slash = key.iter().position(|&b| b == b'/')?;
    key.get(slash + 1).copied()
}

fn puts(writes: &[Encoded], wanted: u8) -> Vec<(&[u8], &[u8])> {
    writes
        .iter()
        .flat_map(Encoded::puts)
        .filter(|(key, _)| kind(key) == Some(wanted))
        .collect()
}

/// The seqs of the samples in `writes`.
fn sample_seqs(writes: &[Encoded]) -> Vec<u64> {
    writes.iter().flat_map(Encoded::sample_seqs).collect()
}

fn n_progress(writes: &[Encoded]) -> usize {
    puts(writes, b'q').len()
}

fn lives(writes: &[Encoded]) -> Vec<LiveRecord> {
    puts(writes, b'l')
        .iter()
        .map(|(_, value)| serde_json::from_slice(value).expect("a live record"))
        .collect()
}

fn audit_records(writes: &[Encoded]) -> Vec<AuditRecord> {
    puts(writes, b'u')
        .iter()
        .map(|(_, value)| serde_json::from_slice(value).expect("an audit record"))
        .collect()
}

mod failures;
mod planning;
mod queues;
