//! The accept loop of the gRPC listener, plaintext or TLS.
//!
//! [`incoming`] accepts TCP connections, puts each under the limits of [`Connections`] (global
//! and per-source caps, first-request deadline), and for TLS runs the handshake on its own
//! short-lived task: at most `max_tls_handshakes` at once (the others wait for a turn), each
//! within the handshake timeout and the connection's first-request deadline. The returned stream yields established
//! connections only, for tonic's `serve_with_incoming_shutdown`.
//!
//! Out of file descriptors (EMFILE, ENFILE) or kernel memory, `accept` fails: the loop counts
//! it (`tether_accept_errors{reason="fd_limit"}`), evicts a connection that has not made a
//! request yet (chosen as at the connection cap, `conn.rs`), and backs off before accepting again, while every established
//! connection keeps being served by its own task. It warns at most once per 10 s with the
//! number of failures since its last line, however long the flood lasts.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_stream::wrappers::ReceiverStream;

use crate::conn::{Conn, Connections, Served};
use crate::metrics::Metrics;

/// Established connections waiting for tonic to pick them up.
const ESTABLISHED_QUEUE: usize = 128;
/// First pause after `accept` ran out of resources; doubles while it keeps failing.
const ACCEPT_BACKOFF_INITIAL: Duration = Duration::from_millis(5);
/// Longest pause between two accepts while out of resources.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_millis(500);
/// At most one out-of-resources warning per this interval, however long a flood goes on (each
/// accepted connection ends a back-off, so a flood alternates failures and successes).
const EXHAUSTION_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// TLS on the listener: the rustls configuration and the handshake limits.
pub struct TlsAccept {
    pub config: Arc<rustls::ServerConfig>,
    pub handshake_timeout: Duration,
    pub max_handshakes: usize,
}

/// Accepts connections on `listener` under `connections`' limits (with TLS if `tls` is given)
/// and yields the established ones (never an error).
///
/// The accept task ends when the returned stream is dropped (tonic drops it when it stops
/// accepting, at shutdown); it then closes the listener. Handshakes in flight end on their own
/// within their timeout.
pub fn incoming(
    listener: TcpListener,
    tls: Option<TlsAccept>,
    connections: Arc<Connections>,
    metrics: Arc<Metrics>,
) -> ReceiverStream<Result<Served, io::Error>> {
    let (tx, rx) = mpsc::channel(ESTABLISHED_QUEUE);
    tokio::spawn(accept_loop(listener, tls, connections, metrics, tx));
    ReceiverStream::new(rx)
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAccept>,
    connections: Arc<Connections>,
    metrics: Arc<Metrics>,
    tx: mpsc::Sender<Result<Served, io::Error>>,
) {
    let handshakes = tls.map(|tls| {
        (
            TlsAcceptor::from(tls.config),
            tls.handshake_timeout,
            Arc::new(Semaphore::new(tls.max_handshakes)),
        )
    });
    let mut backoff: Option<Duration> = None;
    let mut exhaustion_log = ExhaustionLog::default();
    loop {
        let accepted = tokio::select! {
            () = tx.closed() => return,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => {
                if backoff.take().is_some() && exhaustion_log.recovered() {
                    tracing::info!("accepting connections again");
                }
                accepted
            }
            Err(e) if is_resource_exhaustion(&e) => {
                metrics.accept_error("fd_limit");
                // A connection that made no request yet gives its descriptor back to
                // whoever is waiting in the backlog; established ones are untouched.
                connections.evict_armed();
                let pause =
                    backoff.map_or(ACCEPT_BACKOFF_INITIAL, |d| (d * 2).min(ACCEPT_BACKOFF_MAX));
                if let Some(failures) = exhaustion_log.failed(Instant::now()) {
                    tracing::warn!(
                        open = connections.open(),
                        failures,
                        "failed to accept connections: {e}; backing off (existing connections \
                         are still served; raise the open-file limit or lower --max-connections)"
                    );
                }
                backoff = Some(pause);
                tokio::time::sleep(pause).await;
                continue;
            }
            Err(e) => {
                // A connection that failed before it was accepted (reset, aborted): its own
                // problem only.
                metrics.accept_error("other");
                tracing::debug!("failed to accept a connection: {e}");
                continue;
            }
        };
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(%peer, "cannot set TCP_NODELAY: {e}");
        }
        let Some(conn) = connections.admit(tcp, peer) else {
            continue;
        };
        match &handshakes {
            None => {
                // A failed send means the server stopped accepting: the connection is dropped.
                if tx.send(Ok(Served::Plain(conn))).await.is_err() {
                    return;
                }
            }
            Some((acceptor, timeout, permits)) => {
                tokio::spawn(handshake(
                    conn,
                    acceptor.clone(),
                    *timeout,
                    permits.clone(),
                    metrics.clone(),
                    tx.clone(),
                ));
            }
        }
    }
}

/// One TLS handshake: waits for a turn among the handshakes in progress until the connection's
/// first-request deadline, then runs it within `timeout` (and that deadline, after which its
/// reads fail).
async fn handshake(
    conn: Conn,
    acceptor: TlsAcceptor,
    timeout: Duration,
    permits: Arc<Semaphore>,
    metrics: Arc<Metrics>,
    tx: mpsc::Sender<Result<Served, io::Error>>,
) {
    let peer = conn.peer();
    let Ok(Ok(_permit)) = tokio::time::timeout_at(conn.deadline(), permits.acquire_owned()).await
    else {
        metrics.connection_refused("tls_handshakes");
        tracing::debug!(%peer, "no TLS handshake turn in time; closing the connection");
        return;
    };
    metrics.tls_handshakes.inc();
    let handshake = tokio::time::timeout(timeout, acceptor.accept(conn)).await;
    metrics.tls_handshakes.dec();
    match handshake {
        Ok(Ok(stream)) => {
            // A failed send means the server stopped accepting: the stream is dropped.
            let _ = tx.send(Ok(Served::Tls(Box::new(stream)))).await;
        }
        Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake failed: {e}"),
        Err(_) => {
            metrics.connection_refused("tls_handshake_timeout");
            tracing::debug!(%peer, ?timeout, "TLS handshake timed out; closing the connection");
        }
    }
}

/// Throttles the out-of-resources warning: one line per [`EXHAUSTION_LOG_INTERVAL`] carrying
/// the number of failed accepts it stands for, and one recovery line per warning.
#[derive(Default)]
struct ExhaustionLog {
    last_warning: Option<Instant>,
    /// Failed accepts not reported in a line yet.
    failures: u64,
    /// A warning was printed and no recovery line since.
    warned: bool,
}

impl ExhaustionLog {
    /// Counts one failed accept; returns the failures to report when a warning is due.
    fn failed(&mut self, now: Instant) -> Option<u64> {
        self.failures += 1;
        if self
            .last_warning
            .is_some_and(|last| now.duration_since(last) < EXHAUSTION_LOG_INTERVAL)
        {
            return None;
        }
        self.last_warning = Some(now);
        self.warned = true;
        Some(std::mem::take(&mut self.failures))
    }

    /// Whether accepting again after a back-off deserves a line: only after a warning.
    fn recovered(&mut self) -> bool {
        std::mem::take(&mut self.warned)
    }
}

/// Whether an `accept` error means the process or system is out of descriptors or memory,
/// which retrying at once cannot fix.
fn is_resource_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_of_failed_accepts_logs_one_line_per_interval_with_its_count() {
        let mut log = ExhaustionLog::default();
        let start = Instant::now();
        assert_eq!(
            log.failed(start),
            Some(1),
            "the first failure is told at once"
        );
        assert!(log.recovered());
        // A flood: failures every 6 ms, each followed by one accepted connection.
        let mut lines = 0;
        let mut recoveries = 0;
        for i in 1..=1_000u32 {
            if log.failed(start + Duration::from_millis(6) * i).is_some() {
                lines += 1;
            }
            if log.recovered() {
                recoveries += 1;
            }
        }
        // 6 s of flood: still inside the first interval.
        assert_eq!((lines, recoveries), (0, 0));
        assert_eq!(
            log.failed(start + EXHAUSTION_LOG_INTERVAL),
            Some(1_001),
            "the next line counts every failure since the last one"
        );
        assert!(log.recovered());
        assert!(!log.recovered(), "one recovery line per warning");
    }

    #[test]
    fn descriptor_exhaustion_is_told_apart() {
        for errno in [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM] {
            assert!(is_resource_exhaustion(&io::Error::from_raw_os_error(errno)));
        }
        assert!(!is_resource_exhaustion(&io::Error::from_raw_os_error(
            libc::ECONNABORTED
        )));
        assert!(!is_resource_exhaustion(&io::Error::other("x")));
    }
}
