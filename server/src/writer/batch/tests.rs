//! Unit tests of the writer's batch handling against a real [`SledStore`] in a tempdir:
//! planning is pure, applying happens only after a commit, a failed commit remembers and acks
//! nothing but keeps what nobody waits for, and one write that cannot be stored fails alone.

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
    let (handle, queues) = channel(store.clone(), &metrics, 16, 2, BUDGET);
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

#[tokio::test]
async fn samples_at_or_below_the_high_water_mark_are_dropped_but_acked() {
    let mut f = fixture();
    let first = session("a-1", "s-1");
    let plan = f.plan(batch([f.samples(&first, 1..=3)]));
    assert_eq!(sample_seqs(&plan.writes), [1, 2, 3]);
    assert!(f.state.live.is_empty(), "planning changes nothing");
    assert!(f.commit(batch([f.samples(&first, 1..=3)])).await);
    assert_eq!(first.durable_seq(), 3);

    // After a reconnect the agent re-sends 2..=5: 2 and 3 are durable already.
    let second = session("a-1", "s-2");
    let plan = f.plan(batch([f.samples(&second, 2..=5)]));
    assert_eq!(sample_seqs(&plan.writes), [4, 5]);
    assert!(f.commit(batch([f.samples(&second, 2..=5)])).await);
    assert_eq!(second.durable_seq(), 5, "duplicates are acked too");
    assert_eq!(f.state.live[&AgentId::new("a-1")].last_seq, 5);

    // A batch holding only duplicates writes no sample and still acks.
    let third = session("a-1", "s-3");
    assert!(f.commit(batch([f.samples(&third, 1..=5)])).await);
    assert_eq!(third.durable_seq(), 5);

    // The mark is per agent: another agent's seq 1 is new.
    let other = session("b-1", "s-4");
    let plan = f.plan(batch([f.samples(&other, 1..=1)]));
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

    let plan = f.plan_at(batch([f.samples(&s, 1..=1)]), t0, now);
    assert_eq!(n_progress(&plan.writes), 1, "first batch of an agent");
    assert_eq!(lives(&plan.writes).len(), 0);
    f.apply(plan).await;

    let plan = f.plan_at(
        batch([f.samples(&s, 2..=2)]),
        t0 + Duration::from_secs(1),
        now,
    );
    assert_eq!(n_progress(&plan.writes), 0, "within the interval");
    f.apply(plan).await;

    let plan = f.plan_at(batch([f.samples(&s, 3..=3)]), t0 + PROGRESS_INTERVAL, now);
    assert_eq!(n_progress(&plan.writes), 1, "the interval has passed");
    f.apply(plan).await;

    // An agent whose status changed gets its full live summary instead, at any time.
    f.handle.transition(
        transition("a-1", AgentStatus::Offline, AgentStatus::Online, now),
        Some(now),
    );
    let plan = f.plan_with(
        batch([f.samples(&s, 4..=4)]),
        f.queues.live.take(),
        t0 + PROGRESS_INTERVAL + Duration::from_secs(1),
        now,
    );
    assert_eq!(n_progress(&plan.writes), 0);
    let lives = lives(&plan.writes);
    assert_eq!(lives.len(), 1);
    assert_eq!(
        (lives[0].status, lives[0].last_seq),
        (AgentStatus::Online, 4)
    );
}

#[tokio::test]
async fn audit_entries_chain_within_a_batch_and_across_batches() {
    let mut f = fixture();
    let (commit, mut waiting) = f.handler_commit(vec![], entry("acme", "two"));
    let plan = f.plan(batch([
        audit("acme", "one"),
        commit,
        audit("beta", "three"),
    ]));
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

    let plan = f.plan(batch([audit("acme", "four")]));
    let next = &audit_records(&plan.writes)[0];
    assert_eq!((next.seq, next.prev_hash), (3, acme_head.1));
}

#[tokio::test]
async fn a_failed_commit_acks_nothing_and_leaves_marks_and_heads_unchanged() {
    let mut f = fixture();
    let a1 = AgentId::new("a-1");
    let s = session("a-1", "s-1");
    assert!(
        f.commit(batch([f.samples(&s, 1..=3), audit("acme", "one")]))
            .await
    );
    let head = f.state.audit_heads[&org()];
    let progress = f.state.progress_at.clone();

    f.store.fail(true);
    let (commit, mut waiting) = f.handler_commit(vec![], entry("acme", "two"));
    assert!(!f.commit(batch([f.samples(&s, 4..=6), commit])).await);
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

    // The session is ended; the agent reconnects and re-sends: nothing is dropped as a
    // duplicate, and the chain goes on from the head.
    assert_eq!(s.close_reason(), CloseReason::WriteFailed);
    f.store.fail(false);
    let again = session("a-1", "s-2");
    let plan = f.plan(batch([f.samples(&again, 4..=6)]));
    assert_eq!(sample_seqs(&plan.writes), [4, 5, 6]);
    f.apply(plan).await;
    assert_eq!(again.durable_seq(), 6);
    assert_eq!(f.stored_seqs("a-1"), [1, 2, 3, 4, 5, 6]);
}

#[tokio::test]
async fn after_a_failed_commit_the_session_is_never_acked_again() {
    let mut f = fixture();
    let s = session("a-1", "s-1");
    let other = session("b-1", "s-2");
    assert!(f.commit(batch([f.samples(&s, 1..=3)])).await);

    f.store.fail(true);
    assert!(!f.commit(batch([f.samples(&s, 4..=6)])).await);
    assert!(s.writes_failed());
    assert_eq!(s.close_reason(), CloseReason::WriteFailed);

    // Samples the session had already queued behind the failed batch are neither stored nor
    // acked: an ack of 9 would cover 4..=6, which are not on disk. Another agent, in the same
    // batch, is unaffected.
    f.store.fail(false);
    assert!(
        f.commit(batch([f.samples(&s, 7..=9), f.samples(&other, 1..=2)]))
            .await
    );
    assert_eq!(s.durable_seq(), 3, "no ack past the unwritten samples");
    assert_eq!(f.stored_seqs("a-1"), [1, 2, 3]);
    assert_eq!(f.state.live[&AgentId::new("a-1")].last_seq, 3);
    assert_eq!(other.durable_seq(), 2);
    assert_eq!(f.stored_seqs("b-1"), [1, 2]);
}

#[tokio::test]
async fn audit_entries_of_a_failed_commit_are_retried_with_their_seq_and_hash() {
    let mut f = fixture();
    assert!(f.commit(batch([audit("acme", "one")])).await);

    f.store.fail(true);
    let (commit, mut waiting) = f.handler_commit(vec![], entry("acme", "handler"));
    assert!(
        !f.commit(batch([
            audit("acme", "two"),
            commit,
            audit("acme", "three")
        ]))
        .await
    );
    assert!(f.state.has_retries());
    assert!(
        matches!(waiting.try_recv(), Ok(Err(_))),
        "the handler learns its call failed (and audits that itself)"
    );
    // Failing again changes nothing: the same entries wait, in order.
    assert!(!f.commit(batch([])).await);

    f.store.fail(false);
    assert!(f.commit(batch([audit("acme", "four")])).await);
    assert!(!f.state.has_retries());
    let stored = f.stored_audit();
    let targets: Vec<(u64, &str)> = stored.iter().map(|(s, t)| (*s, t.as_str())).collect();
    assert_eq!(
        targets,
        [(1, "one"), (2, "two"), (3, "three"), (4, "four")],
        "no gap, no fork, the handler's success not recorded"
    );
    let records = f.store.audit_records(&org(), 0, 10).expect("read audit");
    for pair in records.windows(2) {
        assert_eq!(pair[1].prev_hash, pair[0].hash, "seq {}", pair[1].seq);
        let again = crate::audit::chain(pair[0].seq, pair[0].hash, pair[1].entry.clone());
        assert_eq!(again.hash, pair[1].hash, "seq {}", pair[1].seq);
    }
}

#[tokio::test]
async fn live_changes_of_a_failed_commit_are_written_before_newer_ones() {
    let mut f = fixture();
    let t0 = SystemTime::now();
    let a1 = AgentId::new("a-1");
    f.handle.transition(
        transition("a-1", AgentStatus::Offline, AgentStatus::Online, t0),
        Some(t0),
    );
    f.store.fail(true);
    assert!(!f.commit(batch([])).await);

    let t1 = t0 + Duration::from_secs(1);
    f.handle.transition(
        transition("a-1", AgentStatus::Online, AgentStatus::Offline, t1),
        Some(t1),
    );
    f.store.fail(false);
    assert!(f.commit(batch([])).await);
    let history: Vec<_> = f
        .store
        .transitions(&org(), &a1, 10)
        .expect("read history")
        .into_iter()
        .map(|t| (t.from, t.to))
        .collect();
    assert_eq!(
        history,
        [
            (AgentStatus::Online, AgentStatus::Offline),
            (AgentStatus::Offline, AgentStatus::Online),
        ],
        "newest first: both kept, in order"
    );
    assert_eq!(f.state.live[&a1].status, AgentStatus::Offline);
}

#[tokio::test]
async fn status_changes_waiting_are_bounded_per_agent() {
    let f = fixture();
    let t0 = SystemTime::now();
    let n = MAX_PENDING_TRANSITIONS + 4;
    for i in 0..n {
        let (from, to) = if i % 2 == 0 {
            (AgentStatus::Offline, AgentStatus::Online)
        } else {
            (AgentStatus::Online, AgentStatus::Offline)
        };
        let time = t0 + Duration::from_secs(i as u64);
        f.handle.transition(transition("a-1", from, to, time), None);
    }
    let taken = f.queues.live.take();
    let waiting = &taken.agents[&AgentId::new("a-1")].transitions;
    assert_eq!(waiting.len(), MAX_PENDING_TRANSITIONS);
    assert_eq!(
        waiting.last().expect("one").0.time,
        t0 + Duration::from_secs(n as u64 - 1),
        "the newest change is kept"
    );
    assert_eq!(f.metrics.writer_transitions_coalesced.get(), 4);
}

#[tokio::test]
async fn a_write_that_cannot_be_stored_fails_alone() {
    let mut f = fixture();
    let s = session("a-1", "s-1");
    // A record the store cannot encode (a time before 1970): its caller learns at once, and
    // nothing is queued.
    let mut token = TokenRecord {
        id: TokenId::new("t-2"),
        org: org(),
        role: Role::Viewer,
        name: "bad".into(),
        digest: [0; 32],
        created_at: UNIX_EPOCH - Duration::from_secs(1),
        expires_at: None,
        revoked: false,
        agent: None,
        server_admin: false,
        last_used_at: None,
    };
    let slot = f.handle.reserve().await.expect("a slot");
    let refused = slot.submit(vec![Write::PutToken(token.clone())], None);
    assert!(
        matches!(
            refused,
            Err(ServerError::Store(
                crate::store::StoreError::Unencodable { .. }
            ))
        ),
        "{:?}",
        refused.err()
    );
    assert!(f.queues.control.try_recv().is_err(), "nothing queued");

    // Writes the writer builds itself: an audit entry that cannot be encoded is left out alone
    // (the head does not move), a handler whose audit entry cannot be encoded fails alone, and
    // everything else in the batch commits.
    let mut bad = entry("acme", "bad");
    bad.time = UNIX_EPOCH - Duration::from_secs(1);
    let (doomed, mut doomed_wait) = f.handler_commit(vec![], bad.clone());
    token.created_at = SystemTime::now();
    let (fine, mut fine_wait) =
        f.handler_commit(vec![Write::PutToken(token)], entry("acme", "fine"));
    let items = [
        audit("acme", "one"),
        Item::Control(Control::Audit(Box::new(bad))),
        doomed,
        f.samples(&s, 1..=2),
        fine,
    ];
    assert!(f.commit(batch(items)).await);
    assert!(matches!(doomed_wait.try_recv(), Ok(Err(_))));
    assert!(matches!(fine_wait.try_recv(), Ok(Ok(()))));
    assert_eq!(s.durable_seq(), 2);
    assert_eq!(f.stored_seqs("a-1"), [1, 2]);
    let stored = f.stored_audit();
    let targets: Vec<(u64, &str)> = stored.iter().map(|(s, t)| (*s, t.as_str())).collect();
    assert_eq!(targets, [(1, "one"), (2, "fine")]);
    assert_eq!(f.metrics.writer_unencodable_writes.get(), 2);
}

#[tokio::test]
async fn a_full_control_queue_makes_callers_wait_and_drops_nothing() {
    let mut f = fixture();
    let depth = |f: &Fixture| {
        f.metrics
            .writer_queue_depth
            .get_or_create(&crate::metrics::QueueLabels { queue: "control" })
            .get()
    };
    // The fixture's control queue holds two items.
    f.handle.audit(entry("acme", "one")).await;
    f.handle.audit(entry("acme", "two")).await;
    assert_eq!(depth(&f), 2);
    let mut third = Box::pin(f.handle.audit(entry("acme", "three")));
    assert!((&mut third).now_or_never().is_none(), "the caller waits");
    assert!(
        f.handle.reserve().now_or_never().is_none(),
        "so does a reservation"
    );
    let Ok(Control::Audit(first)) = f.queues.control.try_recv() else {
        panic!("the first entry is queued");
    };
    assert_eq!(first.target, "one");
    assert!(third.now_or_never().is_some(), "a slot freed: it is queued");
    let rest: Vec<String> = std::iter::from_fn(|| f.queues.control.try_recv().ok())
        .map(|c| match c {
            Control::Audit(e) => e.target,
            Control::Commit(_) => "commit".to_owned(),
        })
        .collect();
    assert_eq!(rest, ["two", "three"]);
}

#[tokio::test]
async fn ingest_budget_is_held_until_the_batch_is_acked_or_failed() {
    let mut f = fixture();
    let s = session("a-1", "s-1");
    let first = f.samples(&s, 1..=40);
    assert!(
        f.handle.try_admit(BUDGET - 40 + 1).is_none(),
        "a report's samples hold their share of the budget"
    );
    let plan = f.plan(batch([first, f.samples(&s, 41..=50)]));
    assert!(
        f.handle.try_admit(BUDGET - 50 + 1).is_none(),
        "planning a batch gives nothing back"
    );
    f.apply(plan).await;
    assert_eq!(s.durable_seq(), 50);
    let whole = f.handle.try_admit(BUDGET);
    assert!(whole.is_some(), "the acks gave the whole budget back");
    drop(whole);

    f.store.fail(true);
    assert!(!f.commit(batch([f.samples(&s, 51..=60)])).await);
    assert!(
        f.handle.try_admit(BUDGET).is_some(),
        "a failed batch gives its budget back too"
    );
}

#[tokio::test]
async fn waiters_for_budget_are_served_first_come_first_served() {
    let mut f = fixture();
    let s = session("a-1", "s-1");
    let hog = f.samples(&s, 1..=BUDGET as u64);
    let mut big = f.handle.admit(BUDGET);
    let mut small = f.handle.admit(1);
    assert!(futures::poll!(big.as_mut()).is_pending());
    assert!(futures::poll!(small.as_mut()).is_pending());
    assert!(
        f.handle.try_admit(1).is_none(),
        "nobody passes the callers waiting in line"
    );
    assert!(f.commit(batch([hog])).await);
    let big = big.await.expect("the first in line gets the budget first");
    assert!(futures::poll!(small.as_mut()).is_pending());
    drop(big);
    small.await.expect("then the next one");
}
