//! Backfills `DAYS` (30) days of one real-like agent at `INTERVAL` (10) seconds through
//! `Store::commit` in reports of 100 (as a reconnecting agent's buffer arrives), checkpoints,
//! then times what `GetMetrics` does through the `Store` trait (`read_points`, after the
//! request checks) `ITERATIONS` (50) times for each query below, and prints p50 and p99 with
//! the bytes per sample sealed and on disk and the store's memory.
//!
//! `cargo run --release -p tether-server --example series_bench -- [DAYS] [INTERVAL] [ITERATIONS]`
//!
//! The queries are those `GetMetrics` accepts (at most 10,000 points a step gives): over the
//! whole range, step 0 (every sample, the newest 10,000 kept), the smallest step it accepts
//! (below 5 minutes: raw samples, all of them read), 5 minutes and 1 hour (rollups); and a
//! 1-minute step over the longest range it accepts at that step.

#[path = "support/machines.rs"]
#[allow(dead_code, reason = "this benchmark uses the real-like machines only")]
mod machines;

#[path = "support/rss.rs"]
mod rss;

use std::time::{Duration, Instant, SystemTime};

use rss::rss_kib;
use tether_server::domain::{AgentId, OrgId, Sample};
use tether_server::service::fleet::{MAX_METRICS_POINTS, PointRange, read_points};
use tether_server::store::{Checkpoint, SledStore, Store, Write};

// The same allocator as the server binary, so the figures match what the server can do.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Samples per commit: a reconnecting agent's re-sent buffer arrives in reports like these.
const REPORT: usize = 100;

fn main() {
    let mut args = std::env::args().skip(1);
    let days: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(30);
    let interval_s: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(10);
    let iterations: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(50);
    let n = usize::try_from(days * 86_400 / interval_s).expect("fits");
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SledStore::open(dir.path()).expect("open");
    let (org, agent) = (OrgId::new("default"), AgentId::new("0123456789abcdef"));

    let samples: Vec<Sample> = machines::real_like(0, n, interval_s * 1_000);
    let start = samples[0].time.get();
    let end = samples[n - 1].time.get() + Duration::from_secs(1);
    let started = Instant::now();
    for report in samples.chunks(REPORT) {
        let writes: Vec<Write> = report
            .iter()
            .map(|sample| Write::PutSample {
                org: org.clone(),
                agent: agent.clone(),
                sample: sample.clone(),
            })
            .collect();
        store.commit_writes(&writes).expect("commit");
    }
    let backfill = started.elapsed();
    drop(samples);
    let t = Instant::now();
    let done = store
        .compact(SystemTime::now(), Checkpoint::Now)
        .expect("checkpoint");
    println!(
        "backfill: {n} samples ({days} d at {interval_s} s) in {} commits: {backfill:.1?}, \
         {:.0} samples/s; checkpoint {:.1?} ({} log records removed)",
        n.div_ceil(REPORT),
        n as f64 / backfill.as_secs_f64(),
        t.elapsed(),
        done.log_records_removed
    );
    let usage = store.usage().expect("usage");
    let records = usage.record_bytes();
    println!(
        "stored: {} chunks, {:.2} B/sample sealed ({} samples); {} rollups, {} B ({:.2} B/sample); \
         open head {} samples; all records {:.2} B/sample; on disk {:.2} B/sample ({} bytes)",
        usage.chunks,
        usage.chunk_bytes as f64 / usage.chunk_samples as f64,
        usage.chunk_samples,
        usage.rollups,
        usage.rollup_bytes,
        usage.rollup_bytes as f64 / n as f64,
        usage.head_samples,
        records as f64 / n as f64,
        usage.size_on_disk as f64 / n as f64,
        usage.size_on_disk,
    );
    let memory = store.memory();
    println!(
        "memory: {} open heads, {} bytes; RSS {} KiB",
        memory.heads,
        memory.heads_bytes,
        rss_kib()
    );

    let max_points = usize::try_from(MAX_METRICS_POINTS).expect("fits");
    let minute = Duration::from_secs(60);
    let accepted = end - minute * u32::try_from(MAX_METRICS_POINTS).expect("fits");
    let whole_ms = end
        .duration_since(start)
        .expect("end after start")
        .as_millis();
    let smallest = Duration::from_millis(
        u64::try_from(whole_ms.div_ceil(u128::from(MAX_METRICS_POINTS))).expect("fits"),
    );
    println!(
        "{:<52} {:>8} {:>10} {:>10}",
        format!("GetMetrics through the Store trait ({days} d)"),
        "points",
        "p50",
        "p99"
    );
    for (name, from, step) in [
        (
            "step 0: every sample, the newest 10,000".to_owned(),
            start,
            Duration::ZERO,
        ),
        (
            format!("step {smallest:.1?}, the smallest accepted: raw samples"),
            start,
            smallest,
        ),
        ("step 5 m: 5-minute rollups".to_owned(), start, minute * 5),
        ("step 1 h: 1-hour rollups".to_owned(), start, minute * 60),
        (
            format!(
                "step 1 m, the last {:.1} d: raw samples",
                10_000.0 / 1_440.0
            ),
            accepted.max(start),
            minute,
        ),
    ] {
        // What GetMetrics checks before reading.
        let range = end.duration_since(from).expect("end after start");
        let n_points = range.as_millis() / step.as_millis().max(1);
        assert!(step.is_zero() || n_points <= u128::from(MAX_METRICS_POINTS));
        let mut times = Vec::with_capacity(iterations);
        let mut points = 0;
        for _ in 0..=iterations {
            let t = Instant::now();
            let range = PointRange {
                start: from,
                end,
                step,
                max_points,
            };
            points = read_points(&store, &org, &agent, &range)
                .expect("read")
                .len();
            times.push(t.elapsed());
        }
        // The first pass warms the cache; it is left out.
        times.remove(0);
        times.sort();
        let pct = |p: f64| times[((times.len() as f64 * p).ceil() as usize).max(1) - 1];
        println!(
            "{name:<52} {points:>8} {:>10.2?} {:>10.2?}",
            pct(0.50),
            pct(0.99)
        );
    }
}
