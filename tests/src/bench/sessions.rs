//! The `sessions` phase of the benchmark: 100,000 sessions over ≤ 1,000 connections, measuring
//! memory per session and query latency over the whole fleet while ingest runs.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::json;
use tether_proto as pb;

use crate::Args;
use crate::observe::{fleet_client, wait_ready};
use crate::procs::{
    Reaper, ServerProc, Simulator, cpu_secs, free_port, idle_rss_kib, lock, rss_kib, server_flags,
    simulator_flags,
};
use crate::report::{Row, quantile};

/// The server's flags for a fleet of multiplexed sessions: the sessions intervals, and
/// `stale_after`/`offline_after` that fit the heartbeat.
pub(crate) fn sessions_server_flags(args: &Args) -> Vec<String> {
    let stale = (args.sessions_heartbeat_interval * 3).max(Duration::from_secs(15));
    server_flags(
        &[
            ("--metrics-interval", args.sessions_metrics_interval),
            ("--heartbeat-interval", args.sessions_heartbeat_interval),
            ("--stale-after", stale),
            ("--offline-after", stale * 3),
        ],
        &args.server_flags,
    )
}

pub(crate) async fn sessions_phase(
    args: &Args,
    reaper: &Reaper,
    bin_dir: &Path,
    dir: &Path,
    record: &mut impl FnMut(Row),
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let port = free_port()?;
    let flags = sessions_server_flags(args);
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
    let idle_rss = idle_rss_kib(&server).await?;
    let mut fleet = fleet_client(&server.url, &server.admin_token).await?;
    let mut sim_args = simulator_flags(
        &server,
        args.session_connections,
        &args.source_addrs,
        (args.ramp / 20.0).max(1.0),
    );
    sim_args.extend([
        "--state-file".to_owned(),
        dir.join("sessions.state").display().to_string(),
        "--stats-interval".to_owned(),
        "2s".to_owned(),
    ]);
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
    let poll = Duration::from_secs(5);
    wait_ready("sessions", &mut [&mut sim], started, limit, poll, dir).await?;
    let ramp_secs = started.elapsed().as_secs_f64();
    let enroll_rate = lock(&sim.reports).enroll_per_sec;
    tokio::time::sleep(Duration::from_secs(15)).await;
    let summary = fleet
        .get_fleet_summary(pb::GetFleetSummaryRequest {})
        .await?
        .into_inner();
    let steady_rss = rss_kib(server.pid).context("server rss")?;
    let sim_rss = sim.latest_u64("rss_kib");
    let (errors, stopped) = (sim.latest_u64("errors"), sim.latest_u64("stopped"));
    let per_session = (steady_rss.saturating_sub(idle_rss)) as f64 / args.sessions as f64;
    record(Row {
        scenario: format!(
            "{} sessions over {} connections",
            args.sessions, args.session_connections
        ),
        figure: format!(
            "{}/{} online (enroll {:.0}/s, ramp {ramp_secs:.0} s; {errors} session errors, {stopped} agents stopped on their own); server RSS {:.1} MiB = {per_session:.1} KiB/session above idle; simulator {:.1} KiB/session",
            summary.online,
            args.sessions,
            enroll_rate.unwrap_or(f64::NAN),
            steady_rss as f64 / 1024.0,
            sim_rss as f64 / args.sessions as f64
        ),
        target: "all online, none stopped; report RSS/session".into(),
        pass: Some(summary.online as usize == args.sessions && stopped == 0),
        values: json!({"sessions": args.sessions, "online": summary.online, "idle_rss_kib": idle_rss,
            "steady_rss_kib": steady_rss, "kib_per_session": per_session,
            "simulator_kib_per_session": sim_rss as f64 / args.sessions as f64,
            "ramp_secs": ramp_secs, "enroll_per_sec": enroll_rate,
            "session_errors": errors, "agents_stopped": stopped}),
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
    let msgs0 = sim.latest_f64("messages_sent");
    let q0 = Instant::now();
    let mut list = Vec::new();
    let mut list_total = 0;
    let mut summ = Vec::new();
    let mut get = Vec::new();
    // At least `queries` calls of each, and for at least the query window, so the window spans
    // several of the simulator's stats records and the ingest figure is the one the queries ran
    // under.
    let mut i = 0;
    while i < args.queries || q0.elapsed() < args.sessions_query_window {
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
        i += 1;
    }
    let q_secs = q0.elapsed().as_secs_f64();
    let msgs = sim.latest_f64("messages_sent") - msgs0;
    let cpu = cpu_secs(server.pid).context("server cpu")? - cpu0;
    record(Row {
        scenario: format!(
            "ListAgents label selector over {} agents, ingest running",
            args.sessions
        ),
        figure: format!(
            "ListAgents(env=prod,region=eu → {list_total}, page 100) p50 {:.1} ms p99 {:.1} ms; GetFleetSummary p99 {:.1} ms; GetAgent p99 {:.1} ms; {i} calls each over {q_secs:.0} s, ingest {:.0} msgs/s",
            quantile(&list, 0.5),
            quantile(&list, 0.99),
            quantile(&summ, 0.99),
            quantile(&get, 0.99),
            msgs / q_secs
        ),
        target: "ListAgents and GetFleetSummary p99 < 10 ms".into(),
        pass: Some(quantile(&list, 0.99) < 10.0 && quantile(&summ, 0.99) < 10.0),
        values: json!({"list_p50_ms": quantile(&list, 0.5), "list_p99_ms": quantile(&list, 0.99),
            "summary_p99_ms": quantile(&summ, 0.99), "get_agent_p99_ms": quantile(&get, 0.99),
            "matches": list_total, "calls_per_rpc": i, "window_secs": q_secs,
            "ingest_msgs_per_sec": msgs / q_secs,
            "server_cpu_cores": cpu / q_secs}),
    });
    sim.stop().await;
    server.stop(Duration::from_secs(30)).await;
    Ok(())
}
