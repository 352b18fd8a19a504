//! Samples shaped like Tether's, for the examples that measure the store: the fleet
//! simulator's synthetic machines and real-like machines, generated from fixed seeds.

use std::time::{Duration, UNIX_EPOCH};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tether_agent::{Collector, SyntheticCollector};
use tether_server::domain::{DiskUsage, Sample, Time};

/// 2025-06-15, a start time with a full-width millisecond figure.
pub const T0_MS: u64 = 1_750_000_000_000;

/// The fleet simulator's machine `agent`: `SyntheticCollector` values, stamped every
/// `interval_ms` plus up to `jitter_ms` of scheduling delay (with sub-millisecond noise), uptime
/// advancing with the stamps as the collector's does with the clock.
pub fn synthetic(agent: usize, n: usize, interval_ms: u64, jitter_ms: u64) -> Vec<Sample> {
    let mut collector = SyntheticCollector::new(format!("sim-{agent:05}"), "hw", "linux");
    let mut rng = StdRng::seed_from_u64(agent as u64);
    let start = UNIX_EPOCH + Duration::from_millis(T0_MS + agent as u64 * 7_919);
    let mut uptime0 = None;
    (0..n)
        .map(|i| {
            let s = collector.sample();
            let jitter = Duration::from_micros(rng.random_range(0..=jitter_ms * 1_000));
            let offset = Duration::from_millis(i as u64 * interval_ms) + jitter;
            let uptime = *uptime0.get_or_insert(s.uptime) + offset;
            Sample {
                seq: i as u64 + 1,
                time: Time::new(start + offset).expect("2025 is within Time's range"),
                cpu_percent: s.cpu_percent,
                load: [s.load_1, s.load_5, s.load_15],
                memory_used_bytes: s.memory_used_bytes,
                memory_total_bytes: s.memory_total_bytes,
                swap_used_bytes: s.swap_used_bytes,
                swap_total_bytes: s.swap_total_bytes,
                disks: s
                    .disks
                    .into_iter()
                    .map(|d| DiskUsage {
                        mount_point: d.mount_point,
                        used_bytes: d.used_bytes,
                        total_bytes: d.total_bytes,
                    })
                    .collect(),
                network_rx_bytes: s.network_rx_bytes,
                network_tx_bytes: s.network_tx_bytes,
                uptime,
                process_count: s.process_count,
            }
        })
        .collect()
}

/// A real machine as `SysinfoCollector` reports it: CPU from an `f32` that wanders around a
/// base load; load averages computed the kernel's way (every 5 s) and printed with two decimals;
/// memory in KiB pages; three disks (a busy root growing in 4 KiB blocks, a static boot, a home
/// that changes now and then); network counters at a noisy ~40 / 12 KB/s; uptime in whole
/// seconds; a process count that drifts. Stamped every `interval_ms` plus 0–3 ms.
pub fn real_like(agent: usize, n: usize, interval_ms: u64) -> Vec<Sample> {
    let mut rng = StdRng::seed_from_u64(1_000 + agent as u64);
    let seconds = interval_ms as f64 / 1_000.0;
    let start_ms = T0_MS + agent as u64 * 7_919 + rng.random_range(0..1_000);
    let boot_ms = start_ms - rng.random_range(3_600_000..30 * 86_400_000);
    let base_cpu = rng.random_range(2.0..40.0f64);
    let mut cpu = base_cpu;
    let mut load = [base_cpu / 12.5; 3];
    let mut next_load_tick = start_ms - start_ms % 5_000 + 5_000;
    let mut mem_kib: u64 = rng.random_range(2_000_000..12_000_000);
    let mut swap_kib: u64 = rng.random_range(0..400_000);
    let mut root_used: u64 = rng.random_range(20u64 << 30..200u64 << 30) & !4095;
    let mut home_used: u64 = rng.random_range(1u64 << 30..400u64 << 30) & !4095;
    let (mut rx, mut tx): (u64, u64) = (rng.random::<u32>().into(), rng.random::<u32>().into());
    let mut procs: u32 = rng.random_range(180..450);
    (0..n)
        .map(|i| {
            let time_ms = start_ms + i as u64 * interval_ms + rng.random_range(0..=3);
            let nanos = rng.random_range(0..1_000_000u64);
            cpu = (0.7 * cpu + 0.3 * base_cpu + 6.0 * normal(&mut rng)).clamp(0.0, 100.0);
            while next_load_tick <= time_ms {
                let running = cpu / 100.0 * 8.0 + normal(&mut rng).abs();
                for (avg, minutes) in load.iter_mut().zip([1.0, 5.0, 15.0f64]) {
                    let decay = (-5.0 / (60.0 * minutes)).exp();
                    *avg = *avg * decay + running * (1.0 - decay);
                }
                next_load_tick += 5_000;
            }
            let walk = |rng: &mut StdRng, sd: f64| (sd * seconds.sqrt() * normal(rng)) as i64;
            mem_kib = mem_kib.saturating_add_signed(walk(&mut rng, 2_048.0));
            if rng.random_bool(0.005) {
                swap_kib = swap_kib.saturating_add_signed(walk(&mut rng, 20_000.0));
            }
            root_used += rng.random_range(0..(4.0 * seconds).ceil() as u64 + 1) * 4096;
            if rng.random_bool(0.05) {
                home_used = home_used.saturating_add_signed(rng.random_range(-256..=256) * 4096);
            }
            let rate =
                |rng: &mut StdRng, mean: f64| (mean * seconds * (0.6 * normal(rng)).exp()) as u64;
            rx += rate(&mut rng, 40_000.0);
            tx += rate(&mut rng, 12_000.0);
            if rng.random_bool(0.3) {
                procs = procs.saturating_add_signed(rng.random_range(-3..=3));
            }
            Sample {
                seq: i as u64 + 1,
                time: Time::new(
                    UNIX_EPOCH + Duration::from_millis(time_ms) + Duration::from_nanos(nanos),
                )
                .expect("2025 is within Time's range"),
                cpu_percent: f64::from(cpu as f32),
                load: load.map(|l| format!("{l:.2}").parse().expect("a printed number")),
                memory_used_bytes: mem_kib * 1024,
                memory_total_bytes: 16_318_412 * 1024,
                swap_used_bytes: swap_kib * 1024,
                swap_total_bytes: 2_097_148 * 1024,
                disks: vec![
                    disk("/", root_used, 502_468_108_288),
                    disk("/boot", 254_869_504, 1_020_702_720),
                    disk("/home", home_used, 1_967_317_565_440),
                ],
                network_rx_bytes: rx,
                network_tx_bytes: tx,
                uptime: Duration::from_secs((time_ms - boot_ms) / 1_000),
                process_count: procs,
            }
        })
        .collect()
}

pub fn disk(mount: &str, used: u64, total: u64) -> DiskUsage {
    DiskUsage {
        mount_point: mount.to_owned(),
        used_bytes: used,
        total_bytes: total,
    }
}

/// A standard normal variate (Box–Muller).
fn normal(rng: &mut StdRng) -> f64 {
    let u: f64 = rng.random_range(f64::EPSILON..1.0);
    let v: f64 = rng.random();
    (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
}
