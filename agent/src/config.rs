//! The agent's configuration: a plain struct the binary builds from flags and tests build in
//! code, with every default as a named constant.
//!
//! Intervals (heartbeat, metrics) are deliberately absent: the server sends them in `Welcome`.
//! What commands may run is the agent's own decision: [`AgentConfig::commands`].

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::AgentError;
use crate::command::CommandConfig;
use crate::events::EventsConfig;

/// Server address used when none is given.
pub const DEFAULT_SERVER_URL: &str = "http://127.0.0.1:7600";
/// State directory used when none is given (relative to the working directory).
pub const DEFAULT_STATE_DIR: &str = "./tether-agent-state";
/// How many unacknowledged samples the agent keeps across disconnects.
pub const DEFAULT_BUFFER_CAPACITY: usize = 10_000;
/// Time allowed to open a connection, and then again (at least
/// [`crate::MIN_WELCOME_TIMEOUT`]) to receive `Welcome`.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// First reconnect delay.
pub const DEFAULT_BACKOFF_INITIAL: Duration = Duration::from_secs(1);
/// Growth factor of the reconnect delay per failed attempt.
pub const DEFAULT_BACKOFF_MULTIPLIER: f64 = 1.6;
/// Relative jitter applied to each reconnect delay (±20 %).
pub const DEFAULT_BACKOFF_JITTER: f64 = 0.2;
/// Longest reconnect delay.
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(120);
/// How long the agent waits before trying again after the server refused its session because
/// another machine uses the same credential (±20 % jitter). Long on purpose: the machine
/// holding the session keeps working, and only an operator can settle which machine keeps
/// the identity.
pub const DEFAULT_IDENTITY_CONFLICT_BACKOFF: Duration = Duration::from_secs(5 * 60);
/// Longest `--hardware-id` accepted: the server's default limit for reported text.
pub const MAX_HARDWARE_ID_BYTES: usize = tether_proto::text::MAX_REPORTED_TEXT_BYTES;

/// Everything the agent needs to run. Build it with [`AgentConfig::new`] and adjust fields.
#[derive(Clone)]
pub struct AgentConfig {
    /// Server address, e.g. `http://127.0.0.1:7600`.
    pub server_url: String,
    /// Directory holding the agent id and credential (created with mode 0700).
    pub state_dir: PathBuf,
    /// Enrollment token, used only when the state directory holds no credential (or the
    /// server rejects the stored one).
    pub enroll_token: Option<String>,
    /// Display name sent at enrollment; the server defaults it to the hostname.
    pub name: Option<String>,
    /// Labels sent at enrollment and in every `Hello`.
    pub labels: BTreeMap<String, String>,
    /// Capacity of the buffer of unacknowledged samples; the oldest are dropped when full.
    pub buffer_capacity: usize,
    /// Reconnect backoff.
    pub backoff: BackoffConfig,
    /// Time allowed to open a connection, and then again (at least
    /// [`crate::MIN_WELCOME_TIMEOUT`]) to receive `Welcome`.
    pub connect_timeout: Duration,
    /// Certificates for an `https://` server. `None` (the default) trusts the system's roots
    /// and presents no client certificate; it must be `None` for an `http://` server.
    pub tls: Option<ClientTls>,
    /// Reported instead of the hardware id the collector finds (e.g. `/etc/machine-id`): for
    /// cloned images that share one, so that each machine is told apart. `None`: the
    /// collector's.
    pub hardware_id: Option<String>,
    /// Wait after the server refused a session because another machine holds the same
    /// credential (see [`DEFAULT_IDENTITY_CONFLICT_BACKOFF`]).
    pub identity_conflict_backoff: Duration,
    /// What commands this agent runs (the trust boundary) and their bounds.
    pub commands: CommandConfig,
    /// The event spool, socket, rate limit and built-in thresholds.
    pub events: EventsConfig,
}

/// Certificate files for TLS to the server (PEM). Read at every connection attempt, so a
/// renewed certificate is used from the next reconnect on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTls {
    /// CA certificate(s) the server's certificate must chain to; `None` trusts the system's
    /// roots.
    pub ca_cert: Option<PathBuf>,
    /// Client certificate presented to a server that asks for one (mTLS; its Common Name must
    /// be this agent's id). Needs `client_key`.
    pub client_cert: Option<PathBuf>,
    /// Private key of `client_cert`.
    pub client_key: Option<PathBuf>,
}

/// Exponential backoff parameters for reconnects.
#[derive(Debug, Clone, PartialEq)]
pub struct BackoffConfig {
    /// First delay.
    pub initial: Duration,
    /// Growth factor per attempt (at least 1).
    pub multiplier: f64,
    /// Relative jitter in `[0, 1)`: each delay is scaled by a random factor in
    /// `[1 - jitter, 1 + jitter]`.
    pub jitter: f64,
    /// Upper bound of every delay, jitter included.
    pub max: Duration,
}

// === impl AgentConfig ===

impl AgentConfig {
    /// A configuration with every optional field at its default.
    pub fn new(server_url: impl Into<String>, state_dir: impl Into<PathBuf>) -> Self {
        Self {
            server_url: server_url.into(),
            state_dir: state_dir.into(),
            enroll_token: None,
            name: None,
            labels: BTreeMap::new(),
            buffer_capacity: DEFAULT_BUFFER_CAPACITY,
            backoff: BackoffConfig::default(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            tls: None,
            hardware_id: None,
            identity_conflict_backoff: DEFAULT_IDENTITY_CONFLICT_BACKOFF,
            commands: CommandConfig::default(),
            events: EventsConfig::default(),
        }
    }

    /// Where the event socket is (`events.socket`, else in the state directory).
    pub fn events_socket_path(&self) -> PathBuf {
        self.events.socket_path(&self.state_dir)
    }

    /// Checks the configuration before anything connects.
    ///
    /// # Errors
    ///
    /// [`AgentError::Config`] naming the first invalid field.
    pub fn validate(&self) -> Result<(), AgentError> {
        let https = self.server_url.starts_with("https://");
        if !https && !self.server_url.starts_with("http://") {
            return Err(AgentError::Config(format!(
                "server url {:?} must start with http:// or https://",
                self.server_url
            )));
        }
        if !https && self.tls.is_some() {
            return Err(AgentError::Config(format!(
                "TLS certificates were given but server url {:?} is not https://",
                self.server_url
            )));
        }
        // Builds the endpoint exactly as a connection would, so unreadable or malformed
        // certificate files are reported now rather than at the first reconnect.
        crate::client::endpoint_with_tls(
            &self.server_url,
            self.tls.as_ref(),
            None,
            self.connect_timeout,
        )?;
        if self.state_dir.as_os_str().is_empty() {
            return Err(AgentError::Config(
                "state directory must not be empty".into(),
            ));
        }
        if self.buffer_capacity == 0 {
            return Err(AgentError::Config(
                "buffer capacity must be at least 1".into(),
            ));
        }
        if self.connect_timeout.is_zero() {
            return Err(AgentError::Config(
                "connect timeout must not be zero".into(),
            ));
        }
        if matches!(&self.enroll_token, Some(token) if token.trim().is_empty()) {
            return Err(AgentError::Config("enroll token must not be empty".into()));
        }
        // The server's rules for reported text, checked here so that a bad override stops
        // the agent at start instead of being refused at every enrollment and session.
        if let Some(id) = &self.hardware_id
            && (id.trim().is_empty()
                || id.len() > MAX_HARDWARE_ID_BYTES
                || tether_proto::text::first_forbidden(id).is_some())
        {
            return Err(AgentError::Config(format!(
                "hardware id must be 1 to {MAX_HARDWARE_ID_BYTES} bytes without control or \
                 format characters"
            )));
        }
        if self.identity_conflict_backoff.is_zero() {
            return Err(AgentError::Config(
                "identity conflict backoff must not be zero".into(),
            ));
        }
        self.commands.validate()?;
        self.events.validate()?;
        self.backoff.validate()
    }
}

impl fmt::Debug for AgentConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The enrollment token is a secret: show only whether it is set.
        f.debug_struct("AgentConfig")
            .field("server_url", &self.server_url)
            .field("state_dir", &self.state_dir)
            .field(
                "enroll_token",
                &self.enroll_token.as_ref().map(|_| "<redacted>"),
            )
            .field("name", &self.name)
            .field("labels", &self.labels)
            .field("buffer_capacity", &self.buffer_capacity)
            .field("backoff", &self.backoff)
            .field("connect_timeout", &self.connect_timeout)
            .field("tls", &self.tls)
            .field("hardware_id", &self.hardware_id)
            .field("identity_conflict_backoff", &self.identity_conflict_backoff)
            .field("commands", &self.commands)
            .field("events", &self.events)
            .finish()
    }
}

// === impl BackoffConfig ===

impl BackoffConfig {
    /// Checks that the parameters describe a sane, growing delay.
    ///
    /// # Errors
    ///
    /// [`AgentError::Config`] when a parameter is out of range.
    pub fn validate(&self) -> Result<(), AgentError> {
        if self.initial.is_zero() {
            return Err(AgentError::Config(
                "backoff initial delay must not be zero".into(),
            ));
        }
        if !(self.multiplier.is_finite() && self.multiplier >= 1.0) {
            return Err(AgentError::Config(
                "backoff multiplier must be at least 1".into(),
            ));
        }
        if !(self.jitter.is_finite() && (0.0..1.0).contains(&self.jitter)) {
            return Err(AgentError::Config(
                "backoff jitter must be in [0, 1)".into(),
            ));
        }
        if self.max < self.initial {
            return Err(AgentError::Config(
                "backoff maximum must not be below the initial delay".into(),
            ));
        }
        Ok(())
    }
}

impl Default for BackoffConfig {
    fn default() -> Self {
        Self {
            initial: DEFAULT_BACKOFF_INITIAL,
            multiplier: DEFAULT_BACKOFF_MULTIPLIER,
            jitter: DEFAULT_BACKOFF_JITTER,
            max: DEFAULT_BACKOFF_MAX,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let config = AgentConfig::new(DEFAULT_SERVER_URL, DEFAULT_STATE_DIR);
        config.validate().expect("defaults are valid");
        assert_eq!(config.buffer_capacity, DEFAULT_BUFFER_CAPACITY);
        assert_eq!(config.backoff.initial, Duration::from_secs(1));
        assert_eq!(config.backoff.max, Duration::from_secs(120));
    }

    #[test]
    fn rejects_bad_values() {
        let mut config = AgentConfig::new("127.0.0.1:7600", "state");
        assert!(config.validate().is_err());
        config.server_url = DEFAULT_SERVER_URL.into();
        config.buffer_capacity = 0;
        assert!(config.validate().is_err());
        config.buffer_capacity = 1;
        config.backoff.jitter = 1.5;
        assert!(config.validate().is_err());
        config.backoff.jitter = 0.2;
        config.validate().expect("valid again");
        for bad in ["", "  ", "a\nb", "a\u{200b}b", "a\u{202e}b"] {
            config.hardware_id = Some(bad.to_owned());
            assert!(config.validate().is_err(), "{bad:?}");
        }
        config.hardware_id = Some("x".repeat(MAX_HARDWARE_ID_BYTES + 1));
        assert!(config.validate().is_err());
        config.hardware_id = Some("clone-7f3a".to_owned());
        config.validate().expect("an override");
    }

    #[test]
    fn debug_redacts_enroll_token() {
        let mut config = AgentConfig::new(DEFAULT_SERVER_URL, DEFAULT_STATE_DIR);
        config.enroll_token = Some("s3cret-token".into());
        let debug = format!("{config:?}");
        assert!(!debug.contains("s3cret-token"));
        assert!(debug.contains("<redacted>"));
    }

    #[test]
    fn tls_settings_are_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = AgentConfig::new(DEFAULT_SERVER_URL, DEFAULT_STATE_DIR);
        config.tls = Some(ClientTls {
            ca_cert: Some(dir.path().join("ca.pem")),
            ..ClientTls::default()
        });
        // Certificates only make sense for https://.
        assert!(matches!(config.validate(), Err(AgentError::Config(_))));
        config.server_url = "https://localhost:7600".into();
        // A missing CA file is reported before connecting.
        assert!(matches!(config.validate(), Err(AgentError::Config(_))));
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a certificate").expect("write");
        config.tls = Some(ClientTls {
            ca_cert: Some(garbage.clone()),
            ..ClientTls::default()
        });
        assert!(matches!(config.validate(), Err(AgentError::Config(_))));
        // A client certificate needs its key.
        config.tls = Some(ClientTls {
            client_cert: Some(garbage),
            ..ClientTls::default()
        });
        assert!(matches!(config.validate(), Err(AgentError::Config(_))));
    }
}
