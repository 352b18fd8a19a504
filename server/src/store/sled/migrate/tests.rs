//! Migrations from the fixture stores of schemas 3 and 4 (`server/tests/fixtures/store-v*.backup`,
//! written by `scripts/regen-store-fixture.sh`): they open with this build (schema 5) with what
//! they were made with, and this build's steps plus a test-only step to schema 6 run once,
//! after a backup, beyond which this build refuses the store. The events step's own tests are
//! in `events.rs` here; the rollup blocks step's below.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::*;
use crate::domain::OrgId;
use crate::store::sled::CACHE_CAPACITY_BYTES;
use crate::store::sled::layout::{BUCKET_1H_V4, BUCKET_5M_V4, ROLLUP_1H, ROLLUP_5M};
use crate::store::{Resolution, SeriesConfig, SledStore, Store};

/// The store of schema 3, as a backup file.
const FIXTURE_V3: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/store-v3.backup"
);

/// A later build's schema: 6, this build's steps from 3 and 4 and one more from 5.
const SCHEMA_6: Schema = Schema {
    version: 6,
    migrations: &[
        MIGRATIONS[0],
        MIGRATIONS[1],
        Migration {
            from: 5,
            what: "label every agent migrated=yes",
            run: label_agents,
        },
    ],
};

/// The test step: adds `migrated=yes` to every agent record (idempotent, as every step).
fn label_agents(db: &sled::Db) -> Result<()> {
    let data = db.open_tree(super::super::DATA_TREE).map_err(backend)?;
    for entry in data.iter() {
        let (key, value) = entry.map_err(backend)?;
        let Some(slash) = key.iter().position(|&b| b == b'/') else {
            continue;
        };
        if !key[slash + 1..].starts_with(b"a/") {
            continue;
        }
        let mut record: serde_json::Value = serde_json::from_slice(&value).map_err(backend)?;
        record["labels"]["migrated"] = "yes".into();
        let value = serde_json::to_vec(&record).map_err(backend)?;
        data.insert(key, value).map_err(backend)?;
    }
    Ok(())
}

/// The store of schema 4, as a backup file.
const FIXTURE_V4: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/store-v4.backup"
);

/// The schema 3 fixture's records written into a store under `root`, as schema 3 left them
/// (not opened, so not migrated); returns the store's path.
fn restored_fixture(root: &Path) -> PathBuf {
    imported(root, FIXTURE_V3, 3)
}

/// The records of the fixture `file`, of schema `version`, written into a store under `root`.
fn imported(root: &Path, file: &str, version: u32) -> PathBuf {
    let path = root.join("data").join(crate::backup::STORE_DIR);
    let file = std::fs::File::open(file).expect("the fixture");
    let (mut reader, header) =
        dump::Reader::new(std::io::BufReader::new(file)).expect("the fixture's header");
    assert_eq!(header.schema_version, version);
    let records = std::iter::from_fn(|| {
        reader
            .next_record()
            .expect("the fixture reads")
            .map(|(space, key, value)| Ok(crate::store::sled::Record { space, key, value }))
    });
    crate::store::sled::import(&path, records).expect("the fixture imports");
    path
}

/// This build's schema without its steps: opens a store of schema 3 as it is.
const SCHEMA_3: Schema = Schema {
    version: 3,
    migrations: &[],
};

fn open_as(path: &Path, schema: &Schema) -> crate::store::Result<SledStore> {
    SledStore::open_schema(path, CACHE_CAPACITY_BYTES, &SeriesConfig::default(), schema)
}

/// The names of a loaded store's agents, sorted: what both fixtures were made with.
fn agent_names(snapshot: &crate::store::Snapshot) -> Vec<&str> {
    let mut names: Vec<&str> = snapshot
        .agents
        .iter()
        .map(|(a, _)| a.name.as_str())
        .collect();
    names.sort_unstable();
    names
}

/// The fixtures' history agents have their 200 samples and at least ten hours of rollups.
fn assert_history(store: &SledStore, snapshot: &crate::store::Snapshot) {
    let (from, to) = far();
    for (agent, _) in snapshot
        .agents
        .iter()
        .filter(|(a, _)| a.name.starts_with("hist"))
    {
        let samples = store
            .samples(&agent.org, &agent.id, from, to, 1000)
            .expect("samples");
        assert_eq!(samples.len(), 200, "{}", agent.name);
        let hours = store
            .rollups(&agent.org, &agent.id, Resolution::OneHour, from, to)
            .collect::<crate::store::Result<Vec<_>>>()
            .expect("rollups");
        assert!(hours.len() >= 10, "{}: {} hours", agent.name, hours.len());
    }
}

fn far() -> (SystemTime, SystemTime) {
    (
        UNIX_EPOCH,
        UNIX_EPOCH + Duration::from_secs(400 * 365 * 86_400),
    )
}

#[test]
fn the_fixture_of_schema_3_opens_with_what_it_was_made_with() {
    let root = tempfile::tempdir().expect("tempdir");
    let store = SledStore::open(&restored_fixture(root.path())).expect("opens");
    let snapshot = store.load().expect("loads");
    assert_eq!(
        agent_names(&snapshot),
        ["hist-1", "hist-2", "live-1", "live-2"]
    );
    assert_eq!(snapshot.orgs.len(), 2, "default and beta");
    assert_eq!(snapshot.tombstones.len(), 1);
    assert!(snapshot.enrollment_tokens.len() >= 2);
    assert!(snapshot.tokens.len() >= 4, "admin, ci, ops, beta's admin");
    assert!(!snapshot.audit_heads.is_empty());
    assert_history(&store, &snapshot);
    let org = OrgId::new(crate::domain::DEFAULT_ORG);
    let commands = store
        .commands(
            &org,
            &crate::command::record::CommandQuery {
                page_size: 100,
                ..Default::default()
            },
            1000,
        )
        .expect("commands");
    assert_eq!(commands.commands.len(), 1, "the finished command");
}

/// The store of schema 5, as a backup file.
const FIXTURE_V5: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/store-v5.backup"
);

#[test]
fn the_fixture_of_schema_5_opens_as_it_is() {
    let root = tempfile::tempdir().expect("tempdir");
    let path = imported(root.path(), FIXTURE_V5, 5);
    let store = SledStore::open(&path).expect("opens");
    let snapshot = store.load().expect("loads");
    assert_eq!(
        agent_names(&snapshot),
        ["hist-1", "hist-2", "live-1", "live-2"]
    );
    assert!(!backup_path(&path, 5).exists(), "no step, no backup");
    assert_history(&store, &snapshot);
}

#[test]
fn the_fixture_of_schema_4_opens_with_its_rollups_moved_into_blocks() {
    let root = tempfile::tempdir().expect("tempdir");
    let path = imported(root.path(), FIXTURE_V4, 4);
    let old = v4_buckets(&path);
    assert!(old.len() >= 40, "the fixture has rollups: {}", old.len());
    let store = SledStore::open(&path).expect("opens");
    let snapshot = store.load().expect("loads");
    assert_eq!(
        agent_names(&snapshot),
        ["hist-1", "hist-2", "live-1", "live-2"]
    );
    assert_eq!(
        in_blocks(&store),
        old,
        "every bucket, in its block, unchanged"
    );
    assert!(v4_buckets_left(&store.data).is_empty());
    assert!(backup_path(&path, 4).exists(), "backed up before the step");
}

#[test]
fn the_rollup_blocks_step_runs_again_without_changing_a_block_twice() {
    let root = tempfile::tempdir().expect("tempdir");
    let path = imported(root.path(), FIXTURE_V4, 4);
    let old = v4_buckets(&path);
    let db = crate::store::sled::open::raw_db(&path).expect("sled");
    rollup_blocks::build(&db).expect("the step");
    let data = db.open_tree(super::super::DATA_TREE).expect("data");
    let blocks: Vec<_> = data
        .iter()
        .map(|entry| entry.expect("reads"))
        .filter(|(key, _)| kind_of(key) == ROLLUP_5M || kind_of(key) == ROLLUP_1H)
        .collect();
    // A crash after a block's batch and before the stamp runs the step again; and a bucket
    // found again (written back here) replaces its slot instead of counting twice.
    let (key, value) = old.first().expect("a bucket");
    data.insert(key, value.clone()).expect("writes");
    // Damage is left where it is: a bucket that does not decode, and one whose key is not at
    // a bucket's start.
    let mut unaligned = key.clone();
    let at = unaligned.len() - 8;
    let start = u64::from_be_bytes(unaligned[at..].try_into().expect("8 bytes"));
    unaligned[at..].copy_from_slice(&(start + 1).to_be_bytes());
    data.insert(&unaligned, value.clone()).expect("writes");
    let mut garbled = key.clone();
    garbled[at..].copy_from_slice(&(start + 300_000 * 7_000).to_be_bytes());
    data.insert(&garbled, &b"not a rollup"[..]).expect("writes");
    rollup_blocks::build(&db).expect("the step again");
    rollup_blocks::build(&db).expect("and again");
    let again: Vec<_> = data
        .iter()
        .map(|entry| entry.expect("reads"))
        .filter(|(key, _)| kind_of(key) == ROLLUP_5M || kind_of(key) == ROLLUP_1H)
        .collect();
    assert_eq!(again, blocks);
    let left: Vec<Vec<u8>> = v4_buckets_left(&data).into_iter().map(|(k, _)| k).collect();
    assert_eq!(left.len(), 2);
    assert!(left.contains(&unaligned) && left.contains(&garbled));
}

/// The kind of a data key: what follows `{org}/` up to the next `/`.
fn kind_of(key: &[u8]) -> &[u8] {
    let org = key.iter().position(|&b| b == b'/').expect("an org");
    let rest = &key[org + 1..];
    &rest[..rest.iter().position(|&b| b == b'/').unwrap_or(rest.len())]
}

/// The schema 4 rollup buckets of the store at `path` (not opened as a store), by key.
fn v4_buckets(path: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let db = crate::store::sled::open::raw_db(path).expect("sled");
    let data = db.open_tree(super::super::DATA_TREE).expect("data");
    v4_buckets_left(&data)
}

fn v4_buckets_left(data: &sled::Tree) -> Vec<(Vec<u8>, Vec<u8>)> {
    data.iter()
        .map(|entry| entry.expect("reads"))
        .filter(|(key, _)| kind_of(key) == BUCKET_5M_V4 || kind_of(key) == BUCKET_1H_V4)
        .map(|(key, value)| (key.to_vec(), value.to_vec()))
        .collect()
}

/// Every bucket of the store's blocks, as schema 4 would have kept it: (its key, its rollup
/// encoded on its own), in key order.
fn in_blocks(store: &SledStore) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in store.data.iter() {
        let (key, value) = entry.expect("reads");
        let (old_kind, resolution) = match kind_of(&key) {
            k if k == ROLLUP_5M => (BUCKET_5M_V4, Resolution::FiveMinutes),
            k if k == ROLLUP_1H => (BUCKET_1H_V4, Resolution::OneHour),
            _ => continue,
        };
        let series = &key[..key.len() - 8];
        let start = u64::from_be_bytes(key[key.len() - 8..].try_into().expect("8 bytes"));
        let org = &key[..key.iter().position(|&b| b == b'/').expect("an org")];
        let agent = &series[org.len() + 1 + ROLLUP_5M.len() + 1..];
        for (bucket, rollup) in
            crate::store::rollup::block::decode(resolution, start, &value).expect("decodes")
        {
            let mut old = org.to_vec();
            old.push(b'/');
            old.extend_from_slice(old_kind);
            old.push(b'/');
            old.extend_from_slice(agent);
            old.extend_from_slice(&bucket.to_be_bytes());
            out.push((old, rollup.encode()));
        }
    }
    out.sort();
    out
}

#[test]
fn a_step_runs_once_after_a_backup_and_its_result_is_refused_by_older_builds() {
    let root = tempfile::tempdir().expect("tempdir");
    let path = restored_fixture(root.path());
    let before = open_as(&path, &SCHEMA_3).expect("v3").load().expect("load");

    let migrated = open_as(&path, &SCHEMA_6).expect("migrates");
    let after = migrated.load().expect("load");
    assert_eq!(after.agents.len(), before.agents.len());
    for (agent, _) in &after.agents {
        assert_eq!(
            agent.labels.get("migrated").map(String::as_str),
            Some("yes")
        );
    }
    drop(migrated);

    // The store as it was before the step, beside it, restorable.
    let backup = backup_path(&path, 3);
    let written = std::fs::metadata(&backup)
        .expect("the backup")
        .modified()
        .expect("mtime");
    let copy = root.path().join("copy");
    let restored = crate::backup::restore(&backup, &copy).expect("restores");
    assert_eq!(restored.header.schema_version, 3);
    let copy = SledStore::open(&copy.join(crate::backup::STORE_DIR)).expect("the copy, migrated");
    assert_eq!(copy.load().expect("load"), before);

    // This build (schema 5) refuses the migrated store in one line.
    let refused = SledStore::open(&path).expect_err("newer");
    assert!(
        matches!(
            refused,
            StoreError::SchemaNewer {
                found: 6,
                supported: 5
            }
        ),
        "{refused}"
    );
    assert!(!refused.to_string().contains('\n'), "{refused}");

    // Opened again by the later build: no step, no new backup.
    let again = open_as(&path, &SCHEMA_6).expect("opens");
    assert_eq!(again.load().expect("load"), after);
    let unchanged = std::fs::metadata(&backup)
        .expect("the backup")
        .modified()
        .expect("mtime");
    assert_eq!(unchanged, written);
}

#[test]
fn a_store_older_than_the_steps_is_refused_untouched() {
    let root = tempfile::tempdir().expect("tempdir");
    let path = restored_fixture(root.path());
    // A build of schema 7 whose steps start at 6 cannot open schema 3.
    const SCHEMA_7: Schema = Schema {
        version: 7,
        migrations: &[Migration {
            from: 6,
            what: "nothing",
            run: |_| Ok(()),
        }],
    };
    let refused = open_as(&path, &SCHEMA_7).expect_err("too old");
    assert!(
        matches!(&refused, StoreError::SchemaMismatch { found, expected: 7 } if found == "3"),
        "{refused}"
    );
    assert!(!backup_path(&path, 3).exists(), "nothing written");
    SledStore::open(&path).expect("still schema 3, which this build migrates");
}

#[test]
fn the_steps_are_numbered_without_gaps_up_to_this_schema() {
    let mut next = SCHEMA.oldest();
    for step in SCHEMA.migrations {
        assert_eq!(step.from, next, "{}", step.what);
        next += 1;
    }
    assert_eq!(next, SCHEMA.version);
}

#[test]
fn the_backup_goes_beside_the_store() {
    assert_eq!(
        backup_path(Path::new("/var/lib/tether/store"), 3),
        Path::new("/var/lib/tether/store.schema-3.backup")
    );
}

mod events;
