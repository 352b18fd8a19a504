//! The `capacity` phase of the benchmark: the sustainable ingest rate. Agents on their own
//! connections are added a group at a time (each group its own simulator process), raising the
//! offered load step by step, until a step no longer holds: ack p99 reaches 1 s, or less than
//! 95 % of the offered samples (those the agents took: acked, buffered or dropped) are
//! acknowledged. The highest step that held is the sustainable
//! rate.
//!
//! The phase also checks the backpressure's promise: past the sustainable rate the server may
//! fall behind (the agents' buffers hold the rest), but a step whose samples are all acked
//! must have its ack p99 under 1 s. A step that keeps up while its acks lag a second or more
//! fails the phase.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::json;
use tether_agent::LatencySnapshot;

use crate::Args;
use crate::observe::wait_ready;
use crate::procs::{
    RESIDENCE, Reaper, ServerProc, Simulator, bucket_quantile, cpu_secs, free_port,
    load_generator_note, lock, pinning, residence_range, server_flags, simulator_flags,
};
use crate::report::Row;

/// Ack p99 a step must stay under.
const P99_LIMIT_MS: f64 = 1000.0;
/// Share of the offered samples a step must have acknowledged.
const ACKED_SHARE: f64 = 0.95;

/// What one step measured.
struct Step {
    agents: usize,
    /// One sample per agent and metrics interval.
    nominal: f64,
    /// Samples the agents took (a starved simulator takes fewer than the nominal rate).
    offered: f64,
    acked: f64,
    p50_ms: f64,
    p99_ms: f64,
    server_cores: f64,
    simulator_cores: f64,
    /// Metrics reports the server deferred per second (`MetricsDeferred`): their samples
    /// waited in the agents' buffers and went again.
    deferred: f64,
    /// The histogram bucket (ms, lower and upper bound) that holds the 99th percentile of the
    /// time the reports acked in the window spent inside the server, from reading to ack
    /// (`tether_report_residence_seconds`): the server's part of `p99_ms`, which the agents
    /// measure.
    residence_p99_ms: Option<(f64, f64)>,
}

impl Step {
    fn keeps_up(&self) -> bool {
        self.acked >= ACKED_SHARE * self.offered
    }

    fn held(&self) -> bool {
        self.keeps_up() && self.p99_ms < P99_LIMIT_MS
    }
}

pub(crate) async fn capacity_phase(
    args: &Args,
    reaper: &Reaper,
    bin_dir: &Path,
    dir: &Path,
    record: &mut impl FnMut(Row),
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let port = free_port()?;
    let interval = args.capacity_interval;
    let flags = server_flags(
        &[
            ("--metrics-interval", interval),
            ("--heartbeat-interval", args.heartbeat_interval),
        ],
        &args.server_flags,
    );
    eprintln!("capacity: starting tether-server on port {port}");
    let server = ServerProc::start(
        reaper,
        bin_dir,
        port,
        &dir.join("data"),
        &flags,
        &dir.join("server.log"),
    )
    .await?;
    let started = Instant::now();
    let mut sims: Vec<Simulator> = Vec::new();
    let mut steps: Vec<Step> = Vec::new();
    // Each simulated agent is one connection to the server, a file of its own.
    let file_limit = open_files_limit(server.pid);
    let mut out_of_files = None;
    for i in 1..=args.capacity_steps {
        if started.elapsed() > args.capacity_budget {
            eprintln!("capacity: stopping after {:?}", started.elapsed());
            break;
        }
        let agents_after = (i * args.capacity_step_agents) as u64;
        if let Some(limit) = file_limit
            && agents_after + FILE_HEADROOM > limit
        {
            eprintln!(
                "capacity: stopping: {agents_after} agents would pass the server's open-file limit ({limit})"
            );
            out_of_files = Some(limit);
            break;
        }
        let prefix = format!("cap{i}");
        let mut flags = simulator_flags(
            &server,
            args.capacity_step_agents,
            &args.source_addrs,
            args.ramp,
        );
        flags.extend(["--label-mix".to_owned(), format!("group={prefix}")]);
        let sim = Simulator::start(
            reaper,
            bin_dir,
            &prefix,
            args.capacity_step_agents,
            &flags,
            &dir.join(format!("sim-{prefix}.log")),
        )?;
        sims.push(sim);
        let limit = Duration::from_secs(60)
            + Duration::from_secs_f64(args.capacity_step_agents as f64 / 50.0);
        let step_started = Instant::now();
        {
            let mut newest: Vec<&mut Simulator> = sims.iter_mut().rev().take(1).collect();
            wait_ready(
                "capacity",
                &mut newest,
                step_started,
                limit,
                Duration::from_secs(2),
                dir,
            )
            .await?;
        }
        tokio::time::sleep(args.capacity_settle).await;
        let step = measure(&server, &sims, interval, args.capacity_window).await?;
        let held = step.held();
        eprintln!(
            "capacity: step {i}: {} agents, offered {:.0}/s, acked {:.0}/s, ack p50 {:.1} ms p99 {:.1} ms: {}",
            step.agents,
            step.offered,
            step.acked,
            step.p50_ms,
            step.p99_ms,
            if held { "held" } else { "did not hold" }
        );
        steps.push(step);
        if !held {
            break;
        }
    }
    for (i, step) in steps.iter().enumerate() {
        let load_generator = load_generator_note(
            step.simulator_cores,
            pinning().simulator_cores(),
            step.offered,
            step.nominal,
        );
        record(Row {
            scenario: format!(
                "capacity step {}: {} agents at {}",
                i + 1,
                step.agents,
                humantime::format_duration(interval)
            ),
            figure: format!(
                "offered {:.0} samples/s (nominal {:.0}), acked {:.0}/s ({:.0} %); ack p50 {:.1} ms, p99 {:.1} ms (inside the server: p99 in {}); {:.0} reports deferred/s; server {:.2} cores, simulators {:.2}{}",
                step.offered,
                step.nominal,
                step.acked,
                100.0 * step.acked / step.offered.max(1e-9),
                step.p50_ms,
                step.p99_ms,
                residence_range(step.residence_p99_ms),
                step.deferred,
                step.server_cores,
                step.simulator_cores,
                load_generator
            ),
            target: if step.keeps_up() {
                "held: ≥ 95 % acked and p99 < 1 s".into()
            } else {
                "over capacity: report".into()
            },
            pass: step.keeps_up().then_some(step.p99_ms < P99_LIMIT_MS),
            values: json!({"agents": step.agents, "offered_per_sec": step.offered,
                "nominal_per_sec": step.nominal,
                "acked_per_sec": step.acked, "ack_p50_ms": step.p50_ms, "ack_p99_ms": step.p99_ms,
                "server_cores": step.server_cores, "simulator_cores": step.simulator_cores,
                "reports_deferred_per_sec": step.deferred,
                "simulators_saturated": !load_generator.is_empty(),
                "server_residence_p99_bucket_ms": step.residence_p99_ms,
                "held": step.held()}),
        });
    }
    let sustained = steps
        .iter()
        .filter(|s| s.held())
        .map(|s| s.acked)
        .fold(0.0, f64::max);
    let lagging = steps.iter().filter(|s| s.keeps_up() && !s.held()).count();
    let capped = steps.last().is_some_and(Step::held);
    record(Row {
        scenario:
            "sustainable ingest rate (offered load raised until ack p99 ≥ 1 s or < 95 % acked)"
                .into(),
        figure: format!(
            "{sustained:.0} samples/s acked with p99 < 1 s{}; {} of {} steps kept up with p99 ≥ 1 s",
            match (capped, out_of_files) {
                (true, Some(limit)) => format!(
                    " (the last step still held: the server's open-file limit, {limit}, ended the steps first)"
                ),
                (true, None) => " (the last step still held: the steps ran out first)".to_owned(),
                (false, _) => String::new(),
            },
            lagging,
            steps.len()
        ),
        target: "report the rate; no step that keeps up has p99 ≥ 1 s".into(),
        pass: Some(lagging == 0 && !steps.is_empty()),
        values: json!({"sustainable_samples_per_sec": sustained, "steps": steps.len(),
            "lagging_steps": lagging, "last_step_held": capped}),
    });
    for sim in &mut sims {
        sim.stop().await;
    }
    let mut server = server;
    server.stop(Duration::from_secs(30)).await;
    Ok(())
}

/// Files the server keeps open besides its agents' connections (listeners, the store's files,
/// logs), with room to spare.
const FILE_HEADROOM: u64 = 512;

/// The soft limit on open files of process `pid` (`/proc/<pid>/limits`), if known.
fn open_files_limit(pid: u32) -> Option<u64> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Measures the fleet of `sims` over `window`: samples acked per second, ack latency, and the
/// CPU of the server and of the simulators.
async fn measure(
    server: &ServerProc,
    sims: &[Simulator],
    interval: Duration,
    window: Duration,
) -> anyhow::Result<Step> {
    let agents: usize = sims.iter().map(|s| s.n_agents).sum();
    let acked =
        |sims: &[Simulator]| -> f64 { sims.iter().map(|s| s.latest_f64("samples_acked")).sum() };
    // Every sample the agents took is acked, in a buffer, or dropped from a full one.
    let produced = |sims: &[Simulator]| -> f64 {
        sims.iter()
            .map(|s| {
                s.latest_f64("samples_acked")
                    + s.latest_f64("samples_buffered")
                    + s.latest_f64("samples_dropped")
            })
            .sum()
    };
    let sims_cpu =
        |sims: &[Simulator]| -> f64 { sims.iter().filter_map(|s| cpu_secs(s.pid)).sum() };
    let deferred =
        |sims: &[Simulator]| -> f64 { sims.iter().map(|s| s.latest_f64("reports_deferred")).sum() };
    let deferred0 = deferred(sims);
    let residence0 = server.histogram(RESIDENCE).await?;
    let t0 = Instant::now();
    let produced0 = produced(sims);
    let (acked0, cpu0, sim_cpu0) = (
        acked(sims),
        cpu_secs(server.pid).context("server cpu")?,
        sims_cpu(sims),
    );
    tokio::time::sleep(window).await;
    let secs = t0.elapsed().as_secs_f64();
    let residence1 = server.histogram(RESIDENCE).await?;
    let produced1 = produced(sims);
    let deferred1 = deferred(sims);
    let (acked1, cpu1, sim_cpu1) = (
        acked(sims),
        cpu_secs(server.pid).context("server cpu")?,
        sims_cpu(sims),
    );
    let mut hist = LatencySnapshot::empty();
    for sim in sims {
        for (at, stats) in &lock(&sim.reports).stats {
            if *at > t0 && at.duration_since(t0).as_secs_f64() <= secs + 0.5 {
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
    Ok(Step {
        agents,
        nominal: agents as f64 / interval.as_secs_f64(),
        offered: (produced1 - produced0) / secs,
        acked: (acked1 - acked0) / secs,
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
        server_cores: (cpu1 - cpu0) / secs,
        simulator_cores: (sim_cpu1 - sim_cpu0) / secs,
        deferred: (deferred1 - deferred0) / secs,
        residence_p99_ms: bucket_quantile(&residence0, &residence1, 0.99)
            .map(|(lower, upper)| (lower * 1000.0, upper * 1000.0)),
    })
}
