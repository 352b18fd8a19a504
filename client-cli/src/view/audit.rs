//! The views of the audit log: `audit` prints [`AuditEventView`]s, `audit verify` an
//! [`AuditChainView`].

use std::time::SystemTime;

use serde::Serialize;

use super::Role;

/// How an audited call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AuditOutcome {
    /// Permitted and done.
    Succeeded,
    /// Refused: unauthenticated, not permitted, or over a limit.
    Denied,
    /// Permitted but failed (bad input, not found, internal error).
    Failed,
    /// Not given, or unknown to this CLI.
    #[value(skip)]
    Unknown,
}

/// One audit event, as `audit -o json` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEventView {
    /// Position in the org's chain, from 1.
    pub seq: u64,
    /// Owning org.
    pub org_id: String,
    /// When the call was answered.
    #[serde(with = "super::json::rfc3339")]
    pub time: Option<SystemTime>,
    /// The caller's token id; `None` when the caller could not be authenticated.
    pub actor_token_id: Option<String>,
    /// The caller's token name; `None` when unknown.
    pub actor_name: Option<String>,
    /// The caller's role; `None` when unknown.
    pub actor_role: Option<Role>,
    /// Full gRPC method, e.g. `/tether.v1.AdminService/CreateToken`.
    pub method: String,
    /// The object acted on (agent id, token id, org id), if any.
    pub target: Option<String>,
    /// How the call ended.
    pub outcome: AuditOutcome,
    /// Numeric gRPC status code of the answer (0 = OK).
    pub status_code: i32,
    /// The status code's name in snake_case, e.g. `ok`, `permission_denied`.
    pub code: String,
    /// The status message, if any.
    pub message: String,
    /// SHA-256 of the previous event, in hex.
    #[serde(with = "super::json::hex_bytes")]
    pub prev_hash: Vec<u8>,
    /// SHA-256 of `prev_hash` and this event, in hex.
    #[serde(with = "super::json::hex_bytes")]
    pub hash: Vec<u8>,
}

/// `audit verify -o json`: an intact chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditChainView {
    /// Always `true`: a broken chain is an error, not an answer.
    pub ok: bool,
    /// Events checked.
    pub n_events: u64,
    /// Sequence number of the last event; 0 when there are none.
    pub last_seq: u64,
    /// Hash of the last event (32 zero bytes when there are none), in hex.
    #[serde(with = "super::json::hex_bytes")]
    pub last_hash: Vec<u8>,
}

// === impl AuditOutcome ===

impl AuditOutcome {
    /// The lowercase name used in tables and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Denied => "denied",
            Self::Failed => "failed",
            Self::Unknown => "unknown",
        }
    }
}
