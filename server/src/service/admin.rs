//! `AdminService`: enrollment tokens of the caller's org. Requires the `admin` role.

use std::sync::Arc;
use std::time::SystemTime;

use tether_proto as pb;
use tonic::{Request, Response, Status};

use crate::auth;
use crate::convert;
use crate::domain::{
    AgentId, AgentTombstone, EnrollmentTokenRecord, OrgId, OrgRecord, Role, TokenId, TokenRecord,
};
use crate::error::ServerError;
use crate::service::AppState;
use crate::store::Write;

/// Longest description accepted for a token.
pub const MAX_DESCRIPTION_BYTES: usize = 1024;

pub struct AdminService {
    state: Arc<AppState>,
}

impl AdminService {
    pub fn new(state: Arc<AppState>) -> Self {
        Self { state }
    }
}

fn admin<T>(request: &Request<T>) -> Result<auth::Caller, Status> {
    let caller = auth::caller(request)?;
    caller.require(Role::Admin)?;
    Ok(caller)
}

pub fn enrollment_token_to_pb(t: &EnrollmentTokenRecord) -> pb::EnrollmentToken {
    pb::EnrollmentToken {
        token_id: t.id.to_string(),
        org_id: t.org.to_string(),
        description: t.description.clone(),
        labels: t
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        max_uses: t.max_uses,
        use_count: t.use_count,
        created_at: Some(convert::timestamp(t.created_at)),
        expires_at: convert::opt_timestamp(t.expires_at),
        revoked: t.revoked,
    }
}

/// Creates, persists and caches an enrollment token; returns it with its secret.
///
/// # Errors
///
/// `INVALID_ARGUMENT` for bad labels or description, `INTERNAL` if the commit fails.
pub async fn create_enrollment_token(
    state: &AppState,
    org: crate::domain::OrgId,
    req: pb::CreateEnrollmentTokenRequest,
    caller: Option<&auth::Caller>,
) -> Result<(EnrollmentTokenRecord, auth::Secret), ServerError> {
    let pb::CreateEnrollmentTokenRequest {
        description,
        labels,
        max_uses,
        ttl,
    } = req;
    if description.len() > MAX_DESCRIPTION_BYTES {
        return Err(ServerError::invalid(format!(
            "description must be at most {MAX_DESCRIPTION_BYTES} bytes"
        )));
    }
    let labels = convert::labels_from_pb(labels, &state.config.limits)?;
    let now = SystemTime::now();
    let expires_at = ttl_to_expiry(ttl, now)?;
    let new = auth::generate();
    let record = EnrollmentTokenRecord {
        id: new.id,
        org,
        digest: new.digest,
        description,
        labels,
        max_uses,
        use_count: 0,
        created_at: now,
        expires_at,
        revoked: false,
    };
    let audit =
        caller.map(|c| crate::audit::entry(c, CREATE_ENROLLMENT_TOKEN, record.id.as_str(), Ok(())));
    state
        .writer
        .commit_audited(vec![Write::PutEnrollmentToken(record.clone())], audit)
        .await?;
    state.auth.insert_enrollment(record.clone());
    tracing::info!(token = %record.id, org = %record.org, "enrollment token created");
    Ok((record, new.secret))
}

#[tonic::async_trait]
impl pb::admin_service_server::AdminService for AdminService {
    async fn create_enrollment_token(
        &self,
        request: Request<pb::CreateEnrollmentTokenRequest>,
    ) -> Result<Response<pb::CreateEnrollmentTokenResponse>, Status> {
        let caller = admin(&request)?;
        let result = create_enrollment_token(
            &self.state,
            caller.org.clone(),
            request.into_inner(),
            Some(&caller),
        )
        .await
        .map(|(record, secret)| pb::CreateEnrollmentTokenResponse {
            token: Some(enrollment_token_to_pb(&record)),
            secret: secret.expose().to_owned(),
        });
        self.finish(&caller, CREATE_ENROLLMENT_TOKEN, "", result)
    }

    async fn list_enrollment_tokens(
        &self,
        request: Request<pb::ListEnrollmentTokensRequest>,
    ) -> Result<Response<pb::ListEnrollmentTokensResponse>, Status> {
        let caller = admin(&request)?;
        let tokens = self.state.auth.enrollment_tokens(&caller.org);
        Ok(Response::new(pb::ListEnrollmentTokensResponse {
            tokens: tokens.iter().map(enrollment_token_to_pb).collect(),
        }))
    }

    async fn revoke_enrollment_token(
        &self,
        request: Request<pb::RevokeEnrollmentTokenRequest>,
    ) -> Result<Response<pb::RevokeEnrollmentTokenResponse>, Status> {
        let caller = admin(&request)?;
        let raw = request.into_inner().token_id;
        let result = self.revoke_enrollment_inner(&caller, &raw).await;
        self.finish(&caller, REVOKE_ENROLLMENT_TOKEN, &raw, result)
    }

    async fn create_org(
        &self,
        request: Request<pb::CreateOrgRequest>,
    ) -> Result<Response<pb::CreateOrgResponse>, Status> {
        let caller = auth::caller(&request)?;
        let req = request.into_inner();
        let target = req.org_id.clone();
        let result = self.create_org_inner(&caller, req).await;
        self.finish(&caller, CREATE_ORG, &target, result)
    }

    async fn list_orgs(
        &self,
        request: Request<pb::ListOrgsRequest>,
    ) -> Result<Response<pb::ListOrgsResponse>, Status> {
        auth::caller(&request)?;
        Ok(Response::new(pb::ListOrgsResponse {
            orgs: self.state.orgs.list().iter().map(org_to_pb).collect(),
        }))
    }

    async fn create_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        let caller = admin(&request)?;
        let req = request.into_inner();
        let target = req.name.clone();
        let result = self.create_token_inner(&caller, req).await;
        self.finish(&caller, CREATE_TOKEN, &target, result)
    }

    async fn list_tokens(
        &self,
        request: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        let caller = admin(&request)?;
        let include_revoked = request.into_inner().include_revoked;
        let tokens = self
            .state
            .auth
            .api_tokens(&caller.org)
            .into_iter()
            .filter(|t| include_revoked || !t.revoked)
            .map(|t| api_token_to_pb(&t, self.state.auth.last_used(&t)))
            .collect();
        Ok(Response::new(pb::ListTokensResponse { tokens }))
    }

    async fn revoke_token(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        let caller = admin(&request)?;
        let raw = request.into_inner().token_id;
        let result = self.revoke_token_inner(&caller, &raw).await;
        self.finish(&caller, REVOKE_TOKEN, &raw, result)
    }

    async fn delete_agent(
        &self,
        request: Request<pb::DeleteAgentRequest>,
    ) -> Result<Response<pb::DeleteAgentResponse>, Status> {
        let caller = admin(&request)?;
        let raw = request.into_inner().agent_id;
        let result = self.delete_agent_inner(&caller, &raw).await;
        self.finish(&caller, DELETE_AGENT, &raw, result)
    }

    async fn list_audit_events(
        &self,
        request: Request<pb::ListAuditEventsRequest>,
    ) -> Result<Response<pb::ListAuditEventsResponse>, Status> {
        let caller = admin(&request)?;
        let response = self.list_audit_inner(&caller, request.into_inner()).await?;
        Ok(Response::new(response))
    }
}

const CREATE_ORG: &str = "/tether.v1.AdminService/CreateOrg";
const CREATE_TOKEN: &str = "/tether.v1.AdminService/CreateToken";
const REVOKE_TOKEN: &str = "/tether.v1.AdminService/RevokeToken";
const DELETE_AGENT: &str = "/tether.v1.AdminService/DeleteAgent";
const CREATE_ENROLLMENT_TOKEN: &str = "/tether.v1.AdminService/CreateEnrollmentToken";
const REVOKE_ENROLLMENT_TOKEN: &str = "/tether.v1.AdminService/RevokeEnrollmentToken";

/// Most audit records one `ListAuditEvents` page scans to fill a filtered page.
const MAX_AUDIT_SCAN: usize = 100_000;

pub fn org_to_pb(org: &OrgRecord) -> pb::Org {
    pb::Org {
        org_id: org.id.to_string(),
        display_name: org.display_name.clone(),
        created_at: Some(convert::timestamp(org.created_at)),
    }
}

pub fn api_token_to_pb(t: &TokenRecord, last_used: Option<SystemTime>) -> pb::ApiToken {
    pb::ApiToken {
        token_id: t.id.to_string(),
        org_id: t.org.to_string(),
        name: t.name.clone(),
        role: crate::audit::role_to_pb(t.role) as i32,
        created_at: Some(convert::timestamp(t.created_at)),
        expires_at: convert::opt_timestamp(t.expires_at),
        revoked: t.revoked,
        last_used_at: convert::opt_timestamp(last_used),
        server_admin: t.server_admin,
    }
}

fn ttl_to_expiry(
    ttl: Option<prost_types::Duration>,
    now: SystemTime,
) -> Result<Option<SystemTime>, ServerError> {
    let ttl = ttl
        .map(|d| convert::duration_from_pb(d, "ttl"))
        .transpose()?
        .filter(|d| !d.is_zero());
    match ttl {
        Some(ttl) => now
            .checked_add(ttl)
            .map(Some)
            .ok_or_else(|| ServerError::invalid("ttl is too large")),
        None => Ok(None),
    }
}

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

fn valid_id(raw: &str, what: &str) -> Result<(), ServerError> {
    if crate::domain::is_valid_id(raw) {
        Ok(())
    } else {
        Err(ServerError::invalid(format!(
            "malformed {what}: 1-64 characters of [a-z0-9-]"
        )))
    }
}

impl AdminService {
    /// Audits a mutating call's failure (success is audited inside its commit) and answers.
    fn finish<T>(
        &self,
        caller: &auth::Caller,
        method: &str,
        target: &str,
        result: Result<T, ServerError>,
    ) -> Result<Response<T>, Status> {
        match result {
            Ok(response) => Ok(Response::new(response)),
            Err(err) => {
                let status = Status::from(err);
                self.state
                    .writer
                    .audit(crate::audit::entry(caller, method, target, Err(&status)));
                Err(status)
            }
        }
    }

    fn audit_ok(
        caller: &auth::Caller,
        method: &str,
        target: &str,
    ) -> Option<crate::domain::AuditEntry> {
        Some(crate::audit::entry(caller, method, target, Ok(())))
    }

    async fn create_org_inner(
        &self,
        caller: &auth::Caller,
        req: pb::CreateOrgRequest,
    ) -> Result<pb::CreateOrgResponse, ServerError> {
        let pb::CreateOrgRequest {
            org_id,
            display_name,
        } = req;
        valid_id(&org_id, "org_id")?;
        if display_name.len() > MAX_DESCRIPTION_BYTES {
            return Err(ServerError::invalid(format!(
                "display_name must be at most {MAX_DESCRIPTION_BYTES} bytes"
            )));
        }
        let now = SystemTime::now();
        let org = OrgRecord {
            id: OrgId::new(org_id.clone()),
            display_name: if display_name.is_empty() {
                org_id.clone()
            } else {
                display_name
            },
            created_at: now,
        };
        if !self.state.orgs.insert(org.clone()) {
            return Err(ServerError::AlreadyExists(format!("org {org_id}")));
        }
        let new = auth::generate();
        let token = TokenRecord {
            id: new.id,
            org: org.id.clone(),
            role: Role::Admin,
            name: format!("{org_id}-admin"),
            digest: new.digest,
            created_at: now,
            expires_at: None,
            revoked: false,
            agent: None,
            server_admin: false,
            last_used_at: None,
        };
        let writes = vec![Write::PutOrg(org.clone()), Write::PutToken(token.clone())];
        if let Err(e) = self
            .state
            .writer
            .commit_audited(writes, Self::audit_ok(caller, CREATE_ORG, &org_id))
            .await
        {
            self.state.orgs.remove(&org.id);
            return Err(e);
        }
        self.state.auth.insert_token(token.clone());
        tracing::info!(org = %org.id, by = %caller.token, "org created");
        Ok(pb::CreateOrgResponse {
            org: Some(org_to_pb(&org)),
            admin_token: Some(api_token_to_pb(&token, None)),
            admin_secret: new.secret.expose().to_owned(),
        })
    }

    async fn create_token_inner(
        &self,
        caller: &auth::Caller,
        req: pb::CreateTokenRequest,
    ) -> Result<pb::CreateTokenResponse, ServerError> {
        let pb::CreateTokenRequest { name, role, ttl } = req;
        if name.trim().is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
            return Err(ServerError::invalid(
                "name is required: 1-128 characters without control characters",
            ));
        }
        let role = role_from_pb(role)?;
        let now = SystemTime::now();
        let new = auth::generate();
        let token = TokenRecord {
            id: new.id,
            org: caller.org.clone(),
            role,
            name,
            digest: new.digest,
            created_at: now,
            expires_at: ttl_to_expiry(ttl, now)?,
            revoked: false,
            agent: None,
            server_admin: false,
            last_used_at: None,
        };
        self.state
            .writer
            .commit_audited(
                vec![Write::PutToken(token.clone())],
                Self::audit_ok(caller, CREATE_TOKEN, token.id.as_str()),
            )
            .await?;
        self.state.auth.insert_token(token.clone());
        tracing::info!(token = %token.id, org = %token.org, role = auth::role_name(role), "token created");
        Ok(pb::CreateTokenResponse {
            token: Some(api_token_to_pb(&token, None)),
            secret: new.secret.expose().to_owned(),
        })
    }

    async fn revoke_token_inner(
        &self,
        caller: &auth::Caller,
        raw: &str,
    ) -> Result<pb::RevokeTokenResponse, ServerError> {
        valid_id(raw, "token_id")?;
        let id = TokenId::new(raw);
        let existing = self
            .state
            .auth
            .token(&id)
            .filter(|t| t.org == caller.org && t.role != Role::Agent)
            .ok_or_else(|| ServerError::NotFound(format!("token {id}")))?;
        let mut revoked = existing.clone();
        revoked.revoked = true;
        self.state
            .writer
            .commit_audited(
                vec![Write::PutToken(revoked.clone())],
                Self::audit_ok(caller, REVOKE_TOKEN, raw),
            )
            .await?;
        self.state.auth.revoke_token(&id);
        tracing::info!(token = %id, org = %caller.org, "token revoked");
        let last_used = self.state.auth.last_used(&revoked);
        Ok(pb::RevokeTokenResponse {
            token: Some(api_token_to_pb(&revoked, last_used)),
        })
    }

    async fn delete_agent_inner(
        &self,
        caller: &auth::Caller,
        raw: &str,
    ) -> Result<pb::DeleteAgentResponse, ServerError> {
        valid_id(raw, "agent_id")?;
        let agent = AgentId::new(raw);
        let view = self
            .state
            .registry
            .get(&caller.org, &agent)
            .ok_or_else(|| ServerError::NotFound(format!("agent {agent}")))?;
        let credentials: Vec<TokenRecord> = self
            .state
            .auth
            .agent_credentials(&agent)
            .into_iter()
            .map(|mut t| {
                t.revoked = true;
                t
            })
            .collect();
        let mut writes: Vec<Write> = credentials.iter().cloned().map(Write::PutToken).collect();
        writes.push(Write::DeleteAgent(AgentTombstone {
            org: caller.org.clone(),
            agent: agent.clone(),
            hardware_id: view.record.system_info.hardware_id.clone(),
            deleted_at: SystemTime::now(),
            deleted_by: caller.token.clone(),
        }));
        self.state
            .writer
            .commit_audited(writes, Self::audit_ok(caller, DELETE_AGENT, raw))
            .await?;
        for credential in &credentials {
            self.state.auth.revoke_token(&credential.id);
        }
        self.state.registry.remove(&caller.org, &agent);
        tracing::info!(%agent, org = %caller.org, by = %caller.token, "agent deleted");
        Ok(pb::DeleteAgentResponse {})
    }

    async fn revoke_enrollment_inner(
        &self,
        caller: &auth::Caller,
        raw: &str,
    ) -> Result<pb::RevokeEnrollmentTokenResponse, ServerError> {
        valid_id(raw, "token_id")?;
        let id = TokenId::new(raw);
        let existing = self
            .state
            .auth
            .enrollment_token(&caller.org, &id)
            .ok_or_else(|| ServerError::NotFound(format!("enrollment token {id}")))?;
        let mut record = existing.clone();
        if !existing.revoked {
            // Revoked in the cache first (a racing enrollment now fails), and the write queued
            // under the cache lock so no older copy of the record can overwrite it.
            let pending = self.state.auth.with_enrollment(&id, |current| {
                let current = current
                    .ok_or_else(|| ServerError::NotFound(format!("enrollment token {id}")))?;
                current.revoked = true;
                record = current.clone();
                self.state.writer.submit(
                    vec![Write::PutEnrollmentToken(current.clone())],
                    Self::audit_ok(caller, REVOKE_ENROLLMENT_TOKEN, raw),
                )
            })?;
            pending.wait().await?;
            tracing::info!(token = %id, org = %caller.org, "enrollment token revoked");
        }
        Ok(pb::RevokeEnrollmentTokenResponse {
            token: Some(enrollment_token_to_pb(&record)),
        })
    }

    async fn list_audit_inner(
        &self,
        caller: &auth::Caller,
        req: pb::ListAuditEventsRequest,
    ) -> Result<pb::ListAuditEventsResponse, ServerError> {
        let pb::ListAuditEventsRequest {
            method,
            actor_token_id,
            outcome,
            since,
            page_size,
            page_token,
        } = req;
        let page_size = match page_size {
            0 => 100,
            n if n < 0 => return Err(ServerError::invalid("page_size must not be negative")),
            n => usize::try_from(n).unwrap_or(1000).min(1000),
        };
        let mut after: u64 = if page_token.is_empty() {
            0
        } else {
            page_token
                .parse()
                .map_err(|_| ServerError::invalid("invalid page_token"))?
        };
        let outcome = match pb::AuditOutcome::try_from(outcome) {
            Ok(pb::AuditOutcome::Unspecified) => None,
            Ok(o) => Some(o as i32),
            Err(_) => return Err(ServerError::invalid("unknown audit outcome")),
        };
        let since = since
            .map(|t| convert::time_from_pb(t, "since"))
            .transpose()?;
        let mut events = Vec::new();
        let mut scanned = 0;
        let mut exhausted = false;
        while events.len() < page_size && scanned < MAX_AUDIT_SCAN {
            let store = self.state.store.clone();
            let org = caller.org.clone();
            let chunk = tokio::task::spawn_blocking(move || store.audit_records(&org, after, 1000))
                .await
                .map_err(|e| ServerError::Internal(e.to_string()))??;
            if chunk.is_empty() {
                exhausted = true;
                break;
            }
            for record in chunk {
                scanned += 1;
                after = record.seq;
                let e = &record.entry;
                let keep = (method.is_empty() || e.method == method)
                    && (actor_token_id.is_empty()
                        || e.actor_token
                            .as_ref()
                            .is_some_and(|t| t.as_str() == actor_token_id))
                    && outcome.is_none_or(|o| crate::audit::outcome_to_pb(e.outcome) as i32 == o)
                    && since.is_none_or(|s| e.time >= s);
                if keep {
                    events.push(crate::audit::to_pb(&record));
                    if events.len() == page_size {
                        break;
                    }
                }
            }
        }
        Ok(pb::ListAuditEventsResponse {
            events,
            next_page_token: if exhausted {
                String::new()
            } else {
                after.to_string()
            },
        })
    }
}
