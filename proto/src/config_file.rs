//! Configuration files of the Tether daemons (`tether-server`, `tether-agent`): a TOML file
//! whose keys are the binary's long flags, layered under the command line.
//!
//! Precedence, highest first: flags, `TETHER_*` environment variables, the file, the built-in
//! defaults. [`layer`] turns the file's values into the flags' defaults before clap parses the
//! command line, so clap itself applies that order (a flag beats its environment variable,
//! which beats its default) and checks every value with the flag's own parser. Each setting is
//! described once, by its clap argument, with no second struct to keep in step with the flags.
//!
//! Keys are the long flag names: `heartbeat-interval = "5s"`, `insecure-plaintext = true`,
//! `allow-exec = ["/usr/bin/uptime"]`. An unknown key, a table, or a value of the wrong shape
//! is refused in one line naming the key and the file; a relative path is relative to the
//! file's directory. [`render`] prints the settings in effect and where each came from, with
//! secrets (arguments whose environment values are hidden) redacted.
//!
//! Shared by both daemons, beside [`crate::process`]: operators and service managers rely on
//! both reading their files the same way.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use clap::builder::Resettable;
use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Command, ValueHint};

/// The flag that names the file; it is not a key of the file.
pub const CONFIG_FLAG: &str = "config";

/// Printed for a secret that is set.
pub const REDACTED: &str = "<redacted>";

/// Where the configuration file is, and whether the operator named it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigPath {
    pub path: PathBuf,
    /// Named by `--config` or the environment: it must exist. The default path is used only
    /// if it does.
    pub explicit: bool,
}

/// A command whose defaults include a file's values.
#[derive(Debug)]
pub struct Layered {
    pub command: Command,
    /// The file that was read, if any.
    pub file: Option<PathBuf>,
    /// Ids of the arguments whose default now comes from the file.
    from_file: BTreeSet<String>,
    /// Ids of the keys in `--help` order ([`Command::mut_arg`] moves the arguments it changes
    /// to the end).
    order: Vec<String>,
}

/// Why a configuration file cannot be used. Every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {} is not valid TOML (line {line}): {message}", path.display())]
    Syntax {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("unknown key `{key}` in config file {}{}", path.display(), hint(.suggestion.as_deref()))]
    UnknownKey {
        path: PathBuf,
        key: String,
        /// The key meant, when the spelling is close (`_` for `-`).
        suggestion: Option<String>,
    },
    #[error("invalid value for `{key}` in config file {}: {reason}", path.display())]
    Invalid {
        path: PathBuf,
        key: String,
        reason: String,
    },
}

fn hint(suggestion: Option<&str>) -> String {
    match suggestion {
        Some(key) => format!(" (did you mean `{key}`?)"),
        None => " (keys are the long flags of --help, without the dashes in front)".to_owned(),
    }
}

/// The binary's arguments, parsed from the process's command line over its configuration file,
/// with what [`render`] needs to print them.
#[derive(Debug)]
pub struct Parsed<T> {
    pub args: T,
    pub layered: Layered,
    pub matches: ArgMatches,
}

impl<T> Parsed<T> {
    /// The settings in effect: see [`render`].
    pub fn render(&self) -> String {
        render(&self.layered, &self.matches)
    }
}

/// Parses the process's command line over the configuration file found by [`locate`] (the
/// environment variable `env_var`, else `default`). Like `T::parse()`, a bad command line, or
/// `--help`, prints clap's message and exits.
///
/// # Errors
///
/// The configuration file cannot be used: see [`layer`].
pub fn parse<T: clap::Parser>(env_var: &str, default: &Path) -> Result<Parsed<T>, FileError> {
    let argv: Vec<OsString> = std::env::args_os().collect();
    let path = locate(&argv, std::env::var_os(env_var), default);
    let layered = layer(T::command(), &path)?;
    let matches = layered
        .command
        .clone()
        .try_get_matches_from(&argv)
        .unwrap_or_else(|e| e.exit());
    let args = T::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    Ok(Parsed {
        args,
        layered,
        matches,
    })
}

/// Finds the configuration file: `--config PATH` in `args` (the command line, program name
/// first), else `env` (the value of the binary's `TETHER_*_CONFIG` variable), else `default`.
pub fn locate(args: &[OsString], env: Option<OsString>, default: &Path) -> ConfigPath {
    let flag = format!("--{CONFIG_FLAG}");
    let prefix = format!("{flag}=");
    let mut named = None;
    let mut args = args.iter().skip(1);
    while let Some(arg) = args.next() {
        let Some(text) = arg.to_str() else { continue };
        if text == "--" {
            break;
        }
        if text == flag {
            named = args.next().cloned();
        } else if let Some(path) = text.strip_prefix(&prefix) {
            named = Some(path.into());
        }
    }
    match named.or(env.filter(|p| !p.is_empty())) {
        Some(path) => ConfigPath {
            path: path.into(),
            explicit: true,
        },
        None => ConfigPath {
            path: default.to_owned(),
            explicit: false,
        },
    }
}

/// Reads `file` (a missing default file is no file) and makes its values the defaults of
/// `command`'s top-level arguments.
///
/// # Errors
///
/// A [`FileError`] naming the file: it cannot be read, is not TOML, has an unknown key, or a
/// value the flag would refuse.
pub fn layer(command: Command, file: &ConfigPath) -> Result<Layered, FileError> {
    let text = match std::fs::read_to_string(&file.path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !file.explicit => {
            return Ok(Layered {
                order: key_ids(&command),
                command,
                file: None,
                from_file: BTreeSet::new(),
            });
        }
        Err(source) => {
            return Err(FileError::Read {
                path: file.path.clone(),
                source,
            });
        }
    };
    layer_text(command, &file.path, &text)
}

/// [`layer`] with the file's contents given.
///
/// # Errors
///
/// As [`layer`].
pub fn layer_text(mut command: Command, path: &Path, text: &str) -> Result<Layered, FileError> {
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        let line = e
            .span()
            .map_or(0, |span| text[..span.start].lines().count().max(1));
        FileError::Syntax {
            path: path.to_owned(),
            line,
            message: e.message().to_owned(),
        }
    })?;
    let order = key_ids(&command);
    let base = path.parent().unwrap_or(Path::new("."));
    let mut from_file = BTreeSet::new();
    for (key, value) in &table {
        let invalid = |reason: String| FileError::Invalid {
            path: path.to_owned(),
            key: key.clone(),
            reason,
        };
        let Some(arg) = keys(&command).find(|a| a.get_long() == Some(key.as_str())) else {
            let wanted = key.replace('_', "-");
            let suggestion = keys(&command)
                .filter_map(|a| a.get_long())
                .find(|long| *long == wanted)
                .map(str::to_owned);
            return Err(FileError::UnknownKey {
                path: path.to_owned(),
                key: key.clone(),
                suggestion,
            });
        };
        let values = values_of(arg, value, base).map_err(invalid)?;
        check(arg, &values).map_err(invalid)?;
        let id = arg.get_id().clone();
        from_file.insert(id.to_string());
        command = command.mut_arg(id, |a| a.default_values(values));
    }
    Ok(Layered {
        command,
        file: Some(path.to_owned()),
        from_file,
        order,
    })
}

/// The settings in effect after parsing, as a TOML document that could serve as the file,
/// each line saying where its value came from; secrets are redacted.
pub fn render(layered: &Layered, matches: &ArgMatches) -> String {
    let file = layered
        .file
        .as_ref()
        .map_or("no file".to_owned(), |p| p.display().to_string());
    let mut out = format!(
        "# {} settings in effect: flags > TETHER_* environment > file ({file}) > defaults\n",
        layered.command.get_name()
    );
    let lines: Vec<(String, String)> = layered
        .order
        .iter()
        .filter_map(|id| keys(&layered.command).find(|a| a.get_id() == id))
        .filter_map(|arg| {
            let long = arg.get_long()?;
            let id = arg.get_id().as_str();
            let raw: Vec<String> = matches
                .get_raw(id)
                .map(|values| values.map(|v| v.to_string_lossy().into_owned()).collect())
                .unwrap_or_default();
            let source = match matches.value_source(id) {
                Some(ValueSource::CommandLine) => "flag".to_owned(),
                Some(ValueSource::EnvVariable) => {
                    arg.get_env().map_or("environment".to_owned(), |e| {
                        format!("${}", e.to_string_lossy())
                    })
                }
                Some(ValueSource::DefaultValue) if layered.from_file.contains(id) => {
                    "file".to_owned()
                }
                Some(_) => "default".to_owned(),
                None => return Some((format!("# {long} ="), "unset".to_owned())),
            };
            let value = if arg.is_hide_env_values_set() {
                toml_text(REDACTED)
            } else if is_flag(arg) {
                raw.first().cloned().unwrap_or_else(|| "false".to_owned())
            } else if matches!(arg.get_action(), ArgAction::Append) {
                format!(
                    "[{}]",
                    raw.iter()
                        .map(|v| toml_scalar(v))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            } else {
                raw.first().map_or_else(String::new, |v| toml_scalar(v))
            };
            Some((format!("{long} = {value}"), source))
        })
        .collect();
    let width = lines.iter().map(|(l, _)| l.len()).max().unwrap_or(0);
    for (line, source) in lines {
        let _ = writeln!(out, "{line:width$}  # {source}");
    }
    out
}

/// The arguments a file may set, in the order `--help` lists them.
fn keys(command: &Command) -> impl Iterator<Item = &clap::Arg> {
    command.get_arguments().filter(|a| {
        a.get_long().is_some_and(|long| long != CONFIG_FLAG)
            && !matches!(
                a.get_action(),
                ArgAction::Help | ArgAction::HelpShort | ArgAction::HelpLong | ArgAction::Version
            )
    })
}

/// The ids of [`keys`].
fn key_ids(command: &Command) -> Vec<String> {
    keys(command).map(|a| a.get_id().to_string()).collect()
}

/// An on/off flag (`--dev`), set in a file with `true` or `false`.
fn is_flag(arg: &clap::Arg) -> bool {
    matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse)
}

/// The command-line values a TOML value stands for.
fn values_of(arg: &clap::Arg, value: &toml::Value, base: &Path) -> Result<Vec<String>, String> {
    let path_like = matches!(
        arg.get_value_hint(),
        ValueHint::AnyPath | ValueHint::FilePath | ValueHint::DirPath
    );
    let scalar = |v: &toml::Value| -> Result<String, String> {
        let text = match v {
            toml::Value::String(s) if path_like && Path::new(s).is_relative() => {
                base.join(s).display().to_string()
            }
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Datetime(d) => d.to_string(),
            toml::Value::Boolean(_) | toml::Value::Array(_) | toml::Value::Table(_) => {
                return Err(format!(
                    "expected a string or a number, found {}",
                    v.type_str()
                ));
            }
        };
        Ok(text)
    };
    if is_flag(arg) {
        return match value {
            toml::Value::Boolean(b) => Ok(vec![b.to_string()]),
            other => Err(format!(
                "expected true or false, found {}",
                other.type_str()
            )),
        };
    }
    match value {
        toml::Value::Array(items) if matches!(arg.get_action(), ArgAction::Append) => {
            items.iter().map(scalar).collect()
        }
        toml::Value::Array(_) => Err("expected one value, found an array".to_owned()),
        other => scalar(other).map(|v| vec![v]),
    }
}

/// Runs `values` through the argument's own parser, as if they were given on the command line
/// (alone: its relations to other flags are checked when the command line is parsed).
fn check(arg: &clap::Arg, values: &[String]) -> Result<(), String> {
    if is_flag(arg) {
        return Ok(());
    }
    let Some(long) = arg.get_long() else {
        return Ok(());
    };
    let alone = arg
        .clone()
        .global(false)
        .required(false)
        .env(Resettable::Reset)
        .requires(Resettable::Reset)
        .conflicts_with(Resettable::Reset)
        .overrides_with(Resettable::Reset)
        .required_unless_present(Resettable::Reset)
        .group(Resettable::Reset)
        .default_values(Vec::<&'static str>::new());
    let command = Command::new("check")
        .no_binary_name(true)
        .disable_help_flag(true)
        .disable_version_flag(true)
        .arg(alone);
    let args = values.iter().map(|v| format!("--{long}={v}"));
    match command.try_get_matches_from(args) {
        Ok(_) => Ok(()),
        Err(e) => {
            let text = e.to_string();
            let first = text.lines().next().unwrap_or_default();
            Err(first.strip_prefix("error: ").unwrap_or(first).to_owned())
        }
    }
}

/// `text` as a TOML string.
fn toml_text(text: &str) -> String {
    toml::Value::String(text.to_owned()).to_string()
}

/// A value as TOML: an integer bare, anything else a string (read back, both give the flag the
/// same text).
fn toml_scalar(text: &str) -> String {
    match text.parse::<i64>() {
        Ok(n) => n.to_string(),
        Err(_) => toml_text(text),
    }
}

#[cfg(test)]
mod tests;
