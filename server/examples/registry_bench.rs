//! Times the registry's fleet queries over a large fleet while ingest runs, without sockets:
//! `ListAgents` with the label selector `env=prod,region=eu` (page 100), `GetFleetSummary` and
//! `GetAgent`, each as the handler calls the registry, while one thread applies what the writer
//! and the sessions apply to it (latest samples in writer-sized batches, sessions touched,
//! sessions closing and reopening) and another runs the liveness pass every tick, as the
//! server's ticker does. Also reports the registry's memory per agent (RSS delta).
//!
//! The agents carry the fleet benchmark's label mix (`env=prod|staging|dev,region=eu|us|ap`,
//! os `linux`), with random 16-hex-digit ids as enrollment gives them.
//!
//! Query rounds (one of each query) start at most every 5 ms for the whole run, so that they
//! meet the ingest thread's write lock and the liveness passes as a client polling would.
//!
//! `cargo run --release -p tether-server --example registry_bench -- [AGENTS] [SECONDS] [SAMPLES_PER_SEC]`

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use tether_proto::selector::Selector;
use tether_server::config::{HealthThresholds, LivenessConfig};
use tether_server::domain::{
    AgentId, AgentRecord, DiskUsage, OrgId, Sample, SessionId, StatusReason, SystemInfo, Time,
};
use tether_server::metrics::Metrics;
use tether_server::registry::{AgentFilter, AgentListQuery, Registry, WatchLimits};
use tether_server::session::Session;
use tether_server::store::SledStore;

// The same allocator as the server binary, so the figures match what the server does.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Samples applied per `samples_committed` call, as one writer batch of a busy fleet (the
/// samples that arrive while the previous batch commits).
const INGEST_BATCH: usize = 2000;
/// Sessions closed and reopened per ingest batch (status changes under ingest).
const CHURN_PER_BATCH: usize = 20;
/// The read budget of a `ListAgents` answer (`max_response_bytes` less the room kept).
const LIST_MAX_BYTES: usize = 2 * 1024 * 1024 - 1024;
/// Least time between the starts of two query rounds.
const ROUND_INTERVAL: Duration = Duration::from_millis(5);

fn main() {
    let mut args = std::env::args().skip(1);
    let n_agents: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let run_for = Duration::from_secs(args.next().and_then(|a| a.parse().ok()).unwrap_or(30));
    let samples_per_sec: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(50_000);

    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(SledStore::open(dir.path()).expect("open store"));
    let metrics = Metrics::new();
    let (writer, _queues) = tether_server::writer::channel(store, &metrics, 16, 16, 16, 16);
    let org = OrgId::new("default");
    let registry = Arc::new(Registry::new(
        Vec::new(),
        writer,
        LivenessConfig::default(),
        HealthThresholds::default(),
        WatchLimits::default(),
        metrics,
    ));

    let rss_before = rss_kib();
    let ids: Vec<AgentId> = (0..n_agents).map(|_| AgentId::new(random_id())).collect();
    for (index, id) in ids.iter().enumerate() {
        assert!(registry.enrolled(record(&org, id, index)));
    }
    let rss_registry = rss_kib();
    let sessions: Vec<Arc<Session>> = ids
        .iter()
        .enumerate()
        .map(|(index, id)| open(&registry, &org, id, index, 0))
        .collect();
    let rss_sessions = rss_kib();
    println!(
        "{n_agents} agents: registry {:.0} B/agent (RSS {} → {} KiB); with sessions open {:.0} B/agent (RSS {} KiB, includes the sessions and the writer's pending live records)",
        (rss_registry - rss_before) as f64 * 1024.0 / n_agents as f64,
        rss_before,
        rss_registry,
        (rss_sessions - rss_before) as f64 * 1024.0 / n_agents as f64,
        rss_sessions,
    );

    let stop = Arc::new(AtomicBool::new(false));
    let applied = Arc::new(AtomicU64::new(0));
    let ingest = {
        let (registry, org, ids, stop, applied) = (
            registry.clone(),
            org.clone(),
            ids.clone(),
            stop.clone(),
            applied.clone(),
        );
        std::thread::spawn(move || {
            ingest_loop(
                &registry,
                &org,
                &ids,
                sessions,
                samples_per_sec,
                &stop,
                &applied,
            )
        })
    };

    let liveness = {
        let (registry, stop) = (registry.clone(), stop.clone());
        std::thread::spawn(move || liveness_loop(&registry, &stop))
    };

    let selector = Selector::parse("env=prod,region=eu").expect("valid selector");
    let query = AgentListQuery {
        filter: AgentFilter {
            selector,
            ..AgentFilter::default()
        },
        after: None,
        page_size: 100,
        max_bytes: LIST_MAX_BYTES,
    };
    let (mut list, mut summary, mut get) = (Vec::new(), Vec::new(), Vec::new());
    let mut total = 0;
    let started = Instant::now();
    let mut i = 0;
    while started.elapsed() < run_for {
        let round = Instant::now();
        i += 1;
        // Each query goes first in turn: the first one of a round meets what the ingest
        // thread did during the pause.
        for query_idx in (0..3).map(|k| (i + k) % 3) {
            let t = Instant::now();
            match query_idx {
                0 => {
                    let page = registry.list(&org, &query);
                    list.push(t.elapsed());
                    total = page.total;
                    assert_eq!(page.agents.len(), 100.min(page.total));
                }
                1 => {
                    let s = registry.summary(&org);
                    summary.push(t.elapsed());
                    let n = s.online + s.stale + s.offline + s.expired;
                    assert_eq!(n as usize, n_agents);
                }
                _ => {
                    let view = registry.get(&org, &ids[i * 7919 % n_agents]);
                    get.push(t.elapsed());
                    assert!(view.is_some());
                }
            }
        }
        if let Some(wait) = ROUND_INTERVAL.checked_sub(round.elapsed()) {
            std::thread::sleep(wait);
        }
    }
    let secs = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let mut batches = ingest.join().expect("ingest thread");
    let mut passes = liveness.join().expect("liveness thread");
    let applied = applied.load(Ordering::Relaxed);
    println!(
        "ListAgents(env=prod,region=eu → {total}, page 100): {}",
        quantiles(&mut list)
    );
    println!("GetFleetSummary: {}", quantiles(&mut summary));
    println!("GetAgent: {}", quantiles(&mut get));
    println!(
        "write side: samples_committed({INGEST_BATCH}) {}; liveness pass {}",
        quantiles(&mut batches),
        quantiles(&mut passes)
    );
    println!(
        "{i} rounds in {secs:.1} s; ingest applied {:.0} samples/s (target {samples_per_sec}) in batches of {INGEST_BATCH} with {} status changes/s; a liveness pass every {:?}",
        applied as f64 / secs,
        (applied as f64 / INGEST_BATCH as f64 * CHURN_PER_BATCH as f64 * 2.0 / secs).round(),
        LivenessConfig::default().tick,
    );
}

/// Applies samples at `per_sec` in batches (touching each sender's session, as its messages
/// would) and closes and reopens a few sessions per batch, until `stop`. Returns how long each
/// batch took.
fn ingest_loop(
    registry: &Registry,
    org: &OrgId,
    ids: &[AgentId],
    mut sessions: Vec<Arc<Session>>,
    per_sec: u64,
    stop: &AtomicBool,
    applied: &AtomicU64,
) -> Vec<Duration> {
    let mut batches = Vec::new();
    let started = Instant::now();
    let mut next = 0usize;
    let mut seq = 1u64;
    let mut n_sessions = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let mut updates = Vec::with_capacity(INGEST_BATCH);
        for _ in 0..INGEST_BATCH {
            let idx = next % ids.len();
            next += 1;
            if idx == 0 {
                seq += 1;
            }
            sessions[idx].touch();
            updates.push((org.clone(), ids[idx].clone(), sample(seq, idx), seq));
        }
        let t = Instant::now();
        registry.samples_committed(updates);
        batches.push(t.elapsed());
        for _ in 0..CHURN_PER_BATCH {
            let idx = (next * 31 + n_sessions as usize) % ids.len();
            n_sessions += 1;
            registry.session_closed(&sessions[idx], StatusReason::StreamClosed);
            sessions[idx] = open(registry, org, &ids[idx], idx, n_sessions);
        }
        let done = applied.fetch_add(INGEST_BATCH as u64, Ordering::Relaxed) + INGEST_BATCH as u64;
        let due = Duration::from_secs_f64(done as f64 / per_sec as f64);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            std::thread::sleep(wait);
        }
    }
    batches
}

/// Runs the liveness pass every tick until `stop`; returns how long each pass took.
fn liveness_loop(registry: &Registry, stop: &AtomicBool) -> Vec<Duration> {
    let tick = LivenessConfig::default().tick;
    let mut passes = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let t = Instant::now();
        registry.liveness_pass();
        passes.push(t.elapsed());
        std::thread::sleep(tick.saturating_sub(t.elapsed()));
    }
    passes
}

fn open(registry: &Registry, org: &OrgId, id: &AgentId, index: usize, n: u64) -> Arc<Session> {
    let record = record(org, id, index);
    registry
        .open_session(
            org,
            id,
            SessionId::new(format!("s-{index}-{n}")),
            record.system_info,
            Some(record.labels),
            "instance",
        )
        .expect("a known agent")
        .session
}

/// Agent `index` as the fleet benchmark's simulator makes it.
fn record(org: &OrgId, id: &AgentId, index: usize) -> AgentRecord {
    let env = ["prod", "staging", "dev"][index % 3];
    let region = ["eu", "us", "ap"][(index / 3) % 3];
    let hostname = format!("sim-{index:06}");
    AgentRecord {
        id: id.clone(),
        org: org.clone(),
        name: hostname.clone(),
        labels: [
            ("env".to_owned(), env.to_owned()),
            ("region".to_owned(), region.to_owned()),
        ]
        .into(),
        system_info: SystemInfo {
            hardware_id: format!("hw-{hostname}"),
            hostname,
            os_name: "linux".to_owned(),
            os_version: "1.0".to_owned(),
            kernel_version: "6.1.0-synthetic".to_owned(),
            architecture: "x86_64".to_owned(),
            cpu_model: "Synthetic CPU".to_owned(),
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            ..SystemInfo::default()
        },
        enrolled_at: SystemTime::now(),
        pinned_labels: Default::default(),
        reclaim_until: None,
    }
}

/// A sample whose CPU usage moves the agent between health levels now and then.
fn sample(seq: u64, index: usize) -> Sample {
    let cpu = ((seq as usize * 7 + index) % 100) as f64;
    Sample {
        seq,
        time: Time::now(),
        cpu_percent: cpu,
        load: [0.5, 0.4, 0.3],
        memory_used_bytes: 2 << 30,
        memory_total_bytes: 8 << 30,
        swap_used_bytes: 0,
        swap_total_bytes: 1 << 30,
        disks: vec![DiskUsage {
            mount_point: "/".to_owned(),
            used_bytes: 20 << 30,
            total_bytes: 100 << 30,
        }],
        network_rx_bytes: seq * 1000,
        network_tx_bytes: seq * 500,
        uptime: Duration::from_secs(3600),
        process_count: 120,
    }
}

fn random_id() -> String {
    hex::encode(rand::random::<[u8; 8]>())
}

fn quantiles(times: &mut [Duration]) -> String {
    times.sort();
    let at = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)];
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    format!(
        "p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        ms(at(0.5)),
        ms(at(0.99)),
        ms(times[times.len() - 1])
    )
}

fn rss_kib() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("read /proc/self/statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("statm has the resident pages");
    pages * 4
}
