//! `cmd run|get|list|invocations|watch|logs|cancel|pause|resume`: the `CommandService` commands.
//!
//! Each command checks its arguments, connects, calls the service, converts the answers into
//! [`crate::view`] types and hands them to pure renderers. The children hold the parts with
//! rules of their own, each unit-tested without a server: `send` (flags → request), `follow`
//! (the watch with resume and ctrl-c), `stream` (agents' lines), `logs` (stored output) and
//! `render` (tables and messages).
//!
//! Output of agents is their data: it goes out byte for byte (stdout lines to stdout, stderr
//! lines to stderr); only names and reasons in tables and prefixes are escaped.

mod follow;
mod logs;
mod render;
mod send;
mod stream;

use std::io::Write;
use std::time::SystemTime;

use tether_proto as pb;

use crate::cli::{
    CmdCommand, CommandIdArgs, InvocationsArgs, ListCommandsArgs, LogsArgs, ObjectFormat, RunArgs,
};
use crate::client::{CommandClient, Connection};
use crate::config::Settings;
use crate::console::Console;
use crate::view::{
    CommandEventKind, CommandEventView, CommandState, CommandView, InvocationState, InvocationView,
};
use crate::{CliError, write_json};

use super::{Paged, fetch_paged, print_list, print_object, required_id, since_time};
use follow::{Ending, Follow};
use render::{
    render_command, render_commands, render_invocations, render_outcome, render_sent,
    render_steered,
};

/// Commands or invocations requested per page (the server's maximum).
pub const COMMAND_PAGE_SIZE: u32 = 1_000;

/// Runs one `cmd` subcommand.
pub(crate) async fn dispatch(
    command: CmdCommand,
    settings: &Settings,
    console: Console,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    match command {
        CmdCommand::Run(args) => run(*args, settings, console, out).await,
        CmdCommand::Get(args) => get(args, settings, out).await,
        CmdCommand::List(args) => list(args, settings, out).await,
        CmdCommand::Invocations(args) => invocations(args, settings, out).await,
        CmdCommand::Watch(args) => watch(args, settings, console, out).await,
        CmdCommand::Logs(args) => logs(args, settings, out).await,
        CmdCommand::Cancel(args) => steer(Steer::Cancel, args, settings, out).await,
        CmdCommand::Pause(args) => steer(Steer::Pause, args, settings, out).await,
        CmdCommand::Resume(args) => steer(Steer::Resume, args, settings, out).await,
    }
}

/// `cmd run`: sends the command, then (unless `--async`) follows it to its end.
async fn run(
    args: RunArgs,
    settings: &Settings,
    console: Console,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let stdin = send::read_stdin_file(args.stdin_file.as_deref())?;
    let request = send::request(&args, stdin)?;
    let conn = Connection::connect(settings).await?;
    let pb::SendCommandResponse { command, existing } = conn
        .commands()
        .send_command(request)
        .await
        .map_err(|status| conn.error(&status, None))?
        .into_inner();
    let command = CommandView::from(command.ok_or_else(|| missing("the sent command"))?);
    let id = command.command_id.clone();
    if args.no_follow {
        return match args.output {
            ObjectFormat::Table => Ok(writeln!(out, "{id}")?),
            ObjectFormat::Json => write_json(out, &command),
        };
    }
    let mut err = std::io::stderr();
    err.write_all(render_sent(&command, existing, console.interactive).as_bytes())?;
    let follow = Follow {
        conn: &conn,
        command_id: &id,
        json: args.output == ObjectFormat::Json,
        console,
        offer_cancel: true,
    };
    match follow::follow(follow, out, &mut err).await? {
        Ending::Ended(last) => conclude(&conn, &id, last, args.output, out).await,
        Ending::Detached => {
            // The id on stdout, for whoever runs this from a script.
            if args.output == ObjectFormat::Table {
                writeln!(out, "{id}")?;
            }
            Err(CliError::Detached { command_id: id })
        }
    }
}

/// `cmd watch`: follows a command, stored output first, to its end.
async fn watch(
    args: CommandIdArgs,
    settings: &Settings,
    console: Console,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let id = required_id(&args.id, "command")?;
    let conn = Connection::connect(settings).await?;
    let follow = Follow {
        conn: &conn,
        command_id: &id,
        json: args.output == ObjectFormat::Json,
        console,
        offer_cancel: false,
    };
    match follow::follow(follow, out, &mut std::io::stderr()).await? {
        Ending::Ended(last) => conclude(&conn, &id, last, args.output, out).await,
        Ending::Detached => Err(CliError::Detached { command_id: id }),
    }
}

/// After a followed command ended: the summary table (for people) and the verdict, an error
/// unless every invocation succeeded.
async fn conclude(
    conn: &Connection,
    id: &str,
    last: Option<Box<CommandView>>,
    output: ObjectFormat,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let command = match last {
        Some(command) if command.state.is_terminal() => *command,
        _ => get_command(conn, id).await?,
    };
    if output == ObjectFormat::Table {
        let invocations = fetch_invocations(conn, id, &[]).await?;
        if !invocations.is_empty() {
            out.write_all(b"\n")?;
            out.write_all(render_invocations(&invocations).as_bytes())?;
        }
        out.write_all(render_outcome(&command).as_bytes())?;
    }
    verdict(&command)
}

/// `Ok` when every invocation succeeded, else [`CliError::CommandFailed`].
fn verdict(command: &CommandView) -> Result<(), CliError> {
    let counts = &command.counts;
    if command.state == CommandState::Succeeded && counts.succeeded == counts.total {
        return Ok(());
    }
    Err(CliError::CommandFailed {
        command_id: command.command_id.clone(),
        state: command.state.label().to_owned(),
        summary: format!(
            "{} of {} invocations did not succeed",
            counts.total - counts.succeeded.min(counts.total),
            counts.total
        ),
    })
}

/// `cmd get`.
async fn get(
    args: CommandIdArgs,
    settings: &Settings,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let id = required_id(&args.id, "command")?;
    let conn = Connection::connect(settings).await?;
    let command = get_command(&conn, &id).await?;
    print_object(out, args.output, &command, |command| {
        render_command(command, SystemTime::now())
    })
}

/// `cmd list`: every matching page (or `--limit` commands), newest first.
async fn list(
    args: ListCommandsArgs,
    settings: &Settings,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let base = pb::ListCommandsRequest {
        states: args.states.iter().map(|s| s.to_pb() as i32).collect(),
        sender_token_id: args.sender.as_deref().unwrap_or_default().trim().to_owned(),
        since: args.since.map(since_time).transpose()?.map(Into::into),
        until: None,
        page_size: 0,
        page_token: String::new(),
    };
    let conn = Connection::connect(settings).await?;
    let client = conn.commands();
    let commands = fetch_paged(
        &conn,
        COMMAND_PAGE_SIZE,
        args.limit,
        &base,
        None,
        |request| {
            let mut client = client.clone();
            async move {
                let page = client.list_commands(request).await?.into_inner();
                Ok((page.commands, page.next_page_token))
            }
        },
    )
    .await?;
    let commands: Vec<CommandView> = commands.into_iter().map(CommandView::from).collect();
    print_list(out, args.output, &commands, "commands", |commands| {
        render_commands(commands, SystemTime::now())
    })
}

/// `cmd invocations`.
async fn invocations(
    args: InvocationsArgs,
    settings: &Settings,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let id = required_id(&args.id, "command")?;
    let conn = Connection::connect(settings).await?;
    let invocations = fetch_invocations(&conn, &id, &args.states).await?;
    print_list(
        out,
        args.output,
        &invocations,
        "invocations",
        render_invocations,
    )
}

/// `cmd logs`: finds the agent's invocation, replays its stored output, prints it raw.
async fn logs(
    args: LogsArgs,
    settings: &Settings,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let id = required_id(&args.id, "command")?;
    let agent = required_id(&args.agent, "agent")?;
    let conn = Connection::connect(settings).await?;
    let invocations = fetch_invocations(&conn, &id, &[]).await?;
    let invocation = find_invocation(invocations, &id, &agent)?;
    let request = pb::WatchCommandRequest {
        command_id: id.clone(),
        after_cursor: 0,
        agent_id: invocation.agent_id.clone(),
        exclude_output: false,
    };
    let what = format!("command {id}");
    let mut stream = conn
        .commands()
        .watch_command(request)
        .await
        .map_err(|status| conn.error(&status, Some(&what)))?
        .into_inner();
    // The stored events come first, then `synced`; what follows is live and not wanted here.
    let mut latest = invocation;
    let mut chunks = Vec::new();
    while let Some(event) = stream
        .message()
        .await
        .map_err(|status| conn.error(&status, Some(&what)))?
    {
        let event = CommandEventView::from(event);
        match event.kind {
            CommandEventKind::Synced => break,
            CommandEventKind::Invocation => {
                if let Some(update) = event.invocation
                    && update.invocation_id == latest.invocation_id
                {
                    latest = update;
                }
            }
            CommandEventKind::Output => {
                if let Some(chunk) = event.output
                    && chunk.invocation_id == latest.invocation_id
                {
                    chunks.push(chunk);
                }
            }
            CommandEventKind::Command | CommandEventKind::Unknown => {}
        }
    }
    let log = logs::assemble(
        latest,
        chunks
            .iter()
            .map(|c| (c.stream, c.offset, c.data.as_slice())),
    );
    match args.output {
        ObjectFormat::Json => write_json(out, &log)?,
        ObjectFormat::Table => {
            out.write_all(&log.stdout.data)?;
            out.flush()?;
            let mut err = std::io::stderr();
            err.write_all(&log.stderr.data)?;
            err.write_all(logs::render_notes(&log).as_bytes())?;
        }
    }
    Ok(())
}

/// The invocation of `agent` (an agent id, else a unique agent name) among `invocations`.
fn find_invocation(
    invocations: Vec<InvocationView>,
    command_id: &str,
    agent: &str,
) -> Result<InvocationView, CliError> {
    let (by_id, others): (Vec<_>, Vec<_>) =
        invocations.into_iter().partition(|i| i.agent_id == agent);
    if let Some(invocation) = by_id.into_iter().next() {
        return Ok(invocation);
    }
    let mut by_name: Vec<InvocationView> = others
        .into_iter()
        .filter(|i| i.agent_name == agent)
        .collect();
    match by_name.len() {
        0 => Err(CliError::NotFound(format!(
            "agent {agent} is not a target of command {command_id}"
        ))),
        1 => Ok(by_name.remove(0)),
        _ => Err(CliError::Usage(format!(
            "{} agents of command {command_id} are named {agent}; name one by id: {}",
            by_name.len(),
            by_name
                .iter()
                .map(|i| i.agent_id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// What `cmd cancel|pause|resume` asks for.
#[derive(Debug, Clone, Copy)]
enum Steer {
    Cancel,
    Pause,
    Resume,
}

// === impl Steer ===

impl Steer {
    /// Asks the server; the command as it answers.
    async fn send(
        self,
        mut client: CommandClient,
        command_id: String,
    ) -> Result<Option<pb::Command>, tonic::Status> {
        Ok(match self {
            Self::Cancel => {
                let request = pb::CancelCommandRequest { command_id };
                client.cancel_command(request).await?.into_inner().command
            }
            Self::Pause => {
                let request = pb::PauseCommandRequest { command_id };
                client.pause_command(request).await?.into_inner().command
            }
            Self::Resume => {
                let request = pb::ResumeCommandRequest { command_id };
                client.resume_command(request).await?.into_inner().command
            }
        })
    }

    /// What happened, for the confirmation.
    fn done(self) -> &'static str {
        match self {
            Self::Cancel => "cancel requested",
            Self::Pause => "paused",
            Self::Resume => "resumed",
        }
    }
}

/// `cmd cancel|pause|resume`.
async fn steer(
    steer: Steer,
    args: CommandIdArgs,
    settings: &Settings,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let id = required_id(&args.id, "command")?;
    let conn = Connection::connect(settings).await?;
    let command = steer
        .send(conn.commands(), id.clone())
        .await
        .map_err(|status| conn.error(&status, Some(&format!("command {id}"))))?
        .ok_or_else(|| missing(&format!("command {id}")))?;
    print_object(out, args.output, &CommandView::from(command), |command| {
        render_steered(steer.done(), command)
    })
}

/// `GetCommand`.
async fn get_command(conn: &Connection, id: &str) -> Result<CommandView, CliError> {
    let command = conn
        .commands()
        .get_command(pb::GetCommandRequest {
            command_id: id.to_owned(),
        })
        .await
        .map_err(|status| conn.error(&status, Some(&format!("command {id}"))))?
        .into_inner()
        .command
        .ok_or_else(|| missing(&format!("command {id}")))?;
    Ok(command.into())
}

/// Every invocation of command `id` (in one of `states`, when given), following the pages.
async fn fetch_invocations(
    conn: &Connection,
    id: &str,
    states: &[InvocationState],
) -> Result<Vec<InvocationView>, CliError> {
    let client = conn.commands();
    let what = format!("command {id}");
    let base = pb::ListInvocationsRequest {
        command_id: id.to_owned(),
        states: states.iter().map(|s| s.to_pb() as i32).collect(),
        page_size: 0,
        page_token: String::new(),
    };
    let invocations = fetch_paged(
        conn,
        COMMAND_PAGE_SIZE,
        None,
        &base,
        Some(&what),
        |request| {
            let mut client = client.clone();
            async move {
                let page = client.list_invocations(request).await?.into_inner();
                Ok((page.invocations, page.next_page_token))
            }
        },
    )
    .await?;
    Ok(invocations.into_iter().map(InvocationView::from).collect())
}

impl Paged for pb::ListCommandsRequest {
    fn page(&self, page_size: i32, page_token: String) -> Self {
        Self {
            page_size,
            page_token,
            ..self.clone()
        }
    }
}

impl Paged for pb::ListInvocationsRequest {
    fn page(&self, page_size: i32, page_token: String) -> Self {
        Self {
            page_size,
            page_token,
            ..self.clone()
        }
    }
}

/// The server answered without the object it must send.
fn missing(what: &str) -> CliError {
    CliError::Server {
        code: "Internal".to_owned(),
        message: format!("the server answered without {what}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::InvocationCountsView;

    fn invocation(agent_id: &str, name: &str) -> InvocationView {
        InvocationView {
            agent_id: agent_id.into(),
            ..render::tests::invocation(name, InvocationState::Succeeded)
        }
    }

    #[test]
    fn logs_find_the_agent_by_id_then_by_unique_name() {
        let all = || {
            vec![
                invocation("a-1", "web"),
                invocation("a-2", "db"),
                invocation("a-3", "db"),
                invocation("web", "x"),
            ]
        };
        // An id wins over a name.
        assert_eq!(
            find_invocation(all(), "c-1", "web")
                .expect("by id")
                .agent_id,
            "web"
        );
        assert_eq!(
            find_invocation(all(), "c-1", "a-2")
                .expect("by id")
                .agent_id,
            "a-2"
        );
        assert_eq!(
            find_invocation(all(), "c-1", "x")
                .expect("by name")
                .agent_id,
            "web"
        );
        let ambiguous = find_invocation(all(), "c-1", "db").expect_err("two named db");
        assert!(
            matches!(&ambiguous, CliError::Usage(m) if m.contains("a-2, a-3")),
            "{ambiguous}"
        );
        let absent = find_invocation(all(), "c-1", "nope").expect_err("absent");
        assert_eq!(
            absent.to_string(),
            "agent nope is not a target of command c-1"
        );
    }

    #[test]
    fn only_a_command_where_every_invocation_succeeded_passes() {
        let mut command = render::tests::command(CommandState::Succeeded);
        command.counts = InvocationCountsView {
            total: 2,
            succeeded: 2,
            ..InvocationCountsView::default()
        };
        verdict(&command).expect("all succeeded");
        command.counts.succeeded = 1;
        command.counts.skipped = 1;
        command.state = CommandState::Failed;
        let err = verdict(&command).expect_err("one skipped");
        assert_eq!(
            err.to_string(),
            "command c-1 FAILED: 1 of 2 invocations did not succeed"
        );
        command.state = CommandState::Cancelled;
        assert!(verdict(&command).is_err());
    }
}
