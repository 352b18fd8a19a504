//! Runs the suite against [`SledStore`](crate::store::SledStore), each case in its own
//! directory, plus the checks of sled's own files (schema stamping, raw keys, the log).

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
    empty_load => records::check_empty_load,
    agent_and_live_round_trip => records::check_agent_and_live_round_trip,
    overwrite => records::check_overwrite,
    samples_range => reads::check_samples_range,
    sample_totals => reads::check_sample_totals,
    prefix_agent_ids_isolated => isolation::check_prefix_agent_ids_isolated,
    orgs_isolated => isolation::check_orgs_isolated,
    transitions_newest_first => reads::check_transitions_newest_first,
    tokens_round_trip => records::check_tokens_round_trip,
    token_use_never_undoes_a_revocation => records::check_token_use_never_undoes_a_revocation,
    deleted_token_is_gone => records::check_deleted_token_is_gone,
    deleted_agent_leaves_a_tombstone => records::check_deleted_agent_leaves_a_tombstone,
    concurrent_commits => commits::check_concurrent_commits,
    encode_fails_alone => commits::check_encode_fails_alone,
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
    commits::check_commit_is_durable(&|| Box::new(open(dir.path())));
}

#[test]
fn samples_survive_reopening_at_every_stage() {
    let dir = tempfile::tempdir().expect("tempdir");
    series::check_samples_survive_reopening(&|| Box::new(open(dir.path())));
}

/// A checkpoint writes a head's snapshot under the head's shard lock, so a seal of that head
/// waits for it: the seal's record of the emptied head is never overwritten by the older
/// snapshot, which would make the next open load the sealed samples again and count them twice
/// in the rollups (138cf1e). The seal is started from inside the checkpoint, between the
/// snapshot's encoding and its write.
#[test]
fn a_seal_waits_for_a_checkpoints_snapshot_of_its_head() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, mpsc};

    use crate::store::Resolution;
    use crate::store::fault::race;

    const T0: u64 = 1_699_999_200_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let writes: Vec<Write> = (1..=10)
        .map(|seq| put_sample("acme", "web-1", sample(seq, T0 + seq * 1_000)))
        .collect();
    {
        let store = open(dir.path());
        store.commit_writes(&writes).expect("commit");
        let (go, went) = mpsc::channel::<()>();
        let (sealed, seal_done) = mpsc::channel::<()>();
        let fired = Arc::new(AtomicBool::new(false));
        let raced = Arc::new(AtomicBool::new(false));
        std::thread::scope(|scope| {
            let store = &store;
            scope.spawn(move || {
                if went.recv().is_ok() {
                    store
                        .compact(at(u64::MAX), Checkpoint::No)
                        .expect("seal the head");
                    let _ = sealed.send(());
                }
            });
            let (fired_in, raced_in) = (fired.clone(), raced.clone());
            let _armed = race::on_this_thread("snapshot-encoded", move || {
                fired_in.store(true, Ordering::SeqCst);
                go.send(()).expect("the sealer waits");
                // A seal that did not wait for the shard's lock would be done well within this.
                let done = seal_done.recv_timeout(Duration::from_secs(1)).is_ok();
                raced_in.store(done, Ordering::SeqCst);
            });
            store.compact(at(0), Checkpoint::Now).expect("checkpoint");
        });
        assert!(
            fired.load(Ordering::SeqCst),
            "the checkpoint snapshot the head"
        );
        assert!(
            !raced.load(Ordering::SeqCst),
            "the seal ran between the snapshot's encoding and its write"
        );
    }
    let store = open(dir.path());
    store
        .compact(at(u64::MAX), Checkpoint::Now)
        .expect("seal what is open");
    assert_eq!(
        all_seqs(&store, "acme", "web-1"),
        (1..=10).collect::<Vec<_>>()
    );
    let rolled: u64 = store
        .rollups(
            &org("acme"),
            &agent_id("web-1"),
            Resolution::FiveMinutes,
            at(0),
            at(u64::MAX),
        )
        .map(|bucket| bucket.expect("rollup").rollup.count)
        .sum();
    assert_eq!(rolled, 10, "every sample rolled up once");
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
        store.compact(at(u64::MAX), Checkpoint::Now).expect("seal");
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
        store.compact(at(0), Checkpoint::Now).expect("checkpoint");
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
    store.compact(at(u64::MAX), Checkpoint::Now).expect("seal");
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
        let done = store.compact(at(0), Checkpoint::Now).expect("checkpoint");
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
