//! Command implementations, one module per command group, the dispatcher that routes a parsed
//! [`Command`] to them, and the few steps every command group takes the same way: checking an
//! id argument, printing one object as text or JSON, writing text for people
//! ([`write_text`]: nothing non-printable reaches the terminal), and following the pages of a
//! list RPC.

use std::future::Future;
use std::io::Write;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::cli::{
    AgentsCommand, ApiTokensCommand, Command, EnrollTokenCommand, ObjectFormat, OrgsCommand,
};
use crate::client::Connection;
use crate::config::Settings;
use crate::console::Console;
use crate::{CliError, write_json};

mod agents;
pub(crate) mod audit;
mod command;
mod enroll;
mod fleet;
#[cfg(test)]
mod hostile;
mod objects;
mod orgs;
mod tokens;

/// Runs `command` against the server in `settings`, writing its output to `out`; `console`
/// says whether it may colour output and ask questions.
pub(crate) async fn dispatch(
    command: Command,
    settings: &Settings,
    console: Console,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    match command {
        Command::Agents(AgentsCommand::List(args)) => agents::list(args, settings, out).await,
        Command::Agents(AgentsCommand::Get(args)) => agents::get(args, settings, out).await,
        Command::Agents(AgentsCommand::Watch(args)) => agents::watch(args, settings, out).await,
        Command::Agents(AgentsCommand::Delete(args)) => agents::delete(args, settings, out).await,
        Command::Agents(AgentsCommand::AllowReclaim(args)) => {
            agents::allow_reclaim(args, settings, out).await
        }
        Command::Metrics(args) => fleet::metrics(args, settings, out).await,
        Command::Summary(args) => fleet::summary(args, settings, out).await,
        Command::Config(args) => fleet::config(args, settings, out).await,
        Command::EnrollToken(EnrollTokenCommand::Create(args)) => {
            enroll::create(args, settings, out).await
        }
        Command::EnrollToken(EnrollTokenCommand::List(args)) => {
            enroll::list(args, settings, out).await
        }
        Command::EnrollToken(EnrollTokenCommand::Revoke(args)) => {
            enroll::revoke(args, settings, out).await
        }
        Command::Orgs(OrgsCommand::Create(args)) => orgs::create(args, settings, out).await,
        Command::Orgs(OrgsCommand::List(args)) => orgs::list(args, settings, out).await,
        Command::Tokens(ApiTokensCommand::Create(args)) => {
            tokens::create(args, settings, out).await
        }
        Command::Tokens(ApiTokensCommand::List(args)) => tokens::list(args, settings, out).await,
        Command::Tokens(ApiTokensCommand::Revoke(args)) => {
            tokens::revoke(args, settings, out).await
        }
        Command::Audit(args) => audit::run(args, settings, out).await,
        Command::Cmd(command) => command::dispatch(command, settings, console, out).await,
    }
}

/// The start of `--since DURATION`: that long before now.
///
/// # Errors
///
/// [`CliError::Usage`] for a zero duration, or one reaching before the clock's start.
pub(crate) fn since_time(since: Duration) -> Result<SystemTime, CliError> {
    if since.is_zero() {
        return Err(CliError::Usage(
            "--since must be longer than zero".to_owned(),
        ));
    }
    SystemTime::now()
        .checked_sub(since)
        .ok_or_else(|| CliError::Usage("--since reaches too far back".to_owned()))
}

/// `raw` without surrounding spaces; an empty id is a usage error naming `what` ("the agent id
/// must not be empty").
///
/// # Errors
///
/// [`CliError::Usage`] when nothing but spaces was given.
pub(crate) fn required_id(raw: &str, what: &str) -> Result<String, CliError> {
    let id = raw.trim();
    if id.is_empty() {
        return Err(CliError::Usage(format!("the {what} id must not be empty")));
    }
    Ok(id.to_owned())
}

/// Prints one object: `render`'s text for people, or the stable JSON document for scripts.
///
/// # Errors
///
/// Writing to `out` failed.
pub(crate) fn print_object<T: Serialize>(
    out: &mut (dyn Write + Send),
    output: ObjectFormat,
    value: &T,
    render: impl FnOnce(&T) -> String,
) -> Result<(), CliError> {
    match output {
        ObjectFormat::Table => write_text(out, &render(value))?,
        ObjectFormat::Json => write_json(out, value)?,
    }
    Ok(())
}

/// Writes rendered text for people. Renderers escape every field they show (`Table`,
/// `key_values`, `format::escape`); this last pass escapes whatever non-printable character is
/// left, keeping the renderer's own line breaks, so nothing a server or agent sent can act on
/// the terminal.
///
/// # Errors
///
/// Writing to `out` failed.
pub(crate) fn write_text(out: &mut (dyn Write + Send), text: &str) -> Result<(), CliError> {
    out.write_all(crate::format::terminal_safe(text).as_bytes())?;
    Ok(())
}

/// Prints a listing: `render`'s table for people, or "No {plural} found." when there is
/// nothing; one JSON array (`[]` when empty) for scripts.
///
/// # Errors
///
/// Writing to `out` failed.
pub(crate) fn print_list<T: Serialize>(
    out: &mut (dyn Write + Send),
    output: ObjectFormat,
    items: &[T],
    plural: &str,
    render: impl FnOnce(&[T]) -> String,
) -> Result<(), CliError> {
    match output {
        ObjectFormat::Table if items.is_empty() => writeln!(out, "No {plural} found.")?,
        ObjectFormat::Table => write_text(out, &render(items))?,
        ObjectFormat::Json => write_json(out, items)?,
    }
    Ok(())
}

/// Follows the pages of a list RPC until its last page, or until `limit` items when given.
///
/// `page(page_size, page_token)` fetches one page of at most `page_size` (≤ `max_page_size`)
/// items and returns them with the next page token, empty on the last page.
///
/// # Errors
///
/// Whatever `page` returns, and [`CliError::Server`] when the server hands out the same page
/// token twice (following it would never end).
pub(crate) async fn fetch_pages<T, F, Fut>(
    max_page_size: u32,
    limit: Option<u32>,
    mut page: F,
) -> Result<Vec<T>, CliError>
where
    F: FnMut(i32, String) -> Fut,
    Fut: Future<Output = Result<(Vec<T>, String), CliError>>,
{
    let limit = limit.map(|n| n as usize);
    let mut items = Vec::new();
    let mut page_token = String::new();
    loop {
        let wanted = limit.map_or(max_page_size as usize, |n| n - items.len());
        let page_size = i32::try_from(wanted.min(max_page_size as usize))
            .expect("page sizes are small constants");
        let (batch, next_page_token) = page(page_size, page_token.clone()).await?;
        items.extend(batch);
        if let Some(limit) = limit
            && items.len() >= limit
        {
            items.truncate(limit);
            break;
        }
        if next_page_token.is_empty() {
            break;
        }
        if next_page_token == page_token {
            return Err(CliError::Server {
                code: "Internal".to_owned(),
                message: "the server returned the same page token twice".to_owned(),
            });
        }
        page_token = next_page_token;
    }
    Ok(items)
}

/// A list request that carries its own paging fields (`page_size`, `page_token`).
pub(crate) trait Paged: Clone {
    /// This request, asking for one page.
    fn page(&self, page_size: i32, page_token: String) -> Self;
}

/// [`fetch_pages`] for a request that pages itself: `rpc` sends one page's request and
/// answers that page's items and the next page token; a refusal becomes a [`CliError`] through
/// `conn` with `what` (see [`Connection::error`]).
///
/// # Errors
///
/// As [`fetch_pages`], and the call refused.
pub(crate) async fn fetch_paged<R, T, F, Fut>(
    conn: &Connection,
    max_page_size: u32,
    limit: Option<u32>,
    base: &R,
    what: Option<&str>,
    mut rpc: F,
) -> Result<Vec<T>, CliError>
where
    R: Paged,
    F: FnMut(R) -> Fut,
    Fut: Future<Output = Result<(Vec<T>, String), tonic::Status>>,
{
    fetch_pages(max_page_size, limit, |page_size, page_token| {
        let call = rpc(base.page(page_size, page_token));
        async move { call.await.map_err(|status| conn.error(&status, what)) }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pages of `page_size` numbers out of `0..n`, the token being the next number.
    async fn numbers(
        n: u32,
        page_size: i32,
        page_token: String,
    ) -> Result<(Vec<u32>, String), CliError> {
        let start: u32 = page_token.parse().unwrap_or(0);
        let end = (start + u32::try_from(page_size).expect("positive")).min(n);
        let next = if end < n {
            end.to_string()
        } else {
            String::new()
        };
        Ok(((start..end).collect(), next))
    }

    #[tokio::test]
    async fn pages_are_followed_to_the_end_or_the_limit() {
        let all = fetch_pages(3, None, |size, token| numbers(10, size, token))
            .await
            .expect("pages");
        assert_eq!(all, (0..10).collect::<Vec<_>>());
        let mut sizes = Vec::new();
        let some = fetch_pages(3, Some(4), |size, token| {
            sizes.push(size);
            numbers(10, size, token)
        })
        .await
        .expect("pages");
        assert_eq!(some, [0, 1, 2, 3]);
        assert_eq!(
            sizes,
            [3, 1],
            "the last request asks only for what is missing"
        );
    }

    #[tokio::test]
    async fn a_repeated_page_token_is_an_error_not_a_loop() {
        let err = fetch_pages(3, None, |_, _| async { Ok((vec![1], "same".to_owned())) })
            .await
            .expect_err("loops");
        assert!(matches!(err, CliError::Server { .. }), "{err:?}");
    }

    #[test]
    fn since_is_a_recent_past_instant() {
        let hour = Duration::from_secs(3_600);
        let before = SystemTime::now();
        let since = since_time(hour).expect("an hour ago");
        assert!(before - hour <= since && since <= SystemTime::now() - hour);
        assert!(matches!(
            since_time(Duration::ZERO),
            Err(CliError::Usage(_))
        ));
        assert!(matches!(since_time(Duration::MAX), Err(CliError::Usage(_))));
    }

    #[test]
    fn ids_are_trimmed_and_required() {
        assert_eq!(required_id(" a-1 ", "agent").expect("id"), "a-1");
        let err = required_id("  ", "org").expect_err("empty");
        assert_eq!(err.to_string(), "the org id must not be empty");
    }
}
