//! The `fleet` phase of the benchmark: N agents on one connection each, plus agents that get
//! killed and agents that go silent, measuring memory, ingest rate and ack latency, CPU,
//! close → offline, silence → stale, false transitions, and a server restart under load.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use serde_json::{Value, json};
use tether_agent::LatencySnapshot;
use tether_proto as pb;

use crate::Args;
use crate::observe::{
    Watched, count_online, false_transitions, first_latencies, fleet_client, observe_return,
    to_duration, unix_ms, wait_ready, watch,
};
use crate::procs::{
    RESIDENCE, Reaper, ServerProc, Simulator, bucket_quantile, cpu_secs, free_port, idle_rss_kib,
    load_generator_note, lock, pinning, residence_range, rss_kib, server_flags, simulator_flags,
};
use crate::report::{Row, quantile};

pub(crate) async fn fleet_phase(
    args: &Args,
    reaper: &Reaper,
    bin_dir: &Path,
    dir: &Path,
    record: &mut impl FnMut(Row),
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let port = free_port()?;
    let flags = server_flags(
        &[
            ("--metrics-interval", args.metrics_interval),
            ("--heartbeat-interval", args.heartbeat_interval),
        ],
        &args.server_flags,
    );
    let data_dir = dir.join("data");
    let server_log = dir.join("server.log");
    eprintln!("fleet: starting tether-server on port {port}");
    let mut server =
        ServerProc::start(reaper, bin_dir, port, &data_dir, &flags, &server_log).await?;
    let idle_rss = idle_rss_kib(&server).await?;
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
        let mut v = simulator_flags(&server, n_conns, &args.source_addrs, args.ramp);
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
    let poll = Duration::from_secs(2);
    wait_ready(
        "fleet",
        &mut [&mut main, &mut close],
        started,
        limit,
        poll,
        dir,
    )
    .await?;
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
    wait_ready("fleet", &mut [&mut silent], started, limit, poll, dir).await?;
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
    let residence0 = server.histogram(RESIDENCE).await?;
    let t0 = Instant::now();
    let cpu0 = cpu_secs(server.pid).context("server cpu")?;
    let sims_cpu =
        |sims: &[&Simulator]| -> f64 { sims.iter().filter_map(|s| cpu_secs(s.pid)).sum() };
    let sim_cpu0 = sims_cpu(&[&main, &close, &silent]);
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
    let residence1 = server.histogram(RESIDENCE).await?;
    let residence_p99_ms = bucket_quantile(&residence0, &residence1, 0.99)
        .map(|(lower, upper)| (lower * 1000.0, upper * 1000.0));
    let cpu1 = cpu_secs(server.pid).context("server cpu")?;
    let sim_cpu = sims_cpu(&[&main, &close, &silent]) - sim_cpu0;
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
    // The store's memory, reported apart: its open heads (measured) under their budget, and
    // its page cache (bounded by configuration; sled does not say how much of it is used).
    let (heads, heads_budget, cache) = server.store_memory().await?;
    let heads_kib = heads / 1024;
    let without_heads_kib =
        (steady_rss.saturating_sub(idle_rss + heads_kib)) as f64 / n_total as f64;
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    let online_ok = online as usize == n_total;
    record(Row {
        scenario: format!("{} agents, one connection each, steady state", n_total),
        figure: format!(
            "{}/{} online (ramp {ramp_secs:.0} s); server RSS idle {:.1} MiB, steady {:.1} MiB = {per_agent_kib:.1} KiB/agent; store: heads {:.1} MiB (budget {:.0} MiB), page cache ≤ {:.0} MiB; without the heads {without_heads_kib:.1} KiB/agent",
            online,
            n_total,
            idle_rss as f64 / 1024.0,
            steady_rss as f64 / 1024.0,
            mib(heads),
            mib(heads_budget),
            mib(cache)
        ),
        target: "all online; ≤ 32 KiB/agent above idle".into(),
        pass: Some(online_ok && per_agent_kib <= 32.0),
        values: json!({"agents": n_total, "online": online, "idle_rss_kib": idle_rss,
            "steady_rss_kib": steady_rss, "kib_per_agent": per_agent_kib, "ramp_secs": ramp_secs,
            "enroll_per_sec": enroll_rate, "store_heads_bytes": heads,
            "store_heads_budget_bytes": heads_budget, "store_cache_limit_bytes": cache,
            "kib_per_agent_without_heads": without_heads_kib}),
    });
    let msg_rate = msgs / window;
    let ack_rate = acked / window;
    let sent_rate = sent / window;
    // What the agents that report through the window would send at their interval (the
    // silent group is muted before it starts).
    let nominal = (args.agents + args.closes) as f64 / args.metrics_interval.as_secs_f64();
    let sim_cores = sim_cpu / window;
    let load_generator =
        load_generator_note(sim_cores, pinning().simulator_cores(), sent_rate, nominal);
    record(Row {
        scenario: "inbound messages/s, acked after durable write".into(),
        figure: format!(
            "{msg_rate:.0} msgs/s in ({sent_rate:.0} samples/s sent of {nominal:.0} nominal, {ack_rate:.0} samples/s acked) over {window:.0} s; ack p50 {:.1} ms, p99 {:.1} ms (inside the server: p99 in {}){load_generator}",
            ms(0.5),
            ms(0.99),
            residence_range(residence_p99_ms)
        ),
        target: "≥ 20,000/s acked for the window".into(),
        pass: Some(ack_rate >= 20_000.0),
        values: json!({"messages_per_sec": msg_rate, "samples_sent_per_sec": sent_rate,
            "samples_nominal_per_sec": nominal,
            "samples_acked_per_sec": ack_rate, "window_secs": window, "ack_p50_ms": ms(0.5),
            "ack_p99_ms": ms(0.99), "ack_samples": hist.count(),
            "server_residence_p99_bucket_ms": residence_p99_ms,
            "simulators_saturated": !load_generator.is_empty()}),
    });
    let cpu = cpu1 - cpu0;
    record(Row {
        scenario: "server CPU".into(),
        figure: format!(
            "{:.3} CPU-s per 1,000 messages ({:.2} cores at {msg_rate:.0} msgs/s); simulators {:.2} cores; {}",
            cpu / (msgs / 1000.0).max(1e-9),
            cpu / window,
            sim_cpu / window,
            pinning().describe()
        ),
        target: "report".into(),
        pass: None,
        values: json!({"cpu_secs": cpu, "messages": msgs, "cpu_secs_per_1000": cpu / (msgs / 1000.0).max(1e-9), "cores": cpu / window,
            "simulator_cores": sim_cpu / window, "pinning": pinning().describe()}),
    });

    // Stale: the silent simulator muted its agents 10 s after it was ready. A short ingest
    // window (`--duration 10s`) ends before they can turn stale: wait, bounded, until their
    // deadline (stale_after + 1 s after the silence) and a second for the watch has passed.
    let deadline_ms = stale_after.as_millis() as u64 + 2_000;
    let waited_from = Instant::now();
    while waited_from.elapsed() < stale_after + Duration::from_secs(15) {
        let silenced = lock(&silent.reports).silenced_unix_ms;
        if silenced.is_some_and(|at| unix_ms(SystemTime::now()) >= at + deadline_ms) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
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
    let errors_before = main.latest_u64("errors");
    let stop_took = server.stop(Duration::from_secs(30)).await;
    let restart_at = Instant::now();
    // This server's own stop, further down, drains without the spread: the same restart once
    // more, as it was before the drain spread its agents' return.
    let mut unspread = flags.clone();
    unspread.push("--drain-max-window=0s".to_owned());
    server = ServerProc::start(reaper, bin_dir, port, &data_dir, &unspread, &server_log).await?;
    let mut fleet = fleet_client(&server.url, &server.admin_token).await?;
    let spread = observe_return(
        &mut fleet,
        "group=main",
        args.agents,
        restart_at,
        Duration::from_secs(90),
    )
    .await;
    let back = spread.back;
    let watched_after: Watched = Arc::default();
    let watcher = tokio::spawn(watch(fleet.clone(), watched_after.clone()));
    let errors_at_back = main.latest_u64("errors");
    let watch_from = unix_ms(SystemTime::now());
    tokio::time::sleep(Duration::from_secs(15)).await;
    let rss_after = rss_kib(server.pid).context("server rss after the restart")?;
    let errors_later = main.latest_u64("errors");
    let back_secs = back.map_or(f64::NAN, |d| d.as_secs_f64());
    record(Row {
        scenario: format!("reconnect storm: restart under {} agents", args.agents),
        figure: format!(
            "back online {back_secs:.1} s after restart (stop took {:.1} s), spread over {:.1} s, peak {} reconnects/s; {} session errors during the outage, {} after; RSS {:.1} MiB vs steady {:.1} MiB",
            stop_took.as_secs_f64(),
            spread.spread.map_or(f64::NAN, |d| d.as_secs_f64()),
            spread.peak_per_second,
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
            "spread_secs": spread.spread.map(|d| d.as_secs_f64()),
            "peak_reconnects_per_second": spread.peak_per_second,
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

    // The same restart without the drain's spread (this server was started with a zero drain
    // window): every agent told to come back at once, as before the drain spread them.
    let stop_took = server.stop(Duration::from_secs(30)).await;
    let restart_at = Instant::now();
    server = ServerProc::start(reaper, bin_dir, port, &data_dir, &flags, &server_log).await?;
    let mut fleet = fleet_client(&server.url, &server.admin_token).await?;
    let storm = observe_return(
        &mut fleet,
        "group=main",
        args.agents,
        restart_at,
        Duration::from_secs(90),
    )
    .await;
    record(Row {
        scenario: format!(
            "reconnect storm without the drain's spread: restart under {} agents",
            args.agents
        ),
        figure: format!(
            "peak {} reconnects/s, against {} with the spread; back online {:.1} s after restart, over {:.1} s (stop took {:.1} s)",
            storm.peak_per_second,
            spread.peak_per_second,
            storm.back.map_or(f64::NAN, |d| d.as_secs_f64()),
            storm.spread.map_or(f64::NAN, |d| d.as_secs_f64()),
            stop_took.as_secs_f64()
        ),
        target: "reference for the row above".into(),
        pass: None,
        values: json!({"peak_reconnects_per_second": storm.peak_per_second,
            "spread_peak_reconnects_per_second": spread.peak_per_second,
            "back_secs": storm.back.map(|d| d.as_secs_f64()),
            "spread_secs": storm.spread.map(|d| d.as_secs_f64()),
            "stop_secs": stop_took.as_secs_f64()}),
    });

    // An agent stops on its own only when revoked without a token or misconfigured; nothing
    // here is either.
    let stopped: Vec<(String, u64)> = [&main, &close, &silent]
        .iter()
        .map(|sim| (sim.prefix.clone(), sim.latest_u64("stopped")))
        .collect();
    let n_stopped: u64 = stopped.iter().map(|(_, n)| n).sum();
    record(Row {
        scenario: "no simulated agent stops on its own".into(),
        figure: stopped
            .iter()
            .map(|(group, n)| format!("{group}: {n} stopped"))
            .collect::<Vec<_>>()
            .join(", "),
        target: "0".into(),
        pass: Some(n_stopped == 0),
        values: json!({"stopped": n_stopped}),
    });

    main.stop().await;
    silent.stop().await;
    server.stop(Duration::from_secs(30)).await;
    Ok(())
}
