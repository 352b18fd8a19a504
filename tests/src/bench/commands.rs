//! The `commands` phase of the benchmark: `noop` fanned out over the agents' streams, timed
//! from the `SendCommand` call until each agent has its offer (every simulator stamps the
//! arrival of each offer with the wall clock, which the benchmark shares) and until every
//! result is stored (`GetCommand` reads the store, so a finished command is durable); a
//! rollout under `max_concurrency`; what an idle agent pays in server memory for the command
//! machinery; and what a queued invocation costs.
//!
//! Two servers, one after the other:
//!
//! - own connections (server defaults for intervals): `--agents` agents on one connection
//!   each. Memory per idle agent, beside a `--baseline-server` build's when given; then
//!   `--command-rounds` fan-outs to all of them; then the memory still held once they ended.
//! - sessions (the `sessions` phase's intervals): `--sessions` sessions over
//!   `--session-connections` connections. One fan-out to all of them; one rollout to a tenth
//!   of them (label `part=0`) with `max_concurrency` `--command-concurrency`; one `sleep` to all
//!   with `max_concurrency` 1, so every invocation but one stays queued while the server's
//!   memory is read, then cancelled.
//!
//! Rounds run one at a time, so the offers that arrive after a round's send belong to it. A
//! command that does not finish within its limit makes a failed row, with the states its
//! invocations reached, and ends that part: a server that stopped storing would only time out
//! again.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use serde_json::json;
use tether_proto as pb;
use tether_tests::CommandClient;

use crate::Args;
use crate::command_rows::{
    GROUP, LABEL_MIX, Round, count, counts_json, counts_text, noop, outcome, parts, rounds_json,
    seconds, succeeded, targets,
};
use crate::observe::{command_client, unix_ms, wait_ready};
use crate::procs::{
    Reaper, ServerProc, Simulator, cpu_secs, free_port, idle_rss_kib, lock, rss_kib, server_flags,
    simulator_flags,
};
use crate::report::{Row, loadavg, quantile};
use crate::sessions::sessions_server_flags;

/// How often a command is polled for its end.
const POLL: Duration = Duration::from_millis(20);
/// Quiet time before memory is read: the allocator returns freed pages after a few seconds.
const SETTLE: Duration = Duration::from_secs(10);

/// A server with one simulator whose agents are all online.
struct Fleet {
    server: ServerProc,
    sim: Simulator,
    commands: CommandClient,
    n_agents: usize,
    /// Server RSS before any agent connected, KiB.
    idle_rss: u64,
    ramp_secs: f64,
}

pub(crate) async fn commands_phase(
    args: &Args,
    reaper: &Reaper,
    bin_dir: &Path,
    dir: &Path,
    record: &mut impl FnMut(Row),
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    // Latencies on a shared machine depend on what else runs: each row says.
    let mut record = |mut row: Row| {
        if let Some(values) = row.values.as_object_mut() {
            values.insert("loadavg".into(), json!(loadavg()));
        }
        record(row);
    };
    own_connections(args, reaper, bin_dir, dir, &mut record).await?;
    sessions(args, reaper, bin_dir, &dir.join("sessions"), &mut record).await
}

/// Idle memory (against the baseline build, if any), fan-outs to agents on their own
/// connections, and the memory left after them.
async fn own_connections(
    args: &Args,
    reaper: &Reaper,
    bin_dir: &Path,
    dir: &Path,
    record: &mut impl FnMut(Row),
) -> anyhow::Result<()> {
    let n = args.agents;
    let flags = server_flags(&[], &args.server_flags);
    let start = |server_bin: std::path::PathBuf, sub: &'static str| {
        let dir = dir.join(sub);
        let flags = flags.clone();
        async move {
            start_fleet(
                args,
                reaper,
                &server_bin,
                bin_dir,
                &dir,
                n,
                n,
                args.ramp,
                &flags,
            )
            .await
        }
    };
    let baseline = match &args.baseline_server {
        Some(server_bin) => {
            eprintln!("commands: baseline server {}", server_bin.display());
            let mut fleet = start(server_bin.clone(), "baseline").await?;
            let per_agent = idle_kib_per_agent(&fleet).await?;
            fleet.stop().await;
            Some(per_agent)
        }
        None => None,
    };

    let mut fleet = start(bin_dir.join("tether-server"), "own").await?;
    let (steady_rss, per_agent) = idle_kib_per_agent(&fleet).await?;
    let (figure, target, pass) = match baseline {
        Some((_, base)) => (
            format!(
                "{per_agent:.1} KiB/agent above the idle server; without commands (baseline build) {base:.1} KiB/agent: {:+.2} KiB/agent",
                per_agent - base
            ),
            "≤ +1 KiB/agent over the baseline build".to_owned(),
            Some(per_agent - base <= 1.0),
        ),
        None => (
            format!(
                "{per_agent:.1} KiB/agent above the idle server (give --baseline-server to compare with a build without commands)"
            ),
            "≤ +1 KiB/agent over a build without commands".to_owned(),
            None,
        ),
    };
    record(Row {
        scenario: format!("commands: server memory per idle agent, {n} on their own connection"),
        figure,
        target,
        pass,
        values: json!({"agents": n, "idle_server_rss_kib": fleet.idle_rss,
            "steady_rss_kib": steady_rss, "kib_per_agent": per_agent,
            "baseline_kib_per_agent": baseline.map(|(_, b)| b),
            "baseline_steady_rss_kib": baseline.map(|(rss, _)| rss),
            "ramp_secs": fleet.ramp_secs}),
    });

    // Fan-outs, one at a time.
    let cpu0 = cpu_secs(fleet.server.pid).context("server cpu")?;
    let mut rounds = Vec::new();
    for i in 0..args.command_rounds {
        let round = fan_out(&fleet, noop(GROUP, None), n, Duration::from_secs(120)).await?;
        eprintln!(
            "commands: round {}: answered {:.0} ms, offers p99 {:.0} ms, stored {:.2} s",
            i + 1,
            round.send_ms,
            quantile(&round.offer_ms, 0.99),
            round.stored_secs
        );
        let finished = round.finished;
        rounds.push(round);
        if !finished {
            break;
        }
    }
    let cpu = cpu_secs(fleet.server.pid).context("server cpu")? - cpu0;
    let offers: Vec<f64> = rounds.iter().flat_map(|r| r.offer_ms.clone()).collect();
    let all_succeeded = rounds.iter().all(|r| succeeded(r, n));
    let p99 = quantile(&offers, 0.99);
    let stored: Vec<String> = rounds
        .iter()
        .map(|r| format!("{:.2}", r.stored_secs))
        .collect();
    let answered: Vec<String> = rounds.iter().map(|r| format!("{:.0}", r.send_ms)).collect();
    record(Row {
        scenario: format!(
            "noop to {n} agents on their own connection ({} rounds)",
            rounds.len()
        ),
        figure: format!(
            "offer reached the agent p50 {:.0} ms, p99 {p99:.0} ms, max {:.0} ms ({} offers); SendCommand answered in {} ms; every result stored after {} s; {}",
            quantile(&offers, 0.5),
            quantile(&offers, 1.0),
            offers.len(),
            answered.join("/"),
            stored.join("/"),
            if all_succeeded {
                "all SUCCEEDED".to_owned()
            } else {
                outcome(&rounds)
            }
        ),
        target: "every agent has it within 1 s (p99); all succeed".into(),
        pass: Some(all_succeeded && offers.len() == n * rounds.len() && p99 < 1000.0),
        values: rounds_json(&rounds, &offers, cpu),
    });

    // What the ended commands left behind.
    record(held_after(&fleet, steady_rss, rounds.len()).await?);
    fleet.stop().await;
    Ok(())
}

/// A fan-out, a rollout under `max_concurrency` and queued invocations over multiplexed
/// sessions.
async fn sessions(
    args: &Args,
    reaper: &Reaper,
    bin_dir: &Path,
    dir: &Path,
    record: &mut impl FnMut(Row),
) -> anyhow::Result<()> {
    let n = args.sessions;
    let mut fleet = start_fleet(
        args,
        reaper,
        &bin_dir.join("tether-server"),
        bin_dir,
        dir,
        n,
        args.session_connections,
        (args.ramp / 20.0).max(1.0),
        &sessions_server_flags(args),
    )
    .await?;
    let (idle_rss, per_session) = idle_kib_per_agent(&fleet).await?;
    record(Row {
        scenario: format!(
            "commands: server memory per idle session, {n} over {} connections",
            args.session_connections
        ),
        figure: format!("{per_session:.1} KiB/session above the idle server"),
        target: "report".into(),
        pass: None,
        values: json!({"sessions": n, "idle_server_rss_kib": fleet.idle_rss,
            "steady_rss_kib": idle_rss, "kib_per_session": per_session,
            "ramp_secs": fleet.ramp_secs}),
    });

    let round = fan_out(&fleet, noop(GROUP, None), n, Duration::from_secs(300)).await?;
    let ok = succeeded(&round, n) && round.offer_ms.len() == n;
    record(Row {
        scenario: format!(
            "noop to {n} sessions over {} connections",
            args.session_connections
        ),
        figure: format!(
            "offer reached the agent p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms ({} offers); SendCommand answered in {:.0} ms; every result stored after {:.2} s; {}",
            quantile(&round.offer_ms, 0.5),
            quantile(&round.offer_ms, 0.99),
            quantile(&round.offer_ms, 1.0),
            round.offer_ms.len(),
            round.send_ms,
            round.stored_secs,
            if ok {
                "all SUCCEEDED".to_owned()
            } else {
                outcome(std::slice::from_ref(&round))
            }
        ),
        target: "report; all succeed".into(),
        pass: Some(ok),
        values: rounds_json(std::slice::from_ref(&round), &round.offer_ms, f64::NAN),
    });
    if !round.finished {
        eprintln!("commands: the fan-out did not finish; the rest of the sessions part is skipped");
        fleet.stop().await;
        return Ok(());
    }
    record(held_after(&fleet, idle_rss, 1).await?);

    // A rollout to `--command-rollout-tenths` of the sessions that keeps `max_concurrency`
    // invocations in flight until all are done.
    let concurrency = args.command_concurrency;
    let tenths = args.command_rollout_tenths;
    let part = n * usize::from(tenths) / 10;
    let selector = parts(tenths);
    let cpu0 = cpu_secs(fleet.server.pid).context("server cpu")?;
    let round = fan_out(
        &fleet,
        noop(&selector, Some(concurrency)),
        part,
        Duration::from_secs(1200),
    )
    .await?;
    let cpu = cpu_secs(fleet.server.pid).context("server cpu")? - cpu0;
    let part = round.command.counts.map_or(part, |c| c.total as usize);
    let rate = part as f64 / round.stored_secs;
    let ok = succeeded(&round, part);
    record(Row {
        scenario: format!(
            "rollout to {part} of the {n} sessions ({selector}), max_concurrency {concurrency}"
        ),
        figure: format!(
            "{rate:.0} invocations/s: {part} offered, run and stored in {:.1} s; server {:.2} cores ({:.3} CPU-s per 1,000 invocations); {}",
            round.stored_secs,
            cpu / round.stored_secs,
            cpu / (part as f64 / 1000.0),
            if ok {
                "all SUCCEEDED".to_owned()
            } else {
                outcome(std::slice::from_ref(&round))
            }
        ),
        target: "report; all succeed".into(),
        pass: Some(ok),
        values: json!({"invocations": part, "sessions": n, "max_concurrency": concurrency,
            "invocations_per_sec": rate, "stored_secs": round.stored_secs,
            "send_ms": round.send_ms, "server_cpu_secs": cpu,
            "server_cores": cpu / round.stored_secs, "counts": counts_json(&round.command)}),
    });

    // Queued invocations: one runs (a long sleep), the others wait their turn.
    tokio::time::sleep(SETTLE).await;
    let before = steady_rss_kib(fleet.server.pid).await?;
    let request = pb::SendCommandRequest {
        spec: Some(pb::CommandSpec {
            kind: Some(pb::command_spec::Kind::Sleep(pb::SleepSpec {
                duration: Some(seconds(600)),
            })),
        }),
        targets: Some(targets(GROUP)),
        rollout: Some(pb::RolloutPolicy {
            max_concurrency: Some(count(1)),
            ..Default::default()
        }),
        timeout: Some(seconds(900)),
        ..Default::default()
    };
    let mut client = fleet.commands.clone();
    let t = Instant::now();
    let command = client
        .send_command(request)
        .await
        .context("send the queued command")?
        .into_inner()
        .command
        .context("SendCommand answered without the command")?;
    let send_ms = t.elapsed().as_secs_f64() * 1000.0;
    tokio::time::sleep(SETTLE).await;
    let queued_rss = steady_rss_kib(fleet.server.pid).await?;
    let queued = get(&fleet.commands, &command.command_id)
        .await?
        .counts
        .map_or(0, |c| c.queued);
    client
        .cancel_command(pb::CancelCommandRequest {
            command_id: command.command_id.clone(),
        })
        .await
        .context("cancel the queued command")?;
    let (ended, _) =
        wait_finished(&fleet, &command.command_id, t, Duration::from_secs(120)).await?;
    tokio::time::sleep(SETTLE).await;
    let after_rss = steady_rss_kib(fleet.server.pid).await?;
    let per_queued = queued_rss.saturating_sub(before) as f64 * 1024.0 / f64::from(queued.max(1));
    let cancelled = ended.counts.as_ref().map_or(0, |c| c.cancelled);
    record(Row {
        scenario: "server memory per queued invocation".into(),
        figure: format!(
            "{queued} queued behind max_concurrency 1 (sent in {send_ms:.0} ms): RSS {:.1} → {:.1} MiB = {per_queued:.0} B/invocation (store writes included); after cancel ({cancelled} CANCELLED) {:.1} MiB",
            before as f64 / 1024.0,
            queued_rss as f64 / 1024.0,
            after_rss as f64 / 1024.0
        ),
        target: "report".into(),
        pass: None,
        values: json!({"queued": queued, "before_rss_kib": before, "queued_rss_kib": queued_rss,
            "after_cancel_rss_kib": after_rss, "bytes_per_queued": per_queued,
            "send_ms": send_ms, "cancelled": cancelled}),
    });
    fleet.stop().await;
    Ok(())
}

/// Starts `server_bin` and a simulator of `n_agents` over `n_conns` connections, and waits
/// until every agent is online.
#[allow(clippy::too_many_arguments)]
async fn start_fleet(
    args: &Args,
    reaper: &Reaper,
    server_bin: &Path,
    bin_dir: &Path,
    dir: &Path,
    n_agents: usize,
    n_conns: usize,
    ramp: f64,
    flags: &[String],
) -> anyhow::Result<Fleet> {
    std::fs::create_dir_all(dir)?;
    let port = free_port()?;
    eprintln!("commands: starting {} on port {port}", server_bin.display());
    let server = ServerProc::start_bin(
        reaper,
        server_bin,
        port,
        &dir.join("data"),
        flags,
        &dir.join("server.log"),
    )
    .await?;
    let idle_rss = idle_rss_kib(&server).await?;
    let commands = command_client(&server.url, &server.admin_token).await?;
    let mut sim_args = simulator_flags(&server, n_conns, &args.source_addrs, ramp);
    sim_args.extend(
        [
            "--state-file",
            &dir.join("sim.state").display().to_string(),
            "--label-mix",
            LABEL_MIX,
            "--stats-interval",
            if n_agents > 20_000 { "2s" } else { "1s" },
        ]
        .map(str::to_owned),
    );
    let mut sim = Simulator::start(
        reaper,
        bin_dir,
        "cmd",
        n_agents,
        &sim_args,
        &dir.join("sim.log"),
    )?;
    let started = Instant::now();
    let limit = Duration::from_secs(300) + Duration::from_secs_f64(n_agents as f64 / 100.0);
    wait_ready(
        "commands",
        &mut [&mut sim],
        started,
        limit,
        Duration::from_secs(2),
        dir,
    )
    .await?;
    let ramp_secs = started.elapsed().as_secs_f64();
    eprintln!("commands: {n_agents} agents online after {ramp_secs:.1} s");
    Ok(Fleet {
        server,
        sim,
        commands,
        n_agents,
        idle_rss,
        ramp_secs,
    })
}

/// The row of the server memory still held, `SETTLE` after `n_commands` ended, against
/// `before` (KiB, read with every agent idle before them).
async fn held_after(fleet: &Fleet, before: u64, n_commands: usize) -> anyhow::Result<Row> {
    tokio::time::sleep(SETTLE).await;
    let after = steady_rss_kib(fleet.server.pid).await?;
    let n = fleet.n_agents;
    let per_agent = (after as f64 - before as f64) / n as f64;
    Ok(Row {
        scenario: format!("memory held after {n_commands} command(s) to {n} agents ended"),
        figure: format!(
            "server RSS {:.1} MiB idle before, {:.1} MiB after = {per_agent:+.2} KiB/agent",
            before as f64 / 1024.0,
            after as f64 / 1024.0,
        ),
        target: "report (commands cost memory while they exist)".into(),
        pass: None,
        values: json!({"before_rss_kib": before, "after_rss_kib": after,
            "kib_per_agent": per_agent, "commands": n_commands, "agents": n}),
    })
}

/// Server RSS with every agent online and idle, and its share per agent above the idle
/// server, in KiB.
async fn idle_kib_per_agent(fleet: &Fleet) -> anyhow::Result<(u64, f64)> {
    tokio::time::sleep(SETTLE).await;
    let steady = steady_rss_kib(fleet.server.pid).await?;
    let per_agent = steady.saturating_sub(fleet.idle_rss) as f64 / fleet.n_agents as f64;
    eprintln!(
        "commands: idle server {} KiB, with {} agents {steady} KiB = {per_agent:.2} KiB/agent",
        fleet.idle_rss, fleet.n_agents
    );
    Ok((steady, per_agent))
}

/// The largest of three RSS readings two seconds apart, in KiB (as the fleet phase reads it).
async fn steady_rss_kib(pid: u32) -> anyhow::Result<u64> {
    let mut max = 0;
    for i in 0..3 {
        if i > 0 {
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        max = max.max(rss_kib(pid).context("server rss")?);
    }
    Ok(max)
}

/// Sends `request`, waits until its result is stored and the simulators reported the offers'
/// arrival, and measures both from the moment of the call.
async fn fan_out(
    fleet: &Fleet,
    request: pb::SendCommandRequest,
    n_expected: usize,
    limit: Duration,
) -> anyhow::Result<Round> {
    let mut client = fleet.commands.clone();
    let since = unix_ms(SystemTime::now());
    let started = Instant::now();
    let command = client
        .send_command(request)
        .await
        .context("SendCommand")?
        .into_inner()
        .command
        .context("SendCommand answered without the command")?;
    let send_ms = started.elapsed().as_secs_f64() * 1000.0;
    let (command, finished) = wait_finished(fleet, &command.command_id, started, limit).await?;
    let stored_secs = if finished {
        started.elapsed().as_secs_f64()
    } else {
        f64::NAN
    };
    // Every offer arrived before its result was stored; the simulators report them with their
    // next stats record.
    let arrived = Instant::now();
    let offer_ms = loop {
        let offers = offer_latencies(&fleet.sim, since);
        if offers.len() >= n_expected || arrived.elapsed() > Duration::from_secs(15) {
            break offers;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    Ok(Round {
        command,
        send_ms,
        stored_secs,
        finished,
        offer_ms,
    })
}

/// Polls command `id` until it is finished, printing its progress every few seconds. Returns
/// it, and whether it finished before `limit` passed since `started`.
async fn wait_finished(
    fleet: &Fleet,
    id: &str,
    started: Instant,
    limit: Duration,
) -> anyhow::Result<(pb::Command, bool)> {
    let mut next_progress = Instant::now() + Duration::from_secs(5);
    loop {
        let command = get(&fleet.commands, id).await?;
        if command.finished_at.is_some() {
            return Ok((command, true));
        }
        let progress = format!(
            "{}; the simulator counted {} offers and {} finished invocations",
            counts_text(&command),
            fleet.sim.latest_u64("offers_received"),
            fleet.sim.latest_u64("invocations_finished"),
        );
        if started.elapsed() > limit {
            eprintln!("commands: {id} did NOT finish within {limit:?}: {progress}");
            return Ok((command, false));
        }
        if Instant::now() >= next_progress {
            next_progress += Duration::from_secs(5);
            eprintln!(
                "commands: {id} after {:.0} s: {progress}",
                started.elapsed().as_secs_f64()
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn get(commands: &CommandClient, id: &str) -> anyhow::Result<pb::Command> {
    commands
        .clone()
        .get_command(pb::GetCommandRequest {
            command_id: id.to_owned(),
        })
        .await
        .context("GetCommand")?
        .into_inner()
        .command
        .context("GetCommand answered without the command")
}

/// For each offer the simulator saw arrive at or after `since` (Unix ms): ms since `since`.
fn offer_latencies(sim: &Simulator, since: u64) -> Vec<f64> {
    let mut out = Vec::new();
    for (_, stats) in &lock(&sim.reports).stats {
        let Some(arrivals) = stats["offer_arrivals"].as_array() else {
            continue;
        };
        for pair in arrivals {
            let (Some(ms), Some(n)) = (pair[0].as_u64(), pair[1].as_u64()) else {
                continue;
            };
            if ms >= since {
                out.extend(std::iter::repeat_n((ms - since) as f64, n as usize));
            }
        }
    }
    out
}

// === impl Fleet ===

impl Fleet {
    async fn stop(&mut self) {
        self.sim.stop().await;
        self.server.stop(Duration::from_secs(30)).await;
    }
}
