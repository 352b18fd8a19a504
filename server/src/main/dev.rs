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
    tracing::info!(state_dir = %state_dir.display(), "starting the local agent");
    Ok(Some(tether_agent::spawn(
        config,
        Box::new(tether_agent::SysinfoCollector::new()),
    )))
}
