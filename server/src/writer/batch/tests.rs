//! Unit tests of the writer's batch handling against a real [`SledStore`] in a tempdir:
//! planning is pure, applying happens only after a commit, and a failed commit changes nothing.

use std::ops::RangeInclusive;
use std::time::{Duration, UNIX_EPOCH};

use super::super::{Item, WriterQueues, channel};
use super::*;
use crate::config::{HealthThresholds, LivenessConfig};
use crate::domain::{AuditOutcome, Role, SessionId, TokenId, Transition};
use crate::store::SledStore;
use crate::testing::{FailingStore, agent_record, sample};

struct Fixture {
    _dir: tempfile::TempDir,
    store: Arc<FailingStore>,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    /// Keeps the registry's control queue open; what it queues is not under test here.
    _queues: WriterQueues,
    state: WriterState,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(FailingStore::new(
        SledStore::open(dir.path()).expect("open store"),
    ));
    let metrics = Metrics::new();
    let (handle, queues) = channel(16);
    let registry = Arc::new(Registry::new(
        vec![
            (agent_record("acme", "a-1", "hw-1"), None),
            (agent_record("acme", "b-1", "hw-2"), None),
        ],
        handle,
        LivenessConfig::default(),
        HealthThresholds::default(),
        16,
        metrics.clone(),
    ));
    Fixture {
        _dir: dir,
        store,
        registry,
        metrics,
        _queues: queues,
        state: WriterState::default(),
    }
}

impl Fixture {
    /// Plans, executes and applies (or fails) `batch` as the writer task does.
    async fn commit(&mut self, batch: Batch) -> bool {
        let store: Arc<dyn Store> = self.store.clone();
        commit_batch(
            &mut self.state,
            &store,
            &self.registry,
            &self.metrics,
            batch,
        )
        .await
    }

    /// Executes and applies `plan`, which must commit.
    async fn apply(&mut self, plan: Plan) {
        let store: Arc<dyn Store> = self.store.clone();
        let Plan { writes, outcome } = plan;
        let writes = execute(&store, writes).await.expect("commit");
        self.state
            .apply(outcome, writes, &self.registry, &self.metrics);
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

    fn latest_seq(&self, agent: &str) -> Option<u64> {
        let view = self.registry.get(&org(), &AgentId::new(agent))?;
        view.latest.map(|s| s.seq)
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

fn samples(session: &Arc<Session>, seqs: RangeInclusive<u64>) -> Item {
    Item::Samples(SampleBatch {
        session: session.clone(),
        samples: seqs.map(sample).collect(),
    })
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

/// A handler's write with its audit entry; the receiver gets the commit's result.
fn handler_commit(
    writes: Vec<Write>,
    audit: AuditEntry,
) -> (Item, oneshot::Receiver<Result<(), CommitError>>) {
    let (done, wait) = oneshot::channel();
    let item = Item::Control(Control::Commit {
        writes,
        audit: Some(Box::new(audit)),
        done,
    });
    (item, wait)
}

fn sample_seqs(writes: &[Write]) -> Vec<u64> {
    writes
        .iter()
        .filter_map(|w| match w {
            Write::PutSample { sample, .. } => Some(sample.seq),
            _ => None,
        })
        .collect()
}

fn count(writes: &[Write], pred: impl Fn(&Write) -> bool) -> usize {
    writes.iter().filter(|w| pred(w)).count()
}

fn is_progress(w: &Write) -> bool {
    matches!(w, Write::PutProgress { .. })
}

fn is_live(w: &Write) -> bool {
    matches!(w, Write::PutLive { .. })
}

fn audit_records(writes: &[Write]) -> Vec<&AuditRecord> {
    writes
        .iter()
        .filter_map(|w| match w {
            Write::PutAudit(record) => Some(record),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn samples_at_or_below_the_high_water_mark_are_dropped_but_acked() {
    let mut f = fixture();
    let first = session("a-1", "s-1");
    let plan = f.state.plan(
        batch([samples(&first, 1..=3)]),
        Instant::now(),
        SystemTime::now(),
    );
    assert_eq!(sample_seqs(&plan.writes), [1, 2, 3]);
    assert!(f.state.live.is_empty(), "planning changes nothing");
    assert!(f.commit(batch([samples(&first, 1..=3)])).await);
    assert_eq!(first.durable_seq(), 3);

    // After a reconnect the agent re-sends 2..=5: 2 and 3 are durable already.
    let second = session("a-1", "s-2");
    let plan = f.state.plan(
        batch([samples(&second, 2..=5)]),
        Instant::now(),
        SystemTime::now(),
    );
    assert_eq!(sample_seqs(&plan.writes), [4, 5]);
    assert!(f.commit(batch([samples(&second, 2..=5)])).await);
    assert_eq!(second.durable_seq(), 5, "duplicates are acked too");
    assert_eq!(f.state.live[&AgentId::new("a-1")].last_seq, 5);

    // A batch holding only duplicates writes no sample and still acks.
    let third = session("a-1", "s-3");
    assert!(f.commit(batch([samples(&third, 1..=5)])).await);
    assert_eq!(third.durable_seq(), 5);

    // The mark is per agent: another agent's seq 1 is new.
    let other = session("b-1", "s-4");
    let plan = f.state.plan(
        batch([samples(&other, 1..=1)]),
        Instant::now(),
        SystemTime::now(),
    );
    assert_eq!(sample_seqs(&plan.writes), [1]);

    assert_eq!(
        f.stored_seqs("a-1"),
        [1, 2, 3, 4, 5],
        "each sample stored once"
    );
    assert_eq!(f.latest_seq("a-1"), Some(5), "the registry has the newest");
    assert_eq!(
        f.registry
            .get(&org(), &AgentId::new("a-1"))
            .expect("agent")
            .last_seq,
        5
    );
}

#[tokio::test]
async fn progress_records_are_written_at_most_every_interval() {
    let mut f = fixture();
    let s = session("a-1", "s-1");
    let t0 = Instant::now();
    let now = SystemTime::now();

    let plan = f.state.plan(batch([samples(&s, 1..=1)]), t0, now);
    assert_eq!(
        count(&plan.writes, is_progress),
        1,
        "first batch of an agent"
    );
    assert_eq!(count(&plan.writes, is_live), 0);
    f.apply(plan).await;

    let plan = f.state.plan(
        batch([samples(&s, 2..=2)]),
        t0 + Duration::from_secs(1),
        now,
    );
    assert_eq!(count(&plan.writes, is_progress), 0, "within the interval");
    f.apply(plan).await;

    let plan = f
        .state
        .plan(batch([samples(&s, 3..=3)]), t0 + PROGRESS_INTERVAL, now);
    assert_eq!(
        count(&plan.writes, is_progress),
        1,
        "the interval has passed"
    );
    f.apply(plan).await;

    // An agent whose status changed gets its full live summary instead, at any time.
    let change = Item::Control(Control::Transition {
        transition: Box::new(Transition {
            org: org(),
            agent: AgentId::new("a-1"),
            time: now,
            from: AgentStatus::Offline,
            to: AgentStatus::Online,
            reason: StatusReason::Reconnected,
        }),
        last_seen: Some(now),
    });
    let plan = f.state.plan(
        batch([change, samples(&s, 4..=4)]),
        t0 + PROGRESS_INTERVAL + Duration::from_secs(1),
        now,
    );
    assert_eq!(count(&plan.writes, is_progress), 0);
    assert_eq!(count(&plan.writes, is_live), 1);
    let live = plan
        .writes
        .iter()
        .find_map(|w| match w {
            Write::PutLive { live, .. } => Some(live.clone()),
            _ => None,
        })
        .expect("a live summary");
    assert_eq!((live.status, live.last_seq), (AgentStatus::Online, 4));
}

#[tokio::test]
async fn audit_entries_chain_within_a_batch_and_across_batches() {
    let mut f = fixture();
    let (commit, mut waiting) = handler_commit(vec![], entry("acme", "two"));
    let plan = f.state.plan(
        batch([audit("acme", "one"), commit, audit("beta", "three")]),
        Instant::now(),
        SystemTime::now(),
    );
    let records = audit_records(&plan.writes);
    let chain: Vec<_> = records
        .iter()
        .map(|r| (r.entry.org.as_str(), r.seq, r.entry.target.as_str()))
        .collect();
    assert_eq!(
        chain,
        [("acme", 1, "one"), ("acme", 2, "two"), ("beta", 1, "three")]
    );
    assert_eq!(records[0].prev_hash, crate::audit::GENESIS);
    assert_eq!(records[1].prev_hash, records[0].hash);
    assert_eq!(
        records[2].prev_hash,
        crate::audit::GENESIS,
        "chains are per org"
    );
    let acme_head = (records[1].seq, records[1].hash);
    assert!(f.state.audit_heads.is_empty(), "planning changes nothing");

    f.apply(plan).await;
    assert!(
        matches!(waiting.try_recv(), Ok(Ok(()))),
        "the handler learns it is durable"
    );
    assert_eq!(f.state.audit_heads[&org()], acme_head);
    let stored: Vec<u64> = f
        .store
        .audit_records(&org(), 0, 10)
        .expect("read audit")
        .iter()
        .map(|r| r.seq)
        .collect();
    assert_eq!(stored, [1, 2]);

    let plan = f.state.plan(
        batch([audit("acme", "four")]),
        Instant::now(),
        SystemTime::now(),
    );
    let next = audit_records(&plan.writes)[0];
    assert_eq!((next.seq, next.prev_hash), (3, acme_head.1));
}

#[tokio::test]
async fn a_failed_commit_acks_nothing_and_leaves_marks_and_heads_unchanged() {
    let mut f = fixture();
    let a1 = AgentId::new("a-1");
    let s = session("a-1", "s-1");
    assert!(
        f.commit(batch([samples(&s, 1..=3), audit("acme", "one")]))
            .await
    );
    let head = f.state.audit_heads[&org()];
    let progress = f.state.progress_at.clone();

    f.store.fail(true);
    let (commit, mut waiting) = handler_commit(vec![], entry("acme", "two"));
    assert!(!f.commit(batch([samples(&s, 4..=6), commit])).await);
    assert_eq!(s.durable_seq(), 3, "nothing acked");
    assert!(
        matches!(waiting.try_recv(), Ok(Err(CommitError::Store(_)))),
        "the handler learns the commit failed"
    );
    assert_eq!(f.state.live[&a1].last_seq, 3, "the mark did not advance");
    assert_eq!(
        f.state.audit_heads[&org()],
        head,
        "the head did not advance"
    );
    assert_eq!(f.state.progress_at, progress);
    assert_eq!(f.latest_seq("a-1"), Some(3));
    assert_eq!(f.metrics.writer_commit_failures.get(), 1);

    // The agent re-sends: nothing is dropped as a duplicate, the chain goes on from the head.
    f.store.fail(false);
    let plan = f.state.plan(
        batch([samples(&s, 4..=6), audit("acme", "two")]),
        Instant::now(),
        SystemTime::now(),
    );
    assert_eq!(sample_seqs(&plan.writes), [4, 5, 6]);
    let record = audit_records(&plan.writes)[0];
    assert_eq!((record.seq, record.prev_hash), (head.0 + 1, head.1));
    f.apply(plan).await;
    assert_eq!(s.durable_seq(), 6);
    assert_eq!(f.stored_seqs("a-1"), [1, 2, 3, 4, 5, 6]);
}
