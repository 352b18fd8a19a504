//! The fleet simulator behind `tether-agent simulate`: many agents in one process, each a real
//! agent session on the real protocol.
//!
//! Every simulated agent runs the same reconnect loop ([`runner::hold_sessions`]), session code
//! (`Hello`, `Welcome`, metrics with seq at the server's interval, pings at its heartbeat
//! interval, acks, resend of unacknowledged samples, backoff) and sampler
//! ([`runner::sample_forever`]) as `tether-agent run`; only three things differ:
//!
//! - the machine is a [`SyntheticCollector`] (distinct hostname, hardware id, OS and labels per
//!   agent index, chosen deterministically from `--label-mix` / `--os-mix`);
//! - enrollment happens once per agent up front, over a few shared connections, and is kept in
//!   one JSON-lines `--state-file` instead of a state directory per agent, so reruns reuse ids
//!   and credentials;
//! - with `--connections M < N`, sessions are HTTP/2 streams multiplexed over M shared channels
//!   ([`Transport::Shared`]); with M = N each session dials its own connection like a real agent,
//!   from one of the `--source-addrs`.
//!
//! Memory: one task per agent (the sampler runs inside it), one outbound queue per live session,
//! and the agent's small [`Shared`] state. No per-agent thread, no per-agent timer task.
//!
//! Output: progress while enrolling and ramping, then one stats record per `--stats-interval`,
//! as text or JSON lines on stdout (and always as JSON lines in `--stats-file`). The fleet
//! benchmark parses the JSON form.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, debug, info_span, warn};

use crate::backoff::Backoff;
use crate::client::{self, Transport};
use crate::collector::Collector;
use crate::error::{SimulateError, error_chain};
use crate::latency::{LatencyHistogram, LatencySnapshot};
use crate::runner::{self, Agent, HoldEnd, SharedCollector};
use crate::session::Shared;
use crate::state::{Credential, Enrollment};
use crate::{AgentStats, BackoffConfig, DEFAULT_BUFFER_CAPACITY, SyntheticCollector};

/// Default enrollments in flight at once.
pub const DEFAULT_ENROLL_CONCURRENCY: usize = 32;
/// Default period of the stats records.
pub const DEFAULT_STATS_INTERVAL: Duration = Duration::from_secs(1);
/// How long stopping waits for the agents' goodbyes.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Connections the enrollment phase uses.
const ENROLL_CONNECTIONS: usize = 4;

/// Everything the simulator needs. Intervals are deliberately absent: the server's `Welcome`
/// decides them, as for a real agent.
#[derive(Debug, Clone)]
pub struct SimulateConfig {
    /// Server address, e.g. `http://127.0.0.1:7600`.
    pub server_url: String,
    /// Number of simulated agents.
    pub n_agents: usize,
    /// Number of connections carrying them; `n_agents` (or more) means one connection each.
    pub n_connections: usize,
    /// Local addresses the connections are spread over (empty: the kernel chooses).
    pub source_addrs: Vec<IpAddr>,
    /// Connections opened per second while ramping; 0 means all at once.
    pub ramp: f64,
    /// Enrollment token for agents not in the state file.
    pub enroll_token: Option<String>,
    /// JSON-lines file of enrollments, read at start and appended to.
    pub state_file: Option<PathBuf>,
    /// Label keys with their values; agent `i` gets one value per key, by index.
    pub label_mix: Vec<(String, Vec<String>)>,
    /// OS names, assigned by index.
    pub os_mix: Vec<String>,
    /// Hostnames are `{name_prefix}-{index:06}`.
    pub name_prefix: String,
    /// After all agents are online once, wait this long, then mute `silent_count` agents: they
    /// keep their streams open but send nothing, like a hung machine.
    pub silent_after: Option<Duration>,
    /// How many agents (the first ones by index) go silent; `None` means all of them.
    pub silent_count: Option<usize>,
    /// Period of the stats records.
    pub stats_interval: Duration,
    /// Print JSON lines on stdout instead of text.
    pub json: bool,
    /// Also append JSON lines here.
    pub stats_file: Option<PathBuf>,
    /// Stop after this long (after the ramp started); `None` runs until shutdown.
    pub duration: Option<Duration>,
    /// Per-agent sample buffer capacity.
    pub buffer_capacity: usize,
    /// Time allowed to connect and to receive `Welcome`.
    pub connect_timeout: Duration,
    /// Reconnect backoff.
    pub backoff: BackoffConfig,
    /// Enrollments in flight at once.
    pub enroll_concurrency: usize,
}

/// One line of the state file.
#[derive(Serialize, Deserialize)]
struct StateLine {
    hostname: String,
    agent_id: String,
    org_id: String,
    credential: Credential,
}

/// The identity of simulated agent `index`.
struct Identity {
    hostname: String,
    hardware_id: String,
    os: String,
    labels: BTreeMap<String, String>,
}

/// Writes progress and stats records.
struct Reporter {
    json: bool,
    file: Option<Mutex<File>>,
    started: Instant,
}

/// Sums over all agents at one instant.
#[derive(Debug, Default, Clone, Copy)]
struct Totals {
    online: u64,
    sessions: u64,
    failures: u64,
    samples_sent: u64,
    samples_acked: u64,
    messages_sent: u64,
    buffered: u64,
    dropped: u64,
}

// === impl SimulateConfig ===

impl SimulateConfig {
    /// A configuration for `n_agents` on one connection each, everything else at defaults.
    pub fn new(server_url: impl Into<String>, n_agents: usize) -> Self {
        Self {
            server_url: server_url.into(),
            n_agents,
            n_connections: n_agents,
            source_addrs: Vec::new(),
            ramp: 0.0,
            enroll_token: None,
            state_file: None,
            label_mix: Vec::new(),
            os_mix: vec!["linux".to_owned()],
            name_prefix: "sim".to_owned(),
            silent_after: None,
            silent_count: None,
            stats_interval: DEFAULT_STATS_INTERVAL,
            json: false,
            stats_file: None,
            duration: None,
            buffer_capacity: DEFAULT_BUFFER_CAPACITY,
            connect_timeout: Duration::from_secs(30),
            backoff: BackoffConfig::default(),
            enroll_concurrency: DEFAULT_ENROLL_CONCURRENCY,
        }
    }

    fn validate(&self) -> Result<(), SimulateError> {
        let invalid = |message: &str| Err(SimulateError::Config(message.to_owned()));
        if self.n_agents == 0 {
            return invalid("--agents must be at least 1");
        }
        if self.n_connections == 0 {
            return invalid("--connections must be at least 1");
        }
        if !(self.ramp.is_finite() && self.ramp >= 0.0) {
            return invalid("--ramp must be a non-negative number of connections per second");
        }
        if self.os_mix.is_empty() {
            return invalid("--os-mix must name at least one OS");
        }
        if self.enroll_concurrency == 0 {
            return invalid("--enroll-concurrency must be at least 1");
        }
        if self.stats_interval.is_zero() {
            return invalid("--stats-interval must not be zero");
        }
        self.backoff.validate()?;
        Ok(())
    }

    fn identity(&self, index: usize) -> Identity {
        let mut stride = 1;
        let mut labels = BTreeMap::new();
        for (key, values) in &self.label_mix {
            if values.is_empty() {
                continue;
            }
            labels.insert(key.clone(), values[(index / stride) % values.len()].clone());
            stride *= values.len();
        }
        let os = self.os_mix[(index / stride) % self.os_mix.len()].clone();
        let hostname = format!("{}-{index:06}", self.name_prefix);
        Identity {
            hardware_id: format!("hw-{hostname}"),
            hostname,
            os,
            labels,
        }
    }

    fn uses_shared_connections(&self) -> bool {
        self.n_connections < self.n_agents
    }
}

/// Parses `127.0.0.2-127.0.0.40,127.0.1.1`: IPv4 ranges (last octet varies) and single
/// addresses, comma separated.
///
/// # Errors
///
/// A message naming the malformed part.
pub fn parse_source_addrs(raw: &str) -> Result<Vec<IpAddr>, String> {
    let mut addrs = Vec::new();
    for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Some((from, to)) = part.split_once('-') {
            let from: std::net::Ipv4Addr = from
                .parse()
                .map_err(|e| format!("source address {from:?}: {e}"))?;
            let to: std::net::Ipv4Addr = to
                .parse()
                .map_err(|e| format!("source address {to:?}: {e}"))?;
            let (from, to) = (u32::from(from), u32::from(to));
            if to < from || to - from > 65_535 {
                return Err(format!(
                    "source address range {part:?} is empty or too large"
                ));
            }
            addrs.extend((from..=to).map(|a| IpAddr::V4(a.into())));
        } else {
            addrs.push(
                part.parse()
                    .map_err(|e| format!("source address {part:?}: {e}"))?,
            );
        }
    }
    Ok(addrs)
}

/// Parses `env=prod|staging|dev,region=eu|us|ap`.
///
/// # Errors
///
/// A message naming the malformed part.
pub fn parse_label_mix(raw: &str) -> Result<Vec<(String, Vec<String>)>, String> {
    raw.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|part| {
            let (key, values) = part
                .split_once('=')
                .ok_or_else(|| format!("label mix {part:?} must look like key=v1|v2"))?;
            let values: Vec<String> = values.split('|').map(str::to_owned).collect();
            if key.is_empty() || values.iter().any(String::is_empty) {
                return Err(format!("label mix {part:?} has an empty key or value"));
            }
            Ok((key.to_owned(), values))
        })
        .collect()
}

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

    let histogram = Arc::new(LatencyHistogram::new());
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
                        let mut shared =
                            Shared::new(config.buffer_capacity, Arc::new(AgentStats::new()));
                        shared.ack_latency = Some(histogram.clone());
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
            let totals = Totals::sum(&agents);
            let snapshot = histogram.snapshot();
            let interval = snapshot.since(&last_snapshot);
            last_snapshot = snapshot.clone();
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
            reporter.stats(&totals, &interval, &snapshot);
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
    let totals = Totals::sum(&agents);
    let snapshot = histogram.snapshot();
    reporter.stats(&totals, &snapshot.since(&last_snapshot), &snapshot);
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
    let agent = Agent {
        transport: &transport,
        connect_timeout: config.connect_timeout,
        labels: &identity.labels,
        collector: &collector,
        shared: &shared,
        shutdown: &shutdown,
    };
    let sampler = runner::sample_forever(&collector, &shared);
    let sessions = async {
        let mut backoff = Backoff::new(config.backoff.clone());
        let mut reenrolled = false;
        loop {
            let mut healthy = false;
            match runner::hold_sessions(&agent, &enrollment, &mut backoff, &mut healthy).await {
                HoldEnd::Shutdown => return,
                HoldEnd::Fatal(error) => {
                    warn!(hostname = %identity.hostname, "simulated agent stopped: {error}");
                    return;
                }
                HoldEnd::Unauthenticated(error) => {
                    let token = config.enroll_token.as_deref();
                    let (Some(token), false) = (token, reenrolled && !healthy) else {
                        warn!(hostname = %identity.hostname, "simulated agent rejected: {error}");
                        return;
                    };
                    reenrolled = true;
                    let info = lock(&collector).system_info();
                    let attempt = async {
                        let client = transport.client(config.connect_timeout).await?;
                        client::enroll_on(client, token, &info, &identity.labels, None).await
                    };
                    match attempt.await {
                        Ok(fresh) => {
                            debug!(hostname = %identity.hostname, "enrolled again");
                            shared.stats.set_agent_id(&fresh.agent_id);
                            if let Some(path) = &config.state_file
                                && let Err(err) = append_state(path, &identity.hostname, &fresh)
                            {
                                warn!("failed to record the new enrollment: {}", error_chain(&err));
                            }
                            enrollment = fresh;
                        }
                        Err(error) => {
                            warn!(hostname = %identity.hostname, "re-enrollment failed: {error}");
                            return;
                        }
                    }
                }
            }
        }
    };
    let span = info_span!("sim", index);
    async {
        tokio::select! {
            () = sessions => {}
            never = sampler => match never {},
        }
    }
    .instrument(span)
    .await;
}

/// Loads the state file and enrolls every agent missing from it. `None` when `shutdown` fired.
async fn enroll_all(
    config: &Arc<SimulateConfig>,
    reporter: &Arc<Reporter>,
    shutdown: &CancellationToken,
) -> Result<Option<Vec<Enrollment>>, SimulateError> {
    let known = match &config.state_file {
        Some(path) => load_state(path)?,
        None => HashMap::new(),
    };
    let mut slots: Vec<Option<Enrollment>> = (0..config.n_agents)
        .map(|index| known.get(&config.identity(index).hostname).cloned())
        .collect();
    let missing: Vec<usize> = (0..config.n_agents)
        .filter(|index| slots[*index].is_none())
        .collect();
    if missing.is_empty() {
        reporter.event(
            "enrolled",
            json!({ "reused": config.n_agents, "enrolled": 0 }),
            &format!(
                "reusing {} enrollments from the state file",
                config.n_agents
            ),
        );
        return Ok(Some(slots.into_iter().flatten().collect()));
    }
    let Some(token) = config.enroll_token.clone() else {
        return Err(SimulateError::NoEnrollToken(missing.len()));
    };
    let started = Instant::now();
    let channels: Vec<tonic::transport::Channel> = (0..ENROLL_CONNECTIONS)
        .map(|_| {
            client::endpoint(&config.server_url, None, config.connect_timeout)
                .map(|endpoint| endpoint.connect_lazy())
        })
        .collect::<Result<_, _>>()?;
    let missing = Arc::new(missing);
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let results = Arc::new(Mutex::new(Vec::new()));
    let fatal: Arc<Mutex<Option<crate::AgentError>>> = Arc::new(Mutex::new(None));
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..config.enroll_concurrency {
        let (config, missing, next, done, results, fatal, token) = (
            config.clone(),
            missing.clone(),
            next.clone(),
            done.clone(),
            results.clone(),
            fatal.clone(),
            token.clone(),
        );
        let channel = channels[worker % channels.len()].clone();
        workers.spawn(async move {
            let mut backoff = Backoff::new(config.backoff.clone());
            loop {
                let slot = next.fetch_add(1, Ordering::Relaxed);
                let Some(&index) = missing.get(slot) else {
                    return;
                };
                let identity = config.identity(index);
                let info = SyntheticCollector::new(
                    identity.hostname.clone(),
                    identity.hardware_id.clone(),
                    identity.os.clone(),
                )
                .system_info();
                loop {
                    if lock(&fatal).is_some() {
                        return;
                    }
                    let client = Transport::Shared(channel.clone())
                        .client(config.connect_timeout)
                        .await;
                    let attempt = match client {
                        Ok(client) => {
                            client::enroll_on(client, &token, &info, &identity.labels, None).await
                        }
                        Err(error) => Err(error),
                    };
                    match attempt {
                        Ok(enrollment) => {
                            if let Some(path) = &config.state_file
                                && let Err(err) =
                                    append_state(path, &identity.hostname, &enrollment)
                            {
                                *lock(&fatal) = Some(crate::AgentError::Config(format!(
                                    "cannot write the state file: {}",
                                    error_chain(&err)
                                )));
                                return;
                            }
                            lock(&results).push((index, enrollment));
                            done.fetch_add(1, Ordering::Relaxed);
                            backoff.reset();
                            break;
                        }
                        Err(error) if error.is_retryable() => {
                            tokio::time::sleep(backoff.next_delay()).await;
                        }
                        Err(error) => {
                            *lock(&fatal) = Some(error);
                            return;
                        }
                    }
                }
            }
        });
    }
    let n_missing = missing.len();
    let mut ticker = tokio::time::interval(config.stats_interval);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => {
                workers.abort_all();
                return Ok(None);
            }
            joined = workers.join_next() => match joined {
                None => break,
                Some(Err(err)) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
                Some(_) => {}
            },
            _ = ticker.tick() => {
                let n_done = done.load(Ordering::Relaxed);
                reporter.event(
                    "enrolling",
                    json!({ "enrolled": n_done, "target": n_missing }),
                    &format!("enrolling: {n_done} / {n_missing}"),
                );
            }
        }
    }
    if let Some(error) = lock(&fatal).take() {
        return Err(SimulateError::Enroll(error));
    }
    for (index, enrollment) in lock(&results).drain(..) {
        slots[index] = Some(enrollment);
    }
    let secs = started.elapsed().as_secs_f64();
    reporter.event(
        "enrolled",
        json!({
            "reused": config.n_agents - n_missing,
            "enrolled": n_missing,
            "secs": secs,
            "per_sec": n_missing as f64 / secs.max(1e-9),
        }),
        &format!(
            "enrolled {n_missing} agents in {secs:.1} s ({:.0}/s); reused {}",
            n_missing as f64 / secs.max(1e-9),
            config.n_agents - n_missing
        ),
    );
    Ok(Some(slots.into_iter().flatten().collect()))
}

fn source_addr(config: &SimulateConfig, idx: usize) -> Option<IpAddr> {
    (!config.source_addrs.is_empty()).then(|| config.source_addrs[idx % config.source_addrs.len()])
}

/// Reads the state file; a later line for the same hostname wins (re-enrollment).
fn load_state(path: &PathBuf) -> Result<HashMap<String, Enrollment>, SimulateError> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(HashMap::new()),
        Err(source) => return Err(file_error("open", path, source)),
    };
    let mut known = HashMap::new();
    for (line_no, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|source| file_error("read", path, source))?;
        if line.trim().is_empty() {
            continue;
        }
        let entry: StateLine =
            serde_json::from_str(&line).map_err(|source| SimulateError::StateLine {
                path: path.clone(),
                line: line_no + 1,
                source,
            })?;
        known.insert(
            entry.hostname,
            Enrollment {
                agent_id: entry.agent_id,
                org_id: entry.org_id,
                credential: entry.credential,
            },
        );
    }
    Ok(known)
}

/// Appends one enrollment to the state file (created with mode 0600).
fn append_state(
    path: &PathBuf,
    hostname: &str,
    enrollment: &Enrollment,
) -> Result<(), SimulateError> {
    let line = serde_json::to_string(&StateLine {
        hostname: hostname.to_owned(),
        agent_id: enrollment.agent_id.clone(),
        org_id: enrollment.org_id.clone(),
        credential: enrollment.credential.clone(),
    })
    .expect("a state line holds only strings, which always serialize");
    let mut options = OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .map_err(|source| file_error("open", path, source))?;
    // One write per line: concurrent appends from several workers never interleave.
    file.write_all(format!("{line}\n").as_bytes())
        .map_err(|source| file_error("write", path, source))
}

/// A failed file operation, naming the file.
fn file_error(action: &'static str, path: &Path, source: std::io::Error) -> SimulateError {
    SimulateError::File {
        action,
        path: path.to_owned(),
        source,
    }
}

fn lock<T: ?Sized>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// This process's resident set size in KiB, from `/proc/self/status` (0 where unavailable).
pub fn self_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("VmRSS:"))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|kib| kib.parse().ok())
        })
        .unwrap_or(0)
}

// === impl Totals ===

impl Totals {
    fn sum(agents: &[Arc<Shared>]) -> Self {
        let mut totals = Self::default();
        for shared in agents {
            let stats = &shared.stats;
            totals.online += u64::from(stats.connected());
            totals.sessions += stats.sessions_started();
            totals.failures += stats.session_failures();
            totals.samples_sent += stats.samples_sent();
            totals.samples_acked += stats.samples_acked();
            totals.messages_sent += stats.messages_sent();
            totals.buffered += stats.samples_buffered();
            totals.dropped += stats.samples_dropped();
        }
        totals
    }
}

// === impl Reporter ===

impl Reporter {
    fn new(config: &SimulateConfig) -> Result<Self, SimulateError> {
        let file = match &config.stats_file {
            Some(path) => Some(Mutex::new(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|source| file_error("open", path, source))?,
            )),
            None => None,
        };
        Ok(Self {
            json: config.json,
            file,
            started: Instant::now(),
        })
    }

    fn event(&self, event: &str, mut fields: serde_json::Value, text: &str) {
        if let Some(map) = fields.as_object_mut() {
            map.insert("event".into(), event.into());
            map.insert("t".into(), self.started.elapsed().as_secs_f64().into());
        }
        self.emit(&fields, text);
    }

    fn stats(&self, totals: &Totals, interval: &LatencySnapshot, cumulative: &LatencySnapshot) {
        let ms = |d: Option<Duration>| d.map(|d| d.as_secs_f64() * 1000.0);
        let (p50, p99) = (ms(interval.quantile(0.5)), ms(interval.quantile(0.99)));
        let rss_kib = self_rss_kib();
        let fields = json!({
            "event": "stats",
            "t": self.started.elapsed().as_secs_f64(),
            "unix_ms": unix_ms(SystemTime::now()),
            "online": totals.online,
            "sessions": totals.sessions,
            "reconnects": totals.sessions.saturating_sub(totals.online),
            "errors": totals.failures,
            "messages_sent": totals.messages_sent,
            "samples_sent": totals.samples_sent,
            "samples_acked": totals.samples_acked,
            "samples_buffered": totals.buffered,
            "samples_dropped": totals.dropped,
            "ack_p50_ms": p50,
            "ack_p99_ms": p99,
            "ack_total_p99_ms": ms(cumulative.quantile(0.99)),
            "ack_hist": interval.to_sparse(),
            "rss_kib": rss_kib,
        });
        let fmt = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1} ms"));
        let text = format!(
            "online {} | sent {} msgs, {} samples | acked {} | ack p50 {} p99 {} | reconnects {} | errors {} | rss {} MiB",
            totals.online,
            totals.messages_sent,
            totals.samples_sent,
            totals.samples_acked,
            fmt(p50),
            fmt(p99),
            totals.sessions.saturating_sub(totals.online),
            totals.failures,
            rss_kib / 1024
        );
        self.emit(&fields, &text);
    }

    fn emit(&self, fields: &serde_json::Value, text: &str) {
        let line = fields.to_string();
        if let Some(file) = &self.file {
            // One write per line: several simulators may append to the same file, and a line
            // split over two writes can interleave with another's.
            let mut record = Vec::with_capacity(line.len() + 1);
            record.extend_from_slice(line.as_bytes());
            record.push(b'\n');
            let mut file = lock(file);
            if let Err(err) = file.write_all(&record) {
                warn!("failed to write the stats file: {err}");
            }
        }
        let mut stdout = std::io::stdout().lock();
        let written = if self.json {
            writeln!(stdout, "{line}")
        } else {
            writeln!(
                stdout,
                "[{:>7.1}s] {text}",
                self.started.elapsed().as_secs_f64()
            )
        };
        // A closed stdout (e.g. the benchmark went away) is not a reason to stop simulating.
        let _ = written.and_then(|()| stdout.flush());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_addrs_parse() {
        let addrs = parse_source_addrs("127.0.0.2-127.0.0.4,127.0.1.1").expect("valid");
        assert_eq!(addrs.len(), 4);
        assert_eq!(addrs[0].to_string(), "127.0.0.2");
        assert_eq!(addrs[3].to_string(), "127.0.1.1");
        assert!(parse_source_addrs("127.0.0.5-127.0.0.4").is_err());
        assert!(parse_source_addrs("nope").is_err());
    }

    #[test]
    fn bad_settings_name_the_flag() {
        let err = SimulateConfig::new("http://127.0.0.1:1", 0)
            .validate()
            .expect_err("no agents");
        assert!(matches!(err, SimulateError::Config(_)), "{err:?}");
        assert_eq!(err.to_string(), "--agents must be at least 1");
        let mut config = SimulateConfig::new("http://127.0.0.1:1", 1);
        config.backoff.multiplier = 0.5;
        let err = config.validate().expect_err("shrinking backoff");
        assert!(matches!(err, SimulateError::Agent(_)), "{err:?}");
    }

    #[test]
    fn state_file_round_trips_and_names_a_bad_line() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("sim.state");
        assert!(load_state(&path).expect("absent file").is_empty());
        let enrollment = |agent_id: &str| Enrollment {
            agent_id: agent_id.to_owned(),
            org_id: "o-1".to_owned(),
            credential: Credential::new("secret"),
        };
        append_state(&path, "sim-000000", &enrollment("a-1")).expect("append");
        append_state(&path, "sim-000000", &enrollment("a-2")).expect("append");
        let known = load_state(&path).expect("state");
        assert_eq!(known.len(), 1);
        assert_eq!(
            known["sim-000000"],
            enrollment("a-2"),
            "the later line wins"
        );

        std::fs::write(&path, "\n{\"hostname\":\"h\"}\n").expect("write");
        let err = load_state(&path).expect_err("not a state line");
        assert!(
            matches!(err, SimulateError::StateLine { line: 2, .. }),
            "{err:?}"
        );
        assert!(
            error_chain(&err).starts_with(&format!("{}:2: not a state line: ", path.display())),
            "{err}"
        );
    }

    #[test]
    fn mixes_are_deterministic_and_spread() {
        let mut config = SimulateConfig::new("http://127.0.0.1:1", 9);
        config.label_mix = parse_label_mix("env=prod|staging|dev,region=eu|us|ap").expect("mix");
        config.os_mix = vec!["linux".into(), "windows".into()];
        let ids: Vec<Identity> = (0..18).map(|i| config.identity(i)).collect();
        assert_eq!(ids[0].labels["env"], "prod");
        assert_eq!(ids[1].labels["env"], "staging");
        assert_eq!(ids[3].labels["region"], "us");
        assert_eq!(ids[0].os, "linux");
        assert_eq!(ids[9].os, "windows");
        let combos: std::collections::HashSet<_> = ids
            .iter()
            .map(|i| {
                (
                    i.labels["env"].clone(),
                    i.labels["region"].clone(),
                    i.os.clone(),
                )
            })
            .collect();
        assert_eq!(combos.len(), 18);
        assert_eq!(ids[7].hostname, "sim-000007");
        assert!(parse_label_mix("env").is_err());
    }
}
