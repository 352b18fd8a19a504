//! `cmd run`'s request: the flags checked together and turned into a `SendCommandRequest`.
//!
//! [`request`] is pure (the standard input bytes are read by the caller), so every rule that
//! spans flags is unit-tested: a target is required; `exec` needs an absolute program after
//! `--` and the built-ins take none; `--sleep` belongs to `--kind sleep`; `--env`, `--workdir`
//! and `--stdin-file` belong to `exec`.

use std::collections::HashMap;
use std::io::Read as _;
use std::path::Path;
use std::time::Duration;

use tether_proto as pb;

use crate::CliError;
use crate::cli::{KindArg, RunArgs};
use crate::selector::parse_selector;

/// Most bytes `--stdin-file` may hold: the contract's bound on a command's standard input.
pub(super) const MAX_STDIN_BYTES: u64 = tether_proto::command::MAX_STDIN_BYTES as u64;

/// The `SendCommand` request `args` describe, with `stdin` as the program's standard input.
///
/// # Errors
///
/// [`CliError::Usage`] naming the flags that do not fit together.
pub(super) fn request(args: &RunArgs, stdin: Vec<u8>) -> Result<pb::SendCommandRequest, CliError> {
    let usage = |message: &str| Err(CliError::Usage(message.to_owned()));
    let label_selector = match args.selector.as_deref() {
        Some(raw) => parse_selector(raw)?.to_string(),
        None => String::new(),
    };
    let agent_ids: Vec<String> = args
        .agents
        .iter()
        .map(|id| id.trim().to_owned())
        .filter(|id| !id.is_empty())
        .collect();
    if label_selector.is_empty() && agent_ids.is_empty() {
        return usage("name the targets: -l SELECTOR, --agent ID, or both");
    }
    if args.timeout.is_some_and(|d| d.is_zero()) {
        return usage("--timeout must be longer than zero");
    }
    if args.deliver_within.is_some_and(|d| d.is_zero()) {
        return usage("--deliver-within must be longer than zero");
    }
    if args.max_concurrency == Some(crate::view::BudgetView::Count(0))
        || args.max_concurrency == Some(crate::view::BudgetView::Percent(0))
    {
        return usage("--max-concurrency must allow at least one invocation");
    }
    let spec = spec(args, stdin)?;
    Ok(pb::SendCommandRequest {
        spec: Some(spec),
        targets: Some(pb::CommandTargets {
            agent_ids,
            label_selector,
            include_offline: args.include_offline,
        }),
        rollout: Some(pb::RolloutPolicy {
            max_concurrency: args.max_concurrency.map(|b| b.to_pb()),
            max_errors: args.max_errors.map(|b| b.to_pb()),
            canary: args.canary,
        }),
        timeout: args
            .timeout
            .map(|d| wire_duration(d, "--timeout"))
            .transpose()?,
        deliver_within: args
            .deliver_within
            .map(|d| wire_duration(d, "--deliver-within"))
            .transpose()?,
        idempotency_key: args
            .idempotency_key
            .as_deref()
            .map(str::trim)
            .unwrap_or_default()
            .to_owned(),
        description: args.description.clone(),
        output_limit_bytes: args.output_limit.unwrap_or(0),
    })
}

/// What to run, from `--kind` and the flags that belong to it.
fn spec(args: &RunArgs, stdin: Vec<u8>) -> Result<pb::CommandSpec, CliError> {
    use pb::command_spec::Kind;
    let usage = |message: String| Err(CliError::Usage(message));
    let exec_only = [
        ("--env", !args.env.is_empty()),
        ("--workdir", args.workdir.is_some()),
        ("--stdin-file", args.stdin_file.is_some()),
    ];
    if args.kind != KindArg::Exec {
        let kind = kind_name(args.kind);
        if !args.argv.is_empty() {
            return usage(format!(
                "--kind {kind} runs no program: remove what follows `--`"
            ));
        }
        if let Some((flag, _)) = exec_only.iter().find(|(_, given)| *given) {
            return usage(format!(
                "{flag} applies to programs (--kind exec), not to {kind}"
            ));
        }
    }
    if args.kind != KindArg::Sleep && args.sleep.is_some() {
        return usage("--sleep applies to --kind sleep only".to_owned());
    }
    let kind = match args.kind {
        KindArg::Exec => {
            let Some(program) = args.argv.first() else {
                return usage(
                    "name the program after `--`, e.g. `tetherctl cmd run -l env=prod -- \
                     /usr/bin/uptime`, or choose a built-in with --kind"
                        .to_owned(),
                );
            };
            if !program.starts_with('/') {
                return usage(format!(
                    "the program must be an absolute path (agents run only the paths their \
                     allowlist names): `{program}`"
                ));
            }
            Kind::Exec(pb::ExecSpec {
                argv: args.argv.clone(),
                env: parse_env(&args.env)?,
                working_dir: args.workdir.clone().unwrap_or_default(),
                stdin,
            })
        }
        KindArg::Noop => Kind::Noop(pb::NoopSpec {}),
        KindArg::Collect => Kind::Collect(pb::CollectSpec {}),
        KindArg::Sleep => {
            let Some(sleep) = args.sleep else {
                return usage("--kind sleep needs --sleep DURATION, e.g. --sleep 5s".to_owned());
            };
            Kind::Sleep(pb::SleepSpec {
                duration: Some(wire_duration(sleep, "--sleep")?),
            })
        }
    };
    Ok(pb::CommandSpec { kind: Some(kind) })
}

/// Reads `--stdin-file` (`-` is this process's standard input), at most [`MAX_STDIN_BYTES`].
///
/// # Errors
///
/// [`CliError::Usage`] when the file cannot be read or is too large.
pub(super) fn read_stdin_file(path: Option<&Path>) -> Result<Vec<u8>, CliError> {
    let Some(path) = path else {
        return Ok(Vec::new());
    };
    let failed = |err: std::io::Error| {
        CliError::Usage(format!(
            "cannot read --stdin-file {}: {err}",
            path.display()
        ))
    };
    let reader: Box<dyn std::io::Read> = if path == Path::new("-") {
        Box::new(std::io::stdin())
    } else {
        Box::new(std::fs::File::open(path).map_err(failed)?)
    };
    let mut bytes = Vec::new();
    reader
        .take(MAX_STDIN_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(failed)?;
    if bytes.len() as u64 > MAX_STDIN_BYTES {
        return Err(CliError::Usage(format!(
            "--stdin-file {} holds more than {MAX_STDIN_BYTES} bytes, more than a command \
             can carry",
            path.display()
        )));
    }
    Ok(bytes)
}

/// Parses `--env K=V` flags. A key is not empty and has no `=`; the value may be anything.
fn parse_env(flags: &[String]) -> Result<HashMap<String, String>, CliError> {
    let mut env = HashMap::new();
    for flag in flags {
        let Some((key, value)) = flag.split_once('=') else {
            return Err(CliError::Usage(format!(
                "--env `{flag}` must look like NAME=VALUE"
            )));
        };
        if key.is_empty() || key.contains('\0') || value.contains('\0') {
            return Err(CliError::Usage(format!(
                "--env `{flag}` needs a name, and neither part may hold a NUL byte"
            )));
        }
        if env.insert(key.to_owned(), value.to_owned()).is_some() {
            return Err(CliError::Usage(format!("--env {key} given more than once")));
        }
    }
    Ok(env)
}

fn wire_duration(d: Duration, flag: &str) -> Result<prost_types::Duration, CliError> {
    prost_types::Duration::try_from(d).map_err(|_| CliError::Usage(format!("{flag} is too long")))
}

fn kind_name(kind: KindArg) -> &'static str {
    match kind {
        KindArg::Exec => "exec",
        KindArg::Noop => "noop",
        KindArg::Collect => "collect",
        KindArg::Sleep => "sleep",
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::cli::{CmdCommand, Command};
    use crate::view::BudgetView;

    fn args(argv: &[&str]) -> RunArgs {
        let mut full = vec!["tetherctl", "cmd", "run"];
        full.extend_from_slice(argv);
        match crate::Cli::try_parse_from(full).expect("parses").command {
            Command::Cmd(CmdCommand::Run(args)) => *args,
            other => panic!("parsed as {other:?}"),
        }
    }

    fn refused(argv: &[&str]) -> String {
        match request(&args(argv), Vec::new()) {
            Err(CliError::Usage(message)) => message,
            other => panic!("{argv:?} gave {other:?}"),
        }
    }

    #[test]
    fn an_exec_request_carries_every_flag() {
        let request = request(
            &args(&[
                "-l",
                " env = prod ",
                "--agent",
                "a-1, a-2",
                "--include-offline",
                "--max-concurrency",
                "10%",
                "--max-errors",
                "0",
                "--canary",
                "2",
                "--timeout",
                "30s",
                "--deliver-within",
                "10m",
                "--idempotency-key",
                " k-1 ",
                "--description",
                "check",
                "--output-limit",
                "1MiB",
                "--env",
                "LANG=C",
                "--env",
                "EMPTY=",
                "--workdir",
                "/srv",
                "--",
                "/usr/bin/uptime",
                "-p",
            ]),
            b"input".to_vec(),
        )
        .expect("valid");
        assert_eq!(
            request.targets,
            Some(pb::CommandTargets {
                agent_ids: vec!["a-1".into(), "a-2".into()],
                label_selector: "env=prod".into(),
                include_offline: true,
            })
        );
        let rollout = request.rollout.expect("rollout");
        assert_eq!(
            rollout.max_concurrency,
            Some(BudgetView::Percent(10).to_pb())
        );
        assert_eq!(rollout.max_errors, Some(BudgetView::Count(0).to_pb()));
        assert_eq!(rollout.canary, 2);
        assert_eq!(request.timeout.map(|d| d.seconds), Some(30));
        assert_eq!(request.deliver_within.map(|d| d.seconds), Some(600));
        assert_eq!(request.idempotency_key, "k-1");
        assert_eq!(request.description, "check");
        assert_eq!(request.output_limit_bytes, 1 << 20);
        let Some(pb::command_spec::Kind::Exec(exec)) = request.spec.and_then(|s| s.kind) else {
            panic!("not exec");
        };
        assert_eq!(exec.argv, ["/usr/bin/uptime", "-p"]);
        assert_eq!(
            exec.env,
            HashMap::from([
                ("LANG".to_owned(), "C".to_owned()),
                ("EMPTY".to_owned(), String::new())
            ])
        );
        assert_eq!(exec.working_dir, "/srv");
        assert_eq!(exec.stdin, b"input");
    }

    #[test]
    fn unset_flags_leave_the_server_its_defaults() {
        let request =
            request(&args(&["--agent", "a-1", "--kind", "noop"]), Vec::new()).expect("valid");
        assert_eq!(request.timeout, None);
        assert_eq!(request.deliver_within, None);
        assert_eq!(request.output_limit_bytes, 0);
        assert_eq!(request.idempotency_key, "");
        let rollout = request.rollout.expect("rollout");
        assert_eq!((rollout.max_concurrency, rollout.max_errors), (None, None));
        assert_eq!(
            request.spec.and_then(|s| s.kind),
            Some(pb::command_spec::Kind::Noop(pb::NoopSpec {}))
        );
    }

    #[test]
    fn built_ins_take_their_own_flags_only() {
        let request = request(
            &args(&["--agent", "a-1", "--kind", "sleep", "--sleep", "1500ms"]),
            Vec::new(),
        )
        .expect("valid");
        assert_eq!(
            request.spec.and_then(|s| s.kind),
            Some(pb::command_spec::Kind::Sleep(pb::SleepSpec {
                duration: Some(prost_types::Duration {
                    seconds: 1,
                    nanos: 500_000_000
                })
            }))
        );
        assert!(refused(&["--agent", "a", "--kind", "sleep"]).contains("--sleep DURATION"));
        assert!(
            refused(&["--agent", "a", "--kind", "noop", "--", "/bin/true"])
                .contains("runs no program")
        );
        assert!(
            refused(&["--agent", "a", "--kind", "collect", "--env", "A=1"])
                .contains("--env applies to programs")
        );
        assert!(
            refused(&["--agent", "a", "--sleep", "1s", "--", "/bin/true"])
                .contains("--kind sleep only")
        );
    }

    #[test]
    fn bad_combinations_are_refused_before_anything_is_sent() {
        assert!(refused(&["--", "/usr/bin/uptime"]).contains("name the targets"));
        assert!(refused(&["--agent", " ", "--", "/usr/bin/uptime"]).contains("name the targets"));
        assert!(refused(&["-l", "=x", "--", "/usr/bin/uptime"]).contains('='));
        assert!(refused(&["--agent", "a"]).contains("name the program"));
        assert!(refused(&["--agent", "a", "--", "uptime"]).contains("absolute path"));
        assert!(
            refused(&["--agent", "a", "--timeout", "0s", "--", "/bin/true"]).contains("--timeout")
        );
        assert!(
            refused(&["--agent", "a", "--max-concurrency", "0%", "--", "/bin/true"])
                .contains("at least one")
        );
        assert!(
            refused(&["--agent", "a", "--env", "NOVALUE", "--", "/bin/true"])
                .contains("NAME=VALUE")
        );
        assert!(
            refused(&["--agent", "a", "--env", "=v", "--", "/bin/true"]).contains("needs a name")
        );
        assert!(
            refused(&[
                "--agent",
                "a",
                "--env",
                "A=1",
                "--env",
                "A=2",
                "--",
                "/bin/true"
            ])
            .contains("more than once")
        );
    }

    #[test]
    fn stdin_files_are_read_within_the_limit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let small = dir.path().join("small");
        std::fs::write(&small, b"hello").expect("write");
        assert_eq!(read_stdin_file(Some(&small)).expect("reads"), b"hello");
        assert_eq!(read_stdin_file(None).expect("none"), b"");
        let big = dir.path().join("big");
        let len = usize::try_from(MAX_STDIN_BYTES).expect("fits") + 1;
        std::fs::write(&big, vec![b'x'; len]).expect("write");
        assert!(matches!(
            read_stdin_file(Some(&big)),
            Err(CliError::Usage(m)) if m.contains("more than")
        ));
        assert!(matches!(
            read_stdin_file(Some(&dir.path().join("missing"))),
            Err(CliError::Usage(m)) if m.contains("cannot read")
        ));
    }
}
