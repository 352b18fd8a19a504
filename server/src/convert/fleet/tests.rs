//! Unit tests of what the read budgets assume about the wire: the registry's size estimate
//! never falls below an agent's encoding, the largest valid agent fits the smallest budget,
//! metrics points have a bounded size, and `GetAgent` trims its history to fit.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::*;
use crate::config::{Limits, MIN_RESPONSE_BYTES};
use crate::convert::agent::MAX_NAME_BYTES;
use crate::domain::{
    AgentRecord, AgentStatus, DiskUsage, Labels, OrgId, Sample, SessionId, StatusReason,
    SystemInfo, Time,
};
use crate::identity::MAX_CONFLICT_DETAIL_BYTES;
use crate::registry::agent_bytes;
use crate::service::fleet::RECENT_TRANSITIONS;
use tether_proto::text::{MAX_DISKS_PER_SAMPLE, MAX_REPORTED_TEXT_BYTES as MAX_TEXT_BYTES};

/// Far enough in the future that every timestamp field takes its longest varint.
fn late() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::new(253_402_300_799, 999_999_999)
}

fn text(fill: char, len: usize) -> String {
    std::iter::repeat_n(fill, len).collect()
}

/// An agent with `labels`, `disks` and every text field `len` bytes long; every number at its
/// largest, so that each takes its longest encoding.
fn agent(len: usize, labels: Labels, disks: Vec<DiskUsage>) -> AgentView {
    let info = SystemInfo {
        hostname: text('h', len),
        os_name: text('o', len),
        os_version: text('v', len),
        kernel_version: text('k', len),
        architecture: text('a', len),
        cpu_model: text('c', len),
        logical_cores: u32::MAX,
        total_memory_bytes: u64::MAX,
        hardware_id: text('w', len),
        boot_time: Some(Time::new(late()).expect("in range")),
        agent_version: text('g', len),
    };
    let record = AgentRecord {
        id: AgentId::new(text('i', 64)),
        org: OrgId::new(text('o', 64)),
        name: text('n', len.min(MAX_NAME_BYTES)),
        labels: labels.clone(),
        system_info: info,
        enrolled_at: late(),
        pinned_labels: labels,
        reclaim_until: Some(late()),
    };
    AgentView {
        record: Arc::new(record),
        status: AgentStatus::Expired,
        reason: StatusReason::ServerRestart,
        since: late(),
        last_seen: Some(late()),
        session: Some(SessionId::new(text('s', 64))),
        latest: Some(Arc::new(Sample {
            seq: u64::MAX,
            time: Time::new(late()).expect("in range"),
            cpu_percent: 100.0,
            load: [f64::MAX; 3],
            memory_used_bytes: u64::MAX,
            memory_total_bytes: u64::MAX,
            swap_used_bytes: u64::MAX,
            swap_total_bytes: u64::MAX,
            disks,
            network_rx_bytes: u64::MAX,
            network_tx_bytes: u64::MAX,
            uptime: Duration::new(u64::MAX / 2, 999_999_999),
            process_count: u32::MAX,
        })),
        last_seq: u64::MAX,
        health: crate::domain::Health::Critical,
        duplicate_hardware_id: true,
        // A detail four times the text's length reaches its bound with text at the limit.
        identity_conflict: Some(text('x', (4 * len).min(MAX_CONFLICT_DETAIL_BYTES))),
    }
}

/// The largest agent the server accepts, by its input limits.
fn largest() -> AgentView {
    let limits = Limits::default();
    let labels = (0..limits.max_labels)
        .map(|i| {
            (
                format!("{i:0>width$}", width = limits.max_label_key_bytes),
                text('v', limits.max_label_value_bytes),
            )
        })
        .collect();
    let disks = (0..MAX_DISKS_PER_SAMPLE)
        .map(|_| DiskUsage {
            mount_point: text('m', MAX_TEXT_BYTES),
            used_bytes: u64::MAX,
            total_bytes: u64::MAX,
        })
        .collect();
    agent(MAX_TEXT_BYTES, labels, disks)
}

fn estimate(view: &AgentView) -> usize {
    agent_bytes(
        &view.record,
        view.latest.as_deref(),
        view.session.as_ref(),
        view.identity_conflict.as_deref(),
    )
}

#[test]
fn the_size_estimate_never_falls_below_the_encoding() {
    let tiny_labels: Labels = (0..64).map(|i| (i.to_string(), String::new())).collect();
    let empty_disks = vec![
        DiskUsage {
            mount_point: String::new(),
            used_bytes: u64::MAX,
            total_bytes: u64::MAX,
        };
        256
    ];
    let mut bare = agent(0, Labels::new(), vec![]);
    bare.latest = None;
    bare.session = None;
    bare.identity_conflict = None;
    for view in [
        bare,
        agent(0, tiny_labels.clone(), empty_disks.clone()),
        agent(1, tiny_labels, empty_disks),
        agent(200, Labels::new(), vec![]),
        largest(),
    ] {
        // As one element of a repeated field: its tag and length prefix too.
        let encoded = agent_to_pb(&view).encoded_len();
        let on_the_wire = encoded + prost::length_delimiter_len(encoded) + 1;
        assert!(
            on_the_wire <= estimate(&view),
            "{on_the_wire} bytes on the wire, estimated {}",
            estimate(&view)
        );
    }
}

#[test]
fn the_largest_valid_agent_fits_the_smallest_budget() {
    let view = largest();
    let transitions = vec![
        Transition {
            org: view.record.org.clone(),
            agent: view.record.id.clone(),
            time: late(),
            from: AgentStatus::Online,
            to: AgentStatus::Offline,
            reason: StatusReason::ServerRestart,
        };
        RECENT_TRANSITIONS
    ];
    let response = get_agent_to_pb(&view, &transitions, usize::MAX);
    assert_eq!(response.recent_transitions.len(), RECENT_TRANSITIONS);
    assert!(
        response.encoded_len() <= MIN_RESPONSE_BYTES,
        "{} bytes",
        response.encoded_len()
    );
    let queued = estimate(&view) + std::mem::size_of::<crate::registry::FleetEvent>();
    assert!(
        queued <= MIN_RESPONSE_BYTES,
        "{queued} bytes in a watch queue"
    );
}

#[test]
fn get_agent_keeps_the_newest_transitions_that_fit() {
    let view = agent(10, Labels::new(), vec![]);
    let transitions: Vec<Transition> = (0..20)
        .map(|i| Transition {
            org: view.record.org.clone(),
            agent: view.record.id.clone(),
            time: SystemTime::UNIX_EPOCH + Duration::from_secs(1000 - i),
            from: AgentStatus::Online,
            to: AgentStatus::Offline,
            reason: StatusReason::Silent,
        })
        .collect();
    let whole = get_agent_to_pb(&view, &transitions, usize::MAX);
    let budget = whole.encoded_len() - 1;
    let fitted = get_agent_to_pb(&view, &transitions, budget);
    assert!(fitted.encoded_len() <= budget);
    assert_eq!(fitted.recent_transitions.len(), 19);
    assert_eq!(
        fitted.recent_transitions[..],
        whole.recent_transitions[..19],
        "the oldest one went"
    );
}

#[test]
fn a_metrics_point_has_a_bounded_encoding() {
    let point = MetricsPoint {
        time: late(),
        sample_count: u32::MAX,
        cpu_percent: f64::MAX,
        load: [f64::MAX; 3],
        memory_used_bytes: u64::MAX,
        memory_total_bytes: u64::MAX,
        swap_used_bytes: u64::MAX,
        swap_total_bytes: u64::MAX,
        disk_used_bytes: u64::MAX,
        disk_total_bytes: u64::MAX,
        network_rx_bytes_per_second: f64::MAX,
        network_tx_bytes_per_second: f64::MAX,
        process_count: u32::MAX,
    };
    let response = get_metrics_to_pb(&vec![point.clone(); 1000]);
    assert!(response.encoded_len() <= 1000 * MAX_METRICS_POINT_BYTES);
    let n = metrics_points_within(MIN_RESPONSE_BYTES);
    assert!(get_metrics_to_pb(&vec![point; n]).encoded_len() <= MIN_RESPONSE_BYTES);
}
