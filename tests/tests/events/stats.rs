//! `GetEventStats` against a brute-force count of the same events.

use std::collections::HashMap;

use super::*;

const KINDS: [&str; 5] = [
    "ssh.login_failed",
    "ssh.root",
    "disk.full",
    "app.crash",
    "app.slow",
];
const SEVERITIES: [pb::EventSeverity; 4] = [
    pb::EventSeverity::Info,
    pb::EventSeverity::Warning,
    pb::EventSeverity::Error,
    pb::EventSeverity::Critical,
];

/// One event as sent: (agent, kind, severity index, hours ago).
type Sent = (String, &'static str, usize, u64);

/// Per-step severity counts (by hours ago), per-kind and per-agent totals.
type Tally = (
    BTreeMap<u64, [u64; 4]>,
    BTreeMap<String, u64>,
    BTreeMap<String, u64>,
);

/// A fixed pseudo-random sequence (no dependency, same every run).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        usize::try_from((self.0 >> 33) % n as u64).expect("small")
    }
}

/// The brute-force answer for events passing `keep`, over the default range (the last 24
/// whole hours up to the end of the current one), step 1 h: per-step severity counts, kinds,
/// agents.
fn brute_force(sent: &[Sent], keep: impl Fn(&Sent) -> bool) -> Tally {
    let mut steps: BTreeMap<u64, [u64; 4]> = BTreeMap::new();
    let mut kinds = BTreeMap::new();
    let mut agents = BTreeMap::new();
    for event in sent.iter().filter(|e| keep(e)) {
        steps.entry(event.3).or_default()[event.2] += 1;
        *kinds.entry(event.1.to_owned()).or_default() += 1;
        *agents.entry(event.0.clone()).or_default() += 1;
    }
    (steps, kinds, agents)
}

fn check(stats: &pb::GetEventStatsResponse, (steps, kinds, agents): Tally) {
    assert_eq!(stats.steps.len(), 24);
    // Steps are oldest first; the last is the current hour (0 hours ago).
    for (i, step) in stats.steps.iter().enumerate() {
        let hours_ago = 23 - i as u64;
        let want = steps.get(&hours_ago).copied().unwrap_or_default();
        assert_eq!(
            [step.info, step.warning, step.error, step.critical],
            want,
            "step {i} ({hours_ago} h ago)"
        );
        assert_eq!(step.total, want.iter().sum::<u64>());
    }
    assert_eq!(stats.total, kinds.values().sum::<u64>());
    let top_kinds: Vec<(String, u64)> = stats
        .top_kinds
        .iter()
        .map(|k| (k.kind.clone(), k.count))
        .collect();
    assert_eq!(top_kinds, ranked(kinds));
    let top_agents: Vec<(String, u64)> = stats
        .top_agents
        .iter()
        .map(|a| (a.agent_id.clone(), a.count))
        .collect();
    assert_eq!(top_agents, ranked(agents));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_match_a_brute_force_count_of_the_same_events() {
    let world = World::new().await;
    let mut agents = Vec::new();
    for n in 0..3 {
        let (id, _, session, _) = world.agent(&format!("stats-{n}")).await;
        agents.push((id, session, 0_u64));
    }
    let mut rng = Lcg(7);
    let mut sent: Vec<Sent> = Vec::new();
    // Within the current hour's part that has passed, and whole hours before it.
    let now = SystemTime::now();
    let into_hour = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
        % 3600;
    for _ in 0..6 {
        for (id, session, seq) in &mut agents {
            let mut batch = Vec::new();
            for _ in 0..20 {
                *seq += 1;
                let kind = KINDS[rng.next(KINDS.len())];
                let severity = rng.next(SEVERITIES.len());
                let hours = u64::try_from(rng.next(20)).expect("small");
                let time = now - Duration::from_secs(hours * 3600 + into_hour / 2);
                batch.push(event_at(*seq, kind, SEVERITIES[severity], time));
                sent.push((id.clone(), kind, severity, hours));
            }
            let ack = session.report_events(batch).await.expect("ack");
            assert_eq!(ack.rejected, vec![]);
        }
    }
    let client = world.events().await;
    assert_eq!(
        list_all(&client, pb::EventFilter::default()).await.len(),
        sent.len()
    );

    let all = client
        .clone()
        .get_event_stats(pb::GetEventStatsRequest {
            top: 100,
            ..Default::default()
        })
        .await
        .expect("stats")
        .into_inner();
    check(&all, brute_force(&sent, |_| true));

    // Filtered: one agent, a kind prefix, a minimum severity.
    let one = agents[1].0.clone();
    let filtered = client
        .clone()
        .get_event_stats(pb::GetEventStatsRequest {
            agent_ids: vec![one.clone()],
            kind_prefix: "ssh".into(),
            min_severity: pb::EventSeverity::Warning as i32,
            top: 100,
            ..Default::default()
        })
        .await
        .expect("filtered stats")
        .into_inner();
    check(
        &filtered,
        brute_force(&sent, |e| e.0 == one && e.1.starts_with("ssh.") && e.2 >= 1),
    );

    // A 4-hour step sums its hours; the rate compares the current hour with the one before.
    let coarse = client
        .clone()
        .get_event_stats(pb::GetEventStatsRequest {
            step: Some(Duration::from_secs(4 * 3600).try_into().expect("duration")),
            ..Default::default()
        })
        .await
        .expect("coarse stats")
        .into_inner();
    assert_eq!(coarse.steps.len(), 6);
    assert_eq!(coarse.steps.iter().map(|s| s.total).sum::<u64>(), all.total);
    let per_hour: HashMap<u64, u64> = brute_force(&sent, |_| true)
        .0
        .into_iter()
        .map(|(h, c)| (h, c.iter().sum()))
        .collect();
    let previous = per_hour.get(&1).copied().unwrap_or(0) as f64 / 60.0;
    assert!(
        (all.previous_rate_per_minute - previous).abs() < 1e-9,
        "{} vs {previous}",
        all.previous_rate_per_minute
    );
    let current = per_hour.get(&0).copied().unwrap_or(0);
    assert!(all.rate_per_minute > 0.0 || current == 0);
    assert_eq!(all.rate_change_percent.is_some(), previous > 0.0);

    // Malformed requests are refused with what is wrong; nothing else changes.
    let hours = |h: u64| Some(Duration::from_secs(h * 3600).try_into().expect("duration"));
    let bad = [
        (
            "a step of half an hour",
            pb::GetEventStatsRequest {
                step: Some(Duration::from_secs(1800).try_into().expect("duration")),
                ..Default::default()
            },
        ),
        (
            "a rate window over a year",
            pb::GetEventStatsRequest {
                rate_window: hours(367 * 24),
                ..Default::default()
            },
        ),
        (
            "more than 10,000 steps",
            pb::GetEventStatsRequest {
                start: Some(prost_types::Timestamp {
                    seconds: 0,
                    nanos: 0,
                }),
                ..Default::default()
            },
        ),
    ];
    for (what, request) in bad {
        let err = client
            .clone()
            .get_event_stats(request)
            .await
            .expect_err(what);
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{what}: {err:?}");
    }
    // From 1970 on, by 1,000-day steps, for one agent: the answer counts what was sent.
    let centuries = client
        .clone()
        .get_event_stats(pb::GetEventStatsRequest {
            agent_ids: vec![one.clone()],
            start: Some(prost_types::Timestamp {
                seconds: 0,
                nanos: 0,
            }),
            step: hours(1000 * 24),
            rate_window: hours(366 * 24),
            top: 100,
            ..Default::default()
        })
        .await
        .expect("stats since 1970")
        .into_inner();
    let of_one = sent.iter().filter(|e| e.0 == one).count() as u64;
    assert_eq!(centuries.total, of_one);
    assert_eq!(centuries.steps.iter().map(|s| s.total).sum::<u64>(), of_one);
    world.stop().await;
}
