//! gRPC handlers, one module per service. The gate (`gate.rs`) has already applied the access
//! table (`access.rs`) when a handler runs; the handler takes the resolved [`Caller`], converts
//! the request at the edge (`convert.rs`), and works inside the caller's org only: another
//! org's object answers `NOT_FOUND`, exactly like an absent one.
//!
//! [`Caller`]: crate::auth::Caller

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::admission::Admission;
use crate::audit::RefusalAudits;
use crate::auth::Auth;
use crate::command::Engine;
use crate::config::Config;
use crate::domain::{OrgId, OrgRecord};
use crate::identity::Identity;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::store::Store;
use crate::writer::WriterHandle;

pub mod admin;
pub mod agent;
pub mod command;
pub mod enroll;
pub mod event;
pub mod fleet;

/// What every handler shares.
pub struct AppState {
    pub config: Config,
    pub registry: Arc<Registry>,
    /// The command engine: every unfinished command.
    pub commands: Arc<Engine>,
    /// Stored events: ingest, lifecycle and retention go through it.
    pub events: Arc<crate::events::Events>,
    pub auth: Arc<Auth>,
    pub writer: WriterHandle,
    pub store: Arc<dyn Store>,
    pub orgs: Arc<Orgs>,
    pub metrics: Arc<Metrics>,
    /// The per-token audit budget of refused calls, shared with the gate.
    pub refusals: Arc<RefusalAudits>,
    /// Serializes identity changes (enrollment, deletion, reclaim) and limits re-enrollment.
    pub identity: Identity,
    /// Admission control of new agent sessions.
    pub admission: Arc<Admission>,
    /// Cancelled when the server starts shutting down: long-lived streams end.
    pub shutdown: CancellationToken,
}

/// Answers a mutating call: its response, or its error after auditing the failure (a success
/// is audited inside the commit that makes it durable). Waits while the writer's control queue
/// is full.
///
/// # Errors
///
/// `result`'s error, as a `Status`.
pub async fn answer_audited<T>(
    state: &AppState,
    caller: &crate::auth::Caller,
    method: &str,
    target: &str,
    result: Result<T, crate::error::ServerError>,
) -> Result<tonic::Response<T>, tonic::Status> {
    match result {
        Ok(response) => Ok(tonic::Response::new(response)),
        Err(err) => {
            let status = tonic::Status::from(err);
            state
                .writer
                .audit(crate::audit::entry(caller, method, target, Err(&status)))
                .await;
            Err(status)
        }
    }
}

/// The orgs that exist. Created rarely (by the server admin), read on every org-scoped call
/// that names an org.
pub struct Orgs {
    orgs: std::sync::RwLock<std::collections::BTreeMap<OrgId, OrgRecord>>,
}

impl Orgs {
    pub fn new(orgs: Vec<OrgRecord>) -> Self {
        Self {
            orgs: std::sync::RwLock::new(orgs.into_iter().map(|o| (o.id.clone(), o)).collect()),
        }
    }

    pub fn list(&self) -> Vec<OrgRecord> {
        self.orgs
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    pub fn contains(&self, id: &OrgId) -> bool {
        self.orgs
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(id)
    }

    /// Inserts `org` unless it exists; returns whether it was inserted.
    pub fn insert(&self, org: OrgRecord) -> bool {
        let mut orgs = self.orgs.write().unwrap_or_else(|e| e.into_inner());
        if orgs.contains_key(&org.id) {
            return false;
        }
        orgs.insert(org.id.clone(), org);
        true
    }

    pub fn remove(&self, id: &OrgId) {
        self.orgs
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }
}
