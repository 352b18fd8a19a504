//! The `tetherctl` binary itself: it starts and describes its commands.
//!
//! Also the reason `cargo test --workspace` builds the binary, which the end-to-end
//! walkthrough (`tests/tests/walkthrough.rs`) runs as an operator would.

use std::process::Command;

#[test]
fn the_binary_lists_its_commands() {
    let output = Command::new(env!("CARGO_BIN_EXE_tetherctl"))
        .arg("--help")
        .env_clear()
        .output()
        .expect("run tetherctl");
    assert!(output.status.success(), "{output:?}");
    let help = String::from_utf8_lossy(&output.stdout);
    for command in ["agents", "cmd", "audit"] {
        assert!(help.contains(command), "`{command}` missing from:\n{help}");
    }
}
