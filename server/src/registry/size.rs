//! What one agent weighs: an upper bound of its size, computed from the registry's entry
//! without copying it, so that a listing page or a watcher's queue can stop before it goes over
//! its byte budget instead of after.
//!
//! Invariant: [`agent_bytes`] is never below the protobuf encoding of the agent as
//! `convert::fleet::agent_to_pb` builds it (the convert tests pin this on agents at every input
//! limit), so a page cut by this estimate is also within its budget on the wire. It is also a
//! fair estimate of the agent's footprint in memory, which is what a queue budget protects.

use crate::domain::{AgentRecord, Labels, Sample, SessionId};

/// Everything of fixed size in one agent (numbers, enums, timestamps, message headers).
/// The wire form needs under 300 bytes for all of them.
const FIXED_BYTES: usize = 512;
/// Per string: its tag and length prefix on the wire, for any string under 256 MiB.
const PER_STRING: usize = 8;
/// Per label: the map entry's own header plus its key's and value's prefixes.
const PER_LABEL: usize = 16;
/// Per disk: its message header, the mount point's prefix and the two counters.
const PER_DISK: usize = 32;

/// An upper bound of the size of the agent `record` with its `latest` sample, `session` and
/// `identity_conflict` detail (see `AgentView`).
pub(crate) fn agent_bytes(
    record: &AgentRecord,
    latest: Option<&Sample>,
    session: Option<&SessionId>,
    identity_conflict: Option<&str>,
) -> usize {
    let info = &record.system_info;
    let strings = [
        record.id.as_str(),
        record.org.as_str(),
        &record.name,
        &info.hostname,
        &info.os_name,
        &info.os_version,
        &info.kernel_version,
        &info.architecture,
        &info.cpu_model,
        &info.hardware_id,
        // The agent version is sent twice: in `SystemInfo` and on the agent itself.
        &info.agent_version,
        &info.agent_version,
        session.map_or("", SessionId::as_str),
        identity_conflict.unwrap_or(""),
    ];
    let strings: usize = strings.iter().map(|s| s.len() + PER_STRING).sum();
    let disks: usize = latest.map_or(0, |sample| {
        sample
            .disks
            .iter()
            .map(|d| d.mount_point.len() + PER_DISK)
            .sum()
    });
    FIXED_BYTES
        + strings
        + labels_bytes(&record.labels)
        + labels_bytes(&record.pinned_labels)
        + disks
}

fn labels_bytes(labels: &Labels) -> usize {
    labels
        .iter()
        .map(|(k, v)| k.len() + v.len() + PER_LABEL)
        .sum()
}
