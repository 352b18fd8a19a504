//! The `event-stats` phase of the benchmark: `GetEventStats` over 30 days of events. The data
//! directory is backfilled first (`event_backfill.rs`: at least 10 million events by default,
//! through the server's own events code), then the release server starts on it and answers
//! the shapes an operator asks for, each `--event-stats-requests` times in a row (or until
//! `--event-stats-budget` runs out): counts per hour and per day by kind and severity, top
//! kinds and agents, the current rate against the previous window, with and without a kind
//! prefix, a minimum severity and a label selector. Target: p99 < 300 ms. `ListEvents` (first
//! page, newest first, whole org and filtered) is measured beside it (target p99 < 100 ms).
//!
//! Every statistics shape's first answer is checked against the backfill's brute-force tally
//! (every step's counts by severity and of the top kinds, the top kinds and agents with their
//! counts, the total and the previous window's rate): a shape that answers wrong fails its row
//! however fast it was. `ListEvents` pages are checked for order and filter. That first call
//! is timed apart ("first call"): it reads into the server's day cache whatever days no
//! earlier shape did, so it shows what a cold cache costs; the percentiles are of the calls
//! after it and the warm-up.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use serde_json::json;
use tether_proto as pb;
use tether_server::events::keys::HOUR_MS;
use tether_tests::{Bearer, EventClient};
use tonic::transport::Endpoint;

use crate::Args;
use crate::event_backfill::{self, Backfilled, Plan, SELECTOR, Tally, unix_ms};
use crate::procs::{Reaper, ServerProc, free_port, rss_kib, server_flags};
use crate::report::{Row, quantile};

/// Target p99 of `GetEventStats`.
const STATS_P99_MS: f64 = 300.0;
/// Target p99 of a `ListEvents` page.
const LIST_P99_MS: f64 = 100.0;
/// Unmeasured calls of each shape first (the first reads warm the page cache), while they
/// take less than a quarter of the shape's budget.
const WARM_UP: usize = 3;
const TOP: usize = 10;
const LIST_PAGE: usize = 100;

/// One `GetEventStats` shape.
struct StatsShape {
    name: &'static str,
    step_hours: u64,
    /// Empty: none.
    kind_prefix: &'static str,
    /// 0: none; else 1 (info) to 4 (critical).
    min_severity: u8,
    selector: bool,
    rate_window_hours: u64,
}

const STATS_SHAPES: [StatsShape; 7] = [
    shape("1 h steps, no filter", 1, "", 0, false, 1),
    shape("1 d steps, no filter", 24, "", 0, false, 1),
    shape("1 d steps, 24 h rate window", 24, "", 0, false, 24),
    shape("1 h steps, kind prefix ssh", 1, "ssh", 0, false, 1),
    shape("1 d steps, severity >= error", 24, "", 3, false, 1),
    shape("1 d steps, selector env=prod,region=eu", 24, "", 0, true, 1),
    shape(
        "1 h steps, selector + kind prefix honeypot + severity >= warning",
        1,
        "honeypot",
        2,
        true,
        1,
    ),
];

const fn shape(
    name: &'static str,
    step_hours: u64,
    kind_prefix: &'static str,
    min_severity: u8,
    selector: bool,
    rate_window_hours: u64,
) -> StatsShape {
    StatsShape {
        name,
        step_hours,
        kind_prefix,
        min_severity,
        selector,
        rate_window_hours,
    }
}

/// `ListEvents` shapes: (name, kind prefix, min severity, selector).
const LIST_SHAPES: [(&str, &str, u8, bool); 3] = [
    ("whole org", "", 0, false),
    ("kind prefix ssh, severity >= warning", "ssh", 2, false),
    (
        "selector env=prod,region=eu, severity >= error",
        "",
        3,
        true,
    ),
];

pub(crate) async fn event_stats_phase(
    args: &Args,
    reaper: &Reaper,
    bin_dir: &Path,
    dir: &Path,
    record: &mut impl FnMut(Row),
) -> anyhow::Result<()> {
    let data = dir.join("data");
    tether_server::server::create_private_dir(&data).context("create the data directory")?;
    let plan = Plan {
        agents: args.event_stats_agents,
        events: args.event_stats_events,
        days: args.event_stats_days,
        batch_events: args.event_stats_batch,
        seed: 0x7e7e_e1e1,
    };
    eprintln!(
        "event-stats: backfilling {} events over {} days from {} agents (+ a tenth in another org)",
        plan.events, plan.days, plan.agents
    );
    let store_dir = data.join(tether_server::backup::STORE_DIR);
    let backfilled =
        tokio::task::spawn_blocking(move || event_backfill::backfill(&store_dir, &plan))
            .await
            .context("the backfill panicked")??;
    record(backfill_row(&backfilled));

    let port = free_port()?;
    let flags = server_flags(&[], &args.server_flags);
    let started = Instant::now();
    let mut server = ServerProc::start(
        reaper,
        bin_dir,
        port,
        &data,
        &flags,
        &dir.join("server.log"),
    )
    .await?;
    let start_secs = started.elapsed().as_secs_f64();
    eprintln!("event-stats: server up in {start_secs:.1} s");
    let mut client = client(&server.url, &server.admin_token).await?;
    let tally = &backfilled.tally;
    let limits = (args.event_stats_requests, args.event_stats_budget);
    for shape in &STATS_SHAPES {
        record(stats_row(&mut client, tally, shape, limits).await?);
    }
    for list in &LIST_SHAPES {
        record(list_row(&mut client, tally, *list, limits).await?);
    }
    let rss = rss_kib(server.pid).unwrap_or(0);
    record(Row {
        scenario: "event-stats".into(),
        figure: format!(
            "server on the backfilled store: ready in {start_secs:.1} s, RSS {} MiB after the reads",
            rss / 1024
        ),
        target: "report".into(),
        pass: None,
        values: json!({ "start_secs": start_secs, "rss_kib": rss }),
    });
    server.stop(Duration::from_secs(20)).await;
    Ok(())
}

fn backfill_row(b: &Backfilled) -> Row {
    let t = &b.totals;
    let secs = b.elapsed.as_secs_f64();
    let rate = t.events as f64 / secs;
    let per_event = b.disk_bytes as f64 / t.events.max(1) as f64;
    Row {
        scenario: "event-stats".into(),
        figure: format!(
            "backfill {} events ({} in the measured org), {} agents, 30 d: {secs:.0} s, \
             {rate:.0} events/s ({} commits; planning {:.0} s, committing {:.0} s); \
             {per_event:.0} B/event on disk ({:.2} GiB)",
            t.events,
            t.measured_events,
            b.agents,
            t.commits,
            t.planned.as_secs_f64(),
            t.committed.as_secs_f64(),
            b.disk_bytes as f64 / f64::from(1u32 << 30),
        ),
        target: "report".into(),
        pass: None,
        values: json!({
            "events": t.events, "measured_events": t.measured_events, "agents": b.agents,
            "secs": secs, "events_per_sec": rate, "commits": t.commits, "writes": t.writes,
            "planning_secs": t.planned.as_secs_f64(), "commit_secs": t.committed.as_secs_f64(),
            "disk_bytes": b.disk_bytes, "bytes_per_event": per_event,
        }),
    }
}

async fn client(url: &str, token: &str) -> anyhow::Result<EventClient> {
    let channel = Endpoint::from_shared(url.to_owned())?
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await
        .context("connect to the server")?;
    Ok(
        pb::event_service_client::EventServiceClient::with_interceptor(
            channel,
            Bearer(Some(token.to_owned())),
        )
        .max_decoding_message_size(64 << 20),
    )
}

/// The filter a shape applies, as the tally knows it.
struct Check<'a> {
    tally: &'a Tally,
    kind_prefix: &'a str,
    min_severity: u8,
    selector: bool,
}

impl Check<'_> {
    fn kind(&self, kind: u16) -> bool {
        let k = &self.tally.kinds[kind as usize].name;
        self.kind_prefix.is_empty()
            || k == self.kind_prefix
            || k.strip_prefix(self.kind_prefix)
                .is_some_and(|rest| rest.starts_with('.'))
    }

    fn wanted(&self, agent: Option<u32>, severity: u8, kind: u16) -> bool {
        severity >= self.min_severity
            && self.kind(kind)
            && (!self.selector || agent.is_none_or(|a| self.tally.agents[a as usize].selected))
    }

    /// Matching occurrences by (hour, severity, kind): of the selected agents only with a
    /// selector.
    fn by_hour(&self) -> impl Iterator<Item = ((u32, u8, u16), u64)> + '_ {
        let table = if self.selector {
            &self.tally.selected_by_hour
        } else {
            &self.tally.by_hour
        };
        table
            .iter()
            .filter(|((_, sev, kind), _)| self.wanted(None, *sev, *kind))
            .map(|(k, v)| (*k, *v))
    }

    /// What `GetEventStats` must answer with `n_steps` steps of `step_hours` from the tally's
    /// start, and the count of tally hours `from..to` (for the previous window's rate).
    fn expected(&self, n_steps: usize, step_hours: u64) -> Expected {
        let mut steps = vec![([0u64; 4], BTreeMap::new()); n_steps];
        let mut kinds: HashMap<u16, u64> = HashMap::new();
        for ((hour, sev, kind), n) in self.by_hour() {
            if let Some(step) = steps.get_mut((u64::from(hour) / step_hours) as usize) {
                step.0[sev as usize - 1] += n;
                *step.1.entry(kind).or_insert(0) += n;
            }
            *kinds.entry(kind).or_default() += n;
        }
        let name = |k: u16| self.tally.kinds[k as usize].name.clone();
        let top_kinds = top(kinds.into_iter().map(|(k, n)| (name(k), n)));
        let top_set: HashSet<&String> = top_kinds.iter().map(|(k, _)| k).collect();
        let steps: Vec<Step> = steps
            .into_iter()
            .map(|(sev, by_kind)| {
                let by_kind = by_kind
                    .into_iter()
                    .map(|(k, n)| (name(k), n))
                    .filter(|(k, _)| top_set.contains(k))
                    .collect();
                (sev, by_kind)
            })
            .collect();
        let mut agents: HashMap<u32, u64> = HashMap::new();
        for ((agent, sev, kind), n) in &self.tally.by_agent {
            if self.wanted(Some(*agent), *sev, *kind) {
                *agents.entry(*agent).or_default() += n;
            }
        }
        let top_agents = top(agents
            .into_iter()
            .map(|(a, n)| (self.tally.agents[a as usize].id.to_string(), n)));
        Expected {
            total: steps_total(&steps),
            steps,
            top_kinds,
            top_agents,
        }
    }

    /// Matching occurrences from `from_ms` to `to_ms` (whole hours).
    fn between(&self, from_ms: u64, to_ms: u64) -> u64 {
        let start = self.tally.start_ms;
        self.by_hour()
            .filter(|((hour, _, _), _)| {
                let at = start + u64::from(*hour) * HOUR_MS;
                from_ms <= at && at < to_ms
            })
            .map(|(_, n)| n)
            .sum()
    }
}

type Step = ([u64; 4], BTreeMap<String, u64>);

/// The brute-force answer.
struct Expected {
    steps: Vec<Step>,
    top_kinds: Vec<(String, u64)>,
    top_agents: Vec<(String, u64)>,
    total: u64,
}

fn steps_total(steps: &[Step]) -> u64 {
    steps.iter().map(|(sev, _)| sev.iter().sum::<u64>()).sum()
}

/// The `TOP` largest, largest first, ties by name (as the server orders them).
fn top(counts: impl Iterator<Item = (String, u64)>) -> Vec<(String, u64)> {
    let mut all: Vec<_> = counts.collect();
    all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    all.truncate(TOP);
    all
}

/// The first difference between an answer and the tally, if any.
fn compare(
    check: &Check<'_>,
    shape: &StatsShape,
    answer: &pb::GetEventStatsResponse,
    hours_at_call: [u64; 2],
) -> Option<String> {
    let want = check.expected(answer.steps.len(), shape.step_hours);
    let step_ms = shape.step_hours * HOUR_MS;
    for (i, (step, (sev, by_kind))) in answer.steps.iter().zip(&want.steps).enumerate() {
        let at = step.time.map(|t| t.seconds as u64 * 1000);
        if at != Some(check.tally.start_ms + i as u64 * step_ms) {
            return Some(format!("step {i} starts at {at:?}"));
        }
        let got = [step.info, step.warning, step.error, step.critical];
        if got != *sev || step.total != sev.iter().sum::<u64>() {
            return Some(format!(
                "step {i}: by severity {got:?} (total {}), backfilled {sev:?}",
                step.total
            ));
        }
        let got_kinds: BTreeMap<String, u64> =
            step.by_kind.iter().map(|(k, n)| (k.clone(), *n)).collect();
        if got_kinds != *by_kind {
            return Some(format!(
                "step {i}: top kinds {got_kinds:?}, backfilled {by_kind:?}"
            ));
        }
    }
    let got_kinds = answer.top_kinds.iter().map(|k| (k.kind.clone(), k.count));
    let got_agents = answer
        .top_agents
        .iter()
        .map(|a| (a.agent_id.clone(), a.count));
    let wrong = differ("top kinds", got_kinds.collect(), &want.top_kinds)
        .or_else(|| differ("top agents", got_agents.collect(), &want.top_agents))
        .or_else(|| differ("total", answer.total, &want.total));
    if wrong.is_some() {
        return wrong;
    }
    // The previous window ends where the rate window starts: its whole hours are known. The
    // call may have crossed an hour: either hour's window is right.
    let window_ms = shape.rate_window_hours * HOUR_MS;
    let previous: Vec<f64> = hours_at_call
        .iter()
        .map(|hour| {
            let window_start = hour + HOUR_MS - window_ms;
            check.between(window_start - window_ms, window_start) as f64
                / (window_ms as f64 / 60_000.0)
        })
        .collect();
    if !previous
        .iter()
        .any(|p| (p - answer.previous_rate_per_minute).abs() <= 1e-9 * p.max(1.0))
    {
        return Some(format!(
            "previous rate {} per minute, backfilled {previous:?}",
            answer.previous_rate_per_minute
        ));
    }
    None
}

/// `what` when `got` is not `want`.
fn differ<T: PartialEq + std::fmt::Debug>(what: &str, got: T, want: &T) -> Option<String> {
    (got != *want).then(|| format!("{what} {got:?}, backfilled {want:?}"))
}

fn hour_now() -> u64 {
    let now = unix_ms(SystemTime::now());
    now - now % HOUR_MS
}

fn severity_pb(n: u8) -> i32 {
    (match n {
        0 => pb::EventSeverity::Unspecified,
        1 => pb::EventSeverity::Info,
        2 => pb::EventSeverity::Warning,
        3 => pb::EventSeverity::Error,
        _ => pb::EventSeverity::Critical,
    }) as i32
}

fn ms_timestamp(ms: u64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: (ms / 1000) as i64,
        nanos: 0,
    }
}

fn hours_pb(hours: u64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: (hours * 3600) as i64,
        nanos: 0,
    }
}

/// Calls `call` until `requests` calls or `budget` (warm-up included) are spent; the
/// latencies in ms, at least one.
async fn timed<F, Fut, T>(
    requests: usize,
    budget: Duration,
    mut call: F,
) -> anyhow::Result<Vec<f64>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let started = Instant::now();
    for _ in 0..WARM_UP {
        if started.elapsed() >= budget / 4 {
            break;
        }
        call().await?;
    }
    let mut latencies = Vec::with_capacity(requests);
    while latencies.len() < requests && (latencies.is_empty() || started.elapsed() < budget) {
        let t = Instant::now();
        call().await?;
        latencies.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(latencies)
}

/// One statistics shape: its first answer checked, then timed.
async fn stats_row(
    client: &mut EventClient,
    tally: &Tally,
    shape: &StatsShape,
    (requests, budget): (usize, Duration),
) -> anyhow::Result<Row> {
    let request = pb::GetEventStatsRequest {
        label_selector: if shape.selector { SELECTOR } else { "" }.to_owned(),
        kind_prefix: shape.kind_prefix.to_owned(),
        min_severity: severity_pb(shape.min_severity),
        start: Some(ms_timestamp(tally.start_ms)),
        step: Some(hours_pb(shape.step_hours)),
        top: TOP as i32,
        rate_window: Some(hours_pb(shape.rate_window_hours)),
        ..Default::default()
    };
    eprintln!("event-stats: GetEventStats {}", shape.name);
    let before = hour_now();
    let first = Instant::now();
    let answer = client
        .get_event_stats(request.clone())
        .await
        .context("GetEventStats")?
        .into_inner();
    // The first call reads what no earlier shape brought into the day cache.
    let first_ms = first.elapsed().as_secs_f64() * 1000.0;
    let check = Check {
        tally,
        kind_prefix: shape.kind_prefix,
        min_severity: shape.min_severity,
        selector: shape.selector,
    };
    let wrong = compare(&check, shape, &answer, [before, hour_now()]);
    let latencies = timed(requests, budget, || {
        let mut client = client.clone();
        let request = request.clone();
        async move { Ok(client.get_event_stats(request).await?) }
    })
    .await?;
    Ok(latency_row(
        &format!(
            "GetEventStats 30 d, {} (first call {first_ms:.0} ms)",
            shape.name
        ),
        &latencies,
        requests,
        STATS_P99_MS,
        wrong,
        json!({ "total": answer.total, "steps": answer.steps.len(), "first_ms": first_ms }),
    ))
}

/// One `ListEvents` shape: its first page checked for order and filter, then timed.
async fn list_row(
    client: &mut EventClient,
    tally: &Tally,
    (name, kind_prefix, min_severity, selector): (&str, &str, u8, bool),
    (requests, budget): (usize, Duration),
) -> anyhow::Result<Row> {
    let request = pb::ListEventsRequest {
        filter: Some(pb::EventFilter {
            label_selector: if selector { SELECTOR } else { "" }.to_owned(),
            kind_prefix: kind_prefix.to_owned(),
            min_severity: severity_pb(min_severity),
            ..Default::default()
        }),
        page_size: LIST_PAGE as i32,
        page_token: String::new(),
    };
    eprintln!("event-stats: ListEvents {name}");
    let page = client
        .list_events(request.clone())
        .await
        .context("ListEvents")?
        .into_inner();
    let selected: HashSet<String> = tally
        .agents
        .iter()
        .filter(|a| a.selected)
        .map(|a| a.id.to_string())
        .collect();
    let check = Check {
        tally,
        kind_prefix,
        min_severity,
        selector,
    };
    let kind_index: HashMap<&str, u16> = tally
        .kinds
        .iter()
        .enumerate()
        .map(|(i, k)| (k.name.as_str(), i as u16))
        .collect();
    let times: Vec<i64> = page
        .events
        .iter()
        .map(|e| {
            e.time
                .map_or(0, |t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000)
        })
        .collect();
    let wrong = if page.events.len() != LIST_PAGE {
        Some(format!("a page of {} events", page.events.len()))
    } else if times.windows(2).any(|w| w[0] < w[1]) {
        Some("the page is not newest first".to_owned())
    } else {
        page.events
            .iter()
            .find(|e| {
                let kind_ok = kind_index
                    .get(e.kind.as_str())
                    .is_some_and(|k| check.kind(*k));
                !kind_ok
                    || e.severity < severity_pb(min_severity.max(1))
                    || (selector && !selected.contains(&e.agent_id))
            })
            .map(|e| {
                format!(
                    "event {} ({}) does not match the filter",
                    e.event_id, e.kind
                )
            })
    };
    let latencies = timed(requests, budget, || {
        let mut client = client.clone();
        let request = request.clone();
        async move { Ok(client.list_events(request).await?) }
    })
    .await?;
    Ok(latency_row(
        &format!("ListEvents first page of {LIST_PAGE}, newest first, {name}"),
        &latencies,
        requests,
        LIST_P99_MS,
        wrong,
        json!({ "newest_ms": times.first() }),
    ))
}

fn latency_row(
    what: &str,
    latencies: &[f64],
    requests: usize,
    target_ms: f64,
    wrong: Option<String>,
    extra: serde_json::Value,
) -> Row {
    let (p50, p99) = (quantile(latencies, 0.5), quantile(latencies, 0.99));
    let calls = if latencies.len() < requests {
        format!("{} calls (budget reached)", latencies.len())
    } else {
        format!("{} calls", latencies.len())
    };
    let verdict = match &wrong {
        None => "answers match the backfill".to_owned(),
        Some(w) => format!("WRONG ANSWER: {w}"),
    };
    Row {
        scenario: "event-stats".into(),
        figure: format!("{what}: p50 {p50:.1} ms, p99 {p99:.1} ms over {calls}; {verdict}"),
        target: format!("p99 < {target_ms:.0} ms"),
        pass: Some(wrong.is_none() && p99 < target_ms),
        values: json!({
            "p50_ms": p50, "p99_ms": p99, "calls": latencies.len(), "wrong": wrong,
            "extra": extra,
        }),
    }
}
