//! The stable JSON shape of the views, and how unknown wire values degrade.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use tether_proto as pb;

use super::*;

fn ts(secs: i64) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp {
        seconds: secs,
        nanos: 0,
    })
}

#[test]
fn agent_json_is_stable() {
    let agent = pb::Agent {
        agent_id: "a-1".into(),
        org_id: "o-1".into(),
        name: "web-1".into(),
        labels: HashMap::from([("env".into(), "prod".into())]),
        status: pb::AgentStatus::Stale as i32,
        status_reason: pb::StatusReason::StreamClosed as i32,
        last_seen: ts(1_700_000_000),
        health: pb::Health::Warning as i32,
        ..pb::Agent::default()
    };
    let json = serde_json::to_value(AgentView::from(agent)).expect("serializes");
    assert_eq!(json["status"], "stale");
    assert_eq!(json["status_reason"], "stream_closed");
    assert_eq!(json["health"], "warning");
    assert_eq!(json["last_seen"], "2023-11-14T22:13:20Z");
    assert_eq!(json["status_since"], serde_json::Value::Null);
    assert_eq!(json["session_id"], serde_json::Value::Null);
    assert_eq!(json["labels"]["env"], "prod");
}

#[test]
fn unknown_enum_values_degrade() {
    assert_eq!(AgentStatus::from_pb(99), AgentStatus::Unknown);
    assert_eq!(Health::from_pb(0), Health::Unknown);
    assert_eq!(EventKind::from_pb(2), EventKind::Synced);
}

#[test]
fn watch_event_previous_status_only_for_status_changes() {
    let event = pb::WatchAgentsResponse {
        kind: pb::AgentEventKind::StatusChanged as i32,
        previous_status: pb::AgentStatus::Online as i32,
        agent: Some(pb::Agent::default()),
        ..Default::default()
    };
    let json = serde_json::to_value(WatchEventView::from(event)).expect("serializes");
    assert_eq!(json["kind"], "status_changed");
    assert_eq!(json["previous_status"], "online");
    let event = pb::WatchAgentsResponse {
        kind: pb::AgentEventKind::Snapshot as i32,
        ..Default::default()
    };
    let json = serde_json::to_value(WatchEventView::from(event)).expect("serializes");
    assert_eq!(json["previous_status"], serde_json::Value::Null);
}

#[test]
fn token_states() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
    let token = |revoked, expires, max_uses, use_count| pb::EnrollmentToken {
        revoked,
        expires_at: expires,
        max_uses,
        use_count,
        ..Default::default()
    };
    let state = |t| EnrollmentTokenView::from_pb(t, now).state;
    assert_eq!(state(token(false, None, 0, 5)), TokenState::Active);
    assert_eq!(state(token(true, None, 0, 0)), TokenState::Revoked);
    assert_eq!(state(token(false, ts(999), 0, 0)), TokenState::Expired);
    assert_eq!(state(token(false, ts(2_000), 2, 2)), TokenState::Exhausted);
    let json = serde_json::to_value(EnrollmentTokenView::from_pb(token(false, None, 0, 0), now))
        .expect("serializes");
    assert_eq!(json["max_uses"], serde_json::Value::Null);
    assert_eq!(json["state"], "active");
}

#[test]
fn durations_are_seconds() {
    let config = pb::GetServerConfigResponse {
        stale_after: Some(prost_types::Duration {
            seconds: 15,
            nanos: 0,
        }),
        heartbeat_interval: Some(prost_types::Duration {
            seconds: 0,
            nanos: 500_000_000,
        }),
        ..Default::default()
    };
    let json = serde_json::to_value(ServerConfigView::from(config)).expect("serializes");
    assert_eq!(json["stale_after_seconds"], 15.0);
    assert_eq!(json["heartbeat_interval_seconds"], 0.5);
    assert_eq!(json["fleet_ttl_seconds"], serde_json::Value::Null);
}

#[test]
fn command_json_is_stable() {
    let command = pb::Command {
        command_id: "c-1".into(),
        spec: Some(pb::CommandSpec {
            kind: Some(pb::command_spec::Kind::Sleep(pb::SleepSpec {
                duration: Some(prost_types::Duration {
                    seconds: 5,
                    nanos: 0,
                }),
            })),
        }),
        rollout: Some(pb::RolloutPolicy {
            max_concurrency: Some(BudgetView::Percent(10).to_pb()),
            max_errors: Some(pb::Budget { value: None }),
            canary: 1,
        }),
        state: pb::CommandState::Paused as i32,
        created_at: ts(1_700_000_000),
        ..pb::Command::default()
    };
    let json = serde_json::to_value(CommandView::from(command)).expect("serializes");
    assert_eq!(json["state"], "paused");
    assert_eq!(json["spec"]["kind"], "sleep");
    assert_eq!(json["spec"]["sleep_seconds"], 5.0);
    assert_eq!(json["rollout"]["max_concurrency"]["percent"], 10);
    assert_eq!(json["rollout"]["max_errors"], serde_json::Value::Null);
    assert_eq!(json["created_at"], "2023-11-14T22:13:20Z");
    assert_eq!(json["finished_at"], serde_json::Value::Null);
    assert_eq!(json["counts"]["total"], 0);
    let spec = serde_json::to_value(CommandView::from(pb::Command::default())).expect("json");
    assert_eq!(
        spec["spec"]["kind"], "unknown",
        "a command without a spec degrades"
    );
}

#[test]
fn invocation_json_is_stable() {
    let invocation = pb::Invocation {
        invocation_id: "i-1".into(),
        agent_id: "a-1".into(),
        state: pb::InvocationState::Skipped as i32,
        skip_reason: pb::SkipReason::Offline as i32,
        signal: Some(9),
        started_at: ts(100),
        finished_at: ts(102),
        ..pb::Invocation::default()
    };
    let view = InvocationView::from(invocation.clone());
    assert_eq!(view.state_label(), "SKIPPED_OFFLINE");
    let json = serde_json::to_value(&view).expect("serializes");
    assert_eq!(json["state"], "skipped");
    assert_eq!(json["skip_reason"], "offline");
    assert_eq!(json["exit_code"], serde_json::Value::Null);
    assert_eq!(json["signal"], 9);
    assert_eq!(json["duration_seconds"], 2.0);
    // A skip reason only means something for a skipped invocation.
    let running = InvocationView::from(pb::Invocation {
        state: pb::InvocationState::DeliveryTimedOut as i32,
        ..invocation
    });
    assert_eq!(running.skip_reason, None);
    let json = serde_json::to_value(&running).expect("serializes");
    assert_eq!(json["state"], "delivery_timed_out");
    assert_eq!(InvocationState::from_pb(99), InvocationState::Unknown);
    assert_eq!(SkipReason::from_pb(99), Some(SkipReason::Unknown));
    assert_eq!(CommandState::from_pb(0), CommandState::Unknown);
}

#[test]
fn watch_events_carry_output_as_text_or_hex() {
    let event = |data: &[u8]| pb::WatchCommandResponse {
        cursor: 7,
        event: Some(pb::watch_command_response::Event::Output(
            pb::InvocationOutput {
                invocation_id: "i-1".into(),
                agent_id: "a-1".into(),
                chunk: Some(pb::OutputChunk {
                    stream: pb::OutputStream::Stderr as i32,
                    offset: 64,
                    data: data.to_vec(),
                }),
            },
        )),
    };
    let json = serde_json::to_value(CommandEventView::from(event(b"w\xc3\xa4rm\n"))).expect("json");
    assert_eq!(json["kind"], "output");
    assert_eq!(json["cursor"], 7);
    assert_eq!(json["output"]["stream"], "stderr");
    assert_eq!(json["output"]["offset"], 64);
    assert_eq!(json["output"]["length"], 6);
    assert_eq!(json["output"]["text"], "wärm\n");
    assert_eq!(json["output"]["data_hex"], serde_json::Value::Null);
    assert_eq!(json["command"], serde_json::Value::Null);
    let json = serde_json::to_value(CommandEventView::from(event(b"\xc3"))).expect("json");
    assert_eq!(json["output"]["text"], serde_json::Value::Null);
    assert_eq!(json["output"]["data_hex"], "c3");
    let synced = pb::WatchCommandResponse {
        cursor: 0,
        event: Some(pb::watch_command_response::Event::Synced(
            pb::WatchSynced {},
        )),
    };
    assert_eq!(
        CommandEventView::from(synced).kind,
        CommandEventKind::Synced
    );
}

#[test]
fn measured_floats_are_written_to_two_decimals() {
    let agent = pb::Agent {
        agent_id: "a-1".into(),
        status_reason: pb::StatusReason::Connected as i32,
        latest_metrics: Some(pb::MetricsSample {
            cpu_percent: f64::from(99.146_16_f32),
            load_1: 0.1 + 0.2,
            ..pb::MetricsSample::default()
        }),
        ..pb::Agent::default()
    };
    let json = serde_json::to_string(&AgentView::from(agent)).expect("serializes");
    assert!(json.contains(r#""cpu_percent":99.15"#), "{json}");
    assert!(json.contains(r#""load_1":0.3,"#), "{json}");
    assert!(json.contains(r#""status_reason":"connected""#), "{json}");
    let point = MetricsPointView::from(pb::MetricsPoint {
        network_rx_bytes_per_second: 1_000.0 / 3.0,
        ..pb::MetricsPoint::default()
    });
    let json = serde_json::to_string(&point).expect("serializes");
    assert!(
        json.contains(r#""network_rx_bytes_per_second":333.33"#),
        "{json}"
    );
}
