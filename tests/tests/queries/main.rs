//! The fleet queries over real enrolled agents: label selectors, OS, text and status filters,
//! paging, the fleet summary, the served configuration, enrollment identity (re-enrolling the
//! same hardware), enrollment-token labels, and metrics aggregation.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, SystemTime};

use futures::StreamExt as _;
use tether_proto as pb;
use tether_server::config::Config;
use tether_tests::{
    FleetClient, RawSession, TestServer, eventually, fast_config, labels, list_all, sample,
    system_info, trace_init,
};
use tonic::Code;

mod enrollment;
mod listing;
mod metrics;
mod summary;

/// `fast_config`, but sessions that say nothing stay online for the whole test.
fn config(dir: &std::path::Path) -> Config {
    let mut config = fast_config(dir);
    config.liveness.stale_after = Duration::from_secs(60);
    config.liveness.offline_after = Duration::from_secs(120);
    config
}

async fn start() -> (TestServer, tempfile::TempDir) {
    trace_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(config(dir.path())).await;
    (server, dir)
}

/// A synthetic machine to enroll.
struct Machine {
    hostname: &'static str,
    os: &'static str,
    name: &'static str,
    labels: &'static [(&'static str, &'static str)],
}

impl Machine {
    fn info(&self) -> pb::SystemInfo {
        pb::SystemInfo {
            os_name: self.os.to_owned(),
            ..system_info(self.hostname)
        }
    }

    fn request(&self) -> pb::EnrollRequest {
        pb::EnrollRequest {
            system_info: Some(self.info()),
            labels: labels(self.labels),
            name: self.name.to_owned(),
            previous_credential: String::new(),
        }
    }

    /// The `Hello` this machine would send: same system info, same labels.
    fn hello(&self, agent_id: &str) -> pb::Hello {
        pb::Hello {
            accepts_deferred_reports: false,
            agent_id: agent_id.to_owned(),
            agent_version: "test".to_owned(),
            system_info: Some(self.info()),
            labels: labels(self.labels),
            instance_id: String::new(),
            journaled_invocation_ids: Vec::new(),
        }
    }
}

/// Eight machines with varied labels and OSes.
const FLEET: [Machine; 8] = [
    Machine {
        hostname: "web-prod-1",
        os: "linux",
        name: "",
        labels: &[("env", "prod"), ("tier", "web")],
    },
    Machine {
        hostname: "db-prod-1",
        os: "linux",
        name: "",
        labels: &[("env", "prod"), ("tier", "db")],
    },
    Machine {
        hostname: "web-dev-1",
        os: "linux",
        name: "",
        labels: &[("env", "dev"), ("tier", "web")],
    },
    Machine {
        hostname: "dev-box",
        os: "Windows",
        name: "",
        labels: &[("env", "dev")],
    },
    Machine {
        hostname: "stage-1",
        os: "linux",
        name: "",
        labels: &[("env", "staging"), ("canary", "true")],
    },
    Machine {
        hostname: "edge-web",
        os: "darwin",
        name: "",
        labels: &[("tier", "web")],
    },
    Machine {
        hostname: "bare",
        os: "Windows",
        name: "Mystery-Machine",
        labels: &[],
    },
    Machine {
        hostname: "canary-prod",
        os: "linux",
        name: "",
        labels: &[("env", "prod"), ("canary", "true")],
    },
];

/// Enrolls every machine of [`FLEET`]; returns (agent id, credential) in the same order.
async fn enroll_fleet(server: &TestServer) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for machine in &FLEET {
        let response = server.enroll_with(machine.request()).await.expect("enroll");
        out.push((response.agent_id, response.agent_credential));
    }
    out
}

fn hostname(agent: &pb::Agent) -> &str {
    agent
        .system_info
        .as_ref()
        .map_or("", |info| info.hostname.as_str())
}

/// Hostnames of every agent matching `req` (following pages).
async fn hostnames(fleet: &mut FleetClient, req: pb::ListAgentsRequest) -> BTreeSet<String> {
    list_all(fleet, req)
        .await
        .iter()
        .map(|a| hostname(a).to_owned())
        .collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| (*n).to_owned()).collect()
}

fn selector(text: &str) -> pb::ListAgentsRequest {
    pb::ListAgentsRequest {
        label_selector: text.to_owned(),
        ..Default::default()
    }
}

fn dur(d: Duration) -> Option<prost_types::Duration> {
    Some(prost_types::Duration::try_from(d).expect("duration"))
}
