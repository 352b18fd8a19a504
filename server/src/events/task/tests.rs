//! The bulk loader against the rules of the task it shares its planning with: dedupe by seq,
//! fingerprint repeats folded into one event, every occurrence counted in its hour, and the
//! change log numbered on from one load to the next.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{BulkLoader, Report};
use crate::domain::{AgentId, OrgId};
use crate::events::EventsConfig;
use crate::events::keys::{self, EventRecord, HOUR_MS, NewEvent, Severity};
use crate::events::query::{self, Filter, StatsQuery};
use crate::store::{EventTable, SledStore, Store};

fn event(seq: u64, time_ms: u64, kind: &str, severity: Severity, fingerprint: &str) -> NewEvent {
    NewEvent {
        seq,
        time: UNIX_EPOCH + Duration::from_millis(time_ms),
        kind: kind.to_owned(),
        severity,
        message: format!("{kind} #{seq}"),
        attributes: BTreeMap::new(),
        fingerprint: fingerprint.to_owned(),
    }
}

fn report(org: &OrgId, agent: &AgentId, events: Vec<NewEvent>) -> Report {
    Report {
        org: org.clone(),
        agent: agent.clone(),
        max_seq: events.last().map_or(0, |e| e.seq),
        events,
    }
}

fn table(store: &dyn Store, org: &OrgId, table: EventTable) -> Vec<(Vec<u8>, Vec<u8>)> {
    store
        .event_entries(org, table, &[], None, false)
        .collect::<Result<_, _>>()
        .expect("read the table")
}

#[test]
fn bulk_loads_dedupe_fold_repeats_count_every_occurrence_and_number_changes_on() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).expect("open the store"));
    let loader = BulkLoader::new(store.clone(), EventsConfig::default());
    let (org, a, b) = (OrgId::new("acme"), AgentId::new("a"), AgentId::new("b"));
    let now_ms = keys::millis(SystemTime::now());
    let base = keys::hour_of(now_ms) - 2 * HOUR_MS;
    let warn = Severity::Warning;

    let first = loader
        .load(
            &[
                report(
                    &org,
                    &a,
                    vec![
                        event(1, base + 1_000, "ssh.login_failed", warn, "src-1"),
                        event(2, base + 2_000, "ssh.login_failed", warn, "src-1"),
                        event(3, base + HOUR_MS + 5, "disk.full", Severity::Error, ""),
                    ],
                ),
                report(
                    &org,
                    &b,
                    vec![event(1, base + 10, "ssh.login_ok", Severity::Info, "")],
                ),
            ],
            now_ms,
        )
        .expect("first load");
    let marks: Vec<u64> = first
        .settled
        .into_iter()
        .map(|s| s.expect("stored"))
        .collect();
    assert_eq!(marks, [3, 1]);
    // Seq 3 again is a re-send: only seq 4 is new.
    let second = loader
        .load(
            &[report(
                &org,
                &a,
                vec![
                    event(3, base + HOUR_MS + 5, "disk.full", Severity::Error, ""),
                    event(4, base + HOUR_MS + 10, "disk.full", Severity::Error, ""),
                ],
            )],
            now_ms,
        )
        .expect("second load");
    assert_eq!(
        second
            .settled
            .into_iter()
            .map(|s| s.expect("stored"))
            .collect::<Vec<_>>(),
        [4]
    );

    let rows = table(&*store, &org, EventTable::Events);
    assert_eq!(rows.len(), 4, "the repeat is folded into its first event");
    let counts: Vec<u64> = rows
        .iter()
        .map(|(_, v)| keys::decode::<EventRecord>(v).expect("decodes").count)
        .collect();
    assert_eq!(counts.iter().sum::<u64>(), 5);
    let cursors: Vec<u64> = table(&*store, &org, EventTable::Changes)
        .iter()
        .map(|(k, _)| keys::cursor_from_key(k).expect("a cursor"))
        .collect();
    assert_eq!(cursors, [1, 2, 3, 4, 5], "the second load numbers on");

    let stats = query::stats(
        &*store,
        &org,
        &StatsQuery {
            filter: Filter::default(),
            start_ms: base,
            end_ms: base + 2 * HOUR_MS,
            step_ms: HOUR_MS,
            top: 10,
            rate_window_ms: HOUR_MS,
            now_ms,
        },
    )
    .expect("stats");
    assert_eq!(stats.total, 5);
    assert_eq!(stats.steps[0].by_severity, [1, 2, 0, 0]);
    assert_eq!(stats.steps[1].by_severity, [0, 0, 2, 0]);
    assert_eq!(stats.top_agents, [(a, 4), (b, 1)]);
}
