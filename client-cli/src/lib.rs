//! `tetherctl`: the command-line client of the Tether fleet control plane.
//!
//! It follows kubectl/nomad habits: `tetherctl agents list -l env=prod -o wide`,
//! `agents get ID`, `agents watch`, `agents delete ID --yes`, `metrics ID --since 1h`,
//! `summary`, `config`, `enroll-token create|list|revoke`, `orgs create|list`,
//! `tokens create|list|revoke`, `audit` and `audit verify` (see [`verify_chain`]). Tables are
//! aligned and show relative times; `-o json` is a stable, scriptable document
//! (newline-delimited for `agents watch`); errors are [`CliError`]s with messages meant for a
//! person.
//!
//! The binary is thin: it parses a [`Cli`] and calls [`run`], which writes normal output to the
//! writer it is given. The end-to-end tests call the same [`run`] with a `Vec<u8>`.
//!
//! Modules: [`cli`] (the argument grammar), [`config`] (where server and token come from),
//! [`client`] (the connection and auth interceptor), [`view`] (the JSON output types and
//! conversions from the wire), [`mod@format`] (tables, CSV, relative times, sizes), [`selector`]
//! (label arguments), [`error`] (the error type and gRPC status mapping); the commands live in
//! the private `cmd` module.

pub mod cli;
pub mod client;
pub mod config;
pub mod error;
pub mod format;
pub mod selector;
pub mod view;

mod cmd;

use std::io::Write;

pub use cli::Cli;
pub use cmd::audit::{ChainError, ChainSummary, event_hash, verify_chain};
pub use config::Env;
pub use error::CliError;

/// Runs one invocation, reading `TETHER_SERVER`, `TETHER_TOKEN`, `TETHER_CONFIG`,
/// `XDG_CONFIG_HOME` and `HOME` from the process environment. Normal output goes to `out`;
/// the only other output is a notice on stderr when `agents watch` has to resubscribe.
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
    run_with_env(cli, &Env::from_process(), out).await
}

/// [`run`] with the environment given explicitly, so tests need not touch the process
/// environment.
///
/// # Errors
///
/// As [`run`].
pub async fn run_with_env(
    cli: Cli,
    env: &Env,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let Cli { global, command } = cli;
    let flags = config::ConnectionFlags {
        server: global.server,
        token: global.token,
        config: global.config,
        tls: config::TlsFiles {
            ca_cert: global.ca_cert,
            client_cert: global.client_cert,
            client_key: global.client_key,
        },
    };
    let settings = config::load_settings(&flags, env)?;
    cmd::dispatch(command, &settings, out).await?;
    out.flush()?;
    Ok(())
}

/// Writes `value` as pretty-printed JSON followed by a newline.
fn write_json<T: serde::Serialize + ?Sized>(
    out: &mut (dyn Write + Send),
    value: &T,
) -> Result<(), CliError> {
    serde_json::to_writer_pretty(&mut *out, value).map_err(std::io::Error::from)?;
    out.write_all(b"\n")?;
    Ok(())
}
