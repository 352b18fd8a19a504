//! README's "Production" walkthrough and its service units.
//!
//! The walkthrough runs step by step with the real `tether-server`,
//! `tether-agent` and `tetherctl` binaries: certificates from `gen-certs` for the name the
//! agents dial, a TLS server on a non-default address (`127.0.0.7` stands in for the server's
//! machine; the agent and the operator are other processes with their own directories), the
//! operator's enrollment token, the agent configured by its `agent.toml`, and a command run on
//! it. What differs from the README: directories under a tempdir instead of `/etc` and
//! `/var/lib`, a free port instead of 7600, `--config` instead of the default path, and the
//! metrics listener on a free port of its own.
//!
//! The systemd units of `packaging/systemd` are checked for the hardening README promises, and
//! their command lines are run (as `config print`) against the real binaries with the files the
//! walkthrough makes; where `systemd-analyze` exists, the units must also verify cleanly.
//!
//! The binaries are the ones cargo builds beside this test's own (`cargo test --workspace`
//! builds them).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tether_tests::eventually;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

/// The server's name and address in the walkthrough's terms: agents and operators dial it, so
/// the certificate states it.
const SERVER_ADDR: &str = "127.0.0.7";
const SERVER_NAME: &str = SERVER_ADDR;

/// Where cargo put the binaries of this build.
fn bin(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_BIN_EXE_test-server"))
        .parent()
        .expect("the binaries' directory");
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: build the binaries with `cargo build --bins` (cargo test --workspace \
         does)",
        path.display()
    );
    path
}

/// A command with only the environment `env`: nothing of the machine running the test (its
/// `TETHER_*` variables, its `~/.config/tether`) reaches it.
fn command(name: &str, env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(bin(name));
    command
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}

/// Runs `tetherctl` as the operator: its stdout, or its stderr as the error.
async fn tetherctl(operator: &[(&str, &str)], args: &[&str]) -> Result<String, String> {
    let output = command("tetherctl", operator)
        .args(args)
        .output()
        .await
        .expect("run tetherctl");
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

/// A free port on `SERVER_ADDR` (the server binds it right after; nothing else uses that
/// address).
fn free_port() -> u16 {
    std::net::TcpListener::bind((SERVER_ADDR, 0))
        .and_then(|l| l.local_addr())
        .expect("a free port on 127.0.0.7")
        .port()
}

/// Waits for the server's `listening on` line and returns the URL in it.
async fn listening_url(server: &mut Child) -> String {
    let stdout = server.stdout.take().expect("server stdout");
    let mut lines = BufReader::new(stdout).lines();
    let url = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let line = lines
                .next_line()
                .await
                .expect("read the server's output")
                .expect("the server exited before serving");
            if let Some(rest) = line.strip_prefix("Tether server listening on ") {
                break rest
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_owned();
            }
        }
    })
    .await
    .expect("the server announces its URL");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_walkthrough_over_tls_on_a_non_default_address() {
    let root = tempfile::tempdir().expect("tempdir");
    let path = |p: &str| root.path().join(p);
    let text = |p: &Path| p.to_str().expect("utf-8 path").to_owned();
    for dir in ["server", "operator", "agent"] {
        std::fs::create_dir_all(path(dir)).expect("a machine's directory");
    }

    // 1. The server: certificates for the name agents dial, TLS on its address.
    let certs = path("server/certs");
    let hosts = format!("{SERVER_NAME},{SERVER_ADDR}");
    let output = command("tether-server", &[])
        .args(["gen-certs", "--out", &text(&certs), "--hosts", &hosts])
        .output()
        .await
        .expect("gen-certs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        tether_server::tls::cert_names(&certs.join("server.pem")).expect("names"),
        [SERVER_NAME],
        "a name given twice is stated once"
    );
    let port = free_port();
    let data_dir = path("server/data");
    let mut server = command("tether-server", &[])
        .args(["--listen", &format!("{SERVER_ADDR}:{port}")])
        .args(["--data-dir", &text(&data_dir)])
        .args(["--tls-cert", &text(&certs.join("server.pem"))])
        .args(["--tls-key", &text(&certs.join("server-key.pem"))])
        .args(["--metrics-listen", &format!("{SERVER_ADDR}:0")])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start tether-server");
    let url = listening_url(&mut server).await;
    assert_eq!(url, format!("https://{SERVER_NAME}:{port}"));
    let admin_token = std::fs::read_to_string(data_dir.join("admin.token")).expect("admin token");
    let server_url = format!("https://{SERVER_NAME}:{port}");

    // 2. The operator's machine: the CA copied over, an enrollment token.
    let operator_ca = path("operator/ca.pem");
    std::fs::copy(certs.join("ca.pem"), &operator_ca).expect("copy the CA");
    let operator_home = text(&path("operator"));
    let operator_ca = text(&operator_ca);
    let operator = [
        ("HOME", operator_home.as_str()),
        ("TETHER_SERVER", server_url.as_str()),
        ("TETHER_CA_CERT", operator_ca.as_str()),
        ("TETHER_TOKEN", admin_token.trim()),
    ];
    tetherctl(&operator, &["summary"])
        .await
        .expect("the operator reaches the server over TLS");
    let created = tetherctl(
        &operator,
        &[
            "enroll-token",
            "create",
            "--label",
            "env=prod",
            "--max-uses",
            "10",
            "--ttl",
            "24h",
            "-o",
            "json",
        ],
    )
    .await
    .expect("enroll-token create");
    let created: Value = serde_json::from_str(&created).expect("JSON");
    let secret = created["secret"].as_str().expect("a secret").to_owned();

    // 3. The agent's machine: the CA copied over, agent.toml as in the README.
    std::fs::copy(certs.join("ca.pem"), path("agent/ca.pem")).expect("copy the CA");
    let config = path("agent/agent.toml");
    std::fs::write(
        &config,
        format!(
            "server = \"https://{SERVER_NAME}:{port}\"\n\
             ca-cert = \"ca.pem\"\n\
             state-dir = \"{}\"\n\
             label = [\"env=prod\"]\n\
             allow-exec = [\"/usr/bin/uptime\", \"/usr/bin/df\"]\n",
            text(&path("agent/state"))
        ),
    )
    .expect("write agent.toml");
    let _agent = command("tether-agent", &[])
        .current_dir(path("agent"))
        .args(["--config", &text(&config), "--enroll-token", &secret])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start tether-agent");

    // 4. Back on the operator's machine: the agent is online, and runs a command.
    eventually("the agent online, labelled env=prod", || async {
        let list = tetherctl(&operator, &["agents", "list", "-o", "json"])
            .await
            .ok()?;
        let list: Value = serde_json::from_str(&list).ok()?;
        let agents = list.as_array()?;
        let agent = agents.first()?;
        (agents.len() == 1 && agent["status"] == "online" && agent["labels"]["env"] == "prod")
            .then_some(())
    })
    .await;
    let ran = tetherctl(
        &operator,
        &["cmd", "run", "-l", "env=prod", "--", "/usr/bin/uptime"],
    )
    .await
    .expect("cmd run succeeds");
    assert!(ran.contains("load average"), "{ran}");

    server.kill().await.expect("stop the server");
}

/// A unit file of `packaging/systemd`.
fn unit(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../packaging/systemd")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The words of a unit's `ExecStart=`, its continuation lines joined.
fn exec_start(unit: &str) -> Vec<String> {
    let joined = unit.replace("\\\n", " ");
    let line = joined
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("an ExecStart line");
    line.split_whitespace().map(str::to_owned).collect()
}

/// Each unit runs its binary with flags the binary accepts, from its own user, in a sandbox
/// with a state directory; with the files the walkthrough makes (the config file, the TLS
/// files systemd hands over), `config print` passes the binary's own start-up checks.
#[tokio::test]
async fn service_units_are_hardened_and_run_the_binaries_with_flags_they_accept() {
    let root = tempfile::tempdir().expect("tempdir");
    let etc = root.path().join("etc/tether");
    let credentials = root.path().join("credentials");
    std::fs::create_dir_all(&etc).expect("etc");
    let output = command("tether-server", &[])
        .args(["gen-certs", "--out"])
        .arg(&credentials)
        .args(["--hosts", "tether.example.com"])
        .output()
        .await
        .expect("gen-certs");
    assert!(output.status.success());
    std::fs::copy(credentials.join("ca.pem"), etc.join("ca.pem")).expect("CA");
    std::fs::write(etc.join("server.toml"), "listen = \"127.0.0.1:7600\"\n").expect("server.toml");
    std::fs::write(
        etc.join("agent.toml"),
        "server = \"https://tether.example.com:7600\"\nca-cert = \"ca.pem\"\n\
         label = [\"env=prod\"]\nallow-exec = [\"/usr/bin/uptime\"]\n",
    )
    .expect("agent.toml");

    for (name, binary, state) in [
        (
            "tether-server.service",
            "tether-server",
            "StateDirectory=tether\n",
        ),
        (
            "tether-agent.service",
            "tether-agent",
            "StateDirectory=tether-agent\n",
        ),
    ] {
        let text = unit(name);
        for setting in [
            "DynamicUser=yes\n",
            state,
            "StateDirectoryMode=0700\n",
            "ProtectSystem=strict\n",
            "NoNewPrivileges=yes\n",
            "CapabilityBoundingSet=\n",
            "KillSignal=SIGTERM\n",
        ] {
            assert!(text.contains(setting), "{name} lacks {setting:?}");
        }
        assert!(
            text.lines().any(|l| l.starts_with("Restart=")),
            "{name} restarts"
        );
        let words = exec_start(&text);
        assert_eq!(words[0], format!("/usr/local/bin/{binary}"), "{name}");
        let args: Vec<String> = words[1..]
            .iter()
            .map(|w| {
                w.replace(
                    "${CREDENTIALS_DIRECTORY}",
                    &credentials.display().to_string(),
                )
                .replace("/etc/tether", &etc.display().to_string())
            })
            .collect();
        let output = command(binary, &[])
            .args(&args)
            .args(["config", "print"])
            .output()
            .await
            .expect("run the unit's command line");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{name}: {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let state_dir = format!(
            "\"/var/lib/{}\"",
            state.trim_end().trim_start_matches("StateDirectory=")
        );
        assert!(
            stdout
                .lines()
                .any(|l| l.contains(&state_dir) && l.ends_with("# flag")),
            "{name} keeps its data in its state directory: {stdout}"
        );
    }

    // Where systemd's own checker exists, the units pass it (with the binaries where this build
    // put them).
    let Ok(version) = std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output()
    else {
        return;
    };
    assert!(version.status.success());
    let units = root.path().join("units");
    std::fs::create_dir_all(&units).expect("units dir");
    let mut paths = Vec::new();
    for (name, binary) in [
        ("tether-server.service", "tether-server"),
        ("tether-agent.service", "tether-agent"),
    ] {
        let text = unit(name).replace(
            &format!("/usr/local/bin/{binary}"),
            &bin(binary).display().to_string(),
        );
        let path = units.join(name);
        std::fs::write(&path, text).expect("unit copy");
        paths.push(path);
    }
    let output = std::process::Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(&paths)
        .output()
        .expect("systemd-analyze verify");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stderr.trim().is_empty(),
        "{stderr}"
    );
}
