//! What the store takes on disk over months, retention included: `AGENTS` (20) real-like agents
//! reporting every 10 s for `DAYS` (60) days of simulated time, kept as the server keeps them:
//! commits of about 100 samples (each agent's share in seq order), a compaction every commit
//! (it seals chunks that are due), a checkpoint every 5 simulated minutes (the server's
//! default), retention at the defaults (raw 30 d, 5 m 90 d, 1 h 2 y) every simulated hour.
//! Every 5 days it prints the samples kept and bytes per sample kept: of the sealed chunks, of
//! all records (chunks, rollups, heads, log, the rest), and of sled's files.
//!
//! `cargo run --release -p tether-server --example disk_bench -- [AGENTS] [DAYS]`
//! (`THROTTLE_MS=n` sleeps n ms after each commit; `CHECKPOINT_S=n` checkpoints every n
//! simulated seconds instead of the server's default; `SETTLE_S=n` reports once more after n
//! seconds without writes, to tell what sled's cleaner has not caught up with from what it
//! keeps). Besides bytes per sample it prints how much of sled's files are blob files (pages
//! over a quarter of a segment, each a file of its own) and what the process has written.
//!
//! Time is simulated: two months pass in minutes, while sled's segment cleaner (a background
//! thread, `GC_INTERVAL_MS`) works in real time, so it gets far less time per byte written
//! than in a server; the sizes of sled's files here are what it reaches with little cleaning.
//! Each agent's day is one generated day replayed with its seqs, times, uptime and network
//! counters moved on, so a long run needs one day of samples in memory.

#[path = "support/machines.rs"]
#[allow(dead_code, reason = "this benchmark uses the real-like machines only")]
mod machines;

use std::time::{Duration, SystemTime};

use tether_server::config::{
    DEFAULT_CHECKPOINT_INTERVAL, DEFAULT_METRICS_RETENTION, DEFAULT_RETENTION_INTERVAL,
    DEFAULT_ROLLUP_1H_RETENTION, DEFAULT_ROLLUP_5M_RETENTION,
};
use tether_server::domain::{AgentId, OrgId, Sample, Time};
use tether_server::store::{Checkpoint, Retention, SledStore, Store, Write};

const INTERVAL_S: u64 = 10;
const SAMPLES_PER_DAY: usize = (86_400 / INTERVAL_S) as usize;
/// Samples per commit, over all agents.
const COMMIT: usize = 100;

fn main() {
    let mut args = std::env::args().skip(1);
    let agents: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(20);
    let days: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(60);
    let throttle = std::env::var("THROTTLE_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis);
    let checkpoint_every = std::env::var("CHECKPOINT_S")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(DEFAULT_CHECKPOINT_INTERVAL, Duration::from_secs);
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SledStore::open(dir.path()).expect("open");
    let org = OrgId::new("default");
    let fleet: Vec<(AgentId, Day)> = (0..agents)
        .map(|a| {
            let samples = machines::real_like(a, SAMPLES_PER_DAY, INTERVAL_S * 1_000);
            (AgentId::new(format!("agent-{a:04}")), Day::new(samples))
        })
        .collect();
    let per_agent = COMMIT.div_ceil(agents).max(1);
    let mut last_checkpoint = None;
    let mut last_purge = None;
    println!(
        "agents {agents}, {days} days at {INTERVAL_S} s; {per_agent} samples an agent a commit"
    );
    println!(
        "{:>4} {:>12} {:>14} {:>14} {:>14} {:>12} {:>10} {:>14} {:>12}",
        "day",
        "samples kept",
        "chunks B/smp",
        "records B/smp",
        "on disk B/smp",
        "on disk MiB",
        "blobs MiB",
        "allocated MiB",
        "written MiB"
    );
    for day in 0..days {
        for first in (0..SAMPLES_PER_DAY).step_by(per_agent) {
            let last = (first + per_agent).min(SAMPLES_PER_DAY);
            let mut writes = Vec::with_capacity(agents * per_agent);
            for (agent, generated) in &fleet {
                for i in first..last {
                    writes.push(Write::PutSample {
                        org: org.clone(),
                        agent: agent.clone(),
                        sample: generated.sample(i, day),
                    });
                }
            }
            store.commit_writes(&writes).expect("commit");
            let now = fleet[0].1.sample(last - 1, day).time.get();
            let due = |last: Option<SystemTime>, every: Duration| {
                last.is_none_or(|at| now.duration_since(at).unwrap_or_default() >= every)
            };
            let checkpoint = due(last_checkpoint, checkpoint_every);
            store
                .compact(now, Checkpoint::now_if(checkpoint))
                .expect("compact");
            if checkpoint {
                last_checkpoint = Some(now);
            }
            if due(last_purge, DEFAULT_RETENTION_INTERVAL) {
                store.purge(&retention(now)).expect("purge");
                last_purge = Some(now);
            }
            if let Some(throttle) = throttle {
                std::thread::sleep(throttle);
            }
        }
        if (day + 1) % 5 == 0 || day + 1 == days {
            report(&store, day + 1, dir.path());
        }
    }
    if let Some(settle) = std::env::var("SETTLE_S")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_secs)
    {
        std::thread::sleep(settle);
        println!("after {} s without writes:", settle.as_secs());
        report(&store, days, dir.path());
    }
}

/// The cutoffs of the server's default retention at `now`.
fn retention(now: SystemTime) -> Retention {
    let cutoff = |keep: Duration| now.checked_sub(keep).unwrap_or(SystemTime::UNIX_EPOCH);
    Retention {
        samples: cutoff(DEFAULT_METRICS_RETENTION),
        five_minutes: cutoff(DEFAULT_ROLLUP_5M_RETENTION),
        one_hour: cutoff(DEFAULT_ROLLUP_1H_RETENTION),
    }
}

/// One generated day of an agent, replayed for every day.
struct Day {
    samples: Vec<Sample>,
    /// What the network counters grow by in a day, so they keep growing from day to day.
    rx_per_day: u64,
    tx_per_day: u64,
}

impl Day {
    fn new(samples: Vec<Sample>) -> Self {
        let per_day = |counter: fn(&Sample) -> u64| {
            let (first, last) = (&samples[0], &samples[samples.len() - 1]);
            let grown = counter(last).saturating_sub(counter(first));
            grown + grown / (samples.len() as u64 - 1)
        };
        Self {
            rx_per_day: per_day(|s| s.network_rx_bytes),
            tx_per_day: per_day(|s| s.network_tx_bytes),
            samples,
        }
    }

    /// Sample `i` of the generated day as the agent reports it `day` days later.
    fn sample(&self, i: usize, day: usize) -> Sample {
        let sample = &self.samples[i];
        let day = day as u64;
        let later = Duration::from_secs(day * 86_400);
        Sample {
            seq: sample.seq + day * SAMPLES_PER_DAY as u64,
            time: Time::new(sample.time.get() + later)
                .expect("months after 2025 are within Time's range"),
            uptime: sample.uptime + later,
            network_rx_bytes: sample.network_rx_bytes + day * self.rx_per_day,
            network_tx_bytes: sample.network_tx_bytes + day * self.tx_per_day,
            ..sample.clone()
        }
    }
}

fn report(store: &SledStore, day: usize, dir: &std::path::Path) {
    let usage = store.usage().expect("usage");
    let kept = usage.chunk_samples + usage.head_samples;
    let records = usage.record_bytes();
    let per = |bytes: u64, n: u64| bytes as f64 / n.max(1) as f64;
    let mib = |bytes: u64| bytes as f64 / f64::from(1 << 20);
    println!(
        "{day:>4} {kept:>12} {:>14.1} {:>14.1} {:>14.1} {:>12.1} {:>10.1} {:>14.1} {:>12.0}",
        per(usage.chunk_bytes, usage.chunk_samples),
        per(records, kept),
        per(usage.size_on_disk, kept),
        mib(usage.size_on_disk),
        mib(blob_bytes(dir)),
        mib(allocated_bytes(dir)),
        mib(written_bytes()),
    );
}

/// Bytes of sled's blob files (pages too large for its log segments, each a file of its own):
/// part of the files' size above.
fn blob_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir.join("blobs")) else {
        return 0;
    };
    entries
        .filter_map(|entry| entry.ok()?.metadata().ok())
        .map(|meta| meta.len())
        .sum()
}

/// Bytes the file system has allocated to everything under `dir` (what `du` counts: whole
/// blocks, so a small blob file takes a block), or 0 where it cannot be read.
fn allocated_bytes(dir: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => allocated_bytes(&entry.path()),
            Ok(meta) => meta.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}

/// Bytes this process has passed to `write` calls so far (`wchar` of `/proc/self/io`): what
/// sled wrote, over and above the records it keeps; 0 where that file does not exist.
fn written_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|io| {
            io.lines()
                .find_map(|line| line.strip_prefix("wchar:"))
                .and_then(|n| n.trim().parse().ok())
        })
        .unwrap_or(0)
}
