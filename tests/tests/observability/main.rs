//! What operators plug into Tether from the tools they already run: Prometheus (the metrics
//! listener, checked by `promtool`), gRPC tooling (health and reflection), and the logs.

use std::time::Duration;

use tether_server::config::Config;
use tether_tests::{TestServer, fast_config, trace_init};

mod grpc;
mod logs;
mod metrics;

/// `fast_config` with the metrics listener on, and sessions that say nothing staying online
/// for the whole test.
fn config(dir: &std::path::Path) -> Config {
    let mut config = fast_config(dir);
    config.metrics_listen = Some("127.0.0.1:0".parse().expect("addr"));
    config.liveness.stale_after = Duration::from_secs(60);
    config.liveness.offline_after = Duration::from_secs(120);
    config
}

async fn start() -> (TestServer, tempfile::TempDir) {
    trace_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(config(dir.path())).await;
    (server, dir)
}
