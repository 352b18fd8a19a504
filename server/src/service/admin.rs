//! `AdminService`: orgs, API tokens, enrollment tokens, agent deletion and the audit trail of
//! the caller's org.
//!
//! The trait methods convert at the edge (`convert/admin.rs`) and call the use cases below,
//! which take and return domain types. Every mutating call is audited: a success inside the
//! commit that makes it durable, a failure by `AdminService::finish`.

use std::sync::Arc;
use std::time::SystemTime;

use tether_proto as pb;
use tonic::{Request, Response, Status};

use crate::auth::{self, Secret};
use crate::convert;
use crate::domain::{
    AgentId, AgentTombstone, AuditEntry, AuditPage, AuditQuery, EnrollmentTokenRecord, NewApiToken,
    NewEnrollmentToken, NewOrg, OrgId, OrgRecord, Role, TokenId, TokenRecord,
};
use crate::error::ServerError;
use crate::identity::LockKey;
use crate::service::AppState;
use crate::store::Write;

/// Most audit records one `ListAuditEvents` page scans to fill a filtered page.
const MAX_AUDIT_SCAN: usize = 100_000;
/// Audit records read from the store at a time while filling a page.
const AUDIT_CHUNK: usize = 1000;
/// Most bytes of events one `ListAuditEvents` page carries: half of the 4 MiB gRPC clients
/// accept by default, so a page of records stored before their fields were bounded (or of the
/// largest ones bounded today) can always be read. A page holds at least one event.
pub const MAX_AUDIT_PAGE_BYTES: usize = 2 << 20;

/// Longest lifetime of an API token or an enrollment token: ten years.
pub const MAX_TTL: std::time::Duration = std::time::Duration::from_secs(10 * 365 * 86_400);
/// The last second of the year 9999 (UTC), as time since the Unix epoch: the latest expiry the
/// server stores, the last time an RFC 3339 timestamp can write.
pub const LATEST_EXPIRY: std::time::Duration = std::time::Duration::from_secs(253_402_300_799);

const CREATE_ORG: &str = "/tether.v1.AdminService/CreateOrg";
const CREATE_TOKEN: &str = "/tether.v1.AdminService/CreateToken";
const REVOKE_TOKEN: &str = "/tether.v1.AdminService/RevokeToken";
const DELETE_AGENT: &str = "/tether.v1.AdminService/DeleteAgent";
const ALLOW_AGENT_RECLAIM: &str = "/tether.v1.AdminService/AllowAgentReclaim";
const CREATE_ENROLLMENT_TOKEN: &str = "/tether.v1.AdminService/CreateEnrollmentToken";
const REVOKE_ENROLLMENT_TOKEN: &str = "/tether.v1.AdminService/RevokeEnrollmentToken";

pub struct AdminService {
    state: Arc<AppState>,
    backups: crate::service::backup::Backups,
}

impl AdminService {
    /// The service; backups' producers run under `tasks`.
    pub fn new(state: Arc<AppState>, tasks: tokio_util::task::TaskTracker) -> Self {
        Self {
            state,
            backups: crate::service::backup::Backups::new(tasks),
        }
    }
}

#[tonic::async_trait]
impl pb::admin_service_server::AdminService for AdminService {
    type BackupStream = crate::service::backup::BackupStream;

    async fn backup(
        &self,
        request: Request<pb::BackupRequest>,
    ) -> Result<Response<Self::BackupStream>, Status> {
        let caller = auth::caller(&request)?;
        let pb::BackupRequest {} = request.into_inner();
        let result = self.backups.start(&self.state, &caller).await;
        self.finish(&caller, crate::service::backup::BACKUP, "", result)
            .await
    }

    async fn create_enrollment_token(
        &self,
        request: Request<pb::CreateEnrollmentTokenRequest>,
    ) -> Result<Response<pb::CreateEnrollmentTokenResponse>, Status> {
        let caller = auth::caller(&request)?;
        let state = &self.state;
        let result = async {
            let new = convert::admin::create_enrollment_token_from_pb(
                request.into_inner(),
                &state.config.limits,
            )?;
            let (record, secret) =
                create_enrollment_token(state, caller.org.clone(), new, Some(&caller)).await?;
            Ok(convert::admin::create_enrollment_token_to_pb(
                &record, &secret,
            ))
        }
        .await;
        self.finish(&caller, CREATE_ENROLLMENT_TOKEN, "", result)
            .await
    }

    async fn list_enrollment_tokens(
        &self,
        request: Request<pb::ListEnrollmentTokensRequest>,
    ) -> Result<Response<pb::ListEnrollmentTokensResponse>, Status> {
        let caller = auth::caller(&request)?;
        let pb::ListEnrollmentTokensRequest {} = request.into_inner();
        let tokens = self.state.auth.enrollment_tokens(&caller.org);
        Ok(Response::new(convert::admin::list_enrollment_tokens_to_pb(
            &tokens,
        )))
    }

    async fn revoke_enrollment_token(
        &self,
        request: Request<pb::RevokeEnrollmentTokenRequest>,
    ) -> Result<Response<pb::RevokeEnrollmentTokenResponse>, Status> {
        let caller = auth::caller(&request)?;
        let pb::RevokeEnrollmentTokenRequest { token_id: raw } = request.into_inner();
        let result = async {
            let id = convert::admin::token_id_from_pb(&raw)?;
            let record = self.revoke_enrollment_token(&caller, id, &raw).await?;
            Ok(convert::admin::revoke_enrollment_token_to_pb(&record))
        }
        .await;
        self.finish(&caller, REVOKE_ENROLLMENT_TOKEN, &raw, result)
            .await
    }

    async fn create_org(
        &self,
        request: Request<pb::CreateOrgRequest>,
    ) -> Result<Response<pb::CreateOrgResponse>, Status> {
        let caller = auth::caller(&request)?;
        let req = request.into_inner();
        let target = req.org_id.clone();
        let result = async {
            let new = convert::admin::create_org_from_pb(req)?;
            let (org, token, secret) = self.create_org(&caller, new).await?;
            Ok(convert::admin::create_org_to_pb(&org, &token, &secret))
        }
        .await;
        self.finish(&caller, CREATE_ORG, &target, result).await
    }

    async fn list_orgs(
        &self,
        request: Request<pb::ListOrgsRequest>,
    ) -> Result<Response<pb::ListOrgsResponse>, Status> {
        auth::caller(&request)?;
        let pb::ListOrgsRequest {} = request.into_inner();
        Ok(Response::new(convert::admin::list_orgs_to_pb(
            &self.state.orgs.list(),
        )))
    }

    async fn create_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        let caller = auth::caller(&request)?;
        let req = request.into_inner();
        let target = req.name.clone();
        let result = async {
            let new = convert::admin::create_token_from_pb(req)?;
            let (token, secret) = self.create_token(&caller, new).await?;
            Ok(convert::admin::create_token_to_pb(&token, &secret))
        }
        .await;
        self.finish(&caller, CREATE_TOKEN, &target, result).await
    }

    async fn list_tokens(
        &self,
        request: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        let caller = auth::caller(&request)?;
        let pb::ListTokensRequest { include_revoked } = request.into_inner();
        let tokens: Vec<_> = self
            .state
            .auth
            .api_tokens(&caller.org)
            .into_iter()
            .filter(|t| (include_revoked || !t.revoked) && may_manage(&caller, t))
            .map(|t| {
                let last_used = self.state.auth.last_used(&t);
                (t, last_used)
            })
            .collect();
        Ok(Response::new(convert::admin::list_tokens_to_pb(&tokens)))
    }

    async fn revoke_token(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        let caller = auth::caller(&request)?;
        let pb::RevokeTokenRequest { token_id: raw } = request.into_inner();
        let result = async {
            let id = convert::admin::token_id_from_pb(&raw)?;
            let (token, last_used) = self.revoke_token(&caller, id, &raw).await?;
            Ok(convert::admin::revoke_token_to_pb(&token, last_used))
        }
        .await;
        self.finish(&caller, REVOKE_TOKEN, &raw, result).await
    }

    async fn delete_agent(
        &self,
        request: Request<pb::DeleteAgentRequest>,
    ) -> Result<Response<pb::DeleteAgentResponse>, Status> {
        let caller = auth::caller(&request)?;
        let pb::DeleteAgentRequest { agent_id: raw } = request.into_inner();
        let result = async {
            let agent = convert::fleet::agent_id_from_pb(&raw)?;
            self.delete_agent(&caller, agent, &raw).await?;
            Ok(pb::DeleteAgentResponse {})
        }
        .await;
        self.finish(&caller, DELETE_AGENT, &raw, result).await
    }

    async fn allow_agent_reclaim(
        &self,
        request: Request<pb::AllowAgentReclaimRequest>,
    ) -> Result<Response<pb::AllowAgentReclaimResponse>, Status> {
        let caller = auth::caller(&request)?;
        let req = request.into_inner();
        let target = req.agent_id.clone();
        let result = async {
            let (agent, ttl) = convert::admin::allow_agent_reclaim_from_pb(req)?;
            let expires_at = self
                .allow_agent_reclaim(&caller, agent, ttl, &target)
                .await?;
            Ok(convert::admin::allow_agent_reclaim_to_pb(expires_at))
        }
        .await;
        self.finish(&caller, ALLOW_AGENT_RECLAIM, &target, result)
            .await
    }

    async fn list_audit_events(
        &self,
        request: Request<pb::ListAuditEventsRequest>,
    ) -> Result<Response<pb::ListAuditEventsResponse>, Status> {
        let caller = auth::caller(&request)?;
        let query = convert::admin::list_audit_events_from_pb(request.into_inner())?;
        let page = list_audit_events(&self.state, &caller.org, query).await?;
        Ok(Response::new(convert::admin::list_audit_events_to_pb(
            &page,
        )))
    }
}

/// Creates, persists and caches an enrollment token of `org`; returns it with its secret.
/// With a `caller`, the creation is audited in the same commit.
///
/// # Errors
///
/// `INVALID_ARGUMENT` for a TTL too large to give an expiry, `INTERNAL` if the commit fails.
pub async fn create_enrollment_token(
    state: &AppState,
    org: OrgId,
    new: NewEnrollmentToken,
    caller: Option<&auth::Caller>,
) -> Result<(EnrollmentTokenRecord, Secret), ServerError> {
    let NewEnrollmentToken {
        description,
        labels,
        max_uses,
        ttl,
        allow_reclaim,
    } = new;
    let now = SystemTime::now();
    let expires_at = expiry(ttl, now)?;
    let generated = auth::generate();
    let record = EnrollmentTokenRecord {
        id: generated.id,
        org,
        digest: generated.digest,
        description,
        labels,
        max_uses,
        use_count: 0,
        created_at: now,
        expires_at,
        revoked: false,
        allow_reclaim,
    };
    let audit = caller.map(|c| audit_ok(c, CREATE_ENROLLMENT_TOKEN, record.id.as_str()));
    state
        .writer
        .commit_audited(vec![Write::PutEnrollmentToken(record.clone())], audit)
        .await?;
    state.auth.insert_enrollment(record.clone());
    tracing::info!(token = %record.id, org = %record.org, "enrollment token created");
    Ok((record, generated.secret))
}

/// One filtered page of `org`'s audit trail. A page scans at most `MAX_AUDIT_SCAN` records and
/// carries at most [`MAX_AUDIT_PAGE_BYTES`] of events; a filter that matches rarely, or large
/// events, may end a page early with a token to continue.
///
/// # Errors
///
/// `INTERNAL` if the store fails.
pub async fn list_audit_events(
    state: &AppState,
    org: &OrgId,
    query: AuditQuery,
) -> Result<AuditPage, ServerError> {
    let AuditQuery {
        method,
        actor_token,
        outcome,
        since,
        mut after,
        page_size,
    } = query;
    let mut records = Vec::new();
    let mut bytes = 0;
    let mut scanned = 0;
    let mut full = false;
    let mut exhausted = false;
    while !full && scanned < MAX_AUDIT_SCAN {
        let store = state.store.clone();
        let org = org.clone();
        let chunk =
            tokio::task::spawn_blocking(move || store.audit_records(&org, after, AUDIT_CHUNK))
                .await
                .map_err(|e| ServerError::Internal(e.to_string()))??;
        if chunk.is_empty() {
            exhausted = true;
            break;
        }
        for record in chunk {
            let e = &record.entry;
            let keep = method.as_ref().is_none_or(|m| e.method == *m)
                && actor_token.as_ref().is_none_or(|wanted| {
                    e.actor_token.as_ref().is_some_and(|t| t.as_str() == wanted)
                })
                && outcome.is_none_or(|o| e.outcome == o)
                && since.is_none_or(|s| e.time >= s);
            if keep {
                let size = convert::admin::audit_record_wire_len(&record);
                if !records.is_empty() && bytes + size > MAX_AUDIT_PAGE_BYTES {
                    // This record starts the next page.
                    full = true;
                    break;
                }
                bytes += size;
            }
            scanned += 1;
            after = record.seq;
            if keep {
                records.push(record);
                if records.len() == page_size {
                    full = true;
                    break;
                }
            }
        }
    }
    Ok(AuditPage {
        records,
        next_after: (!exhausted).then_some(after),
    })
}

/// When something created at `now` with `ttl` expires. A token either never expires (no TTL)
/// or expires within [`MAX_TTL`], and never after [`LATEST_EXPIRY`]: every expiry the server
/// stores is a time every client can read and print.
///
/// # Errors
///
/// `INVALID_ARGUMENT` for a TTL above [`MAX_TTL`] or an expiry after [`LATEST_EXPIRY`].
fn expiry(
    ttl: Option<std::time::Duration>,
    now: SystemTime,
) -> Result<Option<SystemTime>, ServerError> {
    let Some(ttl) = ttl else {
        return Ok(None);
    };
    if ttl > MAX_TTL {
        return Err(ServerError::invalid(format!(
            "ttl must be at most {} days (10 years); omit it for a token that does not expire",
            MAX_TTL.as_secs() / 86_400
        )));
    }
    now.checked_add(ttl)
        .filter(|at| {
            at.duration_since(SystemTime::UNIX_EPOCH)
                .is_ok_and(|since| since <= LATEST_EXPIRY)
        })
        .map(Some)
        .ok_or_else(|| ServerError::invalid("ttl ends after the year 9999"))
}

/// Whether `caller` may see and revoke API token `token` of its org: the server-admin token
/// is managed only by a server admin; for anyone else it does not exist (`NOT_FOUND`, like
/// another org's token), so an org admin of the default org cannot lock the server out of
/// org management.
fn may_manage(caller: &auth::Caller, token: &TokenRecord) -> bool {
    !token.server_admin
        || matches!(
            caller.principal,
            auth::Principal::User {
                server_admin: true,
                ..
            }
        )
}

fn audit_ok(caller: &auth::Caller, method: &str, target: &str) -> AuditEntry {
    crate::audit::entry(caller, method, target, Ok(()))
}

impl AdminService {
    /// Audits a mutating call's failure (success is audited inside its commit) and answers;
    /// waits while the writer's control queue is full.
    async fn finish<T>(
        &self,
        caller: &auth::Caller,
        method: &str,
        target: &str,
        result: Result<T, ServerError>,
    ) -> Result<Response<T>, Status> {
        crate::service::answer_audited(&self.state, caller, method, target, result).await
    }

    /// Creates org `new` with its first admin token; returns both and the token's secret.
    async fn create_org(
        &self,
        caller: &auth::Caller,
        new: NewOrg,
    ) -> Result<(OrgRecord, TokenRecord, Secret), ServerError> {
        let NewOrg { id, display_name } = new;
        let now = SystemTime::now();
        let org = OrgRecord {
            id,
            display_name,
            created_at: now,
        };
        if !self.state.orgs.insert(org.clone()) {
            return Err(ServerError::AlreadyExists(format!("org {}", org.id)));
        }
        let (token, secret) = auth::issue(
            org.id.clone(),
            Role::Admin,
            format!("{}-admin", org.id),
            now,
        );
        let writes = vec![Write::PutOrg(org.clone()), Write::PutToken(token.clone())];
        if let Err(e) = self
            .state
            .writer
            .commit_audited(writes, Some(audit_ok(caller, CREATE_ORG, org.id.as_str())))
            .await
        {
            self.state.orgs.remove(&org.id);
            return Err(e);
        }
        self.state.auth.insert_token(token.clone());
        tracing::info!(org = %org.id, by = %caller.token, "org created");
        Ok((org, token, secret))
    }

    /// Creates an API token of the caller's org; returns it with its secret.
    async fn create_token(
        &self,
        caller: &auth::Caller,
        new: NewApiToken,
    ) -> Result<(TokenRecord, Secret), ServerError> {
        let NewApiToken { name, role, ttl } = new;
        let now = SystemTime::now();
        let (mut token, secret) = auth::issue(caller.org.clone(), role, name, now);
        token.expires_at = expiry(ttl, now)?;
        self.state
            .writer
            .commit_audited(
                vec![Write::PutToken(token.clone())],
                Some(audit_ok(caller, CREATE_TOKEN, token.id.as_str())),
            )
            .await?;
        self.state.auth.insert_token(token.clone());
        tracing::info!(token = %token.id, org = %token.org, role = auth::role_name(role), "token created");
        Ok((token, secret))
    }

    /// Revokes API token `id` of the caller's org; returns it with its last use. `target` is
    /// the id as the request named it, for the audit trail.
    async fn revoke_token(
        &self,
        caller: &auth::Caller,
        id: TokenId,
        target: &str,
    ) -> Result<(TokenRecord, Option<SystemTime>), ServerError> {
        let existing = self
            .state
            .auth
            .token(&id)
            .filter(|t| t.org == caller.org && t.role != Role::Agent && may_manage(caller, t))
            .ok_or_else(|| ServerError::NotFound(format!("token {id}")))?;
        let mut revoked = existing.clone();
        revoked.revoked = true;
        self.state
            .writer
            .commit_audited(
                vec![Write::PutToken(revoked.clone())],
                Some(audit_ok(caller, REVOKE_TOKEN, target)),
            )
            .await?;
        self.state.auth.revoke_token(&id);
        tracing::info!(token = %id, org = %caller.org, "token revoked");
        let last_used = self.state.auth.last_used(&revoked);
        Ok((revoked, last_used))
    }

    /// Deletes `agent` of the caller's org: its credentials are revoked, a tombstone stays, its
    /// live session ends, and its unfinished command invocations end AGENT_DELETED.
    ///
    /// Under the agent's identity lock (so no enrollment takes it over meanwhile), the agent
    /// leaves memory first: from then on its credentials fail, no session opens, and nothing
    /// queues a write of its record; only then is the deletion committed, so no write of the
    /// agent can follow its tombstone. If the commit fails, the agent is put back.
    async fn delete_agent(
        &self,
        caller: &auth::Caller,
        agent: AgentId,
        target: &str,
    ) -> Result<(), ServerError> {
        let state = &self.state;
        let _lock = state
            .identity
            .locks
            .lock(LockKey::Agent(caller.org.clone(), agent.clone()))
            .await;
        let credentials = state.auth.agent_credentials(&agent);
        let view = state
            .registry
            .remove(&caller.org, &agent)
            .ok_or_else(|| ServerError::NotFound(format!("agent {agent}")))?;
        let revoked: Vec<TokenRecord> = credentials
            .iter()
            .filter_map(|credential| state.auth.revoke_token(&credential.id))
            .collect();
        let mut writes: Vec<Write> = revoked.iter().cloned().map(Write::PutToken).collect();
        writes.push(Write::DeleteAgent(AgentTombstone {
            org: caller.org.clone(),
            agent: agent.clone(),
            hardware_id: view.record.system_info.hardware_id.clone(),
            deleted_at: SystemTime::now(),
            deleted_by: caller.token.clone(),
        }));
        if let Err(e) = state
            .writer
            .commit_audited(writes, Some(audit_ok(caller, DELETE_AGENT, target)))
            .await
        {
            for credential in credentials {
                state.auth.insert_token(credential);
            }
            state.registry.restore(view);
            return Err(e);
        }
        // Still under the agent's lock, so no enrollment takes the id over before its
        // unfinished invocations have ended AGENT_DELETED.
        state.commands.agent_deleted(&caller.org, &agent).await;
        tracing::info!(%agent, org = %caller.org, by = %caller.token, "agent deleted");
        Ok(())
    }

    /// Lets the next enrollment reporting `agent`'s hardware id take it over within `ttl`;
    /// returns when the permission lapses. Under the agent's identity lock, like every change
    /// of its identity; the record's write is queued under the registry's lock, so no older
    /// copy of it is written after.
    async fn allow_agent_reclaim(
        &self,
        caller: &auth::Caller,
        agent: AgentId,
        ttl: std::time::Duration,
        target: &str,
    ) -> Result<SystemTime, ServerError> {
        let state = &self.state;
        let _lock = state
            .identity
            .locks
            .lock(LockKey::Agent(caller.org.clone(), agent.clone()))
            .await;
        let previous = state
            .registry
            .get(&caller.org, &agent)
            .ok_or_else(|| ServerError::NotFound(format!("agent {agent}")))?
            .record
            .reclaim_until;
        let until = expiry(Some(ttl), SystemTime::now())?
            .ok_or_else(|| ServerError::Internal("a ttl gives an expiry".to_owned()))?;
        let mut audit = audit_ok(caller, ALLOW_AGENT_RECLAIM, target);
        audit.message = format!(
            "the next enrollment with this agent's hardware id within {} takes it over",
            humantime::format_duration(ttl)
        );
        // The queue slot is taken first: nothing may wait under the registry's lock.
        let slot = state.writer.reserve().await?;
        let pending = state
            .registry
            .set_reclaim(&caller.org, &agent, Some(until), |record| {
                slot.submit(vec![Write::PutAgent(record.clone())], Some(audit))
            })
            .ok_or_else(|| ServerError::NotFound(format!("agent {agent}")))??;
        if let Err(e) = pending.wait().await {
            let restore = state
                .registry
                .set_reclaim(&caller.org, &agent, previous, |_| ());
            debug_assert!(restore.is_some(), "the agent lock keeps the agent");
            return Err(e);
        }
        tracing::info!(%agent, org = %caller.org, by = %caller.token, until = %humantime::format_rfc3339_seconds(until), "agent reclaim allowed");
        Ok(until)
    }

    /// Revokes enrollment token `id` of the caller's org (revoking twice is not an error);
    /// returns it.
    async fn revoke_enrollment_token(
        &self,
        caller: &auth::Caller,
        id: TokenId,
        target: &str,
    ) -> Result<EnrollmentTokenRecord, ServerError> {
        let existing = self
            .state
            .auth
            .enrollment_token(&caller.org, &id)
            .ok_or_else(|| ServerError::NotFound(format!("enrollment token {id}")))?;
        let mut record = existing.clone();
        if !existing.revoked {
            // Revoked in the cache first (a racing enrollment now fails), and the write queued
            // under the cache lock so no older copy of the record can overwrite it (in a queue
            // slot taken before, since nothing may wait under that lock).
            let slot = self.state.writer.reserve().await?;
            let pending = self.state.auth.with_enrollment(&id, |current| {
                let current = current
                    .ok_or_else(|| ServerError::NotFound(format!("enrollment token {id}")))?;
                current.revoked = true;
                record = current.clone();
                slot.submit(
                    vec![Write::PutEnrollmentToken(current.clone())],
                    Some(audit_ok(caller, REVOKE_ENROLLMENT_TOKEN, target)),
                )
            })?;
            pending.wait().await?;
            tracing::info!(token = %id, org = %caller.org, "enrollment token revoked");
        }
        Ok(record)
    }
}

#[cfg(test)]
mod tests;
