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
