//! Events end to end: agents report over the real `Connect` stream, clients read, change, watch
//! and count them over `EventService`, against a real server on a real socket.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use tether_proto as pb;
use tether_tests::{EventClient, RawSession, TestServer, agent_event, eventually, fast_config};
use tonic::Code;

mod ingest;
mod lifecycle;
mod live;
mod stats;
mod watch;

/// A started server with its data directory.
struct World {
    server: TestServer,
    _dir: tempfile::TempDir,
}

impl World {
    async fn new() -> Self {
        Self::with(|_| {}).await
    }

    async fn with(change: impl FnOnce(&mut tether_server::config::Config)) -> Self {
        tether_tests::trace_init();
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = fast_config(dir.path());
        change(&mut config);
        Self {
            server: TestServer::start(config).await,
            _dir: dir,
        }
    }

    /// Enrolls `host` and opens its session; returns the agent id, credential, session and
    /// the Welcome.
    async fn agent(&self, host: &str) -> (String, String, RawSession, pb::Welcome) {
        let (id, credential) = self.server.enroll(host, &[]).await;
        let (session, welcome) = RawSession::hello(&self.server, &id, &credential, host)
            .await
            .expect("session");
        (id, credential, session, welcome)
    }

    async fn events(&self) -> EventClient {
        self.server.events().await
    }

    async fn stop(self) {
        self.server.stop().await;
    }
}

/// An event of `kind` at `time`.
fn event_at(seq: u64, kind: &str, severity: pb::EventSeverity, time: SystemTime) -> pb::AgentEvent {
    pb::AgentEvent {
        time: Some(time.into()),
        ..agent_event(seq, kind, severity)
    }
}

/// Every event matching `filter`, following pages.
async fn list_all(client: &EventClient, filter: pb::EventFilter) -> Vec<pb::Event> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .clone()
            .list_events(pb::ListEventsRequest {
                filter: Some(filter.clone()),
                page_size: 7,
                page_token: token,
            })
            .await
            .expect("list events")
            .into_inner();
        out.extend(page.events);
        if page.next_page_token.is_empty() {
            return out;
        }
        token = page.next_page_token;
    }
}

fn attributes(pairs: &[(&str, &str)]) -> std::collections::HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// `(kind, count)` pairs, most first, ties by name: how the server ranks.
fn ranked(counts: BTreeMap<String, u64>) -> Vec<(String, u64)> {
    let mut all: Vec<_> = counts.into_iter().collect();
    all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reported_event_round_trips_to_list_and_get() {
    let world = World::new().await;
    let (id, _, mut session, welcome) = world.agent("round-trip").await;
    assert_eq!(welcome.last_durable_event_seq, 0);
    let mut event = agent_event(1, "ssh.login_failed", pb::EventSeverity::Warning);
    event.attributes = attributes(&[("user", "root"), ("source", "10.0.0.7")]);
    let ack = session
        .report_events(vec![event.clone()])
        .await
        .expect("ack");
    assert_eq!((ack.durable_seq, ack.rejected), (1, vec![]));
    let client = world.events().await;
    let listed = list_all(&client, pb::EventFilter::default()).await;
    assert_eq!(listed.len(), 1);
    let got = &listed[0];
    assert_eq!(
        (got.agent_id.as_str(), got.kind.as_str(), got.count, got.seq),
        (id.as_str(), "ssh.login_failed", 1, 1)
    );
    assert_eq!(got.attributes, event.attributes);
    assert_eq!(got.state, pb::EventState::New as i32);
    assert_eq!(got.message, event.message);
    let fetched = client
        .clone()
        .get_event(pb::GetEventRequest {
            event_id: got.event_id.clone(),
        })
        .await
        .expect("get event")
        .into_inner()
        .event
        .expect("event");
    assert_eq!(&fetched, got);
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tetherctl_lists_acknowledges_and_counts_events() {
    let world = World::new().await;
    let (id, _, mut session, _) = world.agent("cli").await;
    session
        .report_events(vec![
            agent_event(1, "ssh.login_failed", pb::EventSeverity::Warning),
            agent_event(2, "ssh.root", pb::EventSeverity::Critical),
            agent_event(3, "disk.full", pb::EventSeverity::Error),
        ])
        .await
        .expect("ack");
    let url = world.server.url.clone();
    let token = world.server.admin_token.clone();
    let cli = |args: Vec<&'static str>| {
        let (url, token) = (url.clone(), token.clone());
        async move { tether_tests::cli_at(&url, &token, &args).await }
    };

    let listed = cli(vec!["events", "list", "-o", "json"])
        .await
        .expect("list");
    let listed: Vec<serde_json::Value> = serde_json::from_str(&listed).expect("json");
    assert_eq!(listed.len(), 3);
    assert!(listed.iter().all(|e| e["agent_id"] == id.as_str()));
    let csv = cli(vec!["events", "list", "--kind", "ssh.*", "-o", "csv"])
        .await
        .expect("csv");
    assert_eq!(csv.lines().count(), 3, "header and two ssh events: {csv}");

    let refused = cli(vec!["events", "ack"])
        .await
        .expect_err("no ids, no selector");
    assert!(
        matches!(refused, tetherctl::CliError::Usage(_)),
        "{refused:?}"
    );
    let acked = cli(vec![
        "events",
        "ack",
        "--kind",
        "ssh.*",
        "--min-severity",
        "critical",
    ])
    .await
    .expect("ack");
    assert_eq!(acked.trim(), "1 events acknowledged");
    let new = cli(vec!["events", "list", "--state", "new", "-o", "json"])
        .await
        .expect("list");
    let new: Vec<serde_json::Value> = serde_json::from_str(&new).expect("json");
    assert_eq!(new.len(), 2);

    let stats = cli(vec!["events", "stats", "--since", "2h", "-o", "json"])
        .await
        .expect("stats");
    let stats: serde_json::Value = serde_json::from_str(&stats).expect("json");
    assert_eq!(stats["total"], 3);
    assert_eq!(stats["top_kinds"].as_array().map(Vec::len), Some(3));
    let table = cli(vec!["events", "stats"]).await.expect("stats table");
    assert!(
        table.contains("TOP KIND") && table.contains("disk.full"),
        "{table}"
    );

    let qr = cli(vec!["enroll-token", "create", "--qr"])
        .await
        .expect("enroll-token --qr");
    assert!(qr.contains("tether-agent --server"), "{qr}");
    assert!(qr.contains('▀') || qr.contains('▄'), "{qr}");
    world.stop().await;
}
