//! A command's spec, targets and budgets: both ways, with the bounds of
//! `tether_proto::command` applied on the way in.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::time::Duration;

use tether_proto as pb;
use tether_proto::command::{
    MAX_ARGV_BYTES, MAX_ARGV_ITEMS, MAX_ENV_BYTES, MAX_ENV_VARS, MAX_STDIN_BYTES, MAX_TARGET_IDS,
    MAX_TIMEOUT, MAX_WORKING_DIR_BYTES,
};
use tether_proto::selector::Selector;

use super::super::{duration, duration_from_pb, id_from_pb, plain};
use crate::command::model::{Amount, RolloutPolicy};
use crate::command::record::{CommandSpec, ExecSpec, Targets};
use crate::domain::AgentId;
use crate::error::ServerError;

/// # Errors
///
/// `INVALID_ARGUMENT` naming the field: no kind, a program that is not an absolute path, text
/// with control or format characters, NUL in any string, a bound exceeded.
pub fn spec_from_pb(spec: Option<pb::CommandSpec>) -> Result<CommandSpec, ServerError> {
    use pb::command_spec::Kind;
    let kind = spec
        .and_then(|s| s.kind)
        .ok_or_else(|| ServerError::invalid("spec names no command kind"))?;
    Ok(match kind {
        Kind::Exec(exec) => CommandSpec::Exec(exec_from_pb(exec)?),
        Kind::Noop(pb::NoopSpec {}) => CommandSpec::Noop,
        Kind::Collect(pb::CollectSpec {}) => CommandSpec::Collect,
        Kind::Sleep(pb::SleepSpec { duration: sleep }) => {
            let sleep = sleep
                .map(|d| duration_from_pb(d, "spec.sleep.duration"))
                .transpose()?
                .ok_or_else(|| ServerError::invalid("spec.sleep.duration is required"))?;
            if sleep > MAX_TIMEOUT {
                return Err(ServerError::invalid(format!(
                    "spec.sleep.duration is longer than {}",
                    humantime::format_duration(MAX_TIMEOUT)
                )));
            }
            CommandSpec::Sleep(sleep)
        }
    })
}

fn exec_from_pb(exec: pb::ExecSpec) -> Result<ExecSpec, ServerError> {
    let pb::ExecSpec {
        argv,
        env,
        working_dir,
        stdin,
    } = exec;
    let program = argv
        .first()
        .ok_or_else(|| ServerError::invalid("spec.exec.argv is empty: name the program"))?;
    if !program.starts_with('/') {
        return Err(ServerError::invalid(format!(
            "spec.exec.argv[0] must be an absolute path (agents run only the paths their \
             allowlist names), not {:?}",
            shorten(program)
        )));
    }
    plain(program, "spec.exec.argv[0]")?;
    if argv.len() > MAX_ARGV_ITEMS {
        return Err(ServerError::invalid(format!(
            "spec.exec.argv has {} arguments; at most {MAX_ARGV_ITEMS} are allowed",
            argv.len()
        )));
    }
    let argv_bytes: usize = argv.iter().map(String::len).sum();
    if argv_bytes > MAX_ARGV_BYTES {
        return Err(ServerError::invalid(format!(
            "spec.exec.argv is {argv_bytes} bytes; at most {MAX_ARGV_BYTES} are allowed"
        )));
    }
    if let Some(i) = argv.iter().position(|a| a.contains('\0')) {
        return Err(ServerError::invalid(format!(
            "spec.exec.argv[{i}] holds NUL, which no process can receive"
        )));
    }
    if env.len() > MAX_ENV_VARS {
        return Err(ServerError::invalid(format!(
            "spec.exec.env has {} variables; at most {MAX_ENV_VARS} are allowed",
            env.len()
        )));
    }
    let env_bytes: usize = env.iter().map(|(k, v)| k.len() + v.len()).sum();
    if env_bytes > MAX_ENV_BYTES {
        return Err(ServerError::invalid(format!(
            "spec.exec.env is {env_bytes} bytes; at most {MAX_ENV_BYTES} are allowed"
        )));
    }
    let mut vars = BTreeMap::new();
    for (name, value) in env {
        if name.is_empty() || name.contains('=') || name.contains('\0') {
            return Err(ServerError::invalid(format!(
                "spec.exec.env: {:?} is not a variable name (empty, or holds '=' or NUL)",
                shorten(&name)
            )));
        }
        plain(&name, "spec.exec.env name")?;
        if value.contains('\0') {
            return Err(ServerError::invalid(format!(
                "spec.exec.env[{name}] holds NUL, which no process can receive"
            )));
        }
        vars.insert(name, value);
    }
    if working_dir.len() > MAX_WORKING_DIR_BYTES {
        return Err(ServerError::invalid(format!(
            "spec.exec.working_dir is longer than {MAX_WORKING_DIR_BYTES} bytes"
        )));
    }
    if !working_dir.is_empty() && !working_dir.starts_with('/') {
        return Err(ServerError::invalid(
            "spec.exec.working_dir must be an absolute path (or empty)",
        ));
    }
    if working_dir.contains('\0') {
        return Err(ServerError::invalid("spec.exec.working_dir holds NUL"));
    }
    plain(&working_dir, "spec.exec.working_dir")?;
    if stdin.len() > MAX_STDIN_BYTES {
        return Err(ServerError::invalid(format!(
            "spec.exec.stdin is {} bytes; at most {MAX_STDIN_BYTES} are allowed",
            stdin.len()
        )));
    }
    Ok(ExecSpec {
        argv,
        env: vars,
        working_dir,
        stdin,
    })
}

pub fn spec_to_pb(spec: &CommandSpec) -> pb::CommandSpec {
    use pb::command_spec::Kind;
    let kind = match spec {
        CommandSpec::Exec(exec) => Kind::Exec(pb::ExecSpec {
            argv: exec.argv.clone(),
            env: exec
                .env
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<HashMap<_, _>>(),
            working_dir: exec.working_dir.clone(),
            stdin: exec.stdin.clone(),
        }),
        CommandSpec::Noop => Kind::Noop(pb::NoopSpec {}),
        CommandSpec::Collect => Kind::Collect(pb::CollectSpec {}),
        CommandSpec::Sleep(d) => Kind::Sleep(pb::SleepSpec {
            duration: Some(duration(*d)),
        }),
    };
    pb::CommandSpec { kind: Some(kind) }
}

/// # Errors
///
/// `INVALID_ARGUMENT` for no target at all, a malformed agent id or selector, or too many ids.
pub fn targets_from_pb(targets: Option<pb::CommandTargets>) -> Result<Targets, ServerError> {
    let pb::CommandTargets {
        agent_ids,
        label_selector,
        include_offline,
    } = targets.unwrap_or_default();
    if agent_ids.len() > MAX_TARGET_IDS {
        return Err(ServerError::invalid(format!(
            "targets.agent_ids names {} agents; at most {MAX_TARGET_IDS} are allowed (use a \
             label selector)",
            agent_ids.len()
        )));
    }
    let mut ids: Vec<AgentId> = Vec::with_capacity(agent_ids.len());
    for raw in &agent_ids {
        ids.push(AgentId::new(id_from_pb(raw, "targets.agent_ids")?));
    }
    ids.sort();
    ids.dedup();
    let selector = if label_selector.trim().is_empty() {
        String::new()
    } else {
        Selector::parse(&label_selector)
            .map_err(|e| ServerError::InvalidArgument(format!("targets.label_selector: {e}")))?
            .to_string()
    };
    if ids.is_empty() && selector.is_empty() {
        return Err(ServerError::invalid(
            "the command has no target: give targets.agent_ids, targets.label_selector, or both",
        ));
    }
    Ok(Targets {
        agent_ids: ids,
        selector,
        include_offline,
    })
}

pub fn targets_to_pb(targets: &Targets) -> pb::CommandTargets {
    pb::CommandTargets {
        agent_ids: targets.agent_ids.iter().map(ToString::to_string).collect(),
        label_selector: targets.selector.clone(),
        include_offline: targets.include_offline,
    }
}

/// # Errors
///
/// `INVALID_ARGUMENT` for a concurrency of 0 or a percentage above 100.
pub fn rollout_from_pb(rollout: Option<pb::RolloutPolicy>) -> Result<RolloutPolicy, ServerError> {
    let pb::RolloutPolicy {
        max_concurrency,
        max_errors,
        canary,
    } = rollout.unwrap_or_default();
    let max_concurrency = budget_from_pb(max_concurrency, "rollout.max_concurrency")?;
    if matches!(max_concurrency, Some(Amount::Count(0) | Amount::Percent(0))) {
        return Err(ServerError::invalid(
            "rollout.max_concurrency must allow at least one invocation (a count or percentage \
             above 0)",
        ));
    }
    Ok(RolloutPolicy {
        max_concurrency,
        max_errors: budget_from_pb(max_errors, "rollout.max_errors")?,
        canary,
    })
}

fn budget_from_pb(budget: Option<pb::Budget>, field: &str) -> Result<Option<Amount>, ServerError> {
    use pb::budget::Value;
    match budget.and_then(|b| b.value) {
        None => Ok(None),
        Some(Value::Count(n)) => Ok(Some(Amount::Count(n))),
        Some(Value::Percent(p)) if p > 100 => Err(ServerError::invalid(format!(
            "{field} is {p} %; a percentage is at most 100"
        ))),
        Some(Value::Percent(p)) => Ok(Some(Amount::Percent(p))),
    }
}

pub fn rollout_to_pb(rollout: &RolloutPolicy) -> pb::RolloutPolicy {
    use pb::budget::Value;
    let budget = |amount: Option<Amount>| {
        amount.map(|amount| pb::Budget {
            value: Some(match amount {
                Amount::Count(n) => Value::Count(n),
                Amount::Percent(p) => Value::Percent(p),
            }),
        })
    };
    pb::RolloutPolicy {
        max_concurrency: budget(rollout.max_concurrency),
        max_errors: budget(rollout.max_errors),
        canary: rollout.canary,
    }
}

/// A span of a request: unset is `None`; zero, or more than `max`, is refused.
///
/// # Errors
///
/// `INVALID_ARGUMENT` naming `field`.
pub fn span_from_pb(
    span: Option<prost_types::Duration>,
    field: &str,
    max: Duration,
) -> Result<Option<Duration>, ServerError> {
    let Some(span) = span else {
        return Ok(None);
    };
    let span = duration_from_pb(span, field)?;
    if span.is_zero() || span > max {
        return Err(ServerError::invalid(format!(
            "{field} must be above zero and at most {}",
            humantime::format_duration(max)
        )));
    }
    Ok(Some(span))
}

fn shorten(text: &str) -> String {
    text.chars().take(64).collect()
}
