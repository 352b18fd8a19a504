//! One webhook attempt: an HTTP/1.1 POST on a connection of its own (plain TCP, or TLS with the
//! system's roots through rustls), and what its answer means for a retry.
//!
//! A connection per attempt keeps nothing between notifications (webhooks are called when
//! alerts change, seconds or hours apart) and lets the caller's timeout bound the whole
//! attempt: resolving, connecting, the handshake, sending and the response head. The body of
//! the answer is not read.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::rustls;

/// Why an attempt failed, and whether trying again may help.
#[derive(Debug, thiserror::Error)]
pub enum PostError {
    /// Connection refused or reset, timeout, TLS failure, a 5xx, 408 or 429: try again.
    #[error("{0}")]
    Transient(String),
    /// Any other 4xx (or a URL that cannot work): the receiver refuses this request, so the
    /// same one will fail again.
    #[error("{0}")]
    Permanent(String),
}

/// The TLS settings of every webhook: rustls with the ring provider (as the listener) and the
/// platform's trusted roots.
pub fn tls_config() -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for error in &found.errors {
        tracing::warn!("webhooks: cannot load a system root certificate: {error}");
    }
    let (added, ignored) = roots.add_parsable_certificates(found.certs);
    tracing::debug!(added, ignored, "webhooks: system root certificates");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map(|b| b.with_root_certificates(roots).with_no_client_auth());
    match config {
        Ok(config) => Arc::new(config),
        Err(e) => {
            // The ring provider supports the default versions; this cannot happen, and if it
            // did, https webhooks would fail to connect (and say so) rather than the server.
            tracing::error!("webhooks: TLS configuration failed: {e}");
            Arc::new(
                rustls::ClientConfig::builder()
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth(),
            )
        }
    }
}

/// POSTs `body` to `url` with `headers`.
///
/// # Errors
///
/// [`PostError`]: transient failures (network, TLS, 5xx, 408, 429) and permanent ones (other
/// 4xx, a URL that cannot be dialled).
///
/// # Cancel safety
///
/// Dropping the future abandons the attempt and closes its connection.
pub async fn post(
    url: &str,
    headers: &[(&'static str, String)],
    body: Bytes,
    tls: &Arc<rustls::ClientConfig>,
) -> Result<http::StatusCode, PostError> {
    let permanent = |m: String| PostError::Permanent(m);
    let uri: http::Uri = url
        .parse()
        .map_err(|e| permanent(format!("bad url: {e}")))?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(permanent("the url must be http or https".to_owned())),
    };
    let authority = uri
        .authority()
        .ok_or_else(|| permanent("the url has no host".to_owned()))?
        .clone();
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
    let path = uri
        .path_and_query()
        .map_or("/", http::uri::PathAndQuery::as_str);
    let mut request = http::Request::post(path)
        .header(http::header::HOST, authority.as_str())
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(
            http::header::USER_AGENT,
            concat!("tether-server/", env!("CARGO_PKG_VERSION")),
        );
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let request = request
        .body(Full::new(body))
        .map_err(|e| permanent(format!("cannot build the request: {e}")))?;
    let tcp = TcpStream::connect((host, port))
        .await
        .map_err(|e| PostError::Transient(format!("cannot connect to {authority}: {e}")))?;
    // Small requests, answered once: no Nagle delay.
    let _ = tcp.set_nodelay(true);
    let status = if https {
        let name = rustls::pki_types::ServerName::try_from(host.to_owned())
            .map_err(|e| permanent(format!("bad TLS server name {host}: {e}")))?;
        let stream = tokio_rustls::TlsConnector::from(tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| PostError::Transient(format!("TLS with {authority} failed: {e}")))?;
        send(stream, request).await?
    } else {
        send(tcp, request).await?
    };
    classify(status)
}

async fn send<S>(
    stream: S,
    request: http::Request<Full<Bytes>>,
) -> Result<http::StatusCode, PostError>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let transient = |e: hyper::Error| PostError::Transient(format!("HTTP: {e}"));
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(transient)?;
    let mut connection = std::pin::pin!(connection);
    tokio::select! {
        response = sender.send_request(request) => Ok(response.map_err(transient)?.status()),
        ended = &mut connection => match ended {
            Ok(()) => Err(PostError::Transient("the receiver closed the connection".to_owned())),
            Err(e) => Err(transient(e)),
        },
    }
}

/// What an answer's status means: success, worth another try, or a refusal.
fn classify(status: http::StatusCode) -> Result<http::StatusCode, PostError> {
    if status.is_success() {
        Ok(status)
    } else if status.is_server_error()
        || status == http::StatusCode::REQUEST_TIMEOUT
        || status == http::StatusCode::TOO_MANY_REQUESTS
    {
        Err(PostError::Transient(format!(
            "the receiver answered {status}"
        )))
    } else {
        Err(PostError::Permanent(format!(
            "the receiver answered {status}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_errors_and_throttling_are_retried_other_refusals_are_not() {
        use http::StatusCode as S;
        assert!(classify(S::OK).is_ok());
        assert!(classify(S::NO_CONTENT).is_ok());
        for status in [
            S::INTERNAL_SERVER_ERROR,
            S::BAD_GATEWAY,
            S::REQUEST_TIMEOUT,
            S::TOO_MANY_REQUESTS,
        ] {
            assert!(
                matches!(classify(status), Err(PostError::Transient(_))),
                "{status}"
            );
        }
        for status in [
            S::BAD_REQUEST,
            S::UNAUTHORIZED,
            S::NOT_FOUND,
            S::MOVED_PERMANENTLY,
        ] {
            assert!(
                matches!(classify(status), Err(PostError::Permanent(_))),
                "{status}"
            );
        }
    }
}
