//! What the CLI knows about the terminal it runs in: whether it may colour its output and
//! whether it may ask a question.
//!
//! [`Console::detect`] looks at the real process and is what the binary uses; the default
//! (plain and non-interactive) is what a caller gets that writes to a buffer, such as the
//! end-to-end tests, so their output never depends on the terminal they were started from.

use std::io::IsTerminal as _;

/// How `tetherctl` may use the terminal.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Console {
    /// Colour the agent names prefixed to command output: stdout is a terminal and `NO_COLOR`
    /// is unset.
    pub color: bool,
    /// Questions may be asked (ctrl-c on `cmd run`): stdin and stderr are terminals.
    pub interactive: bool,
}

// === impl Console ===

impl Console {
    /// The console of this process.
    pub fn detect() -> Self {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        Self {
            color: std::io::stdout().is_terminal() && !no_color,
            interactive: std::io::stdin().is_terminal() && std::io::stderr().is_terminal(),
        }
    }
}
