//! The grammar of the administration commands: `enroll-token …`, `tokens …`, `orgs …` and
//! `audit …`.
//!
//! **Invariant:** no command here takes a secret: tokens are named by id, and a token's secret
//! is only printed, once, by the command that creates it; lifetimes parse through
//! [`parse_ttl`], so `never` means the same for every kind of token.

use std::time::Duration;

use clap::{Args, Subcommand};

use super::{ObjectFormat, ObjectOutput, SeriesFormat, Ttl, parse_duration, parse_ttl};
use crate::view::{AuditOutcome, Role};

/// `enroll-token …`
#[derive(Debug, Subcommand)]
pub enum EnrollTokenCommand {
    /// Create an enrollment token; its secret is printed once.
    Create(CreateTokenArgs),

    /// List enrollment tokens (never their secrets).
    #[command(visible_alias = "ls")]
    List(ListTokensArgs),

    /// Revoke an enrollment token so no more agents can enroll with it.
    Revoke(RevokeTokenArgs),
}

/// `enroll-token create`
#[derive(Debug, Clone, Args)]
pub struct CreateTokenArgs {
    /// Free text to recognise the token by
    #[arg(long, value_name = "TEXT", default_value = "")]
    pub description: String,

    /// Label stamped on every agent enrolled with the token, as k=v (repeatable)
    #[arg(long = "label", value_name = "K=V")]
    pub labels: Vec<String>,

    /// Most enrollments allowed; 0 means unlimited
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub max_uses: u32,

    /// Lifetime, e.g. 1h, 7d; `never` (or 0s) for no expiry
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = parse_ttl)]
    pub ttl: Ttl,

    /// Let an enrollment with this token take over the one disconnected agent that reports
    /// the same hardware id (a reinstalled machine keeps its agent), instead of creating a
    /// new, flagged agent. Anyone holding the token can then take over such an agent.
    #[arg(long)]
    pub allow_reclaim: bool,

    /// Also print the agent's enrollment command (`tether-agent --server … --enroll-token …`)
    /// as a QR code to scan on the machine
    #[arg(long)]
    pub qr: bool,

    /// Output format
    #[arg(short = 'o', long = "output", value_enum, default_value_t = ObjectFormat::Table)]
    pub output: ObjectFormat,
}

/// `enroll-token list`
#[derive(Debug, Clone, Args)]
pub struct ListTokensArgs {
    /// Output format
    #[arg(short = 'o', long = "output", value_enum, default_value_t = SeriesFormat::Table)]
    pub output: SeriesFormat,
}

/// `enroll-token revoke` and `tokens revoke`
#[derive(Debug, Clone, Args)]
pub struct RevokeTokenArgs {
    /// Token id
    pub id: String,

    /// Output format
    #[arg(short = 'o', long = "output", value_enum, default_value_t = ObjectFormat::Table)]
    pub output: ObjectFormat,
}

/// `tokens …`
#[derive(Debug, Subcommand)]
pub enum ApiTokensCommand {
    /// Create an API token; its secret is printed once.
    Create(CreateApiTokenArgs),

    /// List API tokens (never their secrets).
    #[command(visible_alias = "ls")]
    List(ListApiTokensArgs),

    /// Revoke an API token; calls and open watches using it are refused from then on.
    Revoke(RevokeTokenArgs),
}

/// `tokens create`
#[derive(Debug, Clone, Args)]
pub struct CreateApiTokenArgs {
    /// Name to recognise the token by
    #[arg(long, value_name = "NAME")]
    pub name: String,

    /// What the token may do
    #[arg(long, value_enum)]
    pub role: Role,

    /// Lifetime, e.g. 12h, 30d; `never` (or 0s) for no expiry
    #[arg(long, value_name = "DURATION", default_value = "never", value_parser = parse_ttl)]
    pub ttl: Ttl,

    /// Output format
    #[arg(short = 'o', long = "output", value_enum, default_value_t = ObjectFormat::Table)]
    pub output: ObjectFormat,
}

/// `tokens list`
#[derive(Debug, Clone, Args)]
pub struct ListApiTokensArgs {
    /// Include revoked tokens
    #[arg(long)]
    pub include_revoked: bool,

    /// Output format
    #[arg(short = 'o', long = "output", value_enum, default_value_t = ObjectFormat::Table)]
    pub output: ObjectFormat,
}

/// `orgs …`
#[derive(Debug, Subcommand)]
pub enum OrgsCommand {
    /// Create an org and its first admin token; the token's secret is printed once.
    Create(CreateOrgArgs),

    /// List every org.
    #[command(visible_alias = "ls")]
    List(ObjectOutput),
}

/// `orgs create`
#[derive(Debug, Clone, Args)]
pub struct CreateOrgArgs {
    /// Org id: 1-64 characters of a-z, 0-9 and -
    pub org_id: String,

    /// Human-readable name
    #[arg(long, value_name = "NAME", default_value = "")]
    pub display_name: String,

    /// Output format
    #[arg(short = 'o', long = "output", value_enum, default_value_t = ObjectFormat::Table)]
    pub output: ObjectFormat,
}

/// `audit`: list events, or check the hash chain with `audit verify` / `audit --verify`.
#[derive(Debug, Clone, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AuditArgs {
    /// Check the chain instead of listing
    #[command(subcommand)]
    pub command: Option<AuditCommand>,

    /// Only calls of this method: a short name (CreateToken) or a full one
    /// (/tether.v1.AdminService/CreateToken)
    #[arg(long, value_name = "METHOD")]
    pub method: Option<String>,

    /// Only calls made with this token
    #[arg(long, value_name = "TOKEN_ID")]
    pub actor: Option<String>,

    /// Only calls with this outcome
    #[arg(long, value_enum)]
    pub outcome: Option<AuditOutcome>,

    /// Only events of this recent period, e.g. 15m, 1h, 2d
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub since: Option<Duration>,

    /// Only the N newest matching events
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: Option<u32>,

    /// Check the org's whole hash chain instead of listing (same as `audit verify`)
    #[arg(long, conflicts_with_all = ["method", "actor", "outcome", "since", "limit"])]
    pub verify: bool,

    /// Output format
    #[arg(short = 'o', long = "output", value_enum, default_value_t = ObjectFormat::Table)]
    pub output: ObjectFormat,
}

/// `audit …`
#[derive(Debug, Clone, Subcommand)]
pub enum AuditCommand {
    /// Fetch every event of the org and check the hash chain; exits non-zero if it is broken.
    Verify(ObjectOutput),
}
