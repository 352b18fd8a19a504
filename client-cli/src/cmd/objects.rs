//! The flow that `tokens`, `enroll-token` and `orgs` share: list the objects of one kind, revoke
//! one by id, and show a new one's secret once.
//!
//! Each command supplies only what differs: the RPC it calls and, through [`AdminObject`], how
//! its kind is named, converted and rendered. The flow itself (connect, call, map a refused call
//! to a [`CliError`], convert every object as of one `now`, pick the output format) is written
//! once, here, so the three commands cannot drift apart.

use std::future::Future;
use std::io::Write;
use std::time::SystemTime;

use serde::Serialize;

use crate::cli::{ObjectFormat, RevokeTokenArgs, Ttl};
use crate::client::{AdminClient, Connection};
use crate::config::Settings;
use crate::{CliError, write_json};

use super::{required_id, write_text};
use crate::format::escape;

/// An object kind the admin commands list and revoke.
pub(crate) trait AdminObject: Serialize + Sized {
    /// The wire type the server answers with.
    type Pb;

    /// The kind inside a sentence, lowercase: `token`, `enrollment token`, `org`.
    const NOUN: &'static str;

    /// The kind in "No … found.": `API tokens`, `enrollment tokens`, `orgs`.
    const PLURAL: &'static str;

    /// The view of `pb`, any state in it (expired, exhausted) decided as of `now`.
    fn from_wire(pb: Self::Pb, now: SystemTime) -> Self;

    /// A listing as a table for people.
    fn render_table(objects: &[Self], now: SystemTime) -> String;
}

/// Connects, lists objects with `rpc`, and converts them as of one `now`, which it returns for
/// rendering.
///
/// # Errors
///
/// An unreachable server, or the call refused.
pub(crate) async fn fetch<T, F, Fut>(
    settings: &Settings,
    rpc: F,
) -> Result<(Vec<T>, SystemTime), CliError>
where
    T: AdminObject,
    F: FnOnce(AdminClient) -> Fut,
    Fut: Future<Output = Result<Vec<T::Pb>, tonic::Status>>,
{
    let conn = Connection::connect(settings).await?;
    let now = SystemTime::now();
    let objects = rpc(conn.admin())
        .await
        .map_err(|status| conn.error(&status, None))?;
    let objects = objects
        .into_iter()
        .map(|pb| T::from_wire(pb, now))
        .collect();
    Ok((objects, now))
}

/// Prints a listing: a table (or a line saying there is nothing) for people, a JSON array for
/// scripts.
///
/// # Errors
///
/// Writing to `out` failed.
pub(crate) fn print_list<T: AdminObject>(
    objects: &[T],
    output: ObjectFormat,
    now: SystemTime,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    super::print_list(out, output, objects, T::PLURAL, |objects| {
        T::render_table(objects, now)
    })
}

/// `… list`: [`fetch`], then [`print_list`].
///
/// # Errors
///
/// As [`fetch`] and [`print_list`].
pub(crate) async fn list<T, F, Fut>(
    settings: &Settings,
    output: ObjectFormat,
    out: &mut (dyn Write + Send),
    rpc: F,
) -> Result<(), CliError>
where
    T: AdminObject,
    F: FnOnce(AdminClient) -> Fut,
    Fut: Future<Output = Result<Vec<T::Pb>, tonic::Status>>,
{
    let (objects, now) = fetch::<T, _, _>(settings, rpc).await?;
    print_list(&objects, output, now, out)
}

/// `… revoke ID`: checks the id, revokes it with `rpc`, and prints a confirmation for people or
/// the revoked object (`null` if the server sent none) for scripts.
///
/// # Errors
///
/// [`CliError::Usage`] for an empty id; an unreachable server; the call refused (an unknown id
/// is reported as the kind and id, e.g. "token t-1").
pub(crate) async fn revoke<T, F, Fut>(
    args: RevokeTokenArgs,
    settings: &Settings,
    out: &mut (dyn Write + Send),
    rpc: F,
) -> Result<(), CliError>
where
    T: AdminObject,
    F: FnOnce(AdminClient, String) -> Fut,
    Fut: Future<Output = Result<Option<T::Pb>, tonic::Status>>,
{
    let id = required_id(&args.id, "token")?;
    let conn = Connection::connect(settings).await?;
    let revoked = rpc(conn.admin(), id.clone())
        .await
        .map_err(|status| conn.error(&status, Some(&format!("{} {id}", T::NOUN))))?;
    match args.output {
        ObjectFormat::Table => {
            let line = format!("{} {} revoked.\n", capitalized(T::NOUN), escape(&id));
            write_text(out, &line)?;
        }
        ObjectFormat::Json => {
            let now = SystemTime::now();
            write_json(out, &revoked.map(|pb| T::from_wire(pb, now)))?;
        }
    }
    Ok(())
}

/// `--ttl` as the wire's optional duration (`None`: never expires).
///
/// # Errors
///
/// [`CliError::Usage`] for a lifetime too long to send.
pub(crate) fn ttl_to_pb(ttl: Ttl) -> Result<Option<prost_types::Duration>, CliError> {
    match ttl {
        Ttl::Never => Ok(None),
        Ttl::After(d) => prost_types::Duration::try_from(d)
            .map(Some)
            .map_err(|_| CliError::Usage("--ttl is too long".to_owned())),
    }
}

/// The one-time secret, set apart with a warning that it cannot be retrieved later.
pub(crate) fn secret_block(what: &str, secret: &str) -> String {
    let secret = escape(secret);
    format!(
        "\n{what} (shown only this once; store it now, it cannot be retrieved later):\n\n    \
         {secret}\n"
    )
}

/// `noun` with its first letter in upper case, to start a sentence.
fn capitalized(noun: &str) -> String {
    let mut chars = noun.chars();
    chars
        .next()
        .map(|first| first.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentences_start_with_the_capitalized_noun() {
        assert_eq!(capitalized("enrollment token"), "Enrollment token");
        assert_eq!(capitalized("token"), "Token");
        assert_eq!(capitalized(""), "");
    }

    /// What listing no objects of kind `T` prints.
    fn empty_listing<T: AdminObject>(output: ObjectFormat) -> String {
        let mut out = Vec::new();
        print_list::<T>(&[], output, SystemTime::UNIX_EPOCH, &mut out).expect("writes");
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn empty_listings_say_so_and_json_stays_an_array() {
        use crate::view::{ApiTokenView, EnrollmentTokenView, OrgView};
        assert_eq!(
            empty_listing::<ApiTokenView>(ObjectFormat::Table),
            "No API tokens found.\n"
        );
        assert_eq!(
            empty_listing::<EnrollmentTokenView>(ObjectFormat::Table),
            "No enrollment tokens found.\n"
        );
        assert_eq!(
            empty_listing::<OrgView>(ObjectFormat::Table),
            "No orgs found.\n"
        );
        assert_eq!(empty_listing::<OrgView>(ObjectFormat::Json), "[]\n");
    }

    #[test]
    fn ttls_become_wire_durations() {
        assert_eq!(ttl_to_pb(Ttl::Never).expect("never"), None);
        assert_eq!(
            ttl_to_pb(Ttl::After(std::time::Duration::from_secs(90))).expect("fits"),
            Some(prost_types::Duration {
                seconds: 90,
                nanos: 0
            })
        );
        assert!(matches!(
            ttl_to_pb(Ttl::After(std::time::Duration::MAX)),
            Err(CliError::Usage(_))
        ));
    }
}
