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
//!   and the reconnect loop with [`backoff`].
//! - `session`: one `Connect` stream: `Hello`, `Welcome`, metrics, pings, acks, goodbyes.
//! - [`simulate`]: the fleet simulator (`tether-agent simulate`): many agents in one process,
//!   each running the same reconnect loop and session code as a real agent.
//! - [`buffer`]: unacknowledged samples and their sequence numbers, across sessions.
//! - [`collector`]: what is measured ([`SysinfoCollector`] reads the real machine).
//! - [`state`]: the 0600 state file with the agent id and credential.
//! - `convert`: the only place that touches wire types (`tether_proto`).
//!
//! Intervals are never hard-coded: the heartbeat and metrics intervals come from the server's
//! `Welcome`.

pub mod backoff;
pub mod buffer;
mod client;
pub mod collector;
pub mod config;
mod convert;
pub mod error;
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
pub use config::{
    AgentConfig, BackoffConfig, ClientTls, DEFAULT_BACKOFF_INITIAL, DEFAULT_BACKOFF_JITTER,
    DEFAULT_BACKOFF_MAX, DEFAULT_BACKOFF_MULTIPLIER, DEFAULT_BUFFER_CAPACITY,
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_SERVER_URL, DEFAULT_STATE_DIR,
};
pub use error::{AgentError, SimulateError};
pub use latency::{LatencyHistogram, LatencySnapshot};
pub use runner::{AgentHandle, run, spawn};
pub use session::{MAX_SAMPLES_PER_REPORT, SHUTDOWN_GRACE};
pub use state::{Credential, Enrollment, StateDir};
pub use stats::AgentStats;
pub use synthetic::SyntheticCollector;
