//! The `tether-server` binary as an operator runs it: what `gen-certs` writes and refuses to
//! overwrite, and the one-line refusal of a data directory shared with other users.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Longest a run may take: every run here ends on its own (a server that started serving
/// instead would be killed and fail its test).
const RUN_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs the binary with `args` to its end.
fn tether_server(args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tether-server"))
        .args(args)
        .env_remove("RUST_LOG")
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
