//! Cross-language interop: a Python client whose stubs are generated from `proto/` at run time
//! (`tests/interop/client.py`) enrolls, connects, reports and queries against the real server.
//! Proves the wire contract is enough on its own: nothing Rust-only is hidden in it.
//!
//! The Python environment (`tests/interop/requirements.txt`) lives in a virtualenv under
//! `<target>/interop-venv`, built on first use (needs `python3` >= 3.10 and PyPI) and reused
//! afterwards. `TETHER_INTEROP_PYTHON` names another base interpreter.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tether_proto as pb;
use tether_tests::{TestServer, fast_config, list_all, trace_init};

/// Upper bound on one run of the Python client (it bounds each of its own steps too).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);
/// Written into the venv once its packages are installed: the requirements it was built from.
const STAMP: &str = "tether-requirements.txt";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_generated_from_proto_enrolls_connects_reports_and_queries() {
    trace_init();
    let started = Instant::now();
    let python = tokio::task::spawn_blocking(ensure_venv)
        .await
        .expect("venv bootstrap task")
        .unwrap_or_else(|e| panic!("cannot prepare the Python interop environment: {e}"));
    println!(
        "python environment ready in {:?}: {}",
        started.elapsed(),
        python.display()
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(fast_config(dir.path())).await;
    let root = workspace_root();
    let mut cmd = tokio::process::Command::new(&python);
    cmd.arg(root.join("tests/interop/client.py"))
        .arg("--target")
        .arg(server.addr.to_string())
        .arg("--admin-token")
        .arg(&server.admin_token)
        .arg("--proto-dir")
        .arg(root.join("proto"))
        .env("PYTHONNOUSERSITE", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let client_started = Instant::now();
    let child = cmd.spawn().expect("spawn the Python interop client");
    let output = tokio::time::timeout(CLIENT_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| {
            panic!("the Python interop client did not finish within {CLIENT_TIMEOUT:?}")
        })
        .expect("wait for the Python interop client");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("python client finished in {:?}", client_started.elapsed());
    assert!(
        output.status.success(),
        "the Python interop client failed ({}):\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
        output.status
    );
    println!("--- python client stdout ---\n{stdout}--- stderr ---\n{stderr}");
    let agent_id = stdout
        .lines()
        .find_map(|l| l.strip_prefix("AGENT_ID="))
        .unwrap_or_else(|| panic!("no AGENT_ID= line in the client's output:\n{stdout}"))
        .trim()
        .to_owned();

    // What the Python agent did is visible through the Rust client, field for field.
    let mut fleet = server.fleet().await;
    let listed = list_all(
        &mut fleet,
        pb::ListAgentsRequest {
            label_selector: "lang=python".to_owned(),
            ..Default::default()
        },
    )
    .await;
    let ids: Vec<_> = listed.iter().map(|a| a.agent_id.as_str()).collect();
    assert_eq!(ids, [agent_id.as_str()], "agents with lang=python");

    let agent = server
        .wait_status(&agent_id, pb::AgentStatus::Offline)
        .await;
    assert_eq!(
        agent.status_reason,
        pb::StatusReason::Goodbye as i32,
        "{agent:?}"
    );
    assert_eq!(agent.labels.get("lang").map(String::as_str), Some("python"));
    assert_eq!(agent.last_durable_seq, 3, "{agent:?}");
    let info = agent.system_info.as_ref().expect("system info");
    assert_eq!(info.hostname, "py-agent");
    assert_eq!(info.hardware_id, "hw-py-agent");
    assert_eq!(info.os_name, "pylinux");
    let latest = agent.latest_metrics.as_ref().expect("latest metrics");
    assert_eq!(latest.seq, 3);
    assert!((latest.cpu_percent - 30.0).abs() < 1e-9, "{latest:?}");
    assert_eq!(latest.disks.len(), 1, "{latest:?}");
    assert!(latest.uptime.is_some(), "{latest:?}");

    let points = fleet
        .get_metrics(pb::GetMetricsRequest {
            agent_id: agent_id.clone(),
            step: Some(prost_types::Duration::default()),
            ..Default::default()
        })
        .await
        .expect("get metrics")
        .into_inner()
        .points;
    assert_eq!(points.len(), 3, "{points:?}");
    assert!(points.iter().all(|p| p.sample_count == 1), "{points:?}");
    let cpu: Vec<f64> = points.iter().map(|p| p.cpu_percent).collect();
    assert_eq!(cpu, [10.0, 20.0, 30.0]);

    let tokens = server
        .admin()
        .await
        .list_enrollment_tokens(pb::ListEnrollmentTokensRequest {})
        .await
        .expect("list enrollment tokens")
        .into_inner()
        .tokens;
    let python_token = tokens
        .iter()
        .find(|t| t.description == "python interop")
        .unwrap_or_else(|| panic!("the Python client's enrollment token: {tokens:?}"));
    assert_eq!(python_token.use_count, 1);

    server.stop().await;
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// `$CARGO_TARGET_DIR` when the caller set one, else `<workspace>/target`.
fn target_dir() -> PathBuf {
    let root = workspace_root();
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => root.join(dir),
        _ => root.join("target"),
    }
}

fn base_python() -> OsString {
    std::env::var_os("TETHER_INTEROP_PYTHON")
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "python3".into())
}

fn venv_python(venv: &Path) -> PathBuf {
    if cfg!(windows) {
        venv.join("Scripts").join("python.exe")
    } else {
        venv.join("bin").join("python")
    }
}

/// Runs `cmd`; a failure to start or a non-zero exit becomes an error naming `what`.
fn run(cmd: &mut Command, what: &str) -> Result<Output, String> {
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{what}: cannot run {:?}: {e}", cmd.get_program()))?;
    if output.status.success() {
        Ok(output)
    } else {
        Err(format!(
            "{what} failed ({}):\n--- stdout ---\n{}\n--- stderr ---\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// The venv holds exactly `requirements` and they import.
fn venv_ready(venv: &Path, requirements: &str) -> bool {
    std::fs::read_to_string(venv.join(STAMP)).is_ok_and(|s| s == requirements)
        && Command::new(venv_python(venv))
            .args(["-c", "import grpc, grpc_tools.protoc, google.protobuf"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}

/// Removes a directory when dropped, unless disarmed.
struct RemoveOnDrop(Option<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn unique_suffix() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!("{}-{nanos}", std::process::id())
}

/// Returns the interpreter of `<target>/interop-venv`, building the venv first if it is missing
/// or was built from other requirements.
///
/// Concurrent runs are safe without a lock: each builds into its own directory and publishes it
/// with one `rename`, which fails if another run published first (its venv is then used). A
/// venv is only published once complete, so a crash never leaves a half-built one in place.
fn ensure_venv() -> Result<PathBuf, String> {
    let requirements_path = workspace_root().join("tests/interop/requirements.txt");
    let requirements = std::fs::read_to_string(&requirements_path)
        .map_err(|e| format!("read {}: {e}", requirements_path.display()))?;
    let target = target_dir();
    let venv = target.join("interop-venv");
    if venv_ready(&venv, &requirements) {
        return Ok(venv_python(&venv));
    }

    let python = base_python();
    let version = Command::new(&python)
        .args([
            "-c",
            "import sys; print(sys.version.split()[0]); sys.exit(0 if sys.version_info >= (3, 10) else 3)",
        ])
        .stdin(Stdio::null())
        .output();
    match version {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!(
                "{python:?} was not found on PATH. This test runs a Python gRPC client against the \
                 server and needs Python >= 3.10 with the venv module and access to PyPI; install \
                 python3 or set TETHER_INTEROP_PYTHON to an interpreter"
            ));
        }
        Err(e) => return Err(format!("cannot run {python:?}: {e}")),
        Ok(out) if !out.status.success() => {
            return Err(format!(
                "{python:?} is Python {} ({}); the interop test needs Python >= 3.10 (grpcio's \
                 minimum). Set TETHER_INTEROP_PYTHON to a newer interpreter. {}",
                String::from_utf8_lossy(&out.stdout).trim(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(_) => {}
    }

    std::fs::create_dir_all(&target).map_err(|e| format!("create {}: {e}", target.display()))?;
    let building = target.join(format!("interop-venv.building-{}", unique_suffix()));
    let mut cleanup = RemoveOnDrop(Some(building.clone()));
    eprintln!(
        "interop: building the Python environment in {} (first run only)",
        venv.display()
    );
    run(
        Command::new(&python).arg("-m").arg("venv").arg(&building),
        "python3 -m venv (on Debian/Ubuntu, install the python3-venv package)",
    )?;
    let building_python = venv_python(&building);
    run(
        Command::new(&building_python)
            .args([
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "--no-input",
                "--quiet",
                "-r",
            ])
            .arg(&requirements_path),
        "pip install -r tests/interop/requirements.txt (needs access to PyPI)",
    )?;
    std::fs::write(building.join(STAMP), &requirements)
        .map_err(|e| format!("write the venv stamp: {e}"))?;

    // Publish. A stale venv (other requirements, broken) is moved aside first.
    if venv.exists() && !venv_ready(&venv, &requirements) {
        let stale = target.join(format!("interop-venv.stale-{}", unique_suffix()));
        if std::fs::rename(&venv, &stale).is_ok() {
            let _ = std::fs::remove_dir_all(&stale);
        }
    }
    match std::fs::rename(&building, &venv) {
        Ok(()) => cleanup.0 = None,
        // Another run published first; ours is removed on drop.
        Err(_) if venv_ready(&venv, &requirements) => {}
        Err(e) => {
            return Err(format!(
                "move {} to {}: {e}",
                building.display(),
                venv.display()
            ));
        }
    }
    if venv_ready(&venv, &requirements) {
        Ok(venv_python(&venv))
    } else {
        Err(format!(
            "{} was built but cannot import grpc and grpc_tools",
            venv.display()
        ))
    }
}
