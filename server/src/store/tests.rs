//! Conformance suite for [`Store`] implementations.
//!
//! Longer than usual: it is the whole contract a backend must pass, kept in one place so that
//! the author of a new backend reads it there: this file (records, and the sled module), and
//! `tests/series.rs` (samples: dedupe, rollups, compaction, retention, recovery).
//!
//! Every `check_*` function states one piece of the `Store` contract against a fresh, empty
//! store (`check_commit_is_durable` takes a function that opens the same store again), so a
//! second backend proves itself by running them all: add a module like [`sled_store`] that
//! gives each case its own empty store. Checks that depend on one backend's files (schema
//! stamping, tampering with raw keys) live in that backend's module.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{Purged, Retention, Snapshot, Store, Write};
use crate::domain::{
    AgentId, AgentRecord, AgentStatus, AgentTombstone, DiskUsage, EnrollmentTokenRecord,
    LiveRecord, OrgId, Role, Sample, SampleTotals, StatusReason, SystemInfo, Time, TokenId,
    TokenRecord, Transition,
};

mod commands;

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

// === the contract ===

pub(crate) fn check_empty_load(store: &dyn Store) {
    assert_eq!(store.load().expect("load"), Snapshot::default());
    assert_eq!(all_seqs(store, "acme", "web-1"), Vec::<u64>::new());
    assert_eq!(
        transition_times(store, "acme", "web-1", 10),
        Vec::<u128>::new()
    );
    let everything = Retention {
        samples: at(u64::MAX),
        five_minutes: at(u64::MAX),
        one_hour: at(u64::MAX),
    };
    assert_eq!(store.purge(&everything).expect("purge"), Purged::default());
    let compacted = store.compact(at(u64::MAX), true).expect("compact");
    assert_eq!((compacted.sealed, compacted.snapshots), (0, 0));
    store.commit_writes(&[]).expect("an empty commit is fine");
    assert_eq!(store.load().expect("load"), Snapshot::default());
}

pub(crate) fn check_agent_and_live_round_trip(store: &dyn Store) {
    let web = agent("acme", "web-1", "web one");
    let db = agent("acme", "db-1", "db one");
    let web_live = live(AgentStatus::Online, 42);
    store
        .commit_writes(&[
            Write::PutAgent(web.clone()),
            put_live("acme", "web-1", web_live.clone()),
            Write::PutAgent(db.clone()),
        ])
        .expect("commit");

    let snapshot = load_sorted(store);
    assert_eq!(
        snapshot.agents,
        vec![(db.clone(), None), (web.clone(), Some(web_live))]
    );
    assert!(snapshot.tokens.is_empty());
    assert!(snapshot.enrollment_tokens.is_empty());

    // A live record written in a later commit joins its agent too.
    let db_live = live(AgentStatus::Offline, 0);
    store
        .commit_writes(&[put_live("acme", "db-1", db_live.clone())])
        .expect("commit");
    assert_eq!(load_sorted(store).agents[0], (db, Some(db_live)));
}

pub(crate) fn check_overwrite(store: &dyn Store) {
    let first = agent("acme", "web-1", "web one");
    store
        .commit_writes(&[
            Write::PutAgent(first.clone()),
            put_live("acme", "web-1", live(AgentStatus::Online, 1)),
        ])
        .expect("commit");

    let mut second = first.clone();
    second.name = "renamed".to_owned();
    second.labels.insert("tier".to_owned(), "gold".to_owned());
    let second_live = live(AgentStatus::Stale, 7);
    store
        .commit_writes(&[
            Write::PutAgent(second.clone()),
            put_live("acme", "web-1", second_live.clone()),
        ])
        .expect("commit");
    assert_eq!(load_sorted(store).agents, vec![(second, Some(second_live))]);

    // Within one commit, the last write of a key wins.
    let mut third = first.clone();
    third.name = "third".to_owned();
    store
        .commit_writes(&[Write::PutAgent(first), Write::PutAgent(third.clone())])
        .expect("commit");
    assert_eq!(load_sorted(store).agents[0].0, third);
}

pub(crate) fn check_samples_range(store: &dyn Store) {
    // Seqs increase; times do not (the agent's clock went back), over two commits.
    store
        .commit_writes(&[
            put_sample("acme", "web-1", sample(1, 3_000)),
            put_sample("acme", "web-1", sample(2, 1_000)),
        ])
        .expect("commit");
    store
        .commit_writes(&[
            put_sample("acme", "web-1", sample(3, 4_000)),
            put_sample("acme", "web-1", sample(4, 2_000)),
        ])
        .expect("commit");

    // from is inclusive, to exclusive, results in time order.
    assert_eq!(
        seqs(store, "acme", "web-1", at(2_000), at(4_000), 10),
        [4, 1]
    );
    assert_eq!(
        seqs(store, "acme", "web-1", at(1_999), at(4_001), 10),
        [4, 1, 3]
    );
    assert_eq!(all_seqs(store, "acme", "web-1"), [2, 4, 1, 3]);
    // limit keeps the oldest.
    assert_eq!(seqs(store, "acme", "web-1", at(0), at(10_000), 2), [2, 4]);
    assert_eq!(
        seqs(store, "acme", "web-1", at(0), at(10_000), 0),
        Vec::<u64>::new()
    );
    // Empty and inverted ranges.
    assert_eq!(
        seqs(store, "acme", "web-1", at(2_000), at(2_000), 10),
        Vec::<u64>::new()
    );
    assert_eq!(
        seqs(store, "acme", "web-1", at(4_000), at(1_000), 10),
        Vec::<u64>::new()
    );
    assert_eq!(
        seqs(store, "acme", "web-1", at(5_000), at(9_000), 10),
        Vec::<u64>::new()
    );
    // A range starting before the epoch is fine.
    assert_eq!(
        seqs(
            store,
            "acme",
            "web-1",
            UNIX_EPOCH - Duration::from_secs(60),
            at(1_001),
            10
        ),
        [2]
    );
    // Another agent, another org: nothing.
    assert_eq!(all_seqs(store, "acme", "web-2"), Vec::<u64>::new());
    assert_eq!(all_seqs(store, "other", "web-1"), Vec::<u64>::new());

    // Two samples in the same millisecond are both kept, in seq order.
    store
        .commit_writes(&[
            put_sample("acme", "web-1", sample(5, 6_000)),
            put_sample("acme", "web-1", sample(6, 6_000)),
        ])
        .expect("commit");
    assert_eq!(
        seqs(store, "acme", "web-1", at(6_000), at(6_001), 10),
        [5, 6]
    );

    // Times are stored in whole milliseconds (truncated), and the bounds apply to that.
    let half = at(7_000) + Duration::from_micros(500);
    store
        .commit_writes(&[put_sample("acme", "web-1", sample_at(7, half))])
        .expect("commit");
    let micro = Duration::from_micros(1);
    assert_eq!(
        seqs(store, "acme", "web-1", at(7_000), at(7_000) + micro, 10),
        [7]
    );
    assert_eq!(
        seqs(store, "acme", "web-1", at(7_000) - micro, at(7_000), 10),
        Vec::<u64>::new()
    );
    assert_eq!(
        seqs(store, "acme", "web-1", at(7_000) + micro, at(8_000), 10),
        Vec::<u64>::new()
    );
    let read = store
        .samples(&org("acme"), &agent_id("web-1"), at(7_000), at(7_001), 1)
        .expect("samples");
    assert_eq!(read[0].time.get(), at(7_000));

    // Every field survives in its stored form (`chunk.rs`, "Stored precision").
    let stored = store
        .samples(&org("acme"), &agent_id("web-1"), at(3_000), at(3_001), 1)
        .expect("samples");
    let expected = crate::store::chunk::stored(&sample(1, 3_000)).expect("storable");
    assert_eq!(stored, [expected]);
}

pub(crate) fn check_sample_totals(store: &dyn Store) {
    let with_disks = |seq: u64, ms: u64, n_disks: u64| Sample {
        disks: (0..n_disks)
            .map(|d| DiskUsage {
                mount_point: format!("/mnt/{d}"),
                used_bytes: d + 1,
                total_bytes: 10 * (d + 1),
            })
            .collect(),
        ..sample(seq, ms)
    };
    store
        .commit_writes(&[
            put_sample("acme", "web-1", with_disks(1, 1_000, 0)),
            put_sample("acme", "web-1", with_disks(2, 2_000, 3)),
            put_sample("acme", "web-1", with_disks(3, 3_000, 256)),
            put_sample("acme", "web-10", with_disks(1, 1_500, 1)),
            put_sample("other", "web-1", with_disks(1, 1_500, 1)),
        ])
        .expect("commit");
    // The same samples, the same order and the same range rules as `samples`, disks summed.
    for (from, to) in [
        (0, 10_000),
        (1_000, 3_000),
        (1_001, 3_001),
        (2_000, 2_000),
        (5, 1),
    ] {
        let (from, to) = (at(from), at(to));
        let totals: Vec<SampleTotals> = store
            .sample_totals(&org("acme"), &agent_id("web-1"), from, to)
            .collect::<Result<_, _>>()
            .expect("sample totals");
        let samples = store
            .samples(&org("acme"), &agent_id("web-1"), from, to, usize::MAX)
            .expect("samples");
        let expected: Vec<SampleTotals> = samples.iter().map(SampleTotals::of).collect();
        assert_eq!(totals, expected, "range {from:?}..{to:?}");
    }
    let all: Vec<SampleTotals> = store
        .sample_totals(&org("acme"), &agent_id("web-1"), at(0), at(10_000))
        .collect::<Result<_, _>>()
        .expect("sample totals");
    assert_eq!(all.iter().map(|t| t.seq).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(
        all.iter()
            .map(|t| (t.disk_used_bytes, t.disk_total_bytes))
            .collect::<Vec<_>>(),
        [(0, 0), (6, 60), (256 * 257 / 2, 10 * 256 * 257 / 2)]
    );
}

pub(crate) fn check_prefix_agent_ids_isolated(store: &dyn Store) {
    // `ab-c` sorts before `ab/`, `abc` after it: neither may leak into a scan of `ab`.
    let agents = ["ab", "abc", "ab-c", "a"];
    let mut writes = Vec::new();
    for (agent_idx, agent) in agents.iter().enumerate() {
        let base = 100 * agent_idx as u64;
        for seq in 1..=3 {
            writes.push(put_sample("acme", agent, sample(base + seq, 1_000 * seq)));
        }
        for ms in [1_000 + base, 2_000 + base] {
            writes.push(Write::PutTransition(transition(
                "acme",
                agent,
                ms,
                AgentStatus::Offline,
                AgentStatus::Online,
            )));
        }
    }
    store.commit_writes(&writes).expect("commit");

    for (agent_idx, agent) in agents.iter().enumerate() {
        let base = 100 * agent_idx as u64;
        assert_eq!(
            all_seqs(store, "acme", agent),
            [base + 1, base + 2, base + 3],
            "samples of {agent}"
        );
        assert_eq!(
            transition_times(store, "acme", agent, 10),
            [u128::from(2_000 + base), u128::from(1_000 + base)],
            "transitions of {agent}"
        );
    }
}

pub(crate) fn check_orgs_isolated(store: &dyn Store) {
    // Org ids that are prefixes of each other, and the same agent and token ids in each.
    let orgs = ["acme", "acme-eu", "acmecorp"];
    let mut writes = Vec::new();
    for (org_idx, org_id) in orgs.iter().enumerate() {
        let n = org_idx as u64;
        writes.push(Write::PutAgent(agent(
            org_id,
            "web-1",
            &format!("web of {org_id}"),
        )));
        writes.push(put_live(org_id, "web-1", live(AgentStatus::Online, n)));
        writes.push(put_sample(org_id, "web-1", sample(10 + n, 1_000 + n)));
        writes.push(Write::PutTransition(transition(
            org_id,
            "web-1",
            5_000 + n,
            AgentStatus::Offline,
            AgentStatus::Online,
        )));
        writes.push(Write::PutToken(token(org_id, "tok-1", Role::Admin, None)));
        writes.push(Write::PutEnrollmentToken(enrollment_token(org_id, "enr-1")));
    }
    store.commit_writes(&writes).expect("commit");

    let snapshot = load_sorted(store);
    assert_eq!(snapshot.agents.len(), orgs.len());
    assert_eq!(snapshot.tokens.len(), orgs.len());
    assert_eq!(snapshot.enrollment_tokens.len(), orgs.len());
    for (org_idx, org_id) in orgs.iter().enumerate() {
        let n = org_idx as u64;
        let (stored, stored_live) = &snapshot.agents[org_idx];
        assert_eq!(stored, &agent(org_id, "web-1", &format!("web of {org_id}")));
        // `load` folds the newest sample (seq 10 + n) into the live summary's durable mark.
        let stored_live = stored_live.as_ref().expect("live record");
        assert_eq!(
            (
                stored_live.status,
                stored_live.reason,
                stored_live.since,
                stored_live.last_seq
            ),
            (
                AgentStatus::Online,
                StatusReason::Activity,
                at(3_000),
                10 + n
            )
        );
        assert_eq!(snapshot.tokens[org_idx].org, org(org_id));
        assert_eq!(snapshot.enrollment_tokens[org_idx].org, org(org_id));
        assert_eq!(
            all_seqs(store, org_id, "web-1"),
            [10 + n],
            "samples of {org_id}"
        );
        assert_eq!(
            transition_times(store, org_id, "web-1", 10),
            [u128::from(5_000 + n)],
            "transitions of {org_id}"
        );
    }
}

pub(crate) fn check_transitions_newest_first(store: &dyn Store) {
    use AgentStatus::{Offline, Online, Stale};
    // Out of time order across commits.
    store
        .commit_writes(&[
            Write::PutTransition(transition("acme", "web-1", 1_000, Offline, Online)),
            Write::PutTransition(transition("acme", "web-1", 3_000, Stale, Online)),
        ])
        .expect("commit");
    store
        .commit_writes(&[Write::PutTransition(transition(
            "acme", "web-1", 2_000, Online, Stale,
        ))])
        .expect("commit");
    // Two in the same millisecond, in one commit: commit order decides.
    store
        .commit_writes(&[
            Write::PutTransition(transition("acme", "web-1", 4_000, Online, Stale)),
            Write::PutTransition(transition("acme", "web-1", 4_000, Stale, Offline)),
        ])
        .expect("commit");
    // And a third in that millisecond, in a later commit.
    store
        .commit_writes(&[Write::PutTransition(transition(
            "acme", "web-1", 4_000, Offline, Online,
        ))])
        .expect("commit");

    let all = store
        .transitions(&org("acme"), &agent_id("web-1"), 100)
        .expect("transitions");
    let steps: Vec<_> = all.iter().map(|t| (t.time, t.from, t.to)).collect();
    assert_eq!(
        steps,
        [
            (at(4_000), Offline, Online),
            (at(4_000), Stale, Offline),
            (at(4_000), Online, Stale),
            (at(3_000), Stale, Online),
            (at(2_000), Online, Stale),
            (at(1_000), Offline, Online),
        ]
    );
    assert_eq!(all[0], transition("acme", "web-1", 4_000, Offline, Online));

    assert_eq!(
        transition_times(store, "acme", "web-1", 4),
        [4_000, 4_000, 4_000, 3_000]
    );
    assert_eq!(
        transition_times(store, "acme", "web-1", 0),
        Vec::<u128>::new()
    );
    assert_eq!(
        transition_times(store, "acme", "web-2", 10),
        Vec::<u128>::new()
    );
}

pub(crate) fn check_tokens_round_trip(store: &dyn Store) {
    let admin = token("acme", "tok-admin", Role::Admin, None);
    let cred = token("acme", "tok-agent", Role::Agent, Some("web-1"));
    let enroll = enrollment_token("acme", "enr-1");
    store
        .commit_writes(&[
            Write::PutToken(admin.clone()),
            Write::PutToken(cred.clone()),
            Write::PutEnrollmentToken(enroll.clone()),
        ])
        .expect("commit");
    let snapshot = load_sorted(store);
    assert_eq!(snapshot.tokens, [admin.clone(), cred.clone()]);
    assert_eq!(snapshot.enrollment_tokens, std::slice::from_ref(&enroll));
    assert!(snapshot.agents.is_empty());

    // Revocation and use counts are overwrites.
    let mut revoked = admin;
    revoked.revoked = true;
    let mut used = enroll;
    used.use_count += 1;
    store
        .commit_writes(&[
            Write::PutToken(revoked.clone()),
            Write::PutEnrollmentToken(used.clone()),
        ])
        .expect("commit");
    let snapshot = load_sorted(store);
    assert_eq!(snapshot.tokens, [revoked, cred]);
    assert_eq!(snapshot.enrollment_tokens, [used]);
}

/// A token's last use is its own record: written after a revocation (authentication read the
/// token before it was revoked), it sets the last-use time and never un-revokes the token.
pub(crate) fn check_token_use_never_undoes_a_revocation(store: &dyn Store) {
    let mut token = token("acme", "tok-ci", Role::Viewer, None);
    store
        .commit_writes(&[Write::PutToken(token.clone())])
        .expect("commit");
    let used_at = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    token.revoked = true;
    store
        .commit_writes(&[Write::PutToken(token.clone())])
        .expect("revoke");
    store
        .commit_writes(&[Write::PutTokenUse {
            org: org("acme"),
            id: token.id.clone(),
            at: used_at,
        }])
        .expect("use");
    let snapshot = load_sorted(store);
    token.last_used_at = Some(used_at);
    assert_eq!(snapshot.tokens, [token.clone()]);

    // Deleting the token forgets its use.
    store
        .commit_writes(&[
            Write::DeleteToken {
                org: org("acme"),
                id: token.id.clone(),
            },
            Write::PutToken(TokenRecord {
                last_used_at: None,
                ..token.clone()
            }),
        ])
        .expect("delete, then create again under the same id");
    assert_eq!(
        load_sorted(store).tokens[0].last_used_at,
        None,
        "a deleted token's use is gone with it"
    );
}

pub(crate) fn check_deleted_token_is_gone(store: &dyn Store) {
    let old = token("acme", "tok-old", Role::Agent, Some("web-1"));
    let new = token("acme", "tok-new", Role::Agent, Some("web-1"));
    let other_org = token("beta", "tok-old", Role::Agent, Some("web-1"));
    store
        .commit_writes(&[
            Write::PutToken(old.clone()),
            Write::PutToken(new.clone()),
            Write::PutToken(other_org.clone()),
        ])
        .expect("commit");
    // Deleting a token (and deleting one that does not exist) removes only that org's record.
    store
        .commit_writes(&[
            Write::DeleteToken {
                org: org("acme"),
                id: old.id.clone(),
            },
            Write::DeleteToken {
                org: org("acme"),
                id: TokenId::new("never-issued"),
            },
        ])
        .expect("commit");
    assert_eq!(load_sorted(store).tokens, [new, other_org]);
}

pub(crate) fn check_deleted_agent_leaves_a_tombstone(store: &dyn Store) {
    let web = agent("acme", "web-1", "web one");
    let db = agent("acme", "db-1", "db one");
    store
        .commit_writes(&[
            Write::PutAgent(web.clone()),
            put_live("acme", "web-1", live(AgentStatus::Online, 3)),
            put_sample("acme", "web-1", sample(3, 5_000)),
            Write::PutAgent(db.clone()),
        ])
        .expect("commit");
    let tombstone = AgentTombstone {
        org: org("acme"),
        agent: agent_id("web-1"),
        hardware_id: "hw-web-1".to_owned(),
        deleted_at: at(6_000),
        deleted_by: TokenId::new("tok-admin"),
    };
    store
        .commit_writes(&[Write::DeleteAgent(tombstone.clone())])
        .expect("commit");
    let snapshot = load_sorted(store);
    assert_eq!(
        snapshot.agents,
        [(db, None)],
        "the record and live summary go"
    );
    assert_eq!(snapshot.tombstones, [tombstone], "the tombstone stays");
    assert_eq!(
        all_seqs(store, "acme", "web-1"),
        [3],
        "samples stay until retention"
    );
}

/// Commits from many threads at once all land.
pub(crate) fn check_concurrent_commits(store: &dyn Store) {
    const N_THREADS: u64 = 4;
    const N_COMMITS: u64 = 25;
    std::thread::scope(|scope| {
        for thread_idx in 0..N_THREADS {
            scope.spawn(move || {
                let agent = format!("web-{thread_idx}");
                for seq in 1..=N_COMMITS {
                    store
                        .commit_writes(&[
                            put_sample("acme", &agent, sample(seq, 1_000 + seq)),
                            Write::PutTransition(transition(
                                "acme",
                                &agent,
                                1_000,
                                AgentStatus::Offline,
                                AgentStatus::Online,
                            )),
                        ])
                        .expect("commit");
                }
            });
        }
    });
    for thread_idx in 0..N_THREADS {
        let agent = format!("web-{thread_idx}");
        assert_eq!(
            all_seqs(store, "acme", &agent),
            (1..=N_COMMITS).collect::<Vec<_>>()
        );
        assert_eq!(
            transition_times(store, "acme", &agent, 1_000).len() as u64,
            N_COMMITS
        );
    }
}

/// A write whose content cannot be stored (a time before 1970 in a record) fails at `encode`,
/// alone: the writes encoded beside it commit, in order, and a later write of the same key
/// wins. An encoded delete removes the agent's record and live summary.
pub(crate) fn check_encode_fails_alone(store: &dyn Store) {
    let mut bad = token("acme", "tok-bad", Role::Viewer, None);
    bad.created_at = UNIX_EPOCH - Duration::from_secs(1);
    let err = store
        .encode(&Write::PutToken(bad))
        .expect_err("a time before 1970 cannot be encoded");
    assert!(
        matches!(err, super::StoreError::Unencodable { .. }),
        "{err:?}"
    );
    // A sample with no stored form (a non-finite gauge) fails alone too.
    let unstorable = Sample {
        cpu_percent: f64::NAN,
        ..sample(2, 2_000)
    };
    let err = store
        .encode(&put_sample("acme", "web-1", unstorable))
        .expect_err("NaN has no stored form");
    assert!(
        matches!(err, super::StoreError::Unencodable { .. }),
        "{err:?}"
    );
    let web = agent("acme", "web-1", "web one");
    let mut renamed = web.clone();
    renamed.name = "renamed".to_owned();
    let good = [
        Write::PutAgent(web.clone()),
        put_live("acme", "web-1", live(AgentStatus::Online, 1)),
        put_sample("acme", "web-1", sample(1, 1_000)),
        Write::PutAgent(renamed.clone()),
    ];
    let encoded = good
        .iter()
        .map(|w| store.encode(w).expect("encode"))
        .collect();
    store.commit(encoded).expect("commit");
    let loaded = load_sorted(store);
    assert_eq!(loaded.agents.len(), 1);
    assert_eq!(loaded.agents[0].0, renamed, "the later write wins");
    assert!(loaded.tokens.is_empty());
    assert_eq!(all_seqs(store, "acme", "web-1"), [1]);

    let tombstone = crate::domain::AgentTombstone {
        org: org("acme"),
        agent: agent_id("web-1"),
        hardware_id: "hw-web-1".to_owned(),
        deleted_at: at(5_000),
        deleted_by: TokenId::new("tok-1"),
    };
    let delete = store
        .encode(&Write::DeleteAgent(tombstone))
        .expect("encode");
    store.commit(vec![delete]).expect("commit");
    assert!(load_sorted(store).agents.is_empty());
}

/// What one commit wrote is there after the store is closed and opened again. `open` must
/// open the same store each time; the previous instance is dropped before it is called again.
pub(crate) fn check_commit_is_durable(open: &dyn Fn() -> Box<dyn Store>) {
    let web = agent("acme", "web-1", "web one");
    let web_live = live(AgentStatus::Online, 9);
    let tok = token("acme", "tok-1", Role::Operator, None);
    let enroll = enrollment_token("acme", "enr-1");
    {
        let store = open();
        store
            .commit_writes(&[
                Write::PutAgent(web.clone()),
                put_live("acme", "web-1", web_live.clone()),
                put_sample("acme", "web-1", sample(9, 9_000)),
                Write::PutTransition(transition(
                    "acme",
                    "web-1",
                    9_000,
                    AgentStatus::Offline,
                    AgentStatus::Online,
                )),
                Write::PutToken(tok.clone()),
                Write::PutEnrollmentToken(enroll.clone()),
            ])
            .expect("commit");
    }
    let store = open();
    let snapshot = load_sorted(&*store);
    // `load` folds the newest sample (seq 9, taken at 9 s) into the live summary.
    let folded = LiveRecord {
        last_seen: Some(at(9_000)),
        last_seq: 9,
        ..web_live
    };
    assert_eq!(snapshot.agents, [(web, Some(folded))]);
    assert_eq!(snapshot.tokens, [tok]);
    assert_eq!(snapshot.enrollment_tokens, [enroll]);
    assert_eq!(all_seqs(&*store, "acme", "web-1"), [9]);
    assert_eq!(transition_times(&*store, "acme", "web-1", 10), [9_000]);

    // Same-millisecond transitions keep their order across a reopen.
    store
        .commit_writes(&[Write::PutTransition(transition(
            "acme",
            "web-1",
            9_000,
            AgentStatus::Online,
            AgentStatus::Stale,
        ))])
        .expect("commit");
    drop(store);
    let store = open();
    let newest = store
        .transitions(&org("acme"), &agent_id("web-1"), 1)
        .expect("transitions");
    assert_eq!(newest[0].to, AgentStatus::Stale);
}

mod series;
mod space;

// === sled ===

/// Runs the suite against [`SledStore`](super::SledStore), each case in its own directory, plus
/// the checks of sled's own files.
mod sled_store {
    use std::path::Path;

    use super::*;
    use crate::store::{SCHEMA_VERSION, SledStore, StoreError};

    fn open(path: &Path) -> SledStore {
        SledStore::open(path).expect("open sled store")
    }

    macro_rules! sled_cases {
        ($($name:ident => $check:path,)*) => {
            $(
                #[test]
                fn $name() {
                    let dir = tempfile::tempdir().expect("tempdir");
                    $check(&open(dir.path()));
                }
            )*
        };
    }

    sled_cases! {
        empty_load => check_empty_load,
        agent_and_live_round_trip => check_agent_and_live_round_trip,
        overwrite => check_overwrite,
        samples_range => check_samples_range,
        sample_totals => check_sample_totals,
        prefix_agent_ids_isolated => check_prefix_agent_ids_isolated,
        orgs_isolated => check_orgs_isolated,
        transitions_newest_first => check_transitions_newest_first,
        tokens_round_trip => check_tokens_round_trip,
        token_use_never_undoes_a_revocation => check_token_use_never_undoes_a_revocation,
        deleted_token_is_gone => check_deleted_token_is_gone,
        deleted_agent_leaves_a_tombstone => check_deleted_agent_leaves_a_tombstone,
        concurrent_commits => check_concurrent_commits,
        encode_fails_alone => check_encode_fails_alone,
        command_round_trip => commands::check_command_round_trip_and_active_list,
        commands_listed => commands::check_commands_newest_first_filtered_and_paged,
        invocations_listed => commands::check_invocations_in_order_and_paged,
        command_events => commands::check_command_events_range_and_byte_cap,
        idempotency_keys => commands::check_idempotency_keys,
        delete_command => commands::check_delete_command_removes_everything_it_owns,
        expired_commands => commands::check_expired_commands,
        duplicates_are_dropped => series::check_duplicates_are_dropped,
        rollups_count_every_sample_once => series::check_rollups_count_every_sample_once,
        rollup_ranges => series::check_rollup_ranges,
        reads_merge_sealed_and_open_in_time_order => series::check_reads_merge_sealed_and_open,
        purge_drops_whole_chunks => series::check_purge_drops_whole_chunks,
        purge_many => series::check_purge_many,
        purge_rollups_and_transitions => series::check_purge_rollups_and_transitions,
        memory_follows_the_open_heads => series::check_memory_follows_the_open_heads,
    }

    #[test]
    fn commit_is_durable() {
        let dir = tempfile::tempdir().expect("tempdir");
        check_commit_is_durable(&|| Box::new(open(dir.path())));
    }

    #[test]
    fn samples_survive_reopening_at_every_stage() {
        let dir = tempfile::tempdir().expect("tempdir");
        series::check_samples_survive_reopening(&|| Box::new(open(dir.path())));
    }

    /// Reads (and with `Some`, first replaces) the raw schema version, with sled directly.
    fn raw_schema_version(path: &Path, replace: Option<Option<&str>>) -> Option<String> {
        let db = crate::store::sled::raw_db(path).expect("open raw sled");
        let meta = db.open_tree("meta").expect("meta tree");
        match replace {
            Some(Some(version)) => {
                meta.insert("schema_version", version.as_bytes())
                    .expect("tamper");
            }
            Some(None) => {
                meta.remove("schema_version").expect("tamper");
            }
            None => {}
        }
        db.flush().expect("flush");
        let raw = meta.get("schema_version").expect("read");
        raw.map(|raw| String::from_utf8_lossy(&raw).into_owned())
    }

    /// How many keys the raw data tree holds.
    fn raw_data_len(path: &Path) -> usize {
        let db = crate::store::sled::raw_db(path).expect("open raw sled");
        db.open_tree("data").expect("data tree").len()
    }

    fn assert_refused(path: &Path, expected_found: &str) {
        match SledStore::open(path) {
            Err(StoreError::SchemaNewer { found, supported }) => {
                assert_eq!(found.to_string(), expected_found);
                assert_eq!(supported, SCHEMA_VERSION);
            }
            Err(StoreError::SchemaMismatch { found, expected }) => {
                assert_eq!(found, expected_found);
                assert_eq!(expected, SCHEMA_VERSION);
            }
            Err(other) => panic!("expected a schema mismatch, got {other}"),
            Ok(_) => panic!("expected a schema mismatch, the store opened"),
        }
    }

    #[test]
    fn schema_version_is_stamped_and_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path();
        let web = agent("acme", "web-1", "web one");
        open(path)
            .commit_writes(&[Write::PutAgent(web.clone())])
            .expect("commit");
        assert_eq!(
            raw_schema_version(path, None),
            Some(SCHEMA_VERSION.to_string())
        );
        // Reopening the same version works.
        assert_eq!(
            open(path).load().expect("load").agents,
            [(web.clone(), None)]
        );

        // A newer, an unparsable or a missing version is refused, and the refusal writes
        // nothing: the tampered value and the data are exactly as they were.
        let n_keys = raw_data_len(path);
        for (tampered, found) in [
            (Some("999"), "999"),
            (Some("one"), "one"),
            (Some("0"), "0"),
            (None, "none"),
        ] {
            raw_schema_version(path, Some(tampered));
            assert_refused(path, found);
            assert_eq!(raw_schema_version(path, None).as_deref(), tampered);
            assert_eq!(raw_data_len(path), n_keys);
        }

        // Put back, the data is all there.
        raw_schema_version(path, Some(Some(&SCHEMA_VERSION.to_string())));
        assert_eq!(open(path).load().expect("load").agents, [(web, None)]);
    }

    #[test]
    fn empty_sled_db_without_version_is_stamped() {
        let dir = tempfile::tempdir().expect("tempdir");
        drop(crate::store::sled::raw_db(dir.path()).expect("create raw sled"));
        open(dir.path());
        assert_eq!(
            raw_schema_version(dir.path(), None),
            Some(SCHEMA_VERSION.to_string())
        );
    }

    #[test]
    fn foreign_sled_db_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let db = crate::store::sled::raw_db(dir.path()).expect("create raw sled");
            db.insert("someone else's", "data").expect("insert");
            db.flush().expect("flush");
        }
        assert_refused(dir.path(), "none");
        let db = crate::store::sled::raw_db(dir.path()).expect("open raw sled");
        assert!(!db.tree_names().iter().any(|name| name == b"meta"));
    }

    #[test]
    fn corrupt_values_are_reported_with_their_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = open(dir.path());
            store
                .commit_writes(&[put_sample("acme", "web-1", sample(1, 1_000))])
                .expect("commit");
            store.compact(at(u64::MAX), true).expect("seal");
        }
        {
            let db = crate::store::sled::raw_db(dir.path()).expect("open raw sled");
            let data = db.open_tree("data").expect("data tree");
            data.insert("acme/a/web-1", "{not json").expect("insert");
            let (chunk_key, _) = data
                .scan_prefix("acme/s/web-1/")
                .next()
                .expect("a chunk")
                .expect("read");
            data.insert(chunk_key, "[]").expect("insert");
            db.flush().expect("flush");
        }
        let store = open(dir.path());
        match store.load() {
            Err(StoreError::Corrupt { key, .. }) => assert_eq!(key, "acme/a/web-1"),
            other => panic!("expected a corrupt record, got {other:?}"),
        }
        match store.samples(&org("acme"), &agent_id("web-1"), at(0), at(2_000), 10) {
            Err(StoreError::Corrupt { key, .. }) => {
                assert!(key.starts_with("acme/s/web-1/\\x00"), "{key}");
            }
            other => panic!("expected a corrupt record, got {other:?}"),
        }
        let totals: Vec<_> = store
            .sample_totals(&org("acme"), &agent_id("web-1"), at(0), at(2_000))
            .collect();
        match totals.as_slice() {
            [Err(StoreError::Corrupt { key, .. })] => {
                assert!(key.starts_with("acme/s/web-1/\\x00"), "{key}");
            }
            other => panic!("expected a corrupt record, got {other:?}"),
        }
    }

    /// A damaged head record or log record stops the store from opening, naming the record:
    /// recovery never guesses what an unreadable record held.
    #[test]
    fn a_damaged_head_or_log_record_refuses_the_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = open(dir.path());
            store
                .commit_writes(&[put_sample("acme", "web-1", sample(1, 1_000))])
                .expect("commit");
            store.compact(at(0), true).expect("checkpoint");
            store
                .commit_writes(&[put_sample("acme", "web-1", sample(2, 2_000))])
                .expect("commit");
        }
        let tamper = |tree: &str, key: &[u8], value: Option<&[u8]>| {
            let db = crate::store::sled::raw_db(dir.path()).expect("open raw sled");
            let tree = db.open_tree(tree).expect("tree");
            let old = tree.get(key).expect("read").expect("present").to_vec();
            match value {
                Some(value) => tree.insert(key, value).expect("insert"),
                None => tree.insert(key, &old[..old.len() - 1]).expect("insert"),
            };
            db.flush().expect("flush");
            old
        };
        let head = tamper("data", b"acme/hd/web-1", Some(b"\x07"));
        match SledStore::open(dir.path()) {
            Err(StoreError::Corrupt { key, .. }) => assert_eq!(key, "acme/hd/web-1"),
            other => panic!("expected a corrupt head record, got {other:?}"),
        }
        tamper("data", b"acme/hd/web-1", Some(&head));
        let log_key = {
            let db = crate::store::sled::raw_db(dir.path()).expect("open raw sled");
            let log = db.open_tree("log").expect("log tree");
            let (key, _) = log.last().expect("read").expect("a record");
            key.to_vec()
        };
        tamper("log", &log_key, None);
        assert!(matches!(
            SledStore::open(dir.path()),
            Err(StoreError::Corrupt { .. })
        ));
    }

    /// The usage scan counts what the store holds, part by part.
    #[test]
    fn usage_sums_every_part() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        let writes: Vec<Write> = (1..=30)
            .map(|seq| put_sample("acme", "web-1", sample(seq, 1_000 * seq)))
            .collect();
        store.commit_writes(&writes).expect("commit");
        let logged = store.usage().expect("usage");
        assert_eq!((logged.log_records, logged.chunks, logged.heads), (1, 0, 0));
        store.compact(at(u64::MAX), true).expect("seal");
        let sealed = store.usage().expect("usage");
        assert_eq!((sealed.chunks, sealed.chunk_samples), (1, 30));
        assert_eq!(
            (sealed.heads, sealed.head_samples, sealed.log_records),
            (1, 0, 0)
        );
        assert_eq!(sealed.rollups, 2, "one 5-minute and one 1-hour bucket");
        assert!(sealed.chunk_bytes > 0 && sealed.size_on_disk > 0);
    }

    /// A checkpoint removes every log record once the heads are snapshotted; the samples stay.
    #[test]
    fn a_checkpoint_empties_the_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = open(dir.path());
            for seq in 1..=3 {
                store
                    .commit_writes(&[put_sample("acme", "web-1", sample(seq, 1_000 * seq))])
                    .expect("commit");
            }
            let done = store.compact(at(0), true).expect("checkpoint");
            assert_eq!((done.snapshots, done.log_records_removed), (1, 3));
        }
        let log_len = {
            let db = crate::store::sled::raw_db(dir.path()).expect("open raw sled");
            db.open_tree("log").expect("log tree").len()
        };
        assert_eq!(log_len, 0);
        assert_eq!(all_seqs(&open(dir.path()), "acme", "web-1"), [1, 2, 3]);
    }

    /// Past the heads' budget, heads are sealed early: the memory they hold stays within the
    /// budget plus one head, and nothing is lost.
    #[test]
    fn the_heads_budget_bounds_their_memory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let budget = 16 * 1024;
        let series = crate::store::SeriesConfig {
            heads_budget_bytes: budget,
            ..Default::default()
        };
        let store = SledStore::open_with(dir.path(), 1 << 20, &series).expect("open");
        let mut most = 0;
        for seq in 1..=20 {
            let writes: Vec<Write> = (0..100)
                .map(|a| put_sample("acme", &format!("web-{a}"), sample(seq, 1_000 * seq)))
                .collect();
            store.commit_writes(&writes).expect("commit");
            most = most.max(store.memory().heads_bytes);
        }
        assert!(most <= budget as u64 + 4096, "{most} bytes");
        for a in 0..100 {
            assert_eq!(all_seqs(&store, "acme", &format!("web-{a}")).len(), 20);
        }
    }

    #[test]
    fn record_under_another_orgs_key_is_corrupt() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = open(dir.path());
            store
                .commit_writes(&[Write::PutAgent(agent("acme", "web-1", "web one"))])
                .expect("commit");
        }
        {
            let db = crate::store::sled::raw_db(dir.path()).expect("open raw sled");
            let data = db.open_tree("data").expect("data tree");
            let value = data.get("acme/a/web-1").expect("read").expect("present");
            data.insert("beta/a/web-1", value).expect("insert");
            db.flush().expect("flush");
        }
        assert!(matches!(
            open(dir.path()).load(),
            Err(StoreError::Corrupt { .. })
        ));
    }

    #[test]
    fn second_open_of_a_locked_dir_fails_cleanly() {
        let dir = tempfile::tempdir().expect("tempdir");
        let _held = open(dir.path());
        assert!(matches!(
            SledStore::open(dir.path()),
            Err(StoreError::Backend(_))
        ));
    }
}
