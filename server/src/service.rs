//! gRPC handlers, one module per service. Each handler resolves its [`Caller`], checks the role,
//! converts the request at the edge (`convert.rs`), and works inside the caller's org only:
//! another org's object answers `NOT_FOUND`, exactly like an absent one.
//!
//! [`Caller`]: crate::auth::Caller

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::auth::Auth;
use crate::config::Config;
use crate::registry::Registry;
use crate::store::Store;
use crate::writer::WriterHandle;

pub mod admin;
pub mod agent;
pub mod fleet;

/// What every handler shares.
pub struct AppState {
    pub config: Config,
    pub registry: Arc<Registry>,
    pub auth: Arc<Auth>,
    pub writer: WriterHandle,
    pub store: Arc<dyn Store>,
    /// Cancelled when the server starts shutting down: long-lived streams end.
    pub shutdown: CancellationToken,
}
