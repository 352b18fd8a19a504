//! `enroll-token create|list|revoke`: enrollment tokens through `AdminService` (admin role).
//!
//! The secret of a new token is printed once, set apart so it is easy to copy; it is never
//! shown again by any command.

use std::collections::HashMap;
use std::io::Write;
use std::time::SystemTime;

use tether_proto as pb;

use crate::cli::{
    CreateTokenArgs, ListTokensArgs, ObjectFormat, RevokeTokenArgs, SeriesFormat, Ttl,
};
use crate::client::{Connection, unary};
use crate::config::Settings;
use crate::format::{NONE, Table, csv_record, key_values, relative_time_opt, rfc3339_opt};
use crate::selector::parse_labels;
use crate::view::{CreatedTokenView, EnrollmentTokenView};
use crate::{CliError, write_json};

/// `enroll-token create`.
pub(crate) async fn create(
    args: CreateTokenArgs,
    settings: &Settings,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let labels: HashMap<String, String> = parse_labels(&args.labels)?.into_iter().collect();
    let ttl = match args.ttl {
        Ttl::Never => None,
        Ttl::After(d) => Some(
            prost_types::Duration::try_from(d)
                .map_err(|_| CliError::Usage("--ttl is too long".to_owned()))?,
        ),
    };
    let request = pb::CreateEnrollmentTokenRequest {
        description: args.description,
        labels,
        max_uses: args.max_uses,
        ttl,
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
    let conn = Connection::connect(settings).await?;
    let now = SystemTime::now();
    let tokens: Vec<EnrollmentTokenView> = conn
        .admin()
        .list_enrollment_tokens(unary(pb::ListEnrollmentTokensRequest {}))
        .await
        .map_err(|status| conn.error(&status, None))?
        .into_inner()
        .tokens
        .into_iter()
        .map(|t| EnrollmentTokenView::from_pb(t, now))
        .collect();
    match args.output {
        SeriesFormat::Table if tokens.is_empty() => writeln!(out, "No enrollment tokens found.")?,
        SeriesFormat::Table => out.write_all(render_table(&tokens, now).as_bytes())?,
        SeriesFormat::Json => write_json(out, &tokens)?,
        SeriesFormat::Csv => out.write_all(render_csv(&tokens).as_bytes())?,
    }
    Ok(())
}

/// `enroll-token revoke ID`.
pub(crate) async fn revoke(
    args: RevokeTokenArgs,
    settings: &Settings,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let id = args.id.trim().to_owned();
    if id.is_empty() {
        return Err(CliError::Usage("the token id must not be empty".to_owned()));
    }
    let conn = Connection::connect(settings).await?;
    let token = conn
        .admin()
        .revoke_enrollment_token(unary(pb::RevokeEnrollmentTokenRequest {
            token_id: id.clone(),
        }))
        .await
        .map_err(|status| conn.error(&status, Some(&format!("enrollment token {id}"))))?
        .into_inner()
        .token;
    match args.output {
        ObjectFormat::Table => writeln!(out, "Enrollment token {id} revoked.")?,
        ObjectFormat::Json => {
            let now = SystemTime::now();
            let token = token.map(|t| EnrollmentTokenView::from_pb(t, now));
            write_json(out, &token)?;
        }
    }
    Ok(())
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
    text.push_str(
        "\nSecret (shown only this once; store it now, it cannot be retrieved later):\n\n",
    );
    text.push_str(&format!("    {}\n", created.secret));
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
