//! Where the server address and the API token come from.
//!
//! Precedence, highest first: the `--server` / `--token` flags, the `TETHER_SERVER` /
//! `TETHER_TOKEN` environment variables, then a TOML config file with keys `server` and
//! `token`. The file is `--config PATH`, else `$TETHER_CONFIG`, else
//! `$XDG_CONFIG_HOME/tether/config.toml`, else `~/.config/tether/config.toml`. Without any server,
//! the dev server's address [`DEFAULT_SERVER`] is used; without any token, the CLI stops with
//! [`CliError::MissingToken`].
//!
//! Resolution is a pure function of [`ConnectionFlags`], [`Env`] and the file's contents, so tests
//! never touch the process environment.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::CliError;

/// The server used when none is configured anywhere: the dev server's default address.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:7600";

/// The connection-related global flags, as given on the command line.
#[derive(Debug, Clone, Default)]
pub struct ConnectionFlags {
    /// `--server URL`.
    pub server: Option<String>,
    /// `--token TOKEN`.
    pub token: Option<Secret>,
    /// `--config PATH`.
    pub config: Option<PathBuf>,
    /// `--ca-cert PATH`, `--client-cert PATH`, `--client-key PATH`.
    pub tls: TlsFiles,
    /// `--request-timeout DURATION`; `None`: [`crate::client::DEFAULT_TIMEOUT`].
    pub timeout: Option<Duration>,
}

/// The environment variables the CLI reads. Empty values count as unset.
#[derive(Debug, Clone, Default)]
pub struct Env {
    /// `TETHER_SERVER`.
    pub server: Option<String>,
    /// `TETHER_TOKEN`.
    pub token: Option<Secret>,
    /// `TETHER_CONFIG`.
    pub config: Option<PathBuf>,
    /// `TETHER_CA_CERT`, `TETHER_CLIENT_CERT`, `TETHER_CLIENT_KEY`.
    pub tls: TlsFiles,
    /// `XDG_CONFIG_HOME`.
    pub xdg_config_home: Option<PathBuf>,
    /// `HOME`.
    pub home: Option<PathBuf>,
}

/// The contents of a config file.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Server URL, e.g. `"https://tether.example.com:7600"`.
    pub server: Option<String>,
    /// API token.
    pub token: Option<Secret>,
    /// CA certificate (PEM) that an `https://` server's certificate must chain to. A relative
    /// path is relative to the config file's directory.
    pub ca_cert: Option<PathBuf>,
    /// Client certificate (PEM) to present to a server that asks for one (mTLS).
    pub client_cert: Option<PathBuf>,
    /// Private key (PEM) of `client_cert`.
    pub client_key: Option<PathBuf>,
}

/// Certificate files for TLS to an `https://` server; ignored for `http://`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// CA certificate the server's certificate must chain to; `None` trusts the system's roots.
    pub ca_cert: Option<PathBuf>,
    /// Client certificate presented for mTLS; needs `client_key`.
    pub client_cert: Option<PathBuf>,
    /// Private key of `client_cert`.
    pub client_key: Option<PathBuf>,
}

/// Where the config file is and whether the user named it (a named file must exist).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigPath {
    /// The file's path.
    pub path: PathBuf,
    /// Given by `--config` or `$TETHER_CONFIG` rather than a default location.
    pub explicit: bool,
}

/// The resolved connection settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Server URL with a scheme, e.g. `http://127.0.0.1:7600`.
    pub server: String,
    /// API token.
    pub token: Secret,
    /// Certificate files for an `https://` server.
    pub tls: TlsFiles,
    /// Deadline of each unary request, and of connecting.
    pub timeout: Duration,
}

/// A secret string (an API token) whose `Debug` output is redacted, so it cannot leak into logs
/// or error messages by accident.
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

// === impl Secret ===

impl Secret {
    /// Wraps a secret.
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }

    /// The secret itself. Call only where it is sent, never where it is displayed.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self::new(s))
    }
}

// === impl Env ===

impl Env {
    /// Reads the variables from the process environment.
    pub fn from_process() -> Self {
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        Self {
            server: var("TETHER_SERVER").map(|v| v.to_string_lossy().into_owned()),
            token: var("TETHER_TOKEN").map(|v| Secret::new(v.to_string_lossy())),
            config: var("TETHER_CONFIG").map(PathBuf::from),
            tls: TlsFiles {
                ca_cert: var("TETHER_CA_CERT").map(PathBuf::from),
                client_cert: var("TETHER_CLIENT_CERT").map(PathBuf::from),
                client_key: var("TETHER_CLIENT_KEY").map(PathBuf::from),
            },
            xdg_config_home: var("XDG_CONFIG_HOME").map(PathBuf::from),
            home: var("HOME").map(PathBuf::from),
        }
    }
}

/// The config file to consult: `--config`, else `$TETHER_CONFIG`, else the XDG location, else
/// `~/.config/tether/config.toml`. `None` when there is no home directory to look in.
pub fn config_path(flags: &ConnectionFlags, env: &Env) -> Option<ConfigPath> {
    if let Some(path) = flags.config.as_ref().or(env.config.as_ref()) {
        return Some(ConfigPath {
            path: path.clone(),
            explicit: true,
        });
    }
    let base = env
        .xdg_config_home
        .clone()
        .or_else(|| env.home.as_ref().map(|home| home.join(".config")))?;
    Some(ConfigPath {
        path: base.join("tether").join("config.toml"),
        explicit: false,
    })
}

/// Reads and parses a config file. A missing file at a default location is `Ok(None)`; a
/// missing file the user named is an error.
///
/// # Errors
///
/// [`CliError::Config`] when the file cannot be read (or is missing but explicit) or is not
/// valid TOML with only the keys `server`, `token`, `ca_cert`, `client_cert` and `client_key`.
pub fn load_file(path: &ConfigPath) -> Result<Option<FileConfig>, CliError> {
    let text = match std::fs::read_to_string(&path.path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound && !path.explicit => {
            return Ok(None);
        }
        Err(err) => {
            return Err(CliError::Config {
                path: path.path.clone(),
                message: err.to_string(),
            });
        }
    };
    parse_file(&text)
        .map(Some)
        .map_err(|message| CliError::Config {
            path: path.path.clone(),
            message,
        })
}

/// Parses a config file's text.
///
/// # Errors
///
/// The TOML parser's message when the text is not a valid config.
pub fn parse_file(text: &str) -> Result<FileConfig, String> {
    toml::from_str(text).map_err(|err| err.message().to_owned())
}

/// Resolves the settings from flags, environment and the (already loaded) config file.
///
/// `file` is consulted only for what flags and environment leave unset. `path` is only used to
/// name the file in the missing-token message.
///
/// # Errors
///
/// [`CliError::MissingToken`] when no token is found anywhere; [`CliError::Usage`] when the
/// server URL is malformed or a client certificate comes without its key (or the reverse).
pub fn resolve(
    flags: &ConnectionFlags,
    env: &Env,
    file: Option<&FileConfig>,
    path: Option<&Path>,
) -> Result<Settings, CliError> {
    let non_empty = |s: &&String| !s.trim().is_empty();
    let server = flags
        .server
        .as_ref()
        .filter(non_empty)
        .or(env.server.as_ref().filter(non_empty))
        .or(file.and_then(|f| f.server.as_ref()).filter(non_empty))
        .map_or(DEFAULT_SERVER, String::as_str);
    let token = flags
        .token
        .as_ref()
        .or(env.token.as_ref())
        .or(file.and_then(|f| f.token.as_ref()))
        .filter(|t| !t.expose().trim().is_empty())
        .ok_or_else(|| CliError::MissingToken {
            config_path: path.map(Path::to_path_buf),
        })?;
    // Each file comes from the first source that names it; a path from the config file is
    // relative to the file's directory.
    let base = path.and_then(Path::parent);
    let pick = |flag: &Option<PathBuf>, env: &Option<PathBuf>, file: Option<&PathBuf>| {
        flag.clone().or_else(|| env.clone()).or_else(|| {
            file.map(|p| match base {
                Some(base) if p.is_relative() => base.join(p),
                _ => p.clone(),
            })
        })
    };
    let tls = TlsFiles {
        ca_cert: pick(
            &flags.tls.ca_cert,
            &env.tls.ca_cert,
            file.and_then(|f| f.ca_cert.as_ref()),
        ),
        client_cert: pick(
            &flags.tls.client_cert,
            &env.tls.client_cert,
            file.and_then(|f| f.client_cert.as_ref()),
        ),
        client_key: pick(
            &flags.tls.client_key,
            &env.tls.client_key,
            file.and_then(|f| f.client_key.as_ref()),
        ),
    };
    if tls.client_cert.is_some() != tls.client_key.is_some() {
        return Err(CliError::Usage(
            "a client certificate needs both --client-cert and --client-key".to_owned(),
        ));
    }
    Ok(Settings {
        server: normalize_server(server)?,
        token: Secret::new(token.expose().trim()),
        tls,
        timeout: flags.timeout.unwrap_or(crate::client::DEFAULT_TIMEOUT),
    })
}

/// Whether the file needs to be read at all: it is skipped when flags and environment already
/// give both settings (and, for an `https://` server, a CA certificate), unless the user named
/// it explicitly.
pub fn needs_file(flags: &ConnectionFlags, env: &Env, path: &ConfigPath) -> bool {
    let server = flags.server.as_ref().or(env.server.as_ref());
    let has_token = flags.token.is_some() || env.token.is_some();
    let https = server.is_some_and(|s| s.trim().starts_with("https://"));
    let has_tls = flags.tls.ca_cert.is_some() || env.tls.ca_cert.is_some();
    path.explicit || !(server.is_some() && has_token) || (https && !has_tls)
}

/// Resolves the settings for a run: finds the config file, reads it if it is needed, and
/// applies [`resolve`].
///
/// # Errors
///
/// As [`load_file`] and [`resolve`].
pub fn load_settings(flags: &ConnectionFlags, env: &Env) -> Result<Settings, CliError> {
    let path = config_path(flags, env);
    let file = match &path {
        Some(path) if needs_file(flags, env, path) => load_file(path)?,
        _ => None,
    };
    resolve(
        flags,
        env,
        file.as_ref(),
        path.as_ref().map(|p| p.path.as_path()),
    )
}

/// Adds `http://` to a bare `host:port` and checks that the URL can be used.
///
/// # Errors
///
/// [`CliError::Usage`] for a scheme other than http/https or a URL that does not parse.
pub fn normalize_server(server: &str) -> Result<String, CliError> {
    let server = server.trim();
    let url = if server.contains("://") {
        server.to_owned()
    } else {
        format!("http://{server}")
    };
    let url = match url.split_once("://") {
        Some((scheme, rest)) => format!("{scheme}://{}", rest.trim_end_matches('/')),
        None => url,
    };
    let bad = |why: &str| CliError::Usage(format!("invalid server address `{server}`: {why}"));
    let scheme = url.split("://").next().unwrap_or_default();
    if scheme != "http" && scheme != "https" {
        return Err(bad("the scheme must be http or https"));
    }
    let uri: tonic::codegen::http::Uri = url.parse().map_err(|_| bad("not a valid URL"))?;
    if uri.host().is_none_or(str::is_empty) {
        return Err(bad("no host"));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(server: Option<&str>, token: Option<&str>) -> ConnectionFlags {
        ConnectionFlags {
            server: server.map(str::to_owned),
            token: token.map(Secret::new),
            ..ConnectionFlags::default()
        }
    }

    fn env(server: Option<&str>, token: Option<&str>) -> Env {
        Env {
            server: server.map(str::to_owned),
            token: token.map(Secret::new),
            ..Env::default()
        }
    }

    fn file(server: Option<&str>, token: Option<&str>) -> FileConfig {
        FileConfig {
            server: server.map(str::to_owned),
            token: token.map(Secret::new),
            ..FileConfig::default()
        }
    }

    #[test]
    fn flags_beat_env_beat_file() {
        let f = file(Some("http://file:1"), Some("file-token"));
        let s = resolve(
            &flags(Some("http://flag:1"), Some("flag-token")),
            &env(Some("http://env:1"), Some("env-token")),
            Some(&f),
            None,
        )
        .expect("resolves");
        assert_eq!(s.server, "http://flag:1");
        assert_eq!(s.token.expose(), "flag-token");

        let s = resolve(
            &flags(None, None),
            &env(Some("http://env:1"), Some("env-token")),
            Some(&f),
            None,
        )
        .expect("resolves");
        assert_eq!(s.server, "http://env:1");
        assert_eq!(s.token.expose(), "env-token");

        let s = resolve(&flags(None, None), &env(None, None), Some(&f), None).expect("resolves");
        assert_eq!(s.server, "http://file:1");
        assert_eq!(s.token.expose(), "file-token");
    }

    #[test]
    fn sources_mix_per_setting() {
        let f = file(Some("http://file:1"), None);
        let s = resolve(&flags(None, Some("t")), &env(None, None), Some(&f), None).expect("ok");
        assert_eq!(s.server, "http://file:1");
        assert_eq!(s.token.expose(), "t");
    }

    #[test]
    fn default_server_when_none_given() {
        let s = resolve(&flags(None, Some("t")), &env(None, None), None, None).expect("ok");
        assert_eq!(s.server, DEFAULT_SERVER);
    }

    #[test]
    fn missing_token_is_an_error_naming_the_file() {
        let err = resolve(
            &flags(Some("http://x:1"), None),
            &env(None, None),
            Some(&file(None, Some("  "))),
            Some(Path::new("/home/u/.config/tether/config.toml")),
        )
        .expect_err("no token");
        let text = err.to_string();
        assert!(matches!(err, CliError::MissingToken { .. }));
        assert!(
            text.contains("--token") && text.contains("TETHER_TOKEN"),
            "{text}"
        );
        assert!(
            text.contains("/home/u/.config/tether/config.toml"),
            "{text}"
        );
    }

    #[test]
    fn config_path_order() {
        let mut e = Env {
            xdg_config_home: Some("/xdg".into()),
            home: Some("/home/u".into()),
            ..Env::default()
        };
        let mut f = ConnectionFlags::default();
        assert_eq!(
            config_path(&f, &e),
            Some(ConfigPath {
                path: "/xdg/tether/config.toml".into(),
                explicit: false
            })
        );
        e.xdg_config_home = None;
        assert_eq!(
            config_path(&f, &e).map(|p| p.path),
            Some(PathBuf::from("/home/u/.config/tether/config.toml"))
        );
        e.config = Some("/env.toml".into());
        assert_eq!(
            config_path(&f, &e),
            Some(ConfigPath {
                path: "/env.toml".into(),
                explicit: true
            })
        );
        f.config = Some("/flag.toml".into());
        assert_eq!(
            config_path(&f, &e).map(|p| p.path),
            Some("/flag.toml".into())
        );
        assert_eq!(
            config_path(&ConnectionFlags::default(), &Env::default()),
            None
        );
    }

    #[test]
    fn file_is_read_only_when_needed() {
        let implicit = ConfigPath {
            path: "/x".into(),
            explicit: false,
        };
        let explicit = ConfigPath {
            path: "/x".into(),
            explicit: true,
        };
        assert!(!needs_file(
            &flags(Some("s"), None),
            &env(None, Some("t")),
            &implicit
        ));
        assert!(needs_file(
            &flags(Some("s"), None),
            &env(None, None),
            &implicit
        ));
        assert!(needs_file(
            &flags(Some("s"), Some("t")),
            &env(None, None),
            &explicit
        ));
    }

    #[test]
    fn loads_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.toml");
        std::fs::write(&path, "server = \"http://h:9\"\ntoken = \"abc\"\n").expect("write");
        let cfg = load_file(&ConfigPath {
            path: path.clone(),
            explicit: true,
        })
        .expect("loads")
        .expect("present");
        assert_eq!(cfg.server.as_deref(), Some("http://h:9"));
        assert_eq!(cfg.token.as_ref().map(Secret::expose), Some("abc"));

        let missing = dir.path().join("missing.toml");
        let implicit = ConfigPath {
            path: missing.clone(),
            explicit: false,
        };
        assert!(
            load_file(&implicit)
                .expect("missing default is fine")
                .is_none()
        );
        let explicit = ConfigPath {
            path: missing,
            explicit: true,
        };
        assert!(matches!(load_file(&explicit), Err(CliError::Config { .. })));

        std::fs::write(&path, "sever = \"typo\"\n").expect("write");
        let err = load_file(&ConfigPath {
            path,
            explicit: false,
        })
        .expect_err("unknown key");
        assert!(err.to_string().contains("sever"), "{err}");
    }

    #[test]
    fn server_urls() {
        assert_eq!(
            normalize_server("localhost:7600").expect("ok"),
            "http://localhost:7600"
        );
        assert_eq!(
            normalize_server("https://t.example/").expect("ok"),
            "https://t.example"
        );
        assert!(normalize_server("ftp://x").is_err());
        assert!(normalize_server("http://").is_err());
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let s = Settings {
            server: DEFAULT_SERVER.into(),
            token: Secret::new("hunter2"),
            tls: TlsFiles::default(),
            timeout: crate::client::DEFAULT_TIMEOUT,
        };
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    #[test]
    fn tls_files_resolve_per_setting_relative_to_the_file() {
        let mut fl = flags(Some("https://h:1"), Some("t"));
        fl.tls.client_cert = Some("/flag/client.pem".into());
        let e = Env {
            tls: TlsFiles {
                client_key: Some("/env/client-key.pem".into()),
                ..TlsFiles::default()
            },
            ..Env::default()
        };
        let f = FileConfig {
            ca_cert: Some("certs/ca.pem".into()),
            client_cert: Some("/file/ignored.pem".into()),
            ..FileConfig::default()
        };
        let s = resolve(
            &fl,
            &e,
            Some(&f),
            Some(Path::new("/etc/tether/config.toml")),
        )
        .expect("ok");
        assert_eq!(
            s.tls,
            TlsFiles {
                ca_cert: Some("/etc/tether/certs/ca.pem".into()),
                client_cert: Some("/flag/client.pem".into()),
                client_key: Some("/env/client-key.pem".into()),
            }
        );
        let f = parse_file("ca_cert = \"/x/ca.pem\"\nclient_cert = \"c\"\nclient_key = \"k\"\n")
            .expect("tls keys parse");
        assert_eq!(f.ca_cert.as_deref(), Some(Path::new("/x/ca.pem")));
    }

    #[test]
    fn client_cert_needs_its_key() {
        let mut fl = flags(Some("https://h:1"), Some("t"));
        fl.tls.client_cert = Some("c.pem".into());
        assert!(matches!(
            resolve(&fl, &Env::default(), None, None),
            Err(CliError::Usage(_))
        ));
    }

    #[test]
    fn https_without_a_ca_reads_the_file() {
        let implicit = ConfigPath {
            path: "/x".into(),
            explicit: false,
        };
        let mut fl = flags(Some("https://h:1"), Some("t"));
        assert!(needs_file(&fl, &Env::default(), &implicit));
        fl.tls.ca_cert = Some("ca.pem".into());
        assert!(!needs_file(&fl, &Env::default(), &implicit));
    }
}
