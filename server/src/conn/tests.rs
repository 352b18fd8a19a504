//! `conn.rs`'s unit tests: the eviction's choice, the armed phase, the first-request deadline.

use super::*;

/// An armed connection from the source whose armed connections `source` counts.
fn armed(source: &Arc<AtomicUsize>) -> Arc<ConnState> {
    Arc::new(ConnState::armed(source.clone()))
}

fn table_of(states: &[&Arc<ConnState>]) -> Table {
    let mut table = Table::default();
    for state in states {
        table.armed.push_back(Arc::downgrade(state));
    }
    table
}

#[test]
fn eviction_takes_the_oldest_still_armed_connection() {
    let source = Arc::default();
    let (a, b, c) = (armed(&source), armed(&source), armed(&source));
    let mut table = table_of(&[&a, &b, &c]);
    a.disarm();
    assert!(table.evict_armed());
    assert_eq!(a.phase(), SERVED, "a disarmed one is never evicted");
    assert_eq!(b.phase(), EVICTED);
    assert!(c.is_armed());
    assert_eq!(source.load(Ordering::Acquire), 1, "only c still waits");
    drop(c);
    assert!(!table.evict_armed(), "a closed one is skipped");
}

#[test]
fn eviction_takes_from_the_source_with_the_most_armed_connections() {
    let (client, flood) = (Arc::default(), Arc::default());
    let first = armed(&client);
    let floods: Vec<_> = (0..3).map(|_| armed(&flood)).collect();
    let mut table = table_of(&[&first, &floods[0], &floods[1], &floods[2]]);
    assert!(table.evict_armed());
    assert!(first.is_armed(), "the oldest, but its source waits on one");
    assert_eq!(floods[0].phase(), EVICTED, "the flood's oldest goes");
    assert!(table.evict_armed());
    assert_eq!(floods[1].phase(), EVICTED);
    assert!(first.is_armed(), "kept its place");
    // One each: the oldest goes.
    assert!(table.evict_armed());
    assert_eq!(first.phase(), EVICTED);
    assert!(floods[2].is_armed());
    assert_eq!(
        table.armed.len(),
        1,
        "the survivor kept its place in the queue"
    );
}

#[test]
fn a_connection_leaves_the_armed_phase_once() {
    let source = Arc::default();
    let a = armed(&source);
    assert!(a.evict());
    a.disarm();
    assert_eq!(a.phase(), EVICTED, "an eviction stands");
    assert!(!a.evict());
    let b = armed(&source);
    b.disarm();
    assert!(!b.evict(), "a served connection is never evicted");
    assert_eq!(source.load(Ordering::Acquire), 0);
}

/// A server busy for longer than the deadline reads a peer's request late: the peer is
/// judged by what it sent, so the request gets its chance; a silent peer does not.
#[tokio::test(start_paused = true)]
async fn a_late_read_is_judged_by_what_the_peer_sent() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let limits = ConnectionLimits {
        first_request_timeout: Duration::from_secs(1),
        ..ConnectionLimits::default()
    };
    let connections = Connections::new(&limits, Metrics::new());
    let mut buf = [0u8; 64];

    let mut client = TcpStream::connect(addr).await.expect("connect");
    let (tcp, peer) = listener.accept().await.expect("accept");
    let mut conn = connections.admit(tcp, peer).expect("admitted");
    client.write_all(b"request").await.expect("send in time");
    conn.tcp.readable().await.expect("the bytes arrived");
    tokio::time::advance(Duration::from_secs(5)).await;
    let n = conn.read(&mut buf).await.expect("what it sent is read");
    assert_eq!(&buf[..n], b"request");
    // Nothing more: the grace for that request to reach the gate, then the end.
    let started = Instant::now();
    let err = conn
        .read(&mut buf)
        .await
        .expect_err("closed after the grace");
    assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    assert_eq!(started.elapsed(), LATE_READ_GRACE);

    let _silent = TcpStream::connect(addr).await.expect("connect");
    let (tcp, peer) = listener.accept().await.expect("accept");
    let mut conn = connections.admit(tcp, peer).expect("admitted");
    tokio::time::advance(Duration::from_secs(5)).await;
    let started = Instant::now();
    let err = conn.read(&mut buf).await.expect_err("closed at once");
    assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    assert_eq!(started.elapsed(), Duration::ZERO);

    // A disarmed connection has no deadline.
    let mut client = TcpStream::connect(addr).await.expect("connect");
    let (tcp, peer) = listener.accept().await.expect("accept");
    let mut conn = connections.admit(tcp, peer).expect("admitted");
    conn.state.disarm();
    tokio::time::advance(Duration::from_secs(5)).await;
    client.write_all(b"later").await.expect("send late");
    let n = conn.read(&mut buf).await.expect("still served");
    assert_eq!(&buf[..n], b"later");
}

#[test]
fn the_queue_forgets_what_no_longer_matters() {
    let source = Arc::default();
    let (a, b) = (armed(&source), armed(&source));
    let mut table = table_of(&[&a, &b]);
    a.disarm();
    table.forget_unarmed();
    assert_eq!(table.armed.len(), 1);
    drop(b);
    table.forget_unarmed();
    assert!(table.armed.is_empty());
}
