//! A server and agents as real processes (the `test-server` and `test-agent` binaries of this
//! crate, which run the server and agent libraries), for the tests that kill them with
//! SIGKILL or stop the server at an armed crash point of its store (nothing runs after that,
//! only what was on disk survives), and for those that run the server under process limits
//! ([`Launch`]: `prlimit --nofile=256 -- test-server …`).
//!
//! The binaries' paths come from the test (`env!("CARGO_BIN_EXE_test-server")`), which Cargo
//! sets only for integration tests.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};
use tonic::transport::{Channel, Endpoint};

use tether_proto as pb;

use crate::{
    AdminClient, AgentClient, Bearer, EVENTUALLY, FleetClient, eventually, scrape_metrics,
    system_info,
};

/// A `test-server` process. Its standard input stays open while this lives: closing it
/// ([`ServerProcess::stop`]) stops the server in order.
pub struct ServerProcess {
    child: Child,
    pub addr: SocketAddr,
    pub url: String,
    pub admin_token: String,
    /// Where it serves Prometheus metrics, when launched with `--metrics-listen`.
    pub metrics: Option<SocketAddr>,
}

/// How a `test-server` process is launched beyond its data directory and address: under a
/// wrapper program (`["prlimit", "--nofile=256:256", "--"]`), with extra flags of its own.
#[derive(Clone, Copy, Debug, Default)]
pub struct Launch<'a> {
    pub wrapper: &'a [&'a str],
    pub flags: &'a [&'a str],
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
        Self::start_with(exe, data_dir, listen, Launch::default()).await
    }

    /// [`ServerProcess::start`], launched as `launch` says.
    pub async fn start_with(
        exe: &Path,
        data_dir: &Path,
        listen: SocketAddr,
        launch: Launch<'_>,
    ) -> Self {
        eventually("a server process to start", || async {
            Self::try_start(exe, data_dir, listen, launch).await
        })
        .await
    }

    async fn try_start(
        exe: &Path,
        data_dir: &Path,
        listen: SocketAddr,
        launch: Launch<'_>,
    ) -> Option<Self> {
        let mut command = match launch.wrapper.split_first() {
            Some((wrapper, args)) => {
                let mut command = Command::new(wrapper);
                command.args(args).arg(exe);
                command
            }
            None => Command::new(exe),
        };
        let mut child = command
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--listen")
            .arg(listen.to_string())
            .args(launch.flags)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn test-server");
        let stdout = child.stdout.take().expect("server stdout");
        let mut lines = BufReader::new(stdout).lines();
        let (mut addr, mut admin_token, mut metrics) = (None, None, None);
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
            // Printed first, when the server serves metrics.
            if let Some(rest) = line.strip_prefix("METRICS ") {
                metrics = rest.trim().parse().ok();
            }
        }
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let addr: SocketAddr = addr.expect("loop ends when set");
        Some(Self {
            child,
            addr,
            url: format!("http://{addr}"),
            admin_token: admin_token.expect("loop ends when set"),
            metrics,
        })
    }

    /// The value of the Prometheus sample `name` (with its labels, as exposed), 0 if absent.
    pub async fn metric(&self, name: &str) -> f64 {
        let addr = self.metrics.expect("launched with --metrics-listen");
        let text = scrape_metrics(addr).await.expect("scrape the metrics");
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// An enrollment token, created with the admin token.
    pub async fn enrollment_token(&self) -> String {
        self.admin()
            .await
            .create_enrollment_token(pb::CreateEnrollmentTokenRequest::default())
            .await
            .expect("create an enrollment token")
            .into_inner()
            .secret
    }

    /// Enrolls a synthetic machine; returns (agent id, credential).
    pub async fn enroll(&self, hostname: &str) -> (String, String) {
        let token = self.enrollment_token().await;
        let response = self
            .agent_client(&token)
            .await
            .enroll(pb::EnrollRequest {
                system_info: Some(system_info(hostname)),
                ..Default::default()
            })
            .await
            .expect("enroll")
            .into_inner();
        (response.agent_id, response.agent_credential)
    }

    async fn channel(&self) -> Channel {
        Endpoint::from_shared(self.url.clone())
            .expect("a url")
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .expect("connect to the server process")
    }

    async fn admin(&self) -> AdminClient {
        pb::admin_service_client::AdminServiceClient::with_interceptor(
            self.channel().await,
            Bearer(Some(self.admin_token.clone())),
        )
    }

    /// A `FleetService` client with the admin token.
    pub async fn fleet(&self) -> FleetClient {
        pb::fleet_service_client::FleetServiceClient::with_interceptor(
            self.channel().await,
            Bearer(Some(self.admin_token.clone())),
        )
    }

    /// An `AgentService` client presenting `token`.
    pub async fn agent_client(&self, token: &str) -> AgentClient {
        pb::agent_service_client::AgentServiceClient::with_interceptor(
            self.channel().await,
            Bearer(Some(token.to_owned())),
        )
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .try_wait()
            .expect("the server's status")
            .is_none()
    }

    /// SIGKILL, and waits until the process is gone.
    pub async fn kill(mut self) {
        self.child.kill().await.expect("kill the server");
    }

    /// Waits for the process to end on its own (an armed crash point); panics after
    /// [`EVENTUALLY`].
    pub async fn exited(mut self) -> ExitStatus {
        tokio::time::timeout(EVENTUALLY, self.child.wait())
            .await
            .expect("the server to end in time")
            .expect("wait for the server")
    }

    /// Stops the process in order (its standard input closes; it drains and exits) and waits
    /// for it.
    pub async fn stop(mut self) -> ExitStatus {
        drop(self.child.stdin.take());
        tokio::time::timeout(EVENTUALLY, self.child.wait())
            .await
            .expect("the server to stop in time")
            .expect("wait for the server")
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
