//! Finding the agent a person means from what they typed: its id, the start of its id, its
//! name or its hostname (kubectl's habit of naming objects the way people remember them).
//!
//! The order: an exact id (the command's own call, made with the text); else exact names and
//! hostnames (case-insensitive, found with the server's name filter); else ids starting with
//! the text (the server's `id_prefix` filter). One match is the agent; several are an error that lists them; none is
//! "agent X not found", whatever the text looked like (a malformed id is simply not found).
//! Expired agents count: they can still be read and deleted.

use std::future::Future;

use tether_proto as pb;

use crate::CliError;
use crate::client::Connection;

/// Most candidates read per search: enough to tell one from several, and to list them.
const MAX_CANDIDATES: i32 = 20;

/// Most characters of an agent id (the server's id grammar).
const MAX_ID_LEN: usize = 64;

/// One agent a lookup found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Candidate {
    pub id: String,
    pub name: String,
    pub hostname: String,
}

/// Calls `call` with the agent `text` names and returns the agent's id with the answer.
///
/// Text that could be an id is tried as one first, so an exact id costs one call and the
/// call's own refusal (`PERMISSION_DENIED`, say) is what the person sees; only when that agent
/// does not exist is `text` looked up ([`find`]) and the call made again with what it found.
///
/// # Errors
///
/// [`CliError::NotFound`] when no agent matches; [`CliError::Usage`] when several do (the
/// message lists them); an unreachable server, or the call refused.
pub(crate) async fn call_with_agent<T, F, Fut>(
    conn: &Connection,
    text: &str,
    mut call: F,
) -> Result<(String, T), CliError>
where
    F: FnMut(String) -> Fut,
    Fut: Future<Output = Result<T, tonic::Status>>,
{
    let text = super::super::required_id(text, "agent")?;
    let refused =
        |id: &str, status: &tonic::Status| conn.error(status, Some(&format!("agent {id}")));
    if is_id_text(&text) {
        match call(text.clone()).await {
            Ok(answer) => return Ok((text, answer)),
            Err(status) if status.code() == tonic::Code::NotFound => {}
            Err(status) => return Err(refused(&text, &status)),
        }
    }
    let id = find(conn, &text).await?;
    if id == text {
        // Found under its own id, which was just tried: it went away in between.
        return Err(not_found(&text));
    }
    match call(id.clone()).await {
        Ok(answer) => Ok((id, answer)),
        Err(status) => Err(refused(&id, &status)),
    }
}

/// The id of the one agent whose name or hostname is `text`, else whose id starts with it.
///
/// # Errors
///
/// As [`call_with_agent`], without the call.
pub(crate) async fn find(conn: &Connection, text: &str) -> Result<String, CliError> {
    let named = search(conn, name_request(text))
        .await?
        .into_iter()
        .filter(|c| c.name.eq_ignore_ascii_case(text) || c.hostname.eq_ignore_ascii_case(text))
        .collect();
    let prefix = text.to_ascii_lowercase();
    let by_prefix = if is_id_text(&prefix) {
        search(conn, prefix_request(&prefix)).await?
    } else {
        Vec::new()
    };
    pick(text, named, by_prefix)
}

fn not_found(text: &str) -> CliError {
    CliError::NotFound(format!("agent {} not found", crate::format::escape(text)))
}

/// The one agent among the name matches, else among the id-prefix matches.
///
/// # Errors
///
/// As [`resolve`].
pub(crate) fn pick(
    text: &str,
    named: Vec<Candidate>,
    by_prefix: Vec<Candidate>,
) -> Result<String, CliError> {
    let candidates = if named.is_empty() { by_prefix } else { named };
    match candidates.as_slice() {
        [] => Err(not_found(text)),
        [one] => Ok(one.id.clone()),
        many => {
            let listed: Vec<String> = many
                .iter()
                .map(|c| {
                    format!(
                        "{} ({})",
                        c.id,
                        crate::format::escape(if c.name.is_empty() {
                            &c.hostname
                        } else {
                            &c.name
                        })
                    )
                })
                .collect();
            let more = if many.len() >= MAX_CANDIDATES as usize {
                " and more"
            } else {
                ""
            };
            Err(CliError::Usage(format!(
                "`{}` matches {} agents: {}{more}; give more of the id",
                crate::format::escape(text),
                many.len(),
                listed.join(", ")
            )))
        }
    }
}

/// Whether `text` could be (the start of) an agent id: the server's id characters.
fn is_id_text(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= MAX_ID_LEN
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn name_request(text: &str) -> pb::ListAgentsRequest {
    pb::ListAgentsRequest {
        query: text.to_owned(),
        include_expired: true,
        page_size: MAX_CANDIDATES * 5,
        ..pb::ListAgentsRequest::default()
    }
}

fn prefix_request(prefix: &str) -> pb::ListAgentsRequest {
    pb::ListAgentsRequest {
        id_prefix: prefix.to_owned(),
        include_expired: true,
        page_size: MAX_CANDIDATES,
        ..pb::ListAgentsRequest::default()
    }
}

/// One page of candidates. A text the server will not take as a filter (control characters)
/// matches nothing.
async fn search(
    conn: &Connection,
    request: pb::ListAgentsRequest,
) -> Result<Vec<Candidate>, CliError> {
    match conn.fleet().list_agents(request).await {
        Ok(page) => Ok(page
            .into_inner()
            .agents
            .into_iter()
            .map(|agent| Candidate {
                hostname: agent
                    .system_info
                    .map(|info| info.hostname)
                    .unwrap_or_default(),
                id: agent.agent_id,
                name: agent.name,
            })
            .collect()),
        Err(status) if status.code() == tonic::Code::InvalidArgument => Ok(Vec::new()),
        Err(status) => Err(conn.error(&status, None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(id: &str, name: &str) -> Candidate {
        Candidate {
            id: id.to_owned(),
            name: name.to_owned(),
            hostname: format!("{name}.example"),
        }
    }

    #[test]
    fn names_win_over_prefixes_and_ambiguity_lists_the_candidates() {
        let web = candidate("aa11", "web");
        let other = candidate("aa22", "db");
        assert_eq!(
            pick("web", vec![web.clone()], vec![other.clone()]).expect("one"),
            "aa11"
        );
        assert_eq!(
            pick("aa2", vec![], vec![other.clone()]).expect("one"),
            "aa22"
        );
        let err = pick("aa", vec![], vec![web, other]).expect_err("two");
        let text = err.to_string();
        assert!(matches!(err, CliError::Usage(_)), "{err:?}");
        assert!(
            text.contains("aa11 (web)") && text.contains("aa22 (db)"),
            "{text}"
        );
        assert!(text.contains("matches 2 agents"), "{text}");
        let err = pick("ZZ", vec![], vec![]).expect_err("none");
        assert!(matches!(err, CliError::NotFound(_)), "{err:?}");
        assert_eq!(err.to_string(), "agent ZZ not found");
    }

    #[test]
    fn id_text_is_the_server_id_grammar() {
        assert!(is_id_text("08adf3"));
        assert!(is_id_text("web-1"));
        assert!(!is_id_text("08ADF3"));
        assert!(!is_id_text(""));
        assert!(!is_id_text("a b"));
        assert!(!is_id_text(&"a".repeat(65)));
    }
}
