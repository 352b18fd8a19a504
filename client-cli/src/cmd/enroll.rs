//! `enroll-token create|list|revoke`: enrollment tokens through `AdminService` (admin role).
//!
//! The secret of a new token is printed once, set apart so it is easy to copy; it is never
//! shown again by any command.

use std::collections::HashMap;
use std::io::Write;
use std::time::SystemTime;

use tether_proto as pb;

use crate::cli::{CreateTokenArgs, ListTokensArgs, ObjectFormat, RevokeTokenArgs, SeriesFormat};
use crate::client::{Connection, unary};
use crate::config::Settings;
use crate::format::{NONE, Table, csv_record, key_values, relative_time_opt, rfc3339_opt};
use crate::selector::parse_labels;
use crate::view::{CreatedTokenView, EnrollmentTokenView};
use crate::{CliError, write_json};

use super::objects::{self, AdminObject, secret_block, ttl_to_pb};

/// `enroll-token create`.
pub(crate) async fn create(
    args: CreateTokenArgs,
    settings: &Settings,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let labels: HashMap<String, String> = parse_labels(&args.labels)?.into_iter().collect();
    let request = pb::CreateEnrollmentTokenRequest {
        description: args.description,
        labels,
        max_uses: args.max_uses,
        ttl: ttl_to_pb(args.ttl)?,
    };
    let conn = Connection::connect(settings).await?;
    let pb::CreateEnrollmentTokenResponse { token, secret } = conn
        .admin()
        .create_enrollment_token(unary(request))
        .await
        .map_err(|status| conn.error(&status, None))?
        .into_inner();
    let now = SystemTime::now();
    let created = CreatedTokenView {
        token: EnrollmentTokenView::from_pb(token.unwrap_or_default(), now),
        secret,
    };
    match args.output {
        ObjectFormat::Table => out.write_all(render_created(&created, now).as_bytes())?,
        ObjectFormat::Json => write_json(out, &created)?,
    }
    Ok(())
}

/// `enroll-token list`.
pub(crate) async fn list(
    args: ListTokensArgs,
    settings: &Settings,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let (tokens, now) =
        objects::fetch::<EnrollmentTokenView, _, _>(settings, |mut admin| async move {
            let request = pb::ListEnrollmentTokensRequest {};
            Ok(admin
                .list_enrollment_tokens(unary(request))
                .await?
                .into_inner()
                .tokens)
        })
        .await?;
    match args.output {
        SeriesFormat::Table => objects::print_list(&tokens, ObjectFormat::Table, now, out),
        SeriesFormat::Json => objects::print_list(&tokens, ObjectFormat::Json, now, out),
        SeriesFormat::Csv => Ok(out.write_all(render_csv(&tokens).as_bytes())?),
    }
}

/// `enroll-token revoke ID`.
pub(crate) async fn revoke(
    args: RevokeTokenArgs,
    settings: &Settings,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    objects::revoke::<EnrollmentTokenView, _, _>(
        args,
        settings,
        out,
        |mut admin, token_id| async move {
            let request = pb::RevokeEnrollmentTokenRequest { token_id };
            Ok(admin
                .revoke_enrollment_token(unary(request))
                .await?
                .into_inner()
                .token)
        },
    )
    .await
}

impl AdminObject for EnrollmentTokenView {
    type Pb = pb::EnrollmentToken;
    const NOUN: &'static str = "enrollment token";
    const PLURAL: &'static str = "enrollment tokens";

    fn from_wire(token: pb::EnrollmentToken, now: SystemTime) -> Self {
        Self::from_pb(token, now)
    }

    fn render_table(tokens: &[Self], now: SystemTime) -> String {
        render_table(tokens, now)
    }
}

fn labels_text(token: &EnrollmentTokenView) -> String {
    token
        .labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn uses_text(token: &EnrollmentTokenView) -> String {
    match token.max_uses {
        Some(max) => format!("{}/{max}", token.use_count),
        None => format!("{}/unlimited", token.use_count),
    }
}

fn expires_text(token: &EnrollmentTokenView, now: SystemTime) -> String {
    token.expires_at.map_or_else(
        || "never".to_owned(),
        |_| relative_time_opt(now, token.expires_at),
    )
}

/// Renders a new token and its one-time secret.
pub(crate) fn render_created(created: &CreatedTokenView, now: SystemTime) -> String {
    let t = &created.token;
    let labels = labels_text(t);
    let mut text = format!("Enrollment token {} created.\n\n", t.token_id);
    text.push_str(&key_values(
        2,
        &[
            (
                "Description",
                if t.description.is_empty() {
                    NONE.to_owned()
                } else {
                    t.description.clone()
                },
            ),
            (
                "Labels",
                if labels.is_empty() {
                    NONE.to_owned()
                } else {
                    labels
                },
            ),
            ("Uses", uses_text(t)),
            (
                "Expires",
                match t.expires_at {
                    Some(_) => format!("{} ({})", expires_text(t, now), rfc3339_opt(t.expires_at)),
                    None => "never".to_owned(),
                },
            ),
        ],
    ));
    text.push_str(&secret_block("Secret", &created.secret));
    text
}

/// Renders `enroll-token list` as a table.
pub(crate) fn render_table(tokens: &[EnrollmentTokenView], now: SystemTime) -> String {
    let mut table = Table::new([
        "ID",
        "STATE",
        "USES",
        "EXPIRES",
        "CREATED",
        "DESCRIPTION",
        "LABELS",
    ]);
    for t in tokens {
        let labels = labels_text(t);
        table.push([
            t.token_id.clone(),
            t.state.as_str().to_owned(),
            uses_text(t),
            expires_text(t, now),
            relative_time_opt(now, t.created_at),
            if t.description.is_empty() {
                NONE.to_owned()
            } else {
                t.description.clone()
            },
            if labels.is_empty() {
                NONE.to_owned()
            } else {
                labels
            },
        ]);
    }
    table.render()
}

/// Renders `enroll-token list -o csv`.
pub(crate) fn render_csv(tokens: &[EnrollmentTokenView]) -> String {
    let opt_time = |t: Option<SystemTime>| {
        t.map(|t| humantime::format_rfc3339_seconds(t).to_string())
            .unwrap_or_default()
    };
    let mut text = csv_record([
        "token_id",
        "state",
        "use_count",
        "max_uses",
        "created_at",
        "expires_at",
        "revoked",
        "description",
        "labels",
    ]);
    for t in tokens {
        text.push_str(&csv_record([
            t.token_id.clone(),
            t.state.as_str().to_owned(),
            t.use_count.to_string(),
            t.max_uses.map(|n| n.to_string()).unwrap_or_default(),
            opt_time(t.created_at),
            opt_time(t.expires_at),
            t.revoked.to_string(),
            t.description.clone(),
            labels_text(t),
        ]));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::TokenState;
    use std::collections::BTreeMap;
    use std::time::Duration;

    fn token() -> EnrollmentTokenView {
        EnrollmentTokenView {
            token_id: "et-1".into(),
            org_id: "o".into(),
            description: "rack 4, row \"b\"".into(),
            labels: BTreeMap::from([("env".into(), "prod".into())]),
            max_uses: Some(10),
            use_count: 3,
            created_at: Some(SystemTime::UNIX_EPOCH),
            expires_at: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(7_200)),
            revoked: false,
            state: TokenState::Active,
        }
    }

    #[test]
    fn created_token_shows_secret_once() {
        let created = CreatedTokenView {
            token: token(),
            secret: "tet_enroll_abc".into(),
        };
        let text = render_created(&created, SystemTime::UNIX_EPOCH + Duration::from_secs(60));
        assert_eq!(text.matches("tet_enroll_abc").count(), 1, "{text}");
        assert!(text.contains("shown only this once"), "{text}");
        assert!(text.contains("Uses:         3/10"), "{text}");
        assert!(text.contains("in 1h"), "{text}");
    }

    #[test]
    fn csv_quotes_description() {
        let text = render_csv(&[token()]);
        assert_eq!(
            text.lines().nth(1),
            Some(
                "et-1,active,3,10,1970-01-01T00:00:00Z,1970-01-01T02:00:00Z,false,\"rack 4, row \"\"b\"\"\",env=prod"
            )
        );
    }
}
