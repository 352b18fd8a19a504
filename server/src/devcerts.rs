//! The development certificate authority behind `tether-server gen-certs`: a CA, a server
//! certificate, a client certificate for the CLI ([`generate_dev_certs`]) and one per agent id
//! ([`issue_agent_certs`]), written as PEM files with private keys at mode 0600.
//!
//! For trying TLS and mTLS locally and for the end-to-end tests; production certificates come
//! from the operator's own CA. An existing CA in the directory is reused, so certificates
//! issued later share the trust root. No existing file is ever overwritten unless the caller
//! forces it, and then only the leaf certificates it asked for: issuing an agent's certificate
//! never touches the server's or the CLI's, and the CA is never replaced while both its files
//! are there.

use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

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
    /// Whether an existing CA in the directory was reused rather than created.
    pub reused_ca: bool,
}

/// The files [`issue_agent_certs`] wrote.
#[derive(Clone, Debug)]
pub struct AgentCerts {
    pub dir: PathBuf,
    pub ca_cert: PathBuf,
    /// One client certificate per requested agent: `(agent id, cert, key)`.
    pub agents: Vec<(String, PathBuf, PathBuf)>,
    /// Whether an existing CA in the directory was reused rather than created.
    pub reused_ca: bool,
}

/// Writes a server certificate for `hosts` (DNS names or IP addresses) and a client certificate
/// for the CLI into `dir`, signed by the development CA there (created if `dir` has none).
///
/// # Errors
///
/// [`TlsError::Config`] for an empty host list; [`TlsError::Write`] (kind `AlreadyExists`) when
/// a certificate or key to write exists and `force` is false, before anything is written; see
/// [`issue_agent_certs`] for the rest.
pub fn generate_dev_certs(dir: &Path, hosts: &[String], force: bool) -> Result<DevCerts, TlsError> {
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
    let server_cert = dir.join(SERVER_CERT_FILE);
    let server_key = dir.join(SERVER_KEY_FILE);
    let client_cert = dir.join(CLIENT_CERT_FILE);
    let client_key = dir.join(CLIENT_KEY_FILE);
    let ca = Ca::open_or_create(
        dir,
        &[&server_cert, &server_key, &client_cert, &client_key],
        force,
    )?;
    let server_name = hosts
        .iter()
        .find(|h| h.parse::<IpAddr>().is_err())
        .unwrap_or(&hosts[0])
        .clone();
    let server = Leaf {
        common_name: &server_name,
        sans: hosts.clone(),
        usage: ExtendedKeyUsagePurpose::ServerAuth,
    };
    ca.issue(&server, &server_cert, &server_key, force)?;
    let client = Leaf {
        common_name: CLIENT_CERT_NAME,
        sans: Vec::new(),
        usage: ExtendedKeyUsagePurpose::ClientAuth,
    };
    ca.issue(&client, &client_cert, &client_key, force)?;
    Ok(DevCerts {
        dir: dir.to_owned(),
        ca_cert: ca.cert_path,
        ca_key: ca.key_path,
        server_cert,
        server_key,
        client_cert,
        client_key,
        reused_ca: ca.reused,
    })
}

/// Writes one client certificate per agent id in `agents` (Common Name = the agent id, as mTLS
/// requires) into `dir` as `agent-<id>.pem` and `agent-<id>-key.pem`, signed by the development
/// CA there (created if `dir` has none). Nothing else in `dir` is written.
///
/// # Errors
///
/// [`TlsError::Config`] for an agent id that is not a valid id, [`TlsError::Write`] (kind
/// `AlreadyExists`) when a file to write exists and `force` is false (or when only one of the
/// CA's two files exists), before anything is written; [`TlsError::Generate`] when a
/// certificate cannot be built, [`TlsError::Read`]/[`TlsError::Parse`] for an unusable
/// existing CA, [`TlsError::Write`] when a file cannot be written.
pub fn issue_agent_certs(
    dir: &Path,
    agents: &[String],
    force: bool,
) -> Result<AgentCerts, TlsError> {
    for id in agents {
        if !crate::domain::is_valid_id(id) {
            return Err(TlsError::Config(format!(
                "agent id {id:?} is not a valid id (1-64 characters of a-z, 0-9 and -)"
            )));
        }
    }
    let files: Vec<(String, PathBuf, PathBuf)> = agents
        .iter()
        .map(|id| {
            let cert = dir.join(format!("agent-{id}.pem"));
            let key = dir.join(format!("agent-{id}-key.pem"));
            (id.clone(), cert, key)
        })
        .collect();
    let paths: Vec<&Path> = files
        .iter()
        .flat_map(|(_, cert, key)| [cert.as_path(), key.as_path()])
        .collect();
    let ca = Ca::open_or_create(dir, &paths, force)?;
    for (id, cert, key) in &files {
        let leaf = Leaf {
            common_name: id,
            sans: Vec::new(),
            usage: ExtendedKeyUsagePurpose::ClientAuth,
        };
        ca.issue(&leaf, cert, key, force)?;
    }
    Ok(AgentCerts {
        dir: dir.to_owned(),
        ca_cert: ca.cert_path,
        agents: files,
        reused_ca: ca.reused,
    })
}

/// The development CA of a directory, ready to sign.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert_path: PathBuf,
    key_path: PathBuf,
    reused: bool,
}

/// A leaf certificate to issue.
struct Leaf<'a> {
    common_name: &'a str,
    sans: Vec<String>,
    usage: ExtendedKeyUsagePurpose,
}

impl Ca {
    /// Creates `dir` (0700) if needed and checks that none of `leaves` exists (unless
    /// `force`), then loads the CA in `dir`, or creates one if it has neither CA file.
    fn open_or_create(dir: &Path, leaves: &[&Path], force: bool) -> Result<Self, TlsError> {
        crate::server::create_private_dir(dir).map_err(|source| TlsError::Write {
            path: dir.to_owned(),
            source,
        })?;
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        let reused = cert_path.exists() && key_path.exists();
        let mut refuse: Vec<&Path> = leaves.to_vec();
        if !reused {
            // Half a CA cannot sign; replacing it is the caller's explicit decision.
            refuse.extend([cert_path.as_path(), key_path.as_path()]);
        }
        if !force && let Some(existing) = refuse.iter().find(|p| p.exists()) {
            return Err(exists(existing));
        }
        let (cert_pem, key) = if reused {
            (read_text("CA certificate", &cert_path)?, {
                let pem = read_text("CA key", &key_path)?;
                KeyPair::from_pem(&pem).map_err(|e| TlsError::Parse {
                    what: "CA key",
                    path: key_path.clone(),
                    reason: e.to_string(),
                })?
            })
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
            set_validity(&mut params, DEV_CA_VALIDITY)?;
            let cert = params.self_signed(&key).map_err(gen_err)?;
            write_file(&cert_path, &cert.pem(), false, force)?;
            write_file(&key_path, &key.serialize_pem(), true, force)?;
            (cert.pem(), key)
        };
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key).map_err(|e| TlsError::Parse {
            what: "CA certificate",
            path: cert_path.clone(),
            reason: e.to_string(),
        })?;
        Ok(Self {
            issuer,
            cert_path,
            key_path,
            reused,
        })
    }

    /// Issues `leaf` and writes it to `cert_path` and its key to `key_path`.
    fn issue(
        &self,
        leaf: &Leaf<'_>,
        cert_path: &Path,
        key_path: &Path,
        force: bool,
    ) -> Result<(), TlsError> {
        let key = KeyPair::generate().map_err(gen_err)?;
        let mut params = CertificateParams::new(leaf.sans.clone()).map_err(gen_err)?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, leaf.common_name);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![leaf.usage.clone()];
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, DEV_CERT_VALIDITY)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(gen_err)?;
        write_file(cert_path, &cert.pem(), false, force)?;
        write_file(key_path, &key.serialize_pem(), true, force)
    }
}

fn gen_err(e: rcgen::Error) -> TlsError {
    TlsError::Generate(e.to_string())
}

/// The refusal to overwrite `path`.
fn exists(path: &Path) -> TlsError {
    TlsError::Write {
        path: path.to_owned(),
        source: io::Error::new(
            io::ErrorKind::AlreadyExists,
            "it already exists; pass --force to overwrite it",
        ),
    }
}

/// Makes `params` valid from an hour ago (so a peer whose clock is slightly behind accepts it)
/// to `for_` from now.
fn set_validity(params: &mut CertificateParams, for_: Duration) -> Result<(), TlsError> {
    let now = SystemTime::now();
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
    params.not_before = ts(now - Duration::from_secs(3600))?;
    params.not_after = ts(now + for_)?;
    Ok(())
}

/// Reads `path` as text, naming it as `what` in the error.
fn read_text(what: &'static str, path: &Path) -> Result<String, TlsError> {
    String::from_utf8(read(what, path)?).map_err(|_| TlsError::Parse {
        what,
        path: path.to_owned(),
        reason: "not PEM text".to_owned(),
    })
}

/// Writes `contents` to `path`; mode 0600 when `private`, else 0644. Without `overwrite` the
/// file is created only if it does not exist (never replacing one); with it, the file is
/// replaced atomically.
fn write_file(path: &Path, contents: &str, private: bool, overwrite: bool) -> Result<(), TlsError> {
    use std::io::Write as _;
    let open = |target: &Path| {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(if private { 0o600 } else { 0o644 });
        }
        options.open(target)
    };
    let write = || -> io::Result<()> {
        if !overwrite {
            let mut file = open(path)?;
            file.write_all(contents.as_bytes())?;
            return file.sync_all();
        }
        let tmp = path.with_extension("pem.tmp");
        let _ = std::fs::remove_file(&tmp);
        let mut file = open(&tmp)?;
        file.write_all(contents.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|source| match source.kind() {
        io::ErrorKind::AlreadyExists => exists(path),
        _ => TlsError::Write {
            path: path.to_owned(),
            source,
        },
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
        let certs = generate_dev_certs(dir.path(), &hosts(), false).expect("generate");
        assert!(!certs.reused_ca);
        let mut settings = TlsSettings::new(&certs.server_cert, &certs.server_key);
        server_config(&settings).expect("server config without client CA");
        settings.client_ca = Some(certs.ca_cert.clone());
        let config = server_config(&settings).expect("server config with client CA");
        assert_eq!(config.alpn_protocols, vec![ALPN_H2.to_vec()]);

        let agents = issue_agent_certs(dir.path(), &["agent-1".to_owned()], false).expect("issue");
        assert!(agents.reused_ca);
        let (id, cert, _) = &agents.agents[0];
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
        let certs = generate_dev_certs(dir.path(), &hosts(), false).expect("gen");
        let agents = issue_agent_certs(dir.path(), &["a1".to_owned()], false).expect("issue");
        for key in [
            &certs.ca_key,
            &certs.server_key,
            &certs.client_key,
            &agents.agents[0].2,
        ] {
            let mode = std::fs::metadata(key).expect("stat").permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", key.display());
        }
    }

    /// Every file of `dir`, with its contents.
    fn contents(dir: &Path) -> std::collections::BTreeMap<PathBuf, Vec<u8>> {
        std::fs::read_dir(dir)
            .expect("read dir")
            .map(|e| {
                let path = e.expect("entry").path();
                let bytes = std::fs::read(&path).expect("read");
                (path, bytes)
            })
            .collect()
    }

    #[test]
    fn agent_certs_reuse_the_ca_and_touch_nothing_else() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first =
            generate_dev_certs(dir.path(), &["tether.example".to_owned()], false).expect("first");
        let before = contents(dir.path());
        let agents = issue_agent_certs(dir.path(), &["later".to_owned()], false).expect("agent");
        assert!(agents.reused_ca);
        let mut after = contents(dir.path());
        let (_, cert, key) = &agents.agents[0];
        assert!(after.remove(cert).is_some() && after.remove(key).is_some());
        assert_eq!(after, before, "only the agent's two files were added");
        // The new agent certificate chains to the same CA: a server trusting it loads fine.
        let mut settings = TlsSettings::new(&first.server_cert, &first.server_key);
        settings.client_ca = Some(agents.ca_cert);
        server_config(&settings).expect("config");
    }

    #[test]
    fn existing_files_are_never_overwritten_without_force() {
        let dir = tempfile::tempdir().expect("tempdir");
        generate_dev_certs(dir.path(), &hosts(), false).expect("first");
        issue_agent_certs(dir.path(), &["a1".to_owned()], false).expect("agent");
        let before = contents(dir.path());
        for attempt in [
            generate_dev_certs(dir.path(), &["localhost".to_owned()], false).map(drop),
            issue_agent_certs(dir.path(), &["a2".to_owned(), "a1".to_owned()], false).map(drop),
        ] {
            let err = attempt.expect_err("refused");
            assert!(
                matches!(&err, TlsError::Write { source, .. }
                    if source.kind() == io::ErrorKind::AlreadyExists),
                "{err:?}"
            );
            assert!(err.to_string().contains("--force"), "{err}");
            assert_eq!(contents(dir.path()), before, "nothing was written");
        }
        // With force, the named certificates are replaced and the CA is kept.
        let forced =
            generate_dev_certs(dir.path(), &["tether.example".to_owned()], true).expect("forced");
        assert!(forced.reused_ca);
        let after = contents(dir.path());
        assert_eq!(after[&forced.ca_cert], before[&forced.ca_cert]);
        assert_ne!(after[&forced.server_cert], before[&forced.server_cert]);
    }

    #[test]
    fn half_a_ca_is_not_replaced_without_force() {
        let dir = tempfile::tempdir().expect("tempdir");
        let certs = generate_dev_certs(dir.path(), &hosts(), false).expect("first");
        std::fs::remove_file(&certs.ca_key).expect("remove the CA key");
        let err = issue_agent_certs(dir.path(), &["a1".to_owned()], false).expect_err("refused");
        assert!(
            matches!(&err, TlsError::Write { path, .. } if *path == certs.ca_cert),
            "{err:?}"
        );
        let agents = issue_agent_certs(dir.path(), &["a1".to_owned()], true).expect("forced");
        assert!(!agents.reused_ca);
    }

    #[test]
    fn bad_inputs_are_clear_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(matches!(
            generate_dev_certs(dir.path(), &[], false),
            Err(TlsError::Config(_))
        ));
        assert!(matches!(
            issue_agent_certs(dir.path(), &["../x".to_owned()], false),
            Err(TlsError::Config(_))
        ));
    }
}
