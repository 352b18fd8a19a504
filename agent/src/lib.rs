//! Tether's agent: runs on every machine of the fleet, collects system metrics, and holds one
//! long-lived `Connect` stream to the Tether server.
//!
//! The library is the whole agent; the `tether-agent` binary only parses flags and calls
//! [`run`]. The server's `--dev` mode and the end-to-end tests drive the same code through
//! [`spawn`].
//!
//! How it fits together:
//!
//! - [`runner`]: start-up (credential from the state directory or enrollment), the sampler task
//!   and the reconnect loop with [`backoff`] (exponential, jittered, reset only after a healthy
//!   session).
//! - `session`: one `Connect` stream: `Hello`, `Welcome`, metrics, pings, acks, goodbyes.
//! - `client`: gRPC clients from an explicit endpoint (connect timeout, keepalive, TLS), the
//!   credential on every call, and enrollment ([`enroll`]).
//! - [`buffer`]: unacknowledged samples and their sequence numbers, across sessions.
//! - [`command`]: commands the server offers: the policy that decides what may run (the agent
//!   is the trust boundary), execution, the exactly-once journal, coalesced reports.
//! - [`collector`]: what is measured ([`SysinfoCollector`] reads the real machine);
//!   [`synthetic`]: [`SyntheticCollector`], a deterministic machine for the simulator and tests.
//! - [`state`]: the 0600 state file with the agent id and credential.
//! - [`config`]: [`AgentConfig`], with every default as a named constant.
//! - [`error`]: [`AgentError`], the agent's error policy (what is retried, what stops it), and
//!   the simulator's [`SimulateError`].
//! - [`failure`]: which failures to reach the server are misconfigurations (an untrusted
//!   server certificate, TLS against plaintext): logged at ERROR at once with what to fix, and
//!   retried only at the backoff's cap.
//! - [`stats`]: [`AgentStats`], live counters the agent updates and anyone reads without
//!   blocking it.
//! - [`latency`]: [`LatencyHistogram`], the lock-free ack-latency histogram the simulator
//!   reports.
//! - [`simulate`]: the fleet simulator (`tether-agent simulate`): many agents in one process,
//!   each running the same reconnect loop and session code as a real agent; its settings, state
//!   file and stats records live in its child modules.
//! - `convert`: the only place that builds or takes apart wire messages (`tether_proto`);
//!   `client` and `session` only carry them.
//!
//! Intervals are never hard-coded: the heartbeat and metrics intervals come from the server's
//! `Welcome`.

pub mod backoff;
pub mod buffer;
mod client;
pub mod collector;
pub mod command;
pub mod config;
mod convert;
pub mod error;
pub mod events;
pub mod failure;
pub mod latency;
pub mod runner;
mod session;
pub mod simulate;
pub mod state;
pub mod stats;
pub mod synthetic;

pub use backoff::Backoff;
pub use buffer::{SampleBuffer, SeqSample};
pub use client::{ENROLL_TIMEOUT, KEEPALIVE_INTERVAL, MAX_DECODING_MESSAGE_SIZE, enroll};
pub use collector::{AGENT_VERSION, Collector, DiskUsage, Sample, SysinfoCollector, SystemInfo};
pub use command::{CommandConfig, CommandPolicy};
pub use config::{
    AgentConfig, BackoffConfig, ClientTls, DEFAULT_BACKOFF_INITIAL, DEFAULT_BACKOFF_JITTER,
    DEFAULT_BACKOFF_MAX, DEFAULT_BACKOFF_MULTIPLIER, DEFAULT_BUFFER_CAPACITY,
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_IDENTITY_CONFLICT_BACKOFF, DEFAULT_SERVER_URL,
    DEFAULT_STATE_DIR,
};
pub use error::{AgentError, SimulateError};
pub use latency::{ArrivalLog, LatencyHistogram, LatencySnapshot};
pub use runner::{AgentHandle, run, spawn};
pub use session::{MAX_SAMPLES_PER_REPORT, MIN_WELCOME_TIMEOUT, REPORT_INTERVAL, SHUTDOWN_GRACE};
pub use state::{Credential, Enrollment, StateDir};
pub use stats::AgentStats;
pub use synthetic::SyntheticCollector;
