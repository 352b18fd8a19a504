//! Measures the time-series codecs on samples shaped like Tether's: bytes per sample of sealed
//! chunks (60 to 720 samples) for the simulator's synthetic machines and for real-like
//! machines, where those bytes go, chunk encode and decode throughput, the size of encoded
//! rollups, and the size and speed of a WAL record per sample.
//!
//! `cargo run --release -p tether-server --example chunk_bench -- [AGENTS]`
//!
//! Everything is generated from fixed seeds, so two runs print the same sizes.

#[path = "support/machines.rs"]
mod machines;

use std::time::{Duration, Instant};

use machines::{real_like, synthetic};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tether_server::domain::{AgentId, OrgId, Sample};
use tether_server::store::chunk::{ChunkDecoder, ChunkEncoder};
use tether_server::store::rollup::{Resolution, RollupBuilder, block};
use tether_server::store::wal;

// The same allocator as the server binary, so the figures match what the server can do.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Chunk lengths whose sealed size is measured: the store's head chunks seal at a byte cap,
/// so shorter chunks than the 720-sample ceiling are the common case.
const CHUNK_LENGTHS: [usize; 6] = [60, 120, 180, 240, 360, 720];

fn main() {
    let agents: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(50);
    let datasets: [(&str, Generator); 5] = [
        ("synthetic 500 ms", |a, n| synthetic(a, n, 500, 2)),
        ("synthetic 10 s", |a, n| synthetic(a, n, 10_000, 2)),
        ("synthetic 500 ms, 50 ms jitter", |a, n| {
            synthetic(a, n, 500, 50)
        }),
        ("real-like 10 s", |a, n| real_like(a, n, 10_000)),
        ("real-like 500 ms", |a, n| real_like(a, n, 500)),
    ];

    println!("sealed chunk size, bytes per sample (header included), {agents} agents each");
    print!("{:<32}", "data");
    for len in CHUNK_LENGTHS {
        print!(" {len:>8}");
    }
    println!();
    for (name, generate) in &datasets {
        print!("{name:<32}");
        for len in CHUNK_LENGTHS {
            print!(" {:>8.2}", bytes_per_sample(*generate, agents, len));
        }
        println!();
    }

    println!();
    println!("where the bytes go, 720-sample chunks: bytes per sample saved by holding one field");
    println!("group constant (the rest is the header, seq and per-field zero codes)");
    let groups: [(&str, Flatten); 9] = [
        ("time", |s, f| s.time = f.time),
        ("cpu", |s, f| s.cpu_percent = f.cpu_percent),
        ("load x3", |s, f| s.load = f.load),
        ("memory", |s, f| s.memory_used_bytes = f.memory_used_bytes),
        ("swap", |s, f| s.swap_used_bytes = f.swap_used_bytes),
        ("disks", |s, f| s.disks.clone_from(&f.disks)),
        ("network", |s, f| {
            s.network_rx_bytes = f.network_rx_bytes;
            s.network_tx_bytes = f.network_tx_bytes;
        }),
        ("uptime", |s, f| s.uptime = f.uptime),
        ("procs", |s, f| s.process_count = f.process_count),
    ];
    print!("{:<32}", "data");
    for (group, _) in &groups {
        print!(" {group:>8.8}");
    }
    println!();
    for (name, generate) in [&datasets[0], &datasets[3]] {
        print!("{name:<32}");
        for (_, flatten) in &groups {
            print!(" {:>8.2}", field_cost(*generate, agents, *flatten));
        }
        println!();
    }

    println!();
    println!("chunk throughput, 720-sample chunks, best of 5 passes");
    println!("{:<32} {:>14} {:>14}", "data", "encode/s", "decode/s");
    for (name, generate) in [&datasets[0], &datasets[3]] {
        let (encode, decode) = throughput(*generate, agents);
        println!("{name:<32} {encode:>14.0} {decode:>14.0}");
    }

    println!();
    println!(
        "encoded rollup size, bytes per complete bucket, 2 days of 10 agents: one bucket a \
         record, and in the blocks the store keeps (an hour of 5-minute buckets, six hours of 1-hour)"
    );
    println!(
        "{:<32} {:>10} {:>10} {:>10} {:>10}",
        "data", "5 min", "1 hour", "5m block", "1h block"
    );
    for (name, generate, interval_ms) in [
        (datasets[0].0, datasets[0].1, 500),
        (datasets[3].0, datasets[3].1, 10_000),
    ] {
        let sizes = Resolution::ALL.map(|r| rollup_bytes(generate, interval_ms, r));
        println!(
            "{name:<32} {:>10.1} {:>10.1} {:>10.1} {:>10.1}",
            sizes[0].0, sizes[1].0, sizes[0].1, sizes[1].1
        );
    }

    println!();
    println!("WAL record: 2000 agents, one sample each (one writer batch)");
    println!(
        "{:<32} {:>10} {:>14} {:>14} {:>12}",
        "data", "B/sample", "encode/s", "decode/s", "postcard B"
    );
    for (name, generate) in [&datasets[0], &datasets[3]] {
        wal_figures(name, *generate);
    }
}

type Generator = fn(usize, usize) -> Vec<Sample>;

/// Sets one field group of a sample to its value in the series' first sample.
type Flatten = fn(&mut Sample, &Sample);

fn bytes_per_sample(generate: Generator, agents: usize, chunk_len: usize) -> f64 {
    chunk_bytes_per_sample(generate, agents, chunk_len, |_, _| {})
}

/// Bytes per sample a field group costs: the size with it minus the size without it.
fn field_cost(generate: Generator, agents: usize, flatten: Flatten) -> f64 {
    chunk_bytes_per_sample(generate, agents, 720, |_, _| {})
        - chunk_bytes_per_sample(generate, agents, 720, flatten)
}

fn chunk_bytes_per_sample(
    generate: Generator,
    agents: usize,
    chunk_len: usize,
    flatten: Flatten,
) -> f64 {
    let (mut bytes, mut samples) = (0usize, 0usize);
    for agent in 0..agents {
        let mut series = generate(agent, chunk_len);
        let first = series[0].clone();
        for s in &mut series {
            flatten(s, &first);
        }
        let mut enc = ChunkEncoder::new();
        for s in &series {
            enc.push(s).expect("generated samples are storable");
        }
        bytes += enc.finish().len();
        samples += series.len();
    }
    bytes as f64 / samples as f64
}

fn throughput(generate: Generator, agents: usize) -> (f64, f64) {
    let series: Vec<Vec<Sample>> = (0..agents).map(|a| generate(a, 720)).collect();
    let n = (agents * 720) as f64;
    let (mut best_encode, mut best_decode) = (Duration::MAX, Duration::MAX);
    for _ in 0..5 {
        let started = Instant::now();
        let chunks: Vec<Vec<u8>> = series
            .iter()
            .map(|samples| {
                let mut enc = ChunkEncoder::new();
                for s in samples {
                    enc.push(s).expect("generated samples are storable");
                }
                enc.finish()
            })
            .collect();
        best_encode = best_encode.min(started.elapsed());
        let started = Instant::now();
        let mut out = series[0][0].clone();
        let mut decoded = 0usize;
        for chunk in &chunks {
            let mut dec = ChunkDecoder::new(chunk).expect("a chunk just sealed");
            while dec.next_into(&mut out).expect("a chunk just sealed") {
                decoded += 1;
            }
        }
        best_decode = best_decode.min(started.elapsed());
        assert_eq!(decoded, agents * 720);
    }
    (n / best_encode.as_secs_f64(), n / best_decode.as_secs_f64())
}

/// Mean encoded size of the buckets `resolution` closes over 2 days of 10 agents, leaving out
/// each agent's first bucket (it starts mid-way): one bucket a record, and per bucket in the
/// blocks the store keeps.
fn rollup_bytes(generate: Generator, interval_ms: u64, resolution: Resolution) -> (f64, f64) {
    let n = (2 * 86_400_000 / interval_ms) as usize;
    let (mut bytes, mut in_blocks, mut buckets) = (0usize, 0usize, 0usize);
    for agent in 0..10 {
        let mut builder = RollupBuilder::new(resolution);
        let mut closed = Vec::new();
        for s in generate(agent, n) {
            closed.extend(builder.push(&s).expect("generated samples are storable"));
        }
        let closed = &closed[1..];
        for (_, rollup) in closed {
            bytes += rollup.encode().len();
            buckets += 1;
        }
        for of_block in
            closed.chunk_by(|a, b| resolution.block_start_ms(a.0) == resolution.block_start_ms(b.0))
        {
            let start = resolution.block_start_ms(of_block[0].0);
            in_blocks += block::encode(resolution, start, of_block).len();
        }
    }
    (
        bytes as f64 / buckets as f64,
        in_blocks as f64 / buckets as f64,
    )
}

fn wal_figures(name: &str, generate: Generator) {
    const BATCH: usize = 2_000;
    let mut rng = StdRng::seed_from_u64(11);
    let org = OrgId::new("default");
    let batch: Vec<(AgentId, Sample)> = (0..BATCH)
        .map(|a| {
            // One day into the agent's life: seqs of a realistic width.
            let sample = generate(a, 2).pop().expect("two samples");
            let id = AgentId::new(format!("{:016x}", rng.random::<u64>()));
            (
                id,
                Sample {
                    seq: 172_800,
                    ..sample
                },
            )
        })
        .collect();
    let entries = || batch.iter().map(|(agent, s)| (&org, agent, s));
    let record = wal::encode(entries()).expect("generated samples are storable");
    let (mut best_encode, mut best_decode) = (Duration::MAX, Duration::MAX);
    let mut buf = Vec::with_capacity(record.len());
    for _ in 0..20 {
        buf.clear();
        let started = Instant::now();
        wal::encode_into(&mut buf, entries()).expect("generated samples are storable");
        best_encode = best_encode.min(started.elapsed());
        let started = Instant::now();
        let decoded = wal::decode(&buf).expect("a record just written");
        best_decode = best_decode.min(started.elapsed());
        assert_eq!(decoded.entries.len(), BATCH);
    }
    let postcard: usize = batch
        .iter()
        .map(|(_, s)| postcard::to_allocvec(s).expect("serializable").len())
        .sum();
    println!(
        "{name:<32} {:>10.1} {:>14.0} {:>14.0} {:>12.1}",
        record.len() as f64 / BATCH as f64,
        BATCH as f64 / best_encode.as_secs_f64(),
        BATCH as f64 / best_decode.as_secs_f64(),
        postcard as f64 / BATCH as f64,
    );
}
