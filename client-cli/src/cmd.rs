//! Command implementations, one module per command group, and the dispatcher that routes a
//! parsed [`Command`] to them.

use std::io::Write;

use crate::CliError;
use crate::cli::{AgentsCommand, ApiTokensCommand, Command, EnrollTokenCommand, OrgsCommand};
use crate::config::Settings;

mod agents;
pub(crate) mod audit;
mod enroll;
mod fleet;
mod objects;
mod orgs;
mod tokens;

/// Runs `command` against the server in `settings`, writing its output to `out`.
pub(crate) async fn dispatch(
    command: Command,
    settings: &Settings,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    match command {
        Command::Agents(AgentsCommand::List(args)) => agents::list(args, settings, out).await,
        Command::Agents(AgentsCommand::Get(args)) => agents::get(args, settings, out).await,
        Command::Agents(AgentsCommand::Watch(args)) => agents::watch(args, settings, out).await,
        Command::Agents(AgentsCommand::Delete(args)) => agents::delete(args, settings, out).await,
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
    }
}
