//! The gate every request passes before reaching a handler: authentication, the access rule
//! of [`crate::access::RPC_ACCESS`], the per-token request rate, and the audit of refusals.
//!
//! It is a tower layer on the whole gRPC router, so it sees the method path (which a tonic
//! interceptor does not) and answers refusals itself. On success it stores the [`Caller`] in
//! the request's extensions, where handlers find it with [`crate::auth::caller`]. Health and
//! reflection need no token.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use futures::future::BoxFuture;
use tonic::Status;
use tonic::metadata::MetadataMap;

use crate::access;
use crate::audit::{RefusalAudits, RefusalKind};
use crate::auth::{Auth, Caller};
use crate::domain::{AuditEntry, TokenId};
use crate::metrics::{DenialLabels, Metrics};
use crate::rate::TokenBucket;

/// Paths served without a token.
const PUBLIC_PREFIXES: &[&str] = &["/grpc.health.v1.", "/grpc.reflection."];

/// What the audit trail records as the method of a call to a path with no access rule: the
/// path is the caller's choice (any length), so it is never stored as given.
pub const UNKNOWN_METHOD: &str = "(unknown method)";
/// Characters of an unknown path quoted in the refusal's message, for diagnosis.
const UNKNOWN_METHOD_PREVIEW: usize = 64;

/// A refused call: the status to answer with, and the audit entry that records it when the
/// token's refusal budget allows one. The response queues the entry before it is sent (the
/// writer's control queue is bounded: the request path waits for a slot, it never blocks a
/// thread on it).
#[derive(Debug)]
pub struct Refused {
    pub status: Status,
    pub audit: Option<Box<AuditEntry>>,
}

/// Per-token request budget: a token bucket.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateLimit {
    pub per_second: f64,
    pub burst: f64,
}

pub struct Gate {
    auth: Arc<Auth>,
    /// Refusals are audited within a per-token budget (see [`RefusalAudits`]).
    refusals: Arc<RefusalAudits>,
    metrics: Arc<Metrics>,
    rate: RateLimit,
    /// Each token's request budget.
    requests: Mutex<HashMap<TokenId, TokenBucket>>,
}

// === impl Gate ===

impl Gate {
    pub fn new(
        auth: Arc<Auth>,
        refusals: Arc<RefusalAudits>,
        metrics: Arc<Metrics>,
        rate: RateLimit,
    ) -> Self {
        Self {
            auth,
            refusals,
            metrics,
            rate,
            requests: Mutex::default(),
        }
    }

    /// Decides on one request: `Ok(None)` for public paths, `Ok(Some(caller))` to admit.
    ///
    /// The order is authentication, the token's request budget, then the access rule: a call
    /// that will be denied costs its caller a request like any other, so refusals are never a
    /// free way to load the server.
    ///
    /// # Errors
    ///
    /// The refusal to answer with (and to audit).
    pub fn admit(
        &self,
        method: &str,
        headers: &http::HeaderMap,
    ) -> Result<Option<Caller>, Refused> {
        if PUBLIC_PREFIXES.iter().any(|p| method.starts_with(p))
            || !method.starts_with(access::SERVICE_PREFIX)
        {
            // Unknown non-Tether paths fall through to tonic, which answers UNIMPLEMENTED.
            return Ok(None);
        }
        let metadata = MetadataMap::from_headers(headers.clone());
        let caller = match self.auth.authenticate(&metadata) {
            Ok(caller) => caller,
            Err(status) => {
                self.count(&status);
                // A known token that failed (revoked, expired, wrong secret) is audited in its
                // org; an unknown one has no org to be audited in and is only counted.
                let audit = self
                    .auth
                    .identify(&metadata)
                    .and_then(|claimed| self.audit(&claimed, method, &status, RefusalKind::Other));
                return Err(Refused { status, audit });
            }
        };
        let result = self
            .take(&caller, method)
            .and_then(|()| self.authorize(&caller, method));
        match result {
            Ok(()) => Ok(Some(caller)),
            Err(refused) => {
                self.count(&refused.status);
                Err(refused)
            }
        }
    }

    fn authorize(&self, caller: &Caller, method: &str) -> Result<(), Refused> {
        let Some((rule, _)) = access::rule(method) else {
            let preview: String = method.chars().take(UNKNOWN_METHOD_PREVIEW).collect();
            let ellipsis = if preview.len() < method.len() {
                "…"
            } else {
                ""
            };
            let status =
                Status::permission_denied(format!("no access rule for {preview:?}{ellipsis}"));
            let audit = self.audit(caller, method, &status, RefusalKind::Other);
            return Err(Refused { status, audit });
        };
        if access::allows(rule, &caller.principal) {
            return Ok(());
        }
        let need = access::requirement(rule);
        let status = Status::permission_denied(format!("{method} requires {need}"));
        let audit = self.audit(caller, method, &status, RefusalKind::Other);
        Err(Refused { status, audit })
    }

    /// Takes one request from the caller's budget.
    fn take(&self, caller: &Caller, method: &str) -> Result<(), Refused> {
        let now = Instant::now();
        let admitted = self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(caller.token.clone())
            .or_insert_with(|| TokenBucket::new(self.rate.per_second, self.rate.burst, now))
            .try_take(now);
        if admitted {
            return Ok(());
        }
        self.metrics.limit("token_request_rate");
        let status = Status::resource_exhausted(format!(
            "request rate of this token exceeds {} per second",
            self.rate.per_second
        ));
        let audit = self.audit(caller, method, &status, RefusalKind::Rate);
        Err(Refused { status, audit })
    }

    /// The audit entry of a refusal, if the token's budget allows one. Only methods with an
    /// access rule are recorded by name; any other path is [`UNKNOWN_METHOD`].
    fn audit(
        &self,
        caller: &Caller,
        method: &str,
        status: &Status,
        kind: RefusalKind,
    ) -> Option<Box<AuditEntry>> {
        let method = match access::rule(method) {
            Some(_) => method,
            None => UNKNOWN_METHOD,
        };
        self.refusals
            .refused(caller, method, "", status, kind)
            .map(Box::new)
    }

    fn count(&self, status: &Status) {
        let code = match status.code() {
            tonic::Code::Unauthenticated => "unauthenticated",
            tonic::Code::PermissionDenied => "permission_denied",
            tonic::Code::ResourceExhausted => "resource_exhausted",
            _ => "other",
        };
        self.metrics
            .denials
            .get_or_create(&DenialLabels { code })
            .inc();
    }
}

/// Tower layer putting a [`Gate`] in front of every service of the router.
#[derive(Clone)]
pub struct AuthLayer(pub Arc<Gate>);

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            gate: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    gate: Arc<Gate>,
}

impl<S, B> tower::Service<http::Request<B>> for AuthService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let method = request.uri().path().to_owned();
        match self.gate.admit(&method, request.headers()) {
            Ok(caller) => {
                if let Some(caller) = caller {
                    request.extensions_mut().insert(caller);
                }
                let response = self.inner.call(request);
                let gate = self.gate.clone();
                Box::pin(async move {
                    let mut response = response.await?;
                    if limit_status(&mut response) {
                        gate.metrics.limit("max_message_bytes");
                    }
                    Ok(response)
                })
            }
            Err(Refused { status, audit }) => {
                let gate = self.gate.clone();
                Box::pin(async move {
                    if let Some(entry) = audit {
                        gate.refusals.record(*entry).await;
                    }
                    Ok(status.into_http())
                })
            }
        }
    }
}

/// tonic refuses an over-limit request message with `OUT_OF_RANGE` before any handler runs (as
/// a trailers-only response, so the status is in the headers). Tether's contract for limits is
/// `RESOURCE_EXHAUSTED`; no Tether handler answers `OUT_OF_RANGE`, so every such answer is
/// that refusal. Returns whether it rewrote the status.
fn limit_status<B>(response: &mut http::Response<B>) -> bool {
    const OUT_OF_RANGE: &str = "11";
    const RESOURCE_EXHAUSTED: http::HeaderValue = http::HeaderValue::from_static("8");
    let headers = response.headers_mut();
    if headers
        .get("grpc-status")
        .is_some_and(|v| v.as_bytes() == OUT_OF_RANGE.as_bytes())
    {
        headers.insert("grpc-status", RESOURCE_EXHAUSTED);
        return true;
    }
    false
}
