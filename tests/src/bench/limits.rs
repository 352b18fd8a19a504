//! The machine's own limits, printed beside the table so that figures from different machines
//! can be compared: the cores and how the benchmark's processes share them, how many
//! `fdatasync` calls a second the data directory's disk takes, and what the store alone
//! ingests (`store_bench 4096 200`, when the example is built).

use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::json;

use crate::procs::{limit_server_cpu, pinned, pinning};
use crate::report::{Row, loadavg};

/// How long the fdatasync probe writes.
const PROBE: Duration = Duration::from_secs(2);

/// Measures the local limits in `dir` (on the data directories' filesystem) and records them
/// as one row.
///
/// # Errors
///
/// The probe's file could not be written.
pub(crate) async fn local_limits(
    bin_dir: &Path,
    dir: &Path,
    record: &mut impl FnMut(Row),
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let probe_dir = dir.to_owned();
    let syncs = tokio::task::spawn_blocking(move || fdatasync_rate(&probe_dir))
        .await
        .context("fdatasync probe task")??;
    let store = store_bench(bin_dir, dir).await;
    let store_text = match &store {
        Ok(rate) => format!("store_bench 4096 200: {rate:.0} samples/s"),
        Err(e) => format!("store_bench not run ({e:#})"),
    };
    record(Row {
        scenario: "local limits".into(),
        figure: format!(
            "{cores} cores, {}; fdatasync {syncs:.0}/s on the data directory's disk; {store_text}; load average {}",
            pinning().describe(),
            loadavg().unwrap_or_default()
        ),
        target: "report".into(),
        pass: None,
        values: json!({"cores": cores, "pinning": pinning().describe(),
            "fdatasync_per_sec": syncs, "store_bench_samples_per_sec": store.ok(),
            "loadavg": loadavg()}),
    });
    Ok(())
}

/// `fdatasync` calls a second on a 4 KiB write each, in `dir`, for [`PROBE`].
fn fdatasync_rate(dir: &Path) -> anyhow::Result<f64> {
    let path = dir.join("fdatasync-probe");
    let mut file = std::fs::File::create(&path).context("create the fdatasync probe")?;
    let block = [0x5a_u8; 4096];
    let started = Instant::now();
    let mut n = 0_u32;
    while started.elapsed() < PROBE {
        file.write_all(&block)
            .context("write the fdatasync probe")?;
        file.sync_data().context("fdatasync the probe")?;
        n += 1;
    }
    let rate = f64::from(n) / started.elapsed().as_secs_f64();
    drop(file);
    std::fs::remove_file(&path).context("remove the fdatasync probe")?;
    Ok(rate)
}

/// Runs `examples/store_bench 4096 200` (built with `cargo build --release -p tether-server
/// --example store_bench`) on the server's cores, with its store in `dir`; its samples/s.
async fn store_bench(bin_dir: &Path, dir: &Path) -> anyhow::Result<f64> {
    let bench = bin_dir.join("examples").join("store_bench");
    if !bench.exists() {
        anyhow::bail!("{} not built", bench.display());
    }
    let child = pinned(&bench, pinning().server.as_deref())
        .args(["4096", "200"])
        .env("TMPDIR", dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("run store_bench")?;
    if let Some(pid) = child.id() {
        limit_server_cpu(pid)?;
    }
    let output = child.wait_with_output().await.context("run store_bench")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    // "819200 samples in 200 batches of 4096 ...: 12.0s, 68189 samples/s"
    stdout
        .lines()
        .find_map(|line| {
            let rate = line.strip_suffix(" samples/s")?;
            rate.rsplit(' ').next()?.parse().ok()
        })
        .with_context(|| format!("no rate in store_bench's output: {stdout}"))
}
