//! The agent library's error types, and the agent's error policy.
//!
//! [`AgentError`] is what [`crate::run`] and [`crate::enroll`] return. The policy, in one
//! place: an agent stops on its own only
//!
//! - when the server revoked its credential ([`AgentError::is_revocation`]: `Goodbye(REVOKED)`,
//!   or a status marked with the `credential-revoked` refusal of `tether_proto::refusal`) and
//!   it has no enrollment token to enroll again with ([`after_refused_credential`]);
//! - when enrolling is refused: a refused enrollment token or request is a configuration
//!   mistake of this machine ([`AgentError::is_retryable_enrollment`]);
//! - when its own configuration or state directory cannot work
//!   ([`AgentError::is_local_config`]);
//! - on shutdown.
//!
//! Every other error ([`AgentError::is_retryable`]), including gRPC codes it does not know, a
//! credential the server does not know, and whatever a busy server answers, is retried with
//! capped exponential backoff, after at least the delay the server asked for
//! ([`AgentError::retry_after`]: `grpc-retry-pushback-ms`, read by `tether_proto::refusal`),
//! and logged at ERROR with [`AgentError::advice`] once it persists (see `backoff.rs`). An
//! unreachable or overloaded server, however long it lasts, never stops an agent on a machine
//! nobody may be able to reach.
//!
//! [`SimulateError`] is what the fleet simulator ([`crate::simulate::simulate`]) returns: its
//! own flags and files, or an [`AgentError`] from the agent code it runs.

use std::path::PathBuf;
use std::time::Duration;

use tether_proto::refusal::{self, Refusal};

/// Everything that can stop or interrupt the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The state directory holds no credential and no enrollment token was given.
    #[error("agent is not enrolled: pass --enroll-token")]
    NotEnrolled,

    /// The configuration is invalid (bad server URL, zero buffer capacity, …).
    #[error("invalid configuration: {0}")]
    Config(String),

    /// Reading or writing the state directory failed.
    #[error("state directory {path}: {source}")]
    StateIo {
        /// The file or directory that could not be read or written.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },

    /// The state file exists but cannot be parsed.
    #[error("state file {path} is corrupt: {source}")]
    StateCorrupt {
        /// The state file.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },

    /// The server could not be reached (connection refused, DNS, TLS, connect timeout).
    ///
    /// The message includes the cause chain (tonic's own message is only "transport error").
    #[error("cannot reach the server: {}", error_chain(.0))]
    Transport(tonic::transport::Error),

    /// An RPC failed with a gRPC status.
    #[error("rpc failed: {code:?}: {message}", code = .0.code(), message = .0.message())]
    Rpc(#[from] tonic::Status),

    /// The server broke the protocol (e.g. the first message was not `Welcome`, or a required
    /// field was missing).
    #[error("protocol violation: {0}")]
    Protocol(String),

    /// A step of the protocol took too long.
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),

    /// The server revoked this agent's credential or deleted the agent. Do not reconnect.
    #[error("agent credential revoked by the server: {0}")]
    Revoked(String),

    /// The agent task panicked or was aborted.
    #[error("agent task failed: {0}")]
    Task(String),
}

/// What stops the fleet simulator before or while it runs.
///
/// A message names the flag or file at fault; the underlying cause, where there is one, is the
/// error's [`source`](std::error::Error::source), so printing the chain (`{:#}` through
/// `anyhow` in the binary) shows both.
#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    /// A simulator setting is out of range (`--agents 0`, a negative `--ramp`, …).
    #[error("{0}")]
    Config(String),

    /// A state or stats file could not be opened, read or written.
    #[error("{action} {}", path.display())]
    File {
        /// What was being done: `open`, `read` or `write`.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },

    /// A line of the state file is not a state line.
    #[error("{}:{line}: not a state line", path.display())]
    StateLine {
        /// The state file.
        path: PathBuf,
        /// The line number, from 1.
        line: usize,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },

    /// Agents are missing from the state file and there is no token to enroll them with.
    #[error("{0} agents are not in the state file and no --enroll-token was given")]
    NoEnrollToken(usize),

    /// Enrolling the agents missing from the state file failed.
    #[error("enrollment failed")]
    Enroll(#[source] AgentError),

    /// The agent code refused a setting (backoff, server URL).
    #[error(transparent)]
    Agent(#[from] AgentError),
}

/// The longest server-requested retry delay the agent honours; a longer one is cut to this, so
/// a misconfigured server cannot park its fleet.
pub const MAX_SERVER_RETRY_DELAY: Duration = Duration::from_secs(600);

/// What an agent does once the server refused its credential itself (revoked it, or does not
/// know it): the outcome of [`after_refused_credential`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused<T> {
    /// Revoked, and no enrollment token: the agent stops, saying how to bring it back.
    Stop,
    /// Not known, and no enrollment token: the agent keeps retrying its session (the server
    /// may know the credential again, e.g. once its data is restored).
    RetrySession,
    /// The agent enrolls again with `token`; first it waits a backoff if `wait_first` (the
    /// credential it was just issued was refused before any healthy session).
    Enroll { token: T, wait_first: bool },
}

/// The rule for a refused credential: `revoked` (else the server does not know it), the
/// enrollment `token` if the agent has one, and whether it `reenrolled` since its last healthy
/// session. Revocation stops an agent only when it has no token; nothing else here stops it.
pub fn after_refused_credential<T>(
    revoked: bool,
    token: Option<T>,
    reenrolled: bool,
) -> Refused<T> {
    match (token, revoked) {
        (None, true) => Refused::Stop,
        (None, false) => Refused::RetrySession,
        (Some(token), _) => Refused::Enroll {
            token,
            wait_first: reenrolled,
        },
    }
}

impl AgentError {
    /// Whether the agent should try again (after backoff) instead of stopping: everything but
    /// [`is_revocation`](Self::is_revocation) (which enrolls again or stops, see
    /// [`after_refused_credential`]) and [`is_local_config`](Self::is_local_config).
    pub fn is_retryable(&self) -> bool {
        !self.is_revocation() && !self.is_local_config()
    }

    /// The refusal the server named, if any: a revoked credential (also said by
    /// `Goodbye(REVOKED)`) or an identity conflict.
    pub fn refusal(&self) -> Option<Refusal> {
        match self {
            Self::Revoked(_) => Some(Refusal::CredentialRevoked),
            Self::Rpc(status) => refusal::refusal(status),
            _ => None,
        }
    }

    /// Whether the server revoked this agent's credential: `Goodbye(REVOKED)`, or a status
    /// marked [`Refusal::CredentialRevoked`] (what the server answers for a deleted agent's
    /// credential). A bare `PERMISSION_DENIED` (a client certificate for another agent, say)
    /// is not a revocation: it is retried.
    pub fn is_revocation(&self) -> bool {
        self.refusal() == Some(Refusal::CredentialRevoked)
    }

    /// Whether this machine's own configuration or state directory cannot work: retrying
    /// would change nothing until someone fixes it.
    pub fn is_local_config(&self) -> bool {
        matches!(
            self,
            Self::NotEnrolled | Self::Config(_) | Self::StateIo { .. } | Self::StateCorrupt { .. }
        )
    }

    /// Whether an enrollment that failed this way may succeed later. Like
    /// [`is_retryable`](Self::is_retryable), except that a refused enrollment token
    /// (`UNAUTHENTICATED`, `PERMISSION_DENIED`) or a refused request (`INVALID_ARGUMENT`, e.g.
    /// labels from the command line) is this machine's configuration, not the server's state.
    pub fn is_retryable_enrollment(&self) -> bool {
        match self {
            Self::Rpc(status) => !matches!(
                status.code(),
                tonic::Code::Unauthenticated
                    | tonic::Code::PermissionDenied
                    | tonic::Code::InvalidArgument
            ),
            other => other.is_retryable(),
        }
    }

    /// Whether the server rejected the credential (`UNAUTHENTICATED`).
    pub fn is_unauthenticated(&self) -> bool {
        matches!(self, Self::Rpc(status) if status.code() == tonic::Code::Unauthenticated)
    }

    /// The delay the server asked for before the next attempt (`grpc-retry-pushback-ms`, read
    /// by `tether_proto::refusal`), at most [`MAX_SERVER_RETRY_DELAY`]. `None` when it asked
    /// for none or sent a value that is not a whole number of milliseconds.
    pub fn retry_after(&self) -> Option<Duration> {
        let Self::Rpc(status) = self else {
            return None;
        };
        refusal::retry_after(status).map(|delay| delay.min(MAX_SERVER_RETRY_DELAY))
    }

    /// What an operator should check when this error persists (logged at ERROR with it).
    pub fn advice(&self) -> &'static str {
        use tonic::Code;
        match self {
            Self::Transport(_) | Self::Timeout(_) => {
                "check that the server is running and reachable from this machine (server \
                 address, DNS, firewall, TLS certificates); the agent keeps retrying"
            }
            Self::Rpc(status) => match status.code() {
                Code::Unavailable | Code::ResourceExhausted | Code::DeadlineExceeded => {
                    "the server is busy, restarting or unreachable and asked agents to wait; \
                     check its health and load; the agent keeps retrying"
                }
                Code::Unauthenticated => {
                    "the server does not accept this agent's credential (its data may have \
                     been reset): run the agent with --enroll-token to enroll again; the agent \
                     keeps retrying"
                }
                Code::PermissionDenied => {
                    "the server refuses this agent's credential or client certificate (see the \
                     message); check that the agent's client certificate was issued for its \
                     agent id; the agent keeps retrying"
                }
                Code::Unimplemented | Code::InvalidArgument | Code::FailedPrecondition => {
                    "the server refuses this agent's sessions (see the message); check that \
                     agent and server versions are compatible and the agent's identity is \
                     unique; the agent keeps retrying"
                }
                _ => {
                    "the server keeps failing this agent's sessions (see the message); check \
                     the server's logs; the agent keeps retrying"
                }
            },
            Self::Protocol(_) => {
                "the server broke the protocol; check that agent and server versions are \
                 compatible; the agent keeps retrying"
            }
            Self::Task(_) => {
                "describing this machine failed; check the agent's logs; the agent keeps \
                 retrying"
            }
            Self::Revoked(_) => {
                "the server revoked this agent: enroll it again with a new enrollment token"
            }
            Self::NotEnrolled
            | Self::Config(_)
            | Self::StateIo { .. }
            | Self::StateCorrupt { .. } => "fix the agent's configuration and start it again",
        }
    }
}

impl From<tonic::transport::Error> for AgentError {
    fn from(err: tonic::transport::Error) -> Self {
        Self::Transport(err)
    }
}

/// `err: cause: cause…`, skipping causes that repeat the previous message.
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut message = err.to_string();
    let mut last = message.clone();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if text != last {
            message.push_str(": ");
            message.push_str(&text);
            last = text;
        }
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rpc(code: tonic::Code) -> AgentError {
        AgentError::Rpc(tonic::Status::new(code, "x"))
    }

    fn pushback(value: &str) -> AgentError {
        let mut status = tonic::Status::unavailable("busy");
        status
            .metadata_mut()
            .insert(refusal::RETRY_PUSHBACK_KEY, value.parse().expect("ascii"));
        AgentError::Rpc(status)
    }

    #[test]
    fn only_revocation_and_local_configuration_stop_the_agent() {
        // Every gRPC code is retried, those the agent does not know too (tonic maps them to
        // UNKNOWN), and a bare PERMISSION_DENIED is no revocation.
        for value in 0..=16 {
            let code = tonic::Code::from_i32(value);
            assert!(rpc(code).is_retryable(), "{code:?}");
            assert!(!rpc(code).is_revocation(), "{code:?}");
        }
        assert!(rpc(tonic::Code::from_i32(99)).is_retryable());
        let revoked = AgentError::Rpc(refusal::refuse(
            tonic::Code::PermissionDenied,
            "deleted",
            Refusal::CredentialRevoked,
        ));
        assert!(revoked.is_revocation());
        assert!(!revoked.is_retryable());
        let conflict = AgentError::Rpc(refusal::refuse(
            tonic::Code::FailedPrecondition,
            "two machines",
            Refusal::IdentityConflict,
        ));
        assert_eq!(conflict.refusal(), Some(Refusal::IdentityConflict));
        assert!(conflict.is_retryable());
        assert!(AgentError::Timeout("welcome").is_retryable());
        assert!(AgentError::Protocol("bad".into()).is_retryable());
        assert!(AgentError::Task("collector".into()).is_retryable());
        assert!(!AgentError::Revoked("gone".into()).is_retryable());
        assert!(AgentError::Revoked("gone".into()).is_revocation());
        assert!(!AgentError::NotEnrolled.is_retryable());
        assert!(!AgentError::Config("bad url".into()).is_retryable());
        assert!(AgentError::Config("bad url".into()).is_local_config());
        assert!(rpc(tonic::Code::Unauthenticated).is_unauthenticated());
        assert!(!rpc(tonic::Code::PermissionDenied).is_unauthenticated());
    }

    #[test]
    fn a_refused_credential_stops_only_a_revoked_agent_without_a_token() {
        assert_eq!(
            after_refused_credential::<&str>(true, None, false),
            Refused::Stop
        );
        assert_eq!(
            after_refused_credential::<&str>(false, None, true),
            Refused::RetrySession
        );
        for revoked in [true, false] {
            for reenrolled in [true, false] {
                assert_eq!(
                    after_refused_credential(revoked, Some("token"), reenrolled),
                    Refused::Enroll {
                        token: "token",
                        wait_first: reenrolled
                    }
                );
            }
        }
    }

    #[test]
    fn a_refused_enrollment_token_is_not_retried() {
        for code in [
            tonic::Code::Unauthenticated,
            tonic::Code::PermissionDenied,
            tonic::Code::InvalidArgument,
        ] {
            assert!(!rpc(code).is_retryable_enrollment(), "{code:?}");
        }
        for code in [
            tonic::Code::Unavailable,
            tonic::Code::ResourceExhausted,
            tonic::Code::Internal,
            tonic::Code::FailedPrecondition,
        ] {
            assert!(rpc(code).is_retryable_enrollment(), "{code:?}");
        }
        assert!(AgentError::Timeout("enroll").is_retryable_enrollment());
        assert!(!AgentError::NotEnrolled.is_retryable_enrollment());
    }

    #[test]
    fn the_servers_retry_delay_is_read_and_bounded() {
        assert_eq!(
            pushback("1500").retry_after(),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            pushback("99999999999").retry_after(),
            Some(MAX_SERVER_RETRY_DELAY)
        );
        assert_eq!(pushback("-1").retry_after(), None);
        assert_eq!(pushback("soon").retry_after(), None);
        assert_eq!(rpc(tonic::Code::Unavailable).retry_after(), None);
        assert_eq!(AgentError::Timeout("x").retry_after(), None);
    }

    #[test]
    fn every_error_says_what_to_do() {
        for error in [
            rpc(tonic::Code::Unavailable),
            rpc(tonic::Code::Unauthenticated),
            rpc(tonic::Code::PermissionDenied),
            rpc(tonic::Code::InvalidArgument),
            rpc(tonic::Code::Internal),
            AgentError::Timeout("x"),
            AgentError::Protocol("x".into()),
            AgentError::Task("x".into()),
            AgentError::Revoked("x".into()),
            AgentError::NotEnrolled,
        ] {
            assert!(!error.advice().is_empty());
        }
    }
}
