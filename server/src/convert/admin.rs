//! `AdminService` messages: orgs, API tokens, enrollment tokens and audit events, and the
//! requests that create or query them.

use std::time::{Duration, SystemTime};

use tether_proto as pb;

use super::{
    id_from_pb, labels_from_pb, labels_to_pb, nonzero_duration_from_pb, opt_timestamp,
    outcome_filter_from_pb, outcome_to_pb, page_size_from_pb, plain, role_to_pb, text,
    time_from_pb, timestamp,
};
use crate::auth::Secret;
use crate::config::{DEFAULT_RECLAIM_TTL, Limits, MAX_RECLAIM_TTL};
use crate::domain::{
    AgentId, AuditEntry, AuditPage, AuditQuery, AuditRecord, EnrollmentTokenRecord, NewApiToken,
    NewEnrollmentToken, NewOrg, OrgId, OrgRecord, Role, TokenId, TokenRecord,
};
use crate::error::ServerError;

/// Longest description accepted for a token, and longest display name for an org.
pub const MAX_DESCRIPTION_BYTES: usize = 1024;
/// Longest name accepted for an API token.
pub const MAX_TOKEN_NAME_BYTES: usize = 128;
/// Page size of `ListAuditEvents` when the request leaves it at zero.
pub const DEFAULT_AUDIT_PAGE_SIZE: usize = 100;
/// Largest page `ListAuditEvents` returns.
pub const MAX_AUDIT_PAGE_SIZE: usize = 1000;

// === orgs ===

/// # Errors
///
/// `INVALID_ARGUMENT` for a malformed org id or an oversized display name.
pub fn create_org_from_pb(req: pb::CreateOrgRequest) -> Result<NewOrg, ServerError> {
    let pb::CreateOrgRequest {
        org_id,
        display_name,
    } = req;
    let id = OrgId::new(id_from_pb(&org_id, "org_id")?);
    let display_name = text(display_name, "display_name", MAX_DESCRIPTION_BYTES)?;
    Ok(NewOrg {
        display_name: if display_name.is_empty() {
            org_id
        } else {
            display_name
        },
        id,
    })
}

pub fn create_org_to_pb(
    org: &OrgRecord,
    admin_token: &TokenRecord,
    admin_secret: &Secret,
) -> pb::CreateOrgResponse {
    pb::CreateOrgResponse {
        org: Some(org_to_pb(org)),
        admin_token: Some(api_token_to_pb(admin_token, None)),
        admin_secret: admin_secret.expose().to_owned(),
    }
}

pub fn list_orgs_to_pb(orgs: &[OrgRecord]) -> pb::ListOrgsResponse {
    pb::ListOrgsResponse {
        orgs: orgs.iter().map(org_to_pb).collect(),
    }
}

pub fn org_to_pb(org: &OrgRecord) -> pb::Org {
    pb::Org {
        org_id: org.id.to_string(),
        display_name: org.display_name.clone(),
        created_at: Some(timestamp(org.created_at)),
    }
}

// === API tokens ===

fn role_from_pb(value: i32) -> Result<Role, ServerError> {
    match pb::Role::try_from(value) {
        Ok(pb::Role::Admin) => Ok(Role::Admin),
        Ok(pb::Role::Operator) => Ok(Role::Operator),
        Ok(pb::Role::Viewer) => Ok(Role::Viewer),
        Ok(pb::Role::Agent) => Err(ServerError::invalid(
            "agent credentials are issued by Enroll, not CreateToken",
        )),
        Ok(pb::Role::Unspecified) | Err(_) => Err(ServerError::invalid(
            "role must be admin, operator or viewer",
        )),
    }
}

/// # Errors
///
/// `INVALID_ARGUMENT` for a missing or unprintable name, a role other than admin, operator or
/// viewer, or a negative or too long TTL.
pub fn create_token_from_pb(req: pb::CreateTokenRequest) -> Result<NewApiToken, ServerError> {
    let pb::CreateTokenRequest { name, role, ttl } = req;
    if name.trim().is_empty() {
        return Err(ServerError::invalid(format!(
            "name is required: 1-{MAX_TOKEN_NAME_BYTES} bytes of printable text"
        )));
    }
    Ok(NewApiToken {
        name: text(name, "name", MAX_TOKEN_NAME_BYTES)?,
        role: role_from_pb(role)?,
        ttl: ttl_from_pb(ttl)?,
    })
}

/// A token's TTL: zero or absent means none. Its bounds are the use case's
/// (`service::admin::MAX_TTL`), which every caller goes through.
fn ttl_from_pb(
    ttl: Option<prost_types::Duration>,
) -> Result<Option<std::time::Duration>, ServerError> {
    nonzero_duration_from_pb(ttl, "ttl")
}

pub fn create_token_to_pb(token: &TokenRecord, secret: &Secret) -> pb::CreateTokenResponse {
    pb::CreateTokenResponse {
        token: Some(api_token_to_pb(token, None)),
        secret: secret.expose().to_owned(),
    }
}

/// Tokens with their last use.
pub fn list_tokens_to_pb(tokens: &[(TokenRecord, Option<SystemTime>)]) -> pb::ListTokensResponse {
    pb::ListTokensResponse {
        tokens: tokens
            .iter()
            .map(|(token, last_used)| api_token_to_pb(token, *last_used))
            .collect(),
    }
}

pub fn revoke_token_to_pb(
    token: &TokenRecord,
    last_used: Option<SystemTime>,
) -> pb::RevokeTokenResponse {
    pb::RevokeTokenResponse {
        token: Some(api_token_to_pb(token, last_used)),
    }
}

pub fn api_token_to_pb(t: &TokenRecord, last_used: Option<SystemTime>) -> pb::ApiToken {
    pb::ApiToken {
        token_id: t.id.to_string(),
        org_id: t.org.to_string(),
        name: t.name.clone(),
        role: role_to_pb(t.role) as i32,
        created_at: Some(timestamp(t.created_at)),
        expires_at: opt_timestamp(t.expires_at),
        revoked: t.revoked,
        last_used_at: opt_timestamp(last_used),
        server_admin: t.server_admin,
    }
}

/// The token a revoke request names.
///
/// # Errors
///
/// `INVALID_ARGUMENT` for a malformed id.
pub fn token_id_from_pb(raw: &str) -> Result<TokenId, ServerError> {
    id_from_pb(raw, "token_id").map(TokenId::new)
}

// === enrollment tokens ===

/// # Errors
///
/// `INVALID_ARGUMENT` for an oversized or unprintable description, bad labels or a negative or
/// too long TTL.
pub fn create_enrollment_token_from_pb(
    req: pb::CreateEnrollmentTokenRequest,
    limits: &Limits,
) -> Result<NewEnrollmentToken, ServerError> {
    let pb::CreateEnrollmentTokenRequest {
        description,
        labels,
        max_uses,
        ttl,
        allow_reclaim,
    } = req;
    Ok(NewEnrollmentToken {
        description: text(description, "description", MAX_DESCRIPTION_BYTES)?,
        labels: labels_from_pb(labels, limits)?,
        max_uses,
        ttl: ttl_from_pb(ttl)?,
        allow_reclaim,
    })
}

pub fn create_enrollment_token_to_pb(
    token: &EnrollmentTokenRecord,
    secret: &Secret,
) -> pb::CreateEnrollmentTokenResponse {
    pb::CreateEnrollmentTokenResponse {
        token: Some(enrollment_token_to_pb(token)),
        secret: secret.expose().to_owned(),
    }
}

pub fn list_enrollment_tokens_to_pb(
    tokens: &[EnrollmentTokenRecord],
) -> pb::ListEnrollmentTokensResponse {
    pb::ListEnrollmentTokensResponse {
        tokens: tokens.iter().map(enrollment_token_to_pb).collect(),
    }
}

pub fn revoke_enrollment_token_to_pb(
    token: &EnrollmentTokenRecord,
) -> pb::RevokeEnrollmentTokenResponse {
    pb::RevokeEnrollmentTokenResponse {
        token: Some(enrollment_token_to_pb(token)),
    }
}

pub fn enrollment_token_to_pb(t: &EnrollmentTokenRecord) -> pb::EnrollmentToken {
    pb::EnrollmentToken {
        token_id: t.id.to_string(),
        org_id: t.org.to_string(),
        description: t.description.clone(),
        labels: labels_to_pb(&t.labels),
        max_uses: t.max_uses,
        use_count: t.use_count,
        created_at: Some(timestamp(t.created_at)),
        expires_at: opt_timestamp(t.expires_at),
        revoked: t.revoked,
        allow_reclaim: t.allow_reclaim,
    }
}

// === agents ===

/// The agent and how long its reclaim permission lasts (default [`DEFAULT_RECLAIM_TTL`]).
///
/// # Errors
///
/// `INVALID_ARGUMENT` for a malformed agent id or a TTL that is negative or above
/// [`MAX_RECLAIM_TTL`].
pub fn allow_agent_reclaim_from_pb(
    req: pb::AllowAgentReclaimRequest,
) -> Result<(AgentId, Duration), ServerError> {
    let pb::AllowAgentReclaimRequest { agent_id, ttl } = req;
    let agent = super::fleet::agent_id_from_pb(&agent_id)?;
    let ttl = nonzero_duration_from_pb(ttl, "ttl")?.unwrap_or(DEFAULT_RECLAIM_TTL);
    if ttl > MAX_RECLAIM_TTL {
        return Err(ServerError::invalid(format!(
            "ttl must be at most {}",
            humantime::format_duration(MAX_RECLAIM_TTL)
        )));
    }
    Ok((agent, ttl))
}

pub fn allow_agent_reclaim_to_pb(expires_at: SystemTime) -> pb::AllowAgentReclaimResponse {
    pb::AllowAgentReclaimResponse {
        expires_at: Some(timestamp(expires_at)),
    }
}

// === audit ===

/// The wire form of an audit event: exactly the bytes [`tether_proto::audit::event_hash`]
/// covers when `hash` is `None` (the hash field empty), and the full event otherwise.
pub fn audit_event_to_pb(
    seq: u64,
    e: &AuditEntry,
    prev_hash: &[u8; 32],
    hash: Option<&[u8; 32]>,
) -> pb::AuditEvent {
    pb::AuditEvent {
        seq,
        org_id: e.org.to_string(),
        time: Some(timestamp(e.time)),
        actor_token_id: e
            .actor_token
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        actor_name: e.actor_name.clone(),
        actor_role: e.actor_role.map_or(pb::Role::Unspecified, role_to_pb) as i32,
        method: e.method.clone(),
        target: e.target.clone(),
        outcome: outcome_to_pb(e.outcome) as i32,
        status_code: e.status_code,
        message: e.message.clone(),
        prev_hash: prev_hash.to_vec(),
        hash: hash.map(|h| h.to_vec()).unwrap_or_default(),
    }
}

pub fn audit_record_to_pb(record: &AuditRecord) -> pb::AuditEvent {
    audit_event_to_pb(
        record.seq,
        &record.entry,
        &record.prev_hash,
        Some(&record.hash),
    )
}

/// The bytes `record` adds to a `ListAuditEventsResponse`: its encoding plus the field's tag
/// and length prefix.
pub fn audit_record_wire_len(record: &AuditRecord) -> usize {
    use prost::Message as _;
    let len = audit_record_to_pb(record).encoded_len();
    1 + prost::length_delimiter_len(len) + len
}

/// # Errors
///
/// `INVALID_ARGUMENT` for a negative page size, a foreign page token, an unknown outcome, a
/// malformed or out-of-range time, or filter text holding control or format characters.
pub fn list_audit_events_from_pb(
    req: pb::ListAuditEventsRequest,
) -> Result<AuditQuery, ServerError> {
    let pb::ListAuditEventsRequest {
        method,
        actor_token_id,
        outcome,
        since,
        page_size,
        page_token,
    } = req;
    let page_size = page_size_from_pb(page_size, DEFAULT_AUDIT_PAGE_SIZE, MAX_AUDIT_PAGE_SIZE)?;
    let after = if page_token.is_empty() {
        0
    } else {
        page_token
            .parse()
            .map_err(|_| ServerError::invalid("invalid page_token"))?
    };
    let outcome = outcome_filter_from_pb(outcome)?;
    let since = since
        .map(|t| time_from_pb(t, "since").map(crate::domain::Time::get))
        .transpose()?;
    plain(&method, "method")?;
    plain(&actor_token_id, "actor_token_id")?;
    Ok(AuditQuery {
        method: (!method.is_empty()).then_some(method),
        actor_token: (!actor_token_id.is_empty()).then_some(actor_token_id),
        outcome,
        since,
        after,
        page_size,
    })
}

pub fn list_audit_events_to_pb(page: &AuditPage) -> pb::ListAuditEventsResponse {
    pb::ListAuditEventsResponse {
        events: page.records.iter().map(audit_record_to_pb).collect(),
        next_page_token: page.next_after.map(|n| n.to_string()).unwrap_or_default(),
    }
}
