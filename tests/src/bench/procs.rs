//! Child processes of the benchmark: the server and the simulators, the flags they start with,
//! their output, their memory and CPU, and the guarantee that none outlives the benchmark.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, bail};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, ChildStdin, Command};

/// Which cores the server and the simulators may run on, set once by `main`.
static PINNING: OnceLock<Pinning> = OnceLock::new();

/// The server's CPU limit, set by `main` with `--server-cpu-limit` and removed at its end.
static SERVER_CPU: Mutex<Option<CpuLimit>> = Mutex::new(None);

/// The cores of the server and of the simulators: separate sets (the first half of the cores
/// for the server, the rest for the simulators) on a machine with at least 2, so that runs on
/// different machines compare the server's work and not how it shared a core with its load.
/// Applied with `taskset -c`, which execs the program: the pid the benchmark watches is the
/// program's own, and every thread it starts inherits the set (no dependency, no unsafe code).
#[derive(Clone, Debug, Default)]
pub struct Pinning {
    /// `taskset -c` lists, e.g. `0` and `1`; `None` leaves the process unpinned.
    pub server: Option<String>,
    pub simulators: Option<String>,
}

impl Pinning {
    /// Splits `cores` between the server and the simulators; nothing to split below 2 cores
    /// or without `taskset`.
    pub fn split(cores: usize) -> Self {
        let has_taskset = std::process::Command::new("taskset")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if cores < 2 || !has_taskset {
            return Self::default();
        }
        let server = cores.div_ceil(2);
        let list = |from: usize, to: usize| {
            if from + 1 == to {
                from.to_string()
            } else {
                format!("{from}-{}", to - 1)
            }
        };
        Self {
            server: Some(list(0, server)),
            simulators: Some(list(server, cores)),
        }
    }

    /// How many cores the simulators are pinned to (`None` when unpinned: they share every
    /// core with the server).
    pub fn simulator_cores(&self) -> Option<usize> {
        let list = self.simulators.as_deref()?;
        list.split(',')
            .map(|range| match range.split_once('-') {
                Some((from, to)) => {
                    let (from, to) = (from.parse::<usize>().ok()?, to.parse::<usize>().ok()?);
                    to.checked_sub(from).map(|n| n + 1)
                }
                None => range.parse::<usize>().ok().map(|_| 1),
            })
            .sum()
    }

    /// How the benchmark's processes share the machine, for the table.
    pub fn describe(&self) -> String {
        let pinned = match (&self.server, &self.simulators) {
            (Some(server), Some(sims)) => {
                format!("server pinned to cpu {server}, simulators to cpu {sims} (taskset)")
            }
            _ => "not pinned: server and simulators share every core".to_owned(),
        };
        match &*lock(&SERVER_CPU) {
            Some(limit) => format!("{pinned}; {}", limit.describe()),
            None => pinned,
        }
    }
}

/// A note for a row whose simulators used at least 90 % of the cores they are pinned to and
/// sent less than 95 % of their nominal rate: the samples they did not take were never offered, and
/// the acks they were too busy to read waited in their sockets, so the row then measures the
/// load generator as much as the server. Empty otherwise, and when the simulators are not
/// pinned (their share of the cores is not known).
pub fn load_generator_note(
    sim_cores: f64,
    pinned_cores: Option<usize>,
    sent_rate: f64,
    nominal: f64,
) -> String {
    const SATURATED: f64 = 0.9;
    const SHORT: f64 = 0.95;
    match pinned_cores {
        Some(cores) if sim_cores >= SATURATED * cores as f64 && sent_rate < SHORT * nominal => {
            format!(
                "; the simulators used {sim_cores:.2} of their {cores} core(s) and sent {:.0} % of the nominal rate: the load generator, not only the server, limits this row",
                100.0 * sent_rate / nominal.max(1e-9)
            )
        }
        _ => String::new(),
    }
}

/// The server's histogram of the time from reading a metrics report to its ack: the server's
/// part of the ack latency the agents measure.
pub const RESIDENCE: &str = "tether_report_residence_seconds";

/// A residence quantile (ms) as the tables give it: the bounds of the histogram bucket that
/// holds it (the buckets double, so that is all a scrape says).
pub fn residence_range(bucket_ms: Option<(f64, f64)>) -> String {
    match bucket_ms {
        Some((lower, upper)) if upper.is_finite() => format!("{lower:.0}–{upper:.0} ms"),
        Some((lower, _)) => format!("over {lower:.0} ms"),
        None => "no report acked".to_owned(),
    }
}

/// The bucket, as (lower bound, upper bound), that holds quantile `q` of what a cumulative
/// histogram counted between two scrapes of it (`before`, `after`, as
/// [`ServerProc::histogram`] returns them); the first bucket starts at 0, the last ends at
/// `+Inf`. `None` if nothing was counted or the scrapes' buckets differ.
pub fn bucket_quantile(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> Option<(f64, f64)> {
    if before.len() != after.len() || before.iter().zip(after).any(|(b, a)| b.0 != a.0) {
        return None;
    }
    let total = after.last()?.1 - before.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let mut lower = 0.0;
    for (b, a) in before.iter().zip(after) {
        if a.1 - b.1 >= q * total {
            return Some((lower, a.0));
        }
        lower = a.0;
    }
    None
}

/// Sets the pinning of every later child; the first call wins.
pub fn set_pinning(pinning: Pinning) {
    let _ = PINNING.set(pinning);
}

/// The pinning in effect.
pub fn pinning() -> Pinning {
    PINNING.get().cloned().unwrap_or_default()
}

/// A CPU bandwidth limit on the server's processes: a cgroup of the benchmark's own with a CFS
/// quota (`--server-cpu-limit 0.625` gives the server 0.625 of a core: the same run as on a
/// machine 1.6 times slower per message, for the server only). The quota is spread over a
/// 10 ms period, so a throttled server waits at most a few milliseconds at a time. Needs
/// root and cgroup v1's `cpu` controller or cgroup v2 with `cpu` available at the root.
/// Removed when dropped (any process still in it moved back to the parent first).
pub struct CpuLimit {
    dir: PathBuf,
    cores: f64,
    /// CPU time per [`CPU_PERIOD_US`], microseconds.
    quota_us: u64,
    version: &'static str,
}

/// The CFS period of [`CpuLimit`], microseconds.
const CPU_PERIOD_US: u64 = 10_000;

impl CpuLimit {
    /// Creates the cgroup, limited to `cores` (0.1 to 64) of one core's time.
    ///
    /// # Errors
    ///
    /// `cores` is out of range, or the machine offers no cgroup the benchmark may create.
    pub fn create(cores: f64) -> anyhow::Result<Self> {
        if !(0.1..=64.0).contains(&cores) {
            bail!("--server-cpu-limit must be between 0.1 and 64 cores, not {cores}");
        }
        let quota_us = (cores * CPU_PERIOD_US as f64).round() as u64;
        let name = format!("tether-fleet-bench-{}", std::process::id());
        let v2_root = Path::new("/sys/fs/cgroup");
        let v1_root = Path::new("/sys/fs/cgroup/cpu");
        let controllers = std::fs::read_to_string(v2_root.join("cgroup.controllers"));
        let (dir, version) = if controllers.is_ok_and(|c| c.split_whitespace().any(|c| c == "cpu"))
        {
            write(&v2_root.join("cgroup.subtree_control"), "+cpu")?;
            let dir = v2_root.join(&name);
            std::fs::create_dir(&dir).with_context(|| format!("create {}", dir.display()))?;
            write(&dir.join("cpu.max"), &format!("{quota_us} {CPU_PERIOD_US}"))?;
            (dir, "cgroup v2 cpu.max")
        } else if v1_root.join("cpu.cfs_quota_us").exists() {
            let dir = v1_root.join(&name);
            std::fs::create_dir(&dir).with_context(|| format!("create {}", dir.display()))?;
            write(&dir.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
            write(&dir.join("cpu.cfs_quota_us"), &quota_us.to_string())?;
            (dir, "cgroup v1 cpu quota")
        } else {
            bail!(
                "--server-cpu-limit needs cgroup v2 with the cpu controller or cgroup v1's cpu \
                 hierarchy at /sys/fs/cgroup/cpu; neither is here"
            );
        };
        Ok(Self {
            dir,
            cores,
            quota_us,
            version,
        })
    }

    /// Moves `pid` (every thread of it) into the limit.
    ///
    /// # Errors
    ///
    /// The cgroup refused it.
    pub fn add(&self, pid: u32) -> anyhow::Result<()> {
        write(&self.dir.join("cgroup.procs"), &pid.to_string())
    }

    fn describe(&self) -> String {
        format!(
            "server limited to {} of a core ({}, {} µs per {CPU_PERIOD_US} µs)",
            self.cores, self.version, self.quota_us
        )
    }
}

impl Drop for CpuLimit {
    fn drop(&mut self) {
        // A process killed a moment ago may take a while to leave; until then the directory
        // cannot go. Anything still running is moved back to the parent.
        let parent = self.dir.parent().map(|p| p.join("cgroup.procs"));
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let (Ok(procs), Some(parent)) = (
                std::fs::read_to_string(self.dir.join("cgroup.procs")),
                &parent,
            ) {
                for pid in procs.split_whitespace() {
                    // A process that exited in between is gone from both.
                    let _ = std::fs::write(parent, pid);
                }
            }
            match std::fs::remove_dir(&self.dir) {
                Ok(()) => return,
                Err(e) if Instant::now() >= deadline => {
                    eprintln!("could not remove the cgroup {}: {e}", self.dir.display());
                    return;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

fn write(path: &Path, value: &str) -> anyhow::Result<()> {
    std::fs::write(path, value).with_context(|| format!("write {value:?} to {}", path.display()))
}

/// Limits every later server (and the server-side `store_bench`) to `limit`, until
/// [`release_server_cpu_limit`].
pub fn set_server_cpu_limit(limit: CpuLimit) {
    *lock(&SERVER_CPU) = Some(limit);
}

/// Removes the server's CPU limit (its cgroup), once its processes are gone.
pub fn release_server_cpu_limit() {
    drop(lock(&SERVER_CPU).take());
}

/// Puts `pid` under the server's CPU limit, if there is one.
///
/// # Errors
///
/// The cgroup refused it: the run would not be the one asked for.
pub fn limit_server_cpu(pid: u32) -> anyhow::Result<()> {
    match &*lock(&SERVER_CPU) {
        Some(limit) => limit.add(pid),
        None => Ok(()),
    }
}

/// A command running `program`, under `taskset -c cpus` when `cpus` is given.
pub fn pinned(program: &Path, cpus: Option<&str>) -> Command {
    match cpus {
        Some(cpus) => {
            let mut command = Command::new("taskset");
            command.arg("-c").arg(cpus).arg(program);
            command
        }
        None => Command::new(program),
    }
}

/// Every child's pid, killed with SIGKILL when the guard drops (normal end, error, panic,
/// ctrl-c: the benchmark's `main` holds the guard).
#[derive(Clone, Default)]
pub struct Reaper {
    pids: Arc<Mutex<Vec<u32>>>,
}

/// One simulator process and what it reported.
pub struct Simulator {
    pub prefix: String,
    pub n_agents: usize,
    pub pid: u32,
    child: Child,
    /// Closing it tells the simulator (started with `--exit-on-stdin-close`) to stop.
    stdin: Option<ChildStdin>,
    pub reports: Arc<Mutex<SimReports>>,
}

/// The parsed JSON lines of one simulator.
#[derive(Default)]
pub struct SimReports {
    /// `stats` records with the local receive time.
    pub stats: Vec<(Instant, serde_json::Value)>,
    pub ready_at: Option<Instant>,
    pub silenced_unix_ms: Option<u64>,
    pub enroll_per_sec: Option<f64>,
    pub stopped: bool,
}

/// The server process.
pub struct ServerProc {
    pub child: Child,
    pub pid: u32,
    pub url: String,
    /// Where its `/metrics` listens.
    pub metrics_addr: std::net::SocketAddr,
    pub enroll_token: String,
    pub admin_token: String,
}

// === impl Reaper ===

impl Reaper {
    pub fn track(&self, pid: u32) {
        lock(&self.pids).push(pid);
    }

    pub fn kill_all(&self) {
        for pid in lock(&self.pids).drain(..) {
            signal(pid, "KILL");
        }
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        if Arc::strong_count(&self.pids) == 1 {
            self.kill_all();
        }
    }
}

/// Sends `SIG{name}` to `pid` (through kill(1): the workspace forbids unsafe code).
pub fn signal(pid: u32, name: &str) {
    let _ = std::process::Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// tether-server flags: each `(name, duration)` as `--name=1m 30s`, then `extra` as given (so a
/// flag repeated in `extra` wins).
pub fn server_flags(durations: &[(&str, Duration)], extra: &[String]) -> Vec<String> {
    durations
        .iter()
        .map(|(name, d)| format!("{name}={}", humantime::format_duration(*d)))
        .chain(extra.iter().cloned())
        .collect()
}

/// The `tether-agent simulate` flags every simulator of a phase shares: the server and its
/// enrollment token, how many connections from which source addresses, and the ramp.
pub fn simulator_flags(
    server: &ServerProc,
    n_connections: usize,
    source_addrs: &str,
    ramp: f64,
) -> Vec<String> {
    vec![
        "--server".to_owned(),
        server.url.clone(),
        "--enroll-token".to_owned(),
        server.enroll_token.clone(),
        "--connections".to_owned(),
        n_connections.to_string(),
        "--source-addrs".to_owned(),
        source_addrs.to_owned(),
        "--ramp".to_owned(),
        ramp.to_string(),
        "--enroll-concurrency".to_owned(),
        "64".to_owned(),
    ]
}

/// Starts `command` as a child the benchmark owns: stdout piped, stderr appended to `log`,
/// `RUST_LOG` from `log_var` (default `warn`), killed when dropped.
fn spawn_logged(
    command: &mut Command,
    log: &Path,
    log_var: &str,
    stdin: Stdio,
    what: &str,
) -> anyhow::Result<Child> {
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("open {}", log.display()))?;
    command
        .env("RUST_LOG", std::env::var(log_var).unwrap_or("warn".into()))
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(log_file)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("start {what}"))
}

/// Where the release binaries are: next to this one.
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locate fleet-bench")?;
    let dir = exe
        .parent()
        .context("fleet-bench has no directory")?
        .to_owned();
    for name in ["tether-server", "tether-agent"] {
        if !dir.join(name).exists() {
            bail!(
                "{} not found next to fleet-bench; build first: \
                 cargo build --release -p tether-server -p tether-agent -p tether-tests",
                dir.join(name).display()
            );
        }
    }
    Ok(dir)
}

// === impl ServerProc ===

impl ServerProc {
    /// Starts `tether-server` on `port` with `data_dir` and extra flags; waits until it
    /// printed its tokens (it prints them after binding).
    pub async fn start(
        reaper: &Reaper,
        bin_dir: &Path,
        port: u16,
        data_dir: &Path,
        flags: &[String],
        log: &Path,
    ) -> anyhow::Result<Self> {
        let server_bin = bin_dir.join("tether-server");
        Self::start_bin(reaper, &server_bin, port, data_dir, flags, log).await
    }

    /// [`ServerProc::start`] with the server binary `server_bin` (e.g. an older build, to
    /// compare against).
    pub async fn start_bin(
        reaper: &Reaper,
        server_bin: &Path,
        port: u16,
        data_dir: &Path,
        flags: &[String],
        log: &Path,
    ) -> anyhow::Result<Self> {
        let metrics_addr: std::net::SocketAddr = ([127, 0, 0, 1], free_port()?).into();
        let mut command = pinned(server_bin, pinning().server.as_deref());
        command
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--print-enrollment-token")
            // Its own metrics port, so a server already running here does not collide.
            .arg(format!("--metrics-listen={metrics_addr}"))
            // The simulators enroll every agent with one enrollment token, as a provisioning
            // system would: lift the per-token request rate, which exists for API callers.
            .arg("--token-requests-per-second=1000000")
            .arg("--token-request-burst=1000000")
            .args(flags);
        let mut child = spawn_logged(
            &mut command,
            log,
            "BENCH_SERVER_LOG",
            Stdio::null(),
            "tether-server",
        )?;
        let pid = child.id().context("server pid")?;
        reaper.track(pid);
        limit_server_cpu(pid)?;
        let stdout = child.stdout.take().context("server stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let (mut enroll_token, mut admin_token) = (None, None);
        let deadline = Instant::now() + Duration::from_secs(60);
        while enroll_token.is_none() || admin_token.is_none() {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let line = tokio::time::timeout(remaining, lines.next_line())
                .await
                .context("the server did not print its tokens within 60 s")??;
            let Some(line) = line else {
                bail!("the server exited during start-up; see {}", log.display());
            };
            if let Some(rest) = line.split("TETHER_TOKEN=").nth(1) {
                admin_token = rest.split_whitespace().next().map(str::to_owned);
            }
            if let Some(rest) = line.split("--enroll-token ").nth(1) {
                enroll_token = rest.split_whitespace().next().map(str::to_owned);
            }
        }
        // Keep draining stdout so the server never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Self {
            child,
            pid,
            metrics_addr,
            url: format!("http://127.0.0.1:{port}"),
            enroll_token: enroll_token.expect("loop ends when set"),
            admin_token: admin_token.expect("loop ends when set"),
        })
    }

    /// The store's memory from the server's `/metrics`: (open heads' bytes, heads' budget,
    /// page cache bound), in bytes.
    ///
    /// # Errors
    ///
    /// The scrape failed or lacks the store's families.
    pub async fn store_memory(&self) -> anyhow::Result<(u64, u64, u64)> {
        let text = self.scrape().await?;
        Ok((
            gauge(&text, "tether_store_memory_bytes{part=\"heads\"}")?,
            gauge(&text, "tether_store_memory_limit_bytes{part=\"heads\"}")?,
            gauge(&text, "tether_store_memory_limit_bytes{part=\"cache\"}")?,
        ))
    }

    /// Bytes the server's allocator has handed out and not taken back (jemalloc's
    /// `stats.allocated`, from `/metrics`): what its data holds, unlike its RSS, which also
    /// holds memory freed but not yet returned to the system.
    ///
    /// # Errors
    ///
    /// The scrape failed or lacks the family.
    pub async fn allocated_bytes(&self) -> anyhow::Result<u64> {
        let text = self.scrape().await?;
        gauge(&text, "tether_allocator_memory_bytes{kind=\"allocated\"}")
    }

    /// The cumulative buckets of histogram `family` from the server's `/metrics`, as
    /// (upper bound in the family's unit, count at or below it), in order, `+Inf` last.
    ///
    /// # Errors
    ///
    /// The scrape failed or lacks the family.
    pub async fn histogram(&self, family: &str) -> anyhow::Result<Vec<(f64, f64)>> {
        let text = self.scrape().await?;
        let prefix = format!("{family}_bucket{{le=\"");
        let buckets: Vec<(f64, f64)> = text
            .lines()
            .filter_map(|line| {
                let (le, count) = line.strip_prefix(&prefix)?.split_once("\"} ")?;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((le, count.trim().parse().ok()?))
            })
            .collect();
        anyhow::ensure!(!buckets.is_empty(), "no {family} in the server's metrics");
        Ok(buckets)
    }

    async fn scrape(&self) -> anyhow::Result<String> {
        tether_tests::scrape_metrics(self.metrics_addr)
            .await
            .context("scrape the server's metrics")
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`. Returns how long it took.
    pub async fn stop(&mut self, grace: Duration) -> Duration {
        let started = Instant::now();
        signal(self.pid, "TERM");
        if tokio::time::timeout(grace, self.child.wait())
            .await
            .is_err()
        {
            signal(self.pid, "KILL");
            let _ = self.child.wait().await;
        }
        started.elapsed()
    }
}

/// The value of the sample `name` (with its labels) in a `/metrics` text.
fn gauge(text: &str, name: &str) -> anyhow::Result<u64> {
    text.lines()
        .find_map(|line| {
            let value = line.strip_prefix(name)?.trim();
            value.parse::<f64>().ok()
        })
        .map(|v| v as u64)
        .with_context(|| format!("no {name} in the server's metrics"))
}

// === impl Simulator ===

impl Simulator {
    /// Starts `tether-agent simulate` with `args` (plus the bench's fixed flags).
    pub fn start(
        reaper: &Reaper,
        bin_dir: &Path,
        prefix: &str,
        n_agents: usize,
        args: &[String],
        log: &Path,
    ) -> anyhow::Result<Self> {
        let mut command = pinned(
            &bin_dir.join("tether-agent"),
            pinning().simulators.as_deref(),
        );
        command
            .arg("simulate")
            .arg("--agents")
            .arg(n_agents.to_string())
            .arg("--name-prefix")
            .arg(prefix)
            .arg("--json")
            .arg("--exit-on-stdin-close")
            .args(args);
        let mut child = spawn_logged(
            &mut command,
            log,
            "BENCH_SIM_LOG",
            Stdio::piped(),
            "tether-agent simulate",
        )?;
        let pid = child.id().context("simulator pid")?;
        reaper.track(pid);
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().context("simulator stdout")?;
        let reports = Arc::new(Mutex::new(SimReports::default()));
        let sink = reports.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let Ok(value) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                let now = Instant::now();
                let mut reports = lock(&sink);
                match value["event"].as_str() {
                    Some("stats") => reports.stats.push((now, value)),
                    Some("ready") => reports.ready_at = Some(now),
                    Some("silenced") => reports.silenced_unix_ms = value["unix_ms"].as_u64(),
                    Some("enrolled") => reports.enroll_per_sec = value["per_sec"].as_f64(),
                    Some("stopped") => reports.stopped = true,
                    _ => {}
                }
            }
        });
        Ok(Self {
            prefix: prefix.to_owned(),
            n_agents,
            pid,
            child,
            stdin,
            reports,
        })
    }

    pub fn ready(&self) -> bool {
        lock(&self.reports).ready_at.is_some()
    }

    /// The latest stats record.
    pub fn latest(&self) -> Option<serde_json::Value> {
        lock(&self.reports).stats.last().map(|(_, v)| v.clone())
    }

    /// A counter of the latest stats record; 0 before the first record.
    pub fn latest_u64(&self, field: &str) -> u64 {
        self.latest().and_then(|v| v[field].as_u64()).unwrap_or(0)
    }

    /// A number of the latest stats record; 0 before the first record.
    pub fn latest_f64(&self, field: &str) -> f64 {
        self.latest().and_then(|v| v[field].as_f64()).unwrap_or(0.0)
    }

    /// Kills the process at once: its connections close without a goodbye.
    pub async fn kill(&mut self) -> SystemTime {
        let at = SystemTime::now();
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
        at
    }

    /// Asks the simulator to stop (its agents say goodbye) and waits a bounded time.
    pub async fn stop(&mut self) {
        drop(self.stdin.take());
        if tokio::time::timeout(Duration::from_secs(15), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.start_kill();
            let _ = self.child.wait().await;
        }
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

/// VmRSS of `pid` in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS:")
}

/// The RSS of `pid` once it has stopped moving: read every second until two readings differ
/// by less than 0.5 %, or after `limit`. Memory freed by closed sessions leaves the process
/// over seconds (the allocator's decay), so a reading right after a change is not a baseline.
pub async fn settled_rss_kib(pid: u32, limit: Duration) -> Option<u64> {
    let start = tokio::time::Instant::now();
    let mut last = rss_kib(pid)?;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = rss_kib(pid)?;
        if now.abs_diff(last) * 200 < last.max(1) || start.elapsed() >= limit {
            return Some(now);
        }
        last = now;
    }
}

/// The RSS of a server just started, once it has settled: the baseline every phase's memory
/// per agent, session or watcher is measured above.
///
/// # Errors
///
/// The process is gone.
pub async fn idle_rss_kib(server: &ServerProc) -> anyhow::Result<u64> {
    settled_rss_kib(server.pid, Duration::from_secs(10))
        .await
        .ok_or_else(|| anyhow::anyhow!("server rss: the server process is gone"))
}

/// The `field` (e.g. `VmHWM:`, the peak RSS) of `/proc/{pid}/status`, in KiB.
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// utime + stime of `pid` in seconds.
pub fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

pub fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A port that was free a moment ago on 127.0.0.1.
///
/// # Errors
///
/// No port could be bound.
pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("find a free port")?;
    Ok(listener.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::{Pinning, bucket_quantile, load_generator_note};

    #[test]
    fn a_bucket_quantile_counts_only_what_came_between_the_scrapes() {
        let before = [(0.1, 50.0), (1.0, 100.0), (f64::INFINITY, 100.0)];
        // 100 more: 2 at most 0.1, 96 more at most 1, 2 above.
        let after = [(0.1, 52.0), (1.0, 198.0), (f64::INFINITY, 200.0)];
        assert_eq!(bucket_quantile(&before, &after, 0.01), Some((0.0, 0.1)));
        assert_eq!(bucket_quantile(&before, &after, 0.5), Some((0.1, 1.0)));
        assert_eq!(bucket_quantile(&before, &after, 0.98), Some((0.1, 1.0)));
        assert_eq!(
            bucket_quantile(&before, &after, 0.99),
            Some((1.0, f64::INFINITY))
        );
        assert_eq!(bucket_quantile(&before, &before, 0.99), None);
        assert_eq!(bucket_quantile(&before, &after[..2], 0.99), None);
    }

    #[test]
    fn a_row_names_a_saturated_load_generator() {
        assert!(load_generator_note(0.98, Some(1), 19_500.0, 22_200.0).contains("88 % of"));
        // Busy but sending the nominal rate: the server had all the load it was meant to.
        assert!(load_generator_note(0.98, Some(1), 21_900.0, 22_200.0).is_empty());
        assert!(load_generator_note(0.97, Some(1), 46_502.0, 48_000.0).is_empty());
        // Short of the nominal rate with a core to spare: not the simulators' doing.
        assert!(load_generator_note(0.60, Some(1), 19_500.0, 22_200.0).is_empty());
        // Unpinned: their share is unknown.
        assert!(load_generator_note(1.50, None, 19_500.0, 22_200.0).is_empty());
    }

    #[test]
    fn simulator_cores_counts_the_taskset_list() {
        let pinning = |sims: &str| Pinning {
            server: Some("0".to_owned()),
            simulators: Some(sims.to_owned()),
        };
        assert_eq!(pinning("1").simulator_cores(), Some(1));
        assert_eq!(pinning("2-3").simulator_cores(), Some(2));
        assert_eq!(pinning("1,3-5").simulator_cores(), Some(4));
        assert_eq!(Pinning::default().simulator_cores(), None);
    }
}
