//! TLS on the gRPC listener (rustls, ring provider) and the client-certificate identity used by
//! mTLS. The development certificate authority behind `tether-server gen-certs` is
//! `devcerts.rs`.
//!
//! [`server_config`] turns [`TlsSettings`] into a rustls `ServerConfig` (ALPN `h2`; with a
//! client CA, client certificates are optional but verified when presented, so operators' CLI
//! connects without one while agents present theirs). The handshakes themselves run in the
//! accept loop (`listener.rs`), under its limits. The verified peer chain reaches handlers in
//! the request's [`ConnInfo`]; [`peer_identity`] turns it into the identity that mTLS compares
//! with the agent id.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls;

use crate::config::TlsSettings;
use crate::conn::ConnInfo;

/// The only application protocol the listener speaks.
pub const ALPN_H2: &[u8] = b"h2";

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

/// Reads `path`, naming it as `what` in the error.
pub(crate) fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

// === peer identity ===

/// The identity of the verified client certificate the peer presented on this request's
/// connection: its subject Common Name, else its first DNS subject alternative name. `None`
/// on plaintext connections, when the client presented no certificate, or when the server has
/// no client CA (it then never asks for one).
pub fn peer_identity<T>(request: &tonic::Request<T>) -> Option<String> {
    let certs = request.extensions().get::<ConnInfo>()?.peer_certs.clone()?;
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

/// The names a client may dial the server by, as the leaf certificate of `path` states them:
/// its DNS and IP subject alternative names, in order (IPs as text).
///
/// # Errors
///
/// [`TlsError::Read`] or [`TlsError::Parse`] when the file holds no readable certificate.
pub fn cert_names(path: &Path) -> Result<Vec<String>, TlsError> {
    use x509_parser::extensions::GeneralName;
    let what = "TLS certificate";
    let certs = load_certs(what, path)?;
    let (_, leaf) =
        x509_parser::parse_x509_certificate(&certs[0]).map_err(|e| TlsError::Parse {
            what,
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    let Ok(Some(san)) = leaf.subject_alternative_name() else {
        return Ok(Vec::new());
    };
    Ok(san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::DNSName(dns) => Some((*dns).to_owned()),
            GeneralName::IPAddress(bytes) => match bytes.len() {
                4 => <[u8; 4]>::try_from(*bytes)
                    .ok()
                    .map(|b| std::net::IpAddr::from(b).to_string()),
                16 => <[u8; 16]>::try_from(*bytes)
                    .ok()
                    .map(|b| std::net::IpAddr::from(b).to_string()),
                _ => None,
            },
            _ => None,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devcerts::generate_dev_certs;

    #[test]
    fn cert_names_are_the_hosts_the_certificate_was_made_for() {
        let dir = tempfile::tempdir().expect("tempdir");
        let hosts = ["tether.example.com", "10.0.0.5", "::1"].map(str::to_owned);
        let certs = generate_dev_certs(dir.path(), &hosts, false).expect("certs");
        assert_eq!(
            cert_names(&certs.server_cert).expect("names"),
            ["tether.example.com", "10.0.0.5", "::1"]
        );
        assert!(matches!(
            cert_names(&dir.path().join("absent.pem")),
            Err(TlsError::Read { .. })
        ));
    }

    #[test]
    fn unusable_files_are_clear_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
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
        let hosts = ["localhost".to_owned(), "127.0.0.1".to_owned()];
        let certs = generate_dev_certs(dir.path(), &hosts, false).expect("gen");
        let settings = TlsSettings::new(&certs.server_cert, &certs.client_key);
        assert!(matches!(server_config(&settings), Err(TlsError::Config(_))));
    }
}
