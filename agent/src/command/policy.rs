//! The trust boundary: whether this agent's own configuration allows a command.
//!
//! The server may ask for anything; the agent runs only what [`CommandPolicy::check`] allows,
//! and a refusal carries a reason that names the setting an operator would change. The rules:
//!
//! - built-ins (`noop`, `collect`, `sleep`) run unless `commands.builtins` is off;
//! - `exec` runs `argv[0]` only if it is a plain absolute path (no `.`, `..` or empty
//!   component, so a glob cannot be escaped with `/usr/bin/../../tmp/x`) that equals an
//!   allowlist entry or matches an allowlist glob (`*` never crosses `/`);
//! - a shell runs only when named exactly: a glob such as `/bin/*` never lets `/bin/sh` (or a
//!   symlink resolving to a shell) through, because a shell runs anything.
//!
//! Nothing here runs a process; the executor never goes through a shell by itself.

use std::collections::BTreeSet;
use std::path::Path;

use glob::{MatchOptions, Pattern};

use crate::AgentError;
use crate::command::config::CommandConfig;
use crate::command::types::{CommandSpec, ExecSpec};

/// Programs treated as shells (by file name, also after resolving symlinks).
const SHELLS: &[&str] = &[
    "sh", "bash", "dash", "zsh", "ksh", "mksh", "pdksh", "ash", "csh", "tcsh", "fish", "busybox",
];

/// Glob matching as the allowlist means it: case-sensitive, `*` and `?` stay within one path
/// component.
const MATCH: MatchOptions = MatchOptions {
    case_sensitive: true,
    require_literal_separator: true,
    require_literal_leading_dot: false,
};

/// The compiled `commands` section: what may run.
#[derive(Debug, Clone)]
pub struct CommandPolicy {
    builtins: bool,
    /// Allowlist entries without glob characters.
    exact: BTreeSet<String>,
    /// Allowlist globs.
    globs: Vec<Pattern>,
}

// === impl CommandPolicy ===

impl CommandPolicy {
    /// Compiles the allowlist.
    ///
    /// # Errors
    ///
    /// [`AgentError::Config`] for an entry that is not absolute or not a valid glob.
    pub fn new(config: &CommandConfig) -> Result<Self, AgentError> {
        let mut exact = BTreeSet::new();
        let mut globs = Vec::new();
        for entry in &config.allow_exec {
            if !entry.starts_with('/') {
                return Err(AgentError::Config(format!(
                    "--allow-exec {entry:?} must be an absolute path or glob"
                )));
            }
            if entry.contains(['*', '?', '[']) {
                let pattern = Pattern::new(entry).map_err(|err| {
                    AgentError::Config(format!(
                        "--allow-exec {entry:?} is not a valid glob ({err}); write a literal \
                         `[` as `[[]`"
                    ))
                })?;
                globs.push(pattern);
            } else {
                if !is_plain_absolute(entry) {
                    return Err(AgentError::Config(format!(
                        "--allow-exec {entry:?} must be a plain absolute path (no `.`, `..` or \
                         empty components)"
                    )));
                }
                exact.insert(entry.clone());
            }
        }
        Ok(Self {
            builtins: config.builtins,
            exact,
            globs,
        })
    }

    /// Whether `spec` may run here.
    ///
    /// # Errors
    ///
    /// The reason it may not, naming the setting that would allow it.
    pub fn check(&self, spec: &CommandSpec) -> Result<(), String> {
        match spec {
            CommandSpec::Noop | CommandSpec::Collect | CommandSpec::Sleep(_) => {
                if self.builtins {
                    Ok(())
                } else {
                    Err(
                        "built-in commands are disabled on this agent (it was started with \
                         --no-builtin-commands; `commands.builtins` in its configuration)"
                            .to_owned(),
                    )
                }
            }
            CommandSpec::Exec(exec) => self.check_exec(exec),
        }
    }

    fn check_exec(&self, exec: &ExecSpec) -> Result<(), String> {
        let Some(program) = exec.argv.first() else {
            return Err("exec needs a program: argv is empty".to_owned());
        };
        if exec.argv.iter().any(|arg| arg.contains('\0')) {
            return Err("an argument contains a NUL byte".to_owned());
        }
        if let Some(key) = exec
            .env
            .iter()
            .find(|(key, value)| {
                key.is_empty() || key.contains(['=', '\0']) || value.contains('\0')
            })
            .map(|(key, _)| key)
        {
            return Err(format!(
                "environment variable {key:?} is empty, or it or its value holds `=` or a NUL byte"
            ));
        }
        if let Some(dir) = &exec.working_dir
            && !dir.is_absolute()
        {
            return Err(format!(
                "working directory {} is not an absolute path",
                dir.display()
            ));
        }
        if !program.starts_with('/') {
            return Err(format!(
                "program {program:?} is not an absolute path: this agent runs only absolute \
                 paths allowed by --allow-exec (`commands.allow_exec` in its configuration)"
            ));
        }
        if !is_plain_absolute(program) {
            return Err(format!(
                "program path {program:?} has `.`, `..` or empty components; name the program \
                 by its plain absolute path"
            ));
        }
        if self.exact.contains(program) {
            return Ok(());
        }
        if !self
            .globs
            .iter()
            .any(|glob| glob.matches_with(program, MATCH))
        {
            return Err(format!(
                "program {program} is not allowed on this agent: add it, or a glob matching it, \
                 with --allow-exec (`commands.allow_exec` in the agent's configuration)"
            ));
        }
        if is_shell(Path::new(program)) {
            return Err(format!(
                "program {program} is a shell: a shell runs only when named exactly (not \
                 through a glob) with --allow-exec (`commands.allow_exec` in the agent's \
                 configuration)"
            ));
        }
        Ok(())
    }
}

/// `/a/b/c`: absolute, and no `.`, `..` or empty components (so no `//`, no trailing `/`).
fn is_plain_absolute(path: &str) -> bool {
    path.strip_prefix('/').is_some_and(|rest| {
        rest.split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
    })
}

/// Whether `program`, or what it resolves to through symlinks, is a shell.
fn is_shell(program: &Path) -> bool {
    let named_shell = |path: &Path| {
        path.file_name()
            .and_then(|name| name.to_str())
            .is_some_and(|name| SHELLS.contains(&name))
    };
    named_shell(program)
        || std::fs::canonicalize(program).is_ok_and(|resolved| named_shell(&resolved))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn policy(allow: &[&str]) -> CommandPolicy {
        CommandPolicy::new(&CommandConfig {
            allow_exec: allow.iter().map(|entry| (*entry).to_owned()).collect(),
            ..CommandConfig::default()
        })
        .expect("valid allowlist")
    }

    fn exec(argv: &[&str]) -> CommandSpec {
        CommandSpec::Exec(ExecSpec {
            argv: argv.iter().map(|arg| (*arg).to_owned()).collect(),
            env: BTreeMap::new(),
            working_dir: None,
            stdin: Vec::new(),
        })
    }

    #[test]
    fn default_policy_runs_builtins_and_no_program() {
        let policy = policy(&[]);
        assert_eq!(policy.check(&CommandSpec::Noop), Ok(()));
        assert_eq!(policy.check(&CommandSpec::Collect), Ok(()));
        let reason = policy
            .check(&exec(&["/bin/echo", "hi"]))
            .expect_err("refused");
        assert!(reason.contains("--allow-exec"), "{reason}");
        assert!(reason.contains("commands.allow_exec"), "{reason}");
    }

    #[test]
    fn builtins_can_be_switched_off() {
        let policy = CommandPolicy::new(&CommandConfig {
            builtins: false,
            ..CommandConfig::default()
        })
        .expect("valid");
        let reason = policy
            .check(&CommandSpec::Sleep(std::time::Duration::from_secs(1)))
            .expect_err("refused");
        assert!(reason.contains("--no-builtin-commands"), "{reason}");
    }

    #[test]
    fn exact_entries_and_globs_allow_programs() {
        let policy = policy(&["/bin/echo", "/usr/lib/tether/*"]);
        assert_eq!(policy.check(&exec(&["/bin/echo", "x"])), Ok(()));
        assert_eq!(policy.check(&exec(&["/usr/lib/tether/check-disk"])), Ok(()));
        // `*` stays within one component.
        assert!(policy.check(&exec(&["/usr/lib/tether/sub/x"])).is_err());
        assert!(policy.check(&exec(&["/bin/cat"])).is_err());
    }

    #[test]
    fn relative_and_dotted_paths_are_refused() {
        let policy = policy(&["/usr/lib/tether/*", "/bin/echo"]);
        let reason = policy.check(&exec(&["echo"])).expect_err("relative");
        assert!(reason.contains("not an absolute path"), "{reason}");
        assert!(reason.contains("--allow-exec"), "{reason}");
        for sneaky in [
            "/usr/lib/tether/../../../bin/rm",
            "/usr/lib/tether/./x",
            "/bin//echo",
            "/bin/echo/",
        ] {
            assert!(policy.check(&exec(&[sneaky])).is_err(), "{sneaky}");
        }
        assert!(policy.check(&exec(&[])).is_err());
    }

    #[test]
    fn a_shell_needs_an_exact_entry() {
        let globbed = policy(&["/bin/*"]);
        let reason = globbed
            .check(&exec(&["/bin/sh", "-c", "id"]))
            .expect_err("shell");
        assert!(reason.contains("is a shell"), "{reason}");
        assert!(reason.contains("--allow-exec"), "{reason}");
        assert_eq!(globbed.check(&exec(&["/bin/echo"])), Ok(()));
        let exact = policy(&["/bin/sh"]);
        assert_eq!(exact.check(&exec(&["/bin/sh", "-c", "id"])), Ok(()));
    }

    #[test]
    fn a_symlink_to_a_shell_is_a_shell() {
        let dir = tempfile::tempdir().expect("tempdir");
        let link = dir.path().join("innocent");
        std::os::unix::fs::symlink("/bin/sh", &link).expect("symlink");
        let glob = format!("{}/*", dir.path().display());
        let policy = policy(&[&glob]);
        let program = link.to_str().expect("utf-8 path");
        let reason = policy.check(&exec(&[program])).expect_err("shell");
        assert!(reason.contains("is a shell"), "{reason}");
    }

    #[test]
    fn malformed_environment_and_working_dir_are_refused() {
        let policy = policy(&["/bin/echo"]);
        let mut spec = ExecSpec {
            argv: vec!["/bin/echo".into()],
            env: BTreeMap::from([("A=B".to_owned(), "x".to_owned())]),
            working_dir: None,
            stdin: Vec::new(),
        };
        assert!(policy.check(&CommandSpec::Exec(spec.clone())).is_err());
        spec.env.clear();
        spec.working_dir = Some("relative/dir".into());
        assert!(policy.check(&CommandSpec::Exec(spec.clone())).is_err());
        spec.working_dir = Some("/tmp".into());
        assert_eq!(policy.check(&CommandSpec::Exec(spec)), Ok(()));
    }
}
