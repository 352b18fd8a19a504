//! The events step (3 → 4): a store that holds only the hourly event counts, as schema 3
//! wrote it, gets exactly the daily and per-step counts fresh ingest builds, and an
//! interrupted run leaves nothing behind once the step runs again.

use std::path::Path;
use std::sync::Arc;

use super::*;
use crate::events::EventsConfig;
use crate::events::keys::{self, HOUR_MS};
use crate::events::rollup::{self, DAY_MS};
use crate::events::sample::{self, Lcg};
use crate::events::task::BulkLoader;
use crate::store::sled::event::table_kind;
use crate::store::sled::layout::section;
use crate::store::sled::open::raw_db;
use crate::store::{EventTable, Store};

type Rows = Vec<(Vec<u8>, Vec<u8>)>;

fn orgs() -> [OrgId; 2] {
    [OrgId::new("acme"), OrgId::new("beta")]
}

/// Every derived table of every org, and the hourly ones, in key order.
fn tables(store: &dyn Store) -> Vec<(OrgId, EventTable, Rows)> {
    let mut out = Vec::new();
    for org in orgs() {
        for table in rollup::DERIVED
            .into_iter()
            .chain([EventTable::KindHours, EventTable::AgentHours])
        {
            let rows = store
                .event_entries(&org, table, &[], None, false)
                .collect::<crate::store::Result<Rows>>()
                .expect("read");
            out.push((org.clone(), table, rows));
        }
    }
    out
}

/// A store at `path` of this build with four days of events in two orgs, a late batch among
/// them; returns its tables as fresh ingest built them.
fn ingested(path: &Path) -> Vec<(OrgId, EventTable, Rows)> {
    let store: Arc<dyn Store> = Arc::new(SledStore::open(path).expect("open"));
    let loader = BulkLoader::new(store.clone(), EventsConfig::default());
    let now_ms = keys::millis(SystemTime::now());
    let start = rollup::day_of(now_ms) - 4 * DAY_MS + 5 * HOUR_MS;
    let mut rng = Lcg(11);
    for org in orgs() {
        let (reports, _) = sample::reports(&org, 7, 600, start, 3 * DAY_MS, 0, &mut rng);
        loader.load(&reports, now_ms).expect("load");
        let (late, _) = sample::reports(&org, 7, 50, start, 2 * DAY_MS, 10_000, &mut rng);
        loader.load(&late, now_ms).expect("late load");
    }
    let built = tables(&*store);
    assert!(built.iter().all(|(_, _, rows)| !rows.is_empty()));
    built
}

/// Turns the store at `path` into what schema 3 left: no derived rows, stamped 3.
fn as_schema_3(path: &Path) {
    let db = raw_db(path).expect("raw");
    let data = db.open_tree(super::super::super::DATA_TREE).expect("data");
    for org in orgs() {
        for table in rollup::DERIVED {
            for entry in data.scan_prefix(section(org.as_str(), table_kind(table))) {
                let (key, _) = entry.expect("read");
                data.remove(key).expect("remove");
            }
        }
    }
    stamp(&db, 3).expect("stamp");
}

#[test]
fn a_store_with_hourly_counts_only_gets_the_daily_counts_fresh_ingest_builds() {
    let root = tempfile::tempdir().expect("tempdir");
    let path = root.path().join("store");
    let fresh = ingested(&path);
    as_schema_3(&path);
    {
        let bare = SledStore::open_schema(
            &path,
            CACHE_CAPACITY_BYTES,
            &SeriesConfig::default(),
            &Schema {
                version: 3,
                migrations: &[],
            },
        )
        .expect("opens as schema 3");
        let stripped = tables(&bare);
        assert!(
            stripped
                .iter()
                .filter(|(_, t, _)| rollup::DERIVED.contains(t))
                .all(|(_, _, rows)| rows.is_empty())
        );
    }

    let migrated = SledStore::open(&path).expect("migrates");
    assert_eq!(tables(&migrated), fresh);
    assert!(backup_path(&path, 3).exists());
}

#[test]
fn a_migration_interrupted_midway_runs_again_from_the_start() {
    let root = tempfile::tempdir().expect("tempdir");
    let path = root.path().join("store");
    let fresh = ingested(&path);
    as_schema_3(&path);
    {
        // What a crash leaves: some rows written, one of them wrong, the stamp still 3.
        let db = raw_db(&path).expect("raw");
        let data = db.open_tree(super::super::super::DATA_TREE).expect("data");
        let (org, _, rows) = fresh
            .iter()
            .find(|(_, t, _)| *t == EventTable::DayAgents)
            .expect("day agents");
        let prefix = section(org.as_str(), table_kind(EventTable::DayAgents));
        for (key, value) in rows.iter().take(rows.len() / 2) {
            data.insert([prefix.as_slice(), key].concat(), value.as_slice())
                .expect("insert");
        }
        let stray = rollup::day_agent_key(DAY_MS, &crate::domain::AgentId::new("gone"));
        data.insert(
            [prefix.as_slice(), &stray].concat(),
            rollup::Counts([9, 9, 9, 9]).encode(),
        )
        .expect("insert");
        db.flush().expect("flush");
    }

    let migrated = SledStore::open(&path).expect("migrates");
    assert_eq!(tables(&migrated), fresh);
    drop(migrated);
    // Once stamped, opening again runs nothing and changes nothing.
    let again = SledStore::open(&path).expect("opens");
    assert_eq!(tables(&again), fresh);
}
