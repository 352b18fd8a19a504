//! What the simulator is told: [`SimulateConfig`], the parsers of its list-valued flags, and
//! the deterministic identity (hostname, hardware id, OS, labels) of each simulated agent.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::command::CommandConfig;
use crate::error::SimulateError;
use crate::{BackoffConfig, DEFAULT_BUFFER_CAPACITY};

/// Default enrollments in flight at once.
pub const DEFAULT_ENROLL_CONCURRENCY: usize = 32;
/// Default period of the stats records.
pub const DEFAULT_STATS_INTERVAL: Duration = Duration::from_secs(1);

/// Everything the simulator needs. Intervals are deliberately absent: the server's `Welcome`
/// decides them, as for a real agent.
#[derive(Debug, Clone)]
pub struct SimulateConfig {
    /// Server address, e.g. `http://127.0.0.1:7600`.
    pub server_url: String,
    /// Number of simulated agents.
    pub n_agents: usize,
    /// Number of connections carrying them; `n_agents` (or more) means one connection each.
    pub n_connections: usize,
    /// Local addresses the connections are spread over (empty: the kernel chooses).
    pub source_addrs: Vec<IpAddr>,
    /// Connections opened per second while ramping; 0 means all at once.
    pub ramp: f64,
    /// Enrollment token for agents not in the state file.
    pub enroll_token: Option<String>,
    /// JSON-lines file of enrollments, read at start and appended to.
    pub state_file: Option<PathBuf>,
    /// Label keys with their values; agent `i` gets one value per key, by index.
    pub label_mix: Vec<(String, Vec<String>)>,
    /// OS names, assigned by index.
    pub os_mix: Vec<String>,
    /// Hostnames are `{name_prefix}-{index:06}`.
    pub name_prefix: String,
    /// After all agents are online once, wait this long, then mute `silent_count` agents: they
    /// keep their streams open but send nothing, like a hung machine.
    pub silent_after: Option<Duration>,
    /// How many agents (the first ones by index) go silent; `None` means all of them.
    pub silent_count: Option<usize>,
    /// Period of the stats records.
    pub stats_interval: Duration,
    /// Print JSON lines on stdout instead of text.
    pub json: bool,
    /// Also append JSON lines here.
    pub stats_file: Option<PathBuf>,
    /// Stop after this long (after the ramp started); `None` runs until shutdown.
    pub duration: Option<Duration>,
    /// Per-agent sample buffer capacity.
    pub buffer_capacity: usize,
    /// Time allowed to connect and to receive `Welcome`.
    pub connect_timeout: Duration,
    /// Reconnect backoff.
    pub backoff: BackoffConfig,
    /// Enrollments in flight at once.
    pub enroll_concurrency: usize,
    /// Events each simulated agent reports per minute (0: none), over its session, from an
    /// in-memory queue (see `simulate/events.rs`).
    pub events_per_minute: f64,
    /// What the simulated agents may run (default: the built-ins, no program). Their command
    /// journal lives in memory: not durable, one per simulated agent.
    pub commands: CommandConfig,
}

/// The identity of simulated agent `index`.
pub(super) struct Identity {
    pub(super) hostname: String,
    pub(super) hardware_id: String,
    pub(super) os: String,
    pub(super) labels: BTreeMap<String, String>,
}

// === impl SimulateConfig ===

impl SimulateConfig {
    /// A configuration for `n_agents` on one connection each, everything else at defaults.
    pub fn new(server_url: impl Into<String>, n_agents: usize) -> Self {
        Self {
            server_url: server_url.into(),
            n_agents,
            n_connections: n_agents,
            source_addrs: Vec::new(),
            ramp: 0.0,
            enroll_token: None,
            state_file: None,
            label_mix: Vec::new(),
            os_mix: vec!["linux".to_owned()],
            name_prefix: "sim".to_owned(),
            silent_after: None,
            silent_count: None,
            stats_interval: DEFAULT_STATS_INTERVAL,
            json: false,
            stats_file: None,
            duration: None,
            buffer_capacity: DEFAULT_BUFFER_CAPACITY,
            connect_timeout: Duration::from_secs(30),
            backoff: BackoffConfig::default(),
            enroll_concurrency: DEFAULT_ENROLL_CONCURRENCY,
            events_per_minute: 0.0,
            commands: CommandConfig::default(),
        }
    }

    pub(super) fn validate(&self) -> Result<(), SimulateError> {
        let invalid = |message: &str| Err(SimulateError::Config(message.to_owned()));
        if self.n_agents == 0 {
            return invalid("--agents must be at least 1");
        }
        if self.n_connections == 0 {
            return invalid("--connections must be at least 1");
        }
        if !(self.ramp.is_finite() && self.ramp >= 0.0) {
            return invalid("--ramp must be a non-negative number of connections per second");
        }
        if self.os_mix.is_empty() {
            return invalid("--os-mix must name at least one OS");
        }
        if self.enroll_concurrency == 0 {
            return invalid("--enroll-concurrency must be at least 1");
        }
        if !(self.events_per_minute.is_finite() && (0.0..=6000.0).contains(&self.events_per_minute))
        {
            return invalid("--events-per-minute must be between 0 and 6000");
        }
        if self.stats_interval.is_zero() {
            return invalid("--stats-interval must not be zero");
        }
        self.backoff.validate()?;
        self.commands.validate()?;
        Ok(())
    }

    pub(super) fn identity(&self, index: usize) -> Identity {
        let mut stride = 1;
        let mut labels = BTreeMap::new();
        for (key, values) in &self.label_mix {
            if values.is_empty() {
                continue;
            }
            labels.insert(key.clone(), values[(index / stride) % values.len()].clone());
            stride *= values.len();
        }
        let os = self.os_mix[(index / stride) % self.os_mix.len()].clone();
        let hostname = format!("{}-{index:06}", self.name_prefix);
        Identity {
            hardware_id: format!("hw-{hostname}"),
            hostname,
            os,
            labels,
        }
    }

    pub(super) fn uses_shared_connections(&self) -> bool {
        self.n_connections < self.n_agents
    }
}

/// Parses `127.0.0.2-127.0.0.40,127.0.1.1`: IPv4 ranges (last octet varies) and single
/// addresses, comma separated.
///
/// # Errors
///
/// A message naming the malformed part.
pub fn parse_source_addrs(raw: &str) -> Result<Vec<IpAddr>, String> {
    let mut addrs = Vec::new();
    for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Some((from, to)) = part.split_once('-') {
            let from: std::net::Ipv4Addr = from
                .parse()
                .map_err(|e| format!("source address {from:?}: {e}"))?;
            let to: std::net::Ipv4Addr = to
                .parse()
                .map_err(|e| format!("source address {to:?}: {e}"))?;
            let (from, to) = (u32::from(from), u32::from(to));
            if to < from || to - from > 65_535 {
                return Err(format!(
                    "source address range {part:?} is empty or too large"
                ));
            }
            addrs.extend((from..=to).map(|a| IpAddr::V4(a.into())));
        } else {
            addrs.push(
                part.parse()
                    .map_err(|e| format!("source address {part:?}: {e}"))?,
            );
        }
    }
    Ok(addrs)
}

/// Parses `env=prod|staging|dev,region=eu|us|ap`.
///
/// # Errors
///
/// A message naming the malformed part.
pub fn parse_label_mix(raw: &str) -> Result<Vec<(String, Vec<String>)>, String> {
    raw.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|part| {
            let (key, values) = part
                .split_once('=')
                .ok_or_else(|| format!("label mix {part:?} must look like key=v1|v2"))?;
            let values: Vec<String> = values.split('|').map(str::to_owned).collect();
            if key.is_empty() || values.iter().any(String::is_empty) {
                return Err(format!("label mix {part:?} has an empty key or value"));
            }
            Ok((key.to_owned(), values))
        })
        .collect()
}

pub(super) fn source_addr(config: &SimulateConfig, idx: usize) -> Option<IpAddr> {
    (!config.source_addrs.is_empty()).then(|| config.source_addrs[idx % config.source_addrs.len()])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_addrs_parse() {
        let addrs = parse_source_addrs("127.0.0.2-127.0.0.4,127.0.1.1").expect("valid");
        assert_eq!(addrs.len(), 4);
        assert_eq!(addrs[0].to_string(), "127.0.0.2");
        assert_eq!(addrs[3].to_string(), "127.0.1.1");
        assert!(parse_source_addrs("127.0.0.5-127.0.0.4").is_err());
        assert!(parse_source_addrs("nope").is_err());
    }

    #[test]
    fn bad_settings_name_the_flag() {
        let err = SimulateConfig::new("http://127.0.0.1:1", 0)
            .validate()
            .expect_err("no agents");
        assert!(matches!(err, SimulateError::Config(_)), "{err:?}");
        assert_eq!(err.to_string(), "--agents must be at least 1");
        let mut config = SimulateConfig::new("http://127.0.0.1:1", 1);
        config.backoff.multiplier = 0.5;
        let err = config.validate().expect_err("shrinking backoff");
        assert!(matches!(err, SimulateError::Agent(_)), "{err:?}");
    }

    #[test]
    fn mixes_are_deterministic_and_spread() {
        let mut config = SimulateConfig::new("http://127.0.0.1:1", 9);
        config.label_mix = parse_label_mix("env=prod|staging|dev,region=eu|us|ap").expect("mix");
        config.os_mix = vec!["linux".into(), "windows".into()];
        let ids: Vec<Identity> = (0..18).map(|i| config.identity(i)).collect();
        assert_eq!(ids[0].labels["env"], "prod");
        assert_eq!(ids[1].labels["env"], "staging");
        assert_eq!(ids[3].labels["region"], "us");
        assert_eq!(ids[0].os, "linux");
        assert_eq!(ids[9].os, "windows");
        let combos: std::collections::HashSet<_> = ids
            .iter()
            .map(|i| {
                (
                    i.labels["env"].clone(),
                    i.labels["region"].clone(),
                    i.os.clone(),
                )
            })
            .collect();
        assert_eq!(combos.len(), 18);
        assert_eq!(ids[7].hostname, "sim-000007");
        assert!(parse_label_mix("env").is_err());
    }
}
