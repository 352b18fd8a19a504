//! The fleet summary and the configuration the server serves.

use super::*;

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
                    deferred_seq: 0,
                    previous_ack_latency: None,
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
    config.storage.rollup_5m_retention = Duration::from_secs(5 * 86_400);
    config.storage.rollup_1h_retention = Duration::from_secs(7 * 86_400);
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
    config.limits.max_samples_per_report = 33;
    config.limits.max_agents_per_org = 4_321;
    config.limits.stream_messages_per_second = 55;
    config.limits.stream_message_burst = 66;
    config.limits.token_requests_per_second = 77;
    config.limits.token_request_burst = 88;
    config.limits.max_watches_per_token = 9;
    config.limits.max_watches_per_org = 19;
    config.limits.max_response_bytes = 2_222_222;
    config.limits.max_concurrent_streams = 29;
    config.commands.default_timeout = Duration::from_secs(123);
    config.commands.default_deliver_within = Duration::from_secs(456);
    config.commands.default_output_limit = 7_777;
    config.commands.max_output_limit = 88_888;
    config.commands.retention = Duration::from_secs(9 * 86_400);
    config.commands.max_in_flight_per_org = 11;
    config.commands.max_queued_per_agent = 12;
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
        rollup_5m_retention: dur(config.storage.rollup_5m_retention),
        rollup_1h_retention: dur(config.storage.rollup_1h_retention),
        events_retention: dur(config.events.retention),
        event_stats_retention: dur(config.events.stats_retention),
        event_fingerprint_window: dur(config.events.fingerprint_window),
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
        limits: Some(pb::ServerLimits {
            max_samples_per_report: 33,
            max_agents_per_org: 4_321,
            stream_messages_per_second: 55,
            stream_message_burst: 66,
            token_requests_per_second: 77,
            token_request_burst: 88,
            max_watches_per_token: 9,
            max_watches_per_org: 19,
            max_response_bytes: 2_222_222,
            max_concurrent_streams: 29,
        }),
        commands: Some(pb::CommandSettings {
            default_timeout: dur(Duration::from_secs(123)),
            default_deliver_within: dur(Duration::from_secs(456)),
            default_output_limit_bytes: 7_777,
            max_output_limit_bytes: 88_888,
            retention: dur(Duration::from_secs(9 * 86_400)),
            max_in_flight_per_org: 11,
            max_queued_per_agent: 12,
        }),
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
