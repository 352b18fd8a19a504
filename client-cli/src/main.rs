//! The `tetherctl` binary: parses arguments, runs the library, prints errors to stderr and
//! exits non-zero on failure.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use tetherctl::{Cli, CliError};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut out = std::io::BufWriter::new(std::io::stdout());
    let result = tetherctl::run(cli, &mut out).await;
    let result = result.and_then(|()| out.flush().map_err(CliError::from));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`tetherctl agents list | head`): not an error worth reporting.
        Err(CliError::Io(err)) if err.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        // Not a failure: the person chose to leave the command running.
        Err(err @ CliError::Detached { .. }) => {
            let _ = out.flush();
            eprintln!("{err}");
            ExitCode::from(err.exit_code())
        }
        Err(err) => {
            let _ = out.flush();
            // Escaped as all human output is: server text reaches errors too.
            eprintln!(
                "error: {}",
                tetherctl::format::terminal_safe(&err.to_string())
            );
            ExitCode::from(err.exit_code())
        }
    }
}
