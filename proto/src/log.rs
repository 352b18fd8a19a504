//! How every Tether binary logs: to stderr (stdout carries what a person or a script reads),
//! as text or JSON, filtered by `--log-level` (else `RUST_LOG`, else `info`), and coloured only
//! when stderr is a terminal and `NO_COLOR` is unset, so a log file or a journal never holds
//! escape codes. It lives beside the contract because operators rely on every Tether process
//! logging the same way.

use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

/// A log line's format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("bad log level {level:?}: {reason} (e.g. `info`, `debug`, `tether_server=debug,warn`)")]
    Filter { level: String, reason: String },
    #[error("cannot install the logger: {0}")]
    Install(String),
}

/// The filter for `level` (`--log-level`), else `RUST_LOG`, else `info`.
///
/// # Errors
///
/// [`LogError::Filter`] when `level` is not a valid filter. A bad `RUST_LOG` falls back to
/// `info`, as every Rust program does.
pub fn filter(level: Option<&str>) -> Result<EnvFilter, LogError> {
    match level {
        Some(level) => EnvFilter::try_new(level).map_err(|e| LogError::Filter {
            level: level.to_owned(),
            reason: e.to_string(),
        }),
        None => Ok(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"))),
    }
}

/// Whether log lines on stderr get colours: only on a terminal, and never with `NO_COLOR`
/// set (<https://no-color.org>).
pub fn stderr_wants_colour() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Installs the process's logger: stderr, `format`, filtered by `level` ([`filter`]).
///
/// # Errors
///
/// A bad `level`, or a logger already installed.
pub fn init(format: LogFormat, level: Option<&str>) -> Result<(), LogError> {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter(level)?)
        .with_writer(std::io::stderr)
        .with_ansi(stderr_wants_colour());
    let installed = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    installed.map_err(|e| LogError::Install(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_level_is_refused_with_the_level_named() {
        let err = filter(Some("info,=[")).expect_err("malformed");
        assert!(err.to_string().contains("info,=["), "{err}");
        filter(Some("debug")).expect("a level");
        filter(Some("tether_server=debug,warn")).expect("directives");
        filter(None).expect("the default");
    }
}
