//! [`CrashableServer`]: a [`TestServer`] on a tokio runtime of its own, so that it can die as
//! a process does, with no orderly step.

use std::net::SocketAddr;
use std::time::Duration;

use tether_server::config::Config;
use tokio_util::sync::CancellationToken;

use crate::server::Started;
use crate::{TestServer, eventually};

/// A [`TestServer`] on a tokio runtime of its own, so that it can crash.
///
/// [`CrashableServer::crash`] shuts that runtime down: every task of the server (serving, each
/// connection, the writer, the liveness pass) is dropped at once with no orderly step, as the
/// death of the process would, and the store is released. Only what the store had flushed
/// survives. (Aborting the serving task alone would not do: the writer, the liveness task and
/// the connections would live on, and the store would stay locked, so no server could reopen
/// the data directory.) Dereferences to the [`TestServer`] for clients and helpers.
pub struct CrashableServer {
    /// `None` only after [`CrashableServer::stop`] took it.
    server: Option<TestServer>,
    /// Owns the server's tasks. `None` once shut down. Dropping a runtime inside async code
    /// panics, so `Drop` shuts it down in the background instead.
    runtime: Option<tokio::runtime::Runtime>,
}

impl CrashableServer {
    /// Starts a server with `config` on `127.0.0.1:0`, on its own runtime.
    pub async fn start(config: Config) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        Self::start_on(listener, config).await
    }

    /// Starts a server with `config` on `addr` (e.g. the address of a crashed server).
    pub async fn start_at(addr: SocketAddr, config: Config) -> Self {
        let listener = eventually("the old address to be free", || async {
            std::net::TcpListener::bind(addr).ok()
        })
        .await;
        Self::start_on(listener, config).await
    }

    async fn start_on(listener: std::net::TcpListener, config: Config) -> Self {
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let addr = listener.local_addr().expect("local addr");
        let data_dir = config.data_dir.clone();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("crashable-server")
            .enable_all()
            .build()
            .expect("server runtime");
        let shutdown = CancellationToken::new();
        let (tell, told) = tokio::sync::oneshot::channel();
        let handle = runtime.spawn({
            let shutdown = shutdown.clone();
            async move {
                let listener =
                    tokio::net::TcpListener::from_std(listener).expect("register listener");
                let server = tether_server::server::start(config)
                    .await
                    .expect("server starts");
                // The test awaits this; if it went away, the server is dropped with the runtime.
                let _ = tell.send(Started::of(&server));
                server.serve(listener, shutdown).await
            }
        });
        let Ok(started) = told.await else {
            // The server task failed before it started: re-raise its panic.
            match handle.await {
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                other => panic!("server task ended before starting: {other:?}"),
            }
        };
        let server = TestServer::new(addr, data_dir, started, None, shutdown, handle);
        Self {
            server: Some(server),
            runtime: Some(runtime),
        }
    }

    /// Shuts the server down in order (see [`TestServer::stop`]).
    pub async fn stop(mut self) {
        if let Some(server) = self.server.take() {
            server.stop().await;
        }
        self.shutdown_runtime().await;
    }

    /// Crashes the server: drops all its tasks mid-flight and waits until they are gone and the
    /// store is closed.
    pub async fn crash(mut self) {
        self.shutdown_runtime().await;
    }

    async fn shutdown_runtime(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            // Blocks until the worker threads have dropped every task; blocking pool work in
            // flight (a store commit) finishes first.
            tokio::task::spawn_blocking(move || runtime.shutdown_timeout(Duration::from_secs(10)))
                .await
                .expect("server runtime shutdown");
        }
    }
}

impl std::ops::Deref for CrashableServer {
    type Target = TestServer;

    fn deref(&self) -> &TestServer {
        self.server.as_ref().expect("the server is running")
    }
}

impl Drop for CrashableServer {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
