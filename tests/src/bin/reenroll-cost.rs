//! `reenroll-cost`: what one re-enrollment of a machine costs the server in memory and disk.
//!
//! Starts `tether-server` (from the same target directory) as a child process on a fresh data
//! directory, re-enrolls one machine (one hardware id, the same agent id every time)
//! `--warmup` times, reads the server's RSS and store size, re-enrolls it `--count` more times,
//! reads them again, and prints the difference per re-enrollment. Every re-enrollment presents
//! the agent's previous credential, which is how a machine proves that it is the agent it was;
//! the per-hardware-id re-enrollment rate (and, as for every bench tool, the per-token request
//! rate) is lifted so that the loop measures memory, not the limits.
//!
//! Build the binaries first: `cargo build -p tether-server -p tether-tests`.
//! Figures go to stdout as `name = value` lines.

#[path = "../bench/procs.rs"]
// Shared with fleet-bench; this tool uses the server half only.
#[allow(dead_code)]
mod procs;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use procs::{Reaper, ServerProc, free_port, rss_kib};
use tether_proto as pb;
use tether_tests::{AgentClient, Bearer};
use tonic::transport::Endpoint;

/// Measures what one re-enrollment costs the server.
#[derive(Debug, Parser)]
#[command(name = "reenroll-cost")]
struct Args {
    /// Re-enrollments before the first measurement (buffers and caches warm up).
    #[arg(long, default_value_t = 500)]
    warmup: usize,
    /// Re-enrollments between the two measurements.
    #[arg(long, default_value_t = 5000)]
    count: usize,
    /// Extra flags for the server, e.g. `--server-arg=--store-cache-mib=1`.
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    server_args: Vec<String>,
    /// Where the server's data directory and log go (default: a temporary directory).
    #[arg(long)]
    out: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let reaper = Reaper::default();
    let bin_dir = std::env::current_exe()
        .context("locate reenroll-cost")?
        .parent()
        .context("reenroll-cost has no directory")?
        .to_owned();
    let temp = tempfile::tempdir().context("temporary directory")?;
    let dir = args.out.clone().unwrap_or_else(|| temp.path().to_owned());
    std::fs::create_dir_all(&dir)?;
    let data = dir.join("data");
    let mut flags = vec![
        "--reenroll-per-minute=1000000".to_owned(),
        "--reenroll-burst=1000000".to_owned(),
    ];
    flags.extend(args.server_args.iter().cloned());
    let mut server = ServerProc::start(
        &reaper,
        &bin_dir,
        free_port()?,
        &data,
        &flags,
        &dir.join("server.log"),
    )
    .await?;
    let channel = Endpoint::from_shared(server.url.clone())?
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await
        .context("connect to the server")?;
    let mut agent: AgentClient = pb::agent_service_client::AgentServiceClient::with_interceptor(
        channel,
        Bearer(Some(server.enroll_token.clone())),
    );

    let mut previous = String::new();
    let mut agent_id = None;
    let mut enroll_n = async |n: usize| -> anyhow::Result<()> {
        for _ in 0..n {
            let response = agent
                .enroll(pb::EnrollRequest {
                    system_info: Some(tether_tests::system_info("reenrolled")),
                    previous_credential: previous.clone(),
                    ..Default::default()
                })
                .await?
                .into_inner();
            if agent_id.get_or_insert_with(|| response.agent_id.clone()) != &response.agent_id {
                bail!("the machine got a new agent id: the re-enrollment was not recognised");
            }
            previous = response.agent_credential;
        }
        Ok(())
    };
    let measure = |pid: u32| -> anyhow::Result<(u64, u64)> {
        let rss = rss_kib(pid).context("read the server's RSS")?;
        Ok((rss, dir_bytes(&data.join("store"))))
    };
    enroll_n(args.warmup).await?;
    let (rss_before, disk_before) = measure(server.pid)?;
    let started = Instant::now();
    enroll_n(args.count).await?;
    let elapsed = started.elapsed();
    let (rss_after, disk_after) = measure(server.pid)?;
    server.stop(Duration::from_secs(10)).await;

    #[allow(clippy::cast_precision_loss, reason = "figures for a report")]
    let per = |before: u64, after: u64| (after as f64 - before as f64) / args.count as f64;
    #[allow(clippy::cast_precision_loss, reason = "figures for a report")]
    let rate = args.count as f64 / elapsed.as_secs_f64();
    figure("reenroll.count", args.count);
    figure("reenroll.warmup", args.warmup);
    figure("reenroll.per_second", format!("{rate:.0}"));
    figure("reenroll.rss_before_kib", rss_before);
    figure("reenroll.rss_after_kib", rss_after);
    figure(
        "reenroll.rss_kib_per_reenrollment",
        format!("{:+.3}", per(rss_before, rss_after)),
    );
    figure("reenroll.store_before_kib", disk_before / 1024);
    figure("reenroll.store_after_kib", disk_after / 1024);
    figure(
        "reenroll.store_kib_per_reenrollment",
        format!("{:+.3}", per(disk_before, disk_after) / 1024.0),
    );
    Ok(())
}

fn figure(name: &str, value: impl std::fmt::Display) {
    println!("{name} = {value}");
}

/// Total size of the files under `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&entry.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}
