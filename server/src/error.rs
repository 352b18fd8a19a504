//! The server's error type and its one mapping to `tonic::Status`.
//!
//! Handlers return `Result<_, ServerError>` and use `?`; the conversion below decides the gRPC
//! code. Store failures are logged with their detail and answered without it.
//!
//! Two answers carry a retry delay (`grpc-retry-pushback-ms`, written by
//! `tether_proto::refusal`, the one place that reads and writes it): a caller over a rate
//! ([`ServerError::RetryLater`], `RESOURCE_EXHAUSTED`), and a server too busy for the call now
//! ([`ServerError::Busy`], `UNAVAILABLE`: the client did nothing wrong and should come back
//! after that long).

use std::time::Duration;

use tonic::{Code, Status};

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Malformed or out-of-range input.
    #[error("{0}")]
    InvalidArgument(String),
    /// Absent, or belonging to another org (the two are indistinguishable on purpose).
    #[error("{0} not found")]
    NotFound(String),
    /// Missing or unknown credentials.
    #[error("{0}")]
    Unauthenticated(String),
    /// The object already exists.
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// Valid credentials that do not allow this call.
    #[error("{0}")]
    PermissionDenied(String),
    /// A configured limit was reached.
    #[error("{0}")]
    ResourceExhausted(String),
    /// A rate was exceeded: the caller may try again after `after`.
    #[error("{message}")]
    RetryLater { message: String, after: Duration },
    /// The operation conflicts with the current state (e.g. the agent was replaced).
    #[error("{0}")]
    FailedPrecondition(String),
    /// The server is shutting down.
    #[error("server is shutting down")]
    Unavailable,
    /// The server is too busy for this call now; the caller should retry after `after`.
    #[error("{message}")]
    Busy { message: String, after: Duration },
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A bug or an unexpected failure, described for the log only.
    #[error("internal error: {0}")]
    Internal(String),
}

pub type Result<T, E = ServerError> = std::result::Result<T, E>;

impl ServerError {
    pub fn invalid(msg: impl Into<String>) -> Self {
        Self::InvalidArgument(msg.into())
    }
}

impl From<ServerError> for Status {
    fn from(err: ServerError) -> Self {
        match err {
            ServerError::InvalidArgument(m) => Status::new(Code::InvalidArgument, m),
            ServerError::NotFound(what) => Status::new(Code::NotFound, format!("{what} not found")),
            ServerError::Unauthenticated(m) => Status::new(Code::Unauthenticated, m),
            ServerError::AlreadyExists(what) => {
                Status::new(Code::AlreadyExists, format!("{what} already exists"))
            }
            ServerError::PermissionDenied(m) => Status::new(Code::PermissionDenied, m),
            ServerError::ResourceExhausted(m) => Status::new(Code::ResourceExhausted, m),
            ServerError::RetryLater { message, after } => tether_proto::refusal::with_retry_after(
                Status::new(Code::ResourceExhausted, message),
                after,
            ),
            ServerError::FailedPrecondition(m) => Status::new(Code::FailedPrecondition, m),
            ServerError::Unavailable => Status::new(Code::Unavailable, "server is shutting down"),
            ServerError::Busy { message, after } => tether_proto::refusal::with_retry_after(
                Status::new(Code::Unavailable, message),
                after,
            ),
            ServerError::Store(e) => {
                tracing::error!(error = %e, "store operation failed");
                Status::new(Code::Internal, "internal storage error")
            }
            ServerError::Internal(m) => {
                tracing::error!(error = %m, "internal error");
                Status::new(Code::Internal, "internal error")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_is_unavailable_with_a_retry_delay() {
        let status = Status::from(ServerError::Busy {
            message: "too many sessions in setup".to_owned(),
            after: Duration::from_millis(2345),
        });
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(
            tether_proto::refusal::retry_after(&status),
            Some(Duration::from_millis(2345))
        );
    }
}
