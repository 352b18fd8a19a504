//! Migrations from the fixture store of schema 3 (`server/tests/fixtures/store-v3.backup`,
//! written by `scripts/regen-store-fixture.sh`): it opens with this build (schema 4) as it was
//! made, and this build's step plus a test-only step to schema 5 run once, after a backup,
//! beyond which this build refuses it. The events step's own tests are in `events.rs` here.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::*;
use crate::domain::OrgId;
use crate::store::sled::CACHE_CAPACITY_BYTES;
use crate::store::{Resolution, SeriesConfig, SledStore, Store};

/// The store of schema 3, as a backup file.
const FIXTURE_V3: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/store-v3.backup"
);

/// A later build's schema: 5, this build's step from 3 and one more from 4.
const SCHEMA_5: Schema = Schema {
    version: 5,
    migrations: &[
        Migration {
            from: 3,
            what: "build the daily and per-step event counts from the hourly ones",
            run: event_rollups::build,
        },
        Migration {
            from: 4,
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

#[test]
fn the_fixture_of_schema_4_opens_as_it_is() {
    let root = tempfile::tempdir().expect("tempdir");
    let path = imported(root.path(), FIXTURE_V4, 4);
    let snapshot = SledStore::open(&path)
        .expect("opens")
        .load()
        .expect("loads");
    assert_eq!(
        agent_names(&snapshot),
        ["hist-1", "hist-2", "live-1", "live-2"]
    );
    assert!(!backup_path(&path, 4).exists(), "no step, no backup");
}

#[test]
fn a_step_runs_once_after_a_backup_and_its_result_is_refused_by_older_builds() {
    let root = tempfile::tempdir().expect("tempdir");
    let path = restored_fixture(root.path());
    let before = open_as(&path, &SCHEMA_3).expect("v3").load().expect("load");

    let migrated = open_as(&path, &SCHEMA_5).expect("migrates");
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

    // This build (schema 4) refuses the migrated store in one line.
    let refused = SledStore::open(&path).expect_err("newer");
    assert!(
        matches!(
            refused,
            StoreError::SchemaNewer {
                found: 5,
                supported: 4
            }
        ),
        "{refused}"
    );
    assert!(!refused.to_string().contains('\n'), "{refused}");

    // Opened again by the later build: no step, no new backup.
    let again = open_as(&path, &SCHEMA_5).expect("opens");
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
    // A build of schema 6 whose steps start at 5 cannot open schema 3.
    const SCHEMA_6: Schema = Schema {
        version: 6,
        migrations: &[Migration {
            from: 5,
            what: "nothing",
            run: |_| Ok(()),
        }],
    };
    let refused = open_as(&path, &SCHEMA_6).expect_err("too old");
    assert!(
        matches!(&refused, StoreError::SchemaMismatch { found, expected: 6 } if found == "3"),
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
