//! The agent's top level: start-up (load or obtain a credential), the sampler, and the
//! reconnect loop around sessions.
//!
//! [`run`] is what the binary and the tests drive; [`spawn`] runs it on a task and returns an
//! [`AgentHandle`]. The fleet simulator (`crate::simulate`) runs the same reconnect loop
//! (`hold_sessions`) and sampler (`sample_forever`) for each simulated agent; only
//! enrollment and the transport differ. The loop and its waits are `reconnect`; the sampler
//! is `sampler`.
//!
//! Identity flows live here too. Every process picks a random instance id (sent in `Hello`,
//! so the server tells a restart from two machines sharing one credential); a `--hardware-id`
//! override replaces the collector's. When the server refuses a session because another machine
//! holds the same credential, the agent logs what to do and retries only after a long pause: it
//! never exits for it.
//!
//! Error policy (`error.rs`, decided by [`after_refused_credential`] once the credential itself
//! is refused): an agent stops on its own only when the server revoked its credential (the agent
//! was deleted) and it has no enrollment token to enroll again with, when enrolling again is
//! refused, when its local configuration cannot work, or on shutdown. With a token, a revoked
//! agent discards its state and enrolls again, sending the old credential as its claim to the
//! old identity (the server grants it only if it is still valid); without one it stops, saying
//! which flag and command bring it back. Every other failure (an unreachable, busy or failing
//! server, a code the agent does not know, a credential the server does not know) waits
//! (`wait_to_retry`: backoff, at least the server's retry delay) and tries again, logging at
//! ERROR with what to do once it persists.

use std::sync::{Arc, Mutex, PoisonError};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, info_span, warn};

use crate::backoff::Backoff;
use crate::client::{self, EnrollCall, Transport};
use crate::collector::{AGENT_VERSION, Collector, Sample, SystemInfo};
use crate::command::Commands;
use crate::error::{Refused, after_refused_credential};
use crate::events::Events;
use crate::events::builtin;
use crate::events::socket::SocketListener;
use crate::session::Shared;
use crate::state::{Credential, Enrollment, StateDir};
use crate::{AgentConfig, AgentError, AgentStats};

/// The collector, shared between the sampler and the sessions (which need `SystemInfo`).
pub(crate) type SharedCollector = Arc<Mutex<Box<dyn Collector>>>;

/// A running agent, as returned by [`spawn`].
#[derive(Debug)]
pub struct AgentHandle {
    /// Live counters of the agent.
    pub stats: Arc<AgentStats>,
    /// Cancelled by [`AgentHandle::shutdown`]; the agent then says goodbye and stops.
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), AgentError>>,
}

// === impl AgentHandle ===

impl AgentHandle {
    /// Asks the agent to stop: it sends `Goodbye`, closes its stream and ends. Returns at once;
    /// use [`AgentHandle::join`] to wait.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Whether the agent task has ended.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Waits for the agent task to end and returns its result. A panic in the agent task is
    /// re-raised here.
    ///
    /// # Errors
    ///
    /// Whatever [`run`] returned, or [`AgentError::Task`] if the task was aborted.
    pub async fn join(self) -> Result<(), AgentError> {
        match self.task.await {
            Ok(result) => result,
            Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
            Err(err) => Err(AgentError::Task(err.to_string())),
        }
    }
}

/// Runs an agent on a new tokio task. Must be called from within a tokio runtime.
pub fn spawn(config: AgentConfig, collector: Box<dyn Collector>) -> AgentHandle {
    let stats = Arc::new(AgentStats::new());
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(run(config, collector, stats.clone(), shutdown.clone()));
    AgentHandle {
        stats,
        shutdown,
        task,
    }
}

/// Runs the agent until `shutdown` is cancelled or it must stop (see the error policy above).
///
/// Start-up: the credential comes from the state directory; without one, the agent enrolls with
/// `config.enroll_token` (retrying while the server is unreachable) and persists the result
/// before connecting. Then it holds one session at a time, reconnecting with backoff, and
/// enrolls again when the server refused its credential and it has a token.
///
/// # Errors
///
/// - [`AgentError::Config`] for an invalid configuration;
/// - [`AgentError::NotEnrolled`] when there is neither a stored credential nor a token;
/// - [`AgentError::StateIo`] / [`AgentError::StateCorrupt`] for state-directory trouble;
/// - [`AgentError::Revoked`] when the server revoked the agent and there is no enrollment token
///   (its message says how to bring the machine back);
/// - the enrollment's error when the enrollment token or request is refused (at the first
///   enrollment or a later one).
///
/// Nothing else ends it: an unreachable, failing or overloaded server is retried for as long
/// as it lasts (see `error.rs`).
///
/// # Cancellation
///
/// Cancelling `shutdown` is the way to stop the agent: it says goodbye to the server and
/// returns `Ok(())` within about two seconds. Dropping the future instead abandons the stream
/// without a goodbye.
pub async fn run(
    config: AgentConfig,
    collector: Box<dyn Collector>,
    stats: Arc<AgentStats>,
    shutdown: CancellationToken,
) -> Result<(), AgentError> {
    config.validate()?;
    let state = StateDir::open(&config.state_dir)?;
    let collector: SharedCollector = Arc::new(Mutex::new(with_hardware_id(
        collector,
        config.hardware_id.clone(),
    )));
    let instance_id = new_instance_id();

    let stored = state.load()?;
    let mut enrollment = match (stored, config.enroll_token.as_deref()) {
        (Some(enrollment), _) => enrollment,
        (None, Some(token)) => {
            match enroll_until_done(&config, token, None, &collector, &state, &shutdown).await? {
                Some(enrollment) => enrollment,
                None => return Ok(()),
            }
        }
        (None, None) => return Err(AgentError::NotEnrolled),
    };
    stats.set_agent_id(&enrollment.agent_id);
    info!(
        agent_id = %enrollment.agent_id,
        org_id = %enrollment.org_id,
        server = %config.server_url,
        instance_id,
        "agent starting"
    );

    let commands = Commands::open(&config.commands, state.path(), stats.clone())?;
    let events = Events::open(&config.events, state.path(), stats.clone())?;
    let socket = SocketListener::bind(
        &config.events_socket_path(),
        config.events.socket_group.as_deref(),
    )?;
    info!(socket = %socket.path().display(), "listening for events");
    events
        .record_logged(builtin::started(AGENT_VERSION, &instance_id))
        .await;
    let shared = Shared::new(config.buffer_capacity, stats.clone(), commands.clone())
        .with_events(events.clone());
    let transport = Transport::Dial {
        server_url: config.server_url.clone(),
        local_address: None,
        tls: config.tls.clone(),
    };
    let agent = Agent {
        transport: &transport,
        connect_timeout: config.connect_timeout,
        labels: &config.labels,
        collector: &collector,
        shared: &shared,
        shutdown: &shutdown,
        instance_id: &instance_id,
        conflict_backoff: config.identity_conflict_backoff,
    };
    // The sampler runs beside the sessions on this same task: it never ends by itself, and is
    // dropped when the reconnect loop returns.
    let sampler = sample_forever(&collector, &shared)
        .instrument(info_span!("sampler", agent_id = %enrollment.agent_id));
    let sessions = async {
        let mut backoff = Backoff::new(config.backoff.clone());
        let mut reenrolled = false;
        loop {
            let mut healthy = false;
            let end = hold_sessions(&agent, &enrollment, &mut backoff, &mut healthy).await;
            if healthy {
                reenrolled = false;
            }
            let (error, revoked) = match end {
                HoldEnd::Shutdown => {
                    info!("agent stopped");
                    return Ok(());
                }
                HoldEnd::Fatal(error) => return Err(error),
                HoldEnd::Revoked(error) => (error, true),
                HoldEnd::Unauthenticated(error) => (error, false),
            };
            let token = config.enroll_token.as_deref();
            let token = match after_refused_credential(revoked, token, reenrolled) {
                Refused::Stop => {
                    return Err(revoked_without_token(&enrollment, &state));
                }
                Refused::RetrySession => {
                    // Nothing to enroll with: the server may accept the credential again (its
                    // data restored), so keep trying.
                    if !wait_to_retry("the session", &error, &mut backoff, &shutdown).await {
                        info!("agent stopped");
                        return Ok(());
                    }
                    continue;
                }
                Refused::Enroll { token, wait_first } => {
                    // The credential just issued was refused before any healthy session: wait
                    // before asking for another, so that such a server is not asked in a loop.
                    if wait_first
                        && !wait_to_retry("the new credential", &error, &mut backoff, &shutdown)
                            .await
                    {
                        info!("agent stopped");
                        return Ok(());
                    }
                    token
                }
            };
            reenrolled = true;
            if revoked {
                state.discard()?;
                warn!(
                    agent_id = %enrollment.agent_id,
                    state_file = %state.file_path().display(),
                    "the server revoked this agent's credential (the agent was deleted or its \
                     credential replaced): discarded the revoked state; enrolling again with \
                     the enrollment token"
                );
            } else {
                warn!(
                    agent_id = %enrollment.agent_id,
                    "the server does not know this agent's credential; enrolling again with the \
                     enrollment token"
                );
            }
            let previous = enrollment.credential.clone();
            match enroll_until_done(
                &config,
                token,
                Some(&previous),
                &collector,
                &state,
                &shutdown,
            )
            .await?
            {
                Some(fresh) => {
                    if fresh.agent_id == enrollment.agent_id {
                        info!(agent_id = %fresh.agent_id, "enrolled again as the same agent");
                    } else {
                        warn!(
                            previous_agent_id = %enrollment.agent_id,
                            agent_id = %fresh.agent_id,
                            "enrolled again as a new agent"
                        );
                    }
                    enrollment = fresh;
                    stats.set_agent_id(&enrollment.agent_id);
                }
                None => return Ok(()),
            }
        }
    };
    // The socket and the rate limit's reports, beside the sessions on this task too.
    let socket_server = crate::events::socket::serve(socket, events.clone());
    let rate_reports = events.report_rate_limits();
    let result = tokio::select! {
        result = sessions => result,
        never = sampler => match never {},
        never = socket_server => match never {},
        never = rate_reports => match never {},
    };
    // Recorded here if no session said goodbye with it: it is sent at the next start.
    let reason = match &result {
        Ok(()) => "shutdown".to_owned(),
        Err(error) => error.to_string(),
    };
    events.stopping(&reason).await;
    events.close().await;
    // Whatever ended the agent (shutdown, revocation, a fatal error), no command outlives it:
    // running process groups are killed and will be reported AGENT_RESTARTED by the next
    // start (their accept is journaled, their end is not).
    commands.stop().await;
    result
}

/// The error an agent without an enrollment token stops with when the server revoked its
/// credential, saying exactly how to bring the machine back (which flag, which command).
fn revoked_without_token(enrollment: &Enrollment, state: &StateDir) -> AgentError {
    let message = format!(
        "agent {} was deleted on the server (or its credential replaced), so the credential in \
         {} no longer works. To enroll this machine again, restart tether-agent with \
         --enroll-token TOKEN (or TETHER_ENROLL_TOKEN=TOKEN); an admin creates a token with \
         `tetherctl enroll-token create`. The agent then discards the old state and enrolls as \
         a new agent.",
        enrollment.agent_id,
        state.file_path().display()
    );
    error!("{message}");
    AgentError::Revoked(message)
}

/// A random id for this agent process (see `Hello.instance_id`).
fn new_instance_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// `collector`, reporting `hardware_id` instead of its own when one is given.
fn with_hardware_id(
    collector: Box<dyn Collector>,
    hardware_id: Option<String>,
) -> Box<dyn Collector> {
    match hardware_id {
        Some(hardware_id) => Box::new(HardwareIdOverride {
            inner: collector,
            hardware_id,
        }),
        None => collector,
    }
}

/// A collector whose `SystemInfo` names a configured hardware id (`--hardware-id`).
struct HardwareIdOverride {
    inner: Box<dyn Collector>,
    hardware_id: String,
}

impl Collector for HardwareIdOverride {
    fn blocks(&self) -> bool {
        self.inner.blocks()
    }

    fn system_info(&mut self) -> SystemInfo {
        SystemInfo {
            hardware_id: self.hardware_id.clone(),
            ..self.inner.system_info()
        }
    }

    fn sample(&mut self) -> Sample {
        self.inner.sample()
    }
}

/// Enrolls, retrying retryable failures with backoff (at least as long as the server asks),
/// and persists the result. `previous` is the credential the agent held before, sent as its
/// claim to that identity. Returns `None` if `shutdown` fires first.
async fn enroll_until_done(
    config: &AgentConfig,
    token: &str,
    previous: Option<&Credential>,
    collector: &SharedCollector,
    state: &StateDir,
    shutdown: &CancellationToken,
) -> Result<Option<Enrollment>, AgentError> {
    let mut backoff = Backoff::new(config.backoff.clone());
    loop {
        let info = system_info(collector).await?;
        let call = EnrollCall {
            enroll_token: token,
            info: &info,
            labels: &config.labels,
            name: config.name.as_deref(),
            previous,
        };
        let attempt = tokio::select! {
            () = shutdown.cancelled() => return Ok(None),
            attempt = client::enroll_with_timeout(
                &config.server_url,
                config.tls.as_ref(),
                config.connect_timeout,
                &call,
            ) => attempt,
        };
        match attempt {
            Ok(enrollment) => {
                state.save(&enrollment)?;
                info!(
                    agent_id = %enrollment.agent_id,
                    org_id = %enrollment.org_id,
                    "enrolled"
                );
                return Ok(Some(enrollment));
            }
            Err(error) if error.is_retryable_enrollment() => {
                if !wait_to_retry("enrollment", &error, &mut backoff, shutdown).await {
                    return Ok(None);
                }
            }
            Err(error) => return Err(error),
        }
    }
}

/// Asks the collector for the machine's description on a blocking thread.
async fn system_info(collector: &SharedCollector) -> Result<SystemInfo, AgentError> {
    let collector = collector.clone();
    tokio::task::spawn_blocking(move || {
        collector
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .system_info()
    })
    .await
    .map_err(|err| AgentError::Task(format!("collector failed: {err}")))
}

mod reconnect;
mod sampler;

pub(crate) use reconnect::{Agent, HoldEnd, hold_sessions, wait_to_retry};
pub(crate) use sampler::sample_forever;
