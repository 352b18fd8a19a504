//! The engine without sockets: a real store, the real writer task and registry, sessions opened
//! in the registry and read through their outboxes. Each test states one promise.
//!
//! Longer than usual: the engine's promises share one fixture, kept with them in one file.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::*;
use crate::auth::{Caller, Principal};
use crate::command::model::{Amount, CommandState, RolloutPolicy, SkipReason};
use crate::command::record::{
    AgentUpdate, Chunk, CommandEvent, CommandRecord, CommandSpec, ExecSpec, NewCommand,
    OutputStream, Targets, UpdateStep, invocation_id,
};
use crate::config::{CommandSettings, HealthThresholds, LivenessConfig, StorageConfig};
use crate::domain::{Role, SessionId, TokenId};
use crate::error::ServerError;
use crate::session::{CommandMessage, Session};
use crate::testing::{FailingStore, agent_record};

/// How long a test waits for an asynchronous effect.
const WAIT: Duration = Duration::from_secs(10);

struct Fixture {
    engine: Arc<Engine>,
    registry: Arc<Registry>,
    store: Arc<FailingStore>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    dir: tempfile::TempDir,
}

fn org() -> OrgId {
    OrgId::new("acme")
}

fn caller() -> Caller {
    Caller {
        org: org(),
        token: TokenId::new("op"),
        principal: Principal::User {
            name: "operator".into(),
            role: Role::Operator,
            server_admin: false,
        },
    }
}

fn audit(record: &CommandRecord) -> crate::domain::AuditEntry {
    crate::audit::entry(&caller(), "/test/Send", record.id.as_str(), Ok(()))
}

fn exec() -> CommandSpec {
    CommandSpec::Exec(ExecSpec {
        argv: vec!["/bin/true".into()],
        env: Default::default(),
        working_dir: String::new(),
        stdin: Vec::new(),
    })
}

fn new_command(agents: &[&str], rollout: RolloutPolicy) -> NewCommand {
    NewCommand {
        spec: exec(),
        targets: Targets {
            agent_ids: agents.iter().map(|a| AgentId::new(*a)).collect(),
            selector: String::new(),
            include_offline: true,
        },
        rollout,
        timeout: Some(Duration::from_secs(30)),
        deliver_within: None,
        idempotency_key: String::new(),
        description: String::new(),
        output_limit: 0,
    }
}

fn update(id: &str, seq: u64, step: UpdateStep, output: Vec<Chunk>) -> AgentUpdate {
    AgentUpdate {
        invocation_id: id.to_owned(),
        seq,
        step,
        reason: String::new(),
        exit_code: matches!(step, UpdateStep::Finished(_)).then_some(0),
        signal: None,
        output,
    }
}

fn stdout(offset: u64, data: &[u8]) -> Chunk {
    Chunk {
        stream: OutputStream::Stdout,
        offset,
        data: data.to_vec(),
    }
}

impl Fixture {
    /// An engine over a fresh store whose org `acme` has `agents`, all offline.
    async fn new(agents: &[&str]) -> Self {
        Self::with(agents, |_| {}).await
    }

    /// [`Fixture::new`] with the command settings `edit` makes.
    async fn with(agents: &[&str], edit: impl FnOnce(&mut CommandSettings)) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::open_with(dir, agents, edit).await
    }

    /// An engine over the store in `dir` (which holds `agents`, or gets them).
    async fn open(dir: tempfile::TempDir, agents: &[&str]) -> Self {
        Self::open_with(dir, agents, |_| {}).await
    }

    async fn open_with(
        dir: tempfile::TempDir,
        agents: &[&str],
        edit: impl FnOnce(&mut CommandSettings),
    ) -> Self {
        let metrics = Metrics::new();
        let sled = crate::store::SledStore::open(dir.path()).expect("open store");
        let store = Arc::new(FailingStore::new(sled));
        let dyn_store: Arc<dyn Store> = store.clone();
        let (writer, queues) = crate::writer::channel(dyn_store.clone(), &metrics, 64, 64, 64);
        let registry = Arc::new(Registry::new(
            agents
                .iter()
                .map(|id| (agent_record("acme", id, &format!("hw-{id}")), None))
                .collect(),
            writer.clone(),
            LivenessConfig::default(),
            HealthThresholds::default(),
            crate::registry::WatchLimits::default(),
            metrics.clone(),
        ));
        let mut settings = CommandSettings {
            tick: Duration::from_millis(10),
            ..CommandSettings::default()
        };
        edit(&mut settings);
        let engine = Arc::new(
            Engine::load(
                dyn_store.clone(),
                writer,
                registry.clone(),
                settings,
                metrics.clone(),
            )
            .expect("load"),
        );
        let stop = CancellationToken::new();
        let storage = StorageConfig {
            writer_linger: Duration::from_millis(1),
            ..StorageConfig::default()
        };
        let tasks = vec![
            tokio::spawn(crate::writer::run(
                queues,
                dyn_store,
                registry.clone(),
                HashMap::new(),
                Vec::new(),
                metrics.clone(),
                storage,
                stop.clone(),
            )),
            tokio::spawn(engine.clone().run(stop.clone())),
        ];
        Self {
            engine,
            registry,
            store,
            metrics,
            stop,
            tasks,
            dir,
        }
    }

    /// Stops the tasks and hands back the store's directory.
    async fn stop(self) -> tempfile::TempDir {
        self.stop.cancel();
        for task in self.tasks {
            task.await.expect("task");
        }
        drop(self.engine);
        drop(self.registry);
        drop(self.store);
        self.dir
    }

    /// Opens a session for `agent` (online) and tells the engine, as `Connect` does.
    async fn connect(&self, agent: &str, journaled: &[String]) -> (Arc<Session>, Journaled) {
        let record = self
            .registry
            .get(&org(), &AgentId::new(agent))
            .expect("known agent")
            .record;
        let journaled = self
            .engine
            .journaled(&org(), &AgentId::new(agent), journaled.to_vec())
            .await
            .expect("journaled");
        let session = self
            .registry
            .open_session(
                &org(),
                &AgentId::new(agent),
                SessionId::new(format!("s-{agent}-{}", rand::random::<u32>())),
                record.system_info.clone(),
                None,
                "",
            )
            .expect("session")
            .session;
        self.engine.session_opened(&session, &journaled).await;
        (session, journaled)
    }

    async fn send(&self, new: NewCommand) -> CommandRecord {
        self.engine
            .send(&caller(), new, audit)
            .await
            .expect("send")
            .command
    }

    fn stored(&self, id: &CommandId) -> CommandRecord {
        Store::command(self.store.as_ref(), &org(), id)
            .expect("read")
            .expect("stored")
    }

    fn events(&self, id: &CommandId) -> Vec<(u64, CommandEvent)> {
        self.store
            .command_events(&org(), id, 0, u64::MAX, 100_000, usize::MAX)
            .expect("events")
    }

    /// The invocation states of command `id` in its stored history, in order.
    fn history(&self, id: &CommandId) -> Vec<(u32, InvocationState)> {
        self.events(id)
            .into_iter()
            .filter_map(|(_, event)| match event {
                CommandEvent::Invocation(r) => Some((r.n, r.state)),
                CommandEvent::Output(_) => None,
            })
            .collect()
    }

    /// Waits until command `id` is stored in a state `check` accepts.
    async fn until(&self, id: &CommandId, what: &str, check: impl Fn(&CommandRecord) -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if check(&self.stored(id)) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}: {:?}",
                self.stored(id)
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Waits for the next command message of `session`.
async fn next_message(session: &Session) -> CommandMessage {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(message) = session.next_command_message() {
            return message;
        }
        assert!(tokio::time::Instant::now() < deadline, "no command message");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn next_offer(session: &Session) -> String {
    match next_message(session).await {
        CommandMessage::Offer(offer) => offer.invocation_id,
        other => panic!("expected an offer, got {other:?}"),
    }
}

async fn next_acks(session: &Session) -> Vec<(String, u64)> {
    match next_message(session).await {
        CommandMessage::Acks(acks) => acks,
        other => panic!("expected acks, got {other:?}"),
    }
}

#[tokio::test]
async fn a_command_is_stored_offered_run_and_acked_in_order() {
    let f = Fixture::new(&["a1", "a2"]).await;
    let (s1, _) = f.connect("a1", &[]).await;
    let (s2, _) = f.connect("a2", &[]).await;
    let command = f
        .send(new_command(&["a1", "a2"], RolloutPolicy::default()))
        .await;
    // Stored before the answer: the command, both invocations, their first events.
    assert_eq!(f.stored(&command.id).n_invocations, 2);
    let i1 = next_offer(&s1).await;
    let i2 = next_offer(&s2).await;
    assert_eq!(i1, invocation_id(&command.id, 0));
    assert_eq!(i2, invocation_id(&command.id, 1));

    f.engine
        .report(
            &s1,
            vec![
                update(&i1, 1, UpdateStep::Running, vec![]),
                update(
                    &i1,
                    2,
                    UpdateStep::Finished(InvocationState::Succeeded),
                    vec![stdout(0, b"hello\n")],
                ),
            ],
        )
        .await
        .expect("report");
    assert_eq!(next_acks(&s1).await, [(i1.clone(), 2)]);
    f.engine
        .report(
            &s2,
            vec![update(
                &i2,
                1,
                UpdateStep::Finished(InvocationState::Failed),
                vec![],
            )],
        )
        .await
        .expect("report");
    assert_eq!(next_acks(&s2).await, [(i2.clone(), 1)]);
    f.until(&command.id, "the command to fail", |c| {
        c.state == CommandState::Failed && c.finished_at.is_some()
    })
    .await;
    use InvocationState::*;
    assert_eq!(
        f.history(&command.id),
        [
            (0, Queued),
            (1, Queued),
            (0, Offered),
            (1, Offered),
            (0, Running),
            (0, Succeeded),
            (1, Failed)
        ]
    );
    let cursors: Vec<u64> = f.events(&command.id).iter().map(|(c, _)| *c).collect();
    assert_eq!(
        cursors,
        (1..=8).collect::<Vec<_>>(),
        "output has its own cursor"
    );
    assert_eq!(f.stored(&command.id).last_cursor, 8);
    f.stop().await;
}

#[tokio::test]
async fn the_creating_commit_writes_each_invocation_record_once_in_its_offered_state() {
    let f = Fixture::new(&["a1", "a2", "a3"]).await;
    let mut sessions = Vec::new();
    for agent in ["a1", "a2"] {
        sessions.push(f.connect(agent, &[]).await.0);
    }
    let command = f
        .send(new_command(&["a1", "a2", "a3"], RolloutPolicy::default()))
        .await;
    let prefix = format!("acme/i/{}/", command.id);
    let creating: Vec<Vec<u8>> = f
        .store
        .puts
        .lock()
        .expect("puts")
        .iter()
        .find(|keys| keys.iter().any(|k| k.starts_with(prefix.as_bytes())))
        .expect("the creating commit")
        .clone();
    let mut records: Vec<&Vec<u8>> = creating
        .iter()
        .filter(|k| k.starts_with(prefix.as_bytes()))
        .collect();
    assert_eq!(records.len(), 3, "one record per invocation, each once");
    records.sort();
    records.dedup();
    assert_eq!(records.len(), 3, "three distinct invocations");
    let stored: Vec<InvocationState> = f
        .store
        .invocations(&org(), &command.id, None, 10)
        .expect("invocations")
        .iter()
        .map(|r| r.state)
        .collect();
    // Online agents' records are stored OFFERED, the offline one's QUEUED; the history has
    // every state, the first included.
    assert_eq!(
        stored,
        [
            InvocationState::Offered,
            InvocationState::Offered,
            InvocationState::Queued
        ]
    );
    assert_eq!(
        f.history(&command.id),
        [
            (0, InvocationState::Queued),
            (1, InvocationState::Queued),
            (2, InvocationState::Queued),
            (0, InvocationState::Offered),
            (1, InvocationState::Offered),
        ]
    );
    drop(sessions);
    f.stop().await;
}

#[tokio::test]
async fn updates_not_stored_are_acked_at_once_and_change_nothing() {
    let f = Fixture::new(&["a1", "a2"]).await;
    let (s1, _) = f.connect("a1", &[]).await;
    let (s2, _) = f.connect("a2", &[]).await;
    let command = f.send(new_command(&["a1"], RolloutPolicy::default())).await;
    let i1 = next_offer(&s1).await;
    // Another agent reports on a1's invocation; an unknown id; garbage.
    let foreign = vec![
        update(
            &i1,
            1,
            UpdateStep::Finished(InvocationState::Succeeded),
            vec![],
        ),
        update("0123456789ab01234567-9", 3, UpdateStep::Running, vec![]),
        update("not an id", 1, UpdateStep::Running, vec![]),
    ];
    f.engine.report(&s2, foreign).await.expect("report");
    let mut acks = next_acks(&s2).await;
    acks.sort();
    assert_eq!(acks.len(), 3);
    // a1's invocation is untouched: its own agent's updates still count.
    f.engine
        .report(&s1, vec![update(&i1, 1, UpdateStep::Running, vec![])])
        .await
        .expect("report");
    assert_eq!(next_acks(&s1).await, [(i1.clone(), 1)]);
    // A re-sent update is acked with what is stored, not stored again.
    f.engine
        .report(&s1, vec![update(&i1, 1, UpdateStep::Running, vec![])])
        .await
        .expect("report");
    assert_eq!(next_acks(&s1).await, [(i1.clone(), 1)]);
    // RUNNING after RUNNING adds nothing; a terminal update ends it; later ones are settled.
    f.engine
        .report(
            &s1,
            vec![update(
                &i1,
                2,
                UpdateStep::Finished(InvocationState::Succeeded),
                vec![],
            )],
        )
        .await
        .expect("report");
    assert_eq!(next_acks(&s1).await, [(i1.clone(), 2)]);
    f.until(&command.id, "success", |c| {
        c.state == CommandState::Succeeded
    })
    .await;
    use InvocationState::*;
    assert_eq!(
        f.history(&command.id),
        [(0, Queued), (0, Offered), (0, Running), (0, Succeeded)]
    );
    f.stop().await;
}

#[tokio::test]
async fn the_error_budget_stops_the_rollout_and_skips_the_rest() {
    let agents = ["a1", "a2", "a3", "a4"];
    let f = Fixture::new(&agents).await;
    let mut sessions = Vec::new();
    for agent in agents {
        sessions.push(f.connect(agent, &[]).await.0);
    }
    let rollout = RolloutPolicy {
        max_concurrency: Some(Amount::Count(1)),
        max_errors: Some(Amount::Count(0)),
        canary: 0,
    };
    let command = f.send(new_command(&agents, rollout)).await;
    let first = next_offer(&sessions[0]).await;
    for session in &sessions[1..] {
        assert!(session.next_command_message().is_none(), "one at a time");
    }
    f.engine
        .report(
            &sessions[0],
            vec![update(
                &first,
                1,
                UpdateStep::Finished(InvocationState::Failed),
                vec![],
            )],
        )
        .await
        .expect("report");
    f.until(&command.id, "the rollout to stop", |c| c.is_finished())
        .await;
    let stored = f.stored(&command.id);
    assert_eq!((stored.counts.failed, stored.counts.skipped), (1, 3));
    assert_eq!(stored.state, CommandState::Failed);
    let page = f
        .store
        .invocations(&org(), &command.id, None, 10)
        .expect("invocations");
    assert!(
        page[1..]
            .iter()
            .all(|i| i.skip_reason == Some(SkipReason::ErrorBudget))
    );
    f.stop().await;
}

#[tokio::test]
async fn a_restart_resumes_from_the_store_and_an_agent_gets_its_invocation_on_reconnect() {
    let f = Fixture::new(&["a1"]).await;
    let command = f.send(new_command(&["a1"], RolloutPolicy::default())).await;
    assert_eq!(
        f.stored(&command.id).counts.queued,
        1,
        "queued for the offline agent"
    );
    let dir = f.stop().await;

    let f = Fixture::open(dir, &[]).await;
    assert_eq!(f.engine.n_active(), 1);
    // The registry of this fixture is empty; enroll a1 again so it can connect.
    f.registry.enrolled(agent_record("acme", "a1", "hw-a1"));
    let (s1, _) = f.connect("a1", &[]).await;
    let offered = next_offer(&s1).await;
    assert_eq!(offered, invocation_id(&command.id, 0));
    f.stop().await;
}

#[tokio::test]
async fn a_reconnecting_agent_is_reoffered_what_it_never_journaled_and_loses_what_it_forgot() {
    let f = Fixture::new(&["a1"]).await;
    let (s1, _) = f.connect("a1", &[]).await;
    let one = f.send(new_command(&["a1"], RolloutPolicy::default())).await;
    let two = f.send(new_command(&["a1"], RolloutPolicy::default())).await;
    let i1 = next_offer(&s1).await;
    let i2 = next_offer(&s1).await;
    f.engine
        .report(&s1, vec![update(&i2, 1, UpdateStep::Running, vec![])])
        .await
        .expect("report");
    assert_eq!(next_acks(&s1).await, [(i2.clone(), 1)]);
    // It comes back having journaled nothing: the offer is made again, the run is lost.
    let (s1, journaled) = f.connect("a1", &[]).await;
    assert!(journaled.acks.is_empty());
    assert_eq!(next_offer(&s1).await, i1);
    f.until(&two.id, "the lost run to end", |c| c.is_finished())
        .await;
    assert_eq!(f.stored(&two.id).counts.agent_restarted, 1);
    // Listing an invocation gets its durable seq in the Welcome.
    let (_, journaled) = f.connect("a1", std::slice::from_ref(&i1)).await;
    assert_eq!(journaled.acks, [(i1.clone(), 0)]);
    assert!(!f.stored(&one.id).is_finished());
    f.stop().await;
}

#[tokio::test]
async fn deadlines_settle_invocations_whose_agent_never_comes() {
    let f = Fixture::new(&["a1"]).await;
    let mut new = new_command(&["a1"], RolloutPolicy::default());
    new.deliver_within = Some(Duration::from_millis(50));
    let command = f.send(new).await;
    f.until(&command.id, "the delivery deadline", |c| c.is_finished())
        .await;
    assert_eq!(f.stored(&command.id).counts.delivery_timed_out, 1);
    f.stop().await;
}

#[tokio::test]
async fn output_past_the_limit_keeps_its_head_and_tail() {
    let f = Fixture::new(&["a1"]).await;
    let (s1, _) = f.connect("a1", &[]).await;
    let mut new = new_command(&["a1"], RolloutPolicy::default());
    new.output_limit = 100;
    let command = f.send(new).await;
    let id = next_offer(&s1).await;
    let mut updates = vec![update(&id, 1, UpdateStep::Running, vec![])];
    for seq in 0..10u64 {
        updates.push(update(
            &id,
            seq + 2,
            UpdateStep::Output,
            vec![stdout(seq * 40, &[b'a' + seq as u8; 40])],
        ));
    }
    updates.push(update(
        &id,
        12,
        UpdateStep::Finished(InvocationState::Succeeded),
        vec![],
    ));
    f.engine.report(&s1, updates).await.expect("report");
    f.until(&command.id, "success", |c| c.is_finished()).await;
    let invocation = f
        .store
        .invocations(&org(), &command.id, None, 1)
        .expect("invocation")
        .remove(0);
    assert_eq!(invocation.stdout_bytes, 400);
    assert_eq!(invocation.head_bytes, 50);
    assert!(invocation.tail_bytes <= 50 && invocation.tail_bytes >= 40);
    assert_eq!(invocation.dropped_bytes(), 400 - 50 - invocation.tail_bytes);
    let kept: Vec<(u64, Vec<u8>)> = f
        .events(&command.id)
        .into_iter()
        .filter_map(|(_, e)| match e {
            CommandEvent::Output(o) => Some((o.offset, o.data)),
            CommandEvent::Invocation(_) => None,
        })
        .collect();
    assert_eq!(kept[0], (0, vec![b'a'; 40]), "the head");
    assert_eq!(kept[1], (40, vec![b'b'; 10]));
    assert_eq!(
        kept.last().map(|k| k.0),
        Some(360),
        "the newest output is the tail"
    );
    f.stop().await;
}

#[tokio::test]
async fn a_failed_commit_is_stored_later_and_acked_only_then() {
    let f = Fixture::new(&["a1"]).await;
    let (s1, _) = f.connect("a1", &[]).await;
    let command = f.send(new_command(&["a1"], RolloutPolicy::default())).await;
    let id = next_offer(&s1).await;
    f.store.fail(true);
    f.engine
        .report(&s1, vec![update(&id, 1, UpdateStep::Running, vec![])])
        .await
        .expect("report");
    let deadline = tokio::time::Instant::now() + WAIT;
    while f.metrics.command_commit_retries.get() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the commit was not retried"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        s1.next_command_message().is_none(),
        "nothing acked while not stored"
    );
    f.store.fail(false);
    assert_eq!(next_acks(&s1).await, [(id.clone(), 1)]);
    f.until(&command.id, "running", |c| c.counts.running == 1)
        .await;
    f.stop().await;
}

#[tokio::test]
async fn a_send_that_cannot_be_stored_is_withdrawn_and_an_idempotency_key_returns_the_first() {
    let f = Fixture::new(&["a1"]).await;
    let (s1, _) = f.connect("a1", &[]).await;
    f.store.fail(true);
    let err = f
        .engine
        .send(
            &caller(),
            new_command(&["a1"], RolloutPolicy::default()),
            audit,
        )
        .await
        .expect_err("not stored");
    assert!(matches!(err, ServerError::Internal(_)), "{err:?}");
    f.store.fail(false);
    assert_eq!(f.engine.n_active(), 0);
    assert!(s1.next_command_message().is_none(), "nothing was offered");

    let mut new = new_command(&["a1"], RolloutPolicy::default());
    new.idempotency_key = "deploy-1".into();
    let first = f
        .engine
        .send(&caller(), new.clone(), audit)
        .await
        .expect("send");
    let again = f.engine.send(&caller(), new, audit).await.expect("send");
    assert!(!first.existing && again.existing);
    assert_eq!(first.command.id, again.command.id);
    f.stop().await;
}

#[tokio::test]
async fn retention_deletes_finished_commands_with_everything_they_own() {
    let f = Fixture::new(&["a1"]).await;
    let mut new = new_command(&["a1"], RolloutPolicy::default());
    // Offline and not included: skipped at once, so the command is finished when sent.
    new.targets.include_offline = false;
    new.idempotency_key = "gone-soon".into();
    let command = f.send(new).await;
    f.until(&command.id, "the command to finish", |c| c.is_finished())
        .await;
    assert!(!f.events(&command.id).is_empty());
    let stop = CancellationToken::new();
    let retention = tokio::spawn(crate::command::retention::run(
        f.store.clone(),
        f.engine.writer.clone(),
        Duration::from_millis(1),
        Duration::from_millis(10),
        stop.clone(),
    ));
    let deadline = tokio::time::Instant::now() + WAIT;
    while Store::command(f.store.as_ref(), &org(), &command.id)
        .expect("read")
        .is_some()
    {
        assert!(tokio::time::Instant::now() < deadline, "not deleted");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(f.events(&command.id).is_empty());
    assert!(
        f.store
            .invocations(&org(), &command.id, None, 10)
            .expect("read")
            .is_empty()
    );
    assert_eq!(
        f.store
            .idempotent_command(&org(), "gone-soon", std::time::SystemTime::UNIX_EPOCH)
            .expect("read"),
        None
    );
    stop.cancel();
    retention.await.expect("retention task");
    f.stop().await;
}

#[tokio::test]
async fn the_per_org_and_per_agent_limits_refuse_a_send_and_store_nothing() {
    let f = Fixture::with(&["a1", "a2", "a3"], |settings| {
        settings.max_queued_per_agent = 1;
        settings.max_in_flight_per_org = 2;
    })
    .await;
    let exhausted = |result: Result<_, ServerError>| {
        assert!(
            matches!(result, Err(ServerError::ResourceExhausted(_))),
            "{result:?}"
        );
    };
    f.send(new_command(&["a1"], RolloutPolicy::default())).await;
    exhausted(
        f.engine
            .send(
                &caller(),
                new_command(&["a1"], RolloutPolicy::default()),
                audit,
            )
            .await,
    );
    f.send(new_command(&["a2"], RolloutPolicy::default())).await;
    exhausted(
        f.engine
            .send(
                &caller(),
                new_command(&["a3"], RolloutPolicy::default()),
                audit,
            )
            .await,
    );
    assert_eq!(f.engine.n_active(), 2);
    let stored = f
        .store
        .commands(
            &org(),
            &crate::command::record::CommandQuery {
                page_size: 10,
                ..Default::default()
            },
            100,
        )
        .expect("list");
    assert_eq!(
        stored.commands.len(),
        2,
        "nothing of the refused sends was stored"
    );
    f.stop().await;
}
