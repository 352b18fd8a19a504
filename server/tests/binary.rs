//! The `tether-server` binary as an operator runs it: what `gen-certs` writes and refuses to
//! overwrite, the one-line refusals at start-up (a data directory shared with other users, a
//! second server on one data directory, a port in use, a bad configuration file), each before
//! anything is written, and the configuration file under flags and environment.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader};
use std::net::ToSocketAddrs as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Longest a run may take: every run here ends on its own (a server that started serving
/// instead would be killed and fail its test).
const RUN_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs the binary with `args` to its end.
fn tether_server(args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tether-server"));
    command
        .args(args)
        .env_remove("RUST_LOG")
        // A refusal must stay one line even where backtraces are on.
        .env("RUST_BACKTRACE", "1");
    run_to_end(command, args)
}

/// Runs the binary with `args` and only the environment `env` (so the machine's own
/// `TETHER_*` variables cannot change the outcome) to its end.
fn tether_server_in(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tether-server"));
    command.args(args).env_clear().envs(env.iter().copied());
    run_to_end(command, args)
}

fn run_to_end(mut command: Command, args: &[&str]) -> Output {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run tether-server");
    let deadline = Instant::now() + RUN_TIMEOUT;
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            child.kill().expect("kill");
            panic!("tether-server {args:?} still running after {RUN_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

/// Every file of `dir` with its contents.
fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| {
            let path = e.expect("entry").path();
            let bytes = std::fs::read(&path).expect("read");
            (path, bytes)
        })
        .collect()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The one `error:` line of a failed run; fails the test if there is none, several, or any
/// other output on stderr beyond log lines.
fn the_error_line(output: &Output) -> String {
    assert!(!output.status.success(), "expected a failure");
    let message = stderr(output);
    let errors: Vec<&str> = message
        .lines()
        .filter(|l| l.starts_with("error:"))
        .collect();
    assert_eq!(errors.len(), 1, "{message}");
    assert!(
        !message.contains("backtrace") && !message.contains("WouldBlock"),
        "{message}"
    );
    errors[0].to_owned()
}

/// A `tether-server` that serves until the test ends (killed on drop).
struct Running {
    child: Child,
    url: String,
    /// What it printed up to its enrollment token's agent command.
    banner: Vec<String>,
}

impl Running {
    /// Starts the binary with `args` (plus `--print-enrollment-token`, whose banner tells
    /// when it serves) and waits for its banner.
    fn start(args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tether-server"))
            .args(args)
            .arg("--print-enrollment-token")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("run tether-server");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut banner = Vec::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let last = line.contains("--enroll-token");
                banner.push(line);
                if last {
                    let _ = tx.send(std::mem::take(&mut banner));
                }
            }
        });
        let banner = rx
            .recv_timeout(RUN_TIMEOUT)
            .expect("the server prints its banner once it serves");
        let url = banner
            .iter()
            .find_map(|l| l.strip_prefix("Tether server listening on "))
            .and_then(|rest| rest.split_whitespace().next())
            .expect("a listening line")
            .to_owned();
        Self { child, url, banner }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A second server on a data directory in use is refused in one line naming the first one's
/// pid and the directory, without sled's lock error or a backtrace, whether it asked for
/// another port or the same one; the first server is untouched and keeps its admin token.
#[test]
fn a_second_server_on_one_data_directory_is_refused_in_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let data_arg = data.to_str().expect("utf-8 path");
    let first = Running::start(&[
        "--data-dir",
        data_arg,
        "--listen",
        "127.0.0.1:0",
        "--no-metrics",
    ]);
    let token = std::fs::read(data.join("admin.token")).expect("the first server's token");
    let pid = first.child.id();
    let first_addr = first.url.trim_start_matches("http://").to_owned();
    for listen in ["127.0.0.1:0", first_addr.as_str()] {
        let second = tether_server(&["--data-dir", data_arg, "--listen", listen, "--no-metrics"]);
        let line = the_error_line(&second);
        assert!(
            line.contains(&format!(
                "another tether-server (pid {pid}) is running with data dir"
            )) && line.contains(data_arg),
            "{line}"
        );
    }
    assert_eq!(
        std::fs::read(data.join("admin.token")).expect("token"),
        token,
        "the first server's admin token is untouched"
    );
}

/// A port in use fails the start in one line naming `--listen`, before the data directory (and
/// so the admin token) is created.
#[test]
fn a_port_in_use_fails_before_anything_is_written() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let data_arg = data.to_str().expect("utf-8 path");
    let output = tether_server(&["--data-dir", data_arg, "--listen", &addr, "--no-metrics"]);
    let line = the_error_line(&output);
    assert!(line.contains(&addr) && line.contains("--listen"), "{line}");
    assert!(!data.exists(), "nothing written: {line}");

    // The metrics port is checked as early, and named as well.
    let output = tether_server(&[
        "--data-dir",
        data_arg,
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        &addr,
    ]);
    let line = the_error_line(&output);
    assert!(line.contains("--metrics-listen"), "{line}");
    assert!(!data.exists(), "nothing written: {line}");
}

/// `gen-certs --agent` on a directory that already holds a server certificate for a real host
/// name adds the agent's two files and changes nothing else; running plain `gen-certs` again
/// is refused without `--force` and leaves every file as it was; with `--force` the server and
/// CLI certificates are replaced and the CA is kept.
#[test]
fn gen_certs_never_overwrites_without_force() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("certs");
    let out_arg = out.to_str().expect("utf-8 path");
    let first = tether_server(&["gen-certs", "--out", out_arg, "--hosts", "tether.example"]);
    assert!(first.status.success(), "{}", stderr(&first));
    let before = files(&out);
    assert_eq!(
        before.len(),
        6,
        "CA, server and CLI pairs: {:?}",
        before.keys()
    );

    let agent = tether_server(&["gen-certs", "--out", out_arg, "--agent", "a-1"]);
    assert!(agent.status.success(), "{}", stderr(&agent));
    let mut after = files(&out);
    assert!(after.remove(&out.join("agent-a-1.pem")).is_some());
    assert!(after.remove(&out.join("agent-a-1-key.pem")).is_some());
    assert_eq!(
        after, before,
        "--agent wrote only the agent's certificate and key"
    );

    let again = tether_server(&["gen-certs", "--out", out_arg]);
    assert!(!again.status.success());
    let message = stderr(&again);
    assert_eq!(message.trim_end().lines().count(), 1, "{message}");
    assert!(
        message.contains("already exists") && message.contains("--force"),
        "{message}"
    );
    let mut now = files(&out);
    now.retain(|path, _| !path.to_string_lossy().contains("agent-a-1"));
    assert_eq!(now, before, "a refused run writes nothing");

    let agent_again = tether_server(&["gen-certs", "--out", out_arg, "--agent", "a-1"]);
    assert!(!agent_again.status.success(), "the agent's files exist too");

    let forced = tether_server(&["gen-certs", "--out", out_arg, "--force"]);
    assert!(forced.status.success(), "{}", stderr(&forced));
    let forced_files = files(&out);
    let ca = out.join("ca.pem");
    let server = out.join("server.pem");
    assert_eq!(forced_files[&ca], before[&ca], "the CA is kept");
    assert_ne!(
        forced_files[&server], before[&server],
        "the server certificate is new"
    );
}

/// A data directory that other users may write to (like `/tmp`) is refused before anything is
/// opened, with one line naming it; its mode is left alone.
#[cfg(unix)]
#[test]
fn a_shared_data_directory_is_refused_in_one_line() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    std::fs::create_dir(&data).expect("mkdir");
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
    let data_arg = data.to_str().expect("utf-8 path");
    let output = tether_server(&[
        "--data-dir",
        data_arg,
        "--listen",
        "127.0.0.1:0",
        "--no-metrics",
    ]);
    assert!(!output.status.success());
    let message = stderr(&output);
    let lines: Vec<&str> = message
        .lines()
        .filter(|l| l.starts_with("error:"))
        .collect();
    assert_eq!(lines.len(), 1, "{message}");
    assert!(lines[0].contains(data_arg), "{message}");
    assert!(lines[0].contains("--data-dir"), "{message}");
    let mode = std::fs::metadata(&data).expect("stat").permissions().mode() & 0o7777;
    assert_eq!(mode, 0o1777, "left as it was");
    assert_eq!(
        std::fs::read_dir(&data).expect("read").count(),
        0,
        "nothing written"
    );
}

/// A file given as the data directory is refused in one line naming it and the flag.
#[test]
fn a_file_as_data_directory_is_refused_in_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("data");
    std::fs::write(&file, "not a directory").expect("write");
    let file_arg = file.to_str().expect("utf-8 path");
    let output = tether_server(&[
        "--data-dir",
        file_arg,
        "--listen",
        "127.0.0.1:0",
        "--no-metrics",
    ]);
    let line = the_error_line(&output);
    assert!(
        line.contains(&format!("data directory {file_arg} (--data-dir)")),
        "{line}"
    );
    assert_eq!(
        std::fs::read_to_string(&file).expect("read"),
        "not a directory"
    );
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

/// Flags beat `TETHER_*` variables, which beat the file, which beats the defaults; the file is
/// found by `--config` or `$TETHER_SERVER_CONFIG`, and its relative paths are relative to it.
#[test]
fn config_print_layers_flags_environment_and_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("server.toml");
    std::fs::write(
        &config,
        r#"
        listen = "127.0.0.1:7650"
        metrics-listen = "127.0.0.1:7651"
        heartbeat-interval = "3s"
        stale-after = "30s"
        data-dir = "data"
        max-labels = 8
        "#,
    )
    .expect("write config");
    let config_arg = config.to_str().expect("utf-8 path");
    let output = tether_server_in(
        &[
            "--config",
            config_arg,
            "--stale-after",
            "20s",
            "config",
            "print",
        ],
        &[
            ("TETHER_LISTEN", "127.0.0.1:7660"),
            ("TETHER_METRICS_LISTEN", "127.0.0.1:7661"),
        ],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        setting(&stdout, "listen"),
        r#"listen = "127.0.0.1:7660" # $TETHER_LISTEN"#
    );
    assert_eq!(
        setting(&stdout, "stale-after"),
        r#"stale-after = "20s" # flag"#
    );
    assert_eq!(
        setting(&stdout, "heartbeat-interval"),
        r#"heartbeat-interval = "3s" # file"#
    );
    assert_eq!(setting(&stdout, "max-labels"), "max-labels = 8 # file");
    assert_eq!(
        setting(&stdout, "data-dir"),
        format!(
            "data-dir = \"{}\" # file",
            dir.path().join("data").display()
        )
    );
    assert_eq!(
        setting(&stdout, "offline-after"),
        r#"offline-after = "45s" # default"#
    );
    assert_eq!(setting(&stdout, "tls-cert"), "# tls-cert = # unset");
    assert!(!dir.path().join("data").exists(), "printing writes nothing");

    let output = tether_server_in(
        &["config", "print"],
        &[("TETHER_SERVER_CONFIG", config_arg)],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        setting(&stdout, "listen"),
        r#"listen = "127.0.0.1:7650" # file"#
    );

    // Settings the server would refuse fail `config print` too.
    let output = tether_server_in(
        &[
            "--config",
            config_arg,
            "--stale-after",
            "1s",
            "config",
            "print",
        ],
        &[],
    );
    let line = the_error_line(&output);
    assert!(line.contains("stale-after"), "{line}");
}

/// An unknown key, or a value its flag would refuse, stops the server in one line naming the
/// key and the file, before anything is bound or written.
#[test]
fn a_bad_config_file_is_refused_in_one_line_naming_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("server.toml");
    let config_arg = config.to_str().expect("utf-8 path");
    let data = dir.path().join("data");
    for (contents, key, says) in [
        (
            "heartbeat_interval = \"3s\"",
            "`heartbeat_interval`",
            "did you mean `heartbeat-interval`",
        ),
        ("tls = true", "`tls`", "unknown key"),
        ("listen = \"everywhere\"", "`listen`", "invalid value"),
        (
            "no-metrics = \"yes\"",
            "`no-metrics`",
            "expected true or false",
        ),
    ] {
        std::fs::write(&config, format!("data-dir = \"data\"\n{contents}\n")).expect("write");
        let output = tether_server_in(&["--config", config_arg, "--listen", "127.0.0.1:0"], &[]);
        let line = the_error_line(&output);
        assert!(
            line.contains(key) && line.contains(says) && line.contains(config_arg),
            "{line}"
        );
        assert!(!data.exists(), "nothing written: {line}");
    }
    let missing = dir.path().join("absent.toml");
    let output = tether_server_in(
        &[
            "--config",
            missing.to_str().expect("utf-8"),
            "config",
            "print",
        ],
        &[],
    );
    let line = the_error_line(&output);
    assert!(
        line.contains("absent.toml"),
        "a named file must exist: {line}"
    );
}

/// On a wildcard address the banner gives URLs a client can dial (this machine's hostname and
/// addresses, never `0.0.0.0`), and the agent command is one pasteable shell command: every
/// line but its last ends in ` \`.
#[test]
fn a_wildcard_listener_is_announced_by_dialable_urls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let running = Running::start(&[
        "--data-dir",
        data.to_str().expect("utf-8 path"),
        "--listen",
        "0.0.0.0:0",
        "--insecure-plaintext",
        "--no-metrics",
    ]);
    let listening = &running.banner[0];
    let port = running.url.rsplit(':').next().expect("a port");
    assert!(
        !running.url.contains("0.0.0.0") && running.url.starts_with("http://"),
        "{listening}"
    );
    assert!(
        listening.contains(&format!("(0.0.0.0:{port}; also http://")),
        "the bound address, then the other URLs: {listening}"
    );
    // The URL it prints works.
    let addr = running
        .url
        .trim_start_matches("http://")
        .to_socket_addrs()
        .expect("resolves")
        .next()
        .expect("an address");
    std::net::TcpStream::connect(addr).expect("the printed URL leads to the server");

    let start = running
        .banner
        .iter()
        .position(|l| l.trim_start().starts_with("tether-agent "))
        .expect("an agent command");
    let agent = &running.banner[start..];
    assert!(agent.len() > 1, "{agent:?}");
    for line in &agent[..agent.len() - 1] {
        assert!(line.ends_with(" \\"), "continued: {agent:?}");
    }
    assert!(
        agent[0].contains(&format!("--server {}", running.url)),
        "{agent:?}"
    );
}

/// `backup` is refused in one line while a server runs on the data directory; once it is gone
/// (here killed, as a crash would), the backup is taken, restored into a new directory, and a
/// server starts on the restored one.
#[test]
fn backup_waits_for_the_server_to_stop_and_restores_into_a_new_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let data_arg = data.to_str().expect("utf-8 path");
    let backup_file = dir.path().join("tether.backup");
    let backup_arg = backup_file.to_str().expect("utf-8 path");
    let running = Running::start(&[
        "--data-dir",
        data_arg,
        "--listen",
        "127.0.0.1:0",
        "--no-metrics",
    ]);
    let pid = running.child.id();
    let refused = tether_server(&["backup", "--data-dir", data_arg, "--out", backup_arg]);
    let line = the_error_line(&refused);
    assert!(
        line.contains(&format!("another tether-server (pid {pid})")),
        "{line}"
    );
    assert!(!backup_file.exists(), "nothing written: {line}");
    drop(running);

    let taken = tether_server(&["backup", "--data-dir", data_arg, "--out", backup_arg]);
    assert!(taken.status.success(), "{}", stderr(&taken));
    let said = String::from_utf8_lossy(&taken.stdout);
    assert!(
        said.contains("Backed up") && said.contains("sha256"),
        "{said}"
    );

    let restored = dir.path().join("restored");
    let restored_arg = restored.to_str().expect("utf-8 path");
    let restore = tether_server(&["restore", backup_arg, "--data-dir", restored_arg]);
    assert!(restore.status.success(), "{}", stderr(&restore));
    let said = String::from_utf8_lossy(&restore.stdout);
    assert!(said.contains("1 orgs"), "{said}");
    let again = tether_server(&["restore", backup_arg, "--data-dir", restored_arg]);
    let line = the_error_line(&again);
    assert!(line.contains("is not empty"), "{line}");
    let truncated = dir.path().join("truncated.backup");
    let bytes = std::fs::read(&backup_file).expect("backup file");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).expect("write");
    let fresh = dir.path().join("fresh");
    let cut = tether_server(&[
        "restore",
        truncated.to_str().expect("utf-8 path"),
        "--data-dir",
        fresh.to_str().expect("utf-8 path"),
    ]);
    let line = the_error_line(&cut);
    assert!(line.contains("truncated or damaged"), "{line}");
    assert!(!fresh.exists(), "nothing written: {line}");
    let not_a_backup = tether_server(&["restore", data_arg, "--data-dir", restored_arg]);
    let line = the_error_line(&not_a_backup);
    assert!(line.contains("cannot be restored"), "{line}");

    let _serving = Running::start(&[
        "--data-dir",
        restored_arg,
        "--listen",
        "127.0.0.1:0",
        "--no-metrics",
    ]);
    assert!(restored.join("admin.token").exists(), "a new admin token");
}
