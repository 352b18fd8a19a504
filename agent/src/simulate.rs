//! The fleet simulator behind `tether-agent simulate`: many agents in one process, each a real
//! agent session on the real protocol.
//!
//! Every simulated agent runs the same reconnect loop (`runner::hold_sessions`), session code
//! (`Hello`, `Welcome`, metrics with seq at the server's interval, pings at its heartbeat
//! interval, acks, resend of unacknowledged samples, backoff) and sampler
//! (`runner::sample_forever`) as `tether-agent run`; only three things differ:
//!
//! - the machine is a [`SyntheticCollector`] (distinct hostname, hardware id, OS and labels per
//!   agent index, chosen deterministically from `--label-mix` / `--os-mix`);
//! - enrollment happens once per agent up front, over a few shared connections, and is kept in
//!   one JSON-lines `--state-file` instead of a state directory per agent, so reruns reuse ids
//!   and credentials;
//! - with `--connections M < N`, sessions are HTTP/2 streams multiplexed over M shared channels
//!   (`Transport::Shared`); with M = N each session dials its own connection like a real agent,
//!   from one of the `--source-addrs`.
//!
//! Memory: one task per agent (the sampler runs inside it), one outbound queue per live session,
//! and the agent's small `session::Shared` state. No per-agent thread, no per-agent timer task.
//! Commands: each simulated agent runs the offers [`SimulateConfig::commands`] allows (by
//! default the built-ins, e.g. `noop`) through the real command subsystem, with an in-memory
//! journal (not durable: a file fsync'd per simulated agent would measure the disk, not the
//! server). An idle agent's command state is about 700 bytes; an invocation costs memory while
//! it runs and until its end is acked, plus a journal entry of about 200 bytes (at most 16 per
//! agent).
//!
//! Events: with `--events-per-minute N`, each simulated agent reports N events a minute (a mix
//! of kinds and severities, `simulate/events.rs`) through the real session, from an in-memory
//! queue (`events::memory`; not durable, like the command journal). The stats records count the
//! events offered, acknowledged, rejected and dropped, and the time from writing a report to
//! the ack covering it, per event. Without the flag an agent has no event subsystem at all.
//!
//! Output: progress while enrolling and ramping, then one stats record per `--stats-interval`,
//! as text or JSON lines on stdout (and always as JSON lines in `--stats-file`). The fleet
//! benchmark parses the JSON form; each record also carries the Unix milliseconds at which
//! command offers arrived since the previous one, from which the benchmark derives the time
//! from `SendCommand` until each agent has its offer.
//!
//! Layout: `config` holds [`SimulateConfig`], the flag parsers and each agent's identity;
//! `enroll` the state file and the up-front enrollment; `events` the agents' events; `report`
//! the progress and stats records; this module the ramp, the per-agent task and the stop.

mod config;
mod enroll;
mod events;
mod report;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, debug, info_span, warn};

use crate::backoff::Backoff;
use crate::client::{self, Transport};
use crate::command::{CommandPolicy, Commands};
use crate::error::{Refused, SimulateError, after_refused_credential, error_chain};
use crate::events::Events;
use crate::latency::{ArrivalLog, LatencyHistogram, LatencySnapshot};
use crate::runner::{self, Agent, HoldEnd, SharedCollector};
use crate::session::Shared;
use crate::state::Enrollment;
use crate::{AgentStats, SyntheticCollector};

pub use config::{
    DEFAULT_ENROLL_CONCURRENCY, DEFAULT_STATS_INTERVAL, SimulateConfig, parse_label_mix,
    parse_source_addrs,
};
pub use report::self_rss_kib;

use config::source_addr;
use enroll::{append_state, enroll_all};
use report::{Reporter, Totals, unix_ms};

/// How long stopping waits for the agents' goodbyes.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Runs the simulation until `shutdown` is cancelled or `config.duration` elapses, then stops
/// every agent (each says goodbye) and prints the final stats.
///
/// # Errors
///
/// An invalid configuration, an unreadable state or stats file, or enrollment that cannot
/// succeed (no token, token refused).
pub async fn simulate(
    config: SimulateConfig,
    shutdown: CancellationToken,
) -> Result<(), SimulateError> {
    config.validate()?;
    let config = Arc::new(config);
    let reporter = Arc::new(Reporter::new(&config)?);

    let enrollments = enroll_all(&config, &reporter, &shutdown).await?;
    let Some(enrollments) = enrollments else {
        return Ok(());
    };

    // Shared channels (multiplexed mode); lazily connected on their first stream.
    let channels: Vec<tonic::transport::Channel> = if config.uses_shared_connections() {
        (0..config.n_connections)
            .map(|conn_idx| {
                let local = source_addr(&config, conn_idx);
                client::endpoint(&config.server_url, local, config.connect_timeout)
                    .map(|endpoint| endpoint.connect_lazy())
            })
            .collect::<Result<_, _>>()?
    } else {
        Vec::new()
    };

    // One compiled policy for every simulated agent; each has its own in-memory journal.
    let policy = Arc::new(CommandPolicy::new(&config.commands)?);
    let histogram = Arc::new(LatencyHistogram::new());
    let event_histogram = Arc::new(LatencyHistogram::new());
    let arrivals = Arc::new(ArrivalLog::new());
    let agents_token = CancellationToken::new();
    let mut agents: Vec<Arc<Shared>> = Vec::with_capacity(config.n_agents);
    let mut tasks = tokio::task::JoinSet::new();
    let n_units = config.n_connections.min(config.n_agents);
    let started = Instant::now();
    let deadline = config.duration.map(|d| tokio::time::Instant::now() + d);
    let mut next_report = tokio::time::Instant::now() + config.stats_interval;
    let mut ready_at: Option<Instant> = None;
    let mut silenced = false;
    let mut last_snapshot = LatencySnapshot::empty();
    let mut last_event_snapshot = LatencySnapshot::empty();
    // Agents whose task ended while the simulation ran (revoked or misconfigured).
    let mut n_stopped = 0_u64;

    // Ramp: unit `u` is a connection; in multiplexed mode it carries agents u, u+M, u+2M, …
    let mut unit = 0;
    let mut stopping = false;
    loop {
        if unit < n_units {
            let due = if config.ramp > 0.0 {
                ((started.elapsed().as_secs_f64() * config.ramp) as usize + 1).min(n_units)
            } else {
                n_units
            };
            while unit < due {
                let transport_for = |index: usize| {
                    if config.uses_shared_connections() {
                        Transport::Shared(channels[index % config.n_connections].clone())
                    } else {
                        Transport::Dial {
                            server_url: config.server_url.clone(),
                            local_address: source_addr(&config, index),
                            tls: None,
                        }
                    }
                };
                let mut index = unit;
                while index < config.n_agents {
                    let shared = Arc::new({
                        let stats = Arc::new(AgentStats::new());
                        let commands =
                            Commands::in_memory(policy.clone(), &config.commands, stats.clone());
                        let mut shared =
                            Shared::new(config.buffer_capacity, stats.clone(), commands);
                        if config.events_per_minute > 0.0 {
                            shared = shared
                                .with_events(Events::in_memory(events::QUEUE_CAPACITY, stats));
                            shared.event_ack_latency = Some(event_histogram.clone());
                        }
                        shared.ack_latency = Some(histogram.clone());
                        shared.offer_arrivals = Some(arrivals.clone());
                        shared
                    });
                    agents.push(shared.clone());
                    tasks.spawn(run_agent(
                        config.clone(),
                        index,
                        enrollments[index].clone(),
                        transport_for(index),
                        shared,
                        agents_token.clone(),
                    ));
                    if !config.uses_shared_connections() {
                        break;
                    }
                    index += config.n_connections;
                }
                unit += 1;
            }
        }

        let now = tokio::time::Instant::now();
        if now >= next_report {
            next_report += config.stats_interval;
            let totals = Totals::sum(&agents, n_stopped);
            let snapshot = histogram.snapshot();
            let interval = snapshot.since(&last_snapshot);
            last_snapshot = snapshot.clone();
            let event_snapshot = event_histogram.snapshot();
            let event_interval = event_snapshot.since(&last_event_snapshot);
            last_event_snapshot = event_snapshot;
            if ready_at.is_none() && totals.online as usize == config.n_agents {
                ready_at = Some(Instant::now());
                reporter.event(
                    "ready",
                    json!({ "agents": config.n_agents, "ramp_secs": started.elapsed().as_secs_f64() }),
                    &format!(
                        "all {} agents online after {:.1} s",
                        config.n_agents,
                        started.elapsed().as_secs_f64()
                    ),
                );
            }
            if ready_at.is_none() {
                reporter.event(
                    "ramp",
                    json!({
                        "online": totals.online,
                        "started": agents.len(),
                        "target": config.n_agents,
                        "errors": totals.failures,
                    }),
                    &format!(
                        "ramping: {} online, {} started / {} target, {} errors",
                        totals.online,
                        agents.len(),
                        config.n_agents,
                        totals.failures
                    ),
                );
            }
            reporter.stats(&totals, &interval, &snapshot, &event_interval, &arrivals);
        }

        if let (Some(ready), Some(after), false) = (ready_at, config.silent_after, silenced)
            && ready.elapsed() >= after
        {
            silenced = true;
            let count = config
                .silent_count
                .unwrap_or(config.n_agents)
                .min(agents.len());
            // Agents are pushed in ramp order; mute by agent index so the choice is stable.
            let mut muted = 0;
            for shared in &agents {
                if muted == count {
                    break;
                }
                shared.muted.store(true, Ordering::Relaxed);
                muted += 1;
            }
            reporter.event(
                "silenced",
                json!({ "agents": muted, "unix_ms": unix_ms(SystemTime::now()) }),
                &format!("{muted} agents went silent"),
            );
        }

        if stopping {
            break;
        }
        let tick = tokio::time::sleep(Duration::from_millis(if unit < n_units { 20 } else { 100 }));
        tokio::select! {
            () = shutdown.cancelled() => stopping = true,
            () = async {
                match deadline {
                    Some(deadline) => tokio::time::sleep_until(deadline).await,
                    None => std::future::pending().await,
                }
            } => stopping = true,
            Some(joined) = tasks.join_next() => {
                if let Err(err) = joined
                    && err.is_panic()
                {
                    std::panic::resume_unwind(err.into_panic());
                }
                // Before the stop, an agent task ends only when its agent gave up for good.
                n_stopped += 1;
            }
            () = tick => {}
        }
    }

    // Stop: every agent says goodbye; wait a bounded time.
    agents_token.cancel();
    let drained = tokio::time::timeout(STOP_GRACE, async {
        while let Some(joined) = tasks.join_next().await {
            if let Err(err) = joined
                && err.is_panic()
            {
                std::panic::resume_unwind(err.into_panic());
            }
        }
    })
    .await;
    if drained.is_err() {
        warn!("some agents did not stop within {STOP_GRACE:?}");
        tasks.abort_all();
    }
    let totals = Totals::sum(&agents, n_stopped);
    let snapshot = histogram.snapshot();
    reporter.stats(
        &totals,
        &snapshot.since(&last_snapshot),
        &snapshot,
        &event_histogram.snapshot().since(&last_event_snapshot),
        &arrivals,
    );
    reporter.event("stopped", json!({}), "simulator stopped");
    Ok(())
}

/// One simulated agent: the real reconnect loop and sampler, on one task.
async fn run_agent(
    config: Arc<SimulateConfig>,
    index: usize,
    mut enrollment: Enrollment,
    transport: Transport,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    let identity = config.identity(index);
    let collector: SharedCollector = Arc::new(Mutex::new(Box::new(SyntheticCollector::new(
        identity.hostname.clone(),
        identity.hardware_id,
        identity.os,
    ))));
    shared.stats.set_agent_id(&enrollment.agent_id);
    let instance_id = format!("{:016x}", rand::random::<u64>());
    let agent = Agent {
        transport: &transport,
        connect_timeout: config.connect_timeout,
        labels: &identity.labels,
        collector: &collector,
        shared: &shared,
        shutdown: &shutdown,
        instance_id: &instance_id,
        conflict_backoff: crate::DEFAULT_IDENTITY_CONFLICT_BACKOFF,
    };
    let sampler = runner::sample_forever(&collector, &shared);
    let emitter = async {
        match &shared.events {
            Some(events) => {
                match events::emit_forever(events, config.events_per_minute, index).await {}
            }
            None => std::future::pending().await,
        }
    };
    let sessions = async {
        let mut backoff = Backoff::new(config.backoff.clone());
        let mut reenrolled = false;
        loop {
            let mut healthy = false;
            let end = runner::hold_sessions(&agent, &enrollment, &mut backoff, &mut healthy).await;
            if healthy {
                reenrolled = false;
            }
            let (error, revoked) = match end {
                HoldEnd::Shutdown => return,
                HoldEnd::Fatal(error) => {
                    // A configuration that cannot work.
                    warn!(hostname = %identity.hostname, "simulated agent stopped: {error}");
                    return;
                }
                HoldEnd::Revoked(error) => (error, true),
                HoldEnd::Unauthenticated(error) => (error, false),
            };
            let token = config.enroll_token.as_deref();
            let token = match after_refused_credential(revoked, token, reenrolled) {
                Refused::Stop => {
                    warn!(hostname = %identity.hostname, "simulated agent stopped: {error}");
                    return;
                }
                Refused::RetrySession => {
                    if !runner::wait_to_retry("the session", &error, &mut backoff, &shutdown).await
                    {
                        return;
                    }
                    continue;
                }
                Refused::Enroll { token, wait_first } => {
                    let wait = runner::wait_to_retry(
                        "the new credential",
                        &error,
                        &mut backoff,
                        &shutdown,
                    );
                    if wait_first && !wait.await {
                        return;
                    }
                    token
                }
            };
            let info = lock(&collector).system_info();
            let attempt = async {
                let client = transport.client(config.connect_timeout).await?;
                let call = client::EnrollCall {
                    enroll_token: token,
                    info: &info,
                    labels: &identity.labels,
                    name: None,
                    previous: Some(&enrollment.credential),
                };
                client::enroll_on(client, &call).await
            };
            match attempt.await {
                Ok(fresh) => {
                    reenrolled = true;
                    debug!(hostname = %identity.hostname, "enrolled again");
                    shared.stats.set_agent_id(&fresh.agent_id);
                    if let Some(path) = &config.state_file
                        && let Err(err) = append_state(path, &identity.hostname, &fresh)
                    {
                        warn!("failed to record the new enrollment: {}", error_chain(&err));
                    }
                    enrollment = fresh;
                }
                Err(error) if error.is_retryable_enrollment() => {
                    if !runner::wait_to_retry("enrollment", &error, &mut backoff, &shutdown).await {
                        return;
                    }
                }
                Err(error) => {
                    warn!(hostname = %identity.hostname, "re-enrollment refused: {error}");
                    return;
                }
            }
        }
    };
    let span = info_span!("sim", index);
    async {
        tokio::select! {
            () = sessions => {}
            never = sampler => match never {},
            never = emitter => match never {},
        }
        shared.commands.stop().await;
    }
    .instrument(span)
    .await;
}

/// Locks `mutex`, ignoring poisoning: a panicking task is re-raised where it is joined, and
/// the values behind these locks (results, a file, a collector) stay usable.
fn lock<T: ?Sized>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A failed file operation, naming the file.
fn file_error(action: &'static str, path: &Path, source: std::io::Error) -> SimulateError {
    SimulateError::File {
        action,
        path: path.to_owned(),
        source,
    }
}
