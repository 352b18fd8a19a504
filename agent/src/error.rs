//! The agent library's error types.
//!
//! [`AgentError`] is what [`crate::run`] and [`crate::enroll`] return. The run loop branches on
//! [`AgentError::is_retryable`]: retryable errors (the server is unreachable, the stream broke,
//! the server said something unexpected) lead to a reconnect with backoff; the others (bad
//! configuration, rejected credential, revoked agent, unreadable state directory) stop the agent.
//!
//! [`SimulateError`] is what the fleet simulator ([`crate::simulate::simulate`]) returns: its
//! own flags and files, or an [`AgentError`] from the agent code it runs.

use std::path::PathBuf;

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

impl AgentError {
    /// Whether the agent should try again (after backoff) instead of giving up.
    ///
    /// Network trouble, broken streams, timeouts and protocol surprises are retryable. Bad
    /// configuration, state-directory failures, a revoked agent, and the gRPC codes that mean
    /// "this will never work" (`UNAUTHENTICATED`, `PERMISSION_DENIED`, `INVALID_ARGUMENT`,
    /// `NOT_FOUND`, `FAILED_PRECONDITION`, `UNIMPLEMENTED`, …) are not.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Transport(_) | Self::Protocol(_) | Self::Timeout(_) => true,
            Self::Rpc(status) => is_retryable_code(status.code()),
            Self::NotEnrolled
            | Self::Config(_)
            | Self::StateIo { .. }
            | Self::StateCorrupt { .. }
            | Self::Revoked(_)
            | Self::Task(_) => false,
        }
    }

    /// Whether the server rejected the credential (`UNAUTHENTICATED`).
    pub fn is_unauthenticated(&self) -> bool {
        matches!(self, Self::Rpc(status) if status.code() == tonic::Code::Unauthenticated)
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

/// gRPC codes worth retrying: transient server or network conditions.
fn is_retryable_code(code: tonic::Code) -> bool {
    use tonic::Code;
    match code {
        Code::Unavailable
        | Code::DeadlineExceeded
        | Code::ResourceExhausted
        | Code::Aborted
        | Code::Internal
        | Code::Unknown
        | Code::Cancelled
        | Code::DataLoss => true,
        Code::Ok
        | Code::InvalidArgument
        | Code::NotFound
        | Code::AlreadyExists
        | Code::PermissionDenied
        | Code::FailedPrecondition
        | Code::OutOfRange
        | Code::Unimplemented
        | Code::Unauthenticated => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_codes() {
        assert!(AgentError::Rpc(tonic::Status::unavailable("down")).is_retryable());
        assert!(AgentError::Timeout("welcome").is_retryable());
        assert!(!AgentError::Rpc(tonic::Status::unauthenticated("no")).is_retryable());
        assert!(!AgentError::Rpc(tonic::Status::permission_denied("no")).is_retryable());
        assert!(!AgentError::Revoked("gone".into()).is_retryable());
        assert!(!AgentError::NotEnrolled.is_retryable());
        assert!(AgentError::Rpc(tonic::Status::unauthenticated("no")).is_unauthenticated());
        assert!(!AgentError::Rpc(tonic::Status::permission_denied("no")).is_unauthenticated());
    }
}
