//! `tokens create|list|revoke`: API tokens of the caller's org through `AdminService` (admin
//! role).
//!
//! The secret of a new token is printed once, set apart so it is easy to copy; no command ever
//! shows it again, and listings show only ids, names and states.

use std::io::Write;
use std::time::SystemTime;

use tether_proto as pb;

use crate::CliError;
use crate::cli::{CreateApiTokenArgs, ListApiTokensArgs, RevokeTokenArgs};
use crate::client::Connection;
use crate::config::Settings;
use crate::format::{Table, escape, key_values, relative_time_detail, relative_time_opt};
use crate::view::{ApiTokenView, CreatedApiTokenView};

use super::objects::{self, AdminObject, secret_block, ttl_to_pb};
use super::print_object;

/// `tokens create`.
pub(crate) async fn create(
    args: CreateApiTokenArgs,
    settings: &Settings,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let name = args.name.trim().to_owned();
    if name.is_empty() {
        return Err(CliError::Usage("--name must not be empty".to_owned()));
    }
    let request = pb::CreateTokenRequest {
        name,
        role: args.role.to_pb() as i32,
        ttl: ttl_to_pb(args.ttl)?,
    };
    let conn = Connection::connect(settings).await?;
    let pb::CreateTokenResponse { token, secret } = conn
        .admin()
        .create_token(request)
        .await
        .map_err(|status| conn.error(&status, None))?
        .into_inner();
    let now = SystemTime::now();
    let created = CreatedApiTokenView {
        token: ApiTokenView::from_pb(token.unwrap_or_default(), now),
        secret,
    };
    print_object(out, args.output, &created, |created| {
        render_created(created, now)
    })
}

/// `tokens list`.
pub(crate) async fn list(
    args: ListApiTokensArgs,
    settings: &Settings,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let request = pb::ListTokensRequest {
        include_revoked: args.include_revoked,
    };
    objects::list::<ApiTokenView, _, _>(settings, args.output, out, |mut admin| async move {
        Ok(admin.list_tokens(request).await?.into_inner().tokens)
    })
    .await
}

/// `tokens revoke ID`.
pub(crate) async fn revoke(
    args: RevokeTokenArgs,
    settings: &Settings,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    objects::revoke::<ApiTokenView, _, _>(args, settings, out, |mut admin, token_id| async move {
        let request = pb::RevokeTokenRequest { token_id };
        Ok(admin.revoke_token(request).await?.into_inner().token)
    })
    .await
}

impl AdminObject for ApiTokenView {
    type Pb = pb::ApiToken;
    const NOUN: &'static str = "token";
    const PLURAL: &'static str = "API tokens";

    fn from_wire(token: pb::ApiToken, now: SystemTime) -> Self {
        Self::from_pb(token, now)
    }

    fn render_table(tokens: &[Self], now: SystemTime) -> String {
        render_table(tokens, now)
    }
}

/// The ROLE cell: the role, marked when the token may also manage orgs.
pub(crate) fn role_text(token: &ApiTokenView) -> String {
    if token.server_admin {
        format!("{} (server)", token.role.as_str())
    } else {
        token.role.as_str().to_owned()
    }
}

/// The key/value block describing one token (without its secret).
pub(crate) fn token_details(indent: usize, t: &ApiTokenView, now: SystemTime) -> String {
    key_values(
        indent,
        &[
            ("ID", t.token_id.clone()),
            ("Name", t.name.clone()),
            ("Org", t.org_id.clone()),
            ("Role", role_text(t)),
            ("Expires", relative_time_detail(now, t.expires_at)),
        ],
    )
}

/// Renders a new token and its one-time secret.
pub(crate) fn render_created(created: &CreatedApiTokenView, now: SystemTime) -> String {
    let t = &created.token;
    let mut text = format!("Token {} created.\n\n", escape(&t.token_id));
    text.push_str(&token_details(2, t, now));
    text.push_str(&secret_block("Secret", &created.secret));
    text
}

/// Renders `tokens list` as a table.
pub(crate) fn render_table(tokens: &[ApiTokenView], now: SystemTime) -> String {
    let mut table = Table::new([
        "ID",
        "NAME",
        "ROLE",
        "CREATED",
        "EXPIRES",
        "LAST USED",
        "STATE",
    ]);
    for t in tokens {
        table.push([
            t.token_id.clone(),
            t.name.clone(),
            role_text(t),
            relative_time_opt(now, t.created_at),
            relative_time_opt(now, t.expires_at),
            relative_time_opt(now, t.last_used_at),
            t.state.as_str().to_owned(),
        ]);
    }
    table.render()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Ttl;
    use crate::view::{Role, TokenState};
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

    fn token(id: &str, name: &str, role: pb::Role) -> pb::ApiToken {
        pb::ApiToken {
            token_id: id.into(),
            org_id: "acme".into(),
            name: name.into(),
            role: role as i32,
            created_at: ts(1_000),
            ..Default::default()
        }
    }

    #[test]
    fn states_and_roles_from_the_wire() {
        let now = at(5_000);
        let view = |t| ApiTokenView::from_pb(t, now);
        let active = view(token("t-1", "ci", pb::Role::Operator));
        assert_eq!(active.state, TokenState::Active);
        assert_eq!(active.role, Role::Operator);
        let revoked = view(pb::ApiToken {
            revoked: true,
            ..token("t-2", "old", pb::Role::Viewer)
        });
        assert_eq!(revoked.state, TokenState::Revoked);
        let expired = view(pb::ApiToken {
            expires_at: ts(4_000),
            ..token("t-3", "tmp", pb::Role::Viewer)
        });
        assert_eq!(expired.state, TokenState::Expired);
        assert_eq!(
            view(pb::ApiToken {
                role: 42,
                ..token("t-4", "new", pb::Role::Viewer)
            })
            .role,
            Role::Unknown
        );
    }

    #[test]
    fn list_table() {
        let now = at(1_000 + 3 * 86_400);
        let tokens = [
            pb::ApiToken {
                server_admin: true,
                last_used_at: ts(1_000 + 3 * 86_400 - 120),
                ..token("t-1", "bootstrap", pb::Role::Admin)
            },
            pb::ApiToken {
                expires_at: ts(1_000 + 33 * 86_400),
                ..token("t-22", "ci", pb::Role::Viewer)
            },
            pb::ApiToken {
                revoked: true,
                ..token("t-3", "old", pb::Role::Operator)
            },
        ]
        .map(|t| ApiTokenView::from_pb(t, now));
        assert_eq!(
            render_table(&tokens, now),
            "ID     NAME        ROLE             CREATED   EXPIRES   LAST USED   STATE\n\
             t-1    bootstrap   admin (server)   3d ago    never     2m ago      active\n\
             t-22   ci          viewer           3d ago    in 30d    never       active\n\
             t-3    old         operator         3d ago    never     never       revoked\n"
        );
    }

    #[test]
    fn created_token_shows_secret_once() {
        let now = at(1_000);
        let created = CreatedApiTokenView {
            token: ApiTokenView::from_pb(
                pb::ApiToken {
                    expires_at: ts(1_000 + 30 * 86_400),
                    ..token("t-1", "ci", pb::Role::Operator)
                },
                now,
            ),
            secret: "tet_api_s3cret".into(),
        };
        let text = render_created(&created, now);
        assert_eq!(text.matches("tet_api_s3cret").count(), 1, "{text}");
        assert!(text.starts_with("Token t-1 created.\n"), "{text}");
        assert!(text.contains("shown only this once"), "{text}");
        assert!(text.contains("  Role:     operator\n"), "{text}");
        assert!(
            text.contains("  Expires:  in 30d (1970-01-31T00:16:40Z)\n"),
            "{text}"
        );
        assert!(text.ends_with("\n    tet_api_s3cret\n"), "{text}");
    }

    #[test]
    fn token_json_is_stable_and_has_no_secret() {
        let now = at(5_000);
        let view = ApiTokenView::from_pb(
            pb::ApiToken {
                last_used_at: ts(4_980),
                ..token("t-1", "ci", pb::Role::Viewer)
            },
            now,
        );
        let json = serde_json::to_value(&view).expect("serializes");
        assert_eq!(
            json,
            serde_json::json!({
                "token_id": "t-1",
                "org_id": "acme",
                "name": "ci",
                "role": "viewer",
                "server_admin": false,
                "created_at": "1970-01-01T00:16:40Z",
                "expires_at": null,
                "last_used_at": "1970-01-01T01:23:00Z",
                "revoked": false,
                "state": "active",
            })
        );
        let created = serde_json::to_value(CreatedApiTokenView {
            token: view,
            secret: "s".into(),
        })
        .expect("serializes");
        assert_eq!(created["secret"], "s");
        assert_eq!(created["token"]["token_id"], "t-1");
    }

    #[test]
    fn create_flags() {
        use crate::Cli;
        use crate::cli::{ApiTokensCommand, Command};
        use clap::Parser as _;
        let cli = Cli::try_parse_from([
            "tetherctl",
            "tokens",
            "create",
            "--name",
            "ci",
            "--role",
            "viewer",
            "--ttl",
            "30d",
        ])
        .expect("parses");
        let Command::Tokens(ApiTokensCommand::Create(args)) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!(args.role, Role::Viewer);
        assert_eq!(args.ttl, Ttl::After(Duration::from_secs(30 * 86_400)));
        let cli = Cli::try_parse_from([
            "tetherctl",
            "tokens",
            "create",
            "--name",
            "x",
            "--role",
            "admin",
        ])
        .expect("parses");
        let Command::Tokens(ApiTokensCommand::Create(args)) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!(args.ttl, Ttl::Never);
        for role in ["agent", "unknown", "root"] {
            assert!(
                Cli::try_parse_from([
                    "tetherctl",
                    "tokens",
                    "create",
                    "--name",
                    "x",
                    "--role",
                    role
                ])
                .is_err(),
                "{role}"
            );
        }
        assert!(Cli::try_parse_from(["tetherctl", "tokens", "create", "--role", "admin"]).is_err());
    }
}
