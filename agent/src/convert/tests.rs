use super::*;

fn system_info() -> SystemInfo {
    SystemInfo {
        hostname: "web-1".into(),
        os_name: "Debian GNU/Linux".into(),
        os_version: "12".into(),
        kernel_version: "6.1.0".into(),
        architecture: "x86_64".into(),
        cpu_model: "Test CPU".into(),
        logical_cores: 8,
        total_memory_bytes: 16 << 30,
        hardware_id: "abc123".into(),
        boot_time: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
        agent_version: "0.1.0".into(),
    }
}

fn seq_sample() -> SeqSample {
    SeqSample {
        seq: 42,
        sample: Sample {
            time: SystemTime::UNIX_EPOCH + Duration::new(1_700_000_100, 123_456_000),
            cpu_percent: 12.5,
            load_1: 0.5,
            load_5: 0.25,
            load_15: 0.125,
            memory_used_bytes: 1 << 30,
            memory_total_bytes: 16 << 30,
            swap_used_bytes: 0,
            swap_total_bytes: 1 << 30,
            disks: vec![DiskUsage {
                mount_point: "/".into(),
                used_bytes: 10,
                total_bytes: 100,
            }],
            network_rx_bytes: 1000,
            network_tx_bytes: 2000,
            uptime: Duration::from_secs(3600),
            process_count: 123,
        },
    }
}

#[test]
fn system_info_round_trip() {
    let info = system_info();
    let wire = pb::SystemInfo::from(&info);
    assert_eq!(wire.hostname, "web-1");
    assert_eq!(
        wire.boot_time,
        Some(prost_types::Timestamp {
            seconds: 1_700_000_000,
            nanos: 0
        })
    );
    assert_eq!(SystemInfo::try_from(wire).expect("valid"), info);
}

#[test]
fn sample_round_trip() {
    let entry = seq_sample();
    let wire = pb::MetricsSample::from(&entry);
    assert_eq!(wire.seq, 42);
    assert_eq!(
        wire.uptime,
        Some(prost_types::Duration {
            seconds: 3600,
            nanos: 0
        })
    );
    assert_eq!(SeqSample::try_from(wire).expect("valid"), entry);
}

#[test]
fn hello_carries_identity() {
    let labels = BTreeMap::from([("env".to_owned(), "prod".to_owned())]);
    let hello = hello(
        "agent-1",
        "0.1.0",
        &system_info(),
        &labels,
        "0a1b2c",
        vec!["inv-1".to_owned()],
    );
    let Some(pb::connect_request::Message::Hello(hello)) = hello.message else {
        panic!("expected Hello");
    };
    assert_eq!(hello.agent_id, "agent-1");
    assert_eq!(hello.instance_id, "0a1b2c");
    assert_eq!(hello.agent_version, "0.1.0");
    assert_eq!(hello.labels.get("env").map(String::as_str), Some("prod"));
    assert!(hello.system_info.is_some());
    assert_eq!(hello.journaled_invocation_ids, ["inv-1"]);
}

#[test]
fn enroll_request_carries_the_previous_credential() {
    let info = system_info();
    let labels = BTreeMap::new();
    let first = enroll_request(&info, &labels, None, None);
    assert!(first.previous_credential.is_empty());
    let previous = Credential::new("tether_abc_secret");
    let again = enroll_request(&info, &labels, Some("web"), Some(&previous));
    assert_eq!(again.previous_credential, "tether_abc_secret");
    assert_eq!(again.name, "web");
}

#[test]
fn welcome_requires_intervals() {
    let welcome = pb::Welcome {
        session_id: "s1".into(),
        last_durable_event_seq: 0,
        server_time: Some(SystemTime::now().into()),
        heartbeat_interval: Some(prost_types::Duration {
            seconds: 5,
            nanos: 0,
        }),
        metrics_interval: Some(prost_types::Duration {
            seconds: 10,
            nanos: 0,
        }),
        stale_after: Some(prost_types::Duration {
            seconds: 15,
            nanos: 0,
        }),
        offline_after: None,
        last_durable_seq: 7,
        invocation_acks: vec![pb::InvocationAck {
            invocation_id: "inv-1".into(),
            seq: 3,
        }],
    };
    let parsed = Welcome::try_from(welcome.clone()).expect("valid");
    assert_eq!(parsed.heartbeat_interval, Duration::from_secs(5));
    assert_eq!(parsed.metrics_interval, Duration::from_secs(10));
    assert_eq!(parsed.stale_after, Some(Duration::from_secs(15)));
    assert_eq!(parsed.offline_after, None);
    assert_eq!(parsed.last_durable_seq, 7);
    assert_eq!(parsed.invocation_acks, [("inv-1".to_owned(), 3)]);

    let missing = pb::Welcome {
        heartbeat_interval: None,
        ..welcome.clone()
    };
    assert!(matches!(
        Welcome::try_from(missing),
        Err(AgentError::Protocol(_))
    ));
    let zero = pb::Welcome {
        metrics_interval: Some(prost_types::Duration::default()),
        ..welcome.clone()
    };
    assert!(matches!(
        Welcome::try_from(zero),
        Err(AgentError::Protocol(_))
    ));
    let negative = pb::Welcome {
        metrics_interval: Some(prost_types::Duration {
            seconds: -1,
            nanos: 0,
        }),
        ..welcome
    };
    assert!(matches!(
        Welcome::try_from(negative),
        Err(AgentError::Protocol(_))
    ));
}

#[test]
fn goodbye_reasons() {
    let goodbye = |reason: pb::GoodbyeReason| {
        ServerGoodbye::from(pb::ServerGoodbye {
            reason: reason.into(),
            message: String::new(),
            reconnect_after: None,
        })
        .reason
    };
    assert_eq!(
        goodbye(pb::GoodbyeReason::Replaced),
        GoodbyeReason::Replaced
    );
    assert_eq!(goodbye(pb::GoodbyeReason::Revoked), GoodbyeReason::Revoked);
    assert_eq!(
        goodbye(pb::GoodbyeReason::ServerDraining),
        GoodbyeReason::ServerDraining
    );
    let unknown = ServerGoodbye::from(pb::ServerGoodbye {
        reason: 99,
        message: String::new(),
        reconnect_after: None,
    });
    assert_eq!(unknown.reason, GoodbyeReason::Unspecified);
}

#[test]
fn a_drains_reconnect_delay_is_honoured_within_bounds() {
    let after = |d: Option<prost_types::Duration>| {
        ServerGoodbye::from(pb::ServerGoodbye {
            reason: pb::GoodbyeReason::ServerDraining.into(),
            message: String::new(),
            reconnect_after: d,
        })
        .reconnect_after
    };
    let secs = |seconds| Some(prost_types::Duration { seconds, nanos: 0 });
    assert_eq!(after(None), None, "not said: the agent's backoff");
    assert_eq!(after(secs(42)), Some(Duration::from_secs(42)));
    assert_eq!(after(secs(-1)), None, "a negative delay is none");
    assert_eq!(
        after(secs(365 * 24 * 3600)),
        Some(MAX_RECONNECT_AFTER),
        "capped"
    );
}

#[test]
fn unknown_server_message_is_tolerated() {
    let message = ServerMessage::try_from(pb::ConnectResponse { message: None });
    assert!(matches!(message, Ok(ServerMessage::Unknown)));
}

/// What a newer server may send, as bytes on the wire: fields this agent does not know
/// inside a known message, and a message of a kind it does not know. The first decodes to the
/// message it knows, the second to `Unknown`, which the session skips; neither is an error.
#[test]
fn a_newer_servers_unknown_fields_and_message_kinds_decode_and_are_skipped() {
    use prost::Message as _;
    let key = |number: u32, wire: prost::encoding::WireType, out: &mut Vec<u8>| {
        prost::encoding::encode_key(number, wire, out);
    };
    let delimited = |number: u32, bytes: &[u8]| {
        let mut out = Vec::new();
        key(number, prost::encoding::WireType::LengthDelimited, &mut out);
        prost::encoding::encode_varint(bytes.len() as u64, &mut out);
        out.extend_from_slice(bytes);
        out
    };
    let mut unknown = Vec::new();
    key(1000, prost::encoding::WireType::Varint, &mut unknown);
    prost::encoding::encode_varint(7, &mut unknown);
    unknown.extend(delimited(1001, b"from the future"));

    let welcome = pb::Welcome {
        session_id: "s-1".into(),
        heartbeat_interval: Some(pb_duration(5)),
        metrics_interval: Some(pb_duration(10)),
        last_durable_seq: 12,
        ..Default::default()
    };
    let mut welcome_bytes = welcome.encode_to_vec();
    welcome_bytes.extend_from_slice(&unknown);
    let mut response = delimited(1, &welcome_bytes);
    response.extend_from_slice(&unknown);
    let decoded = pb::ConnectResponse::decode(response.as_slice()).expect("decodes");
    match ServerMessage::try_from(decoded) {
        Ok(ServerMessage::Welcome(welcome)) => {
            assert_eq!(
                (welcome.session_id.as_str(), welcome.last_durable_seq),
                ("s-1", 12)
            );
        }
        other => panic!("expected the Welcome, got {other:?}"),
    }

    let newer_kind = delimited(99, &unknown);
    let decoded = pb::ConnectResponse::decode(newer_kind.as_slice()).expect("decodes");
    assert!(matches!(
        ServerMessage::try_from(decoded),
        Ok(ServerMessage::Unknown)
    ));
}

#[test]
fn enrollment_requires_id_and_credential() {
    let response = pb::EnrollResponse {
        agent_id: "a1".into(),
        org_id: "o1".into(),
        agent_credential: "secret".into(),
    };
    let enrollment = Enrollment::try_from(response.clone()).expect("valid");
    assert_eq!(enrollment.credential.expose_secret(), "secret");
    let empty = pb::EnrollResponse {
        agent_credential: String::new(),
        ..response
    };
    assert!(Enrollment::try_from(empty).is_err());
}

fn pb_duration(seconds: i64) -> prost_types::Duration {
    prost_types::Duration { seconds, nanos: 0 }
}

fn exec_offer() -> pb::CommandOffer {
    pb::CommandOffer {
        invocation_id: "inv-1".into(),
        command_id: "cmd-1".into(),
        spec: Some(pb::CommandSpec {
            kind: Some(pb::command_spec::Kind::Exec(pb::ExecSpec {
                argv: vec!["/bin/echo".into(), "hi".into()],
                env: std::collections::HashMap::from([("A".to_owned(), "1".to_owned())]),
                working_dir: String::new(),
                stdin: b"in".to_vec(),
            })),
        }),
        timeout: Some(pb_duration(30)),
        deliver_by: Some((SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)).into()),
        output_limit_bytes: 4096,
        kill_grace: Some(pb_duration(10_000)),
    }
}

#[test]
fn offers_convert_to_domain_offers() {
    let offer = Offer::try_from(exec_offer()).expect("valid");
    assert_eq!(offer.invocation_id, "inv-1");
    assert_eq!(offer.timeout, Some(Duration::from_secs(30)));
    assert_eq!(
        offer.deliver_by,
        Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000))
    );
    // An absurd grace is capped.
    assert_eq!(offer.kill_grace, Some(MAX_KILL_GRACE));
    let CommandSpec::Exec(exec) = offer.spec else {
        panic!("expected exec");
    };
    assert_eq!(exec.argv, ["/bin/echo", "hi"]);
    assert_eq!(exec.env.get("A").map(String::as_str), Some("1"));
    assert_eq!(exec.working_dir, None);
    assert_eq!(exec.stdin, b"in");
}

#[test]
fn malformed_offers_become_rejections_with_a_reason() {
    let no_kind = pb::CommandOffer {
        spec: Some(pb::CommandSpec { kind: None }),
        ..exec_offer()
    };
    let invalid = Offer::try_from(no_kind).expect_err("no kind");
    assert_eq!(invalid.invocation_id, "inv-1");
    assert!(invalid.reason.contains("kind"), "{}", invalid.reason);
    let negative = pb::CommandOffer {
        timeout: Some(pb_duration(-1)),
        ..exec_offer()
    };
    assert!(Offer::try_from(negative).is_err());
    let sleep_without_duration = pb::CommandOffer {
        spec: Some(pb::CommandSpec {
            kind: Some(pb::command_spec::Kind::Sleep(pb::SleepSpec {
                duration: None,
            })),
        }),
        ..exec_offer()
    };
    assert!(Offer::try_from(sleep_without_duration).is_err());
    // No timeout is not malformed here: the command subsystem decides (noop needs none).
    let no_timeout = pb::CommandOffer {
        timeout: None,
        ..exec_offer()
    };
    assert_eq!(Offer::try_from(no_timeout).expect("valid").timeout, None);
}

#[test]
fn server_command_messages_convert() {
    let cancel = ServerMessage::try_from(pb::ConnectResponse {
        message: Some(pb::connect_response::Message::CommandCancel(
            pb::CommandCancel {
                invocation_id: "inv-2".into(),
            },
        )),
    })
    .expect("valid");
    assert_eq!(
        cancel,
        ServerMessage::CommandCancel {
            invocation_id: "inv-2".into()
        }
    );
    let ack = ServerMessage::try_from(pb::ConnectResponse {
        message: Some(pb::connect_response::Message::CommandAck(pb::CommandAck {
            acks: vec![pb::InvocationAck {
                invocation_id: "inv-2".into(),
                seq: 4,
            }],
        })),
    })
    .expect("valid");
    assert_eq!(ack, ServerMessage::CommandAck(vec![("inv-2".into(), 4)]));
}

#[test]
fn updates_convert_to_wire_updates() {
    use crate::command::types::{Outcome, OutputChunk, OutputStream, Step, Terminal, Update};

    let time = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let finished = Update {
        invocation_id: "inv-1".into(),
        seq: 3,
        step: Step::Finished(Outcome {
            state: Terminal::Failed,
            reason: "exited with code 2".into(),
            exit_code: Some(2),
            signal: None,
        }),
        output: vec![OutputChunk {
            stream: OutputStream::Stderr,
            offset: 10,
            data: b"oops".to_vec(),
        }],
        time,
    };
    let wire = pb::CommandUpdate::from(&finished);
    assert_eq!(wire.seq, 3);
    assert_eq!(wire.state(), pb::InvocationState::Failed);
    assert_eq!(wire.exit_code, Some(2));
    assert_eq!(wire.signal, None);
    assert_eq!(wire.output[0].stream(), pb::OutputStream::Stderr);
    assert_eq!(wire.output[0].offset, 10);
    let output_only = pb::CommandUpdate::from(&Update {
        step: Step::Output,
        ..finished.clone()
    });
    assert_eq!(output_only.state(), pb::InvocationState::Unspecified);
    assert!(output_only.reason.is_empty());
    let restarted = pb::CommandUpdate::from(&Update {
        step: Step::Finished(Outcome::new(Terminal::AgentRestarted, "gone")),
        ..finished
    });
    assert_eq!(restarted.state(), pb::InvocationState::AgentRestarted);
}

#[test]
fn a_deferral_converts_with_its_retry_and_the_hello_accepts_deferrals() {
    let deferred = ServerMessage::try_from(pb::ConnectResponse {
        message: Some(pb::connect_response::Message::MetricsDeferred(
            pb::MetricsDeferred {
                last_seq: 9,
                retry_after: Some(prost_types::Duration {
                    seconds: 0,
                    nanos: 250_000_000,
                }),
            },
        )),
    })
    .expect("valid");
    assert_eq!(
        deferred,
        ServerMessage::MetricsDeferred {
            last_seq: 9,
            retry_after: Some(Duration::from_millis(250)),
        }
    );
    let request = super::hello(
        "a-1",
        "1.0",
        &system_info(),
        &BTreeMap::new(),
        "instance",
        Vec::new(),
    );
    let Some(pb::connect_request::Message::Hello(hello)) = request.message else {
        panic!("a Hello");
    };
    assert!(hello.accepts_deferred_reports);
    let report = super::metrics_report(Vec::new(), None, Some(9));
    let Some(pb::connect_request::Message::Metrics(report)) = report.message else {
        panic!("a report");
    };
    assert_eq!(report.deferred_seq, 9, "the report answers the deferral");
}
