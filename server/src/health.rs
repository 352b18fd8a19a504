//! Health: how an agent's latest sample compares with the configured thresholds.
//!
//! Pure: one sample and the thresholds in, one [`Health`] out. The registry applies it to each
//! agent's newest durable sample; `GetFleetSummary` counts the results.

use crate::config::HealthThresholds;
use crate::domain::{Health, Sample};

/// Health of one sample: the worst of cpu, memory and the fullest disk.
pub fn health_of(sample: &Sample, t: &HealthThresholds) -> Health {
    fn level(value: f64, warning: f64, critical: f64) -> Health {
        if value >= critical {
            Health::Critical
        } else if value >= warning {
            Health::Warning
        } else {
            Health::Ok
        }
    }
    fn percent(used: u64, total: u64) -> f64 {
        if total == 0 {
            0.0
        } else {
            used as f64 * 100.0 / total as f64
        }
    }
    let cpu = level(sample.cpu_percent, t.cpu_warning, t.cpu_critical);
    let memory = level(
        percent(sample.memory_used_bytes, sample.memory_total_bytes),
        t.memory_warning,
        t.memory_critical,
    );
    let disk = sample
        .disks
        .iter()
        .map(|d| {
            level(
                percent(d.used_bytes, d.total_bytes),
                t.disk_warning,
                t.disk_critical,
            )
        })
        .max()
        .unwrap_or(Health::Ok);
    cpu.max(memory).max(disk)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn health_takes_the_worst_resource() {
        let t = HealthThresholds::default();
        let mut s = Sample {
            seq: 1,
            time: crate::domain::Time::now(),
            cpu_percent: 10.0,
            load: [0.0; 3],
            memory_used_bytes: 10,
            memory_total_bytes: 100,
            swap_used_bytes: 0,
            swap_total_bytes: 0,
            disks: vec![crate::domain::DiskUsage {
                mount_point: "/".into(),
                used_bytes: 10,
                total_bytes: 100,
            }],
            network_rx_bytes: 0,
            network_tx_bytes: 0,
            uptime: Duration::ZERO,
            process_count: 1,
        };
        assert_eq!(health_of(&s, &t), Health::Ok);
        s.memory_used_bytes = 90;
        assert_eq!(health_of(&s, &t), Health::Warning);
        s.disks[0].used_bytes = 99;
        assert_eq!(health_of(&s, &t), Health::Critical);
    }
}
