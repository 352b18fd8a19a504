//! The agent's side of events, end to end: a real server, real agents and their real event
//! sockets. What a program reports with `emit` is stored and listed; the spool keeps events
//! across an agent restart and a server outage, drops the lowest severity first when full and
//! says so; bad input is refused with a clear error; the socket is private.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use tether_agent::events::{EmitError, EmitRequest, EventsConfig};
use tether_proto as pb;
use tether_tests::{
    EVENTUALLY, TestAgent, TestServer, agent_config, eventually, eventually_within, fast_config,
    trace_init,
};

/// Server settings for these tests: short intervals, the default event rate.
fn server_config(data_dir: &Path) -> tether_server::config::Config {
    fast_config(data_dir)
}

/// Server settings for a test that floods the spool: thousands of events within seconds are
/// over any sane rate, and the spool, not the server's rate limit, is under test.
fn flood_server_config(data_dir: &Path) -> tether_server::config::Config {
    let mut config = fast_config(data_dir);
    config.events.rate_per_minute = 1_000_000;
    config
}

/// Every stored event of `agent_id`, newest first, over all pages.
async fn list_events(server: &TestServer, agent_id: &str) -> Vec<pb::Event> {
    let mut client = server.events().await;
    let mut events = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_events(pb::ListEventsRequest {
                filter: Some(pb::EventFilter {
                    agent_ids: vec![agent_id.to_owned()],
                    ..Default::default()
                }),
                page_size: 1000,
                page_token,
            })
            .await
            .expect("list events")
            .into_inner();
        events.extend(page.events);
        if page.next_page_token.is_empty() {
            return events;
        }
        page_token = page.next_page_token;
    }
}

fn request(kind: &str, severity: &str, message: &str) -> EmitRequest {
    EmitRequest {
        kind: kind.into(),
        severity: severity.into(),
        message: message.into(),
        attributes: [("source".to_owned(), "test".to_owned())].into(),
        fingerprint: None,
    }
}

/// `tether-agent emit`'s code (the binary only parses flags around it), on a blocking thread.
async fn emit(socket: &Path, request: EmitRequest) -> Result<u64, EmitError> {
    let socket = socket.to_path_buf();
    tokio::task::spawn_blocking(move || tether_agent::events::emit(&socket, &request))
        .await
        .expect("emit ran")
}

async fn start_agent(server: &TestServer, hostname: &str, events: EventsConfig) -> TestAgent {
    let state = tempfile::tempdir().expect("agent state dir");
    let mut config = agent_config(
        &server.url,
        state.path(),
        &[],
        Some(server.enrollment_token().await),
    );
    config.events = events;
    TestAgent::spawn_with(config, state, hostname, "linux")
}

fn socket_of(agent: &TestAgent) -> std::path::PathBuf {
    agent.state_dir.path().join("events.sock")
}

#[tokio::test]
async fn an_emitted_event_is_listed_with_everything_it_said() {
    trace_init();
    let data = tempfile::tempdir().expect("data dir");
    let server = TestServer::start(server_config(data.path())).await;
    let agent = start_agent(&server, "emitter", EventsConfig::default()).await;
    let agent_id = agent.id().await;
    let socket = socket_of(&agent);
    eventually("the event socket", || async {
        socket.exists().then_some(())
    })
    .await;
    let mode = std::fs::metadata(&socket)
        .expect("socket")
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o777,
        0o600,
        "only the agent's user may report events"
    );

    let seq = emit(
        &socket,
        EmitRequest {
            attributes: [
                ("user".to_owned(), "root".to_owned()),
                ("from".to_owned(), "10.0.0.7".to_owned()),
            ]
            .into(),
            fingerprint: Some("ssh:root".into()),
            ..request("ssh.login_failed", "warning", "failed password for root")
        },
    )
    .await
    .expect("the agent accepts the event");
    let event = eventually("the event to be listed", || async {
        list_events(&server, &agent_id)
            .await
            .into_iter()
            .find(|event| event.kind == "ssh.login_failed")
    })
    .await;
    assert_eq!(event.seq, seq);
    assert_eq!(event.severity, pb::EventSeverity::Warning as i32);
    assert_eq!(event.message, "failed password for root");
    assert_eq!(event.attributes["user"], "root");
    assert_eq!(event.attributes["from"], "10.0.0.7");
    assert_eq!(event.fingerprint, "ssh:root");
    assert_eq!(event.agent_id, agent_id);
    // The agent's own start is an event too, and everything sent was acknowledged.
    let events = list_events(&server, &agent_id).await;
    assert!(
        events
            .iter()
            .any(|event| event.kind == "tether.agent_started")
    );
    eventually("the spool to drain", || async {
        (agent.handle.stats.events_acked_seq() >= seq).then_some(())
    })
    .await;
    agent.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn bad_input_gets_a_clear_error_and_nothing_is_stored() {
    trace_init();
    let data = tempfile::tempdir().expect("data dir");
    let server = TestServer::start(server_config(data.path())).await;
    let agent = start_agent(&server, "strict", EventsConfig::default()).await;
    let agent_id = agent.id().await;
    let socket = socket_of(&agent);
    eventually("the event socket", || async {
        socket.exists().then_some(())
    })
    .await;
    let cases = [
        (request("Disk Full", "error", "x"), "dotted name"),
        (request("disk.full", "fatal", "x"), "severity"),
        (request("tether.agent_started", "info", "x"), "reserved"),
        (request("disk.full", "error", "bell\u{7}"), "control"),
        (
            EmitRequest {
                attributes: [("not a key".to_owned(), "v".to_owned())].into(),
                ..request("disk.full", "error", "x")
            },
            "attribute",
        ),
        (
            request(
                "disk.full",
                "error",
                &"x".repeat(tether_proto::event::MAX_MESSAGE_BYTES + 1),
            ),
            "message",
        ),
    ];
    for (bad, words) in cases {
        match emit(&socket, bad.clone()).await {
            Err(EmitError::Invalid(message)) => {
                assert!(message.contains(words), "{message:?} should say {words:?}");
            }
            other => panic!("{:?} was not refused: {other:?}", bad.kind),
        }
    }
    // A program that skips `emit`'s own check hears the same from the agent.
    let raw = serde_json::to_string(&request("Disk Full", "error", "x")).expect("json");
    let answer = {
        use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
        let mut stream = tokio::net::UnixStream::connect(&socket)
            .await
            .expect("connect");
        stream
            .write_all(format!("{raw}\n").as_bytes())
            .await
            .expect("write");
        let mut line = String::new();
        tokio::io::BufReader::new(stream)
            .read_line(&mut line)
            .await
            .expect("answer");
        line
    };
    let answer: serde_json::Value = serde_json::from_str(&answer).expect("a JSON answer");
    assert_eq!(answer["ok"], false);
    assert_eq!(answer["code"], "invalid_argument");
    assert!(
        answer["error"]
            .as_str()
            .is_some_and(|e| e.contains("dotted name"))
    );

    let good = emit(&socket, request("disk.full", "error", "disk / is full"))
        .await
        .expect("a good event after bad ones");
    eventually("the good event to be acknowledged", || async {
        (agent.handle.stats.events_acked_seq() >= good).then_some(())
    })
    .await;
    let kinds: Vec<String> = list_events(&server, &agent_id)
        .await
        .into_iter()
        .map(|event| event.kind)
        .collect();
    assert!(kinds.contains(&"disk.full".to_owned()));
    assert!(
        kinds
            .iter()
            .all(|kind| kind == "disk.full" || kind.starts_with("tether.")),
        "{kinds:?}"
    );
    assert_eq!(agent.handle.stats.events_rejected(), 0);
    agent.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn spooled_events_survive_an_agent_restart_and_a_server_outage() {
    trace_init();
    let data = tempfile::tempdir().expect("data dir");
    let server = TestServer::start(server_config(data.path())).await;
    let addr = server.addr;
    let agent = start_agent(&server, "patient", EventsConfig::default()).await;
    let agent_id = agent.id().await;
    let url = server.url.clone();
    eventually("the first session", || async {
        agent.handle.stats.connected().then_some(())
    })
    .await;
    server.stop().await;
    eventually("the agent to notice", || async {
        (!agent.handle.stats.connected()).then_some(())
    })
    .await;

    // While the server is away: events before and after a restart of the agent.
    let socket = socket_of(&agent);
    let mut seqs = Vec::new();
    for n in 0..150 {
        let message = format!("before the restart {n}");
        seqs.push(
            emit(&socket, request("app.job_done", "info", &message))
                .await
                .expect("spooled"),
        );
    }
    let state = agent.stop().await;
    let config = {
        let mut config = agent_config(&url, state.path(), &[], None);
        config.events = EventsConfig::default();
        config
    };
    let agent = TestAgent::spawn_with(config, state, "patient", "linux");
    eventually("the restarted agent's socket", || async {
        std::os::unix::net::UnixStream::connect(&socket).ok()
    })
    .await;
    for n in 0..150 {
        let message = format!("after the restart {n}");
        seqs.push(
            emit(&socket, request("app.job_done", "error", &message))
                .await
                .expect("spooled"),
        );
    }
    assert!(
        seqs.windows(2).all(|pair| pair[0] < pair[1]),
        "seqs never go back"
    );
    assert!(agent.handle.stats.events_pending() > 0);

    // The server comes back: every spooled event arrives, once.
    let server = TestServer::start_at(addr, server_config(data.path())).await;
    let last = *seqs.last().expect("events");
    eventually_within(
        EVENTUALLY * 3,
        "every spooled event to be acknowledged",
        || async { (agent.handle.stats.events_acked_seq() >= last).then_some(()) },
    )
    .await;
    let stored: Vec<u64> = list_events(&server, &agent_id)
        .await
        .into_iter()
        .filter(|event| event.kind == "app.job_done")
        .map(|event| event.seq)
        .collect();
    let mut stored_sorted = stored.clone();
    stored_sorted.sort_unstable();
    assert_eq!(stored_sorted, seqs, "each event exactly once");
    let kinds: Vec<String> = list_events(&server, &agent_id)
        .await
        .into_iter()
        .map(|event| event.kind)
        .collect();
    assert!(kinds.contains(&"tether.agent_stopped".to_owned()));
    assert_eq!(
        kinds
            .iter()
            .filter(|kind| *kind == "tether.agent_started")
            .count(),
        2,
        "one start per process"
    );
    agent.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn a_full_spool_drops_the_lowest_severity_first_and_reports_it() {
    trace_init();
    let data = tempfile::tempdir().expect("data dir");
    let server = TestServer::start(flood_server_config(data.path())).await;
    let addr = server.addr;
    let small = EventsConfig {
        spool_bytes: tether_agent::events::spool::MIN_SPOOL_BYTES,
        rate_limit: 1_000_000,
        ..EventsConfig::default()
    };
    let agent = start_agent(&server, "flooded", small).await;
    let agent_id = agent.id().await;
    eventually("the first session", || async {
        agent.handle.stats.connected().then_some(())
    })
    .await;
    server.stop().await;
    eventually("the agent to notice", || async {
        (!agent.handle.stats.connected()).then_some(())
    })
    .await;
    let socket = socket_of(&agent);
    let mut critical = Vec::new();
    let mut n = 0;
    // Info and critical events in turn until the spool had to drop some.
    while agent.handle.stats.events_dropped() < 200 {
        let message = format!("routine event {n} {}", "-".repeat(200));
        emit(&socket, request("app.heartbeat", "info", &message))
            .await
            .expect("info is accepted while there is info to drop");
        if n % 4 == 0 {
            critical.push(
                emit(
                    &socket,
                    request("app.breach", "critical", &format!("breach {n}")),
                )
                .await
                .expect("critical is never dropped for info"),
            );
        }
        n += 1;
        assert!(n < 20_000, "the spool never filled");
    }
    let n_dropped = agent.handle.stats.events_dropped();

    let server = TestServer::start_at(addr, flood_server_config(data.path())).await;
    let report = eventually_within(EVENTUALLY * 3, "the drop report", || async {
        list_events(&server, &agent_id)
            .await
            .into_iter()
            .find(|event| event.kind == "tether.events_dropped")
    })
    .await;
    let last = *critical.last().expect("critical events");
    eventually_within(EVENTUALLY * 3, "the spool to drain", || async {
        (agent.handle.stats.events_acked_seq() >= last).then_some(())
    })
    .await;
    let events = list_events(&server, &agent_id).await;
    let mut stored_critical: Vec<u64> = events
        .iter()
        .filter(|event| event.kind == "app.breach")
        .map(|event| event.seq)
        .collect();
    stored_critical.sort_unstable();
    assert_eq!(stored_critical, critical, "no critical event was dropped");
    let n_info = events
        .iter()
        .filter(|event| event.kind == "app.heartbeat")
        .count() as u64;
    assert!(n_info < n, "info events were dropped");
    // The reports add up to the drops, all of them info.
    let reported: u64 = events
        .iter()
        .filter(|event| event.kind == "tether.events_dropped")
        .map(|event| {
            event.attributes["dropped_info"]
                .parse::<u64>()
                .expect("count")
        })
        .sum();
    assert!(
        reported >= 200 && reported <= n_dropped,
        "{reported} of {n_dropped}"
    );
    assert_eq!(report.attributes["dropped_critical"], "0");
    assert!(report.severity >= pb::EventSeverity::Warning as i32);
    agent.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn a_usage_threshold_raises_one_event_while_it_lasts() {
    trace_init();
    let data = tempfile::tempdir().expect("data dir");
    let server = TestServer::start(server_config(data.path())).await;
    // The synthetic machine's memory usage is far above 1 %: the event fires at once, and
    // while usage stays there, every sample is at the threshold: one event, not one per sample.
    let mut config = EventsConfig::default();
    config.memory.percent = 1.0;
    let agent = start_agent(&server, "busy", config).await;
    let agent_id = agent.id().await;
    eventually("the memory event", || async {
        list_events(&server, &agent_id)
            .await
            .into_iter()
            .find(|event| event.kind == "tether.memory_usage_high")
    })
    .await;
    let taken = agent.handle.stats.samples_taken();
    eventually("ten more samples", || async {
        (agent.handle.stats.samples_taken() >= taken + 10).then_some(())
    })
    .await;
    let raised = list_events(&server, &agent_id)
        .await
        .into_iter()
        .filter(|event| event.kind == "tether.memory_usage_high")
        .map(|event| event.count)
        .sum::<u64>();
    assert_eq!(raised, 1);
    agent.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn an_emit_without_an_agent_says_so() {
    let dir = tempfile::tempdir().expect("dir");
    let missing = dir.path().join("events.sock");
    let Err(EmitError::Unavailable(message)) =
        emit(&missing, request("app.started", "info", "hello")).await
    else {
        panic!("emit without an agent must fail");
    };
    assert!(message.contains("events.sock"), "{message}");
}
