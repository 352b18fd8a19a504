//! What reads cost, and who pays, with agents as large as the server accepts: watches send
//! their snapshot in pages, queue at most their bound and are capped per token and per org, so
//! a watcher that never reads costs only itself; every read RPC answers within its byte budget,
//! below the 4 MiB a standard gRPC client accepts.

use std::collections::BTreeMap;
use std::time::Duration;

use tether_proto as pb;
use tether_server::config::Config;
use tether_tests::{
    Bearer, EVENTUALLY, FleetClient, RawSession, Seed, TestServer, fast_config, heavy_hello,
    seed_heavy_agents, trace_init,
};
use tonic::Code;
use tonic::transport::Endpoint;

mod budgets;
mod watch;

/// `fast_config`, but sessions that say nothing stay online for the whole test.
fn config(dir: &std::path::Path) -> Config {
    let mut config = fast_config(dir);
    config.liveness.stale_after = Duration::from_secs(60);
    config.liveness.offline_after = Duration::from_secs(120);
    config
}

type Events = tonic::Streaming<pb::WatchAgentsResponse>;

/// A fleet client for `token` on a connection of its own whose HTTP/2 windows are the
/// protocol's default (64 KiB): a watcher on it that stops reading stops the server's sending.
async fn own_connection(server: &TestServer, token: &str) -> FleetClient {
    let channel = Endpoint::from_shared(server.url.clone())
        .expect("url")
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .connect()
        .await
        .expect("connect");
    pb::fleet_service_client::FleetServiceClient::with_interceptor(
        channel,
        Bearer(Some(token.to_owned())),
    )
}

async fn watch(fleet: &mut FleetClient, include_metrics: bool) -> Result<Events, tonic::Status> {
    fleet
        .watch_agents(pb::WatchAgentsRequest {
            include_metrics,
            ..Default::default()
        })
        .await
        .map(tonic::Response::into_inner)
}

/// The next message of a watch; `Err` for the status it ended with. Panics if it ends cleanly
/// or nothing comes within [`EVENTUALLY`].
async fn next(events: &mut Events) -> Result<pb::WatchAgentsResponse, tonic::Status> {
    match tokio::time::timeout(EVENTUALLY, events.message()).await {
        Ok(Ok(Some(event))) => Ok(event),
        Ok(Ok(None)) => panic!("the watch ended cleanly"),
        Ok(Err(status)) => Err(status),
        Err(_) => panic!("no watch message within {EVENTUALLY:?}"),
    }
}

/// Enrolls heavy machines `range` with a fresh enrollment token of `admin_token`'s org, with
/// `samples` samples of `disks` disks each; returns (agent id, credential).
async fn heavy_agents(
    server: &TestServer,
    admin_token: &str,
    range: std::ops::Range<usize>,
    samples: u64,
    disks: usize,
) -> Vec<(String, String)> {
    let enroll_token = server
        .admin_as(Some(admin_token))
        .await
        .create_enrollment_token(pb::CreateEnrollmentTokenRequest::default())
        .await
        .expect("create enrollment token")
        .into_inner()
        .secret;
    let seed = Seed {
        samples,
        disks,
        concurrency: 4,
    };
    seed_heavy_agents(&server.channel().await, &enroll_token, range, seed)
        .await
        .expect("seed heavy agents")
}
