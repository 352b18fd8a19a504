//! The views of administrative objects: enrollment tokens, API tokens, orgs, and the tokens'
//! shared [`TokenState`] and [`Role`].

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::Serialize;

/// Whether a token (enrollment or API) can still be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenState {
    /// Usable.
    Active,
    /// Revoked by an admin.
    Revoked,
    /// Past its expiry.
    Expired,
    /// Used `max_uses` times (enrollment tokens only).
    Exhausted,
}

/// One enrollment token (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EnrollmentTokenView {
    /// Token id.
    pub token_id: String,
    /// Owning org.
    pub org_id: String,
    /// Free text.
    pub description: String,
    /// Labels stamped on agents enrolled with it.
    pub labels: BTreeMap<String, String>,
    /// Most enrollments allowed; `None` means unlimited.
    pub max_uses: Option<u32>,
    /// Enrollments so far.
    pub use_count: u32,
    /// Creation time.
    #[serde(with = "super::json::rfc3339")]
    pub created_at: Option<SystemTime>,
    /// Expiry; `None` means never.
    #[serde(with = "super::json::rfc3339")]
    pub expires_at: Option<SystemTime>,
    /// Revoked by an admin.
    pub revoked: bool,
    /// An enrollment with it may take over the one disconnected agent with its hardware id.
    pub allow_reclaim: bool,
    /// Usable right now?
    pub state: TokenState,
}

/// `enroll-token create -o json`: the token and its secret, shown once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CreatedTokenView {
    /// The token.
    pub token: EnrollmentTokenView,
    /// The secret agents enroll with.
    pub secret: String,
}

/// A token's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything in the org: tokens, enrollment tokens, agents, plus what operators may do.
    Admin,
    /// Read, and send commands.
    Operator,
    /// Read only.
    Viewer,
    /// An agent credential: its own `Connect` only.
    #[value(skip)]
    Agent,
    /// A role this CLI does not know (a newer server).
    #[value(skip)]
    Unknown,
}

/// One org.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OrgView {
    /// Org id.
    pub org_id: String,
    /// Human-readable name.
    pub display_name: String,
    /// Creation time.
    #[serde(with = "super::json::rfc3339")]
    pub created_at: Option<SystemTime>,
}

/// `orgs create -o json`: the org and its first admin token with its secret, shown once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CreatedOrgView {
    /// The org.
    pub org: OrgView,
    /// The org's first admin token; `None` if the server sent none.
    pub admin_token: Option<ApiTokenView>,
    /// The admin token's secret.
    pub admin_secret: String,
}

/// One API token (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApiTokenView {
    /// Token id.
    pub token_id: String,
    /// Owning org.
    pub org_id: String,
    /// Name given at creation.
    pub name: String,
    /// What the token may do.
    pub role: Role,
    /// May also create and list orgs.
    pub server_admin: bool,
    /// Creation time.
    #[serde(with = "super::json::rfc3339")]
    pub created_at: Option<SystemTime>,
    /// Expiry; `None` means never.
    #[serde(with = "super::json::rfc3339")]
    pub expires_at: Option<SystemTime>,
    /// Last successful authentication, to the minute; `None` if never used.
    #[serde(with = "super::json::rfc3339")]
    pub last_used_at: Option<SystemTime>,
    /// Revoked by an admin.
    pub revoked: bool,
    /// Usable right now? (`active`, `revoked` or `expired`.)
    pub state: TokenState,
}

/// `tokens create -o json`: the token and its secret, shown once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CreatedApiTokenView {
    /// The token.
    pub token: ApiTokenView,
    /// The secret to pass as `--token`.
    pub secret: String,
}

// === impl TokenState ===

impl TokenState {
    /// The lowercase name used in tables and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Revoked => "revoked",
            Self::Expired => "expired",
            Self::Exhausted => "exhausted",
        }
    }
}

// === impl Role ===

impl Role {
    /// The lowercase name used in tables and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Operator => "operator",
            Self::Viewer => "viewer",
            Self::Agent => "agent",
            Self::Unknown => "unknown",
        }
    }
}
