//! Authentication: bearer tokens, their in-memory cache, and the interceptor that turns an
//! `authorization` header into a [`Caller`].
//!
//! A token reads `tether_<id>_<secret>`: the id is public (it names the token in listings and
//! audit), the secret is 256 random bits, hex-encoded. Only the SHA-256 of the secret is stored;
//! it is compared in constant time. The cache holds every token of every org (rebuilt from the
//! store at start-up); handlers check roles on the resolved [`Caller`].

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::metadata::MetadataMap;
use tonic::{Request, Status};

use crate::domain::{
    AgentId, EnrollmentTokenRecord, OrgId, Role, SecretDigest, TokenId, TokenRecord,
};
use crate::error::ServerError;

const TOKEN_PREFIX: &str = "tether_";

/// A token's full text. Debug and Display redact it, so it cannot leak into a log line.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The token text, for the one place that must show it (an RPC response, a 0600 file).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A freshly generated token: its public id, the full text to hand out once, and the digest
/// to store.
pub struct NewToken {
    pub id: TokenId,
    pub secret: Secret,
    pub digest: SecretDigest,
}

/// Generates a token with a random 64-bit id and a random 256-bit secret.
pub fn generate() -> NewToken {
    let mut rng = rand::rng();
    let mut id = [0u8; 8];
    let mut secret = [0u8; 32];
    rng.fill_bytes(&mut id);
    rng.fill_bytes(&mut secret);
    let secret_hex = hex::encode(secret);
    let digest = digest(&secret_hex);
    let id = hex::encode(id);
    NewToken {
        secret: Secret(format!("{TOKEN_PREFIX}{id}_{secret_hex}")),
        id: TokenId::new(id),
        digest,
    }
}

fn digest(secret: &str) -> SecretDigest {
    Sha256::digest(secret.as_bytes()).into()
}

/// Splits `tether_<id>_<secret>` into its id and secret.
fn parse_token(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix(TOKEN_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    (crate::domain::is_valid_id(id) && !secret.is_empty()).then_some((id, secret))
}

/// Who is calling, resolved from the bearer token.
#[derive(Clone, Debug, PartialEq)]
pub struct Caller {
    pub org: OrgId,
    pub token: TokenId,
    pub principal: Principal,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Principal {
    /// An API token with a role other than `Agent`.
    User { name: String, role: Role },
    /// An agent credential, bound to one agent.
    Agent { agent: AgentId },
    /// An enrollment token: may call `Enroll` only.
    Enrollment,
}

// === impl Caller ===

impl Caller {
    /// Requires an API token whose role includes `role` (admin ⊇ operator ⊇ viewer).
    ///
    /// # Errors
    ///
    /// `PermissionDenied` naming the required role.
    pub fn require(&self, role: Role) -> Result<(), ServerError> {
        let rank = |r: Role| match r {
            Role::Viewer => 1,
            Role::Operator => 2,
            Role::Admin => 3,
            Role::Agent => 0,
        };
        match &self.principal {
            Principal::User { role: have, .. } if rank(*have) >= rank(role) => Ok(()),
            _ => Err(ServerError::PermissionDenied(format!(
                "this call requires a token with the {} role",
                role_name(role)
            ))),
        }
    }
}

pub fn role_name(role: Role) -> &'static str {
    match role {
        Role::Admin => "admin",
        Role::Operator => "operator",
        Role::Viewer => "viewer",
        Role::Agent => "agent",
    }
}

/// Every token the server knows, by id.
#[derive(Default)]
pub struct Auth {
    tokens: RwLock<HashMap<TokenId, Arc<TokenRecord>>>,
    /// Behind a mutex: enrollment reserves a use under it.
    enrollment: Mutex<HashMap<TokenId, EnrollmentTokenRecord>>,
}

// === impl Auth ===

impl Auth {
    pub fn new(tokens: Vec<TokenRecord>, enrollment: Vec<EnrollmentTokenRecord>) -> Self {
        Self {
            tokens: RwLock::new(
                tokens
                    .into_iter()
                    .map(|t| (t.id.clone(), Arc::new(t)))
                    .collect(),
            ),
            enrollment: Mutex::new(enrollment.into_iter().map(|t| (t.id.clone(), t)).collect()),
        }
    }

    /// Resolves the `authorization` header.
    ///
    /// # Errors
    ///
    /// `UNAUTHENTICATED` for a missing, malformed, unknown, expired or revoked token. The
    /// message never contains the token.
    pub fn authenticate(&self, metadata: &MetadataMap) -> Result<Caller, Status> {
        let header = metadata
            .get("authorization")
            .ok_or_else(|| Status::unauthenticated("missing authorization header"))?;
        let header = header.to_str().map_err(|_| {
            Status::unauthenticated("malformed authorization header: expected `Bearer <token>`")
        })?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .ok_or_else(|| {
                Status::unauthenticated("malformed authorization header: expected `Bearer <token>`")
            })?;
        let (id, secret) =
            parse_token(token).ok_or_else(|| Status::unauthenticated("malformed token"))?;
        let id = TokenId::new(id);
        let presented = digest(secret);
        let now = SystemTime::now();
        let invalid = || Status::unauthenticated("invalid token");

        let api = self
            .tokens
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .cloned();
        if let Some(record) = api {
            if !bool::from(record.digest.ct_eq(&presented)) {
                return Err(invalid());
            }
            if record.revoked {
                return Err(Status::unauthenticated("token has been revoked"));
            }
            if record.expires_at.is_some_and(|at| now >= at) {
                return Err(Status::unauthenticated("token has expired"));
            }
            let principal = match (record.role, &record.agent) {
                (Role::Agent, Some(agent)) => Principal::Agent {
                    agent: agent.clone(),
                },
                (Role::Agent, None) => return Err(invalid()),
                (role, _) => Principal::User {
                    name: record.name.clone(),
                    role,
                },
            };
            return Ok(Caller {
                org: record.org.clone(),
                token: id,
                principal,
            });
        }

        let enrollment = self.enrollment.lock().unwrap_or_else(|e| e.into_inner());
        match enrollment.get(&id) {
            Some(record) if bool::from(record.digest.ct_eq(&presented)) => Ok(Caller {
                org: record.org.clone(),
                token: id,
                principal: Principal::Enrollment,
            }),
            _ => Err(invalid()),
        }
    }

    pub fn insert_token(&self, record: TokenRecord) {
        self.tokens
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(record.id.clone(), Arc::new(record));
    }

    pub fn token(&self, id: &TokenId) -> Option<TokenRecord> {
        self.tokens
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .map(|t| (**t).clone())
    }

    /// Agent credentials of `agent` that are not revoked.
    pub fn agent_credentials(&self, agent: &AgentId) -> Vec<TokenRecord> {
        self.tokens
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|t| t.agent.as_ref() == Some(agent) && !t.revoked)
            .map(|t| (**t).clone())
            .collect()
    }

    /// Whether `org` has a usable admin token.
    pub fn has_admin(&self, org: &OrgId) -> bool {
        let now = SystemTime::now();
        self.tokens
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .any(|t| {
                &t.org == org
                    && t.role == Role::Admin
                    && !t.revoked
                    && t.expires_at.is_none_or(|at| now < at)
            })
    }

    /// Takes one use of an enrollment token, if it is usable. The caller must persist the
    /// returned record, or [`Auth::release_enrollment`] it if enrollment fails.
    ///
    /// # Errors
    ///
    /// `PermissionDenied` if the token is revoked, expired or used up.
    pub fn reserve_enrollment(&self, id: &TokenId) -> Result<EnrollmentTokenRecord, ServerError> {
        let mut tokens = self.enrollment.lock().unwrap_or_else(|e| e.into_inner());
        let record = tokens
            .get_mut(id)
            .ok_or_else(|| ServerError::Unauthenticated("invalid token".to_owned()))?;
        let now = SystemTime::now();
        if record.revoked {
            return Err(ServerError::PermissionDenied(
                "enrollment token has been revoked".to_owned(),
            ));
        }
        if record.expires_at.is_some_and(|at| now >= at) {
            return Err(ServerError::PermissionDenied(
                "enrollment token has expired".to_owned(),
            ));
        }
        if record.max_uses != 0 && record.use_count >= record.max_uses {
            return Err(ServerError::PermissionDenied(format!(
                "enrollment token has been used {} times, its maximum",
                record.use_count
            )));
        }
        record.use_count += 1;
        Ok(record.clone())
    }

    /// Gives back a use taken by [`Auth::reserve_enrollment`].
    pub fn release_enrollment(&self, id: &TokenId) {
        let mut tokens = self.enrollment.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(record) = tokens.get_mut(id) {
            record.use_count = record.use_count.saturating_sub(1);
        }
    }

    pub fn insert_enrollment(&self, record: EnrollmentTokenRecord) {
        self.enrollment
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(record.id.clone(), record);
    }

    pub fn enrollment_tokens(&self, org: &OrgId) -> Vec<EnrollmentTokenRecord> {
        let mut tokens: Vec<_> = self
            .enrollment
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|t| &t.org == org)
            .cloned()
            .collect();
        tokens.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        tokens
    }

    pub fn enrollment_token(&self, org: &OrgId, id: &TokenId) -> Option<EnrollmentTokenRecord> {
        self.enrollment
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .filter(|t| &t.org == org)
            .cloned()
    }
}

/// A tonic interceptor that authenticates every request and stores the [`Caller`] in its
/// extensions.
#[derive(Clone)]
pub struct AuthInterceptor(pub Arc<Auth>);

impl tonic::service::Interceptor for AuthInterceptor {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let caller = self.0.authenticate(request.metadata())?;
        request.extensions_mut().insert(caller);
        Ok(request)
    }
}

/// The caller stored by [`AuthInterceptor`].
///
/// # Errors
///
/// `UNAUTHENTICATED` if the request did not pass through the interceptor (a wiring bug).
pub fn caller<T>(request: &Request<T>) -> Result<Caller, Status> {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("request was not authenticated"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::metadata::MetadataValue;

    fn auth_with(role: Role) -> (Auth, Secret) {
        let new = generate();
        let record = TokenRecord {
            id: new.id.clone(),
            org: OrgId::new("default"),
            role,
            name: "t".into(),
            digest: new.digest,
            created_at: SystemTime::now(),
            expires_at: None,
            revoked: false,
            agent: None,
        };
        let auth = Auth::new(vec![record], vec![]);
        (auth, new.secret)
    }

    fn md(value: &str) -> MetadataMap {
        let mut md = MetadataMap::new();
        md.insert(
            "authorization",
            MetadataValue::try_from(value).expect("ascii"),
        );
        md
    }

    #[test]
    fn secret_is_redacted() {
        let new = generate();
        assert!(!format!("{:?}", new.secret).contains(&new.secret.0));
        assert!(!format!("{}", new.secret).contains(&new.secret.0));
    }

    #[test]
    fn valid_token_authenticates() {
        let (auth, secret) = auth_with(Role::Viewer);
        let caller = auth
            .authenticate(&md(&format!("Bearer {}", secret.expose())))
            .expect("valid");
        assert_eq!(
            caller.principal,
            Principal::User {
                name: "t".into(),
                role: Role::Viewer
            }
        );
        assert!(caller.require(Role::Viewer).is_ok());
        assert!(caller.require(Role::Admin).is_err());
    }

    #[test]
    fn bad_tokens_are_unauthenticated() {
        let (auth, secret) = auth_with(Role::Admin);
        let tampered = format!("Bearer {}0", secret.expose());
        for header in [
            "",
            "Basic abc",
            "Bearer",
            "Bearer nonsense",
            "Bearer tether_",
            tampered.as_str(),
        ] {
            let err = auth.authenticate(&md(header)).expect_err(header);
            assert_eq!(err.code(), tonic::Code::Unauthenticated, "{header}");
            assert!(!err.message().contains(secret.expose()));
        }
        let err = auth.authenticate(&MetadataMap::new()).expect_err("missing");
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
    }
}
