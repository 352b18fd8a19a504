//! Authentication: bearer tokens, their in-memory cache, and the resolution of an
//! `authorization` header into a [`Caller`] (called by the gate, `gate.rs`).
//!
//! A token reads `tether_<id>_<secret>`: the id is public (it names the token in listings and
//! audit), the secret is 256 random bits, hex-encoded. Only the SHA-256 of the secret is stored;
//! it is compared in constant time. The cache holds every token of every org (rebuilt from the
//! store at start-up). Which caller may call which RPC is decided once, by `access.rs`.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::SystemTime;

use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;
use tonic::metadata::MetadataMap;
use tonic::{Request, Status};

use crate::domain::{
    AgentId, EnrollmentTokenRecord, OrgId, PresentedCredential, Role, SecretDigest, TokenId,
    TokenRecord,
};
use crate::error::ServerError;
use crate::writer::WriterHandle;

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

/// A new token of `org` with `role`, named `name`, created at `now`: its record (to store) and
/// its secret (to show once). The record does not expire, is not revoked, is bound to no agent
/// and is not the server admin; callers that need otherwise set those fields.
pub fn issue(org: OrgId, role: Role, name: String, now: SystemTime) -> (TokenRecord, Secret) {
    let new = generate();
    let record = TokenRecord {
        id: new.id,
        org,
        role,
        name,
        digest: new.digest,
        created_at: now,
        expires_at: None,
        revoked: false,
        agent: None,
        server_admin: false,
        last_used_at: None,
    };
    (record, new.secret)
}

fn digest(secret: &str) -> SecretDigest {
    Sha256::digest(secret.as_bytes()).into()
}

/// The token of an `authorization` header value: scheme `Bearer` (case-insensitive, as HTTP
/// auth schemes are), one or more spaces, the token.
fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Splits `tether_<id>_<secret>` into its id and secret.
fn parse_token(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix(TOKEN_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    (crate::domain::is_valid_id(id) && !secret.is_empty()).then_some((id, secret))
}

/// The id and secret digest of `token` (`tether_<id>_<secret>`), for verifying it later
/// without keeping the secret. `None` if it is not shaped like a Tether token.
pub fn presented(token: &str) -> Option<PresentedCredential> {
    let (id, secret) = parse_token(token)?;
    Some(PresentedCredential {
        id: TokenId::new(id),
        digest: digest(secret),
    })
}

/// What a presented agent credential proves, from [`Auth::check_agent_credential`].
#[derive(Clone, Debug, PartialEq)]
pub enum CredentialCheck {
    /// A valid credential of this agent.
    Valid(AgentId),
    /// A credential of this agent that was revoked (the agent was deleted).
    Revoked(AgentId),
    /// Unknown, wrong secret, not an agent credential, or another org's: proves nothing.
    Invalid,
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
    User {
        name: String,
        role: Role,
        server_admin: bool,
    },
    /// An agent credential, bound to one agent.
    Agent { agent: AgentId },
    /// An enrollment token: may call `Enroll` only.
    Enrollment,
}

/// The name of `role` on the wire and in messages.
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
    /// Last use per token, to the minute; persisted at most once a minute per token.
    last_used: Mutex<HashMap<TokenId, SystemTime>>,
    /// Cancelled when the token is revoked: every open stream authenticated by it ends.
    streams: Mutex<HashMap<TokenId, CancellationToken>>,
    /// Where last-use updates are persisted; set once the writer exists.
    writer: OnceLock<WriterHandle>,
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
            last_used: Mutex::default(),
            streams: Mutex::default(),
            writer: OnceLock::new(),
        }
    }

    /// Lets the cache persist last-use times.
    pub fn set_writer(&self, writer: WriterHandle) {
        let _ = self.writer.set(writer);
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
        let token = bearer(header).ok_or_else(|| {
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
            if record.revoked && record.role == Role::Agent {
                // Not retryable for the agent: it enrolls again only if it was given an
                // enrollment token, and stops otherwise. Marked so that it knows.
                return Err(tether_proto::refusal::refuse(
                    tonic::Code::PermissionDenied,
                    "agent credential has been revoked (the agent was deleted); enroll again",
                    tether_proto::refusal::Refusal::CredentialRevoked,
                ));
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
                    server_admin: record.server_admin,
                },
            };
            if record.role != Role::Agent {
                self.touch(&record, now);
            }
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

    /// Who a presented token claims to be, without verifying it: for auditing refused calls
    /// in the org the token belongs to. `None` for unparsable or unknown tokens.
    pub fn identify(&self, metadata: &MetadataMap) -> Option<Caller> {
        let header = metadata.get("authorization")?.to_str().ok()?;
        let (id, _) = parse_token(bearer(header)?)?;
        let id = TokenId::new(id);
        if let Some(record) = self
            .tokens
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
        {
            let principal = match (&record.agent, record.role) {
                (Some(agent), Role::Agent) => Principal::Agent {
                    agent: agent.clone(),
                },
                (_, role) => Principal::User {
                    name: record.name.clone(),
                    role,
                    server_admin: record.server_admin,
                },
            };
            return Some(Caller {
                org: record.org.clone(),
                token: id,
                principal,
            });
        }
        let enrollment = self.enrollment.lock().unwrap_or_else(|e| e.into_inner());
        enrollment.get(&id).map(|record| Caller {
            org: record.org.clone(),
            token: id.clone(),
            principal: Principal::Enrollment,
        })
    }

    /// Records a use of `record` at `now`, persisting it if the stored value is a minute old.
    fn touch(&self, record: &TokenRecord, now: SystemTime) {
        let minute = |t: SystemTime| {
            t.duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() / 60)
        };
        let mut last_used = self.last_used.lock().unwrap_or_else(|e| e.into_inner());
        let previous = last_used.get(&record.id).copied().or(record.last_used_at);
        if previous.is_some_and(|p| minute(p) == minute(now)) {
            return;
        }
        last_used.insert(record.id.clone(), now);
        drop(last_used);
        if let Some(writer) = self.writer.get() {
            writer.token_used(record.org.clone(), record.id.clone(), now);
        }
    }

    /// When `id` was last used (memory first, then the stored record).
    pub fn last_used(&self, record: &TokenRecord) -> Option<SystemTime> {
        self.last_used
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&record.id)
            .copied()
            .or(record.last_used_at)
    }

    /// A token cancelled when `id` is revoked: long-lived streams select on it.
    pub fn revocation(&self, id: &TokenId) -> CancellationToken {
        self.streams
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(id.clone())
            .or_default()
            .child_token()
    }

    /// Marks `id` revoked in the cache and ends every open stream using it. The caller
    /// persists the record.
    pub fn revoke_token(&self, id: &TokenId) -> Option<TokenRecord> {
        let mut tokens = self.tokens.write().unwrap_or_else(|e| e.into_inner());
        let current = tokens.get(id)?;
        let mut record = (**current).clone();
        record.revoked = true;
        tokens.insert(id.clone(), Arc::new(record.clone()));
        drop(tokens);
        if let Some(cancel) = self
            .streams
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id)
        {
            cancel.cancel();
        }
        Some(record)
    }

    /// The API tokens (not agent credentials) of `org`, oldest first.
    pub fn api_tokens(&self, org: &OrgId) -> Vec<TokenRecord> {
        let mut tokens: Vec<_> = self
            .tokens
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|t| &t.org == org && t.role != Role::Agent)
            .map(|t| (**t).clone())
            .collect();
        tokens.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        tokens
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
        self.all_agent_credentials(agent)
            .into_iter()
            .filter(|t| !t.revoked)
            .collect()
    }

    /// Every agent credential of `agent` the cache holds, revoked ones included.
    pub fn all_agent_credentials(&self, agent: &AgentId) -> Vec<TokenRecord> {
        self.tokens
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|t| t.role == Role::Agent && t.agent.as_ref() == Some(agent))
            .map(|t| (**t).clone())
            .collect()
    }

    /// What `presented` proves in `org`: compared in constant time, like any token.
    pub fn check_agent_credential(
        &self,
        org: &OrgId,
        presented: &PresentedCredential,
    ) -> CredentialCheck {
        let tokens = self.tokens.read().unwrap_or_else(|e| e.into_inner());
        let Some(record) = tokens.get(&presented.id) else {
            return CredentialCheck::Invalid;
        };
        let matches = bool::from(record.digest.ct_eq(&presented.digest));
        match (&record.agent, record.role) {
            (Some(agent), Role::Agent) if matches && &record.org == org => {
                if record.revoked {
                    CredentialCheck::Revoked(agent.clone())
                } else {
                    CredentialCheck::Valid(agent.clone())
                }
            }
            _ => CredentialCheck::Invalid,
        }
    }

    /// Whether token `id` is known and not revoked (its expiry is not checked).
    pub fn is_active(&self, id: &TokenId) -> bool {
        self.tokens
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .is_some_and(|t| !t.revoked)
    }

    /// Forgets the tokens `ids` (superseded agent credentials, already deleted from the store)
    /// and ends every open stream using them.
    pub fn remove_tokens(&self, ids: &[TokenId]) {
        let mut tokens = self.tokens.write().unwrap_or_else(|e| e.into_inner());
        for id in ids {
            tokens.remove(id);
        }
        drop(tokens);
        let mut last_used = self.last_used.lock().unwrap_or_else(|e| e.into_inner());
        for id in ids {
            last_used.remove(id);
        }
        drop(last_used);
        let mut streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        for id in ids {
            if let Some(cancel) = streams.remove(id) {
                cancel.cancel();
            }
        }
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

    /// Runs `f` on the cached enrollment token `id` (or `None`) under the cache's lock. Callers
    /// queue the record's write inside `f`, so concurrent writes of one token reach the store in
    /// the order their changes were made: a stale copy never overwrites a newer count or a
    /// revocation.
    pub fn with_enrollment<R>(
        &self,
        id: &TokenId,
        f: impl FnOnce(Option<&mut EnrollmentTokenRecord>) -> R,
    ) -> R {
        let mut tokens = self.enrollment.lock().unwrap_or_else(|e| e.into_inner());
        f(tokens.get_mut(id))
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

/// The caller stored by [`crate::gate::AuthLayer`].
///
/// # Errors
///
/// `UNAUTHENTICATED` if the request did not pass through the gate (a wiring bug).
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
    use crate::access::{self, Access};
    use tonic::metadata::MetadataValue;

    fn auth_with(role: Role) -> (Auth, Secret) {
        let (record, secret) = issue(OrgId::new("default"), role, "t".into(), SystemTime::now());
        let auth = Auth::new(vec![record], vec![]);
        (auth, secret)
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
                role: Role::Viewer,
                server_admin: false,
            }
        );
        let (viewer, admin) = (Access::AtLeast(Role::Viewer), Access::AtLeast(Role::Admin));
        assert!(access::allows(viewer, &caller.principal));
        assert!(!access::allows(admin, &caller.principal));
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
