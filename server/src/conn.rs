//! Client connections: how many there may be, and how long one may stay without proving useful.
//!
//! [`Connections`] is the server-wide table the accept loop (`listener.rs`) consults for every
//! accepted socket: a global cap, a cap per source address, and the queue of connections that
//! have not sent their first authenticated request yet ("armed" ones). [`Conn`] wraps one
//! accepted `TcpStream` (under TLS, when TLS is on): while armed it carries a deadline, and a
//! read after the deadline, or after the connection was evicted, fails, so hyper closes it.
//! [`FirstRequestLayer`] (a tower layer inside the gate) disarms the connection when a request
//! passes authentication.
//!
//! At the global cap a new connection evicts an armed one (a peer that connected and sent
//! nothing useful yet) rather than being refused, so silent connections cannot lock out clients
//! that talk; only when every connection is in use is the newcomer refused. The victim is taken
//! among the oldest armed connections ([`EVICTION_WINDOW`]) from the source address that has
//! the most armed connections, so a flood from a few addresses pays for itself: a client that
//! connected while a flood was still arriving is not evicted for it before its first request
//! gets through.
//!
//! Invariant: every admitted connection holds one `Slot` until it is dropped (closed by
//! either side, timed out, evicted, or refused after accept); the slot's `Drop` is the one place
//! the counts go down.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::task::AtomicWaker;
use http::Request;
use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;

use crate::auth::Caller;
use crate::config::ConnectionLimits;
use crate::metrics::Metrics;

/// Connections allowed above the global cap while evicted ones are closing (an eviction takes
/// effect when the evicted connection's task next runs, not at once): at most this many, and at
/// most a sixteenth of the cap, which stays well inside the descriptors the cap leaves free.
const EVICTION_SLACK: usize = 64;
/// Armed connections, oldest first, an eviction chooses among: the one whose source address
/// has the most armed connections goes (the oldest of them on a tie).
const EVICTION_WINDOW: usize = 32;
/// Time given, once, to a connection found past its first-request deadline right after the
/// server read something from it: enough for a request among what was read to reach the gate.
const LATE_READ_GRACE: Duration = Duration::from_secs(2);

/// The server-wide connection table.
pub struct Connections {
    max_total: usize,
    /// See [`EVICTION_SLACK`].
    slack: usize,
    max_per_source: usize,
    first_request_timeout: Duration,
    metrics: Arc<Metrics>,
    table: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    open: usize,
    per_source: HashMap<IpAddr, Source>,
    /// Connections in accept order that were armed when queued; entries that have since been
    /// disarmed or closed are skipped (and dropped from the front as new ones arrive).
    armed: VecDeque<Weak<ConnState>>,
}

/// One source address's connections.
#[derive(Default)]
struct Source {
    open: usize,
    /// Its connections still armed, shared with each of them ([`ConnState::waiting`]).
    armed: Arc<AtomicUsize>,
}

/// A connection's phase: armed until its first authenticated request ([`SERVED`]), its eviction
/// ([`EVICTED`]) or its end ([`CLOSED`]), whichever comes first; never armed again.
const ARMED: u8 = 0;
const SERVED: u8 = 1;
const EVICTED: u8 = 2;
const CLOSED: u8 = 3;

/// What a connection and the request path share.
#[derive(Debug, Default)]
pub struct ConnState {
    /// [`ARMED`], [`SERVED`], [`EVICTED`] or [`CLOSED`].
    phase: AtomicU8,
    /// Armed connections from the same source address, this one included while armed.
    waiting: Arc<AtomicUsize>,
    /// The connection's task, woken when it is evicted.
    waker: AtomicWaker,
}

/// A connection's place in [`Connections`]; dropping it frees the place.
struct Slot {
    connections: Arc<Connections>,
    source: IpAddr,
    state: Arc<ConnState>,
}

/// One accepted TCP connection under its limits.
pub struct Conn {
    tcp: TcpStream,
    peer: SocketAddr,
    state: Arc<ConnState>,
    /// When the first-request deadline expires.
    deadline_at: Instant,
    /// Until the first authenticated request; `None` after it.
    deadline: Option<Deadline>,
    /// Set once a read failed for the deadline or an eviction, so it keeps failing.
    closed: Option<io::ErrorKind>,
    slot: Slot,
}

/// The first-request deadline of an armed connection.
struct Deadline {
    sleep: Pin<Box<Sleep>>,
    /// The current read loop took data in since the socket last had nothing to read.
    read_since_idle: bool,
    /// The one [`LATE_READ_GRACE`] was given.
    graced: bool,
}

/// The IO tonic serves: a [`Conn`], or TLS over one.
pub enum Served {
    Plain(Conn),
    Tls(Box<TlsStream<Conn>>),
}

/// What handlers and layers learn about a request's connection (a request extension, set by
/// tonic from [`Connected`]).
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub remote_addr: SocketAddr,
    /// The client certificate chain the peer presented and the TLS layer verified.
    pub peer_certs: Option<Arc<Vec<CertificateDer<'static>>>>,
    state: Arc<ConnState>,
}

/// The peer address of the connection `request` came on; `None` for a request that did not come
/// through the accept loop.
pub fn remote_addr<T>(request: &tonic::Request<T>) -> Option<SocketAddr> {
    request
        .extensions()
        .get::<ConnInfo>()
        .map(|info| info.remote_addr)
}

// === impl Connections ===

impl Connections {
    pub fn new(limits: &ConnectionLimits, metrics: Arc<Metrics>) -> Arc<Self> {
        let max_total = limits.effective_max_connections();
        Arc::new(Self {
            max_total,
            slack: EVICTION_SLACK.min(max_total / 16),
            max_per_source: limits.max_connections_per_source,
            first_request_timeout: limits.first_request_timeout,
            metrics,
            table: Mutex::default(),
        })
    }

    /// The global cap in force.
    pub fn max_total(&self) -> usize {
        self.max_total
    }

    /// Admits an accepted connection from `peer`, evicting an armed connection at the global
    /// cap (see the module docs). Returns `None` (and closes `tcp`) when a cap refuses it.
    pub fn admit(self: &Arc<Self>, tcp: TcpStream, peer: SocketAddr) -> Option<Conn> {
        let source = peer.ip();
        let state = {
            let mut table = self.lock();
            let from_source = table.per_source.get(&source).map_or(0, |s| s.open);
            if from_source >= self.max_per_source {
                drop(table);
                self.metrics.connection_refused("max_per_source");
                tracing::debug!(%peer, "connection refused: per-source connection limit");
                return None;
            }
            if table.open >= self.max_total {
                if table.open >= self.max_total + self.slack || !table.evict_armed() {
                    drop(table);
                    self.metrics.connection_refused("max_connections");
                    tracing::debug!(%peer, "connection refused: connection limit");
                    return None;
                }
                self.metrics.connection_refused("evicted");
            }
            table.open += 1;
            let from = table.per_source.entry(source).or_default();
            from.open += 1;
            let state = Arc::new(ConnState::armed(from.armed.clone()));
            table.forget_unarmed();
            table.armed.push_back(Arc::downgrade(&state));
            state
        };
        self.metrics.connections.inc();
        let deadline_at = Instant::now() + self.first_request_timeout;
        Some(Conn {
            tcp,
            peer,
            state: state.clone(),
            deadline_at,
            deadline: Some(Deadline {
                sleep: Box::pin(tokio::time::sleep_until(deadline_at)),
                read_since_idle: false,
                graced: false,
            }),
            closed: None,
            slot: Slot {
                connections: self.clone(),
                source,
                state,
            },
        })
    }

    /// Evicts a connection that has not sent an authenticated request yet, if any, chosen as
    /// at the cap (the accept loop does so when it runs out of file descriptors). Returns
    /// whether one was.
    pub fn evict_armed(&self) -> bool {
        let evicted = self.lock().evict_armed();
        if evicted {
            self.metrics.connection_refused("evicted");
        }
        evicted
    }

    /// Open connections.
    pub fn open(&self) -> usize {
        self.lock().open
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Table {
    /// Evicts, among the [`EVICTION_WINDOW`] oldest armed connections, the oldest of those
    /// whose source has the most armed connections; the others keep their place.
    fn evict_armed(&mut self) -> bool {
        let mut window = Vec::with_capacity(EVICTION_WINDOW);
        while window.len() < EVICTION_WINDOW
            && let Some(weak) = self.armed.pop_front()
        {
            if let Some(state) = weak.upgrade().filter(|s| s.is_armed()) {
                window.push(state);
            }
        }
        let mut evicted = false;
        while !evicted && !window.is_empty() {
            // `max_by_key` keeps the last maximum: compare the reversed window, so the oldest wins.
            let (victim, _) = window
                .iter()
                .enumerate()
                .rev()
                .max_by_key(|(_, s)| s.waiting.load(Ordering::Acquire))
                .expect("the window is not empty");
            // A connection disarmed since it was looked at refuses; the next candidate goes.
            evicted = window.remove(victim).evict();
        }
        for state in window.iter().rev() {
            self.armed.push_front(Arc::downgrade(state));
        }
        evicted
    }

    /// Drops entries from the front that no longer matter, so the queue holds only what was
    /// accepted within about one first-request timeout.
    fn forget_unarmed(&mut self) {
        while self
            .armed
            .front()
            .is_some_and(|weak| weak.upgrade().is_none_or(|s| !s.is_armed()))
        {
            self.armed.pop_front();
        }
    }
}

// === impl ConnState ===

impl ConnState {
    /// A new armed connection from the source whose armed connections `waiting` counts.
    fn armed(waiting: Arc<AtomicUsize>) -> Self {
        waiting.fetch_add(1, Ordering::AcqRel);
        Self {
            phase: AtomicU8::new(ARMED),
            waiting,
            waker: AtomicWaker::new(),
        }
    }

    /// The connection made an authenticated request: no deadline any more, never evicted
    /// (unless it was evicted first: then the eviction stands).
    pub fn disarm(&self) {
        self.leave(SERVED);
    }

    pub fn is_armed(&self) -> bool {
        self.phase() == ARMED
    }

    fn phase(&self) -> u8 {
        self.phase.load(Ordering::Acquire)
    }

    /// Marks an armed connection evicted and wakes it; `false` if it is no longer armed.
    fn evict(&self) -> bool {
        let evicted = self.leave(EVICTED);
        if evicted {
            self.waker.wake();
        }
        evicted
    }

    /// Moves an armed connection to `phase`; `false` (and nothing changes) if it was not armed.
    fn leave(&self, phase: u8) -> bool {
        let left = self
            .phase
            .compare_exchange(ARMED, phase, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if left {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
        }
        left
    }
}

// === impl Slot ===

impl Drop for Slot {
    fn drop(&mut self) {
        self.state.leave(CLOSED);
        let connections = &self.connections;
        {
            let mut table = connections.lock();
            table.open = table.open.saturating_sub(1);
            if let Some(from) = table.per_source.get_mut(&self.source) {
                from.open -= 1;
                if from.open == 0 {
                    table.per_source.remove(&self.source);
                }
            }
        }
        connections.metrics.connections.dec();
    }
}

// === impl Conn ===

impl Conn {
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// When this connection must have made its first authenticated request.
    pub fn deadline(&self) -> Instant {
        self.deadline_at
    }

    /// Fails with `kind` from now on, counting `reason` if given.
    fn close(
        &mut self,
        kind: io::ErrorKind,
        reason: Option<&'static str>,
        message: &str,
    ) -> io::Error {
        if let Some(reason) = reason {
            self.slot.connections.metrics.connection_refused(reason);
        }
        tracing::debug!(peer = %self.peer, "closing a connection: {message}");
        self.closed = Some(kind);
        io::Error::new(kind, message.to_owned())
    }
}

impl AsyncRead for Conn {
    /// Reads, unless the connection was evicted or outstayed its first-request deadline.
    ///
    /// The deadline is checked only when there is nothing more to read, so a connection whose
    /// request sat unread while the server was busy is judged by what its peer did, not by how
    /// late the server read it: if the read that just ended took anything in, the request may
    /// be among it and gets `LATE_READ_GRACE` (once) to reach the gate.
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(kind) = this.closed {
            return Poll::Ready(Err(io::Error::from(kind)));
        }
        if this.deadline.is_some() {
            match this.state.phase() {
                SERVED => this.deadline = None,
                EVICTED => {
                    // Counted when it was evicted.
                    let message =
                        "evicted: no request yet and the server is at its connection limit";
                    return Poll::Ready(Err(this.close(
                        io::ErrorKind::ConnectionAborted,
                        None,
                        message,
                    )));
                }
                _ => {}
            }
        }
        let Some(deadline) = &mut this.deadline else {
            return Pin::new(&mut this.tcp).poll_read(cx, buf);
        };
        let filled = buf.filled().len();
        let poll = Pin::new(&mut this.tcp).poll_read(cx, buf);
        match &poll {
            Poll::Ready(Ok(())) if buf.filled().len() > filled => deadline.read_since_idle = true,
            Poll::Pending => {
                this.state.waker.register(cx.waker());
                if deadline.sleep.as_mut().poll(cx).is_pending() {
                    deadline.read_since_idle = false;
                } else if std::mem::take(&mut deadline.read_since_idle) && !deadline.graced {
                    deadline.graced = true;
                    deadline
                        .sleep
                        .as_mut()
                        .reset(Instant::now() + LATE_READ_GRACE);
                    // Registers the timer; it cannot have fired yet.
                    let _ = deadline.sleep.as_mut().poll(cx);
                } else {
                    let message = "no request within the first-request timeout";
                    return Poll::Ready(Err(this.close(
                        io::ErrorKind::TimedOut,
                        Some("first_request_timeout"),
                        message,
                    )));
                }
            }
            Poll::Ready(_) => {}
        }
        poll
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

// === impl Served ===

impl Connected for Served {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        let (conn, peer_certs) = match self {
            Self::Plain(conn) => (conn, None),
            Self::Tls(tls) => {
                let (conn, session) = tls.get_ref();
                let certs = session
                    .peer_certificates()
                    .map(|certs| Arc::new(certs.to_vec()));
                (conn, certs)
            }
        };
        ConnInfo {
            remote_addr: conn.peer,
            peer_certs,
            state: conn.state.clone(),
        }
    }
}

impl AsyncRead for Served {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(conn) => Pin::new(conn).poll_read(cx, buf),
            Self::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Served {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(conn) => Pin::new(conn).poll_write(cx, buf),
            Self::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(conn) => Pin::new(conn).poll_write_vectored(cx, bufs),
            Self::Tls(tls) => Pin::new(tls.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(conn) => conn.is_write_vectored(),
            Self::Tls(tls) => tls.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(conn) => Pin::new(conn).poll_flush(cx),
            Self::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(conn) => Pin::new(conn).poll_shutdown(cx),
            Self::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
        }
    }
}

// === the first request ===

/// Tower layer, inside the gate: a request the gate authenticated (it carries a [`Caller`])
/// disarms its connection's first-request deadline.
#[derive(Clone, Copy, Debug, Default)]
pub struct FirstRequestLayer;

#[derive(Clone, Debug)]
pub struct FirstRequest<S> {
    inner: S,
}

impl<S> tower::Layer<S> for FirstRequestLayer {
    type Service = FirstRequest<S>;

    fn layer(&self, inner: S) -> Self::Service {
        FirstRequest { inner }
    }
}

impl<S, B> tower::Service<Request<B>> for FirstRequest<S>
where
    S: tower::Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let extensions = request.extensions();
        if extensions.get::<Caller>().is_some()
            && let Some(info) = extensions.get::<ConnInfo>()
        {
            info.state.disarm();
        }
        self.inner.call(request)
    }
}

#[cfg(test)]
mod tests;
