//! Server configuration: plain structs, built by `main.rs` from flags and passed explicitly.
//!
//! Every default is a named constant here; clap's `default_value` and `GetServerConfig` use the
//! same constants, so there is one source of truth for intervals, thresholds and limits.

use std::path::PathBuf;
use std::time::Duration;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:7600";
pub const DEFAULT_DATA_DIR: &str = "tether-data";

pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);
pub const DEFAULT_METRICS_INTERVAL: Duration = Duration::from_secs(10);
pub const DEFAULT_STALE_AFTER: Duration = Duration::from_secs(15);
pub const DEFAULT_OFFLINE_AFTER: Duration = Duration::from_secs(45);
pub const DEFAULT_FLEET_TTL: Duration = Duration::from_secs(24 * 3600);
/// How often the liveness pass runs. Bounds how late a silent agent turns stale.
pub const DEFAULT_LIVENESS_TICK: Duration = Duration::from_millis(250);

pub const DEFAULT_METRICS_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);
pub const DEFAULT_RETENTION_INTERVAL: Duration = Duration::from_secs(3600);
/// Most writes the writer commits in one batch.
pub const DEFAULT_WRITER_MAX_BATCH: usize = 4096;
/// How long the writer waits for more writes after the first one of a batch arrives.
pub const DEFAULT_WRITER_LINGER: Duration = Duration::from_millis(5);
/// Writes queued towards the writer before sessions wait (backpressure on ingest).
pub const DEFAULT_WRITER_QUEUE: usize = 65_536;

pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 1024 * 1024;
pub const DEFAULT_MAX_SAMPLES_PER_REPORT: usize = 1000;
pub const DEFAULT_MAX_LABELS: usize = 64;
pub const DEFAULT_MAX_LABEL_KEY_BYTES: usize = 63;
pub const DEFAULT_MAX_LABEL_VALUE_BYTES: usize = 255;
/// A sample whose seq is this far beyond the highest one seen is refused: accepting it would
/// make every later genuine sample look like a duplicate.
pub const DEFAULT_MAX_SEQ_JUMP: u64 = 1_000_000;
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 1024;
pub const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Events buffered per watcher before it is ended with `ABORTED` and must resync.
pub const DEFAULT_WATCH_BUFFER: usize = 8192;

pub const DEFAULT_CPU_WARNING: f64 = 80.0;
pub const DEFAULT_CPU_CRITICAL: f64 = 95.0;
pub const DEFAULT_MEMORY_WARNING: f64 = 85.0;
pub const DEFAULT_MEMORY_CRITICAL: f64 = 95.0;
pub const DEFAULT_DISK_WARNING: f64 = 85.0;
pub const DEFAULT_DISK_CRITICAL: f64 = 95.0;

/// Name of the file in the data directory that holds the bootstrap admin token (mode 0600).
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

/// Everything the server needs to run.
#[derive(Clone, Debug)]
pub struct Config {
    pub data_dir: PathBuf,
    pub liveness: LivenessConfig,
    pub storage: StorageConfig,
    pub limits: Limits,
    pub health: HealthThresholds,
}

/// Intervals the agents follow and thresholds the server applies.
#[derive(Clone, Debug, PartialEq)]
pub struct LivenessConfig {
    pub heartbeat_interval: Duration,
    pub metrics_interval: Duration,
    pub stale_after: Duration,
    pub offline_after: Duration,
    pub fleet_ttl: Duration,
    pub tick: Duration,
}

#[derive(Clone, Debug, PartialEq)]
pub struct StorageConfig {
    pub metrics_retention: Duration,
    pub retention_interval: Duration,
    pub writer_max_batch: usize,
    pub writer_linger: Duration,
    pub writer_queue: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Limits {
    pub max_message_bytes: usize,
    pub max_samples_per_report: usize,
    pub max_labels: usize,
    pub max_label_key_bytes: usize,
    pub max_label_value_bytes: usize,
    pub max_seq_jump: u64,
    pub max_concurrent_streams: u32,
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    pub watch_buffer: usize,
}

/// Percentages at or above which a resource makes an agent `Warning` / `Critical`.
#[derive(Clone, Debug, PartialEq)]
pub struct HealthThresholds {
    pub cpu_warning: f64,
    pub cpu_critical: f64,
    pub memory_warning: f64,
    pub memory_critical: f64,
    pub disk_warning: f64,
    pub disk_critical: f64,
}

/// A configuration that cannot work, found before anything is bound.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Invalid(String),
}

// === impl Config ===

impl Config {
    /// Defaults for everything, with data in `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            liveness: LivenessConfig::default(),
            storage: StorageConfig::default(),
            limits: Limits::default(),
            health: HealthThresholds::default(),
        }
    }

    /// Checks the relations between settings that each flag alone cannot.
    ///
    /// # Errors
    ///
    /// Returns a message naming the offending settings.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let l = &self.liveness;
        let invalid = |msg: String| Err(ConfigError::Invalid(msg));
        for (name, value) in [
            ("heartbeat interval", l.heartbeat_interval),
            ("metrics interval", l.metrics_interval),
            ("stale-after", l.stale_after),
            ("offline-after", l.offline_after),
            ("fleet TTL", l.fleet_ttl),
            ("liveness tick", l.tick),
        ] {
            if value.is_zero() {
                return invalid(format!("{name} must be greater than zero"));
            }
        }
        if l.stale_after <= l.heartbeat_interval {
            return invalid(format!(
                "stale-after ({}) must be longer than the heartbeat interval ({}), or healthy \
                 agents would turn stale",
                humantime::format_duration(l.stale_after),
                humantime::format_duration(l.heartbeat_interval)
            ));
        }
        if l.offline_after <= l.stale_after {
            return invalid(format!(
                "offline-after ({}) must be longer than stale-after ({})",
                humantime::format_duration(l.offline_after),
                humantime::format_duration(l.stale_after)
            ));
        }
        if self.limits.max_message_bytes < 4096 {
            return invalid("max message size must be at least 4 KiB".to_owned());
        }
        if self.limits.max_concurrent_streams == 0 || self.limits.watch_buffer == 0 {
            return invalid("stream limits must be greater than zero".to_owned());
        }
        if self.storage.writer_max_batch == 0 || self.storage.writer_queue == 0 {
            return invalid("writer batch and queue sizes must be greater than zero".to_owned());
        }
        let h = &self.health;
        for (name, warn, crit) in [
            ("cpu", h.cpu_warning, h.cpu_critical),
            ("memory", h.memory_warning, h.memory_critical),
            ("disk", h.disk_warning, h.disk_critical),
        ] {
            if !(0.0..=100.0).contains(&warn) || !(0.0..=100.0).contains(&crit) || warn > crit {
                return invalid(format!(
                    "{name} health thresholds must satisfy 0 <= warning <= critical <= 100"
                ));
            }
        }
        Ok(())
    }
}

impl Default for LivenessConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            metrics_interval: DEFAULT_METRICS_INTERVAL,
            stale_after: DEFAULT_STALE_AFTER,
            offline_after: DEFAULT_OFFLINE_AFTER,
            fleet_ttl: DEFAULT_FLEET_TTL,
            tick: DEFAULT_LIVENESS_TICK,
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            metrics_retention: DEFAULT_METRICS_RETENTION,
            retention_interval: DEFAULT_RETENTION_INTERVAL,
            writer_max_batch: DEFAULT_WRITER_MAX_BATCH,
            writer_linger: DEFAULT_WRITER_LINGER,
            writer_queue: DEFAULT_WRITER_QUEUE,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_samples_per_report: DEFAULT_MAX_SAMPLES_PER_REPORT,
            max_labels: DEFAULT_MAX_LABELS,
            max_label_key_bytes: DEFAULT_MAX_LABEL_KEY_BYTES,
            max_label_value_bytes: DEFAULT_MAX_LABEL_VALUE_BYTES,
            max_seq_jump: DEFAULT_MAX_SEQ_JUMP,
            max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
            keepalive_interval: DEFAULT_KEEPALIVE_INTERVAL,
            keepalive_timeout: DEFAULT_KEEPALIVE_TIMEOUT,
            watch_buffer: DEFAULT_WATCH_BUFFER,
        }
    }
}

impl Default for HealthThresholds {
    fn default() -> Self {
        Self {
            cpu_warning: DEFAULT_CPU_WARNING,
            cpu_critical: DEFAULT_CPU_CRITICAL,
            memory_warning: DEFAULT_MEMORY_WARNING,
            memory_critical: DEFAULT_MEMORY_CRITICAL,
            disk_warning: DEFAULT_DISK_WARNING,
            disk_critical: DEFAULT_DISK_CRITICAL,
        }
    }
}

#[cfg(test)]
mod tests {
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
    fn thresholds_must_be_ordered() {
        let mut config = Config::new("x");
        config.health.cpu_warning = 99.0;
        config.health.cpu_critical = 90.0;
        assert!(config.validate().is_err());
    }
}
