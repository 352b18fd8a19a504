//! Conformance suite for [`Store`] implementations.
//!
//! It is the whole contract a backend must pass, kept in one directory so that the author of a
//! new backend reads it there: this file holds the fixtures every part shares, and `tests/`
//! the parts: `records.rs` (agents, live summaries, tokens, tombstones), `reads.rs` (sample
//! ranges and totals, transitions), `isolation.rs` (prefix ids, orgs), `commits.rs`
//! (concurrency, encoding, durability), `commands.rs` (commands, invocations, events),
//! `series.rs` (samples: dedupe, rollups, compaction, retention, recovery), and the sled
//! module `sled_store.rs` with `space.rs`.
//!
//! Every `check_*` function states one piece of the `Store` contract against a fresh, empty
//! store (`check_commit_is_durable` takes a function that opens the same store again), so a
//! second backend proves itself by running them all: add a module like [`sled_store`] that
//! gives each case its own empty store. Checks that depend on one backend's files (schema
//! stamping, tampering with raw keys) live in that backend's module.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{Checkpoint, Purged, Retention, Snapshot, Store, Write};
use crate::domain::{
    AgentId, AgentRecord, AgentStatus, AgentTombstone, DiskUsage, EnrollmentTokenRecord,
    LiveRecord, OrgId, Role, Sample, SampleTotals, StatusReason, SystemInfo, Time, TokenId,
    TokenRecord, Transition,
};

// === fixtures ===

fn at(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

fn org(id: &str) -> OrgId {
    OrgId::new(id)
}

fn agent_id(id: &str) -> AgentId {
    AgentId::new(id)
}

fn agent(org_id: &str, id: &str, name: &str) -> AgentRecord {
    AgentRecord {
        id: agent_id(id),
        org: org(org_id),
        name: name.to_owned(),
        labels: [("env".to_owned(), "prod".to_owned())].into(),
        system_info: SystemInfo {
            hostname: format!("{id}.example"),
            os_name: "linux".to_owned(),
            logical_cores: 4,
            total_memory_bytes: 8 << 30,
            hardware_id: format!("hw-{id}"),
            boot_time: Some(Time::new(at(1_000)).expect("after 1970")),
            ..SystemInfo::default()
        },
        enrolled_at: at(2_000),
        pinned_labels: [("team".to_owned(), "core".to_owned())].into(),
        reclaim_until: Some(at(4_000)),
    }
}

fn live(status: AgentStatus, last_seq: u64) -> LiveRecord {
    LiveRecord {
        status,
        reason: StatusReason::Activity,
        since: at(3_000),
        last_seen: Some(at(3_500)),
        last_seq,
    }
}

fn sample_at(seq: u64, time: SystemTime) -> Sample {
    Sample {
        seq,
        time: Time::new(time).expect("after 1970"),
        cpu_percent: 12.5,
        load: [0.5, 0.25, 0.125],
        memory_used_bytes: 1 << 30,
        memory_total_bytes: 8 << 30,
        swap_used_bytes: 0,
        swap_total_bytes: 1 << 30,
        disks: vec![DiskUsage {
            mount_point: "/".to_owned(),
            used_bytes: 10 << 30,
            total_bytes: 100 << 30,
        }],
        network_rx_bytes: 1_000 * seq,
        network_tx_bytes: 500 * seq,
        uptime: Duration::from_secs(3_600),
        process_count: 200,
    }
}

fn sample(seq: u64, ms: u64) -> Sample {
    sample_at(seq, at(ms))
}

fn transition(
    org_id: &str,
    agent: &str,
    ms: u64,
    from: AgentStatus,
    to: AgentStatus,
) -> Transition {
    Transition {
        org: org(org_id),
        agent: agent_id(agent),
        time: at(ms),
        from,
        to,
        reason: StatusReason::Activity,
    }
}

fn token(org_id: &str, id: &str, role: Role, agent: Option<&str>) -> TokenRecord {
    TokenRecord {
        id: TokenId::new(id),
        org: org(org_id),
        role,
        name: format!("token {id}"),
        digest: [7; 32],
        created_at: at(1_000),
        expires_at: Some(at(9_000_000)),
        revoked: false,
        agent: agent.map(agent_id),
        server_admin: false,
        last_used_at: None,
    }
}

fn enrollment_token(org_id: &str, id: &str) -> EnrollmentTokenRecord {
    EnrollmentTokenRecord {
        id: TokenId::new(id),
        org: org(org_id),
        digest: [9; 32],
        description: "rack 4".to_owned(),
        labels: [("rack".to_owned(), "4".to_owned())].into(),
        max_uses: 10,
        use_count: 3,
        created_at: at(1_000),
        expires_at: None,
        revoked: false,
        allow_reclaim: true,
    }
}

fn put_sample(org_id: &str, agent: &str, sample: Sample) -> Write {
    Write::PutSample {
        org: org(org_id),
        agent: agent_id(agent),
        sample,
    }
}

fn put_live(org_id: &str, agent: &str, live: LiveRecord) -> Write {
    Write::PutLive {
        org: org(org_id),
        agent: agent_id(agent),
        live,
    }
}

/// `load()`, with every list sorted: the contract does not fix their order.
fn load_sorted(store: &dyn Store) -> Snapshot {
    let mut snapshot = store.load().expect("load");
    snapshot
        .agents
        .sort_by(|(a, _), (b, _)| (&a.org, &a.id).cmp(&(&b.org, &b.id)));
    snapshot
        .tokens
        .sort_by(|a, b| (&a.org, &a.id).cmp(&(&b.org, &b.id)));
    snapshot
        .enrollment_tokens
        .sort_by(|a, b| (&a.org, &a.id).cmp(&(&b.org, &b.id)));
    snapshot
        .tombstones
        .sort_by(|a, b| (&a.org, &a.agent).cmp(&(&b.org, &b.agent)));
    snapshot
}

/// The seqs of an agent's samples in `[from_ms, to_ms)`, at most `limit`.
fn seqs(
    store: &dyn Store,
    org_id: &str,
    agent: &str,
    from: SystemTime,
    to: SystemTime,
    limit: usize,
) -> Vec<u64> {
    store
        .samples(&org(org_id), &agent_id(agent), from, to, limit)
        .expect("samples")
        .iter()
        .map(|sample| sample.seq)
        .collect()
}

/// Every sample of an agent, as seqs.
fn all_seqs(store: &dyn Store, org_id: &str, agent: &str) -> Vec<u64> {
    seqs(store, org_id, agent, UNIX_EPOCH, at(u64::MAX), usize::MAX)
}

/// The times (in millis) of an agent's transitions, newest first.
fn transition_times(store: &dyn Store, org_id: &str, agent: &str, limit: usize) -> Vec<u128> {
    store
        .transitions(&org(org_id), &agent_id(agent), limit)
        .expect("transitions")
        .iter()
        .map(|t| {
            t.time
                .duration_since(UNIX_EPOCH)
                .expect("after epoch")
                .as_millis()
        })
        .collect()
}

mod commands;
mod commits;
mod isolation;
mod reads;
mod records;
mod series;
mod sled_store;
mod space;
