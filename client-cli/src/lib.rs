//! `tetherctl`: the command-line client of the Tether fleet control plane.
//!
//! It follows kubectl/nomad habits: `tetherctl agents list -l env=prod -o wide`,
//! `agents get ID`, `agents watch`, `agents delete ID --yes`, `metrics ID --since 1h`,
//! `summary`, `config`, `enroll-token create|list|revoke`, `orgs create|list`,
//! `tokens create|list|revoke`, `audit` and `audit verify` (see [`verify_chain`]),
//! `cmd run -l env=prod -- /usr/bin/uptime` and `cmd get|list|invocations|watch|logs|cancel|
//! pause|resume`. Tables are
//! aligned and show relative times; `-o json` is a stable, scriptable document
//! (newline-delimited for `agents watch`); errors are [`CliError`]s with messages meant for a
//! person.
//!
//! The binary is thin: it parses a [`Cli`] and calls [`run`], which writes normal output to the
//! writer it is given. The end-to-end tests call the same [`run`] with a `Vec<u8>`.
//!
//! Modules:
//!
//! - [`cli`]: the argument grammar (clap derive types).
//! - [`config`]: where the server, the token and the TLS files come from (flags, environment,
//!   config file).
//! - [`client`]: the connection, the bearer-token interceptor and the typed service clients.
//! - [`console`]: whether output may be coloured and questions asked.
//! - [`view`]: the stable JSON output types, by command area, with every conversion from a
//!   wire answer (`view/convert.rs`) and the serde helpers for times, durations and bytes.
//! - [`mod@format`]: tables, CSV, relative times, sizes, and the small text rules every command
//!   shares, among them what may reach a terminal: human output escapes every control and
//!   format character a server or agent sent; JSON stays exact.
//! - [`selector`]: label arguments, checked with the contract's grammar.
//! - [`error`]: [`CliError`] and the one gRPC status → message mapping.
//! - `cmd` (private): the dispatcher and the helpers every command shares (id check, one-object
//!   output, paging); one module per command group (`agents` with its renderers in
//!   `agents/render.rs`, `fleet`, `tokens`, `enroll`, `orgs`, `audit` with the pure chain check
//!   in `audit/chain.rs`, `command` for `cmd` with its children: `send` builds the request,
//!   `follow` watches with resume and ctrl-c, `stream` prefixes output lines, `logs` assembles
//!   stored output, `render` draws the tables); `objects` is the list/revoke skeleton `tokens`,
//!   `enroll-token` and `orgs` share.

pub mod cli;
pub mod client;
pub mod config;
pub mod console;
pub mod error;
pub mod format;
pub mod selector;
pub mod view;

mod cmd;

use std::io::Write;

pub use cli::Cli;
pub use cmd::audit::{ChainError, ChainSummary, event_hash, verify_chain};
pub use config::Env;
pub use console::Console;
pub use error::CliError;

/// Runs one invocation, reading `TETHER_SERVER`, `TETHER_TOKEN`, `TETHER_CONFIG`,
/// `XDG_CONFIG_HOME` and `HOME` from the process environment, with the process's
/// [`Console`]. Normal output goes to `out`; stderr gets notices (`agents watch` resubscribing,
/// a `cmd` watch resuming, ctrl-c's question) and the agents' stderr output of `cmd run`,
/// `cmd watch` and `cmd logs`.
///
/// # Errors
///
/// Any [`CliError`]: bad arguments or configuration, an unreachable server, or an RPC the server
/// refused.
///
/// # Cancellation
///
/// Dropping the future abandons the request; nothing is left half-done on the client side.
pub async fn run(cli: Cli, out: &mut (dyn Write + Send)) -> Result<(), CliError> {
    run_with(cli, &Env::from_process(), Console::detect(), out).await
}

/// [`run`] with the environment given explicitly and a plain, non-interactive console, so
/// tests need not touch the process environment and never depend on a terminal.
///
/// # Errors
///
/// As [`run`].
pub async fn run_with_env(
    cli: Cli,
    env: &Env,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    run_with(cli, env, Console::default(), out).await
}

/// [`run`] with the environment and the console given explicitly.
///
/// # Errors
///
/// As [`run`].
pub async fn run_with(
    cli: Cli,
    env: &Env,
    console: Console,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let Cli { global, command } = cli;
    if cmd::is_local(&command) {
        cmd::local(command, out).await?;
        out.flush()?;
        return Ok(());
    }
    let flags = config::ConnectionFlags {
        server: global.server,
        token: global.token,
        config: global.config,
        tls: config::TlsFiles {
            ca_cert: global.ca_cert,
            client_cert: global.client_cert,
            client_key: global.client_key,
        },
        timeout: global.request_timeout,
    };
    let settings = config::load_settings(&flags, env)?;
    cmd::dispatch(command, &settings, console, out).await?;
    out.flush()?;
    Ok(())
}

/// Writes `value` as pretty-printed JSON followed by a newline. Strings are exact; their
/// non-printable characters are written as `\uXXXX` escapes ([`format::SafeJson`]).
fn write_json<T: serde::Serialize + ?Sized>(
    out: &mut (dyn Write + Send),
    value: &T,
) -> Result<(), CliError> {
    write_json_as(out, value, serde_json::ser::PrettyFormatter::new())
}

/// Writes `value` as one line of JSON (newline-delimited JSON), like [`write_json`].
fn write_json_line<T: serde::Serialize + ?Sized>(
    out: &mut (dyn Write + Send),
    value: &T,
) -> Result<(), CliError> {
    write_json_as(out, value, serde_json::ser::CompactFormatter)
}

fn write_json_as<T, F>(
    out: &mut (dyn Write + Send),
    value: &T,
    formatter: F,
) -> Result<(), CliError>
where
    T: serde::Serialize + ?Sized,
    F: serde_json::ser::Formatter,
{
    let mut serializer =
        serde_json::Serializer::with_formatter(&mut *out, format::SafeJson(formatter));
    value
        .serialize(&mut serializer)
        .map_err(std::io::Error::from)?;
    out.write_all(b"\n")?;
    Ok(())
}
