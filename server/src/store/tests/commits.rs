//! Commits in the conformance suite: concurrent commits all land, a write that cannot be
//! encoded fails alone, and a commit is durable across a reopen.

use super::*;

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
        matches!(err, crate::store::StoreError::Unencodable { .. }),
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
        matches!(err, crate::store::StoreError::Unencodable { .. }),
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
