//! Building gRPC clients for `AgentService`, authenticating calls, and enrollment.
//!
//! Every client comes from an explicitly configured [`tonic::transport::Endpoint`] (connect
//! timeout, HTTP/2 keepalive, `TCP_NODELAY`): the generated client has no `connect` helper
//! because the RPC named `Connect` would clash with it.

use std::collections::BTreeMap;
use std::time::Duration;

use tether_proto as pb;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};

use crate::AgentError;
use crate::collector::SystemInfo;
use crate::config::DEFAULT_CONNECT_TIMEOUT;
use crate::convert;
use crate::state::Enrollment;

/// Interval of HTTP/2 keepalive pings, which detect half-open connections.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
/// Largest message the agent accepts from the server.
pub const MAX_DECODING_MESSAGE_SIZE: usize = 4 * 1024 * 1024;
/// Deadline of one `Enroll` call.
pub const ENROLL_TIMEOUT: Duration = Duration::from_secs(30);

/// The generated client over a transport channel.
pub(crate) type AgentClient = pb::agent_service_client::AgentServiceClient<Channel>;

/// Opens a connection to `server_url` and wraps it in an `AgentService` client.
///
/// # Errors
///
/// [`AgentError::Config`] for a malformed URL, [`AgentError::Transport`] or
/// [`AgentError::Timeout`] when the server cannot be reached.
pub(crate) async fn connect_client(
    server_url: &str,
    connect_timeout: Duration,
) -> Result<AgentClient, AgentError> {
    let endpoint = Endpoint::from_shared(server_url.to_owned())
        .map_err(|err| AgentError::Config(format!("server url {server_url:?}: {err}")))?
        .connect_timeout(connect_timeout)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_while_idle(true)
        .tcp_nodelay(true);
    let channel = tokio::time::timeout(connect_timeout, endpoint.connect())
        .await
        .map_err(|_| AgentError::Timeout("the connection to the server"))??;
    Ok(AgentClient::new(channel).max_decoding_message_size(MAX_DECODING_MESSAGE_SIZE))
}

/// Adds `authorization: Bearer <token>` to `request`, marked sensitive so it never shows up in
/// debug output.
///
/// # Errors
///
/// [`AgentError::Config`] when the token contains characters not allowed in a header.
pub(crate) fn authorize<T>(request: &mut tonic::Request<T>, token: &str) -> Result<(), AgentError> {
    let mut value = MetadataValue::try_from(format!("Bearer {token}")).map_err(|_| {
        AgentError::Config("token contains characters not allowed in a header".into())
    })?;
    value.set_sensitive(true);
    request.metadata_mut().insert("authorization", value);
    Ok(())
}

/// Exchanges an enrollment token for an agent id and credential. Does not persist anything.
///
/// # Errors
///
/// [`AgentError::Transport`]/[`AgentError::Timeout`] when the server cannot be reached (both
/// retryable), [`AgentError::Rpc`] when the server refuses (`UNAUTHENTICATED` for a bad,
/// expired or used-up token), [`AgentError::Protocol`] for an incomplete response.
///
/// # Cancellation
///
/// Cancel-safe: dropping the future abandons the call; the server may still have enrolled the
/// agent, which a later enrollment of the same hardware id reuses.
pub async fn enroll(
    server_url: &str,
    enroll_token: &str,
    info: &SystemInfo,
    labels: &BTreeMap<String, String>,
    name: Option<&str>,
) -> Result<Enrollment, AgentError> {
    enroll_with_timeout(
        server_url,
        enroll_token,
        info,
        labels,
        name,
        DEFAULT_CONNECT_TIMEOUT,
    )
    .await
}

/// [`enroll`] with an explicit connect timeout.
pub(crate) async fn enroll_with_timeout(
    server_url: &str,
    enroll_token: &str,
    info: &SystemInfo,
    labels: &BTreeMap<String, String>,
    name: Option<&str>,
    connect_timeout: Duration,
) -> Result<Enrollment, AgentError> {
    let mut client = connect_client(server_url, connect_timeout).await?;
    let mut request = tonic::Request::new(convert::enroll_request(info, labels, name));
    request.set_timeout(ENROLL_TIMEOUT);
    authorize(&mut request, enroll_token)?;
    let response = tokio::time::timeout(ENROLL_TIMEOUT, client.enroll(request))
        .await
        .map_err(|_| AgentError::Timeout("the enrollment response"))??;
    Enrollment::try_from(response.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorization_header_is_bearer_and_sensitive() {
        let mut request = tonic::Request::new(());
        authorize(&mut request, "tok_123").expect("valid token");
        let value = request.metadata().get("authorization").expect("header set");
        assert!(value.is_sensitive());
        assert_eq!(value.to_str().expect("ascii"), "Bearer tok_123");
        assert!(!format!("{:?}", request.metadata()).contains("tok_123"));
    }

    #[test]
    fn rejects_token_with_newline() {
        let mut request = tonic::Request::new(());
        assert!(matches!(
            authorize(&mut request, "bad\ntoken"),
            Err(AgentError::Config(_))
        ));
    }
}
