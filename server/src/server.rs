//! Start-up, serving and shutdown.
//!
//! [`start`] binds the Prometheus listener (if configured), checks that the data directory is
//! private and locks it against a second server (`datadir.rs`), opens the store, rebuilds the
//! in-memory state from it, makes sure a bootstrap admin token exists (`server/bootstrap.rs`),
//! and spawns the writer, liveness, retention, compaction and metrics tasks; [`Server::serve`]
//! then serves gRPC on a listener the caller bound (tests bind `127.0.0.1:0`), accepting through
//! `listener.rs` under the connection limits of `conn.rs`. Every task the server spawns runs
//! under its `TaskTracker` and stops on its `background` token. Shutdown order: report
//! NOT_SERVING on the health service, stop accepting, tell sessions `Goodbye(SERVER_DRAINING)`
//! with each one's reconnect delay (`drain.rs`) and end watches, wait for connections under a
//! grace period, then stop the background tasks (the writer commits what is queued first) and
//! wait for them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tether_proto as pb;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic_health::ServingStatus;

use crate::auth::Auth;
use crate::config::{ADMIN_TOKEN_FILE, Config, ConfigError};
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::service::AppState;
use crate::service::admin::AdminService;
use crate::service::agent::AgentService;
use crate::service::alert::AlertService;
use crate::service::command::CommandService;
use crate::service::event::EventService;
use crate::service::fleet::FleetService;
use crate::store::{SledStore, Store, StoreError};

mod bootstrap;

pub use self::bootstrap::{create_private_dir, write_private_file};
use self::bootstrap::{ensure_admin_token, ensure_default_org, split_superseded_credentials};

/// How long shutdown waits for connections to close after telling them to.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Errors that stop the server from starting or serving.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    #[error(transparent)]
    DataDir(#[from] crate::datadir::DataDirError),
    #[error("cannot open the store in {path}: {source}")]
    Store {
        path: PathBuf,
        #[source]
        source: StoreError,
    },
    #[error(
        "cannot listen for metrics on {addr} (--metrics-listen, or --no-metrics to serve none): \
         {source}"
    )]
    MetricsListen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write the admin token file {path}: {source}")]
    AdminToken {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("internal error: {0}")]
    Internal(String),
}

/// A started server: state loaded, background tasks running, not yet serving.
pub struct Server {
    state: Arc<AppState>,
    /// The writer, liveness, retention, compaction and metrics tasks; [`Server::stop`] waits
    /// for them.
    tasks: TaskTracker,
    /// Stops the background tasks, after the RPCs have stopped.
    background: CancellationToken,
    /// Where the Prometheus listener is bound, if it is on.
    metrics_addr: Option<SocketAddr>,
    /// The bootstrap admin token, when this start created it (shown once by the binary).
    pub admin_token_file: PathBuf,
    /// This server's hold on its data directory, released when the server is dropped.
    _lock: crate::datadir::DataDirLock,
}

/// Opens the store under `config.data_dir` and starts the background tasks.
///
/// # Errors
///
/// Bad configuration, an unusable data directory, a store of another schema version.
pub async fn start(config: Config) -> Result<Server, StartError> {
    start_inner(config, |store| Arc::new(store)).await
}

/// [`start`], with the opened store wrapped by `wrap` (e.g. in a
/// [`crate::testing::FailingStore`]): for end-to-end tests of what a failing disk does.
///
/// # Errors
///
/// As [`start`].
#[cfg(feature = "test-support")]
pub async fn start_with_store(
    config: Config,
    wrap: impl FnOnce(SledStore) -> Arc<dyn Store>,
) -> Result<Server, StartError> {
    start_inner(config, wrap).await
}

async fn start_inner(
    config: Config,
    wrap: impl FnOnce(SledStore) -> Arc<dyn Store>,
) -> Result<Server, StartError> {
    config.validate()?;
    if let Some(tls) = &config.tls {
        // Checked again when serving; failing here keeps a bad file from getting that far.
        crate::tls::server_config(tls)?;
    }
    // Bound first: a taken port fails the start before anything is opened or spawned.
    let metrics_listener = match config.metrics_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::MetricsListen { addr, source })?,
        ),
        None => None,
    };
    let data_dir = config.data_dir.clone();
    if let Some(mode) = crate::datadir::prepare(&data_dir)? {
        tracing::warn!(
            data_dir = %data_dir.display(),
            mode = format!("{mode:04o}"),
            "the data directory was accessible to other users; made it private (0700)"
        );
    }
    // Before the store: a second server stops here, in one line naming the first.
    let lock = crate::datadir::DataDirLock::acquire(&data_dir)?;
    let store_path = data_dir.join("store");
    let store: Arc<dyn Store> = {
        let path = store_path.clone();
        let cache = config.storage.cache_bytes;
        let series = config.storage.series.clone();
        let opened =
            tokio::task::spawn_blocking(move || SledStore::open_with(&path, cache, &series))
                .await
                .map_err(|e| StartError::Internal(e.to_string()))?;
        wrap(opened.map_err(|source| StartError::Store {
            path: store_path.clone(),
            source,
        })?)
    };
    let tightened = crate::datadir::tighten_store(&store_path)
        .and_then(|()| crate::datadir::tighten_file(&data_dir.join(ADMIN_TOKEN_FILE)));
    tightened.map_err(|source| crate::datadir::DataDirError::Io {
        path: data_dir.clone(),
        source,
    })?;
    let snapshot = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || store.load())
            .await
            .map_err(|e| StartError::Internal(e.to_string()))?
            .map_err(|source| StartError::Store {
                path: store_path.clone(),
                source,
            })?
    };
    tracing::info!(
        agents = snapshot.agents.len(),
        tokens = snapshot.tokens.len(),
        data_dir = %data_dir.display(),
        "store loaded"
    );

    let (tokens, superseded) = split_superseded_credentials(snapshot.tokens, &snapshot.agents);
    if !superseded.is_empty() {
        // Left by servers that kept every replaced credential: pruned once, here.
        let n_superseded = superseded.len();
        let store = store.clone();
        tokio::task::spawn_blocking(move || store.commit_writes(&superseded))
            .await
            .map_err(|e| StartError::Internal(e.to_string()))?
            .map_err(|source| StartError::Store {
                path: store_path.clone(),
                source,
            })?;
        tracing::info!(n_superseded, "pruned superseded agent credentials");
    }
    let auth = Arc::new(Auth::new(tokens, snapshot.enrollment_tokens));
    let admin_token_file = data_dir.join(ADMIN_TOKEN_FILE);
    let mut orgs = snapshot.orgs;
    if let Some(created) = ensure_default_org(&orgs, store.as_ref())? {
        orgs.push(created);
    }
    ensure_admin_token(&auth, store.as_ref(), &admin_token_file)?;
    let orgs = Arc::new(crate::service::Orgs::new(orgs));
    let metrics = Metrics::new();

    let live: HashMap<_, _> = snapshot
        .agents
        .iter()
        .filter_map(|(record, live)| live.clone().map(|l| (record.id.clone(), l)))
        .collect();
    let (writer, queues) = crate::writer::channel(
        store.clone(),
        &metrics,
        config.storage.writer_queue,
        config.storage.writer_control_queue,
        config.storage.ingest_budget,
        config.storage.ingest_queue,
    );
    let tombstones = snapshot
        .tombstones
        .iter()
        .map(|t| (t.org.clone(), t.agent.clone()));
    let registry = Arc::new(
        Registry::new(
            snapshot.agents,
            writer.clone(),
            config.liveness.clone(),
            config.health.clone(),
            crate::registry::WatchLimits::from_config(&config.limits),
            metrics.clone(),
        )
        .with_identity(tombstones, config.limits.conflict_policy()),
    );
    metrics.observe_fleet(Arc::downgrade(&registry));
    auth.set_writer(writer.clone());
    let commands = {
        let (store, writer, registry) = (store.clone(), writer.clone(), registry.clone());
        let (settings, metrics) = (config.commands.clone(), metrics.clone());
        tokio::task::spawn_blocking(move || {
            crate::command::Engine::load(store, writer, registry, settings, metrics)
        })
        .await
        .map_err(|e| StartError::Internal(e.to_string()))?
        .map_err(|source| StartError::Store {
            path: store_path.clone(),
            source,
        })?
    };
    let commands = Arc::new(commands);
    tracing::info!(
        commands = commands.n_active(),
        "unfinished commands resumed"
    );

    let background = CancellationToken::new();
    let tasks = TaskTracker::new();
    let alerts = Arc::new(crate::alert::Alerts::load(
        config.alerts.clone(),
        snapshot.alert_rules,
        snapshot.alerts,
        registry.clone(),
        writer.clone(),
        metrics.clone(),
        tasks.clone(),
        background.clone(),
    ));
    let (events, events_task) = crate::events::Events::new(
        store.clone(),
        writer.clone(),
        config.events.clone(),
        crate::events::watch_stream::WatchSlots::new(
            config.limits.max_watches_per_token,
            config.limits.max_watches_per_org,
        ),
        crate::events::hub::Hub::new(registry.clone(), metrics.event_watch.clone()),
        metrics.event_stats_days.clone(),
    );
    tasks.spawn(events_task.run(background.clone()));
    tasks.spawn(crate::events::run_retention(
        events.clone(),
        orgs.clone(),
        config.storage.retention_interval,
        background.clone(),
    ));
    tasks.spawn(crate::writer::run(
        queues,
        store.clone(),
        registry.clone(),
        live,
        snapshot.audit_heads,
        metrics.clone(),
        config.storage.clone(),
        background.clone(),
    ));
    tasks.spawn(crate::liveness::run(
        registry.clone(),
        config.liveness.tick,
        background.clone(),
    ));
    tasks.spawn(crate::writer::run_retention(
        store.clone(),
        config.storage.clone(),
        background.clone(),
    ));
    tasks.spawn(commands.clone().run(background.clone()));
    tasks.spawn(alerts.clone().run(background.clone()));
    tasks.spawn(crate::command::retention::run(
        store.clone(),
        writer.clone(),
        config.commands.retention,
        config.storage.retention_interval,
        background.clone(),
    ));
    tasks.spawn(crate::lag::run(
        metrics.runtime_lag_seconds.clone(),
        background.clone(),
    ));
    tasks.spawn(crate::writer::run_compaction(
        store.clone(),
        config.storage.clone(),
        metrics.clone(),
        background.clone(),
    ));
    let metrics_addr = match metrics_listener {
        Some(listener) => {
            let addr = listener.local_addr().ok();
            tracing::info!(
                addr = addr.map(tracing::field::display),
                "serving Prometheus metrics on /metrics"
            );
            let (metrics, shutdown) = (metrics.clone(), background.clone());
            tasks.spawn(async move {
                if let Err(e) = crate::metrics::serve(listener, metrics, shutdown).await {
                    tracing::warn!("metrics listener failed: {e}");
                }
            });
            addr
        }
        None => None,
    };
    tasks.close();

    let refusals = Arc::new(crate::audit::RefusalAudits::new(
        writer.clone(),
        metrics.clone(),
    ));
    let reenroll = config.limits.reenroll_rate();
    let admission = Arc::new(crate::admission::Admission::new(
        config.admission.clone(),
        metrics.clone(),
    ));
    let state = Arc::new(AppState {
        config,
        registry,
        commands,
        alerts,
        events,
        auth,
        writer,
        store,
        orgs,
        metrics,
        refusals,
        identity: crate::identity::Identity::new(reenroll),
        admission,
        shutdown: CancellationToken::new(),
    });
    Ok(Server {
        state,
        tasks,
        background,
        metrics_addr,
        admin_token_file,
        _lock: lock,
    })
}

// === impl Server ===

impl Server {
    pub fn state(&self) -> &Arc<AppState> {
        &self.state
    }

    /// The address the Prometheus listener is bound to (`None` when metrics are off).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Serves gRPC on `listener` until `shutdown` is cancelled, then shuts down in order.
    ///
    /// # Errors
    ///
    /// A transport failure while serving.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> Result<(), StartError> {
        let state = self.state.clone();
        let limits = &state.config.limits;
        let gate = crate::gate::AuthLayer(Arc::new(crate::gate::Gate::new(
            state.auth.clone(),
            state.refusals.clone(),
            state.metrics.clone(),
            crate::gate::RateLimit {
                per_second: f64::from(limits.token_requests_per_second),
                burst: f64::from(limits.token_request_burst),
            },
        )));

        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        set_health(&health_reporter, ServingStatus::Serving).await;
        // Reflection in both versions tools speak: `grpc.reflection.v1` (grpcurl, Postman) and
        // `v1alpha` (Python's grpcio-reflection, older tools). Each lists both, so a client of
        // either version sees every service the port serves.
        let reflection_builder = || {
            tonic_reflection::server::Builder::configure()
                .include_reflection_service(false)
                .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(
                    tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
                )
        };
        let reflection_error = |e| StartError::Internal(format!("reflection: {e}"));
        let reflection = reflection_builder().build_v1().map_err(reflection_error)?;
        let reflection_v1alpha = reflection_builder()
            .build_v1alpha()
            .map_err(reflection_error)?;

        let agent =
            pb::agent_service_server::AgentServiceServer::new(AgentService::new(state.clone()))
                .max_decoding_message_size(limits.max_message_bytes)
                .max_encoding_message_size(limits.max_message_bytes);
        let fleet =
            pb::fleet_service_server::FleetServiceServer::new(FleetService::new(state.clone()))
                .max_decoding_message_size(limits.max_message_bytes)
                .max_encoding_message_size(usize::MAX);
        let admin = pb::admin_service_server::AdminServiceServer::new(AdminService::new(
            state.clone(),
            self.tasks.clone(),
        ))
        .max_decoding_message_size(limits.max_message_bytes);
        let command = pb::command_service_server::CommandServiceServer::new(CommandService::new(
            state.clone(),
        ))
        .max_decoding_message_size(limits.max_message_bytes)
        .max_encoding_message_size(usize::MAX);
        let alert =
            pb::alert_service_server::AlertServiceServer::new(AlertService::new(state.clone()))
                .max_decoding_message_size(limits.max_message_bytes)
                .max_encoding_message_size(usize::MAX);
        let event =
            pb::event_service_server::EventServiceServer::new(EventService::new(state.clone()))
                .max_decoding_message_size(limits.max_message_bytes)
                .max_encoding_message_size(usize::MAX);

        let local = listener.local_addr().ok();
        let tls = match state.config.tls.as_ref().map(crate::tls::server_config) {
            None => None,
            Some(Ok(tls)) => Some(tls),
            Some(Err(e)) => {
                self.stop().await;
                return Err(e.into());
            }
        };
        let tls_mode = match (&tls, state.config.mtls()) {
            (None, _) => "off",
            (Some(_), false) => "tls",
            (Some(_), true) => "mtls",
        };
        let drain = {
            let shutdown = shutdown.clone();
            let state = state.clone();
            async move {
                shutdown.cancelled().await;
                tracing::info!("shutting down: draining sessions and watches");
                // Probes and load balancers watching health stop sending work first.
                set_health(&health_reporter, ServingStatus::NotServing).await;
                state.shutdown.cancel();
                let n_sessions = state.registry.drain_sessions();
                tracing::info!(
                    n_sessions,
                    window = ?state.config.liveness.drain.window(n_sessions),
                    "told agents to reconnect later, spread over the window"
                );
            }
        };
        let connections =
            crate::conn::Connections::new(&state.config.connections, state.metrics.clone());
        if limits.max_pending_accept_resets < limits.max_concurrent_streams as usize {
            tracing::warn!(
                max_pending_accept_resets = limits.max_pending_accept_resets,
                max_concurrent_streams = limits.max_concurrent_streams,
                "the Rapid Reset limit is below the stream limit: a client cancelling the \
                 streams it may open at once can lose its connection"
            );
        }
        if let (Some(configured), Some(limit)) = (
            state.config.connections.max_connections,
            crate::config::open_file_limit(),
        ) {
            let room = crate::config::connections_for_fd_limit(limit);
            if configured > room {
                tracing::warn!(
                    max_connections = configured,
                    open_file_limit = limit,
                    connections_the_limit_leaves = room,
                    "--max-connections is above what the open-file limit leaves for \
                     connections: a flood of connections can take the descriptors the store \
                     needs; raise the open-file limit or leave --max-connections unset"
                );
            }
        }
        tracing::info!(
            addr = local.map(tracing::field::display),
            tls = %tls_mode,
            max_connections = connections.max_total(),
            max_connections_per_source = state.config.connections.max_connections_per_source,
            "serving gRPC"
        );
        let router = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(limits.keepalive_interval))
            .http2_keepalive_timeout(Some(limits.keepalive_timeout))
            .max_concurrent_streams(Some(limits.max_concurrent_streams))
            .http2_max_header_list_size(Some(limits.max_header_list_bytes))
            // Small windows: a held-back stream (backpressure, `session.rs`) makes the server
            // buffer at most this much of it.
            .initial_stream_window_size(Some(limits.http2_stream_window))
            .initial_connection_window_size(Some(limits.http2_connection_window))
            .http2_max_pending_accept_reset_streams(Some(limits.max_pending_accept_resets))
            .http2_max_local_error_reset_streams(Some(limits.max_local_error_resets))
            // Outermost, so that calls the gate refuses are counted too.
            .layer(crate::metrics::RpcMetricsLayer(state.metrics.clone()))
            .layer(gate)
            .layer(crate::conn::FirstRequestLayer)
            .add_service(health_service)
            .add_service(reflection)
            .add_service(reflection_v1alpha)
            .add_service(agent)
            .add_service(fleet)
            .add_service(admin)
            .add_service(command)
            .add_service(alert)
            .add_service(event);
        let tls = match (tls, &state.config.tls) {
            (Some(config), Some(settings)) => Some(crate::listener::TlsAccept {
                config,
                handshake_timeout: settings.handshake_timeout,
                max_handshakes: state.config.connections.max_tls_handshakes,
            }),
            _ => None,
        };
        let incoming = crate::listener::incoming(listener, tls, connections, state.metrics.clone());
        let serve = router.serve_with_incoming_shutdown(incoming, drain);

        let result = tokio::select! {
            r = serve => r.map_err(StartError::from),
            () = async { shutdown.cancelled().await; tokio::time::sleep(SHUTDOWN_GRACE).await } => {
                tracing::warn!("connections still open after the shutdown grace period; closing them");
                Ok(())
            }
        };
        self.stop().await;
        result
    }

    /// Stops the background tasks after the writer committed everything queued.
    pub async fn stop(self) {
        self.state.shutdown.cancel();
        self.background.cancel();
        self.tasks.wait().await;
        tracing::info!("server stopped");
    }
}

/// Sets the health of the server as a whole (the empty service name) and of each of its
/// services.
async fn set_health(reporter: &tonic_health::server::HealthReporter, status: ServingStatus) {
    use tonic::server::NamedService;
    for service in [
        "",
        pb::agent_service_server::AgentServiceServer::<AgentService>::NAME,
        pb::fleet_service_server::FleetServiceServer::<FleetService>::NAME,
        pb::admin_service_server::AdminServiceServer::<AdminService>::NAME,
        pb::command_service_server::CommandServiceServer::<CommandService>::NAME,
        pb::alert_service_server::AlertServiceServer::<AlertService>::NAME,
        pb::event_service_server::EventServiceServer::<EventService>::NAME,
    ] {
        reporter.set_service_status(service, status).await;
    }
}

/// Starts the server and serves on `listener` until `shutdown`, for callers that need nothing
/// from the started server in between (the binary and the test harness read the admin token
/// file there, so they call [`start`] and [`Server::serve`] themselves).
///
/// # Errors
///
/// See [`start`] and [`Server::serve`].
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    let server = start(config).await?;
    server.serve(listener, shutdown).await
}

/// Whether `addr` is a loopback address (plaintext allowed without extra flags).
pub fn is_loopback(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
}

/// How a listener will be exposed, as decided by [`check_listen`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListenSecurity {
    /// TLS is configured: any address is fine.
    Tls,
    /// Plaintext on a loopback address: only this machine can connect.
    PlaintextLoopback,
    /// Plaintext on a non-loopback address, explicitly allowed with `--insecure-plaintext`:
    /// tokens cross the network unencrypted, so the binary logs a warning.
    PlaintextExposed,
}

/// The rule for binding `addr`: plaintext is allowed on loopback; anywhere else (the wildcard
/// `0.0.0.0`/`::` included) it needs TLS or an explicit `insecure_plaintext`.
///
/// # Errors
///
/// [`ConfigError::Invalid`] when `addr` is not loopback, TLS is not configured and
/// `insecure_plaintext` is false.
pub fn check_listen(
    addr: &SocketAddr,
    tls_configured: bool,
    insecure_plaintext: bool,
) -> Result<ListenSecurity, ConfigError> {
    if tls_configured {
        Ok(ListenSecurity::Tls)
    } else if is_loopback(addr) {
        Ok(ListenSecurity::PlaintextLoopback)
    } else if insecure_plaintext {
        Ok(ListenSecurity::PlaintextExposed)
    } else {
        Err(ConfigError::Invalid(format!(
            "refusing to serve plaintext on non-loopback address {addr}: configure TLS with \
             --tls-cert and --tls-key (`tether-server gen-certs` makes a development pair), or \
             pass --insecure-plaintext to accept unencrypted traffic"
        )))
    }
}
