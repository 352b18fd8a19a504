//! The standard `process_*` metrics of the server process (CPU time, memory, file
//! descriptors, threads, start time), read from `/proc/self` on every scrape, with the names
//! every Prometheus client library uses, so existing dashboards and alerts apply.
//!
//! Linux only: elsewhere the collector reports nothing. A file that cannot be read or parsed
//! leaves out the metrics it would give, never the scrape.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;

/// Clock ticks per second of the times in `/proc/<pid>/stat`: the kernel's `USER_HZ`, which
/// is 100 on every architecture Linux exports to user space (as Prometheus' own `procfs`
/// assumes).
const USER_HZ: f64 = 100.0;

/// Reads `/proc/self` on every scrape.
#[derive(Debug)]
pub(super) struct ProcessCollector;

/// What `/proc/self/stat` says about the process.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Stat {
    /// User plus system CPU time, in seconds.
    pub cpu_seconds: f64,
    /// Start time in seconds after boot.
    pub start_after_boot: f64,
    pub threads: u64,
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if !cfg!(target_os = "linux") {
            return Ok(());
        }
        let read = |path: &str| std::fs::read_to_string(path).ok();
        let stat = read("/proc/self/stat").as_deref().and_then(parse_stat);
        let status = read("/proc/self/status");
        if let Some(stat) = stat {
            let cpu = ConstCounter::new(stat.cpu_seconds);
            cpu.encode(encoder.encode_descriptor(
                "process_cpu",
                "Total user and system CPU time spent, in seconds.",
                Some(&Unit::Seconds),
                cpu.metric_type(),
            )?)?;
            let boot = read("/proc/stat").as_deref().and_then(parse_boot_time);
            if let Some(boot) = boot {
                let start = ConstGauge::new(boot + stat.start_after_boot);
                start.encode(encoder.encode_descriptor(
                    "process_start_time",
                    "Start time of the process since the Unix epoch, in seconds.",
                    Some(&Unit::Seconds),
                    start.metric_type(),
                )?)?;
            }
            gauge(
                &mut encoder,
                "process_threads",
                "Threads of the process.",
                None,
                stat.threads,
            )?;
        }
        let kib = |field| status.as_deref().and_then(|s| parse_status_kib(s, field));
        if let Some(rss) = kib("VmRSS") {
            gauge(
                &mut encoder,
                "process_resident_memory",
                "Resident memory size, in bytes.",
                Some(&Unit::Bytes),
                rss.saturating_mul(1024),
            )?;
        }
        if let Some(size) = kib("VmSize") {
            gauge(
                &mut encoder,
                "process_virtual_memory",
                "Virtual memory size, in bytes.",
                Some(&Unit::Bytes),
                size.saturating_mul(1024),
            )?;
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            gauge(
                &mut encoder,
                "process_open_fds",
                "Open file descriptors.",
                None,
                fds.count() as u64,
            )?;
        }
        if let Some(max) = read("/proc/self/limits").as_deref().and_then(parse_max_fds) {
            gauge(
                &mut encoder,
                "process_max_fds",
                "Most open file descriptors allowed (the soft limit).",
                None,
                max,
            )?;
        }
        Ok(())
    }
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
    metric.encode(encoder.encode_descriptor(name, help, unit, metric.metric_type())?)
}

/// Parses `/proc/<pid>/stat`. The command name (field 2) may hold spaces and parentheses, so
/// fields are counted after its last `)`.
#[allow(
    clippy::cast_precision_loss,
    reason = "tick counts stay far below 2^53 (a million years at USER_HZ)"
)]
pub(super) fn parse_stat(text: &str) -> Option<Stat> {
    let after = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Field n (1-based, as in proc(5)) is fields[n - 3]: `state`, field 3, comes first.
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    let (utime, stime) = (field(14)?, field(15)?);
    Some(Stat {
        cpu_seconds: (utime + stime) as f64 / USER_HZ,
        start_after_boot: field(22)? as f64 / USER_HZ,
        threads: field(20)?,
    })
}

/// The boot time (`btime`, seconds since the epoch) in `/proc/stat`.
#[allow(clippy::cast_precision_loss, reason = "seconds since 1970 fit in 2^53")]
pub(super) fn parse_boot_time(text: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.starts_with("btime "))?;
    Some(line["btime ".len()..].trim().parse::<u64>().ok()? as f64)
}

/// A `kB` field of `/proc/<pid>/status` (`VmRSS:   1234 kB`), in KiB.
pub(super) fn parse_status_kib(text: &str, field: &str) -> Option<u64> {
    let line = text
        .lines()
        .find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))?;
    let value = line[field.len() + 1..].trim().strip_suffix("kB")?;
    value.trim().parse().ok()
}

/// The soft limit of `Max open files` in `/proc/<pid>/limits` (`None` when unlimited).
pub(super) fn parse_max_fds(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}
