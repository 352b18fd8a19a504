//! `fleet-bench`: Tether's fleet benchmark. Starts the release `tether-server` as a separate
//! process on a fresh data directory, drives it with `tether-agent simulate` processes, and
//! prints one table (scenario | figure | target | pass/fail), optionally as JSON.
//!
//! The phases, each with its own server:
//!
//! - `fleet`: N agents on one connection each (plus 1,000 agents that get killed and a few that
//!   go silent), measuring memory, ingest rate and ack latency, CPU, close → offline, silence →
//!   stale, false transitions, and a server restart under load.
//! - `sessions`: 100,000 sessions over ≤ 1,000 connections, measuring memory per session and
//!   query latency over the whole fleet while ingest runs.
//! - `commands`: `noop` fanned out to N agents on their own connections and to 100,000
//!   sessions, measuring the time until each agent has its offer and until every result is
//!   stored, a rollout under `max_concurrency`, server memory per idle agent (against an older
//!   build, if given) and per queued invocation.
//! - `events`: N agents on their own connections reporting events (100,000 a minute in all by
//!   default), measuring events acked per second and ack latency, then `--event-watchers`
//!   `WatchEvents` streams following them: memory per watcher, delivery delay, losses.
//! - `capacity`: the sustainable ingest rate (agents added step by step until ack p99 ≥ 1 s).
//! - `event-stats` (only when named): `GetEventStats` and `ListEvents` over a 30-day backfill.
//!
//! Every run is bounded (`--timeout`) and kills its children on exit, error, panic or ctrl-c.
//!
//! Layout: this file holds the flags and the run; the phases and their helpers live in
//! `tests/src/bench/`: `fleet.rs`, `sessions.rs`, `commands.rs`, `capacity.rs`, `events.rs` and
//! `event_stats.rs` (one scenario each; the commands phase's requests and rows in
//! `command_rows.rs`, the events phase's watchers in `event_watchers.rs`, the statistics
//! phase's backfill in `event_backfill.rs`), `limits.rs` (the machine's limits), `procs.rs` (the
//! child processes and their pinning), `observe.rs` (what the benchmark watches through the
//! server's API) and `report.rs` (the result table and its JSON form).

#[path = "../bench/capacity.rs"]
mod capacity;
#[path = "../bench/command_rows.rs"]
mod command_rows;
#[path = "../bench/commands.rs"]
mod commands;
#[path = "../bench/event_backfill.rs"]
mod event_backfill;
#[path = "../bench/event_stats.rs"]
mod event_stats;
#[path = "../bench/event_watchers.rs"]
mod event_watchers;
#[path = "../bench/events.rs"]
mod events;
#[path = "../bench/fleet.rs"]
mod fleet;
#[path = "../bench/limits.rs"]
mod limits;
#[path = "../bench/observe.rs"]
mod observe;
#[path = "../bench/procs.rs"]
mod procs;
#[path = "../bench/report.rs"]
mod report;
#[path = "../bench/sessions.rs"]
mod sessions;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use procs::{Reaper, lock};
use report::{Results, Row, pass_str, print_table, write_json};

// The server binary's allocator: the event-stats backfill runs the server's store code here.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Tether fleet benchmark.
#[derive(Debug, Parser, Clone)]
#[command(name = "fleet-bench")]
struct Args {
    /// Scenarios to run: `fleet` (10k connections, ingest, cpu, offline, stale, restart),
    /// `sessions` (100k multiplexed sessions, queries), `commands` (noop fan-outs to --agents
    /// own connections and --sessions sessions, a rollout, memory per idle agent and per queued
    /// invocation), `capacity`, `events` (--agents reporting events, then --event-watchers
    /// watching them), `event-stats` (`GetEventStats` over a 30-day backfill; not by default).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "fleet,sessions,commands,capacity,events"
    )]
    scenarios: Vec<String>,

    /// Leave the server and the simulators unpinned (by default, on 2 cores or more, the
    /// server runs on the first half of the cores and the simulators on the rest).
    #[arg(long)]
    no_pin: bool,

    /// Limit the server to this many cores' worth of CPU time (a cgroup CFS quota; needs root),
    /// on top of its pinning: `0.625` runs the server as on a machine 1.6 times slower per
    /// message. The local limits' `store_bench` runs under the same limit.
    #[arg(long)]
    server_cpu_limit: Option<f64>,

    /// Skip the local limits (fdatasync probe, store_bench).
    #[arg(long)]
    no_limits: bool,

    /// Metrics interval of the capacity phase's server.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "250ms")]
    capacity_interval: Duration,

    /// Agents added per step of the capacity phase (each step its own simulator process).
    #[arg(long, default_value_t = 2_000)]
    capacity_step_agents: usize,

    /// Most steps of the capacity phase.
    #[arg(long, default_value_t = 10)]
    capacity_steps: usize,

    /// How long each step is measured, after it settled.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "15s")]
    capacity_window: Duration,

    /// Wait after a step's agents are online before measuring.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    capacity_settle: Duration,

    /// No new step of the capacity phase starts after this long.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "4m")]
    capacity_budget: Duration,

    /// Agents on their own connection in the fleet phase.
    #[arg(long, default_value_t = 10_000)]
    agents: usize,

    /// Agents killed at once to measure close → offline.
    #[arg(long, default_value_t = 1_000)]
    closes: usize,

    /// Agents that go silent to measure silence → stale.
    #[arg(long, default_value_t = 100)]
    silent: usize,

    /// Sessions in the sessions phase.
    #[arg(long, default_value_t = 100_000)]
    sessions: usize,

    /// Connections carrying them.
    #[arg(long, default_value_t = 1_000)]
    session_connections: usize,

    /// How long the ingest rate is measured.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    duration: Duration,

    /// Server metrics interval in the fleet phase (the server dictates it to agents).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "500ms")]
    metrics_interval: Duration,

    /// Server heartbeat interval in the fleet phase.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    heartbeat_interval: Duration,

    /// Server metrics interval in the sessions phase.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    sessions_metrics_interval: Duration,

    /// Server heartbeat interval in the sessions phase.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    sessions_heartbeat_interval: Duration,

    /// Query calls per RPC in the sessions phase (at least; they go on for the query window).
    #[arg(long, default_value_t = 300)]
    queries: usize,

    /// How long the sessions phase's queries run while the sessions keep sending.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "20s")]
    sessions_query_window: Duration,

    /// Fan-outs of `noop` to the agents on their own connections in the commands phase.
    #[arg(long, default_value_t = 3)]
    command_rounds: usize,

    /// `max_concurrency` of the commands phase's rollout over a tenth of the sessions.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(1..))]
    command_concurrency: u32,

    /// Tenths of the sessions the commands phase's rollout goes to (10: every session).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=10))]
    command_rollout_tenths: u8,

    /// Agents of the measured org in the event-stats phase (another org gets a tenth).
    #[arg(long, default_value_t = 10_000)]
    event_stats_agents: usize,

    /// Events backfilled into the measured org in the event-stats phase (another org gets a
    /// tenth).
    #[arg(long, default_value_t = 10_000_000)]
    event_stats_events: u64,

    /// Days the event-stats backfill spreads its events over (ending now).
    #[arg(long, default_value_t = 30)]
    event_stats_days: u64,

    /// Events per commit of the event-stats backfill.
    #[arg(long, default_value_t = 16_384)]
    event_stats_batch: usize,

    /// Calls per shape in the event-stats phase.
    #[arg(long, default_value_t = 200)]
    event_stats_requests: usize,

    /// Most time spent on the calls of one shape in the event-stats phase.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    event_stats_budget: Duration,

    /// A tether-server build without commands (or any other) whose memory per idle agent the
    /// commands phase compares with this build's.
    #[arg(long)]
    baseline_server: Option<PathBuf>,

    /// Events each agent of the events phase reports per minute (10 × 10,000 agents: 100,000
    /// a minute).
    #[arg(long, default_value_t = 10.0)]
    events_per_minute: f64,

    /// Server metrics interval in the events phase.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    events_metrics_interval: Duration,

    /// Concurrent `WatchEvents` streams in the events phase.
    #[arg(long, default_value_t = 10_000)]
    event_watchers: usize,

    /// Of them, unfiltered (each receives every event: keep it small at full scale).
    #[arg(long, default_value_t = 10)]
    event_watchers_all: usize,

    /// Of them, at severity critical over the whole fleet; the rest watch one site of 10
    /// agents each.
    #[arg(long, default_value_t = 90)]
    event_watchers_critical: usize,

    /// HTTP/2 connections carrying the watchers (keep watchers/connections under the
    /// server's --max-concurrent-streams).
    #[arg(long, default_value_t = 100)]
    event_watch_connections: usize,

    /// Connections opened per second by the simulators.
    #[arg(long, default_value_t = 1_000.0)]
    ramp: f64,

    /// Source addresses of the simulators' connections.
    #[arg(long, default_value = "127.0.0.2-127.0.0.40")]
    source_addrs: String,

    /// Extra flags for tether-server (repeat), e.g. `--server-flag=--writer-linger=10ms`.
    #[arg(long = "server-flag", allow_hyphen_values = true)]
    server_flags: Vec<String>,

    /// Write the results here as JSON.
    #[arg(long)]
    json: Option<PathBuf>,

    /// Keep the temporary directory (data, logs) for inspection.
    #[arg(long)]
    keep: bool,

    /// Upper bound of the whole run.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "40m")]
    timeout: Duration,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("start the tokio runtime")?;
    if let Some(cores) = args.server_cpu_limit {
        procs::set_server_cpu_limit(procs::CpuLimit::create(cores)?);
    }
    let reaper = Reaper::default();
    let results = Arc::new(Mutex::new(Results::default()));
    let outcome = runtime.block_on(async {
        let run = run(args.clone(), reaper.clone(), results.clone());
        tokio::select! {
            outcome = tokio::time::timeout(args.timeout, run) => match outcome {
                Ok(outcome) => outcome,
                Err(_) => Err(anyhow::anyhow!("the benchmark hit its --timeout of {:?}", args.timeout)),
            },
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        }
    });
    reaper.kill_all();
    procs::release_server_cpu_limit();
    let rows = lock(&results).rows.clone();
    print_table(&rows);
    if let Some(path) = &args.json {
        write_json(path, &args, &rows, outcome.as_ref().err())?;
        eprintln!("results written to {}", path.display());
    }
    runtime.shutdown_timeout(Duration::from_secs(2));
    outcome
}

/// The scenarios `--scenarios` may name, in the order they run.
const SCENARIOS: [&str; 6] = [
    "fleet",
    "sessions",
    "commands",
    "capacity",
    "events",
    "event-stats",
];

async fn run(args: Args, reaper: Reaper, results: Arc<Mutex<Results>>) -> anyhow::Result<()> {
    if let Some(unknown) = args
        .scenarios
        .iter()
        .find(|s| !SCENARIOS.contains(&s.as_str()))
    {
        anyhow::bail!(
            "unknown scenario {unknown:?}; choose from {}",
            SCENARIOS.join(", ")
        );
    }
    if let Some(server) = &args.baseline_server
        && !server.is_file()
    {
        anyhow::bail!("--baseline-server {} is not a file", server.display());
    }
    let bin_dir = procs::bin_dir()?;
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    procs::set_pinning(if args.no_pin {
        procs::Pinning::default()
    } else {
        procs::Pinning::split(cores)
    });
    eprintln!("{}", procs::pinning().describe());
    eprintln!(
        "machine load average (1, 5, 15 min) at start: {}",
        report::loadavg().unwrap_or_default()
    );
    let tmp = tempfile::Builder::new()
        .prefix("fleet-bench-")
        .tempdir()
        .context("temp dir")?;
    let (dir, _tmp) = if args.keep {
        let path = tmp.keep();
        eprintln!("keeping {}", path.display());
        (path, None)
    } else {
        (tmp.path().to_owned(), Some(tmp))
    };
    let mut record = |row: Row| {
        eprintln!(
            "  => {} | {} | {} | {}",
            row.scenario,
            row.figure,
            row.target,
            pass_str(row.pass)
        );
        lock(&results).rows.push(row);
    };
    if !args.no_limits {
        limits::local_limits(&bin_dir, &dir.join("limits"), &mut record).await?;
    }
    if args.scenarios.iter().any(|s| s == "fleet") {
        fleet::fleet_phase(&args, &reaper, &bin_dir, &dir.join("fleet"), &mut record).await?;
    }
    if args.scenarios.iter().any(|s| s == "sessions") {
        sessions::sessions_phase(&args, &reaper, &bin_dir, &dir.join("sessions"), &mut record)
            .await?;
    }
    if args.scenarios.iter().any(|s| s == "commands") {
        commands::commands_phase(&args, &reaper, &bin_dir, &dir.join("commands"), &mut record)
            .await?;
    }
    if args.scenarios.iter().any(|s| s == "capacity") {
        capacity::capacity_phase(&args, &reaper, &bin_dir, &dir.join("capacity"), &mut record)
            .await?;
    }
    if args.scenarios.iter().any(|s| s == "events") {
        events::events_phase(&args, &reaper, &bin_dir, &dir.join("events"), &mut record).await?;
    }
    if args.scenarios.iter().any(|s| s == "event-stats") {
        let dir = dir.join("event-stats");
        event_stats::event_stats_phase(&args, &reaper, &bin_dir, &dir, &mut record).await?;
    }
    Ok(())
}
