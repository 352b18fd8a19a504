//! Unit tests of the registry's pure parts: selectors and health.

use super::*;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[test]
fn selector_parses_every_form() {
    let s = Selector::parse("env=prod, tier!=web,gpu,!spot,zone==a").expect("valid");
    assert_eq!(
        s.requirements,
        vec![
            Requirement::Equals("env".into(), "prod".into()),
            Requirement::NotEquals("tier".into(), "web".into()),
            Requirement::Exists("gpu".into()),
            Requirement::NotExists("spot".into()),
            Requirement::Equals("zone".into(), "a".into()),
        ]
    );
    assert_eq!(Selector::parse("").expect("empty"), Selector::default());
    assert_eq!(Selector::parse("  ").expect("blank"), Selector::default());
}

#[test]
fn selector_rejects_malformed_terms() {
    for bad in [
        "env=prod,",
        ",env",
        "=prod",
        "env=pr od",
        "a b",
        "!",
        "k=v=w",
    ] {
        assert!(Selector::parse(bad).is_err(), "{bad:?} should be rejected");
    }
}

#[test]
fn selector_matches() {
    let l = labels(&[("env", "prod"), ("gpu", "")]);
    let yes = |s: &str| Selector::parse(s).expect(s).matches(&l);
    assert!(yes("env=prod"));
    assert!(!yes("env=dev"));
    assert!(yes("env!=dev"));
    assert!(yes("tier!=web"));
    assert!(yes("gpu"));
    assert!(!yes("!gpu"));
    assert!(yes("!spot"));
    assert!(!yes("env=prod,!gpu"));
}

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
