//! A small version of the fleet benchmark: 200 simulated agents (the `tether-agent simulate`
//! library, multiplexed over 20 connections, plus 20 on their own connection) against an
//! in-process server for about ten seconds. Asserts behaviour only — everyone online, acks
//! arrive, no false status transitions — never timing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tether_agent::simulate::{SimulateConfig, parse_label_mix, simulate};
use tether_proto as pb;
use tether_tests::{TestServer, eventually_within, fast_config, trace_init};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_simulated_agents_stay_online_and_get_acks() {
    trace_init();
    let dir = tempfile::tempdir().expect("temp dir");
    let server = TestServer::start(fast_config(dir.path())).await;
    let token = server.enrollment_token().await;

    // Every status change, from before the first agent connects.
    let changes: Arc<Mutex<Vec<(String, i32)>>> = Arc::default();
    let mut watch = server
        .fleet()
        .await
        .watch_agents(pb::WatchAgentsRequest::default())
        .await
        .expect("watch")
        .into_inner();
    let sink = changes.clone();
    let watcher = tokio::spawn(async move {
        while let Ok(Some(event)) = watch.message().await {
            if event.kind == pb::AgentEventKind::StatusChanged as i32
                && let Some(agent) = event.agent
            {
                sink.lock()
                    .expect("lock")
                    .push((agent.agent_id, agent.status));
            }
        }
    });

    let stats_file = dir.path().join("stats.jsonl");
    let mut runs = Vec::new();
    for (prefix, n_agents, n_connections) in [("mux", 180, 20), ("own", 20, 20)] {
        let mut config = SimulateConfig::new(server.url.clone(), n_agents);
        config.n_connections = n_connections;
        config.enroll_token = Some(token.clone());
        config.state_file = Some(dir.path().join(format!("{prefix}.state")));
        config.name_prefix = prefix.to_owned();
        config.label_mix = parse_label_mix("env=prod|staging|dev").expect("mix");
        config.os_mix = vec!["linux".into(), "windows".into()];
        config.stats_file = Some(stats_file.clone());
        config.json = true;
        let shutdown = CancellationToken::new();
        runs.push((shutdown.clone(), tokio::spawn(simulate(config, shutdown))));
    }

    let mut fleet = server.fleet().await;
    eventually_within(Duration::from_secs(60), "all 200 agents online", || {
        let mut fleet = fleet.clone();
        async move {
            let summary = fleet
                .get_fleet_summary(pb::GetFleetSummaryRequest {})
                .await
                .ok()?
                .into_inner();
            (summary.online == 200).then_some(())
        }
    })
    .await;
    // Simulated agents run the built-in `noop` by default, as a real agent does, and stamp
    // every offer's arrival for the benchmark.
    let commands = server.commands().await;
    let noop = tether_tests::send(
        &commands,
        pb::SendCommandRequest {
            spec: Some(pb::CommandSpec {
                kind: Some(pb::command_spec::Kind::Noop(pb::NoopSpec {})),
            }),
            targets: Some(pb::CommandTargets {
                label_selector: "env".into(),
                ..Default::default()
            }),
            ..Default::default()
        },
    )
    .await;
    let noop = tether_tests::finished(&commands, &noop.command_id, Duration::from_secs(60)).await;
    assert_eq!(noop.state(), pb::CommandState::Succeeded);
    assert_eq!(noop.counts.map(|c| c.succeeded), Some(200));

    // Let the fleet run under its intervals for a while (a few heartbeats and stale_after of
    // the fast config), then stop it.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let running = changes.lock().expect("lock").len();
    for (shutdown, _) in &runs {
        shutdown.cancel();
    }
    for (_, run) in runs {
        run.await.expect("simulator task").expect("simulator ran");
    }

    // Acks arrived: the stats records show acknowledged samples and no errors.
    let records: Vec<serde_json::Value> = std::fs::read_to_string(&stats_file)
        .expect("stats file")
        .lines()
        .map(|line| serde_json::from_str(line).expect("json line"))
        .collect();
    let finals: Vec<&serde_json::Value> =
        records.iter().filter(|r| r["event"] == "stats").collect();
    let acked: u64 = records
        .iter()
        .filter(|r| r["event"] == "stopped")
        .count()
        .try_into()
        .expect("count");
    assert_eq!(acked, 2, "both simulators reported their end");
    let last_mux = finals
        .iter()
        .rev()
        .find(|r| r["samples_acked"].as_u64() > Some(0));
    assert!(last_mux.is_some(), "some samples were acknowledged");
    assert!(records.iter().any(|r| r["event"] == "ready"));
    // Each offer arrived once, and is in exactly one record's arrivals.
    let arrivals: u64 = finals
        .iter()
        .filter_map(|r| r["offer_arrivals"].as_array())
        .flatten()
        .map(|pair| pair[1].as_u64().expect("a count"))
        .sum();
    assert_eq!(arrivals, 200, "every offer's arrival was reported once");
    // The final record of each simulator (all its agents gone) counts its offers and the
    // invocations its agents finished.
    let mut ended: Vec<(u64, u64)> = finals
        .iter()
        .filter(|r| r["online"] == 0 && r["offers_received"].as_u64() > Some(0))
        .map(|r| {
            let count = |field: &str| r[field].as_u64().expect("a counter");
            (count("offers_received"), count("invocations_finished"))
        })
        .collect();
    ended.sort_unstable();
    assert_eq!(ended, [(20, 20), (180, 180)]);
    assert!(
        finals
            .iter()
            .all(|r| r["samples_dropped"].as_u64() == Some(0)),
        "no sample dropped"
    );

    // Every agent that went online stayed online until the simulators stopped (each then said
    // goodbye): no stale or offline transition while running.
    let summary = fleet
        .get_fleet_summary(pb::GetFleetSummaryRequest {})
        .await
        .expect("summary")
        .into_inner();
    assert_eq!(summary.total, 200);
    let seen = changes.lock().expect("lock").clone();
    // While the fleet ran, the only changes were each agent coming online once.
    let mut online_once: HashMap<&str, usize> = HashMap::new();
    for (agent, status) in &seen[..running] {
        assert_eq!(
            *status,
            pb::AgentStatus::Online as i32,
            "agent {agent} changed status while the fleet was running"
        );
        *online_once.entry(agent).or_default() += 1;
    }
    assert_eq!(online_once.len(), 200);
    assert!(
        online_once.values().all(|n| *n == 1),
        "an agent reconnected"
    );
    // After the stop, agents go offline (goodbye) exactly once each, never stale.
    assert!(
        seen.iter()
            .all(|(_, status)| *status != pb::AgentStatus::Stale as i32),
        "no agent went stale"
    );
    watcher.abort();
    server.stop().await;
}
