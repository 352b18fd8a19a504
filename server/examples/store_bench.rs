//! Measures `Store::commit` throughput for batches shaped like the writer's under load: N
//! samples from N different agents plus one progress record per agent. The writer acks a
//! batch when its commit returns (the log record is flushed), so samples per second here are
//! acknowledged samples per second. Then it compacts (seals every head) and prints what the
//! store holds per sample, the heads' memory and the process's RSS.
//!
//! `cargo run --release -p tether-server --example store_bench -- [BATCH] [BATCHES]`
//! (`NO_LIVE=1` leaves the progress records out, as the writer does for all but one sample of
//! an agent a minute). A thread checkpoints as the server's compaction task does (when the log
//! passes 64 MiB), alongside the commits. The samples are alike from batch to batch, so their
//! bytes per sample flatter any codec; `series_bench` measures real-like samples.

#[path = "support/rss.rs"]
mod rss;

use std::time::{Duration, Instant, SystemTime};

use rss::rss_kib;
use std::sync::atomic::{AtomicBool, Ordering};

use tether_server::config::DEFAULT_CHECKPOINT_LOG_BYTES;
use tether_server::domain::{AgentId, DiskUsage, OrgId, Sample, Time};
use tether_server::store::{Checkpoint, SledStore, Store, Write};

// The same allocator as the server binary, so the figures match what the server can do.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() {
    let mut args = std::env::args().skip(1);
    let batch: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let batches: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(50);
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SledStore::open(dir.path()).expect("open");
    let org = OrgId::new("default");
    let agents: Vec<AgentId> = (0..batch)
        .map(|a| AgentId::new(format!("agent-{a:06}")))
        .collect();
    let done = AtomicBool::new(false);
    let checkpoints = std::thread::scope(|scope| {
        let compactor = scope.spawn(|| {
            let mut n = 0;
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
                if store.memory().log_bytes >= DEFAULT_CHECKPOINT_LOG_BYTES {
                    store
                        .compact(SystemTime::now(), Checkpoint::Now)
                        .expect("checkpoint");
                    n += 1;
                }
            }
            n
        });
        ingest(&store, &org, &agents, batches);
        done.store(true, Ordering::Relaxed);
        compactor.join().expect("compactor")
    });
    println!("checkpoints during ingest: {checkpoints}");
    summary(&store, batch * batches);
}

/// Commits `batches` batches of one sample (and progress record) per agent; prints the rate.
fn ingest(store: &SledStore, org: &OrgId, agents: &[AgentId], batches: usize) {
    let batch = agents.len();
    let progress = std::env::var_os("NO_LIVE").is_none();
    let started = Instant::now();
    for b in 0..batches {
        let seq = b as u64 + 1;
        let mut writes = Vec::with_capacity(batch * 2);
        for agent in agents {
            writes.push(Write::PutSample {
                org: org.clone(),
                agent: agent.clone(),
                sample: Sample {
                    seq,
                    time: Time::now(),
                    cpu_percent: 12.5,
                    load: [0.5, 0.4, 0.3],
                    memory_used_bytes: 1 << 30,
                    memory_total_bytes: 8 << 30,
                    swap_used_bytes: 0,
                    swap_total_bytes: 1 << 30,
                    disks: vec![DiskUsage {
                        mount_point: "/".into(),
                        used_bytes: 20 << 30,
                        total_bytes: 100 << 30,
                    }],
                    network_rx_bytes: 123_456_789,
                    network_tx_bytes: 98_765_432,
                    uptime: Duration::from_secs(3600),
                    process_count: 150,
                },
            });
            if !progress {
                continue;
            }
            writes.push(Write::PutProgress {
                org: org.clone(),
                agent: agent.clone(),
                last_seq: seq,
                last_seen: SystemTime::now(),
            });
        }
        let t = Instant::now();
        store.commit_writes(&writes).expect("commit");
        if b % 10 == 0 {
            eprintln!("batch {b}: {:?}", t.elapsed());
        }
    }
    let elapsed = started.elapsed();
    let samples = batch * batches;
    let each = if progress {
        " (+1 progress record each)"
    } else {
        ""
    };
    println!(
        "{samples} samples in {batches} batches of {batch}{each}: {:.1?}, {:.0} samples/s",
        elapsed,
        samples as f64 / elapsed.as_secs_f64()
    );
}

/// Prints the heads' memory, then compacts everything and prints what the store holds.
fn summary(store: &SledStore, samples: usize) {
    let open = store.memory();
    println!(
        "open heads: {} holding {} bytes ({:.0} per agent); RSS {} KiB",
        open.heads,
        open.heads_bytes,
        open.heads_bytes as f64 / open.heads.max(1) as f64,
        rss_kib()
    );
    let t = Instant::now();
    let far = SystemTime::UNIX_EPOCH + Duration::from_secs(1 << 40);
    let done = store.compact(far, Checkpoint::Now).expect("compact");
    let usage = store.usage().expect("usage");
    println!(
        "compaction: sealed {} heads, removed {} log records in {:.1?}",
        done.sealed,
        done.log_records_removed,
        t.elapsed()
    );
    println!(
        "after compaction: {} chunks, {:.2} B/sample sealed; rollups {} B; store {:.1} B/sample \
         (records), {:.1} B/sample on disk ({} bytes); RSS {} KiB",
        usage.chunks,
        usage.chunk_bytes as f64 / usage.chunk_samples.max(1) as f64,
        usage.rollup_bytes,
        usage.record_bytes() as f64 / samples as f64,
        usage.size_on_disk as f64 / samples as f64,
        usage.size_on_disk,
        rss_kib()
    );
}
