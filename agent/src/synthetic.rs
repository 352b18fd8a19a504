//! [`SyntheticCollector`]: a machine made of numbers, for the fleet simulator and the
//! end-to-end tests, where many agents share one host but must look like distinct machines.
//!
//! Values are deterministic for a given seed and vary smoothly from sample to sample; counters
//! only grow. Everything else about the agent (enrollment, sessions, buffering, acks) is the
//! same code that runs with [`crate::SysinfoCollector`].

use std::time::{Duration, SystemTime};

use crate::collector::{AGENT_VERSION, Collector, DiskUsage, Sample, SystemInfo};

/// Deterministic synthetic measurements for one simulated machine.
#[derive(Debug, Clone)]
pub struct SyntheticCollector {
    info: SystemInfo,
    /// Advances by one per sample; drives the smooth variation.
    tick: u64,
    seed: u64,
    rx: u64,
    tx: u64,
    booted: SystemTime,
}

// === impl SyntheticCollector ===

impl SyntheticCollector {
    /// A machine named `hostname` with hardware id `hardware_id`, running `os_name`.
    pub fn new(
        hostname: impl Into<String>,
        hardware_id: impl Into<String>,
        os_name: impl Into<String>,
    ) -> Self {
        let hostname = hostname.into();
        let seed = fnv1a(hostname.as_bytes());
        let booted = SystemTime::now() - Duration::from_secs(3600 + seed % 86_400);
        Self {
            info: SystemInfo {
                hostname,
                os_name: os_name.into(),
                os_version: "1.0".to_owned(),
                kernel_version: "6.1.0-synthetic".to_owned(),
                architecture: "x86_64".to_owned(),
                cpu_model: "Synthetic CPU".to_owned(),
                logical_cores: 4,
                total_memory_bytes: 8 << 30,
                hardware_id: hardware_id.into(),
                boot_time: Some(booted),
                agent_version: AGENT_VERSION.to_owned(),
            },
            tick: 0,
            seed,
            rx: seed % 1_000_000,
            tx: seed % 500_000,
            booted,
        }
    }

    /// Overrides the CPU usage pattern's base, e.g. to make a machine look busy (health tests).
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }
}

impl Collector for SyntheticCollector {
    fn blocks(&self) -> bool {
        false
    }

    fn system_info(&mut self) -> SystemInfo {
        self.info.clone()
    }

    fn sample(&mut self) -> Sample {
        self.tick += 1;
        let phase = (self.seed % 100) as f64 + self.tick as f64;
        let wave = (phase / 7.0).sin() * 0.5 + 0.5;
        self.rx += 1_000 + self.seed % 10_000;
        self.tx += 500 + self.seed % 5_000;
        let total = self.info.total_memory_bytes;
        let now = SystemTime::now();
        Sample {
            time: now,
            cpu_percent: 5.0 + 40.0 * wave,
            load_1: 0.2 + 2.0 * wave,
            load_5: 0.2 + 1.5 * wave,
            load_15: 0.2 + 1.0 * wave,
            memory_used_bytes: total / 4 + (total as f64 * 0.25 * wave) as u64,
            memory_total_bytes: total,
            swap_used_bytes: 0,
            swap_total_bytes: 1 << 30,
            disks: vec![DiskUsage {
                mount_point: "/".to_owned(),
                used_bytes: 20 << 30,
                total_bytes: 100 << 30,
            }],
            network_rx_bytes: self.rx,
            network_tx_bytes: self.tx,
            uptime: now.duration_since(self.booted).unwrap_or_default(),
            process_count: 100 + (self.seed % 50) as u32,
        }
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_grow_and_gauges_stay_in_range() {
        let mut c = SyntheticCollector::new("h1", "hw1", "linux");
        let a = c.sample();
        let b = c.sample();
        assert!(b.network_rx_bytes > a.network_rx_bytes);
        for s in [a, b] {
            assert!((0.0..=100.0).contains(&s.cpu_percent));
            assert!(s.memory_used_bytes <= s.memory_total_bytes);
        }
        assert_eq!(c.system_info().hardware_id, "hw1");
    }
}
