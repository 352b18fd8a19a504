//! What the agent's own configuration allows and bounds for commands.
//!
//! [`CommandConfig`] is plain data, serde-ready for the agent's configuration file (section
//! `commands`), and also filled from the `--allow-exec` / `--no-builtin-commands` flags. The
//! default allows the built-ins and no program at all: an agent runs a program only after its
//! operator named it.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::AgentError;

/// Invocations that run at once; further offers wait in the agent's queue, in order.
pub const DEFAULT_MAX_CONCURRENT_INVOCATIONS: usize = 4;
/// Offers waiting for a free slot; beyond, an offer is rejected.
pub const DEFAULT_MAX_QUEUED_INVOCATIONS: usize = 64;
/// Unacknowledged output kept per invocation (head and tail; the middle is dropped beyond).
pub const DEFAULT_OUTPUT_BUFFER_BYTES: u64 = 1 << 20;
/// Smallest accepted `max_output_buffer_bytes`.
pub const MIN_OUTPUT_BUFFER_BYTES: u64 = 16 << 10;
/// Between SIGTERM and SIGKILL when an offer names no grace.
pub const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(10);

/// The `commands` section of the agent's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CommandConfig {
    /// Run the built-in kinds `noop`, `collect` and `sleep` (flag `--no-builtin-commands`
    /// turns them off).
    pub builtins: bool,
    /// Programs `exec` may run: absolute paths, or globs over absolute paths (`*` does not
    /// cross `/`). A shell (`sh`, `bash`, …) runs only when named exactly, never through a
    /// glob. Empty: no program runs. Flag: `--allow-exec PATTERN`, repeatable.
    pub allow_exec: Vec<String>,
    /// Invocations running at once.
    pub max_concurrent: usize,
    /// Offers waiting for a free slot before further ones are rejected.
    pub max_queued: usize,
    /// Most unacknowledged output kept per invocation, whatever the server asks for.
    pub max_output_buffer_bytes: u64,
}

// === impl CommandConfig ===

impl CommandConfig {
    /// Checks the section before the agent starts.
    ///
    /// # Errors
    ///
    /// [`AgentError::Config`] naming the first invalid setting.
    pub fn validate(&self) -> Result<(), AgentError> {
        crate::command::policy::CommandPolicy::new(self)?;
        if self.max_concurrent == 0 {
            return Err(AgentError::Config(
                "commands.max_concurrent must be at least 1".into(),
            ));
        }
        if self.max_output_buffer_bytes < MIN_OUTPUT_BUFFER_BYTES {
            return Err(AgentError::Config(format!(
                "commands.max_output_buffer_bytes must be at least {MIN_OUTPUT_BUFFER_BYTES}"
            )));
        }
        Ok(())
    }
}

impl Default for CommandConfig {
    fn default() -> Self {
        Self {
            builtins: true,
            allow_exec: Vec::new(),
            max_concurrent: DEFAULT_MAX_CONCURRENT_INVOCATIONS,
            max_queued: DEFAULT_MAX_QUEUED_INVOCATIONS,
            max_output_buffer_bytes: DEFAULT_OUTPUT_BUFFER_BYTES,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_allow_builtins_and_no_program() {
        let config = CommandConfig::default();
        config.validate().expect("defaults are valid");
        assert!(config.builtins);
        assert!(config.allow_exec.is_empty());
        assert_eq!(config.max_concurrent, 4);
    }

    #[test]
    fn bad_settings_are_refused() {
        let mut config = CommandConfig {
            max_concurrent: 0,
            ..CommandConfig::default()
        };
        assert!(matches!(config.validate(), Err(AgentError::Config(_))));
        config.max_concurrent = 1;
        config.allow_exec = vec!["bin/ls".into()];
        assert!(matches!(config.validate(), Err(AgentError::Config(_))));
        config.allow_exec = vec!["/usr/bin/[".into()];
        assert!(matches!(config.validate(), Err(AgentError::Config(_))));
        config.allow_exec = vec!["/usr/bin/*".into()];
        config.max_output_buffer_bytes = 1;
        assert!(matches!(config.validate(), Err(AgentError::Config(_))));
    }

    #[test]
    fn section_reads_from_json_with_defaults() {
        // Any serde format works; JSON is what this crate already depends on.
        let config: CommandConfig =
            serde_json::from_str(r#"{"allow_exec": ["/usr/bin/uptime"]}"#).expect("parse");
        assert_eq!(config.allow_exec, ["/usr/bin/uptime"]);
        assert!(config.builtins);
        assert!(serde_json::from_str::<CommandConfig>(r#"{"allow": []}"#).is_err());
    }
}
