//! The engine without sockets: a real store, the real writer task and registry, sessions opened
//! in the registry and read through their outboxes. Each test states one promise.
//!
//! This file holds the fixture the promises share; they live in `tests/` by what they are
//! about: `lifecycle.rs`, `recovery.rs` and `limits.rs`.

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
        let (writer, queues) = crate::writer::channel(dyn_store.clone(), &metrics, 64, 64, 64, 64);
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

mod lifecycle;
mod limits;
mod recovery;
