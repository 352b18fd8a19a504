//! The configuration's defaults and the relations `Config::validate` enforces.

use super::*;

#[test]
fn defaults_are_valid() {
    Config::new("x").validate().expect("defaults must validate");
}

#[test]
fn stale_must_exceed_heartbeat() {
    let mut config = Config::new("x");
    config.liveness.stale_after = config.liveness.heartbeat_interval;
    assert!(config.validate().is_err());
}

#[test]
fn offline_must_exceed_stale() {
    let mut config = Config::new("x");
    config.liveness.offline_after = config.liveness.stale_after;
    assert!(config.validate().is_err());
}

#[test]
fn the_least_report_interval_is_what_agents_obey() {
    let mut config = Config::new("x");
    config.storage.min_report_interval = MAX_MIN_REPORT_INTERVAL;
    config.validate().expect("the longest wait agents obey");
    config.storage.min_report_interval = MAX_MIN_REPORT_INTERVAL + Duration::from_secs(1);
    assert!(config.validate().is_err());
}

#[test]
fn the_longest_report_interval_is_what_agents_obey() {
    let mut config = Config::new("x");
    config.storage.max_report_interval = Duration::ZERO;
    config.validate().expect("0: no adaptive pacing");
    config.storage.max_report_interval = MAX_MIN_REPORT_INTERVAL;
    config.validate().expect("the longest wait agents obey");
    config.storage.max_report_interval = MAX_MIN_REPORT_INTERVAL + Duration::from_secs(1);
    assert!(config.validate().is_err(), "longer than agents obey");
}

#[test]
fn tls_flags_come_in_pairs() {
    let t = DEFAULT_TLS_HANDSHAKE_TIMEOUT;
    let p = |s: &str| Some(PathBuf::from(s));
    assert_eq!(
        TlsSettings::from_flags(None, None, None, t).expect("off"),
        None
    );
    let on = TlsSettings::from_flags(p("c"), p("k"), p("ca"), t)
        .expect("on")
        .expect("some");
    assert_eq!(on.client_ca, p("ca"));
    assert!(TlsSettings::from_flags(p("c"), None, None, t).is_err());
    assert!(TlsSettings::from_flags(None, p("k"), None, t).is_err());
    assert!(TlsSettings::from_flags(None, None, p("ca"), t).is_err());
    let mut config = Config::new("x");
    assert!(!config.mtls());
    config.tls = Some(TlsSettings::new("c", "k"));
    assert!(!config.mtls());
    config.tls.as_mut().expect("tls").client_ca = p("ca");
    assert!(config.mtls());
    config.tls.as_mut().expect("tls").handshake_timeout = Duration::ZERO;
    assert!(config.validate().is_err());
}

#[test]
fn read_budgets_must_hold_the_largest_agent() {
    let mut config = Config::new("x");
    config.limits.max_response_bytes = MIN_RESPONSE_BYTES - 1;
    assert!(config.validate().is_err());
    let mut config = Config::new("x");
    config.limits.watch_buffer_bytes = MIN_RESPONSE_BYTES - 1;
    assert!(config.validate().is_err());
    let mut config = Config::new("x");
    config.limits.max_watches_per_token = 0;
    assert!(config.validate().is_err());
}

#[test]
fn connection_cap_follows_the_open_file_limit() {
    assert_eq!(
        connections_for_fd_limit(20_000),
        20_000 - CONNECTION_FD_RESERVE
    );
    // A small limit keeps three quarters for connections.
    assert_eq!(connections_for_fd_limit(256), 192);
    assert_eq!(connections_for_fd_limit(0), 1);
    let limits = ConnectionLimits {
        max_connections: Some(7),
        ..ConnectionLimits::default()
    };
    assert_eq!(limits.effective_max_connections(), 7);
    assert!(ConnectionLimits::default().effective_max_connections() > 0);
}

#[test]
fn connection_and_admission_limits_must_be_positive() {
    let mut config = Config::new("x");
    config.connections.first_request_timeout = Duration::ZERO;
    assert!(config.validate().is_err());
    let mut config = Config::new("x");
    config.connections.max_connections = Some(0);
    assert!(config.validate().is_err());
    let mut config = Config::new("x");
    config.admission.max_sessions_in_setup = 0;
    assert!(config.validate().is_err());
}

#[test]
fn storage_settings_must_be_usable() {
    let mut config = Config::new("x");
    config.storage.rollup_1h_retention = Duration::ZERO;
    assert!(config.validate().is_err());
    let mut config = Config::new("x");
    config.storage.checkpoint_interval = Duration::ZERO;
    assert!(config.validate().is_err());
    let mut config = Config::new("x");
    config.storage.checkpoint_log_bytes = 0;
    assert!(config.validate().is_err());
    let mut config = Config::new("x");
    config.storage.series.head_max_bytes = MIN_HEAD_MAX_BYTES - 1;
    assert!(config.validate().is_err());
    let mut config = Config::new("x");
    config.storage.series.head_max_samples = 0;
    assert!(config.validate().is_err());
}

#[test]
fn thresholds_must_be_ordered() {
    let mut config = Config::new("x");
    config.health.cpu_warning = 99.0;
    config.health.cpu_critical = 90.0;
    assert!(config.validate().is_err());
}
