//! The edge refuses what cannot be stored or shown, on the offending stream or call only: times
//! outside 1970 to 9999 or ahead of the server's clock, text holding control or format
//! characters, oversized reports. A healthy agent keeps ingesting throughout, and the
//! offender's stored record is untouched.

use super::*;

/// 10000-01-01T00:00:00Z, the first second no client can show.
const AFTER_9999: i64 = 253_402_300_800;

fn now_secs() -> i64 {
    let since = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("the clock is after 1970");
    i64::try_from(since.as_secs()).expect("seconds fit")
}

/// Opens a session for `agent` with `hello`, sends `then` (if any) and returns the status the
/// server ends the stream (or refuses it) with.
async fn refusal(
    server: &TestServer,
    credential: &str,
    hello: pb::Hello,
    then: Option<In>,
) -> tonic::Status {
    let (mut session, _) = match RawSession::hello_with(server, credential, hello).await {
        Ok(opened) => opened,
        Err(status) => return status,
    };
    if let Some(message) = then {
        session.send(message).await;
    }
    session.wait_error().await
}

/// Asserts `status` is INVALID_ARGUMENT naming `field`.
fn assert_invalid(what: &str, status: &tonic::Status, field: &str) {
    assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
    assert!(
        status.message().contains(field),
        "{what}: the message names {field}: {:?}",
        status.message()
    );
}

/// A server with a healthy real agent, and an enrolled agent that misbehaves by hand.
struct Fixture {
    /// The server's data directory; its store is read after the server stops.
    _dir: tempfile::TempDir,
    server: TestServer,
    victim: tether_tests::TestAgent,
    victim_id: String,
    offender: String,
    credential: String,
}

impl Fixture {
    async fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let server = TestServer::start(fast_config(dir.path())).await;
        let victim = server.spawn_agent("victim", &[]).await;
        let victim_id = victim.id().await;
        eventually("the victim's first ack", || async {
            (victim.handle.stats.samples_acked_seq() > 0).then_some(())
        })
        .await;
        let (offender, credential) = server.enroll("offender", &[]).await;
        Self {
            _dir: dir,
            server,
            victim,
            victim_id,
            offender,
            credential,
        }
    }

    fn hello(&self) -> pb::Hello {
        tether_tests::hello(&self.offender, "offender", &[])
    }

    /// The victim kept ingesting and lost nothing; the offender's record is as enrolled.
    async fn finish(self) {
        let before = self.victim.handle.stats.samples_acked_seq();
        let stats = self.victim.handle.stats.clone();
        eventually("the victim to keep being acknowledged", || async {
            (stats.samples_acked_seq() > before + 2).then_some(())
        })
        .await;
        let offender = self
            .server
            .get_agent(&self.offender)
            .await
            .expect("get the offender")
            .agent
            .expect("agent");
        let info = offender.system_info.expect("system info");
        assert_eq!(info.hostname, "offender");
        assert_eq!(info.os_name, "linux");
        self.victim.stop().await;
        let acked = stats.samples_acked_seq();
        let data_dir = self.server.data_dir.clone();
        self.server.stop().await;
        let stored = stored_seqs(&data_dir, ORG, &self.victim_id);
        assert_eq!(
            missing(&stored, acked),
            Vec::<u64>::new(),
            "acked up to {acked}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn times_outside_1970_to_9999_or_ahead_of_the_clock_are_refused() {
    trace_init();
    let f = Fixture::new().await;
    let skew = tether_server::config::DEFAULT_MAX_CLOCK_SKEW.as_secs() as i64;
    let bad_samples = [
        ("before 1970", BEFORE_1970),
        ("after 9999", AFTER_9999),
        ("i64::MAX", i64::MAX),
        ("an hour ahead", now_secs() + 3600),
        ("just over the skew", now_secs() + skew + 60),
    ];
    for (what, secs) in bad_samples {
        let status = refusal(
            &f.server,
            &f.credential,
            f.hello(),
            Some(report(vec![sample_at(1, secs)])),
        )
        .await;
        assert_invalid(what, &status, "sample 1 time");
    }
    let mut hello = f.hello();
    hello.system_info.as_mut().expect("info").boot_time = Some(wire_time(BEFORE_1970));
    let status = refusal(&f.server, &f.credential, hello, None).await;
    assert_invalid("boot time", &status, "system_info.boot_time");
    let ping = In::Ping(pb::Ping {
        nonce: 1,
        sent_at: Some(wire_time(BEFORE_1970)),
    });
    let status = refusal(&f.server, &f.credential, f.hello(), Some(ping)).await;
    assert_invalid("ping", &status, "ping.sent_at");

    // A sample within the skew is stored and acknowledged.
    let (mut session, welcome) = RawSession::hello_with(&f.server, &f.credential, f.hello())
        .await
        .expect("session");
    let next = welcome.last_durable_seq + 1;
    session
        .send(report(vec![sample_at(next, now_secs() + skew / 2)]))
        .await;
    session.wait_ack(next).await.expect("acked");
    drop(session);

    // Callers: TTLs and query ranges.
    let mut admin = f.server.admin().await;
    let century = prost_types::Duration {
        seconds: 200 * 365 * 86_400,
        nanos: 0,
    };
    let status = admin
        .create_token(pb::CreateTokenRequest {
            name: "forever".into(),
            role: pb::Role::Viewer as i32,
            ttl: Some(century),
        })
        .await
        .expect_err("ttl too long");
    assert_invalid("token ttl", &status, "ttl");
    let status = admin
        .create_enrollment_token(pb::CreateEnrollmentTokenRequest {
            ttl: Some(century),
            ..Default::default()
        })
        .await
        .expect_err("ttl too long");
    assert_invalid("enrollment token ttl", &status, "ttl");
    let status = admin
        .list_audit_events(pb::ListAuditEventsRequest {
            since: Some(wire_time(BEFORE_1970)),
            ..Default::default()
        })
        .await
        .expect_err("since before 1970");
    assert_invalid("audit since", &status, "since");
    let mut fleet = f.server.fleet().await;
    for (field, start, end) in [
        ("start", Some(wire_time(BEFORE_1970)), None),
        ("end", None, Some(wire_time(AFTER_9999))),
    ] {
        let status = fleet
            .get_metrics(pb::GetMetricsRequest {
                agent_id: f.victim_id.clone(),
                start,
                end,
                step: None,
            })
            .await
            .expect_err("range out of bounds");
        assert_invalid("metrics range", &status, field);
    }
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_and_format_characters_are_refused_naming_the_field() {
    trace_init();
    let f = Fixture::new().await;
    let evil = [
        "\u{1b}]0;owned\u{7}",
        "\u{1b}[2J",
        "\u{202e}gnp.exe",
        "a\u{200b}b",
    ];
    for (n, text) in evil.iter().enumerate() {
        let mut hello = f.hello();
        let info = hello.system_info.as_mut().expect("info");
        let field = match n {
            0 => {
                info.hostname = format!("web{text}");
                "system_info.hostname"
            }
            1 => {
                info.os_name = format!("linux{text}");
                "system_info.os_name"
            }
            2 => {
                info.cpu_model = (*text).to_owned();
                "system_info.cpu_model"
            }
            _ => {
                info.kernel_version = (*text).to_owned();
                "system_info.kernel_version"
            }
        };
        let status = refusal(&f.server, &f.credential, hello, None).await;
        assert_invalid(field, &status, field);
    }
    let mut hello = f.hello();
    hello.agent_version = "1.0\u{2066}".into();
    let status = refusal(&f.server, &f.credential, hello, None).await;
    assert_invalid("agent version", &status, "agent_version");
    let mut bad_disk = sample(1);
    bad_disk.disks = vec![pb::DiskUsage {
        mount_point: "/mnt/\u{1b}[31mred".into(),
        used_bytes: 1,
        total_bytes: 2,
    }];
    let status = refusal(
        &f.server,
        &f.credential,
        f.hello(),
        Some(report(vec![bad_disk])),
    )
    .await;
    assert_invalid("mount point", &status, "disk mount point");
    let bye = In::Goodbye(pb::AgentGoodbye {
        reason: "bye\u{7}".into(),
    });
    let status = refusal(&f.server, &f.credential, f.hello(), Some(bye)).await;
    assert_invalid("goodbye", &status, "goodbye.reason");

    // Enrollment.
    let status = f
        .server
        .enroll_with(pb::EnrollRequest {
            system_info: Some(tether_tests::system_info("fresh")),
            labels: Default::default(),
            name: "name\u{1b}c".into(),
            previous_credential: String::new(),
        })
        .await
        .expect_err("control character in the name");
    assert_invalid("enroll name", &status, "name");
    let mut info = tether_tests::system_info("fresh");
    info.hardware_id = "hw\u{feff}".into();
    let status = f
        .server
        .enroll_with(pb::EnrollRequest {
            system_info: Some(info),
            labels: Default::default(),
            name: String::new(),
            previous_credential: String::new(),
        })
        .await
        .expect_err("format character in the hardware id");
    assert_invalid("enroll hardware id", &status, "system_info.hardware_id");
    let status = f
        .server
        .enroll_with(pb::EnrollRequest {
            system_info: Some(tether_tests::system_info("fresh")),
            labels: Default::default(),
            name: String::new(),
            previous_credential: "tether_abc_\u{7}secret".into(),
        })
        .await
        .expect_err("control character in the previous credential");
    assert_invalid("enroll previous credential", &status, "previous_credential");
    let mut hello = f.hello();
    hello.instance_id = "proc\u{1b}[2J".into();
    let status = refusal(&f.server, &f.credential, hello, None).await;
    assert_invalid("hello instance id", &status, "instance_id");

    // Admin and fleet calls.
    let mut admin = f.server.admin().await;
    let status = admin
        .create_token(pb::CreateTokenRequest {
            name: "ci\u{202e}".into(),
            role: pb::Role::Viewer as i32,
            ttl: None,
        })
        .await
        .expect_err("format character in a token name");
    assert_invalid("token name", &status, "name");
    let status = admin
        .create_enrollment_token(pb::CreateEnrollmentTokenRequest {
            description: "rack 4\u{1b}[2J".into(),
            ..Default::default()
        })
        .await
        .expect_err("control character in a description");
    assert_invalid("description", &status, "description");
    let status = admin
        .create_org(pb::CreateOrgRequest {
            org_id: "acme".into(),
            display_name: "Acme\u{200f}".into(),
        })
        .await
        .expect_err("format character in a display name");
    assert_invalid("display name", &status, "display_name");
    let status = f
        .server
        .fleet()
        .await
        .list_agents(pb::ListAgentsRequest {
            query: "\u{1b}".into(),
            ..Default::default()
        })
        .await
        .expect_err("control character in a query");
    assert_invalid("query", &status, "query");
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_reports_are_refused_and_the_limits_themselves_accepted() {
    trace_init();
    let f = Fixture::new().await;
    let limits = tether_server::config::Limits::default();
    let disk = |n: usize, len: usize| pb::DiskUsage {
        mount_point: format!("/{n:0>width$}", width = len - 1),
        used_bytes: 1,
        total_bytes: 2,
    };
    let mut too_many = sample(1);
    too_many.disks = (0..=limits.max_disks_per_sample)
        .map(|n| disk(n, 8))
        .collect();
    let status = refusal(
        &f.server,
        &f.credential,
        f.hello(),
        Some(report(vec![too_many])),
    )
    .await;
    assert_invalid("too many disks", &status, "disks");
    let mut too_long = sample(1);
    too_long.disks = vec![disk(0, limits.max_reported_text_bytes + 1)];
    let status = refusal(
        &f.server,
        &f.credential,
        f.hello(),
        Some(report(vec![too_long])),
    )
    .await;
    assert_invalid("long mount point", &status, "disk mount point");
    let mut hello = f.hello();
    hello.system_info.as_mut().expect("info").hostname =
        "h".repeat(limits.max_reported_text_bytes + 1);
    let status = refusal(&f.server, &f.credential, hello, None).await;
    assert_invalid("long hostname", &status, "system_info.hostname");

    // At the limits: stored and acknowledged.
    let (mut session, welcome) = RawSession::hello_with(&f.server, &f.credential, f.hello())
        .await
        .expect("session");
    let next = welcome.last_durable_seq + 1;
    let mut full = sample(next);
    full.disks = (0..limits.max_disks_per_sample)
        .map(|n| disk(n, limits.max_reported_text_bytes))
        .collect();
    session.send(report(vec![full])).await;
    session.wait_ack(next).await.expect("acked at the limits");
    drop(session);
    f.finish().await;
}
