//! A server process with 256 file descriptors (`prlimit --nofile=256`) under a flood of silent
//! connections keeps serving its agent and answers the CLI: with its connection cap derived
//! from that limit it never runs out; told to allow more connections than it has descriptors,
//! it runs out, keeps serving what it has, backs off, and counts it; either way its store
//! commits every batch. Started with a soft limit below its hard one, it raises the soft one
//! and its connection cap follows.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use tether_tests::{Launch, ServerProcess, TestAgent, cli_at, eventually_within, trace_init};

use super::{loopback, silent_flood};

/// The flood: far more connections than the server has descriptors.
const FLOOD: usize = 600;
/// The server under a 256-file limit.
const PRLIMIT: &[&str] = &["prlimit", "--nofile=256:256", "--"];
const SERVER: &str = env!("CARGO_BIN_EXE_test-server");

/// A `test-server` process under `prlimit`, with metrics and a short first-request deadline,
/// and `extra` flags.
async fn start(data_dir: &Path, extra: &[&str]) -> ServerProcess {
    start_under(PRLIMIT, data_dir, extra).await
}

/// [`start`] under another `wrapper`.
async fn start_under(wrapper: &[&str], data_dir: &Path, extra: &[&str]) -> ServerProcess {
    let mut flags = vec![
        "--metrics-listen",
        "127.0.0.1:0",
        "--first-request-timeout",
        "2s",
    ];
    flags.extend_from_slice(extra);
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let launch = Launch {
        wrapper,
        flags: &flags,
    };
    ServerProcess::start_with(Path::new(SERVER), data_dir, any, launch).await
}

/// Asserts the process is still running, then stops it.
async fn stop(mut server: ServerProcess) {
    assert!(server.is_running(), "the server process died");
    server.kill().await;
}

/// Connections the server accepted: open, or closed by a limit (silent ones never close
/// themselves).
async fn taken_in(server: &ServerProcess) -> f64 {
    let mut taken = server.metric("tether_connections").await;
    for reason in [
        "evicted",
        "max_connections",
        "max_per_source",
        "first_request_timeout",
    ] {
        let refused = format!("tether_connections_refused_total{{reason=\"{reason}\"}}");
        taken += server.metric(&refused).await;
    }
    taken
}

/// Runs the scenario against a server started with `extra` flags; returns the server, still
/// running, for the caller's own checks. With `settle`, the CLI connects once the server has
/// accepted every connection of the flood.
async fn flood_scenario(data_dir: &Path, extra: &[&str], settle: bool) -> ServerProcess {
    let server = start(data_dir, extra).await;
    let state = tempfile::tempdir().expect("agent state dir");
    let token = server.enrollment_token().await;
    let agent = TestAgent::spawn(&server.url, state, "kept", "linux", &[], Some(token));
    let stats = agent.handle.stats.clone();
    let acked = eventually_within(Duration::from_secs(60), "the agent's first ack", || async {
        let seq = stats.samples_acked_seq();
        (seq >= 1).then_some(seq)
    })
    .await;
    let sessions = stats.sessions_started();

    // Far more silent connections than the server has descriptors, from other addresses.
    let mut flood = Vec::new();
    for source in 2..5 {
        flood.extend(silent_flood(server.addr, loopback(source), FLOOD / 3).await);
    }
    if settle {
        // Connected is not accepted: wait until the server took every one from its backlog,
        // so the CLI's connection comes after the flood, not among it.
        eventually_within(Duration::from_secs(60), "the flood accepted", || async {
            (taken_in(&server).await > FLOOD as f64).then_some(())
        })
        .await;
    }
    let out = cli_at(&server.url, &server.admin_token, &["agents", "list"])
        .await
        .expect("tetherctl while the flood holds connections");
    assert!(out.contains("kept"), "{out}");

    // The agent kept its session and kept being acknowledged.
    eventually_within(
        Duration::from_secs(60),
        "new acks for the agent",
        || async { (stats.samples_acked_seq() > acked).then_some(()) },
    )
    .await;
    assert_eq!(
        stats.sessions_started(),
        sessions,
        "the agent's session survived"
    );
    // The store's flush needs no new descriptor (`store/sled/blobs.rs`): no commit failed.
    assert_eq!(
        server.metric("tether_writer_commit_failures_total").await,
        0.0,
        "every commit went through while the flood held the descriptors"
    );
    drop(flood);
    agent.stop().await;
    server
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_its_derived_connection_cap_a_server_never_runs_out_of_descriptors() {
    trace_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let server = flood_scenario(dir.path(), &[], true).await;
    assert!(
        refused_for_the_cap(&server).await > 0.0,
        "the cap was reached"
    );
    assert_eq!(
        server
            .metric("tether_accept_errors_total{reason=\"fd_limit\"}")
            .await,
        0.0,
        "the cap kept accept from running out of descriptors"
    );
    stop(server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_a_server_keeps_serving_and_backs_off() {
    trace_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let server = flood_scenario(dir.path(), &["--max-connections", "100000"], false).await;
    assert!(
        server
            .metric("tether_accept_errors_total{reason=\"fd_limit\"}")
            .await
            > 0.0,
        "accept ran out of descriptors and it was counted"
    );
    stop(server).await;
}

/// Connections refused or closed for the connection cap.
async fn refused_for_the_cap(server: &ServerProcess) -> f64 {
    server
        .metric("tether_connections_refused_total{reason=\"evicted\"}")
        .await
        + server
            .metric("tether_connections_refused_total{reason=\"max_connections\"}")
            .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_raises_its_soft_open_file_limit_to_the_hard_one() {
    trace_init();
    let dir = tempfile::tempdir().expect("tempdir");
    // Soft 256 would cap connections at 192; the hard 1024 leaves 768.
    let wrapper = &["prlimit", "--nofile=256:1024", "--"];
    let server = start_under(wrapper, dir.path(), &[]).await;
    let mut flood = Vec::new();
    for source in 2..5 {
        flood.extend(silent_flood(server.addr, loopback(source), FLOOD / 3).await);
    }
    eventually_within(Duration::from_secs(60), "the flood accepted", || async {
        (taken_in(&server).await >= FLOOD as f64).then_some(())
    })
    .await;
    assert_eq!(
        refused_for_the_cap(&server).await,
        0.0,
        "the cap follows the raised limit: the whole flood fits"
    );
    assert_eq!(
        server
            .metric("tether_accept_errors_total{reason=\"fd_limit\"}")
            .await,
        0.0,
        "the raised limit has room for the flood"
    );
    let out = cli_at(&server.url, &server.admin_token, &["summary"])
        .await
        .expect("tetherctl beside the flood");
    assert!(out.contains("Total"), "the fleet summary:\n{out}");
    drop(flood);
    stop(server).await;
}
