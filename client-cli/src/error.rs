//! The CLI's error type and the one place where gRPC statuses become messages a person reads.
//!
//! Every RPC failure goes through [`CliError::from_status`], so "which code means what" is decided
//! here and nowhere else. Messages are lowercase without a trailing period; `main` prints them as
//! `error: {err}` on stderr and exits with [`CliError::exit_code`].

use std::path::PathBuf;

/// Everything that can make a `tetherctl` invocation fail.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A local argument was malformed (a label selector, a `k=v` flag, a duration, a URL).
    #[error("{0}")]
    Usage(String),

    /// No token was found in any of the places a token can come from.
    #[error(
        "no API token given: pass --token TOKEN, set TETHER_TOKEN, or put `token = \"...\"` in the \
         config file ({})",
        config_path.as_ref().map_or_else(|| "~/.config/tether/config.toml".to_owned(), |p| p.display().to_string())
    )]
    MissingToken {
        /// The config file that was (or would have been) consulted.
        config_path: Option<PathBuf>,
    },

    /// The config file exists but could not be read or parsed.
    #[error("config file {}: {message}", path.display())]
    Config {
        /// The file at fault.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },

    /// No connection could be made to the server, or it went away.
    #[error("cannot reach Tether server at {server}: {reason}")]
    Unreachable {
        /// The server URL that was tried.
        server: String,
        /// The underlying cause, e.g. "connection refused".
        reason: String,
    },

    /// The server did not answer before the request deadline.
    #[error("the Tether server at {server} did not answer in time: {message}")]
    Timeout {
        /// The server URL that was tried.
        server: String,
        /// The status message.
        message: String,
    },

    /// `UNAUTHENTICATED`: the token is missing, unknown, expired or revoked.
    #[error("the server rejected the token: {0}")]
    Unauthenticated(String),

    /// `PERMISSION_DENIED`: the token is valid but its role does not allow the call.
    #[error("permission denied: {0}")]
    PermissionDenied(String),

    /// `NOT_FOUND`: the named object does not exist (or belongs to another org). The message
    /// reads "agent a-123 not found" when the caller named the object.
    #[error("{0}")]
    NotFound(String),

    /// `INVALID_ARGUMENT` / `FAILED_PRECONDITION` / `OUT_OF_RANGE`: the server refused the
    /// request's content; its message says why.
    #[error("the server refused the request: {0}")]
    InvalidArgument(String),

    /// `RESOURCE_EXHAUSTED`: a rate limit or quota was hit.
    #[error("the server's limits were exceeded: {0}")]
    ResourceExhausted(String),

    /// Any other gRPC status.
    #[error("server error ({code}): {message}")]
    Server {
        /// The gRPC status code, as tonic names it.
        code: String,
        /// The status message.
        message: String,
    },

    /// A destructive command was not confirmed; the message says what would happen and how to
    /// confirm.
    #[error("{0}")]
    NotConfirmed(String),

    /// `audit verify` found the hash chain broken: an event was modified, deleted or moved.
    #[error("audit chain broken at seq {seq}: {0}", seq = .0.seq())]
    AuditChainBroken(crate::ChainError),

    /// A command that was followed to its end did not succeed on every agent.
    #[error("command {command_id} {state}: {summary}")]
    CommandFailed {
        /// The command.
        command_id: String,
        /// Its final state, as tables show it (`FAILED`, `CANCELLED`).
        state: String,
        /// How its invocations ended, e.g. "2 of 5 invocations did not succeed".
        summary: String,
    },

    /// Following a command was interrupted (ctrl-c, SIGTERM) and the command left running.
    #[error(
        "detached from command {command_id}; it keeps running: follow it with `tetherctl cmd \
         watch {command_id}`"
    )]
    Detached {
        /// The command, still running.
        command_id: String,
    },

    /// Writing the output failed (for example a closed pipe).
    /// A backup could not be saved whole; nothing was left under its name.
    #[error("backup not saved to {}: {message}", path.display())]
    Backup {
        /// The file asked for.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },

    #[error("failed to write output: {0}")]
    Io(#[from] std::io::Error),
}

/// Process exit code for errors in local arguments or configuration.
pub const EXIT_USAGE: u8 = 2;
/// Process exit code for every other failure.
pub const EXIT_FAILURE: u8 = 1;
/// Process exit code after detaching from a command on ctrl-c or SIGTERM (128 + SIGINT, as
/// shells report an interrupted command).
pub const EXIT_INTERRUPTED: u8 = 130;

// === impl CliError ===

impl CliError {
    /// Maps a gRPC status from `server` to an error a person understands.
    ///
    /// `what` names the object the call was about (e.g. "agent a-123") and is used for
    /// `NOT_FOUND`; without it the server's message is shown.
    pub fn from_status(status: &tonic::Status, server: &str, what: Option<&str>) -> Self {
        use tonic::Code;
        let message = status_message(status);
        if let Some(reason) = misdirected(server, status.code(), status.message()) {
            return Self::Unreachable {
                server: server.to_owned(),
                reason,
            };
        }
        if status.code() == Code::Cancelled && status.message() == TIMEOUT_EXPIRED {
            return Self::Timeout {
                server: server.to_owned(),
                message: "no answer before the deadline (--request-timeout)".to_owned(),
            };
        }
        match status.code() {
            Code::Unauthenticated => Self::Unauthenticated(message),
            Code::PermissionDenied => Self::PermissionDenied(message),
            Code::NotFound => Self::NotFound(match what {
                Some(what) => format!("{what} not found"),
                None => format!("not found: {message}"),
            }),
            Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
                Self::InvalidArgument(message)
            }
            Code::ResourceExhausted => Self::ResourceExhausted(message),
            Code::Unavailable => Self::Unreachable {
                server: server.to_owned(),
                reason: root_cause(status).unwrap_or(message),
            },
            Code::DeadlineExceeded => Self::Timeout {
                server: server.to_owned(),
                message,
            },
            code => Self::Server {
                code: format!("{code:?}"),
                message,
            },
        }
    }

    /// Maps a failure to establish the connection to [`CliError::Unreachable`].
    pub fn from_transport(err: &tonic::transport::Error, server: &str) -> Self {
        let reason = root_cause(err).unwrap_or_else(|| err.to_string());
        Self::Unreachable {
            server: server.to_owned(),
            reason: misdirected(server, tonic::Code::Unavailable, &reason).unwrap_or(reason),
        }
    }

    /// The process exit code for this error: [`EXIT_USAGE`] for local argument and
    /// configuration problems, [`EXIT_INTERRUPTED`] after detaching from a command,
    /// [`EXIT_FAILURE`] otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_)
            | Self::MissingToken { .. }
            | Self::Config { .. }
            | Self::NotConfirmed(_) => EXIT_USAGE,
            Self::Detached { .. } => EXIT_INTERRUPTED,
            _ => EXIT_FAILURE,
        }
    }
}

/// What tonic says when a deadline passed (`TimeoutExpired`, as a `CANCELLED` status).
const TIMEOUT_EXPIRED: &str = "Timeout expired";

/// A sentence for a failure that means the address is not a Tether gRPC port spoken to the
/// way it expects (a metrics port, `https://` to plaintext or the reverse, an untrusted
/// certificate), instead of the transport's own words; `None` for other failures.
pub fn misdirected(server: &str, code: tonic::Code, message: &str) -> Option<String> {
    const NO_GRPC_STATUS: &str = "grpc-status header missing, mapped from HTTP status code ";
    if let Some(http_status) = message.strip_prefix(NO_GRPC_STATUS) {
        return Some(format!(
            "it answered HTTP {http_status} without gRPC: that address is not Tether's gRPC \
             port (is it the metrics port? the gRPC port is 7600 by default)"
        ));
    }
    if message.contains("InvalidContentType") || message.contains("corrupt message") {
        return Some(
            "the server does not speak TLS there: use an http:// address, or the server's TLS \
             port"
                .to_owned(),
        );
    }
    if message.contains("invalid peer certificate") {
        let detail = message
            .rsplit("invalid peer certificate: ")
            .next()
            .unwrap_or(message);
        return Some(format!(
            "its TLS certificate is not trusted ({detail}): pass --ca-cert with the CA that \
             issued it (or set TETHER_CA_CERT), and use a host name the certificate names"
        ));
    }
    if message.contains("received fatal alert") {
        return Some(format!(
            "the server refused the TLS handshake ({message}): if it requires a client \
             certificate, pass --client-cert and --client-key"
        ));
    }
    // A TLS port drops an HTTP/2 preface it cannot read: depending on timing the client sees
    // its request cancelled or the connection broken.
    let dropped = (code == tonic::Code::Cancelled && message == "operation was canceled")
        || (code == tonic::Code::Unknown && message == "transport error")
        || message.starts_with("h2 protocol error");
    if server.starts_with("http://") && dropped {
        return Some(
            "the connection closed before any answer: if the server uses TLS, use an https:// \
             address (with --ca-cert)"
                .to_owned(),
        );
    }
    None
}

/// The status message, or a description of the code when the server sent none. The message is
/// the server's text: its non-printable characters are escaped (`format::escape`).
fn status_message(status: &tonic::Status) -> String {
    let message = status.message().trim();
    if message.is_empty() {
        status.code().description().to_owned()
    } else {
        crate::format::escape(message).into_owned()
    }
}

/// The innermost cause of `err`, described as briefly as possible: an I/O error becomes its
/// kind ("connection refused"), anything else its own message. `None` if `err` has no source.
fn root_cause(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut source = err.source();
    let mut last = None;
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            return Some(describe_io(io));
        }
        last = Some(cause);
        source = cause.source();
    }
    last.map(ToString::to_string)
}

fn describe_io(err: &std::io::Error) -> String {
    use std::io::ErrorKind;
    match err.kind() {
        ErrorKind::ConnectionRefused
        | ErrorKind::ConnectionReset
        | ErrorKind::ConnectionAborted
        | ErrorKind::TimedOut
        | ErrorKind::NotConnected
        | ErrorKind::AddrNotAvailable => err.kind().to_string(),
        _ => err.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::{Code, Status};

    const SERVER: &str = "http://127.0.0.1:7600";

    fn map(code: Code, message: &str, what: Option<&str>) -> String {
        CliError::from_status(&Status::new(code, message), SERVER, what).to_string()
    }

    #[test]
    fn unauthenticated_names_the_token() {
        assert_eq!(
            map(Code::Unauthenticated, "token revoked", None),
            "the server rejected the token: token revoked"
        );
    }

    #[test]
    fn permission_denied_shows_reason() {
        assert_eq!(
            map(Code::PermissionDenied, "requires role admin", None),
            "permission denied: requires role admin"
        );
    }

    #[test]
    fn not_found_names_the_object() {
        assert_eq!(
            map(Code::NotFound, "no such agent", Some("agent a-1")),
            "agent a-1 not found"
        );
        assert_eq!(
            map(Code::NotFound, "no such token", None),
            "not found: no such token"
        );
    }

    #[test]
    fn invalid_argument_shows_server_message() {
        assert_eq!(
            map(Code::InvalidArgument, "bad label selector `=x`", None),
            "the server refused the request: bad label selector `=x`"
        );
    }

    #[test]
    fn unavailable_is_unreachable() {
        let err = CliError::from_status(&Status::unavailable("tcp connect error"), SERVER, None);
        assert!(matches!(err, CliError::Unreachable { .. }));
        assert_eq!(
            err.to_string(),
            "cannot reach Tether server at http://127.0.0.1:7600: tcp connect error"
        );
    }

    #[test]
    fn a_misdirected_call_gets_a_sentence_naming_the_likely_cause() {
        let cases = [
            (
                "http://h:7601",
                Code::Unimplemented,
                "grpc-status header missing, mapped from HTTP status code 404",
                "metrics port",
            ),
            (
                "https://h:7600",
                Code::Unavailable,
                "received corrupt message of type InvalidContentType",
                "does not speak TLS",
            ),
            (
                "https://h:7600",
                Code::Unavailable,
                "invalid peer certificate: UnknownIssuer",
                "--ca-cert",
            ),
            (
                "http://h:7600",
                Code::Internal,
                "h2 protocol error: http2 error",
                "https://",
            ),
            (
                "http://h:7600",
                Code::Cancelled,
                "operation was canceled",
                "https://",
            ),
            (
                "http://h:7600",
                Code::Unknown,
                "transport error",
                "https://",
            ),
        ];
        for (server, code, message, hint) in cases {
            let err = CliError::from_status(&Status::new(code, message), server, None);
            assert!(
                matches!(err, CliError::Unreachable { .. }),
                "{message}: {err:?}"
            );
            assert!(err.to_string().contains(hint), "{err}");
        }
        // Over https the same cancellation says nothing about TLS.
        assert_eq!(
            misdirected("https://h", Code::Cancelled, "operation was canceled"),
            None
        );
        assert_eq!(misdirected(SERVER, Code::NotFound, "agent a-1"), None);
    }

    #[test]
    fn an_expired_deadline_is_a_timeout() {
        let err = CliError::from_status(&Status::cancelled("Timeout expired"), SERVER, None);
        assert!(matches!(err, CliError::Timeout { .. }), "{err:?}");
        let err = CliError::from_status(&Status::cancelled("by the user"), SERVER, None);
        assert!(matches!(err, CliError::Server { .. }), "{err:?}");
    }

    #[test]
    fn empty_message_falls_back_to_code_description() {
        let text = map(Code::Internal, "", None);
        assert!(text.starts_with("server error (Internal): "), "{text}");
        assert!(text.len() > "server error (Internal): ".len(), "{text}");
    }

    #[test]
    fn io_causes_are_described_by_kind() {
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(describe_io(&io), "connection refused");
    }

    #[test]
    fn exit_codes() {
        assert_eq!(CliError::Usage("x".into()).exit_code(), EXIT_USAGE);
        assert_eq!(
            CliError::MissingToken { config_path: None }.exit_code(),
            EXIT_USAGE
        );
        assert_eq!(
            CliError::Unauthenticated("x".into()).exit_code(),
            EXIT_FAILURE
        );
        let detached = CliError::Detached {
            command_id: "c-1".into(),
        };
        assert_eq!(detached.exit_code(), EXIT_INTERRUPTED);
        assert!(
            detached.to_string().contains("tetherctl cmd watch c-1"),
            "{detached}"
        );
        assert_eq!(
            CliError::CommandFailed {
                command_id: "c-1".into(),
                state: "FAILED".into(),
                summary: "1 of 2 invocations did not succeed".into(),
            }
            .exit_code(),
            EXIT_FAILURE
        );
    }

    #[test]
    fn missing_token_names_all_three_ways() {
        let text = CliError::MissingToken {
            config_path: Some(PathBuf::from("/etc/t.toml")),
        }
        .to_string();
        assert!(text.contains("--token"), "{text}");
        assert!(text.contains("TETHER_TOKEN"), "{text}");
        assert!(text.contains("/etc/t.toml"), "{text}");
    }
}
