//! The `events` phase of the benchmark: N agents on their own connections, each reporting
//! `--events-per-minute` events (100,000 a minute in all at the defaults), then the same while
//! `--event-watchers` `WatchEvents` streams follow them.
//!
//! 1. Ingest: a fresh server; the agents (labelled by site, enrolled into a state file) ramp
//!    up, settle, and are measured for `--duration`: events acknowledged per second against
//!    offered, the time from writing a report to its ack (after the durable write), the
//!    server's CPU and memory. Then they stop.
//! 2. Watchers: with the agents stopped, the watchers open over `--event-watch-connections`
//!    connections and catch up; the server's memory before and after, per watcher.
//! 3. Delivery: the same agents come back (same enrollments) and report events for
//!    `--duration` while every watcher follows; then they stop, the watchers drain, and each
//!    watcher's changes are compared with what its filter matches (`event_watchers.rs`): the
//!    delay from event time to arrival, losses, and the ingest figures again, with watchers.
//!
//! Every event of step 3 happens after every watcher caught up, so a watcher must receive each
//! change its filter matches; none is excused.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::{Value, json};
use tether_agent::LatencySnapshot;

use crate::Args;
use crate::event_watchers::{
    SITE_AGENTS, Scope, Watchers, scopes, site_label_mix, sites_of_agents,
};
use crate::observe::{fleet_client, wait_ready};
use crate::procs::{
    Reaper, ServerProc, Simulator, cpu_secs, free_port, idle_rss_kib, lock, rss_kib, server_flags,
    settled_rss_kib, simulator_flags,
};
use crate::report::Row;

/// Target of the ack and delivery latencies (Tether's own).
const P99_TARGET_MS: f64 = 1000.0;

/// What the simulators and the server did over one measured window.
struct Window {
    /// The span the simulator's counters cover.
    sim_secs: f64,
    offered: f64,
    acked: f64,
    rejected: f64,
    dropped: f64,
    /// Offered and not yet acknowledged at the window's end.
    backlog: u64,
    ack: LatencySnapshot,
    server_cores: f64,
    /// This process's (the watchers').
    bench_cores: f64,
    server_rss_kib: u64,
}

pub(crate) async fn events_phase(
    args: &Args,
    reaper: &Reaper,
    bin_dir: &Path,
    dir: &Path,
    record: &mut impl FnMut(Row),
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    // The watchers run in this process and decode every delivery: on the simulators' cores,
    // away from the server's.
    let pinned = pin_self(crate::procs::pinning().simulators.as_deref());
    let outcome = run(args, reaper, bin_dir, dir, record).await;
    if pinned {
        let every = format!(
            "0-{}",
            std::thread::available_parallelism().map_or(1, usize::from) - 1
        );
        pin_self(Some(&every));
    }
    outcome
}

/// Moves every thread of this process to `cpus` (`taskset -a -p`); whether it did.
fn pin_self(cpus: Option<&str>) -> bool {
    let Some(cpus) = cpus else { return false };
    std::process::Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &std::process::id().to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

async fn run(
    args: &Args,
    reaper: &Reaper,
    bin_dir: &Path,
    dir: &Path,
    record: &mut impl FnMut(Row),
) -> anyhow::Result<()> {
    let n_watchers = args.event_watchers;
    let port = free_port()?;
    let mut extra = vec![
        format!("--max-watches-per-token={}", n_watchers + 16),
        format!("--max-watches-per-org={}", n_watchers + 16),
    ];
    extra.extend(args.server_flags.iter().cloned());
    let flags = server_flags(
        &[("--metrics-interval", args.events_metrics_interval)],
        &extra,
    );
    eprintln!("events: starting tether-server on port {port}");
    let mut server = ServerProc::start(
        reaper,
        bin_dir,
        port,
        &dir.join("data"),
        &flags,
        &dir.join("server.log"),
    )
    .await?;
    let idle_rss = idle_rss_kib(&server).await?;
    let n_agents = args.agents;
    let sites = n_agents.div_ceil(SITE_AGENTS);
    let mut sim_args = simulator_flags(&server, n_agents, &args.source_addrs, args.ramp);
    sim_args.extend([
        "--label-mix".to_owned(),
        site_label_mix(sites),
        "--events-per-minute".to_owned(),
        args.events_per_minute.to_string(),
        "--state-file".to_owned(),
        dir.join("agents.state").display().to_string(),
    ]);
    let nominal = n_agents as f64 * args.events_per_minute / 60.0;
    let scenario = format!(
        "{n_agents} agents, one connection each, {:.0} events/min in all",
        nominal * 60.0
    );

    // 1. Ingest alone.
    let mut sim = start_sim(reaper, bin_dir, &sim_args, n_agents, dir, "sim-ingest.log")?;
    let ingest = measure(args, &server, &mut sim, dir).await?;
    let stopped = stop(&mut sim).await;
    ingest_rows(&scenario, nominal, &ingest, "", record);
    record(Row {
        scenario: "events left unacknowledged when the agents stopped".into(),
        figure: format!(
            "{} offered, {} acknowledged at the stop ({} in flight, {} dropped)",
            stopped.0,
            stopped.1,
            stopped.0.saturating_sub(stopped.1),
            stopped.2
        ),
        target: "report (in flight at a stop are sent again by a real agent's spool)".into(),
        pass: None,
        values: json!({"offered": stopped.0, "acked": stopped.1, "dropped": stopped.2}),
    });

    // 2. Watchers on an idle server, against its memory once the agents' sessions are freed.
    let settle = Duration::from_secs(30);
    let rss_before = settled_rss_kib(server.pid, settle)
        .await
        .context("server rss")?;
    let allocated_before = server.allocated_bytes().await?;
    let kinds = scopes(
        n_watchers,
        args.event_watchers_all,
        args.event_watchers_critical,
        sites,
    );
    let counts = count_scopes(&kinds);
    eprintln!(
        "events: opening {n_watchers} watchers ({} unfiltered, {} critical, {} by site) over {} connections",
        counts.0, counts.1, counts.2, args.event_watch_connections
    );
    let opened = Instant::now();
    let watchers = Watchers::open(
        &server.url,
        &server.admin_token,
        kinds,
        args.event_watch_connections,
        Duration::from_secs(120) + Duration::from_secs_f64(n_watchers as f64 / 100.0),
    )
    .await?;
    let open_secs = opened.elapsed().as_secs_f64();
    let rss_watching = settled_rss_kib(server.pid, settle)
        .await
        .context("server rss")?;
    let allocated_watching = server.allocated_bytes().await?;
    // Signed: the RSS also moves with memory freed earlier and returned to the system now, so
    // the allocator's own count is the figure; the RSS is shown beside it.
    let per_watcher = (rss_watching as f64 - rss_before as f64) / n_watchers.max(1) as f64;
    let allocated_per_watcher =
        (allocated_watching as f64 - allocated_before as f64) / 1024.0 / n_watchers.max(1) as f64;
    let start_cursors = watchers.start_cursors();
    record(Row {
        scenario: format!(
            "{n_watchers} concurrent WatchEvents over {} connections: server memory",
            args.event_watch_connections
        ),
        figure: format!(
            "all caught up in {open_secs:.1} s; allocated {:.1} MiB before, {:.1} MiB with them = {allocated_per_watcher:.1} KiB/watcher; RSS {:.1} → {:.1} MiB ({per_watcher:.1} KiB/watcher; idle server {:.1} MiB)",
            allocated_before as f64 / 1048576.0,
            allocated_watching as f64 / 1048576.0,
            rss_before as f64 / 1024.0,
            rss_watching as f64 / 1024.0,
            idle_rss as f64 / 1024.0
        ),
        target: "report".into(),
        pass: None,
        values: json!({"watchers": n_watchers, "connections": args.event_watch_connections,
            "open_secs": open_secs, "rss_before_kib": rss_before,
            "rss_with_watchers_kib": rss_watching, "kib_per_watcher": per_watcher,
            "allocated_before_bytes": allocated_before,
            "allocated_with_watchers_bytes": allocated_watching,
            "allocated_kib_per_watcher": allocated_per_watcher,
            "start_cursors": start_cursors.len()}),
    });

    // 3. The agents again, every watcher following.
    let mut sim = start_sim(reaper, bin_dir, &sim_args, n_agents, dir, "sim-watched.log")?;
    let watched = measure(args, &server, &mut sim, dir).await;
    let watched = match watched {
        Ok(watched) => watched,
        Err(error) => {
            watchers.close();
            return Err(error);
        }
    };
    let stopped = stop(&mut sim).await;
    eprintln!("events: agents stopped; waiting for the watchers to drain");
    let drained = Instant::now();
    watchers
        .drain(Duration::from_secs(3), Duration::from_secs(60))
        .await;
    let drain_secs = drained.elapsed().as_secs_f64();
    let mut fleet = fleet_client(&server.url, &server.admin_token).await?;
    let site_of = sites_of_agents(&mut fleet).await?;
    let verdict = watchers.judge(&site_of);
    let delays = watchers.delays.snapshot();
    let ms = |q: f64| quantile_ms(&delays, q);
    ingest_rows(
        &scenario,
        nominal,
        &watched,
        &format!(" with {n_watchers} watchers"),
        record,
    );
    record(Row {
        scenario: format!("event delivery to {n_watchers} watchers (event time → arrival)"),
        figure: format!(
            "{} changes delivered: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms; {drain_secs:.1} s to drain after the agents stopped",
            delays.count(),
            ms(0.5),
            ms(0.99),
            ms(1.0)
        ),
        target: "p99 < 1 s (Tether's own target)".into(),
        pass: Some(delays.count() > 0 && ms(0.99) < P99_TARGET_MS),
        values: json!({"delivered": delays.count(), "p50_ms": ms(0.5), "p99_ms": ms(0.99),
            "max_ms": ms(1.0), "drain_secs": drain_secs}),
    });
    let lost_reference = stopped.1.saturating_sub(verdict.reference);
    record(Row {
        scenario: "every watcher gets every change its filter matches".into(),
        figure: format!(
            "{} delivered of {} expected: {} lost (skipped) over {} watchers, {} still undelivered to {} watchers behind after the drain, {} extra, {} out of order, {} streams ended{}; unfiltered watchers saw {} distinct changes, the agents had {} acknowledged ({} offered, {} unacknowledged at the stop){}",
            verdict.delivered,
            verdict.expected,
            verdict.lost,
            verdict.watchers_short,
            verdict.behind,
            verdict.watchers_behind,
            verdict.extra,
            verdict.out_of_order,
            verdict.ended,
            verdict
                .first_end
                .as_ref()
                .map_or(String::new(), |e| format!(" (first: {e})")),
            verdict.reference,
            stopped.1,
            stopped.0,
            stopped.0.saturating_sub(stopped.1),
            if start_cursors.len() == 1 {
                String::new()
            } else {
                format!("; watchers started at {} cursors", start_cursors.len())
            }
        ),
        target: "0 lost, 0 behind, 0 extra, 0 ended; every acknowledged event seen".into(),
        pass: Some(
            verdict.lost == 0
                && verdict.behind == 0
                && verdict.extra == 0
                && verdict.ended == 0
                && verdict.out_of_order == 0
                && lost_reference == 0,
        ),
        values: json!({"expected": verdict.expected, "delivered": verdict.delivered,
            "lost": verdict.lost, "watchers_short": verdict.watchers_short,
            "behind": verdict.behind, "watchers_behind": verdict.watchers_behind,
            "extra": verdict.extra, "out_of_order": verdict.out_of_order,
            "ended": verdict.ended, "reference_changes": verdict.reference,
            "agents_acked": stopped.1, "agents_offered": stopped.0,
            "acked_not_seen_unfiltered": lost_reference}),
    });
    // What following costs the server: the CPU above ingest alone, per change delivered to a
    // watcher (the hub offers a change only to the watchers it may concern, so the cost
    // follows deliveries, not watchers × changes).
    let extra_cores = (watched.server_cores - ingest.server_cores).max(0.0);
    let deliveries_per_sec = verdict.delivered as f64 / watched.sim_secs.max(1e-9);
    let micros = extra_cores * 1e6 / deliveries_per_sec.max(1e-9);
    record(Row {
        scenario: "server CPU of the watchers".into(),
        figure: format!(
            "{extra_cores:.2} cores above ingest alone for {n_watchers} watchers receiving {deliveries_per_sec:.0} changes/s in all = {micros:.1} µs per change delivered"
        ),
        target: "report".into(),
        pass: None,
        values: json!({"extra_cores": extra_cores, "deliveries_per_sec": deliveries_per_sec,
            "micros_per_delivery": micros}),
    });
    watchers.close();
    server.stop(Duration::from_secs(30)).await;
    Ok(())
}

fn start_sim(
    reaper: &Reaper,
    bin_dir: &Path,
    sim_args: &[String],
    n_agents: usize,
    dir: &Path,
    log: &str,
) -> anyhow::Result<Simulator> {
    Simulator::start(reaper, bin_dir, "ev", n_agents, sim_args, &dir.join(log))
}

/// Waits for every agent, lets them settle, then measures `--duration`.
async fn measure(
    args: &Args,
    server: &ServerProc,
    sim: &mut Simulator,
    dir: &Path,
) -> anyhow::Result<Window> {
    let started = Instant::now();
    let limit = Duration::from_secs(120) + Duration::from_secs_f64(sim.n_agents as f64 / 50.0);
    wait_ready(
        "events",
        &mut [&mut *sim],
        started,
        limit,
        Duration::from_secs(2),
        dir,
    )
    .await?;
    eprintln!(
        "events: {} agents online after {:.1} s",
        sim.n_agents,
        started.elapsed().as_secs_f64()
    );
    // One period of every agent's events, so that each has reported at least once.
    let settle = Duration::from_secs_f64((60.0 / args.events_per_minute).clamp(5.0, 30.0));
    tokio::time::sleep(settle).await;
    let t0 = Instant::now();
    let cpu0 = cpu_secs(server.pid).context("server cpu")?;
    let bench_cpu0 = cpu_secs(std::process::id()).context("own cpu")?;
    let first = sim.latest().unwrap_or_default();
    let mut rss_max = 0;
    while t0.elapsed() < args.duration {
        tokio::time::sleep(Duration::from_secs(5).min(args.duration)).await;
        rss_max = rss_max.max(rss_kib(server.pid).context("server rss")?);
        let now = sim.latest().unwrap_or_default();
        eprintln!(
            "events: {:.0}/{:.0} s: {} offered, {} acked, server rss {} KiB",
            t0.elapsed().as_secs_f64(),
            args.duration.as_secs_f64(),
            now["events_offered"],
            now["events_acked"],
            rss_max
        );
        if !sim.running() {
            anyhow::bail!("the simulator exited; see {}", dir.display());
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = cpu_secs(server.pid).context("server cpu")? - cpu0;
    let bench_cpu = cpu_secs(std::process::id()).context("own cpu")? - bench_cpu0;
    let last = sim.latest().unwrap_or_default();
    // The simulator's counters cover the time between its two records (which reach this
    // process a little late when it is busy), not `secs`.
    let sim_secs = last["t"].as_f64().unwrap_or(0.0) - first["t"].as_f64().unwrap_or(0.0);
    let delta =
        |field: &str| last[field].as_f64().unwrap_or(0.0) - first[field].as_f64().unwrap_or(0.0);
    let mut ack = LatencySnapshot::empty();
    for (at, stats) in &lock(&sim.reports).stats {
        if *at > t0 && at.duration_since(t0).as_secs_f64() <= secs + 0.5 {
            let sparse: Vec<(u64, u64)> =
                serde_json::from_value(stats["event_ack_hist"].clone())
                    .context("simulator stats line without a valid event_ack_hist")?;
            ack.merge(&LatencySnapshot::from_sparse(&sparse));
        }
    }
    let counter = |field: &str| last[field].as_u64().unwrap_or(0);
    Ok(Window {
        sim_secs: if sim_secs > 0.0 { sim_secs } else { secs },
        offered: delta("events_offered"),
        acked: delta("events_acked"),
        rejected: delta("events_rejected"),
        dropped: delta("events_dropped"),
        backlog: counter("events_offered").saturating_sub(counter("events_acked")),
        ack,
        server_cores: cpu / secs,
        bench_cores: bench_cpu / secs,
        server_rss_kib: rss_max,
    })
}

/// The ingest rows of one window; `with` names what ran beside it.
fn ingest_rows(scenario: &str, nominal: f64, w: &Window, with: &str, record: &mut impl FnMut(Row)) {
    let (offered, acked) = (w.offered / w.sim_secs, w.acked / w.sim_secs);
    record(Row {
        scenario: format!("{scenario}{with}: events acked after durable write"),
        figure: format!(
            "{acked:.0}/s acked of {offered:.0}/s offered over {:.0} s ({} rejected, {} dropped, {} awaiting their ack at the end)",
            w.sim_secs, w.rejected, w.dropped, w.backlog
        ),
        target: format!("all offered acked: ≥ {:.0}/s", nominal * 0.98),
        pass: Some(acked >= nominal * 0.98 && w.rejected == 0.0 && w.dropped == 0.0),
        values: json!({"acked_per_sec": acked, "offered_per_sec": offered,
            "nominal_per_sec": nominal, "window_secs": w.sim_secs, "rejected": w.rejected,
            "dropped": w.dropped, "backlog": w.backlog}),
    });
    let ms = |q: f64| quantile_ms(&w.ack, q);
    record(Row {
        scenario: format!("event ack latency{with} (report written → EventAck)"),
        figure: format!(
            "p50 {:.1} ms, p99 {:.1} ms over {} events",
            ms(0.5),
            ms(0.99),
            w.ack.count()
        ),
        target: "p99 < 1 s".into(),
        pass: Some(w.ack.count() > 0 && ms(0.99) < P99_TARGET_MS),
        values: json!({"p50_ms": ms(0.5), "p99_ms": ms(0.99), "events": w.ack.count()}),
    });
    record(Row {
        scenario: format!("server during event ingest{with}"),
        figure: format!(
            "{:.2} cores ({:.0} % of its share), RSS {:.1} MiB; benchmark process {:.2} cores; {}",
            w.server_cores,
            100.0 * w.server_cores / server_share(),
            w.server_rss_kib as f64 / 1024.0,
            w.bench_cores,
            crate::procs::pinning().describe()
        ),
        target: "report".into(),
        pass: None,
        values: json!({"cores": w.server_cores, "share_cores": server_share(),
            "rss_kib": w.server_rss_kib, "bench_cores": w.bench_cores}),
    });
}

/// Cores the server may use: its pinned set, else the machine.
fn server_share() -> f64 {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    match crate::procs::pinning().server {
        Some(_) => cores.div_ceil(2) as f64,
        None => cores as f64,
    }
}

/// Stops the simulator and returns (offered, acked, dropped) from its last record, read once
/// its `stopped` line arrived (or after 5 s: then from the latest record seen).
async fn stop(sim: &mut Simulator) -> (u64, u64, u64) {
    sim.stop().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !lock(&sim.reports).stopped && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let last: Value = sim.latest().unwrap_or_default();
    let counter = |field: &str| last[field].as_u64().unwrap_or(0);
    (
        counter("events_offered"),
        counter("events_acked"),
        counter("events_dropped"),
    )
}

fn quantile_ms(snapshot: &LatencySnapshot, q: f64) -> f64 {
    snapshot
        .quantile(q)
        .map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
}

/// (unfiltered, critical, by site) watchers.
fn count_scopes(scopes: &[Scope]) -> (usize, usize, usize) {
    let count = |f: fn(&Scope) -> bool| scopes.iter().filter(|s| f(s)).count();
    (
        count(|s| *s == Scope::All),
        count(|s| *s == Scope::Critical),
        count(|s| matches!(s, Scope::Site(_))),
    )
}
