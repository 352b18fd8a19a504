//! The local socket through which programs on this machine report events, and its client
//! (`tether-agent emit`).
//!
//! Protocol: line-delimited JSON over a Unix stream socket. Each request is one event,
//!
//! ```text
//! {"kind":"ssh.login_failed","severity":"warning","message":"…","attributes":{"user":"root"},"fingerprint":"ssh:root"}
//! ```
//!
//! (`message`, `attributes` and `fingerprint` optional), and gets one answer line:
//! `{"ok":true,"seq":42}` once the event is in the spool on disk, or
//! `{"ok":false,"code":"invalid_argument","error":"…"}`. Codes: `invalid_argument` (the event
//! breaks the contract, or the line is not such JSON), `resource_exhausted` (over the rate
//! limit, or the spool is full of more severe events: dropped and counted), `unavailable`
//! (the spool cannot write). A connection may send many requests; a line longer than
//! [`MAX_LINE_BYTES`] is answered with an error and the connection closed.
//!
//! **Invariants:** the socket is created with mode 0600 (or 0660 and the configured group)
//! before it gets its name, so nobody else can connect even for an instant; at most
//! [`MAX_CONNECTIONS`] connections are served at once, each idle for at most
//! [`IDLE_TIMEOUT`]; kinds under `tether.` are the agent's own and refused here.

use std::collections::BTreeMap;
use std::io::{BufRead as _, Write as _};
use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{debug, warn};

use crate::AgentError;
use crate::events::Events;
use crate::events::types::{Event, Severity};

/// Longest request line.
pub const MAX_LINE_BYTES: usize = 64 << 10;
/// Connections served at once; more are answered with an error and closed.
pub const MAX_CONNECTIONS: usize = 16;
/// A connection idle this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `emit` waits for the agent.
pub const EMIT_TIMEOUT: Duration = Duration::from_secs(10);
/// Kinds with this prefix are reserved for the agent's own events.
pub const RESERVED_PREFIX: &str = tether_proto::event::TETHER_KIND_PREFIX;

/// One request: an event as a program reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmitRequest {
    pub kind: String,
    pub severity: String,
    #[serde(default)]
    pub message: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
}

/// The answer to one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmitResponse {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Why an event was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmitError {
    /// The event breaks the contract; nothing was stored.
    #[error("invalid event: {0}")]
    Invalid(String),
    /// Dropped and counted: over the rate limit, or no room among more severe events.
    #[error("event dropped: {0}")]
    Exhausted(String),
    /// The agent could not store it, or could not be reached.
    #[error("{0}")]
    Unavailable(String),
}

/// The bound socket; removes its file when dropped.
#[derive(Debug)]
pub struct SocketListener {
    listener: UnixListener,
    path: PathBuf,
}

// === impl EmitRequest ===

impl EmitRequest {
    /// The event this request describes, checked against the contract, stamped `now`.
    ///
    /// # Errors
    ///
    /// [`EmitError::Invalid`] naming what is wrong.
    pub fn to_event(&self) -> Result<Event, EmitError> {
        let severity = Severity::parse(&self.severity).ok_or_else(|| {
            EmitError::Invalid(format!(
                "severity {:?} must be one of info, warning, error, critical",
                self.severity
            ))
        })?;
        if self.kind.starts_with(RESERVED_PREFIX) {
            return Err(EmitError::Invalid(format!(
                "kind {:?}: kinds under {RESERVED_PREFIX} are reserved for Tether's own events",
                self.kind
            )));
        }
        let event = Event {
            time: std::time::SystemTime::now(),
            kind: self.kind.clone(),
            severity,
            message: self.message.clone(),
            attributes: self.attributes.clone(),
            fingerprint: self.fingerprint.clone(),
        };
        crate::events::check::check(&event).map_err(|err| EmitError::Invalid(err.0))?;
        Ok(event)
    }
}

// === impl EmitResponse ===

impl EmitResponse {
    fn ok(seq: u64) -> Self {
        Self {
            ok: true,
            seq: Some(seq),
            code: None,
            error: None,
        }
    }

    fn error(error: &EmitError) -> Self {
        let (code, message) = match error {
            EmitError::Invalid(message) => ("invalid_argument", message),
            EmitError::Exhausted(message) => ("resource_exhausted", message),
            EmitError::Unavailable(message) => ("unavailable", message),
        };
        Self {
            ok: false,
            seq: None,
            code: Some(code.into()),
            error: Some(message.clone()),
        }
    }

    fn into_result(self) -> Result<u64, EmitError> {
        match (self.ok, self.seq) {
            (true, Some(seq)) => Ok(seq),
            _ => {
                let message = self.error.unwrap_or_else(|| "no reason given".into());
                Err(match self.code.as_deref() {
                    Some("invalid_argument") => EmitError::Invalid(message),
                    Some("resource_exhausted") => EmitError::Exhausted(message),
                    _ => EmitError::Unavailable(message),
                })
            }
        }
    }
}

// === impl SocketListener ===

impl SocketListener {
    /// Binds the socket at `path`: mode 0600, or 0660 with `group` as its group. A socket file
    /// left by an agent that died is replaced; one another process still listens on is not.
    /// Must be called within a tokio runtime.
    ///
    /// # Errors
    ///
    /// [`AgentError::Config`] when another process listens at `path`, or the path is taken
    /// by something else than a socket; [`AgentError::StateIo`] when binding fails.
    pub fn bind(path: &Path, group: Option<&str>) -> Result<Self, AgentError> {
        let io_err = |source| AgentError::StateIo {
            path: path.to_path_buf(),
            source,
        };
        match std::fs::symlink_metadata(path) {
            Ok(metadata) if metadata.file_type().is_socket() => {
                if std::os::unix::net::UnixStream::connect(path).is_ok() {
                    return Err(AgentError::Config(format!(
                        "another process (another tether-agent?) listens on the event socket {}",
                        path.display()
                    )));
                }
                std::fs::remove_file(path).map_err(io_err)?;
            }
            Ok(_) => {
                return Err(AgentError::Config(format!(
                    "the event socket path {} is taken by something that is not a socket",
                    path.display()
                )));
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(io_err(err)),
        }
        let gid = group.map(resolve_group).transpose()?;
        // Bound under a temporary name, given its mode and group, then renamed: the socket is
        // never reachable under its name with looser permissions.
        let tmp = path.with_extension(format!("{}.tmp", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let listener = UnixListener::bind(&tmp).map_err(io_err)?;
        let prepared = (|| {
            if let Some(gid) = gid {
                std::os::unix::fs::chown(&tmp, None, Some(gid))?;
            }
            let mode = if gid.is_some() { 0o660 } else { 0o600 };
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
            std::fs::rename(&tmp, path)
        })();
        if let Err(err) = prepared {
            let _ = std::fs::remove_file(&tmp);
            return Err(io_err(err));
        }
        Ok(Self {
            listener,
            path: path.to_path_buf(),
        })
    }

    /// Where the socket is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SocketListener {
    fn drop(&mut self) {
        if let Err(err) = std::fs::remove_file(&self.path)
            && err.kind() != std::io::ErrorKind::NotFound
        {
            warn!(path = %self.path.display(), "failed to remove the event socket: {err}");
        }
    }
}

/// Resolves a group name or numeric id.
///
/// # Errors
///
/// [`AgentError::Config`] for a group this machine does not know.
pub fn resolve_group(group: &str) -> Result<u32, AgentError> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(group) {
        Ok(Some(found)) => Ok(found.gid.as_raw()),
        Ok(None) => Err(AgentError::Config(format!(
            "event socket group {group:?} does not exist on this machine"
        ))),
        Err(err) => Err(AgentError::Config(format!(
            "cannot look up the event socket group {group:?}: {err}"
        ))),
    }
}

/// Serves the socket until dropped: one task per connection (at most [`MAX_CONNECTIONS`]),
/// all aborted when this future is dropped.
pub(crate) async fn serve(listener: SocketListener, events: Events) -> std::convert::Infallible {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.listener.accept() => match accepted {
                Ok((stream, _)) => match slots.clone().try_acquire_owned() {
                    Ok(slot) => {
                        let events = events.clone();
                        connections.spawn(async move {
                            serve_connection(stream, &events).await;
                            drop(slot);
                        });
                    }
                    Err(_) => {
                        connections.spawn(refuse(stream));
                    }
                },
                Err(err) => {
                    warn!("event socket: accept failed: {err}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next() => {}
        }
    }
}

async fn refuse(mut stream: UnixStream) {
    let answer = EmitResponse::error(&EmitError::Exhausted(format!(
        "the agent serves at most {MAX_CONNECTIONS} connections at once; try again"
    )));
    let _ = write_answer(&mut stream, &answer).await;
}

async fn serve_connection(stream: UnixStream, events: &Events) {
    let (reader, mut writer) = stream.into_split();
    let mut reader = BufReader::with_capacity(4096, reader);
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = tokio::time::timeout(
            IDLE_TIMEOUT,
            (&mut reader)
                .take(MAX_LINE_BYTES as u64 + 1)
                .read_until(b'\n', &mut line),
        )
        .await;
        let n_read = match read {
            Err(_) => return,
            Ok(Err(err)) => {
                debug!("event socket: read failed: {err}");
                return;
            }
            Ok(Ok(n)) => n,
        };
        if n_read == 0 {
            return;
        }
        let too_long = line.len() > MAX_LINE_BYTES;
        let answer = if too_long {
            Err(EmitError::Invalid(format!(
                "request longer than {MAX_LINE_BYTES} bytes"
            )))
        } else {
            handle_line(&line, events).await
        };
        let answer = match answer {
            Ok(seq) => EmitResponse::ok(seq),
            Err(error) => EmitResponse::error(&error),
        };
        if write_answer(&mut writer, &answer).await.is_err() || too_long {
            return;
        }
    }
}

async fn handle_line(line: &[u8], events: &Events) -> Result<u64, EmitError> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let request: EmitRequest = serde_json::from_slice(line).map_err(|err| {
        EmitError::Invalid(format!(
            "a request is one JSON object per line with kind, severity and optionally \
             message, attributes and fingerprint: {err}"
        ))
    })?;
    let event = request.to_event()?;
    events.submit(event).await
}

async fn write_answer(
    writer: &mut (impl tokio::io::AsyncWrite + Unpin),
    answer: &EmitResponse,
) -> std::io::Result<()> {
    let mut bytes = serde_json::to_vec(answer).expect("a response always serializes");
    bytes.push(b'\n');
    writer.write_all(&bytes).await
}

/// Sends one event to the agent listening on `socket` and returns its seq. Blocking: for the
/// `emit` subcommand, which needs no runtime.
///
/// # Errors
///
/// [`EmitError::Invalid`] before connecting when the event breaks the contract (or when the
/// agent says so), [`EmitError::Exhausted`] when the agent dropped it, and
/// [`EmitError::Unavailable`] when no agent answers on `socket`.
pub fn emit(socket: &Path, request: &EmitRequest) -> Result<u64, EmitError> {
    request.to_event()?;
    let unavailable = |what: &str, err: std::io::Error| {
        EmitError::Unavailable(format!(
            "{what} the agent's event socket {}: {err}",
            socket.display()
        ))
    };
    let stream = std::os::unix::net::UnixStream::connect(socket)
        .map_err(|err| unavailable("cannot connect to", err))?;
    stream
        .set_read_timeout(Some(EMIT_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(EMIT_TIMEOUT)))
        .map_err(|err| unavailable("cannot use", err))?;
    let mut line = serde_json::to_vec(request).expect("a request always serializes");
    line.push(b'\n');
    (&stream)
        .write_all(&line)
        .map_err(|err| unavailable("cannot write to", err))?;
    let mut answer = String::new();
    std::io::BufReader::new(&stream)
        .take_line(&mut answer)
        .map_err(|err| unavailable("no answer on", err))?;
    let response: EmitResponse = serde_json::from_str(answer.trim_end()).map_err(|err| {
        EmitError::Unavailable(format!("the agent's answer is not understood: {err}"))
    })?;
    response.into_result()
}

/// Reads one line, at most [`MAX_LINE_BYTES`].
trait TakeLine {
    fn take_line(self, into: &mut String) -> std::io::Result<()>;
}

impl<R: std::io::BufRead> TakeLine for R {
    fn take_line(self, into: &mut String) -> std::io::Result<()> {
        let n_read = std::io::Read::take(self, MAX_LINE_BYTES as u64).read_line(into)?;
        if n_read == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the agent closed the connection",
            ));
        }
        Ok(())
    }
}
