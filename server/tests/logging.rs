//! The `tether-server` binary's logs as a service manager or a file receives them: no colour
//! escape codes when stderr is not a terminal, values written as values, and `--log-level`.

use std::io::{BufRead as _, BufReader, Read as _};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Longest wait for one line of a server that is starting.
const LINE_TIMEOUT: Duration = Duration::from_secs(30);

/// Starts the binary on a fresh data directory with `args`, stdout and stderr piped.
fn start(data_dir: &std::path::Path, args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_tether-server"))
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run tether-server")
}

/// Reads `stream` line by line on a thread until a line contains `until`; returns the lines
/// read, that one included. The process is killed afterwards by the caller.
fn read_until(stream: impl std::io::Read + Send + 'static, until: &'static str) -> Vec<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    loop {
        let line = rx
            .recv_timeout(LINE_TIMEOUT)
            .unwrap_or_else(|e| panic!("no line with {until:?} ({e}); read: {lines:#?}"));
        let done = line.contains(until);
        lines.push(line);
        if done {
            return lines;
        }
    }
}

#[test]
fn logs_to_a_pipe_carry_no_colour_codes_and_write_values_plainly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = start(&dir.path().join("data"), &[]);
    let stderr = server.stderr.take().expect("stderr");
    let lines = read_until(stderr, "serving gRPC");
    server.kill().expect("kill");
    server.wait().expect("wait");
    let text = lines.join("\n");
    assert!(!text.contains('\u{1b}'), "escape codes in a pipe:\n{text}");
    let serving = lines.last().expect("the serving line");
    assert!(serving.contains(" INFO "), "{serving}");
    assert!(serving.contains("addr=127.0.0.1:"), "{serving}");
    assert!(!text.contains("Some("), "debug formatting:\n{text}");
}

#[test]
fn log_level_filters_what_the_server_logs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = start(
        &dir.path().join("data"),
        &["--log-level", "warn", "--print-enrollment-token"],
    );
    let stdout = server.stdout.take().expect("stdout");
    // Printed once the server serves: by then it has logged its start-up.
    read_until(stdout, "listening on");
    server.kill().expect("kill");
    server.wait().expect("wait");
    let mut stderr = String::new();
    server
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("read stderr");
    assert!(
        !stderr.contains(" INFO "),
        "INFO lines at --log-level warn:\n{stderr}"
    );
}

#[test]
fn a_bad_log_level_is_refused_in_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(&dir.path().join("data"), &["--log-level", "info,=["]);
    let output = server.wait_with_output().expect("the server exits");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(
        errors[0].contains("bad log level") && errors[0].contains("info,=["),
        "{stderr}"
    );
    assert!(
        !dir.path().join("data").exists(),
        "refused before the data directory was made"
    );
}
