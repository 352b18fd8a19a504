//! The agent's own event types: what a source reports ([`Event`]), its [`Severity`], and the
//! numbered form the spool keeps ([`SpooledEvent`]).
//!
//! These never derive prost; `convert.rs` turns them into `AgentEvent`s. Validation against
//! the contract's bounds lives in `events/check.rs`, shared by the socket, `emit` and the
//! built-in sources.

use std::collections::BTreeMap;
use std::fmt;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// How bad an event is. Ordered: `Info < Warning < Error < Critical`; on overflow the spool
/// drops the lowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Error,
    Critical,
}

/// Something that happened on this machine, before the spool numbers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// When it happened (agent clock).
    pub time: SystemTime,
    /// Dotted name such as `ssh.login_failed`.
    pub kind: String,
    pub severity: Severity,
    /// Human-readable text.
    pub message: String,
    pub attributes: BTreeMap<String, String>,
    /// Occurrences of one fingerprint within the server's window are stored as one event.
    pub fingerprint: Option<String>,
}

/// An event with its per-agent sequence number, as the spool holds and the session sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpooledEvent {
    /// Per-agent event seq (independent of metrics), starting at 1, never reused.
    pub seq: u64,
    pub event: Event,
}

// === impl Severity ===

impl Severity {
    /// Every severity, lowest first (the index order of [`Severity::index`]).
    pub const ALL: [Severity; 4] = [
        Severity::Info,
        Severity::Warning,
        Severity::Error,
        Severity::Critical,
    ];

    /// The name used on the socket, on the command line and in file names.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
            Severity::Critical => "critical",
        }
    }

    /// Parses [`Severity::as_str`]'s names (ASCII case-insensitive).
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|severity| severity.as_str().eq_ignore_ascii_case(text))
    }

    /// Position in [`Severity::ALL`].
    pub fn index(self) -> usize {
        match self {
            Severity::Info => 0,
            Severity::Warning => 1,
            Severity::Error => 2,
            Severity::Critical => 3,
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// === impl Event ===

impl Event {
    /// An event of `kind` and `severity` happening now, without attributes or fingerprint.
    pub fn now(kind: impl Into<String>, severity: Severity, message: impl Into<String>) -> Self {
        Self {
            time: SystemTime::now(),
            kind: kind.into(),
            severity,
            message: message.into(),
            attributes: BTreeMap::new(),
            fingerprint: None,
        }
    }

    /// Adds an attribute.
    #[must_use]
    pub fn with(mut self, key: impl Into<String>, value: impl ToString) -> Self {
        self.attributes.insert(key.into(), value.to_string());
        self
    }

    /// Sets the fingerprint.
    #[must_use]
    pub fn fingerprint(mut self, fingerprint: impl Into<String>) -> Self {
        self.fingerprint = Some(fingerprint.into());
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn severities_order_and_parse() {
        assert!(Severity::Info < Severity::Warning);
        assert!(Severity::Error < Severity::Critical);
        for severity in Severity::ALL {
            assert_eq!(Severity::parse(severity.as_str()), Some(severity));
            assert_eq!(Severity::ALL[severity.index()], severity);
        }
        assert_eq!(Severity::parse("WARNING"), Some(Severity::Warning));
        assert_eq!(Severity::parse("fatal"), None);
    }
}
