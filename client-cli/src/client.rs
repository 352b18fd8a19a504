//! The connection to a Tether server: one configured `Channel`, an interceptor that adds the
//! bearer token to every request, and typed clients for the services the CLI calls.
//!
//! The channel is built from an explicit [`Endpoint`] (connect timeout [`CONNECT_TIMEOUT`]) and
//! connected eagerly, so an unreachable server is reported once, clearly, before any request.
//! Every call carries the `--request-timeout` deadline (default [`DEFAULT_TIMEOUT`]) for its answer to
//! begin, which also bounds connecting: a unary call's whole answer, a stream's headers (so a
//! watch, once answered, stays open as long as it runs). The
//! channel reconnects by itself, so a watch that broke (a server restart) is resumed on the same
//! [`Connection`].
//! `https://` servers are reached over TLS: the certificate must chain to `--ca-cert` (else to
//! the system's roots), and `--client-cert`/`--client-key` are presented when given (mTLS).

use std::fmt;
use std::time::Duration;

use tether_proto as pb;
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::CliError;
use crate::config::{Settings, TlsFiles};

/// How long establishing the TCP (and HTTP/2) connection may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Deadline of each unary request unless `--request-timeout` says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// The header of a PEM certificate.
const PEM_CERT: &[u8] = b"-----BEGIN CERTIFICATE-----";

/// Interval of HTTP/2 keepalive pings while a request (a watch) is open.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// How long a keepalive ping may go unanswered before the connection is dropped.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// The channel type every client is built on.
pub type AuthChannel = InterceptedService<Channel, AuthInterceptor>;
/// Client of `tether.v1.FleetService`.
pub type FleetClient = pb::fleet_service_client::FleetServiceClient<AuthChannel>;
/// Client of `tether.v1.AdminService`.
pub type AdminClient = pb::admin_service_client::AdminServiceClient<AuthChannel>;
/// Client of `tether.v1.CommandService`.
pub type CommandClient = pb::command_service_client::CommandServiceClient<AuthChannel>;
/// An `EventService` client.
pub type EventClient = pb::event_service_client::EventServiceClient<AuthChannel>;

/// A connected server.
#[derive(Clone)]
pub struct Connection {
    server: String,
    channel: Channel,
    auth: AuthInterceptor,
    /// Deadline of each unary request (`--request-timeout`).
    timeout: Duration,
}

/// Adds `authorization: Bearer <token>` to every request. Its `Debug` never shows the token.
#[derive(Clone)]
pub struct AuthInterceptor {
    header: AsciiMetadataValue,
}

// === impl Connection ===

impl Connection {
    /// Connects to `settings.server`.
    ///
    /// # Errors
    ///
    /// [`CliError::Usage`] if the URL cannot be used or the token holds characters that cannot
    /// travel in a header; [`CliError::Unreachable`] if no connection can be made.
    pub async fn connect(settings: &Settings) -> Result<Self, CliError> {
        let auth = AuthInterceptor::new(settings.token.expose())?;
        let server = settings.server.clone();
        let timeout = settings.timeout;
        let mut endpoint = Endpoint::from_shared(server.clone())
            .map_err(|err| CliError::Usage(format!("invalid server address `{server}`: {err}")))?
            .connect_timeout(CONNECT_TIMEOUT.min(timeout))
            // Every call's deadline for its answer to begin: a unary call's whole answer, a
            // stream's headers (a watch then stays open as long as it runs).
            .timeout(timeout)
            .tcp_nodelay(true)
            // A long `agents watch` notices a vanished server instead of waiting forever.
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT);
        if server.starts_with("https://") {
            endpoint = endpoint
                .tls_config(tls_config(&settings.tls)?)
                .map_err(|err| CliError::Usage(format!("TLS settings for {server}: {err}")))?;
        }
        let channel = tokio::time::timeout(timeout, endpoint.connect())
            .await
            .map_err(|_| CliError::Timeout {
                server: server.clone(),
                message: format!(
                    "no connection within {} (--request-timeout)",
                    humantime::format_duration(timeout)
                ),
            })?
            .map_err(|err| CliError::from_transport(&err, &server))?;
        Ok(Self {
            server,
            channel,
            auth,
            timeout,
        })
    }

    /// The server URL, for messages.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// A `FleetService` client sharing this connection.
    pub fn fleet(&self) -> FleetClient {
        pb::fleet_service_client::FleetServiceClient::with_interceptor(
            self.channel.clone(),
            self.auth.clone(),
        )
    }

    /// An `AdminService` client sharing this connection.
    pub fn admin(&self) -> AdminClient {
        pb::admin_service_client::AdminServiceClient::with_interceptor(
            self.channel.clone(),
            self.auth.clone(),
        )
    }

    /// A `CommandService` client sharing this connection.
    pub fn commands(&self) -> CommandClient {
        pb::command_service_client::CommandServiceClient::with_interceptor(
            self.channel.clone(),
            self.auth.clone(),
        )
    }

    /// An `EventService` client sharing this connection.
    pub fn events(&self) -> EventClient {
        pb::event_service_client::EventServiceClient::with_interceptor(
            self.channel.clone(),
            self.auth.clone(),
        )
    }

    /// Maps a status from this server (see [`CliError::from_status`]); a deadline that passed
    /// is named with its length.
    pub fn error(&self, status: &tonic::Status, what: Option<&str>) -> CliError {
        match CliError::from_status(status, &self.server, what) {
            CliError::Timeout { server, .. } => CliError::Timeout {
                server,
                message: format!(
                    "no answer within {} (--request-timeout)",
                    humantime::format_duration(self.timeout)
                ),
            },
            err => err,
        }
    }
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

/// The TLS configuration for an `https://` server: trust `files.ca_cert` (else the system's
/// roots) and present the client certificate if one is given.
///
/// # Errors
///
/// [`CliError::Usage`] when a file cannot be read.
pub fn tls_config(files: &TlsFiles) -> Result<ClientTlsConfig, CliError> {
    let read = |what: &str, path: &std::path::Path| {
        std::fs::read(path)
            .map_err(|err| CliError::Usage(format!("cannot read {what} {}: {err}", path.display())))
    };
    let mut config = ClientTlsConfig::new();
    config = match &files.ca_cert {
        Some(path) => {
            let pem = read("CA certificate", path)?;
            // An empty trust store would only fail at the handshake, less clearly.
            if !pem.windows(PEM_CERT.len()).any(|w| w == PEM_CERT) {
                return Err(CliError::Usage(format!(
                    "CA certificate {} holds no PEM certificate",
                    path.display()
                )));
            }
            config.ca_certificate(Certificate::from_pem(pem))
        }
        None => config.with_enabled_roots(),
    };
    if let (Some(cert), Some(key)) = (&files.client_cert, &files.client_key) {
        config = config.identity(Identity::from_pem(
            read("client certificate", cert)?,
            read("client key", key)?,
        ));
    }
    Ok(config)
}

// === impl AuthInterceptor ===

impl AuthInterceptor {
    /// An interceptor presenting `token`.
    ///
    /// # Errors
    ///
    /// [`CliError::Usage`] if the token contains characters not allowed in a header value.
    pub fn new(token: &str) -> Result<Self, CliError> {
        let mut header: AsciiMetadataValue = MetadataValue::try_from(format!("Bearer {token}"))
            .map_err(|_| {
                CliError::Usage(
                    "the API token contains characters that cannot be sent in a header".to_owned(),
                )
            })?;
        header.set_sensitive(true);
        Ok(Self { header })
    }
}

impl tonic::service::Interceptor for AuthInterceptor {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request
            .metadata_mut()
            .insert("authorization", self.header.clone());
        Ok(request)
    }
}

impl fmt::Debug for AuthInterceptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuthInterceptor(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::service::Interceptor as _;

    #[test]
    fn interceptor_adds_bearer_header() {
        let mut auth = AuthInterceptor::new("s3cret").expect("valid token");
        let request = auth.call(tonic::Request::new(())).expect("passes");
        assert_eq!(
            request
                .metadata()
                .get("authorization")
                .map(|v| v.to_str().expect("ascii")),
            Some("Bearer s3cret")
        );
        assert!(!format!("{auth:?}").contains("s3cret"));
    }

    #[test]
    fn token_with_newline_is_rejected() {
        assert!(matches!(
            AuthInterceptor::new("a\nb"),
            Err(CliError::Usage(_))
        ));
    }

    #[tokio::test]
    async fn unreachable_server_is_reported_plainly() {
        // Bind then drop a listener, so the port is (almost certainly) closed.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let settings = Settings {
            server: format!("http://{addr}"),
            token: crate::config::Secret::new("t"),
            tls: TlsFiles::default(),
            timeout: DEFAULT_TIMEOUT,
        };
        let err = Connection::connect(&settings)
            .await
            .expect_err("nothing listens");
        assert_eq!(
            err.to_string(),
            format!("cannot reach Tether server at http://{addr}: connection refused")
        );
    }
}
