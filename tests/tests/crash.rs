//! Crash recovery of the time-series store, with a real server process killed between each of
//! its durability steps: after the log's flush and before the ack, after a seal, in the middle
//! of a checkpoint (snapshots written, not flushed), after the checkpoint's flush and before the
//! log's truncation, after the truncation, during retention, and at an arbitrary moment under
//! load; and a commit that never returns, which ends the process for a restart. The process
//! (`test-server`) aborts (or stalls) at an armed crash point of its store
//! (`tether_server::store::fault`) or is killed with SIGKILL.
//!
//! After each crash a fresh process on the same data directory must have every acknowledged
//! sample exactly once (read back through `GetMetrics`, and from the stopped store's files),
//! tell the agent a durable seq at least as high as the last ack, count every stored sample
//! once in its rollups, and drop everything the agent re-sends as duplicates.

#![cfg(unix)]

use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt as _;
use std::path::Path;
use std::time::{Duration, SystemTime};

use tether_proto as pb;
use tether_server::domain::DEFAULT_ORG;
use tether_server::store::sled::test_support::RawStore;
use tether_tests::{Launch, RawSession, ServerProcess, hello, trace_init};

const BIN: &str = env!("CARGO_BIN_EXE_test-server");
/// SIGABRT: what an armed crash point ends the process with.
const ABORTED: i32 = 6;

/// An agent of the test, whose sample `seq` is taken at `base + seq` seconds, so that the time
/// of a point read back names its seq.
struct Agent {
    id: String,
    credential: String,
    base: SystemTime,
}

impl Agent {
    async fn enroll(server: &ServerProcess, hostname: &str, base: SystemTime) -> Self {
        let (id, credential) = server.enroll(hostname).await;
        Self {
            id,
            credential,
            base,
        }
    }

    fn sample(&self, seq: u64) -> pb::MetricsSample {
        pb::MetricsSample {
            seq,
            time: Some((self.base + Duration::from_secs(seq)).into()),
            cpu_percent: (seq % 10) as f64,
            memory_used_bytes: 100 + seq,
            memory_total_bytes: 1000,
            network_rx_bytes: 1_000 * seq,
            ..Default::default()
        }
    }

    async fn session(&self, server: &ServerProcess) -> (RawSession, pb::Welcome) {
        RawSession::hello_on(
            server.agent_client(&self.credential).await,
            hello(&self.id, &self.id, &[]),
        )
        .await
        .expect("hello")
    }

    /// Sends `seqs` in reports of `per_report`, each after the previous was acked, until all
    /// are acked or the stream ends (the server died). Returns the highest seq acked.
    async fn send(
        &self,
        session: &mut RawSession,
        seqs: std::ops::RangeInclusive<u64>,
        per_report: u64,
    ) -> u64 {
        let mut acked = 0;
        let mut next = *seqs.start();
        while next <= *seqs.end() {
            let last = (next + per_report - 1).min(*seqs.end());
            session
                .send(pb::connect_request::Message::Metrics(pb::MetricsReport {
                    deferred_seq: 0,
                    previous_ack_latency: None,
                    samples: (next..=last).map(|seq| self.sample(seq)).collect(),
                }))
                .await;
            match session.wait_ack(last).await {
                Ok(ack) => acked = ack,
                Err(_) => return acked,
            }
            next = last + 1;
        }
        acked
    }

    /// Every stored sample's seq, read through `GetMetrics` at step 0 (one point each).
    async fn stored(&self, server: &ServerProcess) -> Vec<u64> {
        self.points(server, Duration::ZERO)
            .await
            .iter()
            .map(|p| {
                let time = SystemTime::try_from(p.time.expect("time")).expect("valid");
                time.duration_since(self.base)
                    .expect("after base")
                    .as_secs()
            })
            .collect()
    }

    /// How many samples the 5-minute rollups count.
    async fn rolled_up(&self, server: &ServerProcess) -> u64 {
        self.points(server, Duration::from_secs(300))
            .await
            .iter()
            .map(|p| u64::from(p.sample_count))
            .sum()
    }

    async fn points(&self, server: &ServerProcess, step: Duration) -> Vec<pb::MetricsPoint> {
        server
            .fleet()
            .await
            .get_metrics(pb::GetMetricsRequest {
                agent_id: self.id.clone(),
                start: Some((self.base - Duration::from_secs(3_600)).into()),
                end: Some((self.base + Duration::from_secs(2 * 3_600)).into()),
                step: Some(step.try_into().expect("a step")),
            })
            .await
            .expect("get metrics")
            .into_inner()
            .points
    }
}

/// Starts `test-server` on `dir` with `args`, on any port.
async fn start(dir: &Path, args: &[&str]) -> ServerProcess {
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let launch = Launch {
        flags: args,
        ..Launch::default()
    };
    ServerProcess::start_with(Path::new(BIN), dir, any, launch).await
}

/// An hour ago, in whole seconds.
fn an_hour_ago() -> SystemTime {
    let ago = (SystemTime::now() - Duration::from_secs(3_600))
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("after 1970");
    SystemTime::UNIX_EPOCH + Duration::from_secs(ago.as_secs())
}

/// Restarts on `dir` with `args` (no crash point) and checks the invariants of the module
/// docs for `agent`, which had `acked` acknowledged. Returns the durable seq the server
/// reported.
async fn recovered(dir: &Path, args: &[&str], agent: &Agent, acked: u64) -> u64 {
    let server = start(dir, args).await;
    let (session, welcome) = agent.session(&server).await;
    drop(session);
    let durable = welcome.last_durable_seq;
    assert!(durable >= acked, "durable {durable} < acked {acked}");
    let all: Vec<u64> = (1..=durable).collect();
    assert_eq!(
        agent.stored(&server).await,
        all,
        "every durable sample once"
    );
    assert_eq!(
        agent.rolled_up(&server).await,
        durable,
        "rollups count each once"
    );
    // The agent re-sends everything, and more, in one report: the old ones are duplicates.
    let (mut session, _) = agent.session(&server).await;
    let more = durable + 10;
    assert_eq!(agent.send(&mut session, 1..=more, more).await, more);
    let all: Vec<u64> = (1..=more).collect();
    assert_eq!(agent.stored(&server).await, all);
    assert_eq!(agent.rolled_up(&server).await, more);
    drop(session);
    assert!(server.stop().await.success());
    let on_disk = RawStore::open(dir.join("store"))
        .expect("open the stopped store")
        .sample_seqs(DEFAULT_ORG, &agent.id)
        .expect("read the store");
    assert_eq!(on_disk, all);
    durable
}

/// Starts a server armed with `args`, sends samples in reports of 5 until it dies, checks that
/// it died at its crash point, and returns the agent and what was acked.
async fn crash(dir: &Path, args: &[&str]) -> (Agent, u64) {
    let server = start(dir, args).await;
    let agent = Agent::enroll(&server, "crashy", an_hour_ago()).await;
    let (mut session, _) = agent.session(&server).await;
    let acked = agent.send(&mut session, 1..=2_000, 5).await;
    assert!(acked < 2_000, "the server never reached its crash point");
    let status = server.exited().await;
    assert_eq!(status.signal(), Some(ABORTED), "{status:?}");
    (agent, acked)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_the_log_flush_and_before_the_ack_keeps_the_samples() {
    trace_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let (agent, acked) = crash(
        dir.path(),
        &["--crash-at", "log-flushed", "--crash-nth", "3"],
    )
    .await;
    assert_eq!(acked, 10, "two reports of 5 were acked");
    // The third report was flushed to the log, never acked: durable all the same.
    assert_eq!(recovered(dir.path(), &[], &agent, acked).await, 15);
}

/// A store commit that never returns (sled's flush waiting for a log buffer nobody writes,
/// stood in for by a stall point after the log's flush): the server exits with the status
/// that asks for a restart once its stall limit has passed, and a restart loses nothing it
/// acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_that_never_returns_ends_the_server_and_a_restart_loses_nothing() {
    trace_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let args = [
        "--crash-at",
        "log-flushed",
        "--crash-nth",
        "3",
        "--stall",
        "--store-stall-limit",
        "2s",
    ];
    let server = start(dir.path(), &args).await;
    let agent = Agent::enroll(&server, "stuck", an_hour_ago()).await;
    let (mut session, _) = agent.session(&server).await;
    let acked = agent.send(&mut session, 1..=2_000, 5).await;
    assert_eq!(acked, 10, "nothing is acked once a commit is stuck");
    let status = server.exited().await;
    assert_eq!(
        status.code(),
        Some(tether_server::writer::STORE_STALLED_EXIT_CODE),
        "{status:?}"
    );
    // The stuck commit had flushed its samples to the log: durable, never acked.
    assert_eq!(recovered(dir.path(), &[], &agent, acked).await, 15);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_a_seal_counts_every_sample_once() {
    trace_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let args = [
        "--head-samples",
        "8",
        "--crash-at",
        "sealed",
        "--crash-nth",
        "2",
    ];
    let (agent, acked) = crash(dir.path(), &args).await;
    // The second seal comes with the 16th sample, in the fourth report.
    assert_eq!(acked, 15);
    assert_eq!(recovered(dir.path(), &[], &agent, acked).await, 20);
}

/// Checkpoints run every 20 ms while samples arrive, seals every 8 samples.
const BUSY: [&str; 6] = [
    "--head-samples",
    "8",
    "--compaction-interval",
    "20ms",
    "--checkpoint-interval",
    "20ms",
];

async fn crash_in_checkpoint(point: &str) {
    trace_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut args = BUSY.to_vec();
    args.extend(["--crash-at", point, "--crash-nth", "5"]);
    let (agent, acked) = crash(dir.path(), &args).await;
    recovered(dir.path(), &[], &agent, acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_mid_checkpoint_loses_nothing() {
    crash_in_checkpoint("snapshots-written").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_the_checkpoint_flush_and_before_log_truncation_loses_nothing() {
    crash_in_checkpoint("checkpoint-flushed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_log_truncation_loses_nothing() {
    crash_in_checkpoint("log-truncated").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_at_any_moment_under_load_loses_nothing() {
    trace_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(dir.path(), &BUSY).await;
    let agent = Agent::enroll(&server, "killed", an_hour_ago()).await;
    let (mut session, _) = agent.session(&server).await;
    let acked = agent.send(&mut session, 1..=203, 7).await;
    assert_eq!(acked, 203);
    // More in flight, unacknowledged, when the process dies.
    session
        .send(pb::connect_request::Message::Metrics(pb::MetricsReport {
            deferred_seq: 0,
            previous_ack_latency: None,
            samples: (204..=260).map(|seq| agent.sample(seq)).collect(),
        }))
        .await;
    server.kill().await;
    recovered(dir.path(), &[], &agent, acked).await;
}

/// Retention crashes after its first batch of removals: the expired chunks of one agent are
/// partly gone, the other agent's recent samples are untouched, and the next retention pass
/// finishes the job; the expired samples' rollups are kept longer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_during_retention_loses_nothing_recent() {
    trace_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let args = [
        "--head-samples",
        "4",
        "--retention-interval",
        "50ms",
        "--crash-at",
        "retention-batch",
    ];
    let server = start(dir.path(), &args).await;
    let recent = Agent::enroll(&server, "recent", an_hour_ago()).await;
    let (mut session, _) = recent.session(&server).await;
    assert_eq!(recent.send(&mut session, 1..=20, 5).await, 20);
    // Forty days ago: past the 30-day retention, within the rollups' 90 days.
    let old = Agent::enroll(
        &server,
        "old",
        an_hour_ago() - Duration::from_secs(40 * 86_400),
    )
    .await;
    let (mut old_session, _) = old.session(&server).await;
    // The crash comes once the first chunk of four is sealed and retention sees it.
    let old_acked = old.send(&mut old_session, 1..=400, 4).await;
    assert!(old_acked < 400);
    let status = server.exited().await;
    assert_eq!(status.signal(), Some(ABORTED), "{status:?}");

    // Chunks of four as before the crash, so the old samples replayed from the log are sealed
    // (an open head is never purged), then purged with the rest.
    let four = ["--head-samples", "4", "--retention-interval", "50ms"];
    recovered(dir.path(), &four, &recent, 20).await;
    let server = start(dir.path(), &four).await;
    let (_, welcome) = old.session(&server).await;
    assert!(welcome.last_durable_seq >= old_acked);
    assert_eq!(
        welcome.last_durable_seq % 4,
        0,
        "reports of four, logged whole"
    );
    tether_tests::eventually("retention to remove the old chunks", || {
        let (server, old) = (&server, &old);
        async move { old.stored(server).await.is_empty().then_some(()) }
    })
    .await;
    assert_eq!(old.rolled_up(&server).await, welcome.last_durable_seq);
    assert!(server.stop().await.success());
}
