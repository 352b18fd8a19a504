//! `AdminService`: enrollment tokens of the caller's org. Requires the `admin` role.

use std::sync::Arc;
use std::time::SystemTime;

use tether_proto as pb;
use tonic::{Request, Response, Status};

use crate::auth;
use crate::convert;
use crate::domain::{EnrollmentTokenRecord, Role, TokenId};
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
    let ttl = ttl
        .map(|d| convert::duration_from_pb(d, "ttl"))
        .transpose()?
        .filter(|d| !d.is_zero());
    let expires_at = match ttl {
        Some(ttl) => Some(
            now.checked_add(ttl)
                .ok_or_else(|| ServerError::invalid("ttl is too large"))?,
        ),
        None => None,
    };
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
    state
        .writer
        .commit(vec![Write::PutEnrollmentToken(record.clone())])
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
        let (record, secret) =
            create_enrollment_token(&self.state, caller.org, request.into_inner()).await?;
        Ok(Response::new(pb::CreateEnrollmentTokenResponse {
            token: Some(enrollment_token_to_pb(&record)),
            secret: secret.expose().to_owned(),
        }))
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
        if !crate::domain::is_valid_id(&raw) {
            return Err(ServerError::invalid("malformed token_id").into());
        }
        let id = TokenId::new(raw);
        let mut record = self
            .state
            .auth
            .enrollment_token(&caller.org, &id)
            .ok_or_else(|| ServerError::NotFound(format!("enrollment token {id}")))?;
        if !record.revoked {
            record.revoked = true;
            self.state
                .writer
                .commit(vec![Write::PutEnrollmentToken(record.clone())])
                .await?;
            self.state.auth.insert_enrollment(record.clone());
            tracing::info!(token = %id, org = %caller.org, "enrollment token revoked");
        }
        Ok(Response::new(pb::RevokeEnrollmentTokenResponse {
            token: Some(enrollment_token_to_pb(&record)),
        }))
    }
}
