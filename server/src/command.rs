//! Commands: what an operator asks selected agents to do, and the rules that take every
//! invocation to exactly one terminal state.
//!
//! - [`model`]: the domain types of commands and invocations (states, skip reasons, budgets).
//! - [`rollout`]: the pure rollout rule: how many queued invocations may be offered now, and
//!   when the rest must be skipped (error budget, failed canary). The engine applies it after
//!   every change; nothing else decides.

pub mod engine;
pub mod model;
pub mod output;
pub mod query;
pub mod record;
pub mod retention;
pub mod rollout;
pub mod watch;

pub use self::engine::Engine;
