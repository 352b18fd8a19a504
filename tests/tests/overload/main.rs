//! Overload, over real sockets: the server's own slowness is never the client's fault, an agent
//! stops only when it is revoked and has no enrollment token to enroll again with, a busy server
//! turns new sessions away early with a retry delay, and connections that do nothing useful
//! cannot crowd out the ones that do.
//!
//! - `admission.rs`: the Hello timeout answers `UNAVAILABLE` with a retry delay; sessions
//!   beyond the setup limit are refused at once; a real agent honours the delay and comes in.
//! - `backpressure.rs`: a slow writer under a flood holds the flooder back (its stream is not
//!   read) and keeps a steady agent's acks prompt; a session held back is not taken for silent.
//! - `agent_policy.rs`: real agents and the simulator against a server answering every gRPC
//!   code there is (and one there is not) keep retrying and honour the server's delay; revoked,
//!   they stop without a token and enroll again with one.
//! - `deferral.rs`: a full line for ingest budget defers the reports of agents that accept it
//!   (and every report they wrote before reading the deferral), never those of agents that do
//!   not; real agents send the deferred samples again and each is stored once; an agent that
//!   ignores its deferrals stores nothing more, is ended by the stream's message rate, and
//!   costs a healthy agent nothing.
//! - `connections.rs`: the first-request deadline, the per-source and global caps, and the TLS
//!   handshake cap, each while a healthy agent and the CLI keep working.
//! - `fd_limit.rs`: a server process with 256 file descriptors under a connection flood.
//! - `pacing.rs`: a metrics ack's `report_after` (`--min-report-interval`) batches an agent's
//!   samples, keeps it online, and what it held goes before its goodbye; adaptive pacing asks
//!   more of the agent whose acks lag (from the waits it reports), only of that agent, and
//!   lets go once they are prompt.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::io::AsyncReadExt as _;
use tokio::net::{TcpSocket, TcpStream};

mod admission;
mod agent_policy;
mod backpressure;
mod connections;
mod deferral;
mod fd_limit;
mod pacing;

/// Loopback address `127.0.0.N`: a distinct source address for the server's per-source caps.
fn loopback(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, n))
}

/// Opens a TCP connection to `addr` from `source` and sends nothing.
async fn silent_tcp(addr: SocketAddr, source: IpAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::new(source, 0))
        .expect("bind the source address");
    socket.connect(addr).await.expect("connect")
}

/// Opens `n` silent connections to `addr` from `source`.
async fn silent_flood(addr: SocketAddr, source: IpAddr, n: usize) -> Vec<TcpStream> {
    let mut flood = Vec::with_capacity(n);
    for _ in 0..n {
        flood.push(silent_tcp(addr, source).await);
    }
    flood
}

/// Waits up to `within` for the server to close `tcp` (EOF or reset); whatever the server sent
/// before (its HTTP/2 SETTINGS) is skipped. Returns whether it closed.
async fn closed_within(tcp: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let read_until_closed = async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(within, read_until_closed)
        .await
        .is_ok()
}

/// Waits (at most `within`) until `stats`' agent has `n` samples acknowledged past `first`,
/// and returns how many metrics reports the server read meanwhile and how many samples they
/// carried.
async fn reports_for_samples(
    server: &tether_tests::TestServer,
    stats: &tether_agent::AgentStats,
    first: u64,
    n: u64,
    within: Duration,
) -> (u64, u64) {
    let reports = || server.metrics.agent_messages.metrics.get();
    let before = reports();
    let acked = tether_tests::eventually_within(within, "more samples acked", || async {
        let seq = stats.samples_acked_seq();
        (seq >= first + n).then_some(seq)
    })
    .await;
    (reports() - before, acked - first)
}
