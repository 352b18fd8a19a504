//! Unit tests of the RPC edge: validation of inbound messages and round trips.

use super::*;
use crate::domain::AgentId;
use crate::error::ServerError;

#[test]
fn label_keys() {
    for ok in ["env", "a", "team.io/owner", "x-y_z", "A1"] {
        assert!(is_valid_label_key(ok), "{ok}");
    }
    for bad in ["", "-a", "a-", "a b", "a=b", "a,b", "é", "!a"] {
        assert!(!is_valid_label_key(bad), "{bad}");
    }
}

#[test]
fn label_limits() {
    let limits = Limits::default();
    let mut labels = HashMap::new();
    labels.insert("env".to_owned(), "prod".to_owned());
    assert!(labels_from_pb(labels.clone(), &limits).is_ok());
    labels.insert("bad key".to_owned(), "x".to_owned());
    assert!(labels_from_pb(labels, &limits).is_err());
    let too_many = (0..=limits.max_labels)
        .map(|i| (format!("k{i}"), String::new()))
        .collect();
    assert!(labels_from_pb(too_many, &limits).is_err());
    let long_value =
        HashMap::from([("k".to_owned(), "v".repeat(limits.max_label_value_bytes + 1))]);
    assert!(labels_from_pb(long_value, &limits).is_err());
}

fn report_limits() -> ReportLimits {
    ReportLimits::of(&Limits::default())
}

fn at(seconds: i64) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds, nanos: 0 }
}

#[test]
fn sample_validation() {
    let limits = report_limits();
    let now = SystemTime::now();
    let good = pb::MetricsSample {
        seq: 1,
        time: Some(timestamp(now)),
        cpu_percent: 12.5,
        ..Default::default()
    };
    let sample = sample_from_pb(good.clone(), &limits, now).expect("valid");
    assert_eq!(
        sample_from_pb(sample_to_pb(&sample), &limits, now).expect("round trip"),
        sample
    );
    let ahead = now + limits.max_clock_skew + Duration::from_secs(1);
    let disk = |mount_point: &str| pb::DiskUsage {
        mount_point: mount_point.to_owned(),
        ..Default::default()
    };
    for bad in [
        pb::MetricsSample {
            seq: 0,
            ..good.clone()
        },
        pb::MetricsSample {
            time: None,
            ..good.clone()
        },
        pb::MetricsSample {
            cpu_percent: f64::NAN,
            ..good.clone()
        },
        pb::MetricsSample {
            load_1: -1.0,
            ..good.clone()
        },
        pb::MetricsSample {
            disks: vec![pb::DiskUsage::default(); limits.max_disks_per_sample + 1],
            ..good.clone()
        },
        pb::MetricsSample {
            time: Some(at(-1)),
            ..good.clone()
        },
        pb::MetricsSample {
            time: Some(at(i64::MAX)),
            ..good.clone()
        },
        pb::MetricsSample {
            time: Some(at(Time::LATEST_SECS as i64 + 1)),
            ..good.clone()
        },
        pb::MetricsSample {
            time: Some(timestamp(ahead)),
            ..good.clone()
        },
        pb::MetricsSample {
            disks: vec![disk(&"d".repeat(limits.max_text_bytes + 1))],
            ..good.clone()
        },
        pb::MetricsSample {
            disks: vec![disk("/mnt/\u{1b}]0;owned\u{7}")],
            ..good.clone()
        },
    ] {
        let err = sample_from_pb(bad.clone(), &limits, now).expect_err("refused");
        assert!(
            matches!(err, ServerError::InvalidArgument(_)),
            "{bad:?}: {err:?}"
        );
    }
    // Within the skew, and the limits themselves, are accepted.
    let edge = pb::MetricsSample {
        time: Some(timestamp(now + limits.max_clock_skew)),
        disks: vec![disk(&"d".repeat(limits.max_text_bytes)); limits.max_disks_per_sample],
        ..good
    };
    sample_from_pb(edge, &limits, now).expect("at the limits");
}

#[test]
fn times_outside_1970_to_9999_are_invalid_and_name_their_field() {
    for (ts, ok) in [
        (at(0), true),
        (at(Time::LATEST_SECS as i64), true),
        (
            prost_types::Timestamp {
                seconds: Time::LATEST_SECS as i64,
                nanos: 999_999_999,
            },
            true,
        ),
        (at(-1), false),
        (at(Time::LATEST_SECS as i64 + 1), false),
        (at(i64::MIN), false),
        (
            prost_types::Timestamp {
                seconds: 0,
                nanos: -1,
            },
            false,
        ),
    ] {
        match time_from_pb(ts, "since") {
            Ok(time) => assert!(ok, "{ts:?} accepted as {time:?}"),
            Err(ServerError::InvalidArgument(message)) => {
                assert!(!ok, "{ts:?} refused: {message}");
                assert!(message.starts_with("since"), "{message}");
            }
            Err(other) => panic!("{ts:?}: {other:?}"),
        }
    }
}

#[test]
fn stored_times_refuse_to_decode_out_of_range() {
    let json = |secs: i64| format!(r#"{{"secs_since_epoch":{secs},"nanos_since_epoch":0}}"#);
    let ok: Time = serde_json::from_str(&json(1_700_000_000)).expect("in range");
    assert_eq!(
        serde_json::to_string(&ok).expect("encode"),
        json(1_700_000_000)
    );
    assert!(serde_json::from_str::<Time>(&json(Time::LATEST_SECS as i64 + 1)).is_err());
}

#[test]
fn system_info_text_is_bounded_and_printable() {
    let limits = report_limits();
    let now = SystemTime::now();
    let good = pb::SystemInfo {
        hostname: "web-1".into(),
        os_name: "linux".into(),
        cpu_model: "Zen 4 — 中文".into(),
        boot_time: Some(timestamp(now - Duration::from_secs(60))),
        ..Default::default()
    };
    system_info_from_pb(good.clone(), &limits, now).expect("valid");
    let cases: Vec<(&str, pb::SystemInfo)> = vec![
        (
            "system_info.hostname",
            pb::SystemInfo {
                hostname: "a\u{1b}[2Jb".into(),
                ..good.clone()
            },
        ),
        (
            "system_info.hostname",
            pb::SystemInfo {
                hostname: "h".repeat(limits.max_text_bytes + 1),
                ..good.clone()
            },
        ),
        (
            "system_info.os_name",
            pb::SystemInfo {
                os_name: "linux\u{202e}".into(),
                ..good.clone()
            },
        ),
        (
            "system_info.os_version",
            pb::SystemInfo {
                os_version: "1\u{200b}".into(),
                ..good.clone()
            },
        ),
        (
            "system_info.kernel_version",
            pb::SystemInfo {
                kernel_version: "6\n".into(),
                ..good.clone()
            },
        ),
        (
            "system_info.architecture",
            pb::SystemInfo {
                architecture: "x\u{7}".into(),
                ..good.clone()
            },
        ),
        (
            "system_info.cpu_model",
            pb::SystemInfo {
                cpu_model: "\u{feff}cpu".into(),
                ..good.clone()
            },
        ),
        (
            "system_info.hardware_id",
            pb::SystemInfo {
                hardware_id: "\u{9b}1".into(),
                ..good.clone()
            },
        ),
        (
            "system_info.agent_version",
            pb::SystemInfo {
                agent_version: "1\u{e0041}".into(),
                ..good.clone()
            },
        ),
        (
            "system_info.boot_time",
            pb::SystemInfo {
                boot_time: Some(at(-5)),
                ..good.clone()
            },
        ),
        (
            "system_info.boot_time",
            pb::SystemInfo {
                boot_time: Some(timestamp(now + Duration::from_secs(86_400))),
                ..good.clone()
            },
        ),
    ];
    for (field, info) in cases {
        match system_info_from_pb(info, &limits, now) {
            Err(ServerError::InvalidArgument(message)) => {
                assert!(message.starts_with(field), "{field}: {message}");
            }
            other => panic!("{field}: {other:?}"),
        }
    }
}

#[test]
fn admin_text_fields_refuse_controls_and_formats() {
    let limits = Limits::default();
    let token = |name: &str| pb::CreateTokenRequest {
        name: name.to_owned(),
        role: pb::Role::Viewer as i32,
        ttl: None,
    };
    assert!(admin::create_token_from_pb(token("ci bot")).is_ok());
    for name in ["ci\u{1b}[31m", "\u{202e}toor", "a\u{200d}b", ""] {
        assert!(
            admin::create_token_from_pb(token(name)).is_err(),
            "{name:?}"
        );
    }
    let negative = pb::CreateTokenRequest {
        ttl: Some(prost_types::Duration {
            seconds: -1,
            nanos: 0,
        }),
        ..token("ci")
    };
    assert!(admin::create_token_from_pb(negative).is_err());
    let enrollment = pb::CreateEnrollmentTokenRequest {
        description: "rack\u{7}".into(),
        ..Default::default()
    };
    assert!(admin::create_enrollment_token_from_pb(enrollment, &limits).is_err());
    let org = pb::CreateOrgRequest {
        org_id: "acme".into(),
        display_name: "Acme\u{2066}".into(),
    };
    assert!(admin::create_org_from_pb(org).is_err());
    let query = pb::ListAuditEventsRequest {
        method: "/x\u{1b}".into(),
        ..Default::default()
    };
    assert!(admin::list_audit_events_from_pb(query).is_err());
    let bye = pb::AgentGoodbye {
        reason: "bye\u{1b}c".into(),
    };
    assert!(agent::goodbye_from_pb(bye).is_err());
    let ping = pb::Ping {
        nonce: 1,
        sent_at: Some(at(-1)),
    };
    assert!(agent::pong_to_pb(ping, SystemTime::now()).is_err());
}

#[test]
fn page_tokens_round_trip_and_reject_garbage() {
    let id = AgentId::new("abc-1");
    assert_eq!(
        fleet::decode_page_token(&fleet::encode_page_token(&id)).expect("valid"),
        Some(id)
    );
    assert_eq!(fleet::decode_page_token("").expect("empty"), None);
    for garbage in ["zz", "00", &hex::encode("2:abc"), &hex::encode("1:AB C")] {
        assert!(fleet::decode_page_token(garbage).is_err(), "{garbage}");
    }
}
