//! Every renderer, and the JSON output, against the worst a server could send: every text field
//! carrying terminal escape sequences, bidi overrides and line breaks; times before 1970 and
//! beyond the year 9999; the largest and non-finite numbers; unknown and empty enum values.
//! Whatever comes, the CLI does not panic, its human output holds no non-printable character
//! but its own line breaks, and its JSON is exact.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use tether_proto as pb;

use super::{agents, audit, enroll, fleet, orgs, tokens};
use crate::format::{NASTY, is_printable};
use crate::view::{
    AgentDetailView, AgentView, ApiTokenView, AuditEventView, CreatedApiTokenView, CreatedOrgView,
    CreatedTokenView, EnrollmentTokenView, MetricsPointView, OrgView, ServerConfigView,
    SummaryView, TransitionView, WatchEventView,
};

/// Timestamps no view may choke on.
fn timestamps() -> Vec<Option<prost_types::Timestamp>> {
    let ts = |seconds, nanos| Some(prost_types::Timestamp { seconds, nanos });
    vec![
        None,
        ts(i64::MIN, 0),
        ts(-62_135_596_801, 0),
        ts(-1, 999_999_999),
        ts(-1, -5),
        ts(0, 0),
        ts(253_402_300_800, 0),
        ts(i64::MAX, i32::MAX),
    ]
}

fn nasty(idx: usize) -> String {
    NASTY[idx % NASTY.len()].to_owned()
}

fn labels(idx: usize) -> HashMap<String, String> {
    HashMap::from([
        (nasty(idx), nasty(idx + 1)),
        (nasty(idx + 2), String::new()),
    ])
}

fn sample(idx: usize, time: Option<prost_types::Timestamp>) -> pb::MetricsSample {
    pb::MetricsSample {
        seq: u64::MAX,
        time,
        cpu_percent: [f64::NAN, f64::INFINITY, -0.0, f64::MAX][idx % 4],
        load_1: f64::NEG_INFINITY,
        load_5: f64::MIN,
        load_15: f64::NAN,
        memory_used_bytes: u64::MAX,
        memory_total_bytes: idx as u64 % 2,
        swap_used_bytes: u64::MAX,
        swap_total_bytes: 0,
        disks: vec![pb::DiskUsage {
            mount_point: nasty(idx),
            used_bytes: u64::MAX,
            total_bytes: 1,
        }],
        network_rx_bytes: u64::MAX,
        network_tx_bytes: u64::MAX,
        uptime: Some(prost_types::Duration {
            seconds: if idx.is_multiple_of(2) { i64::MAX } else { -1 },
            nanos: 999_999_999,
        }),
        process_count: u32::MAX,
    }
}

fn agent(idx: usize, time: Option<prost_types::Timestamp>) -> pb::Agent {
    pb::Agent {
        agent_id: nasty(idx),
        org_id: nasty(idx + 1),
        name: nasty(idx + 2),
        labels: labels(idx),
        system_info: Some(pb::SystemInfo {
            hostname: nasty(idx),
            os_name: nasty(idx + 1),
            os_version: nasty(idx + 2),
            kernel_version: nasty(idx + 3),
            architecture: nasty(idx + 4),
            cpu_model: nasty(idx + 5),
            logical_cores: u32::MAX,
            total_memory_bytes: u64::MAX,
            hardware_id: nasty(idx + 6),
            boot_time: time,
            agent_version: nasty(idx),
        }),
        status: [999, -1, 0, 1][idx % 4],
        status_reason: [-7, 0, 42, 3][idx % 4],
        status_since: time,
        last_seen: time,
        enrolled_at: time,
        session_id: nasty(idx + 3),
        latest_metrics: Some(sample(idx, time)),
        health: [77, 0, -3, 2][idx % 4],
        duplicate_hardware_id: idx.is_multiple_of(2),
        agent_version: nasty(idx + 4),
        last_durable_seq: u64::MAX,
        identity_conflict: !idx.is_multiple_of(3),
        identity_conflict_detail: nasty(idx + 5),
    }
}

/// Asserts `text` (human output) carries nothing a terminal would act on.
#[track_caller]
fn assert_printable(what: &str, text: &str) {
    let shown = crate::format::terminal_safe(text);
    assert!(
        text.chars().all(|c| is_printable(c) || c == '\n'),
        "{what} leaks a non-printable character:\n{shown}"
    );
}

/// Asserts `value`'s JSON, as `-o json` writes it, is valid, printable and exact.
#[track_caller]
fn assert_exact_json<T: serde::Serialize>(what: &str, value: &T) {
    let mut out = Vec::new();
    crate::write_json(&mut out, value).unwrap_or_else(|e| panic!("{what}: {e}"));
    let text = String::from_utf8(out).expect("utf-8");
    assert_printable(what, &text);
    let parsed: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    let direct = serde_json::to_value(value).expect("serializes");
    assert_eq!(parsed, direct, "{what}: JSON is exact");
}

#[test]
fn agent_renderers_survive_anything_a_server_sends() {
    let now = SystemTime::now();
    for (idx, time) in timestamps().into_iter().enumerate() {
        let views: Vec<AgentView> = (0..3).map(|i| agent(idx + i, time).into()).collect();
        assert_printable(
            "agents list",
            &agents::render::render_table(&views, false, true, now),
        );
        assert_printable(
            "agents list -o wide",
            &agents::render::render_table(&views, true, true, now),
        );
        assert_printable(
            "agents list -o csv",
            &agents::render::render_csv(&views, true),
        );
        assert_exact_json("agents list -o json", &views);
        let detail = AgentDetailView {
            agent: agent(idx, time).into(),
            recent_transitions: vec![TransitionView::from(pb::StatusTransition {
                time,
                from_status: 99,
                to_status: -1,
                reason: 1234,
            })],
        };
        assert_printable("agents get", &agents::render::render_detail(&detail, now));
        assert_printable(
            "agents allow-reclaim",
            &agents::render_reclaim_allowed(&nasty(idx), time),
        );
        assert_exact_json("agents get -o json", &detail);
        for kind in -1..10 {
            let event = WatchEventView::from(pb::WatchAgentsResponse {
                kind,
                agent: Some(agent(idx, time)),
                previous_status: 1000,
                time,
                revision: u64::MAX,
            });
            assert_printable("agents watch", &agents::render::render_event(&event, now));
            assert_exact_json("agents watch -o json", &event);
        }
    }
}

#[test]
fn fleet_renderers_survive_anything_a_server_sends() {
    for (idx, time) in timestamps().into_iter().enumerate() {
        let point = MetricsPointView::from(pb::MetricsPoint {
            time,
            sample_count: u32::MAX,
            cpu_percent: f64::NAN,
            load_1: f64::INFINITY,
            load_5: f64::MIN,
            load_15: -0.0,
            memory_used_bytes: u64::MAX,
            memory_total_bytes: 0,
            swap_used_bytes: u64::MAX,
            swap_total_bytes: u64::MAX,
            disk_used_bytes: u64::MAX,
            disk_total_bytes: 1,
            network_rx_bytes_per_second: f64::MAX,
            network_tx_bytes_per_second: f64::NEG_INFINITY,
            process_count: u32::MAX,
        });
        let points = [point];
        assert_printable("metrics", &fleet::render_points_table(&points));
        assert_printable("metrics -o csv", &fleet::render_points_csv(&points));
        assert_exact_json("metrics -o json", &points);
        let summary = SummaryView::from(pb::GetFleetSummaryResponse {
            total: u32::MAX,
            by_os: HashMap::from([(nasty(idx), u32::MAX), (String::new(), 0)]),
            ..Default::default()
        });
        assert_printable("summary", &fleet::render_summary(&summary));
        assert_exact_json("summary -o json", &summary);
        let huge = Some(prost_types::Duration {
            seconds: i64::MAX,
            nanos: 999_999_999,
        });
        let negative = Some(prost_types::Duration {
            seconds: -1,
            nanos: 0,
        });
        let config = ServerConfigView::from(pb::GetServerConfigResponse {
            server_version: nasty(idx),
            heartbeat_interval: huge,
            metrics_interval: negative,
            max_message_bytes: u64::MAX,
            features: vec![nasty(idx + 1), nasty(idx + 2)],
            ..Default::default()
        });
        assert_printable("config", &fleet::render_config(&config));
        assert_exact_json("config -o json", &config);
    }
}

#[test]
fn admin_renderers_survive_anything_a_server_sends() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    for (idx, time) in timestamps().into_iter().enumerate() {
        let api = ApiTokenView::from_pb(
            pb::ApiToken {
                token_id: nasty(idx),
                org_id: nasty(idx + 1),
                name: nasty(idx + 2),
                role: [0, -1, 99, 4][idx % 4],
                created_at: time,
                expires_at: time,
                revoked: idx.is_multiple_of(3),
                last_used_at: time,
                server_admin: idx.is_multiple_of(2),
            },
            now,
        );
        let apis = [api.clone()];
        assert_printable("tokens list", &tokens::render_table(&apis, now));
        assert_exact_json("tokens list -o json", &apis);
        let created = CreatedApiTokenView {
            token: api.clone(),
            secret: nasty(idx + 3),
        };
        assert_printable("tokens create", &tokens::render_created(&created, now));
        assert_exact_json("tokens create -o json", &created);

        let enrollment = EnrollmentTokenView::from_pb(
            pb::EnrollmentToken {
                token_id: nasty(idx),
                org_id: nasty(idx + 1),
                description: nasty(idx + 2),
                labels: labels(idx),
                max_uses: u32::MAX,
                use_count: u32::MAX,
                created_at: time,
                expires_at: time,
                revoked: false,
                allow_reclaim: idx.is_multiple_of(2),
            },
            now,
        );
        let enrollments = [enrollment.clone()];
        assert_printable(
            "enroll-token list",
            &enroll::render_table(&enrollments, now),
        );
        assert_printable(
            "enroll-token list -o csv",
            &enroll::render_csv(&enrollments),
        );
        assert_exact_json("enroll-token list -o json", &enrollments);
        let created = CreatedTokenView {
            token: enrollment,
            secret: nasty(idx + 4),
        };
        assert_printable(
            "enroll-token create",
            &enroll::render_created(&created, now),
        );

        let org = OrgView::from(pb::Org {
            org_id: nasty(idx),
            display_name: nasty(idx + 1),
            created_at: time,
        });
        assert_printable(
            "orgs list",
            &orgs::render_table(std::slice::from_ref(&org), now),
        );
        let created = CreatedOrgView {
            org,
            admin_token: Some(api),
            admin_secret: nasty(idx + 2),
        };
        assert_printable("orgs create", &orgs::render_created(&created, now));
        assert_exact_json("orgs create -o json", &created);

        let event = AuditEventView::from(pb::AuditEvent {
            seq: u64::MAX,
            org_id: nasty(idx),
            time,
            actor_token_id: nasty(idx + 1),
            actor_name: nasty(idx + 2),
            actor_role: -5,
            method: nasty(idx + 3),
            target: nasty(idx + 4),
            outcome: 99,
            status_code: i32::MIN,
            message: nasty(idx + 5),
            prev_hash: vec![0xff; 3],
            hash: Vec::new(),
        });
        let events = [event];
        assert_printable("audit", &audit::render_table(&events, now));
        assert_exact_json("audit -o json", &events);
    }
}

#[test]
fn server_messages_in_errors_are_escaped() {
    for text in NASTY {
        for code in [
            tonic::Code::PermissionDenied,
            tonic::Code::NotFound,
            tonic::Code::InvalidArgument,
            tonic::Code::Internal,
            tonic::Code::Unavailable,
        ] {
            let status = tonic::Status::new(code, *text);
            let err = crate::CliError::from_status(&status, "http://127.0.0.1:1", None);
            let line = err.to_string();
            assert!(line.chars().all(is_printable), "{code:?}: {line:?}");
        }
    }
}
