//! Helpers over the RPCs and the CLI that need no [`crate::TestServer`]: following pages,
//! reading the audit trail, creating tokens, running `tetherctl` against any address.

use std::time::Duration;

use tether_proto as pb;

use crate::{AdminClient, FleetClient};

/// Lists every agent matching `req`, following pages.
pub async fn list_all(fleet: &mut FleetClient, mut req: pb::ListAgentsRequest) -> Vec<pb::Agent> {
    let mut out = Vec::new();
    loop {
        let page = fleet
            .list_agents(req.clone())
            .await
            .expect("list agents")
            .into_inner();
        out.extend(page.agents);
        if page.next_page_token.is_empty() {
            return out;
        }
        req.page_token = page.next_page_token;
    }
}

/// Every audit event `admin` may see that matches `filter`, following pages.
pub async fn list_audit(
    admin: &AdminClient,
    filter: pb::ListAuditEventsRequest,
) -> Vec<pb::AuditEvent> {
    let mut admin = admin.clone();
    let mut events = Vec::new();
    let mut request = filter;
    loop {
        let page = admin
            .list_audit_events(request.clone())
            .await
            .expect("list audit events")
            .into_inner();
        events.extend(page.events);
        if page.next_page_token.is_empty() {
            return events;
        }
        request.page_token = page.next_page_token;
    }
}

/// The public id of a token `tether_<id>_<secret>`.
pub fn token_id(token: &str) -> &str {
    token
        .strip_prefix("tether_")
        .and_then(|rest| rest.split_once('_'))
        .map_or_else(|| panic!("not a token: tether_<id>_<secret>"), |(id, _)| id)
}

/// Creates an API token `name` with `role` (and `ttl`, if any) through `admin`.
pub async fn create_token(
    admin: &mut AdminClient,
    name: &str,
    role: pb::Role,
    ttl: Option<Duration>,
) -> pb::CreateTokenResponse {
    admin
        .create_token(pb::CreateTokenRequest {
            name: name.to_owned(),
            role: role as i32,
            ttl: ttl.map(|d| prost_types::Duration::try_from(d).expect("ttl fits")),
        })
        .await
        .unwrap_or_else(|e| panic!("create token {name}: {e}"))
        .into_inner()
}

/// Runs `tetherctl` with `args` against the server at `url` with `token`; returns stdout.
/// For servers that are not a [`TestServer`] (e.g. an address where nothing listens).
///
/// # Errors
///
/// The CLI's error, as the binary would report it.
pub async fn cli_at(url: &str, token: &str, args: &[&str]) -> Result<String, tetherctl::CliError> {
    use clap::Parser as _;
    let mut argv = vec!["tetherctl", "--server", url, "--token", token];
    argv.extend_from_slice(args);
    let cli = tetherctl::Cli::try_parse_from(argv)
        .map_err(|e| tetherctl::CliError::Usage(e.to_string()))?;
    let mut out = Vec::new();
    tetherctl::run_with_env(cli, &tetherctl::Env::default(), &mut out).await?;
    Ok(String::from_utf8(out).expect("utf-8 output"))
}
