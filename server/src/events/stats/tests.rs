//! `GetEventStats` from the daily and hourly tables against a brute-force count of the sent
//! occurrences: ranges of several whole days with partial days at both edges, ranges within a
//! day, steps that do not align with days, every filter the call takes, and late events that
//! land across a day boundary, reported through the events task into days the day cache
//! holds (a stale day would fail the second count).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::SystemTime;

use super::*;
use crate::events::EventsConfig;
use crate::events::keys::{HOUR_MS, Severity};
use crate::events::sample::{self, Lcg, Sent};
use crate::events::task::BulkLoader;
use crate::events::task::tests::running;
use crate::store::SledStore;

/// What the sent occurrences say `q` should answer.
fn brute_force(sent: &[Sent], q: &StatsQuery) -> Stats {
    let f = &q.filter;
    let matches = |e: &&Sent| f.matches_agent(&e.agent) && f.matches_kind(e.kind, e.severity);
    let mut steps = empty_steps(q);
    let mut kinds: HashMap<String, u64> = HashMap::new();
    let mut agents: HashMap<String, u64> = HashMap::new();
    let mut by_kind: BTreeMap<(usize, &str), u64> = BTreeMap::new();
    for e in sent.iter().filter(matches) {
        if !(q.start_ms..q.end_ms).contains(&e.time_ms) {
            continue;
        }
        let i = usize::try_from((e.time_ms - q.start_ms) / q.step_ms).expect("small");
        steps[i].by_severity[e.severity as usize - 1] += 1;
        *kinds.entry(e.kind.to_owned()).or_default() += 1;
        *agents.entry(e.agent.as_str().to_owned()).or_default() += 1;
        *by_kind.entry((i, e.kind)).or_default() += 1;
    }
    let total = kinds.values().sum();
    let top_kinds = top(kinds, q.top);
    for ((i, kind), n) in by_kind {
        if top_kinds.iter().any(|(k, _)| k == kind) {
            steps[i].by_kind.insert(kind.to_owned(), n);
        }
    }
    let (window_start, previous_start, end) = rate_windows(q);
    let in_window = sent
        .iter()
        .filter(matches)
        .filter(|e| (window_start..end).contains(&keys::hour_of(e.time_ms)))
        .count() as u64;
    let in_previous = sent
        .iter()
        .filter(matches)
        .filter(|e| (previous_start..window_start).contains(&keys::hour_of(e.time_ms)))
        .count() as u64;
    finish(
        q,
        steps,
        top_kinds,
        top_named(agents, q.top),
        total,
        (in_window, in_previous),
    )
}

/// The filters `GetEventStats` takes, alone and together.
fn filters() -> Vec<(&'static str, Filter)> {
    let agents: HashSet<AgentId> = ["ag-1", "ag-4", "ag-7"].map(AgentId::new).into();
    vec![
        ("none", Filter::default()),
        (
            "severity >= error",
            Filter {
                min_severity: Some(Severity::Error),
                ..Filter::default()
            },
        ),
        (
            "kind ssh.root",
            Filter {
                kind: Some("ssh.root".into()),
                ..Filter::default()
            },
        ),
        (
            "kind prefix ssh, severity >= warning",
            Filter {
                kind_prefix: Some("ssh".into()),
                min_severity: Some(Severity::Warning),
                ..Filter::default()
            },
        ),
        (
            "agents",
            Filter {
                agents: Some(agents.clone()),
                ..Filter::default()
            },
        ),
        (
            "agents, kind prefix ssh, severity >= error",
            Filter {
                agents: Some(agents),
                kind_prefix: Some("ssh".into()),
                min_severity: Some(Severity::Error),
                ..Filter::default()
            },
        ),
    ]
}

/// Every shape over the data around `day0`, against the brute force.
fn check_all(
    (store, days): (&dyn Store, &DayCache),
    org: &OrgId,
    sent: &[Sent],
    day0: u64,
    now_ms: u64,
) {
    let ranges = [
        (
            "4 days and two partial edges",
            day0 + 5 * HOUR_MS,
            day0 + 4 * DAY_MS + 7 * HOUR_MS,
        ),
        ("whole days only", day0, day0 + 3 * DAY_MS),
        (
            "a partial edge, then whole days",
            day0 + 23 * HOUR_MS,
            day0 + 3 * DAY_MS,
        ),
        (
            "whole days, then a partial edge",
            day0,
            day0 + 2 * DAY_MS + HOUR_MS,
        ),
        (
            "within one day",
            day0 + DAY_MS + 2 * HOUR_MS,
            day0 + DAY_MS + 9 * HOUR_MS,
        ),
        (
            "across one midnight",
            day0 + 20 * HOUR_MS,
            day0 + DAY_MS + 4 * HOUR_MS,
        ),
    ];
    for (range, start_ms, end_ms) in ranges {
        for step_ms in [HOUR_MS, 5 * HOUR_MS, DAY_MS] {
            for (name, filter) in filters() {
                for (top, rate_window_ms) in [(3, HOUR_MS), (100, DAY_MS)] {
                    let q = StatsQuery {
                        filter: filter.clone(),
                        start_ms,
                        end_ms,
                        step_ms,
                        top,
                        rate_window_ms,
                        now_ms,
                    };
                    let got = stats(store, days, org, &q).expect("stats");
                    assert_eq!(
                        got,
                        brute_force(sent, &q),
                        "{range}, step {} h, filter {name}, top {top}",
                        step_ms / HOUR_MS
                    );
                    assert!(
                        got.total > 0 || name.starts_with("agents"),
                        "{range} {name}"
                    );
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_from_daily_and_hourly_rows_match_a_brute_force_count_and_late_events_correct_days() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).expect("open"));
    let loader = BulkLoader::new(store.clone(), EventsConfig::default());
    let org = OrgId::new("acme");
    let now_ms = keys::millis(SystemTime::now());
    let day0 = rollup::day_of(now_ms) - 6 * DAY_MS;
    let mut rng = Lcg(3);
    let (reports, mut sent) = sample::reports(&org, 9, 3_000, day0, 5 * DAY_MS, 0, &mut rng);
    let mut writes = 0;
    for chunk in reports.chunks(3) {
        writes += loader.load(chunk, now_ms).expect("load").writes;
    }
    assert!(writes > 0);
    // From here on the events task writes, and the statistics read through its day cache.
    let (events, stop) = running(store.clone(), EventsConfig::default()).await;
    let cache = &*events.day_cache;
    // Every shape twice: the first fills the cache, the second reads from it.
    for _ in 0..2 {
        check_all((&*store, cache), &org, &sent, day0, now_ms);
    }
    assert!(cache.size().1 >= 12, "the three tables' days are cached");
    // A range of centuries by 1,000-day steps reads and keeps only the days that hold rows.
    let fresh = DayCache::default();
    for (name, filter) in filters() {
        let q = StatsQuery {
            filter,
            start_ms: 0,
            end_ms: 250_000 * DAY_MS,
            step_ms: 1000 * DAY_MS,
            top: 5,
            rate_window_ms: 366 * DAY_MS,
            now_ms,
        };
        let got = stats(&*store, &fresh, &org, &q).expect("stats");
        assert_eq!(got, brute_force(&sent, &q), "centuries, filter {name}");
    }
    let (_, days) = fresh.size();
    assert!(days <= 3 * 7, "{days} days cached for 6 days of data");
    // Without a cache (`--event-stats-cache-mib 0`) every day is read from the store.
    let none = DayCache::new(0, crate::events::day_cache::MAX_VERSIONS);
    check_all((&*store, &none), &org, &sent, day0, now_ms);
    assert_eq!(none.size(), (0, 0));

    // Late: reported an hour later, 20 h either side of the midnight after day 2.
    let midnight = day0 + 2 * DAY_MS;
    let per_day = || -> Vec<u64> {
        let q = StatsQuery {
            filter: Filter::default(),
            start_ms: day0,
            end_ms: day0 + 4 * DAY_MS,
            step_ms: DAY_MS,
            top: 100,
            rate_window_ms: HOUR_MS,
            now_ms,
        };
        let days = stats(&*store, cache, &org, &q).expect("stats").steps;
        days.iter().map(|d| d.by_severity.iter().sum()).collect()
    };
    let before = per_day();
    let (late, late_sent) = sample::reports(
        &org,
        9,
        200,
        midnight - 20 * HOUR_MS,
        40 * HOUR_MS,
        100_000,
        &mut rng,
    );
    let boundary: Vec<_> = [EventTable::DayAgents, EventTable::AgentHours]
        .into_iter()
        .flat_map(|table| [midnight - DAY_MS, midnight].map(|day| (org.clone(), table, day)))
        .collect();
    for day in &boundary {
        assert!(cache.lookup(day).is_ok(), "day {day:?} is cached");
    }
    for report in late {
        let settled = events
            .ingest(report.org, report.agent, report.events, report.max_seq)
            .await
            .expect("late events stored");
        assert!(settled >= 100_000);
    }
    for day in &boundary {
        assert!(cache.lookup(day).is_err(), "day {day:?} is invalidated");
    }
    sent.extend(late_sent.iter().cloned());
    // Just written: a few hours of such a day are read alone and not kept; the whole day is.
    let hot = (org.clone(), EventTable::AgentHours, midnight);
    let agents = filters().remove(4).1;
    for (start_ms, end_ms, kept) in [
        (midnight + 2 * HOUR_MS, midnight + 5 * HOUR_MS, false),
        (midnight, midnight + DAY_MS, true),
    ] {
        let q = StatsQuery {
            filter: agents.clone(),
            start_ms,
            end_ms,
            step_ms: HOUR_MS,
            top: 100,
            rate_window_ms: HOUR_MS,
            now_ms,
        };
        let got = stats(&*store, cache, &org, &q).expect("stats");
        assert_eq!(
            got,
            brute_force(&sent, &q),
            "{}..{} h",
            start_ms / HOUR_MS,
            end_ms / HOUR_MS
        );
        assert_eq!(
            cache.lookup(&hot).is_ok(),
            kept,
            "{}..{} h",
            start_ms / HOUR_MS,
            end_ms / HOUR_MS
        );
    }
    check_all((&*store, cache), &org, &sent, day0, now_ms);
    let after = per_day();
    let grew: Vec<u64> = after.iter().zip(before).map(|(a, b)| a - b).collect();
    assert_eq!(grew[0], 0);
    assert!(
        grew[1] > 0 && grew[2] > 0,
        "both days of the boundary: {grew:?}"
    );
    assert_eq!(grew.iter().sum::<u64>(), late_sent.len() as u64);
    stop.cancel();
}
