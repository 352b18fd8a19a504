//! Commands: the server offers invocations over the session; the agent decides whether its own
//! configuration allows them, runs them exactly once, and reports their progress and end.
//!
//! How it fits together:
//!
//! - [`config`]: the `commands` section ([`CommandConfig`]): built-ins on or off, the `exec`
//!   allowlist, concurrency and output bounds.
//! - [`policy`]: the trust boundary ([`CommandPolicy`]); a refusal names the setting to change.
//! - `manager`: `Commands`, the subsystem the runner owns and every session calls into
//!   (offers, cancels, acks, `Welcome`, reports). It outlives sessions.
//! - `invocation`: one invocation's task: journal, run, journal the end, report.
//! - `exec`: a program in its own process group, environment cleared, killed as a group.
//! - `journal`: the fsync'd record of accepted invocations and their ends (exactly-once).
//! - `output`: per-stream pending output, head and tail kept, the middle dropped when full.
//! - `outbox`: numbered updates awaiting acks, cut into coalesced reports.
//! - [`types`]: the domain types; `crate::convert` maps them to the wire.
//!
//! The states an invocation goes through on the agent, and what each step writes first:
//!
//! ```text
//! offer ─┬─ known id (live or journaled) ──▶ report what is known again, never run it again
//!        ├─ refused by policy, late, invalid ─▶ journal result ─▶ REJECTED / DELIVERY_TIMED_OUT
//!        ├─ noop ─────────────────────────────▶ journal result ─▶ SUCCEEDED
//!        └─ exec, sleep, collect ─▶ [queued in memory while all slots are busy; cancel ─▶
//!             CANCELLED, deadline passed ─▶ DELIVERY_TIMED_OUT] ─▶ journal accept ─▶ RUNNING
//!             ─▶ output … ─▶ journal result ─▶ SUCCEEDED | FAILED | TIMED_OUT | CANCELLED
//! agent restarted with an accept and no result ─▶ journal result ─▶ AGENT_RESTARTED
//! ```
//!
//! Every update is numbered per invocation (`seq` 1, 2, …) and kept until the server acks it;
//! a new session re-sends what is unacknowledged, after applying the acks in `Welcome`.

pub mod config;
mod exec;
mod invocation;
mod journal;
mod manager;
mod outbox;
mod output;
pub mod policy;
mod sample;
pub mod types;

#[cfg(test)]
mod tests;

pub use config::{
    CommandConfig, DEFAULT_KILL_GRACE, DEFAULT_MAX_CONCURRENT_INVOCATIONS,
    DEFAULT_MAX_QUEUED_INVOCATIONS, DEFAULT_OUTPUT_BUFFER_BYTES,
};
pub use exec::{OUTPUT_DRAIN, SHUTDOWN_KILL_GRACE};
pub use journal::{JOURNAL_FILE_NAME, JOURNAL_RETENTION};
pub(crate) use manager::Commands;
pub use manager::MAX_UPDATE_OUTPUT_BYTES;
pub use outbox::{MAX_REPORT_BYTES, MAX_UPDATES_PER_REPORT};
pub use policy::CommandPolicy;
