//! The `tether-agent` binary as an operator runs it: its configuration file under flags and
//! environment, and `config print`, which never shows the enrollment token.

use std::path::Path;
use std::process::{Command, Output};

/// Runs `tether-agent` with `args` and only the environment `env` (so the machine's own
/// `TETHER_*` variables cannot change the outcome).
fn tether_agent(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tether-agent"))
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .expect("run tether-agent")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The line of `config print` for `key`, with its spacing collapsed.
fn setting(stdout: &str, key: &str) -> String {
    stdout
        .lines()
        .find(|l| l.starts_with(&format!("{key} =")) || l.starts_with(&format!("# {key} =")))
        .unwrap_or_else(|| panic!("no {key} in {stdout}"))
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

fn write_config(dir: &Path, text: &str) -> String {
    let path = dir.join("agent.toml");
    std::fs::write(&path, text).expect("write config");
    path.to_str().expect("utf-8 path").to_owned()
}

/// Flags beat `TETHER_*` variables, which beat the file, which beats the defaults; the
/// enrollment token is redacted wherever it came from, and the allowlist comes from the file.
#[test]
fn config_print_layers_flags_environment_file_and_hides_the_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(
        dir.path(),
        r#"
        server = "http://10.0.0.1:7600"
        state-dir = "state"
        enroll-token = "s3cret-file-token"
        allow-exec = ["/usr/bin/uptime", "/usr/lib/tether/*"]
        buffer-capacity = 500
        name = "from-file"
        "#,
    );
    let output = tether_agent(
        &[
            "--config",
            &config,
            "--name",
            "from-flag",
            "config",
            "print",
        ],
        &[
            ("TETHER_SERVER", "http://10.0.0.2:7600"),
            ("TETHER_ENROLL_TOKEN", "s3cret-env-token"),
        ],
    );
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    assert!(output.status.success(), "{stderr}");
    for secret in ["s3cret-file-token", "s3cret-env-token"] {
        assert!(
            !stdout.contains(secret) && !stderr.contains(secret),
            "{stdout}{stderr}"
        );
    }
    assert_eq!(
        setting(&stdout, "enroll-token"),
        r#"enroll-token = "<redacted>" # $TETHER_ENROLL_TOKEN"#
    );
    assert_eq!(
        setting(&stdout, "server"),
        r#"server = "http://10.0.0.2:7600" # $TETHER_SERVER"#
    );
    assert_eq!(setting(&stdout, "name"), r#"name = "from-flag" # flag"#);
    assert_eq!(
        setting(&stdout, "buffer-capacity"),
        "buffer-capacity = 500 # file"
    );
    assert_eq!(
        setting(&stdout, "allow-exec"),
        r#"allow-exec = ["/usr/bin/uptime", "/usr/lib/tether/*"] # file"#
    );
    let state = dir.path().join("state");
    assert_eq!(
        setting(&stdout, "state-dir"),
        format!("state-dir = \"{}\" # file", state.display()),
        "relative to the file"
    );
    assert_eq!(
        setting(&stdout, "connect-timeout"),
        r#"connect-timeout = "10s" # default"#
    );
    assert_eq!(setting(&stdout, "client-cert"), "# client-cert = # unset");

    // The same file through $TETHER_AGENT_CONFIG, and the file's token where nothing overrides
    // it: still redacted.
    let output = tether_agent(&["config", "print"], &[("TETHER_AGENT_CONFIG", &config)]);
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(!stdout.contains("s3cret-file-token"), "{stdout}");
    assert_eq!(
        setting(&stdout, "enroll-token"),
        r#"enroll-token = "<redacted>" # file"#
    );
    assert_eq!(
        setting(&stdout, "server"),
        r#"server = "http://10.0.0.1:7600" # file"#
    );
}

/// An unknown key stops the agent in one line naming the key and the file; so does a value
/// the flag would refuse, and `config print` fails on settings the agent would refuse.
#[test]
fn a_bad_config_file_is_refused_in_one_line_naming_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (contents, key, extra) in [
        (
            r#"allow_exec = ["/usr/bin/uptime"]"#,
            "`allow_exec`",
            "did you mean `allow-exec`",
        ),
        ("colour = true", "`colour`", "unknown key"),
        (
            r#"connect-timeout = "soon""#,
            "`connect-timeout`",
            "invalid value",
        ),
    ] {
        let config = write_config(dir.path(), contents);
        let output = tether_agent(&["--config", &config], &[]);
        assert!(!output.status.success(), "{contents}");
        let stderr = text(&output.stderr);
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        assert!(
            stderr.starts_with("error:")
                && stderr.contains(key)
                && stderr.contains(extra)
                && stderr.contains(&config),
            "{stderr}"
        );
    }
    // Parsed, then checked as the agent would before connecting: programs need absolute paths.
    let config = write_config(dir.path(), r#"allow-exec = ["uptime"]"#);
    let output = tether_agent(&["--config", &config, "config", "print"], &[]);
    assert!(!output.status.success());
    assert!(
        text(&output.stderr).contains("error:"),
        "{}",
        text(&output.stderr)
    );
}
