//! `--dev`: one agent for this machine, enrolled automatically and run in-process. The only
//! user of the agent crate in the server (cargo feature `dev`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use tether_server::domain::{DEFAULT_ORG, NewEnrollmentToken, OrgId};
use tether_server::server::Server;

/// How long the local agent's one-use enrollment token stays valid.
const LOCAL_AGENT_ENROLLMENT_TTL: Duration = Duration::from_secs(600);

/// Programs the local agent may run: harmless, read-only ones, so that `cmd run` can be tried
/// at once. Their absolute paths are found at start (the agent compares `argv[0]` literally
/// with its allowlist).
const SAFE_PROGRAMS: &[&str] = &["uptime", "uname", "df", "hostname"];

/// Where [`SAFE_PROGRAMS`] are on this machine: the first match in `PATH`, then in the usual
/// directories; a program found nowhere is left out.
fn safe_programs() -> Vec<String> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path)
        .filter(|dir| dir.is_absolute())
        .collect();
    dirs.extend(["/usr/bin", "/bin", "/usr/sbin", "/sbin"].map(PathBuf::from));
    SAFE_PROGRAMS
        .iter()
        .filter_map(|name| {
            dirs.iter()
                .map(|dir| dir.join(name))
                .find(|candidate| candidate.is_file())
                .and_then(|found| found.to_str().map(str::to_owned))
        })
        .collect()
}

/// Starts the local agent against `url`, unless the server requires client certificates
/// (`mtls`), which the local agent does not have. With TLS (an `https` url), it trusts
/// `tls_ca` if that file exists (the `gen-certs` layout), else the system's roots.
pub async fn spawn_local_agent(
    server: &Server,
    url: &str,
    mtls: bool,
    tls_ca: Option<&Path>,
    data_dir: &Path,
) -> anyhow::Result<Option<tether_agent::AgentHandle>> {
    if mtls {
        tracing::warn!(
            "--dev with --client-ca: not starting the local agent (it has no client certificate)"
        );
        return Ok(None);
    }
    let tls = url
        .starts_with("https://")
        .then(|| tether_agent::ClientTls {
            ca_cert: tls_ca.filter(|ca| ca.exists()).map(PathBuf::from),
            ..Default::default()
        });
    let state_dir = data_dir.join("local-agent");
    let mut config = tether_agent::AgentConfig::new(url, &state_dir);
    config.tls = tls;
    let enrolled = tether_agent::StateDir::open(&state_dir)
        .and_then(|s| s.load())
        .with_context(|| {
            format!(
                "cannot read the local agent's state in {}",
                state_dir.display()
            )
        })?
        .is_some();
    if !enrolled {
        let request = NewEnrollmentToken {
            description: "local agent of tether-server --dev".to_owned(),
            labels: Default::default(),
            max_uses: 1,
            ttl: Some(LOCAL_AGENT_ENROLLMENT_TTL),
            allow_reclaim: false,
        };
        let (_, secret) = tether_server::service::admin::create_enrollment_token(
            server.state(),
            OrgId::new(DEFAULT_ORG),
            request,
            None,
        )
        .await
        .context("cannot create the local agent's enrollment token")?;
        config.enroll_token = Some(secret.expose().to_owned());
    }
    config.labels = BTreeMap::from([("tether.dev/local".to_owned(), "true".to_owned())]);
    config.commands.allow_exec = safe_programs();
    tracing::info!(
        state_dir = %state_dir.display(),
        allow_exec = %config.commands.allow_exec.join(","),
        "starting the local agent"
    );
    Ok(Some(tether_agent::spawn(
        config,
        Box::new(tether_agent::SysinfoCollector::new()),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_safe_programs_are_found_as_absolute_paths() {
        let found = safe_programs();
        assert!(
            !found.is_empty(),
            "uname is on every machine the tests run on"
        );
        for path in &found {
            assert!(path.starts_with('/'), "{path}");
            let name = path.rsplit('/').next().unwrap_or_default();
            assert!(SAFE_PROGRAMS.contains(&name), "{path}");
        }
        // What the allowlist holds is what an operator names: the agent's policy accepts it.
        let config = tether_agent::CommandConfig {
            allow_exec: found,
            ..Default::default()
        };
        config.validate().expect("a valid allowlist");
    }
}
