//! Building gRPC clients for `AgentService`, authenticating calls, and enrollment.
//!
//! Every client comes from an explicitly configured [`tonic::transport::Endpoint`] (connect
//! timeout, HTTP/2 keepalive, `TCP_NODELAY`): the generated client has no `connect` helper
//! because the RPC named `Connect` would clash with it. `https://` URLs use TLS (rustls): the
//! server certificate is checked against `--ca-cert` (else the system's roots), and a client
//! certificate is presented when one is configured (mTLS). The files are read at every dial, so
//! renewed certificates are picked up on the next reconnect.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use tether_proto as pb;
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::AgentError;
use crate::collector::SystemInfo;
use crate::config::{ClientTls, DEFAULT_CONNECT_TIMEOUT};
use crate::convert;
use crate::state::{Credential, Enrollment};

/// Interval of HTTP/2 keepalive pings, which detect half-open connections.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
/// Largest message the agent accepts from the server.
pub const MAX_DECODING_MESSAGE_SIZE: usize = 4 * 1024 * 1024;
/// Deadline of one `Enroll` call.
pub const ENROLL_TIMEOUT: Duration = Duration::from_secs(30);
/// The header of a PEM certificate.
const PEM_CERT: &[u8] = b"-----BEGIN CERTIFICATE-----";

/// The generated client over a transport channel.
pub(crate) type AgentClient = pb::agent_service_client::AgentServiceClient<Channel>;

/// How a session reaches the server.
#[derive(Debug, Clone)]
pub(crate) enum Transport {
    /// Open a new connection for every session: what a real agent does.
    Dial {
        server_url: String,
        /// Local address to bind before connecting (the simulator spreads its connections
        /// over several loopback addresses); `None` lets the kernel choose.
        local_address: Option<IpAddr>,
        /// Certificates for an `https://` URL; `None` trusts the system's roots and presents
        /// no client certificate.
        tls: Option<ClientTls>,
    },
    /// Open the session as one more HTTP/2 stream on an existing channel, which many
    /// sessions share (the simulator's multiplexed mode). The channel reconnects by itself.
    Shared(Channel),
}

/// The endpoint every agent connection uses: connect timeout, HTTP/2 keepalive, `TCP_NODELAY`.
///
/// # Errors
///
/// [`AgentError::Config`] for a malformed URL.
pub(crate) fn endpoint(
    server_url: &str,
    local_address: Option<IpAddr>,
    connect_timeout: Duration,
) -> Result<Endpoint, AgentError> {
    Ok(Endpoint::from_shared(server_url.to_owned())
        .map_err(|err| AgentError::Config(format!("server url {server_url:?}: {err}")))?
        .connect_timeout(connect_timeout)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_while_idle(true)
        .tcp_nodelay(true)
        .local_address(local_address))
}

/// [`endpoint`] with TLS for an `https://` URL, configured from `tls`.
///
/// # Errors
///
/// [`AgentError::Config`] for a malformed URL or unusable certificate files.
pub(crate) fn endpoint_with_tls(
    server_url: &str,
    tls: Option<&ClientTls>,
    local_address: Option<IpAddr>,
    connect_timeout: Duration,
) -> Result<Endpoint, AgentError> {
    let endpoint = endpoint(server_url, local_address, connect_timeout)?;
    match tls_config(server_url, tls)? {
        None => Ok(endpoint),
        Some(config) => endpoint
            .tls_config(config)
            .map_err(|err| AgentError::Config(format!("TLS settings for {server_url:?}: {err}"))),
    }
}

/// The TLS configuration for `server_url`: `None` for `http://`; for `https://`, trust
/// `tls.ca_cert` (else the system's roots) and present `tls.client_cert`/`tls.client_key` if
/// set.
///
/// # Errors
///
/// [`AgentError::Config`] when a file cannot be read.
pub(crate) fn tls_config(
    server_url: &str,
    tls: Option<&ClientTls>,
) -> Result<Option<ClientTlsConfig>, AgentError> {
    if !server_url.starts_with("https://") {
        return Ok(None);
    }
    let read = |what: &str, path: &std::path::Path| {
        std::fs::read(path).map_err(|err| {
            AgentError::Config(format!("cannot read {what} {}: {err}", path.display()))
        })
    };
    let tls = tls.cloned().unwrap_or_default();
    let mut config = ClientTlsConfig::new();
    config = match &tls.ca_cert {
        Some(path) => {
            let pem = read("CA certificate", path)?;
            // An empty trust store would only fail at the first handshake: say so now.
            if !pem.windows(PEM_CERT.len()).any(|w| w == PEM_CERT) {
                return Err(AgentError::Config(format!(
                    "CA certificate {} holds no PEM certificate",
                    path.display()
                )));
            }
            config.ca_certificate(Certificate::from_pem(pem))
        }
        None => config.with_enabled_roots(),
    };
    match (&tls.client_cert, &tls.client_key) {
        (Some(cert), Some(key)) => {
            let identity =
                Identity::from_pem(read("client certificate", cert)?, read("client key", key)?);
            config = config.identity(identity);
        }
        (None, None) => {}
        _ => {
            return Err(AgentError::Config(
                "a client certificate needs both --client-cert and --client-key".into(),
            ));
        }
    }
    Ok(Some(config))
}

/// Opens a connection to `server_url` and wraps it in an `AgentService` client.
///
/// # Errors
///
/// [`AgentError::Config`] for a malformed URL, [`AgentError::Transport`] or
/// [`AgentError::Timeout`] when the server cannot be reached.
pub(crate) async fn connect_client(
    server_url: &str,
    tls: Option<&ClientTls>,
    connect_timeout: Duration,
) -> Result<AgentClient, AgentError> {
    Transport::Dial {
        server_url: server_url.to_owned(),
        local_address: None,
        tls: tls.cloned(),
    }
    .client(connect_timeout)
    .await
}

// === impl Transport ===

impl Transport {
    /// A client for one session: a fresh connection ([`Transport::Dial`]) or the shared one.
    ///
    /// # Errors
    ///
    /// As [`connect_client`].
    pub(crate) async fn client(
        &self,
        connect_timeout: Duration,
    ) -> Result<AgentClient, AgentError> {
        let channel = match self {
            Self::Dial {
                server_url,
                local_address,
                tls,
            } => {
                let endpoint =
                    endpoint_with_tls(server_url, tls.as_ref(), *local_address, connect_timeout)?;
                tokio::time::timeout(connect_timeout, endpoint.connect())
                    .await
                    .map_err(|_| AgentError::Timeout("the connection to the server"))??
            }
            Self::Shared(channel) => channel.clone(),
        };
        Ok(AgentClient::new(channel).max_decoding_message_size(MAX_DECODING_MESSAGE_SIZE))
    }
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
/// machine, as an agent a later enrollment cannot take over without that agent's credential
/// (it becomes a new agent, flagged `duplicate_hardware_id` with the abandoned one, which an
/// admin deletes).
pub async fn enroll(
    server_url: &str,
    enroll_token: &str,
    info: &SystemInfo,
    labels: &BTreeMap<String, String>,
    name: Option<&str>,
) -> Result<Enrollment, AgentError> {
    let client = connect_client(server_url, None, DEFAULT_CONNECT_TIMEOUT).await?;
    let request = EnrollCall {
        enroll_token,
        info,
        labels,
        name,
        previous: None,
    };
    enroll_on(client, &request).await
}

/// One enrollment's request: the token, what the machine says about itself, and the
/// credential it held before, if any (its proof of being that agent).
pub(crate) struct EnrollCall<'a> {
    pub(crate) enroll_token: &'a str,
    pub(crate) info: &'a SystemInfo,
    pub(crate) labels: &'a BTreeMap<String, String>,
    pub(crate) name: Option<&'a str>,
    pub(crate) previous: Option<&'a Credential>,
}

/// [`enroll`] with TLS settings, an explicit connect timeout, and maybe a previous credential.
pub(crate) async fn enroll_with_timeout(
    server_url: &str,
    tls: Option<&ClientTls>,
    connect_timeout: Duration,
    call: &EnrollCall<'_>,
) -> Result<Enrollment, AgentError> {
    let client = connect_client(server_url, tls, connect_timeout).await?;
    enroll_on(client, call).await
}

/// [`enroll`] over an existing client (the simulator enrolls thousands of agents over a few
/// shared connections).
pub(crate) async fn enroll_on(
    mut client: AgentClient,
    call: &EnrollCall<'_>,
) -> Result<Enrollment, AgentError> {
    let EnrollCall {
        enroll_token,
        info,
        labels,
        name,
        previous,
    } = *call;
    let mut request = tonic::Request::new(convert::enroll_request(info, labels, name, previous));
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
