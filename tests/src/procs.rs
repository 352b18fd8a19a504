//! A server and agents as real processes (the `test-server` and `test-agent` binaries of this
//! crate, which run the server and agent libraries), for the tests that kill them with
//! SIGKILL: nothing runs after the signal, only what was on disk survives.
//!
//! The binaries' paths come from the test (`env!("CARGO_BIN_EXE_test-server")`), which Cargo
//! sets only for integration tests.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

use crate::eventually;

/// A `test-server` process.
pub struct ServerProcess {
    child: Child,
    pub addr: SocketAddr,
    pub url: String,
    pub admin_token: String,
}

/// A `test-agent` process.
pub struct AgentProcess {
    child: Child,
}

// === impl ServerProcess ===

impl ServerProcess {
    /// Starts `exe` on `data_dir`, listening on `listen` (port 0: any; a port a killed server
    /// held is retried until free), and waits until it serves.
    pub async fn start(exe: &Path, data_dir: &Path, listen: SocketAddr) -> Self {
        eventually("a server process to start", || async {
            Self::try_start(exe, data_dir, listen).await
        })
        .await
    }

    async fn try_start(exe: &Path, data_dir: &Path, listen: SocketAddr) -> Option<Self> {
        let mut child = Command::new(exe)
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--listen")
            .arg(listen.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn test-server");
        let stdout = child.stdout.take().expect("server stdout");
        let mut lines = BufReader::new(stdout).lines();
        let (mut addr, mut admin_token) = (None, None);
        while addr.is_none() || admin_token.is_none() {
            let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
                .await
                .expect("the server prints its address")
                .expect("read the server's output");
            let Some(line) = line else {
                // It exited (its port is still held): the caller tries again.
                let _ = child.wait().await;
                return None;
            };
            if let Some(rest) = line.strip_prefix("LISTENING ") {
                addr = rest.trim().parse().ok();
            }
            if let Some(rest) = line.strip_prefix("ADMIN_TOKEN ") {
                admin_token = Some(rest.trim().to_owned());
            }
        }
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let addr: SocketAddr = addr.expect("loop ends when set");
        Some(Self {
            child,
            addr,
            url: format!("http://{addr}"),
            admin_token: admin_token.expect("loop ends when set"),
        })
    }

    /// SIGKILL, and waits until the process is gone.
    pub async fn kill(mut self) {
        self.child.kill().await.expect("kill the server");
    }
}

// === impl AgentProcess ===

impl AgentProcess {
    /// Starts `exe` for machine `hostname` against `url`, with its state in `state_dir` and its
    /// commands running in `work_dir`; enrolls with `enroll_token` when its state holds no
    /// credential. `allow_exec` are the programs it may run.
    pub fn start(
        exe: &Path,
        url: &str,
        hostname: &str,
        state_dir: &Path,
        work_dir: &Path,
        enroll_token: Option<&str>,
        allow_exec: &[&str],
    ) -> Self {
        let mut command = Command::new(exe);
        command
            .current_dir(work_dir)
            .arg("--server")
            .arg(url)
            .arg("--state-dir")
            .arg(state_dir)
            .arg("--hostname")
            .arg(hostname)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .kill_on_drop(true);
        if let Some(token) = enroll_token {
            command.arg("--enroll-token").arg(token);
        }
        for program in allow_exec {
            command.arg("--allow-exec").arg(program);
        }
        Self {
            child: command.spawn().expect("spawn test-agent"),
        }
    }

    /// SIGKILL, and waits until the process is gone.
    pub async fn kill(mut self) {
        self.child.kill().await.expect("kill the agent");
    }
}

/// A directory for one agent process: its state and the working directory of its commands.
pub fn agent_dirs(root: &Path, hostname: &str) -> (PathBuf, PathBuf) {
    let state = root.join(hostname).join("state");
    let work = root.join(hostname).join("work");
    std::fs::create_dir_all(&work).expect("agent work dir");
    (state, work)
}
