//! Events: things that happen on this machine (a failed login, a crashed service, a disk
//! filling up), reported to the server and acknowledged after its durable write.
//!
//! - [`types`]: [`Event`](types::Event), [`Severity`](types::Severity) and the numbered
//!   [`SpooledEvent`](types::SpooledEvent);
//! - [`check`]: the contract's grammar and bounds, checked before anything is spooled;
//! - [`spool`]: the bounded, crash-safe on-disk spool that owns event seqs and keeps every
//!   event until the server acknowledges it; `record`: one record on disk.

pub mod check;
mod record;
pub mod spool;
pub mod types;
