//! Counts and times every RPC: a tower layer outside the gate, so refused calls are counted
//! with the code they were refused with.
//!
//! A call is recorded once, when its response ends: at the trailers (or the trailers-only
//! headers) that carry its `grpc-status`, or, if the client goes away first, as `CANCELLED`
//! when the response is dropped. Streams are recorded when they end, with their whole life as
//! their duration. The `method` label is the path of a method the server serves, or `unknown`:
//! the path is the caller's choice, so it never becomes a label value as given.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use futures::future::BoxFuture;
use http_body::{Frame, SizeHint};

use super::{MethodLabels, Metrics, RpcLabels};

/// Methods served besides Tether's own (which are [`crate::access::RPC_ACCESS`]'s rows).
const PUBLIC_METHODS: &[&str] = &[
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];

/// The `method` label of a request path: the served method without its leading `/`
/// (`tether.v1.FleetService/ListAgents`), or `unknown`.
pub fn method_label(path: &str) -> &'static str {
    crate::access::RPC_ACCESS
        .iter()
        .map(|(method, _, _)| *method)
        .chain(PUBLIC_METHODS.iter().copied())
        .find(|method| *method == path)
        .map_or("unknown", |method| &method[1..])
}

/// Tower layer recording every call in [`Metrics`].
#[derive(Clone)]
pub struct RpcMetricsLayer(pub Arc<Metrics>);

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetricsService {
            inner,
            metrics: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct RpcMetricsService<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, B> tower::Service<http::Request<B>> for RpcMetricsService<S>
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

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let mut call = Call::start(self.metrics.clone(), method_label(request.uri().path()));
        let response = self.inner.call(request);
        Box::pin(async move {
            let (parts, body) = response.await?.into_parts();
            call.code = code_of(&parts.headers);
            let body = tonic::body::Body::new(MeteredBody { inner: body, call });
            Ok(http::Response::from_parts(parts, body))
        })
    }
}

/// One call being served: recorded once, when it ends or is dropped.
struct Call {
    metrics: Arc<Metrics>,
    method: &'static str,
    started: Instant,
    /// The status, once the response carried one.
    code: Option<tonic::Code>,
    recorded: bool,
}

impl Call {
    fn start(metrics: Arc<Metrics>, method: &'static str) -> Self {
        metrics
            .rpc_in_flight
            .get_or_create(&MethodLabels { method })
            .inc();
        Self {
            metrics,
            method,
            started: Instant::now(),
            code: None,
            recorded: false,
        }
    }

    fn record(&mut self) {
        if std::mem::replace(&mut self.recorded, true) {
            return;
        }
        let method = self.method;
        let code = code_name(self.code.unwrap_or(tonic::Code::Cancelled));
        let labels = RpcLabels { method, code };
        self.metrics.rpc_requests.get_or_create(&labels).inc();
        self.metrics
            .rpc_duration_seconds
            .get_or_create(&labels)
            .observe(self.started.elapsed().as_secs_f64());
        self.metrics
            .rpc_in_flight
            .get_or_create(&MethodLabels { method })
            .dec();
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.record();
    }
}

/// A response body that records its call when it ends.
struct MeteredBody {
    inner: tonic::body::Body,
    call: Call,
}

impl http_body::Body for MeteredBody {
    type Data = <tonic::body::Body as http_body::Body>::Data;
    type Error = <tonic::body::Body as http_body::Body>::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(code_of) {
                    this.call.code = Some(code);
                }
            }
            Poll::Ready(Some(Err(status))) => this.call.code = Some(status.code()),
            Poll::Ready(None) => this.call.record(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The `grpc-status` in headers or trailers.
fn code_of(headers: &http::HeaderMap) -> Option<tonic::Code> {
    let value = headers.get("grpc-status")?.to_str().ok()?;
    Some(tonic::Code::from_i32(value.parse().ok()?))
}

/// The canonical name of a gRPC status code (`INVALID_ARGUMENT`), as gRPC's own tools print it.
pub(super) fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}
