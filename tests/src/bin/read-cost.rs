//! `read-cost`: what reads cost the server, measured on a `tether-server` child process (from
//! the same target directory) through its RSS, with agents as large as the server accepts
//! (`tether_tests::heavy`).
//!
//! - `watch`: an org of `--agents` heavy agents (records at the limits, samples with
//!   `--watch-disks` disks); `--watchers` `WatchAgents` streams (with metrics events) that never
//!   read, on connections of their own. RSS before, after they opened, and after `--churn` new
//!   agents enrolled and reported while the watchers still did not read.
//! - `reads`: on a fresh server, `--list-agents` heavy agents whose sample lists the most disks
//!   allowed, the first of them with `--samples` samples. `ListAgents` and `GetAgent` through a
//!   client with the standard 4 MiB message limit (whether they answer, and their sizes), then
//!   `--callers` concurrent viewer `GetMetrics(step=0)` calls over the samples: the peak RSS
//!   they add (VmHWM, reset just before through `/proc/PID/clear_refs`).
//!
//! Build the binaries first: `cargo build -p tether-server -p tether-agent -p tether-tests`.
//! Figures go to stdout as `name = value` lines.

#[path = "../bench/procs.rs"]
// Shared with fleet-bench; this tool uses the server half only.
#[allow(dead_code)]
mod procs;

use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use clap::Parser;
use procs::{Reaper, ServerProc, free_port, rss_kib, status_kib};
use prost::Message as _;
use tether_proto as pb;
use tether_tests::{Bearer, FleetClient, MAX_DISKS, Seed, seed_heavy_agents};
use tonic::transport::{Channel, Endpoint};

/// Measures what reads cost the server.
#[derive(Debug, Parser, Clone)]
#[command(name = "read-cost")]
struct Args {
    /// Scenarios to run: `watch` and/or `reads`.
    #[arg(long, value_delimiter = ',', default_value = "watch,reads")]
    scenarios: Vec<String>,
    /// Heavy agents in the watched org.
    #[arg(long, default_value_t = 1_000)]
    agents: usize,
    /// Disks per sample of the watched agents.
    #[arg(long, default_value_t = 0)]
    watch_disks: usize,
    /// Watchers that never read.
    #[arg(long, default_value_t = 50)]
    watchers: usize,
    /// Agents that reconnect and report while the watchers do not read.
    #[arg(long, default_value_t = 200)]
    churn: usize,
    /// Heavy agents (with the most disks) listed in `reads`.
    #[arg(long, default_value_t = 40)]
    list_agents: usize,
    /// Heavy samples of the agent whose metrics are read.
    #[arg(long, default_value_t = 600)]
    samples: u64,
    /// Concurrent `GetMetrics` calls.
    #[arg(long, default_value_t = 4)]
    callers: usize,
    /// Extra flags for tether-server (repeat).
    #[arg(long = "server-flag", allow_hyphen_values = true)]
    server_flags: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("start the tokio runtime")?;
    let reaper = Reaper::default();
    let outcome = runtime.block_on(run(&args, &reaper));
    reaper.kill_all();
    outcome
}

async fn run(args: &Args, reaper: &Reaper) -> anyhow::Result<()> {
    let bin_dir = procs::bin_dir()?;
    let tmp = tempfile::Builder::new()
        .prefix("read-cost-")
        .tempdir()
        .context("temp dir")?;
    if args.scenarios.iter().any(|s| s == "watch") {
        let dir = tmp.path().join("watch");
        let server = start(reaper, &bin_dir, &dir, args).await?;
        watch(args, &server).await?;
    }
    if args.scenarios.iter().any(|s| s == "reads") {
        let dir = tmp.path().join("reads");
        let server = start(reaper, &bin_dir, &dir, args).await?;
        let seeding = channel(&server.url).await?;
        eprintln!(
            "seeding {} heavy agents with {MAX_DISKS} disks",
            args.list_agents
        );
        let seed = Seed {
            samples: args.samples,
            disks: MAX_DISKS,
            concurrency: 1,
        };
        let mut agents = seed_heavy_agents(&seeding, &server.enroll_token, 0..1, seed).await?;
        let seed = Seed {
            samples: 1,
            concurrency: 8,
            ..seed
        };
        let rest = 1..args.list_agents.max(1);
        agents.extend(seed_heavy_agents(&seeding, &server.enroll_token, rest, seed).await?);
        list(&server, &agents[0].0).await?;
        metrics(args, &server, &agents[0].0).await?;
    }
    Ok(())
}

async fn start(
    reaper: &Reaper,
    bin_dir: &Path,
    dir: &Path,
    args: &Args,
) -> anyhow::Result<ServerProc> {
    std::fs::create_dir_all(dir)?;
    ServerProc::start(
        reaper,
        bin_dir,
        free_port()?,
        &dir.join("data"),
        &args.server_flags,
        &dir.join("server.log"),
    )
    .await
}

async fn channel(url: &str) -> anyhow::Result<Channel> {
    Endpoint::from_shared(url.to_owned())?
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await
        .context("connect to the server")
}

/// A fleet client with tonic's default (4 MiB) decoding limit, as every standard client has.
async fn fleet(url: &str, token: &str) -> anyhow::Result<FleetClient> {
    Ok(
        pb::fleet_service_client::FleetServiceClient::with_interceptor(
            channel(url).await?,
            Bearer(Some(token.to_owned())),
        ),
    )
}

/// RSS once it stopped moving (two readings 500 ms apart within 1 %), at most 10 s.
async fn settled_rss_kib(pid: u32) -> anyhow::Result<u64> {
    let mut last = rss_kib(pid).context("read the server's RSS")?;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = rss_kib(pid).context("read the server's RSS")?;
        if now.abs_diff(last) * 100 <= last {
            return Ok(now);
        }
        last = now;
    }
    Ok(last)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn figure(name: &str, value: impl std::fmt::Display) {
    println!("{name} = {value}");
}

async fn watch(args: &Args, server: &ServerProc) -> anyhow::Result<()> {
    let seeding = channel(&server.url).await?;
    eprintln!("seeding {} heavy agents", args.agents);
    let seed = Seed {
        samples: 1,
        disks: args.watch_disks,
        concurrency: 16,
    };
    let agents = seed_heavy_agents(&seeding, &server.enroll_token, 0..args.agents, seed).await?;
    let baseline = settled_rss_kib(server.pid).await?;
    figure("watch.agents", agents.len());
    figure("watch.rss_before_mib", format!("{:.1}", mib(baseline)));

    // Each watcher with a viewer token of its own (one token may hold only a few watches), on
    // its own connection, never reading: only the HTTP/2 window (64 KiB by default) can leave
    // the server.
    let mut admin = pb::admin_service_client::AdminServiceClient::with_interceptor(
        seeding.clone(),
        Bearer(Some(server.admin_token.clone())),
    );
    let mut watchers = Vec::new();
    let mut refused = Vec::new();
    for i in 0..args.watchers {
        let token =
            tether_tests::create_token(&mut admin, &format!("watcher-{i}"), pb::Role::Viewer, None)
                .await
                .secret;
        let mut client = fleet(&server.url, &token).await?;
        match client
            .watch_agents(pb::WatchAgentsRequest {
                include_metrics: true,
                ..Default::default()
            })
            .await
        {
            Ok(stream) => watchers.push((client, stream.into_inner())),
            Err(status) => refused.push(status.code()),
        }
    }
    if !refused.is_empty() {
        figure(
            "watch.refused",
            format!("{} ({:?})", refused.len(), refused[0]),
        );
    }
    let opened = settled_rss_kib(server.pid).await?;
    let per = opened.saturating_sub(baseline) / u64::try_from(args.watchers.max(1))?;
    figure("watch.watchers_open", watchers.len());
    figure("watch.rss_with_watchers_mib", format!("{:.1}", mib(opened)));
    figure("watch.per_watcher_kib", per);

    eprintln!("{} agents reconnect and report", args.churn);
    let n = args.agents;
    seed_heavy_agents(&seeding, &server.enroll_token, n..n + args.churn, seed).await?;
    let churned = settled_rss_kib(server.pid).await?;
    // This includes the new agents themselves.
    figure("watch.rss_after_churn_mib", format!("{:.1}", mib(churned)));
    let mut aborted = 0;
    for (_, stream) in &mut watchers {
        loop {
            match tokio::time::timeout(Duration::from_secs(5), stream.message()).await {
                Ok(Ok(Some(_))) => {}
                Ok(Err(status)) if status.code() == tonic::Code::Aborted => {
                    aborted += 1;
                    break;
                }
                _ => break,
            }
        }
    }
    figure("watch.watchers_aborted", aborted);
    Ok(())
}

async fn list(server: &ServerProc, agent_id: &str) -> anyhow::Result<()> {
    let mut client = fleet(&server.url, &server.admin_token).await?;
    match client.list_agents(pb::ListAgentsRequest::default()).await {
        Ok(page) => {
            let page = page.into_inner();
            figure("list.first_page_agents", page.agents.len());
            figure("list.first_page_bytes", page.encoded_len());
        }
        Err(status) => figure("list.first_page", format!("{:?}", status.code())),
    }
    let mut request = pb::ListAgentsRequest {
        page_size: 1000,
        ..Default::default()
    };
    let (mut pages, mut listed, mut largest) = (0, 0, 0);
    loop {
        match client.list_agents(request.clone()).await {
            Ok(page) => {
                let page = page.into_inner();
                pages += 1;
                listed += page.agents.len();
                largest = largest.max(page.encoded_len());
                if page.next_page_token.is_empty() {
                    break;
                }
                request.page_token = page.next_page_token;
            }
            Err(status) => {
                figure("list.all_pages_1000", format!("{:?}", status.code()));
                break;
            }
        }
    }
    figure("list.pages_of_1000", pages);
    figure("list.listed", listed);
    figure("list.largest_page_bytes", largest);
    match client
        .get_agent(pb::GetAgentRequest {
            agent_id: agent_id.to_owned(),
        })
        .await
    {
        Ok(agent) => figure("get_agent.bytes", agent.into_inner().encoded_len()),
        Err(status) => figure("get_agent", format!("{:?}", status.code())),
    }
    Ok(())
}

async fn metrics(args: &Args, server: &ServerProc, agent_id: &str) -> anyhow::Result<()> {
    let mut admin = pb::admin_service_client::AdminServiceClient::with_interceptor(
        channel(&server.url).await?,
        Bearer(Some(server.admin_token.clone())),
    );
    let viewer = tether_tests::create_token(&mut admin, "viewer", pb::Role::Viewer, None)
        .await
        .secret;
    let before = settled_rss_kib(server.pid).await?;
    // Resets VmHWM to the current RSS (proc(5), clear_refs "5").
    std::fs::write(format!("/proc/{}/clear_refs", server.pid), "5")
        .context("reset the server's peak RSS")?;
    let now = SystemTime::now();
    let request = pb::GetMetricsRequest {
        agent_id: agent_id.to_owned(),
        start: Some((now - Duration::from_secs(args.samples + 60)).into()),
        end: Some((now + Duration::from_secs(60)).into()),
        step: Some(prost_types::Duration::default()),
    };
    let calls = (0..args.callers).map(|_| {
        let (url, token, request) = (server.url.clone(), viewer.clone(), request.clone());
        async move {
            let mut client = fleet(&url, &token).await?;
            anyhow::Ok(client.get_metrics(request).await)
        }
    });
    let answers = futures::future::try_join_all(calls).await?;
    let peak = status_kib(server.pid, "VmHWM:").context("read the server's peak RSS")?;
    figure("metrics.samples", args.samples);
    figure("metrics.rss_before_mib", format!("{:.1}", mib(before)));
    figure(
        "metrics.peak_added_mib",
        format!("{:.1}", mib(peak.saturating_sub(before))),
    );
    for (i, answer) in answers.into_iter().enumerate() {
        match answer {
            Ok(points) => {
                let points = points.into_inner();
                figure(
                    &format!("metrics.call_{i}"),
                    format!(
                        "{} points, {} bytes",
                        points.points.len(),
                        points.encoded_len()
                    ),
                );
            }
            Err(status) => figure(&format!("metrics.call_{i}"), format!("{:?}", status.code())),
        }
    }
    Ok(())
}
