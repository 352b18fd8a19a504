//! `enroll-token create|list|revoke`: enrollment tokens through `AdminService` (admin role).
//!
//! The secret of a new token is printed once, set apart so it is easy to copy; it is never
//! shown again by any command.

use std::collections::HashMap;
use std::io::Write;
use std::time::SystemTime;

use tether_proto as pb;

use crate::CliError;
use crate::cli::{CreateTokenArgs, ListTokensArgs, ObjectFormat, RevokeTokenArgs, SeriesFormat};
use crate::client::Connection;
use crate::config::Settings;
use crate::format::{
    Table, csv_record, csv_time, escape, key_values, labels_text, or_none, relative_time_detail,
    relative_time_opt,
};
use crate::selector::parse_labels;
use crate::view::{CreatedTokenView, EnrollmentTokenView};

use super::objects::{self, AdminObject, secret_block, ttl_to_pb};
use super::{print_object, write_text};

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
        allow_reclaim: args.allow_reclaim,
    };
    let conn = Connection::connect(settings).await?;
    let pb::CreateEnrollmentTokenResponse { token, secret } = conn
        .admin()
        .create_enrollment_token(request)
        .await
        .map_err(|status| conn.error(&status, None))?
        .into_inner();
    let now = SystemTime::now();
    let created = CreatedTokenView {
        token: EnrollmentTokenView::from_pb(token.unwrap_or_default(), now),
        secret,
    };
    print_object(out, args.output, &created, |created| {
        render_created(created, now)
    })?;
    // Only for people: `-o json` stays one JSON document.
    if args.qr && args.output == ObjectFormat::Table {
        let command = enrollment_command(conn.server(), &created.secret);
        write_text(out, &format!("\nEnroll a machine: {command}\n\n"))?;
        // The QR code's blocks are printable; written as is.
        out.write_all(render_qr(&command)?.as_bytes())?;
    }
    Ok(())
}

/// The command that enrolls a machine with `secret` against `server`.
pub(crate) fn enrollment_command(server: &str, secret: &str) -> String {
    format!("tether-agent --server {server} --enroll-token {secret}")
}

/// `text` as a QR code of Unicode half blocks (two modules a character), dark on light.
///
/// # Errors
///
/// `Usage` if `text` is too long for a QR code.
pub(crate) fn render_qr(text: &str) -> Result<String, CliError> {
    let code = qrcode::QrCode::new(text.as_bytes()).map_err(|e| {
        CliError::Usage(format!(
            "cannot encode the enrollment command as a QR code: {e}"
        ))
    })?;
    Ok(code
        .render::<qrcode::render::unicode::Dense1x2>()
        .dark_color(qrcode::render::unicode::Dense1x2::Light)
        .light_color(qrcode::render::unicode::Dense1x2::Dark)
        .quiet_zone(true)
        .build()
        + "\n")
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
                .list_enrollment_tokens(request)
                .await?
                .into_inner()
                .tokens)
        })
        .await?;
    match args.output {
        SeriesFormat::Table => objects::print_list(&tokens, ObjectFormat::Table, now, out),
        SeriesFormat::Json => objects::print_list(&tokens, ObjectFormat::Json, now, out),
        SeriesFormat::Csv => write_text(out, &render_csv(&tokens)),
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
                .revoke_enrollment_token(request)
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

fn uses_text(token: &EnrollmentTokenView) -> String {
    match token.max_uses {
        Some(max) => format!("{}/{max}", token.use_count),
        None => format!("{}/unlimited", token.use_count),
    }
}

/// Renders a new token and its one-time secret.
pub(crate) fn render_created(created: &CreatedTokenView, now: SystemTime) -> String {
    let t = &created.token;
    let mut text = format!("Enrollment token {} created.\n\n", escape(&t.token_id));
    text.push_str(&key_values(
        2,
        &[
            ("Description", or_none(&t.description)),
            ("Labels", or_none(&labels_text(&t.labels))),
            ("Uses", uses_text(t)),
            ("Expires", relative_time_detail(now, t.expires_at)),
            (
                "Reclaim",
                if t.allow_reclaim {
                    "takes over the one disconnected agent with the same hardware id"
                } else {
                    "no (a machine keeps its agent only with its previous credential)"
                }
                .to_owned(),
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
        table.push([
            t.token_id.clone(),
            t.state.as_str().to_owned(),
            uses_text(t),
            relative_time_opt(now, t.expires_at),
            relative_time_opt(now, t.created_at),
            or_none(&t.description),
            or_none(&labels_text(&t.labels)),
        ]);
    }
    table.render()
}

/// Renders `enroll-token list -o csv`.
pub(crate) fn render_csv(tokens: &[EnrollmentTokenView]) -> String {
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
            csv_time(t.created_at),
            csv_time(t.expires_at),
            t.revoked.to_string(),
            t.description.clone(),
            labels_text(&t.labels),
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
            allow_reclaim: false,
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
        // 1h 59m away: rounded to the nearest hour.
        assert!(text.contains("in 2h"), "{text}");
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

#[cfg(test)]
mod qr_tests {
    use super::*;

    #[test]
    fn the_qr_code_is_a_square_of_half_blocks_holding_the_command() {
        let command = enrollment_command("https://tether.example:7600", "tether_enroll_abc");
        assert_eq!(
            command,
            "tether-agent --server https://tether.example:7600 --enroll-token tether_enroll_abc"
        );
        let qr = render_qr(&command).expect("fits a QR code");
        let lines: Vec<&str> = qr.lines().collect();
        let width = lines[0].chars().count();
        // Two modules per line: about half as many lines as columns.
        assert!(width >= 25, "{qr}");
        assert!(lines.iter().all(|l| l.chars().count() == width), "{qr}");
        assert!(
            lines.len() * 2 >= width && lines.len() * 2 <= width + 2,
            "{qr}"
        );
        assert!(
            qr.chars()
                .all(|c| matches!(c, ' ' | '▀' | '▄' | '█' | '\n')),
            "{qr}"
        );
        assert!(render_qr(&"x".repeat(10_000)).is_err());
    }
}
