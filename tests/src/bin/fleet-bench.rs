//! `fleet-bench`: Tether's fleet benchmark. Starts the release `tether-server` as a separate
//! process on a fresh data directory, drives it with `tether-agent simulate` processes, and
//! prints one table (scenario | figure | target | pass/fail), optionally as JSON.
//!
//! Two phases, each with its own server:
//!
//! - `fleet`: N agents on one connection each (plus 1,000 agents that get killed and a few that
//!   go silent), measuring memory, ingest rate and ack latency, CPU, close → offline, silence →
//!   stale, false transitions, and a server restart under load.
//! - `sessions`: 100,000 sessions over ≤ 1,000 connections, measuring memory per session and
//!   query latency over the whole fleet while ingest runs.
//!
//! Every run is bounded (`--timeout`) and kills its children on exit, error, panic or ctrl-c.

#[path = "../bench/procs.rs"]
mod procs;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, bail};
use clap::Parser;
use procs::{Reaper, ServerProc, Simulator, cpu_secs, free_port, lock, rss_kib};
use serde_json::{Value, json};
use tether_agent::LatencySnapshot;
use tether_proto as pb;
use tether_tests::{Bearer, FleetClient};
use tonic::transport::Endpoint;

/// Tether fleet benchmark.
#[derive(Debug, Parser, Clone)]
#[command(name = "fleet-bench")]
struct Args {
    /// Scenarios to run: `fleet` (10k connections, ingest, cpu, offline, stale, restart) and/or
    /// `sessions` (100k multiplexed sessions, queries).
    #[arg(long, value_delimiter = ',', default_value = "fleet,sessions")]
    scenarios: Vec<String>,

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

    /// Query calls per RPC in the sessions phase.
    #[arg(long, default_value_t = 300)]
    queries: usize,

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

/// One row of the table.
#[derive(Debug, Clone)]
struct Row {
    scenario: String,
    figure: String,
    target: String,
    pass: Option<bool>,
    values: Value,
}

/// Results collected so far (kept on error so a partial table still prints).
#[derive(Default)]
struct Results {
    rows: Vec<Row>,
}

/// A status change seen by the watcher.
#[derive(Debug, Clone)]
struct Seen {
    unix_ms: u64,
    hostname: String,
    to: i32,
}

type Watched = Arc<Mutex<Vec<Seen>>>;

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
    let rows = lock(&results).rows.clone();
    print_table(&rows);
    if let Some(path) = &args.json {
        write_json(path, &args, &rows, outcome.as_ref().err())?;
        eprintln!("results written to {}", path.display());
    }
    runtime.shutdown_timeout(Duration::from_secs(2));
    outcome
}

async fn run(args: Args, reaper: Reaper, results: Arc<Mutex<Results>>) -> anyhow::Result<()> {
    let bin_dir = procs::bin_dir()?;
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
    if args.scenarios.iter().any(|s| s == "fleet") {
        fleet_phase(&args, &reaper, &bin_dir, &dir.join("fleet"), &mut record).await?;
    }
    if args.scenarios.iter().any(|s| s == "sessions") {
        sessions_phase(&args, &reaper, &bin_dir, &dir.join("sessions"), &mut record).await?;
    }
    Ok(())
}

// === fleet phase ===

async fn fleet_phase(
    args: &Args,
    reaper: &Reaper,
    bin_dir: &Path,
    dir: &Path,
    record: &mut impl FnMut(Row),
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let port = free_port()?;
    let mut flags = vec![
        format!(
            "--metrics-interval={}",
            humantime::format_duration(args.metrics_interval)
        ),
        format!(
            "--heartbeat-interval={}",
            humantime::format_duration(args.heartbeat_interval)
        ),
    ];
    flags.extend(args.server_flags.iter().cloned());
    let data_dir = dir.join("data");
    let server_log = dir.join("server.log");
    eprintln!("fleet: starting tether-server on port {port}");
    let mut server =
        ServerProc::start(reaper, bin_dir, port, &data_dir, &flags, &server_log).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_rss = rss_kib(server.pid).context("server rss")?;
    let mut fleet = fleet_client(&server.url, &server.admin_token).await?;
    let config = fleet
        .get_server_config(pb::GetServerConfigRequest {})
        .await?
        .into_inner();
    let stale_after = to_duration(config.stale_after.as_ref());
    eprintln!("fleet: idle server RSS {idle_rss} KiB; stale_after {stale_after:?}");
    let watched: Watched = Arc::default();
    let watcher = tokio::spawn(watch(fleet.clone(), watched.clone()));

    let sim_args = |n_conns: usize, extra: &[String]| -> Vec<String> {
        let mut v = vec![
            "--server".to_owned(),
            server.url.clone(),
            "--enroll-token".to_owned(),
            server.enroll_token.clone(),
            "--connections".to_owned(),
            n_conns.to_string(),
            "--source-addrs".to_owned(),
            args.source_addrs.clone(),
            "--ramp".to_owned(),
            args.ramp.to_string(),
            "--enroll-concurrency".to_owned(),
            "64".to_owned(),
        ];
        v.extend(extra.iter().cloned());
        v
    };
    let mix = |group: &str| {
        vec![
            "--label-mix".to_owned(),
            format!("group={group},env=prod|staging|dev,region=eu|us|ap"),
        ]
    };
    let mut main_args = sim_args(args.agents, &mix("main"));
    main_args.extend([
        "--state-file".to_owned(),
        dir.join("main.state").display().to_string(),
    ]);
    let mut main = Simulator::start(
        reaper,
        bin_dir,
        "main",
        args.agents,
        &main_args,
        &dir.join("sim-main.log"),
    )?;
    let mut close = Simulator::start(
        reaper,
        bin_dir,
        "close",
        args.closes,
        &sim_args(args.closes, &mix("close")),
        &dir.join("sim-close.log"),
    )?;
    let n_total = args.agents + args.closes + args.silent;

    // All online. The silent group starts once the others are online, so that it goes silent
    // while the whole fleet runs.
    let started = Instant::now();
    let limit = Duration::from_secs(120) + Duration::from_secs_f64(n_total as f64 / 50.0);
    wait_ready(&mut [&mut main, &mut close], started, limit, dir).await?;
    let mut silent_extra = mix("silent");
    silent_extra.extend(["--silent-after".to_owned(), "10s".to_owned()]);
    let mut silent = Simulator::start(
        reaper,
        bin_dir,
        "silent",
        args.silent,
        &sim_args(args.silent, &silent_extra),
        &dir.join("sim-silent.log"),
    )?;
    wait_ready(&mut [&mut silent], started, limit, dir).await?;
    // Counted per group: the silent group goes silent 10 s after it is ready.
    let mut online = 0;
    for group in ["group=main", "group=close", "group=silent"] {
        online += count_online(&mut fleet, group).await?;
    }
    let ramp_secs = started.elapsed().as_secs_f64();
    eprintln!("fleet: all simulators ready after {ramp_secs:.1} s; server says {online} online");
    let enroll_rate = lock(&main.reports).enroll_per_sec;

    // Steady state under load, then the ingest window.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let t0 = Instant::now();
    let cpu0 = cpu_secs(server.pid).context("server cpu")?;
    let sims0: Vec<Value> = [&main, &close, &silent]
        .iter()
        .filter_map(|s| s.latest())
        .collect();
    let mut rss_samples = Vec::new();
    let mut min_online = u32::MAX;
    while t0.elapsed() < args.duration {
        tokio::time::sleep(Duration::from_secs(5).min(args.duration)).await;
        rss_samples.push(rss_kib(server.pid).context("server rss")?);
        if let Ok(s) = fleet.get_fleet_summary(pb::GetFleetSummaryRequest {}).await {
            // The silent agents are expected to drop out; count the others.
            min_online = min_online.min(s.into_inner().online);
        }
        eprintln!(
            "fleet: ingest {:.0}/{:.0} s, server rss {} KiB",
            t0.elapsed().as_secs_f64(),
            args.duration.as_secs_f64(),
            rss_samples.last().unwrap_or(&0)
        );
    }
    let window = t0.elapsed().as_secs_f64();
    let cpu1 = cpu_secs(server.pid).context("server cpu")?;
    let sims1: Vec<Value> = [&main, &close, &silent]
        .iter()
        .filter_map(|s| s.latest())
        .collect();
    let delta = |field: &str| -> f64 {
        sims1
            .iter()
            .map(|v| v[field].as_f64().unwrap_or(0.0))
            .sum::<f64>()
            - sims0
                .iter()
                .map(|v| v[field].as_f64().unwrap_or(0.0))
                .sum::<f64>()
    };
    let msgs = delta("messages_sent");
    let acked = delta("samples_acked");
    let sent = delta("samples_sent");
    let mut hist = LatencySnapshot::empty();
    for sim in [&main, &close, &silent] {
        for (at, stats) in &lock(&sim.reports).stats {
            if *at > t0 && at.duration_since(t0).as_secs_f64() <= window + 0.5 {
                let sparse: Vec<(u64, u64)> = serde_json::from_value(stats["ack_hist"].clone())
                    .context("simulator stats line without a valid ack_hist")?;
                hist.merge(&LatencySnapshot::from_sparse(&sparse));
            }
        }
    }
    let ms = |q: f64| {
        hist.quantile(q)
            .map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
    };
    let steady_rss = *rss_samples.iter().max().unwrap_or(&0);
    let per_agent_kib = (steady_rss.saturating_sub(idle_rss)) as f64 / n_total as f64;
    let online_ok = online as usize == n_total;
    record(Row {
        scenario: format!("{} agents, one connection each, steady state", n_total),
        figure: format!(
            "{}/{} online (ramp {ramp_secs:.0} s); server RSS idle {:.1} MiB, steady {:.1} MiB = {per_agent_kib:.1} KiB/agent",
            online,
            n_total,
            idle_rss as f64 / 1024.0,
            steady_rss as f64 / 1024.0
        ),
        target: "all online; ≤ 32 KiB/agent above idle".into(),
        pass: Some(online_ok && per_agent_kib <= 32.0),
        values: json!({"agents": n_total, "online": online, "idle_rss_kib": idle_rss,
            "steady_rss_kib": steady_rss, "kib_per_agent": per_agent_kib, "ramp_secs": ramp_secs,
            "enroll_per_sec": enroll_rate}),
    });
    let msg_rate = msgs / window;
    let ack_rate = acked / window;
    record(Row {
        scenario: "inbound messages/s, acked after durable write".into(),
        figure: format!(
            "{msg_rate:.0} msgs/s in ({:.0} metrics reports/s sent, {ack_rate:.0} samples/s acked) over {window:.0} s; ack p50 {:.1} ms, p99 {:.1} ms",
            sent / window,
            ms(0.5),
            ms(0.99)
        ),
        target: "≥ 20,000/s acked for the window".into(),
        pass: Some(ack_rate >= 20_000.0),
        values: json!({"messages_per_sec": msg_rate, "samples_sent_per_sec": sent / window,
            "samples_acked_per_sec": ack_rate, "window_secs": window, "ack_p50_ms": ms(0.5),
            "ack_p99_ms": ms(0.99), "ack_samples": hist.count()}),
    });
    let cpu = cpu1 - cpu0;
    record(Row {
        scenario: "server CPU".into(),
        figure: format!(
            "{:.3} CPU-s per 1,000 messages ({:.2} cores at {msg_rate:.0} msgs/s)",
            cpu / (msgs / 1000.0).max(1e-9),
            cpu / window
        ),
        target: "report".into(),
        pass: None,
        values: json!({"cpu_secs": cpu, "messages": msgs, "cpu_secs_per_1000": cpu / (msgs / 1000.0).max(1e-9), "cores": cpu / window}),
    });

    // Stale: the silent simulator muted its agents 10 s after it was ready.
    let silenced = lock(&silent.reports).silenced_unix_ms;
    let stale_lat = first_latencies(
        &watched,
        "silent-",
        pb::AgentStatus::Stale,
        silenced.unwrap_or(u64::MAX),
    );
    let limit_ms = stale_after.as_millis() as f64 + 1000.0;
    let stale_max = stale_lat.iter().copied().fold(f64::NAN, f64::max);
    record(Row {
        scenario: "silent agents → stale".into(),
        figure: format!(
            "{}/{} stale; latency after silence p50 {:.0} ms, max {:.0} ms",
            stale_lat.len(),
            args.silent,
            quantile(&stale_lat, 0.5),
            stale_max
        ),
        target: format!("≤ stale_after + 1 s = {limit_ms:.0} ms"),
        pass: Some(stale_lat.len() == args.silent && stale_max <= limit_ms),
        values: json!({"n": stale_lat.len(), "p50_ms": quantile(&stale_lat, 0.5), "max_ms": stale_max, "limit_ms": limit_ms}),
    });

    // Close → offline: kill the process holding `closes` sessions.
    let killed_at = unix_ms(close.kill().await);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let off_lat = first_latencies(&watched, "close-", pb::AgentStatus::Offline, killed_at);
    record(Row {
        scenario: "stream close → offline seen by a watcher".into(),
        figure: format!(
            "{}/{} offline; p50 {:.0} ms, p99 {:.0} ms",
            off_lat.len(),
            args.closes,
            quantile(&off_lat, 0.5),
            quantile(&off_lat, 0.99)
        ),
        target: "p99 < 1 s".into(),
        pass: Some(off_lat.len() == args.closes && quantile(&off_lat, 0.99) < 1000.0),
        values: json!({"n": off_lat.len(), "p50_ms": quantile(&off_lat, 0.5), "p99_ms": quantile(&off_lat, 0.99)}),
    });
    let false_before = false_transitions(&watched, killed_at);

    // Reconnect storm: restart the server under the main fleet.
    watcher.abort();
    let errors_before = main
        .latest()
        .and_then(|v| v["errors"].as_u64())
        .unwrap_or(0);
    let stop_took = server.stop(Duration::from_secs(30)).await;
    let restart_at = Instant::now();
    server = ServerProc::start(reaper, bin_dir, port, &data_dir, &flags, &server_log).await?;
    let mut fleet = fleet_client(&server.url, &server.admin_token).await?;
    let back = loop {
        let online = count_online(&mut fleet, "group=main").await.unwrap_or(0);
        if online as usize >= args.agents {
            break Some(restart_at.elapsed());
        }
        if restart_at.elapsed() > Duration::from_secs(90) {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let watched_after: Watched = Arc::default();
    let watcher = tokio::spawn(watch(fleet.clone(), watched_after.clone()));
    let errors_at_back = main
        .latest()
        .and_then(|v| v["errors"].as_u64())
        .unwrap_or(0);
    let watch_from = unix_ms(SystemTime::now());
    tokio::time::sleep(Duration::from_secs(15)).await;
    let rss_after = rss_kib(server.pid).context("server rss after the restart")?;
    let errors_later = main
        .latest()
        .and_then(|v| v["errors"].as_u64())
        .unwrap_or(0);
    let back_secs = back.map_or(f64::NAN, |d| d.as_secs_f64());
    record(Row {
        scenario: format!("reconnect storm: restart under {} agents", args.agents),
        figure: format!(
            "back online {back_secs:.1} s after restart (stop took {:.1} s); {} session errors during the outage, {} after; RSS {:.1} MiB vs steady {:.1} MiB",
            stop_took.as_secs_f64(),
            errors_at_back.saturating_sub(errors_before),
            errors_later.saturating_sub(errors_at_back),
            rss_after as f64 / 1024.0,
            steady_rss as f64 / 1024.0
        ),
        target: "all online ≤ 30 s; no later errors; RSS within 10 % of steady".into(),
        pass: Some(
            back.is_some_and(|d| d <= Duration::from_secs(30))
                && errors_later == errors_at_back
                && rss_after <= steady_rss + steady_rss / 10,
        ),
        values: json!({"back_secs": back_secs, "stop_secs": stop_took.as_secs_f64(),
            "errors_during": errors_at_back.saturating_sub(errors_before),
            "errors_after": errors_later.saturating_sub(errors_at_back), "rss_after_kib": rss_after,
            "steady_rss_kib": steady_rss}),
    });
    let false_after = false_transitions(&watched_after, watch_from);
    watcher.abort();
    record(Row {
        scenario: "zero false transitions for healthy agents".into(),
        figure: format!(
            "{false_before} before the restart, {false_after} after recovery ({} status changes watched)",
            lock(&watched).len() + lock(&watched_after).len()
        ),
        target: "0".into(),
        pass: Some(false_before + false_after == 0),
        values: json!({"before_restart": false_before, "after_restart": false_after}),
    });

    main.stop().await;
    silent.stop().await;
    server.stop(Duration::from_secs(30)).await;
    Ok(())
}

// === sessions phase ===

async fn sessions_phase(
    args: &Args,
    reaper: &Reaper,
    bin_dir: &Path,
    dir: &Path,
    record: &mut impl FnMut(Row),
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let port = free_port()?;
    let stale = (args.sessions_heartbeat_interval * 3).max(Duration::from_secs(15));
    let mut flags = vec![
        format!(
            "--metrics-interval={}",
            humantime::format_duration(args.sessions_metrics_interval)
        ),
        format!(
            "--heartbeat-interval={}",
            humantime::format_duration(args.sessions_heartbeat_interval)
        ),
        format!("--stale-after={}", humantime::format_duration(stale)),
        format!("--offline-after={}", humantime::format_duration(stale * 3)),
    ];
    flags.extend(args.server_flags.iter().cloned());
    eprintln!("sessions: starting tether-server on port {port}");
    let mut server = ServerProc::start(
        reaper,
        bin_dir,
        port,
        &dir.join("data"),
        &flags,
        &dir.join("server.log"),
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_rss = rss_kib(server.pid).context("server rss")?;
    let mut fleet = fleet_client(&server.url, &server.admin_token).await?;
    let sim_args = vec![
        "--server".to_owned(),
        server.url.clone(),
        "--enroll-token".to_owned(),
        server.enroll_token.clone(),
        "--connections".to_owned(),
        args.session_connections.to_string(),
        "--source-addrs".to_owned(),
        args.source_addrs.clone(),
        "--ramp".to_owned(),
        (args.ramp / 20.0).max(1.0).to_string(),
        "--enroll-concurrency".to_owned(),
        "64".to_owned(),
        "--state-file".to_owned(),
        dir.join("sessions.state").display().to_string(),
        "--stats-interval".to_owned(),
        "2s".to_owned(),
    ];
    let mut sim = Simulator::start(
        reaper,
        bin_dir,
        "mux",
        args.sessions,
        &sim_args,
        &dir.join("sim.log"),
    )?;
    let started = Instant::now();
    let limit = Duration::from_secs(300) + Duration::from_secs_f64(args.sessions as f64 / 100.0);
    while !sim.ready() {
        if !sim.running() {
            bail!(
                "the simulator exited early; see {}",
                dir.join("sim.log").display()
            );
        }
        if started.elapsed() > limit {
            bail!("not every session came online within {limit:?}");
        }
        progress("sessions: ramping", &[&sim]);
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    let ramp_secs = started.elapsed().as_secs_f64();
    let enroll_rate = lock(&sim.reports).enroll_per_sec;
    tokio::time::sleep(Duration::from_secs(15)).await;
    let summary = fleet
        .get_fleet_summary(pb::GetFleetSummaryRequest {})
        .await?
        .into_inner();
    let steady_rss = rss_kib(server.pid).context("server rss")?;
    let sim_rss = sim
        .latest()
        .and_then(|v| v["rss_kib"].as_u64())
        .unwrap_or(0);
    let per_session = (steady_rss.saturating_sub(idle_rss)) as f64 / args.sessions as f64;
    record(Row {
        scenario: format!(
            "{} sessions over {} connections",
            args.sessions, args.session_connections
        ),
        figure: format!(
            "{}/{} online (enroll {:.0}/s, ramp {ramp_secs:.0} s); server RSS {:.1} MiB = {per_session:.1} KiB/session above idle; simulator {:.1} KiB/session",
            summary.online,
            args.sessions,
            enroll_rate.unwrap_or(f64::NAN),
            steady_rss as f64 / 1024.0,
            sim_rss as f64 / args.sessions as f64
        ),
        target: "all online; report RSS/session".into(),
        pass: Some(summary.online as usize == args.sessions),
        values: json!({"sessions": args.sessions, "online": summary.online, "idle_rss_kib": idle_rss,
            "steady_rss_kib": steady_rss, "kib_per_session": per_session,
            "simulator_kib_per_session": sim_rss as f64 / args.sessions as f64,
            "ramp_secs": ramp_secs, "enroll_per_sec": enroll_rate}),
    });

    // Queries while the sessions keep sending.
    let ids: Vec<String> = fleet
        .list_agents(pb::ListAgentsRequest {
            page_size: 1000,
            ..Default::default()
        })
        .await?
        .into_inner()
        .agents
        .into_iter()
        .map(|a| a.agent_id)
        .collect();
    let cpu0 = cpu_secs(server.pid).context("server cpu")?;
    let msgs0 = sim
        .latest()
        .and_then(|v| v["messages_sent"].as_f64())
        .unwrap_or(0.0);
    let q0 = Instant::now();
    let mut list = Vec::new();
    let mut list_total = 0;
    let mut summ = Vec::new();
    let mut get = Vec::new();
    for i in 0..args.queries {
        let t = Instant::now();
        let page = fleet
            .list_agents(pb::ListAgentsRequest {
                label_selector: "env=prod,region=eu".into(),
                page_size: 100,
                ..Default::default()
            })
            .await?
            .into_inner();
        list.push(t.elapsed().as_secs_f64() * 1000.0);
        list_total = page.total_size;
        let t = Instant::now();
        fleet
            .get_fleet_summary(pb::GetFleetSummaryRequest {})
            .await?;
        summ.push(t.elapsed().as_secs_f64() * 1000.0);
        let t = Instant::now();
        fleet
            .get_agent(pb::GetAgentRequest {
                agent_id: ids[i % ids.len().max(1)].clone(),
            })
            .await?;
        get.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let q_secs = q0.elapsed().as_secs_f64();
    let msgs = sim
        .latest()
        .and_then(|v| v["messages_sent"].as_f64())
        .unwrap_or(0.0)
        - msgs0;
    let cpu = cpu_secs(server.pid).context("server cpu")? - cpu0;
    record(Row {
        scenario: format!(
            "ListAgents label selector over {} agents, ingest running",
            args.sessions
        ),
        figure: format!(
            "ListAgents(env=prod,region=eu → {list_total}, page 100) p50 {:.1} ms p99 {:.1} ms; GetFleetSummary p99 {:.1} ms; GetAgent p99 {:.1} ms; ingest {:.0} msgs/s",
            quantile(&list, 0.5),
            quantile(&list, 0.99),
            quantile(&summ, 0.99),
            quantile(&get, 0.99),
            msgs / q_secs
        ),
        target: "ListAgents p99 < 50 ms".into(),
        pass: Some(quantile(&list, 0.99) < 50.0),
        values: json!({"list_p50_ms": quantile(&list, 0.5), "list_p99_ms": quantile(&list, 0.99),
            "summary_p99_ms": quantile(&summ, 0.99), "get_agent_p99_ms": quantile(&get, 0.99),
            "matches": list_total, "ingest_msgs_per_sec": msgs / q_secs,
            "server_cpu_cores": cpu / q_secs}),
    });
    sim.stop().await;
    server.stop(Duration::from_secs(30)).await;
    Ok(())
}

// === helpers ===

/// Waits until every simulator in `sims` reported `ready`.
async fn wait_ready(
    sims: &mut [&mut Simulator],
    started: Instant,
    limit: Duration,
    dir: &Path,
) -> anyhow::Result<()> {
    loop {
        for sim in sims.iter_mut() {
            if !sim.running() {
                bail!(
                    "simulator {} exited early; see its log in {}",
                    sim.prefix,
                    dir.display()
                );
            }
        }
        if sims.iter().all(|sim| sim.ready()) {
            return Ok(());
        }
        if started.elapsed() > limit {
            bail!("not every agent came online within {limit:?}");
        }
        let views: Vec<&Simulator> = sims.iter().map(|sim| &**sim).collect();
        progress("fleet: ramping", &views);
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

async fn fleet_client(url: &str, token: &str) -> anyhow::Result<FleetClient> {
    let channel = Endpoint::from_shared(url.to_owned())?
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await
        .context("connect to the server")?;
    Ok(
        pb::fleet_service_client::FleetServiceClient::with_interceptor(
            channel,
            Bearer(Some(token.to_owned())),
        )
        .max_decoding_message_size(64 << 20),
    )
}

async fn count_online(fleet: &mut FleetClient, selector: &str) -> anyhow::Result<u32> {
    Ok(fleet
        .list_agents(pb::ListAgentsRequest {
            statuses: vec![pb::AgentStatus::Online as i32],
            label_selector: selector.to_owned(),
            page_size: 1,
            ..Default::default()
        })
        .await?
        .into_inner()
        .total_size)
}

/// Records every STATUS_CHANGED event until the stream ends.
async fn watch(mut fleet: FleetClient, watched: Watched) {
    let Ok(response) = fleet.watch_agents(pb::WatchAgentsRequest::default()).await else {
        eprintln!("watcher: WatchAgents failed");
        return;
    };
    let mut stream = response.into_inner();
    loop {
        match stream.message().await {
            Ok(Some(event)) => {
                if event.kind != pb::AgentEventKind::StatusChanged as i32 {
                    continue;
                }
                let Some(agent) = event.agent else { continue };
                let hostname = agent
                    .system_info
                    .map(|info| info.hostname)
                    .unwrap_or(agent.name);
                lock(&watched).push(Seen {
                    unix_ms: unix_ms(SystemTime::now()),
                    hostname,
                    to: agent.status,
                });
            }
            Ok(None) => return,
            Err(status) => {
                if status.code() == tonic::Code::Aborted {
                    eprintln!("watcher: fell behind and was aborted: {}", status.message());
                }
                return;
            }
        }
    }
}

/// For each agent whose hostname starts with `prefix`: ms from `since` to its first change to
/// `status` at or after `since`.
fn first_latencies(
    watched: &Watched,
    prefix: &str,
    status: pb::AgentStatus,
    since: u64,
) -> Vec<f64> {
    let mut first: HashMap<String, u64> = HashMap::new();
    for seen in lock(watched).iter() {
        if seen.to == status as i32 && seen.hostname.starts_with(prefix) && seen.unix_ms >= since {
            first.entry(seen.hostname.clone()).or_insert(seen.unix_ms);
        }
    }
    first.values().map(|at| (at - since) as f64).collect()
}

/// Changes away from online for agents that were never closed or silenced (the main group,
/// and the close group before `close_at`).
fn false_transitions(watched: &Watched, close_at: u64) -> usize {
    lock(watched)
        .iter()
        .filter(|s| s.to != pb::AgentStatus::Online as i32)
        .filter(|s| {
            s.hostname.starts_with("main-")
                || (s.hostname.starts_with("close-") && s.unix_ms < close_at)
        })
        .count()
}

fn progress(what: &str, sims: &[&Simulator]) {
    let parts: Vec<String> = sims
        .iter()
        .map(|s| {
            let latest = s.latest().unwrap_or_default();
            format!(
                "{} {}/{} (errors {})",
                s.prefix,
                latest["online"].as_u64().unwrap_or(0),
                s.n_agents,
                latest["errors"].as_u64().unwrap_or(0)
            )
        })
        .collect();
    eprintln!("{what}: {}", parts.join(", "));
}

fn quantile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn to_duration(d: Option<&prost_types::Duration>) -> Duration {
    d.map_or(Duration::ZERO, |d| {
        Duration::new(d.seconds.max(0) as u64, d.nanos.max(0) as u32)
    })
}

fn unix_ms(t: SystemTime) -> u64 {
    // Times before the epoch clamp to 0.
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn pass_str(pass: Option<bool>) -> &'static str {
    match pass {
        Some(true) => "pass",
        Some(false) => "FAIL",
        None => "report",
    }
}

fn print_table(rows: &[Row]) {
    if rows.is_empty() {
        println!("no results");
        return;
    }
    println!("| scenario | figure | target | result |");
    println!("|---|---|---|---|");
    for row in rows {
        println!(
            "| {} | {} | {} | {} |",
            row.scenario,
            row.figure,
            row.target,
            pass_str(row.pass)
        );
    }
}

fn write_json(
    path: &Path,
    args: &Args,
    rows: &[Row],
    error: Option<&anyhow::Error>,
) -> anyhow::Result<()> {
    let machine = json!({
        "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "mem_total": std::fs::read_to_string("/proc/meminfo").ok()
            .and_then(|m| m.lines().next().map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" "))),
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").ok().map(|s| s.trim().to_owned()),
        "unix_time": unix_ms(SystemTime::now()) / 1000,
    });
    let value = json!({
        "machine": machine,
        "args": format!("{args:?}"),
        "error": error.map(|e| format!("{e:#}")),
        "results": rows.iter().map(|r| json!({
            "scenario": r.scenario, "figure": r.figure, "target": r.target,
            "pass": r.pass, "values": r.values,
        })).collect::<Vec<_>>(),
    });
    std::fs::write(path, serde_json::to_string_pretty(&value)?)
        .with_context(|| format!("write {}", path.display()))
}
