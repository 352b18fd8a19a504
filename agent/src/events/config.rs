//! The agent's settings for events: the spool's size, the local socket, the rate limit and
//! the thresholds of the built-in events. Plain data; the binary fills it from flags (and the
//! configuration file, keyed by the flags' names: `event-disk-threshold = 85`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::AgentError;
use crate::events::spool::{DEFAULT_SPOOL_BYTES, MIN_SPOOL_BYTES};

/// The socket's file name in the state directory, unless configured.
pub const DEFAULT_SOCKET_NAME: &str = "events.sock";
/// Events the socket accepts per [`DEFAULT_RATE_WINDOW`]; beyond, they are dropped and counted.
pub const DEFAULT_RATE_LIMIT: u32 = 600;
/// The rate limit's window.
pub const DEFAULT_RATE_WINDOW: Duration = Duration::from_secs(60);
/// Disk usage (percent of a filesystem) that raises `tether.disk_usage_high`.
pub const DEFAULT_DISK_THRESHOLD: f64 = 90.0;
/// Memory usage (percent) that raises `tether.memory_usage_high`.
pub const DEFAULT_MEMORY_THRESHOLD: f64 = 95.0;
/// CPU usage (percent of all cores) that raises `tether.cpu_usage_high` once sustained.
pub const DEFAULT_CPU_THRESHOLD: f64 = 90.0;
/// How long CPU usage must stay above its threshold.
pub const DEFAULT_CPU_FOR: Duration = Duration::from_secs(5 * 60);
/// How far (percentage points) below its threshold a value must fall to clear the event: a
/// value hovering at the threshold raises it once, not at every sample.
pub const DEFAULT_HYSTERESIS: f64 = 5.0;

/// The events section of the agent's configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct EventsConfig {
    /// Most bytes the spool holds on disk.
    pub spool_bytes: u64,
    /// The local socket; `None`: [`DEFAULT_SOCKET_NAME`] in the state directory.
    pub socket: Option<PathBuf>,
    /// Group (name or numeric id) allowed to use the socket (mode 0660); `None`: only the
    /// agent's user (mode 0600).
    pub socket_group: Option<String>,
    /// Events accepted from the socket per `rate_window`.
    pub rate_limit: u32,
    pub rate_window: Duration,
    pub disk: Threshold,
    pub memory: Threshold,
    pub cpu: Threshold,
    /// Percentage points below a threshold at which its event clears.
    pub hysteresis: f64,
}

/// When a built-in event is raised: a value at or above `percent` for at least `sustained`
/// (zero: at the first sample).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Threshold {
    pub percent: f64,
    pub sustained: Duration,
}

// === impl EventsConfig ===

impl EventsConfig {
    /// The socket's path for an agent whose state directory is `state_dir`.
    pub fn socket_path(&self, state_dir: &Path) -> PathBuf {
        self.socket
            .clone()
            .unwrap_or_else(|| state_dir.join(DEFAULT_SOCKET_NAME))
    }

    /// Checks the settings before the agent starts.
    ///
    /// # Errors
    ///
    /// [`AgentError::Config`] naming the first invalid setting.
    pub fn validate(&self) -> Result<(), AgentError> {
        if self.spool_bytes < MIN_SPOOL_BYTES {
            return Err(AgentError::Config(format!(
                "event spool size must be at least {MIN_SPOOL_BYTES} bytes"
            )));
        }
        if self.rate_limit == 0 || self.rate_window.is_zero() {
            return Err(AgentError::Config(
                "event rate limit and window must not be zero".into(),
            ));
        }
        for (name, threshold) in [
            ("disk", self.disk),
            ("memory", self.memory),
            ("cpu", self.cpu),
        ] {
            if !(threshold.percent > 0.0 && threshold.percent <= 100.0) {
                return Err(AgentError::Config(format!(
                    "event {name} threshold must be above 0 and at most 100 (percent)"
                )));
            }
        }
        if !(self.hysteresis >= 0.0 && self.hysteresis < 100.0) {
            return Err(AgentError::Config(
                "event hysteresis must be at least 0 and below 100 (percentage points)".into(),
            ));
        }
        if let Some(group) = &self.socket_group {
            crate::events::socket::resolve_group(group)?;
        }
        Ok(())
    }
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            spool_bytes: DEFAULT_SPOOL_BYTES,
            socket: None,
            socket_group: None,
            rate_limit: DEFAULT_RATE_LIMIT,
            rate_window: DEFAULT_RATE_WINDOW,
            disk: Threshold {
                percent: DEFAULT_DISK_THRESHOLD,
                sustained: Duration::ZERO,
            },
            memory: Threshold {
                percent: DEFAULT_MEMORY_THRESHOLD,
                sustained: Duration::ZERO,
            },
            cpu: Threshold {
                percent: DEFAULT_CPU_THRESHOLD,
                sustained: DEFAULT_CPU_FOR,
            },
            hysteresis: DEFAULT_HYSTERESIS,
        }
    }
}

/// Parses a size such as `64MiB`, `512KiB`, `1GiB` or a number of bytes.
///
/// # Errors
///
/// A sentence saying what a size looks like.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let shift = match unit.trim() {
        "" | "B" => 0,
        "KiB" | "K" => 10,
        "MiB" | "M" => 20,
        "GiB" | "G" => 30,
        _ => {
            return Err(format!(
                "{text:?} is not a size such as 64MiB, 512KiB or 1048576"
            ));
        }
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .ok_or_else(|| format!("{text:?} is not a size such as 64MiB, 512KiB or 1048576"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_refused() {
        let mut config = EventsConfig::default();
        config.validate().expect("defaults");
        config.spool_bytes = 1024;
        assert!(config.validate().is_err());
        config.spool_bytes = MIN_SPOOL_BYTES;
        config.disk.percent = 120.0;
        assert!(config.validate().is_err());
        config.disk.percent = 90.0;
        config.hysteresis = f64::NAN;
        assert!(config.validate().is_err());
        config.hysteresis = 2.0;
        config.rate_limit = 0;
        assert!(config.validate().is_err());
        config.rate_limit = 1;
        config.socket_group = Some("no-such-group-here".into());
        assert!(config.validate().is_err());
        config.socket_group = Some("0".into());
        config.validate().expect("a numeric group");
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("512KiB"), Ok(512 << 10));
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999999GiB").is_err());
    }
}
