//! Heavy agents: records and samples as large as the server accepts (every `SystemInfo` text
//! field at its limit, the most labels of the longest keys and values, the most disks with the
//! longest mount points), and the code that seeds an org with them over the wire.
//!
//! The sizes come from the server's own limits, so when the limits change the heavy agents
//! follow and the tests that use them keep testing "as large as allowed". Used by the read-cost
//! tests and by the `read-cost` measurement binary.

use std::time::SystemTime;

use tether_proto as pb;
use tether_proto::text::{MAX_DISKS_PER_SAMPLE, MAX_REPORTED_TEXT_BYTES as MAX_TEXT_BYTES};
use tether_server::config::{
    DEFAULT_MAX_LABEL_KEY_BYTES, DEFAULT_MAX_LABEL_VALUE_BYTES, DEFAULT_MAX_LABELS,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::Bearer;

/// `prefix` padded with `fill` to exactly `len` bytes (or `prefix` if it is longer).
fn padded(prefix: &str, fill: char, len: usize) -> String {
    let mut text = prefix.to_owned();
    while text.len() < len {
        text.push(fill);
    }
    text
}

/// The `SystemInfo` of heavy machine `n`: every text field at [`MAX_TEXT_BYTES`], a distinct
/// hostname and hardware id.
pub fn heavy_system_info(n: usize) -> pb::SystemInfo {
    let text = |prefix: &str| padded(prefix, 'x', MAX_TEXT_BYTES);
    pb::SystemInfo {
        hostname: text(&format!("heavy-{n}-")),
        os_name: "linux".to_owned(),
        os_version: text("1."),
        kernel_version: text("6."),
        architecture: text("x86_64-"),
        cpu_model: text("cpu-"),
        logical_cores: 64,
        total_memory_bytes: 1 << 40,
        hardware_id: text(&format!("hw-heavy-{n}-")),
        boot_time: None,
        agent_version: text("v"),
    }
}

/// The most labels the default limits allow, each key and value at its longest.
pub fn heavy_labels() -> std::collections::HashMap<String, String> {
    (0..DEFAULT_MAX_LABELS)
        .map(|i| {
            (
                padded(&format!("k{i:03}"), 'k', DEFAULT_MAX_LABEL_KEY_BYTES),
                padded(&format!("v{i:03}"), 'v', DEFAULT_MAX_LABEL_VALUE_BYTES),
            )
        })
        .collect()
}

/// The enrollment of heavy machine `n`.
pub fn heavy_enroll_request(n: usize) -> pb::EnrollRequest {
    pb::EnrollRequest {
        system_info: Some(heavy_system_info(n)),
        labels: heavy_labels(),
        name: String::new(),
        previous_credential: String::new(),
    }
}

/// The `Hello` of heavy machine `n` enrolled as `agent_id`.
pub fn heavy_hello(agent_id: &str, n: usize) -> pb::Hello {
    pb::Hello {
        accepts_deferred_reports: false,
        agent_id: agent_id.to_owned(),
        agent_version: "heavy".to_owned(),
        system_info: Some(heavy_system_info(n)),
        labels: heavy_labels(),
        // An instance id at its limit: 64 characters of [a-z0-9-].
        instance_id: padded(&format!("heavy-{n}-"), 'i', 64),
        // The registry keeps none of these: they cost a listing nothing.
        journaled_invocation_ids: Vec::new(),
    }
}

/// A sample taken at `time` listing `n_disks` disks (at most the most allowed), each with the
/// longest mount point. Every disk has 1 GiB used of 4 GiB, so the totals are easy to check.
pub fn heavy_sample(seq: u64, time: SystemTime, n_disks: usize) -> pb::MetricsSample {
    pb::MetricsSample {
        disks: (0..n_disks.min(MAX_DISKS_PER_SAMPLE))
            .map(|d| pb::DiskUsage {
                mount_point: padded(&format!("/mnt/{d}/"), 'm', MAX_TEXT_BYTES),
                used_bytes: 1 << 30,
                total_bytes: 4 << 30,
            })
            .collect(),
        time: Some(time.into()),
        ..crate::sample(seq)
    }
}

/// How [`seed_heavy_agents`] seeds each machine.
#[derive(Clone, Copy, Debug)]
pub struct Seed {
    /// Samples each machine sends (the newest now, one second apart).
    pub samples: u64,
    /// Disks of each sample (see [`heavy_sample`]).
    pub disks: usize,
    /// Machines seeded at a time.
    pub concurrency: usize,
}

/// The most disks a sample may list ([`MAX_DISKS_PER_SAMPLE`]).
pub const MAX_DISKS: usize = MAX_DISKS_PER_SAMPLE;

/// Enrolls heavy machines `range` with `enroll_token` over `channel`, opens a session for each,
/// sends its samples as `seed` says and waits for their ack, then closes the session. Returns
/// (agent id, credential) in the order of `range`.
///
/// # Errors
///
/// The first status an RPC answered with.
pub async fn seed_heavy_agents(
    channel: &Channel,
    enroll_token: &str,
    range: std::ops::Range<usize>,
    seed: Seed,
) -> Result<Vec<(String, String)>, tonic::Status> {
    use futures::StreamExt as _;
    let seeded: Vec<Result<(String, String), tonic::Status>> = futures::stream::iter(range)
        .map(|n| async move {
            let mut enroll = pb::agent_service_client::AgentServiceClient::with_interceptor(
                channel.clone(),
                Bearer(Some(enroll_token.to_owned())),
            );
            let enrolled = enroll.enroll(heavy_enroll_request(n)).await?.into_inner();
            let now = SystemTime::now();
            let reports: Vec<pb::MetricsSample> = (1..=seed.samples)
                .map(|seq| {
                    let age = std::time::Duration::from_secs(seed.samples - seq);
                    heavy_sample(seq, now - age, seed.disks)
                })
                .collect();
            send_reports(channel, &enrolled, n, reports).await?;
            Ok((enrolled.agent_id, enrolled.agent_credential))
        })
        .buffered(seed.concurrency.max(1))
        .collect()
        .await;
    seeded.into_iter().collect()
}

/// One session of heavy machine `n`: `Hello`, then `samples` in reports of at most three (a
/// report stays under the default 1 MiB message limit), waiting for the last ack.
async fn send_reports(
    channel: &Channel,
    enrolled: &pb::EnrollResponse,
    n: usize,
    samples: Vec<pb::MetricsSample>,
) -> Result<(), tonic::Status> {
    let last = samples.last().map_or(0, |s| s.seq);
    let (tx, rx) = mpsc::channel(8);
    let hello = pb::connect_request::Message::Hello(heavy_hello(&enrolled.agent_id, n));
    tx.send(pb::ConnectRequest {
        message: Some(hello),
    })
    .await
    .map_err(|_| tonic::Status::internal("session queue closed"))?;
    let mut client = pb::agent_service_client::AgentServiceClient::with_interceptor(
        channel.clone(),
        Bearer(Some(enrolled.agent_credential.clone())),
    );
    let mut inbound = client.connect(ReceiverStream::new(rx)).await?.into_inner();
    let mut samples = samples.into_iter().peekable();
    while samples.peek().is_some() {
        let report: Vec<pb::MetricsSample> = samples.by_ref().take(3).collect();
        tx.send(pb::ConnectRequest {
            message: Some(pb::connect_request::Message::Metrics(pb::MetricsReport {
                deferred_seq: 0,
                previous_ack_latency: None,
                samples: report,
            })),
        })
        .await
        .map_err(|_| tonic::Status::internal("session queue closed"))?;
    }
    if last == 0 {
        return Ok(());
    }
    loop {
        match inbound.message().await? {
            Some(pb::ConnectResponse {
                message: Some(pb::connect_response::Message::MetricsAck(ack)),
            }) if ack.durable_seq >= last => return Ok(()),
            Some(_) => {}
            None => return Err(tonic::Status::unknown("session ended before the last ack")),
        }
    }
}
