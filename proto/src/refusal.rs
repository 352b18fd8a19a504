//! Why a call was refused, in a form clients act on: status metadata that the server sets and
//! agents read, for the refusals where the gRPC code alone does not say what to do.
//!
//! - [`REFUSAL_KEY`] names the refusal ([`Refusal`]): a revoked agent credential must not be
//!   retried (the agent enrolls again or stops), and an identity conflict must be retried only
//!   after a long pause, whatever the code says otherwise.
//! - [`RETRY_PUSHBACK_KEY`] carries how long to wait before trying again, in milliseconds
//!   (gRPC's own name for it, `grpc-retry-pushback-ms`): on `RESOURCE_EXHAUSTED` answers such
//!   as a re-enrollment over its rate, and on the `UNAVAILABLE` of a server too busy for a new
//!   session (admission control, a `Hello` it did not read in time).
//!
//! This module is the one place that writes and reads these values; the server and the agent
//! go through it. Messages stay human-readable; clients branch on these values, never on
//! message text.

use std::time::Duration;

use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

/// Metadata key naming a [`Refusal`].
pub const REFUSAL_KEY: &str = "tether-refusal";
/// Metadata key carrying the delay before a retry, in milliseconds.
pub const RETRY_PUSHBACK_KEY: &str = "grpc-retry-pushback-ms";

/// A refusal whose reason the client must know to act correctly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The agent credential was revoked: the agent was deleted (or its credential replaced).
    /// Never retried with the same credential.
    CredentialRevoked,
    /// Sessions of another machine (or agent process) holding the same agent credential keep
    /// replacing this one's: the server refused this session. Retry only after a long pause;
    /// an operator must give one of the machines its own identity.
    IdentityConflict,
    /// A `WatchEvents` cursor is older than the events the server retains
    /// (`FAILED_PRECONDITION`):
    /// list the events again and watch from the listing's cursor, as after Kubernetes' 410.
    CursorExpired,
}

impl Refusal {
    /// The metadata value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CredentialRevoked => "credential-revoked",
            Self::IdentityConflict => "identity-conflict",
            Self::CursorExpired => "cursor-expired",
        }
    }

    fn parse(value: &str) -> Option<Self> {
        [
            Self::CredentialRevoked,
            Self::IdentityConflict,
            Self::CursorExpired,
        ]
        .into_iter()
        .find(|r| r.as_str() == value)
    }
}

/// A status with `code` and `message`, marked as `refusal`.
pub fn refuse(code: Code, message: impl Into<String>, refusal: Refusal) -> Status {
    let mut status = Status::new(code, message);
    status
        .metadata_mut()
        .insert(REFUSAL_KEY, MetadataValue::from_static(refusal.as_str()));
    status
}

/// The refusal `status` is marked with, if any.
pub fn refusal(status: &Status) -> Option<Refusal> {
    status
        .metadata()
        .get(REFUSAL_KEY)
        .and_then(|v| v.to_str().ok())
        .and_then(Refusal::parse)
}

/// `status` telling the client to wait `delay` before trying again (whole milliseconds,
/// rounded up, at least 1).
pub fn with_retry_after(mut status: Status, delay: Duration) -> Status {
    let millis = delay.as_millis().max(1).min(u128::from(u64::MAX));
    let millis = u64::try_from(millis).unwrap_or(u64::MAX);
    status
        .metadata_mut()
        .insert(RETRY_PUSHBACK_KEY, MetadataValue::from(millis));
    status
}

/// The delay `status` asks the client to wait before retrying, if it names one.
pub fn retry_after(status: &Status) -> Option<Duration> {
    status
        .metadata()
        .get(RETRY_PUSHBACK_KEY)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_and_delays_round_trip() {
        let status = refuse(Code::PermissionDenied, "gone", Refusal::CredentialRevoked);
        assert_eq!(refusal(&status), Some(Refusal::CredentialRevoked));
        assert_eq!(status.code(), Code::PermissionDenied);
        let status = refuse(
            Code::FailedPrecondition,
            "two machines",
            Refusal::IdentityConflict,
        );
        assert_eq!(refusal(&status), Some(Refusal::IdentityConflict));
        assert_eq!(refusal(&Status::permission_denied("other")), None);

        let status = with_retry_after(Status::resource_exhausted("slow down"), Duration::ZERO);
        assert_eq!(retry_after(&status), Some(Duration::from_millis(1)));
        let status = with_retry_after(
            Status::resource_exhausted("slow down"),
            Duration::from_secs(7),
        );
        assert_eq!(retry_after(&status), Some(Duration::from_secs(7)));
        assert_eq!(retry_after(&Status::resource_exhausted("no hint")), None);
    }
}
