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
        }
    }

    /// The `Hello` this machine would send: same system info, same labels.
    fn hello(&self, agent_id: &str) -> pb::Hello {
        pb::Hello {
            agent_id: agent_id.to_owned(),
            agent_version: "test".to_owned(),
            system_info: Some(self.info()),
            labels: labels(self.labels),
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

// === filters ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn label_selectors_filter_agents() {
    let (server, _dir) = start().await;
    enroll_fleet(&server).await;
    let mut fleet = server.fleet().await;
    let all: Vec<&str> = FLEET.iter().map(|m| m.hostname).collect();
    let cases: &[(&str, &[&str])] = &[
        ("", &all),
        ("env=prod", &["web-prod-1", "db-prod-1", "canary-prod"]),
        // `k!=v` includes agents without the key.
        (
            "env!=prod",
            &["web-dev-1", "dev-box", "stage-1", "edge-web", "bare"],
        ),
        (
            "env",
            &[
                "web-prod-1",
                "db-prod-1",
                "web-dev-1",
                "dev-box",
                "stage-1",
                "canary-prod",
            ],
        ),
        ("!env", &["edge-web", "bare"]),
        ("env=prod,tier=web", &["web-prod-1"]),
        ("env!=prod,tier", &["web-dev-1", "edge-web"]),
        ("tier=web,!canary", &["web-prod-1", "web-dev-1", "edge-web"]),
        ("canary,env!=staging", &["canary-prod"]),
        (" env = prod , tier ", &["web-prod-1", "db-prod-1"]),
        ("env=nope", &[]),
        ("!env,!tier", &["bare"]),
    ];
    for (text, expected) in cases {
        assert_eq!(
            hostnames(&mut fleet, selector(text)).await,
            set(expected),
            "selector {text:?}"
        );
        let listed = fleet
            .list_agents(selector(text))
            .await
            .expect("list")
            .into_inner();
        assert_eq!(
            listed.total_size as usize,
            expected.len(),
            "total_size for {text:?}"
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn os_and_text_filters() {
    let (server, _dir) = start().await;
    enroll_fleet(&server).await;
    let mut fleet = server.fleet().await;
    let os = |os: &str| pb::ListAgentsRequest {
        os: os.to_owned(),
        ..Default::default()
    };
    let query = |q: &str| pb::ListAgentsRequest {
        query: q.to_owned(),
        ..Default::default()
    };
    let cases: Vec<(&str, pb::ListAgentsRequest, &[&str])> = vec![
        ("os windows", os("windows"), &["dev-box", "bare"]),
        (
            "os LINUX",
            os("LINUX"),
            &[
                "web-prod-1",
                "db-prod-1",
                "web-dev-1",
                "stage-1",
                "canary-prod",
            ],
        ),
        ("os Darwin", os("Darwin"), &["edge-web"]),
        ("os plan9", os("plan9"), &[]),
        // OS is an exact match, not a substring.
        ("os lin", os("lin"), &[]),
        (
            "query WEB",
            query("WEB"),
            &["web-prod-1", "web-dev-1", "edge-web"],
        ),
        (
            "query prod-1",
            query("prod-1"),
            &["web-prod-1", "db-prod-1"],
        ),
        // The display name counts as well as the hostname.
        ("query mystery", query("mystery"), &["bare"]),
        ("query BARE", query("BARE"), &["bare"]),
        ("query nothing", query("no-such-host"), &[]),
        (
            "os + selector + query",
            pb::ListAgentsRequest {
                os: "linux".to_owned(),
                label_selector: "env=prod".to_owned(),
                query: "prod-1".to_owned(),
                ..Default::default()
            },
            &["web-prod-1", "db-prod-1"],
        ),
        (
            "os + selector",
            pb::ListAgentsRequest {
                os: "windows".to_owned(),
                label_selector: "!env".to_owned(),
                ..Default::default()
            },
            &["bare"],
        ),
    ];
    for (what, req, expected) in cases {
        assert_eq!(hostnames(&mut fleet, req).await, set(expected), "{what}");
    }
    let bare = list_all(&mut fleet, query("mystery")).await;
    assert_eq!(bare.len(), 1);
    assert_eq!(bare[0].name, "Mystery-Machine");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_filter() {
    let (server, _dir) = start().await;
    let ids = enroll_fleet(&server).await;
    let online = [0, 3, 5];
    let mut sessions = Vec::new();
    for &i in &online {
        let (id, credential) = &ids[i];
        let (session, _) = RawSession::hello_with(&server, credential, FLEET[i].hello(id))
            .await
            .expect("session");
        sessions.push(session);
    }
    let mut fleet = server.fleet().await;
    let statuses = |s: &[pb::AgentStatus]| pb::ListAgentsRequest {
        statuses: s.iter().map(|s| *s as i32).collect(),
        ..Default::default()
    };
    use pb::AgentStatus::{Offline, Online, Stale};
    let all = FLEET.map(|m| m.hostname);
    let cases: Vec<(&str, pb::ListAgentsRequest, &[&str])> = vec![
        (
            "online",
            statuses(&[Online]),
            &["web-prod-1", "dev-box", "edge-web"],
        ),
        (
            "offline",
            statuses(&[Offline]),
            &["db-prod-1", "web-dev-1", "stage-1", "bare", "canary-prod"],
        ),
        ("stale", statuses(&[Stale]), &[]),
        ("online or offline", statuses(&[Online, Offline]), &all),
        (
            "online + tier=web",
            pb::ListAgentsRequest {
                label_selector: "tier=web".to_owned(),
                ..statuses(&[Online])
            },
            &["web-prod-1", "edge-web"],
        ),
        (
            "offline + windows",
            pb::ListAgentsRequest {
                os: "windows".to_owned(),
                ..statuses(&[Offline])
            },
            &["bare"],
        ),
    ];
    for (what, req, expected) in cases {
        assert_eq!(hostnames(&mut fleet, req).await, set(expected), "{what}");
    }
    // The sessions kept every label and the OS they enrolled with.
    let web = list_all(&mut fleet, selector("env=prod,tier=web")).await;
    assert_eq!(web.len(), 1);
    assert_eq!(web[0].status, Online as i32);
    drop(sessions);
    server.stop().await;
}

// === paging ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_cover_every_agent_once_in_id_order() {
    let (server, _dir) = start().await;
    let mut ids: Vec<String> = enroll_fleet(&server)
        .await
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    ids.sort();
    let mut fleet = server.fleet().await;

    let mut seen = Vec::new();
    let mut sizes = Vec::new();
    let mut token = String::new();
    loop {
        let page = fleet
            .list_agents(pb::ListAgentsRequest {
                page_size: 3,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .expect("page")
            .into_inner();
        assert_eq!(page.total_size, 8, "total_size on every page");
        sizes.push(page.agents.len());
        seen.extend(page.agents.into_iter().map(|a| a.agent_id));
        if page.next_page_token.is_empty() {
            break;
        }
        assert_ne!(page.next_page_token, token, "the token must move forward");
        token = page.next_page_token;
        assert!(sizes.len() < 10, "paging does not end");
    }
    assert_eq!(sizes, [3, 3, 2]);
    assert_eq!(seen, ids, "every agent exactly once, ascending by id");

    // A filtered listing pages over the matches only.
    let mut matched = Vec::new();
    let mut token = String::new();
    let mut n_pages = 0;
    loop {
        let page = fleet
            .list_agents(pb::ListAgentsRequest {
                label_selector: "env".to_owned(),
                page_size: 4,
                page_token: token,
                ..Default::default()
            })
            .await
            .expect("filtered page")
            .into_inner();
        n_pages += 1;
        assert_eq!(page.total_size, 6);
        matched.extend(page.agents.into_iter().map(|a| a.agent_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(n_pages, 2);
    assert_eq!(matched.len(), 6);
    assert!(matched.windows(2).all(|w| w[0] < w[1]), "{matched:?}");

    // Page size 0 means the default (100), which holds all eight.
    for page_size in [0, 1000, 1001, 5000, i32::MAX] {
        let page = fleet
            .list_agents(pb::ListAgentsRequest {
                page_size,
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("page_size {page_size}: {e:?}"))
            .into_inner();
        let got: Vec<String> = page.agents.into_iter().map(|a| a.agent_id).collect();
        assert_eq!(got, ids, "page_size {page_size}");
        assert!(page.next_page_token.is_empty(), "page_size {page_size}");
        assert_eq!(page.total_size, 8);
    }
    server.stop().await;
}

/// More than 1000 agents: a page size above 1000 is clamped to 1000, not refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_size_above_the_maximum_is_clamped() {
    const N: usize = 1005;
    let (server, _dir) = start().await;
    // One enrollment token per hundred agents keeps each token well inside any per-token
    // request-rate limit.
    let mut clients = Vec::new();
    for _ in 0..N.div_ceil(100) {
        let token = server.enrollment_token().await;
        clients.push(server.agent_client(Some(&token)).await);
    }
    let results: Vec<Result<_, tonic::Status>> = futures::stream::iter(0..N)
        .map(|i| {
            let mut client = clients[i / 100].clone();
            async move {
                client
                    .enroll(pb::EnrollRequest {
                        system_info: Some(system_info(&format!("bulk-{i:04}"))),
                        ..Default::default()
                    })
                    .await
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    for result in results {
        result.expect("bulk enroll");
    }
    let mut fleet = server.fleet().await;
    for page_size in [1001, 5000, i32::MAX] {
        let page = fleet
            .list_agents(pb::ListAgentsRequest {
                page_size,
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("page_size {page_size}: {e:?}"))
            .into_inner();
        assert_eq!(page.agents.len(), 1000, "page_size {page_size}");
        assert_eq!(page.total_size as usize, N);
        assert!(!page.next_page_token.is_empty());
        let rest = fleet
            .list_agents(pb::ListAgentsRequest {
                page_size,
                page_token: page.next_page_token,
                ..Default::default()
            })
            .await
            .expect("second page")
            .into_inner();
        assert_eq!(rest.agents.len(), N - 1000);
        assert!(rest.next_page_token.is_empty());
    }
    // The default page is 100.
    let page = fleet
        .list_agents(pb::ListAgentsRequest::default())
        .await
        .expect("default page")
        .into_inner();
    assert_eq!(page.agents.len(), 100);
    assert_eq!(list_all(&mut fleet, Default::default()).await.len(), N);
    server.stop().await;
}

// === summary and config ===

fn sample_with_cpu(seq: u64, cpu: f64) -> pb::MetricsSample {
    pb::MetricsSample {
        cpu_percent: cpu,
        ..sample(seq)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_summary_counts_status_os_and_health() {
    let (server, _dir) = start().await;
    let machines = [
        ("hot", "linux"),
        ("fine", "linux"),
        ("warm", "Windows"),
        ("quiet", "darwin"),
        ("away", "linux"),
    ];
    let mut ids = HashMap::new();
    for (host, os) in machines {
        let response = server
            .enroll_with(pb::EnrollRequest {
                system_info: Some(pb::SystemInfo {
                    os_name: os.to_owned(),
                    ..system_info(host)
                }),
                ..Default::default()
            })
            .await
            .expect("enroll");
        ids.insert(host, (response.agent_id, response.agent_credential));
    }

    let before = server
        .fleet()
        .await
        .get_fleet_summary(pb::GetFleetSummaryRequest {})
        .await
        .expect("summary")
        .into_inner();
    assert_eq!(before.total, 5);
    assert_eq!(before.offline, 5);
    assert_eq!(before.health_unknown, 5, "no metrics yet: {before:?}");

    let mut sessions = Vec::new();
    // cpu 99 ≥ 95 is critical, 85 ≥ 80 a warning, 10 fine; "quiet" connects without metrics.
    for (host, cpu) in [
        ("hot", Some(99.0)),
        ("fine", Some(10.0)),
        ("warm", Some(85.0)),
        ("quiet", None),
    ] {
        let (id, credential) = &ids[host];
        let os = machines.iter().find(|(h, _)| *h == host).expect("host").1;
        let hello = pb::Hello {
            system_info: Some(pb::SystemInfo {
                os_name: os.to_owned(),
                ..system_info(host)
            }),
            ..tether_tests::hello(id, host, &[])
        };
        let (mut session, _) = RawSession::hello_with(&server, credential, hello)
            .await
            .expect("session");
        if let Some(cpu) = cpu {
            session
                .send(pb::connect_request::Message::Metrics(pb::MetricsReport {
                    samples: vec![sample_with_cpu(1, cpu)],
                }))
                .await;
            session.wait_ack(1).await.expect("ack");
        }
        sessions.push(session);
    }

    let hot = server
        .get_agent(&ids["hot"].0)
        .await
        .expect("hot")
        .agent
        .expect("agent");
    assert_eq!(hot.health, pb::Health::Critical as i32);
    let summary = server
        .fleet()
        .await
        .get_fleet_summary(pb::GetFleetSummaryRequest {})
        .await
        .expect("summary")
        .into_inner();
    let expected = pb::GetFleetSummaryResponse {
        total: 5,
        online: 4,
        stale: 0,
        offline: 1,
        expired: 0,
        by_os: [("linux", 3), ("Windows", 1), ("darwin", 1)]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
        health_ok: 1,
        health_warning: 1,
        health_critical: 1,
        health_unknown: 2,
    };
    assert_eq!(summary, expected);
    drop(sessions);
    server.stop().await;
}

fn dur(d: Duration) -> Option<prost_types::Duration> {
    Some(prost_types::Duration::try_from(d).expect("duration"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_config_is_the_configured_one() {
    trace_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = fast_config(dir.path());
    // Values unlike any default, so a hard-coded answer cannot pass.
    config.liveness.heartbeat_interval = Duration::from_millis(300);
    config.liveness.metrics_interval = Duration::from_millis(700);
    config.liveness.stale_after = Duration::from_millis(1500);
    config.liveness.offline_after = Duration::from_secs(4);
    config.liveness.fleet_ttl = Duration::from_secs(7200);
    config.storage.metrics_retention = Duration::from_secs(3 * 86_400);
    config.health.cpu_warning = 70.0;
    config.health.cpu_critical = 90.0;
    config.health.memory_warning = 75.0;
    config.health.memory_critical = 92.0;
    config.health.disk_warning = 60.0;
    config.health.disk_critical = 97.0;
    config.limits.max_message_bytes = 123_456;
    config.limits.max_labels = 17;
    config.limits.max_label_key_bytes = 40;
    config.limits.max_label_value_bytes = 99;
    let server = TestServer::start(config.clone()).await;

    let got = server
        .fleet()
        .await
        .get_server_config(pb::GetServerConfigRequest {})
        .await
        .expect("config")
        .into_inner();
    assert!(!got.server_version.is_empty());
    assert!(!got.features.is_empty());
    let expected = pb::GetServerConfigResponse {
        server_version: got.server_version.clone(),
        heartbeat_interval: dur(config.liveness.heartbeat_interval),
        metrics_interval: dur(config.liveness.metrics_interval),
        stale_after: dur(config.liveness.stale_after),
        offline_after: dur(config.liveness.offline_after),
        fleet_ttl: dur(config.liveness.fleet_ttl),
        metrics_retention: dur(config.storage.metrics_retention),
        health_thresholds: Some(pb::HealthThresholds {
            cpu_warning_percent: 70.0,
            cpu_critical_percent: 90.0,
            memory_warning_percent: 75.0,
            memory_critical_percent: 92.0,
            disk_warning_percent: 60.0,
            disk_critical_percent: 97.0,
        }),
        max_message_bytes: 123_456,
        max_labels: 17,
        max_label_key_bytes: 40,
        max_label_value_bytes: 99,
        features: got.features.clone(),
    };
    assert_eq!(got, expected);

    // The Welcome agrees with it.
    let (id, credential) = server.enroll("cfg-1", &[]).await;
    let (_session, welcome) = RawSession::hello(&server, &id, &credential, "cfg-1")
        .await
        .expect("session");
    assert_eq!(welcome.heartbeat_interval, expected.heartbeat_interval);
    assert_eq!(welcome.metrics_interval, expected.metrics_interval);
    assert_eq!(welcome.stale_after, expected.stale_after);
    assert_eq!(welcome.offline_after, expected.offline_after);
    server.stop().await;
}

// === enrollment identity ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reenrolling_a_disconnected_machine_keeps_its_id_and_replaces_the_credential() {
    let (server, _dir) = start().await;
    let request = pb::EnrollRequest {
        system_info: Some(system_info("phoenix")),
        labels: labels(&[("env", "prod")]),
        name: String::new(),
    };
    let first = server.enroll_with(request.clone()).await.expect("enroll");
    let (mut session, _) = RawSession::hello_with(
        &server,
        &first.agent_credential,
        tether_tests::hello(&first.agent_id, "phoenix", &[("env", "prod")]),
    )
    .await
    .expect("session");
    session.send_samples([1, 2]).await;
    session.wait_ack(2).await.expect("ack");
    drop(session.close());
    let before = server
        .wait_status(&first.agent_id, pb::AgentStatus::Offline)
        .await;

    // The machine lost its state directory and enrolls again.
    let second = server.enroll_with(request).await.expect("re-enroll");
    assert_eq!(second.agent_id, first.agent_id, "same machine, same id");
    assert_ne!(second.agent_credential, first.agent_credential);

    let status = match RawSession::hello_with(
        &server,
        &first.agent_credential,
        tether_tests::hello(&first.agent_id, "phoenix", &[("env", "prod")]),
    )
    .await
    {
        Ok(_) => panic!("the replaced credential still connects"),
        Err(status) => status,
    };
    // A revoked agent credential is refused as PERMISSION_DENIED, which the agent does not
    // retry: an old copy of the machine must enroll again rather than fight for the identity.
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");

    let (_session, welcome) = RawSession::hello_with(
        &server,
        &second.agent_credential,
        tether_tests::hello(&second.agent_id, "phoenix", &[("env", "prod")]),
    )
    .await
    .expect("the new credential connects");
    assert_eq!(welcome.last_durable_seq, 2, "the machine's history is kept");

    let mut fleet = server.fleet().await;
    let all = list_all(&mut fleet, Default::default()).await;
    assert_eq!(all.len(), 1, "still one machine");
    let agent = &all[0];
    assert!(!agent.duplicate_hardware_id);
    assert_eq!(
        agent.enrolled_at, before.enrolled_at,
        "first enrollment kept"
    );
    assert_eq!(agent.labels, labels(&[("env", "prod")]));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reenrolling_a_connected_hardware_id_makes_a_flagged_duplicate() {
    let (server, _dir) = start().await;
    let request = pb::EnrollRequest {
        system_info: Some(system_info("clone")),
        ..Default::default()
    };
    let first = server.enroll_with(request.clone()).await.expect("enroll");
    let (other_id, _) = server.enroll("unrelated", &[]).await;
    let (mut session, _) =
        RawSession::hello(&server, &first.agent_id, &first.agent_credential, "clone")
            .await
            .expect("session");

    // A cloned image enrolls while the original is connected.
    let second = server.enroll_with(request).await.expect("enroll clone");
    assert_ne!(
        second.agent_id, first.agent_id,
        "a live machine keeps its id"
    );

    for id in [&first.agent_id, &second.agent_id] {
        let agent = server
            .get_agent(id)
            .await
            .expect("get")
            .agent
            .expect("agent");
        assert!(agent.duplicate_hardware_id, "GetAgent {id}");
    }
    let other = server
        .get_agent(&other_id)
        .await
        .expect("get")
        .agent
        .expect("agent");
    assert!(!other.duplicate_hardware_id);
    let mut fleet = server.fleet().await;
    let flagged: BTreeSet<String> = list_all(&mut fleet, Default::default())
        .await
        .into_iter()
        .filter(|a| a.duplicate_hardware_id)
        .map(|a| a.agent_id)
        .collect();
    assert_eq!(
        flagged,
        BTreeSet::from([first.agent_id.clone(), second.agent_id.clone()])
    );

    // The original's session and credential were not disturbed.
    session
        .send(pb::connect_request::Message::Ping(pb::Ping {
            nonce: 42,
            sent_at: None,
        }))
        .await;
    match session.recv().await.expect("pong") {
        Some(pb::connect_response::Message::Pong(pong)) => assert_eq!(pong.nonce, 42),
        other => panic!("expected Pong, got {other:?}"),
    }
    let (_clone_session, _) =
        RawSession::hello(&server, &second.agent_id, &second.agent_credential, "clone")
            .await
            .expect("the clone connects as itself");
    let original = server
        .get_agent(&first.agent_id)
        .await
        .expect("get")
        .agent
        .expect("agent");
    assert_eq!(original.status, pb::AgentStatus::Online as i32);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrollment_token_labels_win_over_the_agents_own() {
    let (server, _dir) = start().await;
    let secret = server
        .admin()
        .await
        .create_enrollment_token(pb::CreateEnrollmentTokenRequest {
            labels: labels(&[("env", "prod"), ("team", "core")]),
            ..Default::default()
        })
        .await
        .expect("token")
        .into_inner()
        .secret;
    let enrolled = server
        .agent_client(Some(&secret))
        .await
        .enroll(pb::EnrollRequest {
            system_info: Some(system_info("pinned")),
            labels: labels(&[("env", "dev"), ("role", "web")]),
            name: String::new(),
        })
        .await
        .expect("enroll")
        .into_inner();
    let agent = server
        .get_agent(&enrolled.agent_id)
        .await
        .expect("get")
        .agent
        .expect("agent");
    assert_eq!(
        agent.labels,
        labels(&[("env", "prod"), ("team", "core"), ("role", "web")]),
        "at enrollment"
    );

    // The agent's Hello tries to override the pinned labels.
    let (_session, _) = RawSession::hello_with(
        &server,
        &enrolled.agent_credential,
        tether_tests::hello(
            &enrolled.agent_id,
            "pinned",
            &[
                ("env", "test"),
                ("team", "x"),
                ("role", "db"),
                ("extra", "one"),
            ],
        ),
    )
    .await
    .expect("session");
    let expected = labels(&[
        ("env", "prod"),
        ("team", "core"),
        ("role", "db"),
        ("extra", "one"),
    ]);
    let agent = server
        .get_agent(&enrolled.agent_id)
        .await
        .expect("get")
        .agent
        .expect("agent");
    assert_eq!(agent.labels, expected, "after Hello");
    let mut fleet = server.fleet().await;
    assert_eq!(
        list_all(&mut fleet, selector("env=prod,role=db"))
            .await
            .len(),
        1
    );
    assert!(list_all(&mut fleet, selector("env=test")).await.is_empty());
    server.stop().await;
}

// === metrics ===

async fn metrics(fleet: &mut FleetClient, request: pb::GetMetricsRequest) -> Vec<pb::MetricsPoint> {
    fleet
        .get_metrics(request)
        .await
        .expect("metrics")
        .into_inner()
        .points
}

fn at(t0: SystemTime, secs: u64) -> SystemTime {
    t0 + Duration::from_secs(secs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_metrics_averages_into_steps() {
    let (server, _dir) = start().await;
    let (id, credential) = server.enroll("metered", &[]).await;
    let (mut session, _) = RawSession::hello(&server, &id, &credential, "metered")
        .await
        .expect("session");

    // A whole second ten minutes ago, so that step boundaries are easy to name.
    let now_secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(now_secs - 600);
    // (offset s, cpu); the network counter grows 100 bytes per second throughout.
    let points: [(i64, f64); 8] = [
        (-5, 99.0), // before the range
        (1, 10.0),
        (20, 20.0),
        (40, 60.0),
        (70, 50.0),
        (80, 70.0),
        (150, 5.0),
        (200, 99.0), // after the range
    ];
    let samples: Vec<pb::MetricsSample> = points
        .iter()
        .enumerate()
        .map(|(i, (offset, cpu))| {
            let time = if *offset < 0 {
                t0 - Duration::from_secs(offset.unsigned_abs())
            } else {
                at(t0, offset.unsigned_abs())
            };
            pb::MetricsSample {
                time: Some(time.into()),
                cpu_percent: *cpu,
                network_rx_bytes: u64::try_from(1000 + 100 * offset).expect("positive"),
                ..sample(i as u64 + 1)
            }
        })
        .collect();
    session
        .send(pb::connect_request::Message::Metrics(pb::MetricsReport {
            samples,
        }))
        .await;
    session.wait_ack(8).await.expect("ack");

    let mut fleet = server.fleet().await;
    let range = |step: Duration| pb::GetMetricsRequest {
        agent_id: id.clone(),
        start: Some(t0.into()),
        end: Some(at(t0, 180).into()),
        step: dur(step),
    };

    let stepped = metrics(&mut fleet, range(Duration::from_secs(60))).await;
    let summary: Vec<(SystemTime, u32, f64)> = stepped
        .iter()
        .map(|p| {
            (
                SystemTime::try_from(p.time.expect("time")).expect("valid"),
                p.sample_count,
                p.cpu_percent,
            )
        })
        .collect();
    assert_eq!(
        summary,
        [(t0, 3, 30.0), (at(t0, 60), 2, 60.0), (at(t0, 120), 1, 5.0)]
    );
    for p in &stepped {
        assert_eq!(p.memory_used_bytes, 100);
        assert_eq!(p.memory_total_bytes, 1000);
        assert!(
            (p.network_rx_bytes_per_second - 100.0).abs() < 1e-6,
            "rx rate {p:?}"
        );
    }

    let raw = metrics(&mut fleet, range(Duration::ZERO)).await;
    let cpus: Vec<(SystemTime, u32, f64)> = raw
        .iter()
        .map(|p| {
            (
                SystemTime::try_from(p.time.expect("time")).expect("valid"),
                p.sample_count,
                p.cpu_percent,
            )
        })
        .collect();
    assert_eq!(
        cpus,
        [
            (at(t0, 1), 1, 10.0),
            (at(t0, 20), 1, 20.0),
            (at(t0, 40), 1, 60.0),
            (at(t0, 70), 1, 50.0),
            (at(t0, 80), 1, 70.0),
            (at(t0, 150), 1, 5.0),
        ]
    );
    // Without a range, the last hour up to now: everything but nothing in the future.
    let default_range = metrics(
        &mut fleet,
        pb::GetMetricsRequest {
            agent_id: id.clone(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(default_range.len(), 8);
    eventually("the latest sample to be the newest by seq", || {
        let server = &server;
        let id = id.clone();
        async move {
            let agent = server.get_agent(&id).await.ok()?.agent?;
            (agent.latest_metrics?.seq == 8).then_some(())
        }
    })
    .await;
    server.stop().await;
}
