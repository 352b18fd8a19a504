//! The development certificate authority behind `tether-server gen-certs`: a CA, a server
//! certificate, a client certificate for the CLI and one per agent id, written as PEM files
//! with private keys at mode 0600.
//!
//! For trying TLS and mTLS locally and for the end-to-end tests; production certificates come
//! from the operator's own CA. An existing CA in the directory is reused, so certificates
//! issued later share the trust root.

use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::tls::{TlsError, read};

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
    use crate::config::TlsSettings;
    use crate::tls::{ALPN_H2, cert_identity, load_certs, server_config};

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
    }
}
