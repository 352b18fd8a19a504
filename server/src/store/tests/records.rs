//! The records part of the conformance suite: an empty store, agents with their live summaries,
//! overwrites, API and enrollment tokens (use never undoing a revocation, deletes), and the
//! tombstone a deleted agent leaves.

use super::*;

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
    let compacted = store
        .compact(at(u64::MAX), Checkpoint::Now)
        .expect("compact");
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
