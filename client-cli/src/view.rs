//! The CLI's own view of the server's answers, and the conversions from the wire types.
//!
//! These structs are what `-o json` prints, so their shape is a public, stable contract:
//! snake_case keys, enums as lowercase strings (`"online"`, `"status_changed"`), timestamps as
//! RFC 3339 strings (UTC, whole seconds, `null` when unknown or outside the years
//! 0001–9999), durations as `*_seconds` numbers.
//! Prost types are never serialized directly. Table and CSV renderers read the same structs, so
//! every format shows the same facts.
//!
//! Where things live: the types by command area (`agents`, `fleet`, `admin` for tokens and
//! orgs, `audit`, `command` for `cmd`), every conversion from a wire answer to a view in
//! `convert` (`convert/command.rs` for commands), and the serde helpers for times, durations and
//! bytes in `json`.

mod admin;
mod agents;
mod audit;
mod command;
mod convert;
mod fleet;
mod json;
#[cfg(test)]
mod tests;

pub use admin::{
    ApiTokenView, CreatedApiTokenView, CreatedOrgView, CreatedTokenView, EnrollmentTokenView,
    OrgView, Role, TokenState,
};
pub use agents::{
    AgentDetailView, AgentStatus, AgentView, DiskView, EventKind, Health, MetricsSampleView,
    StatusReason, SystemInfoView, TransitionView, WatchEventView,
};
pub use audit::{AuditChainView, AuditEventView, AuditOutcome};
pub use command::{
    BudgetView, CommandEventKind, CommandEventView, CommandKind, CommandSpecView, CommandState,
    CommandView, GapView, InvocationCountsView, InvocationLogView, InvocationState, InvocationView,
    OutputChunkView, OutputStream, RolloutView, SkipReason, StreamLogView, TargetsView,
};
pub use convert::{duration, status_code_name, time};
pub use fleet::{
    CommandSettingsView, HealthCounts, LimitsView, MetricsPointView, ServerConfigView, SummaryView,
    ThresholdsView,
};
