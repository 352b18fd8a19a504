//! The bulk loader against the rules of the task it shares its planning with: dedupe by seq,
//! fingerprint repeats folded into one event, every occurrence counted in its hour, and the
//! change log numbered on from one load to the next; and the task's retention of counts.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{BulkLoader, Report};
use crate::domain::{AgentId, OrgId};
use crate::events::EventsConfig;
use crate::events::keys::{self, EventRecord, HOUR_MS, NewEvent, Severity};
use crate::events::query::{self, Filter, StatsQuery};
use crate::events::rollup::{self, DAY_MS};
use crate::events::sample::{self, Lcg, event};
use crate::store::{EventTable, SledStore, Store};

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
        &crate::events::day_cache::DayCache::default(),
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

/// Events over a store with the real writer and events task, as the server runs them.
pub(crate) async fn running(
    store: Arc<dyn Store>,
    config: EventsConfig,
) -> (
    Arc<crate::events::Events>,
    tokio_util::sync::CancellationToken,
) {
    let metrics = crate::metrics::Metrics::new();
    let (writer, queues) = crate::writer::channel(store.clone(), &metrics, 64, 64, 64, 64);
    let day_counters = metrics.event_stats_days.clone();
    let registry = Arc::new(crate::registry::Registry::new(
        Vec::new(),
        writer.clone(),
        crate::config::LivenessConfig::default(),
        crate::config::HealthThresholds::default(),
        crate::registry::WatchLimits::default(),
        metrics.clone(),
    ));
    let stop = tokio_util::sync::CancellationToken::new();
    let hub = crate::events::hub::Hub::new(registry.clone(), metrics.event_watch.clone());
    tokio::spawn(crate::writer::run(
        queues,
        store.clone(),
        registry,
        HashMap::new(),
        Vec::new(),
        metrics,
        crate::config::StorageConfig {
            writer_linger: Duration::from_millis(1),
            ..crate::config::StorageConfig::default()
        },
        stop.clone(),
    ));
    let (events, task) = crate::events::Events::new(
        store,
        writer,
        config,
        crate::events::watch_stream::WatchSlots::new(8, 8),
        hub,
        day_counters,
    );
    tokio::spawn(task.run(stop.clone()));
    (events, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_removes_hours_past_it_and_days_only_once_all_of_them_are() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).expect("open the store"));
    let config = EventsConfig {
        retention: Duration::from_secs(86_400),
        stats_retention: Duration::from_secs(10 * 86_400),
        ..EventsConfig::default()
    };
    let org = OrgId::new("acme");
    let now_ms = keys::millis(SystemTime::now());
    let day0 = rollup::day_of(now_ms) - 6 * DAY_MS;
    let (reports, _) = sample::reports(&org, 5, 800, day0, 5 * DAY_MS, 0, &mut Lcg(5));
    BulkLoader::new(store.clone(), config.clone())
        .load(&reports, now_ms)
        .expect("load");
    let before: Vec<_> = rollup::DERIVED
        .into_iter()
        .chain([EventTable::KindHours, EventTable::AgentHours])
        .map(|t| (t, table(&*store, &org, t)))
        .collect();

    // Counts before day 2, 5 h are past their retention.
    let cutoff = day0 + 2 * DAY_MS + 5 * HOUR_MS;
    let (events, stop) = running(store.clone(), config.clone()).await;
    let purge_at =
        UNIX_EPOCH + Duration::from_millis(cutoff + 10 * 60_000) + config.stats_retention;
    let removed = events
        .purge(vec![org.clone()], purge_at)
        .await
        .expect("purge");
    assert!(removed > 0);
    stop.cancel();

    for (t, rows) in before {
        let kept = |key: &[u8]| match t {
            EventTable::DayKinds | EventTable::DayAgents => {
                rollup::leading_ms(key).expect("a day") >= day0 + 2 * DAY_MS
            }
            EventTable::KindSeries => rollup::kind_series_hour(key).expect("an hour") >= cutoff,
            _ => rollup::leading_ms(key).expect("an hour") >= cutoff,
        };
        let want: Vec<_> = rows.into_iter().filter(|(k, _)| kept(k)).collect();
        assert!(!want.is_empty(), "{t:?}");
        assert_eq!(table(&*store, &org, t), want, "{t:?}");
    }
    // Day 2 keeps its daily rows (19 of its hours are still kept) until all of it is past.
    let day2 = table(&*store, &org, EventTable::DayAgents)
        .into_iter()
        .filter(|(k, _)| rollup::leading_ms(k) == Some(day0 + 2 * DAY_MS))
        .count();
    assert!(day2 > 0);
}
