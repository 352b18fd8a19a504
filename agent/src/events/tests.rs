//! The event subsystem over a real socket: binding, the protocol, `emit`, the rate limit.

use std::os::unix::fs::PermissionsExt as _;
use std::time::Duration;

use super::*;
use crate::events::socket::{EmitResponse, MAX_LINE_BYTES, SocketListener};

struct Fixture {
    dir: tempfile::TempDir,
    events: Events,
    socket: std::path::PathBuf,
    server: tokio::task::JoinHandle<()>,
}

impl Fixture {
    fn start(config: EventsConfig) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let events =
            Events::open(&config, dir.path(), Arc::new(AgentStats::new())).expect("open events");
        let socket = config.socket_path(dir.path());
        let listener = SocketListener::bind(&socket, None).expect("bind");
        let serving = events.clone();
        let server = tokio::spawn(async move {
            tokio::select! {
                never = socket::serve(listener, serving.clone()) => match never {},
                never = serving.report_rate_limits() => match never {},
            }
        });
        Self {
            dir,
            events,
            socket,
            server,
        }
    }

    async fn emit(&self, request: EmitRequest) -> Result<u64, EmitError> {
        let socket = self.socket.clone();
        tokio::task::spawn_blocking(move || emit(&socket, &request))
            .await
            .expect("emit ran")
    }

    async fn spooled(&self) -> Vec<SpooledEvent> {
        self.events.read(0).await.expect("read the spool")
    }

    /// Sends raw bytes and reads the answer lines until the agent closes or `n` arrived.
    async fn raw(&self, bytes: Vec<u8>, n: usize) -> Vec<EmitResponse> {
        use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .expect("connect");
        let (reader, mut writer) = stream.into_split();
        writer.write_all(&bytes).await.expect("write");
        let mut lines = tokio::io::BufReader::new(reader).lines();
        let mut answers = Vec::new();
        while answers.len() < n {
            match lines.next_line().await.expect("read") {
                Some(line) => answers.push(serde_json::from_str(&line).expect("an answer")),
                None => break,
            }
        }
        answers
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn request(kind: &str, severity: &str) -> EmitRequest {
    EmitRequest {
        kind: kind.into(),
        severity: severity.into(),
        message: "something happened".into(),
        attributes: [("user".to_owned(), "root".to_owned())].into(),
        fingerprint: Some("ssh:root".into()),
    }
}

#[tokio::test]
async fn an_emitted_event_is_spooled_with_its_seq() {
    let fixture = Fixture::start(EventsConfig::default());
    let mode = std::fs::metadata(&fixture.socket)
        .expect("socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "only the agent's user may connect");
    let seq = fixture
        .emit(request("ssh.login_failed", "warning"))
        .await
        .expect("accepted");
    let second = fixture
        .emit(request("ssh.login_failed", "critical"))
        .await
        .expect("accepted");
    assert_eq!(second, seq + 1);
    let spooled = fixture.spooled().await;
    assert_eq!(spooled.len(), 2);
    assert_eq!(spooled[0].seq, seq);
    let event = &spooled[0].event;
    assert_eq!(event.kind, "ssh.login_failed");
    assert_eq!(event.severity, Severity::Warning);
    assert_eq!(event.attributes["user"], "root");
    assert_eq!(event.fingerprint.as_deref(), Some("ssh:root"));
    assert_eq!(spooled[1].event.severity, Severity::Critical);
}

#[tokio::test]
async fn bad_events_get_a_clear_error_and_store_nothing() {
    let fixture = Fixture::start(EventsConfig::default());
    let cases = [
        (request("SSH Login", "warning"), "dotted name"),
        (request("ssh.login", "fatal"), "severity"),
        (request("tether.agent_started", "info"), "reserved"),
        (
            EmitRequest {
                attributes: [("bad key".to_owned(), "v".to_owned())].into(),
                ..request("ssh.login", "info")
            },
            "attribute name",
        ),
        (
            EmitRequest {
                message: "x".repeat(tether_proto::event::MAX_MESSAGE_BYTES + 1),
                ..request("ssh.login", "info")
            },
            "message",
        ),
    ];
    for (bad, words) in cases {
        // `emit` refuses before connecting; the agent refuses the same on the raw socket.
        match fixture.emit(bad.clone()).await {
            Err(EmitError::Invalid(message)) => assert!(message.contains(words), "{message}"),
            other => panic!("{bad:?}: {other:?}"),
        }
        let mut line = serde_json::to_vec(&bad).expect("json");
        line.push(b'\n');
        let answers = fixture.raw(line, 1).await;
        assert_eq!(answers[0].code.as_deref(), Some("invalid_argument"));
        assert!(
            answers[0]
                .error
                .as_deref()
                .is_some_and(|e| e.contains(words))
        );
    }
    // Not JSON, unknown fields, then a good one on the same connection.
    let answers = fixture
        .raw(
            b"hello\n{\"kind\":\"a.b\",\"severity\":\"info\",\"colour\":\"red\"}\n{\"kind\":\"a.b\",\"severity\":\"info\"}\n"
                .to_vec(),
            3,
        )
        .await;
    assert_eq!(answers.len(), 3);
    assert!(!answers[0].ok && !answers[1].ok);
    assert!(
        answers[1]
            .error
            .as_deref()
            .is_some_and(|e| e.contains("colour"))
    );
    assert!(answers[2].ok);
    // A line beyond the limit is answered, then the connection closed.
    let mut huge = vec![b'x'; MAX_LINE_BYTES + 10];
    huge.push(b'\n');
    let answers = fixture.raw(huge, 2).await;
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0].code.as_deref(), Some("invalid_argument"));
    assert_eq!(fixture.spooled().await.len(), 1, "only the good event");
}

#[tokio::test]
async fn the_rate_limit_drops_counts_and_reports_once_per_window() {
    let config = EventsConfig {
        rate_limit: 3,
        rate_window: Duration::from_millis(300),
        ..EventsConfig::default()
    };
    let fixture = Fixture::start(config);
    let mut outcomes = Vec::new();
    for _ in 0..8 {
        outcomes.push(fixture.emit(request("app.tick", "info")).await);
    }
    assert_eq!(outcomes.iter().filter(|o| o.is_ok()).count(), 3);
    assert!(
        outcomes[3..]
            .iter()
            .all(|o| matches!(o, Err(EmitError::Exhausted(_))))
    );
    // Once the window ends, one report with the count arrives in the spool.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let report = loop {
        let spooled = fixture.spooled().await;
        if let Some(report) = spooled
            .into_iter()
            .find(|event| event.event.kind == rate::RATE_LIMITED_KIND)
        {
            break report;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no rate limit report"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(report.event.attributes["dropped"], "5");
    assert_eq!(report.event.severity, Severity::Warning);
    // The next window admits again.
    fixture
        .emit(request("app.tick", "info"))
        .await
        .expect("a new window");
    let reports = fixture
        .spooled()
        .await
        .into_iter()
        .filter(|event| event.event.kind == rate::RATE_LIMITED_KIND)
        .count();
    assert_eq!(reports, 1);
}

#[tokio::test]
async fn the_socket_is_private_replaces_a_stale_one_and_refuses_a_live_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("events.sock");
    // A socket file left by a dead agent: nobody listens.
    drop(std::os::unix::net::UnixListener::bind(&path).expect("stale socket"));
    assert!(path.exists());
    let listener = SocketListener::bind(&path, None).expect("replaces the stale socket");
    assert_eq!(
        std::fs::metadata(&path)
            .expect("socket")
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    // A second agent on the same path is refused, and the first keeps its socket.
    let second = SocketListener::bind(&path, None).expect_err("a live socket");
    assert!(second.to_string().contains("listens"), "{second}");
    drop(listener);
    assert!(!path.exists(), "removed when the agent stops");
    // A group makes it 0660 with that group.
    let gid = nix::unistd::getgid().as_raw();
    let listener = SocketListener::bind(&path, Some(&gid.to_string())).expect("bind");
    let metadata = std::fs::metadata(&path).expect("socket");
    assert_eq!(metadata.permissions().mode() & 0o777, 0o660);
    assert_eq!(std::os::unix::fs::MetadataExt::gid(&metadata), gid);
    drop(listener);
    // Something else at the path is never deleted.
    std::fs::write(&path, b"data").expect("write");
    assert!(SocketListener::bind(&path, None).is_err());
    assert_eq!(std::fs::read(&path).expect("kept"), b"data");
    // No agent: emit says so.
    let missing = dir.path().join("none.sock");
    match emit(&missing, &request("a.b", "info")) {
        Err(EmitError::Unavailable(message)) => assert!(message.contains("none.sock")),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn events_survive_a_restart_of_the_subsystem() {
    let fixture = Fixture::start(EventsConfig::default());
    let seq = fixture
        .emit(request("app.deployed", "info"))
        .await
        .expect("accepted");
    fixture.events.close().await;
    let dir = fixture.dir.path().to_path_buf();
    let reopened =
        Events::open(&EventsConfig::default(), &dir, Arc::new(AgentStats::new())).expect("open");
    let spooled = reopened.read(0).await.expect("read");
    assert_eq!(spooled.len(), 1);
    assert_eq!(spooled[0].seq, seq);
    reopened.ack(seq);
    assert!(reopened.read(0).await.expect("read").is_empty());
}
