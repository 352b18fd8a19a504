//! Measures `Store::commit` throughput for batches shaped like the writer's under load: N
//! samples from N different agents plus one progress record per agent.
//!
//! `cargo run --release -p tether-server --example store_bench -- [BATCH] [BATCHES]`

use std::time::{Duration, Instant, SystemTime};

use tether_server::domain::{AgentId, DiskUsage, OrgId, Sample, Time};
use tether_server::store::{SledStore, Store, Write};

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
    let started = Instant::now();
    for b in 0..batches {
        let seq = b as u64 + 1;
        let mut writes = Vec::with_capacity(batch * 2);
        for a in 0..batch {
            let agent = AgentId::new(format!("agent-{a:06}"));
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
            if std::env::var_os("NO_LIVE").is_some() {
                continue;
            }
            writes.push(Write::PutProgress {
                org: org.clone(),
                agent,
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
    println!(
        "{samples} samples in {batches} batches of {batch} (+1 progress record each): {:.1?}, {:.0} samples/s",
        elapsed,
        samples as f64 / elapsed.as_secs_f64()
    );
}
