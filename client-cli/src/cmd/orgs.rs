//! `orgs create|list`: orgs through `AdminService` (server admin only).
//!
//! Creating an org also creates its first admin token, whose secret is printed once, set apart
//! as `tokens create` prints it.

use std::io::Write;
use std::time::SystemTime;

use tether_proto as pb;

use crate::CliError;
use crate::cli::{CreateOrgArgs, ObjectOutput};
use crate::client::Connection;
use crate::config::Settings;
use crate::format::{Table, escape, key_values, or_none, relative_time_opt};
use crate::view::{ApiTokenView, CreatedOrgView, OrgView};

use super::objects::{self, AdminObject, secret_block};
use super::tokens::token_details;
use super::{print_object, required_id};

/// `orgs create ORG_ID`.
pub(crate) async fn create(
    args: CreateOrgArgs,
    settings: &Settings,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let org_id = required_id(&args.org_id, "org")?;
    let request = pb::CreateOrgRequest {
        org_id: org_id.clone(),
        display_name: args.display_name.trim().to_owned(),
    };
    let conn = Connection::connect(settings).await?;
    let pb::CreateOrgResponse {
        org,
        admin_token,
        admin_secret,
    } = conn
        .admin()
        .create_org(request)
        .await
        .map_err(|status| conn.error(&status, None))?
        .into_inner();
    let now = SystemTime::now();
    let created = CreatedOrgView {
        org: org.map_or_else(
            || OrgView {
                org_id,
                display_name: String::new(),
                created_at: None,
            },
            OrgView::from,
        ),
        admin_token: admin_token.map(|t| ApiTokenView::from_pb(t, now)),
        admin_secret,
    };
    print_object(out, args.output, &created, |created| {
        render_created(created, now)
    })
}

/// `orgs list`.
pub(crate) async fn list(
    args: ObjectOutput,
    settings: &Settings,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    objects::list::<OrgView, _, _>(settings, args.output, out, |mut admin| async move {
        Ok(admin
            .list_orgs(pb::ListOrgsRequest {})
            .await?
            .into_inner()
            .orgs)
    })
    .await
}

impl AdminObject for OrgView {
    type Pb = pb::Org;
    const NOUN: &'static str = "org";
    const PLURAL: &'static str = "orgs";

    fn from_wire(org: pb::Org, _now: SystemTime) -> Self {
        Self::from(org)
    }

    fn render_table(orgs: &[Self], now: SystemTime) -> String {
        render_table(orgs, now)
    }
}

/// Renders a new org, its first admin token and that token's one-time secret.
pub(crate) fn render_created(created: &CreatedOrgView, now: SystemTime) -> String {
    let org = &created.org;
    let mut text = format!("Org {} created.\n\n", escape(&org.org_id));
    text.push_str(&key_values(
        2,
        &[
            ("Display name", or_none(&org.display_name)),
            ("Created", relative_time_opt(now, org.created_at)),
        ],
    ));
    if let Some(token) = &created.admin_token {
        text.push_str("\nFirst admin token:\n");
        text.push_str(&token_details(2, token, now));
    }
    text.push_str(&secret_block("Admin token secret", &created.admin_secret));
    text
}

/// Renders `orgs list` as a table.
pub(crate) fn render_table(orgs: &[OrgView], now: SystemTime) -> String {
    let mut table = Table::new(["ID", "DISPLAY NAME", "CREATED"]);
    for org in orgs {
        table.push([
            org.org_id.clone(),
            or_none(&org.display_name),
            relative_time_opt(now, org.created_at),
        ]);
    }
    table.render()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn ts(secs: i64) -> Option<prost_types::Timestamp> {
        Some(prost_types::Timestamp {
            seconds: secs,
            nanos: 0,
        })
    }

    fn created() -> CreatedOrgView {
        let now = at(100);
        CreatedOrgView {
            org: OrgView::from(pb::Org {
                org_id: "acme".into(),
                display_name: "Acme Corp".into(),
                created_at: ts(100),
            }),
            admin_token: Some(ApiTokenView::from_pb(
                pb::ApiToken {
                    token_id: "t-9".into(),
                    org_id: "acme".into(),
                    name: "acme-admin".into(),
                    role: pb::Role::Admin as i32,
                    created_at: ts(100),
                    ..Default::default()
                },
                now,
            )),
            admin_secret: "tet_org_s3cret".into(),
        }
    }

    #[test]
    fn created_org_shows_admin_secret_once() {
        let text = render_created(&created(), at(100));
        assert!(text.starts_with("Org acme created.\n\n"), "{text}");
        assert!(text.contains("  Display name:  Acme Corp\n"), "{text}");
        assert!(
            text.contains("First admin token:\n  ID:       t-9\n"),
            "{text}"
        );
        assert!(text.contains("  Role:     admin\n"), "{text}");
        assert!(
            text.contains("Admin token secret (shown only this once"),
            "{text}"
        );
        assert_eq!(text.matches("tet_org_s3cret").count(), 1, "{text}");
        assert!(text.ends_with("\n    tet_org_s3cret\n"), "{text}");
    }

    #[test]
    fn created_org_json_is_stable() {
        let json = serde_json::to_value(created()).expect("serializes");
        assert_eq!(
            json["org"],
            serde_json::json!({
                "org_id": "acme",
                "display_name": "Acme Corp",
                "created_at": "1970-01-01T00:01:40Z",
            })
        );
        assert_eq!(json["admin_token"]["token_id"], "t-9");
        assert_eq!(json["admin_token"]["role"], "admin");
        assert_eq!(json["admin_secret"], "tet_org_s3cret");
    }

    #[test]
    fn list_table() {
        let orgs = [
            OrgView::from(pb::Org {
                org_id: "default".into(),
                display_name: String::new(),
                created_at: ts(0),
            }),
            OrgView::from(pb::Org {
                org_id: "acme".into(),
                display_name: "Acme Corp".into(),
                created_at: ts(3_600),
            }),
        ];
        assert_eq!(
            render_table(&orgs, at(7_200)),
            "ID        DISPLAY NAME   CREATED\n\
             default   -              2h ago\n\
             acme      Acme Corp      1h ago\n"
        );
    }
}
