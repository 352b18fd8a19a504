//! What [`start`](super::start) puts in order before anything serves: revoked credentials
//! superseded by a re-enrollment pruned from the stored tokens, the default org's record, and
//! the bootstrap admin token in the data directory; with the private directory and file
//! helpers that token is written with (the data directory and `gen-certs` use them too).
//!
//! **Invariant:** every step is idempotent: a second start on the same store and data
//! directory writes nothing (the token in the admin token file is kept while it still
//! authenticates as a server admin).

use std::path::Path;
use std::time::SystemTime;

use super::StartError;
use crate::auth::{self, Auth, Principal};
use crate::domain::{DEFAULT_ORG, OrgId, OrgRecord, Role};
use crate::store::{Store, Write};

/// Splits stored tokens into those to keep and the deletions of superseded agent credentials:
/// revoked credentials of agents that still exist (replaced at a re-enrollment). Revoked
/// credentials of deleted agents stay, so that their agents are told they were deleted.
pub(super) fn split_superseded_credentials(
    tokens: Vec<crate::domain::TokenRecord>,
    agents: &[(
        crate::domain::AgentRecord,
        Option<crate::domain::LiveRecord>,
    )],
) -> (Vec<crate::domain::TokenRecord>, Vec<Write>) {
    let existing: std::collections::HashSet<_> =
        agents.iter().map(|(a, _)| (&a.org, &a.id)).collect();
    let (superseded, kept): (Vec<_>, Vec<_>) = tokens.into_iter().partition(|t| {
        t.role == Role::Agent
            && t.revoked
            && t.agent
                .as_ref()
                .is_some_and(|agent| existing.contains(&(&t.org, agent)))
    });
    let deletes = superseded
        .into_iter()
        .map(|t| Write::DeleteToken {
            org: t.org,
            id: t.id,
        })
        .collect();
    (kept, deletes)
}

/// Writes the default org's record on first start; returns it if it was created.
pub(super) fn ensure_default_org(
    orgs: &[OrgRecord],
    store: &dyn Store,
) -> Result<Option<OrgRecord>, StartError> {
    if orgs.iter().any(|o| o.id.as_str() == DEFAULT_ORG) {
        return Ok(None);
    }
    let org = OrgRecord {
        id: OrgId::new(DEFAULT_ORG),
        display_name: "Default".to_owned(),
        created_at: SystemTime::now(),
    };
    store
        .commit_writes(&[Write::PutOrg(org.clone())])
        .map_err(|e| StartError::Internal(format!("cannot store the default org: {e}")))?;
    Ok(Some(org))
}

/// Makes sure the default org has a usable admin token whose text is in `path` (mode 0600).
/// Reuses the token in the file if it still authenticates as admin; else creates a new one.
pub(super) fn ensure_admin_token(
    auth: &Auth,
    store: &dyn Store,
    path: &Path,
) -> Result<(), StartError> {
    let io_err = |source| StartError::AdminToken {
        path: path.to_path_buf(),
        source,
    };
    if let Ok(text) = std::fs::read_to_string(path) {
        let mut md = tonic::metadata::MetadataMap::new();
        if let Ok(value) = format!("Bearer {}", text.trim()).parse() {
            md.insert("authorization", value);
            if auth.authenticate(&md).is_ok_and(|caller| {
                matches!(
                    caller.principal,
                    Principal::User {
                        server_admin: true,
                        ..
                    }
                )
            }) {
                return Ok(());
            }
        }
        tracing::warn!(path = %path.display(), "admin token file does not hold a valid admin token; creating a new one");
    }
    let (mut record, secret) = auth::issue(
        OrgId::new(DEFAULT_ORG),
        Role::Admin,
        "bootstrap-admin".to_owned(),
        SystemTime::now(),
    );
    record.server_admin = true;
    store
        .commit_writes(&[Write::PutToken(record.clone())])
        .map_err(|e| StartError::Internal(format!("cannot store the admin token: {e}")))?;
    let id = record.id.clone();
    auth.insert_token(record);
    write_private_file(path, secret.expose()).map_err(io_err)?;
    tracing::info!(path = %path.display(), token = %id, "created bootstrap admin token");
    Ok(())
}

/// Creates `dir` (and parents) with mode 0700 where supported.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}

/// Writes `contents` to `path` atomically with mode 0600.
pub fn write_private_file(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp)?;
    file.write_all(contents.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::domain::{AgentId, TokenId};
    use crate::testing::agent_record;

    #[test]
    fn only_revoked_credentials_of_existing_agents_are_superseded() {
        let credential = |id: &str, agent: &str, revoked: bool| {
            let (mut record, _) = auth::issue(
                OrgId::new("acme"),
                Role::Agent,
                format!("agent {agent}"),
                SystemTime::now(),
            );
            record.id = TokenId::new(id);
            record.agent = Some(AgentId::new(agent));
            record.revoked = revoked;
            record
        };
        let (admin, _) = auth::issue(
            OrgId::new("acme"),
            Role::Admin,
            "a".into(),
            SystemTime::now(),
        );
        let tokens = vec![
            credential("old", "a-1", true),
            credential("new", "a-1", false),
            credential("gone", "deleted-1", true),
            admin.clone(),
        ];
        let agents = vec![(agent_record("acme", "a-1", "hw"), None)];
        let (kept, deletes) = split_superseded_credentials(tokens, &agents);
        let kept: Vec<&str> = kept.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(kept, ["new", "gone", admin.id.as_str()]);
        assert_eq!(
            deletes,
            [Write::DeleteToken {
                org: OrgId::new("acme"),
                id: TokenId::new("old")
            }]
        );
    }
}
