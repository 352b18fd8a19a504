//! TLS on the gRPC listener (rustls, ring provider), the client-certificate identity used by
//! mTLS, and the development certificate authority behind `tether-server gen-certs`.
//!
//! [`server_config`] turns [`TlsSettings`] into a rustls `ServerConfig` (ALPN `h2`; with a
//! client CA, client certificates are optional but verified when presented, so operators' CLI
//! connects without one while agents present theirs). [`incoming`] accepts TCP connections and
//! runs each handshake on its own short-lived task under the handshake timeout, yielding only
//! established streams, which `Server::serve` hands to tonic. tonic implements `Connected` for
//! `tokio_rustls::server::TlsStream<TcpStream>`, so handlers read the verified peer chain with
//! `request.peer_certs()`; [`peer_identity`] turns it into the identity that mTLS compares with
//! the agent id.

use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

use crate::config::TlsSettings;

/// The only application protocol the listener speaks.
pub const ALPN_H2: &[u8] = b"h2";

/// Established TLS connections waiting for tonic to pick them up.
const ESTABLISHED_QUEUE: usize = 128;
/// Pause after a failed `accept` (e.g. out of file descriptors) before trying again.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// File names written by [`generate_dev_certs`].
pub const CA_CERT_FILE: &str = "ca.pem";
pub const CA_KEY_FILE: &str = "ca-key.pem";
pub const SERVER_CERT_FILE: &str = "server.pem";
pub const SERVER_KEY_FILE: &str = "server-key.pem";
pub const CLIENT_CERT_FILE: &str = "client.pem";
pub const CLIENT_KEY_FILE: &str = "client-key.pem";
/// Common name of the CLI's client certificate.
pub const CLIENT_CERT_NAME: &str = "tetherctl";
/// How long generated leaf certificates are valid.
pub const DEV_CERT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// How long the generated CA is valid.
pub const DEV_CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// TLS material that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{what} {path} is not usable: {reason}")]
    Parse {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("invalid TLS configuration: {0}")]
    Config(String),
    #[error("cannot generate certificates: {0}")]
    Generate(String),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The files [`generate_dev_certs`] wrote.
#[derive(Clone, Debug)]
pub struct DevCerts {
    pub dir: PathBuf,
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// The CLI's client certificate (common name [`CLIENT_CERT_NAME`]).
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// One client certificate per requested agent: `(agent id, cert, key)`.
    pub agents: Vec<(String, PathBuf, PathBuf)>,
    /// Whether an existing CA in the directory was reused rather than created.
    pub reused_ca: bool,
}

// === server configuration ===

/// Loads the certificate chain, key and optional client CA named by `settings` into a rustls
/// server configuration.
///
/// # Errors
///
/// [`TlsError::Read`] for a missing or unreadable file, [`TlsError::Parse`] for one without the
/// expected PEM content, [`TlsError::Config`] when rustls refuses the combination (e.g. the key
/// does not belong to the certificate).
pub fn server_config(settings: &TlsSettings) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let chain = load_certs("TLS certificate", &settings.cert)?;
    let key = load_key("TLS key", &settings.key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match &settings.client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let what = "client CA";
            let mut roots = rustls::RootCertStore::empty();
            for cert in load_certs(what, path)? {
                roots.add(cert).map_err(|e| TlsError::Parse {
                    what,
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    // Operators' CLI and enrolling agents come without a certificate; one that
                    // is presented must chain to the CA or the handshake fails.
                    .allow_unauthenticated()
                    .build()
                    .map_err(|e| TlsError::Config(format!("client CA {}: {e}", path.display())))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Config(format!("{}: {e}", settings.cert.display())))?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// Reads every PEM certificate in `path`.
///
/// # Errors
///
/// [`TlsError::Read`] or [`TlsError::Parse`] (also when the file holds no certificate).
pub fn load_certs(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(what, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Parse {
            what,
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Parse {
            what,
            path: path.to_owned(),
            reason: "no PEM certificate found".to_owned(),
        });
    }
    Ok(certs)
}

/// Reads the first PEM private key in `path`.
///
/// # Errors
///
/// [`TlsError::Read`] or [`TlsError::Parse`] (also when the file holds no key). The key's bytes
/// never appear in the error.
pub fn load_key(what: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(what, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::Parse {
        what,
        path: path.to_owned(),
        reason: match e {
            rustls_pki_types::pem::Error::NoItemsFound => "no PEM private key found".to_owned(),
            _ => "not a PEM private key (PKCS#8, PKCS#1 or SEC1)".to_owned(),
        },
    })
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

// === accept loop ===

/// Accepts connections on `listener` and performs each TLS handshake on its own task, closing
/// connections whose handshake does not complete within `handshake_timeout`. The returned
/// stream yields established connections only (it never yields an error), for tonic's
/// `serve_with_incoming_shutdown`.
///
/// The accept task ends when the returned stream is dropped (tonic drops it when it stops
/// accepting, at shutdown); it then closes the listener. Handshakes in flight end on their own
/// within the timeout.
pub fn incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    handshake_timeout: Duration,
) -> ReceiverStream<Result<TlsStream<TcpStream>, io::Error>> {
    let (tx, rx) = mpsc::channel(ESTABLISHED_QUEUE);
    tokio::spawn(accept_loop(
        listener,
        TlsAcceptor::from(config),
        handshake_timeout,
        tx,
    ));
    ReceiverStream::new(rx)
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    handshake_timeout: Duration,
    tx: mpsc::Sender<Result<TlsStream<TcpStream>, io::Error>>,
) {
    loop {
        let accepted = tokio::select! {
            () = tx.closed() => return,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Per-connection failures (reset before accept) and resource exhaustion alike:
                // log, pause briefly so a full descriptor table does not spin, and go on.
                tracing::warn!("failed to accept a connection: {e}");
                tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                continue;
            }
        };
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(%peer, "cannot set TCP_NODELAY: {e}");
        }
        let acceptor = acceptor.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    // A failed send means the server stopped accepting: the stream is dropped.
                    let _ = tx.send(Ok(stream)).await;
                }
                Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake failed: {e}"),
                Err(_) => tracing::debug!(
                    %peer,
                    timeout = ?handshake_timeout,
                    "TLS handshake timed out; closing the connection"
                ),
            }
        });
    }
}

// === peer identity ===

/// The identity of the verified client certificate the peer presented on this request's
/// connection: its subject Common Name, else its first DNS subject alternative name. `None`
/// on plaintext connections, when the client presented no certificate, or when the server has
/// no client CA (it then never asks for one).
pub fn peer_identity<T>(request: &tonic::Request<T>) -> Option<String> {
    let certs = request.peer_certs()?;
    cert_identity(certs.first()?)
}

/// The Common Name of `cert` (DER), else its first DNS subject alternative name.
pub fn cert_identity(cert: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert).ok()?;
    if let Some(cn) = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .filter(|cn| !cn.is_empty())
    {
        return Some(cn.to_owned());
    }
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|name| match name {
        x509_parser::extensions::GeneralName::DNSName(dns) => Some((*dns).to_owned()),
        _ => None,
    })
}

// === development certificates ===

/// Writes a development CA, a server certificate for `hosts` (DNS names or IP addresses), a
/// client certificate for the CLI and one per agent id in `agents` (Common Name = the agent id,
/// as mTLS requires) into `dir`. Private keys are written with mode 0600.
///
/// An existing CA in `dir` (`ca.pem` + `ca-key.pem`) is reused, so client certificates for
/// agents enrolled later can be added with the same trust root; everything else is rewritten.
///
/// # Errors
///
/// [`TlsError::Config`] for an empty host list or an agent id that is not a valid id,
/// [`TlsError::Generate`] when a certificate cannot be built, [`TlsError::Read`]/
/// [`TlsError::Parse`] for an unusable existing CA, [`TlsError::Write`] when a file cannot be
/// written.
pub fn generate_dev_certs(
    dir: &Path,
    hosts: &[String],
    agents: &[String],
) -> Result<DevCerts, TlsError> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };

    let gen_err = |e: rcgen::Error| TlsError::Generate(e.to_string());
    let hosts: Vec<String> = hosts
        .iter()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .collect();
    if hosts.is_empty() {
        return Err(TlsError::Config(
            "the server certificate needs at least one host".to_owned(),
        ));
    }
    for id in agents {
        if !crate::domain::is_valid_id(id) {
            return Err(TlsError::Config(format!(
                "agent id {id:?} is not a valid id (1-64 characters of a-z, 0-9 and -)"
            )));
        }
    }
    crate::server::create_private_dir(dir).map_err(|source| TlsError::Write {
        path: dir.to_owned(),
        source,
    })?;

    let now = SystemTime::now();
    let validity = |for_: Duration| -> Result<_, TlsError> {
        let ts = |t: SystemTime| {
            let secs = t
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_err(|e| TlsError::Generate(e.to_string()))?
                .as_secs();
            let secs = i64::try_from(secs).map_err(|e| TlsError::Generate(e.to_string()))?;
            x509_parser::time::ASN1Time::from_timestamp(secs)
                .map(|t| t.to_datetime())
                .map_err(|e| TlsError::Generate(e.to_string()))
        };
        // Backdated an hour so a peer whose clock is slightly behind accepts it.
        Ok((ts(now - Duration::from_secs(3600))?, ts(now + for_)?))
    };

    let ca_cert_path = dir.join(CA_CERT_FILE);
    let ca_key_path = dir.join(CA_KEY_FILE);
    let reused_ca = ca_cert_path.exists() && ca_key_path.exists();
    let (ca_pem, ca_key) = if reused_ca {
        let key_pem =
            String::from_utf8(read("CA key", &ca_key_path)?).map_err(|_| TlsError::Parse {
                what: "CA key",
                path: ca_key_path.clone(),
                reason: "not PEM text".to_owned(),
            })?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| TlsError::Parse {
            what: "CA key",
            path: ca_key_path.clone(),
            reason: e.to_string(),
        })?;
        let cert_pem = String::from_utf8(read("CA certificate", &ca_cert_path)?).map_err(|_| {
            TlsError::Parse {
                what: "CA certificate",
                path: ca_cert_path.clone(),
                reason: "not PEM text".to_owned(),
            }
        })?;
        (cert_pem, key)
    } else {
        let key = KeyPair::generate().map_err(gen_err)?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(gen_err)?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "Tether development CA");
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Tether");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        (params.not_before, params.not_after) = validity(DEV_CA_VALIDITY)?;
        let cert = params.self_signed(&key).map_err(gen_err)?;
        write_file(&ca_cert_path, &cert.pem(), false)?;
        write_file(&ca_key_path, &key.serialize_pem(), true)?;
        (cert.pem(), key)
    };
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, &ca_key).map_err(|e| TlsError::Parse {
        what: "CA certificate",
        path: ca_cert_path.clone(),
        reason: e.to_string(),
    })?;

    let leaf = |common_name: &str,
                sans: Vec<String>,
                usage: ExtendedKeyUsagePurpose,
                cert_path: &Path,
                key_path: &Path|
     -> Result<(), TlsError> {
        let key = KeyPair::generate().map_err(gen_err)?;
        let mut params = CertificateParams::new(sans).map_err(gen_err)?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![usage];
        params.use_authority_key_identifier_extension = true;
        (params.not_before, params.not_after) = validity(DEV_CERT_VALIDITY)?;
        let cert = params.signed_by(&key, &issuer).map_err(gen_err)?;
        write_file(cert_path, &cert.pem(), false)?;
        write_file(key_path, &key.serialize_pem(), true)
    };

    let server_cert = dir.join(SERVER_CERT_FILE);
    let server_key = dir.join(SERVER_KEY_FILE);
    let server_name = hosts
        .iter()
        .find(|h| h.parse::<IpAddr>().is_err())
        .unwrap_or(&hosts[0])
        .clone();
    leaf(
        &server_name,
        hosts.clone(),
        ExtendedKeyUsagePurpose::ServerAuth,
        &server_cert,
        &server_key,
    )?;
    let client_cert = dir.join(CLIENT_CERT_FILE);
    let client_key = dir.join(CLIENT_KEY_FILE);
    leaf(
        CLIENT_CERT_NAME,
        Vec::new(),
        ExtendedKeyUsagePurpose::ClientAuth,
        &client_cert,
        &client_key,
    )?;
    let mut agent_certs = Vec::with_capacity(agents.len());
    for id in agents {
        let cert = dir.join(format!("agent-{id}.pem"));
        let key = dir.join(format!("agent-{id}-key.pem"));
        leaf(
            id,
            Vec::new(),
            ExtendedKeyUsagePurpose::ClientAuth,
            &cert,
            &key,
        )?;
        agent_certs.push((id.clone(), cert, key));
    }
    Ok(DevCerts {
        dir: dir.to_owned(),
        ca_cert: ca_cert_path,
        ca_key: ca_key_path,
        server_cert,
        server_key,
        client_cert,
        client_key,
        agents: agent_certs,
        reused_ca,
    })
}

/// Writes `contents` to `path` atomically; mode 0600 when `private`, else 0644.
fn write_file(path: &Path, contents: &str, private: bool) -> Result<(), TlsError> {
    use std::io::Write as _;
    let write = || -> io::Result<()> {
        let tmp = path.with_extension("pem.tmp");
        let _ = std::fs::remove_file(&tmp);
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(if private { 0o600 } else { 0o644 });
        }
        let mut file = options.open(&tmp)?;
        file.write_all(contents.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|source| TlsError::Write {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts() -> Vec<String> {
        vec!["localhost".to_owned(), "127.0.0.1".to_owned()]
    }

    #[test]
    fn generated_certs_load_and_carry_identities() {
        let dir = tempfile::tempdir().expect("tempdir");
        let certs =
            generate_dev_certs(dir.path(), &hosts(), &["agent-1".to_owned()]).expect("generate");
        assert!(!certs.reused_ca);
        let mut settings = TlsSettings::new(&certs.server_cert, &certs.server_key);
        server_config(&settings).expect("server config without client CA");
        settings.client_ca = Some(certs.ca_cert.clone());
        let config = server_config(&settings).expect("server config with client CA");
        assert_eq!(config.alpn_protocols, vec![ALPN_H2.to_vec()]);

        let (id, cert, _) = &certs.agents[0];
        let der = load_certs("agent cert", cert).expect("agent cert");
        assert_eq!(cert_identity(&der[0]).as_deref(), Some(id.as_str()));
        let der = load_certs("client cert", &certs.client_cert).expect("client cert");
        assert_eq!(cert_identity(&der[0]).as_deref(), Some(CLIENT_CERT_NAME));
        let der = load_certs("server cert", &certs.server_cert).expect("server cert");
        assert_eq!(cert_identity(&der[0]).as_deref(), Some("localhost"));
    }

    #[cfg(unix)]
    #[test]
    fn keys_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let certs = generate_dev_certs(dir.path(), &hosts(), &["a1".to_owned()]).expect("gen");
        for key in [
            &certs.ca_key,
            &certs.server_key,
            &certs.client_key,
            &certs.agents[0].2,
        ] {
            let mode = std::fs::metadata(key).expect("stat").permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", key.display());
        }
    }

    #[test]
    fn existing_ca_is_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = generate_dev_certs(dir.path(), &hosts(), &[]).expect("first");
        let ca = std::fs::read(&first.ca_cert).expect("ca");
        let second = generate_dev_certs(dir.path(), &hosts(), &["later".to_owned()]).expect("2nd");
        assert!(second.reused_ca);
        assert_eq!(std::fs::read(&second.ca_cert).expect("ca"), ca);
        // The new agent certificate chains to the same CA: a server trusting it loads fine.
        let mut settings = TlsSettings::new(&second.server_cert, &second.server_key);
        settings.client_ca = Some(second.ca_cert);
        server_config(&settings).expect("config");
    }

    #[test]
    fn bad_inputs_are_clear_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(matches!(
            generate_dev_certs(dir.path(), &[], &[]),
            Err(TlsError::Config(_))
        ));
        assert!(matches!(
            generate_dev_certs(dir.path(), &hosts(), &["../x".to_owned()]),
            Err(TlsError::Config(_))
        ));
        let missing = TlsSettings::new(dir.path().join("nope.pem"), dir.path().join("nope.key"));
        assert!(matches!(
            server_config(&missing),
            Err(TlsError::Read { .. })
        ));
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not pem").expect("write");
        let settings = TlsSettings::new(&garbage, &garbage);
        assert!(matches!(
            server_config(&settings),
            Err(TlsError::Parse { .. })
        ));
        // Key of another certificate.
        let certs = generate_dev_certs(dir.path(), &hosts(), &[]).expect("gen");
        let settings = TlsSettings::new(&certs.server_cert, &certs.client_key);
        assert!(matches!(server_config(&settings), Err(TlsError::Config(_))));
    }
}
