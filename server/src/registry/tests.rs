//! Unit tests of the registry's pure parts. The selector grammar is tested where it lives,
//! `tether_proto::selector`.

use super::*;

#[test]
fn health_takes_the_worst_resource() {
    let t = HealthThresholds::default();
    let mut s = Sample {
        seq: 1,
        time: SystemTime::now(),
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
