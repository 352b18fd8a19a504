//! Watches that outlive their server: the loop `agents watch` and `alerts watch` share.
//!
//! When the server ends a watch that fell behind (`ABORTED`) it resubscribes at once; when the
//! server goes away (a restart, a lost connection) it resumes as soon as the server answers
//! again, waiting longer between tries while it does not. Each (re)subscription starts with a
//! fresh snapshot, which the caller's events show. Any other error ends the watch.

use std::future::Future;
use std::time::Duration;

use crate::CliError;
use crate::client::Connection;

/// Pause before resubscribing after the server ended a watch that fell behind.
const RESUBSCRIBE_DELAY: Duration = Duration::from_millis(250);

/// First pause before resuming a watch whose server went away; doubled up to
/// [`RESUME_MAX_DELAY`] while it stays away.
const RESUME_DELAY: Duration = Duration::from_millis(500);
const RESUME_MAX_DELAY: Duration = Duration::from_secs(10);

/// What the caller saw: an event (counted against `--max-events`), or the marker that ends a
/// snapshot (not counted).
pub(crate) enum Seen {
    Event,
    Marker,
}

/// Opens the watch with `open` and hands each event to `on_event` (which prints it) until
/// `max_events` events were seen, resuming as the module says.
///
/// # Errors
///
/// `on_event`'s error, or the status no retry can fix (a revoked token, say).
pub(crate) async fn follow<E, Open, Fut>(
    conn: &Connection,
    max_events: Option<u64>,
    mut open: Open,
    mut on_event: impl FnMut(E) -> Result<Seen, CliError>,
) -> Result<(), CliError>
where
    Open: FnMut() -> Fut,
    Fut: Future<Output = Result<tonic::Response<tonic::Streaming<E>>, tonic::Status>>,
{
    let mut resume_delay = RESUME_DELAY;
    let mut n_events: u64 = 0;
    if max_events == Some(0) {
        return Ok(());
    }
    loop {
        let ended = match open().await {
            Ok(response) => {
                let mut stream = response.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(event)) => {
                            resume_delay = RESUME_DELAY;
                            if let Seen::Event = on_event(event)? {
                                n_events += 1;
                                if max_events.is_some_and(|max| n_events >= max) {
                                    return Ok(());
                                }
                            }
                        }
                        Ok(None) => break None,
                        Err(status) => break Some(status),
                    }
                }
            }
            Err(status) => Some(status),
        };
        match ended {
            Some(status) if status.code() == tonic::Code::Aborted => {
                eprintln!(
                    "tetherctl: the watch fell behind the server and was ended ({}); \
                     resubscribing, a fresh snapshot follows",
                    crate::format::escape(status.message())
                );
                tokio::time::sleep(RESUBSCRIBE_DELAY).await;
            }
            Some(status) if !is_transient(status.code()) => {
                return Err(conn.error(&status, None));
            }
            ended => {
                let why = ended.map_or_else(
                    || "the server ended the watch".to_owned(),
                    |status| conn.error(&status, None).to_string(),
                );
                eprintln!(
                    "tetherctl: {}; resuming in {} (a fresh snapshot follows)",
                    crate::format::escape(&why),
                    crate::format::short_duration(resume_delay)
                );
                tokio::time::sleep(resume_delay).await;
                resume_delay = (resume_delay * 2).min(RESUME_MAX_DELAY);
            }
        }
    }
}

/// Whether a watch that ended with `code` may be resumed: the server or the path to it went
/// away, and may come back.
fn is_transient(code: tonic::Code) -> bool {
    use tonic::Code;
    matches!(
        code,
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded
    )
}
